"""Running the project's console scripts as a user would, from tests: a clean environment (no DATAOPS_* settings of the
test run), and coverage carried into the subprocess when the tests run under coverage (`./run test` does)."""
import os
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

def user_env(**extra) -> dict:
    "The environment of a user's shell: no dataops settings from the test run; coverage measured in the subprocess if it is here"
    e = {k: v for k, v in os.environ.items() if not k.startswith('DATAOPS_')}
    e.update(PYTHONUNBUFFERED='1', COLUMNS='120', **extra)
    try:
        import coverage
        cov = coverage.Coverage.current()
    except ImportError: cov = None
    if cov is not None:
        e['COVERAGE_PROCESS_START'] = str(ROOT / 'pyproject.toml')
        e['COVERAGE_FILE'] = str(Path(cov.config.data_file).resolve())
    return e
