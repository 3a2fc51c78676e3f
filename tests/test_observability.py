"""Observability of the library itself: the spans, metrics and log lines one orchestrator query, one chain run, a failed
step and a batch run produce, read back from an in-memory span exporter, the Prometheus registry and the log file —
and no secret or message/artifact body in any log line."""
import contextlib, json, logging
from pathlib import Path
import pytest
from prometheus_client import REGISTRY
from opentelemetry.trace import StatusCode
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from dataops_lab import (load_settings, Storage, SessionManager, Orchestrator, WorkflowChain, registry_from_settings, workflow, logger,
                         configure_tracing, stop_tracing, configure_logging, run_batch)

SPANS = InMemorySpanExporter()

@pytest.fixture
def spans():
    SPANS.clear(); configure_tracing(exporter=SPANS)
    yield SPANS
    stop_tracing(); SPANS.clear()

@pytest.fixture
def sm(tmp_path):
    (tmp_path / 'settings.ini').write_text('[storage]\n')
    s = Storage(load_settings(tmp_path / 'settings.ini'))
    yield SessionManager(s)
    s.close()

def sample(name, labels): return REGISTRY.get_sample_value(name, labels) or 0

def tree(spans):
    "name -> span (names are unique in these runs unless noted), and children names per span name"
    fin = spans.get_finished_spans()
    by_id = {s.context.span_id: s for s in fin}
    kids = {}
    for s in fin:
        if s.parent is not None and s.parent.span_id in by_id: kids.setdefault(by_id[s.parent.span_id].name, []).append(s.name)
    return fin, by_id, kids

def test_one_orchestrator_query_makes_a_span_tree_and_moves_the_metrics(sm, spans):
    sid = sm.create_session('user_obs').session_id
    orch = Orchestrator(registry_from_settings(sm.storage.settings, False), sm)
    ok0 = sample('dataops_workflow_invocations_total', {'workflow': 'sql_generator', 'status': 'success'})
    route0 = sample('dataops_route_decisions_total', {'workflow': 'sql_generator', 'method': 'lexical', 'confidence': 'high'}) + \
             sample('dataops_route_decisions_total', {'workflow': 'sql_generator', 'method': 'lexical', 'confidence': 'medium'})
    cold0 = sample('dataops_storage_operation_duration_seconds_count', {'tier': 'cold', 'backend': 'SQLiteTable', 'operation': 'put'})
    res = orch.process(sid, 'how many orders are there?')
    assert (res.kind, res.workflow) == ('result', 'sql_generator')
    fin, by_id, kids = tree(spans)
    roots = [s for s in fin if s.parent is None]
    assert [r.name for r in roots] == ['invoke_agent orchestrator']
    root = roots[0]
    assert root.attributes['gen_ai.operation.name'] == 'invoke_agent' and root.attributes['gen_ai.conversation.id'] == sid
    assert {'route', 'invoke_agent sql_generator'} <= set(kids['invoke_agent orchestrator'])
    wf = next(s for s in fin if s.name == 'invoke_agent sql_generator')
    assert wf.attributes['gen_ai.agent.name'] == 'sql_generator' and wf.attributes['gen_ai.conversation.id'] == sid
    nodes = [s for s in fin if s.name.startswith('execute_tool ')]
    assert nodes and all(by_id[n.parent.span_id].name == 'invoke_agent sql_generator' for n in nodes)
    route = next(s for s in fin if s.name == 'route')
    assert route.attributes['dataops.route.workflow'] == 'sql_generator'
    storage = [s for s in fin if s.attributes.get('dataops.storage.tier')]
    assert {'hot', 'cold', 'blob'} <= {s.attributes['dataops.storage.tier'] for s in storage}
    assert all(s.context.trace_id == root.context.trace_id for s in fin)  # one trace, threads included
    assert [(s.name, s.attributes.get("error.type")) for s in fin if s.status.status_code == StatusCode.ERROR] == []
    assert sample('dataops_workflow_invocations_total', {'workflow': 'sql_generator', 'status': 'success'}) - ok0 == 1
    assert sample('dataops_route_decisions_total', {'workflow': 'sql_generator', 'method': 'lexical', 'confidence': 'high'}) + \
           sample('dataops_route_decisions_total', {'workflow': 'sql_generator', 'method': 'lexical', 'confidence': 'medium'}) - route0 == 1
    assert sample('dataops_storage_operation_duration_seconds_count', {'tier': 'cold', 'backend': 'SQLiteTable', 'operation': 'put'}) > cold0

def test_one_chain_run_makes_a_span_per_step_under_the_chain(sm, spans):
    sid = sm.create_session('user_obs').session_id
    chain = WorkflowChain(session_manager=sm)
    chain.add_step('schema_analyzer').add_step('sql_generator')
    steps0 = sample('dataops_chain_step_duration_seconds_count', {'chain': chain.name, 'step': 'sql_generator'})
    res = chain.execute(sid, {'question': 'top 5 customers by revenue'})
    assert res.status == 'completed'
    fin, by_id, kids = tree(spans)
    (root,) = [s for s in fin if s.parent is None]
    assert root.name == f'invoke_agent {chain.name}' and root.attributes['dataops.chain.run_id'] == res.run_id
    assert root.attributes['gen_ai.conversation.id'] == sid
    steps = [s for s in fin if s.attributes.get('dataops.chain.step')]
    assert sorted(s.name for s in steps) == ['invoke_agent schema_analyzer', 'invoke_agent sql_generator']
    assert all(s.parent.span_id == root.context.span_id for s in steps)  # the step ran on LangGraph's thread, under the chain's span
    assert any(n.startswith('execute_tool ') for n in kids['invoke_agent sql_generator'])
    assert sample('dataops_chain_step_duration_seconds_count', {'chain': chain.name, 'step': 'sql_generator'}) - steps0 == 1

def test_a_failed_step_records_an_error_status(sm, spans):
    @workflow()
    def explode(question: str):
        "Fails every time"
        raise RuntimeError('the source table vanished')
    sid = sm.create_session('user_obs').session_id
    chain = WorkflowChain(session_manager=sm)
    chain.registry.register(explode)
    chain.add_step('explode')
    f0 = sample('dataops_chain_step_failures_total', {'chain': chain.name, 'step': 'explode'})
    e0 = sample('dataops_workflow_invocations_total', {'workflow': 'explode', 'status': 'error'})
    res = chain.execute(sid, {'question': 'anything'})
    assert (res.status, res.failed_step) == ('failed', 'explode')
    fin = spans.get_finished_spans()
    step = next(s for s in fin if s.name == 'invoke_agent explode')
    root = next(s for s in fin if s.parent is None)
    assert step.status.status_code == StatusCode.ERROR and step.attributes['error.type'] == 'RuntimeError'
    assert [e.attributes['exception.message'] for e in step.events if e.name == 'exception'] == ['the source table vanished']
    assert root.status.status_code == StatusCode.ERROR
    assert sample('dataops_chain_step_failures_total', {'chain': chain.name, 'step': 'explode'}) - f0 == 1
    assert sample('dataops_workflow_invocations_total', {'workflow': 'explode', 'status': 'error'}) - e0 == 1

def test_a_batch_runs_spans_join_the_batch_trace(tmp_path, spans):
    import nbformat
    (tmp_path / 'settings.ini').write_text('[storage]\n')
    nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell('x = 1', metadata={'tags': ['parameters']}), nbformat.v4.new_code_cell('y = x * 2')])
    nb.metadata['kernelspec'] = {'name': 'python3', 'display_name': 'python3', 'language': 'python'}
    nbformat.write(nb, tmp_path / 'double.ipynb')
    ok0 = sample('dataops_batch_runs_total', {'status': 'succeeded'})
    res = run_batch(tmp_path / 'double.ipynb', {'x': [3]}, settings=tmp_path / 'settings.ini', scheduler='synchronous', progress=False)
    assert res.status == 'succeeded'
    fin = spans.get_finished_spans()
    (batch,) = [s for s in fin if s.name == 'batch']
    (run,) = [s for s in fin if s.name == 'batch_run']
    assert (run.parent.span_id, run.context.trace_id) == (batch.context.span_id, batch.context.trace_id)
    assert run.attributes['dataops.batch.id'] == res.batch_id and run.attributes['dataops.batch.run_status'] == 'succeeded'
    assert sample('dataops_batch_runs_total', {'status': 'succeeded'}) - ok0 == 1

def test_log_lines_carry_the_run_ids_and_no_secret_or_body(tmp_path):
    "Secrets planted in the settings and in content; a DEBUG JSON log of a query, a chain run and a failing workflow must hold none of them"
    key, jwt, body_secret, art_secret = 'sk-PLANTED-llm-key-7f3a9', 'J' * 20 + 'PLANTEDjwt' + 'j' * 12, 'PLANTED-message-body-4411', 'PLANTED-artifact-body-9902'
    ini = tmp_path / 'settings.ini'
    ini.write_text(f'[storage]\n[llm]\napi_key = {key}\n[api]\njwt_secret = {jwt}\n[logging]\nlevel = DEBUG\nformat = json\nfile = obs.log\n')
    s = load_settings(ini)
    handlers = configure_logging(s, stream=open(tmp_path / 'stderr.log', 'w'))
    try:
        st = Storage(s); sm = SessionManager(st)
        sid = sm.create_session('user_sec').session_id
        sm.add_message(sid, 'user', f'my password is {body_secret}')
        sm.artifacts.store_artifact({'note': art_secret}, session_id=sid, workflow_name='manual')
        @workflow()
        def leaky(question: str):
            "Talks about a key"
            logger.info('node_says_hello')
            raise ValueError(f'provider refused key {key}')
        chain = WorkflowChain(session_manager=sm); chain.registry.register(leaky); chain.add_step('leaky')
        res = chain.execute(sid, {'question': 'q'})
        assert res.status == 'failed'
        Orchestrator(registry_from_settings(s, False), sm).process(sid, 'how many orders are there?')
        logging.getLogger('some.dependency').warning('connecting with %s', key)
        st.close()
        logging.getLogger('botocore.endpoint').debug('Making request with body %s', body_secret)  # a dependency's DEBUG stays out
    finally:
        for h in handlers: logging.getLogger().removeHandler(h); h.close()
        logging.getLogger().setLevel(logging.WARNING); logging.getLogger('dataops_lab').setLevel(logging.NOTSET)
    text = (tmp_path / 'obs.log').read_text()
    lines = [json.loads(l) for l in text.splitlines()]
    for planted in (key, jwt, body_secret, art_secret):
        assert planted not in text, planted
    hello = [l for l in lines if l['event'] == 'node_says_hello']
    assert len(hello) == 1 and (hello[0]['session_id'], hello[0]['workflow'], hello[0]['node'], hello[0]['run_id']) == (sid, 'leaky', 'leaky', res.run_id)
    failed = [l for l in lines if l['event'] == 'workflow_finished' and l.get('workflow') == 'leaky']
    assert failed and failed[0]['status'] == 'error'
    dep = [l for l in lines if l.get('logger') == 'some.dependency']
    assert dep[0]['event'] == 'connecting with ***'
    turn = [l for l in lines if l['event'] == 'routed']
    assert turn and (turn[0]['session_id'], turn[0]['user_id']) == (sid, 'user_sec')

def _json_lines(tmp_path, level, run):
    "The JSON log lines `run()` writes with `[logging] level = level`"
    ini = tmp_path / f'settings-{level}.ini'
    ini.write_text(f'[storage]\n[logging]\nlevel = {level}\nformat = json\nfile = {level}.log\n')
    handlers = configure_logging(ini, stream=open(tmp_path / f'stderr-{level}.log', 'w'))
    try: run()
    finally:
        for h in handlers: logging.getLogger().removeHandler(h); h.close()
        logging.getLogger().setLevel(logging.WARNING); logging.getLogger('dataops_lab').setLevel(logging.NOTSET)
    return [json.loads(l) for l in (tmp_path / f'{level}.log').read_text().splitlines()]

def test_a_chain_run_logs_one_info_line_and_its_steps_at_debug(sm, tmp_path):
    "At INFO a 3-step chain run is one `chain_finished` line with the run's ids; each step's `workflow_finished` is DEBUG; a workflow run on its own stays INFO"
    @workflow()
    def bump(x: int = 0):
        "Adds one"
        return {'x': x + 1}
    sid = sm.create_session('user_obs').session_id
    chain = WorkflowChain('bumps', session_manager=sm)
    chain.registry.register(bump)
    for i in range(3): chain.add_step('bump', name=f's{i}', depends_on=[f's{i-1}'] if i else None)
    runs = []
    info = _json_lines(tmp_path, 'INFO', lambda: runs.append(chain.execute(sid, {'x': 0})))
    (run,) = runs
    assert run.final == {'x': 3}
    mine = [l for l in info if l.get('run_id') == run.run_id]
    assert [l['event'] for l in mine] == ['chain_finished']
    (line,) = mine
    assert (line['level'], line['status'], line['steps'], line['session_id'], line['workflow']) == ('info', 'completed', 3, sid, 'bumps')
    assert sorted(line['step_seconds']) == ['s0', 's1', 's2']
    debug = _json_lines(tmp_path, 'DEBUG', lambda: runs.append(chain.execute(sid, {'x': 0})))
    steps = [l for l in debug if l['event'] == 'workflow_finished' and l.get('run_id') == runs[-1].run_id]
    assert sorted((l['node'], l['level']) for l in steps) == [('s0', 'debug'), ('s1', 'debug'), ('s2', 'debug')]
    alone = _json_lines(tmp_path, 'INFO', lambda: bump.run({'x': 1}))
    assert [(l['event'], l['level'], l['workflow']) for l in alone if l['event'] == 'workflow_finished'] == [('workflow_finished', 'info', 'bump')]

def test_a_library_event_is_redacted_once_and_its_traceback_scrubbed(tmp_path):
    "A library event is redacted in structlog's chain and not again in the formatter; the traceback the formatter adds is still scrubbed"
    key = 'sk-PLANTED-in-a-traceback-5521'
    ini = tmp_path / 'settings.ini'
    ini.write_text(f'[storage]\n[llm]\napi_key = {key}\n[logging]\nformat = json\nfile = obs.log\n')
    handlers = configure_logging(ini, stream=open(tmp_path / 'stderr.log', 'w'))
    try:
        try: raise ValueError(f'provider refused {key}')
        except ValueError: logger.exception('call_failed', detail=f'key {key}')
    finally:
        for h in handlers: logging.getLogger().removeHandler(h); h.close()
        logging.getLogger().setLevel(logging.WARNING); logging.getLogger('dataops_lab').setLevel(logging.NOTSET)
    for f in ('obs.log', 'stderr.log'):
        text = (tmp_path / f).read_text()
        (line,) = [json.loads(l) for l in text.splitlines()]
        assert key not in text and line['detail'] == 'key ***' and 'ValueError: provider refused ***' in line['exception']

def test_a_process_that_configured_no_logging_prints_no_info_line(tmp_path):
    "Loading the [semantic] extra's model (wordllama calls logging.basicConfig(level=INFO) on import) must not switch on INFO lines on standard error"
    import subprocess, sys
    (tmp_path / 'settings.ini').write_text('[storage]\n')
    code = (
        "import logging\n"
        "from dataops_lab import SessionManager, WorkflowChain\n"
        "from dataops_lab import semantic\n"
        "assert semantic.available(), 'this test needs the [semantic] extra'\n"
        "sm = SessionManager(); sid = sm.create_session('u').session_id\n"
        "sm.add_message(sid, 'user', 'how many orders are there?')\n"
        "assert len(semantic._LOADED) == 1, 'the model was not loaded'\n"
        "chain = WorkflowChain(session_manager=sm); chain.add_step('schema_analyzer')\n"
        "assert chain.execute(sid, {'question': 'q'}).status == 'completed'\n"
        "print(logging.getLogger().level, len(logging.getLogger().handlers))\n")
    env = {k: v for k, v in __import__('os').environ.items() if not k.startswith('DATAOPS_')}
    env['DATAOPS_SETTINGS'] = str(tmp_path / 'settings.ini')
    p = subprocess.run([sys.executable, '-c', code], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stderr[-3000:]
    assert p.stdout.split() == [str(logging.WARNING), '0']
    assert p.stderr == ''

def test_with_no_tracer_provider_a_run_starts_no_span_and_still_moves_the_metrics(tmp_path):
    "traces = none: a chain run and a workflow run call the tracer not once (not even for the no-op tracer's spans), yet count their runs and steps; a provider installed later gets the spans"
    import subprocess, sys
    (tmp_path / 'settings.ini').write_text('[storage]\n')
    code = (
        "import json\n"
        "from opentelemetry import trace\n"
        "import dataops_lab.observability as obs, dataops_lab.chain as ch\n"
        "from dataops_lab import SessionManager, WorkflowChain, WorkflowRegistry, workflow, configure_tracing\n"
        "from prometheus_client import REGISTRY\n"
        "from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter\n"
        "calls = []\n"
        "class Counting:\n"
        "    'the OpenTelemetry tracer, every span start noted'\n"
        "    def __init__(self, t): self.t = t\n"
        "    def start_span(self, name, *a, **k): calls.append(name); return self.t.start_span(name, *a, **k)\n"
        "    def start_as_current_span(self, name, *a, **k): calls.append(name); return self.t.start_as_current_span(name, *a, **k)\n"
        "obs.tracer = ch.tracer = Counting(obs.tracer)\n"
        "@workflow()\n"
        "def inc(x: int = 0): return {'x': x + 1}\n"
        "reg = WorkflowRegistry(); reg.register(inc)\n"
        "sm = SessionManager(); sid = sm.create_session('u').session_id\n"
        "chain = WorkflowChain('trio', registry=reg, session_manager=sm)\n"
        "for i in range(3): chain.add_step('inc', name=f's{i}', depends_on=[f's{i-1}'] if i else None)\n"
        "assert chain.execute(sid, {'x': 0}).final == {'x': 3}\n"
        "assert reg.get('inc').run({'x': 1}) == {'x': 2}\n"
        "off = {'provider': vars(trace)['_TRACER_PROVIDER'] is not None, 'calls': calls[:],\n"
        "       'steps': REGISTRY.get_sample_value('dataops_workflow_invocations_total', {'workflow': 'inc', 'status': 'success'}),\n"
        "       'step_seconds': REGISTRY.get_sample_value('dataops_chain_step_duration_seconds_count', {'chain': 'trio', 'step': 's2'}),\n"
        "       'durations': REGISTRY.get_sample_value('dataops_workflow_duration_seconds_count', {'workflow': 'inc'})}\n"
        "exp = InMemorySpanExporter(); configure_tracing(exporter=exp)\n"
        "assert chain.execute(sid, {'x': 0}).final == {'x': 3}\n"
        "print(json.dumps({**off, 'spans_on': sorted({s.name for s in exp.get_finished_spans()})}))\n")
    env = {k: v for k, v in __import__('os').environ.items() if not k.startswith('DATAOPS_') and not k.startswith('OTEL_')}
    env['DATAOPS_SETTINGS'] = str(tmp_path / 'settings.ini')
    p = subprocess.run([sys.executable, '-c', code], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stderr[-3000:]
    r = json.loads(p.stdout.splitlines()[-1])
    assert r['provider'] is False
    assert r['calls'] == []  # no span started with exporters off
    assert (r['steps'], r['step_seconds'], r['durations']) == (4, 1, 4)  # the chain's 3 steps and the workflow run, counted all the same
    assert {'invoke_agent trio', 'invoke_agent inc'} <= set(r['spans_on'])

@contextlib.contextmanager
def _serve_two_workers(tmp_path):
    "`dataops-lab serve --workers 2` on the embedded default in `tmp_path`, metrics in multiprocess mode; its URL and metrics folder"
    import os, subprocess, sys, httpx
    sys.path.insert(0, str(Path(__file__).parent))
    from servers import free_port, wait_for
    (tmp_path / 'settings.ini').write_text('[storage]\n[api]\ndashboard = false\n')
    port, mp = free_port(), tmp_path / 'prom'
    mp.mkdir()
    env = {**os.environ, 'DATAOPS_SETTINGS': str(tmp_path / 'settings.ini'), 'DATAOPS_API__JWT_SECRET': 'k' * 48, 'PROMETHEUS_MULTIPROC_DIR': str(mp)}
    proc = subprocess.Popen([str(Path(sys.executable).parent / 'dataops-lab'), 'serve', '--workers', '2', '--port', str(port)], env=env, cwd=tmp_path,
                            stdout=open(tmp_path / 'server.log', 'wb'), stderr=subprocess.STDOUT, start_new_session=True)
    url = f'http://127.0.0.1:{port}'
    def up():
        if proc.poll() is not None: return True
        try: return httpx.get(f'{url}/health', timeout=0.5).status_code == 200
        except httpx.HTTPError: return False
    try:
        wait_for(up, 120, 'API server with 2 workers')
        assert proc.poll() is None, (tmp_path / 'server.log').read_text()[-3000:]
        yield url, mp
    finally:
        proc.terminate()
        try: proc.wait(20)
        except subprocess.TimeoutExpired: proc.kill(); proc.wait(10)

def test_metrics_scraped_under_two_uvicorn_workers_add_up_every_process(tmp_path):
    "`dataops-lab serve --workers 2`: 30 requests on fresh connections; every scrape (whichever worker answers) counts all 30"
    import httpx
    from prometheus_client.parser import text_string_to_metric_families
    with _serve_two_workers(tmp_path) as (url, mp):
        def health_total(text):
            fams = {f.name: f for f in text_string_to_metric_families(text)}
            return sum(s.value for s in fams['dataops_api_requests'].samples
                       if s.name == 'dataops_api_requests_total' and s.labels['route'] == '/health' and s.labels['status'] == '200')
        before = health_total(httpx.get(f'{url}/metrics').text)
        for _ in range(30): assert httpx.get(f'{url}/health', headers={'Connection': 'close'}).status_code == 200
        scrapes = [health_total(httpx.get(f'{url}/metrics', headers={'Connection': 'close'}).text) - before for _ in range(6)]
        assert scrapes == [30] * 6
        assert len({p.name.rsplit('_', 1)[-1] for p in mp.glob('counter_*.db')}) == 2  # both worker processes kept counters

def _console_spans(nb_path):
    "The spans a kernel's console exporter printed into the executed notebook's stderr outputs"
    import nbformat
    text = ''.join(o.get('text', '') for c in nbformat.read(nb_path, as_version=4).cells if c.cell_type == 'code'
                   for o in c.get('outputs', []) if o.get('name') == 'stderr')
    dec, out, i = json.JSONDecoder(), [], 0
    while (i := text.find('{', i)) >= 0:
        obj, i = dec.raw_decode(text, i)
        out.append(obj)
    return {s['name']: s for s in out}

def test_the_notebook_a_batch_runs_traces_under_the_batch_run_span(tmp_path, spans):
    "The kernel is another process: it gets the run's context as TRACEPARENT, `open_run` joins it; its spans (console exporter, in its output) are children"
    import nbformat
    (tmp_path / 'settings.ini').write_text('[storage]\n[observability]\ntraces = console\n')
    nb = nbformat.v4.new_notebook(cells=[
        nbformat.v4.new_code_cell('x = 1\ndataops_session_id = None\ndataops_settings = None', metadata={'tags': ['parameters']}),
        nbformat.v4.new_code_cell("from dataops_lab import open_run, tracer\nrun = open_run(dataops_session_id, dataops_settings)\n"
                                  "with tracer.start_as_current_span('first cell'): y = x * 2"),
        nbformat.v4.new_code_cell("with tracer.start_as_current_span('later cell'): z = y + 1")])
    nb.metadata['kernelspec'] = {'name': 'python3', 'display_name': 'python3', 'language': 'python'}
    nbformat.write(nb, tmp_path / 'traced.ipynb')
    res = run_batch(tmp_path / 'traced.ipynb', {'x': [3]}, settings=tmp_path / 'settings.ini', scheduler='synchronous', progress=False)
    assert res.status == 'succeeded', res.runs.to_dict('records')
    fin = spans.get_finished_spans()
    (run,) = [s for s in fin if s.name == 'batch_run']
    (ex,) = [s for s in fin if s.name == 'execute_notebook traced.ipynb']
    assert (ex.parent.span_id, ex.context.trace_id) == (run.context.span_id, run.context.trace_id)
    kernel = _console_spans(res.runs['output_path'][0])
    assert {'first cell', 'later cell'} <= set(kernel), sorted(kernel)
    for name in ('first cell', 'later cell'):  # every cell after open_run, not only the one that joined
        assert kernel[name]['context']['trace_id'] == f'0x{run.context.trace_id:032x}', kernel[name]
        assert kernel[name]['parent_id'] == f'0x{ex.context.span_id:016x}', kernel[name]

def test_a_run_started_with_wait_false_traces_under_the_request_span(tmp_path, spans, monkeypatch):
    "The run executes on the runner's pool thread after the response is sent; its spans still belong to the request's trace"
    import sys
    from starlette.testclient import TestClient
    sys.path.insert(0, str(Path(__file__).parent))
    import api_workflows
    from servers import wait_for
    from dataops_lab.api.server import create_app
    from dataops_lab.api.users import UserStore, USER_TABLES
    from dataops_lab.client import Client
    monkeypatch.setenv('DATAOPS_API__JWT_SECRET', 'k' * 48)
    (tmp_path / 'settings.ini').write_text('[storage]\n[api]\ndashboard = false\n')
    st = Storage(load_settings(tmp_path / 'settings.ini')).ensure(USER_TABLES)
    UserStore(st).add_user('alice', 'developer', 'correct horse battery'); st.close()
    app = create_app(tmp_path / 'settings.ini', registry=api_workflows.registry(), dashboard=False)
    with TestClient(app) as http:
        c = Client('http://testserver')  # the client over the app in this process (the in-memory exporter is here)
        c.http.close(); c.http = http
        c._login = {'username': 'alice', 'password': 'correct horse battery'}; c.sign_in()
        sid = c.create_session()['session_id']
        run_id = c.invoke('word_count', sid, {'text': 'one two three'}, wait=False)['run_id']
        wait_for(lambda: c.get_run(run_id)['status'] in ('succeeded', 'failed'), 60, 'the background run')
        assert c.get_run(run_id)['status'] == 'succeeded', c.get_run(run_id)
        wait_for(lambda: any(s.name == 'run invoke' for s in spans.get_finished_spans()), 30, 'the run span to end')
    fin = spans.get_finished_spans()
    by_id = {s.context.span_id: s for s in fin}
    (req,) = [s for s in fin if s.attributes.get('http.route') == '/workflows/{name}/invoke']
    (run,) = [s for s in fin if s.name == 'run invoke']
    up, s = [], run
    while s.parent is not None and s.parent.span_id in by_id: s = by_id[s.parent.span_id]; up.append(s.name)
    assert s is req and run.context.trace_id == req.context.trace_id, up  # the run's span descends from the request's (through FastAPI's endpoint span)
    assert run.attributes['dataops.run.id'] == run_id and run.attributes['dataops.run.status'] == 'succeeded'
    def under_run(s):
        while s.parent is not None and s.parent.span_id in by_id:
            s = by_id[s.parent.span_id]
            if s is run: return True
        return False
    inner = {s.name for s in fin if under_run(s)}
    assert 'execute_tool word_count' in inner and any(n.startswith('cold ') for n in inner), sorted(inner)  # the workflow's node and its storage calls

_MAKE_SESSIONS = ('import sys; from dataops_lab import load_settings, SessionManager; sm = SessionManager(load_settings(sys.argv[1])); '
                  'print(" ".join(sm.create_session("elsewhere").session_id for _ in range(int(sys.argv[2]))))')

def _sessions_made_elsewhere(ini, n):
    "`n` sessions created by another process on the store of `ini`; their ids"
    import subprocess, sys
    return subprocess.run([sys.executable, '-c', _MAKE_SESSIONS, str(ini), str(n)], check=True, capture_output=True, text=True).stdout.split()

def test_active_sessions_gauge_counts_the_store_when_scraped(sm, tmp_path):
    "Sessions another process created count at this process's next scrape; closed, purged and idle ones do not"
    from prometheus_client import CollectorRegistry
    from dataops_lab.observability import ActiveSessions, active_sessions
    reg, g = CollectorRegistry(), ActiveSessions(max_age=0)  # recount at every scrape
    reg.register(g); g.watch(sm.count_active_sessions)
    live = lambda: reg.get_sample_value('dataops_active_sessions')
    assert live() == 0
    a, b, c = _sessions_made_elsewhere(tmp_path / 'settings.ini', 3)
    assert live() == 3  # never used by this process, counted all the same
    sm.close_session(a)
    assert live() == 2
    sm.purge_session(b)
    assert live() == 1
    assert sm.count_active_sessions(now=sm.get_session(c).last_active + __import__('datetime').timedelta(seconds=sm.policy.idle_after + 1)) == 0
    active_sessions.watch(sm.count_active_sessions)  # the process's gauge, scraped from the default registry
    assert REGISTRY.get_sample_value('dataops_active_sessions') == 1

def test_active_sessions_under_two_uvicorn_workers_count_the_store_once(tmp_path):
    "`dataops-lab serve --workers 2`: 3 sessions created in the store by another process; every scrape, whichever worker answers, reports 3"
    import httpx
    from prometheus_client.parser import text_string_to_metric_families
    with _serve_two_workers(tmp_path) as (url, mp):
        _sessions_made_elsewhere(tmp_path / 'settings.ini', 3)
        def gauge(text):
            fams = {f.name: f for f in text_string_to_metric_families(text)}
            return [s.value for s in fams['dataops_active_sessions'].samples] if 'dataops_active_sessions' in fams else None
        scrapes = [gauge(httpx.get(f'{url}/metrics', headers={'Connection': 'close'}).text) for _ in range(8)]
        assert scrapes == [[3.0]] * 8, scrapes  # one sample, the store's count: neither 0 (no worker used them) nor summed over workers

def test_a_redis_outage_counts_once_and_sessions_fall_back_to_the_cold_tier(tmp_path):
    import sys
    sys.path.insert(0, str(Path(__file__).parent))
    from servers import RedisServer
    redis = RedisServer().start()  # our own server, stopped by this test
    try:
        (tmp_path / 'settings.ini').write_text(f'[storage]\nhot = {redis.url}\n')
        st = Storage(load_settings(tmp_path / 'settings.ini')).ensure()
        sm = SessionManager(st)
        backend = type(st.cache).__name__
        outages = lambda: sample('dataops_hot_tier_outages_total', {'backend': backend})
        sid = sm.create_session('user_obs').session_id
        o0 = outages()
        assert sm.get_session(sid).session_id == sid and outages() == o0  # Redis up: no outage
        redis.stop()
        for _ in range(3): assert sm.get_session(sid).session_id == sid  # served from the cold tier
        assert outages() - o0 == 1  # one outage, however many calls fell back during it
        st.close()
    finally:
        redis.stop()

def _free(port):
    import socket
    with socket.socket() as s:
        try: s.bind(('127.0.0.1', port)); return True
        except OSError: return False

def listen_port() -> int:
    "A free port below the ephemeral range: unlike one from bind(0), no outgoing connection (Dask's, the kernel's) can take it as its local port meanwhile"
    import random, socket
    lo = int(Path('/proc/sys/net/ipv4/ip_local_port_range').read_text().split()[0]) if Path('/proc/sys/net/ipv4/ip_local_port_range').exists() else 32768
    for port in random.sample(range(20000, min(lo, 32000)), 200):
        with socket.socket() as s:
            try: s.bind(('127.0.0.1', port)); return port
            except OSError: continue
    raise RuntimeError('no free port between 20000 and the ephemeral range')

def test_a_batch_worker_serves_its_metrics_on_metrics_port(tmp_path):
    "Each worker of a 2-worker local cluster serves /metrics on [observability] metrics_port + its number; two runs scrape one port each over HTTP"
    import sys, nbformat
    sys.path.insert(0, str(Path(__file__).parent))
    port = listen_port()
    while not all(_free(p) for p in (port, port + 1)): port = listen_port()
    (tmp_path / 'settings.ini').write_text(f'[storage]\n[observability]\nmetrics_port = {port}\n')
    nb = nbformat.v4.new_notebook(cells=[
        nbformat.v4.new_code_cell('port = 0', metadata={'tags': ['parameters']}),
        nbformat.v4.new_code_cell("import urllib.request\nfrom prometheus_client.parser import text_string_to_metric_families\nfrom dataops_lab import record\n"
                                  "text = urllib.request.urlopen(f'http://127.0.0.1:{port}/metrics', timeout=30).read().decode()\n"
                                  "record('families', sorted(f.name for f in text_string_to_metric_families(text) if f.name.startswith('dataops_')))")])
    nb.metadata['kernelspec'] = {'name': 'python3', 'display_name': 'python3', 'language': 'python'}
    nbformat.write(nb, tmp_path / 'scrape.ipynb')
    res = run_batch(tmp_path / 'scrape.ipynb', {'port': [port, port + 1]}, settings=tmp_path / 'settings.ini', n_workers=2, progress=False)
    assert res.status == 'succeeded', res.runs[['status', 'error']].to_dict('records')  # neither worker's port clashed with the other's
    from dataops_lab.runner import read_records
    for out in res.runs['output_path']:
        fams = read_records(out)['families']
        assert {'dataops_storage_operation_duration_seconds', 'dataops_batch_runs'} <= set(fams), fams

def test_the_dashboard_process_serves_metrics_and_a_taken_port_is_named(tmp_path):
    import subprocess, sys, httpx
    from prometheus_client.parser import text_string_to_metric_families
    sys.path.insert(0, str(Path(__file__).parent))
    mport = listen_port()
    (tmp_path / 'settings.ini').write_text(f'[storage]\n[observability]\nmetrics_port = {mport}\n')
    code = "import sys; from dataops_lab.dashboard import dashboard_cli; sys.exit(dashboard_cli(sys.argv[1], port=0))"
    cmd = [sys.executable, '-c', code, str(tmp_path / 'settings.ini')]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        line = proc.stdout.readline()
        assert line.startswith('dataops-lab dashboard at '), (line, proc.stderr.read() if proc.poll() is not None else '')
        fams = {f.name for f in text_string_to_metric_families(httpx.get(f'http://127.0.0.1:{mport}/metrics', timeout=30).text)}
        assert {'dataops_storage_operation_duration_seconds', 'dataops_active_sessions'} <= fams, sorted(fams)
        second = subprocess.run(cmd, capture_output=True, text=True, timeout=120)  # a second dashboard asking for the same metrics port
        assert second.returncode == 1 and f'metrics_port = {mport}' in second.stdout and 'in use' in second.stdout, (second.stdout, second.stderr[-2000:])
    finally:
        proc.terminate(); proc.wait(30)
