"""Papermill runs and Dask batches: parameter validation before any kernel, typed records, failed-cell capture,
batches on a real 2-worker LocalCluster, resume, kernel start-up retries with a real broken kernel spec, a dead
scheduler, worker death, and the templates under the plain papermill CLI."""
import json, os, re, pickle, signal, socket, subprocess, sys, time
from pathlib import Path
import nbformat, pandas as pd, pytest
from conftest import write_ini

from dataops_lab.core import InvalidInputError, NotFoundError
from dataops_lab.config import load_settings
from dataops_lab.models import ArtifactType
from dataops_lab.store.base import Storage
from dataops_lab.artifacts import ArtifactStore
from dataops_lab.sessions import SessionManager
from dataops_lab.nbparams import write_notebook, inspect_notebook, validate_parameters
from dataops_lab.runner import run_notebook, read_records, NotebookRunError, template_path, list_templates
from dataops_lab.batch import (run_batch, list_batches, batch_runs, load_grid, batch_cli, SchedulerUnavailableError, BATCH_RUNS_TABLE)

VENV_BIN = Path(sys.executable).parent
RUN_KEYS = {'run_key', 'params', 'status', 'attempts', 'started_at', 'finished_at', 'duration_s', 'session_id', 'artifact_ids', 'error'}
BATCH_KEYS = {'batch_id', 'notebook', 'created_at', 'status', 'n_runs', 'n_succeeded', 'n_failed', 'n_skipped', 'duration_s'}


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch):
    for k in [k for k in os.environ if k.startswith('DATAOPS_')]: monkeypatch.delenv(k)


def _ini(tmp_path, extra=''):
    ini = write_ini(tmp_path, 'embedded')
    ini.write_text(ini.read_text() + f"[batch]\noutput_dir = runs\nn_workers = 2\n{extra}")
    return ini


# ---------------------------------------------------------------- validation before any kernel

def test_bad_input_is_refused_before_anything_is_created(tmp_path):
    ini = _ini(tmp_path)
    nb = write_notebook(tmp_path/'nb.ipynb', "rows: int = 1  # rows\nowner: str = None  # required: who", "print(rows)")
    cases = [({'rows': 2}, "parameter 'owner' (str) is required"),
             ({'owner': 'a', 'rowz': 2}, "unknown parameter 'rowz' — did you mean 'rows'?"),
             ({'owner': 'a', 'rows': 'many'}, "parameter 'rows' (int) = 'many'"),
             ({'owner': 'a', 'dataops_settings': 'x'}, "set by the runner")]
    for params, msg in cases:
        with pytest.raises(InvalidInputError, match=msg.replace('(', r'\(').replace(')', r'\)').replace('?', r'\?')): run_notebook(nb, params, settings=ini)
    with pytest.raises(InvalidInputError, match="no Jupyter kernel named 'nope'"): run_notebook(nb, {'owner': 'a'}, settings=ini, kernel_name='nope')
    with pytest.raises(NotFoundError, match='does not exist'): run_notebook(tmp_path/'missing.ipynb', settings=ini)
    (tmp_path/'bad.ipynb').write_text('not json')
    with pytest.raises(InvalidInputError, match='is not a valid notebook'): run_notebook(tmp_path/'bad.ipynb', settings=ini)
    (tmp_path/'script.py').write_text('x = 1')
    with pytest.raises(InvalidInputError, match=r'expected a file ending in \.ipynb'): run_notebook(tmp_path/'script.py', settings=ini)
    nbformat.write(nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell('x = 1')]), tmp_path/'untagged.ipynb')
    with pytest.raises(InvalidInputError, match="tag the cell holding the parameter assignments 'parameters'"): run_notebook(tmp_path/'untagged.ipynb', settings=ini)
    # a batch with one bad run among good ones starts nothing either, and names every bad run
    with pytest.raises(InvalidInputError) as e: run_batch(nb, [{'owner': 'a'}, {'owner': 'b', 'rows': 'x'}, {'rows': 3}], settings=ini, progress=False)
    assert '2 of 3 runs have invalid parameters' in str(e.value) and 'run 1 ' in str(e.value) and 'run 2 ' in str(e.value)
    assert not (tmp_path/'runs').exists()  # no run folder, no output notebook: no kernel was started
    with Storage(load_settings(ini)) as st: assert list_batches(st).items == []


# ---------------------------------------------------------------- run_notebook

RECORDER = ("import pandas as pd\nfrom dataops_lab.runner import record, open_run\nrun = open_run(dataops_session_id, dataops_settings)",
            "df = pd.DataFrame({'id': [1, 2, 3], 'name': ['a', None, 'c'], 'amount': [1.5, float('nan'), 3.0],\n"
            "                   'when': pd.to_datetime(['2024-01-01', '2024-02-01', '2024-03-01']), 'ok': [True, False, True]}).set_index('id')\n"
            "record('df', df); record('s', df['amount']); record('n', n); record('x', 2.5); record('t', 'text'); record('none', None)\n"
            "record('nested', {'a': [1, {'b': None}], 'c': True})\n"
            "run.artifacts.store_artifact({'n': n}, run.session_id, 'demo', name='made_by_notebook')")


def test_run_notebook_records_round_trip_and_artifacts(tmp_path):
    ini = _ini(tmp_path)
    nb = write_notebook(tmp_path/'rec.ipynb', "n: int = 1\ndataops_session_id = None\ndataops_settings = None", *RECORDER)
    res = run_notebook(nb, {'n': '7'}, settings=ini)
    assert (res.status, res.parameters) == ('succeeded', {'n': 7})
    expected = pd.DataFrame({'id': [1, 2, 3], 'name': ['a', None, 'c'], 'amount': [1.5, float('nan'), 3.0],
                             'when': pd.to_datetime(['2024-01-01', '2024-02-01', '2024-03-01']), 'ok': [True, False, True]}).set_index('id')
    pd.testing.assert_frame_equal(res.records['df'], expected)
    pd.testing.assert_series_equal(res.records['s'], expected['amount'])
    assert [(k, res.records[k]) for k in ('n', 'x', 't', 'none', 'nested')] == [('n', 7), ('x', 2.5), ('t', 'text'), ('none', None), ('nested', {'a': [1, {'b': None}], 'c': True})]
    assert type(res.records['n']) is int and type(res.records['x']) is float
    assert read_records(res.output_path).keys() == res.records.keys()  # readable from the executed notebook alone
    st = Storage(load_settings(ini))
    try:
        arts = ArtifactStore(st)
        got = {arts.get_artifact(a).name: arts.get_artifact(a) for a in res.artifact_ids}
        assert set(got) == {'rec.ipynb', 'rec.records', 'made_by_notebook'}
        assert {a.session_id for a in got.values()} == {res.session_id}  # the notebook wrote to the runner's session
        assert got['rec.ipynb'].artifact_type is ArtifactType.RESULT and got['rec.records'].parents == [res.notebook_artifact_id]
        assert nbformat.reads(arts.get_artifact_content(res.notebook_artifact_id).decode(), 4).cells[-1].outputs  # the executed notebook
        assert SessionManager(st).get_session(res.session_id).metadata['run_id'] == res.run_id
    finally: st.close()
    assert Path(res.output_path).parent == tmp_path/'runs'/res.run_id


SIGINT_PROBE = (
    "import subprocess, sys, threading\nfrom dataops_lab.runner import record",
    "probe = ('import os, signal, sys, time\\n'\n"
    "         'signal.signal(signal.SIGINT, lambda *a: (open(sys.argv[1], \"w\").write(\"SIGINT\"), sys.exit(0)))\\n'\n"
    "         'parent = os.getppid(); print(\"ready\", flush=True)\\n'\n"
    "         'while os.getppid() == parent: time.sleep(0.05)\\n')  # ends with its kernel at the latest\n"
    "child = subprocess.Popen([sys.executable, '-c', probe, mark], stdout=subprocess.PIPE, text=True)  # in the kernel's process group\n"
    "assert child.stdout.readline() == 'ready\\n'\n"
    "threading.Thread(target=child.wait, daemon=True).start()  # reaped as soon as it ends\n"
    "record('pid', child.pid)")


def _gone(pid):
    try: return Path(f'/proc/{pid}/stat').read_text().split(') ')[1][0] == 'Z'
    except FileNotFoundError: return True


@pytest.mark.skipif(not Path('/proc').is_dir(), reason='reads /proc to see the probe process end')
def test_ending_a_run_sends_its_kernel_no_interrupt(tmp_path):
    "A finished run's kernel is shut down, not interrupted: a process the notebook started gets no SIGINT (the kernel ends it with SIGTERM)"
    ini = _ini(tmp_path)
    mark = tmp_path/'got-sigint'
    nb = write_notebook(tmp_path/'probe.ipynb', "mark: str = ''", *SIGINT_PROBE)
    res = run_notebook(nb, {'mark': str(mark)}, settings=ini, store=False)
    pid, deadline = res.records['pid'], time.monotonic() + 30
    while not _gone(pid):
        assert time.monotonic() < deadline, f'the probe process {pid} outlived its kernel by 30 s'
        time.sleep(0.05)
    assert not mark.exists(), 'the run sent SIGINT to its kernel before shutting it down'


def test_failed_cell_is_captured_and_partial_notebook_kept(tmp_path):
    ini = _ini(tmp_path)
    nb = write_notebook(tmp_path/'fail.ipynb', "n: int = 1", "from dataops_lab.runner import record\nrecord('before', n)",
                        "x = {'a': 1}\ny = x['missing']  # fails", "record('after', 1)")
    with pytest.raises(NotebookRunError) as e: run_notebook(nb, {'n': 3}, settings=ini)
    err = e.value
    assert (err.cell_index, err.ename, err.evalue) == (2, 'KeyError', "'missing'")
    assert "y = x['missing']" in err.source and "fail.ipynb: cell 2 raised KeyError" in str(err)
    assert any('KeyError' in line for line in err.traceback)
    out = nbformat.read(err.output_path, 4)
    assert [c.get('outputs', []) and c.outputs[0].output_type for c in out.cells if c.cell_type == 'code'][-1] == []  # the cell after never ran
    assert err.result.status == 'failed' and err.result.records == {'before': 3}
    with ArtifactStore(Storage(load_settings(ini))) as arts:
        a = arts.get_artifact(err.result.notebook_artifact_id)
        assert (a.artifact_type, a.metadata['status'], a.session_id) == (ArtifactType.DEBUG, 'failed', err.result.session_id)
    back = pickle.loads(pickle.dumps(err))  # crosses process boundaries with its details
    assert (type(back), back.cell_index, back.ename, back.output_path) == (NotebookRunError, 2, 'KeyError', err.output_path)


# ---------------------------------------------------------------- run_batch on a real LocalCluster

PROBE = ("import os, time, json\nfrom ipykernel import get_connection_info\nfrom dataops_lab.runner import record\n"
         "t0 = time.time()\ntime.sleep(1.5)\ninfo = json.loads(get_connection_info())\n"
         "record('probe', {'pid': os.getpid(), 'ppid': os.getppid(), 'cwd': os.getcwd(), 'start': t0, 'end': time.time(),\n"
         "                 'endpoints': sorted(f\"{info['transport']}://{info['ip']}:{info[k]}\" for k in ('shell_port', 'iopub_port', 'stdin_port', 'control_port', 'hb_port'))})\n"
         "record('square', n * n)")


@pytest.fixture(scope='module')
def batch_dir(tmp_path_factory):
    "A folder with settings, a probing notebook and one 4-run batch executed on a 2-worker LocalCluster"
    d = tmp_path_factory.mktemp('batch')
    for k in [k for k in os.environ if k.startswith('DATAOPS_')]: os.environ.pop(k)
    ini = _ini(d)
    nb = write_notebook(d/'probe.ipynb', "n: int = 1\nlabel: str = 'x'", PROBE)
    res = run_batch(nb, {'n': [1, 2, 3, 4], 'label': 'grid'}, settings=ini, progress=False)
    return d, ini, nb, res


def _probes(res):
    return {r.run_key: read_records(r.output_path)['probe'] for r in res.runs.itertuples()}


def test_run_batch_on_local_cluster_isolates_runs(batch_dir):
    d, ini, nb, res = batch_dir
    assert res.status == 'succeeded', res.runs[['run_key', 'status', 'error']]
    assert list(res.runs.n) == [1, 2, 3, 4] and set(res.runs.status) == {'succeeded'} and set(res.runs.attempts) == {1}
    assert [read_records(p)['square'] for p in res.runs.output_path] == [1, 4, 9, 16]
    probes = _probes(res)
    assert len({p['pid'] for p in probes.values()}) == 4  # a kernel per run
    assert len({p['ppid'] for p in probes.values()}) == 2  # started by the two worker processes
    assert len({p['cwd'] for p in probes.values()}) == 4 and all(p['cwd'].startswith(str(d/'runs'/res.batch_id)) for p in probes.values())
    assert len(set(res.runs.session_id)) == 4
    pairs = [(a, b) for a in probes.values() for b in probes.values() if a['pid'] < b['pid'] and a['start'] < b['end'] and b['start'] < a['end']]
    assert pairs, "no two runs overlapped: the batch did not run concurrently"
    assert all(e.startswith('ipc://') for p in probes.values() for e in p['endpoints'])  # Unix sockets, no TCP ports to race for
    for a, b in pairs: assert not set(a['endpoints']) & set(b['endpoints'])  # concurrent kernels never share an endpoint
    assert all(len(ids) == 2 for ids in res.runs.artifact_ids)  # executed notebook + records


def test_batch_tables_contract(batch_dir):
    d, ini, nb, res = batch_dir
    with Storage(load_settings(ini)) as st:
        page = list_batches(st, limit=1)
        b = page.items[0]
        assert BATCH_KEYS <= set(b) and (b['batch_id'], b['status'], b['n_runs'], b['n_succeeded'], b['n_failed'], b['n_skipped']) == (res.batch_id, 'succeeded', 4, 4, 0, 0)
        assert isinstance(b['created_at'], str) and b['duration_s'] > 0 and b['notebook'] == str(nb)
        runs = batch_runs(st, res.batch_id)
        assert all(RUN_KEYS <= set(r) for r in runs)
        assert [(r['params'], r['status'], r['attempts']) for r in runs] == [({'n': i, 'label': 'grid'}, 'succeeded', 1) for i in (1, 2, 3, 4)]
        assert all(isinstance(r['artifact_ids'], list) and r['started_at'] <= r['finished_at'] and r['error'] is None for r in runs)
        with pytest.raises(NotFoundError, match='list_batches'): batch_runs(st, 'batch_nope')


def test_resume_skips_succeeded_runs_and_reruns_when_the_notebook_changes(batch_dir, tmp_path):
    d, ini, nb, res = batch_dir
    again = run_batch(nb, {'n': [1, 2, 3, 4], 'label': 'grid'}, settings=ini, progress=False, scheduler='synchronous')
    assert (again.batch_id, list(again.runs.status), again.status) == (res.batch_id, ['skipped'] * 4, 'succeeded')
    assert list(again.runs.session_id) == list(res.runs.session_id)  # pointing at the runs that did the work
    # a grown grid: the old runs are skipped (found in the other batch), only the new one runs
    grown = run_batch(nb, {'n': [1, 5], 'label': 'grid'}, settings=ini, progress=False, scheduler='synchronous')
    assert grown.batch_id != res.batch_id and list(grown.runs.status) == ['skipped', 'succeeded']
    with Storage(load_settings(ini)) as st:
        rows = batch_runs(st, grown.batch_id)
        assert (rows[0]['status'], rows[0]['skipped_from'], rows[0]['session_id']) == ('skipped', res.batch_id, res.runs.session_id[0])
        assert [b['batch_id'] for b in list_batches(st).items][:2] == [grown.batch_id, res.batch_id]  # newest first
        assert list_batches(st).items[0]['n_skipped'] == 1
    # resume=False runs everything again
    forced = run_batch(nb, {'n': [5], 'label': 'grid'}, settings=ini, progress=False, scheduler='synchronous', resume=False)
    assert list(forced.runs.status) == ['succeeded']
    # changing the notebook's code changes every run key: nothing is skipped
    changed = write_notebook(tmp_path/'probe.ipynb', "n: int = 1\nlabel: str = 'x'", PROBE.replace('time.sleep(1.5)', 'time.sleep(0)'))
    rerun = run_batch(changed, {'n': [1], 'label': 'grid'}, settings=ini, progress=False, scheduler='synchronous')
    assert list(rerun.runs.status) == ['succeeded']
    # ... but re-saving the same code with outputs does not
    same = nbformat.read(nb, 4); same.cells[1].outputs = [nbformat.v4.new_output('stream', text='old output')]; same.cells[1].execution_count = 3
    nbformat.write(same, tmp_path/'resaved.ipynb')
    assert list(run_batch(tmp_path/'resaved.ipynb', {'n': [1], 'label': 'grid'}, settings=ini, progress=False, scheduler='synchronous').runs.status) == ['skipped']


def test_batch_tables_on_every_tier(ini, backend):
    "The batch and run items, listing and paging on SQLite and on DynamoDB (moto over HTTP), with the runs' artifacts on the tier"
    settings = load_settings(ini)
    Storage(settings).ensure().close()  # explicit provisioning, as for every table on a production tier
    nb = write_notebook(ini.parent/'t.ipynb', "n: int = 1", "from dataops_lab.runner import record\nrecord('n2', n * 2)")
    first = run_batch(nb, {'n': [1]}, settings=ini, progress=False, scheduler='synchronous')
    second = run_batch(nb, {'n': [2]}, settings=ini, progress=False, scheduler='synchronous')
    assert (first.status, second.status) == ('succeeded', 'succeeded')
    with Storage(settings) as st:
        p1 = list_batches(st, limit=1)
        p2 = list_batches(st, limit=1, cursor=p1.cursor)
        assert [b['batch_id'] for b in p1.items + p2.items] == [second.batch_id, first.batch_id]
        assert (p2.items[0]['n_runs'], p2.items[0]['n_succeeded'], p2.items[0]['status']) == (1, 1, 'succeeded')
        runs = batch_runs(st, first.batch_id)
        assert [(r['params'], r['status']) for r in runs] == [({'n': 1}, 'succeeded')]
        arts = ArtifactStore(st)
        assert [arts.get_artifact(r['artifact_ids'][0]).name for r in runs] == ['t.ipynb']
    # a grid holding both: the runs are found in the other batches and skipped, on this tier's index too
    both = run_batch(nb, {'n': [1, 2]}, settings=ini, progress=False, scheduler='synchronous')
    assert list(both.runs.status) == ['skipped', 'skipped']
    with Storage(settings) as st: assert [r['skipped_from'] for r in batch_runs(st, both.batch_id)] == [first.batch_id, second.batch_id]


# ---------------------------------------------------------------- retries: only kernel start-up failures

FLAKY = """import os, sys, pathlib
count = pathlib.Path(__file__).with_name('launches')
n = int(count.read_text()) if count.exists() else 0
count.write_text(str(n + 1))
if n < {fail}: sys.exit(3)
os.execv(sys.executable, [sys.executable, '-m', 'ipykernel_launcher', *sys.argv[1:]])
"""


def _kernelspec(root, name, argv):
    k = root/'kernels'/name
    k.mkdir(parents=True)
    (k/'kernel.json').write_text(json.dumps({'argv': argv, 'display_name': name, 'language': 'python'}))
    return k


def test_retries_only_kernel_start_failures(tmp_path, monkeypatch):
    ini = _ini(tmp_path, 'retries = 2\n')
    jp = tmp_path/'jupyter'
    flaky = _kernelspec(jp, 'flaky', [])
    (flaky/'launch.py').write_text(FLAKY.format(fail=1))
    (flaky/'kernel.json').write_text(json.dumps({'argv': [sys.executable, str(flaky/'launch.py'), '-f', '{connection_file}'], 'display_name': 'flaky', 'language': 'python'}))
    _kernelspec(jp, 'broken', [sys.executable, '-c', 'import sys; sys.exit(5)', '{connection_file}'])
    monkeypatch.setenv('JUPYTER_PATH', str(jp))
    nb = write_notebook(tmp_path/'k.ipynb', "n: int = 1", "from dataops_lab.runner import record\nrecord('n', n)")
    # the kernel fails once, then starts: one retry, success
    ok = run_batch(nb, [{'n': 1}], settings=ini, progress=False, scheduler='synchronous', kernel_name='flaky')
    assert (ok.status, list(ok.runs.attempts), (flaky/'launches').read_text()) == ('succeeded', [2], '2')
    # a kernel that never starts: retries + 1 attempts, then failed with the reason and no artifacts
    bad = run_batch(nb, [{'n': 2}], settings=ini, progress=False, scheduler='synchronous', kernel_name='broken', retries=1)
    row = bad.runs.iloc[0]
    assert (bad.status, row.status, row.attempts, row.artifact_ids) == ('failed', 'failed', 2, [])
    assert "kernel 'broken' did not start" in row.error
    # a failing cell is a result, never retried
    cell = write_notebook(tmp_path/'c.ipynb', "n: int = 1", "raise ValueError('bad data')")
    failed = run_batch(cell, [{'n': 3}], settings=ini, progress=False, scheduler='synchronous')
    assert (failed.runs.status[0], failed.runs.attempts[0]) == ('failed', 1) and 'ValueError: bad data' in failed.runs.error[0]


# ---------------------------------------------------------------- failures of the batch machinery

def _free_port():
    with socket.socket() as s:
        s.bind(('127.0.0.1', 0)); return s.getsockname()[1]


@pytest.mark.timeout(60)
def test_dead_scheduler_address_is_a_clear_error(tmp_path):
    addr = f"tcp://127.0.0.1:{_free_port()}"
    ini = _ini(tmp_path, f"scheduler = {addr}\n")
    nb = write_notebook(tmp_path/'nb.ipynb', "n: int = 1", "n")
    with pytest.raises(SchedulerUnavailableError) as e: run_batch(nb, {'n': [1, 2]}, settings=ini, progress=False, connect_timeout=2)
    assert addr in str(e.value) and 'dask scheduler' in str(e.value) and 'local cluster' in str(e.value)
    with Storage(load_settings(ini)) as st: assert list_batches(st).items == []  # nothing recorded, nothing started
    assert not any((tmp_path/'runs').glob('*/*/*.ipynb'))


def test_worker_death_leaves_no_run_marked_running(tmp_path):
    ini = _ini(tmp_path)
    nb = write_notebook(tmp_path/'die.ipynb', "n: int = 1",
                        "import os, signal, time\nif n == 2:\n    os.kill(os.getppid(), signal.SIGKILL)  # the kernel's parent: the Dask worker\n    time.sleep(30)\nn")
    res = run_batch(nb, {'n': [1, 2, 3]}, settings=ini, progress=False)
    st = dict(zip(res.runs.n, res.runs.status))
    assert st == {1: 'succeeded', 2: 'failed', 3: 'succeeded'} and res.status == 'failed'
    assert 'worker' in res.runs.error[1].lower()
    with Storage(load_settings(ini)) as s:
        assert {r['status'] for r in batch_runs(s, res.batch_id)} == {'succeeded', 'failed'}
        assert list_batches(s).items[0]['status'] == 'failed'
        assert not [it for it in s.table(BATCH_RUNS_TABLE).query_all(res.batch_id) if it['status'] in ('running', 'pending')]


# ---------------------------------------------------------------- grid files and the CLI function

def test_grid_files(tmp_path):
    cases = {'g.yaml': ('months: [1, 2\n', 'is not valid YAML'), 'g.json': ('{"months": [1,', 'is not valid JSON'),
             'h.yaml': ('- 1\n- 2\n', 'run 0 is a int, not a dict'), 'e.yaml': ('', 'is empty'), 's.yaml': ('months\n', 'holds a str'),
             'g.toml': ('months = [1]', "unknown extension '.toml'")}
    for name, (text, msg) in cases.items():
        (tmp_path/name).write_text(text)
        with pytest.raises(InvalidInputError, match=msg) as e: load_grid(tmp_path/name)
        assert name in str(e.value)
    with pytest.raises(NotFoundError, match='does not exist'): load_grid(tmp_path/'none.yaml')
    (tmp_path/'ok.yaml').write_text("months: [1, 2]\nregion: eu\n")
    assert load_grid(tmp_path/'ok.yaml') == {'months': [1, 2], 'region': 'eu'}


def test_batch_cli_prints_the_results_table(tmp_path):
    ini = _ini(tmp_path)
    nb = write_notebook(tmp_path/'nb.ipynb', "n: int = 1", "assert n < 2")
    (tmp_path/'grid.json').write_text(json.dumps([{'n': 1}, {'n': 2}]))
    lines = []
    code = batch_cli(nb, tmp_path/'grid.json', settings_path=ini, scheduler='synchronous', progress=False, out=lines.append)
    assert code == 1 and 'failed' in lines[0] and '1 succeeded, 1 failed' in lines[0]
    assert 'run_key' in lines[1] and 'AssertionError' in lines[1]
    assert len(re.findall(r'\bart_[0-9A-Z]{20,}', lines[1])) == 2  # each run's executed-notebook artifact, failed ones included


# ---------------------------------------------------------------- templates

def _plain_env():
    return {k: v for k, v in os.environ.items() if not k.startswith('DATAOPS_')}


def test_templates_under_plain_papermill_cli(tmp_path):
    assert set(list_templates()) >= {'profile_dataset', 'sql_questions'}
    for name in ('profile_dataset', 'sql_questions'):
        nb = nbformat.read(template_path(name), 4)
        assert [c for c in nb.cells if 'parameters' in c.metadata.get('tags', [])], f"{name} lost its parameters tag"
        assert all(not c.get('outputs') for c in nb.cells if c.cell_type == 'code')
    p1 = subprocess.run([str(VENV_BIN/'papermill'), '--no-progress-bar', str(template_path('profile_dataset')), 'p.ipynb'], cwd=tmp_path,
                        env=_plain_env(), capture_output=True, text=True, timeout=300)
    assert p1.returncode == 0, p1.stderr[-3000:]
    r = read_records(tmp_path/'p.ipynb')
    assert '4 tables' in r['summary'] and list(r['tables'].table) == ['customers', 'order_items', 'orders', 'products']
    assert 'orders.customer_id -> customers.customer_id' in r['foreign_keys']
    p2 = subprocess.run([str(VENV_BIN/'papermill'), '--no-progress-bar', str(template_path('sql_questions')), 'q.ipynb',
                         '-y', "questions: ['how many customers are there?', 'average salary by department']"],
                        cwd=tmp_path, env=_plain_env(), capture_output=True, text=True, timeout=300)
    assert p2.returncode == 0, p2.stderr[-3000:]
    a = read_records(tmp_path/'q.ipynb')
    assert a['n_answered'] == 1 and list(a['answers'].status) == ['completed', 'failed']
    assert a['answers'].sql[0].upper().startswith('SELECT') and "can't write SQL" in a['answers'].error[1]
    assert (tmp_path/'.dataops').is_dir()  # embedded storage in the working folder when no settings are given


def test_template_under_the_runner_shares_the_session(tmp_path):
    ini = _ini(tmp_path)
    spec = inspect_notebook(template_path('profile_dataset'))
    assert spec['dataset'].required is False and spec['tables'].type_name == 'Optional[list[str]]'
    with pytest.raises(InvalidInputError, match="parameter 'tables'"): validate_parameters(spec, {'tables': 'orders'})
    res = run_notebook(template_path('profile_dataset'), {'tables': ['orders', 'customers']}, settings=ini)
    assert list(res.records['tables'].table) == ['customers', 'orders']
    assert res.records['profile_artifact'] in res.artifact_ids  # the chain's artifact, in the runner's session


INTERRUPTED = """import sys
from dataops_lab.batch import run_batch
try: run_batch(sys.argv[1], {'n': [1, 2, 3, 4]}, settings=sys.argv[2], progress=False)
except KeyboardInterrupt: print('interrupted', flush=True)
"""


def test_interrupted_batch_marks_its_runs_cancelled(tmp_path):
    from conftest import Child
    ini = _ini(tmp_path)
    nb = write_notebook(tmp_path/'slow.ipynb', "n: int = 1", "import time\ntime.sleep(120)")
    child = Child(INTERRUPTED, nb, ini)
    try:
        with Storage(load_settings(ini)) as st:
            deadline = time.monotonic() + 120
            while time.monotonic() < deadline:  # wait until a worker has claimed a run
                if any(r['status'] == 'running' for r in st.table(BATCH_RUNS_TABLE).scan(limit=100).items): break
                assert child.proc.poll() is None, child.proc.stderr.read()[-3000:]
                time.sleep(0.2)
            else: raise AssertionError('no run started within 120 s')
            child.proc.send_signal(signal.SIGINT)
            assert 'interrupted' in child.finish(timeout=120)
            rows = st.table(BATCH_RUNS_TABLE).scan(limit=100).items
            assert len(rows) == 4 and {r['status'] for r in rows} == {'cancelled'}
            assert all(r['error'] == 'the batch was interrupted' for r in rows)
            assert list_batches(st).items[0]['status'] == 'cancelled'
    finally: child.close()


# ---------------------------------------------------------------- any file name; Ctrl-C never loses nor repeats finished work

def test_any_file_name_runs_stores_and_resumes(tmp_path):
    "A notebook named as people name files runs, stores its executed notebook, and is not executed again on resume"
    ini = _ini(tmp_path)
    log = tmp_path/'executions.log'
    nb = write_notebook(tmp_path/'sales report (v2).ipynb', "n: int = 1",
                        f"with open({str(log)!r}, 'a') as f: f.write(f'{{n}}\\n')\nfrom dataops_lab.runner import record\nrecord('n', n)")
    first = run_batch(nb, {'n': [1, 2]}, settings=ini, progress=False, scheduler='synchronous')
    assert first.status == 'succeeded', list(first.runs.error)
    with ArtifactStore(Storage(load_settings(ini))) as arts:
        a = arts.get_artifact(first.runs.artifact_ids[0][0])
        assert (a.name, a.metadata['file_name'], a.artifact_type) == ('sales report v2.ipynb', 'sales report (v2).ipynb', ArtifactType.RESULT)
        assert [arts.get_artifact(i).name for i in first.runs.artifact_ids[0]] == ['sales report v2.ipynb', 'sales report v2.records']
    again = run_batch(nb, {'n': [1, 2]}, settings=ini, progress=False, scheduler='synchronous')
    assert (again.status, list(again.runs.status)) == ('succeeded', ['skipped', 'skipped'])
    assert sorted(log.read_text().split()) == ['1', '2']  # each run executed exactly once


STEPS = ("import os, pathlib\nlog = pathlib.Path(logdir)\n(log/f'start-{n}-{os.getpid()}').touch()",
         "import time\nwhile n > 1 and (log/'hold').exists(): time.sleep(0.05)  # runs after the first wait while 'hold' exists",
         "(log/f'end-{n}-{os.getpid()}').touch()  # the last cell")


def _count(folder, what, n): return len(list(folder.glob(f'{what}-{n}-*')))


def _finished_every_cell(path):
    "papermill marks each cell 'completed' in the output notebook it saves after every cell"
    try: nb = nbformat.read(path, 4)
    except Exception: return False
    return all(c.metadata.get('papermill', {}).get('status') == 'completed' for c in nb.cells)


@pytest.mark.timeout(400)
def test_sigint_to_the_cli_records_finished_runs_and_resume_never_reruns_them(tmp_path):
    """A real SIGINT to `dataops-lab batch` the moment a run's notebook has finished every cell (before the batch heard of it):
    that run is recorded succeeded, with its artifacts stored once; the resume runs only the others"""
    ini, logs = _ini(tmp_path), tmp_path/'logs'
    logs.mkdir(); (logs/'hold').touch()
    nb = write_notebook(tmp_path/'steps.ipynb', "n: int = 1\nlogdir: str = ''", *STEPS)
    grid = tmp_path/'grid.yaml'
    grid.write_text(json.dumps({'n': [1, 2, 3, 4, 5, 6], 'logdir': str(logs)}))
    cmd = [str(VENV_BIN/'dataops-lab'), '--settings', str(ini), 'batch', str(nb), '--grid', str(grid), '--no-progress']
    proc = subprocess.Popen(cmd, cwd=tmp_path, env=_plain_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 240
        while not any(_finished_every_cell(p) for p in (tmp_path/'runs').glob('*/*/steps.ipynb')):  # run 1 finished its last cell
            assert proc.poll() is None, proc.communicate()[1][-3000:]
            assert time.monotonic() < deadline, 'no run finished within 240 s'
            time.sleep(0.02)
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None: proc.kill(); proc.wait(30)
    assert proc.returncode == 130, (out[-2000:], err[-3000:])
    with Storage(load_settings(ini)) as st:
        (b,) = list_batches(st).items
        runs = {r['params']['n']: r for r in batch_runs(st, b['batch_id'])}
        assert b['status'] == 'cancelled' and runs[1]['status'] == 'succeeded', {n: (r['status'], r['error']) for n, r in runs.items()}
        assert {r['status'] for n, r in runs.items() if n > 1} == {'cancelled'}
    (logs/'hold').unlink()
    res = subprocess.run(cmd, cwd=tmp_path, env=_plain_env(), capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stdout[-2000:] + res.stderr[-3000:]
    assert '1 skipped' in res.stdout and '5 succeeded' in res.stdout, res.stdout
    assert [_count(logs, 'end', n) for n in range(1, 7)] == [1] * 6  # every run finished exactly once
    assert _count(logs, 'start', 1) == 1  # the finished run never started again
    with Storage(load_settings(ini)) as st:
        arts = ArtifactStore(st)
        rows = batch_runs(st, b['batch_id'])
        assert [r['status'] for r in rows] == ['succeeded'] * 6
        assert [len(arts.list_artifacts(r['session_id'], name='steps.ipynb', include_shared=False)) for r in rows] == [1] * 6  # stored once


def test_templates_check_their_parameters_under_plain_papermill(tmp_path):
    "Plain papermill with a wrong value fails in the cell after the injected one, with run_notebook's message, before the template opens any storage"
    spec = inspect_notebook(template_path('sql_questions'))
    for value, why in (('how many orders are there?', "parameter 'questions' (list[str]) = 'how many orders are there?': Input should be a valid list"),
                       ('5', "parameter 'questions' (list[str]) = 5: Input should be a valid list")):
        with pytest.raises(InvalidInputError) as e: validate_parameters(spec, {'questions': value if value != '5' else 5})
        assert why in str(e.value)  # the runner's own message...
        p = subprocess.run([str(VENV_BIN/'papermill'), '--no-progress-bar', str(template_path('sql_questions')), 'q.ipynb', '-p', 'questions', value],
                           cwd=tmp_path, env=_plain_env(), capture_output=True, text=True, timeout=300)
        assert p.returncode != 0 and why in p.stderr, p.stderr[-3000:]  # ...is plain papermill's
        out = nbformat.read(tmp_path/'q.ipynb', 4)
        ran = [c for c in out.cells if c.cell_type == 'code' and c.execution_count]
        assert 'injected-parameters' in ran[-2].metadata.get('tags', []) and 'check_parameters()' in ran[-1].source  # it stopped right after the injected cell
        assert not (tmp_path/'.dataops').exists()  # before any storage was opened
    bad = subprocess.run([str(VENV_BIN/'papermill'), '--no-progress-bar', str(template_path('profile_dataset')), 'p.ipynb', '-p', 'tables', 'orders'],
                         cwd=tmp_path, env=_plain_env(), capture_output=True, text=True, timeout=300)
    assert bad.returncode != 0 and "parameter 'tables' (Optional[list[str]]) = 'orders'" in bad.stderr, bad.stderr[-3000:]


def test_a_run_that_answered_nothing_is_a_failure_everywhere(tmp_path):
    "sql_questions on a database that does not exist: run_notebook raises, the batch and its table say failed, the CLI table shows what each run recorded"
    ini = _ini(tmp_path)
    with pytest.raises(NotebookRunError) as e: run_notebook(template_path('sql_questions'), {'database': str(tmp_path/'nope.db')}, settings=ini)
    assert 'none of the 2 questions was answered' in str(e.value) and 'nope.db does not exist' in str(e.value)
    assert e.value.result.status == 'failed' and (e.value.result.records['n_answered'], e.value.result.records['n_failed']) == (0, 2)
    (tmp_path/'grid.yaml').write_text(json.dumps([{'database': str(tmp_path/'nope.db')}, {'questions': ['how many customers are there?', 'average salary by department']}]))
    lines = []
    code = batch_cli(template_path('sql_questions'), tmp_path/'grid.yaml', settings_path=ini, scheduler='synchronous', progress=False, out=lines.append)
    assert code == 1 and '1 succeeded, 1 failed' in lines[0], lines
    header, failed, partial = lines[1].splitlines()[:3]
    assert header.split()[header.split().index('duration_s') + 1:][:2] == ['n_answered', 'n_failed']  # each run's records, as columns
    assert re.search(r'\bfailed\s+1\s+\S+\s+0\s+2\s+sql_questions.ipynb: cell \d+ raised', failed), failed
    assert re.search(r'1 run\(s\) did not succeed:\n  r\w+ failed: sql_questions.ipynb: cell \d+ raised InvalidInputError: none of the 2 questions was answered: '
                     r"'how many orders are there\?': \S*nope.db does not exist", lines[2]), lines[2]  # the whole reason, below the table
    assert re.search(r'\bsucceeded\s+1\s+\S+\s+1\s+1\s', partial), partial
    with Storage(load_settings(ini)) as st:
        (b,) = list_batches(st).items
        assert (b['status'], b['n_failed'], b['n_succeeded']) == ('failed', 1, 1)
        assert [(r['status'], r['records']) for r in batch_runs(st, b['batch_id'])] == [('failed', {'n_answered': 0, 'n_failed': 2}), ('succeeded', {'n_answered': 1, 'n_failed': 1})]
