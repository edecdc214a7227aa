"""Kindling's in-sandbox runtime: loads one function and serves its invocations.

The worker starts this module in a fresh interpreter (cold start) and talks to it over the
stream socket on descriptor 3. Every message is a frame: a 4-byte big-endian length and a
payload. A request payload is `<request id>\\n<event as JSON>`; a response payload is
`<status> <handler ms>\\n<body>`, where status is `ok` (body: the JSON response) or `error`
(body: the traceback text).

Start-up latency is the point of Kindling, so this module imports as little as it can: JSON goes
through the C accelerator `_json` directly (the `json` package drags in `re` and `enum`, several
milliseconds), and `traceback` is only imported when a handler fails.
"""

import os
import sys
import time

_FD = 3

try:
    import _json

    class _Ctx:
        strict = True
        object_hook = None
        object_pairs_hook = None
        parse_float = float
        parse_int = int
        parse_constant = None
        memo = None

    def _constant(name):
        return {"NaN": float("nan"), "Infinity": float("inf"), "-Infinity": float("-inf")}[name]

    _Ctx.parse_constant = staticmethod(_constant)
    _scan = _json.make_scanner(_Ctx())

    def _default(obj):
        raise TypeError(f"Object of type {type(obj).__name__} is not JSON serializable")

    _enc = _json.make_encoder(
        None, _default, _json.encode_basestring_ascii, None, ": ", ", ", False, False, True
    )

    def loads(text):
        i = 0
        n = len(text)
        while i < n and text[i] in " \t\r\n":
            i += 1
        if i == n:
            return None
        obj, _end = _scan(text, i)
        return obj

    def dumps(obj):
        return "".join(_enc(obj, 0))

except (ImportError, AttributeError, TypeError):  # pragma: no cover - interpreters without _json
    import json

    loads = json.loads

    def dumps(obj):
        return json.dumps(obj)


def _read_exact(n):
    chunks = []
    while n:
        b = os.read(_FD, n)
        if not b:
            return None
        chunks.append(b)
        n -= len(b)
    return b"".join(chunks)


def _recv():
    head = _read_exact(4)
    if head is None:
        return None
    return _read_exact(int.from_bytes(head, "big"))


def _send(status, ms, body):
    payload = f"{status} {ms:.3f}\n".encode() + body.encode("utf-8", "surrogateescape")
    data = len(payload).to_bytes(4, "big") + payload
    while data:
        n = os.write(_FD, data)
        data = data[n:]


def _traceback():
    import traceback

    return traceback.format_exc()


def _package_path():
    """Puts the function's package closure (from the store) on sys.path after /handler."""
    paths = [p for p in os.environ.get("KINDLING_PATH", "").split(":") if p]
    sites = set(p for p in os.environ.get("KINDLING_SITE", "").split(":") if p)
    sys.path[1:1] = paths
    if sites:
        import site

        for p in paths:
            if p in sites:
                site.addsitedir(p)


def _load(kind):
    """Imports the function's module; returns (callable, None) or (None, traceback)."""
    sys.path.insert(0, "/handler")
    try:
        _package_path()
        if kind == "sebs":
            module = __import__("function")
            return module.handler, None
        module = __import__("f")
        return module.f, None
    except BaseException:
        return None, _traceback()


def _sebs_envelope(fn, event, request_id, is_cold, container_id):
    if isinstance(event, dict):
        event["request-id"] = request_id
        event["income-timestamp"] = time.time()
    begin = time.time()
    ret = fn(event)
    end = time.time()
    if isinstance(ret, dict) and "result" in ret:
        result = {"output": ret["result"]}
        if "measurement" in ret:
            result["measurement"] = ret["measurement"]
    else:
        result = {"output": ret}
    return {
        "begin": f"{begin:.6f}",
        "end": f"{end:.6f}",
        "results_time": 0,
        "is_cold": is_cold,
        "result": result,
        "request_id": request_id,
        "container_id": container_id,
    }


def main():
    sys.dont_write_bytecode = True
    kind = os.environ.get("KINDLING_FORMAT", "ol")
    container_id = os.environ.get("KINDLING_SANDBOX", "")
    fn, load_error = _load(kind)
    is_cold = True
    while True:
        payload = _recv()
        if payload is None:
            return
        request_id, _, event_text = payload.decode("utf-8", "surrogateescape").partition("\n")
        if fn is None:
            _send("error", 0.0, load_error)
            continue
        start = time.perf_counter()
        try:
            event = loads(event_text)
            if kind == "sebs":
                body = dumps(_sebs_envelope(fn, event, request_id, is_cold, container_id))
            else:
                body = dumps(fn(event))
            status = "ok"
        except BaseException as exc:
            if isinstance(exc, SystemExit):
                status, body = "error", f"handler called exit({exc.code})\n"
            else:
                status, body = "error", _traceback()
        is_cold = False
        _send(status, (time.perf_counter() - start) * 1000.0, body)


if __name__ == "__main__":
    main()
