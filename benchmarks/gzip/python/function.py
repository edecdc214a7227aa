"""gzip: generate a text file, gzip it, gunzip it again and hash both ends of the round trip."""

import gzip
import hashlib
import io
import random
import time

WORDS = (
    "alpha bravo charlie delta echo foxtrot golf hotel india juliet kilo lima mike "
    "november oscar papa quebec romeo sierra tango uniform victor whiskey xray yankee "
    "zulu serverless function sandbox zygote kernel namespace cgroup package store "
    "latency memory cold warm fork start image layer python worker request"
).split()


def text_bytes(size, seed):
    """Same generator as benchmarks/_shared/synth.py (the validator recomputes the digest)."""
    rng = random.Random(seed)
    blocks = []
    for _ in range(64):
        words = []
        n = 0
        while n < 4096:
            w = rng.choice(WORDS)
            words.append(w)
            n += len(w) + 1
        blocks.append((" ".join(words) + "\n").encode()[:4096])
    out = bytearray()
    while len(out) < size:
        out += blocks[rng.randrange(len(blocks))]
    return bytes(out[:size])


def handler(event):
    size = int(event["size_bytes"])
    level = int(event.get("level", 6))
    t0 = time.perf_counter()
    data = text_bytes(size, event["seed"])
    t1 = time.perf_counter()
    # In memory rather than in /tmp: the sandbox's /tmp is a small tmpfs.
    buf = io.BytesIO()
    with gzip.GzipFile(fileobj=buf, mode="wb", compresslevel=level, mtime=0) as g:
        for off in range(0, len(data), 1 << 20):
            g.write(data[off:off + (1 << 20)])
    compressed = buf.getvalue()
    t2 = time.perf_counter()
    h_out = hashlib.sha256()
    with gzip.GzipFile(fileobj=io.BytesIO(compressed), mode="rb") as g:
        for chunk in iter(lambda: g.read(1 << 20), b""):
            h_out.update(chunk)
    t3 = time.perf_counter()
    return {
        "result": {
            "original_size": size,
            "compressed_size": len(compressed),
            "original_sha256": hashlib.sha256(data).hexdigest(),
            "roundtrip_sha256": h_out.hexdigest(),
        },
        "measurement": {
            "generate_time": (t1 - t0) * 1e6,
            "compress_time": (t2 - t1) * 1e6,
            "decompress_time": (t3 - t2) * 1e6,
            "compute_time": (t3 - t1) * 1e6,
        },
    }
