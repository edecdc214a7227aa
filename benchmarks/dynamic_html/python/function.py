"""dynamic_html: render an HTML page of seeded random numbers with Jinja2 (SeBS's dynamic-html)."""

import hashlib
import os
import random
import time

from jinja2 import Environment, FileSystemLoader

TEMPLATES = os.path.join(os.path.dirname(os.path.abspath(__file__)), "templates")
ENV = Environment(loader=FileSystemLoader(TEMPLATES), autoescape=True)


def handler(event):
    username = event["username"]
    size = int(event["random_len"])
    t0 = time.perf_counter()
    rng = random.Random(int(event["seed"]))
    numbers = [rng.randrange(1_000_000) for _ in range(size)]
    template = ENV.get_template("template.html")
    html = template.render(username=username, cur_time=event["cur_time"], random_numbers=numbers)
    t1 = time.perf_counter()
    result = {"length": len(html), "sha256": hashlib.sha256(html.encode()).hexdigest()}
    if event.get("return_html"):
        result["html"] = html
    return {"result": result, "measurement": {"compute_time": (t1 - t0) * 1e6}}
