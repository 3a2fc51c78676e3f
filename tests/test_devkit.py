"""The workflow development kit, driven the way a user drives it: the real `dataops-workflow` console script in a
temporary folder (subprocesses, no settings.ini, no model configured).

For each of the six templates: `create` → its generated pytest passes → `test` → `validate --strict` →
`docs --include-diagrams` → `benchmark -n 20` → `package`; then every wheel is pip-installed into a fresh virtual
environment where `list` shows it and the orchestrator routes to it. Also: the 5-minute walk-through (create, a small
edit of node code whose size is asserted, test, docs), the interactive shell under a pseudo-terminal, `convert` of a
DataOps Agent workflow run through the orchestrator with a fake model, and the CLI's exit codes and errors.

The fresh environment is a venv without pip whose site-packages reaches this environment's packages through a `.pth`
file, and the wheels go in with `pip install --no-deps --no-index`: nothing is downloaded. It still proves the
entry-point registration, because the workflow's source folder is nowhere on that interpreter's path and `list` runs in
a folder without a `workflows/` folder: the only way it can find the workflow is the `entry_points.txt` pip wrote into
the fresh site-packages.

When the suite runs under coverage (`./run test` does), the subprocesses are measured too (COVERAGE_PROCESS_START)."""
import json, os, re, shutil, subprocess, sys, textwrap, difflib, time
from pathlib import Path
import pytest
from cli import user_env

BIN = Path(sys.executable).parent
CLI = str(BIN / 'dataops-workflow')
TEMPLATES = ('simple', 'supervisor', 'iterative', 'sequential', 'parallel', 'conditional')

env = user_env

def run(*args, cwd, ok=True, timeout=300, exe=CLI, **kw) -> subprocess.CompletedProcess:
    "Run `dataops-workflow ARGS` in `cwd`; with ok=True the exit code must be 0"
    p = subprocess.run([exe, *map(str, args)], cwd=cwd, capture_output=True, text=True, timeout=timeout, env=env(), **kw)
    if ok and p.returncode != 0: raise AssertionError(f"dataops-workflow {' '.join(map(str, args))} exited {p.returncode}\n--- stdout\n{p.stdout}\n--- stderr\n{p.stderr}")
    return p

@pytest.fixture(scope='module')
def work(tmp_path_factory):
    "A user's project folder with one workflow of each template, created with the console script"
    d = tmp_path_factory.mktemp('project')
    for t in TEMPLATES: run('create', f"t_{t}", '--template', t, '-a', 'Data Team', cwd=d)
    return d

# ---------------------------------------------------------------- per template

def test_create_makes_packages_whose_own_tests_pass(work):
    "Each template's package has the documented files, and its generated tests pass as made (one pytest run over the six)"
    for template in TEMPLATES:
        folder = work / 'workflows' / f"t_{template}"
        assert sorted(p.relative_to(folder).as_posix() for p in folder.rglob('*') if p.is_file()) == sorted(
            ['README.md', '__init__.py', 'config.yaml', 'examples/input.json', 'nodes.py', 'state.py', 'tests/__init__.py', 'tests/test_workflow.py',
             'workflow.py', f"t_{template}.ipynb"] + (['examples/records.csv'] if template == 'sequential' else [])), template
    junit = work / 'generated-tests.xml'
    p = subprocess.run([sys.executable, '-m', 'pytest', '-q', '-p', 'no:cacheprovider', f"--junitxml={junit}", 'workflows'], cwd=work, capture_output=True, text=True, env=env(), timeout=600)
    assert p.returncode == 0, p.stdout + p.stderr
    import xml.etree.ElementTree as ET
    cases = ET.parse(junit).getroot().iter('testcase')
    per = {t: [] for t in TEMPLATES}
    for c in cases:
        t = next((t for t in TEMPLATES if re.search(rf"(^|\.)t_{t}\.tests\.", c.get('classname'))), None)
        assert t is not None, c.get('classname')
        per[t].append((c.get('name'), [x.tag for x in c]))
    assert all(per.values()) and not [(t, n, bad) for t,cs in per.items() for n,bad in cs if bad], per

@pytest.mark.parametrize('template', TEMPLATES)
def test_test_validate_docs_benchmark_package(work, template):
    name = f"t_{template}"
    t = run('test', name, '--trace', cwd=work).stdout
    assert '✅ test passed' in t and 'Trace:' in t and 'Artifacts created:' in t, t
    v = run('validate', name, '--strict', cwd=work).stdout
    assert 'validation PASSED (0 errors, 0 warnings, strict)' in v, v
    d = run('docs', name, '--include-diagrams', cwd=work).stdout
    assert d.startswith(f"# T {template}") and '```mermaid' in d and '## Inputs' in d and '## Output' in d, d[:500]
    b = run('benchmark', name, '-n', 20, '--report', f"bench/{name}", cwd=work)
    rep = json.loads((work / 'bench' / f"{name}.json").read_text())
    assert (rep['runs'], rep['errors'], rep['latency']['n'], rep['peer']['n']) == (20, 0, 20, 20), rep
    assert {s['node'] for s in rep['nodes']} and abs(sum(s['share'] for s in rep['nodes']) - 1) < 1e-6
    assert '| side | n | mean ms | median ms | p95 ms | p99 ms |' in b.stdout and (work / 'bench' / f"{name}.md").exists()
    pk = json.loads(run('package', name, '--json', '-o', 'dist', cwd=work).stdout)
    assert Path(pk['path']).name == f"dataops_workflow_t_{template}-0.1.0-py3-none-any.whl" and pk['entry_point'] == f"t_{template}.workflow:T{template.capitalize()}Workflow"

def test_installed_wheels_are_listed_and_routed_to(work, tmp_path):
    "pip installs the six wheels into a fresh environment; there `list` shows them and the orchestrator routes to each"
    for t in TEMPLATES:  # built by the per-template test when it ran first
        if not (work / 'dist' / f"dataops_workflow_t_{t}-0.1.0-py3-none-any.whl").exists(): run('package', f"t_{t}", '-o', 'dist', cwd=work)
    wheels = sorted((work / 'dist').glob('*.whl'))
    assert len(wheels) == len(TEMPLATES), wheels
    fresh = tmp_path / 'fresh'
    subprocess.run([sys.executable, '-m', 'venv', '--without-pip', str(fresh)], check=True)
    site = next(fresh.glob('lib/python*/site-packages'))
    here = next(p for p in sys.path if p.endswith('site-packages') and Path(p).resolve().is_relative_to(Path(sys.prefix).resolve()))
    (site / 'dataops_lab_parent.pth').write_text(f"import site; site.addsitedir({here!r})\n")
    py = fresh / 'bin' / 'python'
    p = subprocess.run([sys.executable, '-m', 'pip', '--python', str(py), 'install', '-q', '--no-deps', '--no-index', *map(str, wheels)], capture_output=True, text=True, env=env())
    assert p.returncode == 0, p.stdout + p.stderr
    cli = fresh / 'bin' / 'dataops-workflow'  # what pip writes for a console script
    cli.write_text(f"#!{py}\nimport sys\nfrom dataops_lab.devkit.cli import main\nif __name__ == '__main__':\n    sys.exit(main())\n")
    cli.chmod(0o755)
    elsewhere = tmp_path / 'elsewhere'
    elsewhere.mkdir()
    shutil.copy(work / 'workflows' / 't_sequential' / 'examples' / 'records.csv', elsewhere / 'orders.csv')  # the file t_sequential's example query names
    listed = json.loads(run('list', '--json', cwd=elsewhere, exe=str(cli)).stdout)
    mine = {w['name']: w for w in listed['workflows'] if w['name'].startswith('t_')}
    assert sorted(mine) == sorted(f"t_{t}" for t in TEMPLATES) and {w['source'] for w in mine.values()} == {'entry point'}, listed
    assert all(str(work) not in w['location'] for w in mine.values())
    probe = textwrap.dedent('''
        import json, sys, tempfile
        from dataops_lab.devkit.workspace import workspace_registry
        from dataops_lab.devkit.harness import embedded_settings
        from dataops_lab.orchestrator import Orchestrator
        from dataops_lab.sessions import SessionManager
        from dataops_lab.store.base import Storage
        import dataops_lab.context
        reg = workspace_registry()
        sm = SessionManager(Storage(embedded_settings(tempfile.mkdtemp())).ensure())
        orch, out = Orchestrator(reg, sm), {}
        for name in sorted(n for n in reg.names() if n.startswith('t_')):
            q = reg[name].metadata.example_queries[0]
            r = orch.process(sm.create_session('u').session_id, q)
            out[name] = [r.workflow, r.kind, type(reg[name]).__module__]
        print(json.dumps(out))
    ''')
    routed = json.loads(subprocess.run([str(py), '-c', probe], cwd=elsewhere, capture_output=True, text=True, env=env(), check=True, timeout=300).stdout)
    assert routed == {f"t_{t}": [f"t_{t}", 'result', f"t_{t}.workflow"] for t in TEMPLATES}, routed

# ---------------------------------------------------------------- the 5-minute bar

EDIT = {
    'PROMPT = """You are {{title}}, a data engineering assistant.{context}\nAnswer concisely: {request}"""':
        'PROMPT = """You write entries for the data catalog.{context}\n'
        'Describe the table in one paragraph for analysts: what one row is, its key columns, how fresh it is.\n'
        'Table: {table}"""\n\n\n'
        'def table_in(request: str) -> str:\n'
        '    "The table a request names: its first word with a dot or an underscore, else the whole request"\n'
        '    return next((w.strip(".,?") for w in request.split() if "." in w or "_" in w), request)',
    '    """Answer the request with one call of the chat model"""': '    """Write the catalog entry for the table the request names"""',
    'PROMPT.format(request=state["request"], context=context)': 'PROMPT.format(table=table_in(state["request"]), context=context)',
}

def test_five_minute_walkthrough(tmp_path):
    "create → edit node code (counted: at most 20 lines) → test → docs, as a newcomer would"
    t0 = time.perf_counter()
    run('create', 'table_docs', '-d', 'Writes the data catalog entry of a table', cwd=tmp_path)
    nodes = tmp_path / 'workflows' / 'table_docs' / 'nodes.py'
    before = nodes.read_text()
    after = before
    for old, new in EDIT.items():
        old = old.replace('{{title}}', 'table docs')
        assert old in after, old
        after = after.replace(old, new)
    nodes.write_text(after)
    diff = [l for l in difflib.unified_diff(before.splitlines(), after.splitlines(), lineterm='', n=0) if l[:1] in '+-' and not l.startswith(('+++', '---'))]
    written = [l for l in diff if l.startswith('+') and l[1:].strip()]
    assert len(written) <= 20, f"the edit is {len(written)} lines of the user's own code:\n" + '\n'.join(written)
    t = run('test', 'table_docs', '--input', '{"request": "describe sales.orders for the catalog"}', '--trace', '-v', cwd=tmp_path).stdout
    assert 'Table: sales.orders' in t and 'Describe the table in one paragraph' in t and '✅ test passed' in t, t
    d = run('docs', 'table_docs', '--include-diagrams', '-o', 'docs/table_docs.md', cwd=tmp_path)
    page = (tmp_path / 'docs' / 'table_docs.md').read_text()
    assert 'Write the catalog entry for the table the request names' in page and '```mermaid' in page
    print(f"walk-through: {len(written)} lines written, {time.perf_counter() - t0:.1f} s of commands (load average {os.getloadavg()[0]:.1f})")

# ---------------------------------------------------------------- the shell under a terminal

def test_shell_in_a_pseudo_terminal(work):
    import pexpect
    sh = pexpect.spawn(CLI, ['shell', 't_conditional', '--mock-llm'], cwd=str(work), env=env(TERM='xterm'), encoding='utf-8', timeout=120, dimensions=(40, 160))
    try:
        sh.expect(r"Type 'help' for commands"); sh.expect_exact('t_conditional> ')
        sh.sendline('input rename the cust column to customer_id'); sh.expect_exact('"request": "rename the cust column to customer_id"'); sh.expect_exact('t_conditional> ')
        sh.sendline('run'); sh.expect(r'✅ complete in \d+ ms'); sh.expect_exact('[change]'); sh.expect_exact('t_conditional> ')
        sh.sendline('trace'); sh.expect(r'classify.*\r\n.*change.*\r\n.*respond'); sh.expect_exact('t_conditional> ')
        sh.sendline('run the orders load is stuck'); sh.expect_exact('[incident] Triage:'); sh.expect_exact('t_conditional> ')
        sh.sendline('output'); sh.expect_exact('"kind": "incident"'); sh.expect_exact('t_conditional> ')
        sh.sendline('artifacts'); sh.expect(r'art_\w+\s+respond\s+result'); sh.expect_exact('t_conditional> ')
        sh.sendintr(); sh.expect_exact('^C'); sh.expect_exact('t_conditional> ')  # Ctrl-C drops the line, the shell goes on
        sh.sendline('history'); sh.expect(r'#4 assistant\s+\[incident\]'); sh.expect_exact('t_conditional> ')
        sh.sendline('help'); sh.expect('Documented commands'); sh.expect_exact('t_conditional> ')
        sh.sendline('exit'); sh.expect(r'session (sess_\w+) kept'); sid = sh.match.group(1)
        sh.expect(pexpect.EOF)
    finally: sh.close()
    assert sh.exitstatus == 0
    h = run('test', 't_conditional', '--session', sid, '--json', cwd=work).stdout  # the session persists: a later command continues it
    assert [m['seq'] for m in json.loads(h)[0]['messages']] == [5, 6]

# ---------------------------------------------------------------- exit codes and errors

def test_json_output_and_offline_html(work):
    j = json.loads(run('test', 't_supervisor', '--json', cwd=work).stdout)[0]
    assert j['ok'] and not j['problems'] and [m['role'] for m in j['messages']] == ['user', 'assistant'] and [a['name'] for a in j['artifacts']] == ['researcher', 'analyst', 'finish'], j
    assert [s['node'] for s in j['steps']] == ['supervisor', 'researcher', 'supervisor', 'analyst', 'supervisor', 'finish']
    run('docs', 't_supervisor', '--include-diagrams', '-o', 'site/t_supervisor.html', cwd=work)
    page = (work / 'site' / 't_supervisor.html').read_text()
    assert '<svg' in page and '<table>' in page and not re.search(r'(?:src|href)=|<script|<link', page)

def test_exit_codes_and_errors(work, tmp_path):
    p = run('test', 'no_such_flow', cwd=work, ok=False)
    assert p.returncode == 2 and "no workflow 'no_such_flow'" in p.stderr and 'known workflows:' in p.stderr
    p = run('create', 'bad-name', cwd=tmp_path, ok=False)
    assert p.returncode == 2 and "'bad-name' is not a valid Python identifier" in p.stderr and not (tmp_path / 'workflows').exists()
    p = run('create', 't_simple', cwd=work, ok=False)
    assert p.returncode == 2 and 'exists already' in p.stderr and '--force' in p.stderr
    p = run('test', 't_simple', '--input', '{"request": ', cwd=work, ok=False)
    assert p.returncode == 2 and '--input is not valid JSON' in p.stderr
    p = run('test', 't_simple', '--input', '{"requets": "x"}', cwd=work, ok=False)
    assert p.returncode == 2 and "has no input(s) ['requets']" in p.stderr
    p = run('create', 'x', '--template', 'recursive', cwd=tmp_path, ok=False)
    assert p.returncode == 2 and "invalid choice: 'recursive'" in p.stderr
    p = run('test', 't_sequential', '--input', '{"source": "/nowhere/orders.csv"}', cwd=work, ok=False)
    assert p.returncode == 1 and "'/nowhere/orders.csv' does not exist" in p.stdout and '❌ test failed' in p.stdout
    p = run('test', 't_sequential', '--input', '{"source": "/nowhere/orders.csv"}', '--mock-tools', cwd=work)
    assert '✅ test passed' in p.stdout
    # a workflow that breaks a check: validate exits 1, and says where
    c = tmp_path / 'workflows' / 'leaky'
    run('create', 'leaky', '-t', 'simple', cwd=tmp_path)
    nodes = c / 'nodes.py'
    nodes.write_text(nodes.read_text().replace('return {"answer": reply, "summary": reply}', 'return {"answer": reply, "summary": reply, "request": {"at": object()}}'))
    p = run('validate', 'leaky', cwd=tmp_path, ok=False)
    assert p.returncode == 1 and "state['request']['at'] is a object the checkpointer cannot write" in p.stdout and 'validation FAILED' in p.stdout
    assert run('--help', cwd=tmp_path).stdout.startswith('usage: dataops-workflow') and run('benchmark', '--help', cwd=tmp_path).stdout.startswith('usage: dataops-workflow benchmark')
    from dataops_lab.devkit.cli import main  # every command's --help, in this process (the console script is the same function)
    for cmd in ('create', 'test', 'validate', 'docs', 'list', 'benchmark', 'shell', 'package', 'convert'):
        with pytest.raises(SystemExit) as e: main([cmd, '--help'])
        assert e.value.code == 0

def test_list_filters_and_disabled(work, tmp_path):
    shutil.copytree(work / 'workflows', tmp_path / 'workflows')
    cfg = tmp_path / 'workflows' / 't_simple' / 'config.yaml'
    cfg.write_text(cfg.read_text().replace('enabled: true', 'enabled: false'))
    out = run('list', '-v', cwd=tmp_path).stdout
    assert 't_simple (disabled in workflows/t_simple/config.yaml)' in out and 't_parallel (general, folder)' in out and 'sql_generator (sql, bundled)' in out
    assert re.search(r"Total: 11 workflows, 1 disabled", out), out
    j = json.loads(run('list', '--json', '-c', 'sql', cwd=tmp_path).stdout)
    assert sorted(w['name'] for w in j['workflows']) == ['query_optimizer', 'sql_generator']
    j = json.loads(run('list', '--json', '-s', 'parallel review', cwd=tmp_path).stdout)
    assert [w['name'] for w in j['workflows']] == ['t_parallel']
