"""Observability benchmark: what logging, metrics and tracing cost a trivial chain run and `GET /sessions/{id}`.

    .venv/bin/python benchmarks/observability.py [--quick] [--runs 1000] [--batch 20] [--workers 8] [--section all|chain|api|instr]

The chain section: five long-lived worker processes of this checkout, each running the same 3-step chain of trivial
steps (x -> x + 1) on the embedded default (a settings.ini holding just "[storage]"), with the chain's default
durability, run after run in one session. Every worker times both sides itself, switching its observability out and
back in between batches, so what differs between processes (memory layout, imports, the allocator, a hash seed) is the
same for both sides of a ratio:

- none: the observability taken out in the worker: the chain's hooks (`observe_workflow` — the step span, the two
        workflow metrics and the step's `workflow_finished` line —, `iter_in_span`, the `execute_tool` span, the bound
        log context, the step-duration histogram, the run's `chain_finished` line) replaced by no-ops, the step graph's
        span callbacks off, and every storage backend method unwrapped (latency histogram, hit/miss and byte counters,
        spans) — the peer with no instrumentation at all, otherwise the same code and the same process (an older commit
        as the peer would also count every other change since);
- obs:  as shipped. The workers differ in what "as shipped" is set up as:
  - off-1 … off-8: default settings ([observability] traces = none: no tracer provider; metrics and the log
    pipeline as always; logging not configured, as in a notebook or script: INFO lines are dropped);
  - logs: as off, with `[logging]` applied as the CLI, the API server and batch workers do at start-up
    (`configure_logging` with the defaults: INFO, text), its lines going to a file instead of the terminal;
  - in-memory: OpenTelemetry's in-memory span exporter installed (every span recorded).

The parent asks the workers in a rotating order for a batch of each side, alternating which side goes first; a batch
checks that the switch took (step runs and storage calls counted, spans recorded, log lines written on the `obs`
side only). Figures per worker: p50 / tail (p99; p95 in --quick) of each side in ms, the ratios obs / none at p50,
tail and mean, and the process's CPU time per run (all threads; what load from other processes inflates least).
The exporters-off verdict: the median of the off workers' p50 ratios with their spread, the ratio of all their runs
pooled, and the median of the per-round ratios of neighbouring batches (drift between rounds cancels). Eight off
workers by default: one process's ratio moves by several points either way with what differs between processes
(on an idle machine three workers gave a median of +7.5% with a spread of -0.7% to +8.7%, where eight gave +2.8% and
+3.8% in two runs, their pooled, paired and CPU figures agreeing within a point), so the median needs that many.

Section `api`: `GET /sessions/{id}` on two real uvicorn servers (one worker each, the embedded default in a folder
of their own, the same settings): `off` (traces = none) and `in-memory` (OpenTelemetry's in-memory span exporter
installed before the app is built: the request span and every storage span recorded). One client per server, one
keep-alive connection, requests back to back, in batches that alternate which server goes first; the figures are
the latency the client saw (send to last byte), p50 / p99 / mean and in-memory over off.

Section `instr`: the storage instrumentation (latency histogram, hit/miss and byte counters, nested-call guard)
on vs off, exporters off on both sides. Two long-lived worker processes of this checkout on the embedded default:
`on` as shipped, `off` with the storage layer's `_instrument` replaced before any backend exists, so no backend
method is wrapped — the same library minus the wrapper (the same start as the chain's workers). Each worker times three operations: a small get and a small
put (~60-byte item) on the SQLite cold tier (`dataops_sessions`), and the trivial 3-step chain run; the parent asks
the two workers in turn for a batch of each operation, alternating which goes first every round. The `api` section
also runs a third server, `uninstrumented` (the same `_instrument` replacement), beside `off` and `in-memory`.

A benchmark is not a test: nothing here asserts on timings; a worker that fails makes the script exit 1.
"""
from __future__ import annotations
import argparse, json, os, platform, shutil, statistics, subprocess, sys, tempfile, time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / 'benchmarks'))
from managers import pct  # same percentile as the other benchmarks

# The start of both chain workers: the embedded default (a settings.ini holding just "[storage]") in a folder of its
# own, and the trivial 3-step chain (x -> x + 1) run in one session. With argv[2] == 'bare' the storage layer's
# `_instrument` is replaced before any backend exists, so no backend method is wrapped: the library minus the storage
# instrumentation.
_PREAMBLE = r'''
import json, os, sys, tempfile, time
from pathlib import Path
mode = sys.argv[1]
if sys.argv[2] == 'bare':
    import dataops_lab.store.base as _base
    _base._instrument = lambda cls: setattr(cls, '_instrumented', True)
work = Path(tempfile.mkdtemp(prefix='obs-bench-'))
(work / 'settings.ini').write_text('[storage]\n')
os.environ['DATAOPS_SETTINGS'] = str(work / 'settings.ini')
from dataops_lab import SessionManager, WorkflowChain, WorkflowRegistry, workflow
@workflow()
def inc(x: int = 0): return {'x': x + 1}
reg = WorkflowRegistry()
reg.register(inc)
sm = SessionManager()
sid = sm.create_session('bench').session_id
chain = WorkflowChain('trivial', registry=reg, session_manager=sm)
for i in range(3): chain.add_step('inc', name=f's{i}', depends_on=[f's{i-1}'] if i else None)
'''

TOGGLE_WORKER = _PREAMBLE + r'''
# one worker measures both sides: batches with the observability taken out ('none') and batches with it in ('obs'),
# switched in this process between batches, so whatever differs between processes (memory layout, imports, the
# allocator's state) is the same for both sides
import contextlib
import dataops_lab.chain as _ch, dataops_lab.workflows as _wf
from dataops_lab.store.base import Backend
from dataops_lab.observability import storage_duration
from prometheus_client import REGISTRY
exp = None
if mode == 'in-memory':
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
    from dataops_lab.observability import configure_tracing
    exp = InMemorySpanExporter(); configure_tracing(exporter=exp)
if mode == 'logs':  # what the CLI and the API server do at start-up: [logging] applied (defaults: INFO, text), lines to a file, not the terminal
    from dataops_lab.observability import configure_logging
    configure_logging(stream=open(work / 'stderr.log', 'w', buffering=1))
for _ in range(5): assert chain.execute(sid, {'x': 0}).final == {'x': 3}  # every backend the run uses exists: its methods are wrapped
class _NoMetric:
    def labels(self, *a, **k): return self
    def observe(self, v): pass
    def inc(self, v=1): pass
class _NoTracer:
    def start_as_current_span(self, *a, **k): return contextlib.nullcontext()
class _NoLogger:
    def info(self, *a, **k): pass
    debug = info
# 'none': the chain's hooks (observe_workflow: step span, workflow metrics, workflow_finished line; iter_in_span; the
# execute_tool span; the bound log context; the step histogram; chain_finished), the step graph's span callbacks and
# every storage wrapper (latency histogram, hit/miss and byte counters, spans) taken out
NO = {'observe_workflow': lambda *a, **k: contextlib.nullcontext(), 'iter_in_span': lambda it, *a, **k: it, 'bound': lambda **k: contextlib.nullcontext(),
      'agent_attrs': lambda *a, **k: None, 'tracer': _NoTracer(), 'chain_step_duration': _NoMetric(), 'chain_step_failures': _NoMetric(), 'logger': _NoLogger(),
      'observer': lambda child: (lambda v: None), '_would_log': lambda level: False}
NO = {k: v for k, v in NO.items() if hasattr(_ch, k)}  # an older checkout may lack a hook
ON = {k: getattr(_ch, k) for k in NO}
CB = _wf.node_callbacks
wrapped, seen, todo = [], set(), [Backend]
while todo:
    c = todo.pop(); todo += c.__subclasses__()
    for b in c.__mro__:
        if b in seen: continue
        seen.add(b)
        wrapped += [(b, k, f) for k, f in list(vars(b).items()) if getattr(f, '__dataops_instrumented__', False)]
assert wrapped, 'no storage method is wrapped: nothing to take out'
def switch(on):
    for k, v in (ON if on else NO).items(): setattr(_ch, k, v)
    _wf.node_callbacks = CB if on else (lambda: [])
    for b, k, f in wrapped: setattr(b, k, f if on else f.__wrapped__)
    chain._graph = graphs[on]
graphs = {}
for on in (False, True):  # the step histogram's child is looked up when the chain compiles: a graph per side
    chain._graph = None; graphs[on] = None; switch(on); graphs[on] = chain.compile()
def counted():
    inv = REGISTRY.get_sample_value('dataops_workflow_invocations_total', {'workflow': 'inc', 'status': 'success'}) or 0
    return inv, sum(s.value for m in storage_duration.collect() for s in m.samples if s.name.endswith('_count'))
for on in (False, True):
    switch(on)
    for _ in range(5): assert chain.execute(sid, {'x': 0}).final == {'x': 3}
if exp is not None: exp.clear()
print(json.dumps({'ready': True, 'wrapped': len(wrapped)}), flush=True)
for line in sys.stdin:
    side, k = line.split(); k = int(k); on = side == 'obs'
    switch(on)
    before, out, cpu, size = counted(), [], [], os.path.getsize(work / 'stderr.log') if mode == 'logs' else 0
    for _ in range(k):
        c = time.process_time_ns(); t = time.perf_counter_ns(); r = chain.execute(sid, {'x': 0})
        out.append((time.perf_counter_ns() - t) / 1e6); cpu.append((time.process_time_ns() - c) / 1e6)
        if r.status != 'completed': raise SystemExit(f'run failed: {r.error}')
    after = counted()
    spans = len(exp.get_finished_spans()) if exp is not None else 0
    if exp is not None: exp.clear()
    # the switch took: step runs and storage calls counted (and spans recorded) on the observed side only
    grew = mode == 'logs' and os.path.getsize(work / 'stderr.log') > size
    if on != (after[0] - before[0] == 3 * k) or on != (after[1] > before[1]) or (not on and spans) or (mode == 'logs' and grew != on):
        raise SystemExit(f'the observability switch did not take: side {side}, {after[0] - before[0]} step runs and {after[1] - before[1]} storage calls counted, {spans} spans in {k} runs')
    print(json.dumps({'ms': out, 'cpu': cpu, 'spans_per_run': spans // k}), flush=True)
'''

INSTR_WORKER = _PREAMBLE + r'''
from dataops_lab.store.base import SESSIONS_TABLE
table = sm.storage.table(SESSIONS_TABLE)
assert hasattr(type(table).get, '__wrapped__') == (mode == 'on'), 'instrumentation switch did not take'
item = {'session_id': 'bench-item', 'user_id': 'bench', 'created_at': '2026-01-01T00:00:00Z', 'n': 0}
table.put(item)
def run_chain():
    r = chain.execute(sid, {'x': 0})
    if r.status != 'completed': raise SystemExit(f'run failed: {r.error}')
ops = {'get': lambda: table.get('bench-item'), 'put': lambda: table.put(item), 'chain': run_chain}
for f in ops.values():
    for _ in range(5): f()
print(json.dumps({'ready': True}), flush=True)
for line in sys.stdin:
    op, k = line.split(); f = ops[op]
    out = []
    for _ in range(int(k)):
        t = time.perf_counter_ns(); f(); out.append((time.perf_counter_ns() - t) / 1e3)
    print(json.dumps({'us': out}), flush=True)
'''

KINDS = ('off', 'logs', 'in-memory')

INSTR_OPS = {'get': 'SQLite get (cold tier, ~60-byte item)', 'put': 'SQLite put (same item)', 'chain': 'trivial 3-step chain run'}

def instr_section(runs: int, batch: int, tail: str, tmp: Path) -> None:
    "Storage instrumentation on vs off (exporters off): SQLite get/put and a trivial chain run, two workers, interleaved"
    procs = {}
    mult = {'get': 10, 'put': 2, 'chain': 1}  # more samples of the fast operations, for the same wall time
    try:
        for mode in ('off', 'on'):
            (tmp / f'instr-{mode}').mkdir(); procs[mode] = start(mode, ROOT, tmp / f'instr-{mode}', INSTR_WORKER, bare=mode == 'off')
        for p in procs.values(): ask(p)
        lat = {op: {m: [] for m in procs} for op in INSTR_OPS}
        order, rnd = list(procs), 0
        while len(lat['chain']['off']) < runs:
            k = min(batch, runs - len(lat['chain']['off']))
            for op in INSTR_OPS:
                for m in (order if rnd % 2 == 0 else order[::-1]):
                    procs[m].stdin.write(f'{op} {k * mult[op]}\n'); procs[m].stdin.flush()
                    lat[op][m] += ask(procs[m])['us']
            rnd += 1
        q = 95 if tail == 'p95' else 99
        print(f"\nstorage instrumentation on vs off (exporters off), interleaved: {runs} chain runs per side, x{mult['get']} gets, x{mult['put']} puts; batches of {batch}")
        print(f"{'operation':<38} {'side':<4} {'n':>6} {'p50 us':>9} {'p95 us':>9} {tail + ' us':>9} {'p50 on/off':>11} {tail + ' on/off':>11}")
        for op, name in INSTR_OPS.items():
            off = lat[op]['off']
            for m in ('off', 'on'):
                xs = lat[op][m]
                print(f"{name:<38} {m:<4} {len(xs):6d} {pct(xs, 50):9.1f} {pct(xs, 95):9.1f} {pct(xs, q):9.1f} {pct(xs, 50)/pct(off, 50):11.3f} {pct(xs, q)/pct(off, q):11.3f}")
        print('\n' + '; '.join(f"{op}: {100*(pct(lat[op]['on'], 50)/pct(lat[op]['off'], 50)-1):+.1f}% at p50" for op in INSTR_OPS)
              + ' (instrumentation on over off; target < 5% with exporters off)')
        for p in procs.values(): p.stdin.close(); p.wait(30)
    finally:
        for p in procs.values():
            if p.poll() is None: p.stdin.close(); p.wait(30)

def chain_section(runs: int, batch: int, tail: str, tmp: Path, n_off: int, procs: dict) -> None:
    "The trivial chain run with the observability out ('none') and in, each worker measuring both sides in-process"
    q = 95 if tail == 'p95' else 99
    names = [f'off-{i + 1}' for i in range(n_off)] + ['logs', 'in-memory']
    print(f'observability overhead on a trivial 3-step chain run: {len(names)} workers ({n_off} with exporters off), each timing {runs} runs with '
          f'the observability taken out (none) and {runs} with it in, switched in-process between batches of {batch}', flush=True)
    for n in names:
        (tmp / n).mkdir(); procs[n] = start(n.split('-')[0] if n.startswith('off') else n, ROOT, tmp / n, TOGGLE_WORKER)
    for p in procs.values(): ask(p)
    lat = {n: {'none': [], 'obs': []} for n in names}
    cpu = {n: {'none': [], 'obs': []} for n in names}  # the process's CPU time per run (every thread): what load from other processes inflates least
    paired = {n: [] for n in names}  # per round: p50 of the obs batch over p50 of the none batch next to it (drift between rounds cancels)
    spans, rnd = {}, 0
    while len(lat[names[0]]['none']) < runs:
        k = min(batch, runs - len(lat[names[0]]['none']))
        for n in names[rnd % len(names):] + names[:rnd % len(names)]:  # the workers in a rotating order; each alternates which side goes first
            got = {}
            for side in (('none', 'obs') if (rnd + names.index(n)) % 2 == 0 else ('obs', 'none')):
                procs[n].stdin.write(f'{side} {k}\n'); procs[n].stdin.flush()
                r = ask(procs[n]); lat[n][side] += r['ms']; cpu[n][side] += r['cpu']; got[side] = r['ms']
                if side == 'obs': spans[n] = r['spans_per_run']
            paired[n].append(statistics.median(got['obs']) / statistics.median(got['none']))
        rnd += 1
    print(f"\n{'worker':<10} {'none p50':>9} {'obs p50':>8} {'none ' + tail:>9} {'obs ' + tail:>8} {'p50 obs/none':>13} {tail + ' obs/none':>13} {'mean obs/none':>14} {'CPU p50 none':>13} {'CPU p50 obs/none':>17} {'spans/run':>10}")
    ratio = {}
    for n in names:
        x, y = lat[n]['none'], lat[n]['obs']
        ratio[n] = pct(y, 50) / pct(x, 50)
        print(f"{n:<10} {pct(x, 50):9.2f} {pct(y, 50):8.2f} {pct(x, q):9.2f} {pct(y, q):8.2f} {ratio[n]:13.3f} {pct(y, q)/pct(x, q):13.3f} "
              f"{statistics.fmean(y)/statistics.fmean(x):14.3f} {pct(cpu[n]['none'], 50):13.2f} {pct(cpu[n]['obs'], 50)/pct(cpu[n]['none'], 50):17.3f} {spans.get(n, 0):10d}")
    offs = [ratio[n] for n in names if n.startswith('off')]
    cpuoffs = [pct(cpu[n]['obs'], 50)/pct(cpu[n]['none'], 50) for n in names if n.startswith('off')]
    xs = [v for n in names if n.startswith('off') for v in lat[n]['none']]; ys = [v for n in names if n.startswith('off') for v in lat[n]['obs']]
    pr = sorted(v for n in names if n.startswith('off') for v in paired[n])
    print(f"\noverhead with exporters off (target < 5%): {100*(statistics.median(offs)-1):+.1f}% at p50, the median of {len(offs)} workers "
          f"(spread {100*(min(offs)-1):+.1f}% to {100*(max(offs)-1):+.1f}%); all their runs pooled: {100*(pct(ys, 50)/pct(xs, 50)-1):+.1f}% at p50, "
          f"{100*(pct(ys, q)/pct(xs, q)-1):+.1f}% at {tail}; paired batches (p50 of a batch over its neighbour's, {len(pr)} pairs): median {100*(statistics.median(pr)-1):+.1f}% "
          f"(quartiles {100*(pct(pr, 25)-1):+.1f}% to {100*(pct(pr, 75)-1):+.1f}%); CPU time per run {100*(statistics.median(cpuoffs)-1):+.1f}% at p50 (median of the workers); with [logging] applied as the CLI and API do: {100*(ratio['logs']-1):+.1f}%; "
          f"with the in-memory exporter: {100*(ratio['in-memory']-1):+.1f}%", flush=True)
    if batch > 5:  # a worker waits while the others run their batches: the first runs of a batch start with cold caches
        part = lambda side, first: [v for n in names if n.startswith('off') for i, v in enumerate(lat[n][side]) if (i % batch < 5) == first]
        print(f"exporters off, the first 5 runs of each batch (caches cold after the other workers' batches): {100*(pct(part('obs', True), 50)/pct(part('none', True), 50)-1):+.1f}% at p50; "
              f"the runs after them: {100*(pct(part('obs', False), 50)/pct(part('none', False), 50)-1):+.1f}%", flush=True)
    for n in names: procs[n].stdin.close(); procs[n].wait(30)

def start(mode: str, pythonpath: Path, tmp: Path, code: str = TOGGLE_WORKER, bare: bool = False) -> subprocess.Popen:
    "A worker of `code` in `mode`; `bare`: no storage backend method wrapped"
    env = {k: v for k, v in os.environ.items() if not k.startswith('DATAOPS_') and k != 'PROMETHEUS_MULTIPROC_DIR'}
    env['PYTHONPATH'] = str(pythonpath)
    env['PYTHONHASHSEED'] = '0'  # every worker hashes strings alike: one less difference between the processes of the sides
    return subprocess.Popen([sys.executable, '-c', code, mode, 'bare' if bare else 'wrapped'], cwd=tmp, env=env, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)

def ask(p: subprocess.Popen, k: int | None = None) -> dict:
    if k is not None: p.stdin.write(f'{k}\n'); p.stdin.flush()
    line = p.stdout.readline()
    if not line: raise RuntimeError(f'worker exited with {p.wait()}')
    return json.loads(line)

_API_SERVER = r'''
import sys, uvicorn
mode = sys.argv[3]
if mode == 'uninstrumented':  # no storage backend method wrapped
    import dataops_lab.store.base as _base
    _base._instrument = lambda cls: setattr(cls, '_instrumented', True)
if mode == 'in-memory':
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
    from dataops_lab.observability import configure_tracing
    configure_tracing(exporter=InMemorySpanExporter())
from dataops_lab.api.server import create_app
uvicorn.run(create_app(sys.argv[1], dashboard=False), host='127.0.0.1', port=int(sys.argv[2]), log_level='warning')
'''

def api_section(runs: int, batch: int, tail: str, tmp: Path) -> None:
    "GET /sessions/{id}: tracing off vs the in-memory exporter, on two uvicorn servers, interleaved"
    import httpx
    sys.path.insert(0, str(ROOT / 'tests'))
    from servers import free_port, wait_for
    env = {k: v for k, v in os.environ.items() if not k.startswith('DATAOPS_') and k != 'PROMETHEUS_MULTIPROC_DIR'}
    env['DATAOPS_API__JWT_SECRET'] = 'bench-signing-key-' + 'x' * 40
    procs, clients, sids = {}, {}, {}
    try:
        for mode in ('uninstrumented', 'off', 'in-memory'):
            d = tmp / f'api-{mode}'; d.mkdir()
            (d / 'settings.ini').write_text('[storage]\n[api]\nrate_limit = 1000000/minute\ndashboard = false\n')
            subprocess.run([sys.executable, '-c', 'import sys; from dataops_lab.config import load_settings; from dataops_lab.store.base import Storage; '
                            'from dataops_lab.api.users import UserStore, USER_TABLES; st = Storage(load_settings(sys.argv[1])).ensure(USER_TABLES); '
                            'UserStore(st).add_user("bench", "developer", "correct horse battery"); st.close()', str(d / 'settings.ini')], env=env, check=True, cwd=d)
            port = free_port()
            procs[mode] = subprocess.Popen([sys.executable, '-c', _API_SERVER, str(d / 'settings.ini'), str(port), mode], env=env, cwd=d,
                                           stdout=open(d / 'server.log', 'wb'), stderr=subprocess.STDOUT)
            url = f'http://127.0.0.1:{port}'
            def up(p=procs[mode], url=url):
                if p.poll() is not None: raise RuntimeError(f'the {mode} API server exited with {p.returncode}: {(d / "server.log").read_text()[-2000:]}')
                try: return httpx.get(f'{url}/health', timeout=0.5).status_code == 200
                except httpx.HTTPError: return False
            wait_for(up, 120, f'the {mode} API server')
            c = clients[mode] = httpx.Client(base_url=url, timeout=60, limits=httpx.Limits(max_connections=1, keepalive_expiry=2.0))
            tok = c.post('/auth/token', json={'username': 'bench', 'password': 'correct horse battery'}).raise_for_status().json()['access_token']
            c.headers['Authorization'] = f'Bearer {tok}'
            sids[mode] = c.post('/sessions', json={}).raise_for_status().json()['session_id']
            for _ in range(20): c.get(f'/sessions/{sids[mode]}').raise_for_status()  # warm up
        lat, order, rnd = {m: [] for m in clients}, list(clients), 0
        while len(lat['off']) < runs:
            k = min(batch, runs - len(lat['off']))
            for m in order[rnd % 3:] + order[:rnd % 3]:
                c, path = clients[m], f'/sessions/{sids[m]}'
                for _ in range(k):
                    t = time.perf_counter_ns(); r = c.get(path); lat[m].append((time.perf_counter_ns() - t) / 1e6)
                    if r.status_code != 200: raise RuntimeError(f'{m}: GET {path} answered {r.status_code} {r.text[:200]}')
            rnd += 1
        o50, omean = pct(lat['off'], 50), statistics.fmean(lat['off'])
        u50, uq = pct(lat['uninstrumented'], 50), pct(lat['uninstrumented'], 95 if tail == 'p95' else 99)
        print(f"\nGET /sessions/{{id}} over HTTP, storage uninstrumented vs tracing off vs on: {runs} requests per side, batches of {batch}, one client per server")
        print(f"{'side':<15} {'p50 ms':>8} {'p95 ms':>8} {tail + ' ms':>8} {'mean ms':>8} {'p50/off':>8} {'mean/off':>9} {'p50/uninstr':>12} {tail + '/uninstr':>12}")
        for m, xs in lat.items():
            print(f"{m:<15} {pct(xs, 50):8.2f} {pct(xs, 95):8.2f} {pct(xs, 95 if tail == 'p95' else 99):8.2f} {statistics.fmean(xs):8.2f} {pct(xs, 50)/o50:8.3f} {statistics.fmean(xs)/omean:9.3f} "
                  f"{pct(xs, 50)/u50:12.3f} {pct(xs, 95 if tail == 'p95' else 99)/uq:12.3f}")
        print(f"\nstorage instrumentation (exporters off) costs GET /sessions/{{id}} {100*(o50/u50-1):+.1f}% at p50 (target < 5%)")
        print(f"\ntracing on (in-memory exporter) costs GET /sessions/{{id}} {100*(pct(lat['in-memory'], 50)/o50-1):+.1f}% at p50, "
              f"{100*(pct(lat['in-memory'], 95 if tail == 'p95' else 99)/pct(lat['off'], 95 if tail == 'p95' else 99)-1):+.1f}% at {tail}")
    finally:
        for c in clients.values(): c.close()
        for p in procs.values():
            if p.poll() is None:
                p.terminate()
                try: p.wait(15)
                except subprocess.TimeoutExpired: p.kill(); p.wait()

def load_average() -> str: return ' '.join(f"{v:.2f}" for v in os.getloadavg())

def machine() -> str:
    "CPU, core count, Python and the commit measured (with '+changes' when the checkout has uncommitted changes)"
    git = lambda *a: subprocess.run(['git', *a], cwd=ROOT, capture_output=True, text=True).stdout.strip()
    cpu = next((l.split(':', 1)[1].strip() for l in open('/proc/cpuinfo') if l.startswith('model name')), platform.machine()) if os.path.exists('/proc/cpuinfo') else platform.machine()
    return f"{cpu}, {os.cpu_count()} CPUs, Python {platform.python_version()}, commit {git('rev-parse', '--short', 'HEAD') or '?'}{'+changes' if git('status', '--porcelain', '--untracked-files=no') else ''}"

def main():
    ap = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    ap.add_argument('--quick', action='store_true', help='smoke run: 40 runs per side in batches of 10')
    ap.add_argument('--runs', type=int, default=None, help='timed runs per side (chain: per side of each worker; default 1000; --quick 40)')
    ap.add_argument('--batch', type=int, default=None, help='runs per batch (default 20; --quick 10)')
    ap.add_argument('--workers', type=int, default=None, help='worker processes measuring exporters off in the chain section (default 8; --quick 2)')
    ap.add_argument('--section', choices=('all', 'chain', 'api', 'instr'), default='all', help='the chain run, GET /sessions/{id} over HTTP, storage instrumentation on vs off, or all (default)')
    a = ap.parse_args()
    runs, batch = a.runs or (40 if a.quick else 1000), a.batch or (10 if a.quick else 20)
    tail = 'p95' if a.quick else 'p99'
    tmp = Path(tempfile.mkdtemp(prefix='obs-bench-'))
    procs = {}
    print(f'{machine()}; load average {load_average()} at start', flush=True)
    try:
        if a.section == 'api':
            api_section(runs, batch, tail, tmp); return
        if a.section == 'instr':
            instr_section(runs, batch, tail, tmp); return
        chain_section(runs, batch, tail, tmp, a.workers or (2 if a.quick else 8), procs)
        if a.section == 'all': api_section(runs, batch, tail, tmp); instr_section(runs, batch, tail, tmp)
    except Exception as e:
        print(f'error: {type(e).__name__}: {e}', file=sys.stderr); sys.exit(1)
    finally:
        for p in procs.values():
            if p.poll() is None: p.stdin.close(); p.wait(30)
        shutil.rmtree(tmp, ignore_errors=True)
        print(f'\nload average {load_average()} at end', flush=True)

if __name__ == '__main__': main()
