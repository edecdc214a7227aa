"""chameleon: render a big HTML table with a Chameleon page template (FunctionBench)."""

import hashlib
import time

from chameleon import PageTemplate

TEMPLATE = (
    '<table xmlns:tal="http://xml.zope.org/namespaces/tal">'
    '<tr tal:repeat="row rows">'
    '<td tal:repeat="cell row" tal:content="cell">cell</td>'
    "</tr></table>"
)

WORDS = ("alpha", "bravo", "charlie", "delta", "echo", "foxtrot", "golf")


def cell(r, c, cols):
    """The text of cell (r, c); some cells need escaping."""
    v = r * cols + c
    text = f"{WORDS[v % len(WORDS)]}-{v}"
    if v % 7 == 3:
        text += " & <b>"
    return text


def handler(event):
    rows, cols = int(event["rows"]), int(event["cols"])
    t0 = time.perf_counter()
    data = [[cell(r, c, cols) for c in range(cols)] for r in range(rows)]
    template = PageTemplate(TEMPLATE)
    t1 = time.perf_counter()
    html = template(rows=data)
    t2 = time.perf_counter()
    return {
        "result": {
            "length": len(html),
            "sha256": hashlib.sha256(html.encode()).hexdigest(),
            "cells": html.count("<td>"),
        },
        "measurement": {"prepare_time": (t1 - t0) * 1e6, "compute_time": (t2 - t1) * 1e6},
    }
