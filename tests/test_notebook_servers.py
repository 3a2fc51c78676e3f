"""Notebook lesson cells flagged `#| redis`, `#| s3` or `#| postgres` need a server, so plain `nbdev-test` skips them.
Here they run against the real servers the test session starts."""
import os, subprocess, sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

def test_server_flagged_lessons(redis_server, moto_server, postgres_server):
    env = {**os.environ, 'DATAOPS_TEST_REDIS_URL': redis_server.url.replace('/0', '/15'), 'DATAOPS_TEST_POSTGRES_URL': postgres_server.url,
           'DATAOPS_TEST_AWS_ENDPOINT': moto_server.endpoint,
           'AWS_ACCESS_KEY_ID': 'testing', 'AWS_SECRET_ACCESS_KEY': 'testing', 'AWS_DEFAULT_REGION': 'us-east-1'}
    nbdev_test = Path(sys.executable).parent / 'nbdev-test'
    res = subprocess.run([str(nbdev_test), '--flags', 'redis s3 postgres', '--n-workers', '1', '--file-re', r'^1[3456]_'],
                         cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert res.returncode == 0 and 'Success' in res.stdout, res.stdout[-4000:] + res.stderr[-4000:]


def test_every_notebook_names_its_kernel():
    "JupyterLab (Binder included) opens each notebook and template on the Python kernel, without asking which kernel to use"
    import nbformat
    nbs = sorted((ROOT/'nbs').glob('*.ipynb')) + sorted((ROOT/'dataops_lab'/'templates').glob('*.ipynb'))
    assert len(nbs) > 30
    missing = [p.relative_to(ROOT).as_posix() for p in nbs if nbformat.read(p, as_version=4).metadata.get('kernelspec', {}).get('name') != 'python3']
    assert missing == [], f"notebooks without a python3 kernelspec: {missing}"
