"""Dashboard benchmark: the review dashboard over 10,000 sessions and 100,000 artifacts, next to a naive load-everything peer.

    .venv/bin/python benchmarks/dashboard.py [--quick] [--sessions 10000] [--artifacts 100000] [--data DIR] [--no-browser] [--repeats 20] [--browser-runs 3]

Seeds an embedded storage (SQLite + files) through the managers — `SessionManager.create_session`, two `add_message`
per session, `ArtifactStore.store_artifact` (a few distinct JSON contents, so the content store dedups them, plus a
DataFrame per 100 artifacts with a parent link) — or reuses `--data DIR` when it was seeded with the same sizes.
Then, side by side:

- server side, in this process: time to the first page (index build + first page), page turn (also on a first visit, when the
  title and workflows of each session listed are read from its history), filters (user,
  status, date range), opening a session (conversation, state, artifacts, checkpoints) and an artifact (preview,
  versions, lineage) — for `Dashboard` and for a naive peer that loads every session and every artifact into pandas
  frames and filters those;
- through headless Chromium (unless --no-browser): each app served on a free port, time from navigation to the first
  page of sessions on screen, to page 2, to a user filter, to a session's conversation; bytes the browser received.
  The peer is the obvious Panel app: one `Tabulator` holding every session (with its artifact count), paginated in
  the browser.

A benchmark is not a test: nothing here asserts. See benchmarks/README.md.
"""
from __future__ import annotations
import argparse, json, socket, os, random, statistics, sys, tempfile, time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
for _k in [k for k in os.environ if k.startswith('DATAOPS_')]: os.environ.pop(_k)  # only the settings written here count

import pandas as pd
from dataops_lab.config import load_settings
from dataops_lab.store.base import Storage, SESSIONS_TABLE, ARTIFACTS_TABLE
from dataops_lab.sessions import SessionManager
from dataops_lab.context import ContextManager
from dataops_lab.dashboard import Dashboard, SessionIndex, serve_dashboard

CHROMIUM = '/usr/bin/chromium'

def ms(s:float)->str: return f"{s*1000:9.1f} ms"

def med(fn, n:int)->float:
    "Median seconds of `n` calls of `fn(i)`"
    out = []
    for i in range(n):
        t = time.perf_counter(); fn(i); out.append(time.perf_counter()-t)
    return statistics.median(out)

# ---------------------------------------------------------------------------------------------------------------
# Seeding

def seed(folder:Path, n_sessions:int, n_artifacts:int):
    "Sessions, messages, artifacts (some DataFrames with lineage) and a few checkpoints, through the managers"
    marker = folder/'seeded.json'
    want = {'sessions': n_sessions, 'artifacts': n_artifacts}
    (folder/'settings.ini').write_text("[storage]\n[dashboard]\npage_size = 50\nrefresh_seconds = 0\n")
    s = load_settings(folder/'settings.ini')
    if marker.exists() and json.loads(marker.read_text()) == want:
        print(f"reusing the seeded storage in {folder}")
        return s
    t0 = time.perf_counter()
    with SessionManager(s) as sm:
        cm, arts = ContextManager(sm), sm.artifacts
        sids = []
        for i in range(n_sessions):
            sid = sm.create_session(f"user_{i % 200:03d}", metadata={'project': f"p{i % 17}"}, global_context={'database': f"db_{i % 5}.db"}).session_id
            sm.add_message(sid, 'user', f"question {i}: profile table t{i % 31}")
            sm.add_message(sid, 'assistant', f"answer {i}: t{i % 31} has {i * 7 % 5000} rows", workflow='profiling')
            sids.append(sid)
            if i and i % 2000 == 0: print(f"  {i:,} sessions ({time.perf_counter()-t0:.0f} s)", flush=True)
        t1 = time.perf_counter()
        per = n_artifacts // n_sessions
        n = 0
        for i, sid in enumerate(sids):
            prev = None
            for j in range(per):
                if j == per-1 and i % 10 == 0:  # every 10th session's last artifact is a DataFrame derived from the one before it
                    prev = arts.store_artifact(pd.DataFrame({'k': [j, j+1], 'v': [i, i+1]}), session_id=sid, workflow_name='sql', name=f"frame_{j}", parents=[prev] if prev else [])
                else:
                    prev = arts.store_artifact({'rows': j % 7, 'table': f"t{j % 5}"}, session_id=sid, workflow_name='profiling', name=f"profile_{j}")
                n += 1
            if i % 500 == 0: cm.create_checkpoint(sid, 'seeded')
            if i and i % 1000 == 0: print(f"  {n:,} artifacts ({time.perf_counter()-t1:.0f} s)", flush=True)
    print(f"seeded {n_sessions:,} sessions ({2*n_sessions:,} messages) in {t1-t0:.1f} s and {n:,} artifacts in {time.perf_counter()-t1:.1f} s "
          f"(through the managers: {(t1-t0)/n_sessions*1000:.2f} ms per session with 2 messages, {(time.perf_counter()-t1)/max(n,1)*1000:.2f} ms per artifact)")
    marker.write_text(json.dumps(want))
    return s

# ---------------------------------------------------------------------------------------------------------------
# The naive peer: load everything into pandas

def load_all(st:Storage)->tuple[pd.DataFrame, pd.DataFrame]:
    "Every session and every artifact item as two DataFrames, by scanning both tables"
    def scan(spec):
        t,rows,cur = st.table(spec),[],None
        while True:
            p = t.scan(limit=1000, cursor=cur); rows += p.items
            if not (cur := p.cursor): return pd.DataFrame(rows)
    sess,arts = scan(SESSIONS_TABLE),scan(ARTIFACTS_TABLE)
    counts = arts.groupby('session_id').size().rename('artifacts')
    sess = sess[['session_id', 'user_id', 'status', 'created_at', 'last_active', 'message_count']].join(counts, on='session_id').sort_values('created_at', ascending=False)
    return sess, arts

# ---------------------------------------------------------------------------------------------------------------
# Server-side figures

def server_side(s, repeats:int, rows:list):
    st = Storage(s)
    sm = SessionManager(st)
    t = time.perf_counter(); idx = SessionIndex(sm).rebuild(); t_index = time.perf_counter()-t
    t = time.perf_counter(); d = Dashboard(s, storage=st, index=idx); t_first = time.perf_counter()-t
    n = len(idx); pages = -(-n // d.page_size)
    sids = list(idx.frame.session_id.sample(repeats, random_state=1))
    users = [f"user_{i:03d}" for i in random.Random(2).sample(range(200), repeats)]
    cold, warm = [], []  # the same random page twice: first with no title or workflows known (one history read per session listed), then again
    for i in range(repeats):
        d.index._facts.clear(); pg = random.Random(i).randrange(pages)
        t = time.perf_counter(); d.show_page(pg); cold.append(time.perf_counter()-t)
        t = time.perf_counter(); d.show_page(pg); warm.append(time.perf_counter()-t)
    r_page, r_page_cold = statistics.median(warm), statistics.median(cold)
    def filt_user(i): d.user.value = users[i]
    r_user = med(filt_user, repeats); d.user.value = ''
    def filt_status(i): d.status.value = ['closed', 'active'][i % 2]
    r_status = med(filt_status, repeats); d.status.value = 'any'
    day = pd.Timestamp(idx.frame.created_at.iloc[n // 2]).date()
    def filt_dates(i): d.since.value, d.until.value = (day, day) if i % 2 == 0 else (None, None)
    r_dates = med(filt_dates, repeats)
    r_open = med(lambda i: d.open_session(sids[i]), repeats)
    d.open_session(sids[0])
    aid = d.art_table.value.artifact_id.iloc[0]
    r_art = med(lambda i: d.open_artifact(aid), repeats)

    t = time.perf_counter(); sess, arts = load_all(st); p_load = time.perf_counter()-t
    p_page = med(lambda i: sess.iloc[(random.Random(i).randrange(pages))*50:][:50], repeats)
    p_user = med(lambda i: sess[sess.user_id == users[i]].head(50), repeats)
    p_status = med(lambda i: sess[sess.status == ['closed', 'active'][i % 2]].head(50), repeats)
    def p_open_fn(i):
        sm.get_history(sids[i], limit=50); sm.get_session(sids[i])
        arts[arts.session_id == sids[i]].sort_values('created_at', ascending=False).head(50)
    p_open = med(p_open_fn, repeats)
    wire = len(sess.to_json(orient='records'))
    page_wire = len(d.table.value.to_json(orient='records'))
    rows += [('first page (build the listing + page 1)', t_index + t_first, p_load + p_page),
             ('  of which: scan the store', t_index, p_load),
             ('next page', r_page, p_page),
             (f'next page, first visit ({d.page_size} histories read for titles)', r_page_cold, None), ('filter by user', r_user, p_user), ('filter by status', r_status, p_status),
             ('filter by date range', r_dates, None),
             ('open a session (conversation, state, artifacts, checkpoints)', r_open, p_open),
             ('open an artifact (preview, versions, lineage)', r_art, None)]
    info = {'sessions': n, 'artifacts': len(arts), 'page_json': page_wire, 'all_json': wire}
    d.close(); st.close()
    return info

# ---------------------------------------------------------------------------------------------------------------
# Through the browser

def serve_peer(s, port:int=0):
    "The naive Panel app: every session (with its artifact count) loaded per browser tab into one locally paginated Tabulator"
    import panel as pn
    from dataops_lab.dashboard import _free_port
    port = port or _free_port('127.0.0.1')
    def app():
        st = Storage(s)
        sess, arts = load_all(st)
        st.close()
        sess = sess.assign(created_at=sess.created_at.str[:19], last_active=sess.last_active.str[:19])
        return pn.Column('# naive dashboard', pn.widgets.Tabulator(sess, pagination='local', page_size=50, disabled=True, show_index=False))
    thread = pn.serve(app, port=port, address='127.0.0.1', websocket_origin=[f"127.0.0.1:{port}"], show=False, threaded=True, title='naive')
    deadline = time.monotonic() + 60
    while True:  # wait until it answers
        try: socket.create_connection(('127.0.0.1', port), timeout=5).close(); break
        except OSError:
            if time.monotonic() > deadline: raise
            time.sleep(0.1)
    return thread, port

def best_of(fn, runs:int)->dict:
    "The median of each timing over `runs` calls of `fn` (bytes from the first)"
    res = [fn() for _ in range(runs)]
    return {k: (res[0][k] if k == 'bytes' else statistics.median(r[k] for r in res)) for k in res[0]}

def browser(s, rows:list, info:dict, runs:int=3):
    from playwright.sync_api import sync_playwright, expect
    if not Path(CHROMIUM).exists():
        print(f"{CHROMIUM} is missing: skipping the browser figures (apt-get install chromium)"); return
    st = Storage(s); idx = SessionIndex(SessionManager(st)).rebuild(); st.close()
    first = list(idx.frame.session_id[:2]); second = idx.frame.session_id.iloc[50]
    user = 'user_007'
    n_user = int((idx.frame.user_id == user).sum())
    user_first = idx.frame.session_id[idx.frame.user_id == user].iloc[0]
    out = {}
    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=['--headless=new', '--no-sandbox', '--disable-gpu', '--disable-dev-shm-usage'])
        def measure(url, steps):
            page = b.new_page(viewport={'width': 1400, 'height': 1000})
            got = {'http': 0, 'ws': 0}
            page.on('response', lambda r: got.__setitem__('http', got['http'] + int(r.headers.get('content-length') or 0)))
            page.on('websocket', lambda ws: ws.on('framereceived', lambda f: got.__setitem__('ws', got['ws'] + len(f))))
            res = {}
            t = time.perf_counter(); page.goto(url, timeout=120_000)
            expect(page.get_by_text(first[0], exact=True)).to_be_visible(timeout=300_000)
            res['first'] = time.perf_counter()-t
            for name, act, check in steps:
                t = time.perf_counter(); act(page); check(page); res[name] = time.perf_counter()-t
            res['bytes'] = (got['http'], got['ws'])
            page.close()
            return res
        ours = serve_dashboard(s, port=0)
        try:
            out['ours'] = best_of(lambda: measure(ours.url, [
                ('next', lambda pg: pg.get_by_text('Next ▶').click(), lambda pg: expect(pg.get_by_text(second, exact=True)).to_be_visible(timeout=60_000)),
                ('user', lambda pg: (pg.get_by_placeholder('any user').fill(user), pg.get_by_placeholder('any user').press('Enter')),
                 lambda pg: expect(pg.get_by_text(f"{n_user} matching sessions")).to_be_visible(timeout=60_000)),
                ('open', lambda pg: pg.get_by_text(user_first, exact=True).click(), lambda pg: expect(pg.locator('.message').first).to_be_visible(timeout=60_000))]), runs)
        finally: ours.stop()
        srv, port = serve_peer(s)
        try:
            out['peer'] = best_of(lambda: measure(f"http://127.0.0.1:{port}/", [
                ('next', lambda pg: pg.locator('button.tabulator-page[data-page="next"]').click(), lambda pg: expect(pg.get_by_text(second, exact=True)).to_be_visible(timeout=60_000))]), runs)
        finally: srv.stop()
        b.close()
    o, q = out['ours'], out['peer']
    rows += [('browser: navigation -> first page on screen', o['first'], q['first']),
             ('browser: next page on screen', o['next'], q['next']),
             ('browser: user filter applied', o['user'], None),
             ('browser: session conversation on screen', o['open'], None)]
    info['browser_bytes'] = (o['bytes'], q['bytes'])

# ---------------------------------------------------------------------------------------------------------------

def main():
    ap = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    ap.add_argument('--quick', action='store_true', help='1,000 sessions and 10,000 artifacts, 5 repeats, 1 page load per app')
    ap.add_argument('--sessions', type=int, default=None, help='sessions to seed (default 10,000, quick 1,000)')
    ap.add_argument('--artifacts', type=int, default=None, help='artifacts to seed (default 100,000, quick 10,000)')
    ap.add_argument('--data', type=Path, help='folder to seed into (kept; reused when seeded with the same sizes)')
    ap.add_argument('--repeats', type=int, default=None, help='timed calls per server-side figure, median shown (default 20, quick 5)')
    ap.add_argument('--browser-runs', type=int, default=None, help='page loads per app in the browser, median shown (default 3, quick 1)')
    ap.add_argument('--no-browser', action='store_true')
    a = ap.parse_args()
    q = a.quick
    a.sessions, a.artifacts = a.sessions or (1000 if q else 10_000), a.artifacts or (10_000 if q else 100_000)
    a.repeats, a.browser_runs = a.repeats or (5 if q else 20), a.browser_runs or (1 if q else 3)
    folder = a.data or Path(tempfile.mkdtemp(prefix='dash-bench-'))
    folder.mkdir(parents=True, exist_ok=True)
    import panel, bokeh
    sys.path.insert(0, str(ROOT / 'benchmarks'))
    from storage import versions  # machine, commit and load average
    print(versions())
    print(f"python {sys.version.split()[0]} · panel {panel.__version__} · bokeh {bokeh.__version__} · pandas {pd.__version__} · {os.cpu_count()} CPUs · data in {folder}")
    s = seed(folder, a.sessions, a.artifacts)
    rows = []
    info = server_side(s, a.repeats, rows)
    if not a.no_browser: browser(s, rows, info, a.browser_runs)
    print(f"\n{info['sessions']:,} sessions, {info['artifacts']:,} artifacts · embedded storage (SQLite + files) · medians of {a.repeats} calls server side and of {a.browser_runs} page loads per app in the browser\n")
    print("(server side, the peer's figures are its pandas work alone: no widget update, nothing sent)\n")
    print(f"| {'step':<62} | {'dashboard':>12} | {'naive pandas peer':>17} |\n|{'-'*64}|{'-'*14}|{'-'*19}|")
    for name, ours, peer in rows: print(f"| {name:<62} | {ms(ours):>12} | {ms(peer) if peer is not None else '—':>17} |")
    print(f"\nJSON of one page of sessions: {info['page_json']:,} B; of every session (what a load-everything table ships): {info['all_json']:,} B")
    if 'browser_bytes' in info:
        (oh, ow), (ph, pw) = info['browser_bytes']
        print(f"received by the browser over the whole run: dashboard {oh:,} B of HTTP (page + JS/CSS assets) + {ow:,} B of websocket (data); "
              f"peer {ph:,} B of HTTP + {pw:,} B of websocket")
    print(f"\nload average at end: {' '.join(open('/proc/loadavg').read().split()[:3])}")

if __name__ == '__main__': main()
