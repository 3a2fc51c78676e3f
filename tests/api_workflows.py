"Workflows the API tests serve: quick and deterministic, one that takes a while (for cancel and wait=false)"
import time
from dataops_lab.workflows import WorkflowRegistry, workflow

@workflow(description="Count the words of a text", example_queries=['count the words of a text'])
def word_count(text: str):
    return {'summary': f"{len(text.split())} words", 'words': len(text.split())}

@workflow(description="Sleep a number of seconds then report", example_queries=['sleep for a while'])
def slow_job(seconds: float = 0.5):
    time.sleep(seconds)
    return {'summary': f"slept {seconds}"}

def registry():
    return WorkflowRegistry(word_count, slow_job)
