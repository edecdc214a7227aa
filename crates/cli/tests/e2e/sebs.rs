//! SeBS's contract, cold and forked: code loaded as the package `function` (`from . import
//! storage`, relative imports of the function's own modules, plain imports too) and the
//! envelope of SeBS's Python wrappers (`result` exactly as the handler returned it, `begin`
//! and `end` like `strftime('%s.%f')`, `is_cold` per instance, `results_time` with `logs`).

use crate::harness::{Resp, Worker};
use serde_json::{json, Value};

/// A SeBS benchmark as SeBS deploys it: `function.py` in a package beside its own modules.
const FUNCTION: &str = r#"
import io

from . import storage
from . import helper
from .helper import twice
from .lib import util
import storage as top_storage
import helper as top_helper

client = storage.storage.get_instance()


def handler(event):
    op = event.get("op")
    if op == "fail":
        return 1 / 0
    if op == "plain":
        return event["value"]
    if op == "log":
        key = event["key"]
        return {"result": client.download_stream(event["bucket"], key).decode()}
    bucket = event["bucket"]
    put = client.upload_stream(bucket, "in/a.txt", b"alpha")
    client.upload_stream(bucket, "in/b.bin", io.BytesIO(bytes(range(256))))
    try:
        from . import nosql
        nosql_state = "same module" if nosql is __import__("nosql") else "another module"
    except ImportError as exc:
        nosql_state = str(exc)
    return {
        "result": {
            "put": put,
            "a": client.download_stream(bucket, "in/a.txt").decode(),
            "b_ok": client.download_stream(bucket, "in/b.bin") == bytes(range(256)),
            "list": client.list(bucket, "in/"),
            "same_storage": storage is top_storage,
            "twice": twice(event["x"]),
            "helper": helper.__name__,
            "top_helper": top_helper.__name__,
            "util": util.name(),
            "module": __name__,
            "package": __package__,
            "nosql": nosql_state,
            "request_id": event["request-id"],
            "income": event["income-timestamp"],
        },
        "measurement": {"compute_time": 12.5, "nested": [1, {"a": None}], "flag": True},
    }
"#;

const HELPER: &str = "def twice(x):\n    return 2 * x\n";
const LIB_INIT: &str = "";
const LIB_UTIL: &str =
    "from .. import helper\n\n\ndef name():\n    return __name__ + ':' + helper.__name__\n";

fn deploy(w: &Worker) {
    let r = w.deploy(
        "sebs",
        &[
            ("function.py", FUNCTION),
            ("helper.py", HELPER),
            ("lib/__init__.py", LIB_INIT),
            ("lib/util.py", LIB_UTIL),
            // SeBS's keys Kindling does not use are accepted.
            (
                "config.json",
                r#"{"timeout": 30, "memory": 128, "languages": ["python", "nodejs"], "modules": ["storage"]}"#,
            ),
        ],
    );
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json()["format"], "sebs");
}

/// How a test asks for its instances: cold (no zygotes) or forked from a zygote.
#[derive(Clone, Copy, PartialEq)]
enum Start {
    Cold,
    Fork,
}

impl Start {
    fn worker(self) -> Worker {
        match self {
            Start::Cold => Worker::start(""),
            Start::Fork => Worker::start("[zygotes]\nenabled = true\nauto = false\ntree = []\n"),
        }
    }

    fn name(self) -> &'static str {
        match self {
            Start::Cold => "cold",
            Start::Fork => "fork",
        }
    }

    /// Invokes with a new instance started this way; asserts the worker started it so.
    fn new_instance(self, w: &Worker, event: &Value) -> Resp {
        let r = w.request(
            "POST",
            "/run/sebs",
            &[("X-Kindling-Start", self.name())],
            event.to_string().as_bytes(),
        );
        assert_eq!(
            r.header("x-kindling-start"),
            Some(self.name()),
            "{} ({}): {}\nworker log:\n{}",
            self.name(),
            r.status,
            r.text(),
            w.log_text()
        );
        r
    }
}

fn warm(w: &Worker, event: &Value) -> Resp {
    let r = w.run("sebs", &event.to_string());
    assert_eq!(r.header("x-kindling-start"), Some("warm"), "{}", r.text());
    r
}

/// `begin`/`end` as SeBS's wrappers print them: `<seconds>.<6 digits>`.
fn stamp(v: &Value, key: &str) -> f64 {
    let s = v[key]
        .as_str()
        .unwrap_or_else(|| panic!("`{key}` is not a string: {v}"));
    let (secs, micros) = s
        .split_once('.')
        .unwrap_or_else(|| panic!("`{key}` is not %s.%f: {s}"));
    assert!(
        !secs.is_empty() && secs.bytes().all(|b| b.is_ascii_digit()),
        "{key}: {s}"
    );
    assert!(
        micros.len() == 6 && micros.bytes().all(|b| b.is_ascii_digit()),
        "{key}: {s}"
    );
    s.parse().unwrap()
}

fn now() -> f64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs_f64()
}

/// Checks an envelope of the storage round trip; returns its container id.
fn check_envelope(r: &Resp, cold: bool, x: i64) -> String {
    assert_eq!(r.status, 200, "{}", r.text());
    let v = r.json();
    let keys: Vec<&str> = v.as_object().unwrap().keys().map(String::as_str).collect();
    for key in [
        "begin",
        "end",
        "results_time",
        "is_cold",
        "result",
        "request_id",
        "container_id",
        "cold_start_var",
    ] {
        assert!(keys.contains(&key), "the envelope lacks `{key}`: {v}");
    }
    let (begin, end) = (stamp(&v, "begin"), stamp(&v, "end"));
    assert!(end >= begin, "{v}");
    assert!((now() - begin).abs() < 120.0, "begin is not now: {v}");
    assert_eq!(v["results_time"], 0, "{v}");
    assert_eq!(v["is_cold"], cold, "{v}");
    assert_eq!(v["cold_start_var"], "", "{v}");
    let rid = v["request_id"].as_str().unwrap();
    assert_eq!(r.header("x-kindling-request"), Some(rid), "{v}");
    let cid = v["container_id"].as_str().unwrap().to_string();
    assert_eq!(r.header("x-kindling-sandbox"), Some(cid.as_str()), "{v}");

    // `result` is exactly the handler's dict, `measurement` inside it as returned.
    let result = &v["result"];
    assert_eq!(
        result.as_object().unwrap().len(),
        2,
        "nothing but the handler's keys: {v}"
    );
    assert_eq!(
        result["measurement"],
        json!({"compute_time": 12.5, "nested": [1, {"a": null}], "flag": true}),
        "{v}"
    );
    let out = &result["result"];
    let income = out["income"].as_f64().unwrap();
    assert!(income > 0.0 && income <= end + 1.0, "{v}");
    let nosql = out["nosql"].as_str().unwrap();
    assert!(
        nosql == "same module",
        "`from . import nosql` is the runtime's client: {v}"
    );
    assert_eq!(
        out.as_object()
            .unwrap()
            .iter()
            .filter(|(k, _)| !["income", "nosql"].contains(&k.as_str()))
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect::<serde_json::Map<_, _>>(),
        json!({
            "put": "in/a.txt",
            "a": "alpha",
            "b_ok": true,
            "list": ["in/a.txt", "in/b.bin"],
            "same_storage": true,
            "twice": 2 * x,
            "helper": "function.helper",
            "top_helper": "helper",
            "util": "function.lib.util:function.helper",
            "module": "function.function",
            "package": "function",
            "request_id": rid,
        })
        .as_object()
        .unwrap()
        .clone(),
        "{v}"
    );
    cid
}

/// The whole contract on instances started by `start`.
fn contract(start: Start) {
    let w = start.worker();
    deploy(&w);
    let event = |x: i64| json!({"bucket": "data", "x": x});

    // A new instance's first call is cold, its next ones warm; another new instance (a new
    // container) is cold again.
    let first = check_envelope(&start.new_instance(&w, &event(1)), true, 1);
    let again = check_envelope(&warm(&w, &event(2)), false, 2);
    assert_eq!(first, again, "one instance, one container id");
    let other = check_envelope(&start.new_instance(&w, &event(3)), true, 3);
    assert_ne!(first, other, "a new instance is a new container");
    let stored = w.root.path().join("storage/sebs/data/in/a.txt");
    assert_eq!(std::fs::read(&stored).unwrap(), b"alpha");

    // A value other than a dict comes back as `result`, unchanged.
    for value in [json!(42), json!([1, "two"]), json!("text"), Value::Null] {
        let r = warm(&w, &json!({"op": "plain", "value": value}));
        assert_eq!(r.status, 200, "{}", r.text());
        assert_eq!(r.json()["result"], value, "{}", r.text());
    }

    // SeBS's `logs`: the result goes to `<request id>.json` in the named bucket, timed.
    let r = warm(
        &w,
        &json!({"op": "plain", "value": {"result": 7, "measurement": {"m": 1}}, "logs": {"bucket": "logs"}}),
    );
    assert_eq!(r.status, 200, "{}", r.text());
    let v = r.json();
    assert!(v["results_time"].as_f64().unwrap() > 0.0, "{v}");
    let key = format!("{}.json", v["request_id"].as_str().unwrap());
    let r = warm(&w, &json!({"op": "log", "bucket": "logs", "key": key}));
    assert_eq!(r.status, 200, "{}", r.text());
    let log: Value = serde_json::from_str(r.json()["result"]["result"].as_str().unwrap()).unwrap();
    assert_eq!(
        log["result"],
        json!({"result": 7, "measurement": {"m": 1}}),
        "{log}"
    );
    assert!(log["time"].as_f64().unwrap() >= 0.0, "{log}");

    // A handler's exception: 500 with the traceback, and the instance serves on.
    let r = warm(&w, &json!({"op": "fail"}));
    assert_eq!(r.status, 500, "{}", r.text());
    let text = r.text();
    assert!(
        text.contains("Traceback") && text.contains("ZeroDivisionError"),
        "{text}"
    );
    assert!(text.contains("/handler/function.py"), "{text}");
    let r = warm(&w, &event(4));
    check_envelope(&r, false, 4);
    w.assert_no_leaks();
    w.stop();
}

#[test]
fn sebs_package_and_envelope_cold() {
    contract(Start::Cold);
}

#[test]
fn sebs_package_and_envelope_forked() {
    contract(Start::Fork);
}

/// A relative import that fails is the function's error, reported with its traceback.
#[test]
fn sebs_failed_relative_import_is_500_with_traceback() {
    for start in [Start::Cold, Start::Fork] {
        let w = start.worker();
        let r = w.deploy(
            "sebs",
            &[(
                "function.py",
                "from . import missing\n\ndef handler(event):\n    return {}\n",
            )],
        );
        assert_eq!(r.status, 200, "{}", r.text());
        let r = start.new_instance(&w, &json!({}));
        assert_eq!(r.status, 500, "{}", r.text());
        let text = r.text();
        assert!(
            text.contains("ImportError") && text.contains("missing"),
            "{text}"
        );
        w.stop();
    }
}
