//! Web functions (OpenLambda parity): Flask (WSGI) and FastAPI (ASGI) apps from the package
//! index, HTTP passthrough both ways, `ol.yaml` method restrictions, entry checks at deploy, the
//! body limit, and fork starts of a web app.

use crate::harness::Worker;

/// A Flask app: a teapot with a custom header, and echoes of text, JSON and binary bodies.
const FLASK_APP: &str = r#"
from flask import Flask, Response, jsonify, request

app = Flask(__name__)

@app.route("/")
def teapot():
    return "short and stout", 418, {"X-Custom": "kindling"}

@app.route("/echo", methods=["POST"])
def echo():
    return Response(request.get_data(), status=200, content_type=request.content_type)

@app.route("/json", methods=["POST"])
def json_echo():
    return jsonify(got=request.get_json(), method=request.method)
"#;

/// An app not named `app`, in `main.py`, entered through `OL_ENTRY_FILE` and `OL_WSGI_ENTRY`.
const MAIN_PY: &str = r#"
from flask import Flask, jsonify, request

my_wsgi_app = Flask(__name__)

@my_wsgi_app.route("/")
def index():
    return "index"

@my_wsgi_app.route("/info/<part>")
def info(part):
    return jsonify(part=part, args=request.args.to_dict(), root=request.script_root,
                   path=request.path, url=request.url)
"#;

const ENTRY_YAML: &str = "environment:\n  OL_ENTRY_FILE: main.py\n  OL_WSGI_ENTRY: my_wsgi_app\n";

const FASTAPI_APP: &str = r#"
from fastapi import FastAPI, Request

app = FastAPI()

@app.get("/items/{item_id}")
async def item(item_id: int, q: str = "none"):
    return {"item_id": item_id, "q": q}

@app.post("/raw")
async def raw(request: Request):
    body = await request.body()
    return {"len": len(body), "root": request.scope["root_path"]}
"#;

const FLASK_REQS: &str = "flask\n";

#[test]
fn flask_apps_get_the_whole_request_and_control_the_reply() {
    let w = Worker::start("max_body_bytes = 65536\n[zygotes]\nenabled = true\n");
    w.deploy_ok(
        "teapot",
        &[("f.py", FLASK_APP), ("requirements.txt", FLASK_REQS)],
    );

    // Status and headers are the app's.
    let r = w.request("GET", "/run/teapot", &[], b"");
    assert_eq!(r.status, 418, "{}", r.text());
    assert_eq!(r.header("x-custom"), Some("kindling"));
    assert_eq!(r.text(), "short and stout");
    assert!(r.header("content-type").unwrap().starts_with("text/html"));
    assert!(r.header("x-kindling-start").is_some());

    // Bodies in and out: text, JSON and binary (byte-exact).
    let text = "plain text, ünïcode\n";
    let r = w.request(
        "POST",
        "/run/teapot/echo",
        &[("content-type", "text/plain; charset=utf-8")],
        text.as_bytes(),
    );
    assert_eq!((r.status, r.text().as_str()), (200, text));
    assert_eq!(r.header("content-type"), Some("text/plain; charset=utf-8"));
    let binary: Vec<u8> = (0..=255u8).cycle().take(4096).collect();
    let r = w.request(
        "POST",
        "/run/teapot/echo",
        &[("content-type", "application/octet-stream")],
        &binary,
    );
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.body, binary, "the binary body came back changed");
    let r = w.request(
        "POST",
        "/run/teapot/json",
        &[("content-type", "application/json")],
        br#"{"a": [1, 2.5, "x"], "b": null}"#,
    );
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(
        r.json(),
        serde_json::json!({"got": {"a": [1, 2.5, "x"], "b": null}, "method": "POST"})
    );
    // The app's own 404 and 405 (Flask's routing), not Kindling's.
    assert_eq!(
        w.request("GET", "/run/teapot/nowhere", &[], b"").status,
        404
    );
    assert_eq!(w.request("GET", "/run/teapot/echo", &[], b"").status, 405);

    // A body over `max_body_bytes` is refused before it reaches the app.
    let big = vec![b'x'; 65537];
    let r = w.request("POST", "/run/teapot/echo", &[], &big);
    assert_eq!(r.status, 413, "{}", r.text());
    assert_eq!(r.header("x-kindling-error"), Some("too-large"));

    // A forced fork start of the same app: from a zygote holding Flask.
    for _ in 0..2 {
        let r = w.request("GET", "/run/teapot", &[("X-Kindling-Start", "fork")], b"");
        assert_eq!(r.status, 418, "{}", r.text());
        assert_eq!(r.header("x-kindling-start"), Some("fork"));
        assert_eq!(r.header("x-custom"), Some("kindling"));
    }
    let status = w.request("GET", "/status", &[], b"").json();
    let zygotes = status["zygotes"].as_array().unwrap();
    assert!(
        zygotes.iter().any(|z| z["packages"]
            .as_array()
            .unwrap()
            .iter()
            .any(|p| p.as_str().unwrap().starts_with("flask=="))),
        "no zygote holds flask: {status}"
    );

    // OL_ENTRY_FILE + OL_WSGI_ENTRY, a sub-path route and a query string.
    w.deploy_ok(
        "entry",
        &[
            ("main.py", MAIN_PY),
            ("ol.yaml", ENTRY_YAML),
            ("requirements.txt", FLASK_REQS),
        ],
    );
    let r = w.request("GET", "/run/entry", &[], b"");
    assert_eq!((r.status, r.text().as_str()), (200, "index"));
    let r = w.request("GET", "/run/entry/info/a%20b?x=1&y=z%26w", &[], b"");
    assert_eq!(r.status, 200, "{}", r.text());
    let v = r.json();
    assert_eq!(v["part"], "a b");
    assert_eq!(v["args"], serde_json::json!({"x": "1", "y": "z&w"}));
    assert_eq!(v["root"], "/run/entry");
    assert_eq!(v["path"], "/info/a b");
    assert!(
        v["url"]
            .as_str()
            .unwrap()
            .ends_with("/run/entry/info/a%20b?x=1&y=z%26w"),
        "{v}"
    );

    // Method restrictions, for web apps and plain functions alike: 405 naming the allowed.
    w.deploy_ok(
        "restricted",
        &[
            ("f.py", FLASK_APP),
            ("requirements.txt", FLASK_REQS),
            (
                "ol.yaml",
                "triggers:\n  http:\n    - method: GET\n    - method: POST\n",
            ),
        ],
    );
    assert_eq!(w.request("GET", "/run/restricted", &[], b"").status, 418);
    let r = w.request("PUT", "/run/restricted", &[], b"x");
    assert_eq!(r.status, 405, "{}", r.text());
    assert_eq!(r.header("allow"), Some("GET, POST"));
    assert_eq!(r.header("x-kindling-error"), Some("method"));
    w.deploy_ok(
        "plain-post",
        &[
            ("f.py", "def f(event):\n    return event\n"),
            ("ol.yaml", "triggers:\n  http:\n    - method: post\n"),
        ],
    );
    let r = w.request("GET", "/run/plain-post", &[], b"");
    assert_eq!((r.status, r.header("allow")), (405, Some("POST")));
    // A plain function ignores the sub-path and query (OpenLambda passes the body only).
    let r = w.request("POST", "/run/plain-post/any/path?q=1", &[], br#"{"k": 1}"#);
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json(), serde_json::json!({"k": 1}));
    w.deploy_ok(
        "any-method",
        &[
            ("f.py", "def f(event):\n    return 1\n"),
            ("ol.yaml", "triggers:\n  http:\n    - method: \"*\"\n"),
        ],
    );
    assert_eq!(w.request("PATCH", "/run/any-method", &[], b"").status, 200);

    w.assert_no_leaks();
    w.stop();
}

#[test]
fn missing_or_uncallable_entries_are_refused_at_deploy() {
    let w = Worker::start("");
    let refused = |name: &str, files: &[(&str, &str)], mentions: &[&str]| {
        let r = w.deploy(name, files);
        assert_eq!(r.status, 400, "deploy of {name}: {}", r.text());
        for m in mentions {
            assert!(r.text().contains(m), "{name}: `{m}` not in {}", r.text());
        }
        assert_eq!(
            w.request("GET", &format!("/run/{name}"), &[], b"").status,
            404
        );
    };
    // Nothing here is installed or run: the code is parsed.
    refused(
        "no-wsgi",
        &[
            ("main.py", "import flask\nother = flask.Flask(__name__)\n"),
            ("ol.yaml", ENTRY_YAML),
        ],
        &["OL_WSGI_ENTRY", "my_wsgi_app", "main.py"],
    );
    refused(
        "no-file",
        &[("ol.yaml", ENTRY_YAML)],
        &["main.py", "does not exist"],
    );
    refused(
        "literal",
        &[
            ("f.py", "app = {'not': 'callable'}\n"),
            ("ol.yaml", "environment:\n  OL_ASGI_ENTRY: app\n"),
        ],
        &["OL_ASGI_ENTRY", "`app`", "not callable"],
    );
    refused(
        "neither",
        &[("f.py", "import os\nhandler = None\n")],
        &["`f`", "`app`"],
    );
    // A runtime import error is the invocation's: 500 with the traceback.
    w.deploy_ok(
        "broken",
        &[
            ("main.py", "import not_a_module\nmy_wsgi_app = print\n"),
            ("ol.yaml", ENTRY_YAML),
        ],
    );
    let r = w.request("GET", "/run/broken/x", &[], b"");
    assert_eq!(r.status, 500, "{}", r.text());
    assert!(r.text().contains("ModuleNotFoundError"), "{}", r.text());
    assert_eq!(
        w.run("broken", "{}").status,
        500,
        "the instance still serves"
    );
    w.assert_serves();
    w.assert_no_leaks();
    w.stop();
}

#[test]
fn fastapi_apps_are_asgi() {
    let w = Worker::start("");
    w.deploy_ok(
        "api",
        &[("f.py", FASTAPI_APP), ("requirements.txt", "fastapi\n")],
    );
    let r = w.request("GET", "/run/api/items/42?q=tea", &[], b"");
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json(), serde_json::json!({"item_id": 42, "q": "tea"}));
    assert_eq!(r.header("content-type"), Some("application/json"));
    // FastAPI's own validation error.
    let r = w.request("GET", "/run/api/items/notanumber", &[], b"");
    assert_eq!(r.status, 422, "{}", r.text());
    let body: Vec<u8> = (0..=255u8).collect();
    let r = w.request("POST", "/run/api/raw", &[], &body);
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(
        r.json(),
        serde_json::json!({"len": 256, "root": "/run/api"})
    );
    assert_eq!(w.request("GET", "/run/api/nowhere", &[], b"").status, 404);
    w.assert_no_leaks();
    w.stop();
}
