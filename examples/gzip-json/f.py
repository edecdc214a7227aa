# Real stdlib work: build a JSON document, gzip it, check the round trip, report sizes.
import gzip
import hashlib
import json


def f(event):
    n = int(event.get("records", 1000)) if isinstance(event, dict) else 1000
    doc = [{"id": i, "name": f"item-{i}", "tags": ["a", "b", str(i % 7)]} for i in range(n)]
    raw = json.dumps(doc).encode()
    packed = gzip.compress(raw, compresslevel=6)
    assert json.loads(gzip.decompress(packed)) == doc
    return {
        "records": n,
        "json_bytes": len(raw),
        "gzip_bytes": len(packed),
        "sha256": hashlib.sha256(raw).hexdigest(),
    }
