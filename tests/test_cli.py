"""The `dataops-lab` command as a user meets it in a shell: real subprocesses, real pipes, a real Dask cluster."""
import os, json, socket, subprocess, sys
from pathlib import Path
import pytest
from conftest import write_ini

from dataops_lab.core import InvalidInputError
from dataops_lab.nbparams import write_notebook
from dataops_lab.runner import run_notebook
from dataops_lab.batch import run_batch

CLI = str(Path(sys.executable).parent/'dataops-lab')


def _env(): return {k: v for k, v in os.environ.items() if not k.startswith('DATAOPS_')}


def cli(*args, cwd, **kw):
    return subprocess.run([CLI, *map(str, args)], cwd=cwd, env=_env(), capture_output=True, text=True, timeout=300, **kw)


def test_version(tmp_path):
    from dataops_lab import __version__
    p = cli('--version', cwd=tmp_path)
    assert (p.returncode, p.stdout.strip()) == (0, f"dataops-lab {__version__}"), p.stderr


def test_output_into_a_closed_pipe_is_no_traceback(tmp_path):
    "`dataops-lab settings | head -1`: the reader is gone before the command writes"
    r, w = os.pipe()
    os.close(r)
    try: p = subprocess.run([CLI, 'settings'], cwd=tmp_path, env=_env(), stdout=w, stderr=subprocess.PIPE, text=True, timeout=120)
    finally: os.close(w)
    assert 'Traceback' not in p.stderr and 'BrokenPipeError' not in p.stderr, p.stderr
    assert p.returncode == 141


def test_inspect_run_and_batch_never_evaluate_annotations(tmp_path):
    "A notebook whose annotation would run code: inspect (CLI and library), run_notebook and run_batch refuse it naming the line, and nothing runs"
    pwned = tmp_path/'pwned'
    nb = write_notebook(tmp_path/'sent.ipynb', f"region = 'eu'\nn: __import__('pathlib').Path({str(pwned)!r}).touch() or int = 1", "n")
    p = cli('inspect', nb, cwd=tmp_path)
    assert p.returncode == 2 and "line 2 of the parameters cell, parameter 'n'" in p.stderr and 'Traceback' not in p.stderr, p.stderr
    ini = write_ini(tmp_path, 'embedded')
    with pytest.raises(InvalidInputError, match='line 2 of the parameters cell'): run_notebook(nb, {'n': 2}, settings=ini)
    with pytest.raises(InvalidInputError, match='line 2 of the parameters cell'): run_batch(nb, {'n': [1, 2]}, settings=ini, progress=False, scheduler='synchronous')
    (tmp_path/'grid.yaml').write_text('n: [1, 2]\n')
    assert cli('--settings', ini, 'batch', nb, '--grid', tmp_path/'grid.yaml', cwd=tmp_path).returncode == 2
    assert not pwned.exists()


def test_hints_name_options_not_python_arguments(tmp_path):
    ini = write_ini(tmp_path, 'embedded')
    (tmp_path/'grid.yaml').write_text(json.dumps({'questions': [['how many orders?']]}))
    p = cli('--settings', ini, 'batch', 'sql_questions', '--grid', tmp_path/'grid.yaml', '--kernel', 'pyhton3', cwd=tmp_path)
    assert p.returncode == 2 and "no Jupyter kernel named 'pyhton3'" in p.stderr and '--kernel NAME' in p.stderr and 'kernel_name=' not in p.stderr, p.stderr
    (tmp_path/'bad.yaml').write_text(json.dumps({'questions': 'how many orders?'}))
    p = cli('--settings', ini, 'batch', 'sql_questions', '--grid', tmp_path/'bad.yaml', cwd=tmp_path)
    assert p.returncode == 2 and '`dataops-lab inspect NOTEBOOK`' in p.stderr and 'inspect_notebook(' not in p.stderr, p.stderr


@pytest.fixture
def port_8787_in_use():
    "Port 8787 (Dask's default dashboard port) held by this test, unless something holds it already"
    s = socket.socket()
    try: s.bind(('0.0.0.0', 8787)); s.listen()
    except OSError: pass  # already in use: the condition the test needs
    yield
    s.close()


def test_batch_output_is_the_table_only(tmp_path, port_8787_in_use):
    "On a real local cluster, with Dask's default dashboard port taken: no Dask warning in the output, and a resumed batch with nothing to do starts no cluster"
    ini = write_ini(tmp_path, 'embedded')
    nb = write_notebook(tmp_path/'nb.ipynb', "n: int = 1", "from dataops_lab.runner import record\nrecord('twice', 2 * n)")
    (tmp_path/'grid.yaml').write_text('n: [1, 2]\n')
    p = cli('--settings', ini, 'batch', nb, '--grid', tmp_path/'grid.yaml', '--no-progress', cwd=tmp_path)
    assert p.returncode == 0, p.stderr[-3000:]
    assert p.stderr == '' and '8787' not in p.stdout and 'Warning' not in p.stdout, (p.stdout[-2000:], p.stderr[-2000:])
    assert '2 succeeded' in p.stdout and 'twice' in p.stdout.splitlines()[1]
    # resumed with nothing to do, with a scheduler address nobody listens on: it is never contacted
    with socket.socket() as s: s.bind(('127.0.0.1', 0)); dead = s.getsockname()[1]
    again = cli('--settings', ini, 'batch', nb, '--grid', tmp_path/'grid.yaml', '--no-progress', '--scheduler', f'tcp://127.0.0.1:{dead}', cwd=tmp_path)
    assert again.returncode == 0 and '2 skipped' in again.stdout, again.stderr[-2000:]
