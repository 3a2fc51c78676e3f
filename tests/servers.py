"""Real servers for the test suite: a redis-server and an S3/DynamoDB-compatible HTTP server (moto),
each started on a free loopback port. A server that cannot be started fails the test run loudly."""
import os, shutil, signal, socket, subprocess, sys, tempfile, time, urllib.request
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
