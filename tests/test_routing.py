"""Intent routing with no model over the six bundled workflows, measured on the sets in tests/data (see its README).

The held-out set was written and committed before the offline router changed and is never tuned on; the router's
thresholds are calibrated on the development set (nbs/38_orchestrator.ipynb shows the trade-off)."""
import os, subprocess, sys, textwrap
import pytest
from langchain_core.language_models.fake_chat_models import FakeListChatModel
from routing_queries import DEV, HELD_OUT, QUERIES
from dataops_lab.config import load_settings
from dataops_lab.examples.workflows import default_registry
from dataops_lab.orchestrator import LexicalRouter, LLMRouter, Orchestrator
from dataops_lab.sessions import SessionManager

TARGET = 0.90  # issue 18: routed right and abstained, each on the held-out set, with no model
LEXICAL_FLOOR = {'routed right': 0.88, 'abstained': 0.92}  # the lexical router alone (no [semantic] extra, or switched off) on the held-out set: 88.9% and 92.5% (nbs/38_orchestrator.ipynb)

def measure(router, rows):
    "Share of in-scope queries routed right, share of out-of-scope turns abstained, and the misses"
    got = [(q, want, router.route(q).workflow) for q, want in rows]
    ins, oos = [g for g in got if g[1]], [g for g in got if not g[1]]
    miss = [g for g in got if g[1] != g[2]]
    return {'routed right': sum(w == r for _, w, r in ins) / len(ins), 'abstained': sum(r is None for *_, r in oos) / len(oos)}, miss

@pytest.fixture(scope='module')
def router(): return LexicalRouter(default_registry(False).metadata(), semantic=False)  # the lexical router alone, extra installed or not

def test_the_sets_are_what_the_readme_says():
    names = set(default_registry(False).names())
    held_in = [w for _, w in HELD_OUT if w]
    assert len(held_in) >= 100 and {w: held_in.count(w) for w in names} == {w: 18 for w in names}
    assert sum(w is None for _, w in HELD_OUT) >= 30 and sum(w is None for _, w in DEV) >= 30
    assert not {q.lower() for q, _ in HELD_OUT} & {q.lower() for q, _ in DEV}, 'a held-out query is in the development set'
    assert {w for _, w in DEV + HELD_OUT} == names | {None} and len(QUERIES) == 65

def test_heldout_with_the_lexical_router_alone(router):
    "Without the [semantic] extra (or with it switched off) the held-out set's routing is just under the 90% target; abstention clears it"
    fig, miss = measure(router, HELD_OUT)
    print(f"\nheld-out, lexical alone: {fig}; misses: {miss}")
    assert fig['routed right'] >= LEXICAL_FLOOR['routed right'] and fig['abstained'] >= LEXICAL_FLOOR['abstained'], (fig, miss)

def test_development_set(router):
    fig, miss = measure(router, DEV)
    print(f"\ndevelopment: {fig}")
    assert fig['routed right'] >= 0.96 and fig['abstained'] >= 0.96, (fig, miss)

def test_requests_no_workflow_does_and_small_talk_abstain(router):
    "A leading action no workflow takes, or small talk, abstains unless the match is strong — whatever data words it names"
    for q in ['kill the stuck spark job', 'back up the postgres database to s3', 'know any good puns about sql?', 'export the orders table to excel and email it']:
        r = router.route(q)
        assert r.workflow is None and 'which no workflow' in r.reason, (q, r)
    assert router.route('optimize this query: SELECT * FROM orders WHERE total > 100').workflow == 'query_optimizer'

def test_domain_synonyms_and_how_a_request_is_put(router):
    "Words no metadata uses, read as the metadata's (predecessors: upstream; sluggish: slow), and concept questions read as such"
    for q, want in [('show predecessors of ETL_STAGE_ORDERS', 'jil_parser'), ('the join between orders and order_items is really sluggish', 'query_optimizer'),
                    ('pros and cons of columnar storage', 'simple_agent'), ('what is a surrogate key?', 'simple_agent')]:
        assert router.route(q).workflow == want, (q, router.route(q))

def test_nonsense_is_never_routed(router):
    for q in ['play some music', 'book a flight to rome', 'what is the weather in Paris tomorrow', 'how tall is mount everest', 'hi', 'thanks!']:
        assert router.route(q).workflow is None, q

def test_a_workflow_that_needs_a_model_is_no_catch_all_without_one():
    md = default_registry(False).metadata()
    q = 'hey, what is sharding?'  # a concept question: simple_agent's, and it needs a model
    without, with_model = LexicalRouter(md).route(q), LexicalRouter(md, model=True).route(q)
    assert (without.workflow, with_model.workflow) == (None, 'simple_agent'), (without, with_model)
    assert 'needs a language model' in without.reason

def test_an_abstention_runs_nothing_and_says_what_the_workbench_can_do(tmp_path):
    (tmp_path/'settings.ini').write_text('[storage]\n')
    sm = SessionManager(load_settings(tmp_path/'settings.ini'))
    orch = Orchestrator(default_registry(False), sm, llm=False)
    sid = sm.create_session('analyst').session_id
    for q in ['good evening', 'write a limerick about spring', 'reboot the build server']:
        r = orch.process(sid, q)
        assert (r.kind, r.workflow, r.artifact_ids, r.output) == ('unclear', None, [], {}), (q, r)
        assert all(f"**{n}**" in r.reply for n in default_registry(False).names()) and 'needs a language model' in r.reply, r.reply
        assert not [e for e in r.events if e.type in ('node_finished', 'artifact_stored', 'result')]
    assert sm.artifacts.list_artifacts(sid) == []

def test_the_llm_router_decides_with_a_model_whatever_the_lexical_thresholds(tmp_path):
    md = default_registry(False).metadata()
    llm = FakeListChatModel(responses=['schema_analyzer', 'none', 'jil_parser.', 'pizza_maker'])
    r = LLMRouter(llm, md, LexicalRouter(md, model=True))
    assert LexicalRouter(md).route('schema pls').workflow is None  # the offline router abstains on this one
    assert (r.route('schema pls').workflow, r.route('count the orders').reason) == ('schema_analyzer', 'the language model found no fitting workflow')
    assert r.route('what runs before LOAD_SALES?').workflow == 'jil_parser'
    fell = r.route('how many orders were placed in 2024?')  # not a workflow name: the lexical router decides
    assert fell.workflow == 'sql_generator' and "model answered 'pizza_maker'" in fell.reason
    (tmp_path/'settings.ini').write_text('[storage]\n')
    orch = Orchestrator(default_registry(False), SessionManager(load_settings(tmp_path/'settings.ini')), llm=FakeListChatModel(responses=['supervisor_agent']))
    assert type(orch.router) is LLMRouter and orch.router.fallback.model is True
    assert orch.route('book a meeting with the data team').workflow == 'supervisor_agent'  # the model's choice stands

@pytest.fixture(scope='module')
def default_router():
    "The router as it is built by default: with the [semantic] extra installed (as `pip install -e .[dev]` and CI install it), vectors beside the lexical scores"
    pytest.importorskip('wordllama', reason="the [semantic] extra is not installed: pip install 'dataops-lab[semantic]'")
    from dataops_lab.semantic import switch
    if switch() == 'off': pytest.skip('DATAOPS_LAB_SEMANTIC=off switches the vectors off')
    r = LexicalRouter(default_registry(False).metadata())
    assert r.semantic, 'the extra is installed and not switched off: the default router uses vectors'
    return r

def test_heldout_targets(default_router):
    "Issue 18's targets on the held-out set, with no model: >= 90% routed right and >= 90% of out-of-scope turns abstained (90.7% and 92.5%)"
    fig, miss = measure(default_router, HELD_OUT)
    print(f"\nheld-out, default router: {fig}; misses: {miss}")
    assert fig['routed right'] >= TARGET and fig['abstained'] >= TARGET, (fig, miss)

def test_the_default_router_on_the_development_set(default_router):
    "Closeness in meaning beside the lexical scores, calibrated on the development set (96.9% and 96.7%); it routes a paraphrase the words alone leave unclear"
    dev, miss = measure(default_router, DEV)
    print(f"\ndevelopment, default router: {dev}")
    assert dev['routed right'] >= 0.96 and dev['abstained'] >= 0.96, (dev, miss)
    q = 'give me a summary of the tables and relationships in warehouse.db'  # no clear winner word for word; close in meaning to schema_analyzer's examples
    assert (LexicalRouter(default_registry(False).metadata(), semantic=False).route(q).workflow, default_router.route(q).workflow) == (None, 'schema_analyzer')
    for q in ['play some music', 'book a flight to rome', 'hi', 'thanks!']: assert default_router.route(q).workflow is None, q

def _orchestrator(folder, semantic:str):
    folder.mkdir()
    (folder/'settings.ini').write_text(f'[storage]\n[semantic]\nenabled = {semantic}\n')
    return Orchestrator(default_registry(False), SessionManager(load_settings(folder/'settings.ini')), llm=False)

def test_the_orchestrator_routes_with_vectors_as_the_settings_say(tmp_path, monkeypatch, default_router):
    "[semantic] enabled = auto (the default) or on: vectors; off: the lexical router alone, as DATAOPS_LAB_SEMANTIC=off in the environment"
    monkeypatch.delenv('DATAOPS_LAB_SEMANTIC', raising=False)
    q = 'give me a summary of the tables and relationships in warehouse.db'
    orchs = {m: _orchestrator(tmp_path/m, m) for m in ('auto', 'on', 'off')}
    got = {m: (o.router.semantic, o.route(q).workflow) for m,o in orchs.items()}
    assert got == {'auto': (True, 'schema_analyzer'), 'on': (True, 'schema_analyzer'), 'off': (False, None)}, got
    monkeypatch.setenv('DATAOPS_LAB_SEMANTIC', 'off')
    assert LexicalRouter(default_registry(False).metadata()).semantic is False
    assert _orchestrator(tmp_path/'env', 'auto').router.semantic is False

def test_the_model_loads_on_the_first_routed_query_and_once(default_router, tmp_path):
    "Importing the package, the CLI and the orchestrator, and building an orchestrator, load no model; the first query routed does, once per process"
    code = textwrap.dedent("""
        import sys, pathlib
        import dataops_lab, dataops_lab.cli, dataops_lab.orchestrator
        from dataops_lab import semantic
        from dataops_lab.config import load_settings
        from dataops_lab.examples.workflows import default_registry
        from dataops_lab.orchestrator import Orchestrator
        from dataops_lab.sessions import SessionManager
        d = pathlib.Path(sys.argv[1]); (d/'settings.ini').write_text('[storage]\\n')
        orchs = [Orchestrator(default_registry(False), SessionManager(load_settings(d/'settings.ini')), llm=False) for _ in range(2)]
        print('wordllama' in sys.modules, [o.router.semantic for o in orchs], 'wordllama' in sys.modules)
        routed = [o.route('how many orders were placed in 2024?').workflow for o in orchs]
        print(routed, 'wordllama' in sys.modules, len(semantic._LOADED), semantic._model() is semantic._LOADED[0])
    """)
    env = {k: v for k, v in os.environ.items() if k != 'DATAOPS_LAB_SEMANTIC'}
    out = subprocess.run([sys.executable, '-c', code, str(tmp_path)], env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    assert out.stdout.splitlines() == ['False [True, True] False', "['sql_generator', 'sql_generator'] True 1 True"], (out.stdout, out.stderr[-2000:])
