"""rnn: greedy character generation with an LSTM on ONNX Runtime.

The model is built in code inside the function (python/function.py). The validator checks
that exactly `length` characters were generated, all from the model's alphabet, that every
step's output was a probability distribution over the 31 characters (sum 1 within 1e-4),
and the LSTM state's shape [1, 1, 512].
"""

import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "_shared"))
import synth  # noqa: E402

ALPHABET = "abcdefghijklmnopqrstuvwxyz .,'-"
PARAMS = {
    "test": {"prompt": "kindling", "length": 20},
    "small": {"prompt": "serverless functions start", "length": 600},
    "large": {"prompt": "serverless functions start in milliseconds", "length": 8000},
}


def buckets_count():
    return (0, 0)


def generate_input(data_dir=None, size=None, benchmarks_bucket=None, input_paths=None,
                   output_paths=None, upload_func=None, nosql_func=None):
    return dict(PARAMS[synth.pick_size(data_dir, size, PARAMS)])


def validate(event, output):
    try:
        result = output["result"]  # the handler's dict: SeBS's `result` and `measurement`
        g = result["generated"]
        return (result["prompt"] == event["prompt"].lower()
                and len(g) == event["length"]
                and all(ch in ALPHABET for ch in g)
                and result["probability_shape"] == [1, len(ALPHABET)]
                and abs(result["min_probability_sum"] - 1.0) < 1e-4
                and abs(result["max_probability_sum"] - 1.0) < 1e-4
                and result["state_shape"] == [1, 1, 512])
    except (KeyError, TypeError):
        return False
