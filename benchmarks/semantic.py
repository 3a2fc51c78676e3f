"""Semantic benchmark: what the [semantic] extra costs per message and per recall, on the embedded tier.

    .venv/bin/python benchmarks/semantic.py [--quick] [--iterations 300] [--turns 100,500]

Sections, each side interleaved with the other in rotating rounds, medians printed (p95 beside them):
- embedding one message (`semantic.vector_of`, what `add_message` adds) vs BM25's tokenising of the same text (`recall.terms`);
- `add_message` with the extra on vs switched off, on SQLite + files: two session managers, each on its own folder whose
  settings.ini says `[semantic] enabled = on` or `off` (a manager reads the switch once, when it starts);
- `get_context_summary` with the extra on vs off, for sessions of each length in --turns (the vectors are read with the
  messages, and at most `recall_window` un-summarised turns are ranked, so the cost should stay flat as the session grows);
- the recall set (tests/data/recall_paraphrase.jsonl), each half (dev, heldout): turns whose answer reached the context, lexical vs hybrid.
Prints the machine, the commit and the load average at start and end. A section that raises is FAILED in the summary and
makes the script exit 1. A benchmark is not a test: nothing here asserts.
"""
from __future__ import annotations
import argparse, json, os, platform, statistics, subprocess, sys, tempfile, time, traceback
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

def load(): return ' '.join(open('/proc/loadavg').read().split()[:3])

def rounds(sides:dict, n:int, batch:int=10)->dict:
    "Each side's per-call seconds, the sides run in batches whose order rotates every round"
    out = {k: [] for k in sides}
    names = list(sides)
    for r in range(max(1, n // batch)):
        for k in names[r % len(names):] + names[:r % len(names)]:
            for _ in range(batch):
                t = time.perf_counter(); sides[k](); out[k].append(time.perf_counter() - t)
    return out

def fmt(xs): return f"median {statistics.median(xs)*1e3:.3f} ms, p95 {sorted(xs)[int(len(xs)*0.95)-1]*1e3:.3f} ms ({len(xs)} calls)"

def main():
    ap = argparse.ArgumentParser()
    ap.add_argument('--quick', action='store_true'); ap.add_argument('--iterations', type=int, default=300)
    ap.add_argument('--turns', default='100,500')
    a = ap.parse_args()
    n = 40 if a.quick else a.iterations
    turns = [int(x) for x in a.turns.split(',')] if not a.quick else [50, 200]
    commit = subprocess.run(['git', 'rev-parse', '--short', 'HEAD'], cwd=ROOT, capture_output=True, text=True).stdout.strip()
    print(f"machine {platform.machine()} {os.cpu_count()} cores, python {platform.python_version()}, commit {commit}, load average {load()}")
    os.environ.pop('DATAOPS_LAB_SEMANTIC', None)  # each manager's settings.ini decides
    from dataops_lab import semantic
    if not semantic.available():
        print("skipped: the [semantic] extra is not installed (pip install 'dataops-lab[semantic]')"); return 0
    from dataops_lab.config import load_settings
    from dataops_lab.recall import terms, select_context
    from dataops_lab.models import Message
    from dataops_lab.sessions import SessionManager
    texts = [json.loads(l) for l in (ROOT/'tests'/'data'/'recall_paraphrase.jsonl').read_text().splitlines() if l.strip()]
    pool = [t for r in texts for t in r['turns']]
    failed, summary = [], []
    def section(name, fn):
        print(f"\n== {name} ==")
        try: summary.append((name, fn()))
        except Exception: traceback.print_exc(); failed.append(name); summary.append((name, 'FAILED'))
    semantic.embed(['warm up'])
    i = iter(range(10**9))
    def embed_one():
        got = rounds({'vector_of': lambda: semantic.vector_of(pool[next(i) % len(pool)] + f" {next(i)}"),
                      'terms (BM25 tokens)': lambda: terms(pool[next(i) % len(pool)] + f" {next(i)}")}, n)
        for k, v in got.items(): print(f"{k:24} {fmt(v)}")
        print(f"stored per message: {len(semantic.vector_of(pool[0]))} characters (256 int8, base64)")
        return f"{statistics.median(got['vector_of'])*1e3:.3f} ms to embed one message"
    section('embedding one message', embed_one)
    with tempfile.TemporaryDirectory() as tmp:
        sms = {}
        for on in (True, False):  # the embedded default, each in its own folder
            (Path(tmp)/str(on)).mkdir()
            (Path(tmp)/str(on)/'settings.ini').write_text(f"[storage]\n[semantic]\nenabled = {'on' if on else 'off'}\n")
            sms[on] = SessionManager(load_settings(Path(tmp)/str(on)/'settings.ini'))
        if (sms[True].semantic, sms[False].semantic) != (True, False): raise RuntimeError(f"the switch did not take: {sms[True].semantic}, {sms[False].semantic}")
        def add():
            sids = {on: sms[on].create_session('bench').session_id for on in (True, False)}
            def side(on):
                def f(): sms[on].add_message(sids[on], 'user', pool[next(i) % len(pool)] + f" {next(i)}")  # a text new to the process: the 'on' side computes its vector (a repeated short text would come from the cache of 1,024)
                return f
            got = rounds({'add_message, semantic on': side(True), 'add_message, semantic off': side(False)}, n)
            stored = {on: sms[on].get_history(sids[on], limit=1)[0].vector for on in (True, False)}
            if stored[True] is None or stored[False] is not None: raise RuntimeError(f"vectors stored: on {stored[True] is not None}, off {stored[False] is not None}")
            for k, v in got.items(): print(f"{k:28} {fmt(v)}")
            on, off = (statistics.median(got[k]) for k in got)
            return f"add_message {on*1e3:.2f} ms on vs {off*1e3:.2f} ms off (+{(on-off)*1e3:.2f} ms)"
        section('add_message on the embedded tier', add)
        def recall():
            out = []
            for t in turns:
                sids = {on: sms[on].create_session('bench').session_id for on in (True, False)}
                t0 = time.perf_counter()
                for on in (True, False):
                    for k in range(t): sms[on].add_message(sids[on], 'user' if k % 2 == 0 else 'assistant', pool[k % len(pool)])
                print(f"{t:5} turns added to each session in {time.perf_counter() - t0:.1f} s")
                def side(on):
                    def f(): sms[on].get_context_summary(sids[on], max_tokens=600, query='how big is the purchases data?')
                    return f
                got = rounds({'on': side(True), 'off': side(False)}, max(10, n // 4), batch=5)
                print(f"{t:5} turns: get_context_summary semantic on {fmt(got['on'])}; off {fmt(got['off'])}")
                out.append(f"{t} turns {statistics.median(got['on'])*1e3:.1f} / {statistics.median(got['off'])*1e3:.1f} ms")
            return 'get_context_summary on / off: ' + '; '.join(out)
        section('get_context_summary as the session grows', recall)
        for sm in sms.values(): sm.close()
    def recall_set():
        out = []
        for split in ('dev', 'heldout'):  # MIN_COSINE is chosen on the development half (nbs/22_recall.ipynb); the held-out half only measures
            rows, hits = [r for r in texts if r['split'] == split], {}
            for sem in (False, True):
                hits[sem] = 0
                for r in rows:
                    msgs = [Message(role='user' if k % 2 == 0 else 'assistant', content=c, seq=k+1) for k, c in enumerate(r['turns'] + [r['question']])]
                    ctx = select_context(msgs, max_tokens=150, query=r['question'], semantic=sem)
                    hits[sem] += r['relevant'] + 1 in [t.message.seq for t in ctx.turns]
            print(f"{split}: answering turn in the context (150 tokens): lexical {hits[False]}/{len(rows)}, hybrid {hits[True]}/{len(rows)}")
            out.append(f"{split} lexical {hits[False]}/{len(rows)}, hybrid {hits[True]}/{len(rows)}")
        return 'recall set: ' + '; '.join(out)
    section('recall set', recall_set)
    print(f"\n== Summary (load average {load()} at end) ==")
    for name, what in summary: print(f"- {name}: {what}")
    return 1 if failed else 0

if __name__ == '__main__':
    sys.exit(main())
