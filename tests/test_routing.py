"""Intent routing with no model over the six bundled workflows, measured on the sets in tests/data (see its README).

The held-out set was written and committed before the offline router changed and is never tuned on; the router's
thresholds are calibrated on the development set (nbs/38_orchestrator.ipynb shows the trade-off)."""
import pytest
from langchain_core.language_models.fake_chat_models import FakeListChatModel
from routing_queries import DEV, HELD_OUT, QUERIES
from dataops_lab.config import load_settings
from dataops_lab.examples.workflows import default_registry
from dataops_lab.orchestrator import LexicalRouter, LLMRouter, Orchestrator
from dataops_lab.sessions import SessionManager

TARGET = 0.90  # issue 18: routed right and abstained, each on the held-out set, with no model
FLOOR = {'routed right': 0.88, 'abstained': 0.92}  # what the offline router reaches today (nbs/38_orchestrator.ipynb)

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

def test_heldout_does_not_fall_below_what_the_router_reaches(router):
    fig, miss = measure(router, HELD_OUT)
    print(f"\nheld-out: {fig}; misses: {miss}")
    assert fig['routed right'] >= FLOOR['routed right'] and fig['abstained'] >= FLOOR['abstained'], (fig, miss)

@pytest.mark.xfail(strict=True, reason='the lexical router alone reaches 88.9% routed right (abstained: 92.5%, above the target) on the held-out set; '
                                       'the target is 90% each (see nbs/38_orchestrator.ipynb). Strict: this fails loudly once the target is met')
def test_heldout_targets(router):
    fig, miss = measure(router, HELD_OUT)
    assert fig['routed right'] >= TARGET and fig['abstained'] >= TARGET, (fig, miss)

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

SEMANTIC_FLOOR = {'routed right': 0.90, 'abstained': 0.92}  # with the [semantic] extra, on the held-out set (nbs/38_orchestrator.ipynb)

@pytest.fixture(scope='module')
def semantic_router():
    pytest.importorskip('wordllama', reason="the [semantic] extra is not installed: pip install 'dataops-lab[semantic]'")
    return LexicalRouter(default_registry(False).metadata(), semantic=True)

def test_with_the_semantic_extra(semantic_router):
    "Closeness in meaning beside the lexical scores: the development set's figures, and the held-out set's (below the target: see the notebook)"
    dev, _ = measure(semantic_router, DEV)
    fig, miss = measure(semantic_router, HELD_OUT)
    print(f"\nsemantic: development {dev}; held-out {fig}; misses: {miss}")
    assert dev['routed right'] >= 0.96 and dev['abstained'] >= 0.96, dev
    assert fig['routed right'] >= SEMANTIC_FLOOR['routed right'] and fig['abstained'] >= SEMANTIC_FLOOR['abstained'], (fig, miss)
    q = 'give me a summary of the tables and relationships in warehouse.db'  # no clear winner word for word; close in meaning to schema_analyzer's examples
    assert (LexicalRouter(default_registry(False).metadata(), semantic=False).route(q).workflow, semantic_router.route(q).workflow) == (None, 'schema_analyzer')
    for q in ['play some music', 'book a flight to rome', 'hi', 'thanks!']: assert semantic_router.route(q).workflow is None, q

def test_heldout_targets_with_the_semantic_extra(semantic_router):
    fig, miss = measure(semantic_router, HELD_OUT)
    assert fig['routed right'] >= TARGET and fig['abstained'] >= TARGET, (fig, miss)
