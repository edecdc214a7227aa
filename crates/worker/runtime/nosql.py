"""NoSQL for functions, with the interface of SeBS's Python `nosql` wrapper.

    import nosql                     # SeBS-format code: from . import nosql
    client = nosql.nosql.get_instance()
    client.insert("shopping_cart", ("cart_id", "c1"), ("product_id", "p1"), {"price": 2.5})
    client.get("shopping_cart", ("cart_id", "c1"), ("product_id", "p1"))
    #   -> {"cart_id": "c1", "product_id": "p1", "price": 2.5}
    client.update("shopping_cart", ("cart_id", "c1"), ("product_id", "p1"), {"quantity": 2})
    client.query("shopping_cart", ("cart_id", "c1"), "product_id")      # -> [item, ...]
    client.delete("shopping_cart", ("cart_id", "c1"), ("product_id", "p1"))

Tables are the function's own (another function's table of the same name is another table) and
are declared with their primary and secondary key names in the function's config (`"nosql"` in
config.json, `nosql:` in ol.yaml) or by the operator. An item is a dict of JSON values; key
values are str or int (1 and "1" are different keys). Numbers come back as they went in (int
stays int, float stays float); tuples come back as lists; dict keys must be str.

The worker serves the calls over a Unix socket bound into the sandbox (no network needed), one
connection per call: a frame (4-byte big-endian length, JSON request) and a frame back.
Connecting is left to the first call, so `get_instance()` at import time costs nothing.

Failures raise `nosql.NoSQLError` or a subclass carrying the worker's message:
`ItemNotFoundError` (also a KeyError, as SeBS's AWS wrapper raises for a missing item) from
`get` and `update`; `NoSuchTableError` (also a LookupError) naming the tables the function has;
`InvalidRequestError` (also a ValueError) for bad table names, key names that are not the
table's, key values that are neither str nor int, data that is not a dict of JSON values;
`TooLargeError`, `QuotaExceededError`, `ConflictError`; `PermissionDeniedError` (also a
PermissionError) when the caller is not a function's instance. A function at its limit of open
connections is answered "busy"; the call is retried for up to 10 s before `BusyError`.
"""

import os
import _socket

try:  # inside a sandbox the runtime is loaded: reuse its lean JSON codec
    from kindling_runtime import dumps as _dumps, loads as _loads
except ImportError:  # pragma: no cover - outside Kindling
    from json import dumps as _dumps, loads as _loads

SOCKET = os.environ.get("KINDLING_NOSQL_SOCKET", "/kindling/nosql-socket/nosql.sock")
_BUSY_RETRY_SECS = 10.0
_INT_MIN, _INT_MAX = -(1 << 63), (1 << 64) - 1


class NoSQLError(Exception):
    """A NoSQL call failed; the message says why."""


class ItemNotFoundError(NoSQLError, KeyError):
    """No item has the given keys."""

    def __str__(self):  # KeyError would quote the message
        return str(self.args[0]) if self.args else ""


class NoSuchTableError(NoSQLError, LookupError):
    """The table is not declared for this function."""


class InvalidRequestError(NoSQLError, ValueError):
    """A bad table name, key or item."""


class TooLargeError(NoSQLError, ValueError):
    """The item (or a query's reply) exceeds the worker's size limit."""


class QuotaExceededError(NoSQLError):
    """The call would take the function's items past their limit; nothing of it was stored."""


class ConflictError(NoSQLError):
    """The table is declared with other keys."""


class PermissionDeniedError(NoSQLError, PermissionError):
    """The caller is not a function's instance."""


class BusyError(NoSQLError):
    """The function kept its limit of NoSQL connections open for the whole retry time."""


_KINDS = {
    "not_found": ItemNotFoundError,
    "no_such_table": NoSuchTableError,
    "invalid": InvalidRequestError,
    "too_large": TooLargeError,
    "quota": QuotaExceededError,
    "conflict": ConflictError,
    "denied": PermissionDeniedError,
    "busy": BusyError,
}


def _check_value(value, where):
    """Refuses what JSON would not bring back as it was: non-str dict keys, NaN and infinities,
    integers beyond 64 bits, objects that are not JSON values."""
    stack = [(value, where)]
    while stack:
        v, at = stack.pop()
        if v is None or isinstance(v, (str, bool)):
            continue
        if isinstance(v, int):
            if not _INT_MIN <= v <= _INT_MAX:
                raise InvalidRequestError(f"{at}: integer {v} does not fit in 64 bits")
        elif isinstance(v, float):
            if v != v or v in (float("inf"), float("-inf")):
                raise InvalidRequestError(f"{at}: {v} is not a JSON number")
        elif isinstance(v, dict):
            for k, item in v.items():
                if not isinstance(k, str):
                    raise InvalidRequestError(
                        f"{at}: keys of a dict must be str, not {type(k).__name__}"
                    )
                stack.append((item, f"{at}[{k!r}]"))
        elif isinstance(v, (list, tuple)):
            stack.extend((item, f"{at}[{i}]") for i, item in enumerate(v))
        else:
            raise InvalidRequestError(
                f"{at}: {type(v).__name__} is not a JSON value"
            )


def _check_table(table_name):
    if not isinstance(table_name, str):
        raise InvalidRequestError(f"table name must be a str, not {type(table_name).__name__}")


def _key(key, which):
    """A `(name, value)` pair as sent: name str, value str or int."""
    if not isinstance(key, (tuple, list)) or len(key) != 2:
        raise InvalidRequestError(f"{which} key must be a (name, value) pair, not {key!r:.80}")
    name, value = key
    if not isinstance(name, str):
        raise InvalidRequestError(f"{which} key name must be a str, not {type(name).__name__}")
    if isinstance(value, bool) or not isinstance(value, (str, int)):
        raise InvalidRequestError(
            f"value of key {name!r} must be a str or an int, not {type(value).__name__}"
        )
    _check_value(value, f"key {name!r}")
    return [name, value]


def _data(data, what):
    if not isinstance(data, dict):
        raise InvalidRequestError(f"{what} must be a dict, not {type(data).__name__}")
    _check_value(data, what)
    return data


def _recv_exact(s, n):
    data = s.recv(n, _socket.MSG_WAITALL) if n else b""
    while len(data) < n:
        more = s.recv(n - len(data))
        if not more:
            raise NoSQLError("NoSQL closed the connection before replying in full")
        data += more
    return data


def _once(payload):
    """One connection: the request frame out, the reply frame back."""
    s = _socket.socket(_socket.AF_UNIX, _socket.SOCK_STREAM)
    try:
        try:
            s.connect(SOCKET)
        except OSError as e:
            raise NoSQLError(
                f"NoSQL is not available: cannot connect to {SOCKET} ({e.strerror or e})"
            ) from None
        try:
            s.sendall(len(payload).to_bytes(4, "big") + payload)
        except (BrokenPipeError, ConnectionResetError):
            pass  # refused before the request was read: the reason is waiting to be read
        n = int.from_bytes(_recv_exact(s, 4), "big")
        return _loads(_recv_exact(s, n).decode())
    finally:
        s.close()


def _call(request):
    payload = _dumps(request).encode()
    delay, waited = 0.005, 0.0
    while True:
        reply = _once(payload)
        if reply.get("reply") != "error":
            return reply
        error = _KINDS.get(reply.get("kind"), NoSQLError)(reply.get("error", "NoSQL call failed"))
        if not isinstance(error, BusyError) or waited >= _BUSY_RETRY_SECS:
            raise error
        import time

        time.sleep(delay)
        waited += delay
        delay = min(delay * 2, 0.2)


class nosql:
    """SeBS's NoSQL interface: one shared client per process (`get_instance()`)."""

    instance = None

    @staticmethod
    def get_instance():
        if nosql.instance is None:
            nosql.instance = nosql()
        return nosql.instance

    def insert(self, table_name, primary_key, secondary_key, data):
        """Stores `data` with both key attributes, replacing any item of those keys."""
        _check_table(table_name)
        _call({"op": "insert", "table": table_name,
               "primary": _key(primary_key, "primary"),
               "secondary": _key(secondary_key, "secondary"),
               "data": _data(data, "data")})

    def get(self, table_name, primary_key, secondary_key):
        """The item with these keys (a dict with both key attributes); ItemNotFoundError if
        there is none."""
        _check_table(table_name)
        return _call({"op": "get", "table": table_name,
                      "primary": _key(primary_key, "primary"),
                      "secondary": _key(secondary_key, "secondary")})["item"]

    def update(self, table_name, primary_key, secondary_key, updates):
        """Sets the attributes in `updates` on the existing item; ItemNotFoundError if there
        is none."""
        _check_table(table_name)
        _call({"op": "update", "table": table_name,
               "primary": _key(primary_key, "primary"),
               "secondary": _key(secondary_key, "secondary"),
               "data": _data(updates, "updates")})

    def query(self, table_name, primary_key, secondary_key_name):
        """Every item with this primary key, in order of their secondary keys."""
        _check_table(table_name)
        if not isinstance(secondary_key_name, str):
            raise InvalidRequestError(
                f"secondary key name must be a str, not {type(secondary_key_name).__name__}"
            )
        return _call({"op": "query", "table": table_name,
                      "primary": _key(primary_key, "primary"),
                      "secondary_key": secondary_key_name})["items"]

    def delete(self, table_name, primary_key, secondary_key):
        """Removes the item with these keys (nothing happens if there is none)."""
        _check_table(table_name)
        _call({"op": "delete", "table": table_name,
               "primary": _key(primary_key, "primary"),
               "secondary": _key(secondary_key, "secondary")})
