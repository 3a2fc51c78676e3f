"""What `./run` sets up for a newcomer: JupyterLab is there and `./run lab` serves the tutorials (a real server on a free
loopback port, queried over HTTP)."""
import json, os, signal, subprocess, sys, time, urllib.request
from pathlib import Path
from servers import free_port, wait_for

ROOT = Path(__file__).resolve().parent.parent


def _get(url):
    with urllib.request.urlopen(url, timeout=5) as r: return r.status, r.read()


def _up(url):
    try: return _get(url)[0] == 200
    except OSError: return False


def test_run_lab_serves_the_tutorials():
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith('DATAOPS_')}
    proc = subprocess.Popen([str(ROOT/'run'), 'lab', '--no-browser', f'--port={port}', '--ServerApp.ip=127.0.0.1', '--IdentityProvider.token='],
                            cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True)
    base = f"http://127.0.0.1:{port}"
    try:
        wait_for(lambda: proc.poll() is not None or _up(f"{base}/api/status"), 180, 'JupyterLab')
        assert proc.poll() is None, proc.stdout.read()[-3000:]
        status, body = _get(f"{base}/api/contents/nbs/70_tutorial_first_session.ipynb?content=0")
        assert (status, json.loads(body)['type']) == (200, 'notebook')  # served from the repository root: the tutorials are there
        with urllib.request.urlopen(f"{base}/", timeout=5) as r: assert r.url.endswith('/lab/tree/nbs/70_tutorial_first_session.ipynb')  # opens on the first tutorial
        assert b'JupyterLab' in _get(f"{base}/lab")[1]
        assert 'python3' in json.loads(_get(f"{base}/api/kernelspecs")[1])['kernelspecs']
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGTERM)
            try: proc.wait(60)
            except subprocess.TimeoutExpired: os.killpg(proc.pid, signal.SIGKILL); proc.wait(30)


def test_the_readme_and_the_demo_point_at_run_lab():
    assert './run lab' in (ROOT/'README.md').read_text()
    assert (Path(sys.executable).parent/'jupyter-nbconvert').exists() and (Path(sys.executable).parent/'jupyter-lab').exists()


def test_notebooks_are_stored_without_outputs():
    "The README's reason for nbdev-test over nbval: notebooks and templates are stored without outputs (nothing saved to compare against)"
    import nbformat
    nbs = sorted((ROOT/'nbs').rglob('*.ipynb')) + sorted((ROOT/'dataops_lab'/'templates').glob('*.ipynb'))
    with_outputs = [p.relative_to(ROOT).as_posix() for p in nbs if any(c.get('outputs') for c in nbformat.read(p, 4).cells if c.cell_type == 'code')]
    assert len(nbs) > 30 and with_outputs == [], with_outputs


def test_importing_the_package_leaves_notebook_dependencies_unloaded():
    # every CLI call, batch worker and kernel imports dataops_lab; nbformat (and the jsonschema format grammar it pulls
    # in, seconds of start-up) load only when a notebook is read or written
    code = ("import sys, dataops_lab, dataops_lab.cli, dataops_lab.devkit.templates\n"
            "heavy = sorted(m for m in ('nbformat', 'jsonschema', 'papermill', 'panel', 'bokeh') if m in sys.modules)\n"
            "print(heavy)\n"
            "from dataops_lab.nbparams import nbformat\n"
            "nbformat.v4.new_notebook()\n"
            "print('nbformat' in sys.modules)")
    out = subprocess.run([sys.executable, '-c', code], cwd=ROOT, capture_output=True, text=True, check=True).stdout.split('\n')
    assert out[:2] == ['[]', 'True'], out
