"""The storage conformance suite, one pytest test per check, against every backend:
the embedded default (SQLite + files) and real servers (redis-server, PostgreSQL, moto's S3 + DynamoDB over HTTP)."""
import pytest
from dataops_lab.store.conformance import StoreTarget, checks, run_check

BACKENDS = {'blob': ['file', 's3'], 'table': ['sqlite', 'dynamodb', 'postgres'], 'cache': ['sqlite', 'redis']}

@pytest.fixture(scope='module')
def targets(request, tmp_path_factory):
    "Build targets lazily so that only the servers a selected test needs are started"
    tmp = tmp_path_factory.mktemp('conformance')
    def get(kind, backend):
        if backend == 'file': return StoreTarget('blob', f"file://{tmp}/blobs")
        if backend == 'sqlite': return StoreTarget(kind, f"sqlite:///{tmp}/{kind}.db")
        if backend == 'postgres':
            return StoreTarget('table', request.getfixturevalue('postgres_server').url + '?schema=conformance')
        if backend == 'redis':
            srv = request.getfixturevalue('redis_server')
            return StoreTarget('cache', srv.url + '?prefix=conformance:')
        moto = request.getfixturevalue('moto_server')
        s3 = f"s3://dataops-conformance/runs?region=us-east-1&endpoint_url={moto.endpoint}"
        if backend == 's3': return StoreTarget('blob', s3)
        return StoreTarget('table', f"dynamodb://us-east-1?endpoint_url={moto.endpoint}", {'offload': s3})
    return get

CASES = [pytest.param(kind, backend, chk, id=f"{kind}-{backend}-{chk.name}")
         for kind, backends in BACKENDS.items() for backend in backends for chk in checks(kind)]

@pytest.mark.parametrize('kind,backend,check', CASES)
def test_conformance(targets, kind, backend, check):
    target = targets(kind, backend)
    if backend in ('s3', 'dynamodb'):
        from dataops_lab.store.base import open_blob
        with open_blob(targets('blob', 's3').url) as b: b.ensure()
    run_check(target, check)
