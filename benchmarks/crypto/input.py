"""crypto: PBKDF2-HMAC-SHA256 + AES-256-GCM with `cryptography` (TrEnv's crypto function).

The validator recomputes the derived key and the message digest with hashlib, checks the NIST
GCM test case 3 known answer, and compares the ciphertext digest with the one computed once
with cryptography 48.0.0 and confirmed with cryptography 38.0.4 (Debian's build).
"""

import hashlib
import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "_shared"))
import synth  # noqa: E402

PARAMS = {
    "test": {"length": 4096, "iterations": 1, "kdf_rounds": 1000, "seed": 31},
    "small": {"length": 1048576, "iterations": 16, "kdf_rounds": 200000, "seed": 32},
    "large": {"length": 8388608, "iterations": 32, "kdf_rounds": 1000000, "seed": 33},
}

# (length, seed) -> sha256 of the AES-256-GCM ciphertext (tag included)
KNOWN_CIPHERTEXT_SHA256 = {
    (4096, 31): "88055cc73cd9e97876e4676d8835dd01264e700bf472c0b703847275f0721dbb",
    (1048576, 32): "ac5205b1ee387f68f740bf3a02920659ccdf6a8ca16298414b214d27aae0e062",
    (8388608, 33): "528a9720fca42ca4252be86569d1ad934063924a254dfa11f698c929273861fe",
}

# NIST GCM specification, test case 3: ciphertext then tag.
GCM_TEST_CASE_3 = (
    "42831ec2217774244b7221b784d0d49ce3aa212f2c02a4e035c17e2329aca12e"
    "21d514b25466931c7d8f6a5aac84aa051ba30b396a0aac973d58e091473f5985"
    "4d5c2af327cd64a62cf35abd2ba6fab4")


def buckets_count():
    return (0, 0)


def generate_input(data_dir=None, size=None, benchmarks_bucket=None, input_paths=None,
                   output_paths=None, upload_func=None, nosql_func=None):
    return dict(PARAMS[synth.pick_size(data_dir, size, PARAMS)])


def _message_sha256(length, seed):
    out = bytearray()
    n = 0
    while len(out) < length:
        out += hashlib.sha256(f"kindling-crypto-{seed}-{n}".encode()).digest()
        n += 1
    return hashlib.sha256(bytes(out[:length])).hexdigest()


def validate(event, output):
    try:
        output = output["result"]  # the handler's dict: SeBS's `result` and `measurement`
        seed, length = event["seed"], event["length"]
        key = hashlib.pbkdf2_hmac("sha256", f"password-{seed}".encode(), f"salt-{seed}".encode(),
                                  event["kdf_rounds"], 32).hex()
        known = KNOWN_CIPHERTEXT_SHA256.get((length, seed))
        return (output["roundtrip"] is True
                and output["key"] == key
                and output["plain_sha256"] == _message_sha256(length, seed)
                and output["ciphertext_length"] == length + 16
                and output["gcm_kat"] == GCM_TEST_CASE_3
                and (known is None or output["ciphertext_sha256"] == known))
    except (KeyError, TypeError):
        return False
