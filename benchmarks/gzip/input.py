"""gzip: compress and decompress a generated text file (FunctionBench's gzip_compression idea)."""

import hashlib
import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "_shared"))
import synth  # noqa: E402

PARAMS = {
    "test": {"size_bytes": 64 * 1024, "seed": 11, "level": 6},
    "small": {"size_bytes": 2 * 1024 * 1024, "seed": 12, "level": 6},
    "large": {"size_bytes": 24 * 1024 * 1024, "seed": 13, "level": 6},
}


def buckets_count():
    return (0, 0)


def generate_input(data_dir=None, size=None, benchmarks_bucket=None, input_paths=None,
                   output_paths=None, upload_func=None, nosql_func=None):
    return dict(PARAMS[synth.pick_size(data_dir, size, PARAMS)])


def validate(event, output):
    """The original's digest is recomputed here; the round trip must restore it exactly."""
    try:
        result = output["result"]  # the handler's dict: SeBS's `result` and `measurement`
        data = synth.text_bytes(event["size_bytes"], event["seed"])
        digest = hashlib.sha256(data).hexdigest()
        return (result["original_sha256"] == digest
                and result["roundtrip_sha256"] == digest
                and result["original_size"] == len(data)
                and 0 < result["compressed_size"] < len(data))
    except (KeyError, TypeError):
        return False
