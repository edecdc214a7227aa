"""cnn: residual CNN inference with ONNX Runtime on a batch of generated images.

The model is built in code inside the function (see python/function.py); the event says how
many images of which size, and the seed of their pixels. The validator checks the output's
shape [batch, 1000], that every row of probabilities is a distribution (entries in [0, 1],
sum 1 within 1e-4) and that the reported top-5 classes are valid and ordered.
"""

import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "_shared"))
import synth  # noqa: E402

CLASSES = 1000
PARAMS = {
    "test": {"batch": 1, "image_size": 64, "seed": 61},
    "small": {"batch": 16, "image_size": 224, "seed": 62},
    "large": {"batch": 128, "image_size": 224, "seed": 63},
}


def buckets_count():
    return (0, 0)


def generate_input(data_dir=None, size=None, benchmarks_bucket=None, input_paths=None,
                   output_paths=None, upload_func=None, nosql_func=None):
    return dict(PARAMS[synth.pick_size(data_dir, size, PARAMS)])


def validate(event, output):
    try:
        result = output["result"]  # the handler's dict: SeBS's `result` and `measurement`
        b = event["batch"]
        return (result["shape"] == [b, CLASSES]
                and len(result["row_sums"]) == b
                and all(abs(s - 1.0) < 1e-4 for s in result["row_sums"])
                and 0.0 <= result["min"] <= result["max"] <= 1.0
                and len(result["top5"]) == b
                and all(len(t) == 5 and len(set(t)) == 5 and all(0 <= c < CLASSES for c in t)
                        for t in result["top5"])
                and all(0.0 < p <= 1.0 for p in result["top1_probability"]))
    except (KeyError, TypeError):
        return False
