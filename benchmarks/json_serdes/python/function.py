"""json_serdes: deserialise and serialise a JSON document `repetitions` times."""

import hashlib
import json
import time


def handler(event):
    doc = event["document"]
    reps = int(event.get("repetitions", 1))
    load_s = dump_s = 0.0
    out = ""
    for _ in range(reps):
        t0 = time.perf_counter()
        obj = json.loads(doc)
        t1 = time.perf_counter()
        out = json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
        t2 = time.perf_counter()
        load_s += t1 - t0
        dump_s += t2 - t1
    return {
        "result": {
            "sha256": hashlib.sha256(out.encode()).hexdigest(),
            "records": len(obj["records"]),
            "bytes_in": len(doc),
            "bytes_out": len(out.encode()),
            "repetitions": reps,
        },
        "measurement": {
            "deserialize_time": load_s * 1e6,
            "serialize_time": dump_s * 1e6,
            "compute_time": (load_s + dump_s) * 1e6,
        },
    }
