"""Observability benchmark: what logging, metrics and tracing cost a trivial chain run.

    .venv/bin/python benchmarks/observability.py [--quick] [--runs 400] [--batch 20] [--baseline-ref REF]

Three sides, each a long-lived worker process running the same 3-step chain of trivial steps (x -> x + 1) on the
embedded default (a settings.ini holding just "[storage]"), with the chain's default durability, run after run in one
session; the parent asks each worker for a batch of runs in turn, rotating the order every round, so drift hits
every side alike:

- baseline:  the library as it was before observability (REF: by default the parent of the commit that added
             dataops_lab/observability.py, exported with `git archive`) — the peer with no instrumentation at all;
- off:       this checkout, default settings ([observability] traces = none: no tracer provider; metrics and the
             log pipeline as always);
- in-memory: this checkout with OpenTelemetry's in-memory span exporter installed (every span recorded).

Figures: per-run latency p50 / tail (p99; p95 in --quick) / mean in ms, and each side's p50 and mean over the
baseline's. A benchmark is not a test: nothing here asserts on timings; a worker that fails makes the script exit 1.
"""
from __future__ import annotations
import argparse, json, os, shutil, statistics, subprocess, sys, tempfile, time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / 'benchmarks'))
from managers import pct  # same percentile as the other benchmarks

WORKER = r'''
import json, os, sys, tempfile, time
from pathlib import Path
mode = sys.argv[1]
work = Path(tempfile.mkdtemp(prefix='obs-bench-'))
(work / 'settings.ini').write_text('[storage]\n')
os.environ['DATAOPS_SETTINGS'] = str(work / 'settings.ini')
from dataops_lab import SessionManager, WorkflowChain, WorkflowRegistry, workflow
exp = None
if mode == 'in-memory':
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
    from dataops_lab.observability import configure_tracing
    exp = InMemorySpanExporter(); configure_tracing(exporter=exp)
@workflow()
def inc(x: int = 0): return {'x': x + 1}
reg = WorkflowRegistry()
reg.register(inc)
sm = SessionManager()
sid = sm.create_session('bench').session_id
chain = WorkflowChain('trivial', registry=reg, session_manager=sm)
for i in range(3): chain.add_step('inc', name=f's{i}', depends_on=[f's{i-1}'] if i else None)
for _ in range(5): assert chain.execute(sid, {'x': 0}).final == {'x': 3}
spans = 0
print(json.dumps({'ready': True}), flush=True)
for line in sys.stdin:
    k = int(line)
    out = []
    for _ in range(k):
        t = time.perf_counter_ns(); r = chain.execute(sid, {'x': 0}); out.append((time.perf_counter_ns() - t) / 1e6)
        if r.status != 'completed': raise SystemExit(f'run failed: {r.error}')
    if exp is not None: spans = len(exp.get_finished_spans()) // k; exp.clear()
    print(json.dumps({'ms': out, 'spans_per_run': spans}), flush=True)
'''

def baseline_ref() -> str:
    added = subprocess.run(['git', 'log', '--diff-filter=A', '--format=%H', '--', 'dataops_lab/observability.py'], cwd=ROOT, capture_output=True, text=True, check=True).stdout.split()
    if not added: raise SystemExit('error: dataops_lab/observability.py is not in git history; pass --baseline-ref')
    return added[-1] + '^'

def start(mode: str, pythonpath: Path, tmp: Path) -> subprocess.Popen:
    env = {k: v for k, v in os.environ.items() if not k.startswith('DATAOPS_') and k != 'PROMETHEUS_MULTIPROC_DIR'}
    env['PYTHONPATH'] = str(pythonpath)
    return subprocess.Popen([sys.executable, '-c', WORKER, mode], cwd=tmp, env=env, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)

def ask(p: subprocess.Popen, k: int | None = None) -> dict:
    if k is not None: p.stdin.write(f'{k}\n'); p.stdin.flush()
    line = p.stdout.readline()
    if not line: raise RuntimeError(f'worker exited with {p.wait()}')
    return json.loads(line)

def main():
    ap = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    ap.add_argument('--quick', action='store_true', help='smoke run: 40 runs per side in batches of 10')
    ap.add_argument('--runs', type=int, default=None, help='timed runs per side (default 400; --quick 40)')
    ap.add_argument('--batch', type=int, default=None, help='runs per batch (default 20; --quick 10)')
    ap.add_argument('--baseline-ref', default=None, help='git ref of the library without observability (default: before observability.py was added)')
    a = ap.parse_args()
    runs, batch = a.runs or (40 if a.quick else 400), a.batch or (10 if a.quick else 20)
    tail = 'p95' if a.quick else 'p99'
    tmp = Path(tempfile.mkdtemp(prefix='obs-bench-'))
    procs = {}
    try:
        ref = a.baseline_ref or baseline_ref()
        base = tmp / 'code-baseline'; base.mkdir()
        arc = subprocess.run(['git', 'archive', ref, 'dataops_lab'], cwd=ROOT, capture_output=True, check=True).stdout
        subprocess.run(['tar', '-x', '-C', str(base)], input=arc, check=True)
        sha = subprocess.run(['git', 'rev-parse', '--short', ref], cwd=ROOT, capture_output=True, text=True, check=True).stdout.strip()
        print(f'observability overhead on a trivial 3-step chain run: {runs} runs per side, batches of {batch}; baseline = {ref} ({sha})', flush=True)
        for mode, path in (('baseline', base), ('off', ROOT), ('in-memory', ROOT)):
            (tmp / mode).mkdir(); procs[mode] = start(mode, path, tmp / mode)
        for p in procs.values(): ask(p)
        lat, spans, rnd = {m: [] for m in procs}, {}, 0
        order = list(procs)
        while len(lat['baseline']) < runs:
            k = min(batch, runs - len(lat['baseline']))
            for m in order[rnd % 3:] + order[:rnd % 3]:
                r = ask(procs[m], k); lat[m] += r['ms']; spans[m] = r['spans_per_run']
            rnd += 1
        b50, bmean = pct(lat['baseline'], 50), statistics.fmean(lat['baseline'])
        print(f"\n{'side':<11} {'p50 ms':>8} {tail + ' ms':>8} {'mean ms':>8} {'p50/base':>9} {'mean/base':>10} {'spans/run':>10}")
        for m, xs in lat.items():
            print(f"{m:<11} {pct(xs, 50):8.2f} {pct(xs, 95 if a.quick else 99):8.2f} {statistics.fmean(xs):8.2f} {pct(xs, 50)/b50:9.3f} {statistics.fmean(xs)/bmean:10.3f} {spans.get(m, 0):10d}")
        print(f"\noverhead with exporters off: {100*(pct(lat['off'], 50)/b50-1):+.1f}% at p50 (target < 5%); "
              f"with the in-memory exporter: {100*(pct(lat['in-memory'], 50)/b50-1):+.1f}%")
    except Exception as e:
        print(f'error: {type(e).__name__}: {e}', file=sys.stderr); sys.exit(1)
    finally:
        for p in procs.values():
            if p.poll() is None: p.stdin.close(); p.wait(30)
        shutil.rmtree(tmp, ignore_errors=True)

if __name__ == '__main__': main()
