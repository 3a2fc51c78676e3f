"""SessionManager behaviour, the same on the embedded default (SQLite + files) and on Redis + DynamoDB + S3
(real servers: redis-server and moto's DynamoDB + S3 over HTTP), plus what a notebook cannot show: two processes
appending to one session, a process killed with SIGKILL under load, Redis stopped and restarted mid-load."""
import datetime as dt, hashlib, io, json, logging, os, random, re, signal, textwrap, threading, time
import pytest, zstandard
from langchain_core.language_models.fake_chat_models import FakeListChatModel
from dataops_lab.core import *
from dataops_lab.config import load_settings
from dataops_lab.models import *
from dataops_lab.store.base import Storage, SESSIONS_TABLE, ARTIFACTS_TABLE
from dataops_lab.recall import estimate_tokens, msg_tokens
from dataops_lab.sessions import *
from dataops_lab.context import ContextManager
from dataops_lab.artifacts import ARTIFACT_VERSIONS_TABLE
from conftest import Child, uid, write_ini
from servers import RedisServer, wait_for

@pytest.fixture
def sm(manager_storage): return SessionManager(manager_storage)

def seqs(msgs): return [m.seq for m in msgs]
def contents(msgs): return [m.content for m in msgs]
def cached(raw, sid):
    "The session item the hot tier holds for `sid` (None if not cached), read straight from the cache"
    v = raw.cache.get(f"sessions/{sid}")
    return None if v is None else json.loads(v)

# ---------------------------------------------------------------- the seed's calls

def test_seed_calls_as_written(shared_ini, manager_storage, monkeypatch):
    "The seed's SessionManager calls, with no arguments: settings come from the environment / settings.ini"
    monkeypatch.setenv('DATAOPS_SETTINGS', str(shared_ini))
    from dataops_lab import SessionManager as SM  # the package-level name the seed imports
    session_manager = SM()
    session = session_manager.create_session(uid("user_123"))
    session_manager.add_message(session.session_id, "user", "Hello")
    context = session_manager.get_context_summary(session.session_id)
    assert [(t.message.role, t.message.content, t.reason) for t in context.turns] == [(Role.USER, 'Hello', 'recent')]
    assert context.session_id == session.session_id and context.tokens_used <= context.max_tokens == 4000
    assert session_manager.storage.urls == manager_storage.urls  # the configured tier, not some default
    assert manager_storage.table(MESSAGES_TABLE).get((session.session_id, 1))['content'] == 'Hello'
    session_manager.close()

# ---------------------------------------------------------------- CRUD, listing, closing

def test_create_get_list_close(sm, raw):
    u1, u2, chosen = uid(), uid(), uid('sess')
    s = sm.create_session(u1, metadata={'project': 'sales'}, global_context={'db': 'sales.db'})
    got = sm.get_session(s.session_id)
    assert (got.user_id, got.status, got.metadata, got.global_context, got.history) == (u1, SessionStatus.ACTIVE, {'project': 'sales'}, {'db': 'sales.db'}, None)
    assert raw.table(SESSIONS_TABLE).get(s.session_id)['user_id'] == u1  # in the source of truth when create returns
    mine = sm.create_session(u1, session_id=chosen)
    assert mine.session_id == chosen and sm.get_session(chosen).user_id == u1
    with pytest.raises(ConflictError, match=f"session '{chosen}' exists already"): sm.create_session(u2, session_id=chosen)
    assert sm.get_session(chosen).user_id == u1  # never overwritten

    more = [sm.create_session(u1) for _ in range(3)]
    sm.create_session(u2)
    newest_first = [x.session_id for x in reversed([s, mine, *more])]
    pages, cursor = [], None
    while True:
        page = sm.list_sessions(u1, limit=2, cursor=cursor)
        pages.append([x.session_id for x in page.items])
        if not (cursor := page.cursor): break
    assert [i for p in pages for i in p] == newest_first and all(len(p) <= 2 for p in pages) and len(pages) >= 3
    assert [x.session_id for x in sm.list_sessions(u1, limit=100)] == newest_first
    assert [x.user_id for x in sm.list_sessions(u2)] == [u2]
    assert sm.list_sessions(uid()).items == []

    sm.add_message(more[0].session_id, 'user', 'before closing')
    closed = sm.close_session(more[0].session_id)
    assert closed.status == SessionStatus.CLOSED and sm.get_session(more[0].session_id).status == SessionStatus.CLOSED
    assert contents(sm.get_history(more[0].session_id)) == ['before closing']  # kept and readable
    assert [x.session_id for x in sm.list_sessions(u1, status='closed')] == [more[0].session_id]
    assert more[0].session_id not in [x.session_id for x in sm.list_sessions(u1, limit=100, status=SessionStatus.ACTIVE)]
    with pytest.raises(InvalidInputError, match=f"session '{more[0].session_id}' is closed"): sm.add_message(more[0].session_id, 'user', 'after closing')
    assert contents(sm.get_history(more[0].session_id)) == ['before closing']

def test_history_limit_before_after(sm):
    sid = sm.create_session(uid()).session_id
    roles = ['user', 'assistant', 'system', 'tool']
    msgs = [sm.add_message(sid, roles[i % 4], f"turn {i+1}") for i in range(9)]
    m10 = sm.add_message(sid, Message(role='user', content='turn 10', workflow='schema_analyzer', artifact_ids=['art_x'], metadata={'k': 1}))
    hist = sm.get_history(sid)
    assert seqs(hist) == list(range(1, 11)) and contents(hist) == [f"turn {i}" for i in range(1, 11)]
    assert [m.message_id for m in hist] == [m.message_id for m in msgs + [m10]]
    assert [m.role.value for m in hist[:4]] == roles
    assert (hist[-1].workflow, hist[-1].artifact_ids, hist[-1].metadata, hist[-1].session_id) == ('schema_analyzer', ['art_x'], {'k': 1}, sid)
    assert seqs(sm.get_history(sid, limit=3)) == [8, 9, 10]
    assert seqs(sm.get_history(sid, after=7)) == [8, 9, 10]
    assert seqs(sm.get_history(sid, before=3)) == [1, 2]
    assert seqs(sm.get_history(sid, after=2, before=6)) == [3, 4, 5]
    assert seqs(sm.get_history(sid, after=2, before=9, limit=2)) == [7, 8]
    assert seqs(sm.get_history(sid, after=10)) == [] and seqs(sm.get_history(sid, limit=100)) == list(range(1, 11))
    t3, t7 = hist[2].timestamp, hist[6].timestamp
    assert seqs(sm.get_history(sid, after=t3, before=t7)) == [4, 5, 6]
    assert seqs(sm.get_history(sid, after=t7)) == [8, 9, 10]
    s = sm.get_session(sid, with_history=True)
    assert seqs(s.history) == list(range(1, 11)) and s.message_count == 10

def test_preferences_per_user_with_defaults(sm, raw):
    alice, bob = uid('alice'), uid('bob')
    a1, a2 = sm.create_session(alice), sm.create_session(alice)
    b = sm.create_session(bob)
    d = sm.get_preferences(alice)
    assert (d.user_id, d.response_style, d.max_context_tokens, d.timezone, d.notifications) == (alice, 'concise', 4000, 'UTC', True)
    sm.set_preferences(alice, response_style='detailed', max_context_tokens=120, extra={'units': 'metric'})
    sm.set_preferences(alice, timezone='Europe/Paris')  # a second change keeps the first
    p = sm.get_preferences(alice)
    assert (p.response_style, p.max_context_tokens, p.timezone, p.extra) == ('detailed', 120, 'Europe/Paris', {'units': 'metric'})
    assert sm.get_preferences(bob).response_style == 'concise'
    fresh = SessionManager(raw)  # another manager, its own connections
    assert fresh.get_preferences(alice) == p  # stored per user, not in one manager
    for s in (a1, a2):  # every session of the user gets the user's budget by default
        for i in range(15): sm.add_message(s.session_id, "user", f"message number {i} about the orders table")
        assert sm.get_context_summary(s.session_id).max_tokens == 120
        assert sm.get_context_summary(s.session_id).tokens_used <= 120
    sm.add_message(b.session_id, 'user', 'hi')
    assert sm.get_context_summary(b.session_id).max_tokens == 4000
    with pytest.raises(InvalidInputError, match=r"unknown preference\(s\) \['colour'\]"): sm.set_preferences(alice, colour='blue')
    with pytest.raises(InvalidInputError, match="max_context_tokens.*'lots'"): sm.set_preferences(alice, max_context_tokens='lots')
    assert sm.get_preferences(alice) == p  # a refused change changes nothing

# ---------------------------------------------------------------- updates

def test_update_session_merges(sm, raw):
    s = sm.create_session(uid(), metadata={'owner': 'ana', 'tags': ['a']}, global_context={'db': 'sales.db', 'table': 'orders'})
    before = sm.get_session(s.session_id).last_active
    u = sm.update_session(s.session_id, {'global_context': {'table': None, 'rows': 1200}, 'metadata': {'tags': ['a', 'b']}})
    assert u.global_context == {'db': 'sales.db', 'rows': 1200}  # merged key by key; None removes a key
    assert u.metadata == {'owner': 'ana', 'tags': ['a', 'b']}
    assert u.last_active >= before
    u = sm.update_session(s.session_id, {'active_workflows': ['schema_analyzer', 'sql_gen']})
    u = sm.update_session(s.session_id, {'active_workflows': ['sql_gen']})  # lists are replaced, not merged
    assert (u.active_workflows, u.global_context) == (['sql_gen'], {'db': 'sales.db', 'rows': 1200})
    other = SessionManager(raw)
    assert other.get_session(s.session_id) == sm.get_session(s.session_id) == u
    assert sm.update_session(s.session_id, {'status': 'idle'}).status == SessionStatus.IDLE
    assert sm.update_session(s.session_id, {}).global_context == u.global_context

def test_concurrent_updates_from_threads_lose_nothing(sm, raw):
    sid = sm.create_session(uid(), global_context={'seed': 0}).session_id
    other = SessionManager(raw)  # a second manager (own connections) joins in
    errors = []
    def worker(mgr, t):
        try:
            for i in range(5): mgr.update_session(sid, {'global_context': {f"t{t}_{i}": i}, 'metadata': {f"t{t}": i}})
        except Exception as e: errors.append(e)
    threads = [threading.Thread(target=worker, args=(sm if t % 2 else other, t)) for t in range(6)]
    for t in threads: t.start()
    for t in threads: t.join()
    assert errors == []
    s = sm.get_session(sid)
    assert s.global_context == {'seed': 0, **{f"t{t}_{i}": i for t in range(6) for i in range(5)}}
    assert s.metadata == {f"t{t}": 4 for t in range(6)}
    assert sm.sessions.get(sid)['global_context'] == s.global_context and other.get_session(sid) == s

# ---------------------------------------------------------------- relevance-scored context

CONVERSATION = [
    "Load the customers table from crm.db",
    "Loaded 48,210 customers. The email column has a 12% null rate, all from the 2019 import.",
    *[f"Profile partition {i} of the orders table and report row counts for region {i}" for i in range(3, 31)],
    "Now generate SQL for monthly revenue by region",
]

def test_context_summary_fits_the_budget_and_explains(sm):
    sid = sm.create_session(uid()).session_id
    for i, c in enumerate(CONVERSATION): sm.add_message(sid, 'user' if i % 2 == 0 else 'assistant', c)
    n = len(CONVERSATION)
    for budget in (60, 150, 400):
        ctx = sm.get_context_summary(sid, max_tokens=budget, query='why is the email null rate so high?')
        real = (estimate_tokens(ctx.summary) if ctx.summary else 0) + sum(msg_tokens(m) for m in ctx.messages)
        assert ctx.tokens_used == real <= budget
        assert seqs(ctx.messages) == sorted(seqs(ctx.messages)) and ctx.omitted == n - len(ctx.messages) > 0
        assert ctx.turns[-1].message.seq == n and ctx.turns[-1].reason == 'recent'  # the newest turn always
        recalled = {t.message.seq: t for t in ctx.turns if t.reason == 'relevant'}
        assert 2 in recalled and "'email'" in recalled[2].why and 'bm25' in recalled[2].why and recalled[2].score > 0
    small = sm.get_context_summary(sid, max_tokens=60, query='why is the email null rate so high?')
    assert [t.reason for t in small.turns].count('recent') >= 1 and len(small.turns) < 5
    plain = sm.get_context_summary(sid, max_tokens=150)  # no query: the newest user turn is the query
    assert plain.query == CONVERSATION[-1] and plain.tokens_used <= 150
    assert all(t.why for t in plain.turns)
    with pytest.raises(InvalidInputError, match='max_tokens must be an int of at least 50, got 10'): sm.get_context_summary(sid, max_tokens=10)

def test_summaries_are_automatic_versioned_and_reversible(manager_storage):
    sm = SessionManager(manager_storage, policy=SessionPolicy(summarise_over_tokens=150, keep_recent=4))
    sid = sm.create_session(uid()).session_id
    assert sm.get_session(sid).summary_artifact_id is None
    for i, c in enumerate(CONVERSATION): sm.add_message(sid, 'user' if i % 2 == 0 else 'assistant', c)
    s = sm.get_session(sid)
    n = len(CONVERSATION)
    assert s.summary_artifact_id is not None and 1 <= s.summarised_until <= n - 4
    art = sm.artifacts.get_artifact(s.summary_artifact_id)
    assert (art.artifact_type, art.name, art.session_id, art.metadata['method']) == (ArtifactType.CONTEXT, 'conversation_summary', sid, 'extractive')
    assert art.version > 1  # the running summary was rewritten as the conversation grew: one version each time
    versions = sm.artifacts.list_versions(s.summary_artifact_id)
    assert [v.version for v in versions] == list(range(1, art.version + 1))
    hist = sm.get_history(sid)
    assert len(hist) == n and contents(hist) == CONVERSATION  # summarising never removes turns
    orig = sm.expand_summary(s.summary_artifact_id)
    assert orig == hist[:s.summarised_until]  # exactly the turns it covers, identical, in order
    assert [q for f, l in art.metadata['covered_seqs'] for q in range(f, l + 1)] == [m.seq for m in orig if m.seq >= art.metadata['covered_from']] and art.metadata['last_seq'] == s.summarised_until
    assert art.metadata['previous'] == versions[-2].artifact_id  # each version extends the one before
    first = sm.expand_summary(versions[0].artifact_id)  # an older version expands to its own, shorter range
    assert first == hist[:versions[0].metadata['last_seq']] and len(first) < len(orig)
    text = sm.artifacts.get_artifact_content(s.summary_artifact_id)
    assert re.search(r'^- \[#\d+ (user|assistant)\] ', text, re.M)  # extractive lines cite their turn
    ctx = sm.get_context_summary(sid, max_tokens=300, query='email null rate')
    assert ctx.summary and ctx.summary_range == (1, s.summarised_until) and ctx.tokens_used <= 300
    assert sm.get_session(sid).unsummarised_tokens <= sm.policy.summarise_over_tokens

def test_a_summary_version_names_its_turns_as_seq_runs_and_stays_small(manager_storage):
    # 300 turns folded into one version, with turns 101-150 hidden by a restore: the record holds two runs, not 296 ids
    sm = SessionManager(manager_storage, policy=SessionPolicy(summarise_over_tokens=10**6, keep_recent=4))
    cm = ContextManager(sm, sm.artifacts)
    sid = sm.create_session(uid()).session_id
    say = lambda a, b: [sm.add_message(sid, 'user', f"turn {i}: load the orders table into the warehouse") for i in range(a, b)]
    say(1, 101); cm.create_checkpoint(sid, 'before'); say(101, 151); cm.restore_checkpoint(sid, 'before'); say(151, 301)
    aid = sm.summarise(sid)
    md = sm.artifacts.get_artifact(aid).metadata
    assert md['covered_seqs'] == [[1, 100], [151, 296]] and (md['covered_from'], md['last_seq']) == (1, 296)
    assert len(json.dumps(md)) < 400, md  # one id per turn made it ~9 KB
    assert [m.seq for m in sm.expand_summary(aid)] == list(range(1, 101)) + list(range(151, 297))

def test_context_ranks_only_the_unsummarised_tail_and_the_turns_the_summary_cites(manager_storage):
    n = len(CONVERSATION)
    sm = SessionManager(manager_storage, policy=SessionPolicy(recall_window=5))  # no summary: the newest 5 turns are all it ranks
    sid = sm.create_session(uid()).session_id
    for i, c in enumerate(CONVERSATION): sm.add_message(sid, 'user' if i % 2 == 0 else 'assistant', c)
    ctx = sm.get_context_summary(sid, max_tokens=4000, query='why is the email null rate so high?')
    assert seqs(ctx.messages) == list(range(n - 4, n + 1)) and ctx.omitted == n - 5  # turn 2 matches, but is outside the window
    sm = SessionManager(manager_storage, policy=SessionPolicy(summarise_over_tokens=150, keep_recent=4, recall_window=50))
    sid = sm.create_session(uid()).session_id
    for i, c in enumerate(CONVERSATION): sm.add_message(sid, 'user' if i % 2 == 0 else 'assistant', c)
    s = sm.get_session(sid)
    cited = {int(x) for x in re.findall(r'\[#(\d+)', sm.artifacts.get_artifact_content(s.summary_artifact_id))}
    assert 2 in cited and len(cited) < s.summarised_until  # the summary cites some of the turns it covers, not all
    ctx = sm.get_context_summary(sid, max_tokens=4000, query='orders table partition region')
    older = {t.message.seq for t in ctx.turns if t.message.seq <= s.summarised_until}
    assert older and older <= cited  # a summarised turn comes back only if the summary cites it
    assert ctx.omitted == n - len(ctx.turns) and {t.message.seq for t in ctx.turns} >= set(range(s.summarised_until + 1, n + 1))
    email = sm.get_context_summary(sid, max_tokens=4000, query='why is the email null rate so high?')
    assert [t.reason for t in email.turns if t.message.seq == 2] == ['relevant']  # cited, so recalled word for word

def test_llm_summary_path(manager_storage):
    llm = FakeListChatModel(responses=["Customers come from crm.db [#1]; email is 12% null [#2]; orders profiled per region."])
    sm = SessionManager(manager_storage, policy=SessionPolicy(summarise_over_tokens=100, keep_recent=2), llm=llm)
    sid = sm.create_session(uid()).session_id
    for i, c in enumerate(CONVERSATION[:8]): sm.add_message(sid, 'user' if i % 2 == 0 else 'assistant', c)
    s = sm.get_session(sid)
    assert s.summary_artifact_id is not None
    art = sm.artifacts.get_artifact(s.summary_artifact_id)
    assert art.metadata['method'] == 'llm'
    assert sm.artifacts.get_artifact_content(s.summary_artifact_id) == llm.responses[0]
    assert sm.expand_summary(s.summary_artifact_id) == sm.get_history(sid)[:s.summarised_until]
    assert sm.get_context_summary(sid, max_tokens=200).summary == llm.responses[0]

# ---------------------------------------------------------------- tiers

UPDATER = textwrap.dedent("""
    import sys
    from dataops_lab.config import load_settings
    from dataops_lab.store.base import Storage
    from dataops_lab.sessions import SessionManager
    sm = SessionManager(Storage(load_settings(sys.argv[1])))
    sid = sys.argv[2]
    for line in sys.stdin:
        cmd, arg = line.split()
        if cmd == 'update': sm.update_session(sid, {'global_context': {'step': int(arg)}})
        elif cmd == 'message': sm.add_message(sid, 'assistant', f'from the child {arg}')
        elif cmd == 'read': print(sm.get_session(sid).global_context.get('step'), flush=True); continue
        print('done', flush=True)
""")

def test_hot_tier_never_serves_stale_sessions(sm, raw, shared_ini):
    sid = sm.create_session(uid(), global_context={'step': 0}).session_id
    assert cached(raw, sid)['global_context'] == {'step': 0}  # active sessions live in the hot tier
    other = SessionManager(raw)
    other.update_session(sid, {'global_context': {'step': 1}})
    assert sm.get_session(sid).global_context == {'step': 1}
    child = Child(UPDATER, shared_ini, sid)
    try:
        for step in range(2, 6):  # another process updates; every read here right after sees it
            child.send(f"update {step}"); assert child.next_line() == 'done'
            assert sm.get_session(sid).global_context == {'step': step}
            assert cached(raw, sid)['global_context'] == {'step': step}
            sm.update_session(sid, {'global_context': {'step': step * 10}})  # and the other way round
            child.send("read -"); assert child.next_line() == str(step * 10)
        child.send("message 1"); assert child.next_line() == 'done'
        assert sm.get_session(sid).message_count == 1 and contents(sm.get_history(sid)) == ['from the child 1']
        child.proc.stdin.close(); child.finish()
    finally: child.close()
    assert cached(raw, sid)['_version'] == raw.table(SESSIONS_TABLE).get(sid)['_version']
    assert raw.cache.ttl(f"sessions/{sid}") <= sm.policy.hot_ttl

def test_expiry_archives_to_the_blob_store(fresh_storage, fresh_raw):
    sm, raw = SessionManager(fresh_storage), fresh_raw
    old = sm.create_session(uid())
    for i in range(5): sm.add_message(old.session_id, 'user' if i % 2 == 0 else 'assistant', f"old question {i} about inventory")
    hist = sm.get_history(old.session_id)
    t_old = sm.get_session(old.session_id).last_active
    wait_for(lambda: utcnow() > t_old, 5, 'the clock')
    new = sm.create_session(uid())
    sm.add_message(new.session_id, 'user', 'recent question')
    t_new = sm.get_session(new.session_id).last_active
    assert t_new > t_old
    rep = sm.cleanup_expired_sessions(now=t_new + dt.timedelta(hours=1))  # past idle_after, well before expire_after
    assert sorted(rep.idle) == sorted([old.session_id, new.session_id]) and rep.archived == []
    assert sm.get_session(old.session_id).status == SessionStatus.IDLE
    sm.add_message(new.session_id, 'user', 'back again')  # activity makes an idle session active again
    assert sm.get_session(new.session_id).status == SessionStatus.ACTIVE
    t_new = sm.get_session(new.session_id).last_active
    now = t_old + dt.timedelta(seconds=sm.policy.expire_after) + (t_new - t_old) / 2
    rep = sm.cleanup_expired_sessions(now=now)
    assert (rep.archived, rep.idle) == ([old.session_id], [new.session_id])  # the newer one is only idle
    key = f"archives/sessions/{old.session_id}.jsonl.zst"
    s = sm.get_session(old.session_id)
    assert (s.status, s.archive_key) == (SessionStatus.ARCHIVED, key)
    lines = zstandard.ZstdDecompressor().stream_reader(io.BytesIO(raw.blob.get(key))).read().decode().splitlines()
    assert [json.loads(l)['message_id'] for l in lines] == [m.message_id for m in hist]  # moved, not deleted
    assert {(it.get('sealed'), 'content' in it) for it in raw.table(MESSAGES_TABLE).query_all(old.session_id)} == {('archived', False)}  # out of the table; only seals are left
    assert sm.get_history(old.session_id) == hist  # and still readable
    assert seqs(sm.get_history(old.session_id, limit=2)) == [4, 5] and seqs(sm.get_history(old.session_id, after=1, before=4)) == [2, 3]
    assert sm.get_context_summary(old.session_id, max_tokens=200, query='inventory').omitted == 0
    assert SessionManager(raw).get_history(old.session_id) == hist
    with pytest.raises(InvalidInputError, match=f"session '{old.session_id}' is archived"): sm.add_message(old.session_id, 'user', 'late')
    assert sm.get_session(new.session_id).status == SessionStatus.IDLE and len(sm.get_history(new.session_id)) == 2
    sm.add_message(new.session_id, 'user', 'still going')
    assert sm.get_session(new.session_id).status == SessionStatus.ACTIVE
    assert sm.cleanup_expired_sessions(now=now).archived == []  # archiving twice does nothing
    assert sm.get_history(old.session_id) == hist

def test_purge_cascades_everywhere(fresh_storage, fresh_raw):
    raw = fresh_raw
    sm = SessionManager(fresh_storage, policy=SessionPolicy(summarise_over_tokens=60, keep_recent=2))
    cm = ContextManager(sm)
    live, archived, keep = (sm.create_session(uid()) for _ in range(3))
    arts = {}
    for s in (live, archived, keep):
        for i in range(8): sm.add_message(s.session_id, 'user', f"{s.session_id} turn {i} with some words about orders and customers")
        arts[s.session_id] = [sm.artifacts.store_artifact(f"profile of {s.session_id} " * 100, session_id=s.session_id, workflow_name='profile', name='p'),
                              sm.artifacts.store_artifact({'owner': s.session_id}, session_id=s.session_id, workflow_name='profile', name='q')]
        cm.dump_context(s.session_id)
        cm.create_checkpoint(s.session_id, 'cp1')
        assert sm.get_session(s.session_id).summary_artifact_id is not None
    t = max(sm.get_session(s.session_id).last_active for s in (live, archived, keep))
    wait_for(lambda: utcnow() > t, 5, 'the clock')
    for s in (live, keep): sm.add_message(s.session_id, 'user', 'still here')
    sm.cleanup_expired_sessions(now=t + dt.timedelta(seconds=sm.policy.expire_after, microseconds=1))
    assert sm.get_session(archived.session_id).status == SessionStatus.ARCHIVED
    assert sm.get_session(live.session_id).status != SessionStatus.ARCHIVED

    msgs, snaps = raw.table(MESSAGES_TABLE), raw.table(SNAPSHOTS_TABLE)
    def footprint(sid):
        "Everything stored for `sid`, looked up directly in the tables, blob store and cache"
        items = list(raw.table(ARTIFACT_VERSIONS_TABLE).query_all(sid, index='session_id-created_at'))  # every version, listed or not (superseded summaries are unlisted)
        log = msgs.query(sid, limit=100).items
        return {'session': raw.table(SESSIONS_TABLE).get(sid) is not None, 'messages': sum('sealed' not in m for m in log), 'seal': next((m['sealed'] for m in log if 'sealed' in m), None),
                'snapshots': len(snaps.query(sid, limit=100).items), 'artifacts': len(items),
                'artifact_blobs': sum(raw.blob.exists(i['blob_key']) for i in items if i['blob_key']),  # small content is inline: no blob
                'snapshot_blobs': len(list(raw.blob.iter_keys(f"checkpoints/{sid}/"))) + sum(raw.blob.exists(f"snapshots/{x['snapshot_id']}.json.zst") for x in snaps.query(sid, limit=100).items),
                'archive': raw.blob.exists(f"archives/sessions/{sid}.jsonl.zst"),
                'hot': raw.cache.get(f"sessions/{sid}") is not None}
    snap_keys = {s.session_id: [x['blob_key'] for x in snaps.query(s.session_id).items] for s in (live, archived)}
    art_keys = {i['blob_key'] for s in (live, archived) for i in raw.table(ARTIFACT_VERSIONS_TABLE).query_all(s.session_id, index='session_id-created_at') if i['blob_key']}
    def with_blob(sid): return sum(1 for i in raw.table(ARTIFACT_VERSIONS_TABLE).query_all(sid, index='session_id-created_at') if i['blob_key'])
    assert with_blob(live.session_id) >= 1  # the long profile; the small ones are inline
    for s in (live, archived): sm.get_session(s.session_id)  # make sure they are in the hot tier
    fp = {s.session_id: footprint(s.session_id) for s in (live, archived, keep)}
    assert fp[live.session_id] == {'session': True, 'messages': 9, 'seal': None, 'snapshots': 2, 'artifacts': fp[live.session_id]['artifacts'], 'artifact_blobs': with_blob(live.session_id),
                                   'snapshot_blobs': 2, 'archive': False, 'hot': True} and fp[live.session_id]['artifacts'] >= 3
    assert fp[archived.session_id]['messages'] == 0 and fp[archived.session_id]['seal'] == 'archived' and fp[archived.session_id]['archive'] and fp[archived.session_id]['hot']
    raw.cache.set(HotTier.seq_key(live.session_id), b'9')  # a seq hint an earlier release cached: the purge drops it too

    c1, c2 = sm.purge_session(live.session_id), sm.purge_session(archived.session_id)
    assert (c1['messages'], c1['snapshots'], c1['archive']) == (9, 2, 0) and c1['artifacts'] == fp[live.session_id]['artifacts']
    assert (c2['messages'], c2['snapshots'], c2['archive']) == (0, 2, 1)
    gone = {'session': False, 'messages': 0, 'seal': None, 'snapshots': 0, 'artifacts': 0, 'artifact_blobs': 0, 'snapshot_blobs': 0, 'archive': False, 'hot': False}
    assert footprint(live.session_id) == gone and footprint(archived.session_id) == gone
    assert raw.cache.get(HotTier.seq_key(live.session_id)) is None
    assert not any(raw.blob.exists(k) for ks in snap_keys.values() for k in ks)
    assert len(art_keys) >= 2 and not any(raw.blob.exists(k) for k in art_keys)  # the content of the long profiles too (the rest was inline)
    for s in (live, archived):
        for a in arts[s.session_id]:
            with pytest.raises(NotFoundError, match=a): sm.artifacts.get_artifact(a)
        with pytest.raises(NotFoundError, match=f"no session '{s.session_id}'"): sm.get_session(s.session_id)
        with pytest.raises(NotFoundError, match=f"no session '{s.session_id}'"): sm.get_history(s.session_id)
        with pytest.raises(NotFoundError, match=f"no session '{s.session_id}' to purge"): sm.purge_session(s.session_id)
    assert footprint(keep.session_id) == {**fp[keep.session_id], 'hot': footprint(keep.session_id)['hot']}  # the other session is untouched
    assert len(sm.get_history(keep.session_id)) == 9 and sm.artifacts.get_artifact_content(arts[keep.session_id][1]) == {'owner': keep.session_id}
    assert [c.label for c in cm.list_checkpoints(keep.session_id)] == ['cp1']

# ---------------------------------------------------------------- processes

APPENDER = textwrap.dedent("""
    import sys, json
    from dataops_lab.config import load_settings
    from dataops_lab.store.base import Storage
    from dataops_lab.sessions import SessionManager
    ini, sid, tag, n = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
    sm = SessionManager(Storage(load_settings(ini)))
    sm.get_session(sid); sm.get_history(sid, limit=1)  # connected and warm before the start signal
    print('ready', flush=True)
    assert sys.stdin.readline().strip() == 'go'
    for i in range(n):
        m = sm.add_message(sid, 'user', f'{tag}-{i}')
        print(json.dumps([m.message_id, m.seq, m.content]), flush=True)
""")

def test_two_processes_append_concurrently(sm, shared_ini):
    sid = sm.create_session(uid()).session_id
    sm.add_message(sid, 'system', 'start')
    n = 30
    kids = [Child(APPENDER, shared_ini, sid, tag, n) for tag in ('p1', 'p2')]
    try:
        for k in kids: assert k.next_line() == 'ready'
        for k in kids: k.send('go')  # both start together
        acks = {tag: [json.loads(l) for l in k.finish()[1:]] for tag, k in zip(('p1', 'p2'), kids)}
    finally:
        for k in kids: k.close()
    hist = sm.get_history(sid)
    assert len(hist) == 2 * n + 1
    assert seqs(hist) == list(range(1, 2 * n + 2))  # gap-free
    assert len({m.message_id for m in hist}) == len(hist)  # nothing duplicated
    assert sorted(contents(hist[1:])) == sorted(f"{t}-{i}" for t in ('p1', 'p2') for i in range(n))  # nothing lost
    by_id = {m.message_id: m for m in hist}
    for tag, got in acks.items():
        assert [c for _, _, c in got] == [f"{tag}-{i}" for i in range(n)]
        assert all(by_id[i].seq == s and by_id[i].content == c for i, s, c in got)  # what each was told is what is stored
        assert [s for _, s, _ in got] == sorted(s for _, s, _ in got)
    both = [s for got in acks.values() for _, s, _ in got]
    assert sorted(both) == list(range(2, 2 * n + 2))
    assert sm.get_session(sid).message_count == 2 * n + 1

LOADER = textwrap.dedent("""
    import sys, json, hashlib
    from dataops_lab.config import load_settings
    from dataops_lab.store.base import Storage
    from dataops_lab.sessions import SessionManager
    sm = SessionManager(Storage(load_settings(sys.argv[1])))
    sid, tag, i = sys.argv[2], sys.argv[3], 0
    sm.get_session(sid); sm.artifacts.list_artifacts(sid)  # connected before the start signal
    print('ready', flush=True)
    assert sys.stdin.readline().strip() == 'go'
    while True:
        m = sm.add_message(sid, 'user', f'{tag} load {i}')
        print(json.dumps(['m', m.message_id, m.seq, m.content]), flush=True)
        if i % 2 == 0:
            body = (f'{tag} part {i} ' * (40 + i)).encode() if i % 4 == 0 else hashlib.sha256(f'{tag}{i}'.encode()).digest() * 64
            aid = sm.artifacts.store_artifact(body, session_id=sid, workflow_name='load', name=f'part{i % 3}')
            print(json.dumps(['a', aid, hashlib.sha256(body).hexdigest()]), flush=True)
        i += 1
""")

def test_sigkill_during_write_load_loses_nothing_acknowledged(sm, raw, shared_ini):
    sid = sm.create_session(uid()).session_id
    msgs, arts = [], []
    kids = [Child(LOADER, shared_ini, sid, f"c{k}") for k in (1, 2)]  # started together: start-up is the slow part
    try:
        for child in kids: assert child.next_line() == 'ready'
    except BaseException:
        for child in kids: child.close()
        raise
    for kills, (target, child) in enumerate(zip((15, 25), kids), 1):  # two kills, at different points of the load
        try:
            child.send('go')
            while sum(l.startswith('["m"') for l in child.lines) < target: child.next_line()
            child.kill()
            assert child.proc.returncode == -9
        finally: child.close()
        acks = [json.loads(l) for l in child.lines[1:]]
        msgs += [a for a in acks if a[0] == 'm']
        arts += [a for a in acks if a[0] == 'a']
        fresh = SessionManager(raw)  # another manager: nothing from the dead process's memory
        hist = fresh.get_history(sid)
        by_id = {m.message_id: m for m in hist}
        for _, mid, seq, content in msgs:
            assert mid in by_id and (by_id[mid].seq, by_id[mid].content) == (seq, content)
        assert seqs(hist) == list(range(1, len(hist) + 1))  # gap-free: a kill leaves no hole ...
        assert len({m.message_id for m in hist}) == len(hist) == len(set(contents(hist)))  # ... and no duplicate
        assert len(hist) - len(msgs) <= kills  # at most the one message in flight at each kill is extra
        assert len(arts) >= len(msgs) // 2 - kills
        for _, aid, digest in arts:
            assert hashlib.sha256(fresh.artifacts.get_artifact_content(aid)).hexdigest() == digest
    nxt = sm.add_message(sid, 'user', 'after the kills')
    assert nxt.seq == len(hist) + 1 and seqs(sm.get_history(sid)) == list(range(1, nxt.seq + 1))

def test_redis_outage_mid_load(moto_server, tmp_path, caplog):
    "Redis stopped and restarted under load: no caller error, nothing lost, and the hot tier is used again afterwards"
    redis = RedisServer().start()  # our own server: the session's shared one is not disturbed
    try:
        settings = load_settings(write_ini(tmp_path, 'aws', redis_url=redis.url, moto_endpoint=moto_server.endpoint))
        st, raw = Storage(settings).ensure(), Storage(settings)
        sm = SessionManager(st, policy=SessionPolicy(hot_retry_after=0.2))
        user = uid()
        sid = sm.create_session(user).session_id
        acked, errors, stop = {'a': [], 'b': []}, [], threading.Event()
        def load(tag):
            i = 0
            while not stop.is_set():
                try:
                    acked[tag].append(sm.add_message(sid, 'user', f"{tag}-{i}"))
                    assert sm.get_session(sid).global_context.get(tag, -1) == i - 1
                    sm.get_history(sid, limit=2)
                    sm.update_session(sid, {'global_context': {tag: i}})
                except Exception as e:
                    errors.append(e); return
                i += 1
        def total(): return sum(map(len, acked.values()))
        caplog.set_level(logging.WARNING, logger='dataops_lab.sessions')
        threads = [threading.Thread(target=load, args=(t,)) for t in acked]
        for t in threads: t.start()
        try:
            wait_for(lambda: total() >= 10 or errors, 60, '10 messages before the outage')
            wait_for(lambda: errors or cached(raw, sid) is not None, 30, 'the session in the hot tier')  # writers drop it before each write
            redis.stop()
            n0 = total()
            wait_for(lambda: total() >= n0 + 20 or errors, 60, '20 messages during the outage')
            assert sm.get_session(sid).message_count >= n0 + 20  # callers keep working from the cold tier
            assert sm.get_context_summary(sid, max_tokens=200).tokens_used <= 200
            assert [x.session_id for x in sm.list_sessions(user)] == [sid]
            with pytest.raises(StorageError): raw.cache.get(f"sessions/{sid}")  # the outage is real
            redis.start()
            n1 = total()
            wait_for(lambda: total() >= n1 + 20 or errors, 60, '20 messages after the restart')
            wait_for(lambda: errors or cached(raw, sid) is not None, 30, 'the hot tier to be used again')  # re-warmed
        finally:
            stop.set()
            for t in threads: t.join(60)
        assert errors == []
        hist = sm.get_history(sid)
        everything = [m for ms in acked.values() for m in ms]
        assert seqs(hist) == list(range(1, len(everything) + 1))
        assert sorted(m.message_id for m in hist) == sorted(m.message_id for m in everything)
        assert {tag: [m.content for m in hist if m.content.startswith(tag)] for tag in acked} == {tag: [m.content for m in ms] for tag, ms in acked.items()}
        s = sm.get_session(sid)
        assert s.message_count == len(hist) and s.global_context == {tag: len(ms) - 1 for tag, ms in acked.items()}
        hot, cold = cached(raw, sid), raw.table(SESSIONS_TABLE).get(sid)
        assert hot['_version'] == cold['_version'] and hot['message_count'] == len(hist)  # current, not a pre-outage copy
        text = caplog.text
        assert 'unavailable, serving from the cold tier' in text and 'is back' in text
        st.close(); raw.close()
    finally:
        redis.stop()

def test_closed_session_stays_closed_under_concurrent_appends(sm):
    "close_session racing with add_message: once close returns, the session stays closed and later appends are refused"
    for _ in range(3):
        sid = sm.create_session(uid()).session_id
        acked, refused = [], []
        def writer():
            for i in range(400):
                try: acked.append(sm.add_message(sid, 'user', f"m{i}"))
                except InvalidInputError as e: refused.append(e); return
        t = threading.Thread(target=writer); t.start()
        wait_for(lambda: len(acked) >= 3 or not t.is_alive(), 60, 'a few messages')
        sm.close_session(sid)
        t.join(120)
        assert refused and f"session '{sid}' is closed" in str(refused[0])
        assert sm.get_session(sid).status == SessionStatus.CLOSED and sm.sessions.get(sid)['status'] == 'closed'
        assert seqs(sm.get_history(sid)) == list(range(1, len(acked) + 1))

# ---------------------------------------------------------------- bad input

CYCLIC = {}; CYCLIC['self'] = CYCLIC
DEEP = []
for _ in range(200): DEEP = [DEEP]

def test_bad_input_is_refused_clearly(manager_storage):
    sm = SessionManager(manager_storage, policy=SessionPolicy(max_message_chars=1000))
    user = uid()
    sid = sm.create_session(user).session_id
    sm.add_message(sid, 'user', 'hello')
    closed = sm.create_session(user).session_id; sm.close_session(closed)
    dbg = sm.artifacts.store_artifact('trace', session_id=sid, workflow_name='wf', artifact_type='debug', ttl=0.2)
    res = sm.artifacts.store_artifact('a result', session_id=sid, workflow_name='wf')
    before = (sm.get_history(sid), sm.get_session(sid))
    cases = [
        (NotFoundError, "no session 'sess_nope'", lambda: sm.get_session('sess_nope')),
        (NotFoundError, "no session 'sess_nope'", lambda: sm.add_message('sess_nope', 'user', 'x')),
        (NotFoundError, "no session 'sess_nope'", lambda: sm.update_session('sess_nope', {'metadata': {'a': 1}})),
        (NotFoundError, "no session 'sess_nope'", lambda: sm.get_history('sess_nope')),
        (NotFoundError, "no session 'sess_nope'", lambda: sm.get_context_summary('sess_nope')),
        (NotFoundError, "no session 'sess_nope'", lambda: sm.close_session('sess_nope')),
        (NotFoundError, "no session 'sess_nope' to purge", lambda: sm.purge_session('sess_nope')),
        (NotFoundError, "no artifact 'art_nope'", lambda: sm.expand_summary('art_nope')),
        (InvalidInputError, f"artifact '{res}' is not a conversation summary", lambda: sm.expand_summary(res)),
        (InvalidIdError, 'session_id must be a str, got int: 7', lambda: sm.get_session(7)),
        (InvalidIdError, "session_id ' ' is blank", lambda: sm.add_message(' ', 'user', 'x')),
        (InvalidIdError, "session_id 'a/../b' is not allowed", lambda: sm.get_session('a/../b')),
        (InvalidIdError, 'user_id is empty', lambda: sm.create_session('')),
        (InvalidIdError, 'user_id must be a str, got NoneType: None', lambda: sm.list_sessions(None)),
        (InvalidInputError, 'metadata must be a dict, got list', lambda: sm.create_session(uid(), metadata=['a'])),
        (InvalidInputError, 'global_context must be a dict, got str', lambda: sm.create_session(uid(), global_context='db')),
        (InvalidInputError, 'updates must be a dict, got list', lambda: sm.update_session(sid, [('status', 'closed')])),
        (InvalidInputError, r"cannot update session field\(s\) \['owner'\]", lambda: sm.update_session(sid, {'owner': 'x'})),
        (InvalidInputError, 'metadata must be a dict, got str', lambda: sm.update_session(sid, {'metadata': 'x'})),
        (InvalidInputError, 'global_context must be a dict, got list', lambda: sm.update_session(sid, {'global_context': [1]})),
        (InvalidInputError, "'bogus'", lambda: sm.update_session(sid, {'status': 'bogus'})),
        (InvalidInputError, "status 'archived' is set by cleanup_expired_sessions", lambda: sm.update_session(sid, {'status': 'archived'})),
        (InvalidInputError, r"global_context\['x'\] is a builtins\.object, which does not round-trip", lambda: sm.update_session(sid, {'global_context': {'x': object()}})),
        (InvalidInputError, "invalid message: role .*got 'robot'", lambda: sm.add_message(sid, 'robot', 'beep')),
        (InvalidInputError, 'message content must be a str, got dict', lambda: sm.add_message(sid, 'user', {'a': 1})),
        (InvalidInputError, 'message content must be a str, got NoneType', lambda: sm.add_message(sid, 'user')),
        (InvalidInputError, 'message of 1,001 characters is over the limit of 1,000', lambda: sm.add_message(sid, 'user', 'x' * 1001)),
        (InvalidInputError, 'message of 5,000 characters is over the limit', lambda: sm.add_message(sid, Message(role='user', content='y' * 5000))),
        (InvalidInputError, "artifact_ids must be a list of str, got str 'art_1'", lambda: sm.add_message(sid, 'user', 'x', artifact_ids='art_1')),
        (InvalidInputError, r"artifact_ids\[0\].*got 1", lambda: sm.add_message(sid, 'user', 'x', artifact_ids=[1])),
        (InvalidInputError, r"metadata.*got \[1\]", lambda: sm.add_message(sid, 'user', 'x', metadata=[1])),
        (InvalidInputError, f"session '{closed}' is closed", lambda: sm.add_message(closed, 'user', 'x')),
        (InvalidInputError, 'limit must be a positive int, got -1', lambda: sm.get_history(sid, limit=-1)),
        (InvalidInputError, "limit must be a positive int, got '2'", lambda: sm.get_history(sid, limit='2')),
        (InvalidInputError, "before must be a seq number or a datetime, got 'yesterday'", lambda: sm.get_history(sid, before='yesterday')),
        (InvalidInputError, 'after must be a seq number or a datetime, got 1.5', lambda: sm.get_history(sid, after=1.5)),
        (InvalidInputError, "max_tokens must be an int of at least 50, got '100'", lambda: sm.get_context_summary(sid, max_tokens='100')),
        (InvalidInputError, 'query must be a str, got int', lambda: sm.get_context_summary(sid, query=5)),
        (InvalidInputError, "status 'zzz' is not a session status", lambda: sm.list_sessions(user, status='zzz')),
        (InvalidInputError, 'limit must be a positive int, got 0', lambda: sm.list_sessions(user, limit=0)),
        (InvalidKeyError, "cursor 'zzz'", lambda: sm.list_sessions(user, cursor='zzz')),
        # one id rule (issue 11 item 12): what SessionManager accepts, every other layer accepts
        (InvalidIdError, "session_id 'team/b' is not allowed", lambda: sm.create_session(user, session_id='team/b')),
        (InvalidIdError, "session_id 'café' is not allowed", lambda: sm.create_session(user, session_id='café')),
        (InvalidIdError, r"session_id 'ssss.*\(600 characters\) is not allowed", lambda: sm.create_session(user, session_id='s' * 600)),
        (InvalidIdError, "user_id 'a b' is not allowed", lambda: sm.create_session('a b')),
        (InvalidIdError, "user_id 'x#y' is not allowed", lambda: sm.create_session('x#y')),
        (InvalidIdError, r"artifact_ids\[0\] 'a/b' is not allowed", lambda: sm.add_message(sid, 'user', 'x', artifact_ids=['a/b'])),
        # values that would not come back as given (item 14): refused by name, never stored as null or crashing
        (InvalidInputError, r"metadata\['x'\] is nan", lambda: sm.create_session(user, metadata={'x': float('nan')})),
        (InvalidInputError, r"global_context\['x'\] is inf", lambda: sm.create_session(user, global_context={'x': float('inf')})),
        (InvalidInputError, r"metadata\['x'\] is nan", lambda: sm.add_message(sid, 'user', 'x', metadata={'x': float('nan')})),
        (InvalidInputError, r"metadata\['x'\] is -inf", lambda: sm.update_session(sid, {'metadata': {'x': float('-inf')}})),
        (InvalidInputError, r"metadata\['self'\] contains itself", lambda: sm.create_session(user, metadata=CYCLIC)),
        (InvalidInputError, r"metadata\['self'\] contains itself", lambda: sm.add_message(sid, 'user', 'x', metadata=CYCLIC)),
        (InvalidInputError, 'nested more than 64 levels', lambda: sm.create_session(user, metadata={'d': DEEP})),
        (InvalidInputError, 'nested more than 64 levels', lambda: sm.update_session(sid, {'global_context': {'d': DEEP}})),
        (InvalidInputError, 'message content contains a lone surrogate', lambda: sm.add_message(sid, 'user', 'caf\udce9')),
        (InvalidInputError, r"metadata\['k'\] contains a lone surrogate", lambda: sm.create_session(user, metadata={'k': 'caf\udce9'})),
        (InvalidInputError, 'lone surrogate', lambda: sm.create_session(user, metadata={'caf\udce9': 1})),
        (InvalidInputError, r"metadata has the key 1 \(int\)", lambda: sm.create_session(user, metadata={1: 'a'})),
        (InvalidInputError, r"metadata has the key \(1, 2\) \(tuple\)", lambda: sm.update_session(sid, {'metadata': {(1, 2): 'a'}})),
        (InvalidInputError, r"extra\['score'\] is nan", lambda: sm.set_preferences(uid(), extra={'score': float('nan')})),
        (InvalidKeyError, 'cursor must be a str returned by a previous Page, got int: 123', lambda: sm.list_sessions(user, cursor=123)),
        (InvalidInputError, r"unknown preference\(s\) \['colour'\]", lambda: sm.set_preferences(uid(), colour='blue')),
    ]
    failures = []
    for exc, msg, call in cases:
        try: call()
        except Exception as e:
            if not (type(e) is exc and re.search(msg, str(e))): failures.append(f"{msg}: got {type(e).__name__}: {e}")
        else: failures.append(f"{msg}: no error")
    assert failures == []
    wait_for(lambda: _expired(sm, dbg), 10, 'the debug artifact to expire')
    with pytest.raises(ExpiredError, match=f"artifact '{dbg}'"): sm.expand_summary(dbg)  # expired: a specific error, not 'unknown'
    assert (sm.get_history(sid), sm.get_session(sid).global_context, sm.get_session(sid).status) == (before[0], before[1].global_context, before[1].status)

def _expired(sm, aid):
    try: sm.artifacts.get_artifact(aid); return False
    except ExpiredError: return True

# ---------------------------------------------------------------- hardening: archive races, stale hot copies, counters, keys

ARCHIVE_WRITER = textwrap.dedent("""
    import sys, json
    from dataops_lab.core import InvalidInputError
    from dataops_lab.config import load_settings
    from dataops_lab.store.base import Storage
    from dataops_lab.sessions import SessionManager
    ini, tag, sids = sys.argv[1], sys.argv[2], sys.argv[3].split(',')
    sm = SessionManager(Storage(load_settings(ini)))
    for s in sids: sm.get_session(s)
    print('ready', flush=True)
    assert sys.stdin.readline().strip() == 'go'
    live, i = list(sids), 0
    while live and i < 20000:  # bounded: stops once every session refused a message
        sid = live[i % len(live)]
        try:
            m = sm.add_message(sid, 'user', f'{tag}-{i}')
            print(json.dumps(['ok', sid, m.message_id, m.seq, m.content]), flush=True)
        except InvalidInputError as e:
            print(json.dumps(['refused', sid, f'{tag}-{i}', str(e)]), flush=True)
            live.remove(sid)
        i += 1
    print(json.dumps(['done', i]), flush=True)
""")

def test_archiving_never_loses_an_acknowledged_message(fresh_storage, fresh_raw):
    "Issue 11 item 1: cleanup archives 40 sessions while two processes keep writing to them; every acknowledged message reads back"
    sm = SessionManager(fresh_storage)
    sids = [sm.create_session(uid()).session_id for _ in range(40)]
    for s in sids: sm.add_message(s, 'system', 'start')
    ini = fresh_storage.settings.source
    kids = [Child(ARCHIVE_WRITER, ini, tag, ','.join(sids)) for tag in ('w1', 'w2')]
    try:
        for k in kids: assert k.next_line() == 'ready'
        for k in kids: k.send('go')
        oks = lambda k: sum(l.startswith('["ok"') for l in k.lines)
        while min(map(oks, kids)) < 60: [k.next_line() for k in kids]  # both are writing at full speed
        rep = sm.cleanup_expired_sessions(now=utcnow() + dt.timedelta(days=30))  # archives every session while they write
        out = [[json.loads(l) for l in k.finish()[1:]] for k in kids]
    finally:
        for k in kids: k.close()
    assert sorted(rep.archived) == sorted(sids)
    acked = [r for rs in out for r in rs if r[0] == 'ok']
    refused = [r for rs in out for r in rs if r[0] == 'refused']
    assert all('is archived' in r[3] or 'is being archived' in r[3] for r in refused) and len(refused) == 80  # each writer, each session, once
    fresh = SessionManager(fresh_raw)
    lost = []
    for s in sids:
        hist = fresh.get_history(s)
        assert seqs(hist) == list(range(1, len(hist) + 1))
        got = {m.message_id: (m.seq, m.content) for m in hist}
        mine = [r for r in acked if r[1] == s]
        lost += [r for r in mine if got.get(r[2]) != (r[3], r[4])]
        assert len(hist) == 1 + len(mine)  # nothing refused got in either
        assert fresh.get_session(s).message_count == len(hist)
    assert lost == [] and len(acked) >= 120

STALE_READER = textwrap.dedent("""
    import sys, json, time
    from dataops_lab.core import InvalidInputError
    from dataops_lab.config import load_settings
    from dataops_lab.store.base import Storage
    from dataops_lab.sessions import SessionManager, SessionPolicy
    sm = SessionManager(Storage(load_settings(sys.argv[1])), policy=SessionPolicy(hot_max_stale=float(sys.argv[3])))
    sid = sys.argv[2]
    print(json.dumps(sm.get_session(sid).status.value), flush=True)
    for cmd in sys.stdin:
        cmd = cmd.strip()
        if cmd == 'read': print(json.dumps([time.monotonic(), sm.get_session(sid).status.value, sm.hot.failures]), flush=True)
        elif cmd == 'add':
            try: print(json.dumps(['accepted', sm.add_message(sid, 'user', 'after the close').seq]), flush=True)
            except InvalidInputError as e: print(json.dumps(['refused', str(e)]), flush=True)
        elif cmd == 'close':
            t0 = time.monotonic(); sm.close_session(sid)
            print(json.dumps(['closed', time.monotonic() - t0, sm.hot.failures]), flush=True)
""")

def test_paused_redis_never_leaves_another_process_on_a_stale_session(moto_server, tmp_path):
    """Issue 11 item 2: A (say a CLI run) closes a session while Redis does not answer it (paused, not stopped); B, which saw
    no outage, stops serving the session as open within hot_max_stale, and never accepts a message into it"""
    redis = RedisServer().start()  # our own server: pausing it must not disturb the session's shared one
    try:
        ini = write_ini(tmp_path, 'aws', redis_url=redis.url + '?socket_timeout=0.5', moto_endpoint=moto_server.endpoint)
        st = Storage(load_settings(ini)).ensure()
        sm = SessionManager(st)
        sid = sm.create_session(uid()).session_id
        sm.add_message(sid, 'user', 'hello')
        max_stale = 1.0
        b = Child(STALE_READER, ini, sid, max_stale)
        a = None
        try:
            assert json.loads(b.next_line()) == 'active'
            b.send('read'); assert json.loads(b.next_line())[1] == 'active'
            assert json.loads(st.cache.get(f"sessions/{sid}"))['status'] == 'active'  # B serves it from the hot tier
            redis.pause()
            try:
                a = Child(STALE_READER, ini, sid, max_stale)  # its first word to Redis goes unanswered, like every later one
                assert json.loads(a.next_line(timeout=120)) == 'active'  # from the cold tier
                a.send('close')
                verdict, took, a_failures = json.loads(a.next_line(timeout=60))
                assert verdict == 'closed' and a_failures >= 1  # A could not reach the cache; its cold write went through
            finally: redis.resume()
            assert sm.sessions.get(sid)['status'] == 'closed'
            assert json.loads(st.cache.get(f"sessions/{sid}"))['status'] == 'active'  # the cache still holds the open session
            b.send('add'); got = json.loads(b.next_line())
            assert got[0] == 'refused' and f"session '{sid}' is closed" in got[1]  # the seal, not B's cached copy, decides
            t_resumed, reads = time.monotonic(), []
            while len(reads) < 400 and not (reads and reads[-1][1] == 'closed'):  # bounded: 400 reads
                b.send('read'); reads.append(json.loads(b.next_line()))
            assert reads[-1][1] == 'closed', f"B still serves the session as open after {len(reads)} reads over {reads[-1][0] - t_resumed:.1f}s"
            stale_for = reads[-1][0] - t_resumed
            assert stale_for <= max_stale + 5, stale_for  # hot_max_stale, plus scheduling slack on a loaded machine
            for _ in range(20):
                b.send('read'); r = json.loads(b.next_line())
                assert r[1] == 'closed' and r[2] == 0  # and from then on never the old copy; B never saw an outage
            a.proc.stdin.close(); b.proc.stdin.close(); a.finish(); b.finish()
        finally:
            b.close()
            if a is not None: a.close()
        assert sm.get_history(sid)[-1].content == 'hello' and sm.get_session(sid).message_count == 1
        st.close()
    finally:
        redis.stop()

KILL_ZYGOTE = textwrap.dedent("""
    import sys, os, json, signal
    from dataops_lab.config import load_settings
    from dataops_lab.store.base import Storage
    from dataops_lab.sessions import SessionManager
    ini, sid = sys.argv[1], sys.argv[2]
    signal.signal(signal.SIGCHLD, signal.SIG_IGN)  # killed writers are reaped at once
    # the zygote and its writers share one stdout pipe: each line is one write(2), so lines never interleave
    # (print writes the text and its newline separately when Python runs unbuffered)
    say = lambda obj: os.write(1, (json.dumps(obj) + '\\n').encode())
    say('ready')
    for line in sys.stdin:  # each line: the tag of a new writer, forked from this already-imported process
        tag = line.strip()
        pid = os.fork()
        if pid == 0:
            sm, i = SessionManager(Storage(load_settings(ini))), 0
            while True:
                m = sm.add_message(sid, 'user', f'{tag} says {i} ' + 'word ' * (i % 7))
                say([tag, m.message_id, m.seq]); i += 1
        say(['spawned', tag, pid])
""")

def test_counters_heal_after_sigkills(sm, raw, shared_ini):
    "Issue 11 item 4: 16 writers, two at a time, each SIGKILLed after a random number of messages; message_count and the un-summarised token count come out exact"
    sid = sm.create_session(uid()).session_id
    rnd, zygote, live, kills = random.Random(11), Child(KILL_ZYGOTE, shared_ini, sid), [], 0
    def acks(tag): return sum(l.startswith(f'["{tag}"') for l in zygote.lines)
    try:
        assert zygote.next_line() == '"ready"'
        for k in range(16):
            zygote.send(f"w{k}")
            while not any(l.startswith(f'["spawned", "w{k}"') for l in zygote.lines): zygote.next_line()
            pid = json.loads(next(l for l in zygote.lines if l.startswith(f'["spawned", "w{k}"')))[2]
            live.append((f"w{k}", pid, rnd.randint(2, 10)))
            if len(live) == 2 or k == 15:
                for tag, pid, target in list(live) if k == 15 else live[:1]:
                    for _ in range(5000):  # bounded: a writer that stopped on its own must not leave this waiting on the other's lines
                        if acks(tag) >= target: break
                        zygote.next_line()
                    else: pytest.fail(f"writer {tag} stopped after {acks(tag)} messages: {zygote.proc.stderr.read() if zygote.proc.poll() is not None else ''}")
                    os.kill(pid, signal.SIGKILL); kills += 1
                    live.remove((tag, pid, target))
    finally: zygote.close()
    assert kills == 16
    fresh = SessionManager(raw)  # another process's view: nothing from the killed writers' memory
    hist = fresh.get_history(sid)  # a history read counts what the killed writers did not
    assert seqs(hist) == list(range(1, len(hist) + 1))
    s = fresh.get_session(sid)
    assert (s.message_count, s.unsummarised_tokens) == (len(hist), sum(estimate_tokens(m.content) for m in hist if m.seq > s.summarised_until))
    assert raw.table(SESSIONS_TABLE).get(sid)['message_count'] == len(hist)
    nxt = sm.add_message(sid, 'user', 'after the kills')
    assert sm.get_session(sid).message_count == nxt.seq == len(hist) + 1

def test_cleanup_counts_what_a_killed_writer_left(fresh_storage, fresh_raw):
    "Issue 11 item 4: a message written by a process that died before counting it is counted by the next cleanup, no read needed"
    sm = SessionManager(fresh_storage)
    sid = sm.create_session(uid()).session_id
    sm.add_message(sid, 'user', 'first')
    orphan = Message(session_id=sid, seq=2, role='assistant', content='written, then the writer was killed')
    fresh_raw.table(MESSAGES_TABLE).put(orphan.to_item(), if_absent=True)  # exactly what such a writer leaves
    assert fresh_raw.table(SESSIONS_TABLE).get(sid)['message_count'] == 1
    rep = sm.cleanup_expired_sessions()
    it = fresh_raw.table(SESSIONS_TABLE).get(sid)
    assert (it['message_count'], it['unsummarised_tokens']) == (2, estimate_tokens('first') + estimate_tokens(orphan.content))
    assert rep.recounted == [sid] and sm.cleanup_expired_sessions().recounted == []
    assert SessionManager(fresh_raw).get_session(sid).message_count == 2

def test_hot_keys_cannot_collide(sm, raw):
    "Issue 11 item 11: a session id can never address another session's hot-tier entries"
    victim = sm.create_session(uid()).session_id
    sm.add_message(victim, 'user', 'my seq hint is in the hot tier')
    with pytest.raises(InvalidIdError, match=f"session_id '{victim}/seq' is not allowed"): sm.create_session(uid(), session_id=f"{victim}/seq")
    assert sm.add_message(victim, 'user', 'still mine').seq == 2 and sm.get_session(victim).message_count == 2
    # keys are collision-free by construction, even for an id made before the id rule (kept readable for a purge)
    legacy = f"{victim}/seq"
    hot = HotTier(raw.cache, SessionPolicy(), raw.table(HOT_STATE_TABLE))
    assert len({HotTier.session_key(victim), HotTier.seq_key(victim), HotTier.session_key(legacy), HotTier.seq_key(legacy)}) == 4
    assert hot.put_session({'session_id': legacy, 'user_id': 'u', 'status': 'active', '_version': 1}, hot.token())
    assert hot.get_session(victim)['message_count'] == 2 and hot.get_session(legacy)['session_id'] == legacy
    assert sm.add_message(victim, 'user', 'and again').seq == 3
    raw.cache.delete(HotTier.session_key(legacy))

def test_add_message_takes_two_redis_round_trips(redis_server, tmp_path):
    "Issue 13 item 3: on a Redis hot tier an append reads the session and its seq hint in one round trip, and writes the hint, the cached session and the event in one more — counted on the client's own connections"
    import redis as redis_py
    sent = []
    class Counting(redis_py.Connection):  # a real connection that counts what it sends: one send is one round trip (a pipeline sends once)
        def send_packed_command(self, command, check_health=True):
            sent.append(command)
            return super().send_packed_command(command, check_health)
    (tmp_path / 'settings.ini').write_text(f"[storage]\nhot = {redis_server.url}?prefix=rt{uid('')}:\ncold = sqlite:///{tmp_path}/meta.db\nblob = file://{tmp_path}/blobs\n")
    st = Storage(load_settings(tmp_path / 'settings.ini')).ensure()
    try:
        sm = SessionManager(st)
        sid = sm.create_session(uid()).session_id
        for i in range(3): sm.add_message(sid, 'user', f"warm-up {i}")
        pool = st.cache.client.connection_pool
        pool.disconnect(); pool.connection_class = Counting  # every later connection of this client counts
        sub = st.cache.subscribe(f"sessions/{sid}")
        sm.add_message(sid, 'user', 'warm-up 3')  # the new connection's hand-shake (HELLO, CLIENT SETINFO) is not an append's
        sent.clear()
        msgs = [sm.add_message(sid, 'user' if i % 2 == 0 else 'assistant', f"turn {i}") for i in range(10)]
        trips = len(sent)
        assert [m.seq for m in msgs] == list(range(5, 15)) and trips <= 2 * 10, f"{trips} round trips for 10 appends"
        got = [json.loads(sub.get(timeout=5)[1]) for _ in range(11)][1:]  # every append still announced, in order
        assert [g['seq'] for g in got] == list(range(5, 15))
        fresh = SessionManager(st)  # the cached copy is current: another manager reads the new counts from the hot tier
        assert fresh.get_session(sid).message_count == 14 and seqs(fresh.get_history(sid)) == list(range(1, 15))
        assert st.cache.get(f"session-seq/{sid}") is None  # the next seq is taken from message_count: no separate hint
        sub.close()
    finally: st.close()

def test_append_statements_embedded(tmp_path):
    "Issue 13: on the embedded default an append runs 7 SQL statements — the cached session read, the row, the count, and one hot-tier transaction (CAS + event) — with no separate seq hint; the next seq comes from message_count, and a wrong guess still lands gap-free"
    st = Storage(load_settings(write_ini(tmp_path, 'embedded'))).ensure()
    try:
        sm = SessionManager(st)
        sid = sm.create_session(uid()).session_id
        for i in range(3): sm.add_message(sid, 'user', f"warm-up {i}")
        sent = []
        conns = {id(c): c for c in (sm.messages._conn(), sm.sessions._conn(), st.cache._conn(), sm.hot.state._conn())}.values()
        for c in conns: c.set_trace_callback(sent.append)
        try: msgs = [sm.add_message(sid, 'assistant', f"turn {i}", metadata={'i': i}) for i in range(5)]
        finally:
            for c in conns: c.set_trace_callback(None)
        assert seqs(msgs) == list(range(4, 9)) and len(sent) == 7 * 5, sent[:8]
        assert st.cache.get(HotTier.seq_key(sid)) is None
        assert [m.to_item() for m in sm.get_history(sid)[3:]] == [m.to_item() for m in msgs]  # stored as the returned messages say
        # a stale count (a writer that died before counting) makes the guess wrong: the row's conditional write decides
        sm.messages.put(Message(session_id=sid, seq=9, role='user', content='orphan').to_item())
        assert sm.add_message(sid, 'user', 'after the orphan').seq == 10
        assert seqs(sm.get_history(sid)) == list(range(1, 11)) and sm.get_session(sid).message_count == 10
    finally: st.close()
