"""The orchestration layer: workflow registry, orchestrator, chains, decorators and the shipped example workflows.

Storage-backed behaviour (sessions, artifacts, LangGraph checkpoints) runs on both tiers: the embedded default
(SQLite + files) and Redis + DynamoDB + S3 (real servers: redis-server and moto over HTTP). What a notebook cannot
show is here too: entry-point discovery from an installed distribution, a workflow package written against another
copy of the contract, and a chain resumed in a second process after the first was SIGKILLed mid-run."""
import importlib.util, inspect, json, logging, os, shutil, sqlite3, subprocess, sys, textwrap, threading
from pathlib import Path
from typing import TypedDict
import pytest, sqlglot
from langchain_core.language_models.fake_chat_models import FakeListChatModel
from langgraph.graph import StateGraph, START, END
from dataops_lab.core import *
from dataops_lab.models import ArtifactType, Role
from dataops_lab.config import load_settings
from dataops_lab.store.base import Storage
from dataops_lab.artifacts import ArtifactStore
from dataops_lab.sessions import SessionManager
from dataops_lab.workflows import *
from dataops_lab.workflows import AdaptedWorkflow, FunctionWorkflow, GraphWorkflow
from dataops_lab.decorators import *
from dataops_lab.orchestrator import *
from dataops_lab.chain import *
from dataops_lab.chain import Step, topo_order
from dataops_lab.checkpoint import CHECKPOINT_TABLES  # importing chain/checkpoint registers their tables before the shared tiers are provisioned
from dataops_lab.examples.workflows import *
from dataops_lab.examples.workflows import _NO_MODEL
from dataops_lab.examples.samples import sample_db, sample_duckdb, sample_jil_dir, sample_files
from conftest import Child, uid
from servers import wait_for

# ---------------------------------------------------------------- helpers

_ensured = set()

@pytest.fixture
def sm(backend, manager_storage):
    "A SessionManager on the tier under test (shared tables; the checkpoint tables provisioned too)"
    if backend not in _ensured: manager_storage.ensure(CHECKPOINT_TABLES); _ensured.add(backend)
    return SessionManager(manager_storage)

@pytest.fixture
def sid(sm): return sm.create_session(uid()).session_id

def content(sm, aid): return sm.artifacts.get_artifact_content(aid)
def art(sm, aid): return sm.artifacts.get_artifact(aid)
def history(sm, sid): return [(m.role.value, m.content, m.workflow, m.artifact_ids, m.metadata.get('kind')) for m in sm.get_history(sid)]

class RecordingChat(FakeListChatModel):
    "LangChain's fake chat model, remembering the prompts it was given"
    seen: list = []
    def _call(self, messages, stop=None, run_manager=None, **kw):
        self.seen.append(messages if isinstance(messages, str) else '\n'.join(str(m.content) for m in messages))
        return super()._call(messages, stop, run_manager, **kw)

class BrokenChat:
    "A chat model whose endpoint is down"
    def invoke(self, *a, **kw): raise ConnectionError('model endpoint unreachable')

# ================================================================ WorkflowRegistry

def _pkg(root: Path, name: str, cfg: str | None, files: dict[str, str]):
    (root / name).mkdir(parents=True)
    if cfg is not None: (root / name / 'config.yaml').write_text(cfg)
    for fn, code in files.items(): (root / name / fn).write_text(textwrap.dedent(code))

# A copy of the original DataOps Agent contract, as a ported workflow package carries it (free-form `type` strings
# such as 'file_path', pydantic models of its own, an ABC that is not ours).
OTHER_CONTRACT = '''
    from abc import ABC, abstractmethod
    from typing import Any, Optional
    from pydantic import BaseModel
    class WorkflowInputParameter(BaseModel):
        name: str
        description: str
        type: str
        required: bool = True
        default: Optional[Any] = None
        example: Optional[str] = None
        prompt: Optional[str] = None
    class WorkflowMetadata(BaseModel):
        name: str
        description: str
        capabilities: list[str]
        example_queries: list[str]
        category: str
        version: str = "1.0.0"
        author: str = "Data Engineering Team"
        required_inputs: list[WorkflowInputParameter] = []
    class BaseWorkflow(ABC):
        @abstractmethod
        def get_metadata(self) -> WorkflowMetadata: ...
        @abstractmethod
        def get_compiled_graph(self): ...
'''

LEGACY_WORKFLOW = '''
    from typing import TypedDict
    from langgraph.graph import StateGraph, START, END
    from .contract import BaseWorkflow, WorkflowMetadata, WorkflowInputParameter

    class LinesState(TypedDict, total=False):
        file_path: str
        max_lines: int
        output: dict

    class LineCounterWorkflow(BaseWorkflow):
        def get_metadata(self) -> WorkflowMetadata:
            return WorkflowMetadata(name="line_counter", description="Count the lines of a text file", capabilities=["count lines"],
                                    example_queries=["count the lines of notes.txt"], category="analysis",
                                    required_inputs=[WorkflowInputParameter(name="file_path", description="the file", type="file_path", example="/tmp/notes.txt",
                                                                            prompt="Which file should I count?"),
                                                     WorkflowInputParameter(name="max_lines", description="stop after", type="integer", required=False, default=1000)])
        def get_compiled_graph(self):
            def count(state):
                with open(state["file_path"]) as f: n = sum(1 for _ in f)
                return {"output": {"lines": min(n, state["max_lines"])}}
            g = StateGraph(LinesState)
            g.add_node("count", count)
            g.add_edge(START, "count"); g.add_edge("count", END)
            return g.compile()

    # the original packages expose an instance and its graph at module level, "for backwards compatibility"
    _workflow_instance = LineCounterWorkflow()
    workflow_graph = _workflow_instance.get_compiled_graph()
'''

def test_folder_discovery_enabled_disabled_broken(tmp_path):
    root = tmp_path / 'workflows'
    _pkg(root, 'greeter', 'enabled: true\n', {'workflow.py': '''
        from dataops_lab.workflows import workflow
        @workflow(example_queries=['say hello'], inputs={'name': {'prompt': 'Who should I greet?'}})
        def greet(name: str = 'world'):
            "Say hello"
            return {'greeting': f'hello {name}'}
    '''})
    _pkg(root, 'classy', '{}\n', {'workflow.py': '''
        from langgraph.graph import StateGraph, START, END
        from dataops_lab.workflows import BaseWorkflow, WorkflowMetadata, WorkflowInputParameter
        class Doubler(BaseWorkflow):
            def get_metadata(self): return WorkflowMetadata(name='doubler', description='Double a number',
                                                            required_inputs=[WorkflowInputParameter(name='x', type='integer', required=False, default=1)])
            def get_compiled_graph(self):
                g = StateGraph(dict); g.add_node('d', lambda s: {'out': 2 * s.get('x', 1)}); g.add_edge(START, 'd'); g.add_edge('d', END)
                return g.compile()
    '''})
    _pkg(root, 'explicit', 'enabled: yes\nmodule: impl.py\nclass: Chosen\n', {'impl.py': '''
        from dataops_lab.workflows import BaseWorkflow, WorkflowMetadata, GraphWorkflow
        from langgraph.graph import StateGraph, START, END
        def _g():
            g = StateGraph(dict); g.add_node('n', lambda s: {'who': 'chosen'}); g.add_edge(START, 'n'); g.add_edge('n', END)
            return g.compile()
        class Chosen(BaseWorkflow):
            def get_metadata(self): return WorkflowMetadata(name='chosen', description='picked by config.yaml')
            def get_compiled_graph(self): return _g()
        class NotChosen(BaseWorkflow):
            def get_metadata(self): return WorkflowMetadata(name='not_chosen', description='ignored: config names another class')
            def get_compiled_graph(self): return _g()
    '''})
    marker = tmp_path / 'imported'
    _pkg(root, 'retired', 'enabled: false\n', {'workflow.py': f'open({str(marker)!r}, "w").write("x")\nraise RuntimeError("never imported")\n'})
    _pkg(root, 'broken_import', 'enabled: true\n', {'workflow.py': 'import not_a_module_anywhere\n'})
    _pkg(root, 'broken_metadata', 'enabled: true\n', {'workflow.py': '''
        from dataops_lab.workflows import BaseWorkflow
        class Bad(BaseWorkflow):
            def get_metadata(self): raise KeyError('description')
            def get_compiled_graph(self): return None
    '''})
    _pkg(root, 'bad_name', 'enabled: true\n', {'workflow.py': '''
        from dataops_lab.workflows import workflow
        @workflow(name='has spaces')
        def f(): return {}
    '''})
    _pkg(root, 'bad_yaml', '- just\n- a list\n', {'workflow.py': 'x = 1\n'})
    _pkg(root, 'empty', 'enabled: true\n', {'workflow.py': 'from dataops_lab.workflows import BaseWorkflow, workflow  # imports only\n'})
    _pkg(root, 'no_config', None, {'workflow.py': 'raise RuntimeError("a folder without config.yaml is not a workflow")\n'})
    _pkg(root, '_private', 'enabled: true\n', {'workflow.py': 'raise RuntimeError("underscore folders are skipped")\n'})

    reg = WorkflowRegistry()
    added = reg.discover_folder(root)
    assert sorted(added) == ['chosen', 'doubler', 'greet']
    assert reg.names() == ['chosen', 'doubler', 'greet']
    assert reg.disabled == ['retired'] and not marker.exists()  # disabled: never imported
    errors = {e.name: e for e in reg.errors}
    assert sorted(errors) == ['bad_name', 'bad_yaml', 'broken_import', 'broken_metadata', 'empty']
    assert errors['broken_import'].source == str(root / 'broken_import')
    assert 'ModuleNotFoundError' in errors['broken_import'].error and 'not_a_module_anywhere' in errors['broken_import'].detail
    assert 'KeyError' in errors['broken_metadata'].error
    assert "'has spaces'" in errors['bad_name'].error
    assert 'must be a mapping' in errors['bad_yaml'].error
    assert 'defines no workflow' in errors['empty'].error
    # what loaded works, and says where it came from
    assert reg['greet'].run({})['greeting'] == 'hello world'
    assert reg['greet'].run({'name': 'ada'})['greeting'] == 'hello ada'
    assert reg['doubler'].run({'x': 21})['out'] == 42
    assert reg['chosen'].run({})['who'] == 'chosen'
    assert reg.sources['greet'] == str(root / 'greeter')
    with pytest.raises(NotFoundError, match='failed to load: .*broken_import') as e: reg.get('greeter')
    assert 'known workflows: chosen, doubler, greet' in e.value.hint
    with pytest.raises(NotFoundError, match='does not exist'): reg.discover_folder(tmp_path / 'nowhere')

def test_folder_workflow_written_against_another_copy_of_the_contract(tmp_path):
    "A DataOps Agent package (its own contract copy, 'file_path' inputs, a module-level instance) registers unchanged"
    root = tmp_path / 'workflows'
    _pkg(root, 'line_counter', 'enabled: true\n', {'__init__.py': '', 'contract.py': OTHER_CONTRACT, 'workflow.py': LEGACY_WORKFLOW})
    reg = WorkflowRegistry()
    assert reg.discover_folder(root) == ['line_counter'], [e.error for e in reg.errors]
    assert reg.errors == []
    wf = reg['line_counter']
    assert isinstance(wf, AdaptedWorkflow) and not isinstance(wf.obj, BaseWorkflow)
    md = wf.metadata
    assert isinstance(md, WorkflowMetadata) and (md.category, md.author) == ('analysis', 'Data Engineering Team')
    assert [(p.name, p.type, p.required, p.default) for p in md.required_inputs] == [('file_path', 'path', True, None), ('max_lines', 'integer', False, 1000)]
    with pytest.raises(InvalidInputError, match="needs 'file_path'") as e: wf.run({})
    assert e.value.hint == 'Which file should I count?'  # the contract's own prompt
    notes = tmp_path / 'notes.txt'
    notes.write_text('a\nb\nc\n')
    assert wf.run({'file_path': str(notes)})['output'] == {'lines': 3}
    assert wf.run({'file_path': str(notes), 'max_lines': '2'})['output'] == {'lines': 2}  # coerced to the declared type

def test_register_in_code_and_duplicates(tmp_path):
    @workflow()
    def alpha(x: int = 1): return {'y': x + 1}

    class PlainMeta:  # another contract copy without pydantic: plain attributes
        def __init__(self, **kw): self.__dict__.update(kw)
    class Legacy:
        def get_metadata(self):
            return PlainMeta(name='legacy', description='legacy workflow', capabilities=[], example_queries=['legacy please'], category='old',
                             required_inputs=[PlainMeta(name='n', description='a number', type='int', required=True, default=None, example='3', prompt='How many?')])
        def get_compiled_graph(self):
            g = StateGraph(dict); g.add_node('n', lambda s: {'n2': s['n'] * 2}); g.add_edge(START, 'n'); g.add_edge('n', END)
            return g.compile()

    g = StateGraph(dict); g.add_node('echo', lambda s: {'echo': s.get('text')}); g.add_edge(START, 'echo'); g.add_edge('echo', END)
    reg = WorkflowRegistry(alpha)
    reg.register(Legacy)  # a class: instantiated, then adapted
    reg.register(g.compile(), metadata={'name': 'echo', 'description': 'Echo text',
                                        'required_inputs': [{'name': 'text', 'prompt': 'What should I echo?'}]})
    assert reg.names() == ['alpha', 'echo', 'legacy']
    assert isinstance(reg['legacy'], AdaptedWorkflow) and isinstance(reg['echo'], GraphWorkflow) and isinstance(reg['alpha'], FunctionWorkflow)
    assert reg['legacy'].run({'n': '4'})['n2'] == 8
    assert reg['echo'].run({'text': 'hi'})['echo'] == 'hi'
    assert reg.register(alpha) is alpha and len(reg) == 3  # the same object again: nothing changes

    @workflow(name='alpha')
    def other_alpha(): return {}
    with pytest.raises(ConflictError, match=r"workflow name 'alpha' is taken by code; plugin.py defines it again"):
        reg.register(other_alpha, source='plugin.py')
    assert reg['alpha'] is alpha
    with pytest.raises(InvalidInputError, match='cannot register'): reg.register(object())

    # a folder package that reuses a taken name is skipped, and the error names both sources
    root = tmp_path / 'wfs'
    _pkg(root, 'dupe', 'enabled: true\n', {'workflow.py': '''
        from dataops_lab.workflows import workflow
        @workflow(name='alpha')
        def impostor(): return {'who': 'impostor'}
    '''})
    assert reg.discover_folder(root) == []
    [err] = reg.errors
    assert err.name == 'dupe' and f"taken by code; {root / 'dupe'} defines it again" in err.error
    assert reg['alpha'] is alpha and reg.sources['alpha'] == 'code'

ENTRY_POINT_CHILD = r'''
import json
from dataops_lab.workflows import WorkflowRegistry, workflow
@workflow(name='reverse_word')
def local(word: str): return {'local': True}
reg = WorkflowRegistry()
added = reg.discover_entry_points()
out = {'added': sorted(added), 'names': reg.names(), 'sources': reg.sources, 'types': {n: type(w).__name__ for n, w in reg.workflows.items()},
       'errors': sorted([e.name, e.source, e.error] for e in reg.errors), 'run': reg['reverse_word'].run({'word': 'abc'}),
       'legacy': reg['acme_legacy'].run({'q': 'x'})}
reg2 = WorkflowRegistry(local)
reg2.discover_entry_points()
out['dupe_errors'] = [[e.name, e.error] for e in reg2.errors]
print(json.dumps(out))
'''

def test_entry_point_discovery_from_an_installed_distribution(tmp_path):
    "A distribution on sys.path declaring [dataops_lab.workflows] entry points, discovered in a fresh interpreter"
    site = tmp_path / 'site'
    (site / 'acme_workflows').mkdir(parents=True)
    (site / 'acme_workflows' / 'contract.py').write_text(textwrap.dedent(OTHER_CONTRACT))
    (site / 'acme_workflows' / '__init__.py').write_text(textwrap.dedent('''
        from langgraph.graph import StateGraph, START, END
        from dataops_lab.workflows import workflow
        from .contract import BaseWorkflow, WorkflowMetadata, WorkflowInputParameter
        @workflow(example_queries=['reverse a word'])
        def reverse_word(word: str):
            "Reverse a word"
            return {'reversed': word[::-1]}
        class AcmeLegacy(BaseWorkflow):
            def get_metadata(self):
                return WorkflowMetadata(name='acme_legacy', description='legacy', capabilities=[], example_queries=[], category='x',
                                        required_inputs=[WorkflowInputParameter(name='q', description='query', type='string')])
            def get_compiled_graph(self):
                g = StateGraph(dict); g.add_node('n', lambda s: {'answer': s['q'] * 2}); g.add_edge(START, 'n'); g.add_edge('n', END)
                return g.compile()
    '''))
    dist = site / 'acme_workflows-0.3.dist-info'
    dist.mkdir()
    (dist / 'METADATA').write_text('Metadata-Version: 2.1\nName: acme-workflows\nVersion: 0.3\n')
    (dist / 'entry_points.txt').write_text('[dataops_lab.workflows]\nreverse = acme_workflows:reverse_word\nlegacy = acme_workflows:AcmeLegacy\n'
                                           'missing = acme_workflows:not_there\n\n[console_scripts]\nacme = acme_workflows:main\n')
    env_path = os.pathsep.join(p for p in [str(site), os.environ.get('PYTHONPATH')] if p)
    p = subprocess.run([sys.executable, '-c', ENTRY_POINT_CHILD], env={**os.environ, 'PYTHONPATH': env_path}, capture_output=True, text=True, timeout=120)
    assert p.returncode == 0, p.stderr[-3000:]
    out = json.loads(p.stdout.strip().splitlines()[-1])
    assert out['added'] == sorted(['acme_legacy', 'reverse_word', *BUNDLED]) and out['names'] == out['added']  # beside the bundled ones
    acme = ('reverse_word', 'acme_legacy')
    assert {n: out['sources'][n] for n in acme} == {'reverse_word': 'entry point acme_workflows:reverse_word', 'acme_legacy': 'entry point acme_workflows:AcmeLegacy'}
    assert {n: out['types'][n] for n in acme} == {'reverse_word': 'FunctionWorkflow', 'acme_legacy': 'AdaptedWorkflow'}
    assert out['run']['reversed'] == 'cba' and out['legacy']['answer'] == 'xx'
    [[name, source, error]] = out['errors']
    assert (name, source) == ('missing', 'entry point acme_workflows:not_there') and 'not_there' in error
    dupe = [e for e in out['dupe_errors'] if e[0] == 'reverse']
    assert dupe and "workflow name 'reverse_word' is taken by code; entry point acme_workflows:reverse_word defines it again" in dupe[0][1]

BUNDLED = ['jil_parser', 'query_optimizer', 'schema_analyzer', 'simple_agent', 'sql_generator', 'supervisor_agent']

def test_bundled_workflows_register_through_the_entry_point():
    "The six bundled workflows come in as a third-party package's would: the dataops_lab.workflows entry points, given the registry's model"
    reg = WorkflowRegistry()
    assert sorted(reg.discover_entry_points()) == BUNDLED and reg.errors == []
    assert {n: reg.sources[n] for n in ('schema_analyzer', 'supervisor_agent')} == {
        'schema_analyzer': 'entry point dataops_lab.examples.workflows:SchemaAnalyzer', 'supervisor_agent': 'entry point dataops_lab.examples.workflows:SupervisorAgent'}
    assert (reg['sql_generator'].llm, reg['supervisor_agent'].registry) == (None, reg)
    llm = RecordingChat(responses=['schema_analyzer'])
    withm = WorkflowRegistry(llm=llm)
    withm.discover_entry_points()
    assert (withm['sql_generator'].llm, withm['simple_agent'].llm, withm['supervisor_agent'].llm, withm['supervisor_agent'].registry) == (llm, llm, llm, withm)
    out = withm['supervisor_agent'].run({'question': 'profile the shop database'})  # the configured model plans, the registry delegates
    assert out['plan'] == ['schema_analyzer'] and '4 tables' in out['results']['schema_analyzer']
    both = WorkflowRegistry.discover(llm=llm)  # entry points + folders in one call
    assert both.names() == BUNDLED and both.llm is llm

def test_input_coercion_and_validation():
    p = WorkflowInputParameter(name='top_n', type='integer', example=5)
    assert (p.coerce('1,000'), p.coerce(7), p.coerce(7.0)) == (1000, 7, 7)
    for bad in ('many', 7.5, True):
        with pytest.raises(InvalidInputError, match="input 'top_n'"): p.coerce(bad)
    b = WorkflowInputParameter(name='dry_run', type='boolean')
    assert [b.coerce(v) for v in ('yes', 'No', 'on', '0', True)] == [True, False, True, False, True]
    assert WorkflowInputParameter(name='t', type='list').coerce('orders, customers,') == ['orders', 'customers']
    c = WorkflowInputParameter(name='fmt', choices=['csv', 'parquet'])
    with pytest.raises(InvalidInputError, match=r"not one of \['csv', 'parquet'\]"): c.coerce('xlsx')
    for v in ('', '   ', 3, None):
        with pytest.raises(InvalidInputError, match='non-empty string'): WorkflowInputParameter(name='s').coerce(v)

    @workflow(inputs={'table': {'prompt': 'Which table?'}})
    def count(table: str, limit: int = 10): return {'table': table, 'limit': limit}
    assert count.validate_inputs({'table': 'orders', 'limit': '3'}) == {'table': 'orders', 'limit': 3}
    assert [p.name for p in count.missing_inputs({})] == ['table']
    with pytest.raises(InvalidInputError, match=r"has no input\(s\) \['tabel'\]"): count.run({'table': 'x', 'tabel': 'y'})
    assert count.validate_inputs({'table': 'x', 'tabel': 'y'}, strict=False)['tabel'] == 'y'
    with pytest.raises(InvalidInputError, match="needs 'table'") as e: count.run({'limit': 1})
    assert e.value.hint == 'Which table?'
    assert count('orders') == {'table': 'orders', 'limit': 10}  # still a plain function

# ================================================================ Orchestrator

def make_registry(calls: dict):
    "Small workflows for the orchestrator; `calls` counts their runs"
    @workflow(capabilities=['count rows in a table', 'table size'], example_queries=['how many rows does orders have?', 'count the customers'],
              inputs={'table': {'prompt': 'Which table should I count?'}})
    def count_rows(table: str):
        "Count the rows of a table"
        calls['count_rows'] = calls.get('count_rows', 0) + 1
        return {'summary': f"{table} has {len(table) * 100} rows", 'rows': len(table) * 100}

    @workflow(capabilities=['profile a dataset', 'null rates', 'column types'], example_queries=['profile the orders table', 'what are the null rates in customers?'])
    def profile(table: str = 'orders'):
        "Profile columns, types and null rates of a table"
        calls['profile'] = calls.get('profile', 0) + 1
        return {'summary': f"profiled {table}"}

    @workflow(capabilities=['process very large data in batches'], example_queries=['process the big dataset'])
    def large_data_processor(table: str = 'events'):
        "Batch processing for very large data"
        calls['large'] = calls.get('large', 0) + 1
        return {'summary': f"batched {table}"}

    @workflow(capabilities=['sample rows from a table'], example_queries=['give me a sample of 5 rows from orders'],
              inputs={'table': {'prompt': 'Sample which table?'}, 'sample_size': {'prompt': 'How many rows should the sample have?'}})
    def sampler(table: str, sample_size: int):
        "Take a random sample of rows"
        calls['sampler'] = calls.get('sampler', 0) + 1
        return {'summary': f"{sample_size} rows of {table}"}

    @workflow(capabilities=['inspect a database file', 'list the tables of a database file'], example_queries=['inspect shop.db'],
              inputs={'database': {'type': 'path', 'prompt': 'Which database file?'}})
    def inspect_db(database: Path):
        "Inspect a database file"
        return {'summary': f"inspected {database}"}

    class LoadState(TypedDict, total=False):
        source: str
        rows: int
        loaded: bool
    def extract(s): return {'rows': 3}
    def load(s): raise RuntimeError('disk full while loading')
    g = StateGraph(LoadState)
    g.add_node('extract', extract); g.add_node('load', load)
    g.add_edge(START, 'extract'); g.add_edge('extract', 'load'); g.add_edge('load', END)
    loader = GraphWorkflow(g.compile(), {'name': 'warehouse_loader', 'description': 'Load files into the warehouse',
                                         'capabilities': ['load the warehouse', 'ingest files into the warehouse'], 'example_queries': ['load the warehouse'],
                                         'required_inputs': [{'name': 'source', 'required': False, 'default': 'inbox'}]})

    @workflow(capabilities=['export a table to csv'], example_queries=['export a table as csv'])
    def csv_export(table: str = 'orders'):
        "Export a table to a file"
        return {'summary': 'csv'}
    @workflow(capabilities=['export a table to parquet'], example_queries=['export a table as parquet'])
    def parquet_export(table: str = 'orders'):
        "Export a table to a file"
        return {'summary': 'parquet'}
    return WorkflowRegistry(count_rows, profile, large_data_processor, sampler, inspect_db, loader, csv_export, parquet_export)

@pytest.fixture
def calls(): return {}

@pytest.fixture
def orch(sm, calls): return Orchestrator(make_registry(calls), sm)

def test_orchestrator_and_chain_with_no_arguments(tmp_path, monkeypatch):
    "The proposal's calls as written: Orchestrator() and WorkflowChain() take their registry, storage and model from settings.ini"
    (tmp_path / 'settings.ini').write_text('[storage]\n')
    monkeypatch.setenv('DATAOPS_SETTINGS', str(tmp_path / 'settings.ini'))
    orchestrator = Orchestrator()
    assert orchestrator.registry.names() == BUNDLED and orchestrator.llm is None
    assert orchestrator.sessions.storage.urls['cold'] == f"sqlite:///{tmp_path / '.dataops' / 'meta.db'}"
    sid = orchestrator.sessions.create_session('analyst').session_id
    r = orchestrator.process(sid, 'how many customers are there?')
    assert (r.kind, r.workflow, r.output['rows']) == ('result', 'sql_generator', [[240]])

    chain = WorkflowChain()
    chain.add_step("schema_analyzer")
    chain.add_step("sql_generator", parameter_mapping=lambda prev: {'question': 'how many orders are there?', 'database': prev['source']})
    chain.add_step("query_optimizer", parameter_mapping=lambda prev: {'sql': prev['sql'], 'database': prev['source']})
    result = chain.execute(sid, {})
    assert (result.status, result.chain, chain.name) == ('completed', 'schema_analyzer-sql_generator-query_optimizer', result.chain)
    assert chain.sessions.storage.urls == orchestrator.sessions.storage.urls and chain.registry.names() == BUNDLED
    assert orchestrator.sessions.artifacts.get_artifact(result.artifacts['query_optimizer']).name == f"{result.chain}.query_optimizer"
    assert WorkflowChain('mine').add_step('jil_parser').name == 'mine' and WorkflowChain().add_step('jil_parser').name == 'jil_parser'

    # a configured model reaches the router and every bundled workflow that takes one; llm=False turns it off
    (tmp_path / 'settings.ini').write_text('[storage]\n[llm]\nprovider = openai\nbase_url = http://127.0.0.1:9/v1\nmodel = local-model\n')
    withm = Orchestrator()
    assert type(withm.llm).__name__ == 'ChatOpenAI' and withm.llm.model_name == 'local-model'
    assert all(withm.registry[n].llm is withm.llm for n in ('sql_generator', 'simple_agent', 'supervisor_agent'))
    assert type(withm.router).__name__ == 'LLMRouter' and WorkflowChain().registry['sql_generator'].llm is not None
    assert Orchestrator(llm=False).llm is None and type(Orchestrator(llm=False).router).__name__ == 'LexicalRouter'
    assert type(default_registry()['sql_generator'].llm).__name__ == 'ChatOpenAI' and default_registry(llm=False)['sql_generator'].llm is None

def test_rules_first_in_order_and_a_raising_rule_is_skipped(orch, sm, sid, calls, caplog):
    seen = []
    orch.add_rule(lambda ctx: seen.append(dict(ctx)) or ctx['size'] > 1_000_000, 'large_data_processor', name='big_data')  # KeyError without 'size'
    orch.add_rule(lambda ctx: 'nulls' in ctx['query'], 'profile', name='nulls_mean_profile')
    orch.add_rule(lambda ctx: True, 'count_rows', name='catch_all_never_reached_when_earlier_match')
    with pytest.raises(NotFoundError, match="no workflow 'nope'"): orch.add_rule(lambda ctx: True, 'nope')
    with pytest.raises(InvalidInputError, match='condition must be callable'): orch.add_rule('size > 3', 'profile')
    assert len(orch.rules) == 3

    # no 'size' in the session: the first rule raises, is logged and skipped; the second matches
    with caplog.at_level(logging.WARNING, logger='dataops_lab.orchestrator'):
        r = orch.process(sid, 'show me the nulls of orders')
    assert (r.kind, r.workflow, r.route.reason) == ('result', 'profile', "rule 'nulls_mean_profile' matched")
    assert any('big_data' in m and 'KeyError' in m for m in caplog.messages)
    assert seen[-1]['query'] == 'show me the nulls of orders'

    # the first rule holds on the session context: it wins over the later ones, whatever the query says
    sm.update_session(sid, {'global_context': {'size': 5_000_000, 'table': 'clicks'}})
    r = orch.process(sid, 'show me the nulls of orders')
    assert (r.kind, r.workflow, r.route.reason, r.output['summary']) == ('result', 'large_data_processor', "rule 'big_data' matched", 'batched clicks')
    assert (seen[-1]['size'], seen[-1]['table']) == (5_000_000, 'clicks')
    assert calls == {'profile': 1, 'large': 1}

def test_rules_fall_through_to_intent(sm, sid, calls):
    orch = Orchestrator(make_registry(calls), sm)
    orch.add_rule(lambda ctx: ctx.get('size', 0) > 1_000_000, 'large_data_processor')
    sm.update_session(sid, {'global_context': {'size': 10}})
    r = orch.route('how many rows does the customers table have?', sm.get_session(sid).global_context)
    assert r.workflow == 'count_rows' and 'matched' in r.reason and r.confidence >= orch.threshold

@pytest.mark.parametrize('query, expected', [
    ('count rows in the invoices table', 'count_rows'),
    ('what are the null rates and column types of payments?', 'profile'),
    ('process the very large clickstream data in batches', 'large_data_processor'),
    ('give me a random sample of rows', 'sampler'),
    ('load these files into the warehouse', 'warehouse_loader'),
    ('list the tables of the database file', 'inspect_db'),
])
def test_intent_routing_lexical(query, expected, calls):
    orch = Orchestrator(make_registry(calls), session_manager=object(), artifact_store=object())  # routing needs no storage
    r = orch.route(query)
    assert r.workflow == expected, r
    assert r.candidates[0][0] == expected and r.confidence >= orch.threshold

def test_unclear_answers_with_candidates(orch, sm, sid, calls):
    r = orch.process(sid, 'play some jazz music')
    assert (r.kind, r.workflow) == ('unclear', None)
    assert r.reply.startswith("I can't tell which workflow fits this request") and 'Available: count_rows, csv_export' in r.reply
    # two workflows fit equally: no guess, both named as candidates
    r2 = orch.process(sid, 'export the table')
    assert r2.kind == 'unclear' and 'no clear winner' in r2.route.reason
    assert {n for n, _ in r2.route.candidates[:2]} == {'csv_export', 'parquet_export'}
    assert 'Closest: ' in r2.reply and 'csv_export (' in r2.reply and 'parquet_export (' in r2.reply
    assert calls == {}
    assert [(role, kind) for role, _, _, _, kind in history(sm, sid)] == [('user', None), ('assistant', 'unclear')] * 2
    assert sm.artifacts.list_artifacts(sid) == []

def test_multi_turn_question_is_answered_by_the_next_message(orch, sm, sid, calls):
    q = orch.process(sid, 'how many rows are there?')
    assert (q.kind, q.workflow, q.reply) == ('question', 'count_rows', 'Which table should I count?')
    assert sm.get_session(sid).global_context['_pending'] == {'workflow': 'count_rows', 'inputs': {}, 'missing': ['table']}
    assert calls == {}
    r = orch.process(sid, 'customers')
    assert (r.kind, r.workflow, r.inputs, r.output['rows']) == ('result', 'count_rows', {'table': 'customers'}, 900)
    assert '_pending' not in sm.get_session(sid).global_context
    assert calls == {'count_rows': 1}
    a = art(sm, r.artifact_ids[0])
    assert (a.artifact_type, a.workflow_name, a.session_id) == (ArtifactType.RESULT, 'count_rows', sid)
    assert a.metadata['sources'] == {'table': 'answer'} and a.metadata['inputs'] == {'table': 'customers'}
    assert content(sm, a.artifact_id) == r.output
    assert history(sm, sid) == [('user', 'how many rows are there?', None, [], None),
                                ('assistant', 'Which table should I count?', 'count_rows', [], 'question'),
                                ('user', 'customers', None, [], None),
                                ('assistant', 'customers has 900 rows', 'count_rows', r.artifact_ids, 'result')]

def test_multi_turn_two_missing_inputs_and_a_bad_answer(orch, sm, sid, calls):
    assert orch.process(sid, 'give me a random sample of rows').reply == 'Sample which table?'
    r = orch.process(sid, 'orders')
    assert (r.kind, r.reply, r.inputs) == ('question', 'How many rows should the sample have?', {'table': 'orders'})
    bad = orch.process(sid, 'lots')
    assert bad.kind == 'question' and bad.reply.startswith('How many rows should the sample have? (') and "'lots' is not a valid integer" in bad.reply
    assert calls == {}
    done = orch.process(sid, '25')
    assert (done.kind, done.inputs, done.output['summary']) == ('result', {'table': 'orders', 'sample_size': 25}, '25 rows of orders')
    assert calls == {'sampler': 1}

def test_cancel_drops_the_pending_question(orch, sm, sid, calls):
    assert orch.process(sid, 'how many rows are there?').kind == 'question'
    c = orch.process(sid, 'cancel')
    assert (c.kind, c.workflow, c.reply) == ('cancelled', 'count_rows', 'Cancelled count_rows.')
    assert '_pending' not in sm.get_session(sid).global_context
    nxt = orch.process(sid, 'customers')  # no longer an answer: routed like any query
    assert nxt.kind == 'unclear' and calls == {}
    assert [k for _, _, _, _, k in history(sm, sid) if k] == ['question', 'cancelled', 'unclear']

def test_parameters_from_query_earlier_turns_session_state_and_defaults(orch, sm, sid, calls):
    # session state
    sm.update_session(sid, {'global_context': {'table': 'payments'}})
    r = orch.process(sid, 'how many rows are there?')
    assert (r.kind, r.inputs, art(sm, r.artifact_ids[0]).metadata['sources']) == ('result', {'table': 'payments'}, {'table': 'session state'})
    # the query wins over session state
    r = orch.process(sid, 'count the rows of table invoices')
    assert (r.inputs, art(sm, r.artifact_ids[0]).metadata['sources']) == ({'table': 'invoices'}, {'table': 'query'})
    # an earlier turn names the database file; the current one does not
    orch.process(sid, 'I am working on data/warehouse.db today')
    r = orch.process(sid, 'list the tables of the database file')
    assert (r.workflow, r.inputs, art(sm, r.artifact_ids[0]).metadata['sources']) == ('inspect_db', {'database': 'data/warehouse.db'}, {'database': 'earlier turn'})
    # nothing anywhere (a fresh session): the default
    sid = sm.create_session(uid()).session_id
    r = orch.process(sid, 'what are the null rates and column types?')
    assert (r.workflow, r.inputs, art(sm, r.artifact_ids[0]).metadata['sources']) == ('profile', {'table': 'orders'}, {'table': 'default'})

def test_named_inputs_leave_the_text_and_a_named_path_is_never_swapped_for_an_older_one(sm, tmp_path):
    "name=value and paths are taken out of the text the other inputs read; a path the user names is used or refused, never replaced"
    import duckdb
    orch = Orchestrator(default_registry(), sm)
    sid = sm.create_session(uid()).session_id
    duck = str(sample_duckdb())
    with duckdb.connect(duck, read_only=True) as con: n_orders = con.execute('SELECT COUNT(*) FROM orders').fetchone()[0]
    r = orch.process(sid, f'how many orders are there? database={duck}')
    assert (r.kind, r.workflow, r.inputs['question'], r.inputs['database'], r.output['rows']) == ('result', 'sql_generator', 'how many orders are there?', duck, [[n_orders]]), r.reply
    r = orch.process(sid, f'how many orders are in {duck}?')  # a bare path leaves the question too
    assert (r.kind, r.inputs['question'], r.inputs['database'], r.output['rows']) == ('result', 'how many orders are in ?', duck, [[n_orders]]), r.reply
    r = orch.process(sid, 'optimize this query: SELECT order_id FROM orders WHERE status = \'shipped\' database: ' + duck)
    assert (r.kind, r.workflow, r.inputs['sql'], r.inputs['database']) == ('result', 'query_optimizer', "SELECT order_id FROM orders WHERE status = 'shipped'", duck), r.reply

    orch.process(sid, 'analyze the schema of shop.db')  # an earlier turn names a database...
    notes = tmp_path / 'notes'
    notes.write_text('root:x:0:0:root:/root:/bin/bash\n')
    for named, why in ((notes, 'cannot tell what kind of database'), (tmp_path / 'no' / 'such' / 'folder', 'does not exist')):
        r = orch.process(sid, f'analyze the schema of {named}')  # ...this one names another: it is used, and refused clearly
        assert (r.kind, r.workflow, r.inputs['database']) == ('error', 'schema_analyzer', str(named)) and why in r.reply and str(named) in r.reply, r.reply
        assert 'profile' not in r.output
    # a path inside SQL is part of the query, not a database named (in this message or an earlier one)
    sid = sm.create_session(uid(), global_context={'database': duck}).session_id
    r = orch.process(sid, "optimize SELECT order_id FROM orders WHERE status = '/var/data/x'")
    assert (r.kind, r.inputs['database'], r.inputs['sql']) == ('result', duck, "SELECT order_id FROM orders WHERE status = '/var/data/x'"), r.reply
    # a value named in the query that is not valid is asked for again, not replaced by an older or default one
    q = orch.process(sid, 'how many orders are there? limit=lots')
    assert (q.kind, q.workflow) == ('question', 'sql_generator') and "'lots'" in q.reply, q.reply
    a = orch.process(sid, '5')
    assert (a.kind, a.inputs['limit'], a.inputs['question']) == ('result', 5, 'how many orders are there?'), a.reply

def test_every_turn_result_and_artifact_is_recorded(orch, sm, sid):
    queries = ('how many rows are there?', 'customers', 'count the rows of table orders', 'play some jazz music', 'load the warehouse now')
    replies = [orch.process(sid, q) for q in queries]
    assert [r.kind for r in replies] == ['question', 'result', 'result', 'unclear', 'error']
    msgs = sm.get_history(sid)
    assert [m.seq for m in msgs] == list(range(1, 11))
    assert [m.content for m in msgs if m.role == Role.USER] == list(queries)
    assert [m.content for m in msgs if m.role == Role.ASSISTANT] == [r.reply for r in replies]
    assert [m.artifact_ids for m in msgs if m.role == Role.ASSISTANT] == [r.artifact_ids for r in replies]
    stored = {a.artifact_id: a for a in sm.artifacts.list_artifacts(sid)}
    assert set(stored) == {aid for r in replies for aid in r.artifact_ids} and len(stored) == 3
    assert [stored[r.artifact_ids[0]].artifact_type for r in replies if r.artifact_ids] == [ArtifactType.RESULT, ArtifactType.RESULT, ArtifactType.DEBUG]
    gc = sm.get_session(sid).global_context
    assert (gc['last_workflow'], gc['last_result']) == ('count_rows', replies[2].artifact_ids[0])  # the last successful run
    assert replies[1].output['rows'] == 900 and replies[2].output['rows'] == 600

def test_failing_workflow_leaves_a_debug_artifact(orch, sm, sid):
    evs = list(orch.stream(sid, 'load the warehouse'))
    assert [(e.type, e.node) for e in evs] == [('received', None), ('routed', None), ('node_finished', 'extract'), ('artifact_stored', None), ('error', None)]
    res = OrchestratorResult(**evs[-1].data['outcome'])
    assert (res.kind, res.workflow, res.reply) == ('error', 'warehouse_loader', 'warehouse_loader failed: disk full while loading')
    a = art(sm, res.artifact_ids[0])
    assert (a.artifact_type, a.name, a.created_by, a.session_id) == (ArtifactType.DEBUG, 'warehouse_loader_error', 'orchestrator', sid)
    assert evs[3].data == {'artifact_id': a.artifact_id, 'type': 'debug'}
    c = content(sm, a.artifact_id)
    assert c['error'] == 'RuntimeError: disk full while loading' and 'disk full' in c['traceback']
    assert c['inputs'] == {'source': 'inbox'} and c['partial_state'] == {'source': 'inbox', 'rows': 3}  # what ran before the failure
    assert history(sm, sid)[-1] == ('assistant', res.reply, 'warehouse_loader', [a.artifact_id], 'error')
    assert '_pending' not in sm.get_session(sid).global_context

def _broken_artifact_store(folder: Path) -> ArtifactStore:
    "An ArtifactStore whose blob folder vanished under it (replaced by a file): any artifact over the inline size fails to store"
    folder.mkdir()
    (folder / 'settings.ini').write_text('[storage]\n')
    st = Storage(load_settings(folder / 'settings.ini'))
    arts = ArtifactStore(st)
    blobs = Path(st.urls['blob'][len('file://'):])
    shutil.rmtree(blobs, ignore_errors=True); blobs.write_text('not a folder any more')
    return arts

def test_every_user_turn_gets_a_reply_whatever_fails_after_it(sm, calls, tmp_path):
    "A user turn is never left without an assistant turn: a failure after it is recorded as an error reply"
    @workflow(example_queries=['export the big report'])
    def big_report(): return {'summary': 'done', 'rows': ['x' * 100] * 100}  # over the inline size: goes to the blob store
    @workflow(example_queries=['explode loudly'])
    def loud_failure(): raise RuntimeError('kaboom ' + 'x' * 3000)
    orch = Orchestrator(WorkflowRegistry(big_report, loud_failure), sm, artifact_store=_broken_artifact_store(tmp_path / 'arts'))
    sid = sm.create_session(uid()).session_id
    r = orch.process(sid, 'export the big report')  # the workflow ran; storing its result failed
    assert (r.kind, r.workflow, r.artifact_ids) == ('error', 'big_report', []) and 'could not be stored' in r.reply, r.reply
    assert r.output['summary'] == 'done' and [e.type for e in r.events][-1] == 'error'
    r2 = orch.process(sid, 'explode loudly')  # the workflow failed, and so did storing its debug record
    assert (r2.kind, r2.workflow) == ('error', 'loud_failure') and 'kaboom' in r2.reply and 'could not be stored' in r2.reply, r2.reply
    h = history(sm, sid)
    assert [(role, kind) for role, _, _, _, kind in h] == [('user', None), ('assistant', 'error')] * 2
    assert h[1][1] == r.reply and h[3][1] == r2.reply
    # a consumer that stops reading the stream half-way still leaves a reply behind
    gen = orch.stream(sid, 'export the big report')
    assert next(gen).type == 'received'
    gen.close()
    assert history(sm, sid)[-2:] == [('user', 'export the big report', None, [], None),
                                     ('assistant', 'Stopped before an answer: the request was interrupted.', None, [], 'cancelled')]

def test_stream_yields_events_in_order_as_they_happen(orch, sm, sid, calls):
    gen = orch.stream(sid, 'count the rows of table orders')
    first = next(gen)
    assert (first.type, first.session_id, first.data) == ('received', sid, {'query': 'count the rows of table orders'})
    routed = next(gen)
    assert (routed.type, routed.workflow, calls) == ('routed', 'count_rows', {})  # nothing has run yet
    node = next(gen)
    assert (node.type, node.workflow, node.node, node.data, calls) == ('node_finished', 'count_rows', 'count_rows', {'keys': ['rows', 'summary']}, {'count_rows': 1})
    rest = list(gen)
    assert [e.type for e in rest] == ['artifact_stored', 'result']
    assert rest[0].data['artifact_id'] == rest[1].data['outcome']['artifact_ids'][0]
    assert all(e.session_id == sid and e.workflow == 'count_rows' for e in rest)
    # a question, then its answer (no routing the second time), in a session with no table named yet
    sid = sm.create_session(uid()).session_id
    assert [e.type for e in orch.stream(sid, 'how many rows are there?')] == ['received', 'routed', 'question']
    assert [e.type for e in orch.stream(sid, 'customers')] == ['received', 'node_finished', 'artifact_stored', 'result']
    assert [e.type for e in orch.stream(sid, 'play some jazz music')] == ['received', 'routed', 'unclear']
    # process() returns the same events
    r = orch.process(sid, 'count the rows of table orders')
    assert [e.type for e in r.events] == ['received', 'routed', 'node_finished', 'artifact_stored', 'result']

def test_llm_router_with_a_fake_chat_model(sm, sid, calls):
    llm = RecordingChat(responses=['profile', 'banana split, obviously', '', 'none', '`count_rows`.'])
    orch = Orchestrator(make_registry(calls), sm, llm=llm)
    assert isinstance(orch.router, LLMRouter)
    r = orch.process(sid, 'give me the null rates of customers')
    assert (r.kind, r.workflow, r.route.reason, r.route.confidence) == ('result', 'profile', 'chosen by the language model', 1.0)
    assert 'give me the null rates of customers' in llm.seen[-1] and '- count_rows: Count the rows of a table' in llm.seen[-1]
    # garbage from the model: the lexical router decides, and says the model's answer was unusable
    g = orch.route('count rows in the invoices table')
    assert g.workflow == 'count_rows' and "model answered 'banana split, obviously', not a workflow name" in g.reason
    e = orch.route('count rows in the invoices table')
    assert e.workflow == 'count_rows' and "model answered ''" in e.reason
    n = orch.process(sid, 'count rows in the invoices table')  # the model says none fits: honest, even though lexically it would
    assert (n.kind, n.route.reason) == ('unclear', 'the language model found no fitting workflow')
    assert orch.route('anything at all').workflow == 'count_rows'  # backticks and a full stop around a name are fine
    assert len(llm.seen) == 5
    # a model that errors: the lexical router
    down = Orchestrator(make_registry(calls), sm, llm=BrokenChat())
    assert down.route('count rows in the invoices table').workflow == 'count_rows'
    # rules still come before the model
    orch.add_rule(lambda ctx: True, 'large_data_processor')
    before = len(llm.seen)
    assert orch.route('give me the null rates').workflow == 'large_data_processor' and len(llm.seen) == before

def test_bad_input_errors(orch, sm, sid):
    for q in ('', '   ', None, 42):
        with pytest.raises(InvalidInputError, match='query must be a non-empty string'): orch.process(sid, q)
    with pytest.raises(NotFoundError): orch.process(uid('sess'), 'count the rows of table orders')
    assert sm.get_history(sid) == []  # nothing recorded for refused input
    assert sm.artifacts.list_artifacts(sid) == []

def test_orchestrator_routes_to_a_ported_workflow_and_asks_with_its_prompt(sm, sid, tmp_path):
    root = tmp_path / 'workflows'
    _pkg(root, 'line_counter', 'enabled: true\n', {'__init__.py': '', 'contract.py': OTHER_CONTRACT, 'workflow.py': LEGACY_WORKFLOW})
    reg = WorkflowRegistry()
    reg.discover_folder(root)
    orch = Orchestrator(reg, sm)
    q = orch.process(sid, 'count the lines please')
    assert (q.kind, q.reply) == ('question', 'Which file should I count?')
    notes = tmp_path / 'notes.txt'
    notes.write_text('1\n2\n')
    r = orch.process(sid, str(notes))
    assert (r.kind, r.workflow, r.output['output']) == ('result', 'line_counter', {'lines': 2})

# ================================================================ Chains

@pytest.fixture
def stats_registry(calls):
    def count(name): calls[name] = calls.get(name, 0) + 1
    barrier = threading.Barrier(2, timeout=30)  # both parallel steps must be running at once to pass it

    @workflow()
    def load(table: str):
        count('load'); return {'table': table, 'rows': [3, 1, 2, 5] if table == 'orders' else [1, 2]}
    @workflow()
    def total(rows: list):
        count('total'); barrier.wait(); return {'total': sum(rows)}
    @workflow()
    def biggest(rows: list):
        count('biggest'); barrier.wait(); return {'max': max(rows)}
    @workflow()
    def report_small(total: int):
        count('report_small'); return {'summary': f"small table, total {total}"}
    @workflow()
    def report_big(total: int):
        count('report_big'); return {'summary': f"BIG table, total {total}"}
    return WorkflowRegistry(load, total, biggest, report_small, report_big)

def test_chain_sequential_parallel_conditional(sm, sid, stats_registry, calls):
    chain = (WorkflowChain('stats', stats_registry, sm)
             .add_step('load')
             .add_parallel(['total', 'biggest'], aggregator=lambda outs: {**outs['total'], **outs['biggest']}, name='merge')
             .add_conditional(lambda prev: 'big' if prev['total'] > 10 else 'small', {'big': 'report_big', 'small': 'report_small'}, name='route'))
    res = chain.execute(sid, {'table': 'orders'})
    assert (res.status, res.final, res.failed_step) == ('completed', {'summary': 'BIG table, total 11'}, None)
    assert res.outputs['merge'] == {'total': 11, 'max': 5} and res.outputs['route']['branch'] == 'big'
    assert set(res.outputs) == set(res.artifacts) == set(res.timings) == {'load', 'total', 'biggest', 'merge', 'route', 'big'}
    assert calls == {'load': 1, 'total': 1, 'biggest': 1, 'report_big': 1}  # the other branch never ran
    assert all(t >= 0 for t in res.timings.values())
    # artifacts: content, type, producer, run id, and lineage to the steps each came from
    A = res.artifacts
    for step, out in res.outputs.items():
        a = art(sm, A[step])
        assert (content(sm, A[step]), a.name, a.created_by, a.workflow_name, a.session_id, a.metadata['run_id']) == (out, f'stats.{step}', step, 'stats', sid, res.run_id)
        assert a.artifact_type == (ArtifactType.RESULT if step == 'big' else ArtifactType.INTERMEDIATE)
    parents = {s: sorted(art(sm, A[s]).parents) for s in A}
    assert parents == {'load': [], 'total': [A['load']], 'biggest': [A['load']], 'merge': sorted([A['total'], A['biggest']]),
                       'route': [A['merge']], 'big': [A['route']]}
    up = sm.artifacts.get_lineage(A['big'], 'upstream', depth=10)
    assert set(up.nodes) == set(A.values())
    # the chain's run is recorded in the session
    m = sm.get_history(sid)[-1]
    assert (m.role, m.workflow, m.content, sorted(m.artifact_ids), m.metadata['run_id']) == (Role.ASSISTANT, 'stats', 'chain stats completed (6 steps)', sorted(A.values()), res.run_id)
    # other input, other branch; a fresh run id
    res2 = chain.execute(sid, {'table': 'customers'})
    assert (res2.final, 'small' in res2.outputs, 'big' in res2.outputs) == ({'summary': 'small table, total 3'}, True, False)
    assert res2.run_id != res.run_id and calls['report_small'] == 1 and calls['report_big'] == 1

def test_chain_step_inputs_come_from_the_previous_step_then_the_chain_input(sm, sid):
    "Without a mapping (or with one returning names, ... for all), a step takes its inputs from the previous output, else from the chain's input"
    @workflow()
    def load(table: str): return {'rows': [3, 1, 2], 'title': f"{table} (loaded)"}
    @workflow()
    def report(rows: list, title: str, limit: int = 2): return {'summary': f"{title}: {rows[:limit]}"}
    reg = WorkflowRegistry(load, report)
    r = WorkflowChain('rep', reg, sm).add_step('load').add_step('report').execute(sid, {'table': 'orders', 'limit': 1})
    assert (r.status, r.final) == ('completed', {'summary': 'orders (loaded): [3]'}), r.error  # title from load, limit from the chain's input
    r = WorkflowChain('rep', reg, sm).add_step('load').add_step('report', parameter_mapping=lambda prev: {...}).execute(sid, {'table': 'orders', 'limit': 1})
    assert (r.status, r.final) == ('completed', {'summary': 'orders (loaded): [3]'}), r.error  # {...}: every input the step takes
    r = WorkflowChain('rep', reg, sm).add_step('load').add_step('report', parameter_mapping=lambda prev: {'rows', 'title'}).execute(sid, {'table': 'orders', 'limit': 1})
    assert (r.status, r.final) == ('completed', {'summary': 'orders (loaded): [3, 1]'}), r.error  # only the names given: limit keeps its default
    r = WorkflowChain('rep', reg, sm).add_step('load').add_step('report', parameter_mapping=lambda prev: ['rows']).execute(sid, {'table': 'orders'})
    assert (r.status, r.failed_step) == ('failed', 'report') and "parameter_mapping of step 'report' returned a list" in r.error, r.error

def test_chain_stream_events(sm, sid, stats_registry):
    chain = (WorkflowChain('stats', stats_registry, sm).add_step('load')
             .add_parallel(['total', 'biggest'], aggregator=lambda outs: {**outs['total'], **outs['biggest']}, name='merge')
             .add_step('report_small', parameter_mapping=lambda prev: {'total': prev['total']}))
    evs = list(chain.stream(sid, {'table': 'orders'}))
    assert evs[-1].type == 'result' and all(e.session_id == sid and e.workflow == 'stats' for e in evs)
    body = [(e.type, e.node) for e in evs[:-1]]
    for step in ('load', 'total', 'biggest', 'merge', 'report_small'):
        i = body.index(('step_started', step))
        assert body[body.index(('step_finished', step)) + 1] == ('artifact_stored', step) and body.index(('step_finished', step)) > i
    order = lambda s: body.index(('step_finished', s))
    assert order('load') < min(body.index(('step_started', 'total')), body.index(('step_started', 'biggest')))
    assert max(order('total'), order('biggest')) < body.index(('step_started', 'merge')) < order('merge') < body.index(('step_started', 'report_small'))
    res = ChainResult(**evs[-1].data['result'])
    assert [e.data['artifact_id'] for e in evs if e.type == 'artifact_stored'] == [res.artifacts[n] for t, n in body if t == 'artifact_stored']

def test_chain_depends_on_dag(sm, sid):
    @workflow()
    def source(n: int): return {'n': n}
    @workflow()
    def square(n: int): return {'sq': n * n}
    @workflow()
    def negate(n: int): return {'neg': -n}
    @workflow()
    def combine(a: int, b: int): return {'sum': a + b}
    @workflow()
    def audit(n: int): return {'audited': n}
    reg = WorkflowRegistry(source, square, negate, combine, audit)
    chain = (WorkflowChain('dag', reg, sm)
             .add_step('source')
             .add_step('square', depends_on='source')
             .add_step('negate', depends_on=['source'])
             .add_step('combine', depends_on=['square', 'negate'], parameter_mapping=lambda prev: {'a': prev['square']['sq'], 'b': prev['negate']['neg']})
             .add_step('audit', depends_on='source'))
    assert topo_order(chain.steps).index('combine') > max(topo_order(chain.steps).index('square'), topo_order(chain.steps).index('negate'))
    res = chain.execute(sid, {'n': 7})
    assert res.status == 'completed'
    assert res.outputs == {'source': {'n': 7}, 'square': {'sq': 49}, 'negate': {'neg': -7}, 'combine': {'sum': 42}, 'audit': {'audited': 7}}
    A = res.artifacts
    assert sorted(art(sm, A['combine']).parents) == sorted([A['square'], A['negate']]) and art(sm, A['audit']).parents == [A['source']]
    # both leaves are results; the rest intermediate
    assert {s for s in A if art(sm, A[s]).artifact_type == ArtifactType.RESULT} == {'combine', 'audit'}

def test_chain_cycles_and_bad_definitions_are_refused(sm, sid, stats_registry):
    with pytest.raises(InvalidInputError, match='cycle: a → c → b → a'):
        topo_order({'a': Step('a', None, depends_on=['c']), 'b': Step('b', None, depends_on=['a']), 'c': Step('c', None, depends_on=['b'])})
    chain = WorkflowChain('loop', stats_registry, sm).add_step('load')
    with pytest.raises(InvalidInputError, match='cycle: again → again'):
        chain.add_step('load', name='again', depends_on='again')
    with pytest.raises(InvalidInputError, match="step 'total' depends on unknown step 'nowhere'"):
        chain.add_step('total', depends_on='nowhere')
    with pytest.raises(InvalidInputError, match="already has a step 'load'"): chain.add_step('load')
    with pytest.raises(NotFoundError, match="no workflow 'nope'"): chain.add_step('nope')
    with pytest.raises(InvalidInputError, match='at least two'): chain.add_parallel(['total'])
    with pytest.raises(NotFoundError, match="no workflow 'nope'"): chain.add_parallel(['total', 'nope'])
    with pytest.raises(InvalidInputError, match='must be a workflow name'): chain.add_step(42)
    # the refused definitions left nothing behind: the chain is as it was, and still extends and runs
    assert list(chain.steps) == ['load']
    @workflow()
    def total_only(rows: list): return {'total': sum(rows)}
    chain.add_step(total_only, parameter_mapping=lambda prev: {'rows': prev['rows']})
    chain.add_step('report_small')
    res = chain.execute(sid, {'table': 'customers'})
    assert (res.status, list(res.outputs), res.final) == ('completed', ['load', 'total_only', 'report_small'], {'summary': 'small table, total 3'})
    with pytest.raises(InvalidInputError, match='has no steps'): WorkflowChain('empty', stats_registry, sm).execute(sid, {})

def test_chain_bad_input(sm, sid, stats_registry):
    chain = WorkflowChain('bad', stats_registry, sm).add_step('load').add_step('report_small', parameter_mapping=lambda prev: {'totl': 3})
    with pytest.raises(NotFoundError): chain.execute(uid('sess'), {'table': 'orders'})
    r = chain.execute(sid, {'table': 'orders'})
    assert (r.status, r.failed_step) == ('failed', 'report_small') and "workflow 'report_small' has no input(s) ['totl']" in r.error
    r = chain.execute(sid, {})  # the first step's required input is missing
    assert (r.status, r.failed_step, r.outputs) == ('failed', 'load', {}) and "needs 'table'" in r.error

def test_chain_conditional_with_an_unknown_label_fails_cleanly(sm, sid, stats_registry):
    @workflow()
    def sum_rows(rows: list): return {'total': sum(rows)}
    stats_registry.register(sum_rows)
    chain = (WorkflowChain('cond', stats_registry, sm).add_step('load')
             .add_step('sum_rows', parameter_mapping=lambda p: {'rows': p['rows']})
             .add_conditional(lambda prev: 'huge', {'big': 'report_big', 'small': 'report_small'}, name='route'))
    res = chain.execute(sid, {'table': 'orders'})
    assert (res.status, res.failed_step) == ('failed', 'route') and "condition of 'route' returned 'huge'" in res.error, res
    assert set(res.outputs) == {'load', 'sum_rows', 'route'} and not ({'big', 'small'} & set(res.outputs))

def test_chain_resume_after_failure_without_rerunning_earlier_steps(sm, sid, calls):
    @workflow()
    def extract(table: str):
        calls['extract'] = calls.get('extract', 0) + 1; return {'rows': [1, 2, 3]}
    @workflow()
    def transform(rows: list):
        calls['transform'] = calls.get('transform', 0) + 1; return {'rows': [r * 10 for r in rows]}
    @workflow()
    def publish(rows: list):
        calls['publish'] = calls.get('publish', 0) + 1
        if calls['publish'] == 1: raise ConnectionError('warehouse went away')
        return {'published': sum(rows)}
    chain = WorkflowChain('etl', WorkflowRegistry(extract, transform, publish), sm).add_step('extract').add_step('transform').add_step('publish')
    r1 = chain.execute(sid, {'table': 'orders'})
    assert (r1.status, r1.failed_step, r1.error, r1.final) == ('failed', 'publish', 'ConnectionError: warehouse went away', None)
    assert r1.outputs == {'extract': {'rows': [1, 2, 3]}, 'transform': {'rows': [10, 20, 30]}}
    # the failure is kept as a DEBUG artifact with the partial outputs, linked to what the failed step consumed
    [dbg] = sm.artifacts.list_artifacts(sid, artifact_type=ArtifactType.DEBUG)
    c = content(sm, dbg.artifact_id)
    assert (c['step'], c['error'], c['partial_outputs']) == ('publish', 'ConnectionError: warehouse went away', r1.outputs)
    assert sorted(dbg.parents) == sorted(r1.artifacts.values()) and (dbg.created_by, dbg.metadata['run_id']) == ('publish', r1.run_id)
    assert sm.get_history(sid)[-1].content == 'chain etl failed at publish: ConnectionError: warehouse went away'

    with pytest.raises(InvalidInputError, match='needs the run_id'): chain.execute(sid, resume=True)
    r2 = chain.execute(sid, run_id=r1.run_id, resume=True)
    assert (r2.status, r2.run_id, r2.final) == ('completed', r1.run_id, {'published': 60})
    assert calls == {'extract': 1, 'transform': 1, 'publish': 2}
    assert {k: r2.artifacts[k] for k in r1.artifacts} == r1.artifacts  # the earlier steps' artifacts are the first run's
    assert art(sm, r2.artifacts['publish']).parents == [r1.artifacts['transform']]
    with pytest.raises(InvalidInputError, match='has nothing to resume'): chain.execute(sid, run_id=r1.run_id, resume=True)
    with pytest.raises(InvalidInputError, match='has nothing to resume'): chain.execute(sid, run_id='run_never_started', resume=True)
    # a new chain object with the same definition resumes from the store, not from memory
    calls['publish'] = 0
    r3 = chain.execute(sid, {'table': 'x'})
    assert r3.status == 'failed'
    again = WorkflowChain('etl', WorkflowRegistry(extract, transform, publish), SessionManager(sm.storage)).add_step('extract').add_step('transform').add_step('publish')
    r4 = again.execute(sid, run_id=r3.run_id, resume=True)
    assert r4.status == 'completed' and calls['extract'] == 2 and calls['transform'] == 2

KILL_CHAIN = '''
import os, time
from pathlib import Path
from dataops_lab.workflows import workflow, WorkflowRegistry
from dataops_lab.chain import WorkflowChain
D = Path(__file__).parent

def mark(step):
    with open(D / f"{step}.runs", "a") as f: f.write(f"{os.getpid()}\\n")

@workflow()
def extract(table: str):
    mark("extract"); return {"rows": [3, 1, 2]}
@workflow()
def transform(rows: list):
    mark("transform"); return {"rows": sorted(rows)}
@workflow()
def publish(rows: list):
    mark("publish")  # the test sees this line appear in publish.runs
    while not (D / "go").exists(): time.sleep(0.02)  # the first process blocks here until it is killed
    return {"published": len(rows), "by": os.getpid()}

def build(sm):
    return WorkflowChain("killable", WorkflowRegistry(extract, transform, publish), sm).add_step("extract").add_step("transform").add_step("publish")
'''

KILL_CHILD = '''
import importlib.util, json, sys
folder, ini, session_id, run_id, mode = sys.argv[1:6]
spec = importlib.util.spec_from_file_location("killchain", f"{folder}/killchain.py")
mod = importlib.util.module_from_spec(spec); spec.loader.exec_module(mod)
from dataops_lab.config import load_settings
from dataops_lab.sessions import SessionManager
chain = mod.build(SessionManager(load_settings(ini)))
resume = mode == "resume"
for ev in chain.stream(session_id, None if resume else {"table": "orders"}, run_id=run_id, resume=resume):
    print(json.dumps({"type": ev.type, "node": ev.node, "data": ev.data}, default=str), flush=True)
'''

def _runs(folder: Path, step: str) -> list[str]:
    f = folder / f"{step}.runs"
    return f.read_text().split() if f.exists() else []

def test_chain_resumes_in_another_process_after_sigkill(sm, sid, shared_ini, tmp_path):
    "The first process is SIGKILLed inside step 3; a second process resumes from the durable checkpoint and runs only step 3"
    (tmp_path / 'killchain.py').write_text(KILL_CHAIN)
    spec = importlib.util.spec_from_file_location(f"killchain_{uid('m')}", tmp_path / 'killchain.py')
    mod = importlib.util.module_from_spec(spec); spec.loader.exec_module(mod)
    graph = mod.build(sm).compile()
    run_id = uid('run')
    cfg = {'configurable': {'thread_id': run_id, 'session_id': sid}}

    first = Child(KILL_CHILD, tmp_path, shared_ini, sid, run_id, 'start')
    try:
        def publishing():
            assert first.proc.poll() is None, f"the first child exited with {first.proc.returncode}: {first.proc.stderr.read()[-3000:]}"
            return len(_runs(tmp_path, 'publish')) == 1
        wait_for(publishing, 120, 'step 3 running in the first child')
        # step 3 is running in the child; wait until the checkpoint before it is durable in the store, then kill
        wait_for(lambda: graph.get_state(cfg).next == ('publish',), 60, 'the checkpoint before publish')
        first.kill()
    finally: first.close()
    assert first.proc.returncode == -9
    assert not any('"type": "result"' in l for l in first.lines)
    pid1 = str(first.proc.pid)
    assert (_runs(tmp_path, 'extract'), _runs(tmp_path, 'transform'), _runs(tmp_path, 'publish')) == ([pid1], [pid1], [pid1])
    snap = graph.get_state(cfg)
    assert snap.values['outputs'] == {'extract': {'rows': [3, 1, 2]}, 'transform': {'rows': [1, 2, 3]}}
    before = dict(snap.values['artifacts'])

    (tmp_path / 'go').write_text('go')
    second = Child(KILL_CHILD, tmp_path, shared_ini, sid, run_id, 'resume')
    try: lines = second.finish(120)
    finally: second.close()
    evs = [json.loads(l) for l in lines if l.startswith('{')]
    pid2 = str(second.proc.pid)
    assert [(e['type'], e['node']) for e in evs] == [('step_started', 'publish'), ('step_finished', 'publish'), ('artifact_stored', 'publish'), ('result', None)]
    res = ChainResult(**evs[-1]['data']['result'])
    assert (res.status, res.run_id, res.final) == ('completed', run_id, {'published': 3, 'by': int(pid2)})
    assert res.outputs['extract'] == {'rows': [3, 1, 2]} and res.outputs['transform'] == {'rows': [1, 2, 3]}
    assert (_runs(tmp_path, 'extract'), _runs(tmp_path, 'transform'), _runs(tmp_path, 'publish')) == ([pid1], [pid1], [pid1, pid2])
    assert {k: res.artifacts[k] for k in before} == before
    assert art(sm, res.artifacts['publish']).parents == [before['transform']]
    assert content(sm, res.artifacts['publish']) == res.final
    assert sm.get_history(sid)[-1].content == 'chain killable completed (3 steps)'

# ---------------------------------------------------------------- decorators inside a chain

class PartialFailure(RuntimeError):
    def __init__(self, msg, partial): super().__init__(msg); self.partial = partial

def test_decorators_in_a_chain_retry_events_and_artifacts(sm, sid, calls):
    @workflow()
    def extract(table: str): return {'rows': [1, 2, 3], 'table': table}

    @workflow()
    @with_artifacts(ArtifactType.INTERMEDIATE, name='cleaned_rows')
    @with_error_recovery(retries=2, backoff=0.001)
    def clean(rows: list):
        calls['clean'] = calls.get('clean', 0) + 1
        if calls['clean'] < 3: raise TimeoutError(f"lock timeout #{calls['clean']}")
        return {'rows': [r for r in rows if r > 1]}

    chain = WorkflowChain('dec', WorkflowRegistry(extract, clean), sm).add_step('extract').add_step('clean', parameter_mapping=lambda p: {'rows': p['rows']})
    evs = list(chain.stream(sid, {'table': 'orders'}))
    seq = [(e.type, e.node) for e in evs]
    i = seq.index(('step_started', 'clean'))
    assert seq[i:i + 3] == [('step_started', 'clean'), ('retry', 'clean'), ('retry', 'clean')] and seq[i + 3] == ('step_finished', 'clean')
    retries = [e.data for e in evs if e.type == 'retry']
    assert [(r['attempt'], r['error']) for r in retries] == [(1, 'lock timeout #1'), (2, 'lock timeout #2')]
    res = ChainResult(**evs[-1].data['result'])
    assert res.status == 'completed' and res.final == {'rows': [2, 3]} and calls['clean'] == 3
    # @with_artifacts stored the step's own output, with the chain's lineage
    [mine] = sm.artifacts.list_artifacts(sid, name='cleaned_rows')
    assert (mine.artifact_type, mine.created_by, mine.workflow_name, mine.parents) == (ArtifactType.INTERMEDIATE, 'clean', 'dec', [res.artifacts['extract']])
    assert content(sm, mine.artifact_id) == {'rows': [2, 3]}
    assert sm.artifacts.list_artifacts(sid, artifact_type=ArtifactType.DEBUG) == []  # the retries succeeded: no failure recorded

def test_decorators_in_a_chain_fallback_and_debug_artifact(sm, sid, calls):
    @workflow()
    def extract(table: str): return {'rows': [5, 6], 'table': table}

    @workflow()
    def cached_copy(rows: list): return {'rows': rows, 'source': 'cache'}

    @workflow()
    @with_error_recovery(retries=1, backoff=0.001, retry_on=(ConnectionError,), fallback='cached_copy')
    def fetch(rows: list):
        calls['fetch'] = calls.get('fetch', 0) + 1
        raise PartialFailure('remote went away', partial={'fetched': rows[:1]})

    chain = (WorkflowChain('fb', WorkflowRegistry(extract, cached_copy, fetch), sm).add_step('extract')
             .add_step('fetch', parameter_mapping=lambda p: {'rows': p['rows']}))
    res = chain.execute(sid, {'table': 'orders'})
    # PartialFailure is not a ConnectionError: no retry, straight to the fallback workflow from the chain's registry
    assert (res.status, res.final, calls['fetch']) == ('completed', {'rows': [5, 6], 'source': 'cache'}, 1)
    [dbg] = sm.artifacts.list_artifacts(sid, artifact_type=ArtifactType.DEBUG)
    c = content(sm, dbg.artifact_id)
    assert (dbg.name, dbg.created_by, dbg.parents) == ('fetch_failure', 'fetch', [res.artifacts['extract']])
    assert (c['error'], c['attempts'], c['partial']) == ('PartialFailure: remote went away', 1, {'fetched': [5]})
    assert 'remote went away' in c['traceback']

    @workflow()
    @with_error_recovery(retries=3, backoff=0.001, retry_on=(ConnectionError,))
    def always_down(rows: list):
        calls['down'] = calls.get('down', 0) + 1
        raise ConnectionError('still down')
    @workflow()
    @with_error_recovery(retries=0, on_failure='continue')
    def optional_enrich(rows: list): raise ValueError('no enrichment today')
    @workflow()
    def summarise(rows: list = None, error: str = None, failed: bool = False): return {'ok': not failed, 'note': error}

    cont = (WorkflowChain('cont', WorkflowRegistry(extract, optional_enrich, summarise), sm).add_step('extract')
            .add_step('optional_enrich', parameter_mapping=lambda p: {'rows': p['rows']}).add_step('summarise'))
    r = cont.execute(sid, {'table': 'orders'})
    assert (r.status, r.outputs['optional_enrich'], r.final) == ('completed', {'error': 'ValueError: no enrichment today', 'failed': True},
                                                                 {'ok': False, 'note': 'ValueError: no enrichment today'})

    abort = (WorkflowChain('abort', WorkflowRegistry(extract, always_down), sm).add_step('extract')
             .add_step('always_down', parameter_mapping=lambda p: {'rows': p['rows']}))
    evs = list(abort.stream(sid, {'table': 'orders'}))
    assert [e.type for e in evs].count('retry') == 3 and calls['down'] == 4
    a = ChainResult(**evs[-1].data['result'])
    assert (evs[-1].type, a.status, a.failed_step, a.error) == ('error', 'failed', 'always_down', 'ConnectionError: still down')
    names = sorted(x.name for x in sm.artifacts.list_artifacts(sid, artifact_type=ArtifactType.DEBUG, workflow_name='abort'))
    assert names == ['abort.always_down.error', 'always_down_failure']  # the decorator's record and the chain's

def test_with_session_context_fills_inputs_in_a_chain(sm, calls):
    sid = sm.create_session(uid(), global_context={'database': 'warehouse.db', 'schema_name': 'sales'}).session_id
    @workflow()
    @with_session_context()
    def connect_db(table: str, database: str = None, schema_name: str = None, session_context: dict = None):
        return {'database': database, 'schema_name': schema_name, 'table': table, 'keys': sorted(session_context or {})}
    @workflow()
    @with_session_context(keys=['database'])
    def only_db(database: str = None, schema_name: str = None): return {'database': database, 'schema_name': schema_name}
    chain = WorkflowChain('ctx', WorkflowRegistry(connect_db, only_db), sm).add_step('connect_db').add_step('only_db', parameter_mapping=lambda p: {})
    res = chain.execute(sid, {'table': 'orders'})
    assert res.status == 'completed', res.error
    assert res.outputs['connect_db'] == {'database': 'warehouse.db', 'schema_name': 'sales', 'table': 'orders', 'keys': ['database', 'schema_name']}
    assert res.outputs['only_db'] == {'database': 'warehouse.db', 'schema_name': None}
    # explicit inputs win over the session's
    res2 = chain.execute(sid, {'table': 'orders', 'database': 'other.db'})
    assert res2.outputs['connect_db']['database'] == 'other.db'
    # outside a run the decorator steps aside
    assert connect_db.fn('t') == {'database': None, 'schema_name': None, 'table': 't', 'keys': []}

def test_decorators_preserve_signatures_and_validate_options():
    @with_artifacts()
    @with_session_context()
    @with_error_recovery(retries=1, backoff=0)
    def f(database: str, limit: int = 5):
        "Doc line"
        return {'database': database, 'limit': limit}
    assert list(inspect.signature(f).parameters) == ['database', 'limit'] and f.__doc__ == 'Doc line' and f.__name__ == 'f'
    assert f('x') == {'database': 'x', 'limit': 5}
    with pytest.raises(InvalidInputError, match="on_failure='explode'"): with_error_recovery(on_failure='explode')
    with pytest.raises(InvalidInputError, match='retries=-1'): with_error_recovery(retries=-1)
    n = []
    @with_error_recovery(retries=5, backoff=0)
    def bad_input(): n.append(1); raise InvalidInputError('bad value', 'fix it')
    with pytest.raises(InvalidInputError): bad_input()
    assert n == [1]  # invalid input is never retried
    @with_error_recovery(retries=0, fallback='by_name')
    def needs_registry(): raise RuntimeError('x')
    with pytest.raises(InvalidInputError, match="fallback workflow 'by_name' needs a run with a registry"): needs_registry()

def test_the_proposals_decorator_stack_bare_and_called(sm, calls):
    "The proposal's stack, bare forms included, on a LangGraph node run by the orchestrator; the called forms still work"
    class MyState(TypedDict, total=False):
        database: str
        limit: int
        output: dict

    @with_artifacts(ArtifactType.RESULT)
    @with_session_context
    @with_error_recovery
    def my_node(state: MyState) -> dict:
        calls['node'] = calls.get('node', 0) + 1
        if calls['node'] == 1: raise ConnectionError('warehouse busy')
        return {"output": {'database': state['database'], 'limit': state['limit']}}

    g = StateGraph(MyState); g.add_node('my_node', my_node); g.add_edge(START, 'my_node'); g.add_edge('my_node', END)
    wf = GraphWorkflow(g.compile(), {'name': 'my_workflow', 'description': 'read a table of the session database', 'example_queries': ['read the table'],
                                     'required_inputs': [{'name': 'limit', 'type': 'integer', 'required': False, 'default': 10}]})
    sid = sm.create_session(uid(), global_context={'database': 'warehouse.db', 'limit': 99}).session_id
    r = Orchestrator(WorkflowRegistry(wf), sm).process(sid, 'read the table')
    assert (r.kind, r.output['output'], calls['node']) == ('result', {'database': 'warehouse.db', 'limit': 99}, 2)  # retried once; database from the session
    [mine] = sm.artifacts.list_artifacts(sid, name='my_node')
    assert (mine.artifact_type, content(sm, mine.artifact_id)) == (ArtifactType.RESULT, {'output': {'database': 'warehouse.db', 'limit': 99}})
    assert my_node.__name__ == 'my_node' and list(inspect.signature(my_node).parameters) == ['state']

    @with_artifacts
    @with_session_context(keys=['database'])
    @with_error_recovery(retries=0, on_failure='continue')
    def plain(database: str = None, limit: int = None): return {'database': database, 'limit': limit}
    with run_context(RunContext(session_id=sid, sessions=sm, artifacts=sm.artifacts, workflow='plain')) as ctx:
        assert plain() == {'database': 'warehouse.db', 'limit': None}
        assert my_node({'database': 'mine.db', 'limit': 1}) == {'output': {'database': 'mine.db', 'limit': 1}}  # the state's own values win
    assert [sm.artifacts.get_artifact(a).artifact_type for a in ctx.stored] == [ArtifactType.RESULT] * 2
    assert plain('x.db') == {'database': 'x.db', 'limit': None}  # outside a run: steps aside

# ---------------------------------------------------------------- the seed's chain on the bundled sample

def _rows(sql: str):
    with sqlite3.connect(sample_db()) as con: return con.execute(sql).fetchall()

def test_seed_chain_schema_sql_optimizer(sm, sid):
    reg = default_registry()
    chain = (WorkflowChain('profile_query_optimize', reg, sm)
             .add_step('schema_analyzer')
             .add_step('sql_generator', parameter_mapping=lambda prev: {'question': 'top 5 customers by revenue', 'database': prev['source']})
             .add_step('query_optimizer', parameter_mapping=lambda prev: {'sql': prev['sql'], 'database': prev['source']}))
    res = chain.execute(sid, {})
    assert res.status == 'completed', res.error
    prof = res.outputs['schema_analyzer']['profile']
    assert sorted(t['name'] for t in prof['tables']) == ['customers', 'order_items', 'orders', 'products']
    sql = res.outputs['sql_generator']['sql']
    sqlglot.parse_one(sql, read='sqlite')
    got = _rows(sql)
    want = _rows("SELECT o.customer_id, ROUND(SUM(oi.quantity * oi.unit_price), 2) AS revenue FROM order_items oi JOIN orders o ON o.order_id = oi.order_id "
                 "GROUP BY o.customer_id ORDER BY revenue DESC LIMIT 5")
    assert [(r[0], r[-1]) for r in got] == want
    opt = res.final  # the generated query is already good: no findings, nothing rewritten, the plan as evidence
    assert (opt['review']['findings'], opt['optimized'], opt['review']['rewrites']) == ([], sql, [])
    assert 'SCAN oi' in opt['review']['plan_before'] and 'no problems found' in opt['summary']
    A = res.artifacts
    assert art(sm, A['query_optimizer']).parents == [A['sql_generator']] and art(sm, A['sql_generator']).parents == [A['schema_analyzer']]
    assert art(sm, A['query_optimizer']).artifact_type == ArtifactType.RESULT
    assert set(sm.artifacts.get_lineage(A['query_optimizer'], 'upstream', depth=5).nodes) == set(A.values())

# ================================================================ example workflows, offline on the samples

def test_registry_of_examples():
    reg = default_registry()
    assert reg.names() == ['jil_parser', 'query_optimizer', 'schema_analyzer', 'simple_agent', 'sql_generator', 'supervisor_agent']
    assert {w.name for w in reg if w.metadata.needs_llm} == {'simple_agent', 'supervisor_agent'}
    for w in reg:
        assert w.metadata.description and w.metadata.example_queries and w.metadata.capabilities

def test_schema_analyzer_on_the_sample_db_and_files():
    out = SchemaAnalyzer().run({})
    p = out['profile']
    tables = {t['name']: t for t in p['tables']}
    with sqlite3.connect(sample_db()) as con:
        for name, t in tables.items():
            assert t['rows'] == con.execute(f'SELECT COUNT(*) FROM {name}').fetchone()[0]
            cols = {c['name']: c for c in t['columns']}
            assert list(cols) == [r[1] for r in con.execute(f'PRAGMA table_info({name})')]
            for cname, c in cols.items():
                nulls, distinct = con.execute(f'SELECT SUM({cname} IS NULL), COUNT(DISTINCT {cname}) FROM {name}').fetchone()
                assert c['null_rate'] == pytest.approx(nulls / t['rows'], abs=5e-5) and c['distinct'] == distinct, (name, cname)
    assert ['customer_id'] in tables['customers']['candidate_keys'] and ['order_id'] in tables['orders']['candidate_keys']
    fks = {(f['table'], tuple(f['columns']), f['ref_table'], tuple(f['ref_columns'])) for f in p['foreign_keys']}
    assert {('orders', ('customer_id',), 'customers', ('customer_id',)), ('order_items', ('order_id',), 'orders', ('order_id',)),
            ('order_items', ('product_id',), 'products', ('product_id',))} <= fks
    assert '4 tables' in out['summary'] and 'orders.customer_id → customers.customer_id' in out['summary']
    only = SchemaAnalyzer().run({'tables': 'customers'})
    assert [t['name'] for t in only['profile']['tables']] == ['customers']
    files = SchemaAnalyzer().run({'database': str(sample_files('csv'))})
    assert {t['name']: t['rows'] for t in files['profile']['tables']} == {n: t['rows'] for n, t in tables.items()}

SQL_QUESTIONS = [
    ('how many customers are there?', 'SELECT COUNT(*) FROM customers'),
    ('how many orders were placed in 2024?', "SELECT COUNT(*) FROM orders WHERE order_date >= '2024-01-01' AND order_date < '2025-01-01'"),
    ('how many orders have status cancelled?', "SELECT COUNT(*) FROM orders WHERE status = 'cancelled'"),
    ('how many active products are there?', 'SELECT COUNT(*) FROM products WHERE active = 1'),
    ('orders per channel', 'SELECT channel, COUNT(*) FROM orders GROUP BY channel'),
    ('number of customers per segment', 'SELECT segment, COUNT(*) FROM customers GROUP BY segment'),
    ('count of customers per state', 'SELECT state, COUNT(*) FROM customers GROUP BY state'),
    ('number of orders per month', "SELECT strftime('%Y-%m', order_date), COUNT(*) FROM orders GROUP BY 1"),
    ('average unit price of products per category', 'SELECT category, ROUND(AVG(unit_price), 2) FROM products GROUP BY category'),
    ('revenue per category', 'SELECT p.category, ROUND(SUM(oi.quantity * oi.unit_price), 2) FROM order_items oi JOIN products p USING (product_id) GROUP BY 1'),
    ('total revenue per product category', 'SELECT p.category, ROUND(SUM(oi.quantity * oi.unit_price), 2) FROM order_items oi JOIN products p USING (product_id) GROUP BY 1'),
    ('total revenue per customer segment', 'SELECT c.segment, ROUND(SUM(oi.quantity * oi.unit_price), 2) FROM order_items oi JOIN orders o USING (order_id) '
                                           'JOIN customers c USING (customer_id) GROUP BY 1'),
    ('revenue by country', 'SELECT c.country, ROUND(SUM(oi.quantity * oi.unit_price), 2) FROM order_items oi JOIN orders o USING (order_id) '
                           'JOIN customers c USING (customer_id) GROUP BY 1'),
    ('total shipping cost per month in 2024', "SELECT strftime('%Y-%m', order_date), ROUND(SUM(shipping_cost), 2) FROM orders "
                                              "WHERE order_date >= '2024-01-01' AND order_date < '2025-01-01' GROUP BY 1"),
    ('which customers have no orders?', 'SELECT customer_id FROM customers WHERE customer_id NOT IN (SELECT customer_id FROM orders)'),
    ('products never ordered', 'SELECT product_id FROM products WHERE product_id NOT IN (SELECT product_id FROM order_items)'),
    ('customers from Germany', "SELECT customer_id FROM customers WHERE country = 'Germany'"),
    ('orders with a promo code', 'SELECT order_id FROM orders WHERE promo_code IS NOT NULL ORDER BY order_id LIMIT 100'),  # listings are capped
    ('top 5 cities by number of customers', 'SELECT city, COUNT(*) AS n FROM customers GROUP BY city ORDER BY n DESC, city LIMIT 5'),
    ('top 10 products by quantity sold', 'SELECT product_id, SUM(quantity) AS q FROM order_items JOIN products USING (product_id) GROUP BY product_id ORDER BY q DESC, product_id LIMIT 10'),
]

def _key_and_measure(rows):
    "Rows reduced to (first column, last column): the group/key and the measure, whatever the label columns in between"
    return sorted(((r[0], r[-1]) if len(r) > 1 else (r[0],) for r in rows), key=repr)

@pytest.mark.parametrize('question, reference', SQL_QUESTIONS, ids=[q for q, _ in SQL_QUESTIONS])
def test_sql_generator_answers_correctly_and_its_sql_parses_and_explains(question, reference):
    out = SQLGenerator().run({'question': question, 'limit': 1000})
    sql = out['sql']
    assert sql, out['summary']
    sqlglot.parse_one(sql, read='sqlite')  # raises on a parse error
    with sqlite3.connect(sample_db()) as con:
        assert con.execute(f'EXPLAIN QUERY PLAN {sql}').fetchall()
        got, want = con.execute(sql).fetchall(), con.execute(reference).fetchall()
    assert out['rows'] == [list(r) for r in got][:1000] and out['columns']
    if want and len(want[0]) == 1 and got and len(got[0]) > 1: got = [(r[0],) for r in got]  # a listing: compare the keys
    assert _key_and_measure(got) == _key_and_measure(want), f"{question}:\n{sql}"
    assert out['summary'].startswith('```sql')

def test_sql_generator_is_honest_about_what_it_cannot_answer():
    for q in ('average salary by department', 'orders from last month', 'what is the meaning of life'):
        out = SQLGenerator().run({'question': q})
        assert out['sql'] is None and out['rows'] == [] and out['summary'].startswith("I can't write SQL for that:"), q
    with pytest.raises(InvalidInputError, match="needs 'question'"): SQLGenerator().run({})

def test_query_optimizer_on_the_sample():
    slow = "SELECT * FROM orders WHERE strftime('%Y', order_date) = '2024'"
    out = QueryOptimizer().run({'sql': slow})
    r = out['review']
    assert r['verified'] is True and 'order_date >= ' in out['optimized']
    assert sorted(_rows(out['optimized'])) == sorted(_rows(slow))
    assert r['findings'] and 'Findings:' in out['summary']
    with pytest.raises(Exception, match='parse'): QueryOptimizer().run({'sql': 'SELEC oops FROM'})

# dependencies read by hand from the sample JIL (etl.jil, finance.jil, reports.jil): job -> steps away
LOAD_UPSTREAM = {'ETL_NIGHTLY_BOX': 1, 'ETL_EXTRACT_CUSTOMERS': 1, 'ETL_EXTRACT_ORDERS': 1, 'ETL_EXTRACT_PRODUCTS': 1, 'ETL_FW_ORDERS_FILE': 2}
LOAD_DOWNSTREAM = {'ETL_QUALITY_CHECKS': 1, 'FIN_REVENUE_ROLLUP': 2, 'RPT_DAILY_BOX': 2, 'FIN_GL_POSTING': 3, 'RPT_SALES_DASHBOARD': 3,
                   'RPT_CUSTOMER_CHURN': 3, 'RPT_EXEC_SUMMARY': 3, 'RPT_PUBLISH': 3, 'RPT_ADHOC_EXTRACT': 3, 'RPT_ARCHIVE': 3,
                   'FIN_RECONCILE': 4, 'FIN_MONTH_END_CLOSE': 4}

def test_jil_parser_upstream_and_downstream_on_the_sample():
    out = JilParser().run({'job': 'ETL_LOAD_WAREHOUSE'})
    assert out['upstream'] == sorted(LOAD_UPSTREAM) and out['downstream'] == sorted(LOAD_DOWNSTREAM)
    near = JilParser().run({'job': 'ETL_LOAD_WAREHOUSE', 'depth': 1})
    assert near['upstream'] == sorted(j for j, d in LOAD_UPSTREAM.items() if d == 1) and near['downstream'] == ['ETL_QUALITY_CHECKS']
    g = out['graph']
    assert len(g['jobs']) == 26 and 'FIN_LEGACY_EXPORT' not in g['jobs']  # deleted by delete_job
    assert g['external'] == ['FIN_GL_POSTING^PRD'] and g['dangling'] == ['RPT_CUSTOMER_CHURN → CRM_SYNC_CONTACTS (reports.jil:18)']
    assert out['summary'].startswith('26 jobs (4 BOX, 18 CMD, 1 EXTERNAL, 3 FW)')
    assert 'ETL_LOAD_WAREHOUSE: upstream ETL_EXTRACT_CUSTOMERS, ETL_EXTRACT_ORDERS' in out['summary']
    rollup = JilParser().run({'job': 'FIN_REVENUE_ROLLUP', 'depth': 1})  # s(FIN_LOAD_FX_RATES) & (d(ETL_QUALITY_CHECKS) | f(FIN_FW_FX_RATES)) + its box
    assert rollup['upstream'] == ['ETL_QUALITY_CHECKS', 'FIN_DAILY_BOX', 'FIN_FW_FX_RATES', 'FIN_LOAD_FX_RATES']
    one = JilParser().run({'path': str(Path(sample_jil_dir()) / 'etl.jil'), 'job': 'ETL_LOAD_WAREHOUSE'})
    assert one['downstream'] == ['ETL_QUALITY_CHECKS'] and one['upstream'] == sorted(LOAD_UPSTREAM)  # one file: the other files' jobs are unknown
    with pytest.raises(InvalidInputError, match="job 'NO_SUCH_JOB' is not in the JIL"): JilParser().run({'job': 'NO_SUCH_JOB'})
    with pytest.raises(NotFoundError, match='does not exist'): JilParser().run({'path': '/no/such/dir'})

def test_examples_through_the_orchestrator(sm, sid):
    orch = Orchestrator(default_registry(), sm)
    r = orch.process(sid, 'what runs before ETL_LOAD_WAREHOUSE?')
    assert (r.kind, r.workflow, r.inputs['job'], r.output['upstream']) == ('result', 'jil_parser', 'ETL_LOAD_WAREHOUSE', sorted(LOAD_UPSTREAM))
    r = orch.process(sid, 'how many customers are there?')
    assert (r.kind, r.workflow, r.output['rows']) == ('result', 'sql_generator', [[240]])
    q = orch.process(sid, 'my query is too slow, can you optimise it?')
    assert (q.kind, q.reply) == ('question', 'Paste the SQL query you want me to optimise.')
    o = orch.process(sid, "SELECT * FROM orders WHERE strftime('%Y', order_date) = '2024'")
    assert (o.kind, o.workflow, o.output['review']['verified']) == ('result', 'query_optimizer', True)

def test_agent_patterns_without_a_model_answer_honestly():
    reg = default_registry()
    for name in ('simple_agent', 'supervisor_agent'):
        out = reg[name].run({'question': 'plan our migration to the lakehouse'})
        assert out['summary'] == _NO_MODEL
    assert 'needs a language model' in _NO_MODEL and 'schema_analyzer, sql_generator, query_optimizer and jil_parser' in _NO_MODEL
    assert reg['supervisor_agent'].run({'question': 'x'}).get('results') == {}

def test_agent_patterns_use_the_model_when_there_is_one():
    llm = RecordingChat(responses=['A star schema has a fact table surrounded by dimension tables.'])
    out = SimpleAgent(llm).run({'question': 'explain what a star schema is'})
    assert out['summary'] == 'A star schema has a fact table surrounded by dimension tables.'
    assert 'explain what a star schema is' in llm.seen[-1]

    planner = RecordingChat(responses=['schema_analyzer, simple_agent, made_up_workflow\nsql_generator'])
    sup = default_registry(planner)['supervisor_agent']
    out = sup.run({'question': 'how many orders are there?'})
    assert out['plan'] == ['schema_analyzer', 'sql_generator']  # unknown names and model-needing workflows are not delegated to
    assert list(out['results']) == ['schema_analyzer', 'sql_generator']
    assert '4 tables' in out['results']['schema_analyzer'] and 'COUNT(*)' in out['results']['sql_generator']
    prompt = planner.seen[0]  # the plan prompt (sql_generator then asks the same model for SQL, rejects the non-SQL answer and falls back to rules)
    assert 'how many orders are there?' in prompt and 'schema_analyzer' in prompt and 'simple_agent' not in prompt
    assert out['summary'].startswith('**schema_analyzer**:')
    none = default_registry(RecordingChat(responses=['nothing fits'])).get('supervisor_agent').run({'question': 'x'})
    assert none['summary'] == 'The model proposed no workflow from the registry for this task.'
