"""chameleon: render a rows x cols HTML table with Chameleon (FunctionBench's chameleon idea).

The validator builds the exact HTML Chameleon produces for this template (cells escaped,
repeated elements joined by a newline) and compares digests.
"""

import hashlib
import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "_shared"))
import synth  # noqa: E402

PARAMS = {
    "test": {"rows": 10, "cols": 10},
    "small": {"rows": 400, "cols": 50},
    "large": {"rows": 8000, "cols": 150},
}

WORDS = ("alpha", "bravo", "charlie", "delta", "echo", "foxtrot", "golf")


def buckets_count():
    return (0, 0)


def generate_input(data_dir=None, size=None, benchmarks_bucket=None, input_paths=None,
                   output_paths=None, upload_func=None, nosql_func=None):
    return dict(PARAMS[synth.pick_size(data_dir, size, PARAMS)])


def expected_html(rows, cols):
    def cell(v):
        text = f"{WORDS[v % len(WORDS)]}-{v}"
        if v % 7 == 3:
            text += " & <b>"
        return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")

    trs = ("<tr>" + "\n".join(f"<td>{cell(r * cols + c)}</td>" for c in range(cols)) + "</tr>"
           for r in range(rows))
    return "<table>" + "\n".join(trs) + "</table>"


def validate(event, output):
    try:
        result = output["result"]  # the handler's dict: SeBS's `result` and `measurement`
        html = expected_html(event["rows"], event["cols"])
        return (result["cells"] == event["rows"] * event["cols"]
                and result["length"] == len(html)
                and result["sha256"] == hashlib.sha256(html.encode()).hexdigest())
    except (KeyError, TypeError):
        return False
