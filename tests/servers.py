"""Real servers for the test suite: a redis-server, a PostgreSQL server and an S3/DynamoDB-compatible HTTP server
(moto), each started on a free loopback port. A server that cannot be started fails the test run loudly."""
import glob, os, secrets, shutil, signal, socket, subprocess, sys, tempfile, time, urllib.request
from urllib.parse import quote
from pathlib import Path

def free_port() -> int:
    with socket.socket() as s:
        s.bind(('127.0.0.1', 0))
        return s.getsockname()[1]

def wait_for(cond, timeout: float, what: str):
    "Poll `cond` until it is true; fail naming `what` after `timeout` seconds"
    deadline, pause = time.monotonic() + timeout, 0.01
    while not cond():
        if time.monotonic() > deadline: raise RuntimeError(f"{what} did not become ready within {timeout}s")
        time.sleep(pause); pause = min(pause * 2, 0.2)

def _port_open(port):
    try:
        with socket.create_connection(('127.0.0.1', port), timeout=0.2): return True
    except OSError: return False

class RedisServer:
    "A private redis-server on a free loopback port; `stop()`/`start()` simulate an outage"
    def __init__(self, requirepass: str | None = None, extra_args: tuple = ()):
        "`requirepass`: a password the server demands (put in `url`); `extra_args`: more redis-server options"
        self.requirepass, self.extra_args = requirepass, tuple(extra_args)
        self.exe = shutil.which('redis-server')
        if not self.exe:
            raise RuntimeError("redis-server is not installed: run the README's test command (`./run test`), "
                               "which installs it, or `apt-get install redis-server`")
        self.port, self.dir, self.proc = free_port(), tempfile.mkdtemp(prefix='dataops-redis-'), None
        auth = f":{quote(requirepass, safe='')}@" if requirepass else ''
        self.url = f"redis://{auth}127.0.0.1:{self.port}/0"
    def start(self):
        auth = ['--requirepass', self.requirepass] if self.requirepass else []
        self.proc = subprocess.Popen([self.exe, '--port', str(self.port), '--bind', '127.0.0.1', '--save', '',
                                      '--appendonly', 'no', '--dir', self.dir, '--daemonize', 'no', *auth, *self.extra_args],
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        wait_for(lambda: _port_open(self.port) or self.proc.poll() is not None, 20, 'redis-server')
        if self.proc.poll() is not None: raise RuntimeError(f"redis-server exited with {self.proc.returncode}")
        return self
    def pause(self):
        "SIGSTOP the server: connections stay open and requests are accepted, but nothing is answered (a hung server)"
        os.kill(self.proc.pid, signal.SIGSTOP)
    def resume(self):
        "SIGCONT after `pause`: the server answers again, requests that waited meanwhile included"
        os.kill(self.proc.pid, signal.SIGCONT)
    def stop(self):
        if self.proc and self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGCONT)  # a paused server cannot act on SIGTERM
            self.proc.terminate(); self.proc.wait(10)
        self.proc = None

def postgres_bin(name: str) -> str | None:
    "The newest installed PostgreSQL server program `name` (Debian keeps them in /usr/lib/postgresql/<version>/bin)"
    found = sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{name}"), key=lambda p: int(p.split('/')[4]) if p.split('/')[4].isdigit() else 0)
    return found[-1] if found else shutil.which(name)

class PostgresServer:
    """A private PostgreSQL server in a temporary folder, on a free loopback port, with a password (put in `url`).
    PostgreSQL refuses to run as root: as root, its programs run as the `postgres` user (Debian's package creates it), else
    as `nobody`. `settings`: extra server settings, e.g. `{'fsync': 'off'}` (default: PostgreSQL's, fsync on).
    The databases sort text by ICU's en-US collation, as most production databases do (en_US.UTF-8), not by code point."""
    def __init__(self, settings: dict | None = None, password: str | None = None,
                 initdb_args: tuple = ('--locale-provider=icu', '--icu-locale=en-US')):
        self.initdb, self.postgres = postgres_bin('initdb'), postgres_bin('postgres')
        if not (self.initdb and self.postgres):
            raise RuntimeError("PostgreSQL is not installed: run the README's test command (`./run test`), "
                               "which installs it, or `apt-get install postgresql`")
        self.settings, self.password = dict(settings or {}), password or secrets.token_urlsafe(12)
        self.initdb_args = tuple(initdb_args)
        self.port, self.proc, self.user = free_port(), None, 'dataops'
        # as root, in /tmp: the postgres user must reach the folder, and $TMPDIR may be private to root
        self.dir = tempfile.mkdtemp(prefix='dataops-postgres-', dir='/tmp' if os.geteuid() == 0 and os.path.isdir('/tmp') else None)
        self.data = os.path.join(self.dir, 'data')
        self.url = f"postgresql://{self.user}:{quote(self.password, safe='')}@127.0.0.1:{self.port}/postgres"
        self._as = {}
        if os.geteuid() == 0:
            import pwd
            try: pw = pwd.getpwnam('postgres')
            except KeyError: pw = pwd.getpwnam('nobody')
            self._as = {'user': pw.pw_uid, 'group': pw.pw_gid, 'extra_groups': []}
            os.chown(self.dir, pw.pw_uid, pw.pw_gid)
        self.log_path = os.path.join(self.dir, 'postgres.log')
    def _init(self):
        pwfile = os.path.join(self.dir, 'pwfile')
        with open(pwfile, 'w') as f: f.write(self.password)
        if self._as: os.chown(pwfile, self._as['user'], self._as['group'])
        r = subprocess.run([self.initdb, '-D', self.data, '-U', self.user, f'--pwfile={pwfile}', '--auth=scram-sha-256',
                            '-E', 'UTF8', '--locale=C.UTF-8', '--no-sync', *self.initdb_args], capture_output=True, text=True, **self._as)
        os.remove(pwfile)
        if r.returncode: raise RuntimeError(f"initdb failed ({r.returncode}): {r.stderr[-2000:]}")
    def start(self):
        if not os.path.exists(self.data): self._init()
        opts = {'listen_addresses': '127.0.0.1', 'port': str(self.port), 'unix_socket_directories': self.dir,
                'max_connections': '200', 'shared_buffers': '32MB', **self.settings}
        log = open(self.log_path, 'ab')
        if self._as: os.chown(self.log_path, self._as['user'], self._as['group'])
        self.proc = subprocess.Popen([self.postgres, '-D', self.data, *[x for k, v in opts.items() for x in ('-c', f"{k}={v}")]],
                                     stdout=log, stderr=subprocess.STDOUT, **self._as)
        log.close()
        def ready():
            if self.proc.poll() is not None: return True
            return _port_open(self.port) and b'ready to accept connections' in open(self.log_path, 'rb').read()
        wait_for(ready, 60, 'postgres')
        if self.proc.poll() is not None:
            raise RuntimeError(f"postgres exited with {self.proc.returncode}: {open(self.log_path, errors='replace').read()[-2000:]}")
        return self
    def stop(self):
        "Fast shutdown (SIGINT): connections are closed, committed data stays on disk for the next `start()`"
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(2); self.proc.wait(30)
        self.proc = None
    def cleanup(self):
        self.stop()
        shutil.rmtree(self.dir, ignore_errors=True)

# moto's DynamoDB applies an UpdateItem or a conditional PutItem as a read followed by a write with
# no lock, so concurrent requests can both pass one condition; real DynamoDB applies each request
# atomically. Serving moto's WSGI app one request at a time restores that per-request atomicity
# (the server stays a separate process spoken to over HTTP by boto3; nothing of ours is patched).
_SERIAL_MOTO = """
import sys, threading
from werkzeug.serving import run_simple
from moto.moto_server.werkzeug_app import DomainDispatcherApplication, MotoRequestHandler, create_backend_app
app, lock = DomainDispatcherApplication(create_backend_app), threading.Lock()
def serial(environ, start_response):
    with lock: return list(app(environ, start_response))
run_simple('127.0.0.1', int(sys.argv[1]), serial, threaded=True, request_handler=MotoRequestHandler)
"""

class MotoServer:
    "moto's standalone S3 + DynamoDB server on a free loopback port; boto3 talks to it over HTTP"
    def __init__(self):
        self.port, self.proc = free_port(), None
        self.endpoint = f"http://127.0.0.1:{self.port}"
    def start(self):
        env = {**os.environ, 'AWS_ACCESS_KEY_ID': 'testing', 'AWS_SECRET_ACCESS_KEY': 'testing', 'AWS_DEFAULT_REGION': 'us-east-1'}
        self.log = open(Path(tempfile.mkdtemp(prefix='dataops-moto-')) / 'moto.log', 'wb')
        self.proc = subprocess.Popen([sys.executable, '-c', _SERIAL_MOTO, str(self.port)],
                                     stdout=self.log, stderr=subprocess.STDOUT, env=env)
        def up():
            if self.proc.poll() is not None: return True
            try: return urllib.request.urlopen(f"{self.endpoint}/moto-api/", timeout=0.5).status == 200
            except OSError: return False
        wait_for(up, 60, 'moto server')
        if self.proc.poll() is not None: raise RuntimeError(f"moto server exited with {self.proc.returncode}; see {self.log.name}")
        return self
    def stop(self):
        if self.proc and self.proc.poll() is None:
            self.proc.terminate(); self.proc.wait(10)
        self.proc = None
