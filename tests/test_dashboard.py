"""The review dashboard end to end: seeded sessions, artifacts, a checkpoint and a real batch on embedded storage, served on
a free port and driven by headless Chromium (Playwright) — no CDN request may leave the machine. The same dashboard displayed
in a notebook in JupyterLab, also driven by Chromium. Plus the CLI entry point under Ctrl-C and a port that is taken."""
import json, os, re, secrets, signal, socket, subprocess, sys, time, urllib.request
from contextlib import contextmanager
from pathlib import Path
import pandas as pd, pytest
from conftest import write_ini
from servers import free_port, wait_for

from dataops_lab.config import load_settings
from dataops_lab.sessions import SessionManager
from dataops_lab.context import ContextManager
from dataops_lab.nbparams import write_notebook
from dataops_lab.batch import run_batch
from dataops_lab.dashboard import serve_dashboard, PortInUseError

CHROMIUM = '/usr/bin/chromium'
SHOTS = Path(__file__).resolve().parent.parent/'test-artifacts'


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch):
    for k in [k for k in os.environ if k.startswith('DATAOPS_')]: monkeypatch.delenv(k)


@pytest.fixture(scope='module')
def seeded(tmp_path_factory):
    "Embedded storage with two users' sessions (conversation, state), JSON -> DataFrame lineage, a checkpoint and a real 2-run batch"
    tmp = tmp_path_factory.mktemp('dash')
    ini = write_ini(tmp, 'embedded')
    ini.write_text(ini.read_text() + "[dashboard]\npage_size = 10\nrefresh_seconds = 1\n[batch]\noutput_dir = runs\n")
    s = load_settings(ini)
    with SessionManager(s) as sm:
        cm = ContextManager(sm)
        ana = sm.create_session('ana', metadata={'project': 'sales'}, global_context={'database': 'shop_orders.db'})
        sm.add_message(ana.session_id, 'user', 'profile the orders table please')
        sm.add_message(ana.session_id, 'assistant', 'The orders table has 1204 rows and 7 columns', workflow='profiling')
        sm.add_message(ana.session_id, 'user', '<img src=x onerror="window.__xss=1"> is this escaped?')  # stored text must stay text
        sm.add_message(ana.session_id, 'assistant', MARKDOWN_REPLY, workflow='sql_generator')  # Markdown is rendered, its payloads stay text
        prof = sm.artifacts.store_artifact({'rows': 1204, 'columns': 7, 'table': 'orders'}, session_id=ana.session_id, workflow_name='profiling', name='orders_profile')
        top = sm.artifacts.store_artifact(pd.DataFrame({'customer': ['cust_alpha', 'cust_beta'], 'total': [310.5, 122.0]}), session_id=ana.session_id,
                                          workflow_name='sql', name='top_customers', parents=[prof], created_by='run_query')
        query = sm.artifacts.store_artifact({'sql': 'SELECT customer, total\nFROM orders\nORDER BY total DESC', 'dialect': 'sqlite'}, session_id=ana.session_id,
                                            workflow_name='sql_generator', name='top_query')
        chain, parent = [], None  # a chain of steps with long names: its lineage spans five columns
        for step in ('schema_analyzer', 'sql_generator', 'both_queries', 'query_optimizer', 'final_report'):
            parent = sm.artifacts.store_artifact({'step': step}, session_id=ana.session_id, workflow_name='profile_query_optimize',
                                                 name=f'profile_query_optimize.{step}', created_by=step, parents=[parent] if parent else [])
            chain.append(parent)
        cm.create_checkpoint(ana.session_id, 'after_profile')
        sm.add_message(ana.session_id, 'user', 'now drop the orders table')  # undone by the restore below: hidden, not counted
        sm.add_message(ana.session_id, 'assistant', 'dropped', workflow='query_optimizer')
        cm.restore_checkpoint(ana.session_id, 'after_profile')
        others = [sm.create_session('ben').session_id for _ in range(3)]
        sm.add_message(others[0], 'user', 'hello from ben')
        for i in range(1, 13): sm.add_message(others[1], 'user', f'ben turn {i}')  # longer than a page (10)
    nb = write_notebook(tmp/'square.ipynb', "n: int = 1  # the number to square", "assert n != 3, 'three is refused'\nprint(n*n)")
    res = run_batch(nb, {'n': [2, 3]}, settings=ini, progress=False, scheduler='synchronous')
    assert res.counts == {'succeeded': 1, 'failed': 1}, res.counts
    again = run_batch(nb, {'n': [2, 3]}, settings=ini, progress=False, scheduler='synchronous')  # a resume: the succeeded run is skipped, the failed one runs again
    assert (again.batch_id, again.counts) == (res.batch_id, {'skipped': 1, 'failed': 1}), again.counts
    return dict(ini=ini, settings=s, ana=ana.session_id, ben=others, prof=prof, top=top, query=query, chain=chain, batch=res.batch_id)


# an assistant reply in Markdown carrying the usual stored-XSS payloads: a javascript: link, raw HTML, an image that would be
# fetched from outside, a script in a code fence (each would set window.__xss if it ran)
MARKDOWN_REPLY = """Here is the **query**:

```sql
SELECT customer, total
FROM orders
```

- finding one: `total` has no nulls
- finding two

[click me](javascript:window.__xss=2) <img src=x onerror="window.__xss=3"> ![pixel](http://tracker.invalid/p.png)
<a href="javascript:window.__xss=5">raw link</a>

```html
<script>window.__xss=4</script>
```"""


def _browser(p):
    if not Path(CHROMIUM).exists():
        pytest.fail(f"{CHROMIUM} is missing: the dashboard browser test needs Debian's chromium (apt-get install chromium)", pytrace=False)
    return p.chromium.launch(executable_path=CHROMIUM, args=['--headless=new', '--no-sandbox', '--disable-gpu', '--disable-dev-shm-usage'])


@contextmanager
def _local_page(outside):
    "A page of a headless Chromium that lets only local requests through (others are refused and recorded in `outside`)"
    from playwright.sync_api import sync_playwright
    with sync_playwright() as p:
        browser = _browser(p)
        try:
            page = browser.new_page(viewport={'width': 1400, 'height': 1000})
            _local_only(page, outside)
            yield page
        finally: browser.close()


def tab(page, name):
    "The Bokeh tab header called `name`"
    return page.locator('.bk-tab').filter(has_text=re.compile(f'^{name}$'))


def _local_only(page, outside):
    "Let data:, blob: and loopback requests through; record and refuse any other"
    def route(r):
        host = r.request.url.split('/')[2] if '://' in r.request.url else ''
        if r.request.url.startswith(('data:', 'blob:')) or host.split(':')[0] in ('127.0.0.1', 'localhost'): return r.continue_()
        outside.append(r.request.url); r.abort()
    page.route('**/*', route)


def _shot(page, request):
    SHOTS.mkdir(exist_ok=True)
    shot = SHOTS/f"{request.node.name}.png"
    page.screenshot(path=str(shot), full_page=True)
    print(f"screenshot: {shot}")


def test_dashboard_in_a_browser(seeded, request):
    from playwright.sync_api import expect
    srv = serve_dashboard(seeded['settings'], port=0)
    outside = []
    try:
        with _local_page(outside) as page:
            errors = []
            page.on('pageerror', lambda e: errors.append(str(e)))
            try:
                page.goto(srv.url, timeout=30_000)
                table = page.locator('.sessions-table .tabulator')
                # the sessions table lists every seeded session, newest first: 4 in one page of 10
                for sid in [seeded['ana'], *seeded['ben']]: expect(table.get_by_text(sid)).to_be_visible(timeout=30_000)
                n = len(seeded['ben']) + 1 + 3  # Ana's, Ben's and the batch runs' sessions (two runs; the resume ran the failed one again)
                expect(page.get_by_text(f'{n} matching sessions')).to_be_visible()
                # each session has a title and the workflows its visible turns used; the count leaves out the 2 turns a restore hid
                ana_row = table.locator('.tabulator-row').filter(has_text=seeded['ana'])
                cell = lambda row, field: row.locator(f'.tabulator-cell[tabulator-field="{field}"]')
                expect(cell(ana_row, 'title')).to_have_text('profile the orders table please')
                expect(cell(ana_row, 'workflows')).to_have_text('profiling, sql_generator')
                expect(cell(ana_row, 'messages')).to_have_text('4')
                ben_row = table.locator('.tabulator-row').filter(has_text=seeded['ben'][1])
                expect(cell(ben_row, 'title')).to_have_text('ben turn 1')
                # filter by user, then by status (no session is closed: the page says so), then clear both
                user = page.get_by_placeholder('any user')
                user.fill('ben'); user.press('Enter')
                expect(page.get_by_text('3 matching sessions')).to_be_visible(timeout=10_000)
                expect(table.get_by_text(seeded['ana'])).to_have_count(0)
                user.fill(''); user.blur()
                page.locator('select').first.select_option('closed')
                expect(page.get_by_text('0 matching sessions')).to_be_visible(timeout=10_000)
                expect(page.get_by_text("No session matches status 'closed'")).to_be_visible()
                page.locator('select').first.select_option('any')
                expect(page.get_by_text(f'{n} matching sessions')).to_be_visible(timeout=10_000)
                expect(page.get_by_text('No session matches')).to_have_count(0)
                # open Ana's session: conversation (the Markdown reply rendered, its payloads inert) and state
                table.get_by_text(seeded['ana']).click()
                expect(page.get_by_text('The orders table has 1204 rows and 7 columns')).to_be_visible(timeout=10_000)
                expect(page.get_by_text('profile the orders table please').last).to_be_visible()
                expect(page.get_by_text('<img src=x onerror="window.__xss=1"> is this escaped?')).to_be_visible()
                expect(page.get_by_text('4 (2 hidden by a restore)')).to_be_visible()
                conv = page.locator('.conversation')
                expect(conv.locator('li').filter(has_text='finding one')).to_be_visible()  # a Markdown list, not '- finding one'
                expect(conv.locator('strong').filter(has_text='query')).to_be_visible()
                expect(conv.locator('pre.code').first).to_contain_text('FROM orders')  # the sql fence, highlighted
                expect(conv.locator('pre.code span').filter(has_text='SELECT').first).to_be_visible()
                expect(conv.get_by_text('<script>window.__xss=4</script>')).to_be_visible()  # code shows as code
                expect(page.get_by_text('now drop the orders table')).to_have_count(0)  # hidden by the restore
                links = conv.locator('a')
                assert [links.nth(i).get_attribute('href') for i in range(links.count())] == ['http://tracker.invalid/p.png']  # the image as a link
                assert page.locator('a[href^="javascript"], img[src="x"], script:has-text("__xss")').count() == 0
                conv.get_by_text('click me').click()  # text, not a link: nothing runs
                assert page.evaluate('window.__xss') is None, "a stored message ran as markup in the page"
                tab(page, 'State').click()
                expect(page.get_by_text('shop_orders.db')).to_be_visible(timeout=10_000)
                # artifacts: open the DataFrame, see its rows, its version and its lineage back to the JSON profile
                tab(page, 'Artifacts').click()
                arts = page.locator('.artifacts-table .tabulator')
                arts.get_by_text('top_customers', exact=True).click()
                expect(page.get_by_text('cust_alpha')).to_be_visible(timeout=10_000)
                expect(page.get_by_text('2 rows × 2 columns')).to_be_visible()
                lineage = page.locator('svg.lineage')
                expect(lineage).to_be_visible()
                expect(lineage.locator('g.node')).to_have_count(2)
                expect(lineage.get_by_text('orders_profile v1')).to_be_visible()
                # the JSON profile previews as a tree; a stored query as highlighted SQL, not as a JSON string with literal \n
                arts.get_by_text('orders_profile', exact=True).click()
                expect(page.locator('.preview.json').get_by_text('orders', exact=False).first).to_be_visible(timeout=10_000)
                arts.get_by_text('top_query', exact=True).click()
                sql = page.locator('.preview pre.code')
                expect(sql).to_contain_text('ORDER BY total DESC', timeout=10_000)
                assert '\\n' not in page.locator('.artifact-preview').inner_text()
                # a five-step lineage with long names fits the page, every name whole
                arts.get_by_text('profile_query_optimize.query_optimizer', exact=True).click()
                expect(lineage.locator('g.node')).to_have_count(5, timeout=10_000)
                for step in ('schema_analyzer', 'sql_generator', 'both_queries', 'query_optimizer', 'final_report'):
                    expect(lineage.locator('g.node').filter(has_text=f'profile_query_optimize.{step} v1')).to_have_count(1)
                box = lineage.bounding_box()
                assert box['x'] >= 0 and box['x'] + box['width'] <= 1400, box
                assert page.evaluate('document.documentElement.scrollWidth') <= 1400  # nothing pushes the page wider than the window
                tab(page, 'Checkpoints').click()
                expect(page.get_by_text('after_profile', exact=True)).to_be_visible(timeout=10_000)
                # live refresh: a session created now shows up without reloading (refresh_seconds = 1)
                with SessionManager(seeded['settings']) as sm: new = sm.create_session('cy').session_id
                expect(table.get_by_text(new)).to_be_visible(timeout=20_000)
                # a conversation longer than a page: the newest 10 turns, then the older ones on request
                table.get_by_text(seeded['ben'][1]).click()
                tab(page, 'Conversation').click()
                expect(page.get_by_text('ben turn 12', exact=True)).to_be_visible(timeout=10_000)
                expect(page.get_by_text('ben turn 2', exact=True)).to_have_count(0)
                page.get_by_role('button', name='Show older messages').click()
                expect(page.get_by_text('ben turn 1', exact=True)).to_be_visible(timeout=10_000)
                expect(page.get_by_role('button', name='Show older messages')).to_have_count(0)
                # batches: the real batch with one succeeded and one failed run shows as partly failed, never succeeded; charts drawn
                tab(page, 'Batches').click()
                btable = page.locator('.batches-table .tabulator')
                expect(btable.get_by_text(seeded['batch'])).to_be_visible(timeout=10_000)
                brow = btable.locator('.tabulator-row').filter(has_text=seeded['batch'])
                expect(cell(brow, 'status')).to_have_text('partly failed')
                expect(cell(brow, 'skipped')).to_have_text('1')  # the resume skipped the run that had succeeded
                expect(cell(brow, 'duration')).to_contain_text('(2 invocations)')  # both invocations' time, not only the resume's
                expect(page.locator('canvas').first).to_be_attached(timeout=10_000)  # the status and duration charts (drawn on canvas)
                btable.get_by_text(seeded['batch']).click()
                expect(page.get_by_text('three is refused')).to_be_visible(timeout=10_000)
                runs = page.locator('.runs-table .tabulator')
                expect(runs.locator('.tabulator-row')).to_have_count(2)
                expect(runs.locator('.tabulator-cell[tabulator-field="status"]')).to_have_text(['succeeded', 'failed'])
                expect(page.get_by_text('None', exact=True)).to_have_count(0)  # no literal None where a value is missing
                for field, side in (('parameters', 'left'), ('run', 'left'), ('attempts', 'right')):  # text left, numbers right
                    # (expect retries: the live refresh can redraw the table between finding a cell and reading its style)
                    expect(runs.locator(f'.tabulator-cell[tabulator-field="{field}"]').first).to_have_css('text-align', side)
                assert outside == [], f"requests left the machine: {outside}"
                assert not errors, f"JavaScript errors: {errors}"
            except BaseException:
                _shot(page, request)
                raise
    finally: srv.stop()
    assert not srv.thread.is_alive()  # the server's thread ended
    with pytest.raises(OSError): socket.create_connection(('127.0.0.1', srv.port), timeout=2).close()  # and its port no longer answers


def _jupyterlab(root:Path):
    "JupyterLab on a free loopback port serving `root` (its app exposed to the page for driving); (process, url, token)"
    port, token = free_port(), secrets.token_hex(16)
    env = {**os.environ, 'JUPYTER_CONFIG_DIR': str(root/'.jupyter'), 'JUPYTER_RUNTIME_DIR': str(root/'.jupyter/runtime')}
    log = open(root/'jupyterlab.log', 'w')
    proc = subprocess.Popen([sys.executable, '-m', 'jupyterlab', '--no-browser', '--allow-root', '--ip=127.0.0.1', f'--port={port}',
                             f'--IdentityProvider.token={token}', '--LabApp.expose_app_in_browser=True', f'--ServerApp.root_dir={root}'],
                            cwd=root, env=env, stdout=log, stderr=subprocess.STDOUT)
    def up():
        if proc.poll() is not None: raise RuntimeError(f"jupyter lab exited with {proc.returncode}: {(root/'jupyterlab.log').read_text()[-2000:]}")
        try: return urllib.request.urlopen(f'http://127.0.0.1:{port}/api/status?token={token}', timeout=2).status == 200
        except OSError: return False
    try: wait_for(up, 120, 'jupyter lab')
    except BaseException: proc.kill(); proc.wait(); raise
    return proc, f'http://127.0.0.1:{port}', token


def test_dashboard_in_jupyterlab(seeded, tmp_path, request):
    "Dashboard(...) as a cell's value in JupyterLab: the live app with no pn.extension() first, every file from the Jupyter server, a small saved notebook"
    import nbformat
    from playwright.sync_api import expect
    nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell(f"from dataops_lab.dashboard import Dashboard\ndash = Dashboard({str(seeded['ini'])!r})\ndash")],
                                  metadata={'kernelspec': {'name': 'python3', 'display_name': 'Python 3', 'language': 'python'}})
    nbformat.write(nb, tmp_path/'review.ipynb')
    lab, url, token = _jupyterlab(tmp_path)
    outside = []
    try:
        with _local_page(outside) as page:
            try:
                page.goto(f'{url}/lab/tree/review.ipynb?token={token}', timeout=60_000)
                kernel = 'window.jupyterapp.shell.currentWidget.sessionContext.session.kernel'
                page.wait_for_function(f"window.jupyterapp && window.jupyterapp.shell.currentWidget && window.jupyterapp.shell.currentWidget.sessionContext "
                                       f"&& window.jupyterapp.shell.currentWidget.sessionContext.session && {kernel} && {kernel}.status == 'idle'", timeout=120_000)
                page.evaluate("window.jupyterapp.commands.execute('notebook:run-all-cells')")
                out = page.locator('.jp-OutputArea-output')
                table = out.locator('.sessions-table .tabulator')
                expect(table.get_by_text(seeded['ana'])).to_be_visible(timeout=120_000)  # the app itself, not '<Dashboard at 0x…>'
                expect(out.get_by_text('requires the panel extension')).to_have_count(0)
                table.get_by_text(seeded['ana']).click()  # live both ways: the click runs in the kernel, the conversation comes back
                expect(out.get_by_text('The orders table has 1204 rows and 7 columns')).to_be_visible(timeout=60_000)
                expect(out.locator('.conversation li').filter(has_text='finding one')).to_be_visible()
                assert page.evaluate('window.__xss') is None
                page.evaluate("window.jupyterapp.commands.execute('docmanager:save')")
                page.wait_for_function("!window.jupyterapp.shell.currentWidget.context.model.dirty", timeout=30_000)
                assert outside == [], f"requests left the machine: {outside}"
            except BaseException:
                _shot(page, request)
                raise
    finally:
        lab.terminate()
        try: lab.wait(30)
        except subprocess.TimeoutExpired: lab.kill(); lab.wait()
    saved = nbformat.read(tmp_path/'review.ipynb', 4)
    kinds = {k for o in saved.cells[0].outputs for k in o.get('data', {})}
    assert 'application/vnd.holoviews_exec.v0+json' in kinds, kinds  # the live view was stored
    size = (tmp_path/'review.ipynb').stat().st_size
    assert size < 300_000, f"the saved notebook is {size:,} bytes: the dashboard's files were written into it"


def test_port_in_use_and_cli(seeded):
    with socket.socket() as s:
        s.bind(('127.0.0.1', 0)); s.listen(1)
        taken = s.getsockname()[1]
        with pytest.raises(PortInUseError, match=f"127.0.0.1:{taken}: the port is already in use") as e: serve_dashboard(seeded['settings'], port=taken)
        assert '--port' in str(e.value) and '[dashboard] port' in str(e.value)
    # the CLI serves until Ctrl-C, printing its URL, and exits 0
    code = "import sys; from dataops_lab.dashboard import dashboard_cli; sys.exit(dashboard_cli(sys.argv[1], port=0))"
    proc = subprocess.Popen([sys.executable, '-c', code, str(seeded['ini'])], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        line = proc.stdout.readline()
        assert line.startswith('dataops-lab dashboard at http://127.0.0.1:'), (line, proc.stderr.read() if proc.poll() is not None else '')
        url = line.split(' at ')[1].split()[0]
        assert b'static/extensions/panel' in urllib.request.urlopen(url, timeout=30).read()
        proc.send_signal(signal.SIGINT)
        assert proc.wait(30) == 0
        assert 'stopping' in proc.stdout.read()
    finally:
        if proc.poll() is None: proc.kill(); proc.wait()


def test_dashboard_reads_the_aws_tier(request, tmp_path):
    "The same views on Redis + DynamoDB + S3 (redis-server and moto over HTTP): listing, a session, an artifact with lineage, batches"
    from dataops_lab.store.base import Storage
    from dataops_lab.dashboard import Dashboard
    s = load_settings(write_ini(tmp_path, 'aws', request))
    Storage(s).ensure().close()  # provisions every registered table, the batch tables included
    with SessionManager(s) as sm:
        sess = sm.create_session('dora', global_context={'database': 'warehouse'})
        sm.add_message(sess.session_id, 'user', 'count the orders on dynamodb')
        a = sm.artifacts.store_artifact({'orders': 42}, session_id=sess.session_id, workflow_name='sql', name='order_count')
        b = sm.artifacts.store_artifact('42 orders', session_id=sess.session_id, workflow_name='report', name='summary', parents=[a])
    d = Dashboard(s)
    try:
        assert list(d.table.value.session) == [sess.session_id]
        d.open_session(sess.session_id)
        assert any('count the orders on dynamodb' in m.object for m in d.conversation.objects)
        assert 'warehouse' in d.state.object
        assert list(d.art_table.value.name) == ['summary', 'order_count']
        d.open_artifact(b)
        assert '42 orders' in d.preview.objects[1].object and 'order_count v1' in d.lineage.object
        assert d.show_batches() == [] and 'No batches recorded yet' in d.charts.objects[0].object
    finally: d.close()


def test_operations_tab_in_a_browser(tmp_path):
    "Orchestrator runs (one failing), a two-step chain run twice and a batch on the embedded default; the Operations tab shows their figures"
    from playwright.sync_api import expect
    from dataops_lab.workflows import WorkflowRegistry, workflow
    from dataops_lab.orchestrator import Orchestrator
    from dataops_lab.chain import WorkflowChain
    ini = write_ini(tmp_path, 'embedded')
    s = load_settings(ini)
    @workflow(example_queries=['count the rows of a table'])
    def count_rows(table: str = 'orders'):
        "Count the rows of a table"
        return {'summary': f'{table}: 42 rows'}
    @workflow(example_queries=['explode the warehouse'])
    def explode():
        "Always fails"
        raise RuntimeError('boom')
    reg = WorkflowRegistry(count_rows, explode)
    with SessionManager(s) as sm:
        sid = sm.create_session('ops').session_id
        orch = Orchestrator(reg, sm, llm=False)
        assert [orch.process(sid, q).kind for q in ('count the rows of a table', 'count the rows of a table', 'explode the warehouse')] == ['result', 'result', 'error']
        chain = WorkflowChain('pair', registry=reg, session_manager=sm).add_step('count_rows', name='first_step').add_step('count_rows', name='second_step')
        for _ in range(2): assert chain.execute(sid, {}).status == 'completed'
    nb = write_notebook(tmp_path/'square.ipynb', "n: int = 1  # the number to square", "print(n*n)")
    assert run_batch(nb, {'n': [2]}, settings=ini, progress=False, scheduler='synchronous').ok
    srv = serve_dashboard(s, port=0)
    outside = []
    try:
        with _local_page(outside) as page:
            page.goto(srv.url, timeout=30_000)
            tab(page, 'Operations').click()
            wf = page.locator('.ops-workflows .tabulator')
            row = lambda table, text: table.locator('.tabulator-row').filter(has_text=text)
            cell = lambda r, field: r.locator(f'.tabulator-cell[tabulator-field="{field}"]')
            expect(row(wf, 'count_rows')).to_have_count(1, timeout=30_000)
            expect(cell(row(wf, 'count_rows'), 'invocations')).to_have_text('2')
            expect(cell(row(wf, 'explode'), 'failed')).to_have_text('1')
            expect(cell(row(wf, 'explode'), 'success_rate')).to_have_text('0.0')
            steps = page.locator('.ops-steps .tabulator')
            for step in ('first_step', 'second_step'): expect(cell(row(steps, step), 'invocations')).to_have_text('2')
            expect(cell(row(page.locator('.ops-batches .tabulator'), 'succeeded'), 'batches')).to_have_text('1')
            expect(page.get_by_text('7 recorded runs')).to_be_visible()  # 3 orchestrator runs + 2 x 2 chain steps
            # over time: three charts drawn on canvas, fed per workflow with the runs recorded above (read back from BokehJS in the page)
            charts = page.locator('.ops-over-time-charts canvas')
            expect(charts.first).to_be_attached(timeout=30_000)
            drawn = page.evaluate("""() => {
                const out = {titles: []};
                for (const doc of window.Bokeh.documents)
                    for (const m of doc.all_models) {
                        if (m.name && m.name.startsWith('ops-series-')) out[m.name] = {runs: Array.from(m.data.invocations).reduce((a, b) => a + b, 0),
                                                                                        rates: Array.from(m.data.success_rate).filter(r => r !== null)};
                        if (m.type === 'Title' && m.text) out.titles.push(m.text); }
                return out; }""")
            assert {'invocations per 5 minutes', 'success rate', 'duration (s): p95 solid, p50 dashed'} <= set(drawn.pop('titles'))
            assert {k: v['runs'] for k, v in drawn.items()} == {'ops-series-count_rows': 2, 'ops-series-explode': 1, 'ops-series-pair/first_step': 2, 'ops-series-pair/second_step': 2}
            assert set(drawn['ops-series-explode']['rates']) == {0} and set(drawn['ops-series-count_rows']['rates']) == {1}
            # three charts laid out, not collapsed (waited for: Bokeh sizes them after the canvas is attached)
            wait_for(lambda: sum((c.bounding_box() or {}).get('width', 0) > 100 for c in charts.all()) >= 3, 30, 'three charts laid out')
            health = page.locator('.ops-health .tabulator')
            for tier in ('hot', 'cold', 'blob'):
                expect(cell(row(health, tier), 'status')).to_have_text('ok')
                assert float(cell(row(health, tier), 'latency_ms').inner_text()) >= 0
    finally: srv.stop()
    assert outside == []


def test_operations_tab_shows_an_unreachable_hot_tier(tmp_path):
    "Redis (a real redis-server) stopped while the dashboard runs: the storage health panel shows the hot tier unreachable, the others ok"
    from playwright.sync_api import expect
    from servers import RedisServer
    redis = RedisServer().start()
    srv = None
    try:
        ini = tmp_path / 'settings.ini'
        ini.write_text(f"[storage]\nhot = {redis.url}\ncold = sqlite:///.dataops/meta.db\nblob = file://.dataops/blobs\n")
        s = load_settings(ini)
        srv = serve_dashboard(s, port=0)
        redis.stop()
        outside = []
        with _local_page(outside) as page:
            page.goto(srv.url, timeout=30_000)
            tab(page, 'Operations').click()
            health = page.locator('.ops-health .tabulator')
            row = lambda text: health.locator('.tabulator-row').filter(has_text=text)
            cell = lambda r, field: r.locator(f'.tabulator-cell[tabulator-field="{field}"]')
            expect(cell(row('hot'), 'status')).to_have_text('unreachable', timeout=30_000)
            expect(cell(row('hot'), 'error')).to_contain_text(str(redis.port))
            for tier in ('cold', 'blob'): expect(cell(row(tier), 'status')).to_have_text('ok')
        assert outside == []
    finally:
        if srv is not None: srv.stop()
        redis.stop()
