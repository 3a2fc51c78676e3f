"Workflows the API tests serve: quick and deterministic, one that takes a while (for cancel and wait=false), one whose chat model streams"
import itertools, time
from langchain_core.language_models.fake_chat_models import GenericFakeChatModel
from langchain_core.messages import AIMessage
from dataops_lab.workflows import FunctionWorkflow, WorkflowRegistry, workflow

@workflow(description="Count the words of a text", example_queries=['count the words of a text'])
def word_count(text: str):
    return {'summary': f"{len(text.split())} words", 'words': len(text.split())}

@workflow(description="Sleep a number of seconds then report", example_queries=['sleep for a while'])
def slow_job(seconds: float = 0.5):
    time.sleep(seconds)
    return {'summary': f"slept {seconds}"}

# LangChain's fake chat model streams its message a word (and a space) at a time
POEM = 'roses are red, violets are blue'
_poet = GenericFakeChatModel(messages=itertools.cycle([AIMessage(POEM)]))

@workflow(description="Write a short poem with a chat model", example_queries=['write me a poem'])
def poem(topic: str = 'roses'):
    return {'summary': _poet.invoke(f"a poem about {topic}").content}

# a chat model that streams a lot: CHATTER_WORDS chunks of 32 KB (and the spaces between them), 8 MB of token events --
# more than the kernel buffers of a loopback connection hold (tcp_wmem allows a send buffer of up to 4 MB)
CHATTER_WORDS = 256
_chatterbox = GenericFakeChatModel(messages=itertools.cycle([AIMessage(' '.join(c * 32768 for c in itertools.islice(itertools.cycle('abcdefgh'), CHATTER_WORDS)))]))

@workflow(description="Chatter at length with a chat model", example_queries=['chatter on and on'])
def chatter(topic: str = 'anything'):
    return {'summary': f"{len(_chatterbox.invoke(topic).content)} characters"}

# a workflow whose own input check has a bug: it fails, in the request, with an error type nobody expects, whose text holds
# something secret -- neither may reach the client or the audit log
LEAK = 'postgresql://ops:s3cr3t-pw@db.internal/prod'

class _Brittle(FunctionWorkflow):
    def validate_inputs(self, inputs=None, strict=True):
        raise LookupError(f"no column 'region' in {LEAK}")

@workflow(name='brittle', description="Tally the regions of a sales ledger", example_queries=['tally the ledger regions'])
def _tally(region: str = 'all'):
    return {'summary': region}
brittle = _Brittle(_tally.fn, _tally.metadata)

def registry():
    return WorkflowRegistry(word_count, slow_job, poem, chatter, brittle)

def chains(settings):
    "The chains the API serves in the tests, on the server's storage: 'poem_then_count' (a streamed poem, then its words counted)"
    from dataops_lab.chain import WorkflowChain
    from dataops_lab.config import load_settings
    from dataops_lab.sessions import SessionManager
    from dataops_lab.store.base import Storage
    ch = (WorkflowChain('poem_then_count', registry=registry(), session_manager=SessionManager(Storage(load_settings(settings))))
          .add_step('poem').add_step('word_count', parameter_mapping=lambda prev: {'text': prev['summary']}))
    return {ch.name: ch}
