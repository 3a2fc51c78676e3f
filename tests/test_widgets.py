"""The JupyterLab views of `dataops_lab.widgets`, driven headlessly: their handlers are called and their buttons
clicked as a person would, and what they show is read back from their state and their HTML."""
import base64, os, re, threading, time
import pandas as pd
import pytest
from conftest import write_ini
from dataops_lab.config import load_settings
from dataops_lab.core import NotFoundError, InvalidInputError
from dataops_lab.sessions import SessionManager
from dataops_lab.context import ContextManager
from dataops_lab.chain import WorkflowChain
from dataops_lab.orchestrator import Orchestrator
from dataops_lab.workflows import WorkflowRegistry, workflow
from dataops_lab.widgets import SessionInspector, ArtifactBrowser, CheckpointTimeline
from dataops_lab.progress import RunProgress, ChainRunner


def wait_for(cond, timeout=20.0, every=0.02):
    "Poll `cond()` until it is truthy or `timeout` passes; its last value"
    deadline = time.monotonic() + timeout
    while not (ok := cond()) and time.monotonic() < deadline: time.sleep(every)
    return ok


@pytest.fixture
def sm(tmp_path):
    m = SessionManager(load_settings(write_ini(tmp_path, 'embedded')))
    yield m
    m.close()


@pytest.fixture
def sid(sm):
    s = sm.create_session('analyst', global_context={'database': 'shop.db'})
    sm.add_message(s.session_id, 'user', 'Profile the orders table')
    return s.session_id


def test_inspector_updates_live_from_another_thread(sm, sid):
    insp = SessionInspector(sid, sm, poll=0.05)
    try:
        assert insp.polling
        before = insp.refreshes
        writer = threading.Thread(target=lambda: [sm.add_message(sid, 'assistant', f'step {i} <done>') for i in range(3)])
        writer.start(); writer.join(10)
        assert wait_for(lambda: [m['content'] for m in insp.data['messages']][-1:] == ['step 2 <done>'])
        assert insp.refreshes > before  # the thread did it: nobody called refresh() here
        assert [m['seq'] for m in insp.data['messages']] == [1, 2, 3, 4]
        assert 'step 2 &lt;done&gt;' in insp.conversation.value and '<done>' not in insp.conversation.value
        # state and artifacts written elsewhere show up too
        sm.update_session(sid, {'global_context': {'table': 'orders'}})
        aid = sm.artifacts.store_artifact({'rows': 3}, session_id=sid, workflow_name='schema_analyzer', name='orders_profile')
        assert wait_for(lambda: insp.data['state'].get('table') == 'orders' and [a['artifact_id'] for a in insp.data['artifacts']] == [aid])
    finally: insp.close()
    assert not insp.polling  # close() joined the thread: nothing refreshes any more


def test_inspector_refuses_unknown_session_and_bad_poll(sm, sid):
    with pytest.raises(NotFoundError) as e: SessionInspector('sess_missing', sm, poll=0)
    assert "sess_missing" in str(e.value) and 'list_sessions(user_id)' in str(e.value)
    with pytest.raises(InvalidInputError, match='poll must be'): SessionInspector(sid, sm, poll=-1)
    insp = SessionInspector(sid, sm, poll=0)
    assert not insp.polling and insp.refresh() is False
    with pytest.raises(InvalidInputError, match='poll=0'): insp.start()
    insp.close()


def test_a_view_that_fails_to_build_closes_the_storage_it_opened(tmp_path, sm, sid):
    "Each view opens its own storage from a settings path; a constructor that fails leaves no database connection open"
    from dataops_lab.store.sqlite import _WalKeeper
    ini = tmp_path/'settings.ini'
    open_here = lambda: sorted(p for p in _WalKeeper._all if p.startswith(str(tmp_path)))
    assert open_here()  # the fixture's manager holds the folder's databases: the probe sees an open backend
    with pytest.raises(InvalidInputError, match="history must be a positive int, got -3"): SessionInspector(sid, sm, history=-3)
    with pytest.raises(InvalidInputError, match="limit must be a positive int, got '10'"): ArtifactBrowser(sm, limit='10')
    sm.close()
    assert open_here() == []
    for build in (lambda: SessionInspector('sess_missing', ini, poll=0), lambda: ArtifactBrowser(ini, session_id='sess_missing'),
                  lambda: CheckpointTimeline('sess_missing', ini)):
        with pytest.raises(NotFoundError, match='sess_missing') as err: build()
        # closed before the error reached us, though its traceback (as Jupyter keeps the last one) still holds the half-built view
        assert err.tb is not None and open_here() == []
    insp = SessionInspector(sid, ini, poll=0)  # the same path builds fine, and holds the files until closed
    assert open_here() and insp.data['messages'][0]['content'] == 'Profile the orders table'
    insp.close()
    assert open_here() == []


def test_inspector_follows_a_chain_run_in_the_background(sm, sid):
    reg = WorkflowRegistry()
    gate = threading.Event()
    @workflow(description='Waits for the test, then counts')
    def slow_count():
        gate.wait(20); return {'n': 3}
    reg.register(slow_count)
    runner = ChainRunner(WorkflowChain('slow', reg, sm).add_step('slow_count'), sid)
    insp = SessionInspector(sid, sm, poll=0.05)
    try:
        runner.run_button.click()
        assert wait_for(lambda: runner.rows['slow_count']['status'] == 'running')
        assert runner.run_button.disabled and runner.status == 'running'
        with pytest.raises(InvalidInputError, match='running already'): runner.start()
        gate.set()
        runner.thread.join(30)
        assert runner.status == 'completed'
        assert wait_for(lambda: insp.data['messages'][-1]['content'].startswith('chain slow completed'))
        assert runner.rows['slow_count']['artifact_id'] in [a['artifact_id'] for a in insp.data['artifacts']]
    finally:
        gate.set()
        if runner.thread is not None: runner.thread.join(30)
        insp.close(); runner.close()


def test_browser_previews_dataframe_image_and_filters(sm, sid):
    df = pd.DataFrame({'customer': ['Ava', '<img src=x onerror=alert(1)>'], 'revenue': [310.25, 80.5]})
    arts = sm.artifacts
    raw = arts.store_artifact(df, session_id=sid, workflow_name='extract', name='revenue')
    png = base64.b64decode('iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mP8z8BQDwAEhQGAhKmMIQAAAABJRU5ErkJggg==')  # 1x1 pixel
    img = arts.store_artifact(png, session_id=sid, workflow_name='report', name='chart', parents=[raw])
    dbg = arts.store_artifact({'error': 'boom'}, session_id=sid, workflow_name='report', name='report_error', artifact_type='debug')
    other = sm.create_session('someone').session_id
    arts.store_artifact('elsewhere', session_id=other, workflow_name='extract', name='revenue')

    b = ArtifactBrowser(sm, session_id=sid)
    assert {r['artifact_id'] for r in b.rows} == {raw, img, dbg}
    assert b.selected == {} and sm.artifacts.get_artifact(raw).access_count == 0  # listing reads no content
    b.picker.value = raw  # what selecting it in the list does
    assert b.selected['preview'] == 'dataframe' and b.selected['artifact_id'] == raw
    assert '<table' in b.preview.value and '310.25' in b.preview.value
    assert '&lt;img src=x' in b.preview.value and '<img src=x' not in b.preview.value
    assert b.selected['lineage'] == [(raw, img)] and '<svg' in b.lineage.value
    assert b.show(img)['preview'] == 'image' and f'data:image/png;base64,{base64.b64encode(png).decode()}' in b.preview.value
    # filters: type, workflow, then every session
    b.type_box.value = 'debug'
    assert [r['artifact_id'] for r in b.rows] == [dbg]
    b.type_box.value = ''; b.workflow_box.value = 'extract'
    assert [r['artifact_id'] for r in b.rows] == [raw]
    b.session_box.value = ''
    assert {r['session_id'] for r in b.rows} == {sid, other}
    # versions of a name
    v2 = arts.store_artifact(df.head(1), session_id=sid, workflow_name='extract', name='revenue')
    assert b.show(v2)['versions'] == [raw, v2]
    with pytest.raises(NotFoundError, match='sess_missing'): ArtifactBrowser(sm, session_id='sess_missing')
    b.close()


def test_timeline_restore_needs_confirmation_and_fork(sm, sid):
    ctx = ContextManager(sm)
    ctx.create_checkpoint(sid, 'clean')
    sm.update_session(sid, {'global_context': {'database': 'other.db', 'extra': 1}})
    sm.add_message(sid, 'user', 'a turn after the checkpoint')
    tl = CheckpointTimeline(sid, sm)
    assert [r['label'] for r in tl.rows] == ['clean'] and tl.selected == {'a': 'cp_clean', 'b': 'now'}
    d = tl.compare()
    assert d['state']['changed'] == {'database': ('shop.db', 'other.db')} and d['state']['added'] == {'extra': 1}
    assert d['messages_added'] == [2]

    tl.restore_button.click()
    assert tl.status['pending'] == 'restore' and tl.confirm_box.layout.display == 'flex'
    assert 'turns after #1' in tl.question.value
    tl.cancel_button.click()
    assert tl.status['pending'] is None and tl.confirm_box.layout.display == 'none'
    assert sm.get_session(sid).global_context == {'database': 'other.db', 'extra': 1}
    assert len(sm.get_history(sid)) == 2
    assert tl.confirm() is None  # nothing armed: nothing happens

    tl.restore_button.click(); tl.confirm_button.click()
    assert tl.status['done'] == [('restore', 'cp_clean')]
    assert sm.get_session(sid).global_context == {'database': 'shop.db'}
    assert [m.content for m in sm.get_history(sid)] == ['Profile the orders table']
    assert tl.compare()['state'] == {'added': {}, 'removed': {}, 'changed': {}}

    tl.fork_button.click(); tl.confirm_button.click()
    fork = tl.status['forked_session']
    assert fork and fork != sid
    assert sm.get_session(fork).metadata['forked_from'] == {'session_id': sid, 'checkpoint': 'clean'}
    assert [m.content for m in sm.get_history(fork)] == ['Profile the orders table']
    tl.close()


def test_timeline_snapshot_restores_state_and_cannot_fork(sm, sid):
    ctx = ContextManager(sm)
    snap = ctx.dump_context(sid, label='snap1')
    sm.update_session(sid, {'global_context': {'database': 'changed.db'}})
    tl = CheckpointTimeline(sid, sm)
    assert tl.a.value == snap and tl.fork_button.disabled and not tl.restore_button.disabled
    with pytest.raises(InvalidInputError, match='only a checkpoint can be forked'): tl.ask('fork')
    assert 'conversation is not changed' in tl.ask('restore')
    tl.confirm()
    assert sm.get_session(sid).global_context['database'] == 'shop.db'
    tl.close()


def _failing_chain(sm, limits):
    reg = WorkflowRegistry()
    @workflow(description='Count the orders')
    def count_orders(): return {'n': 3}
    @workflow(description='Flag when over the limit')
    def flag_orders(n: int): return {'flagged': n > limits['max']}
    @workflow(description='Report')
    def report(): return {'ok': True}
    for f in (count_orders, flag_orders, report): reg.register(f)
    return WorkflowChain('flagging', reg, sm).add_step('count_orders').add_step('flag_orders').add_step('report')


def test_chain_runner_statuses_with_a_failing_step_then_resume(sm, sid):
    limits = {}
    r = ChainRunner(_failing_chain(sm, limits), sid)
    assert {s: x['status'] for s, x in r.rows.items()} == dict.fromkeys(['count_orders', 'flag_orders', 'report'], 'pending')
    r.run_button.click()
    r.thread.join(60)
    assert not r.thread.is_alive()
    assert r.status == 'failed' and r.result.failed_step == 'flag_orders'
    assert {s: x['status'] for s, x in r.rows.items()} == {'count_orders': 'done', 'flag_orders': 'failed', 'report': 'skipped'}
    assert r.rows['count_orders']['artifact_id'] == r.result.artifacts['count_orders']
    assert r.rows['count_orders']['seconds'] is not None
    assert "KeyError" in r.error and 'KeyError' in r.header.value
    assert not r.resume_button.disabled and not r.run_button.disabled
    limits['max'] = 1
    r.resume_button.click(); r.thread.join(60)
    assert r.status == 'completed' and r.result.final == {'ok': True}
    assert {s: x['status'] for s, x in r.rows.items()} == dict.fromkeys(['count_orders', 'flag_orders', 'report'], 'done')
    assert r.resume_button.disabled
    with pytest.raises(InvalidInputError, match='no failed run'): r.run(resume=True)
    r.close()


def test_run_progress_as_callback_for_an_orchestrator(sm, sid):
    reg = WorkflowRegistry()
    @workflow(description='Count the orders in the shop database', example_queries=['how many orders are there', 'count the orders'])
    def order_count(): return {'answer': 'there are 3 orders'}
    reg.register(order_count)
    orch = Orchestrator(reg, sm)
    p = RunProgress()
    for ev in orch.stream(sid, 'how many orders are there?'): p(ev)  # used as a plain callback
    assert p.status == 'completed' and p.result.kind == 'result' and p.result.reply == 'there are 3 orders'
    assert p.title == 'order_count' and p.rows and all(x['status'] == 'done' for x in p.rows.values())
    assert p.result.artifact_ids == [a for a in p.artifacts if a]


def test_inspector_sees_orchestrator_state_and_active_workflows(sm, sid):
    insp = SessionInspector(sid, sm, poll=0)
    try:
        ContextManager(sm).set_orchestrator_state(sid, {'pending': 'sql_generator'})
        assert insp.refresh() and insp.data['orchestrator_state'] == {'pending': 'sql_generator'}
        assert 'sql_generator' in insp.state.value
        sm.update_session(sid, {'active_workflows': ['schema_analyzer']})
        assert insp.refresh() and insp.data['active_workflows'] == ['schema_analyzer']
        assert not insp.refresh()  # nothing changed since
    finally: insp.close()


def test_timeline_snapshot_of_recent_turns_diffs_cleanly_against_now(sm, sid):
    for i in range(4): sm.add_message(sid, 'user', f'turn {i}')
    snap = ContextManager(sm).dump_context(sid, recent=2)  # the payload copies 2 of the 5 turns
    tl = CheckpointTimeline(sid, sm)
    try:
        d = tl.compare(snap, 'now')
        assert (d['messages_added'], d['messages_removed']) == ([], [])
        sm.add_message(sid, 'user', 'one more')
        assert tl.compare(snap, 'now')['messages_added'] == [6]
    finally: tl.close()


def test_browser_does_not_load_an_artifact_too_large_to_preview(sm, sid):
    import os
    from dataops_lab.display import PREVIEW_MAX_BYTES
    big = sm.artifacts.store_artifact(os.urandom(PREVIEW_MAX_BYTES + 1), sid, 'dump', name='raw_dump')
    b = ArtifactBrowser(sm, session_id=sid)
    try:
        shown = b.show(big)
        assert shown['preview'] == 'too large' and 'save_artifact_content' in b.preview.value
    finally: b.close()


MARKDOWN_REPLY = """The query:

```sql
SELECT customer, total
FROM orders
```

- finding one
- finding two

[click me](javascript:window.__xss=1) <img src=x onerror="window.__xss=2"> ![pixel](http://tracker.invalid/p.png)
<a href="javascript:window.__xss=3">raw link</a> <svg onload="window.__xss=4"></svg>

```html
<script>window.__xss=5</script>
```"""


def test_inspector_renders_markdown_replies_and_counts_what_a_restore_left(sm, sid):
    "Assistant replies as Markdown; after a restore the count, the workflows and the conversation are those a person can see"
    ctx = ContextManager(sm)
    sm.add_message(sid, 'assistant', MARKDOWN_REPLY, workflow='sql_generator')
    ctx.create_checkpoint(sid, 'answered')
    sm.add_message(sid, 'user', 'now drop the table')
    sm.add_message(sid, 'assistant', 'dropped', workflow='query_optimizer')
    insp = SessionInspector(sid, sm, poll=0)
    try:
        assert insp.data['workflows'] == ['sql_generator', 'query_optimizer'] and insp.data['visible_messages'] == 4
        assert insp.data['title'] == 'Profile the orders table'
        ctx.restore_checkpoint(sid, 'answered')
        assert insp.refresh()
        assert (insp.data['visible_messages'], len(insp.data['messages']), insp.data['workflows']) == (2, 2, ['sql_generator'])
        assert '>2 (2 hidden by a restore)<' in insp.header.value and 'sql_generator' in insp.header.value and 'query_optimizer' not in insp.header.value
        assert '2 messages' in insp.footer.value
        html = insp.conversation.value
        assert '<li>finding one</li>' in html and '<strong>' not in html.split('The query')[0]
        assert re.search(r'<span style="[^"]*">SELECT</span>', html)  # the fence, highlighted
        assert 'drop the table' not in html
    finally: insp.close()


def test_inspector_markdown_stays_inert_in_a_browser(sm, sid, tmp_path):
    "The inspector's conversation HTML, loaded into Chromium as the page itself: no payload runs, no javascript: link, nothing fetched"
    from playwright.sync_api import sync_playwright
    sm.add_message(sid, 'assistant', MARKDOWN_REPLY, workflow='sql_generator')
    insp = SessionInspector(sid, sm, poll=0)
    html = insp.conversation.value
    insp.close()
    if not os.path.exists('/usr/bin/chromium'): pytest.fail("/usr/bin/chromium is missing: apt-get install chromium", pytrace=False)
    outside = []
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path='/usr/bin/chromium', args=['--headless=new', '--no-sandbox', '--disable-gpu', '--disable-dev-shm-usage'])
        try:
            page = browser.new_page()
            page.route('**/*', lambda r: (outside.append(r.request.url), r.abort()))
            page.set_content(f'<html><body>{html}</body></html>', wait_until='load')
            assert page.locator('li').filter(has_text='finding one').count() == 1
            assert page.locator('pre.code').first.inner_text().startswith('SELECT customer, total')
            hrefs = page.eval_on_selector_all('a', 'as => as.map(a => a.getAttribute("href"))')
            assert hrefs == ['http://tracker.invalid/p.png'], hrefs  # the image, as a link to click, not loaded
            assert page.eval_on_selector_all('img, script, svg, iframe', 'es => es.length') == 0
            page.get_by_text('click me').click()
            assert page.evaluate('window.__xss') is None
            assert page.get_by_text('<script>window.__xss=5</script>').count() == 1  # the html fence shows its code as text
        finally: browser.close()
    assert outside == [], outside


def test_timeline_diff_on_show_follows_a_restore(sm, sid):
    "A diff on show is recomputed after a restore: 'now' is the restored session, not what it was when the diff was drawn"
    ctx = ContextManager(sm)
    ctx.create_checkpoint(sid, 'clean')
    sm.update_session(sid, {'global_context': {'database': 'other.db'}})
    sm.add_message(sid, 'user', 'after the checkpoint')
    tl = CheckpointTimeline(sid, sm)
    try:
        before = tl.compare()
        assert before['messages_added'] == [2] and 'other.db' in tl.diff_view.value
        tl.ask('restore'); tl.confirm()
        assert (tl.diff['messages_added'], tl.diff['state']) == ([], {'added': {}, 'removed': {}, 'changed': {}})
        assert 'other.db' not in tl.diff_view.value and 'no differences' in tl.diff_view.value
        sm.add_message(sid, 'user', 'a new turn')
        tl.refresh()
        assert tl.diff['messages_added'] == [3]  # and on any refresh
    finally: tl.close()
