"""The extension proposal's Python code blocks run unchanged in nbs/74_tutorial_proposal.ipynb.

PROPOSAL_BLOCKS are the proposal's seven API blocks (sessions, artifacts, context, decorators, chaining, parallel
execution, conditional routing) and its three observability blocks (structured logging, metrics, tracing), copied
byte for byte. nbdev-test runs the tutorial, so an API change that breaks a block fails CI; this test fails when a
block is edited in the tutorial to fit the API instead. `test_the_observability_blocks_run_verbatim` also runs the
three observability blocks here, against the package's `logger`, metrics and `tracer`."""
import nbformat
from pathlib import Path

TUTORIAL = Path(__file__).resolve().parent.parent / 'nbs' / '74_tutorial_proposal.ipynb'

PROPOSAL_BLOCKS = [
    'session_manager = SessionManager()\nsession = session_manager.create_session("user_123")\nsession_manager.add_message(session.session_id, "user", "Hello")\n'
    'context = session_manager.get_context_summary(session.session_id)\n',
    'artifact_store = ArtifactStore()\nartifact_id = artifact_store.store_artifact(\n    content=data,\n    session_id=session_id,\n    workflow_name="my_workflow"\n)\n'
    'content = artifact_store.get_artifact_content(artifact_id)\nartifacts = artifact_store.list_artifacts(session_id)\n',
    'context_manager = ContextManager(session_manager, artifact_store)\nsnapshot_id = context_manager.dump_context(session_id)\n'
    'context = context_manager.load_context(snapshot_id)\ncheckpoint = context_manager.create_checkpoint(session_id, "before_update")\n'
    'context_manager.restore_checkpoint(session_id, "before_update")\n',
    '@with_artifacts(ArtifactType.RESULT)\n@with_session_context\n@with_error_recovery\ndef my_node(state: MyState) -> dict:\n    # Automatic enhancements\n'
    '    return {"output": result}\n',
    'chain = WorkflowChain()\nchain.add_step("schema_analyzer")\nchain.add_step("sql_generator", parameter_mapping=lambda prev: {...})\n'
    'chain.add_step("query_optimizer")\nresult = chain.execute(session_id, input)\n',
    'chain.add_parallel(\n    ["analyzer_1", "analyzer_2", "analyzer_3"],\n    aggregator=merge_results\n)\n',
    'orchestrator.add_rule(\n    condition=lambda ctx: ctx["size"] > 1000000,\n    workflow="large_data_processor"\n)\n',
] + (OBSERVABILITY_BLOCKS := [
    'logger.info(\n    "workflow_started",\n    workflow=name,\n    session_id=session_id,\n    user_id=user_id\n)\n',
    'workflow_invocations.labels(workflow=name, status="success").inc()\nworkflow_duration.labels(workflow=name).observe(duration)\n',
    'with tracer.start_as_current_span("workflow_execution"):\n    result = workflow.invoke(input)\n',
])

def test_every_proposal_block_is_a_cell_of_the_tutorial_unchanged_and_in_order():
    nb = nbformat.read(TUTORIAL, as_version=4)
    code = [c.source + '\n' for c in nb.cells if c.cell_type == 'code']  # a cell keeps no final newline; the proposal's blocks end with one
    found = [code.index(b) if b in code else None for b in PROPOSAL_BLOCKS]
    assert None not in found, [b.splitlines()[0] for b, i in zip(PROPOSAL_BLOCKS, found) if i is None]
    assert found == sorted(found)
    directives = [code[i].splitlines()[0] for i in found if code[i].startswith('#|')]
    assert directives == []  # no block is hidden or skipped (#| eval: false, #| hide)

def test_the_observability_blocks_run_verbatim():
    """The three blocks, exec'd unchanged with the package's names: one structured event with the reader's fields, the
    proposal's counter and histogram moved by one, and a `workflow_execution` span around the workflow's own span."""
    import dataops_lab
    from prometheus_client import REGISTRY
    from structlog.testing import capture_logs
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
    class Echo:
        def invoke(self, x):
            with dataops_lab.tracer.start_as_current_span('invoke_agent echo'): return {'echo': x}
    ns = {n: getattr(dataops_lab, n) for n in ('logger', 'workflow_invocations', 'workflow_duration', 'tracer')}
    ns.update(name='proposal_echo', session_id='sess_01J00000000000000000000000', user_id='user_123', duration=0.5, workflow=Echo(), input={'q': 1})
    count = lambda: REGISTRY.get_sample_value('dataops_workflow_invocations_total', {'workflow': 'proposal_echo', 'status': 'success'}) or 0
    spans = InMemorySpanExporter()
    dataops_lab.configure_tracing(exporter=spans)
    logs_block, metrics_block, trace_block = OBSERVABILITY_BLOCKS
    try:
        with capture_logs() as logs: exec(logs_block, ns)
        n0 = count(); exec(metrics_block, ns)
        exec(trace_block, ns)
    finally: dataops_lab.stop_tracing()
    assert logs == [{'event': 'workflow_started', 'workflow': 'proposal_echo', 'session_id': ns['session_id'], 'user_id': 'user_123', 'log_level': 'info'}]
    assert count() - n0 == 1
    assert REGISTRY.get_sample_value('dataops_workflow_duration_seconds_sum', {'workflow': 'proposal_echo'}) == 0.5
    inner, outer = spans.get_finished_spans()
    assert (outer.name, inner.name, inner.parent.span_id, ns['result']) == ('workflow_execution', 'invoke_agent echo', outer.context.span_id, {'echo': {'q': 1}})
