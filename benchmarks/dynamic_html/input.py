"""dynamic_html: Jinja2 page with `random_len` seeded random numbers (SeBS's 110.dynamic-html).

The time shown on the page comes from the event, so the output is deterministic; the
validator rebuilds the page (username escaped, one <li> per number from the same seeded
generator) and compares digests; at size `test` the page itself is returned and parsed too.
"""

import hashlib
import html as htmllib
import os
import random
import re
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "_shared"))
import synth  # noqa: E402

PARAMS = {
    "test": {"random_len": 10, "seed": 31, "return_html": True},
    "small": {"random_len": 100_000, "seed": 32, "return_html": False},
    "large": {"random_len": 1_000_000, "seed": 33, "return_html": False},
}


def buckets_count():
    return (0, 0)


def generate_input(data_dir=None, size=None, benchmarks_bucket=None, input_paths=None,
                   output_paths=None, upload_func=None, nosql_func=None):
    p = PARAMS[synth.pick_size(data_dir, size, PARAMS)]
    return {"username": "testname <kindling> & co", "cur_time": "2024-01-01 12:00:00",
            **p}


def expected_html(event):
    rng = random.Random(event["seed"])
    numbers = [rng.randrange(1_000_000) for _ in range(event["random_len"])]
    name = htmllib.escape(event["username"], quote=True).replace("&#x27;", "&#39;")
    items = "".join(f"<li>{n}</li>\n" for n in numbers)
    return ("<!DOCTYPE html>\n<html>\n<head><title>Randomly generated data.</title></head>\n"
            f"<body>\n<p>Welcome {name}!</p>\n<p>Data generated at: {event['cur_time']}!</p>\n"
            f"<p>Requested random numbers:</p>\n<ul>\n{items}</ul>\n</body>\n</html>"), numbers


def validate(event, output):
    try:
        result = output["result"]  # the handler's dict: SeBS's `result` and `measurement`
        page, numbers = expected_html(event)
        if "html" in result:
            got = [int(x) for x in re.findall(r"<li>(\d+)</li>", result["html"])]
            if got != numbers or "&lt;kindling&gt; &amp; co" not in result["html"]:
                return False
        return (result["length"] == len(page)
                and result["sha256"] == hashlib.sha256(page.encode()).hexdigest())
    except (KeyError, TypeError, ValueError):
        return False
