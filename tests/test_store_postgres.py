"""Behaviour specific to the PostgreSQL table that the generic conformance suite does not cover: code-point order
whatever the database's collation, secrets kept out of errors, one shared pool per database, prepared statements,
provisioning (new index columns filled from stored items, a changed key refused, concurrent `ensure()`), and
recovery after the server restarts. Every test talks to the PostgreSQL server the test session starts."""
import os, subprocess, sys, uuid
import psycopg
import pytest
from servers import PostgresServer
from dataops_lab.core import BackendUnavailableError, ConfigError, InvalidKeyError
from dataops_lab.store.base import IndexSpec, TableSpec, Storage, open_table
from dataops_lab.store.postgres import PostgresTable

def schema(): return f"t_{uuid.uuid4().hex[:10]}"

@pytest.fixture
def url(postgres_server): return f"{postgres_server.url}?schema={schema()}"

ITEMS = TableSpec('items', 'id', indexes=(IndexSpec('by_owner', 'owner', 'name'),))

def test_strings_sort_by_code_point_whatever_the_collation(postgres_server, url):
    "The test server sorts text by ICU en-US ('a' < 'B'); the table must sort as Python, DynamoDB and SQLite do"
    with psycopg.connect(postgres_server.url) as c:
        icu = [r[0] for r in c.execute("SELECT x FROM unnest(ARRAY['a', 'B']) x ORDER BY x")]
    assert icu == ['a', 'B'], "the server's collation is not the one this test needs"
    names = ['a', 'B', '_x', 'Z', 'é', '~', 'b/', 'b0', 'B-2']
    with PostgresTable(url, ITEMS) as t:
        t.ensure()
        for i, n in enumerate(names): t.put({'id': n, 'owner': 'ana', 'name': n, 'i': i})
        assert [x['name'] for x in t.query('ana', index='by_owner').items] == sorted(names)
        assert [x['id'] for x in t.scan(limit=4).items] == sorted(names)[:4]
        assert [x['name'] for x in t.query('ana', index='by_owner', start='B', end='b/').items] == [n for n in sorted(names) if 'B' <= n <= 'b/']

def test_password_stays_out_of_messages(postgres_server):
    bad = postgres_server.url.replace(f":{postgres_server.url.split(':')[2].split('@')[0]}@", ':Wr0ng-pa55@')
    t = PostgresTable(bad + '?schema=x', ITEMS)
    with pytest.raises(BackendUnavailableError) as e: t.get('a')
    msg = str(e.value)
    assert 'password authentication failed' in msg and 'Wr0ng-pa55' not in msg and postgres_server.password not in msg, msg
    assert 'Wr0ng-pa55' not in repr(t) and '***' in repr(t)

def test_tables_of_one_storage_share_one_bounded_pool(postgres_server, moto_server, tmp_path):
    "A Storage opens a table per spec; they share one pool, so the connections stay within pool_max"
    from dataops_lab.config import load_settings
    import dataops_lab.context  # noqa: F401 -- registers the managers' tables
    s = schema()
    ini = tmp_path / 'settings.ini'
    ini.write_text(f"[storage]\nhot = sqlite:///{tmp_path}/c.db\ncold = {postgres_server.url}?schema={s}&pool_max=3&application_name={s}\nblob = file://{tmp_path}/b\n")
    with Storage(load_settings(ini)) as st:
        st.ensure()
        tables = [st.table(spec) for spec in __import__('dataops_lab.store.base', fromlist=['TABLES']).TABLES.values()]
        assert len(tables) >= 5 and len({id(t._pool) for t in tables}) == 1
        from concurrent.futures import ThreadPoolExecutor
        with ThreadPoolExecutor(8) as ex: list(ex.map(lambda i: tables[i % len(tables)].scan(limit=5), range(200)))
        with psycopg.connect(postgres_server.url) as c:
            n = c.execute("SELECT count(*) FROM pg_stat_activity WHERE application_name = %s", (s,)).fetchone()[0]
        assert 1 <= n <= 3, n
    with psycopg.connect(postgres_server.url) as c:  # closing the Storage closed the pool
        assert c.execute("SELECT count(*) FROM pg_stat_activity WHERE application_name = %s", (s,)).fetchone()[0] == 0

@pytest.mark.parametrize('prepare', ['true', 'false'])
def test_statements_are_prepared_unless_turned_off(url, prepare):
    with PostgresTable(url + f"&pool_min=1&pool_max=1&prepare={prepare}", ITEMS) as t:
        t.ensure()
        t.put({'id': 'a', 'owner': 'ana', 'name': 'x'}); t.get('a'); t.get('a')
        with t._conn() as c: stmts = [r[0] for r in c.execute("SELECT statement FROM pg_prepared_statements")]
    got = [s for s in stmts if 'INSERT INTO' in s or s.startswith('SELECT _item')]
    assert (len(got) >= 2) if prepare == 'true' else (got == []), stmts

def test_pooled_connections_parse_rows_with_the_contracts_parser(url):
    "json columns come back through item_from_json (orjson: psycopg's default json.loads was most of a long history read), which still takes integers over 64 bits"
    from psycopg.pq import Format
    from dataops_lab.store.base import item_from_json
    with PostgresTable(url + "&pool_min=1&pool_max=2", ITEMS) as t:
        t.ensure()
        t.put({'id': 'a', 'owner': 'ana', 'name': 'n', 'big': 10**20 + 1, 'x': 0.1, 'nested': {'n': [1, 'é']}})
        assert t.get('a') | {'_version': 0} == {'id': 'a', 'owner': 'ana', 'name': 'n', 'big': 10**20 + 1, 'x': 0.1, 'nested': {'n': [1, 'é']}, '_version': 0}
        assert [(i['big'], type(i['big'])) for i in t.query('ana', index='by_owner').items] == [(10**20 + 1, int)]  # exact: orjson alone reads it as the float 1e+20
        with t._conn() as c:
            assert c.adapters.get_loader(c.adapters.types['json'].oid, Format.TEXT)._loads is item_from_json

def test_ensure_adds_index_columns_filled_from_stored_items(url):
    with PostgresTable(url, TableSpec('items', 'id')) as old:
        old.ensure()
        old.put({'id': 'a', 'owner': 'ana', 'name': 'n1'}); old.put({'id': 'b', 'owner': 'bob', 'name': 'n2'}); old.put({'id': 'c', 'owner': 7})
    with PostgresTable(url, ITEMS) as new:
        with pytest.raises(Exception, match='storage init'): new.check()
        did = new.ensure()
        assert any('filled from 3 stored items' in d for d in did) and any('by_owner' in d for d in did), did
        new.check()
        assert new.ensure() == []  # idempotent
        assert [x['id'] for x in new.query('ana', index='by_owner').items] == ['a']
        assert new.query('7', index='by_owner').items == []  # a number is not the string index value

def test_changed_key_is_refused(url):
    with PostgresTable(url, TableSpec('items', 'id')) as t: t.ensure()
    with PostgresTable(url, TableSpec('items', 'id', 'seq', numeric=('seq',))) as t:
        with pytest.raises(ConfigError, match='primary key'): t.ensure()
        with pytest.raises(ConfigError, match='table_prefix'): t.check()

ENSURE = """
import sys
from dataops_lab.store.base import TableSpec, IndexSpec
from dataops_lab.store.postgres import PostgresTable
spec = TableSpec('items', 'id', indexes=(IndexSpec('by_owner', 'owner', 'name'),))
with PostgresTable(sys.argv[1], spec) as t: print(len(t.ensure()))
"""

def test_concurrent_ensure_in_processes(url):
    "Processes provisioning the same schema at once queue on an advisory lock: one creates, the others find it done"
    procs = [subprocess.Popen([sys.executable, '-c', ENSURE, url], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for _ in range(3)]
    outs = [p.communicate(timeout=120) for p in procs]
    assert all(p.returncode == 0 for p in procs), [o[1][-1500:] for o in outs]
    assert sorted(int(o[0]) for o in outs) == [0, 0, 4], outs  # schema, table, 2 indexes by the first; nothing by the rest

def test_overlong_key_is_refused_and_nothing_written(url):
    with PostgresTable(url, ITEMS) as t:
        t.ensure()
        with pytest.raises(InvalidKeyError, match='PostgreSQL refused'): t.put({'id': os.urandom(6000).hex(), 'owner': 'ana'})
        assert t.scan().items == []

def test_recovers_after_the_server_restarts():
    "The pool's connections die with the server; after a restart the table works again without being reopened"
    srv = PostgresServer(settings={'fsync': 'off'}).start()
    try:
        with PostgresTable(f"{srv.url}?schema=r&pool_min=2&pool_max=4&connect_timeout=2&pool_timeout=3", ITEMS) as t:
            t.ensure()
            t.put({'id': 'a', 'owner': 'ana', 'n': 1})
            srv.stop()
            with pytest.raises(BackendUnavailableError): t.get('a')
            srv.start()
            errors = 0
            for _ in range(3):  # at most the call that meets the dead connection fails; the pool then replaces them
                try: assert t.get('a')['n'] == 1; break
                except BackendUnavailableError: errors += 1
            assert errors <= 1
            assert t.update('a', add={'n': 1})['n'] == 2 and t.get('a')['_version'] == 2
    finally: srv.cleanup()

def _child_writes(t, n):
    for i in range(n): t.put({'id': f"c{os.getpid()}-{i}", 'owner': 'kid', 'name': f"{i:03d}"})
    assert t.get('p')['owner'] == 'ana'

def test_forked_children_open_their_own_connections(url):
    "A table used before fork (Dask and papermill workers fork) must not share the parent's sockets with the children"
    import multiprocessing as mp
    with PostgresTable(url + '&pool_min=2', ITEMS) as t:
        t.ensure()
        t.put({'id': 'p', 'owner': 'ana'})
        kids = [mp.get_context('fork').Process(target=_child_writes, args=(t, 30)) for _ in range(3)]
        for k in kids: k.start()
        for i in range(30): t.update('p', add={'n': 1})  # the parent keeps using its pool meanwhile
        for k in kids: k.join(120)
        assert [k.exitcode for k in kids] == [0, 0, 0]
        assert len(t.query('kid', index='by_owner', limit=1000).items) == 90 and t.get('p')['n'] == 30
