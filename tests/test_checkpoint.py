"""DataOpsSaver, the LangGraph checkpointer on our stores, on the embedded default (SQLite + files), on
Redis + DynamoDB + S3 (real servers: redis-server and moto over HTTP) and on Redis + PostgreSQL + S3:

- LangGraph's own conformance suite (langgraph-checkpoint-conformance), one test per capability and tier,
  for the five base capabilities and the three extended ones DataOpsSaver implements;
- large values offloaded to the blob store (DynamoDB's 400 KB item limit never reached, no base64 bloat),
  their deduplication, copy and garbage collection;
- graph fingerprints: recorded, stable across processes, warn / refuse on a changed graph;
- serialisation safety: no pickle either way, no arbitrary constructor calls;
- a run interrupted in one process and resumed in another."""
import asyncio, base64, dataclasses, json, operator, os, pickle, subprocess, sys, threading, textwrap, uuid, warnings
from pathlib import Path
from typing import Annotated, TypedDict
import ormsgpack
import pytest
from langgraph.checkpoint.base import empty_checkpoint
from langgraph.checkpoint.conformance import checkpointer_test, validate
from langgraph.checkpoint.conformance.capabilities import BASE_CAPABILITIES, EXTENDED_CAPABILITIES
from langgraph.checkpoint.serde.jsonplus import EXT_CONSTRUCTOR_SINGLE_ARG, JsonPlusSerializer
from langgraph.graph import StateGraph, START, END
from langgraph.types import Command, interrupt
from dataops_lab.core import *
from dataops_lab.config import load_settings
from dataops_lab.store.base import Storage
from dataops_lab.checkpoint import *
from dataops_lab.checkpoint import ITEM_BUDGET, _blob_prefix

KiB = 1024
TIER_NAMES = ('embedded', 'aws', 'postgres')

def write_settings(folder: Path, tier: str, request) -> Path:
    "A settings.ini in `folder` for `tier`: SQLite + files, or Redis + DynamoDB (or PostgreSQL) + S3 with a fresh bucket and table prefix"
    if tier == 'embedded': body = "[storage]\nhot = sqlite:///.dataops/cache.db\ncold = sqlite:///.dataops/meta.db\nblob = file://.dataops/blobs\n"
    elif tier == 'postgres':
        redis, moto, pg = (request.getfixturevalue(f) for f in ('redis_server', 'moto_server', 'postgres_server'))
        u = uuid.uuid4().hex[:10]
        body = (f"[storage]\nhot = {redis.url}\ncold = {pg.url}?schema=lg{u}\n"
                f"blob = s3://lg-{u}/cp?region=us-east-1&endpoint_url={moto.endpoint}\n")
    else:
        redis, moto, u = request.getfixturevalue('redis_server'), request.getfixturevalue('moto_server'), uuid.uuid4().hex[:10]
        body = (f"[storage]\nhot = {redis.url}\ncold = dynamodb://us-east-1?endpoint_url={moto.endpoint}\n"
                f"blob = s3://lg-{u}/cp?region=us-east-1&endpoint_url={moto.endpoint}\ntable_prefix = lg{u}_\n")
    folder.mkdir(parents=True, exist_ok=True)
    (folder / 'settings.ini').write_text(body)
    return folder / 'settings.ini'

@pytest.fixture(scope='module', params=TIER_NAMES)
def tier_ini(request, tmp_path_factory):
    "One provisioned set of checkpoint tables and bucket per tier, shared by this module's tests (they use fresh thread ids)"
    ini = write_settings(tmp_path_factory.mktemp(f"cp-{request.param}"), request.param, request)
    with Storage(load_settings(ini)) as st: DataOpsSaver(st).ensure()
    return ini

@pytest.fixture
def storage(tier_ini):
    st = Storage(load_settings(tier_ini))
    yield st
    st.close()

@pytest.fixture
def saver(storage): return DataOpsSaver(storage)

def tid() -> str: return f"sess_{uuid.uuid4().hex[:12]}"
def cfg(thread_id: str, **kw) -> dict: return {'configurable': {'thread_id': thread_id, **kw}}
def blob_keys(saver, thread_id) -> list[str]: return sorted(saver.blob.iter_keys(_blob_prefix(thread_id)))
def put_values(saver, thread_id, values: dict, parent: dict | None = None, **md) -> dict:
    cp = empty_checkpoint()
    cp['channel_values'], cp['channel_versions'] = values, {k: 1 for k in values}
    conf = parent or cfg(thread_id, checkpoint_ns='')
    return saver.put(conf, cp, {'source': 'loop', 'step': 0, **md}, {k: 1 for k in values})

# ---------------------------------------------------------------- LangGraph's conformance suite

CAPABILITIES = sorted(c.value for c in BASE_CAPABILITIES | EXTENDED_CAPABILITIES)

@pytest.mark.parametrize('capability', CAPABILITIES)
def test_langgraph_conformance(tier_ini, capability):
    "Every capability of langgraph-checkpoint-conformance passes; each runs on a fresh saver, as the suite intends"
    @checkpointer_test(name=f"DataOpsSaver[{tier_ini.parent.name}]")
    async def factory():
        with DataOpsSaver(load_settings(tier_ini)) as s: yield s
    report = asyncio.run(validate(factory, capabilities={capability}))
    r = report.results[capability]
    print(f"{capability}: {r.tests_passed} passed, {r.tests_failed} failed")
    assert r.detected, f"{capability} not detected as implemented"
    assert r.passed is True and r.tests_failed == 0 and r.tests_passed > 0, r.failures

def test_every_extended_capability_is_implemented(saver):
    from langgraph.checkpoint.conformance.capabilities import DetectedCapabilities
    assert DetectedCapabilities.from_instance(saver).missing == frozenset()

# ---------------------------------------------------------------- large values

def test_large_value_is_offloaded_not_inlined(saver, storage):
    "A 2 MB channel value: the item holds a reference, the blob store the (compressed) bytes; DynamoDB's 400 KB limit is never met"
    t = tid()
    big = [{'order_id': i, 'region': ['eu', 'us'][i % 2], 'note': f"order {i} shipped"} for i in range(60_000)]
    put_values(saver, t, {'rows': big, 'table': 'orders'})
    [item] = saver.checkpoints.query(t).items
    ref = item['values']['rows']
    assert isinstance(ref, dict) and ref['n'] > 2_000_000 and ref['blob'].endswith('.zst')
    assert item['values']['table'].startswith('msgpack:')
    assert len(json.dumps(item)) < 10 * KiB
    assert blob_keys(saver, t) == [_blob_prefix(t) + ref['blob']]
    assert saver.blob.head(_blob_prefix(t) + ref['blob']).size < ref['n'] / 4
    assert saver.get_tuple(cfg(t)).checkpoint['channel_values'] == {'rows': big, 'table': 'orders'}

def test_incompressible_value_is_stored_raw(saver):
    t, noise = tid(), os.urandom(300 * KiB)
    put_values(saver, t, {'image': noise})
    [key] = blob_keys(saver, t)
    assert not key.endswith('.zst') and saver.blob.head(key).size == len(noise)  # raw bytes: no base64, no failed compression
    assert saver.get_tuple(cfg(t)).checkpoint['channel_values']['image'] == noise

def test_many_medium_values_stay_under_the_item_budget(saver):
    "Values each under the threshold but together too big for one item: the largest are offloaded"
    t = tid()
    values = {f"part{i}": os.urandom((40 + i) * KiB) for i in range(10)}
    put_values(saver, t, values)
    [item] = saver.checkpoints.query(t).items
    inline = [v for v in item['values'].values() if isinstance(v, str)]
    offloaded = [k for k, v in item['values'].items() if isinstance(v, dict)]
    assert inline and offloaded and sum(map(len, inline)) <= ITEM_BUDGET
    assert min(len(values[k]) for k in offloaded) >= max(len(base64.b64decode(v.partition(':')[2])) for v in inline)  # largest first
    assert saver.get_tuple(cfg(t)).checkpoint['channel_values'] == values

def test_small_checkpoint_is_stored_whole_and_the_value_form_still_reads(saver):
    "A small checkpoint is one serde pass, values included (as SqliteSaver stores it); items with values stored one by one read the same"
    t, values = tid(), {'table': 'orders', 'rows': [1, 2, 3], 'when': 0.5}
    put_values(saver, t, values)
    [item] = saver.checkpoints.query(t).items
    assert item['values'] == {} and item['checkpoint'].startswith('msgpack:')
    assert saver.get_tuple(cfg(t)).checkpoint['channel_values'] == values
    # the form a larger checkpoint (or an earlier release) stores: the checkpoint without its values, each value apart
    ck = saver._from_inline(item['checkpoint'])
    kept = {k: v for k, v in item.items() if k != '_version'}
    saver.checkpoints.put({**kept, 'checkpoint': saver._inline({k: v for k, v in ck.items() if k != 'channel_values'}),
                           'values': saver._encode_values(t, ck['channel_values'])})
    [again] = saver.checkpoints.query(t).items
    assert sorted(again['values']) == sorted(values) and saver.get_tuple(cfg(t)).checkpoint['channel_values'] == values

def test_threshold_is_configurable(storage):
    t, value = tid(), 'x' * 2000
    put_values(DataOpsSaver(storage, offload_threshold=1000), t, {'v': value})
    put_values(DataOpsSaver(storage), t + '_b', {'v': value})
    assert len(blob_keys(DataOpsSaver(storage), t)) == 1 and blob_keys(DataOpsSaver(storage), t + '_b') == []

class State(TypedDict, total=False):
    table: str
    rows: list
    n: int
    approved: bool

def big_rows(n=20_000): return [{'id': i, 'email': f"c{i}@example.com"} for i in range(n)]

def graph_builder(extra_node=False, interrupt_at_review=True, count=None):
    b = StateGraph(State)
    b.add_node('load', lambda s: {'rows': big_rows()})
    b.add_node('count', count or (lambda s: {'n': len(s['rows'])}))
    b.add_node('review', lambda s: {'approved': interrupt('ok?') if interrupt_at_review else True})
    b.add_edge(START, 'load')
    if extra_node:
        b.add_node('dedupe', lambda s: {})
        b.add_edge('load', 'dedupe'); b.add_edge('dedupe', 'count')
    else: b.add_edge('load', 'count')
    b.add_edge('count', 'review'); b.add_edge('review', END)
    return b

def test_large_write_and_channel_value_share_one_blob(saver):
    "The rows a task writes and the same rows held by later checkpoints are one blob; unchanged channels cost no new blob"
    t = tid()
    g = saver.attach(graph_builder())
    g.invoke({'table': 'orders'}, cfg(t))
    writes = [w for it in saver.writes.query_all(t) for w in it['writes'] if w[1] == 'rows']
    refs = {json.dumps(it['values']['rows'], sort_keys=True) for it in saver.checkpoints.query_all(t) if 'rows' in it['values']}
    assert len(writes) == 1 and isinstance(writes[0][2], dict) and len(refs) == 1
    assert len(saver.checkpoints.query(t, limit=100).items) >= 3
    assert blob_keys(saver, t) == [_blob_prefix(t) + writes[0][2]['blob']]
    assert g.get_state(cfg(t)).values['rows'] == big_rows()

def test_copy_prune_and_delete_manage_blobs(storage):
    saver = DataOpsSaver(storage, gc_grace=0)
    src, dst = tid(), tid()
    first = put_values(saver, src, {'doc': 'a' * 100_000})
    put_values(saver, src, {'doc': 'b' * 100_000}, parent=first)
    assert len(blob_keys(saver, src)) == 2
    saver.copy_thread(src, dst)
    saver.delete_thread(src)
    assert blob_keys(saver, src) == [] and saver.get_tuple(cfg(src)) is None
    assert [tp.checkpoint['channel_values']['doc'][0] for tp in saver.list(cfg(dst))] == ['b', 'a']  # the copy owns its blobs
    saver.prune([dst])
    [kept] = blob_keys(saver, dst)
    assert saver.get_tuple(cfg(dst)).checkpoint['channel_values']['doc'] == 'b' * 100_000
    saver.prune([dst], strategy='delete')
    assert blob_keys(saver, dst) == []
    with pytest.raises(ConfigError, match='unknown prune strategy'): saver.prune([dst], strategy='keep_some')

def test_gc_grace_keeps_fresh_unreferenced_blobs(storage):
    "A blob uploaded moments ago (by a put another process has not finished) survives a prune until it is older than gc_grace"
    t = tid()
    put_values(DataOpsSaver(storage), t, {'doc': 'a' * 100_000})
    in_flight = _blob_prefix(t) + 'f' * 64
    storage.blob.put(in_flight, b'uploaded, item not written yet')
    DataOpsSaver(storage).prune([t])
    assert storage.blob.exists(in_flight)
    DataOpsSaver(storage, gc_grace=0).prune([t])
    assert not storage.blob.exists(in_flight) and len(blob_keys(DataOpsSaver(storage), t)) == 1

def test_delete_for_runs_collects_only_unreferenced_blobs(storage):
    saver = DataOpsSaver(storage, gc_grace=0)
    t = tid()
    c1 = put_values(saver, t, {'shared': 's' * 90_000, 'mine': 'm' * 90_000}, run_id='run-1')
    cp = empty_checkpoint()
    cp['channel_values'], cp['channel_versions'] = {'shared': 's' * 90_000}, {'shared': 1}
    saver.put(c1, cp, {'source': 'loop', 'step': 1, 'run_id': 'run-2'}, {})
    saver.delete_for_runs(['run-1'])
    [left] = saver.list(cfg(t))
    assert left.metadata['run_id'] == 'run-2' and left.checkpoint['channel_values'] == {'shared': 's' * 90_000}
    assert len(blob_keys(saver, t)) == 1

# ---------------------------------------------------------------- graph fingerprints

def test_fingerprint_recorded_in_root_checkpoints_only(saver):
    t = tid()
    sub = StateGraph(State)
    sub.add_node('inner', lambda s: {'n': 1}); sub.add_edge(START, 'inner'); sub.add_edge('inner', END)
    outer = StateGraph(State)
    outer.add_node('child', sub.compile()); outer.add_edge(START, 'child'); outer.add_edge('child', END)
    g = saver.attach(outer)
    g.invoke({'table': 'x'}, cfg(t))
    items = list(saver.checkpoints.query_all(t))
    fp = GraphShape.of(outer).fingerprint
    assert {it['checkpoint_ns'] == '' for it in items} == {True, False}  # the subgraph checkpointed in its own namespace
    assert all(it.get('graph_fingerprint') == (fp if it['checkpoint_ns'] == '' else None) for it in items)
    assert saver.graphs.get(fp)['shape'] == GraphShape.of(outer).to_dict()

def test_fingerprint_is_stable_across_processes():
    code = textwrap.dedent("""
        import sys; sys.path.insert(0, sys.argv[1])
        from test_checkpoint import graph_builder
        from dataops_lab.checkpoint import GraphShape
        print(GraphShape.of(graph_builder()).fingerprint, GraphShape.of(graph_builder(extra_node=True)).fingerprint)""")
    runs = [subprocess.run([sys.executable, '-c', code, str(Path(__file__).parent)], capture_output=True, text=True, check=True,
                           env={**os.environ, 'PYTHONHASHSEED': seed}).stdout.split() for seed in ('1', '2')]
    here = [GraphShape.of(graph_builder()).fingerprint, GraphShape.of(graph_builder(extra_node=True)).fingerprint]
    assert runs[0] == runs[1] == here and here[0] != here[1]

def test_changed_graph_warns(saver):
    t = tid()
    saver.attach(graph_builder()).invoke({'table': 'orders'}, cfg(t))
    edited = saver.attach(graph_builder(extra_node=True))
    with pytest.warns(GraphChangedWarning, match=r"node 'dedupe' added.*edge 'load -> dedupe' added") as caught:
        out = edited.invoke(Command(resume=True), cfg(t))
    assert out['approved'] is True and len(caught) == 1
    with warnings.catch_warnings():
        warnings.simplefilter('error')
        edited.get_state(cfg(t))  # the thread is now on the new graph: no further warning

def test_changed_graph_refused_before_anything_runs(storage):
    t = tid()
    DataOpsSaver(storage).attach(graph_builder()).invoke({'table': 'orders'}, cfg(t))
    before = [it['ck'] for it in DataOpsSaver(storage).checkpoints.query_all(t)]
    edited = DataOpsSaver(storage, on_graph_change='refuse').attach(graph_builder(extra_node=True))
    with pytest.raises(GraphChangedError, match="node 'dedupe' added") as e: edited.invoke(Command(resume=True), cfg(t))
    assert 'on_graph_change' in str(e.value)
    assert [it['ck'] for it in DataOpsSaver(storage).checkpoints.query_all(t)] == before

def test_node_code_change_is_not_a_graph_change(storage):
    "Fixing a node's code and resuming is what checkpoints are for: same shape, no warning"
    t = tid()
    strict = DataOpsSaver(storage, on_graph_change='refuse')
    strict.attach(graph_builder()).invoke({'table': 'orders'}, cfg(t))
    fixed = strict.attach(graph_builder(count=lambda s: {'n': len({r['email'] for r in s['rows']})}))
    assert fixed.invoke(Command(resume=True), cfg(t))['approved'] is True

def test_unattached_saver_records_no_fingerprint_and_is_not_checked(storage):
    t = tid()
    saver = DataOpsSaver(storage, on_graph_change='refuse')
    graph_builder().compile(checkpointer=saver).invoke({'table': 'orders'}, cfg(t))
    assert all('graph_fingerprint' not in tp.metadata for tp in saver.list(cfg(t)))
    assert saver.attach(graph_builder(extra_node=True)).invoke(Command(resume=True), cfg(t))['approved'] is True

# ---------------------------------------------------------------- serialisation safety

def test_pickle_fallback_serde_is_refused(storage):
    with pytest.raises(ConfigError, match='pickle_fallback=True'): DataOpsSaver(storage, serde=JsonPlusSerializer(pickle_fallback=True))

class Boom:
    def __reduce__(self): return (os.system, (f"touch {Path.cwd()/'pwned'}",))

def test_stored_pickle_is_never_unpickled(saver, tmp_path, monkeypatch):
    "An attacker writes a pickled value into the checkpoint table: reading it fails loudly, and nothing runs"
    monkeypatch.chdir(tmp_path)
    t = tid()
    put_values(saver, t, {'x': 1})
    [item] = saver.checkpoints.query(t).items
    item['values']['x'] = 'pickle:' + base64.b64encode(pickle.dumps(Boom())).decode()
    saver.checkpoints.put({k: v for k, v in item.items() if k != '_version'})
    with pytest.raises(StorageError, match='refusing to unpickle'): saver.get_tuple(cfg(t))
    assert not (tmp_path / 'pwned').exists()

def test_stored_constructor_call_is_not_made(saver, tmp_path, monkeypatch):
    "A msgpack extension record naming os.system comes back as data; the call is never made"
    monkeypatch.chdir(tmp_path)
    t = tid()
    put_values(saver, t, {'x': 1})
    [item] = saver.checkpoints.query(t).items
    payload = ormsgpack.packb(ormsgpack.Ext(EXT_CONSTRUCTOR_SINGLE_ARG, ormsgpack.packb(('os', 'system', f"touch {tmp_path/'pwned'}"))))
    item['values']['x'] = 'msgpack:' + base64.b64encode(payload).decode()
    saver.checkpoints.put({k: v for k, v in item.items() if k != '_version'})
    assert saver.get_tuple(cfg(t)).checkpoint['channel_values']['x'] == f"touch {tmp_path/'pwned'}"
    assert not (tmp_path / 'pwned').exists()

@dataclasses.dataclass
class Order:
    order_id: int
    region: str

class OrderState(TypedDict, total=False):
    order: Order

def test_state_types_are_allowed_by_attach_only(storage):
    "Strict revival: a dataclass comes back as itself for an attached graph (or allowed_types), as its fields otherwise"
    t = tid()
    put_values(DataOpsSaver(storage), t, {'order': Order(7, 'eu')})
    assert DataOpsSaver(storage).get_tuple(cfg(t)).checkpoint['channel_values']['order'] == {'order_id': 7, 'region': 'eu'}
    assert DataOpsSaver(storage, allowed_types=[Order]).get_tuple(cfg(t)).checkpoint['channel_values']['order'] == Order(7, 'eu')
    b = StateGraph(OrderState)
    b.add_node('ship', lambda s: {'order': Order(s['order'].order_id, 'us')}); b.add_edge(START, 'ship'); b.add_edge('ship', END)
    g = DataOpsSaver(storage).attach(b)
    t2 = tid()
    assert g.invoke({'order': Order(8, 'eu')}, cfg(t2))['order'] == Order(8, 'us')
    assert g.get_state(cfg(t2)).values['order'] == Order(8, 'us')

# ---------------------------------------------------------------- runs across processes, async, concurrency

def test_interrupted_in_one_process_resumed_in_another(tier_ini):
    "A child process runs to the interrupt and exits; this process resumes the thread from the store alone"
    t = tid()
    code = textwrap.dedent(f"""
        import sys; sys.path.insert(0, {str(Path(__file__).parent)!r})
        from test_checkpoint import graph_builder
        from dataops_lab.config import load_settings
        from dataops_lab.checkpoint import DataOpsSaver
        with DataOpsSaver(load_settings({str(tier_ini)!r})) as s:
            out = s.attach(graph_builder()).invoke({{'table': 'orders'}}, {{'configurable': {{'thread_id': {t!r}}}}})
            print(out['__interrupt__'][0].value)""")
    env = {**os.environ, 'AWS_ACCESS_KEY_ID': 'testing', 'AWS_SECRET_ACCESS_KEY': 'testing', 'AWS_DEFAULT_REGION': 'us-east-1'}
    res = subprocess.run([sys.executable, '-c', code], capture_output=True, text=True, env=env, timeout=300)
    assert res.returncode == 0 and res.stdout.strip() == 'ok?', res.stderr[-3000:]
    with DataOpsSaver(load_settings(tier_ini), on_graph_change='refuse') as s:
        g = s.attach(graph_builder())
        assert g.get_state(cfg(t)).next == ('review',)
        out = g.invoke(Command(resume=True), cfg(t))
    assert out['approved'] is True and out['n'] == 20_000 and out['rows'] == big_rows()

def test_async_run(saver):
    t = tid()
    g = saver.attach(graph_builder(interrupt_at_review=False))
    async def run():
        out = await g.ainvoke({'table': 'orders'}, cfg(t))
        return out, [s async for s in g.aget_state_history(cfg(t))], await g.aget_state(cfg(t))
    out, hist, state = asyncio.run(run())
    assert out['n'] == 20_000 and state.values['approved'] is True
    assert [h.metadata['step'] for h in hist] == list(range(len(hist) - 2, -2, -1))

def test_concurrent_special_writes_of_one_task_all_land(saver):
    "put_writes for one task from many threads at once: every special write is kept (conditional merge, no lost update)"
    t = tid()
    stored = put_values(saver, t, {'x': 1})
    from langgraph.checkpoint.base import WRITES_IDX_MAP
    channels = list(WRITES_IDX_MAP)  # __error__, __scheduled__, __interrupt__, __resume__: one slot each
    barrier = threading.Barrier(len(channels))
    def write(ch):
        barrier.wait()
        saver.put_writes(stored, [(ch, f"value of {ch}")], task_id='task-1')
    threads = [threading.Thread(target=write, args=(ch,)) for ch in channels]
    for th in threads: th.start()
    for th in threads: th.join()
    got = {ch: v for _, ch, v in saver.get_tuple(stored).pending_writes}
    assert got == {ch: f"value of {ch}" for ch in channels}

def test_regular_writes_are_first_come_special_writes_replace(saver):
    t = tid()
    stored = put_values(saver, t, {'x': 1})
    saver.put_writes(stored, [('a', 1), ('__interrupt__', 'first')], task_id='task-1')
    saver.put_writes(stored, [('a', 2), ('__interrupt__', 'second')], task_id='task-1')
    assert saver.get_tuple(stored).pending_writes == [('task-1', '__interrupt__', 'second'), ('task-1', 'a', 1)]

def test_bad_input_is_named(saver):
    with pytest.raises(InvalidInputError, match=r"\['thread_id'\] must be a non-empty str"): saver.get_tuple({'configurable': {'thread_id': ''}})
    with pytest.raises(InvalidInputError, match=r"\['thread_id'\] must be a non-empty str"): saver.get_tuple({'configurable': {'thread_id': 7}})
    with pytest.raises(ConfigError, match='on_graph_change'): DataOpsSaver(saver.storage, on_graph_change='ignore')
    with pytest.raises(ConfigError, match='offload_threshold'): DataOpsSaver(saver.storage, offload_threshold=0)
