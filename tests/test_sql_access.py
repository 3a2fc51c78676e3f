"""SQL from users and models reads the chosen source and nothing else.

The SQL a user pastes into `optimize_query` / the query_optimizer workflow, and the SQL a language model writes for
sql_generator, run on the user's own database. DuckDB can read any file the process can (`read_text`, `read_csv`,
`FROM '/path'`, `COPY ... TO`), so a query — or a view stored in a DuckDB file — could put a local file's content into a
reply or an artifact. Here a file holding a marker plays the secret; every path must refuse it, say so clearly, and never
return the marker anywhere (result, reply, stored artifacts)."""
import json
from pathlib import Path
import duckdb, pytest
from langchain_core.language_models.fake_chat_models import FakeListChatModel
from dataops_lab.core import InvalidInputError
from dataops_lab.sessions import SessionManager
from dataops_lab.workflows import WorkflowRegistry
from dataops_lab.orchestrator import Orchestrator
from dataops_lab.examples.profiling import UnsafeSQLError, connect, profile_database
from dataops_lab.examples.query_optimizer import optimize_query
from dataops_lab.examples.workflows import SQLGenerator, QueryOptimizer, SchemaAnalyzer, default_registry
from dataops_lab.examples.samples import sample_duckdb, sample_files
from conftest import uid

MARK = 'TOP-SECRET-7f3a9c'

@pytest.fixture
def secret(tmp_path):
    "A local file the user never chose as a source: a CSV with the marker in it"
    p = tmp_path / 'secret'
    p.write_text(f"k,v\npassword,{MARK}\n")
    return p

def _attacks(path):
    q = str(path).replace("'", "''")
    return [f"SELECT * FROM read_text('{q}')",
            f"SELECT * FROM read_csv('{q}')",
            f"SELECT * FROM read_csv_auto('{q}') WHERE v LIKE 'TOP%'",
            f"SELECT * FROM '{q}'",
            f"SELECT o.order_id, (SELECT max(content) FROM read_text('{q}')) AS c FROM orders o",
            f"WITH s AS (SELECT * FROM read_csv('{q}')) SELECT * FROM s",
            f"SELECT * FROM orders o JOIN read_csv('{q}') s ON true",
            f"SELECT * FROM orders; SELECT * FROM read_text('{q}')"]

@pytest.mark.parametrize('source', ['duckdb', 'csv'])
def test_optimize_query_refuses_sql_that_reads_other_files(secret, source):
    db = sample_duckdb() if source == 'duckdb' else sample_files('csv')
    for sql in _attacks(secret):
        with pytest.raises(InvalidInputError) as e: optimize_query(sql, db=db)
        assert MARK not in str(e.value), sql
        assert 'only reads' in str(e.value) or 'one SELECT' in str(e.value), str(e.value)
    ok = optimize_query("SELECT * FROM orders WHERE status = 'shipped'", db=db)  # the source's own tables still work
    assert ok.findings and ok.plan_before

def test_a_connection_reads_only_its_source(secret, tmp_path):
    "Even SQL that skips the checks (a view stored in a DuckDB file, `Database.query`) cannot reach another file"
    dbf = tmp_path / 'trap.duckdb'
    con = duckdb.connect(str(dbf))
    con.execute("CREATE TABLE t AS SELECT 1 AS x")
    con.execute(f"CREATE VIEW leak AS SELECT * FROM read_text('{secret}')")
    con.close()
    with connect(dbf) as db:
        assert db.query('SELECT x FROM t') == [(1,)]
        for sql in (f"SELECT * FROM read_text('{secret}')", 'SELECT * FROM leak', f"COPY t TO '{tmp_path / 'out.csv'}'", f"ATTACH '{tmp_path / 'other.db'}'"):
            with pytest.raises(UnsafeSQLError, match='reached outside the source') as e: db.query(sql)
            assert MARK not in str(e.value), sql
        with pytest.raises(Exception, match='configuration has been locked'): db.query("SET enable_external_access = true")
    assert not (tmp_path / 'out.csv').exists() and not (tmp_path / 'other.db').exists()
    with pytest.raises(UnsafeSQLError, match='reached outside the source') as e: profile_database(dbf)  # the trapped view fails the profile, clearly
    assert MARK not in str(e.value)
    with connect(sample_files('csv')) as db:  # a folder of files: its own files are readable, nothing else
        assert db.query('SELECT COUNT(*) FROM customers')[0][0] > 0
        with pytest.raises(Exception) as e: db.query(f"SELECT * FROM read_text('{secret}')")
        assert MARK not in str(e.value)

def test_model_written_sql_that_reads_a_file_is_not_run(secret):
    for sql in _attacks(secret)[:2]:
        llm = FakeListChatModel(responses=[sql])
        out = SQLGenerator(llm).run({'question': 'how many orders are there?', 'database': str(sample_duckdb())})
        assert MARK not in json.dumps(out, default=str), sql
        assert 'read_' not in out['sql'].lower() and out['rows'] == [[out['rows'][0][0]]]  # the rule-based query answered instead

def test_query_optimizer_workflow_through_the_orchestrator(secret, backend, manager_storage):
    sm = SessionManager(manager_storage)
    sid = sm.create_session(uid(), global_context={'database': str(sample_duckdb())}).session_id
    orch = Orchestrator(default_registry(), sm)
    r = orch.process(sid, f"optimize this query: SELECT * FROM read_csv('{secret}')")
    assert (r.kind, r.workflow) == ('error', 'query_optimizer') and 'read_csv' in r.reply, r.reply
    stored = [sm.artifacts.get_artifact_content(a) for a in r.artifact_ids]
    assert MARK not in json.dumps([r.model_dump(), stored, [m.content for m in sm.get_history(sid)]], default=str)
