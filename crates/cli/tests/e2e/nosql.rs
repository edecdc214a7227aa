//! NoSQL from function code: `from . import nosql` (SeBS) or `import nosql` (OpenLambda) in a
//! sandbox, served by the worker over the socket
//! bound at /kindling/nosql-socket/nosql.sock, tables declared in the function's config or
//! through the admin API (`/nosql/...`, `kindling nosql`), the database under `<root>/nosql/`.

use crate::harness::Worker;
use kindling_api::StartMethod;
use serde_json::{json, Value};

/// A SeBS-format benchmark in the manner of SeBS's 130.crud-api: a shopping cart.
const CART: &str = r#"
from . import nosql
from . import storage

client = nosql.nosql.get_instance()
TABLE = "shopping_cart"


def handler(event):
    op = event["op"]
    cart = ("cart_id", event.get("cart", "c1"))
    table = event.get("table", TABLE)
    if op == "put":
        client.insert(table, cart, ("product_id", event["product"]), event["item"])
        return {"result": "stored"}
    if op == "get":
        return {"result": client.get(table, cart, ("product_id", event["product"]))}
    if op == "update":
        client.update(table, cart, ("product_id", event["product"]), event["item"])
        return {"result": "updated"}
    if op == "query":
        items = client.query(table, cart, "product_id")
        return {"result": {
            "products": [i["product_id"] for i in items],
            "price": sum(i["price"] * i["quantity"] for i in items),
            "quantity": sum(i["quantity"] for i in items),
        }}
    if op == "delete":
        client.delete(table, cart, ("product_id", event["product"]))
        return {"result": "deleted"}
    if op == "receipt":
        # Both of SeBS's clients in one package: the cart's lines to object storage and back.
        lines = [f'{i["product_id"]} {i["quantity"]}' for i in client.query(table, cart, "product_id")]
        s = storage.storage.get_instance()
        s.upload_stream("receipts", cart[1], "\n".join(lines).encode())
        return {"result": s.download_stream("receipts", cart[1]).decode()}
    if op == "caught":
        try:
            client.get(table, cart, ("product_id", "none"))
        except KeyError as e:
            return {"result": {"key_error": True, "message": str(e),
                               "nosql_error": isinstance(e, nosql.NoSQLError)}}
    raise ValueError(op)
"#;

const CART_CONFIG: &str = r#"{"timeout": 30, "memory": 128, "languages": ["python"],
  "modules": ["nosql"],
  "nosql": {"shopping_cart": {"primary_key": "cart_id", "secondary_key": "product_id"}}}"#;

/// What a SeBS function returned as `result`, in the envelope as it is on this branch
/// (`{"output": ...}`) or as SeBS's current wrappers make it (the handler's dict).
fn sebs_result(body: &Value) -> Value {
    let r = &body["result"];
    r.get("output")
        .or_else(|| r.get("result"))
        .cloned()
        .unwrap_or(Value::Null)
}

fn call(w: &Worker, name: &str, event: Value) -> Value {
    let r = w.run(name, &event.to_string());
    assert_eq!(
        r.status,
        200,
        "{name} {event}: {}\n{}",
        r.text(),
        w.log_text()
    );
    sebs_result(&r.json())
}

fn deploy_cart(w: &Worker, name: &str) {
    w.deploy_ok(name, &[("function.py", CART), ("config.json", CART_CONFIG)]);
}

#[test]
fn sebs_crud_round_trip_errors_and_restart() {
    let mut w = Worker::start("");
    deploy_cart(&w, "cart");
    let put = |product: &str, item: Value| {
        call(
            &w,
            "cart",
            json!({"op": "put", "product": product, "item": item}),
        )
    };
    assert_eq!(put("p1", json!({"price": 2.5, "quantity": 2})), "stored");
    assert_eq!(put("p2", json!({"price": 10, "quantity": 1})), "stored");
    let got = call(&w, "cart", json!({"op": "get", "product": "p1"}));
    assert_eq!(
        got,
        json!({"cart_id": "c1", "product_id": "p1", "price": 2.5, "quantity": 2})
    );
    assert!(got["quantity"].is_i64() && got["price"].is_f64());
    let q = call(&w, "cart", json!({"op": "query"}));
    assert_eq!(
        q,
        json!({"products": ["p1", "p2"], "price": 15.0, "quantity": 3})
    );
    assert_eq!(
        call(
            &w,
            "cart",
            json!({"op": "update", "product": "p1", "item": {"quantity": 4}})
        ),
        "updated"
    );
    assert_eq!(
        call(&w, "cart", json!({"op": "get", "product": "p1"}))["quantity"],
        4
    );
    assert_eq!(
        call(&w, "cart", json!({"op": "delete", "product": "p2"})),
        "deleted"
    );
    assert_eq!(
        call(&w, "cart", json!({"op": "query"}))["products"],
        json!(["p1"])
    );
    // A missing item is a KeyError (as SeBS's AWS wrapper raises) with a readable message.
    assert_eq!(
        call(&w, "cart", json!({"op": "caught"})),
        json!({"key_error": true, "nosql_error": true,
               "message": "no item with cart_id=\"c1\" and product_id=\"none\" in table \"shopping_cart\""})
    );
    // Uncaught: a 500 with the traceback, the worker unharmed.
    let r = w.run("cart", &json!({"op": "get", "product": "none"}).to_string());
    assert_eq!(r.status, 500, "{}", r.text());
    assert!(
        r.text()
            .contains("ItemNotFoundError: no item with cart_id=\"c1\""),
        "{}",
        r.text()
    );
    let r = w.run(
        "cart",
        &json!({"op": "get", "product": "p", "table": "orders"}).to_string(),
    );
    assert_eq!(r.status, 500, "{}", r.text());
    assert!(
        r.text().contains(
            "NoSuchTableError: table \"orders\" does not exist; function \"cart\" has \"shopping_cart\""
        ),
        "{}",
        r.text()
    );
    w.assert_serves();
    // The data outlives the worker: killed and started again, it is all there.
    w.crash();
    w.spawn();
    assert_eq!(
        call(&w, "cart", json!({"op": "get", "product": "p1"})),
        json!({"cart_id": "c1", "product_id": "p1", "price": 2.5, "quantity": 4})
    );
    assert!(w.root.path().join("nosql/nosql.sqlite3").is_file());
    w.stop();
}

#[test]
fn functions_see_only_their_own_tables() {
    let w = Worker::start("");
    deploy_cart(&w, "alpha");
    deploy_cart(&w, "beta");
    call(
        &w,
        "alpha",
        json!({"op": "put", "product": "p", "item": {"price": 1, "quantity": 1}}),
    );
    // Beta's shopping_cart is another table: alpha's item is not in it.
    assert_eq!(
        call(&w, "beta", json!({"op": "query"}))["products"],
        json!([])
    );
    let r = w.run("beta", &json!({"op": "get", "product": "p"}).to_string());
    assert_eq!(r.status, 500, "{}", r.text());
    // A function that declares no tables has none, whatever others declared.
    w.deploy_ok("plain", &[("function.py", CART)]);
    let r = w.run("plain", &json!({"op": "query"}).to_string());
    assert_eq!(r.status, 500);
    assert!(
        r.text()
            .contains("table \"shopping_cart\" does not exist; function \"plain\" has no tables"),
        "{}",
        r.text()
    );
    // The admin's view agrees.
    let r = w.request("GET", "/nosql/beta", &[], b"");
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json()["tables"][0]["items"], 0);
    assert_eq!(
        w.request("GET", "/nosql/alpha", &[], b"").json()["tables"][0]["items"],
        1
    );
    w.stop();
}

#[test]
fn a_bad_declaration_refuses_the_deploy() {
    let w = Worker::start("");
    let r = w.deploy(
        "bad",
        &[
            ("function.py", CART),
            (
                "config.json",
                r#"{"nosql": {"shopping_cart": {"primary_key": "cart_id"}}}"#,
            ),
        ],
    );
    assert_eq!(r.status, 400, "{}", r.text());
    assert!(
        r.text().contains(
            "invalid declaration of table \\\"shopping_cart\\\": secondary_key is missing"
        ) || r
            .text()
            .contains("invalid declaration of table \"shopping_cart\": secondary_key is missing"),
        "{}",
        r.text()
    );
    // ol.yaml declares the same way.
    let ol = "nosql:\n  t:\n    primary_key: a\n    secondary_key: b\n";
    w.deploy_ok(
        "ol",
        &[("f.py", "def f(event):\n    return 1\n"), ("ol.yaml", ol)],
    );
    let tables = w.request("GET", "/nosql/ol", &[], b"").json();
    assert_eq!(tables["tables"][0]["table"], "t");
    assert_eq!(tables["tables"][0]["secondary_key"], "b");
    w.stop();
}

#[test]
fn items_loaded_from_outside_are_read_by_the_function_and_back() {
    let w = Worker::start("");
    // Declared and loaded before the function exists, as SeBS's harness does.
    let r = w.request(
        "PUT",
        "/nosql/cart/shopping_cart",
        &[],
        br#"{"primary_key": "cart_id", "secondary_key": "product_id"}"#,
    );
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json()["declared"], "created");
    let items = json!([
        {"cart_id": "c7", "product_id": "a", "price": 3, "quantity": 2},
        {"cart_id": "c7", "product_id": "b", "price": 1.5, "quantity": 2},
    ]);
    let r = w.request(
        "POST",
        "/nosql/cart/shopping_cart/items",
        &[],
        items.to_string().as_bytes(),
    );
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json(), json!({"loaded": 2}));
    deploy_cart(&w, "cart");
    assert_eq!(
        call(&w, "cart", json!({"op": "query", "cart": "c7"})),
        json!({"products": ["a", "b"], "price": 9.0, "quantity": 4})
    );
    call(
        &w,
        "cart",
        json!({"op": "put", "cart": "c7", "product": "c", "item": {"price": 1, "quantity": 1}}),
    );
    // Read back from outside: the function's write with the loaded items.
    let r = w.request(
        "GET",
        "/nosql/cart/shopping_cart/items?primary=c7",
        &[],
        b"",
    );
    assert_eq!(r.status, 200, "{}", r.text());
    let products: Vec<Value> = r.json()["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["product_id"].clone())
        .collect();
    assert_eq!(products, [json!("a"), json!("b"), json!("c")]);
    // Bad input: an item without its keys stores nothing; an unknown table is 404.
    let r = w.request(
        "POST",
        "/nosql/cart/shopping_cart/items",
        &[],
        br#"[{"cart_id": "c8", "product_id": "x"}, {"cart_id": "c8"}]"#,
    );
    assert_eq!(r.status, 400, "{}", r.text());
    assert!(
        r.text()
            .contains("item 1 lacks the key attribute \"product_id\""),
        "{}",
        r.text()
    );
    let r = w.request(
        "GET",
        "/nosql/cart/shopping_cart/items?primary=c8",
        &[],
        b"",
    );
    assert_eq!(r.json()["items"], json!([]));
    let r = w.request("GET", "/nosql/cart/orders/items", &[], b"");
    assert_eq!(r.status, 404, "{}", r.text());
    assert_eq!(r.header("x-kindling-error"), Some("no-such-table"));
    // Admin only.
    let r = w.request_unauthenticated("GET", "/nosql/cart", &[], b"");
    assert_eq!(r.status, 401);
    // The CLI wraps the same routes.
    let out = w
        .cli_command()
        .args(["nosql", "tables", "cart"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("shopping_cart\tprimary cart_id\tsecondary product_id\t3 items"),
        "{text}"
    );
    let out = w
        .cli_command()
        .args(["nosql", "items", "cart", "shopping_cart", "--primary", "c7"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let listed: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(listed.as_array().unwrap().len(), 3);
    let out = w
        .cli_command()
        .args(["nosql", "drop", "cart", "shopping_cart"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let r = w.run("cart", &json!({"op": "query", "cart": "c7"}).to_string());
    assert_eq!(r.status, 500, "{}", r.text());
    w.assert_serves();
    w.stop();
}

#[test]
fn forked_instances_reach_nosql() {
    let w = Worker::start("[zygotes]\nenabled = true\nauto = false\ntree = []\n");
    deploy_cart(&w, "cart");
    let event = json!({"op": "put", "product": "f", "item": {"price": 1, "quantity": 1}});
    let r = w.request(
        "POST",
        "/run/cart",
        &[(kindling_api::headers::START, StartMethod::Fork.as_str())],
        event.to_string().as_bytes(),
    );
    assert_eq!(r.status, 200, "{}\n{}", r.text(), w.log_text());
    assert_eq!(r.run_info().start, Some(StartMethod::Fork));
    assert_eq!(sebs_result(&r.json()), "stored");
    assert_eq!(
        call(&w, "cart", json!({"op": "get", "product": "f"}))["price"],
        1
    );
    w.stop();
}

#[test]
fn disabled_nosql_is_a_clear_error() {
    let w = Worker::start("[nosql]\nenabled = false\n");
    // The declarations are not refused: NoSQL is off, not the function wrong.
    deploy_cart(&w, "cart");
    let r = w.run("cart", &json!({"op": "get", "product": "p"}).to_string());
    assert_eq!(r.status, 500, "{}", r.text());
    assert!(
        r.text()
            .contains("NoSQL is not available: cannot connect to"),
        "{}",
        r.text()
    );
    let r = w.request("GET", "/nosql/cart", &[], b"");
    assert_eq!(r.status, 503, "{}", r.text());
    assert_eq!(r.header("x-kindling-error"), Some("nosql-disabled"));
    assert!(!w.root.path().join("nosql").exists());
    w.assert_serves();
    w.stop();
}
