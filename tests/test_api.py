"""The API against a real uvicorn server on a loopback port, on the embedded default and on Redis + moto's S3/DynamoDB:
the proposal's endpoints through `dataops_lab.client`, runs, artifact content, context, and the WebSocket feed."""
import base64, os, socket, threading, uuid
from pathlib import Path
import httpx, pytest
from dataops_lab.config import load_settings
from dataops_lab.api.users import UserStore, USER_TABLES
from dataops_lab.store.base import Storage
from dataops_lab.client import Client
from dataops_lab.core import NotFoundError, InvalidInputError
from apiserver import APIServer
from servers import wait_for
from api_workflows import POEM, CHATTER_WORDS, LEAK
from dataops_lab.api.audit import AuditLog
from conftest import write_ini

PW = 'correct horse battery'

def add_users(ini, *specs):
    st = Storage(load_settings(ini)).ensure(USER_TABLES)
    us = UserStore(st)
    for name, role in specs: us.add_user(name, role, PW)
    st.close()

@pytest.fixture
def server(ini, backend):
    (ini.parent / 'settings.ini').write_text(ini.read_text() + "\n[api]\nrate_limit = 1000/minute\n")
    with APIServer(ini) as srv: yield srv

def test_endpoints_end_to_end(server, ini):
    add_users(ini, ('alice', 'developer'))
    with Client(server.url, 'alice', PW) as c:
        s = c.create_session(metadata={'team': 'sales'})
        sid = s['session_id']
        assert c.get_session(sid)['metadata'] == {'team': 'sales'}
        assert sorted(w['name'] for w in c.list_workflows()) == ['brittle', 'chatter', 'poem', 'slow_job', 'word_count']
        assert c.get_workflow('word_count')['input_schema']['required'] == ['text']
        # a WebSocket client listening from the start of the session's window sees the whole run
        got = []
        def listen():
            for m in c.events(sid, timeout=30, until=lambda m: m['type'] in ('end', 'error')):
                got.append(m)
        t = threading.Thread(target=listen); t.start()
        run = c.query(sid, 'count the words: text="one two three four"')
        assert run['status'] == 'succeeded' and run['outcome']['reply'] == '4 words', run
        t.join(30)
        assert [m['type'] for m in got][0] == 'start' and got[-1]['type'] == 'end' and {'progress'} <= {m['type'] for m in got}, got
        assert all(m['run_id'] == run['run_id'] for m in got)
        # resuming after the second event gives exactly the rest
        rest = list(c.events(sid, after=got[1]['id'], timeout=2))
        assert [m['id'] for m in rest] == [m['id'] for m in got[2:]]
        # the result artifact: metadata, content, ETag and a byte range
        arts = c.list_artifacts(sid)
        aid = arts[0]['artifact_id']
        assert c.get_artifact_content(aid)['words'] == 4
        r = c.request('GET', f'/artifacts/{aid}/content')
        etag, body = r.headers['etag'], r.content
        assert c.http.get(f'/artifacts/{aid}/content', headers={'Authorization': f"Bearer {c.tokens['access_token']}", 'If-None-Match': etag}).status_code == 304
        part = c.request('GET', f'/artifacts/{aid}/content', headers={'Range': 'bytes=2-9'})
        assert part.status_code == 206 and part.content == body[2:10] and part.headers['content-range'] == f"bytes 2-9/{len(body)}"
        up = c.store_artifact('hello, world', sid, 'notes')
        assert c.get_artifact_content(up['artifact_id']) == 'hello, world'
        # invoke with wait=false: 202 and a run to poll
        r = c.request('POST', '/workflows/slow_job/invoke', json={'session_id': sid, 'inputs': {'seconds': 0.3}}, params={'wait': False})
        assert r.status_code == 202 and r.headers['location'] == f"/runs/{r.json()['run_id']}"
        assert c.wait_run(r.json()['run_id'])['status'] == 'succeeded'
        with pytest.raises(InvalidInputError, match="no input"):
            c.invoke('word_count', sid, {'text': 'a', 'nope': 1})
        # context: dump, change, load back; checkpoints
        c.update_session(sid, {'global_context': {'db': 'sales.db'}})
        snap = c.dump_context(sid)
        c.update_session(sid, {'global_context': {'db': 'other.db'}})
        assert c.load_context(snap, sid, 'replace')['session']['global_context']['db'] == 'sales.db'
        c.create_checkpoint(sid, 'before')
        c.query(sid, 'count the words: text="x"')
        n = len(c.get_history(sid))
        c.restore_checkpoint(sid, 'before')
        assert len(c.get_history(sid)) == n - 2
        with pytest.raises(NotFoundError):
            c.get_session('sess_' + uuid.uuid4().hex)

def test_ready_and_errors(server):
    assert httpx.get(f"{server.url}/ready").json() == {'status': 'ok', 'checks': {'hot': 'ok', 'cold': 'ok', 'blob': 'ok'}}
    r = httpx.post(f"{server.url}/auth/token", content=b'x' * 2_000_000, headers={'Content-Type': 'application/json'})
    assert r.status_code == 413 and r.json()['error']['code'] == 'payload_too_large'
    r = httpx.post(f"{server.url}/auth/token", json={'username': 'nobody', 'password': 'x' * 12})
    assert r.status_code == 401 and r.headers['www-authenticate'] == 'Bearer' and set(r.json()['error']) >= {'message', 'hint', 'request_id'}
    spec = httpx.get(f"{server.url}/openapi.json").json()
    for path in ('/sessions', '/sessions/{session_id}', '/sessions/{session_id}/query', '/workflows/{name}/invoke', '/workflows', '/workflows/{name}',
                 '/artifacts/{artifact_id}', '/sessions/{session_id}/artifacts', '/sessions/{session_id}/context/dump', '/sessions/{session_id}/context/load'):
        assert path in spec['paths'], path
    assert 'ErrorBody' in spec['components']['schemas'] and 'HTTPBearer' in spec['components']['securitySchemes']

def test_unexpected_error_is_audited(tmp_path):
    """A request that fails with an error nobody expected (a served workflow's own input check has a bug) answers 500 in the
    one error shape and leaves its audit record, outcome 'error', like any other request; neither holds the error's text"""
    ini = write_ini(tmp_path, 'embedded')
    add_users(ini, ('alice', 'developer'))
    with APIServer(ini) as srv, Client(srv.url, 'alice', PW) as c:
        sid = c.create_session()['session_id']
        r = c.http.post('/workflows/brittle/invoke', json={'session_id': sid}, headers={'Authorization': f"Bearer {c.tokens['access_token']}"})
        err = r.json()['error']
        assert r.status_code == 500 and err['code'] == 'internal' and err['request_id'], r.text
        assert 'region' not in r.text and 's3cr3t' not in r.text and 'LookupError' not in r.text, r.text
        assert c.get_session(sid)['session_id'] == sid  # the server goes on serving
    log = Path(srv.log.name).read_text()
    assert err['request_id'] in log and 'LookupError' in log and 's3cr3t' not in log  # the operator's log has the traceback, the URL scrubbed
    recs = [x for x in AuditLog(Storage(load_settings(ini))).query(user_id='alice', limit=100) if x.action == 'invoke_workflow']
    assert [(x.status, x.outcome, x.request_id, x.resource) for x in recs] == [(500, 'error', err['request_id'], 'name=brittle')], recs
    assert 's3cr3t' not in recs[0].model_dump_json() and 'region' not in recs[0].model_dump_json()

def test_streamed_tokens_over_websocket(tmp_path):
    "A workflow whose chat model streams (LangChain's fake one): its tokens reach a WebSocket client in order, between start and end"
    ini = write_ini(tmp_path, 'embedded')
    add_users(ini, ('alice', 'user'))
    with APIServer(ini) as srv, Client(srv.url, 'alice', PW) as c:
        sid = c.create_session()['session_id']
        run = c.query(sid, 'write me a poem')
        assert run['status'] == 'succeeded' and run['outcome']['reply'] == POEM, run
        got = list(c.events(sid, timeout=10, until=lambda m: m['type'] in ('end', 'error')))
        types = [m['type'] for m in got]
        toks = [m for m in got if m['type'] == 'token']
        assert types[0] == 'start' and types[-1] == 'end' and len(toks) > 5, types
        assert ''.join(m['data']['text'] for m in toks) == POEM and {m['node'] for m in toks} == {'poem'}
        assert types.index('token') < types.index('end') and all(m['run_id'] == run['run_id'] for m in toks)

def _dropped_slow(url):
    "How many WebSocket clients the server has closed for reading too slowly (its /metrics)"
    line = next((l for l in httpx.get(f"{url}/metrics").text.splitlines() if l.startswith('dataops_api_ws_closed_total{reason="slow"}')), None)
    return float(line.split()[-1]) if line else 0.0

def _chatter_followed(c, sid):
    "Invoke 'chatter' in `sid` while a WebSocket client follows it to the end; every token event must arrive"
    got = []
    t = threading.Thread(target=lambda: got.extend(c.events(sid, timeout=60, until=lambda m: m['type'] in ('end', 'error'))))
    t.start()
    run = c.invoke('chatter', sid, {})
    t.join(90)
    toks = [m for m in got if m['type'] == 'token']
    assert run['status'] == 'succeeded' and got[-1]['type'] == 'end' and len(toks) == 2 * CHATTER_WORDS - 1, (run['status'], len(toks))

def test_websocket_client_keeping_up_is_not_dropped(tmp_path):
    """A client that reads as fast as it can keeps its one connection through a run that streams 8 MB of tokens, even with
    a queue of 8 ([api] ws_queue): the reader thread waits for room instead of handing over its reads in bursts (a burst
    larger than the queue used to close a prompt client with 4408, which then reconnected)"""
    ini = write_ini(tmp_path, 'embedded')
    ini.write_text(ini.read_text() + "\n[api]\nws_queue = 8\nevents_keep = 5000\n")
    add_users(ini, ('alice', 'user'))
    with APIServer(ini) as srv, Client(srv.url, 'alice', PW) as c:
        sid = c.create_session()['session_id']
        _chatter_followed(c, sid)
        assert _dropped_slow(srv.url) == 0
    conns = [r for r in AuditLog(Storage(load_settings(ini))).query(user_id='alice', limit=1000) if r.action == 'events']
    assert [r.status for r in conns] == [101], conns  # one connection, never closed for being slow

def _stalled_ws(port, path, token):
    "A WebSocket client that completes the handshake, then never reads: a 4 KB receive buffer, set before it connects"
    s = socket.socket()
    s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    s.connect(('127.0.0.1', port))
    key = base64.b64encode(os.urandom(16)).decode()
    s.sendall((f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
               f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\nAuthorization: Bearer {token}\r\n\r\n").encode())
    head = b''
    while not head.endswith(b'\r\n\r\n'): head += s.recv(1)  # a byte at a time: nothing past the handshake is read
    assert head.startswith(b'HTTP/1.1 101'), head
    return s

def test_websocket_client_not_reading_is_closed(tmp_path):
    """A client that connects and never reads again is closed once one send to it has waited [api] ws_send_timeout, even
    when its queue is far from full (ws_queue = 4096 here: 511 token events, 8 MB, never fill it; the kernel buffers take ~4 MB and
    the send then waits on the backed-up connection); a client on the same session that reads gets everything"""
    ini = write_ini(tmp_path, 'embedded')
    ini.write_text(ini.read_text() + "\n[api]\nws_queue = 4096\nws_send_timeout = 2\nevents_keep = 5000\n")
    add_users(ini, ('alice', 'user'))
    with APIServer(ini) as srv, Client(srv.url, 'alice', PW) as c:
        sid = c.create_session()['session_id']
        stalled = _stalled_ws(srv.port, f"/ws/{sid}", c.tokens['access_token'])
        _chatter_followed(c, sid)
        wait_for(lambda: _dropped_slow(srv.url) >= 1, 60, 'the server closing the client that does not read')
        assert _dropped_slow(srv.url) == 1  # that one only: the client that reads kept its connection
        # once the stalled client reads, it finds what the kernel buffers held and then the end of the connection
        stalled.settimeout(30)
        n = 0
        try:
            while b := stalled.recv(1 << 20): n += len(b)
        except ConnectionResetError: pass
        stalled.close()
        assert 0 < n < 6 * 2**20, n  # a part of the 8 MB stream: the server held no more than the connection's buffers

def test_streamed_tokens_of_a_chain_over_websocket(tmp_path):
    "A chain whose step's chat model streams: the tokens reach a WebSocket client in order, named by the step, between start and end"
    ini = write_ini(tmp_path, 'embedded')
    add_users(ini, ('dave', 'developer'))
    with APIServer(ini) as srv, Client(srv.url, 'dave', PW) as c:
        sid = c.create_session()['session_id']
        run = c.run_chain('poem_then_count', sid)
        assert run['status'] == 'succeeded' and run['outcome']['final']['words'] == len(POEM.split()), run
        got = list(c.events(sid, timeout=10, until=lambda m: m['type'] in ('end', 'error')))
        types = [m['type'] for m in got]
        toks = [m for m in got if m['type'] == 'token']
        assert ''.join(m['data']['text'] for m in toks) == POEM and {m['node'] for m in toks} == {'poem'}, types
        assert all(m['run_id'] == run['run_id'] for m in got) and types[-1] == 'end'
        # the tokens come while the poem step runs: after it starts, before it finishes and before the counting starts
        at = {(m['data'].get('event'), m['node']): k for k, m in enumerate(got) if m['type'] == 'progress'}
        first, last = types.index('token'), len(types) - 1 - types[::-1].index('token')
        assert at[('step_started', 'poem')] < first and last < at[('step_finished', 'poem')] < at[('step_started', 'word_count')], at
