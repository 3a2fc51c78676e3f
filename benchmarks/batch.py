"""Batch benchmark: run_batch on a 2-worker local Dask cluster vs the papermill CLI run sequentially, and the per-run
overhead of run_notebook over a bare papermill.execute_notebook.

    .venv/bin/python benchmarks/batch.py [--quick] [--runs 40] [--workers 2] [--overhead-runs 10]

Throughput: the same small notebook (one parameter, one `record`) runs `--runs` times through `run_batch` (a fresh
LocalCluster, embedded storage in a temporary folder) and `--runs` times through `papermill in.ipynb out.ipynb -p n i`
subprocesses one after the other, in the same process run. The ratio is sequential time / batch time; the batch time
is shown with and without the LocalCluster start-up.

Overhead: `--overhead-runs` pairs of runs in this process, alternating, `run_notebook` (validation, session, kernel
check, papermill, reading records, storing the notebook and records artifacts) vs `papermill.execute_notebook` with the
same parameters and kernel. Medians per run; overhead = (ours - bare) / bare. Kernel start-up time varies by
hundreds of ms on a busy machine, so the runner's own work is also measured directly: the time of each run_notebook
call spent outside papermill.execute_notebook (timed by wrapping papermill's function, not our code).

A benchmark is not a test: nothing here asserts. The machine is shared: the load average is printed before and after.
"""
from __future__ import annotations
import argparse, os, statistics, subprocess, sys, tempfile, time
from pathlib import Path

for _k in [k for k in os.environ if k.startswith('DATAOPS_')]: os.environ.pop(_k)  # only the settings written here count

import papermill as pm
from dataops_lab.nbparams import write_notebook
from dataops_lab.runner import run_notebook
from dataops_lab.batch import run_batch, connect

BIN = Path(sys.executable).parent
PARAMS = "n: int = 1  # size of the work"
BODY = ("from dataops_lab.runner import record", "x = sum(i * i for i in range(n * 1000))\nrecord('x', x)")


def load(): return ' '.join(f"{v:.2f}" for v in os.getloadavg())


def throughput(tmp: Path, runs: int, workers: int):
    nb = write_notebook(tmp/'small.ipynb', PARAMS, *BODY)
    ini = tmp/'settings.ini'
    ini.write_text(f"[storage]\n[batch]\nn_workers = {workers}\noutput_dir = runs\n")
    t0 = time.perf_counter()
    client, cluster = connect(None, workers, 1)
    t_start = time.perf_counter() - t0
    try:
        t1 = time.perf_counter()
        res = run_batch(nb, {'n': list(range(1, runs + 1))}, settings=ini, progress=False, client=client)
        t_batch = time.perf_counter() - t1
    finally:
        client.close(); cluster.close()
    if not res.ok: raise RuntimeError(f"the batch did not succeed: {res.counts}; errors: {sorted(set(res.runs.error.dropna()))[:3]}")
    assert_ok = res.counts
    seq_dir = tmp/'seq'; seq_dir.mkdir()
    t2 = time.perf_counter()
    for i in range(1, runs + 1):
        subprocess.run([str(BIN/'papermill'), '--no-progress-bar', '--log-level', 'WARNING', str(nb), str(seq_dir/f"out{i}.ipynb"), '-p', 'n', str(i)],
                       check=True, cwd=seq_dir, capture_output=True)
    t_seq = time.perf_counter() - t2
    return dict(batch=t_batch, startup=t_start, seq=t_seq, counts=assert_ok)


def overhead(tmp: Path, n: int):
    nb = write_notebook(tmp/'ov.ipynb', PARAMS, *BODY)
    ini = tmp/'settings.ini'
    ini.write_text("[storage]\n[batch]\noutput_dir = runs\n")
    ours, bare = [], []
    run_notebook(nb, {'n': 1}, settings=ini)  # warm-up: imports, SQLite files, kernel spec cache
    pm.execute_notebook(str(nb), str(tmp/'warm.ipynb'), parameters={'n': 1}, kernel_name='python3', progress_bar=False)
    inner = []  # time spent inside papermill.execute_notebook during each run_notebook call
    real = pm.execute_notebook
    def ours_run():
        def timed(*a, **k):
            t = time.perf_counter()
            try: return real(*a, **k)
            finally: inner.append(time.perf_counter() - t)
        pm.execute_notebook = timed  # measurement only: run_notebook calls papermill through the module attribute
        try: return run_notebook(nb, {'n': 2}, settings=ini)
        finally: pm.execute_notebook = real
    for i in range(n):
        order = [('ours', ours_run),
                 ('bare', lambda: pm.execute_notebook(str(nb), str(tmp/f"bare{i}.ipynb"), parameters={'n': 2}, kernel_name='python3',
                                                      progress_bar=False, cwd=str(tmp)))]
        if i % 2: order.reverse()
        for name, fn in order:
            t = time.perf_counter(); fn(); dt = time.perf_counter() - t
            (ours if name == 'ours' else bare).append(dt)
    return statistics.median(ours), statistics.median(bare), ours, bare, [o - p for o, p in zip(ours, inner)]


def main():
    ap = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    ap.add_argument('--quick', action='store_true', help='a smoke run: 4 runs, 1 overhead pair')
    ap.add_argument('--runs', type=int, default=None, help='runs of the throughput comparison (default 40, quick 4)')
    ap.add_argument('--workers', type=int, default=2)
    ap.add_argument('--overhead-runs', type=int, default=None, help='alternating run_notebook / execute_notebook pairs (default 10, quick 1)')
    a = ap.parse_args()
    a.runs = a.runs or (4 if a.quick else 40)
    a.overhead_runs = a.overhead_runs or (1 if a.quick else 10)
    print(f"cpus {os.cpu_count()} · load average before: {load()}")
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        (tmp/'tp').mkdir(); (tmp/'ov').mkdir()
        r = throughput(tmp/'tp', a.runs, a.workers)
        print(f"\nthroughput, {a.runs} runs of a small notebook")
        print(f"  run_batch, {a.workers}-worker local cluster: {r['batch']:.1f} s ({a.runs / r['batch']:.2f} runs/s) + {r['startup']:.1f} s cluster start-up · {r['counts']}")
        print(f"  papermill CLI, sequential:          {r['seq']:.1f} s ({a.runs / r['seq']:.2f} runs/s)")
        print(f"  ratio sequential / batch:           {r['seq'] / r['batch']:.2f}x (with start-up: {r['seq'] / (r['batch'] + r['startup']):.2f}x) — target >= 1.7x")
        print(f"  load average: {load()}")
        mo, mb, ours, bare, own = overhead(tmp/'ov', a.overhead_runs)
        print(f"\nper-run overhead, {a.overhead_runs} alternating pairs in this process")
        print(f"  run_notebook:                median {mo * 1000:.0f} ms (min {min(ours) * 1000:.0f}, max {max(ours) * 1000:.0f})")
        print(f"  papermill.execute_notebook:  median {mb * 1000:.0f} ms (min {min(bare) * 1000:.0f}, max {max(bare) * 1000:.0f})")
        print(f"  overhead: {(mo - mb) * 1000:+.0f} ms per run = {(mo - mb) / mb:+.1%} — target < 10%")
        print(f"  run_notebook's own work (its time outside papermill.execute_notebook): median {statistics.median(own) * 1000:.0f} ms = {statistics.median(own) / mb:.1%} of a bare run")
    print(f"\nload average after: {load()}")


if __name__ == '__main__':
    main()
