"""The auth matrix against a real server: every forged, expired, revoked, escalated or cross-user request is refused with the
right status, and each refusal is in the audit log. Also: two server processes on one Redis + moto share users, rate limits
and events."""
import base64, json, time
import httpx, jwt, pytest
from websockets.sync.client import connect
from websockets.exceptions import InvalidStatus
from dataops_lab.config import load_settings
from dataops_lab.api.audit import AuditLog
from dataops_lab.store.base import Storage
from dataops_lab.client import Client
from conftest import write_ini
from apiserver import APIServer, SECRET
from test_api import add_users, PW

def b64(d): return base64.urlsafe_b64encode(json.dumps(d).encode()).rstrip(b'=').decode()

@pytest.fixture
def srv(tmp_path):
    ini = write_ini(tmp_path, 'embedded')
    ini.write_text(ini.read_text() + "\n[api]\nrate_limit = 1000/minute\naccess_ttl = 60\n")
    add_users(ini, ('alice', 'user'), ('mallory', 'user'), ('dave', 'developer'), ('erin', 'developer'))
    with APIServer(ini) as s:
        s.ini = ini
        yield s

def test_auth_matrix(srv):
    u = srv.url
    alice, mallory = Client(u, 'alice', PW), Client(u, 'mallory', PW)
    sid = alice.create_session()['session_id']
    run = alice.query(sid, 'count the words: text="a b"')
    aid = run['outcome']['artifact_ids'][0]
    dave = Client(u, 'dave', PW)  # a developer's snapshot, for the cross-user load
    dsnap = dave.dump_context(dave.create_session()['session_id'])
    good = alice.tokens['access_token']
    claims = jwt.decode(good, options={'verify_signature': False})
    h, p, s = good.split('.')
    def get(token, path=f'/sessions/{sid}'):
        return httpx.get(u + path, headers={'Authorization': f'Bearer {token}'} if token is not None else {})
    def as_(c, method, path, **kw): return httpx.request(method, u + path, headers={'Authorization': f"Bearer {c.tokens['access_token']}"}, **kw)
    # name: (response, status, the audited actor and action)
    cases = {
        'no token': (get(None), 401, '-', 'get_session'),
        'expired': (get(jwt.encode({**claims, 'exp': int(time.time()) - 30, 'iat': int(time.time()) - 90}, SECRET, 'HS256')), 401, '-', 'get_session'),
        'tampered signature': (get(f"{h}.{p}.{s[:-4]}AAAA"), 401, '-', 'get_session'),
        'tampered payload': (get(f"{h}.{b64({**claims, 'sub': 'mallory'})}.{s}"), 401, '-', 'get_session'),
        'alg none': (get(f"{b64({'alg': 'none', 'typ': 'JWT'})}.{b64(claims)}."), 401, '-', 'get_session'),
        'HS384 instead of HS256': (get(jwt.encode(claims, SECRET, 'HS384')), 401, '-', 'get_session'),
        'wrong audience': (get(jwt.encode({**claims, 'aud': 'other-api'}, SECRET, 'HS256')), 401, '-', 'get_session'),
        'refresh token as access': (get(alice.tokens['refresh_token']), 401, '-', 'get_session'),
        'role escalation (user updates state)': (as_(alice, 'PATCH', f"/sessions/{sid}", json={'metadata': {'x': 1}}), 403, 'alice', 'update_session'),
        'role escalation (user reads audit)': (get(good, '/audit'), 403, 'alice', 'read_audit'),
        'role escalation (user adds a user)': (as_(alice, 'POST', '/users', json={'user_id': 'eve', 'role': 'admin'}), 403, 'alice', 'add_user'),
        'cross-user session': (get(mallory.tokens['access_token']), 404, 'mallory', 'get_session'),
        'cross-user artifact': (get(mallory.tokens['access_token'], f'/artifacts/{aid}'), 404, 'mallory', 'get_artifact'),
        'cross-user artifact content': (get(mallory.tokens['access_token'], f'/artifacts/{aid}/content'), 404, 'mallory', 'get_artifact_content'),
        'cross-user run': (get(mallory.tokens['access_token'], f"/runs/{run['run_id']}"), 404, 'mallory', 'get_run'),
        'cross-user snapshots': (get(mallory.tokens['access_token'], f'/sessions/{sid}/snapshots'), 404, 'mallory', 'list_snapshots'),
        'cross-user query': (as_(mallory, 'POST', f"/sessions/{sid}/query", json={'query': 'x'}), 404, 'mallory', 'query_session'),
    }
    # a developer loading another developer's snapshot into their own session: refused like a missing snapshot
    erin = Client(u, 'erin', PW)
    cases["another user's snapshot into your session"] = (as_(erin, 'POST', f"/sessions/{erin.create_session()['session_id']}/context/load", json={'snapshot_id': dsnap}),
                                                          404, 'erin', 'load_context')
    bad = {name: (r.status_code, want) for name, (r, want, *_) in cases.items() if r.status_code != want}
    assert not bad, bad
    assert 'message' in cases['cross-user session'][0].json()['error'] and cases['cross-user session'][0].json()['error']['message'] == f"no session {sid!r}"
    # the cross-user 404 says exactly what a missing id says
    assert get(mallory.tokens['access_token'], '/sessions/sess_doesnotexist').json()['error']['message'] == "no session 'sess_doesnotexist'"
    # refresh reuse revokes the family; logout revokes
    rt = alice.tokens['refresh_token']
    r = httpx.post(f"{u}/auth/refresh", json={'refresh_token': rt})
    assert r.status_code == 200
    cases['refresh'] = (r, 200, 'alice', 'refresh')
    r = httpx.post(f"{u}/auth/refresh", json={'refresh_token': rt})
    assert r.status_code == 401 and 'used already' in r.json()['error']['message']
    cases['refresh reuse'] = (r, 401, 'alice', 'refresh')  # the stolen sign-in is the token's user's: an admin finds it under their name
    r = get(good)
    assert r.status_code == 401  # the whole sign-in is revoked
    cases['revoked by refresh reuse'] = (r, 401, '-', 'get_session')
    m = mallory.tokens['access_token']
    r = httpx.post(f"{u}/auth/logout", headers={'Authorization': f'Bearer {m}'})
    assert r.status_code == 204
    cases['logout'] = (r, 204, 'mallory', 'logout')
    r = get(m, '/workflows')
    assert r.status_code == 401
    cases['revoked by logout'] = (r, 401, '-', 'list_workflows')
    # the WebSocket: refused at the handshake without a valid token, or for another user's session
    bob = Client(u, 'dave', PW).tokens['access_token']
    ws_ids = {}
    for q, want, who in ((f'/ws/{sid}', 401, '-'), (f'/ws/{sid}?token=forged', 401, '-'), (f'/ws/{sid}?token={bob}', 404, 'dave')):
        with pytest.raises(InvalidStatus) as e:
            with connect(u.replace('http', 'ws') + q): pass
        assert e.value.response.status_code == want, q
        ws_ids[json.loads(e.value.response.body)['error']['request_id']] = (q, 4000 + want, who)
    # every refusal is audited, with who and the client address
    recs = AuditLog(Storage(load_settings(srv.ini))).query(limit=1000)
    # exactly one record per request of the matrix, with the right actor, action, status and outcome
    by_req = {}
    for r in recs: by_req.setdefault(r.request_id, []).append(r)
    outcome = {200: 'ok', 204: 'ok', 401: 'unauthenticated', 403: 'denied', 404: 'not_found'}
    wrong = {}
    for name, (r, want, who, action) in cases.items():
        got = [(x.user_id, x.action, x.status, x.outcome) for x in by_req.get(r.headers['x-request-id'], [])]
        if got != [(who, action, want, outcome[want])]: wrong[name] = got
    for rid, (q, status, who) in ws_ids.items():
        got = [(x.user_id, x.action, x.status, x.outcome) for x in by_req.get(rid, [])]
        if got != [(who, 'events', status, outcome[status - 4000])]: wrong[q.split('?')[-1]] = got
    assert not wrong, wrong
    outcomes = {(r.user_id, r.status) for r in recs}
    assert ('-', 401) in outcomes and ('alice', 403) in outcomes and ('mallory', 404) in outcomes and ('dave', 4404) in outcomes, outcomes
    assert all(r.client == '127.0.0.1' for r in recs)
    assert not any(PW in r.model_dump_json() or 'Bearer' in r.model_dump_json() for r in recs)

def test_two_processes_share_users_limits_and_events(tmp_path, request):
    ini = write_ini(tmp_path, 'aws', request)
    ini.write_text(ini.read_text() + "\n[api]\nrate_limit = 5/minute\nendpoint_limits = query_session=100/minute\n")
    with APIServer(ini) as a, APIServer(ini) as b:
        add_users(ini, ('alice', 'developer'))
        ca, cb = Client(a.url, 'alice', PW), Client(b.url, 'alice', PW)  # the user added once signs in on both
        sid = ca.create_session()['session_id']  # 1 get-or-create counts on create_session
        codes = [httpx.get(f"{srv.url}/sessions/{sid}", headers={'Authorization': f"Bearer {ca.tokens['access_token']}"}).status_code
                 for srv in (a, b, a, b, a, b, a)]
        assert codes == [200] * 5 + [429, 429], codes  # 5/minute per user and endpoint, counted across both processes
        # a WebSocket client on A receives the progress of a query run through B
        import threading
        got = []
        t = threading.Thread(target=lambda: got.extend(ca.events(sid, timeout=30, until=lambda m: m['type'] in ('end', 'error'))))
        t.start()
        run = cb.query(sid, 'count the words: text="one two"')
        t.join(40)
        assert run['status'] == 'succeeded' and [m['type'] for m in got][0] == 'start' and got[-1]['type'] == 'end', got
        assert {m['run_id'] for m in got} == {run['run_id']}
        # no lost writes: both processes append to one session concurrently
        runs = []
        ts = [threading.Thread(target=lambda c=c: runs.append(c.query(sid, 'count the words: text="x y z"'))) for c in (ca, cb, ca, cb)]
        for t in ts: t.start()
        for t in ts: t.join(60)
        assert [r['status'] for r in runs] == ['succeeded'] * 4
        assert ca.request('GET', f'/sessions/{sid}/history', params={'limit': 1000}).json()['items'][-1]['seq'] == 10  # 5 queries x (user + assistant), gap-free
