//! End-to-end tests against a real worker (root only): `cargo test -p kindling --features e2e --test e2e`.

#![cfg(feature = "e2e")]
#![allow(clippy::unwrap_used)]

mod api_security;
mod faults;
mod harness;
mod isolation;
mod lifecycle;
mod network;
mod nosql;
mod package_security;
mod packages;
mod s3;
mod sebs;
mod storage;
mod switch;
mod tenancy;
mod web;
mod zygote_security;
mod zygotes;

use harness::Worker;

const HELLO: &str = "def f(event):\n    return {\"hello\": event.get(\"name\", \"world\")}\n";

#[test]
fn cold_then_warm() {
    let w = Worker::start("");
    w.deploy_ok("hello", &[("f.py", HELLO)]);
    let r = w.run("hello", r#"{"name": "e2e"}"#);
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json(), serde_json::json!({"hello": "e2e"}));
    assert_eq!(r.header("x-kindling-start"), Some("cold"));
    let timing = r.header("x-kindling-timing").unwrap();
    for key in ["queue=", "sandbox=", "instance=", "handler=", "total="] {
        assert!(timing.contains(key), "{timing}");
    }
    let r = w.run("hello", "{}");
    assert_eq!(r.header("x-kindling-start"), Some("warm"));
    assert_eq!(r.json(), serde_json::json!({"hello": "world"}));
    let r = w.run_cold("hello", "{}");
    assert_eq!(r.header("x-kindling-start"), Some("cold"));
    let stats = w.stats();
    assert_eq!(stats["start.cold"], 2);
    assert_eq!(stats["start.warm"], 1);
    w.assert_no_leaks();
    w.stop();
}
