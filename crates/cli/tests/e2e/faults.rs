//! Bad input and faults (issue 2): each one answered with the right status, without taking the
//! worker down and without leaking a mount, cgroup or process.

use crate::harness::{self, RawTar, Resp, Worker};
use std::path::PathBuf;
use std::time::{Duration, Instant};

const HELLO: &str =
    "def f(event):\n    return {\"hello\": (event or {}).get(\"name\", \"world\")}\n";

/// A handler that sleeps for `event["sleep"]` seconds (0 by default).
const SLEEPER: &str = "import time\n\ndef f(event):\n    time.sleep((event or {}).get(\"sleep\", 0))\n    return {\"slept\": (event or {}).get(\"sleep\", 0)}\n";

fn sandbox_of(r: &Resp) -> String {
    r.header("x-kindling-sandbox")
        .unwrap_or_else(|| panic!("no X-Kindling-Sandbox header: {r:?}"))
        .to_string()
}

fn assert_error(r: &Resp, status: u16, mentions: &[&str]) {
    assert_eq!(r.status, status, "expected {status}, got: {}", r.text());
    let body = r.text();
    assert!(!body.trim().is_empty(), "error without a message");
    for m in mentions {
        assert!(
            body.contains(m),
            "error body does not mention `{m}`: {body}"
        );
    }
}

/// Ends a test: the worker still serves, nothing leaked, and a clean stop.
fn finish(w: Worker) {
    w.assert_serves();
    w.assert_no_leaks();
    w.stop();
}

#[test]
fn malformed_json_is_400() {
    let w = Worker::start("");
    w.deploy_ok("hello", &[("f.py", HELLO)]);
    for body in [
        r#"{"name": "#,
        "not json",
        "{'name': 1}",
        "[1, 2,]",
        "{\"a\": 1} trailing",
    ] {
        let r = w.run("hello", body);
        assert_error(&r, 400, &["JSON"]);
        assert_eq!(r.header("x-kindling-error"), Some("malformed-json"));
    }
    // Refused before any sandbox was made.
    assert_eq!(w.live_sandboxes(), 0);
    let r = w.run("hello", r#"{"name": "json"}"#);
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json(), serde_json::json!({"hello": "json"}));
    finish(w);
}

#[test]
fn unknown_function_is_404() {
    let w = Worker::start("");
    let r = w.run("nosuchfunction", "{}");
    assert_error(&r, 404, &["nosuchfunction"]);
    let r = w.request("GET", "/registry/nosuchfunction", &[], b"");
    assert_eq!(r.status, 404, "{}", r.text());
    let r = w.request("DELETE", "/registry/nosuchfunction", &[], b"");
    assert_eq!(r.status, 404, "{}", r.text());
    let r = w.request("GET", "/no/such/endpoint", &[], b"");
    assert_eq!(r.status, 404, "{}", r.text());
    assert_eq!(w.live_sandboxes(), 0);
    finish(w);
}

#[test]
fn invalid_function_names_are_400() {
    let w = Worker::start("");
    w.deploy_ok("hello", &[("f.py", HELLO)]);
    let long = "a".repeat(100);
    let bad_runs = [
        "/run/..%2F".to_string(),
        "/run/..".to_string(),
        "/run/.hidden".to_string(),
        "/run/a%20b".to_string(),
        "/run/%2E%2E%2Fetc".to_string(),
        "/run/hello%00".to_string(),
        "/run/-dash".to_string(),
        "/run/a/b".to_string(),
        format!("/run/{long}"),
    ];
    for path in &bad_runs {
        let r = w.request("POST", path, &[], b"{}");
        assert_eq!(r.status, 400, "POST {path}: {}", r.text());
        assert!(!r.text().trim().is_empty(), "POST {path}: no message");
    }
    let tgz = RawTar::new().file("f.py", HELLO.as_bytes()).gz();
    let bad_names = [
        ".hidden",
        "..",
        "..%2F..%2Ftmp",
        "a%20b",
        long.as_str(),
        "-x",
        "%C3%A9",
    ];
    for name in bad_names {
        for method in ["POST", "PUT"] {
            let r = w.request(method, &format!("/registry/{name}"), &[], &tgz);
            assert_eq!(r.status, 400, "{method} /registry/{name}: {}", r.text());
            assert!(r.text().contains("invalid function name"), "{}", r.text());
        }
        let r = w.request("DELETE", &format!("/registry/{name}"), &[], b"");
        assert_eq!(r.status, 400, "DELETE /registry/{name}: {}", r.text());
    }
    // Nothing but the valid function was created.
    let names: Vec<String> = std::fs::read_dir(w.functions_dir())
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(names, vec!["hello".to_string()]);
    assert_eq!(w.run("hello", "{}").status, 200);
    w.assert_serves();
    w.assert_no_leaks();
    // An invalid name is a bad request whatever the method: GET too.
    let r = w.request("GET", "/registry/.hidden", &[], b"");
    assert_eq!(r.status, 400, "GET /registry/.hidden: {}", r.text());
    w.stop();
}

#[test]
fn body_over_limit_is_413() {
    let w = Worker::start("max_body_bytes = 1024");
    w.deploy_ok("hello", &[("f.py", HELLO)]);
    let big = format!("{{\"name\": \"{}\"}}", "x".repeat(2000));
    let r = w.run("hello", &big);
    assert_error(&r, 413, &["1024"]);
    // Chunked, without a Content-Length: the limit holds while reading.
    let chunk = format!("{:x}\r\n{big}\r\n0\r\n\r\n", big.len());
    let raw = format!(
        "POST /run/hello HTTP/1.1\r\nHost: x\r\nConnection: close\r\nTransfer-Encoding: chunked\r\n\r\n{chunk}"
    );
    let r = w.raw_request(raw.as_bytes());
    assert_error(&r, 413, &["1024"]);
    // Just under the limit works.
    let ok = format!("{{\"name\": \"{}\"}}", "y".repeat(900));
    let r = w.run("hello", &ok);
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json()["hello"].as_str().unwrap().len(), 900);
    finish(w);
}

#[test]
fn upload_over_body_limit_is_413() {
    // Uploads have their own limit, `max_upload_bytes`.
    let w = Worker::start("max_upload_bytes = 1024");
    let noise: Vec<u8> = (0..4096u32)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
        .collect();
    let tgz = RawTar::new()
        .file("f.py", HELLO.as_bytes())
        .file("noise.bin", &noise)
        .gz();
    assert!(tgz.len() > 1024);
    let r = w.request("POST", "/registry/big", &[], &tgz);
    assert_eq!(r.status, 413, "upload of {} bytes: {}", tgz.len(), r.text());
    assert!(!w.functions_dir().join("big").exists());
    finish(w);
}

// --- hostile archives --------------------------------------------------------------------

/// A path under /tmp that a successful escape would create; unique per test.
fn evil_path(tag: &str) -> PathBuf {
    PathBuf::from(format!("/tmp/kindling-evil-{}-{tag}", std::process::id()))
}

/// Uploads `tgz` as function `evil` and checks: 400 naming `entry`, nothing new on disk in the
/// worker root (beyond the log), nothing at `outside`, the worker still serves.
fn assert_archive_rejected(w: &Worker, tgz: &[u8], entry: &str, outside: &[PathBuf]) {
    let before = harness::tree(w.root.path());
    let refused = w.request("POST", "/registry/evil", &[], tgz);
    assert_error(&refused, 400, &[]);
    let after = harness::tree(w.root.path());
    assert_eq!(
        before, after,
        "the worker root changed after a refused upload"
    );
    assert!(!w.functions_dir().join("evil").exists());
    for p in outside {
        assert!(
            !p.exists(),
            "{} was created outside the function directory",
            p.display()
        );
    }
    let r = w.run("evil", "{}");
    assert_eq!(
        r.status,
        404,
        "a refused function is not deployed: {}",
        r.text()
    );
    w.assert_serves();
    // Last, so the checks above run even when this one fails.
    assert_error(&refused, 400, &[entry]);
}

fn archive_worker(extra: &str) -> Worker {
    let w = Worker::start(extra);
    // A good deploy first, so the refused ones have a populated functions/ to stay out of.
    w.deploy_ok("canary", &[("f.py", harness::CANARY)]);
    w
}

#[test]
fn archive_absolute_path_is_400() {
    let w = archive_worker("");
    let evil = evil_path("abs");
    let name = format!("{}/pwned", evil.display());
    let tgz = RawTar::new()
        .file("f.py", HELLO.as_bytes())
        .file(&name, b"pwned")
        .gz();
    assert_archive_rejected(&w, &tgz, &name, std::slice::from_ref(&evil));
    let tgz = RawTar::new().file("/f.py", HELLO.as_bytes()).gz();
    assert_archive_rejected(&w, &tgz, "/f.py", &[]);
    finish(w);
}

#[test]
fn archive_parent_dir_is_400() {
    let w = archive_worker("");
    let evil = evil_path("dotdot");
    let name = format!(
        "{}{}",
        "../".repeat(12),
        evil.strip_prefix("/").unwrap().display()
    );
    let tgz = RawTar::new()
        .file("f.py", HELLO.as_bytes())
        .file(&format!("{name}/pwned"), b"pwned")
        .gz();
    assert_archive_rejected(&w, &tgz, &name, std::slice::from_ref(&evil));
    // One level up only: would land in functions/evil/ or functions/.
    let tgz = RawTar::new()
        .file("f.py", HELLO.as_bytes())
        .dir("sub")
        .file("sub/../../stray.py", b"x = 1")
        .gz();
    assert_archive_rejected(&w, &tgz, "sub/../../stray.py", &[]);
    assert!(!w.functions_dir().join("stray.py").exists());
    finish(w);
}

#[test]
fn archive_symlink_escape_is_400() {
    let w = archive_worker("");
    let evil = evil_path("symlink");
    std::fs::create_dir_all(&evil).unwrap();
    let target = evil.display().to_string();
    // Absolute target, then a file written through the link.
    let tgz = RawTar::new()
        .file("f.py", HELLO.as_bytes())
        .symlink("out", &target)
        .file("out/pwned", b"pwned")
        .gz();
    assert_archive_rejected(&w, &tgz, "out", &[evil.join("pwned")]);
    // Relative target climbing out.
    let rel = format!("{}tmp", "../".repeat(12));
    let tgz = RawTar::new()
        .file("f.py", HELLO.as_bytes())
        .symlink("up", &rel)
        .file(
            &format!("up/{}/pwned2", evil.file_name().unwrap().to_string_lossy()),
            b"pwned",
        )
        .gz();
    assert_archive_rejected(&w, &tgz, "up", &[evil.join("pwned2")]);
    // A link that climbs out of the function directory into a sibling's.
    let tgz = RawTar::new()
        .file("f.py", HELLO.as_bytes())
        .dir("d")
        .symlink("d/sneaky", "../../evil/f.py")
        .gz();
    assert_archive_rejected(&w, &tgz, "d/sneaky", &[]);
    assert_eq!(
        std::fs::read_dir(&evil).unwrap().count(),
        0,
        "files written through a link"
    );
    std::fs::remove_dir(&evil).unwrap();
    finish(w);
}

#[test]
fn archive_hard_link_escape_is_400() {
    let w = archive_worker("");
    let evil = evil_path("hardlink");
    std::fs::create_dir_all(&evil).unwrap();
    let secret = evil.join("secret");
    std::fs::write(&secret, "host secret").unwrap();
    let target = secret.display().to_string();
    for (link, to) in [
        ("hl", target.clone()),
        (
            "hl2",
            format!("{}{}", "../".repeat(12), target.trim_start_matches('/')),
        ),
        ("hl3", "/etc/passwd".to_string()),
        ("hl4", "../canary/current".to_string()),
    ] {
        let tgz = RawTar::new()
            .file("f.py", HELLO.as_bytes())
            .hard_link(link, &to)
            .gz();
        assert_archive_rejected(&w, &tgz, link, &[]);
    }
    // The host file is untouched and has no new links.
    assert_eq!(std::fs::read_to_string(&secret).unwrap(), "host secret");
    use std::os::unix::fs::MetadataExt;
    assert_eq!(std::fs::metadata(&secret).unwrap().nlink(), 1);
    std::fs::remove_dir_all(&evil).unwrap();
    finish(w);
}

#[test]
fn archive_device_file_is_400() {
    let w = archive_worker("");
    for (name, kind) in [
        ("dev/null", tar::EntryType::Char),
        ("dev/sda", tar::EntryType::Block),
    ] {
        let tgz = RawTar::new()
            .file("f.py", HELLO.as_bytes())
            .entry(name, kind, 0o666, "", b"")
            .gz();
        assert_archive_rejected(&w, &tgz, name, &[]);
    }
    finish(w);
}

#[test]
fn archive_fifo_is_400() {
    let w = archive_worker("");
    let tgz = RawTar::new()
        .file("f.py", HELLO.as_bytes())
        .entry("pipe", tar::EntryType::Fifo, 0o644, "", b"")
        .gz();
    assert_archive_rejected(&w, &tgz, "pipe", &[]);
    finish(w);
}

#[test]
fn archive_over_size_limit_is_400() {
    let w = archive_worker("[archive]\nmax_unpacked_bytes = 4096");
    let tgz = RawTar::new()
        .file("f.py", HELLO.as_bytes())
        .file("small.txt", &[b'a'; 1000])
        .file("huge.bin", &vec![0u8; 64 * 1024])
        .gz();
    let r = w.request("POST", "/registry/evil", &[], &tgz);
    assert_error(&r, 400, &["4096"]);
    // The refusal names the entry that crossed the limit (issue 2: "naming the offending entry").
    assert_archive_rejected(&w, &tgz, "huge.bin", &[]);
    finish(w);
}

// --- handler faults ----------------------------------------------------------------------

#[test]
fn handler_exception_is_500_with_traceback() {
    let w = Worker::start("");
    w.deploy_ok(
        "boom",
        &[(
            "f.py",
            "def helper(x):\n    raise ValueError(f\"kaboom-{x}\")\n\ndef f(event):\n    if event.get(\"ok\"):\n        return \"fine\"\n    return helper(42)\n",
        )],
    );
    let r = w.run("boom", "{}");
    assert_error(&r, 500, &["Traceback", "ValueError", "kaboom-42", "helper"]);
    assert_eq!(r.header("x-kindling-error"), Some("exception"));
    // An exception does not cost the instance: the next call is warm.
    let r = w.run("boom", r#"{"ok": true}"#);
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json(), serde_json::json!("fine"));
    assert_eq!(r.header("x-kindling-start"), Some("warm"));
    // A module that fails to import reports its traceback too.
    w.deploy_ok(
        "badimport",
        &[(
            "f.py",
            "import no_such_module_xyz\n\ndef f(event):\n    return 1\n",
        )],
    );
    let r = w.run("badimport", "{}");
    assert!(r.status >= 500, "{}", r.text());
    assert!(r.text().contains("no_such_module_xyz"), "{}", r.text());
    finish(w);
}

#[test]
fn handler_timeout_is_504_and_instance_killed() {
    let w = Worker::start("[defaults]\ntimeout_secs = 1");
    w.deploy_ok("sleepy", &[("f.py", SLEEPER)]);
    let r = w.run("sleepy", "{}");
    assert_eq!(r.status, 200, "{}", r.text());
    let sb = sandbox_of(&r);
    let procs = w.processes_of_sandbox(&sb);
    assert!(
        !procs.is_empty(),
        "no processes found in sandbox {sb}'s cgroup"
    );

    let t = Instant::now();
    let r = w.run("sleepy", r#"{"sleep": 30}"#);
    assert_error(&r, 504, &["timeout"]);
    assert!(
        t.elapsed() < Duration::from_secs(10),
        "took {:?}",
        t.elapsed()
    );
    assert_eq!(sandbox_of(&r), sb);
    w.assert_sandbox_gone(&sb, &procs);

    let r = w.run("sleepy", "{}");
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.header("x-kindling-start"), Some("cold"));
    assert_ne!(sandbox_of(&r), sb);
    finish(w);
}

#[test]
fn handler_over_memory_limit_is_clear_error() {
    let w = Worker::start("[defaults]\nmemory_mb = 64");
    w.deploy_ok(
        "hog",
        &[(
            "f.py",
            "def f(event):\n    if event.get(\"mb\"):\n        blob = b\"x\" * (event[\"mb\"] << 20)\n        return len(blob)\n    return \"small\"\n",
        )],
    );
    let r = w.run("hog", "{}");
    assert_eq!(r.status, 200, "{}", r.text());
    let sb = sandbox_of(&r);
    let procs = w.processes_of_sandbox(&sb);
    assert!(!procs.is_empty());

    let r = w.run("hog", r#"{"mb": 200}"#);
    assert!(
        r.status >= 500,
        "an out-of-memory call must fail: {} {}",
        r.status,
        r.text()
    );
    assert!(
        r.text().to_lowercase().contains("memory"),
        "unclear message: {}",
        r.text()
    );
    assert!(
        r.text().contains("64"),
        "message should state the limit: {}",
        r.text()
    );
    w.assert_sandbox_gone(&sb, &procs);

    let r = w.run("hog", "{}");
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.header("x-kindling-start"), Some("cold"));
    finish(w);
}

/// Samples the number of processes in the sandboxes of a worker while `f` runs.
fn max_processes_during<T>(w: &Worker, f: impl FnOnce() -> T + Send) -> (T, usize)
where
    T: Send,
{
    let done = std::sync::atomic::AtomicBool::new(false);
    std::thread::scope(|s| {
        let sampler = s.spawn(|| {
            let mut max = 0;
            while !done.load(std::sync::atomic::Ordering::SeqCst) {
                max = max.max(w.sandbox_pids().len());
                std::thread::sleep(Duration::from_millis(20));
            }
            max
        });
        let out = f();
        done.store(true, std::sync::atomic::Ordering::SeqCst);
        (out, sampler.join().unwrap())
    })
}

const FORKER: &str = r#"import os, time

def f(event):
    kids, error = [], None
    while len(kids) < 1000:
        try:
            pid = os.fork()
        except OSError as e:
            error = str(e)
            break
        if pid == 0:
            time.sleep(3)
            os._exit(0)
        kids.append(pid)
    n = len(kids)
    for k in kids:
        os.kill(k, 9)
        os.waitpid(k, 0)
    return {"forked": n, "error": error}
"#;

#[test]
fn fork_bomb_is_contained_by_pids_limit() {
    let w = Worker::start("[defaults]\ntimeout_secs = 10\npids = 32");
    w.deploy_ok("forker", &[("f.py", FORKER)]);
    let (r, max) = max_processes_during(&w, || w.run("forker", "{}"));
    assert_eq!(r.status, 200, "{}", r.text());
    let v = r.json();
    let forked = v["forked"].as_u64().unwrap();
    assert!(
        forked > 0 && forked < 32,
        "forked {forked} children under pids = 32: {v}"
    );
    assert!(v["error"].is_string(), "fork never failed: {v}");
    assert!(max <= 32, "{max} processes in the sandbox");
    // The instance survives and the next call is warm.
    let r = w.run("forker", "{}");
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.header("x-kindling-start"), Some("warm"));
    finish(w);
}

#[test]
fn exponential_fork_bomb_is_killed() {
    let w = Worker::start("[defaults]\ntimeout_secs = 2\npids = 32");
    w.deploy_ok(
        "bomb",
        &[(
            "f.py",
            "import os, time\n\ndef f(event):\n    if not event.get(\"go\"):\n        return \"idle\"\n    while True:\n        try:\n            os.fork()\n        except OSError:\n            time.sleep(0.001)\n",
        )],
    );
    let r = w.run("bomb", "{}");
    assert_eq!(r.status, 200, "{}", r.text());
    let sb = sandbox_of(&r);
    let (r, max) = max_processes_during(&w, || w.run("bomb", r#"{"go": true}"#));
    assert!(r.status >= 500, "{} {}", r.status, r.text());
    assert!(max <= 32, "{max} processes in the sandbox");
    // The killed sandbox leaves no process behind: nothing in its cgroup, nothing at all.
    w.assert_sandbox_gone(&sb, &[]);
    let deadline = Instant::now() + Duration::from_secs(10);
    while !w.sandbox_pids().is_empty() {
        assert!(Instant::now() < deadline, "left: {:?}", w.sandbox_pids());
        std::thread::sleep(Duration::from_millis(50));
    }
    let r = w.run("bomb", "{}");
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.header("x-kindling-start"), Some("cold"));
    finish(w);
}

fn assert_dies_then_recovers(code: &str) {
    let w = Worker::start("");
    w.deploy_ok(
        "dies",
        &[("f.py", &format!("import os, signal\n\ndef f(event):\n    if event.get(\"die\"):\n        {code}\n    return \"alive\"\n"))],
    );
    let r = w.run("dies", "{}");
    assert_eq!(r.status, 200, "{}", r.text());
    let sb = sandbox_of(&r);
    let procs = w.processes_of_sandbox(&sb);
    let r = w.run("dies", r#"{"die": true}"#);
    assert!((500..600).contains(&r.status), "{} {}", r.status, r.text());
    assert!(!r.text().trim().is_empty());
    w.assert_sandbox_gone(&sb, &procs);
    let r = w.run("dies", "{}");
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json(), serde_json::json!("alive"));
    assert_eq!(r.header("x-kindling-start"), Some("cold"));
    finish(w);
}

#[test]
fn handler_exit_is_5xx() {
    assert_dies_then_recovers("os._exit(3)");
}

#[test]
fn handler_self_kill_is_5xx() {
    assert_dies_then_recovers("os.kill(os.getpid(), signal.SIGKILL)");
}

// --- formats, versions, limits -----------------------------------------------------------

#[test]
fn sebs_format_envelope() {
    let w = Worker::start("");
    let r = w.deploy(
        "sebs",
        &[
            (
                "function.py",
                "def handler(event):\n    return {\"result\": {\"double\": event[\"x\"] * 2, \"rid\": event.get(\"request-id\")}}\n",
            ),
            ("config.json", r#"{"timeout": 5, "memory": 128, "languages": ["python"]}"#),
        ],
    );
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json()["format"], "sebs");
    let mut containers = Vec::new();
    for (i, cold) in [(0, true), (1, false)] {
        let r = w.run("sebs", &format!("{{\"x\": {}}}", 21 + i));
        assert_eq!(r.status, 200, "{}", r.text());
        let v = r.json();
        for key in [
            "begin",
            "end",
            "is_cold",
            "request_id",
            "container_id",
            "result",
        ] {
            assert!(v.get(key).is_some(), "SeBS envelope lacks `{key}`: {v}");
        }
        let num = |k: &str| -> f64 {
            v[k].as_str()
                .map(|s| s.parse().unwrap())
                .or_else(|| v[k].as_f64())
                .unwrap_or_else(|| panic!("{k}: {v}"))
        };
        assert!(num("end") >= num("begin"), "{v}");
        assert_eq!(v["is_cold"], cold, "{v}");
        assert_eq!(v["result"]["result"]["double"], 2 * (21 + i), "{v}");
        let rid = v["request_id"].as_str().unwrap();
        assert!(!rid.is_empty());
        assert_eq!(v["result"]["result"]["rid"], rid, "{v}");
        assert_eq!(r.header("x-kindling-request"), Some(rid));
        let cid = v["container_id"].as_str().unwrap().to_string();
        assert_eq!(r.header("x-kindling-sandbox"), Some(cid.as_str()));
        containers.push(cid);
    }
    assert_eq!(
        containers[0], containers[1],
        "a warm call runs in the same container"
    );
    finish(w);
}

#[test]
fn redeploy_unchanged_and_changed() {
    let w = Worker::start("");
    let v1 = "def f(event):\n    return \"v1\"\n";
    let v2 = "def f(event):\n    return \"v2\"\n";
    let r = w.deploy("ver", &[("f.py", v1)]);
    assert_eq!(r.status, 200, "{}", r.text());
    let first = r.json();
    assert_eq!(first["changed"], true);
    let r = w.run("ver", "{}");
    assert_eq!(r.json(), serde_json::json!("v1"));
    let sb = sandbox_of(&r);
    let procs = w.processes_of_sandbox(&sb);

    let r = w.deploy("ver", &[("f.py", v1)]);
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json()["changed"], false);
    assert_eq!(r.json()["hash"], first["hash"]);
    let r = w.run("ver", "{}");
    assert_eq!(
        r.header("x-kindling-start"),
        Some("warm"),
        "unchanged redeploy kept the instance"
    );
    assert_eq!(sandbox_of(&r), sb);

    let r = w.deploy("ver", &[("f.py", v2)]);
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json()["changed"], true);
    assert_ne!(r.json()["hash"], first["hash"]);
    let r = w.run("ver", "{}");
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json(), serde_json::json!("v2"));
    assert_eq!(r.header("x-kindling-start"), Some("cold"));
    assert_ne!(sandbox_of(&r), sb);
    w.assert_sandbox_gone(&sb, &procs);
    // Only the version in service is on disk.
    let versions: Vec<_> = std::fs::read_dir(w.functions_dir().join("ver"))
        .unwrap()
        .flatten()
        .filter(|e| e.path().is_dir())
        .collect();
    assert_eq!(versions.len(), 1, "{versions:?}");
    finish(w);
}

#[test]
fn queue_full_is_429() {
    let w = Worker::start("max_instances_per_function = 1\nmax_queue_per_function = 1");
    w.deploy_ok("slow", &[("f.py", SLEEPER)]);
    let statuses: Vec<u16> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..4)
            .map(|_| s.spawn(|| w.run("slow", r#"{"sleep": 1}"#).status))
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    assert!(statuses.contains(&429), "no 429 among {statuses:?}");
    assert!(statuses.contains(&200), "no call succeeded: {statuses:?}");
    assert!(
        statuses.iter().all(|s| *s == 200 || *s == 429),
        "{statuses:?}"
    );
    assert!(
        statuses.iter().filter(|s| **s == 200).count() <= 2,
        "{statuses:?}"
    );
    let r = w.run("slow", "{}");
    assert_eq!(r.status, 200, "{}", r.text());
    finish(w);
}

#[test]
fn deleted_function_is_404() {
    let w = Worker::start("");
    w.deploy_ok("gone", &[("f.py", HELLO)]);
    let r = w.run("gone", "{}");
    assert_eq!(r.status, 200, "{}", r.text());
    let sb = sandbox_of(&r);
    let procs = w.processes_of_sandbox(&sb);
    let r = w.request("DELETE", "/registry/gone", &[], b"");
    assert_eq!(r.status, 200, "{}", r.text());
    let r = w.run("gone", "{}");
    assert_error(&r, 404, &["gone"]);
    assert_eq!(w.request("GET", "/registry/gone", &[], b"").status, 404);
    assert_eq!(w.request("DELETE", "/registry/gone", &[], b"").status, 404);
    assert!(!w.functions_dir().join("gone").exists());
    // Its idle instance went with it.
    w.assert_sandbox_gone(&sb, &procs);
    assert_eq!(w.live_sandboxes(), 0);
    finish(w);
}

/// `kill -9` of the worker: its sandboxes' processes die with it (spawner and inits follow
/// through PDEATHSIG) and the next worker on the same root removes the cgroups left behind.
#[test]
fn worker_crash_leaves_nothing_after_restart() {
    let mut w = Worker::start("");
    w.deploy_ok("hello", &[("f.py", HELLO)]);
    for _ in 0..3 {
        assert_eq!(w.run_cold("hello", "{}").status, 200);
    }
    let pids = w.sandbox_pids();
    assert!(!pids.is_empty(), "no sandbox processes to orphan");
    w.crash();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while pids
        .iter()
        .any(|p| std::path::Path::new(&format!("/proc/{p}")).exists())
    {
        // A process that is already a zombie is dead; only running ones count.
        let running: Vec<_> = pids
            .iter()
            .filter(|p| {
                std::fs::read_to_string(format!("/proc/{p}/stat"))
                    .is_ok_and(|s| !s.split(") ").nth(1).unwrap_or("").starts_with('Z'))
            })
            .collect();
        if running.is_empty() {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "sandbox processes outlived the worker: {running:?}"
        );
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    assert!(
        !w.cgroups().is_empty(),
        "the crash left no cgroups to clean (test is moot)"
    );
    w.spawn();
    assert!(
        w.log_text().contains("left behind by a previous worker"),
        "{}",
        w.log_text()
    );
    w.assert_no_leaks();
    assert_eq!(w.run("hello", "{}").status, 200);
    w.stop();
}
