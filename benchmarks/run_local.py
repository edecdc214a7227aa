#!/usr/bin/env python3
"""Deploy the benchmarks to a running Kindling worker, invoke each once, check the output.

    python3 benchmarks/run_local.py                      # every benchmark, size `test`
    python3 benchmarks/run_local.py --size small matmul pyaes
    python3 benchmarks/run_local.py --storage-dir /var/lib/kindling/storage compression

For each benchmark: pack python/ (plus config.json) as a .tar.gz, POST it to
/registry/<prefix><name>?progress and wait for the final JSON line, build the event with
input.py's generate_input(size), POST it to /run/<prefix><name>, take `result` from the SeBS
envelope (the handler's own dict) and run input.py's validate(event, result), which reads
`result["result"]` as SeBS's validators do. Each benchmark is reported as
`ok`, `incorrect` (validate() said no), `error` (deploy or invocation failed) or `skipped`.
The exit code is 0 only if every benchmark that ran is `ok`.

Deploys need the worker's admin token: $KINDLING_TOKEN, else <root>/token (--root, or
$KINDLING_ROOT, default /var/lib/kindling), which only root (or the worker's admin_group) reads.

Benchmarks that use object storage (input.py has storage_inputs) are skipped unless
--storage-dir names the directory of the worker's storage backend, where this script then
writes their input objects into the function's own buckets: <dir>/<function>/<bucket>/<key>
(each function sees only its own buckets).

Standard library only.
"""

import argparse
import http.client
import importlib.util
import io
import json
import os
import sys
import tarfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
SIZES = ("test", "small", "large")


def discover():
    return sorted(d for d in os.listdir(HERE)
                  if not d.startswith(("_", "."))
                  and os.path.isfile(os.path.join(HERE, d, "input.py"))
                  and os.path.isfile(os.path.join(HERE, d, "python", "function.py")))


def load_input(name):
    spec = importlib.util.spec_from_file_location(f"kindling_bench_input_{name}",
                                                  os.path.join(HERE, name, "input.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def pack(name):
    """The function archive: python/ at the root, plus the benchmark's config.json."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        src = os.path.join(HERE, name, "python")
        for root, dirs, files in os.walk(src):
            dirs[:] = sorted(d for d in dirs if d != "__pycache__")
            for f in sorted(files):
                if f.endswith(".pyc"):
                    continue
                path = os.path.join(root, f)
                tar.add(path, arcname=os.path.relpath(path, src), recursive=False)
        config = os.path.join(HERE, name, "config.json")
        if os.path.isfile(config):
            tar.add(config, arcname="config.json", recursive=False)
    return buf.getvalue()


class WorkerError(Exception):
    pass


class WorkerDown(WorkerError):
    """Nothing listens on the address: the whole run stops with one clear message."""


def find_token(root):
    token = os.environ.get("KINDLING_TOKEN", "").strip()
    if token:
        return token
    try:
        with open(os.path.join(root, "token")) as fh:
            return fh.read().strip()
    except OSError:
        return None


class Worker:
    def __init__(self, addr, timeout, token=None):
        host, _, port = addr.rpartition(":")
        self.host, self.port, self.timeout = host or "127.0.0.1", int(port), timeout
        self.addr = addr
        self.auth = {"Authorization": f"Bearer {token}"} if token else {}

    def down_message(self):
        return (f"no Kindling worker is listening on {self.addr}: start one with "
                f"`kindling up` (or pass --addr HOST:PORT)")

    def request(self, method, path, body=None, headers=None):
        conn = http.client.HTTPConnection(self.host, self.port, timeout=self.timeout)
        try:
            conn.request(method, path, body=body, headers={**self.auth, **(headers or {})})
            resp = conn.getresponse()
            return resp.status, resp.read()
        except ConnectionRefusedError:
            raise WorkerDown(self.down_message()) from None
        except OSError as e:
            raise WorkerError(f"worker at {self.addr}: {e}") from None
        finally:
            conn.close()

    def deploy(self, fname, archive, verbose):
        conn = http.client.HTTPConnection(self.host, self.port, timeout=self.timeout)
        try:
            conn.request("POST", f"/registry/{fname}?progress", body=archive,
                         headers={**self.auth, "Content-Type": "application/gzip",
                                  "Accept": "application/x-ndjson"})
            resp = conn.getresponse()
            if resp.status != 200 or "ndjson" not in (resp.getheader("Content-Type") or ""):
                body = resp.read().decode(errors="replace").strip()
                raise WorkerError(f"deploy: HTTP {resp.status}: {body[:2000]}")
            final = None
            for line in resp:
                line = line.strip()
                if not line:
                    continue
                msg = json.loads(line)
                if "progress" in msg and "status" not in msg:
                    if verbose:
                        print(f"    {msg['progress']}", file=sys.stderr)
                    continue
                final = msg
            if final is None:
                raise WorkerError("deploy: the worker closed the stream without a result")
            if final.get("status", 200) >= 300 or "error" in final:
                raise WorkerError(f"deploy: {final.get('error', final)}")
            return final
        except ConnectionRefusedError:
            raise WorkerDown(self.down_message()) from None
        except OSError as e:
            raise WorkerError(f"deploy: {e}") from None
        finally:
            conn.close()


def put_storage(storage_dir, function, inputs):
    for bucket, objects in inputs.items():
        for key, data in objects.items():
            path = os.path.join(storage_dir, function, bucket, key)
            os.makedirs(os.path.dirname(path), exist_ok=True)
            with open(path, "wb") as f:
                f.write(data)


def run_one(worker, name, args):
    """Returns (status, detail dict)."""
    inp = load_input(name)
    fname = args.prefix + name
    if hasattr(inp, "storage_inputs"):
        if not args.storage_dir:
            return "skipped", {"reason": "needs object storage (pass --storage-dir)"}
        put_storage(args.storage_dir, fname, inp.storage_inputs(args.size))
    event = inp.generate_input(args.size)
    if not args.no_deploy:
        t = time.monotonic()
        try:
            worker.deploy(fname, pack(name), args.verbose)
        except WorkerDown:
            raise
        except WorkerError as e:
            return "error", {"reason": str(e)}
        deploy_s = time.monotonic() - t
    else:
        deploy_s = 0.0
    body = json.dumps(event).encode()
    headers = {"Content-Type": "application/json"}
    if args.cold:
        headers["X-Kindling-Start"] = "cold"
    t = time.monotonic()
    try:
        status, raw = worker.request("POST", f"/run/{fname}", body, headers)
    except WorkerDown:
        raise
    except WorkerError as e:
        return "error", {"reason": str(e)}
    client_s = time.monotonic() - t
    detail = {"deploy_s": round(deploy_s, 2), "client_ms": round(client_s * 1000, 1)}
    if status != 200:
        text = raw.decode(errors="replace").strip()
        detail["reason"] = f"invoke: HTTP {status}: {text[-3000:]}"
        return "error", detail
    try:
        envelope = json.loads(raw)
        result = envelope["result"]  # what the handler returned
    except (ValueError, KeyError, TypeError):
        detail["reason"] = f"invoke: not a SeBS envelope: {raw[:500]!r}"
        return "error", detail
    detail["is_cold"] = envelope.get("is_cold")
    if "begin" in envelope and "end" in envelope:
        try:
            detail["benchmark_ms"] = round((float(envelope["end"]) - float(envelope["begin"]))
                                           * 1000, 1)
        except (TypeError, ValueError):
            pass
    measurement = result.get("measurement") if isinstance(result, dict) else None
    compute = (measurement or {}).get("compute_time")
    if isinstance(compute, (int, float)):
        detail["compute_ms"] = round(compute / 1000, 1)
    try:
        ok = bool(inp.validate(event, result))
    except Exception as e:  # a validator bug must not pass as success
        detail["reason"] = f"validate() raised {type(e).__name__}: {e}"
        return "incorrect", detail
    if not ok:
        detail["output"] = json.dumps(result)[:800]
    return ("ok" if ok else "incorrect"), detail


def main():
    all_names = discover()
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("benchmarks", nargs="*", metavar="BENCHMARK",
                    help=f"benchmarks to run (default: all): {', '.join(all_names)}")
    ap.add_argument("--addr", default=os.environ.get("KINDLING_ADDR", "127.0.0.1:5000"),
                    help="worker API address (default: $KINDLING_ADDR or 127.0.0.1:5000)")
    ap.add_argument("--root", default=os.environ.get("KINDLING_ROOT", "/var/lib/kindling"),
                    help="worker root, where its admin token is (default: $KINDLING_ROOT or "
                    "/var/lib/kindling)")
    ap.add_argument("--size", default="test", help="input size: test, small or large")
    ap.add_argument("--prefix", default="bench-",
                    help="prefix of the deployed function names (default: bench-)")
    ap.add_argument("--storage-dir", help="directory of the worker's storage backend; "
                    "without it, benchmarks that need object storage are skipped")
    ap.add_argument("--cold", action="store_true", help="ask for a cold start (X-Kindling-Start)")
    ap.add_argument("--no-deploy", action="store_true", help="invoke what is already deployed")
    ap.add_argument("--timeout", type=float, default=900, help="per-request timeout, seconds")
    ap.add_argument("--json", action="store_true", help="print one JSON line per benchmark")
    ap.add_argument("-v", "--verbose", action="store_true", help="show deploy progress")
    args = ap.parse_args()

    if args.size not in SIZES:
        ap.error(f"unknown size {args.size!r}; valid sizes: {', '.join(SIZES)}")
    unknown = [b for b in args.benchmarks if b not in all_names]
    if unknown:
        ap.error(f"unknown benchmark(s): {', '.join(unknown)}; valid: {', '.join(all_names)}")
    names = args.benchmarks or all_names

    worker = Worker(args.addr, args.timeout, find_token(args.root))
    try:
        status, _ = worker.request("GET", "/status")
    except WorkerError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    if status != 200:
        print(f"error: {args.addr} answered /status with HTTP {status}; is it a Kindling worker?",
              file=sys.stderr)
        return 2

    counts = {}
    for name in names:
        try:
            status, detail = run_one(worker, name, args)
        except WorkerDown as e:
            print(f"error: {e}", file=sys.stderr)
            return 2
        counts[status] = counts.get(status, 0) + 1
        if args.json:
            print(json.dumps({"benchmark": name, "size": args.size, "status": status, **detail}),
                  flush=True)
            continue
        timing = " ".join(f"{k}={detail[k]}" for k in
                          ("deploy_s", "client_ms", "benchmark_ms", "compute_ms", "is_cold")
                          if k in detail)
        print(f"{name:16s} {status:9s} {timing}", flush=True)
        for k in ("reason", "output"):
            if k in detail:
                print(f"    {k}: {detail[k]}", flush=True)
    bad = sum(v for k, v in counts.items() if k not in ("ok", "skipped"))
    summary = ", ".join(f"{counts.get(k, 0)} {k}" for k in ("ok", "incorrect", "error", "skipped"))
    print(f"size {args.size}: {summary}", file=sys.stderr if args.json else sys.stdout)
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
