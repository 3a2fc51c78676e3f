"""`serve` as deployed: uvicorn started by dataops_lab.api.server.serve in a child process, on a loopback port.
With a certificate and key configured (a self-signed one made here with `cryptography`) it speaks TLS 1.3 only and
every response carries HSTS; half a TLS configuration is refused by name instead of serving plain HTTP."""
import datetime as dt, ipaddress, os, ssl, subprocess, sys
from pathlib import Path
import httpx, pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from conftest import write_ini
from servers import free_port, wait_for
from apiserver import SECRET

HERE = Path(__file__).parent

def self_signed(folder: Path) -> tuple[Path, Path]:
    "A certificate for 127.0.0.1 and its key, as PEM files (key mode 0600)"
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, '127.0.0.1')])
    now = dt.datetime.now(dt.timezone.utc)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(minutes=5)).not_valid_after(now + dt.timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address('127.0.0.1'))]), critical=False)
            .sign(key, hashes.SHA256()))
    crt, pem = folder / 'server.crt', folder / 'server.key'
    crt.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    pem.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()))
    pem.chmod(0o600)
    return crt, pem

def serve_proc(ini: Path, port: int, workers: int = 1) -> subprocess.Popen:
    code = ("import sys; from dataops_lab.api.server import serve; "
            f"serve(sys.argv[1], host='127.0.0.1', port={port}, workers={workers}, registry='api_workflows:registry', log_level='warning')")
    env = {**os.environ, 'DATAOPS_API__JWT_SECRET': SECRET, 'PYTHONPATH': os.pathsep.join([str(HERE), os.environ.get('PYTHONPATH', '')])}
    return subprocess.Popen([sys.executable, '-c', code, str(ini)], env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, cwd=ini.parent)

def stop(p: subprocess.Popen) -> str:
    if p.poll() is None:
        p.terminate()
        try: p.wait(20)
        except subprocess.TimeoutExpired: p.kill(); p.wait(10)
    return p.stdout.read().decode(errors='replace')

def test_tls13_only_with_hsts(tmp_path):
    crt, pem = self_signed(tmp_path)
    ini = write_ini(tmp_path, 'embedded')
    ini.write_text(ini.read_text() + f"\n[api]\ntls_cert = {crt}\ntls_key = {pem}\n")
    port = free_port()
    p = serve_proc(ini, port)
    try:
        trusted = ssl.create_default_context(cafile=str(crt))
        def up():
            assert p.poll() is None, stop(p)
            try: return httpx.get(f"https://127.0.0.1:{port}/health", verify=trusted, timeout=1).status_code == 200
            except httpx.HTTPError: return False
        wait_for(up, 90, 'serve() with TLS')
        # TLS 1.3: served, with HSTS on a success and on an error alike
        with httpx.Client(base_url=f"https://127.0.0.1:{port}", verify=trusted) as c:
            ok, denied = c.get('/health'), c.get('/sessions/sess_1')
        assert (ok.status_code, denied.status_code) == (200, 401)
        for r in (ok, denied): assert r.headers['strict-transport-security'] == 'max-age=31536000; includeSubDomains'
        with trusted.wrap_socket(__import__('socket').create_connection(('127.0.0.1', port)), server_hostname='127.0.0.1') as s:
            assert s.version() == 'TLSv1.3'
        # a client that speaks at most TLS 1.2 is refused at the handshake
        old = ssl.create_default_context(cafile=str(crt))
        old.maximum_version = ssl.TLSVersion.TLSv1_2
        with pytest.raises(httpx.ConnectError):
            httpx.get(f"https://127.0.0.1:{port}/health", verify=old, timeout=5)
        # plain HTTP on the TLS port gets nothing
        with pytest.raises(httpx.HTTPError):
            httpx.get(f"http://127.0.0.1:{port}/health", timeout=5)
    finally:
        stop(p)

def test_half_a_tls_configuration_is_refused(tmp_path):
    crt, _ = self_signed(tmp_path)
    ini = write_ini(tmp_path, 'embedded')
    ini.write_text(ini.read_text() + f"\n[api]\ntls_cert = {crt}\n")
    p = serve_proc(ini, free_port())
    try: p.wait(90)
    except subprocess.TimeoutExpired: pass
    out = stop(p)
    assert p.returncode != 0 and 'tls_key' in out and 'ConfigError' in out, out[-2000:]

def test_a_killed_servers_run_is_failed_when_its_lease_lapses(tmp_path):
    "A run whose server process is killed (SIGKILL, mid-run) is reported failed by the next server once its lease lapses, and its session's WebSocket clients are told"
    from dataops_lab.client import Client
    from apiserver import APIServer
    from test_api import add_users, PW
    ini = write_ini(tmp_path, 'embedded')
    ini.write_text(ini.read_text() + "\n[api]\nrun_lease = 3\n")
    add_users(ini, ('alice', 'user'))
    a = APIServer(ini).start()
    try:
        ca = Client(a.url, 'alice', PW)
        sid = ca.create_session()['session_id']
        rid = ca.invoke('slow_job', sid, {'seconds': 600}, wait=False)['run_id']
        wait_for(lambda: ca.get_run(rid)['status'] == 'running', 60, 'the run to start')
    finally:
        a.proc.kill(); a.proc.wait(10)
    with APIServer(ini) as b:
        cb = Client(b.url, 'alice', PW)
        wait_for(lambda: cb.get_run(rid)['status'] != 'running', 60, 'the run of the killed server to be reported')
        run = cb.get_run(rid)
        assert run['status'] == 'failed' and 'server process running it stopped' in run['error'], run
        last = list(cb.events(sid, timeout=3))[-1]
        assert (last['type'], last['run_id'], last['data']['status']) == ('error', rid, 'failed'), last

def _children(pid: int) -> set[int]:
    "The worker processes `pid` spawned (multiprocessing's resource tracker left out)"
    kids = set()
    for t in Path(f"/proc/{pid}/task").iterdir():
        kids |= {int(x) for x in (t / 'children').read_text().split()}
    def cmd(k):
        try: return Path(f"/proc/{k}/cmdline").read_bytes()
        except OSError: return b''
    return {k for k in kids if b'resource_tracker' not in cmd(k)}

def test_serve_workers_share_limits_and_events(tmp_path, request):
    "`serve(workers=2)` on Redis + moto's DynamoDB and S3: two worker processes behind one socket; the rate limit is counted once across them, and a WebSocket client sees a query's progress whichever worker ran it"
    import threading
    from dataops_lab.client import Client
    from test_api import add_users, PW
    ini = write_ini(tmp_path, 'aws', request)
    ini.write_text(ini.read_text() + "\n[api]\nrate_limit = 6/minute\nendpoint_limits = query_session=100/minute\n")
    add_users(ini, ('alice', 'developer'))
    port = free_port()
    p = serve_proc(ini, port, workers=2)
    url = f"http://127.0.0.1:{port}"
    try:
        def up():
            assert p.poll() is None, stop(p)
            try: return httpx.get(f"{url}/health", timeout=1).status_code == 200 and len(_children(p.pid)) >= 2
            except httpx.HTTPError: return False
        wait_for(up, 300, 'serve(workers=2)')  # each worker builds the whole app, dashboard included
        workers = _children(p.pid)
        c = Client(url, 'alice', PW)
        sid = c.create_session()['session_id']
        h = {'Authorization': f"Bearer {c.tokens['access_token']}"}
        codes = []
        for _ in range(10):  # a new connection each time: the kernel hands them to either worker
            with httpx.Client() as fresh: codes.append(fresh.get(f"{url}/sessions/{sid}", headers=h).status_code)
        assert sorted(codes) == [200] * 6 + [429] * 4, codes
        got, ends = [], []
        def finished(m):
            if m['type'] in ('end', 'error'): ends.append(m)
            return len(ends) == 3
        t = threading.Thread(target=lambda: got.extend(c.events(sid, timeout=30, until=finished)))
        t.start()
        runs = [Client(url, 'alice', PW).query(sid, 'count the words: text="one two"') for _ in range(3)]  # each on a new connection
        t.join(60)
        assert [r['status'] for r in runs] == ['succeeded'] * 3, runs
        assert [m['run_id'] for m in ends] == [r['run_id'] for r in runs] and {m['type'] for m in ends} == {'end'}, got
        assert {m['run_id'] for m in got if m['type'] == 'progress'} == {r['run_id'] for r in runs}
        assert _children(p.pid) == workers  # neither worker died on the way
    finally:
        out = stop(p)
    assert len(workers) == 2, (workers, out[-2000:])
