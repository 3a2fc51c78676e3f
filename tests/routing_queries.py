"""The routing sets of tests/data (see its README) as (query, workflow) pairs; workflow None: no workflow should run.

QUERIES are the 65 queries the bundled workflows' metadata was first refined on (part of the development set);
DEV and HELD_OUT are the whole development and held-out sets. Used by tests/test_routing.py and benchmarks/orchestration.py."""
import json
from pathlib import Path

DATA = Path(__file__).parent/'data'

def load(name:str)->list[dict]:
    "The rows of tests/data/routing_{name}.jsonl: query, workflow (None: abstain), style"
    return [json.loads(l) for l in (DATA/f'routing_{name}.jsonl').read_text().splitlines() if l.strip()]

DEV = [(x['query'], x['workflow']) for x in load('dev')]
HELD_OUT = [(x['query'], x['workflow']) for x in load('heldout')]
QUERIES = [(x['query'], x['workflow']) for x in load('dev') if x['style'] == 'tuning']
