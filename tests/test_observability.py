"""Observability of the library itself: the spans, metrics and log lines one orchestrator query, one chain run, a failed
step and a batch run produce, read back from an in-memory span exporter, the Prometheus registry and the log file —
and no secret or message/artifact body in any log line."""
import json, logging
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

def test_metrics_scraped_under_two_uvicorn_workers_add_up_every_process(tmp_path):
    "`dataops-lab serve --workers 2`: 30 requests on fresh connections; every scrape (whichever worker answers) counts all 30"
    import os, subprocess, sys, httpx
    from prometheus_client.parser import text_string_to_metric_families
    sys.path.insert(0, str(Path(__file__).parent))
    from servers import free_port, wait_for
    (tmp_path / 'settings.ini').write_text('[storage]\n[api]\ndashboard = false\n')
    port, mp = free_port(), tmp_path / 'prom'
    mp.mkdir()
    env = {**os.environ, 'DATAOPS_SETTINGS': str(tmp_path / 'settings.ini'), 'DATAOPS_API__JWT_SECRET': 'k' * 48, 'PROMETHEUS_MULTIPROC_DIR': str(mp)}
    proc = subprocess.Popen([str(Path(sys.executable).parent / 'dataops-lab'), 'serve', '--workers', '2', '--port', str(port)], env=env,
                            stdout=open(tmp_path / 'server.log', 'wb'), stderr=subprocess.STDOUT, start_new_session=True)
    url = f'http://127.0.0.1:{port}'
    def up():
        if proc.poll() is not None: return True
        try: return httpx.get(f'{url}/health', timeout=0.5).status_code == 200
        except httpx.HTTPError: return False
    try:
        wait_for(up, 120, 'API server with 2 workers')
        assert proc.poll() is None, (tmp_path / 'server.log').read_text()[-3000:]
        def health_total(text):
            fams = {f.name: f for f in text_string_to_metric_families(text)}
            return sum(s.value for s in fams['dataops_api_requests'].samples
                       if s.name == 'dataops_api_requests_total' and s.labels['route'] == '/health' and s.labels['status'] == '200')
        before = health_total(httpx.get(f'{url}/metrics').text)
        for _ in range(30): assert httpx.get(f'{url}/health', headers={'Connection': 'close'}).status_code == 200
        scrapes = [health_total(httpx.get(f'{url}/metrics', headers={'Connection': 'close'}).text) - before for _ in range(6)]
        assert scrapes == [30] * 6
        assert len({p.name.rsplit('_', 1)[-1] for p in mp.glob('counter_*.db')}) == 2  # both worker processes kept counters
    finally:
        proc.terminate()
        try: proc.wait(20)
        except subprocess.TimeoutExpired: proc.kill(); proc.wait(10)
