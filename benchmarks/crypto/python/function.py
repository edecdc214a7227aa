"""crypto: key derivation, authenticated encryption and hashing with `cryptography` (TrEnv's
crypto function, in Python).

PBKDF2-HMAC-SHA256 derives a key from a seeded password, AES-256-GCM encrypts and decrypts a
seeded message `iterations` times, and the NIST GCM test case 3 runs as a known answer.
"""

import hashlib
import time

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.pbkdf2 import PBKDF2HMAC

# NIST GCM specification, test case 3 (AES-128, 96-bit IV, no additional data).
KAT_KEY = bytes.fromhex("feffe9928665731c6d6a8f9467308308")
KAT_IV = bytes.fromhex("cafebabefacedbaddecaf888")
KAT_PLAIN = bytes.fromhex(
    "d9313225f88406e5a55909c5aff5269a86a7a9531534f7da2e4c303d8a318a72"
    "1c3c0c95956809532fcf0e2449a6b525b16aedf5aa0de657ba637b391aafd255")


def message(length, seed):
    """`length` bytes of a SHA-256 counter stream: deterministic and incompressible."""
    out = bytearray()
    n = 0
    while len(out) < length:
        out += hashlib.sha256(f"kindling-crypto-{seed}-{n}".encode()).digest()
        n += 1
    return bytes(out[:length])


def handler(event):
    seed = int(event["seed"])
    length = int(event["length"])
    iterations = int(event["iterations"])
    rounds = int(event["kdf_rounds"])
    t0 = time.perf_counter()
    key = PBKDF2HMAC(algorithm=hashes.SHA256(), length=32, salt=f"salt-{seed}".encode(),
                     iterations=rounds).derive(f"password-{seed}".encode())
    t1 = time.perf_counter()
    plain = message(length, seed)
    nonce = hashlib.sha256(f"nonce-{seed}".encode()).digest()[:12]
    aead = AESGCM(key)
    ok = True
    cipher = b""
    for _ in range(iterations):
        cipher = aead.encrypt(nonce, plain, b"kindling")
        ok = ok and aead.decrypt(nonce, cipher, b"kindling") == plain
    t2 = time.perf_counter()
    kat = AESGCM(KAT_KEY).encrypt(KAT_IV, KAT_PLAIN, None)
    return {
        "result": {
            "key": key.hex(),
            "plain_sha256": hashlib.sha256(plain).hexdigest(),
            "ciphertext_sha256": hashlib.sha256(cipher).hexdigest(),
            "ciphertext_length": len(cipher),
            "roundtrip": ok,
            "gcm_kat": kat.hex(),
        },
        "measurement": {
            "kdf_time": (t1 - t0) * 1e6,
            "compute_time": (t2 - t0) * 1e6,
        },
    }
