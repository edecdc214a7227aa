"""compression: zip a directory of files from object storage (SeBS's 311.compression).

`storage_inputs(size)` gives the objects to put in storage before the run, as
{bucket: {key: bytes}}: text, incompressible binary and PNG files under
<input prefix>/<directory>/. The validator checks the archive's manifest (every file, its
size and sha256, read back from the zip by the function) against those objects, and that
the archive was uploaded under the output prefix.
"""

import hashlib
import os
import random
import sys
import tempfile

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "_shared"))
import synth  # noqa: E402

BUCKET = "kindling-benchmarks"
PARAMS = {
    "test": {"files": 3, "bytes_per_file": 8 * 1024, "seed": 101},
    "small": {"files": 10, "bytes_per_file": 300 * 1024, "seed": 102},
    "large": {"files": 24, "bytes_per_file": 1024 * 1024, "seed": 103},
}
DIRECTORY = "dataset"


def buckets_count():
    return (1, 1)


def _files(size):
    p = PARAMS[size]
    rng = random.Random(p["seed"])
    out = {}
    for i in range(p["files"]):
        n = p["bytes_per_file"]
        kind = i % 3
        if kind == 0:
            out[f"doc{i}.txt"] = synth.text_bytes(n, p["seed"] * 100 + i)
        elif kind == 1:
            out[f"sub/blob{i}.bin"] = rng.getrandbits(8 * n).to_bytes(n, "little")
        else:
            w = max(8, int((n / 3) ** 0.5))
            out[f"img/pic{i}.png"] = synth.encode_png(w, w, synth.pattern_rgb(w, w, i))
    return out


def _prefixes(benchmarks_bucket, input_paths, output_paths):
    return (benchmarks_bucket or BUCKET,
            input_paths[0] if input_paths else "compression-0-input",
            output_paths[0] if output_paths else "compression-0-output")


def storage_inputs(size, benchmarks_bucket=None, input_paths=None):
    size = synth.pick_size(size, None, PARAMS)
    bucket, inp, _ = _prefixes(benchmarks_bucket, input_paths, None)
    return {bucket: {f"{inp}/{DIRECTORY}/{name}": data for name, data in _files(size).items()}}


def generate_input(data_dir=None, size=None, benchmarks_bucket=None, input_paths=None,
                   output_paths=None, upload_func=None, nosql_func=None):
    size = synth.pick_size(data_dir, size, PARAMS)
    bucket, inp, out = _prefixes(benchmarks_bucket, input_paths, output_paths)
    if upload_func is not None:  # SeBS: upload_func(input bucket index, key, local file)
        with tempfile.TemporaryDirectory() as tmp:
            for name, data in _files(size).items():
                path = os.path.join(tmp, name.replace("/", "_"))
                with open(path, "wb") as f:
                    f.write(data)
                upload_func(0, f"{DIRECTORY}/{name}", path)
    return {"bucket": {"bucket": bucket, "input": inp, "output": out},
            "object": {"key": DIRECTORY}, "size": size}


def validate(event, output):
    try:
        result = output["result"]  # the handler's dict: SeBS's `result` and `measurement`
        files = _files(event["size"])
        want = {name: [len(d), hashlib.sha256(d).hexdigest()] for name, d in files.items()}
        return (result["manifest"] == want
                and result["input_bytes"] == sum(len(d) for d in files.values())
                and result["archive_bytes"] > 0
                and result["bucket"] == event["bucket"]["bucket"]
                and result["key"].startswith(f"{event['bucket']['output']}/{event['object']['key']}")
                and result["key"].endswith(".zip"))
    except (KeyError, TypeError):
        return False
