"""Workflows written for the original DataOps Agent keep working — tried as one of its users would.

A project in its layout (a `core/` package with its own copy of the contract, an `infrastructure/llm` factory, a
`workflows/` package holding flat `workflow_*.py` modules and workflow folders whose `config.yaml` says
`workflow: {enabled: ...}`) is pointed at, unchanged, from the registry, the orchestrator and a chain, on real managers
over the embedded store. The modules index the state directly (`state["messages"]`) and declare no inputs, as the
original ones do: they rely on the starting state the original orchestrator built. One of its folders reuses a bundled
workflow's name (`jil_parser`). Then the same module is converted with `dataops-workflow convert` and run through the
orchestrator with a fake chat model.

The registry/orchestrator/chain part uses only APIs that predate the dev kit, so it runs against the old code too."""
import json, os, re, subprocess, sys, textwrap, tempfile
from pathlib import Path
import pytest
from langchain_core.language_models.fake_chat_models import FakeListChatModel
from dataops_lab.core import *
from dataops_lab.config import Settings, StorageSettings
from dataops_lab.store.base import Storage
from dataops_lab.sessions import SessionManager
from dataops_lab.workflows import WorkflowRegistry
from dataops_lab.orchestrator import Orchestrator
from dataops_lab.chain import WorkflowChain
from dataops_lab.examples import default_registry
import dataops_lab.context, dataops_lab.checkpoint  # noqa: F401 -- register their tables
from cli import user_env

CONTRACT = '''
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

# the project's own model factory: in this test it hands out LangChain's fake chat model, as a user's test setup would
LLM_FACTORY = '''
    from langchain_core.language_models.fake_chat_models import FakeListChatModel

    def create_llm(**kwargs):
        return FakeListChatModel(responses=["orders <- raw.orders_feed (nightly load)", "The orders table is loaded nightly from raw.orders_feed."])
'''

LINEAGE = '''
    """
    Workflow L - Lineage Explainer

    Purpose: Explain where a table's data comes from
    Pattern: a coordinator hands the task to a tracer, then a writer
    """

    from typing import TypedDict
    from langgraph.graph import StateGraph, START, END
    from dotenv import load_dotenv
    from core.base_workflow import BaseWorkflow, WorkflowMetadata
    from infrastructure.llm.llm_factory import create_llm

    load_dotenv()


    class LineageState(TypedDict):
        """State for the lineage explainer"""
        input: str            # the table to explain
        messages: list[str]   # what each agent said
        next_step: str        # the coordinator's decision
        output: str           # the explanation


    class LineageWorkflow(BaseWorkflow):
        """Explains the lineage of a table"""

        def __init__(self):
            self.llm = create_llm()

        def get_metadata(self) -> WorkflowMetadata:
            return WorkflowMetadata(
                name="lineage",
                description="Explains the lineage of a table: upstream sources, transformations and consumers",
                capabilities=["Explain table lineage", "Trace upstream sources of a table", "Where does a table get its data from"],
                example_queries=["Explain the lineage of the orders table", "Where does the revenue table get its data from?"],
                category="analysis",
            )

        def get_compiled_graph(self):
            def coordinator(state: LineageState) -> dict:
                """Decide who acts next"""
                said = [m.split(":")[0] for m in state["messages"]]
                step = "trace" if "tracer" not in said else "write" if "writer" not in said else "finish"
                state["messages"].append(f"coordinator: {step}")
                return {"next_step": step, "messages": state["messages"]}

            def tracer(state: LineageState) -> dict:
                """Trace the upstream sources"""
                response = self.llm.invoke(f"Trace the upstream sources of: {state['input']}")
                state["messages"].append(f"tracer: {response.content}")
                return {"messages": state["messages"]}

            def writer(state: LineageState) -> dict:
                """Write the explanation"""
                notes = "\\\\n".join(state["messages"])
                response = self.llm.invoke(f"Explain the lineage of {state['input']} from these notes:\\\\n{notes}")
                state["messages"].append(f"writer: {response.content}")
                return {"messages": state["messages"], "output": response.content}

            def route(state: LineageState) -> str:
                return {"trace": "tracer", "write": "writer", "finish": END}[state["next_step"]]

            builder = StateGraph(LineageState)
            builder.add_node("coordinator", coordinator)
            builder.add_node("tracer", tracer)
            builder.add_node("writer", writer)
            builder.add_edge(START, "coordinator")
            builder.add_conditional_edges("coordinator", route, ["tracer", "writer", END])
            builder.add_edge("tracer", "coordinator")
            builder.add_edge("writer", "coordinator")
            return builder.compile()


    # For backwards compatibility - create instance and expose compiled graph
    _workflow_instance = LineageWorkflow()
    workflow_graph = _workflow_instance.get_compiled_graph()


    if __name__ == "__main__":
        test_input = {"input": "the orders table", "messages": [], "next_step": "", "output": ""}
        print(workflow_graph.invoke(test_input)["output"])
'''

JIL = '''
    from typing import TypedDict
    from langgraph.graph import StateGraph, START, END
    from core.base_workflow import BaseWorkflow, WorkflowMetadata, WorkflowInputParameter


    class JILParserState(TypedDict):
        file_path: str
        current_job: str
        dependencies: list
        output: dict


    class JILParserWorkflow(BaseWorkflow):
        def get_metadata(self) -> WorkflowMetadata:
            return WorkflowMetadata(
                name="jil_parser",
                description="Analyzes Autosys JIL files to identify upstream job dependencies",
                capabilities=["Parse JIL file structure", "Identify upstream job dependencies (conditions)"],
                example_queries=["Parse JIL dependencies for BATCH_PROCESSING job"],
                category="migration",
                required_inputs=[
                    WorkflowInputParameter(name="file_path", description="Path to the JIL file", type="file_path", prompt="Which JIL file?"),
                    WorkflowInputParameter(name="current_job", description="The job to analyze", type="string", prompt="Which job?"),
                ],
            )

        def get_compiled_graph(self):
            def root_agent(state: JILParserState) -> dict:
                with open(state["file_path"]) as f:
                    deps = [line.split(":", 1)[1].strip() for line in f if line.strip().startswith("condition:")]
                state["dependencies"].extend(deps)
                return {"dependencies": state["dependencies"], "output": {"job": state["current_job"], "upstream": deps}}

            g = StateGraph(JILParserState)
            g.add_node("root_agent", root_agent)
            g.add_edge(START, "root_agent")
            g.add_edge("root_agent", END)
            return g.compile()
'''

def write(path: Path, code: str):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(textwrap.dedent(code))

@pytest.fixture
def project(tmp_path):
    "A DataOps Agent project as its users have it"
    p = tmp_path / 'dataops-agent'
    for pkg in ('core', 'infrastructure', 'infrastructure/llm', 'workflows'): write(p / pkg / '__init__.py', '')
    write(p / 'core' / 'base_workflow.py', CONTRACT)
    write(p / 'infrastructure' / 'llm' / 'llm_factory.py', LLM_FACTORY)
    write(p / 'workflows' / 'workflow_lineage.py', LINEAGE)
    write(p / 'workflows' / 'jil_parser' / '__init__.py', '"""JIL Parser Workflow"""\n')
    write(p / 'workflows' / 'jil_parser' / 'config.yaml', 'workflow:\n  enabled: true\nanalysis:\n  max_iterations: 10\n')
    write(p / 'workflows' / 'jil_parser' / 'workflow.py', JIL)
    marker = tmp_path / 'imported'
    write(p / 'workflows' / 'old_report' / 'config.yaml', 'workflow:\n  enabled: false\n')
    write(p / 'workflows' / 'old_report' / 'workflow.py', f'open({str(marker)!r}, "w").write("x")\nraise RuntimeError("a disabled workflow is never imported")\n')
    jobs = tmp_path / 'jobs.jil'
    jobs.write_text("insert_job: BATCH_PROCESSING\njob_type: CMD\ncondition: s(EXTRACT_ORDERS)\n")
    return p

@pytest.fixture
def sm(tmp_path):
    d = tmp_path / 'store'
    with SessionManager(Storage(Settings(storage=StorageSettings(hot=f"sqlite:///{d}/c.db", cold=f"sqlite:///{d}/m.db", blob=f"file://{d}/b"))).ensure()) as m:
        yield m

def test_an_unchanged_project_runs_through_registry_orchestrator_and_chain(project, sm, tmp_path):
    reg = default_registry()
    bundled_jil = reg['jil_parser']
    added = reg.discover_folder(project / 'workflows')
    assert sorted(added) == ['jil_parser', 'lineage'] and reg.errors == [], [e.error for e in reg.errors]
    # enabled: false under `workflow:` (the original's form) is honoured: the package is never imported
    assert reg.disabled == ['old_report'] and not (tmp_path / 'imported').exists()
    # the name clash with the bundled jil_parser: the project's own replaces it, the bundled one is kept aside
    assert reg.sources['jil_parser'] == str(project / 'workflows' / 'jil_parser') and reg.shadowed['jil_parser'] is bundled_jil
    # no inputs declared: `input` inferred from the state
    assert [(p.name, p.type, p.required) for p in reg['lineage'].metadata.required_inputs] == [('input', 'string', True)]

    orch = Orchestrator(reg, sm)
    sid = sm.create_session('agent_user').session_id
    r = orch.process(sid, 'Explain the lineage of the orders table')
    assert (r.kind, r.workflow) == ('result', 'lineage'), r.reply
    assert r.reply == 'The orders table is loaded nightly from raw.orders_feed.'
    assert r.output['messages'] == ['coordinator: trace', 'tracer: orders <- raw.orders_feed (nightly load)', 'coordinator: write',
                                    'writer: The orders table is loaded nightly from raw.orders_feed.', 'coordinator: finish']
    assert r.inputs == {'input': 'Explain the lineage of the orders table'}
    assert [m.role.value for m in sm.get_history(sid)] == ['user', 'assistant'] and sm.artifacts.get_artifact_content(r.artifact_ids[0])['output'] == r.reply

    jobs = tmp_path / 'jobs.jil'
    r = orch.process(sid, f"parse the JIL dependencies in {jobs} for job BATCH_PROCESSING")
    assert (r.kind, r.workflow, r.output.get('output')) == ('result', 'jil_parser', {'job': 'BATCH_PROCESSING', 'upstream': ['s(EXTRACT_ORDERS)']}), r.reply

    chain = WorkflowChain('explain_then_parse', reg, sm).add_step('lineage', parameter_mapping=lambda prev: {'input': prev['table']})
    res = chain.execute(sid, {'table': 'the revenue table'})
    assert res.status == 'completed', res.error
    assert res.outputs['lineage']['output'] == 'The orders table is loaded nightly from raw.orders_feed.'

def test_converted_workflow_runs_through_the_orchestrator_with_a_fake_model(project, sm, tmp_path):
    from dataops_lab.devkit.runtime import use_llm
    from dataops_lab.devkit.workspace import locate_workflow
    out = tmp_path / 'converted'
    env = user_env()
    p = subprocess.run([str(Path(sys.executable).parent / 'dataops-workflow'), 'convert', str(project / 'workflows' / 'workflow_lineage.py'), '-o', str(out)],
                       capture_output=True, text=True, env=env, cwd=tmp_path, timeout=300)
    assert p.returncode == 0, p.stdout + p.stderr
    assert '# Converting workflow_lineage.py → lineage' in p.stdout and 'Nothing: `dataops-workflow validate`' in p.stdout, p.stdout
    folder = out / 'lineage'
    assert json.loads((folder / 'examples' / 'input.json').read_text()) == {'input': 'the orders table'}
    assert 'create_llm' not in (folder / 'nodes.py').read_text() and 'current_llm().invoke(f"Trace the upstream sources' in (folder / 'nodes.py').read_text()
    loc = locate_workflow(folder)
    reg = default_registry()
    reg.register(loc.workflow, source=str(folder))
    orch = Orchestrator(reg, sm)
    sid = sm.create_session('agent_user').session_id
    with use_llm(FakeListChatModel(responses=['revenue <- orders, refunds', 'Revenue sums orders minus refunds, rebuilt hourly.'])):
        r = orch.process(sid, 'Where does the revenue table get its data from?')
    assert (r.kind, r.workflow, r.reply) == ('result', 'lineage', 'Revenue sums orders minus refunds, rebuilt hourly.'), r.reply
    assert r.output['messages'][1] == 'tracer: revenue <- orders, refunds'
    # its generated test passes as converted (the echo model: no language model configured)
    t = subprocess.run([sys.executable, '-m', 'pytest', '-q', '-p', 'no:cacheprovider', str(folder / 'tests')], capture_output=True, text=True, env=env, cwd=tmp_path, timeout=300)
    assert t.returncode == 0 and re.search(r'\b1 passed', t.stdout), t.stdout + t.stderr
