//! Tenants kept apart outside the sandbox (issue 9, items 5 and 6): each function's object
//! storage is its own (the worker learns who calls from the kernel, not the caller), bounded by
//! quotas and per-function connection limits, and unreachable for other host users; each
//! function's stdout and stderr go to a log of its own, tagged and bounded, never to the
//! worker's.

use crate::harness::Worker;
use serde_json::{json, Value};
use std::io::{BufRead, Read, Write};
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::time::{Duration, Instant};

/// A function driving the storage client with one operation per call; storage errors come back
/// as their class and message.
const STORE: &str = r#"
import storage

client = storage.storage.get_instance()


def f(event):
    b, key = event["bucket"], event.get("key", "k")
    try:
        if event["op"] == "put":
            data = event["data"].encode() * event.get("times", 1)
            return {"key": client.upload_stream(b, key, data)}
        if event["op"] == "get":
            return {"data": client.download_stream(b, key).decode()}
        if event["op"] == "list":
            return {"keys": client.list(b)}
    except storage.StorageError as e:
        return {"type": type(e).__name__, "message": str(e),
                "permission": isinstance(e, PermissionError)}
"#;

fn call(w: &Worker, name: &str, start: Option<&str>, event: Value) -> Value {
    let headers: Vec<(&str, &str)> = start.map(|s| ("X-Kindling-Start", s)).into_iter().collect();
    let r = w.request(
        "POST",
        &format!("/run/{name}"),
        &headers,
        event.to_string().as_bytes(),
    );
    assert_eq!(r.status, 200, "{name}: {}\n{}", r.text(), w.log_text());
    if let Some(s) = start {
        assert_eq!(r.header("x-kindling-start"), Some(s), "{name}");
    }
    r.json()
}

/// One storage call on the socket from this (host) process, speaking the client's protocol.
fn host_call(socket: &Path, header: Value) -> std::io::Result<Value> {
    let mut s = std::os::unix::net::UnixStream::connect(socket)?;
    s.set_read_timeout(Some(Duration::from_secs(10)))?;
    let raw = header.to_string().into_bytes();
    let _ = s.write_all(&(raw.len() as u32).to_be_bytes());
    let _ = s.write_all(&raw);
    let mut head = [0u8; 4];
    s.read_exact(&mut head)?;
    let mut reply = vec![0u8; u32::from_be_bytes(head) as usize];
    s.read_exact(&mut reply)?;
    Ok(serde_json::from_slice(&reply).expect("reply JSON"))
}

#[test]
fn functions_cannot_reach_each_others_objects() {
    let w = Worker::start(
        "[zygotes]\nenabled = true\n\
         [[storage.grants]]\nfunction = \"reader\"\nowner = \"alpha\"\nbucket = \"shared\"\naccess = \"read\"\n",
    );
    let root = w.root.path().to_path_buf();
    for name in ["alpha", "beta", "reader"] {
        w.deploy_ok(name, &[("f.py", STORE)]);
    }
    let put = json!({"op": "put", "bucket": "shared", "key": "secret.txt", "data": "A-SECRET"});
    assert_eq!(
        call(&w, "alpha", Some("cold"), put.clone())["key"],
        "secret.txt"
    );
    // Beta, cold-started and forked from a zygote (a seed assigned to it), uses the same bucket
    // name: it is another bucket. It cannot list or read alpha's object...
    for start in ["cold", "fork"] {
        let out = call(
            &w,
            "beta",
            Some(start),
            json!({"op": "list", "bucket": "shared"}),
        );
        assert_eq!(out["type"], "NotFoundError", "{start}: {out}");
        assert_eq!(out["message"], r#"bucket "shared" does not exist"#);
        let out = call(
            &w,
            "beta",
            Some(start),
            json!({"op": "get", "bucket": "shared", "key": "secret.txt"}),
        );
        assert_eq!(out["type"], "NotFoundError", "{start}: {out}");
    }
    // ...and writing it leaves alpha's object alone.
    let overwrite =
        json!({"op": "put", "bucket": "shared", "key": "secret.txt", "data": "OVERWRITTEN-BY-B"});
    assert_eq!(
        call(&w, "beta", Some("fork"), overwrite)["key"],
        "secret.txt"
    );
    let get = json!({"op": "get", "bucket": "shared", "key": "secret.txt"});
    assert_eq!(
        call(&w, "alpha", Some("fork"), get.clone())["data"],
        "A-SECRET"
    );
    assert_eq!(
        call(&w, "beta", Some("cold"), get.clone())["data"],
        "OVERWRITTEN-BY-B"
    );
    let storage = root.join("storage");
    assert_eq!(
        std::fs::read_to_string(storage.join("alpha/shared/secret.txt")).unwrap(),
        "A-SECRET"
    );
    assert_eq!(
        std::fs::read_to_string(storage.join("beta/shared/secret.txt")).unwrap(),
        "OVERWRITTEN-BY-B"
    );
    // The operator's read-only grant: reader sees alpha's bucket, and cannot write it.
    let out = call(
        &w,
        "reader",
        Some("cold"),
        json!({"op": "list", "bucket": "shared"}),
    );
    assert_eq!(out["keys"], json!(["secret.txt"]), "{out}");
    assert_eq!(call(&w, "reader", Some("fork"), get)["data"], "A-SECRET");
    let out = call(
        &w,
        "reader",
        None,
        json!({"op": "put", "bucket": "shared", "key": "secret.txt", "data": "X"}),
    );
    assert_eq!(out["type"], "PermissionDeniedError", "{out}");
    assert_eq!(out["permission"], true);
    assert_eq!(
        out["message"],
        r#"bucket "shared" is granted to function "reader" read-only"#
    );

    // From the host: the socket's directory is root's alone, so uid nobody cannot reach it...
    let socket = root.join("storage-socket").join("storage.sock");
    let probe = std::process::Command::new("/usr/bin/python3")
        .arg("-c")
        .arg(
            "import socket, sys\n\
             s = socket.socket(socket.AF_UNIX)\n\
             try:\n    s.connect(sys.argv[1]); print('connected')\n\
             except OSError as e:\n    print('refused', e.errno)\n",
        )
        .arg(&socket)
        .uid(65534)
        .gid(65534)
        .output()
        .unwrap();
    assert_eq!(
        String::from_utf8_lossy(&probe.stdout).trim(),
        "refused 13",
        "{}",
        String::from_utf8_lossy(&probe.stderr)
    );
    // ...and a host process that does reach it (root) is no function's instance: refused.
    let reply = host_call(&socket, json!({"op": "list", "bucket": "shared"})).unwrap();
    assert_eq!(reply["ok"], false, "{reply}");
    assert_eq!(reply["kind"], "denied", "{reply}");
    assert!(
        reply["error"].as_str().unwrap().contains("in no sandbox"),
        "{reply}"
    );
    w.assert_no_leaks();
    w.stop();
}

#[test]
fn a_quota_stops_an_upload_and_stores_none_of_it() {
    let w = Worker::start("[storage]\nmax_function_bytes = 1048576\nmax_object_bytes = 4194304\n");
    let root = w.root.path().to_path_buf();
    for name in ["alpha", "beta"] {
        w.deploy_ok(name, &[("f.py", STORE)]);
    }
    // 600 KB fits in 1 MiB; 600 KB more does not.
    let put = |name: &str, key: &str| {
        call(
            &w,
            name,
            None,
            json!({"op": "put", "bucket": "b", "key": key, "data": "x", "times": 600_000}),
        )
    };
    assert_eq!(put("alpha", "one")["key"], "one");
    let out = put("alpha", "two");
    assert_eq!(out["type"], "QuotaExceededError", "{out}");
    let message = out["message"].as_str().unwrap();
    assert!(
        message.starts_with(
            r#"upload of 600000 bytes would take the buckets of function "alpha" to "#
        ) && message.ends_with("bytes, over its quota of 1048576 bytes"),
        "{message}"
    );
    // Nothing of it reached the disk: no object, no upload in progress.
    let storage = root.join("storage");
    assert!(!storage.join("alpha/b/two").exists());
    assert_eq!(std::fs::read_dir(storage.join(".tmp")).unwrap().count(), 0);
    let listed = call(&w, "alpha", None, json!({"op": "list", "bucket": "b"}));
    assert_eq!(listed["keys"], json!(["one"]));
    // Another function's uploads still work.
    assert_eq!(put("beta", "one")["key"], "one");
    assert_eq!(put("beta", "two")["type"], "QuotaExceededError");
    w.assert_no_leaks();
    w.stop();
}

/// Holds many idle connections to the storage socket for a while, like a tenant trying to
/// starve the others.
const HOG: &str = r#"
import _socket, time


def f(event):
    held = []
    for _ in range(event["connections"]):
        s = _socket.socket(_socket.AF_UNIX, _socket.SOCK_STREAM)
        try:
            s.connect("/kindling/storage-socket/storage.sock")
        except OSError:
            pass
        held.append(s)
    time.sleep(event["secs"])
    return {"held": len(held)}
"#;

/// Times one `list()`.
const TIMED_LIST: &str = r#"
import time
import storage


def f(event):
    start = time.perf_counter()
    try:
        storage.storage.get_instance().list("anything")
        outcome = "listed"
    except storage.StorageError as e:
        outcome = type(e).__name__
    return {"secs": time.perf_counter() - start, "outcome": outcome}
"#;

#[test]
fn idle_connections_of_one_function_do_not_stall_another() {
    let w = Worker::start("");
    w.deploy_ok("hog", &[("f.py", HOG)]);
    w.deploy_ok("victim", &[("f.py", TIMED_LIST)]);
    // Warm the victim first, so that its measured call is a storage call and nothing else.
    call(&w, "victim", None, json!({}));
    let hog = {
        let addr = w.addr;
        std::thread::spawn(move || {
            let mut s = std::net::TcpStream::connect(addr).unwrap();
            let body = json!({"connections": 70, "secs": 4}).to_string();
            write!(
                s,
                "POST /run/hog HTTP/1.1\r\nHost: x\r\nConnection: close\r\nContent-Length: {}\r\n\r\n{body}",
                body.len()
            )
            .unwrap();
            let mut out = String::new();
            s.read_to_string(&mut out).unwrap();
            out
        })
    };
    std::thread::sleep(Duration::from_millis(1500));
    let out = call(&w, "victim", None, json!({}));
    assert_eq!(out["outcome"], "NotFoundError", "{out}");
    let secs = out["secs"].as_f64().unwrap();
    assert!(
        secs < 1.0,
        "list() took {secs:.2} s while another function held 70 connections"
    );
    let hog = hog.join().unwrap();
    assert!(hog.starts_with("HTTP/1.1 200"), "{hog}");
    w.assert_no_leaks();
    w.stop();
}

/// Prints a line that looks like the worker's, to both streams, tries to truncate both, and
/// leaves a thread printing after the reply.
const FORGER: &str = r#"
import os, sys, threading, time

FORGED = "2026-12-01T00:00:00.000000Z  INFO kindling_worker::api: deployed function=\"victim\" FORGED-BY-TENANT"


def late(tag):
    time.sleep(0.3)
    print("late " + tag, flush=True)


def f(event):
    tag = event["tag"]
    print(FORGED + " " + tag)
    sys.stderr.write("to stderr " + tag + "\n")
    results = {}
    for fd in (1, 2):
        try:
            os.ftruncate(fd, 0)
            results[fd] = "truncated"
        except OSError as e:
            results[fd] = e.errno
    threading.Thread(target=late, args=(tag,)).start()
    return {"ftruncate": results}
"#;

/// The lines of `text` that end with `needle` (the text a function printed).
fn lines_with<'a>(text: &'a str, needle: &str) -> Vec<&'a str> {
    text.lines().filter(|l| l.ends_with(needle)).collect()
}

fn wait_for(what: &str, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !done() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn function_output_goes_to_its_own_tagged_log() {
    // Background output between requests: idle instances must not be frozen for it to happen.
    let w = Worker::start("freeze_idle = false\n[zygotes]\nenabled = true\n");
    w.deploy_ok("forger", &[("f.py", FORGER)]);
    let before = w.log_text();
    assert!(before.contains("worker ready"), "{before}");
    for (start, tag) in [("cold", "T-COLD"), ("fork", "T-FORK")] {
        let r = w.request(
            "POST",
            "/run/forger",
            &[("X-Kindling-Start", start)],
            json!({"tag": tag}).to_string().as_bytes(),
        );
        assert_eq!(r.status, 200, "{}", r.text());
        assert_eq!(r.header("x-kindling-start"), Some(start));
        // A pipe cannot be truncated.
        assert_eq!(r.json()["ftruncate"], json!({"1": 22, "2": 22}), "{start}");
        let request = r.header("x-kindling-request").unwrap().to_string();
        let sandbox = r.header("x-kindling-sandbox").unwrap().to_string();
        let mut text = String::new();
        wait_for("the background line", || {
            let r = w.request("GET", "/logs/forger?tail=50", &[], b"");
            assert_eq!(r.status, 200, "{}", r.text());
            text = r.text();
            !lines_with(&text, &format!("late {tag}")).is_empty()
        });
        // Each line is tagged with what the worker knows: sandbox, stream, request in flight.
        let forged = lines_with(&text, &format!("FORGED-BY-TENANT {tag}"));
        assert_eq!(forged.len(), 1, "{text}");
        let prefix = format!(" {sandbox} stdout request={request} | 2026-12-01T00:00:00");
        assert!(forged[0].contains(&prefix), "{start}: {}", forged[0]);
        let stderr = lines_with(&text, &format!("to stderr {tag}"));
        assert!(
            stderr[0].contains(&format!(" {sandbox} stderr request={request} | ")),
            "{}",
            stderr[0]
        );
        let late = lines_with(&text, &format!("late {tag}"));
        assert!(
            late[0].contains(&format!(" {sandbox} stdout background | ")),
            "{}",
            late[0]
        );
    }
    // The worker's own log has none of it, and still has what it had (it was not truncated).
    let after = w.log_text();
    assert!(after.starts_with(&before), "the worker's log was rewritten");
    assert!(!after.contains("FORGED-BY-TENANT"), "{after}");
    assert!(!after.contains("to stderr T-"), "{after}");
    // The log is root's alone.
    use std::os::unix::fs::PermissionsExt;
    let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
    let logs = w.root.path().join("logs");
    assert_eq!(mode(&logs), 0o700);
    assert_eq!(mode(&logs.join("forger.log")), 0o600);

    // `?tail=N` returns the last N lines; bad and unknown requests are refused.
    let r = w.request("GET", "/logs/forger?tail=2", &[], b"");
    assert_eq!(r.text().lines().count(), 2, "{}", r.text());
    assert_eq!(
        w.request("GET", "/logs/forger?tail=lots", &[], b"").status,
        400
    );
    assert_eq!(
        w.request("GET", "/logs/forger?tail=10001", &[], b"").status,
        400
    );
    assert_eq!(w.request("GET", "/logs/nosuch", &[], b"").status, 404);
    assert_eq!(w.request("GET", "/logs/..%2Fetc", &[], b"").status, 400);

    // `kindling logs`: the last lines, then (-f) the lines as they come.
    let out = w
        .cli_command()
        .args(["logs", "forger", "--tail", "3"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let printed = String::from_utf8_lossy(&out.stdout);
    assert_eq!(printed.lines().count(), 3, "{printed}");
    assert!(printed.contains("late T-FORK"), "{printed}");
    let mut follow = w
        .cli_command()
        .args(["logs", "forger", "-f", "--tail", "1"])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let stdout = follow.stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in std::io::BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let first = rx.recv_timeout(Duration::from_secs(10)).unwrap();
    assert!(first.contains("late T-FORK"), "{first}");
    let r = w.run("forger", &json!({"tag": "T-FOLLOW"}).to_string());
    assert_eq!(r.status, 200);
    let deadline = Instant::now() + Duration::from_secs(10);
    let followed = loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let line = rx
            .recv_timeout(left)
            .expect("kindling logs -f printed the new line");
        if line.ends_with("FORGED-BY-TENANT T-FOLLOW") {
            break line;
        }
    };
    assert!(
        followed.contains(&format!(
            "request={} | ",
            r.header("x-kindling-request").unwrap()
        )),
        "{followed}"
    );
    let _ = follow.kill();
    let _ = follow.wait();
    w.assert_no_leaks();
    w.stop();
}

/// Writes 50 MB to stdout: one 10 MB line without end, then 40 MB of lines.
const FLOOD: &str = r#"
import os


def write_all(data):
    view = memoryview(data)
    while view:
        view = view[os.write(1, view):]


def f(event):
    write_all(b"z" * (10 << 20))
    write_all(b"\n")
    block = (b"y" * 999 + b"\n") * 64
    written = (10 << 20) + 1
    while written < 50 << 20:
        write_all(block)
        written += len(block)
    write_all(b"FLOOD-DONE\n")
    return {"written": written}
"#;

/// A process's `VmRSS` and `VmHWM` (peak) in kB.
fn memory_kb(pid: u32) -> (u64, u64) {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let field = |name: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.split_whitespace().next())
            .and_then(|v| v.parse().ok())
            .unwrap()
    };
    (field("VmRSS:"), field("VmHWM:"))
}

#[test]
fn a_flood_of_output_leaves_a_bounded_log() {
    let w =
        Worker::start("[logs]\nmax_file_bytes = 1048576\nmax_files = 2\nmax_line_bytes = 4096\n");
    w.deploy_ok("flood", &[("f.py", FLOOD)]);
    w.deploy_ok("canary", &[("f.py", crate::harness::CANARY)]);
    assert_eq!(w.run("canary", "{}").status, 200);
    let (_, peak_before) = memory_kb(w.pid());
    let worker_log_before = w.log_text().len();
    let t = Instant::now();
    let r = w.run("flood", "{}");
    assert_eq!(r.status, 200, "{}", r.text());
    assert!(r.json()["written"].as_u64().unwrap() >= 50 << 20);
    let took = t.elapsed();
    wait_for("the last line", || {
        w.request("GET", "/logs/flood?tail=1", &[], b"")
            .text()
            .ends_with("| FLOOD-DONE\n")
    });
    // Three files of at most 1 MiB each, whatever the function wrote.
    let logs = w.root.path().join("logs");
    let mut total = 0;
    for entry in std::fs::read_dir(&logs).unwrap().flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        assert!(
            ["flood.log", "flood.log.1", "flood.log.2", "canary.log"].contains(&name.as_str()),
            "{name}"
        );
        let len = entry.metadata().unwrap().len();
        assert!(len <= 1 << 20, "{name}: {len} bytes");
        total += len;
    }
    assert!(total <= 3 << 20, "{total} bytes of logs");
    // None of it reached the worker's own log.
    let grew = w.log_text().len() - worker_log_before;
    assert!(grew < 64 * 1024, "the worker's log grew by {grew} bytes");
    // The worker read 50 MB without holding it: its peak memory barely moved.
    let (rss, peak) = memory_kb(w.pid());
    assert!(
        peak < peak_before + 32 * 1024,
        "worker peak RSS went from {peak_before} kB to {peak} kB (now {rss} kB)"
    );
    eprintln!(
        "50 MB of output in {:.2} s; worker peak RSS {peak_before} -> {peak} kB; logs {total} bytes",
        took.as_secs_f64()
    );
    // The 10 MB line was cut.
    let tail = w.request("GET", "/logs/flood?tail=10000", &[], b"").text();
    assert!(
        tail.lines().all(|l| l.len() < 4096 + 200),
        "a line past the limit"
    );
    assert_eq!(w.run("canary", "{}").status, 200);
    w.assert_no_leaks();
    w.stop();
}
