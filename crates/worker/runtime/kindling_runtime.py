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

import gc
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


def _flush_output():
    """Pushes what the function printed into its output pipes before the reply goes out, so
    that the worker tags it with the request it was printed for."""
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except BaseException:  # closed or replaced by the function: nothing to push
            pass


def _send(status, ms, body):
    _flush_output()
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
            return _sebs_package().handler, None
        module = __import__("f")
        return module.f, None
    except BaseException:
        return None, _traceback()


# --- SeBS -------------------------------------------------------------------------------
#
# SeBS deploys `function.py` inside a package `function` beside its `storage` and `nosql`
# modules, so benchmark code says `from . import storage`. Here /handler is that package (with
# `function.function` the handler's module); `storage` and `nosql` in it are the runtime's
# clients, the very modules `import storage` gives, imported on first use. /handler stays first
# on sys.path, so `import storage` and `import <own module>` keep working too.

_SEBS_CLIENTS = ("storage", "nosql")


def _sebs_package(handler="/handler"):
    """Makes `handler` (the code directory) the package `function`; returns its module
    `function.function`."""
    package = type(sys)("function")
    package.__path__ = [handler]
    package.__package__ = "function"
    package.__getattr__ = _sebs_client
    sys.modules["function"] = package
    init = os.path.join(handler, "__init__.py")
    if os.path.isfile(init):  # a package that brings its own __init__ runs it, as Python would
        package.__file__ = init
        with open(init, "rb") as source:
            exec(compile(source.read(), init, "exec"), package.__dict__)
    return __import__("function.function", fromlist=["handler"])


def _sebs_client(name):
    """The package `function`'s `storage` and `nosql` (PEP 562 module `__getattr__`)."""
    if name not in _SEBS_CLIENTS:
        raise AttributeError(f"module 'function' has no attribute {name!r}")
    try:
        module = __import__(name)
    except ModuleNotFoundError as exc:
        if exc.name != name:
            raise
        raise ImportError(
            f"this Kindling worker's runtime has no `{name}` client (no {name}.py beside "
            "kindling_runtime.py)", name=f"function.{name}") from None
    sys.modules[f"function.{name}"] = module
    setattr(sys.modules["function"], name, module)
    return module


def _sebs_stamp(ns):
    """A time.time_ns() instant as SeBS's wrappers print one: `strftime('%s.%f')`."""
    return f"{ns // 1_000_000_000}.{ns // 1000 % 1_000_000:06d}"


def _sebs_envelope(fn, event, request_id, is_cold, container_id):
    """Calls a SeBS handler as SeBS's wrappers do and returns their envelope, whose `result` is
    whatever the handler returned (a dict with `result` and `measurement`, as it made them)."""
    if isinstance(event, dict):
        event["request-id"] = request_id
        event["income-timestamp"] = time.time()
    begin = time.time_ns()
    ret = fn(event)
    end = time.time_ns()
    logs = event.get("logs") if isinstance(event, dict) else None
    return {
        "begin": _sebs_stamp(begin),
        "end": _sebs_stamp(end),
        "results_time": 0 if logs is None else _sebs_log(logs, request_id, ret, end - begin),
        "is_cold": is_cold,
        "result": ret,
        "request_id": request_id,
        "container_id": container_id,
        "cold_start_var": os.environ.get("cold_start", ""),
    }


def _sebs_log(logs, request_id, ret, handler_ns):
    """SeBS's `logs` event key: the result and the handler's time (microseconds) go to
    `<request id>.json` in the bucket `logs["bucket"]`; returns that upload's microseconds."""
    start = time.perf_counter_ns()
    record = dumps({"result": ret, "time": handler_ns / 1000})
    _sebs_client("storage").storage.get_instance().upload_stream(
        logs["bucket"], f"{request_id}.json", record.encode())
    return (time.perf_counter_ns() - start) / 1000


def main(forked=False):
    sys.dont_write_bytecode = True
    kind = os.environ.get("KINDLING_FORMAT", "ol")
    container_id = os.environ.get("KINDLING_SANDBOX", "")
    inherited = set(sys.modules) if forked else None
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
        if inherited is not None:
            # Once, before the first reply: what this forked instance imported beyond its
            # zygote (the worker may have the zygote import the packages' part of it).
            _send_frame(b"modules\n" + dumps(sorted(set(sys.modules) - inherited)).encode())
            inherited = None
        _send(status, (time.perf_counter() - start) * 1000.0, body)


# --- zygotes ----------------------------------------------------------------------------
#
# A zygote is this runtime started as the root of a user namespace of its own (an unprivileged
# user on the host) in a sandbox of its own, with only the capabilities forking needs (over its
# own namespaces), no_new_privs and a seccomp filter, all set before this code runs; it imports
# a set of packages. On request it forks: the child joins the target sandbox, which the worker
# made within the zygote's user and pid namespaces (its cgroup through descriptors the worker
# opened, then its namespaces through namespace descriptors), drops every privilege exactly as a
# cold instance does (bounding set, uid/gid, no_new_privs, the same seccomp filter on top of the
# zygote's), sends a `ready` frame and waits for one frame with the environment of the function
# it becomes (the worker attaches the function's code first), then serves it. The worker forks
# such children ahead of need ("seeds"). Requests are frames like the invocation protocol,
# carrying descriptors (SCM_RIGHTS): the child's socket, the target's pid, mnt, ipc, uts and net
# namespaces, then the cgroup.procs files. Child zygotes live in their parent's user namespace;
# each sees only its own pid namespace's processes and holds descriptors of no other sandbox
# (a forked child closes everything it inherited), so it can enter no sandbox but its own.

CLONE_NEWNS = 0x00020000
CLONE_NEWUTS = 0x04000000
CLONE_NEWIPC = 0x08000000
CLONE_NEWNET = 0x40000000
CLONE_NEWPID = 0x20000000
PR_CAPBSET_DROP = 24
PR_SET_NO_NEW_PRIVS = 38
PR_SET_SECCOMP = 22
SECCOMP_MODE_FILTER = 2


def _zygote_setup():
    """Imports what forking needs; returns (libc, socket module, resource module)."""
    import ctypes
    import resource
    import signal
    import socket

    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl.argtypes = [ctypes.c_int, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong]
    libc.setns.argtypes = [ctypes.c_int, ctypes.c_int]
    signal.signal(signal.SIGCHLD, signal.SIG_IGN)  # the kernel reaps forked children
    return libc, socket, resource


def _check(libc, ret, what):
    if ret != 0:
        import ctypes

        err = ctypes.get_errno()
        raise OSError(err, f"{what}: {os.strerror(err)}")


def _zrecv(sock, socket):
    """One request frame and the descriptors sent with it; None at end of stream."""
    fds = []
    data = b""
    need = 4
    while len(data) < need:
        msg, anc, _flags, _addr = sock.recvmsg(65536, socket.CMSG_SPACE(16 * 4))
        for level, kind, payload in anc:
            if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
                n = len(payload) // 4
                fds.extend(int.from_bytes(payload[i * 4 : i * 4 + 4], sys.byteorder) for i in range(n))
        if not msg:
            return None
        data += msg
        if len(data) >= 4:
            need = 4 + int.from_bytes(data[:4], "big")
    import json

    return json.loads(data[4:need]), fds


def _zsend(sock, obj):
    import json

    payload = json.dumps(obj).encode()
    sock.sendall(len(payload).to_bytes(4, "big") + payload)


def _import_all(modules):
    failed = []
    for name in modules:
        try:
            __import__(name)
        except BaseException as exc:  # a module that cannot preload is simply not shared
            failed.append(f"{name}: {type(exc).__name__}: {exc}")
    return failed


def _import_submodules(names):
    """Imports the submodules of this zygote's packages that its functions import. Names from
    `from a.b import c` may be attributes rather than modules (c a class): those, like any
    submodule that fails, are simply not preloaded."""
    for name in names:
        try:
            __import__(name)
        except BaseException:
            pass


def _enter(libc, fds):
    """In a forked child: join the target sandbox's cgroup and namespaces."""
    sock, _pidns, mnt, ipc, uts, net, procs = fds[0], fds[1], fds[2], fds[3], fds[4], fds[5], fds[6:]
    for fd in procs:
        os.write(fd, b"0")
    for fd, kind in ((mnt, CLONE_NEWNS), (ipc, CLONE_NEWIPC), (uts, CLONE_NEWUTS), (net, CLONE_NEWNET)):
        _check(libc, libc.setns(fd, kind), "setns")
    os.dup2(sock, _FD)
    os.closerange(_FD + 1, 1 << 20)


def _drop_privileges(libc, resource, req):
    import ctypes
    import signal

    signal.signal(signal.SIGCHLD, signal.SIG_DFL)
    os.chdir("/handler")
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
    nofile = int(req["nofile"])
    resource.setrlimit(resource.RLIMIT_NOFILE, (nofile, nofile))
    for cap in range(64):
        if libc.prctl(PR_CAPBSET_DROP, cap, 0, 0, 0) != 0:
            if ctypes.get_errno() == 22:  # EINVAL: past the last capability
                break
            _check(libc, -1, "dropping capability")
    os.setgroups([])
    gid, uid = int(req["gid"]), int(req["uid"])
    os.setresgid(gid, gid, gid)
    os.setresuid(uid, uid, uid)
    _check(libc, libc.prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0), "no_new_privs")
    prog = _seccomp_program(req["seccomp"])
    _check(libc, libc.prctl(PR_SET_SECCOMP, SECCOMP_MODE_FILTER, prog, 0, 0), "seccomp")


_SECCOMP = {}


def _seccomp_program(code_hex):
    """Address of a `struct sock_fprog` for the filter, built once per zygote (before forking,
    so children find it ready and touch as little memory as possible)."""
    got = _SECCOMP.get(code_hex)
    if got is None:
        import ctypes

        class SockFprog(ctypes.Structure):
            _fields_ = [("len", ctypes.c_ushort), ("filter", ctypes.c_void_p)]

        code = bytes.fromhex(code_hex)
        buf = ctypes.create_string_buffer(code, len(code))
        prog = SockFprog(len(code) // 8, ctypes.addressof(buf))
        got = _SECCOMP[code_hex] = (ctypes.addressof(prog), buf, prog)
    return got[0]


def _child(libc, socket, resource, zsock, req, fds):
    """The forked child: becomes an instance or a child zygote. Never returns."""
    zsock.detach()  # descriptor 3 is about to become the child's own socket
    try:
        _enter(libc, fds)
        if req["kind"] == "zygote":
            os.environ["KINDLING_PATH"] = ":".join(req.get("paths", []))
            os.environ["KINDLING_SITE"] = ":".join(req.get("sites", []))
            _package_path_zygote()
            failed = _import_all(req.get("modules", []))
            _import_submodules(req.get("submodules", []))
            _zygote_loop(libc, socket, resource, failed)
            os._exit(0)
        _drop_privileges(libc, resource, req)
        os.environ.clear()
        _warm_up()
        _write_ahead(req.get("write_ahead"))
    except BaseException as exc:
        try:
            os.write(2, f"kindling: forked instance setup failed: {exc}\n".encode())
        finally:
            os._exit(127)
    try:
        # Entered and unprivileged: say so, then wait for the function this child becomes (the
        # worker attaches its code at /handler first). A child may wait here for a long time,
        # forked ahead of need.
        _send_frame(b"ready")
        assignment = _recv_assignment(socket)
        if assignment is not None:
            os.environ.update(loads(assignment.decode("utf-8", "surrogateescape")))
            main(forked=True)
    finally:
        os._exit(0)


def _recv_assignment(socket):
    """The assignment frame (the function's environment as JSON). The write ends of the
    function's output pipes come with its first bytes (SCM_RIGHTS) and become standard output
    and error: from here on the child writes to its function's log, never to the zygote's."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM, 0, _FD)
    head, fds = b"", []
    try:
        while len(head) < 4:
            data, ancillary, _flags, _addr = sock.recvmsg(4 - len(head), socket.CMSG_SPACE(2 * 4))
            for level, kind, payload in ancillary:
                if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
                    fds.extend(int.from_bytes(payload[i : i + 4], sys.byteorder)
                               for i in range(0, len(payload) - 3, 4))
            if not data:
                return None
            head += data
    finally:
        sock.detach()  # descriptor 3 stays the instance's socket
    if len(fds) == 2:
        os.dup2(fds[0], 1)
        os.dup2(fds[1], 2)
    for fd in fds:
        os.close(fd)
    return _read_exact(int.from_bytes(head, "big"))


def _write_ahead(runs):
    """Writes one byte of each page of `runs` ([address, pages] pairs: what earlier instances
    of this zygote wrote on their first request) back to itself, so that the copies on write
    happen now rather than during the first request. Only this process's private writable
    mappings are touched; the process is single-threaded here, so rewriting a byte with its own
    value changes nothing but who owns the page."""
    if not runs:
        return
    import bisect
    import ctypes

    starts, ends = [], []
    with open("/proc/self/maps") as maps:
        for line in maps:
            fields = line.split(None, 2)
            if fields[1] == "rw-p":
                lo, _, hi = fields[0].partition("-")
                starts.append(int(lo, 16))
                ends.append(int(hi, 16))
    byte = ctypes.c_char
    for first, count in runs:
        for address in range(first, first + count * 4096, 4096):
            i = bisect.bisect_right(starts, address) - 1
            if i >= 0 and address < ends[i]:
                cell = byte.from_address(address)
                cell.value = cell.value


def _send_frame(payload):
    os.write(_FD, len(payload).to_bytes(4, "big") + payload)


def _warm_up():
    """Runs, once, what every invocation runs (JSON both ways, clocks, formatting), so that a
    child forked ahead of need has its own copies of those pages before its first request."""
    start = time.perf_counter()
    event = loads('{"request-id": "x", "n": [1, 2.5, "s", null, true, {"k": false}]}')
    dumps({"begin": f"{time.time():.6f}", "result": {"output": event}})
    f"ok {(time.perf_counter() - start) * 1000.0:.3f}\n".encode() + "{}".encode("utf-8", "surrogateescape")


def _package_path_zygote():
    paths = [p for p in os.environ.get("KINDLING_PATH", "").split(":") if p and p not in sys.path]
    sites = set(p for p in os.environ.get("KINDLING_SITE", "").split(":") if p)
    sys.path.extend(paths)
    if sites:
        import site

        for p in paths:
            if p in sites:
                site.addsitedir(p)


def _zygote_loop(libc, socket, resource, failed):
    zsock = socket.socket(fileno=_FD)
    own_pidns = os.open("/proc/self/ns/pid", os.O_RDONLY | os.O_CLOEXEC)
    _zsend(zsock, {"ok": True, "ready": True, "pid": os.getpid(), "failed": failed})
    while True:
        got = _zrecv(zsock, socket)
        if got is None:
            os._exit(0)
        req, fds = got
        try:
            if req.get("op") == "ping":
                _zsend(zsock, {"ok": True})
                continue
            if req.get("op") == "import":
                # Submodules of this zygote's packages that a forked instance imported.
                _import_submodules(req.get("modules", []))
                _zsend(zsock, {"ok": True})
                continue
            if req.get("op") != "fork" or len(fds) < 7:
                raise ValueError(f"bad request {req.get('op')!r} with {len(fds)} descriptors")
            # Children are born in the target's pid namespace; then we go back to ours.
            _check(libc, libc.setns(fds[1], CLONE_NEWPID), "setns pid")
            # Objects the zygote already holds move to the permanent generation, so the
            # child's garbage collector never walks (and copies) the zygote's pages.
            gc.freeze()
            if req["kind"] == "instance":
                _seccomp_program(req["seccomp"])
            pid = os.fork()
            if pid == 0:
                gc.enable()
                _child(libc, socket, resource, zsock, req, fds)
            _check(libc, libc.setns(own_pidns, CLONE_NEWPID), "setns back")
            _zsend(zsock, {"ok": True, "pid": pid})
        except BaseException as exc:
            _zsend(zsock, {"ok": False, "error": f"{type(exc).__name__}: {exc}"})
        finally:
            for fd in fds:
                try:
                    os.close(fd)
                except OSError:
                    pass


def zygote_main():
    """Entry point of a root zygote: import the packages, then serve fork requests."""
    sys.dont_write_bytecode = True
    gc.disable()
    libc, socket, resource = _zygote_setup()
    _package_path_zygote()
    modules = [m for m in os.environ.get("KINDLING_PRELOAD", "").split(",") if m]
    failed = _import_all(modules)
    _zygote_loop(libc, socket, resource, failed)


if __name__ == "__main__":
    main()
