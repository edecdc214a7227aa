"""Deterministic synthetic data for benchmark inputs, standard library only.

Input generators (``input.py``) and validators import this module, so it must not depend
on any third-party package: ``run_local.py`` runs on a bare host Python.
"""

import random
import struct
import zlib

WORDS = (
    "alpha bravo charlie delta echo foxtrot golf hotel india juliet kilo lima mike "
    "november oscar papa quebec romeo sierra tango uniform victor whiskey xray yankee "
    "zulu serverless function sandbox zygote kernel namespace cgroup package store "
    "latency memory cold warm fork start image layer python worker request"
).split()


def text_bytes(size, seed):
    """`size` bytes of word-salad text: a pool of 4 KiB blocks, drawn in a seeded order."""
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


def _chunk(kind, data):
    return (struct.pack(">I", len(data)) + kind + data
            + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF))


def encode_png(width, height, raw, channels=3):
    """PNG (8-bit grey or RGB, filter 0) of `raw`, row-major, `channels` bytes per pixel."""
    color_type = {1: 0, 3: 2, 4: 6}[channels]
    stride = width * channels
    if len(raw) != stride * height:
        raise ValueError("raw size does not match the dimensions")
    rows = b"".join(b"\x00" + raw[y * stride:(y + 1) * stride] for y in range(height))
    ihdr = struct.pack(">IIBBBBB", width, height, 8, color_type, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", ihdr)
            + _chunk(b"IDAT", zlib.compress(rows, 6)) + _chunk(b"IEND", b""))


def pattern_rgb(width, height, seed):
    """A deterministic, asymmetric RGB test image as raw bytes (row-major).

    Each row is a seeded base row shifted by a row-dependent offset, so the image has
    structure in both directions and no rotation or flip maps it onto itself.
    """
    rng = random.Random(seed)
    period = width + 7
    base = bytearray()
    for x in range(period):
        base += bytes(((x * 3 + rng.randrange(8)) & 255,
                       (x * 7 // 3 + 40) & 255,
                       (255 - x) & 255 if x % 64 < 32 else rng.randrange(256)))
    base = bytes(base) * 2
    rows = []
    for y in range(height):
        off = ((y * 5) + (y * y) // 97) % period
        row = bytearray(base[off * 3:(off + width) * 3])
        row[0:3] = bytes((y & 255, (y >> 8) & 255, 17))  # mark the left edge
        rows.append(bytes(row))
    return b"".join(rows)


def rotate90_ccw(raw, width, height, channels=3):
    """Raw pixels rotated 90 degrees counter-clockwise (PIL's ROTATE_90); new size (h, w)."""
    stride = width * channels
    out = bytearray(len(raw))
    new_stride = height * channels
    for ny in range(width):
        x = width - 1 - ny  # output row ny is input column width-1-ny, top to bottom
        row = bytearray(new_stride)
        for c in range(channels):
            row[c::channels] = raw[x * channels + c::stride]
        out[ny * new_stride:(ny + 1) * new_stride] = row
    return bytes(out)


def face_tile(size=160):
    """A grey (1 byte/pixel) drawing of a frontal face on a darker background, size x size."""
    s = size
    img = bytearray([70]) * (s * s)

    def ellipse(cx, cy, rx, ry, value):
        for y in range(max(0, int(cy - ry)), min(s, int(cy + ry) + 1)):
            dy = (y - cy) / ry
            if abs(dy) > 1:
                continue
            half = rx * (1 - dy * dy) ** 0.5
            x0, x1 = max(0, int(cx - half)), min(s - 1, int(cx + half))
            img[y * s + x0:y * s + x1 + 1] = bytes([value]) * (x1 - x0 + 1)

    ellipse(s * 0.50, s * 0.52, s * 0.34, s * 0.44, 205)   # face
    ellipse(s * 0.34, s * 0.30, s * 0.10, s * 0.025, 60)   # brows
    ellipse(s * 0.66, s * 0.30, s * 0.10, s * 0.025, 60)
    ellipse(s * 0.34, s * 0.40, s * 0.085, s * 0.05, 35)   # eyes
    ellipse(s * 0.66, s * 0.40, s * 0.085, s * 0.05, 35)
    ellipse(s * 0.50, s * 0.56, s * 0.04, s * 0.10, 175)   # nose
    ellipse(s * 0.50, s * 0.76, s * 0.15, s * 0.04, 70)    # mouth
    # 3x3 box blur, twice: soft edges look more like a photograph to a Haar cascade
    for _ in range(2):
        src = bytes(img)
        for y in range(1, s - 1):
            r0, r1, r2 = (y - 1) * s, y * s, (y + 1) * s
            for x in range(1, s - 1):
                img[r1 + x] = (src[r0 + x - 1] + src[r0 + x] + src[r0 + x + 1]
                               + src[r1 + x - 1] + src[r1 + x] + src[r1 + x + 1]
                               + src[r2 + x - 1] + src[r2 + x] + src[r2 + x + 1]) // 9
    return bytes(img)


def tile_grey(tile, tile_size, cols, rows, margin=20, background=70):
    """A grey image with `cols` x `rows` copies of a square tile; returns (w, h, raw)."""
    w = cols * (tile_size + margin) + margin
    h = rows * (tile_size + margin) + margin
    blank = bytes([background]) * w
    out = []
    for r in range(rows):
        out.extend([blank] * margin)
        for y in range(tile_size):
            line = bytearray(blank)
            t = tile[y * tile_size:(y + 1) * tile_size]
            for c in range(cols):
                x0 = margin + c * (tile_size + margin)
                line[x0:x0 + tile_size] = t
            out.append(bytes(line))
    out.extend([blank] * margin)
    return w, h, b"".join(out)


SIZES = ("test", "small", "large")


def pick_size(data_dir, size, params):
    """Accepts both ``generate_input(size)`` and SeBS's ``generate_input(data_dir, size, ...)``."""
    if size is None:
        size = data_dir
    if size not in params:
        raise ValueError(f"unknown size {size!r}; valid sizes: {', '.join(params)}")
    return size


def graph_edges(n, m, seed):
    """A connected preferential-attachment graph on vertices 0..n-1 with seeded integer weights.

    Vertex v >= 1 links to min(m, v) distinct earlier vertices, each picked uniformly with
    probability 1/2 and otherwise proportionally to degree (Barabasi-Albert style). Returns
    (edges, weights): a list of (v, u) pairs with u < v and a list of weights in 1..1000.
    The graph benchmarks' functions carry a copy of this generator.
    """
    rng = random.Random(seed)
    rand = rng.random
    ends = []
    edges = []
    for v in range(1, n):
        k = m if m < v else v
        chosen = set()
        while len(chosen) < k:
            if ends and rand() < 0.5:
                chosen.add(ends[int(rand() * len(ends))])
            else:
                chosen.add(int(rand() * v))
        for u in sorted(chosen):
            edges.append((v, u))
            ends.append(u)
            ends.append(v)
    weights = [1 + int(rand() * 1000) for _ in range(len(edges))]
    return edges, weights
