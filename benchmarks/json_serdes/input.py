"""json_serdes: parse and re-serialise a JSON document (FunctionBench's json_dumps_loads idea)."""

import hashlib
import json
import os
import random
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "_shared"))
import synth  # noqa: E402

PARAMS = {
    "test": {"records": 20, "repetitions": 1, "seed": 1},
    "small": {"records": 2000, "repetitions": 10, "seed": 2},
    "large": {"records": 8000, "repetitions": 30, "seed": 3},
}


def buckets_count():
    return (0, 0)


def make_document(records, seed):
    rng = random.Random(seed)
    items = []
    for i in range(records):
        items.append({
            "id": i,
            "name": " ".join(rng.choice(synth.WORDS) for _ in range(3)),
            "active": rng.random() < 0.5,
            "score": round(rng.uniform(-1000, 1000), 6),
            "tags": [rng.choice(synth.WORDS) for _ in range(rng.randrange(1, 6))],
            "location": {"lat": round(rng.uniform(-90, 90), 5),
                         "lon": round(rng.uniform(-180, 180), 5)},
            "note": None if rng.random() < 0.2 else "caf\u00e9 \u2603 \"quoted\" \\ line\n",
        })
    return {"version": 1, "generator": "kindling", "records": items}


def generate_input(data_dir=None, size=None, benchmarks_bucket=None, input_paths=None,
                   output_paths=None, upload_func=None, nosql_func=None):
    p = PARAMS[synth.pick_size(data_dir, size, PARAMS)]
    doc = json.dumps(make_document(p["records"], p["seed"]))
    return {"document": doc, "repetitions": p["repetitions"]}


def validate(event, output):
    try:
        result = output["result"]  # the handler's dict: SeBS's `result` and `measurement`
        canonical = json.dumps(json.loads(event["document"]), sort_keys=True,
                               separators=(",", ":"), ensure_ascii=False)
        return (result["sha256"] == hashlib.sha256(canonical.encode()).hexdigest()
                and result["records"] == len(json.loads(event["document"])["records"])
                and result["repetitions"] == event["repetitions"])
    except (KeyError, TypeError, ValueError):
        return False
