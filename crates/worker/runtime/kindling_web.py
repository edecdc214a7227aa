"""Kindling's web adapters: serve a WSGI (PEP 3333) or ASGI 3.0 app behind the instance
protocol. Imported by the runtime only for web functions, so that plain functions never load it.

An HTTP input (after the request id line) is `HTTP <meta bytes>\\n<meta JSON><raw body>`; the meta
object has `method`, `path` (percent-decoded, one character per byte), `raw_path`, `query`,
`root` (`/run/<name>`), `headers` (`[name, value]` pairs, names lower-case, values one character
per byte) and `server` (`[host, port]`). An input without the `HTTP ` marker is a JSON event (a
plain call): it reaches the app as `POST /` with that body.

`serve` returns `(status, headers, chunks)`: the status as an int, the headers as `[name, value]`
pairs (values one character per byte), the body as a list of bytes objects. ASGI lifespan events
are not sent; an app's startup handlers do not run.
"""

import io
import sys

_CO_COROUTINE = 0x80


def _is_coroutine_function(fn):
    fn = getattr(fn, "__func__", fn)
    code = getattr(fn, "__code__", None)
    return code is not None and bool(code.co_flags & _CO_COROUTINE)


def is_asgi(app):
    """OpenLambda's rule for `app`: ASGI if its `__call__` is a coroutine function."""
    return _is_coroutine_function(app) or _is_coroutine_function(getattr(type(app), "__call__", None))


class _Request:
    __slots__ = ("method", "path", "raw_path", "query", "root", "headers", "server", "body")

    def __init__(self, payload, start, loads):
        if payload[start : start + 5] == b"HTTP ":
            nl = payload.index(b"\n", start)
            end = nl + 1 + int(payload[start + 5 : nl])
            meta = loads(payload[nl + 1 : end].decode("utf-8"))
            self.method = meta["method"]
            self.path = meta["path"]
            self.raw_path = meta["raw_path"]
            self.query = meta["query"]
            self.root = meta["root"]
            self.headers = meta["headers"]
            self.server = meta["server"]
            self.body = payload[end:]
        else:
            self.method = "POST"
            self.path = self.raw_path = "/"
            self.query = ""
            self.root = ""
            self.headers = [["content-type", "application/json"]]
            self.server = ["localhost", 80]
            self.body = payload[start:]


def wsgi(app, loads):
    """A server for the WSGI app `app`."""

    def serve(payload, start):
        req = _Request(payload, start, loads)
        environ = {
            "REQUEST_METHOD": req.method,
            "SCRIPT_NAME": req.root,
            "PATH_INFO": req.path,
            "QUERY_STRING": req.query,
            "SERVER_NAME": req.server[0],
            "SERVER_PORT": str(req.server[1]),
            "SERVER_PROTOCOL": "HTTP/1.1",
            "CONTENT_LENGTH": str(len(req.body)),
            "wsgi.version": (1, 0),
            "wsgi.url_scheme": "http",
            "wsgi.input": io.BytesIO(req.body),
            "wsgi.input_terminated": True,
            "wsgi.errors": sys.stderr,
            "wsgi.multithread": False,
            "wsgi.multiprocess": True,
            "wsgi.run_once": False,
        }
        for name, value in req.headers:
            if name == "content-type":
                environ["CONTENT_TYPE"] = value
            elif name == "content-length":
                continue  # the body's real length is set above
            else:
                key = "HTTP_" + name.upper().replace("-", "_")
                old = environ.get(key)
                environ[key] = value if old is None else old + "," + value
        response = []
        chunks = []

        def write(chunk):
            if type(chunk) is not bytes:
                if not isinstance(chunk, (bytes, bytearray, memoryview)):
                    raise TypeError(f"a WSGI body chunk must be bytes, not {type(chunk).__name__}")
                chunk = bytes(chunk)
            if chunk:
                chunks.append(chunk)

        def start_response(status, headers, exc_info=None):
            if exc_info is not None:
                try:
                    if response:
                        raise exc_info[1].with_traceback(exc_info[2])
                finally:
                    exc_info = None
            elif response:
                raise AssertionError("start_response called twice without exc_info")
            response[:] = [status, headers]
            return write

        result = app(environ, start_response)
        try:
            for chunk in result:
                write(chunk)
        finally:
            close = getattr(result, "close", None)
            if close is not None:
                close()
        if not response:
            raise RuntimeError("the WSGI app returned without calling start_response")
        status, headers = response
        return int(status.split(None, 1)[0]), [[k, v] for k, v in headers], chunks

    return serve


def asgi(app, loads):
    """A server for the ASGI 3.0 app `app` (http scope), on an event loop of the instance."""
    import asyncio

    loop = asyncio.new_event_loop()
    asyncio.set_event_loop(loop)

    def serve(payload, start):
        req = _Request(payload, start, loads)
        scope = {
            "type": "http",
            "asgi": {"version": "3.0", "spec_version": "2.3"},
            "http_version": "1.1",
            "method": req.method,
            "scheme": "http",
            "path": req.path.encode("latin-1").decode("utf-8", "replace"),
            "raw_path": req.raw_path.encode("latin-1"),
            "query_string": req.query.encode("latin-1"),
            "root_path": req.root,
            "headers": [(k.encode("latin-1"), v.encode("latin-1")) for k, v in req.headers],
            "server": (req.server[0], req.server[1]),
            "client": None,
            "state": {},
        }
        response = {}
        chunks = []
        done = loop.create_future()
        sent = [False]

        async def receive():
            if not sent[0]:
                sent[0] = True
                return {"type": "http.request", "body": req.body, "more_body": False}
            # Nothing more comes: wait until the response is complete, then say so.
            await done
            return {"type": "http.disconnect"}

        async def send(message):
            kind = message["type"]
            if kind == "http.response.start":
                if response:
                    raise RuntimeError("http.response.start sent twice")
                response["status"] = int(message["status"])
                response["headers"] = [
                    [bytes(k).decode("latin-1"), bytes(v).decode("latin-1")]
                    for k, v in message.get("headers", ())
                ]
            elif kind == "http.response.body":
                if not response:
                    raise RuntimeError("http.response.body sent before http.response.start")
                body = message.get("body", b"")
                if body:
                    chunks.append(bytes(body))
                if not message.get("more_body", False) and not done.done():
                    done.set_result(None)

        async def call():
            try:
                await app(scope, receive, send)
            finally:
                if not done.done():
                    done.set_result(None)

        loop.run_until_complete(call())
        if not response:
            raise RuntimeError("the ASGI app returned without sending http.response.start")
        return response["status"], response["headers"], chunks

    return serve
