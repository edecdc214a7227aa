//! The worker's lifecycle as `/status` reports it: `ready` while it serves, `draining` from the
//! shutdown signal on, when new requests get 503 and requests in flight may finish.

use crate::harness::Worker;
use kindling_api::client::blocking::Client;
use kindling_api::{ErrorKind, WorkerState};
use std::time::{Duration, Instant};

#[test]
fn status_is_ready_then_draining_and_new_work_is_refused() {
    let w = Worker::start("");
    w.deploy_ok("hello", &[("f.py", crate::HELLO)]);
    assert_eq!(w.run("hello", "{}").status, 200);
    // One kept-alive connection, open before the signal: the worker serves the requests that
    // come on it while it drains.
    let mut c = Client::with_token(w.addr, Some(w.token.clone()))
        .unwrap()
        .timeout(Duration::from_secs(10));
    let status = c.status().unwrap();
    assert_eq!(status.status, WorkerState::Ready);
    assert!(status.detail.is_some(), "the admin sees the details");
    kindling_sandbox::process::signal(w.pid() as i32, 15).unwrap();
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let r = c
            .get("/status")
            .unwrap_or_else(|e| panic!("the connection ended before the worker drained: {e:#}"));
        if r.status == 503 {
            let status: kindling_api::Status = r.json().unwrap();
            assert_eq!(status.status, WorkerState::Draining, "{}", r.text());
            break;
        }
        assert_eq!(r.status, 200, "{}", r.text());
        assert!(Instant::now() < deadline, "the worker never drained");
    }
    let r = c.invoke("hello", "{}", None).unwrap();
    assert_eq!(r.status, 503, "{}", r.text());
    assert_eq!(r.error().map(|e| e.kind), Some(ErrorKind::ShuttingDown));
    assert_eq!(r.run_info().start, None);
    assert_eq!(r.header("x-kindling-start"), Some("none"));
    let r = c.get("/registry").unwrap();
    assert_eq!(r.error().map(|e| e.kind), Some(ErrorKind::ShuttingDown));
    drop(c);
    w.stop();
}
