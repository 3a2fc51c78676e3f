import os, sys, uuid
from pathlib import Path
import pytest
sys.path.insert(0, str(Path(__file__).parent))
from servers import RedisServer, MotoServer, PostgresServer

# boto3 must never reach a real AWS account from the tests: fixed fake credentials, no config files.
os.environ.update(AWS_ACCESS_KEY_ID='testing', AWS_SECRET_ACCESS_KEY='testing', AWS_DEFAULT_REGION='us-east-1',
                  AWS_CONFIG_FILE=os.devnull, AWS_SHARED_CREDENTIALS_FILE=os.devnull)

@pytest.fixture(scope='session')
def redis_server():
    "A private redis-server on a free loopback port (fails loudly if redis-server is missing)"
    srv = RedisServer().start()
    yield srv
    srv.stop()

@pytest.fixture(scope='session')
def postgres_server():
    """A private PostgreSQL server (initdb in a temp folder) on a free loopback port; fails loudly if PostgreSQL is missing.
    It skips fsync: the tests check our behaviour, not the disk's, and the machine is shared"""
    srv = PostgresServer(settings={'fsync': 'off', 'synchronous_commit': 'off', 'full_page_writes': 'off'}).start()
    yield srv
    srv.cleanup()

@pytest.fixture(scope='session')
def moto_server():
    "moto's S3 + DynamoDB HTTP server on a free loopback port"
    srv = MotoServer().start()
    yield srv
    srv.stop()

# ---------------------------------------------------------------- storage tiers shared by the manager tests

TIERS = ('embedded', 'aws', 'postgres')

def write_ini(folder: Path, backend: str, request=None, *, redis_url: str | None = None, moto_endpoint: str | None = None) -> Path:
    """A settings.ini in `folder` selecting the embedded backends (SQLite + files), Redis + DynamoDB + S3 ('aws') or
    Redis + PostgreSQL + S3 ('postgres'): a fresh bucket and table prefix (PostgreSQL: schema) on the test session's
    servers, or on `redis_url`/`moto_endpoint` when given"""
    if backend == 'embedded':
        body = "[storage]\nhot = sqlite:///.dataops/cache.db\ncold = sqlite:///.dataops/meta.db\nblob = file://.dataops/blobs\n"
    elif backend == 'aws':
        redis_url = redis_url or request.getfixturevalue('redis_server').url
        moto_endpoint = moto_endpoint or request.getfixturevalue('moto_server').endpoint
        u = uuid.uuid4().hex[:10]
        body = (f"[storage]\nhot = {redis_url}\ncold = dynamodb://us-east-1?endpoint_url={moto_endpoint}\n"
                f"blob = s3://art-{u}/data?region=us-east-1&endpoint_url={moto_endpoint}\ntable_prefix = t{u}_\n")
    elif backend == 'postgres':
        redis_url = redis_url or request.getfixturevalue('redis_server').url
        moto_endpoint = moto_endpoint or request.getfixturevalue('moto_server').endpoint
        pg, u = request.getfixturevalue('postgres_server'), uuid.uuid4().hex[:10]
        body = (f"[storage]\nhot = {redis_url}\ncold = {pg.url}?schema=t{u}\n"
                f"blob = s3://art-{u}/data?region=us-east-1&endpoint_url={moto_endpoint}\n")
    else: raise ValueError(f"unknown tier {backend!r}; use one of {TIERS}")
    ini = folder / 'settings.ini'
    ini.write_text(body)
    return ini

@pytest.fixture(params=TIERS)
def backend(request):
    "The tier under test: 'embedded' (SQLite + local files), 'aws' (redis-server + moto's DynamoDB and S3 over HTTP) or 'postgres' (redis-server + PostgreSQL + moto's S3)"
    return request.param

@pytest.fixture
def ini(backend, request, tmp_path):
    "A settings.ini for `backend` in the test's temporary folder (child processes load it)"
    return write_ini(tmp_path, backend, request)

@pytest.fixture
def tiers(ini):
    "`Settings` for each tier in turn ('embedded', then 'aws'); provision with `Storage(settings).ensure()`"
    from dataops_lab.config import load_settings
    return load_settings(ini)

@pytest.fixture(scope='session')
def _shared_inis():
    "tier -> settings.ini of the tables provisioned once per test session (see `shared_ini`)"
    return {}

@pytest.fixture(scope='session')
def _shared_storages():
    "(tier, role) -> an open `Storage` on the shared tables, reused by tests (opening DynamoDB/S3 clients costs seconds)"
    out = {}
    yield out
    for st in out.values(): st.close()

@pytest.fixture
def shared_ini(backend, request, _shared_inis, tmp_path_factory):
    """A settings.ini for `backend` whose bucket and tables are provisioned once per test session and shared by the
    tests that use it (provisioning DynamoDB tables costs seconds): such tests isolate themselves with fresh ids"""
    if backend not in _shared_inis:
        from dataops_lab.config import load_settings
        from dataops_lab.store.base import Storage
        import dataops_lab.sessions, dataops_lab.context  # noqa: F401 -- importing registers their tables
        ini = write_ini(tmp_path_factory.mktemp(f"shared-{backend}"), backend, request)
        Storage(load_settings(ini)).ensure().close()
        _shared_inis[backend] = ini
    return _shared_inis[backend]

def _storage(settings, ensure: bool):
    import dataops_lab.sessions, dataops_lab.context  # noqa: F401 -- importing registers their tables
    from dataops_lab.store.base import Storage
    st = Storage(settings)
    return st.ensure() if ensure else st

def _shared_storage(backend, shared_ini, cache, role):
    if (backend, role) not in cache:
        from dataops_lab.config import load_settings
        cache[(backend, role)] = _storage(load_settings(shared_ini), False)
    return cache[(backend, role)]

@pytest.fixture
def manager_storage(backend, shared_ini, _shared_storages):
    """A `Storage` on the shared, provisioned tables of the tier under test (sessions, messages, preferences, snapshots,
    artifacts), open for the whole test session: tests build their managers on it and must not close it"""
    return _shared_storage(backend, shared_ini, _shared_storages, 'managers')

@pytest.fixture
def fresh_storage(tiers):
    "A `Storage` on tables of its own, provisioned for this test alone (for tests that scan every session, like expiry)"
    st = _storage(tiers, True)
    yield st
    st.close()

@pytest.fixture
def raw(backend, shared_ini, _shared_storages):
    "A second, independent `Storage` on the same tier and tables, for looking directly into the tables, blob store and cache"
    return _shared_storage(backend, shared_ini, _shared_storages, 'raw')

@pytest.fixture
def fresh_raw(fresh_storage):
    "Like `raw`, for `fresh_storage`"
    st = _storage(fresh_storage.settings, False)
    yield st
    st.close()

def uid(prefix: str = 'user') -> str:
    "A fresh id, so that tests sharing tables never see each other's users or sessions"
    return f"{prefix}_{uuid.uuid4().hex[:10]}"

# ---------------------------------------------------------------- child processes

import queue, subprocess, threading, time

class Child:
    "A Python child process running `code`: stdout lines arrive on a queue (read by a thread), stdin takes commands"
    def __init__(self, code: str, *args):
        self.proc = subprocess.Popen([sys.executable, '-c', code, *map(str, args)], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     stderr=subprocess.PIPE, text=True, bufsize=1)
        self.lines, self._q = [], queue.Queue()
        self._t = threading.Thread(target=self._read, daemon=True); self._t.start()
    def _read(self):
        for line in self.proc.stdout: self._q.put(line.rstrip('\n'))
        self._q.put(None)
    def next_line(self, timeout: float = 60) -> str:
        "The next stdout line; fails (with the child's stderr) if the child exits or stays silent for `timeout` s"
        try: line = self._q.get(timeout=timeout)
        except queue.Empty: raise AssertionError(f"child silent for {timeout}s") from None
        if line is None: raise AssertionError(f"child exited with {self.proc.wait()}: {self.proc.stderr.read()[-3000:]}")
        self.lines.append(line)
        return line
    def send(self, text: str):
        self.proc.stdin.write(text + '\n'); self.proc.stdin.flush()
    def finish(self, timeout: float = 120) -> list[str]:
        "Wait for a clean exit; every remaining stdout line"
        while (line := self._q.get(timeout=timeout)) is not None: self.lines.append(line)
        rc = self.proc.wait(timeout)
        assert rc == 0, f"child exited with {rc}: {self.proc.stderr.read()[-3000:]}"
        return self.lines
    def kill(self):
        "SIGKILL, then wait; the lines read so far stay in `lines`"
        self.proc.kill(); self.proc.wait(30)
        self._t.join(30)
        while not self._q.empty():
            if (line := self._q.get()) is not None: self.lines.append(line)
    def close(self):
        if self.proc.poll() is None: self.proc.kill(); self.proc.wait(30)
        for f in (self.proc.stdin, self.proc.stdout, self.proc.stderr):
            try: f.close()
            except OSError: pass
