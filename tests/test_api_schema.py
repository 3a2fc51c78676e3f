"""schemathesis against the live server's /openapi.json: for every operation, requests generated from the schema
(valid and invalid) get no 5xx, and every response conforms to what the schema declares (status code, content type,
headers, body). Bounded: a few examples per operation, so CI runs it every time."""
import pytest, schemathesis
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis.errors import Unsatisfiable
from schemathesis.checks import (not_a_server_error, status_code_conformance, content_type_conformance,
                                 response_headers_conformance, response_schema_conformance)
from dataops_lab.client import Client
from conftest import write_ini
from apiserver import APIServer
from test_api import add_users, PW

EXAMPLES = 6  # per operation and generation mode; ~50 operations
CHECKS = [not_a_server_error, status_code_conformance, content_type_conformance, response_headers_conformance, response_schema_conformance]

@pytest.fixture(scope='module')
def live(tmp_path_factory):
    "An embedded server with an admin (the widest surface) and one session, so that generated requests reach past the auth check"
    tmp = tmp_path_factory.mktemp('schema')
    ini = write_ini(tmp, 'embedded')
    ini.write_text(ini.read_text() + "\n[api]\nrate_limit = 100000/minute\n")
    add_users(ini, ('root', 'admin'))
    with APIServer(ini) as srv:
        c = Client(srv.url, 'root', PW)
        srv.session_id = c.create_session()['session_id']
        srv.headers = {'Authorization': f"Bearer {c.tokens['access_token']}"}
        yield srv

MODES = [('positive', schemathesis.GenerationMode.POSITIVE), ('negative', schemathesis.GenerationMode.NEGATIVE)]

def test_openapi_conformance(live):
    schema = schemathesis.openapi.from_url(f"{live.url}/openapi.json")
    ops = [r.ok() for r in schema.get_all_operations()]
    # logout would revoke the token every later case uses; removing users could remove root
    ops = [op for op in ops if op.path != '/auth/logout' and not (op.method.upper() == 'DELETE' and op.path == '/users/{user_id}')]
    assert len(ops) >= 39, [op.label for op in ops]
    failures, calls = {}, []
    for op in ops:
        # random ids, and (positive mode) the real session's id where the path takes one: past the 404 into the handler
        known = {'session_id': live.session_id} if '{session_id}' in op.path else None
        for mode_name, mode in MODES + ([('positive, real session', schemathesis.GenerationMode.POSITIVE)] if known else []):
            kw = {'path_parameters': known} if mode_name.endswith('real session') else {}
            @given(case=op.as_strategy(generation_mode=mode, **kw))
            @settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=list(HealthCheck), derandomize=True, database=None,
                      phases=[Phase.explicit, Phase.generate])
            def run(case):
                calls.append(op.label)
                try: case.call_and_validate(base_url=live.url, headers=live.headers, checks=CHECKS, timeout=60)
                except (Exception, BaseExceptionGroup) as e:  # a schemathesis FailureGroup is an exception group
                    failures.setdefault(f"{op.label} ({mode_name})", f"{type(e).__name__}: {e}"[:1500])
            try: run()
            except Unsatisfiable: assert mode_name == 'negative', op.label  # nothing to make invalid (no parameters, no body)
    assert len(calls) > 4 * len(ops), len(calls)
    assert not failures, '\n\n'.join(f"{k}:\n{v}" for k, v in failures.items())
