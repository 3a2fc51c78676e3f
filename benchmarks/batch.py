"""Batch benchmark: run_batch on a local Dask cluster (start-up included) vs the same notebooks run one after another,
in this process and by the papermill CLI; and the per-run overhead of run_notebook over a bare papermill.execute_notebook.

    .venv/bin/python benchmarks/batch.py [--quick] [--runs 12] [--rounds 3] [--workers 2] [--overhead-runs 10]

The notebook is a shipped template doing real work: dataops_lab/templates/sql_questions.ipynb (per run, the
sql_generator → query_optimizer chain answers a question about the bundled shop.db sample, checkpointed and stored
as artifacts in the run's session). Run i asks question i of a fixed list of twelve (at most 12 runs: run_batch refuses
two runs with the same parameters, as the same run twice), so every side runs the same `--runs` parameter sets. Each round runs every side once, the order rotating from round to round:

- batch: `connect(None, workers)` (a fresh LocalCluster) + `run_batch(..., client=client, resume=False)` + closing
  the cluster: the headline time includes the cluster's start-up and shut-down (start-up also shown on its own);
- sequential, in process: `papermill.execute_notebook` for each run, one after another, in this process (a new
  kernel per run, as papermill does);
- sequential, CLI: `papermill in.ipynb out.ipynb -y <params>` subprocesses, one after another.

Every side writes to the same kind of storage (embedded, its own folder per side and round, given as
dataops_settings; run_batch injects its own). Figures are medians over the rounds; the ratio is a sequential
side's median ÷ the batch's median (target ≥ 1.7x on 2 cores, start-up included).

Overhead: `--overhead-runs` pairs in this process, alternating which goes first, `run_notebook` (validation,
session, kernel check, papermill, reading records, storing the notebook and records as artifacts) vs
`papermill.execute_notebook` of the same notebook and parameters; medians; target < 10%.

A run that fails fails the script. A benchmark is not a test: nothing here asserts on timings. The machine is
shared: the load average is printed before and after.
"""
from __future__ import annotations
import argparse, json, os, statistics, subprocess, sys, tempfile, time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / 'benchmarks'))
for _k in [k for k in os.environ if k.startswith('DATAOPS_')]: os.environ.pop(_k)  # only the settings written here count

import papermill as pm
import dataops_lab
from dataops_lab.runner import run_notebook
from dataops_lab.batch import run_batch, connect

BIN = Path(sys.executable).parent
TEMPLATE = Path(dataops_lab.__file__).parent / 'templates' / 'sql_questions.ipynb'
QUESTIONS = ['how many orders are there?', 'top 5 customers by revenue', 'how many customers are there?', 'total revenue by month',
             'how many products are there?', 'top 3 products by quantity sold', 'average order value', 'orders per customer',
             'how many order items are there?', 'top 5 products by revenue', 'how many orders per month?', 'how many customers per country?']
RATIO_TARGET, OVERHEAD_TARGET = 1.7, 0.10

def load(): return ' '.join(f"{v:.2f}" for v in os.getloadavg())

def params(i:int) -> dict: return {'questions': [QUESTIONS[i % len(QUESTIONS)]]}  # a batch's runs: i < 12, so no two alike

def settings_ini(d:Path) -> Path:
    d.mkdir(parents=True, exist_ok=True)
    (d / 'settings.ini').write_text(f"[storage]\nhot = sqlite:///{d}/cache.db\ncold = sqlite:///{d}/meta.db\nblob = file://{d}/blobs\n[batch]\noutput_dir = {d}/runs\n")
    return d / 'settings.ini'

def side_batch(d:Path, runs:int, workers:int) -> dict:
    ini = settings_ini(d)
    t0 = time.perf_counter()
    client, cluster = connect(None, workers, 1)
    t_up = time.perf_counter() - t0
    try: res = run_batch(TEMPLATE, [params(i) for i in range(runs)], settings=ini, progress=False, client=client, resume=False)
    finally: client.close(); cluster.close()
    total = time.perf_counter() - t0
    if not res.ok: raise RuntimeError(f"the batch did not succeed: {res.counts}; errors: {sorted(set(res.runs.error.dropna()))[:3]}")
    return {'s': total, 'startup': t_up}

def check_output(path:Path):
    "The executed notebook answered its question (n_answered recorded as 1): the run did real work"
    nb = json.loads(path.read_text())
    if any(o.get('output_type') == 'error' for c in nb['cells'] for o in c.get('outputs', [])): raise RuntimeError(f"{path} has an error output")

def side_inproc(d:Path, runs:int) -> dict:
    ini = settings_ini(d)
    t0 = time.perf_counter()
    for i in range(runs):
        out = d / f"out{i}.ipynb"
        pm.execute_notebook(str(TEMPLATE), str(out), parameters={**params(i), 'dataops_settings': str(ini)}, kernel_name='python3', progress_bar=False, cwd=str(d))
    total = time.perf_counter() - t0
    for i in range(runs): check_output(d / f"out{i}.ipynb")
    return {'s': total}

def side_cli(d:Path, runs:int) -> dict:
    ini = settings_ini(d)
    t0 = time.perf_counter()
    for i in range(runs):
        subprocess.run([str(BIN / 'papermill'), '--no-progress-bar', '--log-level', 'WARNING', '-k', 'python3', str(TEMPLATE), str(d / f"out{i}.ipynb"),
                        '-y', json.dumps({**params(i), 'dataops_settings': str(ini)})], check=True, cwd=d, capture_output=True)
    total = time.perf_counter() - t0
    for i in range(runs): check_output(d / f"out{i}.ipynb")
    return {'s': total}

def overhead(tmp:Path, n:int, warm:bool=True):
    ini = settings_ini(tmp)
    ours, bare, inner = [], [], []
    if warm: run_notebook(TEMPLATE, params(0), settings=ini)  # warm-up: imports, SQLite files, kernel spec cache
    if warm: pm.execute_notebook(str(TEMPLATE), str(tmp / 'warm.ipynb'), parameters={**params(0), 'dataops_settings': str(ini)}, kernel_name='python3', progress_bar=False, cwd=str(tmp))
    real = pm.execute_notebook
    def ours_run(i):
        def timed(*a, **k):
            t = time.perf_counter()
            try: return real(*a, **k)
            finally: inner.append(time.perf_counter() - t)
        pm.execute_notebook = timed  # measurement only: run_notebook calls papermill through the module attribute
        try:
            r = run_notebook(TEMPLATE, params(i), settings=ini)
            if r.status != 'succeeded': raise RuntimeError(f"run_notebook {r.status}: {r.error}")
        finally: pm.execute_notebook = real
    def bare_run(i):
        pm.execute_notebook(str(TEMPLATE), str(tmp / f"bare{i}.ipynb"), parameters={**params(i), 'dataops_settings': str(ini)}, kernel_name='python3', progress_bar=False, cwd=str(tmp))
    for i in range(n):
        order = [('ours', ours_run), ('bare', bare_run)]
        if i % 2: order.reverse()
        for name, fn in order:
            t = time.perf_counter(); fn(i); dt = time.perf_counter() - t
            (ours if name == 'ours' else bare).append(dt)
    return ours, bare, [o - p for o, p in zip(ours, inner)]

def main():
    ap = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    ap.add_argument('--quick', action='store_true', help='a smoke run: 1 run per side, 1 round, 1 overhead pair with no warm-up (every path runs once; no figure judged)')
    ap.add_argument('--runs', type=int, default=None, help='runs per side per round (default 12, quick 1)')
    ap.add_argument('--rounds', type=int, default=None, help='rounds, each running every side once in rotating order (default 3, quick 1)')
    ap.add_argument('--workers', type=int, default=2)
    ap.add_argument('--overhead-runs', type=int, default=None, help='alternating run_notebook / execute_notebook pairs (default 10, quick 1)')
    a = ap.parse_args()
    a.runs = a.runs or (1 if a.quick else 12)
    a.rounds = a.rounds or (1 if a.quick else 3)
    a.overhead_runs = a.overhead_runs or (1 if a.quick else 10)
    if not 1 <= a.runs <= len(QUESTIONS): ap.error(f"--runs {a.runs}: between 1 and {len(QUESTIONS)} (run i asks question i of the list; run_batch refuses two runs with the same parameters)")
    sys.path.insert(0, str(ROOT / 'benchmarks'))
    from storage import versions
    print(f"dataops-lab batch benchmark{' (quick)' if a.quick else ''}: {TEMPLATE.relative_to(ROOT) if TEMPLATE.is_relative_to(ROOT) else TEMPLATE}, "
          f"{a.runs} runs per side x {a.rounds} round(s), {a.workers} workers; {a.overhead_runs} overhead pair(s)")
    print(versions())
    t_start = time.perf_counter()
    sides = [('batch', lambda d: side_batch(d, a.runs, a.workers)), ('inproc', lambda d: side_inproc(d, a.runs)), ('cli', lambda d: side_cli(d, a.runs))]
    got = {k: [] for k, _ in sides}
    with tempfile.TemporaryDirectory(prefix='dataops-bench-batch-') as d:
        tmp = Path(d)
        for r in range(a.rounds):
            for k, fn in sides[r % len(sides):] + sides[:r % len(sides)]:
                got[k].append(fn(tmp / f"{k}{r}"))
            print(f"   round {r + 1}: " + ', '.join(f"{k} {got[k][-1]['s']:.1f} s" for k, _ in sides) + f"; load average {load()}", flush=True)
        B = statistics.median(x['s'] for x in got['batch'])
        up = statistics.median(x['startup'] for x in got['batch'])
        print(f"\n== throughput: {a.runs} runs of {TEMPLATE.name} per side, median of {a.rounds} round(s) ==")
        print(f"   {'side':64} {'median s':>9} {'runs/s':>7} {'seq ÷ batch':>11}")
        print(f"   {f'run_batch, {a.workers}-worker LocalCluster, start-up + shut-down included':64} {B:9.1f} {a.runs / B:7.2f}")
        print(f"   {'  of which LocalCluster start-up (connect)':64} {up:9.1f}")
        rows = {}
        for k, lab in (('inproc', 'papermill.execute_notebook, sequential, in this process'), ('cli', 'papermill CLI, sequential subprocesses')):
            S = statistics.median(x['s'] for x in got[k]); rows[k] = S / B
            print(f"   {lab:64} {S:9.1f} {a.runs / S:7.2f} {S / B:10.2f}x")
        print(f"   per round (s): " + '; '.join(f"{k} {[round(x['s'], 1) for x in got[k]]}" for k, _ in sides))
        ov_ours, ov_bare, own = overhead(tmp / 'ov', a.overhead_runs, warm=not a.quick)
    mo, mb = statistics.median(ov_ours), statistics.median(ov_bare)
    print(f"\n== per-run overhead: {a.overhead_runs} alternating pair(s) in this process ==")
    print(f"   run_notebook:                median {mo * 1000:.0f} ms (min {min(ov_ours) * 1000:.0f}, max {max(ov_ours) * 1000:.0f})")
    print(f"   papermill.execute_notebook:  median {mb * 1000:.0f} ms (min {min(ov_bare) * 1000:.0f}, max {max(ov_bare) * 1000:.0f})")
    print(f"   overhead: {(mo - mb) * 1000:+.0f} ms per run = {(mo - mb) / mb:+.1%}; run_notebook's own work (outside papermill.execute_notebook): "
          f"median {statistics.median(own) * 1000:.0f} ms = {statistics.median(own) / mb:.1%} of a bare run")
    print(f"\n== Summary ({time.perf_counter() - t_start:.0f} s; load average {load()} at end) ==")
    judged = not a.quick
    for k, lab in (('inproc', 'sequential in process'), ('cli', 'sequential CLI')):
        v = 'n/a (quick)' if not judged else 'PASS' if rows[k] >= RATIO_TARGET else 'MISS'
        print(f"   batch speed-up over {lab:24} {rows[k]:6.2f}x   target ≥ {RATIO_TARGET}x (start-up included)   {v}")
    v = 'n/a (quick)' if not judged else 'PASS' if (mo - mb) / mb < OVERHEAD_TARGET else 'MISS'
    print(f"   run_notebook overhead over papermill      {(mo - mb) / mb:+6.1%}   target < {OVERHEAD_TARGET:.0%}   {v}")

if __name__ == '__main__':
    main()
