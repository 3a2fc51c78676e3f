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
    cases = {
        'no token': (get(None), 401),
        'expired': (get(jwt.encode({**claims, 'exp': int(time.time()) - 30, 'iat': int(time.time()) - 90}, SECRET, 'HS256')), 401),
        'tampered signature': (get(f"{h}.{p}.{s[:-4]}AAAA"), 401),
        'tampered payload': (get(f"{h}.{b64({**claims, 'sub': 'mallory'})}.{s}"), 401),
        'alg none': (get(f"{b64({'alg': 'none', 'typ': 'JWT'})}.{b64(claims)}."), 401),
        'HS384 instead of HS256': (get(jwt.encode(claims, SECRET, 'HS384')), 401),
        'wrong audience': (get(jwt.encode({**claims, 'aud': 'other-api'}, SECRET, 'HS256')), 401),
        'refresh token as access': (get(alice.tokens['refresh_token']), 401),
        'role escalation (user updates state)': (httpx.patch(f"{u}/sessions/{sid}", json={'metadata': {'x': 1}}, headers={'Authorization': f'Bearer {good}'}), 403),
        'role escalation (user reads audit)': (get(good, '/audit'), 403),
        'role escalation (user adds a user)': (httpx.post(f"{u}/users", json={'user_id': 'eve', 'role': 'admin'}, headers={'Authorization': f'Bearer {good}'}), 403),
        'cross-user session': (get(mallory.tokens['access_token']), 404),
        'cross-user artifact': (get(mallory.tokens['access_token'], f'/artifacts/{aid}'), 404),
        'cross-user artifact content': (get(mallory.tokens['access_token'], f'/artifacts/{aid}/content'), 404),
        'cross-user run': (get(mallory.tokens['access_token'], f"/runs/{run['run_id']}"), 404),
        'cross-user snapshots': (get(mallory.tokens['access_token'], f'/sessions/{sid}/snapshots'), 404),
        'cross-user query': (httpx.post(f"{u}/sessions/{sid}/query", json={'query': 'x'}, headers={'Authorization': f"Bearer {mallory.tokens['access_token']}"}), 404),
    }
    # a developer loading another developer's snapshot into their own session: refused like a missing snapshot
    erin = Client(u, 'erin', PW)
    cases["another user's snapshot into your session"] = (httpx.post(f"{u}/sessions/{erin.create_session()['session_id']}/context/load", json={'snapshot_id': dsnap},
                                                                     headers={'Authorization': f"Bearer {erin.tokens['access_token']}"}), 404)
    bad = {name: (r.status_code, want) for name, (r, want) in cases.items() if r.status_code != want}
    assert not bad, bad
    assert 'message' in cases['cross-user session'][0].json()['error'] and cases['cross-user session'][0].json()['error']['message'] == f"no session {sid!r}"
    # the cross-user 404 says exactly what a missing id says
    assert get(mallory.tokens['access_token'], '/sessions/sess_doesnotexist').json()['error']['message'] == "no session 'sess_doesnotexist'"
    # refresh reuse revokes the family; logout revokes
    rt = alice.tokens['refresh_token']
    assert httpx.post(f"{u}/auth/refresh", json={'refresh_token': rt}).status_code == 200
    r = httpx.post(f"{u}/auth/refresh", json={'refresh_token': rt})
    assert r.status_code == 401 and 'used already' in r.json()['error']['message']
    assert get(good).status_code == 401  # the whole sign-in is revoked
    m = mallory.tokens['access_token']
    assert httpx.post(f"{u}/auth/logout", headers={'Authorization': f'Bearer {m}'}).status_code == 204
    assert get(m, '/workflows').status_code == 401
    # the WebSocket: refused at the handshake without a valid token, or for another user's session
    bob = Client(u, 'dave', PW).tokens['access_token']
    for q, want in ((f'/ws/{sid}', 401), (f'/ws/{sid}?token=forged', 401), (f'/ws/{sid}?token={bob}', 404)):
        with pytest.raises(InvalidStatus) as e:
            with connect(u.replace('http', 'ws') + q): pass
        assert e.value.response.status_code == want, q
    # every refusal is audited, with who and the client address
    recs = AuditLog(Storage(load_settings(srv.ini))).query(limit=1000)
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
