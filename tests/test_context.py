"""ContextManager behaviour, the same on the embedded default (SQLite + files) and on Redis + DynamoDB + S3
(real servers), plus what a notebook cannot show: a restore killed with SIGKILL at random points, and a restore whose
metadata table fails at every possible step — the session is never left half-restored."""
import datetime as dt, json, random, re, textwrap, time
from urllib.parse import quote
import pytest, zstandard
from langchain_core.language_models.fake_chat_models import FakeListChatModel
from dataops_lab.core import *
from dataops_lab.models import *
from dataops_lab.store.base import Storage, MetadataTable, SESSIONS_TABLE, ARTIFACTS_TABLE, open_table, register_store
from dataops_lab.recall import estimate_tokens
from dataops_lab.sessions import *
from dataops_lab.context import *
from conftest import Child, uid

@pytest.fixture
def sm(manager_storage): return SessionManager(manager_storage)

@pytest.fixture
def cm(sm): return ContextManager(sm, sm.artifacts)

def talk(sm, sid, lines, **kw):
    return [sm.add_message(sid, 'user' if i % 2 == 0 else 'assistant', l, **kw) for i, l in enumerate(lines)]

def state(sm, sid):
    "What a restore must put back: the visible conversation and the session's state"
    s = sm.get_session(sid)
    return {'history': [(m.message_id, m.seq, m.role.value, m.content) for m in sm.get_history(sid)], 'global_context': s.global_context,
            'metadata': s.metadata, 'active_workflows': s.active_workflows, 'summary_artifact_id': s.summary_artifact_id,
            'summarised_until': s.summarised_until}

def cold_state(raw, sid):
    "The same, read straight from the cold tier (the source of truth), bypassing the hot tier"
    it = raw.table(SESSIONS_TABLE).get(sid)
    hidden = it.get('hidden_ranges') or []
    msgs = [m for m in raw.table(MESSAGES_TABLE).query_all(sid) if not any(a <= m['seq'] <= b for a, b in hidden)]
    return {'history': [(m['message_id'], m['seq'], m['role'], m['content']) for m in msgs], 'global_context': it.get('global_context') or {},
            'metadata': it.get('metadata') or {}, 'active_workflows': it.get('active_workflows') or [],
            'summary_artifact_id': it.get('summary_artifact_id'), 'summarised_until': it.get('summarised_until') or 0}

# ---------------------------------------------------------------- the seed's calls

def test_seed_calls_as_written(shared_ini, manager_storage, monkeypatch):
    "Every call of the seed, as written, with no configuration beyond settings.ini"
    monkeypatch.setenv('DATAOPS_SETTINGS', str(shared_ini))
    from dataops_lab import SessionManager, ArtifactStore, ContextManager, ArtifactType
    session_manager = SessionManager()
    session = session_manager.create_session(uid("user_123"))
    session_manager.add_message(session.session_id, "user", "Hello")
    context = session_manager.get_context_summary(session.session_id)
    assert [m.content for m in context.messages] == ['Hello']

    session_id, data = session.session_id, {'rows': 1200, 'columns': ['id', 'total']}
    artifact_store = ArtifactStore()
    artifact_id = artifact_store.store_artifact(content=data, session_id=session_id, workflow_name="my_workflow")
    content = artifact_store.get_artifact_content(artifact_id)
    artifacts = artifact_store.list_artifacts(session_id)
    assert content == data and [a.artifact_id for a in artifacts] == [artifact_id] and artifacts[0].artifact_type == ArtifactType.RESULT

    context_manager = ContextManager(session_manager, artifact_store)
    snapshot_id = context_manager.dump_context(session_id)
    context = context_manager.load_context(snapshot_id)
    assert [m['content'] for m in context['messages']] == ['Hello'] and [r['artifact_id'] for r in context['artifact_refs']] == [artifact_id]
    checkpoint = context_manager.create_checkpoint(session_id, "before_update")
    session_manager.add_message(session_id, "user", "Drop the notes column")
    session_manager.update_session(session_id, {'global_context': {'schema_changed': True}})
    context_manager.restore_checkpoint(session_id, "before_update")
    assert checkpoint.label == 'before_update' and checkpoint.last_seq == 1
    assert [m.content for m in session_manager.get_history(session_id)] == ['Hello']
    assert session_manager.get_session(session_id).global_context == {}
    assert manager_storage.table(SNAPSHOTS_TABLE).get((session_id, snapshot_id)) is not None  # on the configured tier
    session_manager.close()

# ---------------------------------------------------------------- snapshots

def test_dump_and_load_context(sm, cm, raw):
    sid = sm.create_session(uid(), global_context={'db': 'sales.db', 'table': 'orders'}).session_id
    lines = [f"turn {i}: the orders table has {1000 + i} rows in partition {i}" for i in range(60)]
    talk(sm, sid, lines)
    arts = [sm.artifacts.store_artifact({'rows': i}, session_id=sid, workflow_name='profile', name=f"profile_{i}") for i in range(3)]
    cm.set_workflow_state(sid, 'schema_analyzer', {'tables_done': ['orders']})
    cm.set_orchestrator_state(sid, {'intent': 'profile', 'step': 3})
    snap_id = cm.dump_context(sid)
    ctx = cm.load_context(snap_id)
    assert [m['seq'] for m in ctx['messages']] == list(range(11, 61))  # the newest 50 turns by default
    assert [m['content'] for m in ctx['messages']] == lines[10:]
    assert ctx['workflow_states'] == {'schema_analyzer': {'tables_done': ['orders']}} and ctx['orchestrator_state'] == {'intent': 'profile', 'step': 3}
    assert sorted(r['artifact_id'] for r in ctx['artifact_refs']) == sorted(arts) and ctx['session']['global_context'] == {'db': 'sales.db', 'table': 'orders'}
    rec = raw.table(SNAPSHOTS_TABLE).get((sid, snap_id))  # the record, straight from the table ...
    assert (rec['first_seq'], rec['last_seq'], len(rec['message_ids']), rec['kind']) == (11, 60, 50, 'snapshot')
    blob = raw.blob.get(rec['blob_key'])  # ... and the compressed payload it points at
    assert rec['blob_key'] == f"snapshots/{snap_id}.json.zst" and len(blob) == rec['compressed_size'] < rec['original_size'] / 3
    assert json.loads(zstandard.ZstdDecompressor().decompress(blob)) == ctx
    assert len(json.dumps(ctx, separators=(',', ':')).encode()) == rec['original_size']

    bare = cm.load_context(cm.dump_context(sid, include_artifacts=False, recent=5))
    assert bare['artifact_refs'] == [] and [m['seq'] for m in bare['messages']] == [56, 57, 58, 59, 60]
    third = cm.dump_context(sid, label='third')
    snaps = cm.list_snapshots(sid)  # oldest first
    assert (len(snaps), snaps[0].snapshot_id, snaps[-1].snapshot_id, snaps[-1].label) == (3, snap_id, third, 'third')
    assert [s.created_at for s in snaps] == sorted(s.created_at for s in snaps)

    sm.update_session(sid, {'global_context': {'db': 'crm.db', 'table': None, 'filter': 'eu'}})
    cm.set_workflow_state(sid, 'schema_analyzer', {'tables_done': []})
    cm.load_context(snap_id, merge_strategy='selective', keys=['table'])  # only the named keys come back
    assert sm.get_session(sid).global_context == {'db': 'crm.db', 'filter': 'eu', 'table': 'orders'}
    assert sm.get_session(sid).metadata['workflow_states'] == {'schema_analyzer': {'tables_done': []}}
    cm.load_context(snap_id, merge_strategy='merge')  # saved keys over current ones, the rest kept
    assert sm.get_session(sid).global_context == {'db': 'sales.db', 'filter': 'eu', 'table': 'orders'}
    assert sm.get_session(sid).metadata['workflow_states'] == {'schema_analyzer': {'tables_done': ['orders']}}
    cm.load_context(snap_id, merge_strategy='replace')
    assert sm.get_session(sid).global_context == {'db': 'sales.db', 'table': 'orders'}
    other = sm.create_session(uid(), global_context={'mine': 1}).session_id
    cm.load_context(snap_id, merge_strategy='merge', target_session=other)  # into another session
    assert sm.get_session(other).global_context == {'mine': 1, 'db': 'sales.db', 'table': 'orders'}
    assert sm.get_session(other).metadata['orchestrator_state'] == {'intent': 'profile', 'step': 3}
    assert sm.get_history(other) == []  # state only: no turns were copied

def test_a_snapshot_holds_any_json_the_session_holds(sm, cm, raw):
    "The payload's encoder (orjson, the standard encoder for what orjson refuses) loses nothing: non-ASCII text, integers over 64 bits, nested values"
    ctx0 = {'big': 10**20 + 1, 'ünï': ['ça', {'x': -2.5e-30, 'y': [True, None]}], 'n': None}
    sid = sm.create_session(uid(), global_context=ctx0).session_id
    lines = ["naïve café ☕ orders", "数据 rows: 12"]
    talk(sm, sid, lines)
    snap_id = cm.dump_context(sid)
    ctx = cm.load_context(snap_id)
    assert ctx['session']['global_context'] == ctx0 and type(ctx['session']['global_context']['big']) is int and [m['content'] for m in ctx['messages']] == lines
    assert sm.get_session(sid).global_context == ctx0 and type(sm.get_session(sid).global_context['big']) is int  # the session itself, through the hot tier
    rec = raw.table(SNAPSHOTS_TABLE).get((sid, snap_id))
    assert len(zstandard.ZstdDecompressor().decompress(raw.blob.get(rec['blob_key']))) == rec['original_size']

# ---------------------------------------------------------------- checkpoints

def test_checkpoints_restore_exactly(manager_storage, raw):
    sm = SessionManager(manager_storage, policy=SessionPolicy(summarise_over_tokens=60, keep_recent=2))
    cm = ContextManager(sm)
    sid = sm.create_session(uid(), global_context={'db': 'sales.db'}).session_id
    talk(sm, sid, [f"first part, turn {i}: orders has {i} nulls in the total column" for i in range(5)])
    a1 = sm.artifacts.store_artifact({'v': 1}, session_id=sid, workflow_name='profile', name='profile')
    sm.update_session(sid, {'active_workflows': ['profile']})
    cm.set_workflow_state(sid, 'profile', {'done': 1})
    zeta = cm.create_checkpoint(sid, 'zeta')  # labels sort the other way round from creation
    at_zeta, arts_zeta = state(sm, sid), {a.artifact_id for a in sm.artifacts.list_artifacts(sid)}
    assert at_zeta['summary_artifact_id'] is not None and len(at_zeta['history']) == 5

    talk(sm, sid, [f"second part, turn {i}: we decided to drop {i} orphan rows" for i in range(3)])
    a2 = sm.artifacts.store_artifact({'v': 2}, session_id=sid, workflow_name='profile', name='profile')
    sm.update_session(sid, {'global_context': {'rows_dropped': 3, 'db': 'crm.db'}, 'active_workflows': ['profile', 'load']})
    cm.set_workflow_state(sid, 'profile', {'done': 2})
    alpha = cm.create_checkpoint(sid, 'alpha')
    at_alpha, arts_alpha = state(sm, sid), {a.artifact_id for a in sm.artifacts.list_artifacts(sid)}
    assert at_alpha['summary_artifact_id'] != at_zeta['summary_artifact_id'] and len(at_alpha['history']) == 8

    talk(sm, sid, ["third part: something we will undo", "undo me too"])
    sm.update_session(sid, {'global_context': {'oops': True}, 'metadata': {'note': 'later'}})
    assert [c.label for c in cm.list_checkpoints(sid)] == ['zeta', 'alpha']  # oldest first

    d = cm.diff_checkpoints(sid, 'zeta', 'alpha')
    assert (d.a, d.b, d.messages_added, d.messages_removed) == ('zeta', 'alpha', [6, 7, 8], [])
    assert (d.state_added, d.state_removed, d.state_changed, d.artifacts_added, d.artifacts_removed) == (['rows_dropped'], [], ['db'], sorted(arts_alpha - arts_zeta), [])
    assert a2 in d.artifacts_added and a1 not in d.artifacts_added
    now = cm.diff_checkpoints(sid, 'alpha')
    assert (now.b, now.messages_added, now.state_added, now.state_changed) == ('now', [9, 10], ['oops'], [])

    restored = cm.restore_checkpoint(sid, 'zeta')
    assert state(sm, sid) == at_zeta == cold_state(raw, sid)  # exactly as it was: turns, state, summary pointer
    assert restored.global_context == at_zeta['global_context'] and restored.summary_artifact_id == at_zeta['summary_artifact_id']
    assert SessionManager(raw).get_history(sid) == sm.get_history(sid)  # every manager sees it
    back = cm.diff_checkpoints(sid, 'alpha')
    assert (back.messages_removed, back.state_removed, back.artifacts_removed) == ([6, 7, 8], ['rows_dropped'], [])

    m = sm.add_message(sid, 'user', 'continue from zeta')
    assert m.seq == 11 and [h[1] for h in state(sm, sid)['history']] == [1, 2, 3, 4, 5, 11]  # the conversation goes on from the checkpoint
    cm.restore_checkpoint(sid, 'cp_alpha')  # by id as well as by label
    assert state(sm, sid) == at_alpha == cold_state(raw, sid)  # the turns hidden by the first restore are back
    cm.restore_checkpoint(sid, 'zeta')
    assert state(sm, sid) == at_zeta
    assert len(raw.table(MESSAGES_TABLE).query(sid, limit=100).items) == 11  # restores hide turns, never delete them
    assert sm.artifacts.get_artifact_content(a1) == {'v': 1} and sm.artifacts.get_artifact_content(a2) == {'v': 2}

    cp = cm.create_checkpoint(sid, 'cp_release')  # a label that looks like an id still works as a label
    sm.add_message(sid, 'user', 'after the release')
    cm.restore_checkpoint(sid, 'cp_release')
    assert cp.snapshot_id == 'cp_cp_release' and state(sm, sid) == at_zeta
    with pytest.raises(ConflictError, match=f"session '{sid}' already has a checkpoint labelled 'alpha'"): cm.create_checkpoint(sid, 'alpha')
    assert [c.label for c in cm.list_checkpoints(sid)] == ['zeta', 'alpha', 'cp_release']

def test_checkpoint_references_only_the_current_summary(manager_storage):
    "A checkpoint's record does not grow with the number of summary versions: it keeps the current one, and diffs still see them all"
    sm = SessionManager(manager_storage, policy=SessionPolicy(summarise_over_tokens=40, keep_recent=1))
    cm = ContextManager(sm)
    sid = sm.create_session(uid()).session_id
    kept = sm.artifacts.store_artifact({'v': 1}, session_id=sid, workflow_name='profile', name='profile')
    sizes, summaries = [], []
    for part in range(4):
        talk(sm, sid, [f"part {part}, turn {i}: orders has {i} nulls in the total column of the warehouse" for i in range(4)])
        summaries.append(sm.get_session(sid).summary_artifact_id)
        cp = cm.create_checkpoint(sid, f"part{part}")
        assert sorted(r.artifact_id for r in cp.artifact_refs) == sorted([kept, summaries[-1]])
        sizes.append(len(json.dumps({k: v for k, v in cm._checkpoint(sid, f"part{part}").to_item().items() if k != "summary"})))  # the summary text is bounded by its budget
    versions = sm.artifacts.list_versions(summaries[-1])
    assert len(versions) >= 4 and len(set(summaries)) == 4  # four summary versions by the last checkpoint ...
    assert max(sizes) - min(sizes) < 16  # ... and, but for the summary text, a record the same size (ids and timestamps are fixed-width)
    d = cm.diff_checkpoints(sid, 'part0', 'part3')  # the diff compares every version, as the session lists them
    assert d.artifacts_removed == [] and set(summaries[1:]) <= set(d.artifacts_added)
    assert cm.diff_checkpoints(sid, 'part3').artifacts_added == cm.diff_checkpoints(sid, 'part3').artifacts_removed == []
    cm.restore_checkpoint(sid, 'part1')
    assert sm.get_session(sid).summary_artifact_id == summaries[1] and cm.diff_checkpoints(sid, 'part1').artifacts_removed == []

def listed_ids(raw, sid):
    "What the session's artifact index holds — the rows `list_artifacts`, and so `create_checkpoint`, reads — straight from the cold tier"
    return sorted(it['artifact_id'] for it in raw.table(ARTIFACTS_TABLE).query_all(sid, index='session_id-created_at'))

def test_superseded_summaries_leave_the_session_listing(manager_storage, raw):
    "The session's artifact index holds the current summary version only, so the rows a checkpoint reads do not grow with the session; old versions still read by id"
    sm = SessionManager(manager_storage, policy=SessionPolicy(summarise_over_tokens=40, keep_recent=1))
    cm = ContextManager(sm)
    sid = sm.create_session(uid()).session_id
    kept = sm.artifacts.store_artifact({'v': 1}, session_id=sid, workflow_name='profile', name='profile')
    summaries = []
    for part in range(5):
        talk(sm, sid, [f"part {part}, turn {i}: orders has {i} nulls in the total column of the warehouse" for i in range(4)])
        summaries.append(sm.get_session(sid).summary_artifact_id)
        cm.create_checkpoint(sid, f"part{part}")
        assert listed_ids(raw, sid) == sorted([kept, summaries[-1]])  # two rows to read at every checkpoint, however many versions
    versions = sm.artifacts.list_versions(summaries[-1])
    assert len(versions) >= 5 and set(summaries) <= {a.artifact_id for a in versions}  # every version is still a version ...
    assert all(sm.artifacts.get_artifact_content(a.artifact_id) for a in versions)  # ... and reads by id
    assert sorted(a.artifact_id for a in sm.artifacts.list_artifacts(sid)) == sorted([kept, summaries[-1]])
    s = sm.get_session(sid)
    assert [m.seq for m in sm.expand_summary(s.summary_artifact_id)] == list(range(1, s.summarised_until + 1))  # through the unlisted versions
    assert [m.seq for m in sm.expand_summary(summaries[0])] == list(range(1, sm.artifacts.get_artifact(summaries[0]).metadata['last_seq'] + 1))

    restored = cm.restore_checkpoint(sid, 'part1')  # an older version is current again: readable, and back in the listing
    assert restored.summary_artifact_id == summaries[1] and sm.get_context_summary(sid, max_tokens=500).summary
    assert listed_ids(raw, sid) == sorted([kept, summaries[1]])
    assert cm.diff_checkpoints(sid, 'part1').artifacts_removed == []  # a diff still sees every version
    talk(sm, sid, [f"after the restore, turn {i}: the warehouse total column is fixed for {i} rows" for i in range(4)])
    now = sm.get_session(sid).summary_artifact_id
    assert now not in summaries and summaries[1] in cm._summary_versions(sid, now)  # the conversation goes on from the restored version
    assert listed_ids(raw, sid) == sorted([kept, now])
    n = len(sm.artifacts.list_versions(now))
    assert sm.artifacts.purge_session_artifacts(sid) == n + 1  # a purge still finds the unlisted versions
    with pytest.raises(NotFoundError): sm.artifacts.get_artifact(summaries[0])

def test_a_shared_summary_stays_listed_where_it_was_inherited(manager_storage, raw):
    sm = SessionManager(manager_storage, policy=SessionPolicy(summarise_over_tokens=40, keep_recent=1))
    cm = ContextManager(sm)
    src, dst = sm.create_session(uid()).session_id, sm.create_session(uid()).session_id
    talk(sm, src, [f"turn {i}: the customers table has {i}% null emails in the crm export" for i in range(4)])
    inherited = cm.inherit_context(src, dst).summary
    talk(sm, src, [f"later turn {i}: the orders table has {i}% orphan rows in the warehouse" for i in range(6)])
    current = sm.get_session(src).summary_artifact_id
    assert current != inherited and inherited in [a.artifact_id for a in sm.artifacts.list_artifacts(dst)]
    assert listed_ids(raw, src) == sorted([inherited, current])  # shared: kept listed; the versions in between are not
    assert [r.artifact_id for r in cm.create_checkpoint(src, 'now').artifact_refs] == [current]
    assert sm.get_context_summary(dst, max_tokens=300).summary == sm.artifacts.get_artifact_content(inherited)

def test_summaries_written_by_the_previous_release_still_read_and_leave_the_listing(manager_storage, raw):
    "An earlier release kept every version listed: such a chain reads as before, and the next summary unlists it"
    sm = SessionManager(manager_storage, policy=SessionPolicy(summarise_over_tokens=10**6, keep_recent=1))
    cm = ContextManager(sm)
    sid = sm.create_session(uid()).session_id
    talk(sm, sid, [f"turn {i}: the orders table has {i} null totals" for i in range(7)])
    old, prev = [], None
    for first, last in ((1, 2), (3, 4), (5, 6)):  # the records that release wrote: plain versions of conversation_summary, each listed
        prev = sm.artifacts.store_artifact(f"turns {first}-{last}", session_id=sid, workflow_name='session', name='conversation_summary',
                                           artifact_type=ArtifactType.CONTEXT, created_by='summarise',
                                           metadata={'covered_seqs': [[first, last]], 'covered_from': first, 'first_seq': 1, 'last_seq': last, 'previous': prev, 'method': 'extractive'})
        old.append(prev)
    sm._modify(sid, lambda it: {**it, 'summary_artifact_id': old[-1], 'summarised_until': 6})
    assert listed_ids(raw, sid) == sorted(old)  # as they were written
    assert [r.artifact_id for r in cm.create_checkpoint(sid, 'old').artifact_refs] == [old[-1]]
    assert [m.seq for m in sm.expand_summary(old[-1])] == [1, 2, 3, 4, 5, 6]
    talk(sm, sid, ["turn 7: and the customers table has none", "turn 8: done"])
    new = sm.summarise(sid)
    assert listed_ids(raw, sid) == [new]  # the whole old chain left the listing with the next summary
    assert [m.seq for m in sm.expand_summary(new)] == [1, 2, 3, 4, 5, 6, 7, 8]
    assert [sm.artifacts.get_artifact_content(a) for a in old] == ["turns 1-2", "turns 3-4", "turns 5-6"]
    cm.restore_checkpoint(sid, 'old')
    assert sm.get_session(sid).summary_artifact_id == old[-1] and listed_ids(raw, sid) == [old[-1]]

RESTORER = textwrap.dedent("""
    import sys
    from dataops_lab.config import load_settings
    from dataops_lab.store.base import Storage
    from dataops_lab.sessions import SessionManager
    from dataops_lab.context import ContextManager
    cm = ContextManager(SessionManager(Storage(load_settings(sys.argv[1]))))
    sid, labels = sys.argv[2], sys.argv[3:]
    cm.list_checkpoints(sid)  # connected before the first restore
    print('ready', flush=True)
    assert sys.stdin.readline().strip() == 'go'
    i = 0
    while True:
        cm.restore_checkpoint(sid, labels[i % len(labels)])
        print('restored', labels[i % len(labels)], flush=True)
        i += 1
""")

def two_checkpoints(sm, cm):
    "A session with checkpoints 'base' and 'next' whose states differ in every part a restore writes"
    sid = sm.create_session(uid(), global_context={'db': 'sales.db'}).session_id
    talk(sm, sid, [f"base turn {i}" for i in range(4)])
    cm.set_workflow_state(sid, 'load', {'step': 1})
    cm.create_checkpoint(sid, 'base')
    base = state(sm, sid)
    talk(sm, sid, [f"next turn {i}" for i in range(3)])
    sm.update_session(sid, {'global_context': {'db': 'crm.db', 'rows': 7}, 'active_workflows': ['load'], 'metadata': {'owner': 'ana'}})
    cm.set_workflow_state(sid, 'load', {'step': 2})
    cm.create_checkpoint(sid, 'next')
    nxt = state(sm, sid)
    assert base != nxt and base['history'] == nxt['history'][:4]
    return sid, base, nxt

def test_restore_killed_at_random_points_leaves_no_mixture(sm, cm, raw, shared_ini, backend):
    sid, base, nxt = two_checkpoints(sm, cm)
    rng = random.Random(7)
    kids = [Child(RESTORER, shared_ini, sid, 'base', 'next') for _ in range(5 if backend == 'embedded' else 3)]  # started together: start-up is the slow part
    try:
        for child in kids: assert child.next_line() == 'ready'
    except BaseException:
        for child in kids: child.close()
        raise
    for child in kids:  # one at a time: each is killed somewhere inside a restore
        try:
            child.send('go')
            for _ in range(rng.randint(1, 3)): child.next_line()
            t0 = time.monotonic(); child.next_line(); took = time.monotonic() - t0  # how long one restore takes here
            time.sleep(rng.uniform(0, took))  # the injection point: somewhere inside the next restore (not a wait for a race)
            child.kill()
            assert child.proc.returncode == -9
        finally: child.close()
        now, cold = state(sm, sid), cold_state(raw, sid)
        fresh = SessionManager(raw)
        assert now == cold == state(fresh, sid)  # the hot tier and every manager agree with the source of truth ...
        assert now in (base, nxt)  # ... which is one checkpoint's state or the other's, never a mixture
    cm.restore_checkpoint(sid, 'next')
    assert state(sm, sid) == nxt and sm.add_message(sid, 'user', 'still works').seq == 8

class FaultyTable(MetadataTable):
    "A real table (the URL's `inner` option) that fails on purpose: the n-th operation and every later one raise"
    budget: int | None = None  # operations left before failing; None: never fail
    after = False  # True: perform the failing write, then raise (a lost reply)
    def __init__(self, url, spec, **options):
        super().__init__(url, spec, **options)
        opts = dict(self.options)
        self.inner = open_table(opts.pop('inner'), spec, **opts)
        self.spec = self.inner.spec
    def _op(self, name, *args, **kw):
        cls = type(self)
        if cls.budget is not None:
            if cls.budget <= 0:
                if cls.after and name in ('put', 'update', 'delete'): getattr(self.inner, name)(*args, **kw)
                raise BackendUnavailableError(f"injected failure in {name} on {self.spec.name!r}", "this is a test")
            cls.budget -= 1
        return getattr(self.inner, name)(*args, **kw)
    def put(self, item, **kw): return self._op('put', item, **kw)
    def get(self, key): return self._op('get', key)
    def update(self, key, **kw): return self._op('update', key, **kw)
    def delete(self, key, **kw): return self._op('delete', key, **kw)
    def query(self, value, **kw): return self._op('query', value, **kw)
    def scan(self, **kw): return self._op('scan', **kw)
    def ensure(self): self.inner.ensure()
    def close(self): self.inner.close()

def test_restore_failing_at_every_step_leaves_no_mixture(sm, cm, raw):
    "The metadata table fails at the k-th operation of a restore, for every k: before or after the write itself"
    register_store('table', 'faulty', FaultyTable)
    sid, base, nxt = two_checkpoints(sm, cm)
    settings = sm.storage.settings
    inner = settings.resolve(settings.storage.cold)
    st = Storage(settings.model_copy(update={'storage': settings.storage.model_copy(update={'cold': f"faulty://test?inner={quote(inner, safe='')}"})}))  # the same tables, through FaultyTable
    faulty = ContextManager(SessionManager(st, policy=SessionPolicy(hot_max_stale=3600)))  # the hot tier's epoch is read once: the k-th table operation is the same one in every attempt
    seen = set()
    try:
        for after in (False, True):
            FaultyTable.after = after
            for k in range(40):
                cm.restore_checkpoint(sid, 'next')
                FaultyTable.budget = k
                try: faulty.restore_checkpoint(sid, 'base'); ok = True
                except StorageError as e:
                    assert 'injected failure' in str(e); ok = False
                finally: FaultyTable.budget = None
                now = state(sm, sid)
                assert now == cold_state(raw, sid) == state(faulty.sessions, sid)
                assert now == base if ok else now in (base, nxt)  # all or nothing
                seen.add((after, ok, 'base' if now == base else 'next'))
                if ok: break
            else: pytest.fail('the restore never succeeded')
    finally: FaultyTable.budget = None; st.close()
    assert {(False, False, 'next'), (False, True, 'base'), (True, False, 'base')} <= seen  # failed before / completed / lost reply

# ---------------------------------------------------------------- inheritance and compression

def test_inherit_context(manager_storage):
    sm = SessionManager(manager_storage, policy=SessionPolicy(summarise_over_tokens=60, keep_recent=2))
    cm = ContextManager(sm)
    owner = uid()
    src = sm.create_session(owner, global_context={'db': 'sales.db', 'table': 'orders', 'secret': 'x'}).session_id
    lines = [f"turn {i}: the customers table has {i}% null emails" for i in range(8)]
    talk(sm, src, lines)
    pinned = sm.artifacts.store_artifact('customer_id is the key', session_id=src, workflow_name='schema', name='keys', metadata={'pinned': True})
    loose = sm.artifacts.store_artifact('scratch', session_id=src, workflow_name='schema', name='scratch')
    sm.set_preferences(owner, response_style='detailed', max_context_tokens=900)
    summary = sm.get_session(src).summary_artifact_id
    assert summary is not None

    dst = sm.create_session(uid()).session_id
    got = cm.inherit_context(src, dst, {'state_keys': ['db', 'table']})
    d = sm.get_session(dst)
    assert (got.summary, got.artifacts, got.state_keys, got.messages, got.preferences) == (summary, [pinned], ['db', 'table'], 0, True)
    assert d.global_context == {'db': 'sales.db', 'table': 'orders'}  # only the chosen keys
    assert sm.get_history(dst) == []  # no raw history unless asked
    listed = [a.artifact_id for a in sm.artifacts.list_artifacts(dst)]
    assert pinned in listed and loose not in listed and summary in listed  # shared, not copied
    assert sm.artifacts.get_artifact(pinned).session_id == src
    assert (d.metadata['inherited_from'], d.metadata['preferences']['response_style'], d.metadata['preferences']['max_context_tokens']) == (src, 'detailed', 900)
    assert d.summary_artifact_id == summary and sm.get_context_summary(dst, max_tokens=200).summary

    dst2 = sm.create_session(uid(), global_context={'mine': 1}).session_id
    got2 = cm.inherit_context(src, dst2, {'history': True, 'summary': False, 'preferences': False, 'artifacts': False, 'state_keys': []})
    d2 = sm.get_session(dst2)
    hist = sm.get_history(dst2)
    assert (got2.summary, got2.artifacts, got2.state_keys, got2.messages, got2.preferences) == (None, [], [], 8, False)
    assert [m.content for m in hist] == lines and [m.seq for m in hist] == list(range(1, 9))  # history copied, when asked
    assert [m.metadata['inherited_from'] for m in hist] == [f"{src}#{i}" for i in range(1, 9)]
    assert d2.global_context == {'mine': 1} and 'preferences' not in d2.metadata and d2.summary_artifact_id != summary
    assert not {pinned, loose, summary} & {a.artifact_id for a in sm.artifacts.list_artifacts(dst2)}
    assert len(sm.get_history(src)) == 8  # the source is untouched

def test_compress_context_keeps_pointers_and_decisions(manager_storage):
    sm = SessionManager(manager_storage)
    cm = ContextManager(sm)
    sid = sm.create_session(uid()).session_id
    ref = sm.artifacts.store_artifact({'rows': 5}, session_id=sid, workflow_name='profile', name='orders_profile')
    filler = [f"Row count check number {i} for partition {i} looks ordinary and unremarkable today" for i in range(30)]
    talk(sm, sid, filler[:15])
    sm.add_message(sid, 'assistant', 'We decided to drop the 0.3% orphan orders before loading.', artifact_ids=[ref])
    talk(sm, sid, filler[15:])
    ctx = cm.load_context(cm.dump_context(sid))
    cc = cm.compress_context(ctx, max_tokens=80)
    assert cc.tokens <= 80 and estimate_tokens(cc.text) == cc.tokens
    assert cc.artifact_ids == [ref] and ref in cc.text  # pointers survive compression
    assert 'decided to drop the 0.3% orphan orders' in cc.text  # and so do decisions
    assert cc.covers == [m['seq'] for m in ctx['messages']] and estimate_tokens(' '.join(filler)) > 80 * 3
    summary = sm.get_context_summary(sid, max_tokens=2000)
    cs = cm.compress_context(summary, max_tokens=60)
    assert cs.tokens <= 60 and ref in cs.text
    assert cm.compress_context(sm.get_history(sid), max_tokens=60).artifact_ids == [ref]
    llm = FakeListChatModel(responses=["Orphan orders (0.3%) are dropped before loading [#16]."])
    lcm = ContextManager(SessionManager(manager_storage, llm=llm))
    out = lcm.compress_context(ctx, max_tokens=80)
    assert out.text == f"{llm.responses[0]}\nartifacts: {ref}" and out.tokens <= 80

# ---------------------------------------------------------------- archived and purged sessions

def test_archived_and_purged_sessions(fresh_storage, fresh_raw):
    sm = SessionManager(fresh_storage)
    cm = ContextManager(sm)
    sid = sm.create_session(uid()).session_id
    talk(sm, sid, ['one', 'two', 'three'])
    cm.create_checkpoint(sid, 'early')
    sm.add_message(sid, 'user', 'four')
    snap = cm.dump_context(sid)
    t = sm.get_session(sid).last_active
    assert sm.cleanup_expired_sessions(now=t + dt.timedelta(seconds=sm.policy.expire_after + 1)).archived == [sid]
    before = state(sm, sid)
    assert [h[3] for h in before['history']] == ['one', 'two', 'three', 'four']
    with pytest.raises(InvalidInputError, match=f"session '{sid}' is archived; it cannot be restored"): cm.restore_checkpoint(sid, 'early')
    assert state(sm, sid) == before  # refused, not half-done
    assert [m['content'] for m in cm.load_context(snap)['messages']] == ['one', 'two', 'three', 'four']  # snapshots outlive the archiving
    late = cm.create_checkpoint(sid, 'archived_view')
    assert late.last_seq == 4
    with pytest.raises(InvalidInputError, match=f"session '{sid}' is archived; its status cannot change"): sm.update_session(sid, {'status': 'active'})
    sm.purge_session(sid)
    assert list(fresh_raw.table(SNAPSHOTS_TABLE).query_all(sid)) == [] and list(fresh_raw.blob.iter_keys('snapshots/')) == []
    assert list(fresh_raw.blob.iter_keys(f"checkpoints/{sid}/")) == []
    with pytest.raises(NotFoundError, match=f"no snapshot '{snap}'"): cm.load_context(snap)
    with pytest.raises(NotFoundError, match=f"session '{sid}' has no checkpoint 'early'"): cm.restore_checkpoint(sid, 'early')
    with pytest.raises(NotFoundError, match=f"no session '{sid}'"): cm.dump_context(sid)
    assert cm.list_checkpoints(sid) == []

# ---------------------------------------------------------------- bad input

CYCLIC = {}; CYCLIC['again'] = CYCLIC

def test_bad_input_is_refused_clearly(sm, cm):
    sid = sm.create_session(uid(), global_context={'db': 'sales.db'}).session_id
    talk(sm, sid, ['hello', 'hi'])
    cm.create_checkpoint(sid, 'before_update')
    snap = cm.dump_context(sid)
    before = state(sm, sid)
    cases = [
        (NotFoundError, "no session 'sess_nope'", lambda: cm.dump_context('sess_nope')),
        (NotFoundError, "no session 'sess_nope'", lambda: cm.create_checkpoint('sess_nope', 'x')),
        (NotFoundError, "no session 'sess_nope'", lambda: cm.inherit_context('sess_nope', sid)),
        (NotFoundError, "no session 'sess_nope'", lambda: cm.inherit_context(sid, 'sess_nope')),
        (NotFoundError, "no session 'sess_nope'", lambda: cm.set_workflow_state('sess_nope', 'wf', {})),
        (NotFoundError, "no session 'sess_nope'", lambda: cm.load_context(snap, merge_strategy='replace', target_session='sess_nope')),
        (NotFoundError, "session 'sess_nope' has no checkpoint 'before_update'", lambda: cm.restore_checkpoint('sess_nope', 'before_update')),
        (NotFoundError, "no snapshot 'snap_nope'", lambda: cm.load_context('snap_nope')),
        (NotFoundError, rf"(?s)session '{sid}' has no checkpoint 'nope'.*known: \['before_update'\]", lambda: cm.restore_checkpoint(sid, 'nope')),
        (NotFoundError, f"session '{sid}' has no checkpoint 'cp_nope'", lambda: cm.restore_checkpoint(sid, 'cp_nope')),
        (NotFoundError, f"session '{sid}' has no checkpoint 'nope'", lambda: cm.diff_checkpoints(sid, 'before_update', 'nope')),
        (InvalidInputError, "checkpoint label 'before update!' is not allowed", lambda: cm.create_checkpoint(sid, 'before update!')),
        (InvalidInputError, "checkpoint label '' is not allowed", lambda: cm.create_checkpoint(sid, '')),
        (InvalidInputError, "checkpoint label 'x{65}' is not allowed".replace('x{65}', 'x' * 65), lambda: cm.create_checkpoint(sid, 'x' * 65)),
        (InvalidInputError, "checkpoint label '../up' is not allowed", lambda: cm.restore_checkpoint(sid, '../up')),
        (InvalidInputError, 'checkpoint label 5 is not allowed', lambda: cm.create_checkpoint(sid, 5)),
        (InvalidInputError, 'checkpoint label None is not allowed', lambda: cm.restore_checkpoint(sid, None)),
        (ConflictError, f"session '{sid}' already has a checkpoint labelled 'before_update'", lambda: cm.create_checkpoint(sid, 'before_update')),
        (InvalidKeyError, 'snapshot_id must be a str, got int', lambda: cm.load_context(42)),
        (InvalidIdError, 'session_id must be a str, got int: 5', lambda: cm.restore_checkpoint(5, 'before_update')),
        (InvalidIdError, 'session_id must be a str, got NoneType: None', lambda: cm.list_checkpoints(None)),
        (InvalidIdError, "target_session 'team/b' is not allowed", lambda: cm.load_context(snap, merge_strategy='replace', target_session='team/b')),
        (InvalidIdError, "user_id 'a b' is not allowed", lambda: cm.fork_checkpoint(sid, 'before_update', user_id='a b')),
        (InvalidIdError, "session_id 'café' is not allowed", lambda: cm.dump_context('café')),
        (InvalidInputError, "merge_strategy 'mix' is not known", lambda: cm.load_context(snap, merge_strategy='mix')),
        (InvalidInputError, r"merge_strategy='selective' needs keys=\[...\]", lambda: cm.load_context(snap, merge_strategy='selective')),
        (InvalidInputError, "keys must be a list of str, got 'db'", lambda: cm.load_context(snap, merge_strategy='selective', keys='db')),
        (InvalidInputError, 'filters must be a dict, got list', lambda: cm.inherit_context(sid, sid, ['history'])),
        (InvalidInputError, r"unknown inherit_context filter\(s\) \['everything'\]", lambda: cm.inherit_context(sid, sid, {'everything': True})),
        (InvalidInputError, r"filters\['state_keys'\] must be a list of str or None, got 'db'", lambda: cm.inherit_context(sid, sid, {'state_keys': 'db'})),
        (InvalidInputError, 'cannot compress a str', lambda: cm.compress_context('some text')),
        (InvalidInputError, "max_tokens must be an int of at least 20, got '5'", lambda: cm.compress_context([], max_tokens='5')),
        (InvalidInputError, 'state must be a dict, got list', lambda: cm.set_workflow_state(sid, 'wf', [1])),
        (InvalidKeyError, 'workflow is empty', lambda: cm.set_workflow_state(sid, '', {})),
        (InvalidInputError, 'state must be a dict, got str', lambda: cm.set_orchestrator_state(sid, 'running')),
        (InvalidInputError, r"state\['x'\] is a builtins\.object, which does not round-trip", lambda: cm.set_workflow_state(sid, 'wf', {'x': object()})),
        (InvalidInputError, r"state\['x'\] is nan", lambda: cm.set_workflow_state(sid, 'wf', {'x': float('nan')})),
        (InvalidInputError, r"state\['again'\] contains itself", lambda: cm.set_orchestrator_state(sid, CYCLIC)),
    ]
    failures = []
    for exc, msg, call in cases:
        try: call()
        except Exception as e:
            if not (type(e) is exc and re.search(msg, str(e))): failures.append(f"{msg}: got {type(e).__name__}: {e}")
        else: failures.append(f"{msg}: no error")
    assert failures == []
    assert state(sm, sid) == before  # nothing refused changed anything
    assert [c.label for c in cm.list_checkpoints(sid)] == ['before_update'] and len(cm.list_snapshots(sid)) == 2

# ---------------------------------------------------------------- hardening: one id rule, one bad record

def test_one_id_rule_in_every_layer(sm, cm):
    "Issue 11 item 12: an id SessionManager accepts, ArtifactStore and ContextManager accept too — and the other way round"
    u = uid('')[1:]
    allowed = [f'sess_{u}', f'alice.{u}@example.com', f'team-a:{u}.report', u + 'x' * (128 - len(u))]
    refused = [f'team/{u}', f'caf\u00e9{u}', 's' * 600, f'a b{u}', f'x#{u}', f'-lead{u}', '', ' ']
    def ok(call):
        try: call(); return True
        except InvalidIdError: return False
    verdicts = {}
    for i in allowed + refused:
        v = {'session': ok(lambda: sm.create_session(uid(), session_id=i)), 'user': ok(lambda: sm.create_session(i)),
             'artifact': ok(lambda: sm.artifacts.store_artifact('x', i, 'wf')),
             'artifact user': ok(lambda: sm.artifacts.store_artifact('x', uid('sess'), 'wf', user_id=i)), 'check_id': is_id(i)}
        if v['session']: v['context'] = ok(lambda: cm.set_workflow_state(i, 'wf', {'step': 1})) and ok(lambda: cm.dump_context(i))
        verdicts[i[:24]] = set(v.values())
    assert verdicts == {i[:24]: {i in allowed} for i in allowed + refused}

def test_one_unreadable_record_never_breaks_a_read_path(sm, cm, raw):
    "Issue 11 item 13: a record no current check would let in (hand-written, an older release) is skipped and named, not fatal"
    user = uid()
    sid = sm.create_session(user).session_id
    sm.add_message(sid, 'user', 'hello')
    good = sm.artifacts.store_artifact({'rows': 1}, sid, 'wf', name='good')
    item = raw.table(ARTIFACTS_TABLE).get(good)
    bad = f"art_{uid('bad')}"
    raw.table(ARTIFACTS_TABLE).put({**{k: v for k, v in item.items() if k != '_version'}, 'artifact_id': bad, 'content_type': 123})
    listed = sm.artifacts.list_artifacts(sid)
    assert ([a.artifact_id for a in listed], listed.skipped) == ([good], [bad])
    assert bad in sm.artifacts.search(workflow_name='wf', limit=1000).skipped
    snap = cm.load_context(cm.dump_context(sid))
    assert [r['artifact_id'] for r in snap['artifact_refs']] == [good]
    assert [r.artifact_id for r in cm.create_checkpoint(sid, 'with_a_bad_record').artifact_refs] == [good]
    with pytest.raises(InvalidInputError, match='content_type must be a str, got int: 123'):  # the write path refuses it
        sm.artifacts.store_artifact('x', sid, 'wf', content_type=123)
    broken = {'session_id': f"sess_{uid('broken')}", 'user_id': user, 'created_at': iso(utcnow()), 'status': 'no such status'}
    raw.table(SESSIONS_TABLE).put(broken)
    page = sm.list_sessions(user)
    assert ([s.session_id for s in page], page.skipped) == ([sid], [broken['session_id']])
    raw.table(SESSIONS_TABLE).delete(broken['session_id']); raw.table(ARTIFACTS_TABLE).delete(bad)
