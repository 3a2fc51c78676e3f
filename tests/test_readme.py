"""Every Python snippet of README.md runs verbatim, in order, both as a plain script (`python readme.py`: no
`if __name__ == '__main__'` guard, as a user pastes them) and as the cells of a notebook in a Jupyter kernel,
in a fresh folder with no settings (the embedded default)."""
import os, re, subprocess, sys
from pathlib import Path
import nbformat

ROOT = Path(__file__).resolve().parent.parent
PY = Path(sys.executable)


def snippets() -> list[str]:
    "The ```python blocks of README.md, in order"
    return re.findall(r'^```python\n(.*?)^```', (ROOT/'README.md').read_text(), flags=re.S | re.M)


def _env():
    return {k: v for k, v in os.environ.items() if not k.startswith('DATAOPS_')}


def test_the_readme_has_the_snippets_a_newcomer_pastes():
    blocks = snippets()
    assert len(blocks) >= 4 and any('run_batch(' in b for b in blocks) and any('SessionManager()' in b for b in blocks)


def test_readme_snippets_run_as_a_plain_script(tmp_path):
    script = tmp_path/'readme.py'
    script.write_text('\n\n'.join(snippets()))
    p = subprocess.run([str(PY), str(script)], cwd=tmp_path, env=_env(), capture_output=True, text=True, timeout=900)
    assert p.returncode == 0 and 'Traceback' not in p.stderr, p.stderr[-4000:]


def test_readme_snippets_run_as_notebook_cells(tmp_path):
    from nbclient import NotebookClient
    nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell(b) for b in snippets()],
                                  metadata={'kernelspec': {'name': 'python3', 'display_name': 'Python 3', 'language': 'python'}})
    old = dict(os.environ)
    try:
        for k in [k for k in os.environ if k.startswith('DATAOPS_')]: del os.environ[k]
        NotebookClient(nb, timeout=600, kernel_name='python3', resources={'metadata': {'path': str(tmp_path)}}).execute()
    finally:
        os.environ.clear(); os.environ.update(old)
    errors = [o for c in nb.cells for o in c.outputs if o.output_type == 'error']
    assert errors == [], errors
