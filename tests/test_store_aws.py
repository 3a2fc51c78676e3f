"""Behaviour specific to the AWS backends that the generic conformance suite does not cover:
S3 multipart streaming in bounded memory and abort on failure, server-side encryption, DynamoDB
attribute offloading and its clean-up, the hidden attributes behind index keys and TTL, and the
errors for a missing bucket/table, an unreachable endpoint and refused credentials. boto3 talks
over HTTP to moto's server on a loopback port (the `moto_server` fixture)."""
import hashlib, json, os, socket, time, tracemalloc, uuid
import pytest
from servers import MotoServer
from dataops_lab.core import BackendUnavailableError, ConflictError, InvalidKeyError, NotFoundError, StorageError, now_ts
from dataops_lab.store.base import IndexSpec, TableSpec, open_blob, open_table
from dataops_lab.store.s3 import S3BlobStore, MiB
from dataops_lab.store.dynamodb import DynamoTable

def uid(): return uuid.uuid4().hex[:10]

@pytest.fixture
def bucket(moto_server):
    "A fresh, existing bucket"
    name = f"aws-test-{uid()}"
    S3BlobStore(f"s3://{name}?endpoint_url={moto_server.endpoint}").ensure()
    return name

@pytest.fixture
def s3(moto_server, bucket):
    with S3BlobStore(f"s3://{bucket}/data?endpoint_url={moto_server.endpoint}") as s: yield s

@pytest.fixture
def offload_url(moto_server, bucket): return f"s3://{bucket}/offload?endpoint_url={moto_server.endpoint}"

ITEMS = lambda: TableSpec(f"aws_{uid()}_items", 'id', indexes=(IndexSpec('by_owner', 'owner', 'created_at'),))

@pytest.fixture
def table(moto_server, offload_url):
    t = DynamoTable(f"dynamodb://us-east-1?endpoint_url={moto_server.endpoint}", ITEMS(), offload=offload_url)
    t.ensure()
    yield t
    t.close()

def pending_uploads(store): return store.client.list_multipart_uploads(Bucket=store.bucket).get('Uploads', [])

def free_port():
    with socket.socket() as s:
        s.bind(('127.0.0.1', 0))
        return s.getsockname()[1]

# --- S3 ---------------------------------------------------------------------------------------

def test_multipart_stream_in_bounded_memory(s3):
    total = 40*MiB
    def gen():
        for i in range(total//MiB): yield bytes([i % 251])*MiB
    want = hashlib.sha256(b''.join(bytes([i % 251])*MiB for i in range(total//MiB))).hexdigest()
    tracemalloc.start()
    try:
        info = s3.put_stream('big/forty.bin', gen(), metadata={'kind': 'test'})
        _,peak = tracemalloc.get_traced_memory()
    finally: tracemalloc.stop()
    assert peak < total/3, f"put_stream peaked at {peak/MiB:.1f} MiB for a {total/MiB:.0f} MiB stream"
    assert info.size == total and info.etag.endswith('-5'), info  # five 8 MiB parts
    h = hashlib.sha256()
    for c in s3.get_stream('big/forty.bin'): h.update(c)
    assert h.hexdigest() == want
    assert s3.head('big/forty.bin').metadata == {'kind': 'test'} and pending_uploads(s3) == []

def test_file_object_and_exact_part_boundaries(s3):
    import io
    for n in [0, 1, 8*MiB-1, 8*MiB, 8*MiB+1, 16*MiB]:
        data = os.urandom(n)
        info = s3.put_stream(f"edge/{n}", io.BytesIO(data))
        assert info.size == n and s3.get(f"edge/{n}") == data, n
    assert [len(c) for c in s3.get_stream('edge/16777216', chunk_size=3*MiB)][:2] == [MiB, MiB]

class Interrupted(BaseException): "Not an Exception: the abort must happen for these too"

@pytest.mark.parametrize('exc', [IOError('source went away'), Interrupted('stop')])
def test_failed_stream_is_aborted(s3, exc):
    s3.put('keep.bin', b'old')
    def failing():
        for _ in range(20): yield b'x'*MiB
        raise exc
    with pytest.raises(type(exc)) as e: s3.put_stream('keep.bin', failing())
    assert e.value is exc, "the source's own exception propagates unchanged"
    with pytest.raises(type(exc)): s3.put_stream('never.bin', failing())
    assert s3.get('keep.bin') == b'old' and not s3.exists('never.bin')
    assert pending_uploads(s3) == [], "a failed stream must abort its multipart upload"

def test_sse_is_sent(moto_server, bucket):
    st = S3BlobStore(f"s3://{bucket}/enc?endpoint_url={moto_server.endpoint}&sse=AES256")
    st.put('small', b'x')
    st.put_stream('small-stream', [b'y'])
    st.put_stream('large', (b'y'*MiB for _ in range(10)))
    for k in ['small', 'small-stream', 'large']:
        assert st.client.head_object(Bucket=bucket, Key=st.path(k))['ServerSideEncryption'] == 'AES256', k
    plain = S3BlobStore(f"s3://{bucket}/enc?endpoint_url={moto_server.endpoint}")
    plain.put('clear', b'x')
    assert 'ServerSideEncryption' not in plain.client.head_object(Bucket=bucket, Key=plain.path('clear'))

def test_prefix_isolation_and_non_ascii_metadata(moto_server, bucket):
    a = S3BlobStore(f"s3://{bucket}/team-a?endpoint_url={moto_server.endpoint}")
    b = S3BlobStore(f"s3://{bucket}/team-ab?endpoint_url={moto_server.endpoint}")
    a.put('x/1', b'a', metadata={'title': 'Überblick ✓'})
    b.put('x/1', b'b')
    assert list(a.iter_keys()) == ['x/1'] and list(b.iter_keys()) == ['x/1']
    assert a.get('x/1') == b'a' and a.head('x/1').metadata == {'title': 'Überblick ✓'}
    assert a.delete_prefix('x/') == 1 and b.get('x/1') == b'b'

def test_missing_bucket_has_hint(moto_server):
    st = S3BlobStore(f"s3://missing-{uid()}/p?endpoint_url={moto_server.endpoint}")
    for f in [st.check, lambda: st.put('k', b'v'), lambda: st.get('k'), lambda: st.list()]:
        with pytest.raises(NotFoundError, match='storage init'): f()
    st.ensure()
    st.check()
    assert st.put('k', b'v').size == 1

def test_bucket_in_another_region_is_created_there(moto_server):
    st = S3BlobStore(f"s3://eu-{uid()}?endpoint_url={moto_server.endpoint}&region=eu-west-1")
    st.ensure(); st.ensure()
    assert st.client.get_bucket_location(Bucket=st.bucket)['LocationConstraint'] == 'eu-west-1'

# --- DynamoDB ----------------------------------------------------------------------------------

def test_large_attribute_offloaded_and_cleaned_up(table):
    blobs = table.offload
    big = 'x'*1_000_000
    table.put({'id': 'a', 'owner': 'u', 'created_at': '1', 'html': big, 'note': 'small'})
    raw = table.client.get_item(TableName=table.name, Key={'id': {'S': 'a'}})['Item']
    assert 'html' not in raw and raw['note'] == {'S': 'small'}
    assert list(blobs.iter_keys('dynamodb/')) == [raw['_off_html']['S']]
    assert table.get('a')['html'] == big and table.query('u', index='by_owner').items[0]['html'] == big
    # overwritten: the old blob goes once the new item is written
    table.put({'id': 'a', 'owner': 'u', 'created_at': '1', 'html': big+'!'})
    keys = list(blobs.iter_keys('dynamodb/'))
    assert len(keys) == 1 and keys[0] != raw['_off_html']['S']
    # an update that sets a small value drops the blob; one that sets a large value offloads it
    assert table.update('a', set={'html': 'tiny'})['html'] == 'tiny'
    assert list(blobs.iter_keys('dynamodb/')) == []
    assert table.update('a', set={'html': big})['html'] == big and len(list(blobs.iter_keys('dynamodb/'))) == 1
    assert table.delete('a') is True
    assert list(blobs.iter_keys('dynamodb/')) == [], "delete must remove the offloaded blob"

def test_update_growing_past_the_limit_is_merged(table):
    part = 'y'*300_000
    table.put({'id': 'g', 'a': part})
    out = table.update('g', set={'b': part}, add={'n': 2})
    assert (out['a'], out['b'], out['n'], out['_version']) == (part, part, 2, 2)
    assert table.get('g') == out
    assert table.update('g', add={'n': 1}, if_version=2)['n'] == 3
    with pytest.raises(ConflictError): table.update('g', set={'c': part}, if_version=2)
    table.delete('g')
    assert list(table.offload.iter_keys('dynamodb/')) == []

def test_too_large_without_offload(moto_server):
    t = DynamoTable(f"dynamodb://us-east-1?endpoint_url={moto_server.endpoint}", ITEMS())
    t.ensure()
    with pytest.raises(StorageError, match="configure a blob store") as e: t.put({'id': 'huge', 'blob': 'z'*500_000})
    assert "'huge'" in str(e.value)
    assert t.get('huge') is None

def test_none_and_empty_index_attributes(table):
    table.put({'id': 'n', 'owner': None, 'created_at': ''})
    assert table.get('n') == {'id': 'n', 'owner': None, 'created_at': '', '_version': 1}
    with pytest.raises(InvalidKeyError): table.query('', index='by_owner')
    out = table.update('n', set={'owner': 'u9', 'created_at': '2024'})
    assert [x['id'] for x in table.query('u9', index='by_owner')] == ['n'] and out['owner'] == 'u9'
    assert table.update('n', set={'owner': None})['owner'] is None
    assert table.query('u9', index='by_owner').items == [] and table.get('n')['owner'] is None

def test_expired_item_counts_as_absent(table):
    table.put({'id': 'e', 'old': 'attr', 'expires_at': now_ts()-10})
    assert table.delete('e') is False, "deleting an expired item reports that nothing was there"
    table.put({'id': 'e', 'old': 'attr', 'expires_at': now_ts()-10})
    out = table.update('e', add={'n': 1})
    assert out == {'id': 'e', 'n': 1, '_version': 1}, "an update of an expired item starts from nothing"
    with pytest.raises(ConflictError):
        table.put({'id': 'e'}, if_version=5)

def test_query_pages_stay_full_around_expired_items(table):
    for i in range(20):
        table.put({'id': f"q{i:02d}", 'owner': 'p', 'created_at': f"{i:02d}", **({'expires_at': now_ts()-5} if i % 2 else {})})
    pages,cursor = [],None
    while True:
        p = table.query('p', index='by_owner', limit=3, cursor=cursor)
        pages.append([x['id'] for x in p])
        if not (cursor := p.cursor): break
    assert [len(p) for p in pages] == [3, 3, 3, 1], pages
    assert [i for p in pages for i in p] == [f"q{i:02d}" for i in range(0, 20, 2)]
    with pytest.raises(InvalidKeyError, match='not a cursor of this query'): table.query('p', index='by_owner', cursor=table.scan(limit=1).cursor)

def test_numbers_keep_their_type(moto_server):
    t = DynamoTable(f"dynamodb://us-east-1?endpoint_url={moto_server.endpoint}", TableSpec(f"aws_{uid()}_log", 'stream', 'seq', numeric=('seq',)))
    t.ensure()
    t.put({'stream': 's', 'seq': 10**20, 'x': 0.1, 'y': -2.5e-30, 'z': 3})
    got = t.get(('s', 10**20))
    assert (got['seq'], got['x'], got['y'], type(got['z'])) == (10**20, 0.1, -2.5e-30, int)
    assert t.definition()['AttributeDefinitions'][1] == {'AttributeName': 'seq', 'AttributeType': 'N'}

def test_missing_table_has_hint(moto_server):
    t = DynamoTable(f"dynamodb://us-east-1?endpoint_url={moto_server.endpoint}", ITEMS())
    for f in [t.check, lambda: t.get('x'), lambda: t.put({'id': 'x'}), lambda: t.query('u', index='by_owner')]:
        with pytest.raises(NotFoundError, match='storage init'): f()
    with pytest.raises(NotFoundError): t.get('x')  # opening never created it
    t.ensure()
    t.check()
    assert t.client.describe_time_to_live(TableName=t.name)['TimeToLiveDescription']['AttributeName'] == 'expires_at'

def test_existing_table_with_other_keys_is_refused(moto_server):
    name = f"aws_{uid()}_keys"
    url = f"dynamodb://us-east-1?endpoint_url={moto_server.endpoint}"
    DynamoTable(url, TableSpec(name, 'id')).ensure()
    other = DynamoTable(url, TableSpec(name, 'id', 'seq', numeric=('seq',)))
    with pytest.raises(Exception, match='cannot change a table'): other.check()

def test_ensure_adds_new_indexes(moto_server):
    name, url = f"aws_{uid()}_ix", f"dynamodb://us-east-1?endpoint_url={moto_server.endpoint}"
    DynamoTable(url, TableSpec(name, 'id')).ensure()
    grown = DynamoTable(url, TableSpec(name, 'id', indexes=(IndexSpec('by_owner', 'owner', 'created_at'),)))
    with pytest.raises(NotFoundError, match='by_owner'): grown.check()
    grown.ensure()
    grown.put({'id': '1', 'owner': 'o', 'created_at': 't'})
    assert [x['id'] for x in grown.query('o', index='by_owner')] == ['1']

# --- failures of the server itself -------------------------------------------------------------

SECRET = 'wJalrXUtnFEMI/K7MDENG+' + uid()

def test_unreachable_endpoint():
    e = f"http://127.0.0.1:{free_port()}"
    st = S3BlobStore(f"s3://nowhere?endpoint_url={e}&max_attempts=2&connect_timeout=1&aws_access_key_id=AKIATEST&aws_secret_access_key={SECRET}")
    t = DynamoTable(f"dynamodb://us-east-1?endpoint_url={e}&max_attempts=2&connect_timeout=1", ITEMS(), aws_access_key_id='AKIATEST', aws_secret_access_key=SECRET)
    for f in [st.check, st.ensure, lambda: st.put('k', b'v'), lambda: st.get('k'), lambda: list(st.get_stream('k')), lambda: st.list(),
              t.check, t.ensure, lambda: t.get('k'), lambda: t.put({'id': 'k'}), lambda: t.update('k', add={'n': 1}), lambda: t.scan()]:
        with pytest.raises(BackendUnavailableError, match='cannot reach') as exc: f()
        assert SECRET not in str(exc.value) and SECRET.replace('/', '%2F') not in str(exc.value)

@pytest.fixture(scope='module')
def auth_moto():
    "A moto server that checks credentials (and knows none but its own root user's)"
    old = os.environ.get('INITIAL_NO_AUTH_ACTION_COUNT')
    os.environ['INITIAL_NO_AUTH_ACTION_COUNT'] = '0'
    try: srv = MotoServer().start()
    finally:
        if old is None: os.environ.pop('INITIAL_NO_AUTH_ACTION_COUNT')
        else: os.environ['INITIAL_NO_AUTH_ACTION_COUNT'] = old
    yield srv
    srv.stop()

def test_refused_credentials(auth_moto):
    creds = dict(aws_access_key_id='AKIAREFUSED0000', aws_secret_access_key=SECRET, max_attempts=1)
    st = S3BlobStore(f"s3://some-bucket?endpoint_url={auth_moto.endpoint}", **creds)
    t = DynamoTable(f"dynamodb://us-east-1?endpoint_url={auth_moto.endpoint}", ITEMS(), **creds)
    for f in [st.check, lambda: st.get('k'), t.check, lambda: t.get('k')]:
        with pytest.raises(BackendUnavailableError, match='refused') as exc: f()
        assert SECRET not in str(exc.value) and 'AKIAREFUSED' not in str(exc.value)

def test_open_through_registry_with_string_offload(moto_server, offload_url):
    t = open_table(f"dynamodb://us-east-1?endpoint_url={moto_server.endpoint}", ITEMS(), offload=offload_url)
    assert isinstance(t, DynamoTable) and isinstance(t.offload, S3BlobStore)
    assert isinstance(open_blob(offload_url), S3BlobStore)
    t.close()

# --- any S3-compatible store -------------------------------------------------------------------

def test_endpoint_url_uses_path_style_addressing(moto_server, bucket):
    "With an endpoint_url (MinIO, Ceph, R2, moto...) requests go to http://host:port/<bucket>/<key>, as those servers expect"
    st = S3BlobStore(f"s3://{bucket}/compat?endpoint_url={moto_server.endpoint}&region=us-east-1")
    key = f"probe-{uid()}"
    st.put(key, b'x')
    assert st.get(key) == b'x'
    moto_server.log.flush()
    log = open(moto_server.log.name, errors='replace').read()
    assert f'"PUT /{bucket}/compat/{key} HTTP' in log and f'"GET /{bucket}/compat/{key} HTTP' in log, log[-2000:]
    with pytest.raises(Exception, match='addressing_style'): S3BlobStore(f"s3://{bucket}?endpoint_url={moto_server.endpoint}&addressing_style=dns")
