"""ArtifactStore behaviour, the same on the embedded default (SQLite + files) and on Redis + DynamoDB + S3
(real servers: redis-server and moto's S3 + DynamoDB over HTTP), plus what a notebook cannot show:
hundreds of megabytes in bounded memory, two processes allocating versions, a store that dies half-way."""
import asyncio, base64, hashlib, io, json, os, subprocess, sys, textwrap, threading, time, tracemalloc, uuid
from pathlib import Path
import pandas as pd
import pytest, zstandard
from dataops_lab.core import *
from dataops_lab.config import load_settings
from dataops_lab.models import Artifact, ArtifactType, Scope
from dataops_lab.store.base import Storage, ARTIFACTS_TABLE
from dataops_lab.artifact_content import ContentError
from dataops_lab.artifacts import *
from conftest import write_ini

MiB = 1 << 20

@pytest.fixture
def storage(ini):
    st = Storage(load_settings(ini)).ensure(ARTIFACT_TABLES)
    yield st
    st.close()

@pytest.fixture
def store(storage):
    "A store that sends every content to the blob store, as most tests here are about that path (inline content: its own tests)"
    with ArtifactStore(storage, inline_threshold=0) as s: yield s

def cas_keys(store): return sorted(store.blob.iter_keys('artifacts/cas/'))
def all_items(table):
    out, cursor = [], None
    while True:
        page = table.scan(limit=100, cursor=cursor)
        out += page.items
        if not (cursor := page.cursor): return out
def sid(): return f"sess_{uuid.uuid4().hex[:12]}"
def wait_until(t: float):
    "Let the clock pass `t` (epoch seconds): TTLs are defined by the clock, so this is the condition itself"
    while now_ts() <= t: time.sleep(0.01)

# ---------------------------------------------------------------- content round-trips

class Pipe(io.RawIOBase):
    "A read-only stream that cannot seek, like a socket"
    def __init__(self, data): self.src = io.BytesIO(data)
    def readable(self): return True
    def readinto(self, b): return self.src.readinto(b)

def test_round_trips_every_kind(store, tmp_path):
    s = sid()
    df = pd.DataFrame({'region': pd.Categorical(['eu', 'us', 'eu']), 'total': [1.5, 2.0, None], 'n': pd.array([1, None, 3], dtype='Int64'),
                       'at': pd.to_datetime(['2024-01-01', '2024-01-02', '2024-01-03']).tz_localize('UTC')},
                      index=pd.MultiIndex.from_tuples([('a', 1), ('a', 2), ('b', 1)], names=['k', 'i']))
    f = tmp_path / 'orders.csv'
    f.write_bytes(b"id,total\n" + b"".join(b"%d,%d.5\n" % (i, i) for i in range(5000)))
    cases = {'text': ("héllo\nworld", 'text', 'text/plain; charset=utf-8'), 'raw': (b'\x00\xffdata', 'bytes', 'application/octet-stream'),
             'doc': ({'a': [1, 2.5, None, True, {'b': 'c'}]}, 'json', 'application/json'), 'rows': ([{'x': 1}, {'x': 2}], 'json', 'application/json')}
    for name, (value, enc, ct) in cases.items():
        a = store.get_artifact(store.store_artifact(value, s, 'wf', name=name))
        assert (a.encoding, a.content_type, a.name) == (enc, ct, name)
        assert store.get_artifact_content(a.artifact_id) == value
        assert type(store.get_artifact_content(a.artifact_id)) is type(value)
    back = store.get_artifact_content(store.store_artifact(df, s, 'wf', name='frame'))
    pd.testing.assert_frame_equal(back, df)
    with open(f, 'rb') as fobj:
        for content, ct in ((f, 'text/csv'), (fobj, 'text/csv'), (Pipe(f.read_bytes()), 'application/octet-stream')):
            a = store.get_artifact(store.store_artifact(content, s, 'wf', name='file'))
            assert (a.encoding, a.content_type, a.size, a.content_hash) == ('file', ct, f.stat().st_size, hashlib.sha256(f.read_bytes()).hexdigest())
            assert store.get_artifact_content(a.artifact_id) == f.read_bytes()

def test_seed_calls_with_no_arguments(tmp_path, monkeypatch):
    "ArtifactStore() opens the embedded default from settings, with nothing else set up"
    monkeypatch.setenv('DATAOPS_SETTINGS', str(write_ini(tmp_path, 'embedded')))
    session_id, data = sid(), {'rows': 3}
    with ArtifactStore() as artifact_store:
        artifact_id = artifact_store.store_artifact(content=data, session_id=session_id, workflow_name="my_workflow")
        content = artifact_store.get_artifact_content(artifact_id)
        artifacts = artifact_store.list_artifacts(session_id)
    assert content == data and [a.artifact_id for a in artifacts] == [artifact_id]
    assert (tmp_path / '.dataops' / 'meta.db').exists() and (tmp_path / '.dataops' / 'blobs').is_dir()

# ---------------------------------------------------------------- content addressing and compression

def test_identical_content_is_stored_once(store):
    body = ("id,region,total\n" + "".join(f"{i},eu,{i}.25\n" for i in range(20_000))).encode()
    a1 = store.store_artifact(body, sid(), 'ingest', name='orders')
    a2 = store.store_artifact(body, sid(), 'ingest', name='orders_copy')
    a3 = store.store_artifact(io.BytesIO(body), sid(), 'other', name='orders_file')
    arts = [store.get_artifact(a) for a in (a1, a2, a3)]
    assert len({a.blob_key for a in arts}) == 1 and len({a.content_hash for a in arts}) == 1
    assert cas_keys(store) == [arts[0].blob_key]
    ref = store.blobs.get(arts[0].content_hash)
    assert ref['refs'] == 3 and ref['compression'] == 'zstd' and ref['stored_size'] < len(body) // 2
    for a in (a1, a2, a3): assert store.get_artifact_content(a) == body

def test_small_content_lives_in_the_item(storage, tmp_path):
    "Content up to inline_threshold bytes is kept in the artifact item: no blob, no reference count, same reads, nothing left by a purge"
    store, s = ArtifactStore(storage), sid()
    at, over = "a" * store.inline_threshold, "a" * (store.inline_threshold + 1)
    small = {'rows': 3, 'sql': 'SELECT 1'}
    ids = {k: store.store_artifact(v, s, 'wf', name=k) for k, v in {'small': small, 'at': at, 'over': over, 'frame': pd.DataFrame({'v': [i * 1.37 for i in range(3000)]})}.items()}
    arts = {k: store.get_artifact(i) for k, i in ids.items()}
    inline = {k for k, a in arts.items() if not a.blob_key}
    assert arts['frame'].size > store.inline_threshold and inline == {'small', 'at'}
    assert cas_keys(store) == sorted([arts['over'].blob_key, arts['frame'].blob_key])
    assert store.blobs.get(arts['small'].content_hash) is None and store.blobs.get(arts['over'].content_hash)['refs'] == 1
    assert store.get_artifact_content(ids['small']) == small and store.get_artifact_content(ids['at']) == at
    assert b''.join(store.open_artifact_content(ids['at'], chunk_size=1000)) == at.encode()
    assert store.save_artifact_content(ids['small'], tmp_path / 'small.json').read_bytes() == b'{"rows":3,"sql":"SELECT 1"}'
    v2 = store.store_artifact({'rows': 4}, s, 'wf', name='small', parents=[ids['small']])
    assert store.get_artifact(v2).version == 2 and store.get_artifact_content(ids['small'], version=2) == {'rows': 4}
    assert store.purge_session_artifacts(s) == 5
    assert (cas_keys(store), all_items(store.items), all_items(store.versions), all_items(store.blobs)) == ([], [], [], [])
    with pytest.raises(ConfigError, match='inline_threshold must be an int from 0 to 65,536, got -1'): ArtifactStore(storage, inline_threshold=-1)

def test_compression_only_when_it_pays(storage):
    store = ArtifactStore(storage, compress_threshold=4096)
    s, text = sid(), "SELECT region, sum(total) FROM orders GROUP BY region;\n" * 500
    cases = {'text': text, 'small': "x" * 4000, 'random': os.urandom(100_000), 'png': b'\x89PNG\r\n\x1a\n' + b'\x00' * 100_000,
             'frame': pd.DataFrame({'v': ['same'] * 50_000})}
    got = {k: store.get_artifact(store.store_artifact(v, s, 'wf', name=k)) for k, v in cases.items()}
    assert {k: a.compression for k, a in got.items()} == {'text': 'zstd', 'small': None, 'random': None, 'png': None, 'frame': None}
    assert got['text'].stored_size < got['text'].size // 10
    assert store.get_artifact_content(got['text'].artifact_id) == text

# ---------------------------------------------------------------- large artifacts, bounded memory

def make_file(path: Path, size: int):
    "`size` bytes of hex text from random bytes: compresses to about half, so the zstd streaming path is used"
    block = os.urandom(MiB // 2).hex().encode()
    with open(path, 'wb') as f:
        for _ in range(size // len(block)): f.write(block)
    return sha_file(path)

def sha_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, 'rb') as f:
        while b := f.read(8 * MiB): h.update(b)
    return h.hexdigest()

def test_large_file_streams_in_and_out_in_bounded_memory(store, backend, tmp_path):
    size = 200 * MiB if backend == 'embedded' else 30 * MiB
    src, out = tmp_path / 'extract.bin', tmp_path / 'copy.bin'
    digest = make_file(src, size)
    tracemalloc.start()
    try:
        aid = store.store_artifact(src, sid(), 'extract', content_type='text/plain')
        _, peak_in = tracemalloc.get_traced_memory(); tracemalloc.reset_peak()
        h, n = hashlib.sha256(), 0
        for chunk in store.open_artifact_content(aid):
            h.update(chunk); n += len(chunk)
        _, peak_iter = tracemalloc.get_traced_memory(); tracemalloc.reset_peak()
        store.save_artifact_content(aid, out)
        _, peak_save = tracemalloc.get_traced_memory()
    finally: tracemalloc.stop()
    a = store.get_artifact(aid)
    assert (a.size, a.content_hash, a.compression, a.encoding) == (size, digest, 'zstd', 'file')
    assert a.stored_size < size * 0.7
    assert (n, h.hexdigest()) == (size, digest)
    assert out.stat().st_size == size and sha_file(out) == digest
    limit = 48 * MiB
    assert peak_in < limit and peak_iter < limit and peak_save < limit, (peak_in, peak_iter, peak_save)

# ---------------------------------------------------------------- versions

def test_versions_per_scope(store):
    s1, s2 = sid(), sid()
    ids = [store.store_artifact({'v': i}, s1, 'profile', name='orders_profile') for i in range(1, 4)]
    other = store.store_artifact({'v': 'other'}, s2, 'profile', name='orders_profile')
    assert [store.get_artifact(i).version for i in ids + [other]] == [1, 2, 3, 1]
    assert store.get_artifact_content(ids[2], version=1) == {'v': 1}
    assert store.get_artifact_content(ids[0], version=3) == {'v': 3}
    assert [a.artifact_id for a in store.list_versions(ids[1])] == ids
    assert [a.version for a in store.list_versions(name='orders_profile', session_id=s2)] == [1]
    with pytest.raises(NotFoundError, match=r"no version 4 \(versions 1-3\)"): store.get_artifact_content(ids[0], version=4)
    with pytest.raises(InvalidKeyError, match='positive int'): store.get_artifact_content(ids[0], version=0)
    u1 = store.store_artifact({'cur': 'EUR'}, s1, 'prefs', name='prefs', scope=Scope.USER, user_id='user_7')
    u2 = store.store_artifact({'cur': 'USD'}, s2, 'prefs', name='prefs', scope='user', user_id='user_7')
    g1 = store.store_artifact('a', s1, 'docs', name='glossary', scope='global')
    g2 = store.store_artifact('b', s2, 'docs', name='glossary', scope='global')
    assert [store.get_artifact(i).version for i in (u1, u2, g1, g2)] == [1, 2, 1, 2]
    assert [a.artifact_id for a in store.list_versions(name='prefs', scope='user', user_id='user_7')] == [u1, u2]
    assert [a.artifact_id for a in store.list_versions(name='glossary', scope='global')] == [g1, g2]

WORKER = textwrap.dedent("""
    import sys, time, json
    from pathlib import Path
    from dataops_lab.config import load_settings
    from dataops_lab.store.base import Storage
    from dataops_lab.artifacts import ArtifactStore
    ini, session, n, go, tag = sys.argv[1], sys.argv[2], int(sys.argv[3]), Path(sys.argv[4]), sys.argv[5]
    store = ArtifactStore(Storage(load_settings(ini)))
    list(store.versions.query('warmup', limit=1))  # connect before the start signal
    deadline = time.monotonic() + 60
    while not go.exists():
        if time.monotonic() > deadline: sys.exit('no start signal')
        time.sleep(0.001)
    ids = [store.store_artifact({'by': tag, 'i': i}, session, 'loader', name='daily_extract') for i in range(n)]
    print(json.dumps(ids))
""")

def test_remembered_next_version_yields_to_other_writers(storage):
    "A store tries the version after its last one first; when another store took it, it reads the latest and takes the next"
    mine, theirs, s = ArtifactStore(storage), ArtifactStore(storage), sid()
    ids = [mine.store_artifact({'v': 1}, s, 'wf', name='n'), mine.store_artifact({'v': 2}, s, 'wf', name='n')]
    ids += [theirs.store_artifact({'v': 3}, s, 'wf', name='n'), theirs.store_artifact({'v': 4}, s, 'wf', name='n')]
    ids += [mine.store_artifact({'v': 5}, s, 'wf', name='n'), theirs.store_artifact({'v': 6}, s, 'wf', name='n')]
    assert [mine.get_artifact(i).version for i in ids] == [1, 2, 3, 4, 5, 6]
    assert [mine.get_artifact_content(i) for i in ids] == [{'v': k} for k in range(1, 7)]
    assert mine.purge_session_artifacts(s) == 6
    assert mine.get_artifact(mine.store_artifact({'v': 1}, s, 'wf', name='n')).version == 1  # a purge forgets the remembered number

def test_two_processes_get_distinct_gap_free_versions(ini, storage, tmp_path):
    import json
    session, n, go = sid(), 15, tmp_path / 'go'
    procs = [subprocess.Popen([sys.executable, '-c', WORKER, str(ini), session, str(n), str(go), tag], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for tag in ('p1', 'p2')]
    go.touch()
    outs = [p.communicate(timeout=300) for p in procs]
    assert all(p.returncode == 0 for p in procs), [o[1][-2000:] for o in outs]
    ids = [json.loads(o[0]) for o in outs]
    store = ArtifactStore(storage)
    versions = {i: store.get_artifact(i).version for batch in ids for i in batch}
    assert len(versions) == 2 * n
    assert sorted(versions.values()) == list(range(1, 2 * n + 1))
    for batch in ids: assert [versions[i] for i in batch] == sorted(versions[i] for i in batch)  # each process sees its own versions grow
    assert [a.version for a in store.list_versions(ids[0][0])] == list(range(1, 2 * n + 1))
    assert {store.get_artifact_content(i)['by'] for i in ids[0]} == {'p1'}

CRASH = textwrap.dedent("""
    import os, sys
    from dataops_lab.config import load_settings
    from dataops_lab.store.base import Storage
    from dataops_lab.artifacts import ArtifactStore, _entry
    from dataops_lab.artifact_content import encode_content
    store = ArtifactStore(Storage(load_settings(sys.argv[1])))
    # store_artifact writes the version entry, edges and item together (put_many), so no crash splits them; a store by an
    # earlier release wrote the version entry first, then the edges and the item: its first write is made here, then the
    # process dies before the others, to test the read that completes such a store
    item, nk, _ = store._new_item(sys.argv[2], 'loader', 'daily_extract', 'result', [sys.argv[3]], None, 'session', None, None, None)
    enc = encode_content({'crashed': True})
    ref = store._acquire(enc)
    item.update(content_type=enc.content_type, encoding=enc.encoding, size=enc.size, content_hash=enc.sha256, blob_key=ref['blob_key'], stored_size=ref['stored_size'])
    item['name_key'] = nk
    item['version'] = 2
    store.versions.put(_entry(item), if_absent=True)
    print(item['artifact_id'], flush=True)
    os._exit(9)
""")

def test_a_store_that_dies_half_way_is_completed_by_the_next_read(ini, storage):
    store = ArtifactStore(storage)
    s = sid()
    first = store.store_artifact({'crashed': False}, s, 'loader', name='daily_extract')
    p = subprocess.run([sys.executable, '-c', CRASH, str(ini), s, first], capture_output=True, text=True, timeout=120)
    assert p.returncode == 9, p.stderr[-2000:]
    crashed = p.stdout.strip()
    assert store.items.get(crashed) is None  # the item was never written ...
    a = store.get_artifact(crashed)  # ... but the version entry was complete, so the read finishes the store
    assert (a.version, a.parents, store.get_artifact_content(crashed)) == (2, [first], {'crashed': True})
    assert [x.artifact_id for x in store.list_artifacts(s)] == [crashed, first]
    assert store.get_lineage(first, 'downstream').children(first) == [crashed]
    assert store.get_artifact(store.store_artifact({'next': 1}, s, 'loader', name='daily_extract')).version == 3

# ---------------------------------------------------------------- failures leave nothing behind

class FailingReader(io.BytesIO):
    "A seekable file whose second pass (the upload, after hashing) fails part-way"
    def __init__(self, data):
        super().__init__(data); self.passes = 0
    def seek(self, *a):
        self.passes += 1; return super().seek(*a)
    def read(self, n=-1):
        if self.passes >= 1 and self.tell() > 4 * MiB: raise OSError("disk went away")
        return super().read(n)

class Growing(io.BytesIO):
    "A log file another writer appends to after it was hashed, before it is uploaded"
    seeks = 0
    def seek(self, *a):
        self.seeks += 1
        if self.seeks == 1:
            super().seek(0, 2); self.write(b'late line\n')
        return super().seek(*a)

CYCLIC = {}; CYCLIC['self'] = CYCLIC
DEEP = []
for _ in range(200): DEEP = [DEEP]

def test_failures_leave_nothing_half_written(store, tmp_path):
    s = sid()
    with pytest.raises(OSError, match='disk went away'): store.store_artifact(FailingReader(os.urandom(12 * MiB)), s, 'wf', name='broken')
    with pytest.raises(ContentError, match='changed while it was being stored'): store.store_artifact(Growing(b'line\n' * 100_000), s, 'wf', name='moving')
    bad_calls = [
        (ContentError, 'cannot store a builtins.object', lambda: store.store_artifact(object(), s, 'wf')),
        (ContentError, r"content\['t'\] is a builtins.tuple", lambda: store.store_artifact({'t': (1, 2)}, s, 'wf')),
        (InvalidKeyError, 'session_id is empty', lambda: store.store_artifact('x', '', 'wf')),
        (InvalidKeyError, 'session_id must be a str, got int', lambda: store.store_artifact('x', 42, 'wf')),
        (InvalidKeyError, 'workflow_name is empty', lambda: store.store_artifact('x', s, '  ')),
        (InvalidKeyError, "name 'a/b' is not allowed", lambda: store.store_artifact('x', s, 'wf', name='a/b')),
        (InvalidKeyError, 'artifact_type must be one of', lambda: store.store_artifact('x', s, 'wf', artifact_type='final')),
        (InvalidKeyError, 'scope must be one of', lambda: store.store_artifact('x', s, 'wf', scope='team')),
        (InvalidKeyError, "scope='user' needs the user", lambda: store.store_artifact('x', s, 'wf', scope='user')),
        (NotFoundError, "no artifact 'art_missing'", lambda: store.store_artifact('x', s, 'wf', parents=['art_missing'])),
        (ConfigError, 'ttl must be a positive number', lambda: store.store_artifact('x', s, 'wf', ttl=0)),
        (ContentError, 'metadata must be a dict', lambda: store.store_artifact('x', s, 'wf', metadata=['a'])),
        (NotFoundError, 'does not exist', lambda: store.store_artifact(tmp_path / 'nope.csv', s, 'wf')),
        (NotFoundError, "no artifact 'art_nope'", lambda: store.get_artifact('art_nope')),
        (NotFoundError, "no artifact 'art_nope'", lambda: store.get_artifact_content('art_nope')),
        (InvalidKeyError, 'artifact_id must be a str, got dict', lambda: store.get_artifact({'id': 1})),
        (NotFoundError, "no artifact 'art_nope'", lambda: store.share_artifact('art_nope', s)),
        (NotFoundError, "no artifact 'art_nope'", lambda: store.get_lineage('art_nope')),
        (ConfigError, 'limit must be a positive int', lambda: store.list_artifacts(s, limit=0)),
        (InvalidKeyError, 'since must be a datetime', lambda: store.list_artifacts(s, since='yesterday')),
        # every stored field is checked on write (issue 11 item 13), values that would not round-trip are refused (item 14)
        (InvalidInputError, 'content_type must be a str, got int: 123', lambda: store.store_artifact('x', s, 'wf', content_type=123)),
        (InvalidInputError, "content_type 'csv' is not a MIME type", lambda: store.store_artifact('x', s, 'wf', content_type='csv')),
        (InvalidInputError, "content_type 'text/csv..' is not a MIME type", lambda: store.store_artifact('x', s, 'wf', content_type='text/csv\n')),
        (ContentError, 'content contains a lone surrogate', lambda: store.store_artifact('caf\udce9', s, 'wf')),
        (ContentError, r"content\['note'\] contains a lone surrogate", lambda: store.store_artifact({'note': 'caf\udce9'}, s, 'wf')),
        (ContentError, r"content\['self'\] contains itself", lambda: store.store_artifact(CYCLIC, s, 'wf')),
        (ContentError, 'nested more than 64 levels', lambda: store.store_artifact(DEEP, s, 'wf')),
        (ContentError, r"metadata\['self'\] contains itself", lambda: store.store_artifact('x', s, 'wf', metadata=CYCLIC)),
        (ContentError, r"metadata\['x'\] is nan", lambda: store.store_artifact('x', s, 'wf', metadata={'x': float('nan')})),
        (ContentError, r"metadata has the key 1 \(int\)", lambda: store.store_artifact('x', s, 'wf', metadata={1: 'a'})),
        (InvalidIdError, "session_id 'team/b' is not allowed", lambda: store.store_artifact('x', 'team/b', 'wf')),
        (InvalidIdError, "user_id 'a b' is not allowed", lambda: store.store_artifact('x', s, 'wf', user_id='a b')),
    ]
    for exc, msg, call in bad_calls:
        with pytest.raises(exc, match=msg): call()
    assert (cas_keys(store), all_items(store.items), all_items(store.versions), all_items(store.blobs)) == ([], [], [], [])

# ---------------------------------------------------------------- listing, search, sharing

def test_listing_search_and_sharing(store):
    s1, s2, s3 = sid(), sid(), sid()
    t0 = utcnow()
    a = store.store_artifact({'n': 1}, s1, 'profile', name='orders_profile', metadata={'table': 'orders'}, user_id='user_1')
    b = store.store_artifact("trace", s1, 'profile', artifact_type=ArtifactType.DEBUG, metadata={'table': 'orders'})
    t1 = utcnow()
    c = store.store_artifact({'sql': 'select 1'}, s1, 'sql_gen', name='query')
    d = store.store_artifact({'n': 2}, s2, 'profile', name='orders_profile', metadata={'table': 'customers'}, user_id='user_2')
    ids = lambda arts: [x.artifact_id for x in arts]
    assert ids(store.list_artifacts(s1)) == [c, b, a]
    assert ids(store.list_artifacts(s1, limit=2)) == [c, b]
    assert ids(store.list_artifacts(s1, workflow_name='profile')) == [b, a]
    assert ids(store.list_artifacts(s1, artifact_type='debug')) == [b]
    assert ids(store.list_artifacts(s1, name='query')) == [c]
    assert ids(store.list_artifacts(s1, since=t1)) == [c] and ids(store.list_artifacts(s1, until=t1)) == [b, a]
    assert ids(store.list_artifacts(s1, since=t0, until=t1, artifact_type='result')) == [a]
    assert ids(store.search(workflow_name='profile')) == [d, b, a]
    assert ids(store.search(name='orders_profile')) == [d, a] and ids(store.search(name='orders_profile', limit=1)) == [d]
    assert ids(store.search(metadata={'table': 'orders'})) == [b, a]
    assert ids(store.search(workflow_name='profile', metadata={'table': 'customers'})) == [d]
    assert ids(store.search(user_id='user_1')) == [a] and ids(store.search(artifact_type='debug', limit=5)) == [b]
    assert store.share_artifact(d, s1).shared_with == [s1]
    assert store.share_artifact(d, s3).shared_with == [s1, s3]
    assert store.get_artifact_content(d) == {'n': 2}
    assert ids(store.list_artifacts(s1)) == [d, c, b, a] and ids(store.list_artifacts(s1, include_shared=False)) == [c, b, a]
    assert ids(store.list_artifacts(s3)) == [d]
    u = store.store_artifact({'cur': 'EUR'}, s1, 'prefs', scope='user', user_id='user_1')
    g = store.store_artifact({'k': 'v'}, s2, 'docs', scope='global')
    assert ids(store.list_artifacts(s3)) == [g, d]  # s3's user is unknown: global and shared only
    assert ids(store.list_artifacts(s3, user_id='user_1')) == [g, u, d]
    assert g in ids(store.list_artifacts(sid()))

def test_access_counts_are_atomic(store):
    aid = store.store_artifact({'hits': 0}, sid(), 'wf')
    def reader():
        for _ in range(10): store.get_artifact_content(aid)
    threads = [threading.Thread(target=reader) for _ in range(8)]
    for t in threads: t.start()
    for t in threads: t.join()
    a = store.get_artifact(aid)
    assert a.access_count == 80 and a.last_accessed is not None

def test_reads_write_nothing_until_the_counts_are_flushed(storage):
    store = ArtifactStore(storage, access_flush_every=3600)  # only the explicit flush writes in this test
    aid = store.store_artifact({'n': 1}, sid(), 'wf')
    items = storage.table(ARTIFACTS_TABLE)
    before = items.get(aid)
    for _ in range(5): store.get_artifact_content(aid)
    list(store.open_artifact_content(aid))
    after = items.get(aid)
    assert after == before  # six reads, nothing written
    assert store.get_artifact(aid).access_count == 6 and store.list_artifacts(before['session_id'])[0].access_count == 6
    assert store.flush_access_counts() == 1 and store.flush_access_counts() == 0
    after = items.get(aid)
    assert (after['access_count'], after['_version']) == (6, before['_version'] + 1)  # one write for all six
    assert ArtifactStore(storage).get_artifact(aid).access_count == 6  # and every store sees it
    store.get_artifact_content(aid)
    store.close()  # closing writes what is left
    assert items.get(aid)['access_count'] == 7

READER = textwrap.dedent("""
    import sys
    from dataops_lab.config import load_settings
    from dataops_lab.store.base import Storage
    from dataops_lab.artifacts import ArtifactStore
    store = ArtifactStore(Storage(load_settings(sys.argv[1])), access_flush_every=3600)
    for _ in range(4): store.get_artifact_content(sys.argv[2])
""")

def test_counts_of_a_process_that_exits_are_written(ini, storage):
    aid = ArtifactStore(storage).store_artifact({'n': 2}, sid(), 'wf')
    subprocess.run([sys.executable, '-c', READER, str(ini), aid], check=True, timeout=120, cwd=Path(ini).parent)
    assert ArtifactStore(storage).get_artifact(aid).access_count == 4  # written at exit, not on each read

# ---------------------------------------------------------------- lineage

def test_lineage(store):
    s1, s2 = sid(), sid()
    raw = store.store_artifact(b'raw', s1, 'ingest', name='raw', created_by='load')
    clean = store.store_artifact(b'clean', s1, 'ingest', name='clean', created_by='clean', parents=[raw])
    prof = store.store_artifact({'p': 1}, s2, 'profile', parents=raw)
    report = store.store_artifact({'r': 1}, s2, 'report', created_by='aggregate', parents=[clean, store.get_artifact(prof)])
    chart = store.store_artifact(b'png', s2, 'report', name='chart')
    assert store.link_artifacts(report, chart).parents == [report]
    assert store.link_artifacts(report, chart).parents == [report]  # idempotent
    with pytest.raises(LineageError, match='would make a cycle'): store.link_artifacts(chart, raw)
    with pytest.raises(LineageError, match='to itself'): store.link_artifacts(raw, raw)
    with pytest.raises(NotFoundError, match="no artifact 'art_x'"): store.link_artifacts('art_x', raw)
    up = store.get_lineage(chart, 'upstream', depth=3)
    assert set(up.nodes) == {chart, report, clean, prof, raw} and set(up.edges) == {(report, chart), (clean, report), (prof, report), (raw, clean), (raw, prof)}
    assert (up.nodes[report].session_id, up.nodes[report].workflow_name, up.nodes[report].created_by) == (s2, 'report', 'aggregate')
    assert set(store.get_lineage(chart, 'upstream', depth=1).nodes) == {chart, report}
    down = store.get_lineage(raw, 'downstream', depth=5)
    assert set(down.nodes) == {raw, clean, prof, report, chart} and sorted(down.children(raw)) == sorted([clean, prof])
    both = store.get_lineage(clean, 'both', depth=1)
    assert set(both.nodes) == {raw, clean, report} and '```mermaid' in both._repr_markdown_()
    with pytest.raises(ConfigError, match='direction'): store.get_lineage(raw, 'sideways')

def test_an_unlisted_version_reads_as_it_was_when_unlisted(store):
    "Unlisting (a superseded summary's fate) keeps what changed on the item — linked parents, counted reads — and changing it lists it again"
    s = sid()
    base = store.store_artifact(b'base', s, 'ingest', name='base')
    v1 = store.store_artifact('one', s, 'session', name='notes', artifact_type=ArtifactType.CONTEXT)
    v2 = store.store_artifact('two', s, 'session', name='notes', artifact_type=ArtifactType.CONTEXT)
    store.link_artifacts(base, v1)
    store.get_artifact_content(v1); store.flush_access_counts()
    assert store._unlist(v1) and not store._unlist(v1)  # once
    assert [a.artifact_id for a in store.list_artifacts(s)] == [v2, base] and store.search(workflow_name='session', name='notes').__len__() == 1
    a = store.get_artifact(v1)
    assert (a.parents, a.access_count, a.version, store.get_artifact_content(v1)) == ([base], 1, 1, 'one')
    assert set(store.get_lineage(v1).nodes) == {v1, base} and [x.artifact_id for x in store.list_versions(v2)] == [v1, v2]
    assert store.get_artifact_content(v2, version=1) == 'one'
    store.share_artifact(v1, sid())  # a change: back in the table first
    assert v1 in [x.artifact_id for x in store.list_artifacts(s)] and store.get_artifact(v1).parents == [base]
    assert store.purge_session_artifacts(s) == 3

# ---------------------------------------------------------------- expiry

def test_expired_artifacts(storage):
    store = ArtifactStore(storage, ttl_policies={ArtifactType.DEBUG: 2.0}, inline_threshold=0)  # blobs released on expiry: every content in one
    s = sid()
    keep = store.store_artifact("result", s, 'wf', name='result')
    dbg = store.store_artifact("debug trace " * 200, s, 'wf', name='trace', artifact_type='debug')
    short = store.store_artifact({'x': 1}, s, 'wf', name='short', ttl=2.0, parents=[keep])
    shared_blob = store.store_artifact("result", s, 'wf', name='same_as_result', ttl=2.0)
    arts = {i: store.get_artifact(i) for i in (keep, dbg, short, shared_blob)}
    assert (arts[keep].expires_at, arts[dbg].ttl, arts[short].ttl) == (None, 2.0, 2.0)  # long enough for the reads below on a loaded machine
    assert store.get_artifact_content(dbg).startswith("debug trace")
    wait_until(max(a.expires_at for a in arts.values() if a.expires_at))
    for i in (dbg, short, shared_blob):
        with pytest.raises(ExpiredError, match=f"artifact '{i}' .* expired at"): store.get_artifact(i)
        with pytest.raises(ExpiredError, match='TTL ran out'): store.get_artifact_content(i)
    assert [a.artifact_id for a in store.list_artifacts(s)] == [keep]
    assert store.list_versions(name='trace', session_id=s) == []
    assert store.get_lineage(keep, 'downstream').children(keep) == [short]
    blobs_before = set(cas_keys(store))
    assert store.cleanup_expired_artifacts() == 3
    assert store.cleanup_expired_artifacts() == 0
    gone = blobs_before - set(cas_keys(store))
    assert gone == {arts[dbg].blob_key, arts[short].blob_key}  # the blob shared with `keep` stays
    assert store.get_artifact_content(keep) == "result"
    with pytest.raises(ExpiredError): store.get_artifact(short)  # still "expired", not "unknown", after cleanup
    assert store.get_lineage(keep, 'downstream').children(keep) == []
    assert store.get_artifact(store.store_artifact({'x': 2}, s, 'wf', name='short')).version == 2  # numbers are never reused

# ---------------------------------------------------------------- purge

def test_purge_session_cascades(store):
    a, b = sid(), sid()
    only_a = store.store_artifact(b'only in a ' * 200, a, 'wf', name='private')
    common = store.store_artifact(b'shared content', a, 'wf', name='common')
    parent = store.store_artifact({'p': 1}, a, 'wf', name='parent')
    user_scoped = store.store_artifact({'u': 1}, a, 'prefs', scope='user', user_id='user_9')
    expired = store.store_artifact(b'expiring in a', a, 'wf', name='tmp', ttl=0.2)
    child = store.store_artifact({'c': 1}, b, 'wf', name='child', parents=[parent])
    same_in_b = store.store_artifact(b'shared content', b, 'wf', name='common')
    mine_in_b = store.store_artifact({'b': 1}, b, 'wf', name='b_only')
    store.share_artifact(parent, b)
    store.share_artifact(mine_in_b, a)
    wait_until(next(iter(store.versions.query_all(expired, index='artifact_id')))['expires_at'])  # (it may have expired already: 0.2 s)
    blob_of = {i: store.get_artifact(i).blob_key for i in (only_a, common, parent)}
    assert store.purge_session_artifacts(a) == 5
    for i in (only_a, common, parent, user_scoped, expired):
        with pytest.raises(NotFoundError) as e: store.get_artifact(i)
        assert type(e.value) is NotFoundError  # gone, not "expired"
    keys = set(cas_keys(store))
    assert blob_of[common] in keys and blob_of[only_a] not in keys and blob_of[parent] not in keys
    assert store.get_artifact_content(same_in_b) == b'shared content'
    assert list(store.versions.query_all(a, index='session_id-created_at')) == []
    assert list(store.links.query_all(parent)) == [] and list(store.shares.query_all(a)) == []
    assert list(store.shares.query_all(parent, index='artifact_id-session_id')) == []
    assert store.get_artifact(mine_in_b).shared_with == []
    assert [x.artifact_id for x in store.list_artifacts(b)] == [mine_in_b, same_in_b, child]
    lin = store.get_lineage(child)
    assert store.get_artifact(child).parents == [parent] and lin.nodes[parent] is None  # history keeps the id, shown as purged
    assert store.purge_session_artifacts(a) == 0
    assert store.purge_session_artifacts(b) == 3
    assert (cas_keys(store), all_items(store.items), all_items(store.blobs), all_items(store.links), all_items(store.shares)) == ([], [], [], [], [])

def test_orphan_free_after_concurrent_store_and_purge(store):
    "Storing content while another session holding the same content is purged never leaves an artifact without its blob"
    body = os.urandom(64 * 1024)
    for _ in range(5):
        a, b = sid(), sid()
        store.store_artifact(body, a, 'wf')
        errors, ids = [], []
        def storer():
            try: ids.append(store.store_artifact(body, b, 'wf'))
            except Exception as e: errors.append(e)
        t = threading.Thread(target=storer); t.start()
        store.purge_session_artifacts(a)
        t.join()
        assert not errors and store.get_artifact_content(ids[0]) == body
        assert store.purge_session_artifacts(b) == 1 and cas_keys(store) == []

def test_sweep_orphan_blobs(store):
    "Blobs a crash left behind (never referenced, or an older generation of live content) are swept; live content is not"
    aid = store.store_artifact(b'kept content', sid(), 'wf')
    live = store.get_artifact(aid).blob_key
    orphans = [f"artifacts/cas/ab/{'c' * 62}.dead0001", live.rsplit('.', 1)[0] + '.0badbeef']
    for k in orphans: store.blob.put(k, b'left by a crash')
    assert store.sweep_orphan_blobs() == 0 and all(store.blob.exists(k) for k in orphans)  # younger than the grace period
    assert store.sweep_orphan_blobs(grace=0) == 2
    assert cas_keys(store) == [live] and store.get_artifact_content(aid) == b'kept content'

# ---------------------------------------------------------------- async twins

def test_async_twins(store):
    async def run():
        s = sid()
        aid = await store.astore_artifact({'answer': 42}, s, 'async_wf')
        content = await store.aget_artifact_content(aid)
        listed = await store.alist_artifacts(s)
        return aid, content, listed, await store.apurge_session_artifacts(s)
    aid, content, listed, purged = asyncio.run(run())
    assert (content, [a.artifact_id for a in listed], purged) == ({'answer': 42}, [aid], 1)

# ---------------------------------------------------------------- hardening: verified reads, leaked count items, argument types

def test_reads_never_return_damaged_content(storage, tmp_path):
    "Issue 11 item 10: a flipped bit, another valid zstd frame, a broken frame or a tampered inline copy is a CorruptDataError on every read path"
    store = ArtifactStore(storage)  # inline content for small values, blobs (compressed when it pays) for the rest
    s = sid()
    def fresh(body=None): return store.store_artifact(body or ('region,total\n' + 'eu,9.5\n' * 5000 + uuid.uuid4().hex), s, 'wf')
    def key(aid): return store.get_artifact(aid).blob_key
    flipped = fresh(); b = bytearray(store.blob.get(key(flipped))); b[len(b) // 2] ^= 1; store.blob.put(key(flipped), bytes(b))
    swapped = fresh(); store.blob.put(key(swapped), zstandard.ZstdCompressor().compress(b'region,total\nnowhere,0\n'))
    broken = fresh(); store.blob.put(key(broken), b'\x28\xb5\x2f\xfd and no frame after the magic number')
    truncated = fresh(); t = store.blob.get(key(truncated)); store.blob.put(key(truncated), t[:len(t) // 2])
    raw_bytes = fresh(os.urandom(300_000)); b = bytearray(store.blob.get(key(raw_bytes))); b[-1] ^= 1; store.blob.put(key(raw_bytes), bytes(b))
    inline = store.store_artifact({'rows': 3}, s, 'wf', name='small')
    it = store.items.get(inline); store.items.put({**it, 'inline': base64.b64encode(b'{"rows": 4}').decode()})
    bad_json = store.store_artifact({'rows': 5}, s, 'wf', name='small2')
    it = store.items.get(bad_json); data = b'{"rows": '
    store.items.put({**it, 'inline': base64.b64encode(data).decode(), 'content_hash': hashlib.sha256(data).hexdigest(), 'size': len(data)})
    failures = []
    for name, aid in [('flipped', flipped), ('swapped', swapped), ('broken', broken), ('truncated', truncated), ('raw bytes', raw_bytes), ('inline', inline), ('bad json', bad_json)]:
        for how, read in [('get', lambda: store.get_artifact_content(aid)), ('stream', lambda: b''.join(store.open_artifact_content(aid, chunk_size=4096))),
                          ('save', lambda: store.save_artifact_content(aid, tmp_path / f'{aid}.out'))]:
            if name == 'bad json' and how != 'get': continue  # its bytes are intact (the hash matches): only decoding them fails
            try: read(); failures.append(f"{name}/{how}: returned")
            except CorruptDataError as e:
                if aid not in str(e) and 'is corrupt' not in str(e): failures.append(f"{name}/{how}: {e}")
            except Exception as e: failures.append(f"{name}/{how}: {type(e).__name__}: {e}")
    assert failures == [] and list(tmp_path.glob('*.out')) + list(tmp_path.glob('.*.part')) == []  # no file, not even a partial one
    assert issubclass(CorruptDataError, StorageError) and store.get_artifact_content(fresh('intact ' * 1000)) == 'intact ' * 1000

ACQUIRE_THEN_DIE = textwrap.dedent("""
    import sys, os, json, signal
    from dataops_lab.config import load_settings
    from dataops_lab.store.base import Storage
    from dataops_lab.artifacts import ArtifactStore
    from dataops_lab.artifact_content import encode_content
    store = ArtifactStore(Storage(load_settings(sys.argv[1])), inline_threshold=0)
    rec = store._acquire(encode_content(bytes.fromhex(sys.argv[2])))  # the content is stored and counted ...
    print(json.dumps(rec), flush=True)
    os.kill(os.getpid(), signal.SIGKILL)  # ... and the process dies before allocating the artifact that would refer to it
""")

def _die_after_acquiring(ini, body):
    p = subprocess.run([sys.executable, '-c', ACQUIRE_THEN_DIE, str(ini), body.hex()], capture_output=True, text=True, timeout=120)
    assert p.returncode == -9, p.stderr[-2000:]
    return json.loads(p.stdout)

def test_sweep_reclaims_content_a_killed_store_acquired(ini, store):
    "Issue 11 item 5: a process killed between acquiring content and allocating its artifact leaks a count item and its blob; the sweep reclaims both, never live content"
    new_body, shared_body = os.urandom(40_000), os.urandom(40_000)
    kept = store.store_artifact(shared_body, sid(), 'wf', name='kept')
    leaked = _die_after_acquiring(ini, new_body)  # content nobody else has
    doubled = _die_after_acquiring(ini, shared_body)  # content a live artifact has: its count is now one too high
    assert (store.blobs.get(leaked['content_hash'])['refs'], store.blob.exists(leaked['blob_key']), store.blobs.get(doubled['content_hash'])['refs']) == (1, True, 2)
    assert store.sweep_orphan_blobs() == 0 and store.blob.exists(leaked['blob_key'])  # within the grace period: could be a store in progress
    assert store.sweep_orphan_blobs(grace=0) == 1
    assert (store.blobs.get(leaked['content_hash']), store.blob.exists(leaked['blob_key'])) == (None, False)
    assert store.get_artifact_content(kept) == shared_body and store.blob.exists(doubled['blob_key'])  # live content stays
    assert store.purge_session_artifacts(store.get_artifact(kept).session_id) == 1
    assert store.blobs.get(doubled['content_hash'])['refs'] == 1  # the leaked reference kept it alive ...
    assert store.sweep_orphan_blobs(grace=0) == 1 and cas_keys(store) == [] and all_items(store.blobs) == []  # ... until the sweep

def test_argument_types_are_checked_by_name(store, tmp_path):
    "Issue 11 item 14: version=1.0/True, a missing folder, a folder as a path: the project's own errors, naming the value"
    aid = store.store_artifact({'rows': 1}, sid(), 'wf', name='v')
    out = tmp_path / 'out'; out.mkdir()
    cases = [
        (InvalidKeyError, 'version must be a positive int, got float 1.0', lambda: store.get_artifact_content(aid, version=1.0)),
        (InvalidKeyError, 'version must be a positive int, got bool True', lambda: store.get_artifact_content(aid, version=True)),
        (InvalidKeyError, "version must be a positive int, got str '1'", lambda: list(store.open_artifact_content(aid, version='1'))),
        (InvalidKeyError, 'got float 1.0', lambda: store.save_artifact_content(aid, out / 'v.json', version=1.0)),
        (NotFoundError, f"folder '{out / 'missing'}'", lambda: store.save_artifact_content(aid, out / 'missing' / 'v.json')),
        (InvalidInputError, f"path '{out}' is a folder", lambda: store.save_artifact_content(aid, out)),
        (InvalidInputError, 'path must be a str or a Path, got int', lambda: store.save_artifact_content(aid, 5)),
    ]
    failures = []
    for exc, msg, call in cases:
        try: call(); failures.append(f"{msg}: no error")
        except Exception as e:
            if not (isinstance(e, exc) and msg in str(e)): failures.append(f"{msg}: got {type(e).__name__}: {e}")
    assert failures == [] and list(out.iterdir()) == []
    assert store.get_artifact_content(aid, version=1) == {'rows': 1}

def test_a_stored_item_holds_exactly_what_the_artifact_model_stores(storage):
    "store_artifact builds its item without the model (a hot path): every field the model stores is there, in the model's form, on every kind of store"
    with ArtifactStore(storage, inline_threshold=64) as store:
        s = sid()
        first = store.store_artifact({'x': 1}, s, 'loader', name='small', metadata={'rows': 3, 'ok': True})
        aids = [first,
                store.store_artifact(b'\x00' * 1000, s, 'loader', name='blob', parents=[first], ttl=3600, created_by='step_1',
                                     metadata={'nested': {'a': [1, 2.5, None]}, 'kind': ArtifactType.RESULT}),
                store.store_artifact('text', s, 'loader', name='mine', scope='user', user_id='user_1', artifact_type='debug'),
                store.store_artifact(pd.DataFrame({'a': [1, 2]}), s, 'loader', name='shared', scope='global')]
        for aid in aids:
            it = {k: v for k, v in store.items.get(aid).items() if not k.startswith('_')}
            model = Artifact.from_item(it).to_item()
            assert {k: it[k] for k in it if k in model} == model and model.keys() <= it.keys(), aid
