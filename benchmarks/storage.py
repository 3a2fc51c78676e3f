"""Storage benchmark: the dataops-lab storage layer next to the raw client doing the same thing, in the same run.

    .venv/bin/python benchmarks/storage.py [--quick] [--backends embedded,redis,aws,postgres] [--large-mb 500]
                                           [--s3-large-mb 200] [--iterations 2000] [--profile]

For every backend it prints p50/p99 latency of small gets and puts (layer vs raw, interleaved in
alternating batches), large-blob streaming throughput (each run in a fresh subprocess, layer and raw
alternating) and the peak RSS growth of the process doing the streaming, then a summary against the
targets: small ops <= 1.20x raw, large blobs <= 1.10x raw, < 100 MB peak memory for a 500 MB blob.
It starts its own redis-server, PostgreSQL server and moto server (tests/servers.py) on free loopback ports.
A section that fails makes the script exit non-zero (after the summary).
See benchmarks/README.md. A benchmark is not a test: nothing here asserts.
"""
from __future__ import annotations
import argparse, gc, io, json, os, platform, resource, shutil, statistics, subprocess, sys, tempfile, time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / 'tests'))

# boto3 must never reach a real AWS account from here: fixed fake credentials, no config files.
os.environ.update(AWS_ACCESS_KEY_ID='testing', AWS_SECRET_ACCESS_KEY='testing', AWS_DEFAULT_REGION='us-east-1',
                  AWS_CONFIG_FILE=os.devnull, AWS_SHARED_CREDENTIALS_FILE=os.devnull)
os.environ.pop('AWS_PROFILE', None); os.environ.pop('AWS_SESSION_TOKEN', None)

MiB = 1024 * 1024
SMALL_TARGET, LARGE_TARGET, MEM_TARGET_MB = 1.20, 1.10, 100
BUCKET = 'dataops-bench'

# ---------------------------------------------------------------------------------------------------------------
# Large-blob source and sink, shared by the layer and the raw runs

class RandomSource(io.RawIOBase):
    "A read-only file of `size` pseudo-random bytes served from a 16 MiB random buffer (no disk, no big allocation)"
    _buf = None
    def __init__(self, size:int):
        if RandomSource._buf is None: RandomSource._buf = os.urandom(16 * MiB)
        self.size, self.pos = size, 0
        self.mv = memoryview(RandomSource._buf)
    def readable(self): return True
    def readinto(self, b):
        n = min(len(b), self.size - self.pos)
        if n <= 0: return 0
        out, done = memoryview(b).cast('B'), 0
        while done < n:
            off = (self.pos + done) % (8 * MiB)
            k = min(n - done, 8 * MiB)
            out[done:done + k] = self.mv[off:off + k]
            done += k
        self.pos += n
        return n

def maxrss() -> int:
    "Peak RSS of this process's own memory so far (VmHWM), in bytes"
    # Not getrusage's ru_maxrss: after fork+exec it also holds the peak of the forked copy of the parent.
    try:
        with open('/proc/self/status') as f:
            return next(int(l.split()[1]) * 1024 for l in f if l.startswith('VmHWM:'))
    except (OSError, StopIteration): return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024

def current_rss() -> int:
    with open('/proc/self/statm') as f: return int(f.read().split()[1]) * os.sysconf('SC_PAGE_SIZE')

def reset_peak_rss() -> bool:
    "Reset this process's peak RSS (VmHWM, ru_maxrss) to its current RSS (Linux >= 4.0); False if not possible"
    try:
        with open('/proc/self/clear_refs', 'w') as f: f.write('5')
        return True
    except OSError: return False

# ---------------------------------------------------------------------------------------------------------------
# Child process: one large-blob transfer in a fresh interpreter, reporting time and RSS growth

def child_main(job:dict):
    "Run one large transfer described by `job`; print a JSON line with seconds, bytes and memory"
    import boto3
    from boto3.s3.transfer import TransferConfig
    from dataops_lab.store.base import open_blob, CHUNK
    store, side, op, size, key = job['store'], job['side'], job['op'], job['size'], job['key']
    src = RandomSource(size)
    layer = client = None
    if side == 'layer':
        layer = open_blob(job['url'])
        if store == 's3': layer.put('warm/x', b'x'); layer.get('warm/x')  # open connections before the baseline
    elif store == 's3':
        client = boto3.client('s3', endpoint_url=job['endpoint'], region_name='us-east-1')
        client.put_object(Bucket=BUCKET, Key='warm/x', Body=b'x'); client.get_object(Bucket=BUCKET, Key='warm/x')['Body'].read()
    part = job.get('part_size') or CHUNK
    gc.collect()
    # The baseline is the RSS after imports and set-up; the peak is reset to it so a transient peak of the imports
    # (botocore's service models) is not counted. Without /proc/self/clear_refs the growth is an upper bound.
    exact = reset_peak_rss()
    rss0 = current_rss()
    n = 0
    c0 = time.process_time()
    t0 = time.perf_counter()
    if side == 'layer':
        if op == 'put': layer.put_stream(key, src); n = size
        else:
            for c in layer.get_stream(key): n += len(c)
    elif store == 'file':
        path = Path(job['dir']) / key
        if op == 'put':
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_name(path.name + f'.{os.getpid()}.tmp')
            with open(tmp, 'wb') as f:
                while b := src.read(CHUNK): f.write(b); n += len(b)
                if job.get('fsync'): f.flush(); os.fsync(f.fileno())
            os.replace(tmp, path)
            if job.get('fsync_dir'):
                fd = os.open(path.parent, os.O_RDONLY)
                try: os.fsync(fd)
                finally: os.close(fd)
        else:
            with open(path, 'rb', buffering=0) as f:
                while b := f.read(CHUNK): n += len(b)
    elif side == 'raw':  # boto3's managed transfer, with the layer's part size
        cfg = TransferConfig(multipart_threshold=part, multipart_chunksize=part)
        if op == 'put': client.upload_fileobj(src, BUCKET, key, Config=cfg); n = size
        else:
            with open(os.devnull, 'wb') as sink: client.download_fileobj(BUCKET, key, sink, Config=cfg)
            n = size
    else:  # 'rawseq': multipart upload by hand, one part at a time; a single streaming GET
        if op == 'put':
            up = client.create_multipart_upload(Bucket=BUCKET, Key=key)['UploadId']
            parts, i = [], 1
            while b := src.read(part):
                r = client.upload_part(Bucket=BUCKET, Key=key, UploadId=up, PartNumber=i, Body=b)
                parts.append({'PartNumber': i, 'ETag': r['ETag']}); i += 1; n += len(b)
            client.complete_multipart_upload(Bucket=BUCKET, Key=key, UploadId=up, MultipartUpload={'Parts': parts})
        else:
            for c in client.get_object(Bucket=BUCKET, Key=key)['Body'].iter_chunks(CHUNK): n += len(c)
    secs, cpu = time.perf_counter() - t0, time.process_time() - c0
    print(json.dumps({'seconds': secs, 'cpu': cpu, 'bytes': n, 'rss0': rss0, 'maxrss': maxrss(), 'growth': max(0, maxrss() - rss0), 'exact': exact}), flush=True)

def run_child(job:dict) -> dict:
    p = subprocess.run([sys.executable, __file__, '--child', json.dumps(job)], capture_output=True, text=True)
    if p.returncode != 0: raise RuntimeError(f"child {job['store']}/{job['side']}/{job['op']} failed:\n{p.stderr[-3000:]}")
    if os.environ.get("BENCH_DEBUG"): print("   child", job["store"], job["side"], job["op"], p.stdout.strip()[-300:])
    return json.loads(p.stdout.strip().splitlines()[-1])

# ---------------------------------------------------------------------------------------------------------------
# Small operations: layer vs raw, interleaved

TAIL = ['p99']  # the tail percentile printed: p99 from at least 1,000 samples, else p95 (200 samples make a p99 their second largest)
FAILED = []  # sections that raised: the script exits 1

def pct(xs, q):
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(round(q / 100 * (len(xs) - 1))))]

def bench_pair(layer_op, raw_op, n:int, warmup:int, batch:int=100) -> dict:
    "Latencies (µs) of `n` calls of each op, in alternating batches (layer first, then raw first, ...)"
    for i in range(warmup): layer_op(i); raw_op(i)
    lat = {'layer': [], 'raw': []}
    pc = time.perf_counter_ns
    i, rnd = 0, 0
    while len(lat['layer']) < n:
        k = min(batch, n - len(lat['layer']))
        order = (('layer', layer_op), ('raw', raw_op)) if rnd % 2 == 0 else (('raw', raw_op), ('layer', layer_op))
        for side, op in order:
            out = lat[side]
            for j in range(i, i + k):
                t = pc(); op(j); out.append((pc() - t) / 1000)
        i += k; rnd += 1
    return {s: {'p50': pct(v, 50), 'p95': pct(v, 95), 'p99': pct(v, 99), 'mean': statistics.fmean(v)} for s, v in lat.items()}

class Probe:
    "Untimed look at what a layer call does underneath, in the steady state (keys exist): round trips, SQL, fsyncs"
    @staticmethod
    def boto(fn, times:int=3) -> list:
        "The botocore API calls `(operation, interesting params, outcome)` made by `times` calls of `fn`"
        import botocore.client
        calls, orig = [], botocore.client.BaseClient._make_api_call
        keep = ('ConsistentRead', 'ReturnValues', 'ReturnValuesOnConditionCheckFailure', 'ConditionExpression',
                'UpdateExpression', 'Body', 'ContentLength', 'Range', 'ChecksumAlgorithm')
        def spy(self, name, params):
            rec = [name, {k: (len(v) if isinstance(v, (bytes, bytearray)) else v) for k, v in params.items() if k in keep}, 'ok']
            calls.append(rec)
            try: return orig(self, name, params)
            except Exception as e:
                rec[2] = getattr(e, 'response', {}).get('Error', {}).get('Code') or type(e).__name__
                raise
        botocore.client.BaseClient._make_api_call = spy
        try:
            for i in range(times): fn(i)
        finally: botocore.client.BaseClient._make_api_call = orig
        return calls
    @staticmethod
    def sqlite(fn, times:int=3) -> tuple[list, dict]:
        "SQL statements per call the layer's connections run for `fn`, and their PRAGMA settings"
        import sqlite3
        fn(0)  # make sure lazily-opened connections exist
        conns = [o for o in gc.get_objects() if isinstance(o, sqlite3.Connection)]
        stmts, prag, errs = [], {}, []
        for c in conns:  # connections closed by earlier sections raise here and are left out
            try:
                prag = {'journal_mode': c.execute('PRAGMA journal_mode').fetchone()[0],
                        'synchronous': c.execute('PRAGMA synchronous').fetchone()[0]}
                c.set_trace_callback(stmts.append)
            except Exception as e: errs.append(repr(e))
        if not prag: prag = {'error': f"no usable layer connection found ({errs[:1]}); synchronous=NORMAL assumed"}
        try:
            for i in range(times): fn(i)
        finally:
            for c in conns:
                try: c.set_trace_callback(None)
                except Exception: pass
        per = [s[:100] for s in stmts[:len(stmts) // times]]
        # the trace fires again when a trigger's program runs (even if its WHEN is false): show repeats as a count
        out = []
        for st in per:
            if out and out[-1][0] == st: out[-1][1] += 1
            else: out.append([st, 1])
        return [st + (f"  [traced x{n}: triggers]" if n > 1 else '') for st, n in out], prag
    @staticmethod
    def fsyncs(fn, times:int=3) -> float:
        "os.fsync/os.fdatasync calls per call of `fn`"
        n, of, od = [0], os.fsync, os.fdatasync
        def f(fd): n[0] += 1; return of(fd)
        def d(fd): n[0] += 1; return od(fd)
        os.fsync, os.fdatasync = f, d
        try:
            for i in range(times): fn(i)
        finally: os.fsync, os.fdatasync = of, od
        return n[0] / times

def summarise_calls(calls, per:int) -> str:
    "e.g. 'PutItem x2 (ConditionalCheckFailedException x1)'"
    from collections import Counter
    c = Counter(name for name, _, _ in calls)
    errs = Counter(f"{name} {out}" for name, _, out in calls if out != 'ok')
    return ', '.join(f"{k} x{v / per:g}" for k, v in c.items()) + (f" (failed: {', '.join(f'{k} x{v / per:g}' for k, v in errs.items())})" if errs else '') or 'none'

NKEYS = 100
def key(i): return f"bench/k{i % NKEYS:04d}"
def prefill(*puts):
    "Write every key once on each side, so probes and timings see the steady state (overwrites of existing keys)"
    for i in range(NKEYS):
        for put in puts: put(i)

def profile(label, fn, n):
    "cProfile `n` calls of `fn`; print the functions with the most own time, as µs per call of `fn` (profiler overhead included)"
    import cProfile, pstats
    pr = cProfile.Profile()
    pr.enable()
    for i in range(n): fn(i)
    pr.disable()
    st = pstats.Stats(pr).stats  # (file, line, name) -> (primitive calls, calls, tottime, cumtime, callers)
    def where(k):
        f, line, name = k
        f = f.replace(str(ROOT) + '/', '').replace(sys.prefix + '/', '').split('site-packages/')[-1]
        return f"{name} ({f}:{line})" if f != '~' else name
    total = sum(v[2] for v in st.values())
    print(f"\n--- profile: {label}: {total / n * 1e6:.1f} µs per call under cProfile; top functions by own time, µs per call ---")
    print(f"   {'own':>7} {'cum':>7} {'calls':>6}  function")
    for k, v in sorted(st.items(), key=lambda kv: -kv[1][2])[:14]:
        if k[2] == "<method 'disable' of '_lsprof.Profiler' objects>": continue
        print(f"   {v[2] / n * 1e6:7.2f} {v[3] / n * 1e6:7.2f} {v[1] / n:6.3g}  {where(k)}")

# ---------------------------------------------------------------------------------------------------------------
# Output

RESULTS = []  # rows for the final summary

def fmt_ratio(r, target): return f"{r:5.2f}x {'ok  ' if round(r, 2) <= target else 'MISS'}"

def report_small(title, res_put, res_get, notes=()):
    print(f"\n== {title} ==")
    for n in notes: print(f"   {n}")
    t = TAIL[0]
    print(f"   {'op':4} {'layer p50':>10} {'raw p50':>9} {'ratio':>11} | {'layer ' + t:>10} {'raw ' + t:>9} {'ratio':>11}   (µs; target ≤ {SMALL_TARGET:.2f}x)")
    for op, r in (('put', res_put), ('get', res_get)):
        if r is None: continue
        L, R = r['layer'], r['raw']
        r50, r99 = L['p50'] / R['p50'], L[t] / R[t]
        print(f"   {op:4} {L['p50']:10.1f} {R['p50']:9.1f} {fmt_ratio(r50, SMALL_TARGET):>11} | {L[t]:10.1f} {R[t]:9.1f} {fmt_ratio(r99, SMALL_TARGET):>11}")
        RESULTS.append((f"{title.split(' vs ')[0]}: {op}", f"p50 {r50:.2f}x / {t} {r99:.2f}x", f"≤ {SMALL_TARGET:.2f}x (p50)", round(r50, 2) <= SMALL_TARGET))

def report_large(title, size, runs:dict, notes=()):
    "runs: side -> op -> list of child results. Judged on the median run of each side (the fastest run is shown too)"
    mb = size / MiB
    print(f"\n== {title}: {mb:.0f} MiB blob, {len(runs['layer']['put'])} run(s) each, fresh subprocess per run ==")
    for n in notes: print(f"   {n}")
    print(f"   {'op':4} {'side':7} {'MB/s median':>11} {'best':>7} {'layer/this':>15} {'CPU s':>6} {'peak RSS growth':>16}"
          f"  (targets: ≤ {LARGE_TARGET:.2f}x raw on the medians, < {MEM_TARGET_MB} MB for 500 MB; CPU s: client process, median)")
    for op in ('put', 'get'):
        best_t = {s: min(r['seconds'] for r in runs[s][op]) for s in runs}
        med_t = {s: statistics.median(r['seconds'] for r in runs[s][op]) for s in runs}
        best = min((s for s in runs if s != 'layer'), key=med_t.get)  # the faster raw way, by its median
        for side in runs:
            growth = max(r['growth'] for r in runs[side][op]) / MiB
            cpu = statistics.median(r['cpu'] for r in runs[side][op])
            if side == 'layer': rtxt = fmt_ratio(med_t['layer'] / med_t[best], LARGE_TARGET)
            else: rtxt = f"{med_t['layer'] / med_t[side]:5.2f}x" + (' best' if side == best else '     ')
            mtxt = f"{growth:7.1f} MB " + (('ok  ' if growth < MEM_TARGET_MB else 'MISS') if side == 'layer' else '    ')
            print(f"   {op:4} {side:7} {mb / med_t[side]:11.1f} {mb / best_t[side]:7.1f} {rtxt:>15} {cpu:6.2f} {mtxt:>16}")
        ratio, growth = med_t['layer'] / med_t[best], max(r['growth'] for r in runs['layer'][op]) / MiB
        RESULTS.append((f"{title}: {op}_stream throughput", f"{ratio:.2f}x {best}", f"≤ {LARGE_TARGET:.2f}x", round(ratio, 2) <= LARGE_TARGET))
        RESULTS.append((f"{title}: {op}_stream peak RSS ({mb:.0f} MiB)", f"{growth:.1f} MB", f"< {MEM_TARGET_MB} MB", growth < MEM_TARGET_MB))
    if not all(r['exact'] for s in runs.values() for o in s.values() for r in o):
        print("   (peak RSS could not be reset in the child: growth is measured from the import-time peak, an upper bound)")

def skip(section, why):
    print(f"\n== {section}: SKIPPED ==\n   {why}")
    RESULTS.append((section, 'skipped', '', None))

# ---------------------------------------------------------------------------------------------------------------
# Sections

def payload_item(i, pay): return {'id': key(i), 'owner': 'user_1', 'created_at': '2024-06-01T12:00:00Z', 'payload': pay}

def large_blob_runs(store, size, repeats, job_base, sides) -> dict:
    "Alternate layer/raw subprocess runs: put then get, the order of sides flipping every repeat"
    runs = {s: {'put': [], 'get': []} for s in sides}
    for rep in range(repeats):
        order = list(sides) if rep % 2 == 0 else list(reversed(sides))
        for op in ('put', 'get'):
            for side in order:
                os.sync()  # flush earlier runs' dirty pages: no run pays for another's write-back
                runs[side][op].append(run_child({**job_base[side], 'store': store, 'side': side, 'op': op, 'size': size}))
    return runs

def section_sqlite_cache(a, tmp):
    import sqlite3
    from dataops_lab.store.base import open_cache
    val = os.urandom(a.value_size)
    cache = open_cache(f"sqlite:///{tmp}/layer-cache.db")
    cache.ensure()
    lput = lambda i: cache.set(key(i), val)
    lget = lambda i: cache.get(key(i))
    prefill(lput)
    put_sql, prag = Probe.sqlite(lput)
    get_sql, _ = Probe.sqlite(lget)
    sync = prag.get('synchronous', 1)
    raw = sqlite3.connect(f"{tmp}/raw-cache.db", isolation_level=None, check_same_thread=False)
    raw.execute('PRAGMA journal_mode=WAL'); raw.execute(f'PRAGMA synchronous={sync}')
    raw.execute('CREATE TABLE IF NOT EXISTS kv(key TEXT PRIMARY KEY, value BLOB NOT NULL, expires_at REAL)')
    up = 'INSERT INTO kv(key, value, expires_at) VALUES(?, ?, NULL) ON CONFLICT(key) DO UPDATE SET value=excluded.value, expires_at=NULL'
    sel = 'SELECT value FROM kv WHERE key=? AND (expires_at IS NULL OR expires_at > ?)'
    def raw_put(i): raw.execute(up, (key(i), val))
    def raw_get(i): return raw.execute(sel, (key(i), time.time())).fetchone()[0]
    prefill(raw_put)
    assert lget(0) == val and raw_get(0) == val
    notes = [f"layer connection: {prag}; raw: own file, journal_mode=wal synchronous={sync} (copied from the layer), autocommit upsert / select with expiry test",
             f"layer SQL per set: {put_sql}", f"layer SQL per get: {get_sql}"]
    rp, rg = bench_pair(lput, raw_put, a.iterations, a.warmup), bench_pair(lget, raw_get, a.iterations, a.warmup)
    report_small(f"HotCache on SQLite vs sqlite3 ({a.value_size} B values)", rp, rg, notes)
    if a.profile: profile('SQLiteCache.set', lput, a.iterations); profile('SQLiteCache.get', lget, a.iterations)
    cache.close(); raw.close()

def section_sqlite_table(a, tmp):
    import sqlite3
    from dataops_lab.store.base import open_table, TableSpec
    spec = TableSpec('bench_items', 'id')
    pay = os.urandom(a.value_size // 2).hex()
    table = open_table(f"sqlite:///{tmp}/layer-meta.db", spec)
    table.ensure()
    lput = lambda i: table.put(payload_item(i, pay))
    lget = lambda i: table.get(key(i))
    prefill(lput)
    put_sql, prag = Probe.sqlite(lput)
    get_sql, _ = Probe.sqlite(lget)
    sync = prag.get('synchronous', 1)
    raw = sqlite3.connect(f"{tmp}/raw-meta.db", isolation_level=None, check_same_thread=False)
    raw.execute('PRAGMA journal_mode=WAL'); raw.execute(f'PRAGMA synchronous={sync}')
    raw.execute('CREATE TABLE IF NOT EXISTS items(pk TEXT PRIMARY KEY, version INTEGER NOT NULL, expires_at REAL, item TEXT NOT NULL)')
    up = ('INSERT INTO items(pk, version, expires_at, item) VALUES(?, 1, ?, ?) ON CONFLICT(pk) DO UPDATE SET '
          'version=items.version+1, expires_at=excluded.expires_at, item=excluded.item RETURNING version')
    sel = 'SELECT item, version, expires_at FROM items WHERE pk=?'
    def raw_put(i):
        it = payload_item(i, pay)
        v = raw.execute(up, (it['id'], it.get('expires_at'), json.dumps(it))).fetchone()[0]
        return {**it, '_version': v}
    def raw_get(i):
        row = raw.execute(sel, (key(i),)).fetchone()
        if row is None or (row[2] is not None and row[2] <= time.time()): return None
        return {**json.loads(row[0]), '_version': row[1]}
    prefill(raw_put)
    assert raw_get(0)['payload'] == pay and lget(0)['payload'] == pay
    notes = [f"item: 4 attributes, ~{len(json.dumps(payload_item(0, pay)))} B of JSON; spec {spec.name!r} (no secondary index)",
             f"layer connection: {prag}; raw: own file, journal_mode=wal synchronous={sync}, one upsert ... RETURNING version / one select + json.loads",
             f"layer SQL per put: {put_sql}", f"layer SQL per get: {get_sql}"]
    rp, rg = bench_pair(lput, raw_put, a.iterations, a.warmup), bench_pair(lget, raw_get, a.iterations, a.warmup)
    report_small("MetadataTable on SQLite vs sqlite3 (JSON items)", rp, rg, notes)
    if a.profile: profile('SQLiteTable.put', lput, a.iterations); profile('SQLiteTable.get', lget, a.iterations)
    table.close(); raw.close()

def section_file_blob(a, tmp):
    from dataops_lab.store.base import open_blob
    val = os.urandom(a.value_size)
    ldir, rdir = Path(tmp) / 'layer-blobs', Path(tmp) / 'raw-blobs'
    blob = open_blob(f"file://{ldir}")
    blob.ensure()
    lput = lambda i: blob.put(key(i), val)
    lget = lambda i: blob.get(key(i))
    prefill(lput)
    fs = Probe.fsyncs(lput)
    nfiles = sum(1 for p in ldir.rglob('*') if p.is_file())
    (rdir / 'bench').mkdir(parents=True, exist_ok=True)
    rbase, pid = f"{rdir}/", os.getpid()
    def raw_put(i):  # str paths (pathlib would add µs the layer does not spend)
        path = rbase + key(i)
        tmpf = f"{path}.{pid}.tmp"
        with open(tmpf, 'wb') as f:
            f.write(val)
            if fs >= 1: f.flush(); os.fsync(f.fileno())
        os.replace(tmpf, path)
        if fs >= 2:
            fd = os.open(os.path.dirname(path), os.O_RDONLY)
            try: os.fsync(fd)
            finally: os.close(fd)
    def raw_get(i):
        with open(rbase + key(i), 'rb', buffering=0) as f: return f.read()
    prefill(raw_put)
    assert raw_get(0) == val and lget(0) == val
    notes = [f"layer: {fs:g} fsync(s) per put, {nfiles} file(s) in its folder for {NKEYS} blobs; raw: write tmp"
             f"{' + fsync' if fs >= 1 else ''} + rename{' + fsync(dir)' if fs >= 2 else ''} / unbuffered open + read"]
    rp, rg = bench_pair(lput, raw_put, a.iterations, a.warmup), bench_pair(lget, raw_get, a.iterations, a.warmup)
    report_small(f"BlobStore on files vs open/write/rename ({a.value_size} B blobs)", rp, rg, notes)
    if a.profile: profile('FileBlobStore.put', lput, a.iterations); profile('FileBlobStore.get', lget, a.iterations)
    blob.close()
    # large
    size = a.large_mb * MiB
    base = {'layer': {'url': f"file://{ldir}", 'key': 'large/blob.bin'},
            'raw': {'dir': str(rdir), 'key': 'large/blob.bin', 'fsync': fs >= 1, 'fsync_dir': fs >= 2}}
    runs = large_blob_runs('file', size, a.repeats, base, ('layer', 'raw'))
    report_large("BlobStore on files", size, runs,
                 [f"raw: 8 MiB chunked write to tmp{' + fsync' if fs >= 1 else ''} + rename / 8 MiB unbuffered reads; source: in-memory random stream;"
                  " os.sync() before every run so no run pays for another's write-back"])
    if a.profile:
        b = open_blob(f"file://{ldir}")
        psize = min(size, 100 * MiB)
        profile(f'FileBlobStore.put_stream {psize // MiB} MiB', lambda i: b.put_stream('large/prof.bin', RandomSource(psize)), 1)
        profile(f'FileBlobStore.get_stream {psize // MiB} MiB', lambda i: sum(map(len, b.get_stream('large/prof.bin'))), 1)

def section_redis(a, srv):
    import redis
    from dataops_lab.store.base import open_cache
    val = os.urandom(a.value_size)
    cache = open_cache(srv.url + '?prefix=L:')
    cache.ensure()
    r = redis.Redis.from_url(srv.url)
    lput = lambda i: cache.set(key(i), val)
    lget = lambda i: cache.get(key(i))
    raw_put = lambda i: r.set(f"R:{key(i)}", val)
    raw_get = lambda i: r.get(f"R:{key(i)}")
    prefill(lput, raw_put)
    def stats(): return {k.removeprefix('cmdstat_'): v['calls'] for k, v in r.info('commandstats').items()}
    s0 = stats()
    for i in range(10): lput(i)
    s1 = stats()
    for i in range(10): lget(i)
    s2 = stats()
    diff = lambda x, y: {k: (y[k] - x.get(k, 0) - (k == 'info')) / 10 for k in y if y[k] - x.get(k, 0) - (k == 'info') > 0}
    notes = [f"redis commands per layer set: {diff(s0, s1)}, per get: {diff(s1, s2)}; raw: SET / GET on one redis.Redis"]
    assert raw_get(0) == val and lget(0) == val
    rp, rg = bench_pair(lput, raw_put, a.iterations, a.warmup), bench_pair(lget, raw_get, a.iterations, a.warmup)
    report_small(f"HotCache on Redis vs redis-py ({a.value_size} B values)", rp, rg, notes)
    if a.profile: profile('RedisCache.set', lput, a.iterations); profile('RedisCache.get', lget, a.iterations)
    cache.close(); r.close()

def section_dynamodb(a, moto):
    import boto3
    from dataops_lab.store.base import open_table, TableSpec
    spec = TableSpec('bench_items', 'id')
    pay = os.urandom(a.value_size // 2).hex()
    s3url = f"s3://{BUCKET}/offload?region=us-east-1&endpoint_url={moto.endpoint}"
    table = open_table(f"dynamodb://us-east-1?endpoint_url={moto.endpoint}", spec, offload=s3url)
    table.ensure()
    ddb = boto3.client('dynamodb', endpoint_url=moto.endpoint, region_name='us-east-1')
    if 'bench_raw_items' not in ddb.list_tables()['TableNames']:
        ddb.create_table(TableName='bench_raw_items', KeySchema=[{'AttributeName': 'id', 'KeyType': 'HASH'}],
                         AttributeDefinitions=[{'AttributeName': 'id', 'AttributeType': 'S'}], BillingMode='PAY_PER_REQUEST')
        ddb.get_waiter('table_exists').wait(TableName='bench_raw_items')
    lput = lambda i: table.put(payload_item(i, pay))
    lget = lambda i: table.get(key(i))
    prefill(lput)
    pcalls, gcalls = Probe.boto(lput), Probe.boto(lget)
    consistent = next((p.get('ConsistentRead') for n, p, _ in gcalls if n in ('GetItem', 'Query')), None)
    cr = bool(consistent) if consistent is not None else True
    def raw_put(i):
        it = payload_item(i, pay)
        ddb.put_item(TableName='bench_raw_items', Item={'id': {'S': it['id']}, 'owner': {'S': it['owner']},
                     'created_at': {'S': it['created_at']}, 'payload': {'S': pay}, '_version': {'N': '1'}})
    raw_get = lambda i: ddb.get_item(TableName='bench_raw_items', Key={'id': {'S': key(i)}}, ConsistentRead=cr).get('Item')
    prefill(raw_put)
    assert raw_get(0)['payload']['S'] == pay and lget(0)['payload'] == pay
    notes = [f"layer API calls per put (overwriting an existing item): {summarise_calls(pcalls, 3)}",
             f"   {[(n, p, o) for n, p, o in pcalls[:len(pcalls) // 3]]}",
             f"layer API calls per get: {summarise_calls(gcalls, 3)}; raw: one put_item / get_item(ConsistentRead={cr}) on its own table",
             "moto answers in Python on this machine: absolute latencies are moto's, not AWS's; the ratio shows the layer's cost"]
    rp, rg = bench_pair(lput, raw_put, a.iterations, a.warmup), bench_pair(lget, raw_get, a.iterations, a.warmup)
    report_small("MetadataTable on DynamoDB (moto) vs boto3", rp, rg, notes)
    if a.profile: profile('DynamoTable.put', lput, a.iterations // 4); profile('DynamoTable.get', lget, a.iterations // 4)
    table.close()

def section_s3(a, moto):
    import boto3
    from dataops_lab.store.base import open_blob, CHUNK
    val = os.urandom(a.value_size)
    url = f"s3://{BUCKET}/layer?region=us-east-1&endpoint_url={moto.endpoint}"
    blob = open_blob(url)
    blob.ensure()
    s3 = boto3.client('s3', endpoint_url=moto.endpoint, region_name='us-east-1')
    lput = lambda i: blob.put(key(i), val)
    lget = lambda i: blob.get(key(i))
    raw_put = lambda i: s3.put_object(Bucket=BUCKET, Key=f"raw/{key(i)}", Body=val)
    raw_get = lambda i: s3.get_object(Bucket=BUCKET, Key=f"raw/{key(i)}")['Body'].read()
    prefill(lput, raw_put)
    pcalls, gcalls = Probe.boto(lput), Probe.boto(lget)
    scalls = Probe.boto(lambda i: blob.put_stream('probe/parts.bin', RandomSource(2 * CHUNK + 1)), times=1)
    part = max([p.get('Body', 0) for n, p, _ in scalls if n == 'UploadPart'] or [CHUNK])
    assert raw_get(0) == val and lget(0) == val
    notes = [f"layer API calls per put: {summarise_calls(pcalls, 3)}; per get: {summarise_calls(gcalls, 3)}; raw: put_object / get_object().read()",
             f"layer put_stream of {(2 * CHUNK + 1) / MiB:.1f} MiB: {summarise_calls(scalls, 1)}; part size {part / MiB:g} MiB"]
    rp, rg = bench_pair(lput, raw_put, a.iterations, a.warmup), bench_pair(lget, raw_get, a.iterations, a.warmup)
    report_small("BlobStore on S3 (moto) vs boto3", rp, rg, notes)
    if a.profile: profile('S3BlobStore.put', lput, a.iterations // 4); profile('S3BlobStore.get', lget, a.iterations // 4)
    # large
    size = a.s3_large_mb * MiB
    common = {'endpoint': moto.endpoint, 'part_size': part}
    base = {'layer': {**common, 'url': url, 'key': 'large/blob.bin'}, 'raw': {**common, 'key': 'raw/large/blob.bin'},
            'rawseq': {**common, 'key': 'rawseq/large/blob.bin'}}
    runs = large_blob_runs('s3', size, a.repeats, base, ('layer', 'raw', 'rawseq'))
    report_large("BlobStore on S3 (moto)", size, runs,
                 [f"raw: boto3 upload_fileobj/download_fileobj (TransferConfig part size {part / MiB:g} MiB, 10 threads)",
                  f"rawseq: multipart by hand, one {part / MiB:g} MiB part at a time / one streaming get_object, 8 MiB chunks",
                  "the layer is judged against the faster raw way ('best')",
                  "memory target is stated for 500 MiB; see the RSS column for this size"])
    if a.profile:
        psize = min(size, 64 * MiB)
        profile(f'S3BlobStore.put_stream {psize // MiB} MiB', lambda i: blob.put_stream('large/prof.bin', RandomSource(psize)), 1)
        profile(f'S3BlobStore.get_stream {psize // MiB} MiB', lambda i: sum(map(len, blob.get_stream('large/prof.bin'))), 1)
    blob.close()


def section_postgres(a, srv):
    "PostgresTable vs psycopg on the same server and durability: small items (get/put) and large items (1 MiB JSON)"
    import psycopg
    from psycopg_pool import ConnectionPool
    from dataops_lab.store.base import open_table, TableSpec
    spec = TableSpec('bench_items', 'id')
    pay = os.urandom(a.value_size // 2).hex()
    table = open_table(f"{srv.url}?schema=bench", spec)
    table.ensure()
    # the peer: what a psycopg user writes for the same job, independent of our code: a pool, an upsert that bumps a
    # version and returns it, a select of the JSON and version; prepared (psycopg prepares repeated statements itself)
    pool = ConnectionPool(srv.url, min_size=1, max_size=4, kwargs={'autocommit': True}, open=True)
    with pool.connection() as c:
        c.execute("CREATE TABLE IF NOT EXISTS raw_items (id text COLLATE \"C\" PRIMARY KEY, item json NOT NULL, version bigint NOT NULL, expires double precision)")
        sync = {r[0]: r[1] for r in c.execute("SELECT name, setting FROM pg_settings WHERE name IN ('fsync', 'synchronous_commit', 'wal_sync_method')")}
        version = c.execute("SHOW server_version").fetchone()[0]
    up = ("INSERT INTO raw_items AS o (id, item, version, expires) VALUES (%s, %s, 1, %s) ON CONFLICT (id) DO UPDATE "
          "SET item = excluded.item, expires = excluded.expires, version = o.version + 1 RETURNING version")
    sel = "SELECT item, version FROM raw_items WHERE id = %s AND (expires IS NULL OR expires > %s)"
    def raw_put(i, it=None):
        it = it or payload_item(i, pay)
        with pool.connection() as c: return {**it, '_version': c.execute(up, (it['id'], json.dumps(it, separators=(',', ':'), ensure_ascii=False), it.get('expires_at'))).fetchone()[0]}
    def raw_get(i):
        with pool.connection() as c: row = c.execute(sel, (key(i), time.time())).fetchone()
        return None if row is None else {**row[0], '_version': row[1]}
    lput = lambda i: table.put(payload_item(i, pay))
    lget = lambda i: table.get(key(i))
    prefill(lput, raw_put)
    assert raw_get(0)['payload'] == pay and lget(0)['payload'] == pay
    with table._conn() as c: stmts = c.execute("SELECT count(*) FROM pg_prepared_statements").fetchone()[0]
    notes = [f"server: PostgreSQL {version} on loopback, {sync} (both sides; durable commits)",
             f"layer: one INSERT ... ON CONFLICT ... RETURNING per put, one SELECT per get, server-side prepared ({stmts} statements on a pooled connection)",
             "raw: psycopg ConnectionPool, the same upsert / select shape on its own table, json.dumps / psycopg's json loader"]
    rp, rg = bench_pair(lput, raw_put, a.iterations, a.warmup), bench_pair(lget, raw_get, a.iterations, a.warmup)
    report_small(f"MetadataTable on PostgreSQL vs psycopg ({a.value_size} B payload)", rp, rg, notes)
    # large items: 1 MiB of JSON rows per item, layer and raw interleaved
    rows = [{'row': i, 'value': os.urandom(12).hex()} for i in range(a.pg_large_kib * 1024 // 48)]
    big = lambda i: {'id': f"big/{i % 10}", 'owner': 'user_1', 'created_at': '2024-06-01T12:00:00Z', 'rows': rows}
    n = max(20, a.iterations // 20)
    lp = bench_pair(lambda i: table.put(big(i)), lambda i: raw_put(i, big(i)), n, 5, batch=10)
    def raw_get_big(i):
        with pool.connection() as c: row = c.execute(sel, (f"big/{i % 10}", time.time())).fetchone()
        return {**row[0], '_version': row[1]}
    lg = bench_pair(lambda i: table.get(f"big/{i % 10}"), raw_get_big, n, 5, batch=10)
    size = len(json.dumps(big(0), separators=(',', ':')))
    print(f"\n== MetadataTable on PostgreSQL vs psycopg: large items ({size / MiB:.2f} MiB of JSON each), {n} per side, interleaved batches of 10 ==")
    t = 'p99' if n >= 1000 else 'p95'  # a p99 only from 1,000 samples or more
    print(f"   {'op':4} {'layer p50':>10} {'raw p50':>9} {'ratio':>11} | {'layer ' + t:>10} {'raw ' + t:>9}   (ms; target ≤ {LARGE_TARGET:.2f}x)")
    for op, r in (('put', lp), ('get', lg)):
        L, R = r['layer'], r['raw']
        ratio = L['p50'] / R['p50']
        print(f"   {op:4} {L['p50'] / 1000:10.2f} {R['p50'] / 1000:9.2f} {fmt_ratio(ratio, LARGE_TARGET):>11} | {L[t] / 1000:10.2f} {R[t] / 1000:9.2f}")
        RESULTS.append((f"MetadataTable on PostgreSQL: {size / MiB:.0f} MiB item {op}", f"p50 {ratio:.2f}x / {t} {L[t] / R[t]:.2f}x", f"≤ {LARGE_TARGET:.2f}x (p50)", round(ratio, 2) <= LARGE_TARGET))
    if a.profile: profile('PostgresTable.put', lput, a.iterations); profile('PostgresTable.get', lget, a.iterations)
    table.close(); pool.close()

# ---------------------------------------------------------------------------------------------------------------

def versions() -> str:
    import importlib.metadata as md, sqlite3
    def v(p):
        try: return md.version(p)
        except md.PackageNotFoundError: return '-'
    rs = shutil.which('redis-server')
    rsv = subprocess.run([rs, '--version'], capture_output=True, text=True).stdout.split()[2] if rs else 'missing'
    cpu = next((l.split(':', 1)[1].strip() for l in open('/proc/cpuinfo') if l.startswith('model name')), platform.processor())
    try: rev = subprocess.run(['git', '-C', str(ROOT), 'rev-parse', '--short', 'HEAD'], capture_output=True, text=True).stdout.strip()
    except OSError: rev = '?'
    load = open('/proc/loadavg').read().split()[:3]
    return (f"machine: {os.cpu_count()} CPU(s) (nproc {len(os.sched_getaffinity(0))}), {cpu}, {platform.platform()}; load average {' '.join(load)} at start\n"
            f"python {platform.python_version()}; dataops-lab {v('dataops-lab')} (git {rev or '?'}, uncommitted changes possible); "
            f"redis-server {rsv}; redis-py {v('redis')}; boto3 {v('boto3')}; botocore {v('botocore')}; moto {v('moto')}; "
            f"sqlite {sqlite3.sqlite_version}")

def main():
    p = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    p.add_argument('--quick', action='store_true', help='small iteration counts and 20 MiB large blobs (a smoke run)')
    p.add_argument('--backends', default='embedded,redis,aws,postgres', help='comma-separated: embedded (SQLite + files), redis, aws (moto S3 + DynamoDB), postgres')
    p.add_argument('--pg-large-kib', type=int, default=1024, help='JSON size of a large PostgreSQL item in KiB (default 1024)')
    p.add_argument('--large-mb', type=int, default=None, help='large blob size for files (default 500, quick 20)')
    p.add_argument('--s3-large-mb', type=int, default=None, help='large blob size for S3 on moto (default 200, quick 20)')
    p.add_argument('--iterations', type=int, default=None, help='timed small ops per side (default 2000, quick 200)')
    p.add_argument('--repeats', type=int, default=None, help='large-blob runs per side (default 5, quick 1)')
    p.add_argument('--value-size', type=int, default=1024, help='small value size in bytes (default 1024)')
    p.add_argument('--profile', action='store_true', help='also cProfile the layer calls and print the top functions')
    p.add_argument('--child', help=argparse.SUPPRESS)
    a = p.parse_args()
    if a.child: return child_main(json.loads(a.child))
    a.iterations = a.iterations or (200 if a.quick else 2000)
    TAIL[0] = 'p99' if a.iterations >= 1000 else 'p95'  # a p99 only from 1,000 samples or more
    a.warmup = max(10, a.iterations // 10)
    a.large_mb = a.large_mb or (20 if a.quick else 500)
    a.s3_large_mb = a.s3_large_mb or (20 if a.quick else 200)
    a.repeats = a.repeats or (1 if a.quick else 5)
    wanted = {b.strip() for b in a.backends.split(',') if b.strip()}
    if bad := wanted - {'embedded', 'redis', 'aws', 'postgres'}: p.error(f"unknown backend(s) {sorted(bad)}; use embedded, redis, aws, postgres")

    from servers import RedisServer, MotoServer, PostgresServer
    print(f"dataops-lab storage benchmark{' (quick)' if a.quick else ''}: {a.iterations} timed small ops per side after "
          f"{a.warmup} warm-up, alternating batches of 100; large blobs {a.repeats} run(s) per side")
    print(versions())
    t_start = time.perf_counter()
    tmp = tempfile.mkdtemp(prefix='dataops-bench-')
    servers = []
    def guarded(name, fn, *args):
        try: fn(*args)
        except Exception as e:
            import traceback
            skip(name, f"failed: {type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"); FAILED.append(name)
            traceback.print_exc(limit=4)
    try:
        if 'embedded' in wanted:
            guarded('HotCache on SQLite', section_sqlite_cache, a, tmp)
            guarded('MetadataTable on SQLite', section_sqlite_table, a, tmp)
            guarded('BlobStore on files', section_file_blob, a, tmp)
        if 'redis' in wanted:
            if not shutil.which('redis-server'):
                skip('HotCache on Redis', "redis-server is not installed: `sudo apt-get install redis-server` (Debian/Ubuntu), "
                     "`brew install redis` (macOS), or run `./run test` once, which installs it")
                FAILED.append('HotCache on Redis')
            else:
                srv = RedisServer().start(); servers.append(srv)
                guarded('HotCache on Redis', section_redis, a, srv)
        if 'aws' in wanted:
            moto = MotoServer().start(); servers.append(moto)
            import boto3
            s3 = boto3.client('s3', endpoint_url=moto.endpoint, region_name='us-east-1')
            try: s3.create_bucket(Bucket=BUCKET)
            except s3.exceptions.BucketAlreadyOwnedByYou: pass
            guarded('MetadataTable on DynamoDB', section_dynamodb, a, moto)
            guarded('BlobStore on S3', section_s3, a, moto)
        if 'postgres' in wanted:
            pg = PostgresServer().start(); servers.append(pg)  # PostgreSQL's defaults: fsync on, synchronous_commit on
            guarded('MetadataTable on PostgreSQL', section_postgres, a, pg)
    finally:
        for s in servers:
            try: s.stop()
            except Exception as e: print(f"could not stop {type(s).__name__}: {e}")
            # the servers' own temp folders (redis working dir, moto log)
            if getattr(s, 'dir', None): shutil.rmtree(s.dir, ignore_errors=True)
            if getattr(s, 'log', None): s.log.close(); shutil.rmtree(Path(s.log.name).parent, ignore_errors=True)
            if hasattr(s, 'cleanup'): s.cleanup()
        shutil.rmtree(tmp, ignore_errors=True)

    print(f"\n== Summary (layer / raw; {time.perf_counter() - t_start:.0f} s; load average {' '.join(open('/proc/loadavg').read().split()[:3])} at end) ==")
    w = max([len(r[0]) for r in RESULTS] + [10])
    print(f"   {'measure':{w}}  {'figure':>22}  {'target':>12}  verdict")
    for name, fig, target, ok in RESULTS:
        print(f"   {name:{w}}  {fig:>22}  {target:>12}  {'-' if ok is None else 'ok' if ok else 'MISS'}")
    missed = [r for r in RESULTS if r[3] is False]
    print(f"   {len(missed)} target(s) missed, {sum(r[3] is None for r in RESULTS)} section(s) skipped")
    if FAILED: sys.exit(f"error: {len(FAILED)} section(s) failed: {', '.join(FAILED)} (tracebacks above)")

if __name__ == '__main__':
    main()
