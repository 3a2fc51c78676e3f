"""Redis-specific behaviour of `RedisCache` that the generic conformance suite does not cover:
outages, credentials that never leak, key/channel namespacing, SCAN instead of KEYS, the bounded
pool, closing a subscription from another thread, and TLS (`rediss://`). Every test talks to a real
redis-server started on a loopback port."""
import datetime as dt, ipaddress, threading, traceback, uuid
from concurrent.futures import ThreadPoolExecutor
import pytest, redis
from servers import RedisServer, wait_for
from dataops_lab.core import BackendUnavailableError, mask_url
from dataops_lab.store.base import open_cache
from dataops_lab.store.redis import RedisCache

PASSWORD = 'pw-' + uuid.uuid4().hex

def prefixed(url, prefix=None):
    "`url` with a unique `?prefix=` (so tests sharing a server never see each other's keys)"
    return f"{url}?prefix={prefix or 'test-' + uuid.uuid4().hex[:8] + ':'}"

def leaks(exc, secret):
    "True if `secret` appears anywhere in `exc`'s rendered traceback (message, hint, chained errors)"
    return secret in ''.join(traceback.format_exception(exc))

@pytest.fixture(scope='module')
def locked_server():
    "A redis-server that demands a password and has KEYS disabled, like a hardened production server"
    srv = RedisServer(requirepass=PASSWORD, extra_args=('--rename-command', 'KEYS', '')).start()
    yield srv
    srv.stop()

@pytest.mark.timeout(60)  # redis-py's default retries with backoff would take many seconds per call here
def test_outage_fails_fast_with_masked_url_and_recovers(redis_server):
    url = prefixed(redis_server.url)
    cache, other = RedisCache(url, socket_timeout=2), RedisCache(url)
    cache.set('sessions/s1/state', b'before')
    sub = other.subscribe('events')
    calls = {'get': lambda: cache.get('sessions/s1/state'), 'set': lambda: cache.set('sessions/s1/state', b'x', ttl=5),
             'incr': lambda: cache.incr('n', ttl=5), 'list_append': lambda: cache.list_append('l', b'x', max_len=3),
             'compare_and_set': lambda: cache.compare_and_set('k', None, b'v'), 'keys': lambda: cache.keys('sessions/'),
             'publish': lambda: cache.publish('events', b'm'), 'subscribe': lambda: cache.subscribe('events'),
             'check': cache.check, 'subscription.get': lambda: sub.get(timeout=1)}
    redis_server.stop()
    try:
        for name, call in calls.items():
            with pytest.raises(BackendUnavailableError) as ei: call()
            msg = str(ei.value)
            assert mask_url(url) in msg and 'start redis-server' in msg, (name, msg)
            assert isinstance(ei.value, ConnectionError), name  # plain `except ConnectionError` code keeps working
        assert cache.ping() is False
    finally: redis_server.start()
    # the same objects work again: stale pooled connections are replaced, the subscription re-subscribes
    assert cache.ping() is True
    assert cache.set('sessions/s1/state', b'after') and cache.get('sessions/s1/state') == b'after'
    def delivered():
        cache.publish('events', b'back')
        return sub.get(timeout=0.2) == ('events', b'back')
    wait_for(delivered, 10, 'delivery to the subscription opened before the outage')
    sub.close(); cache.close(); other.close()

def test_password_never_shown(locked_server):
    url = prefixed(locked_server.url)
    good = RedisCache(url)
    good.set('k', b'v')
    assert good.get('k') == b'v'
    for text in (repr(good), good.describe(), good._repr_markdown_()): assert ':***@' in text and PASSWORD not in text, text
    assert PASSWORD not in repr(good.config)

    wrong = RedisCache(url.replace(PASSWORD, 'not-the-password'))
    with pytest.raises(BackendUnavailableError, match='refused the credentials') as ei: wrong.check()
    assert not leaks(ei.value, 'not-the-password') and not leaks(ei.value, PASSWORD)
    assert 'redis://:***@127.0.0.1' in str(ei.value)
    with pytest.raises(BackendUnavailableError, match='refused the credentials'): wrong.get('k')

    anonymous = RedisCache(url.replace(f":{PASSWORD}@", ''))
    with pytest.raises(BackendUnavailableError, match='requires a password'): anonymous.check()

    locked_server.stop()
    try:
        with pytest.raises(BackendUnavailableError, match='cannot reach') as ei: good.get('k')
        assert 'redis://:***@127.0.0.1' in str(ei.value) and not leaks(ei.value, PASSWORD)
    finally: locked_server.start()
    good.close(); wrong.close(); anonymous.close()

def test_keys_and_channels_are_namespaced_by_prefix(redis_server):
    a, b = RedisCache(prefixed(redis_server.url, 'team-a:')), RedisCache(prefixed(redis_server.url, 'team-b:'))
    raw = redis.Redis.from_url(redis_server.url)
    try:
        a.set('sessions/s1/state', b'A'); b.set('sessions/s1/state', b'B'); a.incr('sessions/s1/seq')
        assert (a.get('sessions/s1/state'), b.get('sessions/s1/state')) == (b'A', b'B')
        assert raw.get('team-a:sessions/s1/state') == b'A' and raw.get('sessions/s1/state') is None
        assert a.keys('sessions/') == ['sessions/s1/seq', 'sessions/s1/state'] and b.keys() == ['sessions/s1/state']
        assert b.delete('sessions/s1/state', 'sessions/s1/seq') == 1 and a.get('sessions/s1/state') == b'A'
        # a prefix with glob characters matches literally in SCAN
        g = RedisCache(prefixed(redis_server.url, 'g[1]*:'))
        g.set('x', b'1'); raw.set('g1z:x', b'not ours')
        assert g.keys() == ['x']
        g.delete('x'); raw.delete('g1z:x'); g.close()
        # channels: same name, different namespaces
        with a.subscribe('events') as sa, b.subscribe('events') as sb:
            b.publish('events', b'for b')
            assert sb.get(timeout=5) == ('events', b'for b') and sa.get(timeout=0.2) is None
            raw.publish('team-a:events', b'raw')
            assert sa.get(timeout=5) == ('events', b'raw')
    finally:
        a.delete(*a.keys()); b.delete(*b.keys()); a.close(); b.close(); raw.close()

def test_keys_uses_scan_not_keys(locked_server):
    "KEYS is disabled on this server, so keys() can only work through SCAN; 2500 keys need several SCAN calls"
    cache = RedisCache(prefixed(locked_server.url))
    pipe = cache.client.pipeline(transaction=False)
    for i in range(2500): pipe.set(f"{cache.prefix}runs/r{i:04d}", b'1')
    pipe.execute()
    cache.set('other/x', b'1')
    assert cache.keys('runs/') == [f"runs/r{i:04d}" for i in range(2500)]
    cache.delete(*cache.keys()); cache.close()

def test_bounded_pool_waits_for_a_connection(redis_server):
    cache = RedisCache(prefixed(redis_server.url) + '&max_connections=2')
    with ThreadPoolExecutor(8) as ex: got = list(ex.map(lambda _: [cache.incr('n') for _ in range(50)], range(8)))
    assert sorted(x for g in got for x in g) == list(range(1, 401))
    assert len(cache.client.connection_pool._connections) <= 2
    cache.delete('n'); cache.close()

def test_close_from_another_thread_ends_a_blocked_get(redis_server):
    cache = RedisCache(prefixed(redis_server.url))
    sub, out = cache.subscribe('events'), []
    reader = threading.Thread(target=lambda: out.append(sub.get(timeout=None)))
    reader.start()
    sub.close()
    reader.join(10)
    assert not reader.is_alive() and out == [None]
    cache.publish('events', b'after close')  # the pool (and the subscription's old connection) is still sound
    assert cache.set('k', b'v') and cache.get('k') == b'v'
    cache.delete('k'); cache.close()

def _self_signed(tmp_path):
    "A certificate for 127.0.0.1 that is its own CA, and its key, as PEM files"
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(x509.oid.NameOID.COMMON_NAME, 'dataops-test')])
    now = dt.datetime.now(dt.timezone.utc)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(x509.random_serial_number()).not_valid_before(now - dt.timedelta(minutes=5))
            .not_valid_after(now + dt.timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address('127.0.0.1'))]), critical=False)
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .sign(key, hashes.SHA256()))
    crt, pem = tmp_path / 'redis.crt', tmp_path / 'redis.key'
    crt.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    pem.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.TraditionalOpenSSL, serialization.NoEncryption()))
    return crt, pem

def test_rediss_talks_tls(tmp_path):
    crt, pem = _self_signed(tmp_path)
    srv = RedisServer()
    srv.extra_args = ('--port', '0', '--tls-port', str(srv.port), '--tls-cert-file', str(crt), '--tls-key-file', str(pem),
                      '--tls-ca-cert-file', str(crt), '--tls-auth-clients', 'no')
    srv.start()
    try:
        url = f"rediss://127.0.0.1:{srv.port}/0"
        cache = open_cache(f"{url}?ssl_ca_certs={crt}&prefix=tls:")
        assert type(cache).__name__ == 'RedisCache'
        assert cache.set('k', b'over tls') and cache.get('k') == b'over tls'
        with pytest.raises(BackendUnavailableError, match='ssl_ca_certs'):  # the server's certificate is not trusted by default
            RedisCache(url).check()
        with pytest.raises(BackendUnavailableError):  # a plain connection to a TLS port fails too
            RedisCache(url.replace('rediss', 'redis'), socket_timeout=1).check()
        cache.close()
    finally: srv.stop()
