"""pyaes: AES-256-CTR in pure Python (FunctionBench's pyaes idea).

The key is sha256("kindling-pyaes-<seed>"), the counter starts at 1 (pyaes's default), and the
message is seeded word-salad text. The expected ciphertext digests below were computed once
with pyaes and confirmed independently with `openssl enc -aes-256-ctr -K <key> -iv 0...01`.
"""

import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "_shared"))
import synth  # noqa: E402

PARAMS = {
    "test": {"length": 1024, "iterations": 1, "seed": 21},
    "small": {"length": 16384, "iterations": 2, "seed": 22},
    "large": {"length": 65536, "iterations": 8, "seed": 23},
}

# (length, seed) -> sha256 of the ciphertext
KNOWN_CIPHERTEXT_SHA256 = {
    (1024, 21): "47fd4cbc46667725a8f546ab23541516a6e35beb6bf892c38d7215079db0b793",
    (16384, 22): "355ee73a52aeda109dc1239903d44065fc9295f9bbf5c51eea42162844bbd245",
    (65536, 23): "6cd5294978cc7d3d2338081d1e319b3e8da4b08510dee29b3a930ac673317f6b",
}

FIPS197_C1_CIPHERTEXT = "69c4e0d86a7b0430d8cdb78070b4c55a"


def buckets_count():
    return (0, 0)


def generate_input(data_dir=None, size=None, benchmarks_bucket=None, input_paths=None,
                   output_paths=None, upload_func=None, nosql_func=None):
    return dict(PARAMS[synth.pick_size(data_dir, size, PARAMS)])


def validate(event, output):
    try:
        result = output["result"]  # the handler's dict: SeBS's `result` and `measurement`
        known = KNOWN_CIPHERTEXT_SHA256.get((event["length"], event["seed"]))
        return (result["roundtrip"] is True
                and result["length"] == event["length"]
                and result["fips197_c1"] == FIPS197_C1_CIPHERTEXT
                and (known is None or result["ciphertext_sha256"] == known))
    except (KeyError, TypeError):
        return False
