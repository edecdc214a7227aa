"""lr_training: TF-IDF + logistic regression on generated reviews (FunctionBench's lr_training).

The dataset is CSV (columns Score, Text) of seeded synthetic reviews: each mixes neutral
words with words of its class's sentiment vocabulary, and 3% of the labels are flipped. The
classifier is trained on the first 80% and scored on the rest; the validator checks the
row counts, the two classes and a held-out accuracy of at least 0.85 (a model that learnt
nothing scores about 0.5).
"""

import csv
import io
import os
import random
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "_shared"))
import synth  # noqa: E402

PARAMS = {
    "test": {"rows": 200, "seed": 51},
    "small": {"rows": 3000, "seed": 52},
    "large": {"rows": 30000, "seed": 53},
}

POSITIVE = ("great excellent love wonderful tasty fresh perfect delicious happy recommend "
            "amazing best fantastic favorite pleasant").split()
NEGATIVE = ("bad awful hate terrible stale broken worst disappointing bland refund "
            "horrible poor gross waste never").split()


def buckets_count():
    return (0, 0)


def make_dataset(rows, seed):
    rng = random.Random(seed)
    out = io.StringIO()
    w = csv.writer(out, lineterminator="\n")
    w.writerow(["Score", "Text"])
    for _ in range(rows):
        label = rng.randrange(2)
        vocab = POSITIVE if label else NEGATIVE
        words = [rng.choice(synth.WORDS) for _ in range(rng.randrange(4, 12))]
        for _ in range(rng.randrange(2, 5)):
            words.insert(rng.randrange(len(words) + 1), rng.choice(vocab))
        if rng.random() < 0.2:  # a little noise: a word of the other sentiment
            words.append(rng.choice(NEGATIVE if label else POSITIVE))
        if rng.random() < 0.03:
            label = 1 - label
        w.writerow([label, " ".join(words)])
    return out.getvalue()


def generate_input(data_dir=None, size=None, benchmarks_bucket=None, input_paths=None,
                   output_paths=None, upload_func=None, nosql_func=None):
    p = PARAMS[synth.pick_size(data_dir, size, PARAMS)]
    return {"dataset": make_dataset(p["rows"], p["seed"]), "rows": p["rows"], "max_iter": 200}


def validate(event, output):
    try:
        result = output["result"]  # the handler's dict: SeBS's `result` and `measurement`
        rows = event["rows"]
        return (result["samples"] == rows
                and result["train_samples"] == int(rows * 0.8)
                and result["classes"] == [0, 1]
                and result["features"] > 0
                and result["model_bytes"] > 0
                and 0.85 <= result["test_accuracy"] <= 1.0)
    except (KeyError, TypeError):
        return False
