"""thumbnailer: shrink an image from object storage to fit a box (SeBS's 210.thumbnailer).

`storage_inputs(size)` gives the object to put in storage before the run, as
{bucket: {key: bytes}}: a generated PNG (benchmarks/_shared/synth.py). The validator checks
that the thumbnail fits the box, touches it on one side, keeps the aspect ratio (within a
pixel) and was uploaded under the output prefix as a PNG.
"""

import os
import sys
import tempfile

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "_shared"))
import synth  # noqa: E402

BUCKET = "kindling-benchmarks"
PARAMS = {
    "test": {"width": 160, "height": 120, "box": [64, 64], "seed": 111},
    "small": {"width": 1920, "height": 1080, "box": [200, 200], "seed": 112},
    "large": {"width": 4000, "height": 3000, "box": [400, 400], "seed": 113},
}


def buckets_count():
    return (1, 1)


def _image(size):
    p = PARAMS[size]
    return synth.encode_png(p["width"], p["height"],
                            synth.pattern_rgb(p["width"], p["height"], p["seed"]))


def _prefixes(benchmarks_bucket, input_paths, output_paths):
    return (benchmarks_bucket or BUCKET,
            input_paths[0] if input_paths else "thumbnailer-0-input",
            output_paths[0] if output_paths else "thumbnailer-0-output")


def _key(size):
    p = PARAMS[size]
    return f"image-{p['width']}x{p['height']}.png"


def storage_inputs(size, benchmarks_bucket=None, input_paths=None):
    size = synth.pick_size(size, None, PARAMS)
    bucket, inp, _ = _prefixes(benchmarks_bucket, input_paths, None)
    return {bucket: {f"{inp}/{_key(size)}": _image(size)}}


def generate_input(data_dir=None, size=None, benchmarks_bucket=None, input_paths=None,
                   output_paths=None, upload_func=None, nosql_func=None):
    size = synth.pick_size(data_dir, size, PARAMS)
    p = PARAMS[size]
    bucket, inp, out = _prefixes(benchmarks_bucket, input_paths, output_paths)
    if upload_func is not None:  # SeBS: upload_func(input bucket index, key, local file)
        with tempfile.TemporaryDirectory() as tmp:
            path = os.path.join(tmp, _key(size))
            with open(path, "wb") as f:
                f.write(_image(size))
            upload_func(0, _key(size), path)
    return {"bucket": {"bucket": bucket, "input": inp, "output": out},
            "object": {"key": _key(size), "width": p["box"][0], "height": p["box"][1]},
            "image_size": [p["width"], p["height"]]}


def validate(event, output):
    try:
        result = output["result"]  # the handler's dict: SeBS's `result` and `measurement`
        iw, ih = event["image_size"]
        bw, bh = event["object"]["width"], event["object"]["height"]
        w, h = result["size"]
        fits = 0 < w <= bw and 0 < h <= bh and (w == bw or h == bh or (w, h) == (iw, ih))
        aspect = abs(w * ih - h * iw) <= max(iw, ih)
        base = event["object"]["key"].rsplit(".", 1)[0]
        return (fits and aspect and result["format"] == "PNG" and result["bytes"] > 0
                and result["bucket"] == event["bucket"]["bucket"]
                and result["key"].startswith(f"{event['bucket']['output']}/{base}-thumb")
                and result["key"].endswith(".png"))
    except (KeyError, TypeError, ValueError):
        return False
