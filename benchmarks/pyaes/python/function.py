"""pyaes: AES-256-CTR encryption and decryption of a message in pure Python (FunctionBench)."""

import hashlib
import random
import time

import pyaes

WORDS = (
    "alpha bravo charlie delta echo foxtrot golf hotel india juliet kilo lima mike "
    "november oscar papa quebec romeo sierra tango uniform victor whiskey xray yankee "
    "zulu serverless function sandbox zygote kernel namespace cgroup package store "
    "latency memory cold warm fork start image layer python worker request"
).split()

# FIPS-197 appendix C.1 (AES-128): a known-answer test of the block cipher itself.
FIPS_KEY = bytes(range(16))
FIPS_PLAIN = bytes.fromhex("00112233445566778899aabbccddeeff")


def message(length, seed):
    rng = random.Random(seed)
    words = []
    n = 0
    while n < length:
        w = rng.choice(WORDS)
        words.append(w)
        n += len(w) + 1
    return " ".join(words).encode()[:length]


def handler(event):
    length = int(event["length"])
    iterations = int(event["iterations"])
    seed = int(event["seed"])
    key = hashlib.sha256(f"kindling-pyaes-{seed}".encode()).digest()  # 32 bytes: AES-256
    plaintext = message(length, seed)
    t0 = time.perf_counter()
    roundtrip = True
    ciphertext = b""
    for _ in range(iterations):
        ciphertext = pyaes.AESModeOfOperationCTR(key).encrypt(plaintext)
        decrypted = pyaes.AESModeOfOperationCTR(key).decrypt(ciphertext)
        roundtrip = roundtrip and decrypted == plaintext
    t1 = time.perf_counter()
    kat = bytes(pyaes.AES(FIPS_KEY).encrypt(list(FIPS_PLAIN))).hex()
    return {
        "result": {
            "length": len(plaintext),
            "iterations": iterations,
            "roundtrip": roundtrip,
            "ciphertext_sha256": hashlib.sha256(ciphertext).hexdigest(),
            "fips197_c1": kat,
        },
        "measurement": {"compute_time": (t1 - t0) * 1e6},
    }
