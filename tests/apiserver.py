"A real uvicorn server running the dataops-lab API on a loopback port, in a child process"
import os, subprocess, sys, time
from pathlib import Path
import httpx
from servers import free_port, wait_for

_CODE = """
import sys, uvicorn
sys.path.insert(0, sys.argv[3])
from dataops_lab.api.server import create_app
import api_workflows
app = create_app(sys.argv[1], registry=api_workflows.registry(), chains=api_workflows.chains(sys.argv[1]), dashboard=sys.argv[4] == '1')
uvicorn.run(app, host='127.0.0.1', port=int(sys.argv[2]), log_level='warning')
"""
SECRET = 'test-signing-key-' + 'x' * 40

class APIServer:
    "`python -c <create_app + uvicorn.run>` on a free port; `url`; `stop()`"
    def __init__(self, ini: Path, dashboard: bool = False, env: dict | None = None):
        self.ini, self.port, self.dashboard = ini, free_port(), dashboard
        self.url = f"http://127.0.0.1:{self.port}"
        self.env = {**os.environ, 'DATAOPS_API__JWT_SECRET': SECRET, **(env or {})}
        self.proc = None
    def start(self):
        self.log = open(self.ini.parent / f"server-{self.port}.log", 'wb')
        self.proc = subprocess.Popen([sys.executable, '-c', _CODE, str(self.ini), str(self.port), str(Path(__file__).parent), '1' if self.dashboard else '0'],
                                     stdout=self.log, stderr=subprocess.STDOUT, env=self.env)
        def up():
            if self.proc.poll() is not None: return True
            try: return httpx.get(f"{self.url}/health", timeout=0.5).status_code == 200
            except httpx.HTTPError: return False
        wait_for(up, 90, f'API server on port {self.port}')
        if self.proc.poll() is not None: raise RuntimeError(f"API server exited with {self.proc.returncode}: {Path(self.log.name).read_text()[-3000:]}")
        return self
    def stop(self):
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            try: self.proc.wait(15)
            except subprocess.TimeoutExpired: self.proc.kill(); self.proc.wait(10)
        self.proc = None
    def __enter__(self): return self.start()
    def __exit__(self, *exc): self.stop()
