"""Object storage for functions, with the method names of SeBS's Python storage wrapper.

    import storage
    client = storage.storage.get_instance()
    client.upload_stream("bucket", "dir/a.txt", b"data")      # -> "dir/a.txt"
    client.list("bucket", "dir/")                             # -> ["dir/a.txt"]
    client.download_stream("bucket", "dir/a.txt")             # -> b"data"

The worker serves it over a Unix socket bound into the sandbox (no network needed). Every call
is one connection: a frame (4-byte big-endian length, JSON header) and, for an upload, the
object's bytes; the worker answers with a frame and, for a download, the object's bytes.
Bucket names are the function's own: another function's bucket of the same name is another
bucket (unless the operator granted this function that one).

Failures raise `storage.StorageError` (or a subclass) carrying the worker's message:
`NotFoundError` (also a FileNotFoundError), `InvalidNameError` and `TooLargeError` (also
ValueErrors), `ConflictError`, `QuotaExceededError` (the function's or the store's quota),
`PermissionDeniedError` (also a PermissionError: writing a bucket granted read-only).
A function at its limit of open connections is answered "busy"; the call is retried for up to
10 s before `BusyError` is raised.

Imports stay minimal (`_socket`, and the runtime's JSON codec when it is loaded) because this
module is imported at a function's cold start.
"""

import os
import _socket

try:  # inside a sandbox the runtime is loaded: reuse its lean JSON codec
    from kindling_runtime import dumps as _dumps, loads as _loads
except ImportError:  # pragma: no cover - outside Kindling
    from json import dumps as _dumps, loads as _loads

SOCKET = os.environ.get("KINDLING_STORAGE_SOCKET", "/kindling/storage-socket/storage.sock")
_CHUNK = 1 << 20
_BUSY_RETRY_SECS = 10.0


class StorageError(Exception):
    """A storage call failed; the message says why."""


class _Closed(StorageError):
    """The worker closed the connection before the reply was complete."""


class NotFoundError(StorageError, FileNotFoundError):
    """The bucket or object does not exist."""


class InvalidNameError(StorageError, ValueError):
    """A bucket name, key or prefix is not allowed (empty, absolute, `..`, NUL, ...)."""


class TooLargeError(StorageError, ValueError):
    """The object exceeds the worker's per-object size limit."""


class ConflictError(StorageError):
    """The key collides with an existing object or key prefix."""


class QuotaExceededError(StorageError):
    """The upload would take the function's buckets, or the whole store, past its quota;
    nothing of it was stored."""


class PermissionDeniedError(StorageError, PermissionError):
    """The bucket is granted to this function read-only, or the caller is no function."""


class BusyError(StorageError):
    """The function kept its limit of storage connections open for the whole retry time."""


_KINDS = {
    "not_found": NotFoundError,
    "invalid": InvalidNameError,
    "too_large": TooLargeError,
    "conflict": ConflictError,
    "quota": QuotaExceededError,
    "denied": PermissionDeniedError,
    "busy": BusyError,
}


def _connect():
    s = _socket.socket(_socket.AF_UNIX, _socket.SOCK_STREAM)
    try:
        s.connect(SOCKET)
    except OSError as e:
        s.close()
        raise StorageError(
            f"object storage is not available: cannot connect to {SOCKET} ({e.strerror or e})"
        ) from None
    return s


def _recv_exact(s, n):
    """Exactly n bytes, or a StorageError if the worker closes the connection first."""
    data = s.recv(n, _socket.MSG_WAITALL) if n else b""
    if len(data) == n:
        return data
    parts = [data]
    got = len(data)
    while got < n:
        chunk = s.recv(min(n - got, _CHUNK))
        if not chunk:
            raise _Closed("object storage closed the connection before replying in full")
        parts.append(chunk)
        got += len(chunk)
    return b"".join(parts)


def _send_header(s, header):
    raw = _dumps(header).encode()
    s.sendall(len(raw).to_bytes(4, "big") + raw)


def _reply(s):
    """Reads the worker's reply header; raises its error."""
    n = int.from_bytes(_recv_exact(s, 4), "big")
    head = _loads(_recv_exact(s, n).decode())
    if not head.get("ok"):
        raise _KINDS.get(head.get("kind"), StorageError)(head.get("error", "storage call failed"))
    return head


def _start(header, send_body=None):
    """Connects, sends the request (and the body), reads the reply header: the socket and the
    header. A function at its connection limit is answered busy; that call is tried again."""
    delay, waited = 0.005, 0.0
    while True:
        s = _connect()
        try:
            try:
                _send_header(s, header)
                if send_body is not None:
                    send_body(s)
            except (BrokenPipeError, ConnectionResetError) as e:
                # The worker refused before reading it all (busy, too large, bad name, denied):
                # its reply is waiting in our receive queue. The error it reports is raised as
                # is (some are OSErrors too, such as PermissionDeniedError).
                try:
                    return s, _reply(s)
                except _Closed:
                    pass
                except StorageError:
                    raise
                except OSError:
                    pass
                raise StorageError(
                    f"object storage closed the connection during the request ({e.strerror or e})"
                ) from None
            return s, _reply(s)
        except BusyError:
            s.close()
            if waited >= _BUSY_RETRY_SECS:
                raise
            import time

            time.sleep(delay)
            waited += delay
            delay = min(delay * 2, 0.2)
        except BaseException:
            s.close()
            raise


def _call(header, send_body=None):
    """One call whose reply is its header alone."""
    s, head = _start(header, send_body)
    s.close()
    return head


def _check_str(name, value):
    if not isinstance(value, str):
        raise InvalidNameError(f"{name} must be a str, not {type(value).__name__}")


class storage:
    """SeBS's storage interface: one shared client per process (`get_instance()`)."""

    instance = None

    @staticmethod
    def get_instance():
        if storage.instance is None:
            storage.instance = storage()
        return storage.instance

    @staticmethod
    def unique_name(name):
        """SeBS's helper: `name.<random>.ext`. Kindling stores keys as given."""
        base, ext = os.path.splitext(name)
        return f"{base}.{os.urandom(4).hex()}{ext}"

    def upload_stream(self, bucket, key, data):
        """Stores `data` (bytes-like, or a binary file object such as the `io.BytesIO` SeBS's
        benchmarks pass) as `key`; returns the key."""
        _check_str("bucket", bucket)
        _check_str("key", key)
        if hasattr(data, "read"):
            data = data.read()
        view = memoryview(data).cast("B")
        _call({"op": "put", "bucket": bucket, "key": key, "size": view.nbytes},
              lambda s: s.sendall(view))
        return key

    def upload(self, bucket, key, filepath):
        """Stores the file at `filepath` as `key`; returns the key."""
        _check_str("bucket", bucket)
        _check_str("key", key)
        with open(filepath, "rb") as f:
            size = os.fstat(f.fileno()).st_size

            def send(s):
                f.seek(0)
                left = size
                buf = bytearray(min(_CHUNK, size) or 1)
                while left:
                    n = f.readinto(memoryview(buf)[:min(left, len(buf))])
                    if not n:
                        raise StorageError(f"{filepath} shrank while it was being uploaded")
                    s.sendall(memoryview(buf)[:n])
                    left -= n

            _call({"op": "put", "bucket": bucket, "key": key, "size": size}, send)
        return key

    def _get(self, bucket, key):
        _check_str("bucket", bucket)
        _check_str("key", key)
        s, head = _start({"op": "get", "bucket": bucket, "key": key})
        return s, head["size"]

    def download_stream(self, bucket, key):
        """The bytes of object `key`."""
        s, size = self._get(bucket, key)
        try:
            return _recv_exact(s, size)
        finally:
            s.close()

    def download(self, bucket, key, filepath):
        """Writes object `key` to `filepath`."""
        s, size = self._get(bucket, key)
        try:
            with open(filepath, "wb") as f:
                buf = bytearray(min(_CHUNK, size) or 1)
                view = memoryview(buf)
                left = size
                while left:
                    n = s.recv_into(view[:min(left, len(buf))])
                    if not n:
                        raise StorageError("object storage closed the connection mid-download")
                    f.write(view[:n])
                    left -= n
        finally:
            s.close()

    def list(self, bucket, prefix=""):
        """Keys in `bucket` that start with `prefix`, sorted."""
        _check_str("bucket", bucket)
        _check_str("prefix", prefix)
        return _call({"op": "list", "bucket": bucket, "prefix": prefix})["keys"]

    def download_directory(self, bucket, prefix, path):
        """Downloads every object under `prefix` to `<path>/<key>` (SeBS's layout)."""
        for key in self.list(bucket, prefix):
            dest = os.path.join(path, key)
            os.makedirs(os.path.dirname(dest), exist_ok=True)
            self.download(bucket, key, dest)
