"""Checks runtime/nosql.py against a running NoSQL service (driven by nosql_client.rs).

Usage: nosql_client.py SCENARIO, with KINDLING_NOSQL_SOCKET naming the service's socket and the
runtime directory on PYTHONPATH. Exits non-zero (with a traceback) when a check fails.
"""

import sys

import nosql

# As SeBS's 130.crud-api does: the client at import time.
client = nosql.nosql.get_instance()
T = "shopping_cart"


def raises(cls, fn, *args, contains=""):
    try:
        fn(*args)
    except cls as e:
        assert isinstance(e, nosql.NoSQLError), type(e)
        assert contains in str(e), f"{contains!r} not in {str(e)!r}"
        return e
    raise AssertionError(f"{fn.__name__}{args!r:.100} did not raise {cls.__name__}")


def round_trip():
    assert nosql.nosql.get_instance() is client
    client.insert(T, ("cart_id", "c1"), ("product_id", "p1"),
                  {"name": "pen", "price": 2.5, "quantity": 3, "tags": ("a", "b"),
                   "meta": {"big": 2**63, "neg": -(2**63), "whole": 1.0, "none": None}})
    client.insert(T, ("cart_id", "c1"), ("product_id", "p0"), {"name": "ink", "price": 7,
                                                                "quantity": 1})
    client.insert(T, ("cart_id", "c2"), ("product_id", "p1"), {"price": 1, "quantity": 1})
    item = client.get(T, ("cart_id", "c1"), ("product_id", "p1"))
    assert item == {"cart_id": "c1", "product_id": "p1", "name": "pen", "price": 2.5,
                    "quantity": 3, "tags": ["a", "b"],
                    "meta": {"big": 2**63, "neg": -(2**63), "whole": 1.0, "none": None}}, item
    assert type(item["quantity"]) is int and type(item["price"]) is float
    assert type(item["meta"]["whole"]) is float and type(item["meta"]["big"]) is int
    client.update(T, ("cart_id", "c1"), ("product_id", "p1"), {"quantity": 5, "gift": True})
    item = client.get(T, ("cart_id", "c1"), ("product_id", "p1"))
    assert item["quantity"] == 5 and item["gift"] is True and item["name"] == "pen", item
    # As 130.crud-api's GET /cart: the items of a cart, each with its secondary key.
    items = client.query(T, ("cart_id", "c1"), "product_id")
    assert [i["product_id"] for i in items] == ["p0", "p1"], items
    assert sum(i["price"] * i["quantity"] for i in items) == 7 + 2.5 * 5
    # Integer keys are keys of their own.
    client.insert(T, ("cart_id", 1), ("product_id", 2), {"n": 1})
    assert client.get(T, ("cart_id", 1), ("product_id", 2)) == {"cart_id": 1, "product_id": 2,
                                                                "n": 1}
    raises(nosql.ItemNotFoundError, client.get, T, ("cart_id", "1"), ("product_id", "2"))
    client.delete(T, ("cart_id", "c1"), ("product_id", "p0"))
    client.delete(T, ("cart_id", "c1"), ("product_id", "p0"))  # a missing item: no error
    assert len(client.query(T, ("cart_id", "c1"), "product_id")) == 1


def errors():
    # A missing item: a KeyError, as SeBS's AWS wrapper raises, with a readable message.
    e = raises(nosql.ItemNotFoundError, client.get, T, ("cart_id", "none"), ("product_id", "p"))
    assert isinstance(e, KeyError)
    assert str(e) == 'no item with cart_id="none" and product_id="p" in table "shopping_cart"', e
    raises(KeyError, client.update, T, ("cart_id", "none"), ("product_id", "p"), {"a": 1},
           contains="no item with")
    # An unknown table names the tables the function has.
    e = raises(nosql.NoSuchTableError, client.get, "orders", ("id", 1), ("line", 1))
    assert str(e) == 'table "orders" does not exist; function "alpha" has "shopping_cart"', e
    raises(nosql.InvalidRequestError, client.get, T, ("id", "c"), ("product_id", "p"),
           contains='table "shopping_cart" has primary key "cart_id", not "id"')
    raises(nosql.InvalidRequestError, client.query, T, ("cart_id", "c"), "sku",
           contains='secondary key "product_id", not "sku"')
    raises(ValueError, client.get, T, ("cart_id", 1.5), ("product_id", "p"),
           contains="must be a str or an int, not float")
    raises(ValueError, client.get, T, ("cart_id", None), ("product_id", "p"))
    raises(ValueError, client.get, T, "cart_id", ("product_id", "p"),
           contains="(name, value) pair")
    raises(ValueError, client.insert, T, ("cart_id", "c"), ("product_id", "p"), ["not", "dict"],
           contains="data must be a dict")
    raises(ValueError, client.insert, T, ("cart_id", "c"), ("product_id", "p"),
           {"x": float("nan")}, contains="not a JSON number")
    raises(ValueError, client.insert, T, ("cart_id", "c"), ("product_id", "p"), {"x": 2**64},
           contains="does not fit in 64 bits")
    raises(ValueError, client.insert, T, ("cart_id", "c"), ("product_id", "p"), {1: "x"},
           contains="keys of a dict must be str")
    raises(ValueError, client.insert, T, ("cart_id", "c"), ("product_id", "p"),
           {"x": object()}, contains="is not a JSON value")
    raises(ValueError, client.get, "bad/name", ("cart_id", "c"), ("product_id", "p"),
           contains='invalid table name "bad/name"')
    raises(ValueError, client.get, T, ("cart_id", 2**63), ("product_id", "p"),
           contains="fit in 64 bits")
    raises(ValueError, client.update, T, ("cart_id", "c2"), ("product_id", "p1"),
           {"cart_id": "other"}, contains='cannot change the key attribute "cart_id"')
    raises(nosql.TooLargeError, client.insert, T, ("cart_id", "c"), ("product_id", "big"),
           {"x": "y" * 5000}, contains="per item")
    # Nothing of a refused call was stored.
    raises(KeyError, client.get, T, ("cart_id", "c"), ("product_id", "big"))


def isolation():
    # Beta's shopping_cart is not alpha's.
    assert client.query(T, ("cart_id", "c1"), "product_id") == []
    raises(KeyError, client.get, T, ("cart_id", "c2"), ("product_id", "p1"))
    client.insert(T, ("cart_id", "c2"), ("product_id", "p1"), {"who": "beta"})
    assert client.get(T, ("cart_id", "c2"), ("product_id", "p1"))["who"] == "beta"


def alpha_unchanged():
    assert client.get(T, ("cart_id", "c2"), ("product_id", "p1")) == {
        "cart_id": "c2", "product_id": "p1", "price": 1, "quantity": 1}


def refused():
    raises(PermissionError, client.get, T, ("cart_id", "c"), ("product_id", "p"),
           contains="only function instances may use this service")


def busy_then_served():
    # The worker answers busy while the test holds the function's connections; the client
    # retries until they are let go.
    client.insert(T, ("cart_id", "busy"), ("product_id", "p"), {"n": 1})
    assert client.get(T, ("cart_id", "busy"), ("product_id", "p"))["n"] == 1


def unavailable():
    raises(nosql.NoSQLError, client.get, T, ("cart_id", "c"), ("product_id", "p"),
           contains="NoSQL is not available: cannot connect to")


SCENARIOS = {f.__name__: f for f in [round_trip, errors, isolation, alpha_unchanged, refused,
                                     busy_then_served, unavailable]}

if __name__ == "__main__":
    SCENARIOS[sys.argv[1]]()
    print("ok", sys.argv[1])
