"""Orchestration benchmark: DataOpsSaver vs LangGraph's SqliteSaver, WorkflowChain vs plain LangGraph + SqliteSaver at equal
durability, orchestrator routing overhead, and trivial chain runs per second with a checkpoint per step.

Everything runs on the embedded default (a settings.ini holding just "[storage]": SQLite hot cache, SQLite
tables, files for blobs), in one process, in one run:

    .venv/bin/python benchmarks/orchestration.py [--quick] [--saver-calls 1000] [--runs 200] [--passes 30] [--calls 1000]
                                                 [--chain-runs 1000] [--rate-rounds 10] [--sections saver,chain,routing,rate] [--profile]

Equal durability: the layer's SQLite files run WAL + synchronous=NORMAL; LangGraph's SqliteSaver (default FULL) is
set to WAL + synchronous=NORMAL on its own file. Every checkpointed side uses durability='sync' (a checkpoint per step).

0. saver: DataOpsSaver.put / put_writes / get_tuple next to SqliteSaver's (and InMemorySaver, not durable, for scale),
   interleaved in rotating batches; target ≤ 1.2x SqliteSaver (p50).
1. chain: a 10-step chain of trivial steps (x -> x + 1). WorkflowChain.execute with its defaults (an artifact per step)
   and with step_artifacts=False, next to plain LangGraph (the same 10 nodes hand-written) + SqliteSaver: the 1.2x
   target is judged on the chain with step_artifacts=False ÷ that peer. Also plain LangGraph + DataOpsSaver (the saver's
   share), + get_session/add_message per run (the session message's share), + an artifact per step (the artifacts'
   share), + InMemorySaver, and with no checkpointer.
2. routing: Orchestrator.route(query) (3 rules + the offline router: BM25, plus sentence vectors where the [semantic] extra is on)
   over the 502 turns of the routing sets (tests/data, via tests/routing_queries.py) against default_registry(), next to that
   router alone and to the same router without vectors (semantic=False), and Orchestrator.process() of a trivial workflow
   minus that workflow's own run time.
3. rate: runs per second of a 3-step chain of trivial steps with a checkpoint per step (durability='sync'; target 200/s;
   the seed asks for 10,000 per hour), run after run in one session, next to the same with step_artifacts=False, the
   chain's default 'auto' durability, plain LangGraph + SqliteSaver 'sync' and LangGraph alone; the sides run in
   rotating rounds of blocks.
p99 is printed where a side has at least 1,000 samples, p95 otherwise (and in --quick). A summary judges the targets
(PASS / MISS); a missed target is profiled on the spot (cProfile in every thread, because LangGraph runs nodes and
checkpoint writes in worker threads). A section that raises fails the script. See benchmarks/README.md.
A benchmark is not a test: nothing here asserts on timings.
"""
from __future__ import annotations
import argparse, gc, logging, os, shutil, sqlite3, statistics, subprocess, sys, tempfile, threading, time
from collections import Counter
from pathlib import Path
from typing import Annotated, TypedDict

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / 'tests'))
sys.path.insert(0, str(ROOT / 'benchmarks'))
for _k in [k for k in os.environ if k.startswith('DATAOPS_')]: os.environ.pop(_k)  # only the settings written here count

from storage import versions as storage_versions  # machine banner
from managers import pct, stats, bench_sides, TAIL, tail_name  # percentiles, interleaved timing in rotating batches; p99 from ≥ 1,000 samples, else p95

N_STEPS, RATE_STEPS = 10, 3
CHAIN_RATIO = 1.2                              # WorkflowChain (step_artifacts=False) / plain LangGraph + SqliteSaver, equal durability
SAVER_RATIO = 1.2                              # DataOpsSaver / SqliteSaver, equal durability
ROUTE_P99_MS = 10.0                            # orchestrator routing overhead p99
RATE_TARGET, RATE_SEED = 200.0, 10_000 / 3600  # trivial chain runs per second (seed: 10,000 per hour)

# ---------------------------------------------------------------------------------------------------------------
# Output

RESULTS = []  # (measure, figure, target text, verdict: True / False / None, verdict text)

def judge(measure, value, unit, target, *, higher=False, seed=None, fmt='{:.2f}'):
    "Record `value` against `target` (lower is better unless `higher`): PASS, MISS, or MISS with the seed's figure met"
    fig = fmt.format(value) + unit
    if unit == 'x': ttxt, ok = f"≤ {target}x", round(value, 2) <= target
    elif higher: ttxt, ok = f"≥ {target:g}{unit}", value >= target
    else: ttxt, ok = f"< {target:g}{unit}", value < target
    seed_ok = seed is not None and (value >= seed if higher else value < seed)
    if seed is not None: ttxt += f" (seed {seed:.3g}{unit})"
    RESULTS.append((measure, fig, ttxt, ok, 'PASS' if ok else 'MISS' + (' (seed met)' if seed_ok else '')))
    return ok

def info(measure, fig): RESULTS.append((measure, fig, '-', None, '-'))

FAILED = []  # sections that raised: the script exits 1

def judge_tail(measure, value, unit, target, **kw):
    "A p99 target: judged on a p99; a --quick run's p95 is shown, not judged"
    if TAIL[0] == 'p99': return judge(measure, value, unit, target, **kw)
    RESULTS.append((measure, kw.get('fmt', '{:.2f}').format(value) + unit, f"< {target:g}{unit} (p99)", None, 'n/a'))
    return True

def skip(section, why):
    print(f"\n== {section}: SKIPPED ==\n   {why}")
    RESULTS.append((section, 'skipped', '', None, 'skipped'))

def versions() -> str:
    import importlib.metadata as md
    def v(p):
        try: return md.version(p)
        except md.PackageNotFoundError: return '-'
    machine = storage_versions().splitlines()[0]
    try: rev = subprocess.run(['git', '-C', str(ROOT), 'rev-parse', '--short', 'HEAD'], capture_output=True, text=True).stdout.strip()
    except OSError: rev = '?'
    import platform
    return (f"{machine}\npython {platform.python_version()}; dataops-lab {v('dataops-lab')} (git {rev or '?'}, uncommitted changes possible); "
            f"langgraph {v('langgraph')}; langgraph-checkpoint {v('langgraph-checkpoint')}; langgraph-checkpoint-sqlite {v('langgraph-checkpoint-sqlite')}; "
            f"langchain-core {v('langchain-core')}; pydantic {v('pydantic')}; bm25s {v('bm25s')}; sqlite {sqlite3.sqlite_version}")

def fmt_stats(s, tn=None) -> str: return f"{s['p50']:9.3f} {s[tn or TAIL[0]]:9.3f} {s['mean']:9.3f} {s['max']:9.3f}"

# ---------------------------------------------------------------------------------------------------------------
# What a call does underneath (untimed): SQL statements, fsyncs, threads started

def anatomy(fn, times:int=3, top_statements:int=0) -> str:
    """What `times` calls of `fn` do underneath, per call: SQL statements (on every layer connection, including the ones
    opened during the calls), os.fsync calls, threads started, SQLite connections opened"""
    fn(0)  # lazily opened connections exist after one call
    stmts, conns, nconn, nsync, nthr, lock = [], [], [0], [0], [0], threading.Lock()
    for c in [o for o in gc.get_objects() if isinstance(o, sqlite3.Connection)]:
        try: c.set_trace_callback(stmts.append); conns.append(c)
        except sqlite3.Error: pass  # closed
    connect, fsync, fdatasync = sqlite3.connect, os.fsync, os.fdatasync
    def spy_connect(*a, **kw):
        c = connect(*a, **kw)
        with lock: nconn[0] += 1
        c.set_trace_callback(stmts.append); conns.append(c)
        return c
    def spy_sync(real):
        def f(fd):
            with lock: nsync[0] += 1
            return real(fd)
        return f
    def hook(*_):  # the first profile event of every new thread
        sys.setprofile(None)
        with lock: nthr[0] += 1
    sqlite3.connect, os.fsync, os.fdatasync = spy_connect, spy_sync(fsync), spy_sync(fdatasync)
    threading.setprofile(hook)
    try:
        for i in range(times): fn(i + 1)
    finally:
        threading.setprofile(None)
        sqlite3.connect, os.fsync, os.fdatasync = connect, fsync, fdatasync
        for c in conns:
            try: c.set_trace_callback(None)
            except sqlite3.Error: pass
    verbs = Counter(st.split(None, 1)[0].upper() if st.strip() else '?' for st in stmts)
    v = ', '.join(f"{k} {c / times:.3g}" for k, c in verbs.most_common())
    out = (f"{len(stmts) / times:.3g} SQL statements ({v}); {nconn[0] / times:.3g} SQLite connection(s) opened; "
           f"{nthr[0] / times:.3g} thread(s) started; {nsync[0] / times:.3g} os.fsync")
    if top_statements:
        by = Counter(' '.join(st.split())[:110] for st in stmts)
        out += ''.join(f"\n       {c / times:5.3g} x  {st}" for st, c in by.most_common(top_statements))
    return out

def layer_pragmas(sm) -> str:
    "synchronous and journal_mode of the layer's SQLite files (read from its own connections)"
    sm.sessions.get('sess_nothing'); sm.storage.cache.get('nothing')  # open the connections
    out = {}
    for c in [o for o in gc.get_objects() if isinstance(o, sqlite3.Connection)]:
        try:
            f = Path(next(r[2] for r in c.execute('PRAGMA database_list') if r[1] == 'main')).name
            if f in ('meta.db', 'cache.db') and f not in out:
                out[f] = f"journal_mode={c.execute('PRAGMA journal_mode').fetchone()[0]}, synchronous={c.execute('PRAGMA synchronous').fetchone()[0]}"
        except (sqlite3.Error, StopIteration): pass
    return '; '.join(f"{f}: {v}" for f, v in sorted(out.items())) or 'not found'

class TailProbe:
    "Per call: GC pause time (gc.callbacks) and which layer SQLite files had their WAL reset (a checkpoint completed) during it"
    def __init__(self, sm):
        from dataops_lab.store.sqlite import sqlite_path
        self.wals = {}
        for role in ('cold', 'hot'):
            u = sm.storage.urls[role]
            if u.startswith('sqlite:'): self.wals[Path(sqlite_path(u)).name] = sqlite_path(u) + '-wal'
        self.gc_ms, self._t0, self.rows = 0.0, 0.0, []  # rows: (ms, gc ms, [files whose WAL was reset])
        gc.callbacks.append(self._cb)
    def _cb(self, phase, info):
        if phase == 'start': self._t0 = time.perf_counter()
        else: self.gc_ms += (time.perf_counter() - self._t0) * 1e3
    def _salts(self) -> dict:
        out = {}
        for name, f in self.wals.items():  # WAL header bytes 12-24: checkpoint sequence and salts, new on every WAL reset
            try:
                with open(f, 'rb') as fh: out[name] = fh.read(24)[12:]
            except OSError: out[name] = None
        return out
    def call(self, fn, i) -> float:
        s0, g0 = self._salts(), self.gc_ms
        t = time.perf_counter(); fn(i); ms = (time.perf_counter() - t) * 1e3
        s1 = self._salts()
        self.rows.append((ms, self.gc_ms - g0, [n for n in s0 if s0[n] != s1[n]]))
        return ms
    def close(self):
        if self._cb in gc.callbacks: gc.callbacks.remove(self._cb)
    def report(self, what:str, pause_ms:float=5.0):
        "Where the tail comes from: calls with a WAL reset or a GC pause, next to the rest"
        from dataops_lab.store.sqlite import WAL_SAFETY_PAGES
        rows = self.rows
        if not rows: return
        wal = [r for r in rows if r[2]]
        gcp = [r for r in rows if r[1] >= pause_ms]
        calm = [r[0] for r in rows if not r[2] and r[1] < pause_ms]
        per_file = Counter(n for r in rows for n in r[2])
        k = max(1, len(rows) // 100)
        slow = sorted(rows, key=lambda r: -r[0])[:k]
        med = lambda xs: f"{statistics.median(xs):.2f} ms" if xs else '-'
        print(f"   tail of {what}: {len(wal)} of {len(rows)} calls saw a WAL reset of a layer SQLite file "
              f"({', '.join(f'{n} x{c}' for n, c in per_file.items()) or 'none'}), i.e. that call's commit started the WAL over after the layer's "
              f"background checkpoint (one fsync of the WAL header; a caller's own checkpoint only past {WAL_SAFETY_PAGES:,} pages); {len(gcp)} calls had a GC pause "
              f"≥ {pause_ms:g} ms (longest {max(r[1] for r in rows):.1f} ms)")
        print(f"     median with a WAL reset {med([r[0] for r in wal])}, with a GC pause {med([r[0] for r in gcp])}, with neither {med(calm)}; "
              f"the slowest 1% ({k} call(s), ≥ {slow[-1][0]:.2f} ms): {sum(1 for r in slow if r[2])} with a WAL reset, "
              f"{sum(1 for r in slow if r[1] >= pause_ms)} with a GC pause, {sum(1 for r in slow if not r[2] and r[1] < pause_ms)} with neither")

# ---------------------------------------------------------------------------------------------------------------
# Profiling: cProfile in the main thread and in every thread started while profiling

PROFILE_RUNS = [20]

def _where(k):
    f, line, name = k
    f = f.replace(str(ROOT) + '/', '').replace(sys.prefix + '/', '').split('site-packages/')[-1]
    return f"{name} ({f}:{line})" if f != '~' else name

def _category(k) -> str:
    f, _, name = k
    if f == '~':
        if "'acquire' of '_thread" in name or "'get' of '_queue.SimpleQueue'" in name:
            return "waiting: lock.acquire, idle pool workers' queue.get (not CPU)"
        if 'sqlite3' in name: return 'sqlite3 C calls (execute, commit, fetch)'
        if 'fsync' in name or 'fdatasync' in name: return 'fsync'
        if 'start_new_thread' in name: return 'starting threads'
        if 'pydantic_core' in name: return 'pydantic-core (validate / dump)'
        if 'json' in name or 'msgpack' in name: return 'json / msgpack encoders (C)'
        if 'zstd' in name: return 'zstandard'
        if any(s in name for s in ('posix.', '_io.', 'io.open')): return 'file system calls (open, write, rename, stat)'
        return 'other built-ins'
    if 'dataops_lab/' in f: return 'dataops_lab (Python code)'
    if 'site-packages/' in f: return f.split('site-packages/')[1].split('/')[0].removesuffix('.py') + ' (Python code)'
    lib = f.split('/lib/python3')[-1].split('/', 1)[-1] if '/lib/python3' in f else f
    return f"stdlib {lib.split('/')[0].removesuffix('.py')}"

# (label, file suffix, function name): the calls whose cumulative time explains a chain run / an orchestrator turn
CHAIN_KEYS = [
    ('WorkflowChain.stream (main thread; includes waiting)', 'dataops_lab/chain.py', 'stream'),
    ('  chain node run (worker thread)', 'dataops_lab/chain.py', 'run'),
    ('    BaseWorkflow.run: the step as a nested graph', 'dataops_lab/workflows.py', 'run'),
    ('    ArtifactStore.store_artifact', 'dataops_lab/artifacts.py', 'store_artifact'),
    ('  DataOpsSaver.put (checkpoint)', 'dataops_lab/checkpoint.py', 'put'),
    ('  DataOpsSaver.put_writes', 'dataops_lab/checkpoint.py', 'put_writes'),
    ('  DataOpsSaver.get_tuple', 'dataops_lab/checkpoint.py', 'get_tuple'),
    ('  SessionManager.add_message', 'dataops_lab/sessions.py', 'add_message'),
    ('  SessionManager.get_session', 'dataops_lab/sessions.py', 'get_session'),
    ('  SQLiteBackend._connect (a new SQLite connection)', 'dataops_lab/store/sqlite.py', '_connect'),
    ('Pregel.stream calls (graphs run, nested ones included)', 'langgraph/pregel/main.py', 'stream'),
]
ORCH_KEYS = [
    ('Orchestrator.stream', 'dataops_lab/orchestrator.py', 'stream'),
    ('  Orchestrator.route', 'dataops_lab/orchestrator.py', 'route'),
    ('  SessionManager.get_session', 'dataops_lab/sessions.py', 'get_session'),
    ('  SessionManager.get_history', 'dataops_lab/sessions.py', 'get_history'),
    ('  SessionManager.add_message', 'dataops_lab/sessions.py', 'add_message'),
    ('  SessionManager.update_session', 'dataops_lab/sessions.py', 'update_session'),
    ('  ArtifactStore.store_artifact', 'dataops_lab/artifacts.py', 'store_artifact'),
    ('  Pregel.stream (the workflow\'s graph)', 'langgraph/pregel/main.py', 'stream'),
]

def profile(label:str, fn, n:int, top:int=14, keys=CHAIN_KEYS):
    "cProfile `n` calls of `fn` in every thread; own time by package, key calls, top functions (ms per call)"
    import cProfile, pstats
    n = max(1, min(n, PROFILE_RUNS[0]))
    profs, lock = [], threading.Lock()
    def boot(*_):  # the first profile event of a new thread: give that thread its own profiler
        sys.setprofile(None)
        p = cProfile.Profile()
        with lock: profs.append(p)
        p.enable()
    main = cProfile.Profile()
    gc.collect()
    threading.setprofile(boot)
    c0, t0 = time.process_time(), time.perf_counter()
    main.enable()
    try:
        for i in range(n): fn(i)
    finally:
        main.disable()
        threading.setprofile(None)
    wall, cpu = (time.perf_counter() - t0) / n, (time.process_time() - c0) / n
    st = pstats.Stats(main)
    for p in profs: st.add(p)
    st = st.stats  # (file, line, name) -> (primitive calls, calls, tottime, cumtime, callers)
    st = {k: v for k, v in st.items() if k[2] != "<method 'disable' of '_lsprof.Profiler' objects>"}
    total = sum(v[2] for v in st.values())
    print(f"\n   --- profile: {label}: {n} call(s), {len(profs)} worker thread(s) profiled; per call under cProfile: "
          f"{wall * 1e3:.2f} ms wall, {cpu * 1e3:.2f} ms CPU (all threads), {total / n * 1e3:.2f} ms own time summed over threads ---")
    cats = Counter()
    for k, v in st.items(): cats[_category(k)] += v[2]
    print(f"   own time by where it is spent      {'ms/call':>8} {'share':>6}")
    for c, t in cats.most_common(12): print(f"     {c:58} {t / n * 1e3:8.3f} {t / total:6.0%}")
    rows = []
    for lab, suffix, name in keys:
        hits = [v for k, v in st.items() if k[0].endswith(suffix) and k[2] == name]
        if hits: rows.append((lab, sum(v[1] for v in hits), sum(v[3] for v in hits)))
    if rows:
        print(f"   key calls (cumulative time; a call made on a worker thread counts there)   {'calls/call':>10} {'ms/call':>8}")
        for lab, calls, cum in rows: print(f"     {lab:73} {calls / n:10.3g} {cum / n * 1e3:8.3f}")
    print(f"   top functions by own time (waits left out)          {'own ms':>8} {'cum ms':>8} {'calls':>8}  function")
    k_sorted = sorted(((k, v) for k, v in st.items() if not _category(k).startswith('waiting')), key=lambda kv: -kv[1][2])
    for k, v in k_sorted[:top]: print(f"     {'':48} {v[2] / n * 1e3:8.3f} {v[3] / n * 1e3:8.3f} {v[1] / n:8.4g}  {_where(k)}")
    mine = sorted(((k, v) for k, v in st.items() if 'dataops_lab/' in k[0]), key=lambda kv: -kv[1][3])
    print(f"   dataops_lab by cumulative time                       {'own ms':>8} {'cum ms':>8} {'calls':>8}  function")
    for k, v in mine[:top]: print(f"     {'':48} {v[2] / n * 1e3:8.3f} {v[3] / n * 1e3:8.3f} {v[1] / n:8.4g}  {_where(k)}")

# ---------------------------------------------------------------------------------------------------------------
# The embedded default, the trivial workflow, and the hand-written graphs

def open_embedded(tmp:Path):
    from dataops_lab.config import load_settings
    from dataops_lab.store.base import Storage
    from dataops_lab.sessions import SessionManager
    import dataops_lab.checkpoint  # registers the checkpoint tables, so ensure() creates them too
    (tmp / 'settings.ini').write_text("[storage]\n")
    storage = Storage(load_settings(tmp / 'settings.ini')).ensure()
    return SessionManager(storage)

def make_inc():
    from dataops_lab.workflows import workflow
    @workflow(description='Add one to x (a trivial step)')
    def inc(x:int): return {'x': x + 1}
    return inc

def _merge(a:dict, b:dict) -> dict: return {**a, **b}
# The chain's own state shape (outputs / artifacts / timings merged per step), functional form: annotations here are strings
HandState = TypedDict('HandState', {'input': dict, 'outputs': Annotated[dict, _merge], 'artifacts': Annotated[dict, _merge],
                                    'timings': Annotated[dict, _merge]}, total=False)

def hand_graph(sm, n:int, checkpointer, *, store:bool, step=None, name:str='hand'):
    "`n` nodes START -> s0 -> ... -> END, each x -> x + 1 (or `step(prev)`), storing its output as the chain does if `store`"
    from langgraph.graph import StateGraph, START, END
    from dataops_lab.models import ArtifactType
    names, arts = [f"s{i}" for i in range(n)], sm.artifacts
    def node_for(i):
        me, last = names[i], i == n - 1
        def node(state, config):
            prev = state['input'] if i == 0 else state['outputs'][names[i - 1]]
            t0 = time.perf_counter()
            out = {'x': prev['x'] + 1} if step is None else step(prev)
            upd = {'outputs': {me: out}, 'timings': {me: time.perf_counter() - t0}}
            if store:
                conf = config['configurable']
                upd['artifacts'] = {me: arts.store_artifact(out, session_id=conf['session_id'], workflow_name=name, name=f"{name}.{me}",
                                                            artifact_type=ArtifactType.RESULT if last else ArtifactType.INTERMEDIATE,
                                                            parents=[state['artifacts'][names[i - 1]]] if i else [], created_by=me,
                                                            metadata={'run_id': conf['thread_id']})}
            return upd
        return node
    g = StateGraph(HandState)
    for i, s in enumerate(names): g.add_node(s, node_for(i))
    g.add_edge(START, names[0])
    for a, b in zip(names, names[1:]): g.add_edge(a, b)
    g.add_edge(names[-1], END)
    return g.compile(checkpointer=checkpointer)

def hand_runner(sm, g, sid:str, n:int, *, store:bool, session:bool|None=None, name:str='hand', last:dict|None=None, durability:str|None=None, streamed:bool=False):
    "One run of a hand-written graph; with `session` (default: `store`), the chain's session calls around it (get_session first, add_message after)"
    from dataops_lab.core import new_id
    final, session = f"s{n - 1}", store if session is None else session
    def run(i):
        tid = new_id('run')
        if last is not None: last['tid'] = tid
        if session: sm.get_session(sid)
        cfg, kw = {'configurable': {'thread_id': tid, 'session_id': sid}}, ({'durability': durability} if durability and g.checkpointer else {})  # LangGraph fails 'sync' without a checkpointer
        if not streamed: r = g.invoke({'input': {'x': i}}, cfg, **kw)
        else:  # as WorkflowChain.stream consumes its graph
            for mode, chunk in g.stream({'input': {'x': i}}, cfg, stream_mode=['custom', 'values'], **kw):
                if mode == 'values': r = chunk
        if session: sm.add_message(sid, 'assistant', f"chain {name} completed ({len(r['outputs'])} steps)", workflow=name,
                                   artifact_ids=list((r.get('artifacts') or {}).values()), metadata={'run_id': tid})
        return r['outputs'][final]['x']
    return run

def chain_runner(chain, sid:str, last:dict|None=None):
    def run(i):
        res = chain.execute(sid, {'x': i})
        if last is not None: last['tid'] = res.run_id; last.setdefault('durability', Counter())[res.durability] += 1
        if res.status != 'completed': raise RuntimeError(f"chain {chain.name} {res.status} at {res.failed_step}: {res.error}")
        return res.final['x']
    return run

def check(label, fn, n):
    "One untimed run: the side really computes x + n"
    if (got := fn(1000)) != 1000 + n: raise RuntimeError(f"{label}: final x is {got!r}, expected {1000 + n}")

def dataops_items(saver, tid:str) -> str:
    cks = list(saver.checkpoints.query_all(tid, limit=200))
    ws = list(saver.writes.query_all(tid, limit=200))
    top = sum(1 for c in cks if c['checkpoint_ns'] == '')
    return f"{len(cks)} checkpoint items ({top} top-level, {len(cks) - top} in nested namespaces), {len(ws)} write items"

# ---------------------------------------------------------------------------------------------------------------
# LangGraph's SqliteSaver at the layer's durability

def sqlite_saver(path:Path):
    "LangGraph's SqliteSaver on its own file, at the layer's durability: WAL + synchronous=NORMAL (its default is FULL)"
    from langgraph.checkpoint.sqlite import SqliteSaver
    conn = sqlite3.connect(str(path), check_same_thread=False)
    saver = SqliteSaver(conn); saver.setup()
    conn.execute('PRAGMA journal_mode=WAL'); conn.execute('PRAGMA synchronous=NORMAL')
    prag = f"journal_mode={conn.execute('PRAGMA journal_mode').fetchone()[0]}, synchronous={conn.execute('PRAGMA synchronous').fetchone()[0]}"
    return saver, conn, prag

# ---------------------------------------------------------------------------------------------------------------
# 0. DataOpsSaver vs SqliteSaver: put / put_writes / get_tuple

def section_saver(a, sm, tmp:Path):
    from langgraph.checkpoint.base import empty_checkpoint
    from langgraph.checkpoint.base.id import uuid6
    from langgraph.checkpoint.memory import InMemorySaver
    from dataops_lab.checkpoint import DataOpsSaver
    ours = DataOpsSaver(sm.storage)
    lg, conn, prag = sqlite_saver(tmp / 'saver.db')
    mem = InMemorySaver()
    savers = [('DataOpsSaver (embedded: layer SQLite)', ours), (f"SqliteSaver ({prag})", lg), ('InMemorySaver (not durable)', mem)]
    PER = 4  # checkpoints per thread, as a 3-step chain run writes (input + 3 steps)
    def ckpt(i):
        c = empty_checkpoint()
        c['id'] = str(uuid6(clock_seq=i))
        c['channel_values'] = {'input': {'x': i}, 'outputs': {f"s{k}": {'x': i + k + 1} for k in range(i % PER)},
                               'timings': {f"s{k}": 0.0001 for k in range(i % PER)}}
        c['channel_versions'] = {'input': 1, 'outputs': i % PER + 1, 'timings': i % PER + 1}
        return c
    last = {}
    def put(sv, key):
        def f(i):
            tid = f"{key}-t{i // PER}"
            cfg = {'configurable': {'thread_id': tid, 'checkpoint_ns': '', **({'checkpoint_id': last[key, tid]} if (key, tid) in last else {})}}
            c = ckpt(i)
            out = sv.put(cfg, c, {'source': 'loop', 'step': i % PER, 'parents': {}}, {'outputs': c['channel_versions']['outputs']})
            last[key, tid] = out['configurable']['checkpoint_id']
        return f
    def put_writes(sv, key):
        def f(i):
            tid = f"{key}-t{i // PER}"
            cfg = {'configurable': {'thread_id': tid, 'checkpoint_ns': '', 'checkpoint_id': last[key, tid]}}
            sv.put_writes(cfg, [('outputs', {f"s{i % PER}": {'x': i}}), ('timings', {f"s{i % PER}": 0.0001})], task_id=f"task{i}")
        return f
    def get(sv, key, nthreads):
        def f(i):
            tup = sv.get_tuple({'configurable': {'thread_id': f"{key}-t{i % nthreads}", 'checkpoint_ns': ''}})
            if tup is None: raise RuntimeError(f"{key}: no checkpoint for thread {key}-t{i % nthreads}")
        return f
    keys = [f"k{j}" for j in range(len(savers))]
    res = {}
    res['put'] = bench_sides([(k, put(sv, k)) for k, (_, sv) in zip(keys, savers)], a.saver_calls, 20)
    res['put_writes'] = bench_sides([(k, put_writes(sv, k)) for k, (_, sv) in zip(keys, savers)], a.saver_calls, 20)
    nthreads = (a.saver_calls + 20) // PER
    res['get_tuple'] = bench_sides([(k, get(sv, k, nthreads)) for k, (_, sv) in zip(keys, savers)], a.saver_calls, 20)
    # the reads give back what was written: the same channel values from both durable savers
    got = [sv.get_tuple({'configurable': {'thread_id': f"{k}-t3", 'checkpoint_ns': ''}}) for k, (_, sv) in zip(keys, savers)]
    if got[0].checkpoint['channel_values'] != got[1].checkpoint['channel_values']: raise RuntimeError("DataOpsSaver and SqliteSaver read back different channel values")
    tn = tail_name(a.saver_calls)
    print(f"\n== 0. Checkpointers on their own: DataOpsSaver vs LangGraph's SqliteSaver at equal durability ==")
    print(f"   {a.saver_calls:,} calls per side and operation after 20 warm-up, batches of 100 rotating over the sides; a thread per {PER} checkpoints "
          f"(a 3-step chain run's worth); small channel values (a chain's input, outputs, timings); get_tuple reads a thread's latest checkpoint "
          f"with its pending writes")
    print(f"   layer SQLite: {layer_pragmas(sm)}; SqliteSaver: its own file, {prag} — both WAL + synchronous=NORMAL: durable at each commit "
          f"against a process crash, fsync at WAL checkpoints")
    print(f"   {'operation':11} {'side':48} {'p50 ms':>9} {tn + ' ms':>9} {'mean ms':>9} {'max ms':>9} {'÷ SqliteSaver':>13}")
    for op, r in res.items():
        base = r[keys[1]]['p50']
        for j, (k, (lab, _)) in enumerate(zip(keys, savers)):
            s_ = r[k]
            print(f"   {op if j == 0 else '':11} {lab[:48]:48} {s_['p50']:9.3f} {s_[tn]:9.3f} {s_['mean']:9.3f} {s_['max']:9.3f} {s_['p50'] / base:12.2f}x")
        judge(f"DataOpsSaver.{op} ÷ SqliteSaver.{op}, WAL + NORMAL (p50)", r[keys[0]]['p50'] / base, 'x', SAVER_RATIO)
    print(f"   underneath one DataOpsSaver.put: {anatomy(put(ours, 'probe'), 3)}")
    print(f"   underneath one SqliteSaver.put:  {anatomy(put(lg, 'probe2'), 3)}")
    print("   Redis / DynamoDB tiers: not compared here. langgraph-checkpoint-redis needs the RedisJSON and RediSearch modules "
          "(Redis Stack), which a plain redis-server lacks; no DynamoDB saver is in the dev extra")
    conn.close()

# ---------------------------------------------------------------------------------------------------------------
# 1. A 10-step chain vs plain LangGraph + SqliteSaver at equal durability

def section_chain(a, sm, tmp:Path):
    from langgraph.checkpoint.memory import InMemorySaver
    from dataops_lab.workflows import WorkflowRegistry
    from dataops_lab.chain import WorkflowChain
    from dataops_lab.checkpoint import DataOpsSaver
    n, inc = N_STEPS, make_inc()
    saver = DataOpsSaver(sm.storage)
    lg, conn, lg_prag = sqlite_saver(tmp / 'langgraph.db')
    D = 'sync'  # a checkpoint per step on every checkpointed side
    chain = WorkflowChain('c10', WorkflowRegistry(inc), sm, checkpointer=saver, durability=D)
    lean = WorkflowChain('c10lean', WorkflowRegistry(inc), sm, checkpointer=saver, durability=D, step_artifacts=False)
    for c in (chain, lean):
        for i in range(n): c.add_step('inc', name=f"s{i}")
    lasts = {k: {} for k in 'AL'}
    def sid(): return sm.create_session('bench_chain').session_id  # one session per side: equal history lengths
    sides = [  # (key, label, fn)
        ('A', "WorkflowChain.execute (defaults: an artifact per step), DataOpsSaver", chain_runner(chain, sid(), lasts['A'])),
        ('L', "WorkflowChain.execute, step_artifacts=False, DataOpsSaver", chain_runner(lean, sid(), lasts['L'])),
        ('P', f"plain LangGraph + SqliteSaver (WAL + NORMAL): the peer", hand_runner(sm, hand_graph(sm, n, lg, store=False), sid(), n, store=False, durability=D)),
        ('Q', "plain LangGraph + DataOpsSaver", hand_runner(sm, hand_graph(sm, n, saver, store=False), sid(), n, store=False, durability=D)),
        ('M', "plain LangGraph + SqliteSaver + get_session/add_message per run", hand_runner(sm, hand_graph(sm, n, lg, store=False), sid(), n, store=False, session=True, durability=D)),
        ('S', "plain LangGraph + SqliteSaver + an artifact per step + get_session/add_message", hand_runner(sm, hand_graph(sm, n, lg, store=True), sid(), n, store=True, durability=D)),
        ('F', "plain LangGraph + InMemorySaver (not durable)", hand_runner(sm, hand_graph(sm, n, InMemorySaver(), store=False), sid(), n, store=False, durability=D)),
        ('G', "plain LangGraph, no checkpointer", hand_runner(sm, hand_graph(sm, n, None, store=False), sid(), n, store=False)),
    ]
    for key, label, fn in sides: check(label, fn, n)
    tn = tail_name(a.runs)
    print(f"\n== 1. A {n}-step chain of trivial steps (x -> x + 1): WorkflowChain vs plain LangGraph + SqliteSaver at equal durability ==")
    print(f"   {a.runs} timed runs per side after {a.chain_warmup} warm-up, batches of {a.chain_batch} rotating over the sides; "
          f"a new thread_id per run, one session per side; durability 'sync' (a checkpoint per step) on every checkpointed side")
    print(f"   layer SQLite ({layer_pragmas(sm)}); SqliteSaver: its own file <tmp>/langgraph.db ({lg_prag}): equal durability. "
          f"The 1.2x target is judged on L ÷ P (p50); {tn} shown ({'≥' if tn == 'p99' else '<'} 1,000 runs per side)")
    cpu = {key: [] for key, _, _ in sides}  # CPU time of the whole process (every thread) per run: what contention from other processes does not inflate
    def with_cpu(key, fn):
        def f(i):
            c = time.process_time(); fn(i); cpu[key].append((time.process_time() - c) * 1e3)
        return f
    res = bench_sides([(key, with_cpu(key, fn)) for key, _, fn in sides], a.runs, a.chain_warmup, batch=a.chain_batch)
    base, cbase = res['P']['p50'], statistics.median(cpu['P'])
    print(f"   {'side':84} {'p50 ms':>9} {tn + ' ms':>9} {'mean ms':>9} {'max ms':>9} {'runs/s':>7} {'÷ P':>6} {'CPU ms/run':>10} {'CPU ÷ P':>7}")
    for key, label, _ in sides:
        s_, c_ = res[key], statistics.median(cpu[key])
        print(f"   {key} {label:82} {s_['p50']:9.3f} {s_[tn]:9.3f} {s_['mean']:9.3f} {s_['max']:9.3f} {1e3 / s_['mean']:7.1f} {s_['p50'] / base:5.2f}x {c_:10.2f} {c_ / cbase:6.2f}x")
    print("   (CPU ms/run: the median process CPU time of a run, every thread; on a machine shared with other work it moves less than wall time)")
    p = {k: v['p50'] for k, v in res.items()}
    print("   where the time of a run goes (differences of p50s, ≈):")
    for lab, v in [
            (f"LangGraph running {n} trivial nodes (G)", p['G']),
            (f"+ per-step checkpoints in SqliteSaver (P − G)", p['P'] - p['G']),
            (f"  DataOpsSaver instead of SqliteSaver (Q − P)", p['Q'] - p['P']),
            ("+ get_session + add_message per run (M − P)", p['M'] - p['P']),
            (f"+ {n} step artifacts, hand-written (S − M)", p['S'] - p['M']),
            (f"  {n} step artifacts in the chain (A − L)", p['A'] - p['L']),
            ("WorkflowChain's own work: L − Q − (M − P)", p['L'] - p['Q'] - (p['M'] - p['P']))]:
        print(f"     {lab:70} {v:8.2f} ms")
    for key in 'AL':
        print(f"   per run, {key}: {dataops_items(saver, lasts[key]['tid'])}")
    fns = dict((k, fn) for k, _, fn in sides)
    print(f"   underneath one run, L: {anatomy(fns['L'], 2)}")
    print(f"   underneath one run, P: {anatomy(fns['P'], 2)}")
    ok = judge(f"{n}-step chain, step_artifacts=False ÷ plain LangGraph + SqliteSaver, 'sync', equal durability (p50)", p['L'] / p['P'], 'x', CHAIN_RATIO)
    info(f"{n}-step chain (defaults) ÷ plain LangGraph + SqliteSaver (p50)", f"{p['A'] / p['P']:.2f}x")
    cm = {k: statistics.median(v) for k, v in cpu.items()}
    info(f"{n}-step chain CPU per run ÷ plain LangGraph + SqliteSaver: step_artifacts=False / defaults (medians)", f"{cm['L'] / cm['P']:.2f}x / {cm['A'] / cm['P']:.2f}x")
    info(f"{n}-step chain: cost of the step artifacts (A − L) / of get_session + add_message (M − P), p50", f"{p['A'] - p['L']:.2f} / {p['M'] - p['P']:.2f} ms")
    info(f"{n}-step p50: chain / chain, no step artifacts / plain + SqliteSaver / LangGraph alone", f"{p['A']:.1f} / {p['L']:.1f} / {p['P']:.1f} / {p['G']:.2f} ms")
    if not ok or a.profile:
        profile(f"L, WorkflowChain.execute of the {n}-step chain, step_artifacts=False", fns['L'], a.runs)
        if a.profile: profile(f"P, plain LangGraph + SqliteSaver", fns['P'], a.runs)
    conn.close()

# ---------------------------------------------------------------------------------------------------------------
# 2. Orchestrator routing overhead

class TimedGraph:
    "A compiled graph whose `stream` time is added up in `spent`: the workflow's own run inside process()"
    def __init__(self, graph): self.graph, self.spent = graph, 0.0
    def __getattr__(self, k): return getattr(self.graph, k)
    def stream(self, *args, **kw):
        pc = time.perf_counter
        t = pc(); it = iter(self.graph.stream(*args, **kw)); self.spent += pc() - t
        while True:
            t = pc()
            try: x = next(it)
            except StopIteration:
                self.spent += pc() - t
                return
            self.spent += pc() - t
            yield x

def heartbeat_workflow():
    "A trivial workflow the lexical router picks for 'heartbeat ping', its graph timed"
    from dataops_lab.workflows import BaseWorkflow, workflow
    @workflow(description='Answer a liveness heartbeat ping with pong', capabilities=['heartbeat', 'liveness ping'],
              example_queries=['ping the heartbeat', 'is the service alive? heartbeat check'], category='ops')
    def heartbeat(): return {'summary': 'pong'}
    class Heartbeat(BaseWorkflow):
        def get_metadata(self): return heartbeat.metadata
        def get_compiled_graph(self): return TimedGraph(heartbeat.graph)
    return Heartbeat()

def section_routing(a, sm):
    from routing_queries import QUERIES, DEV, HELD_OUT
    from dataops_lab.examples.workflows import default_registry
    from dataops_lab.orchestrator import Orchestrator, LexicalRouter
    reg = default_registry()
    orch = Orchestrator(reg, sm)
    orch.add_rule(lambda ctx: ctx.get('size', 0) > 1_000_000, 'schema_analyzer', name='large_table')
    orch.add_rule(lambda ctx: ctx.get('format') == 'jil', 'jil_parser', name='jil_upload')
    orch.add_rule(lambda ctx: str(ctx.get('sql', '')).lower().startswith('explain'), 'query_optimizer', name='explain_request')
    ctx = {'database': 'data/shop.db', 'size': 25_000}  # a session's global_context; no rule fires on it
    qs = [q for q, _ in DEV + HELD_OUT]  # paraphrases, typos, pasted SQL, out-of-scope turns: every path of the router
    t0 = time.perf_counter(); orch.route(qs[0], ctx); first = (time.perf_counter() - t0) * 1e3
    lex = orch.router
    words = LexicalRouter([w.metadata for w in reg], orch.threshold, semantic=False)  # the peer: the same router without sentence vectors
    words.route(qs[0])
    acc = sum(orch.route(q, ctx).workflow == want for q, want in QUERIES) / len(QUERIES)
    n = a.passes * len(qs)
    res = bench_sides([('route', lambda i: orch.route(qs[i % len(qs)], ctx)), ('lexical', lambda i: lex.route(qs[i % len(qs)])),
                       ('words', lambda i: words.route(qs[i % len(qs)]))], n, len(qs), batch=len(qs))
    print(f"\n== 2. Orchestrator routing overhead: default_registry() ({len(reg)} workflows), the {len(qs)} turns of the routing sets in tests/data ==")
    print(f"   {a.passes} passes over the queries ({n:,} calls per side), interleaved per pass; a session context {ctx} and 3 rules that do not fire on it, "
          f"so every call evaluates the rules and then the offline router (BM25{', plus sentence vectors: the [semantic] extra is on' if lex.semantic else '; the [semantic] extra is off or absent'})")
    print(f"   first call: {first:.2f} ms (builds the BM25 index over the workflows' metadata{' and embeds it, loading the embedding model if this process has not yet' if lex.semantic else ''}; "
          f"once per orchestrator, again when the registry changes); "
          f"routing accuracy on the {len(QUERIES)} queries of the first tuning set {acc:.1%} (tests/test_routing.py owns the held-out figures)")
    print(f"   {'side':62} {'p50 ms':>9} {TAIL[0] + ' ms':>9} {'mean ms':>9} {'max ms':>9}")
    print(f"   {'Orchestrator.route(query, context): 3 rules + offline intent':62} {fmt_stats(res['route'])}")
    print(f"   {'LexicalRouter.route(query) alone, as the orchestrator builds it':62} {fmt_stats(res['lexical'])}")
    print(f"   {'LexicalRouter(..., semantic=False).route(query): words only':62} {fmt_stats(res['words'])}")
    ok_route = judge_tail(f"routing overhead {TAIL[0]}: Orchestrator.route() (3 rules + offline router, {len(qs)} turns)", res['route'][TAIL[0]], ' ms', ROUTE_P99_MS, fmt='{:.3f}')
    info("routing p50: Orchestrator.route()", f"{res['route']['p50']:.3f} ms")

    # process(): the whole turn, minus the workflow's own run
    reg2 = default_registry(); hb = heartbeat_workflow(); reg2.register(hb)
    orch2 = Orchestrator(reg2, sm)
    q = 'heartbeat ping'
    r = orch2.route(q)
    if r.workflow != 'heartbeat': raise RuntimeError(f"{q!r} routed to {r.workflow!r} ({r.reason}), not to the trivial workflow")
    graph = hb.graph
    calls, per = a.calls, a.calls_per_session
    walls, own, tail = [], [], TailProbe(sm)
    sid = None
    def turn(i):
        out = orch2.process(sid, q)
        if out.kind != 'result' or out.reply != 'pong': raise RuntimeError(f"process({q!r}) gave {out.kind}: {out.reply}")
    def one(i, rec=True):
        nonlocal sid
        if sid is None or i % per == 0: sid = sm.create_session('bench_orch').session_id
        graph.spent = 0.0
        if not rec: return turn(i)
        walls.append(tail.call(turn, i)); own.append(graph.spent * 1e3)
    for i in range(10): one(i, rec=False)
    sid = None
    try:
        for i in range(calls): one(i)
    finally: tail.close()
    over = [w - o for w, o in zip(walls, own)]
    tail.rows = [(o, g, f) for o, (_, g, f) in zip(over, tail.rows)]  # judge the overhead's tail, not the workflow's
    print(f"\n   Orchestrator.process(session, {q!r}): routed to a trivial @workflow (returns {{'summary': 'pong'}}; lexical route, "
          f"confidence {r.confidence:.2f}); {calls} calls, a new session every {per} calls")
    print("   the workflow's own run = the time spent inside its compiled graph's stream() (a timing wrapper around the graph); "
          "overhead = process() − that")
    print(f"   {'':62} {'p50 ms':>9} {TAIL[0] + ' ms':>9} {'mean ms':>9} {'max ms':>9}")
    for lab, xs in (('process(), whole turn', walls), ("the workflow's own run (1-node LangGraph graph)", own), ('overhead: process() − workflow run', over)):
        print(f"   {lab:62} {fmt_stats(stats(xs))}")
    tail.report('the overhead (process() − workflow run)')
    ok_proc = pct(over, 99) < ROUTE_P99_MS
    print(f"   underneath one process() call: {anatomy(lambda i: orch2.process(sid, q), 3, top_statements=0 if ok_proc and not a.profile else 12)}")
    judge_tail(f"orchestrator overhead {TAIL[0]}: process() − workflow run (trivial workflow)", pct(over, int(TAIL[0][1:])), ' ms', ROUTE_P99_MS, fmt='{:.2f}')
    info("orchestrator overhead p50: process() − workflow run", f"{pct(over, 50):.2f} ms")
    if not ok_route or a.profile: profile(f"Orchestrator.route over the {len(qs)} routing turns", lambda i: orch.route(qs[i % len(qs)], ctx), len(qs), keys=ORCH_KEYS)
    if not ok_proc or a.profile:
        psid = sm.create_session('bench_orch_prof').session_id
        profile(f"Orchestrator.process(session, {q!r})", lambda i: orch2.process(psid, q), 50, keys=ORCH_KEYS)

# ---------------------------------------------------------------------------------------------------------------
# 3. Trivial chain runs per second on the embedded default

def thread_costs(a, sm):
    "One store_artifact on a thread that has used the store before vs on a new thread: wall time, and CPU time of the calling thread"
    from dataops_lab.models import ArtifactType
    sid = sm.create_session('bench_thread').session_id
    cpu = {'warm': [], 'new': []}
    def store(i): sm.artifacts.store_artifact({'x': i}, session_id=sid, workflow_name='probe', name='probe.s0',
                                              artifact_type=ArtifactType.INTERMEDIATE, created_by='s0')
    def timed(key):
        def f(i):
            c = time.thread_time(); store(i); cpu[key].append((time.thread_time() - c) * 1e3)
        return f
    def on_new_thread(f):
        def run(i):
            t = threading.Thread(target=f, args=(i,)); t.start(); t.join()
        return run
    res = bench_sides([('warm', timed('warm')), ('new', on_new_thread(timed('new'))), ('empty', on_new_thread(lambda i: None))], a.thread_calls, 10, batch=25)
    w, nw, e = (res[k]['p50'] for k in ('warm', 'new', 'empty'))
    cw, cn = statistics.median(cpu['warm']), statistics.median(cpu['new'])
    print(f"   one store_artifact of a small dict, p50 over {a.thread_calls} calls: {w:.2f} ms wall ({cw:.2f} ms CPU of its thread) on a thread that used "
          f"the store before; {nw - e:.2f} ms wall (start + join of an empty thread, {e:.2f} ms, taken off; {cn:.2f} ms CPU of its thread) on a new thread. "
          f"The wall figure on a new thread includes waiting to be scheduled, which a loaded machine inflates; the CPU figure is the call's own work. "
          f"A sequential chain's steps run on the calling thread (LangGraph runs a step with one task inline); its checkpoint writes ('sync') go to "
          f"the worker threads of a pool LangGraph starts per invoke, on the peer's side as on ours")
    info('store_artifact p50: warm thread / new thread (wall; CPU of the thread)', f"{w:.2f} / {nw - e:.2f} ms; {cw:.2f} / {cn:.2f} ms")

def section_rate(a, sm, tmp:Path):
    from dataops_lab.workflows import WorkflowRegistry
    from dataops_lab.chain import WorkflowChain
    n, inc, N = RATE_STEPS, make_inc(), a.chain_runs
    lg, conn, prag = sqlite_saver(tmp / 'rate.db')
    def mk(name, **kw):
        c = WorkflowChain(name, WorkflowRegistry(inc), sm, **kw)  # no checkpointer given: DataOpsSaver on the session storage
        for i in range(n): c.add_step('inc', name=f"s{i}")
        return c
    chain_sync, lean_sync, chain_auto = mk('trivial3s', durability='sync'), mk('trivial3l', durability='sync', step_artifacts=False), mk('trivial3')
    last, new_sid = {}, lambda: sm.create_session('bench_rate').session_id
    sides = [
        ('sync', f"WorkflowChain.execute, durability='sync' (a checkpoint per step), artifacts per step", chain_runner(chain_sync, new_sid(), last)),
        ('lean', "  the same with step_artifacts=False", chain_runner(lean_sync, new_sid(), {})),
        ('auto', f"  the chain's default durability {chain_auto.durability!r} (quick runs checkpoint at their end)", chain_runner(chain_auto, new_sid(), (auto := {}))),
        ('peer', f"plain LangGraph + SqliteSaver ({prag}), 'sync'", hand_runner(sm, hand_graph(sm, n, lg, store=False), new_sid(), n, store=False, durability='sync')),
        ('bare', "plain LangGraph, no checkpointer", hand_runner(sm, hand_graph(sm, n, None, store=False), new_sid(), n, store=False)),
    ]
    rounds = a.rate_rounds
    keys = [k for k, _, _ in sides]
    lat, wall, cpu, tail = {k: [] for k in keys}, dict.fromkeys(keys, 0.0), dict.fromkeys(keys, 0.0), TailProbe(sm)
    try:
        for key, label, fn in sides:
            check(label, fn, n)
            for i in range(5): fn(i)
        done = 0
        for r in range(rounds):  # every side runs a block of runs per round, the order rotating: drift hits all sides alike
            k = N // rounds + (1 if r < N % rounds else 0)
            for key, label, fn in sides[r % len(sides):] + sides[:r % len(sides)]:
                gc.collect()
                c0, t0 = time.process_time(), time.perf_counter()
                if key == 'sync':  # per run: GC pauses and WAL resets too (two 24-byte file reads per run, ~0.02 ms)
                    for i in range(done, done + k): lat[key].append(tail.call(fn, i))
                else:
                    for i in range(done, done + k):
                        t = time.perf_counter(); fn(i); lat[key].append((time.perf_counter() - t) * 1e3)
                wall[key] += time.perf_counter() - t0; cpu[key] += time.process_time() - c0
            done += k
    finally: tail.close()
    tn = tail_name(N)
    print(f"\n== 3. Trivial chain runs per second on the embedded default: a {n}-step chain, {N:,} runs per side one after another in one session ==")
    print(f"   target {RATE_TARGET:g} runs/s with a checkpoint per step (durability='sync'); the seed's 10,000 per hour is {RATE_SEED:.2f} runs/s. "
          f"The sides run in {rounds} rounds of blocks, the order rotating; runs/s = runs / the side's total wall time")
    print(f"   {'side':90} {'runs/s':>7} {'p50 ms':>9} {tn + ' ms':>9} {'mean ms':>9} {'max ms':>9} {'CPU ms/run':>10}")
    rows = {}
    for key, label, _ in sides:
        rows[key] = N / wall[key]
        print(f"   {label:90} {rows[key]:7.1f} {fmt_stats(stats(lat[key]), tn)} {cpu[key] / N * 1e3:10.2f}")
    tail.report(f"the chain runs, 'sync'")
    print(f"   durability the default ('auto') chose, over all its runs: {dict(auto.get('durability', {}))}")
    thread_costs(a, sm)
    print(f"   per chain run, 'sync': {dataops_items(chain_sync.checkpointer, last['tid'])}; {n} artifacts, 1 message")
    print(f"   underneath one chain run, 'sync': {anatomy(sides[0][2], 3)}")
    ok = judge(f"trivial {n}-step chain runs/s, a checkpoint per step ('sync'), embedded default", rows['sync'], '/s', RATE_TARGET, higher=True, seed=RATE_SEED, fmt='{:.1f}')
    info(f"{n}-step runs/s: 'sync' no step artifacts / 'auto' / plain LangGraph + SqliteSaver 'sync' / LangGraph alone",
         ' / '.join(f"{rows[k]:.0f}" for k in ('lean', 'auto', 'peer', 'bare')) + '/s')
    info(f"{n}-step chain 'sync': {N:,} runs took", f"{wall['sync']:.1f} s")
    if not ok or a.profile: profile(f"WorkflowChain.execute of the {n}-step chain, 'sync'", sides[0][2], 50)
    conn.close()

# ---------------------------------------------------------------------------------------------------------------

SECTIONS = {'saver': section_saver, 'chain': section_chain, 'routing': section_routing, 'rate': section_rate}

def main():
    p = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    p.add_argument('--quick', action='store_true', help='a smoke run: 100 saver calls, 30 runs per side, 5 passes, 100 process() calls, 100 chain runs (well under a minute)')
    p.add_argument('--saver-calls', type=int, default=None, help='timed calls per saver and operation (default 1000, quick 100)')
    p.add_argument('--runs', type=int, default=None, help='timed runs per side of the 10-step chain comparison (default 200, quick 30)')
    p.add_argument('--passes', type=int, default=None, help='passes over the 502 routing turns (default 30, quick 5)')
    p.add_argument('--calls', type=int, default=None, help='timed Orchestrator.process() calls (default 1000, quick 100)')
    p.add_argument('--chain-runs', type=int, default=None, help='runs per side of the 3-step chain for runs/s (default 1000, quick 100)')
    p.add_argument('--rate-rounds', type=int, default=None, help='rounds the runs/s sides are split into, the order rotating (default 10, quick 2)')
    p.add_argument('--sections', default='saver,chain,routing,rate', help='comma-separated: saver, chain, routing, rate')
    p.add_argument('--profile', action='store_true', help='cProfile every section (a missed target is always profiled)')
    a = p.parse_args()
    a.runs = a.runs or (30 if a.quick else 200)
    a.chain_warmup, a.chain_batch = (3, 5) if a.quick else (5, 10)
    a.passes = a.passes or (5 if a.quick else 30)
    a.calls = a.calls or (100 if a.quick else 1000)
    a.saver_calls = a.saver_calls or (100 if a.quick else 1000)
    a.rate_rounds = a.rate_rounds or (2 if a.quick else 10)
    a.calls_per_session = 50
    a.thread_calls = 50 if a.quick else 300
    a.chain_runs = a.chain_runs or (100 if a.quick else 1000)
    TAIL[0] = tail_name(min(a.calls, a.passes * 65))  # the routing section's tail: p99 from ≥ 1,000 samples
    if a.quick: PROFILE_RUNS[0] = 10
    wanted = [s.strip() for s in a.sections.split(',') if s.strip()]
    if bad := set(wanted) - set(SECTIONS): p.error(f"unknown section(s) {sorted(bad)}; use {', '.join(SECTIONS)}")
    logging.basicConfig(level=logging.WARNING, format='   [log] %(name)s: %(message)s')

    print(f"dataops-lab orchestration benchmark{' (quick)' if a.quick else ''}: savers x {a.saver_calls:,} calls; {N_STEPS}-step chain x {a.runs} runs per side; "
          f"routing {a.passes} passes over the routing turns, process() x {a.calls}; {RATE_STEPS}-step chain x {a.chain_runs:,} runs")
    print(versions())
    t_start = time.perf_counter()
    t0 = time.perf_counter()
    import dataops_lab.chain, dataops_lab.orchestrator, dataops_lab.examples.workflows  # noqa: F401  (import time shown once, not inside a figure)
    logging.getLogger('bm25s').setLevel(logging.WARNING)  # bm25s sets its logger to DEBUG on import: a line per index build
    tmp = Path(tempfile.mkdtemp(prefix='dataops-bench-orch-'))
    sm = None
    try:
        sm = open_embedded(tmp)
        print(f"storage: embedded default from a settings.ini holding just \"[storage]\" → "
              + ', '.join(f"{r} {u.replace(str(tmp) + '/', '<tmp>/')}" for r, u in sm.storage.urls.items())
              + f" (imports + open: {time.perf_counter() - t0:.1f} s)")
        for name in wanted:
            t0 = time.perf_counter()
            try:
                if name in ('saver', 'chain', 'rate'): SECTIONS[name](a, sm, tmp)
                else: SECTIONS[name](a, sm)
                print(f"   (section {name} took {time.perf_counter() - t0:.1f} s)")
            except Exception as e:
                import traceback
                skip(f"section {name}", f"failed: {type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"); FAILED.append(name)
                traceback.print_exc(limit=8)
    finally:
        if sm is not None:
            try: sm.close()
            except Exception as e: print(f"could not close the storage: {e}")
        shutil.rmtree(tmp, ignore_errors=True)

    print(f"\n== Summary ({time.perf_counter() - t_start:.0f} s; load average {' '.join(open('/proc/loadavg').read().split()[:3])} at end) ==")
    w = max([len(r[0]) for r in RESULTS] + [10])
    print(f"   {'measure':{w}}  {'figure':>24}  {'target':>24}  verdict")
    for measure, fig, target, ok, verdict in RESULTS:
        print(f"   {measure:{w}}  {fig:>24}  {target:>24}  {verdict}")
    missed = [r for r in RESULTS if r[3] is False]
    print(f"   {sum(r[3] is True for r in RESULTS)} target(s) met, {len(missed)} missed, {sum(r[4] == 'skipped' for r in RESULTS)} section(s) skipped")
    if FAILED: sys.exit(f"error: {len(FAILED)} section(s) failed: {', '.join(FAILED)} (tracebacks above)")

if __name__ == '__main__':
    main()
