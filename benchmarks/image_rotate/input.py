"""image_rotate: Pillow transformations of a generated RGB image (FunctionBench's image_processing).

The image is a deterministic asymmetric pattern (benchmarks/_shared/synth.py) sent as a base64
PNG in the event. The validator checks every output size (the 90-degree rotation swaps width
and height) and compares the rotated pixels with its own pure-Python rotation, byte for byte.
"""

import base64
import hashlib
import math
import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "_shared"))
import synth  # noqa: E402

PARAMS = {
    "test": {"width": 64, "height": 48, "seed": 41, "repetitions": 1},
    "small": {"width": 1024, "height": 768, "seed": 42, "repetitions": 2},
    "large": {"width": 1920, "height": 1080, "seed": 43, "repetitions": 10},
}


def buckets_count():
    return (0, 0)


def generate_input(data_dir=None, size=None, benchmarks_bucket=None, input_paths=None,
                   output_paths=None, upload_func=None, nosql_func=None):
    p = PARAMS[synth.pick_size(data_dir, size, PARAMS)]
    raw = synth.pattern_rgb(p["width"], p["height"], p["seed"])
    png = synth.encode_png(p["width"], p["height"], raw)
    return {"image": base64.b64encode(png).decode(), "angle": 30, **p}


def validate(event, output):
    try:
        result = output["result"]  # the handler's dict: SeBS's `result` and `measurement`
        w, h = event["width"], event["height"]
        s = result["sizes"]
        raw = synth.pattern_rgb(w, h, event["seed"])
        rotated = synth.rotate90_ccw(raw, w, h)
        a = math.radians(event["angle"])
        rw = abs(w * math.cos(a)) + abs(h * math.sin(a))
        rh = abs(w * math.sin(a)) + abs(h * math.cos(a))
        return (result["input_size"] == [w, h]
                and s["rotate90"] == [h, w]
                and s["flip"] == [w, h] and s["blur"] == [w, h] and s["grey"] == [w, h]
                and s["grey_mode"] == "L"
                and s["resize"] == [max(1, w // 2), max(1, h // 2)]
                and abs(s["rotate_angle"][0] - rw) <= 2 and abs(s["rotate_angle"][1] - rh) <= 2
                and result["rotate90_raw_sha256"] == hashlib.sha256(rotated).hexdigest())
    except (KeyError, TypeError, IndexError):
        return False
