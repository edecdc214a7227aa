//! The API's defences (issue #9, items 2 and 9): admin routes need the worker's token, which
//! only root can read; registry reads never carry environment values; slow or silent clients
//! are disconnected and connections are capped; idle instances are frozen.

use crate::harness::{pack_files, Worker, CANARY};
use serde_json::json;
use std::io::{ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::process::Command;
use std::time::{Duration, Instant};

const HELLO: &str = "def f(event):\n    return {\"hello\": \"world\"}\n";

/// Every admin route, with a body where it takes one.
fn admin_requests() -> Vec<(&'static str, &'static str, Vec<u8>)> {
    let evil = pack_files(&[("f.py", "def f(event):\n    return {\"pwned\": True}\n")]);
    vec![
        ("POST", "/registry/victim", evil.clone()),
        ("PUT", "/registry/intruder", evil),
        ("DELETE", "/registry/victim", Vec::new()),
        ("GET", "/registry", Vec::new()),
        ("GET", "/registry/victim", Vec::new()),
        ("GET", "/packages", Vec::new()),
        ("POST", "/packages/gc", Vec::new()),
        ("DELETE", "/packages/six==1.16.0", Vec::new()),
        ("GET", "/stats", Vec::new()),
        ("GET", "/metrics", Vec::new()),
        ("GET", "/logs/victim?tail=5", Vec::new()),
    ]
}

/// Without the admin token, or with a wrong one, every admin route answers 401 with a Bearer
/// challenge and changes nothing; `/run` stays open (by default) and `/status` answers anyone,
/// without host paths or function names.
#[test]
fn admin_routes_need_the_token() {
    let w = Worker::start("");
    w.deploy_ok("victim", &[("f.py", HELLO)]);
    let hash = w.request("GET", "/registry/victim", &[], b"").json()["hash"].clone();
    let wrong = format!("Bearer {}", "0".repeat(64));
    let credentials: [&[(&str, &str)]; 4] = [
        &[],
        &[("Authorization", wrong.as_str())],
        &[("Authorization", "Bearer")],
        &[("Authorization", "Basic cm9vdDpyb290")],
    ];
    for headers in credentials {
        for (method, path, body) in admin_requests() {
            let r = w.request_unauthenticated(method, path, headers, &body);
            assert_eq!(
                r.status,
                401,
                "{method} {path} with {headers:?}: {}",
                r.text()
            );
            let challenge = r.header("www-authenticate").unwrap_or("");
            assert!(
                challenge.starts_with("Bearer"),
                "{method} {path}: {challenge:?}"
            );
            assert!(
                r.text().contains("admin token"),
                "{method} {path}: {}",
                r.text()
            );
            assert!(!r.text().contains("victim"), "{}", r.text());
        }
    }
    // Nothing changed: same version in service, no new function, the function still runs.
    let after = w.request("GET", "/registry/victim", &[], b"").json();
    assert_eq!(after["hash"], hash);
    assert_eq!(w.request("GET", "/registry/intruder", &[], b"").status, 404);
    let r = w.request_unauthenticated("POST", "/run/victim", &[], b"{}");
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json(), json!({"hello": "world"}));
    assert!(w.stats()["errors.unauthorized"].as_u64().unwrap_or(0) >= 40);

    let root = w.root.path().to_string_lossy().into_owned();
    let open = w.request_unauthenticated("GET", "/status", &[], b"");
    assert_eq!(open.status, 200);
    assert_eq!(open.json()["status"], "ready");
    for secret in [root.as_str(), "victim", "/var/lib", "rootfs", "zygotes"] {
        assert!(
            !open.text().contains(secret),
            "unauthenticated /status shows {secret:?}: {}",
            open.text()
        );
    }
    let full = w.request("GET", "/status", &[], b"").json();
    assert_eq!(full["root"], json!(root));
    w.assert_no_leaks();
    w.stop();
}

/// The operator may make `/run` need the token too.
#[test]
fn run_may_need_the_token() {
    let w = Worker::start("run_requires_token = true\n");
    w.deploy_ok("hello", &[("f.py", HELLO)]);
    let r = w.request_unauthenticated("POST", "/run/hello", &[], b"{}");
    assert_eq!(r.status, 401, "{}", r.text());
    assert!(r.header("www-authenticate").is_some());
    let r = w.run("hello", "{}");
    assert_eq!(r.status, 200, "{}", r.text());
    w.stop();
}

/// `kindling <client command>` as uid `nobody` cannot read the token and cannot administer the
/// worker; as root the same commands work with no setup, and `kindling token` prints the token,
/// which the worker keeps across restarts in a root-only file.
#[test]
fn only_root_administers_through_the_cli() {
    let mut w = Worker::start("");
    w.deploy_ok("victim", &[("f.py", HELLO)]);
    let token_file = w.root.path().join("token");
    let meta = std::fs::metadata(&token_file).unwrap();
    assert_eq!(meta.mode() & 0o777, 0o600);
    assert_eq!(meta.uid(), 0);
    assert!(w.token.len() >= 64 && w.token.bytes().all(|b| b.is_ascii_hexdigit()));

    // A function directory nobody can read, and the root the CLI looks in for the token.
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("f.py"), "def f(event):\n    return 1\n").unwrap();
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    std::fs::set_permissions(
        dir.path().join("f.py"),
        std::fs::Permissions::from_mode(0o644),
    )
    .unwrap();
    let dir_arg = dir.path().to_string_lossy().into_owned();
    let as_nobody = |args: &[&str], env: &[(&str, &str)]| {
        let mut c = Command::new("setpriv");
        c.args(["--reuid=65534", "--regid=65534", "--clear-groups"])
            .arg(crate::harness::kindling_bin())
            .arg("--addr")
            .arg(w.addr.to_string())
            .arg("--root")
            .arg(w.root.path())
            .args(args)
            .env_remove("KINDLING_TOKEN")
            .envs(env.iter().copied());
        let out = c.output().expect("setpriv");
        let text = String::from_utf8_lossy(&out.stdout).into_owned()
            + &String::from_utf8_lossy(&out.stderr);
        (out.status.success(), text)
    };
    let admin_commands: [&[&str]; 7] = [
        &["deploy", &dir_arg, "--name", "victim"],
        &["rm", "victim"],
        &["ls"],
        &["status"],
        &["pkg", "ls"],
        &["pkg", "gc"],
        &["pkg", "rm", "six==1.16.0"],
    ];
    for args in admin_commands {
        let (ok, text) = as_nobody(args, &[]);
        assert!(!ok, "nobody ran `kindling {}`: {text}", args.join(" "));
        assert!(
            text.contains("401"),
            "`kindling {}`: {text}",
            args.join(" ")
        );
    }
    let (ok, text) = as_nobody(&["ls"], &[("KINDLING_TOKEN", &"ab".repeat(32))]);
    assert!(
        !ok && text.contains("not this worker's admin token"),
        "{text}"
    );
    let (ok, text) = as_nobody(&["token"], &[]);
    assert!(!ok, "nobody read the token: {text}");
    assert!(!text.contains(&w.token), "{text}");
    // Invoking stays open to everyone by default.
    let (ok, text) = as_nobody(&["invoke", "victim"], &[]);
    assert!(ok, "{text}");
    assert!(text.contains("hello"), "{text}");
    // Nothing nobody tried happened.
    let info = w.request("GET", "/registry/victim", &[], b"").json();
    assert!(info["hash"].is_string(), "{info}");
    assert_eq!(w.run("victim", "{}").json(), json!({"hello": "world"}));

    // Root: works out of the box, and `kindling token` prints the token.
    let out = w.cli_command().arg("token").output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), w.token);
    let out = w.cli_command().arg("ls").output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("victim"));
    let out = w
        .cli_command()
        .args(["deploy", &dir_arg, "--name", "rootfn"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    // Kept across restarts (a crash included).
    let before = w.token.clone();
    w.crash();
    w.spawn();
    assert_eq!(w.token, before);
    assert_eq!(w.request("GET", "/registry/victim", &[], b"").status, 200);
    w.stop();
}

/// `GET /registry/<name>` (and `GET /registry`) name a function's environment variables but
/// never carry their values, not even in the instance layout; the function still gets them.
#[test]
fn registry_reads_carry_no_secrets() {
    let w = Worker::start("");
    let secret = format!("hunter2-{}", std::process::id());
    let api_key = format!("key-{}-xyz", w.addr.port());
    w.deploy_ok(
        "secretive",
        &[
            (
                "f.py",
                "import os\ndef f(event):\n    return {\"db\": os.environ[\"DB_PASSWORD\"]}\n",
            ),
            (
                "ol.yaml",
                &format!("environment:\n  DB_PASSWORD: {secret}\n  API_KEY: \"{api_key}\"\n"),
            ),
        ],
    );
    let r = w.run("secretive", "{}");
    assert_eq!(
        r.json(),
        json!({"db": secret}),
        "the function lost its environment"
    );
    for path in ["/registry/secretive", "/registry"] {
        let r = w.request("GET", path, &[], b"");
        assert_eq!(r.status, 200, "{}", r.text());
        for value in [&secret, &api_key] {
            assert!(
                !r.text().contains(value.as_str()),
                "{path} returns a secret: {}",
                r.text()
            );
        }
        assert!(r.text().contains("DB_PASSWORD"), "{}", r.text());
    }
    let info = w.request("GET", "/registry/secretive", &[], b"").json();
    assert_eq!(
        info["config"]["environment"],
        json!(["API_KEY", "DB_PASSWORD"])
    );
    let env = info["instance"]["env"].as_array().unwrap();
    assert!(env.contains(&json!(["DB_PASSWORD", null])), "{env:?}");
    // Kindling's own variables keep their values (the benchmark baselines need them).
    assert!(env.contains(&json!(["KINDLING_FORMAT", "ol"])), "{env:?}");
    w.stop();
}

/// Connects and sends `bytes` without finishing the request.
fn half_open(addr: SocketAddr, bytes: &[u8]) -> TcpStream {
    let mut s = TcpStream::connect(addr).unwrap();
    s.write_all(bytes).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(8))).unwrap();
    s
}

/// Whether the worker closed `s` (EOF or reset) rather than leaving it open until our read
/// timeout; returns how long that took from `since`.
fn closed_by_worker(s: &mut TcpStream, since: Instant) -> Result<Duration, String> {
    let mut buf = [0u8; 4096];
    loop {
        match s.read(&mut buf) {
            Ok(0) => return Ok(since.elapsed()),
            // An error reply (408) before the close is fine.
            Ok(_) => continue,
            Err(e) if e.kind() == ErrorKind::ConnectionReset => return Ok(since.elapsed()),
            Err(e) => return Err(format!("still open after {:?}: {e}", since.elapsed())),
        }
    }
}

/// Half-open connections (slowloris) are closed once their head is late, a silent connection
/// once it idled too long, and a client that reads none of a large response is disconnected;
/// meanwhile the worker serves, and a keep-alive connection between requests is not mistaken
/// for a slow head.
#[test]
fn slow_clients_are_disconnected() {
    let w = Worker::start(
        "[http]\nheader_read_timeout_secs = 1\nidle_timeout_secs = 3\nwrite_timeout_secs = 1\n",
    );
    w.deploy_ok("canary", &[("f.py", CANARY)]);
    w.deploy_ok(
        "big",
        &[("f.py", "def f(event):\n    return \"x\" * (48 << 20)\n")],
    );
    let start = Instant::now();
    let mut slow: Vec<TcpStream> = (0..40)
        .map(|_| {
            half_open(
                w.addr,
                b"POST /run/canary HTTP/1.1\r\nHost: x\r\nContent-Le",
            )
        })
        .collect();
    let mut silent = half_open(w.addr, b"");
    // The worker keeps serving while they hang.
    for _ in 0..5 {
        let t = Instant::now();
        let r = w.run("canary", "{}");
        assert_eq!(r.status, 200, "{}", r.text());
        assert!(t.elapsed() < Duration::from_secs(1), "{:?}", t.elapsed());
    }
    for s in &mut slow {
        let took = closed_by_worker(s, start).unwrap_or_else(|e| panic!("slowloris: {e}"));
        assert!(took < Duration::from_millis(2900), "closed after {took:?}");
    }
    let took = closed_by_worker(&mut silent, start).unwrap_or_else(|e| panic!("silent: {e}"));
    assert!(
        took >= Duration::from_millis(2500),
        "idle closed after {took:?}"
    );

    // Keep-alive: a pause between requests longer than the head deadline is allowed.
    let mut s = TcpStream::connect(w.addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let request = format!(
        "GET /status HTTP/1.1\r\nHost: x\r\nAuthorization: {}\r\n\r\n",
        w.bearer()
    );
    for _ in 0..2 {
        s.write_all(request.as_bytes()).unwrap();
        let mut head = Vec::new();
        let mut buf = [0u8; 8192];
        while !String::from_utf8_lossy(&head).contains("\"status\":\"ready\"") {
            let n = s.read(&mut buf).expect("keep-alive connection dropped");
            assert!(n > 0, "keep-alive connection closed");
            head.extend_from_slice(&buf[..n]);
        }
        std::thread::sleep(Duration::from_millis(1500));
    }

    // A client that takes none of a 48 MB response is cut off instead of holding it.
    let mut s = TcpStream::connect(w.addr).unwrap();
    s.write_all(b"POST /run/big HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\n\r\n{}")
        .unwrap();
    std::thread::sleep(Duration::from_secs(4));
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let mut got = 0usize;
    let mut buf = vec![0u8; 1 << 20];
    loop {
        match s.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => got += n,
            Err(e) if e.kind() == ErrorKind::ConnectionReset => break,
            Err(e) => panic!("the stalled response is still open after {got} bytes: {e}"),
        }
    }
    assert!(got < 48 << 20, "the whole response arrived ({got} bytes)");
    assert!(
        w.stats()["http.timeouts"].as_u64().unwrap_or(0) >= 40,
        "{}",
        w.stats()
    );
    w.assert_serves();
    w.stop();
}

/// A TCP connection to `addr` from the loopback address `from`.
fn connect_from(from: &str, addr: SocketAddr) -> TcpStream {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_io()
        .build()
        .unwrap();
    let stream = rt.block_on(async {
        let socket = tokio::net::TcpSocket::new_v4().unwrap();
        socket.bind(format!("{from}:0").parse().unwrap()).unwrap();
        socket.connect(addr).await.unwrap()
    });
    let stream = stream.into_std().unwrap();
    stream.set_nonblocking(false).unwrap();
    stream
}

/// What a request on a fresh connection from `from` gets: a status, or `None` when the worker
/// closed the connection without one; it must come fast either way.
fn status_from(w: &Worker, from: &str) -> Option<u16> {
    let t = Instant::now();
    let mut s = connect_from(from, w.addr);
    s.set_read_timeout(Some(Duration::from_secs(3))).unwrap();
    let _ = s.write_all(b"GET /status HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
    let mut out = Vec::new();
    let result = s.read_to_end(&mut out);
    assert!(
        t.elapsed() < Duration::from_secs(2),
        "a connection from {from} hung for {:?} ({result:?})",
        t.elapsed()
    );
    let text = String::from_utf8_lossy(&out);
    text.split(' ').nth(1).and_then(|s| s.parse().ok())
}

/// Connections over the cap (the worker's, or one client's share of it) are refused at once
/// with 503; other clients keep their share, and a freed place is usable again.
#[test]
fn connections_are_capped_per_client_and_in_all() {
    let w = Worker::start("[http]\nmax_connections = 6\nmax_connections_per_client = 3\n");
    let held_a: Vec<TcpStream> = (0..3).map(|_| connect_from("127.0.0.1", w.addr)).collect();
    std::thread::sleep(Duration::from_millis(200));
    let refused = status_from(&w, "127.0.0.1");
    assert!(matches!(refused, Some(503) | None), "{refused:?}");
    assert_eq!(
        status_from(&w, "127.0.0.2"),
        Some(200),
        "another client lost its share"
    );
    let held_b: Vec<TcpStream> = (0..3).map(|_| connect_from("127.0.0.2", w.addr)).collect();
    std::thread::sleep(Duration::from_millis(200));
    let refused = status_from(&w, "127.0.0.3");
    assert!(matches!(refused, Some(503) | None), "{refused:?}");
    drop(held_a);
    drop(held_b);
    let deadline = Instant::now() + Duration::from_secs(3);
    while status_from(&w, "127.0.0.1") != Some(200) {
        assert!(
            Instant::now() < deadline,
            "closed connections never freed their places"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(
        w.stats()["http.refused"].as_u64().unwrap_or(0) >= 2,
        "{}",
        w.stats()
    );
    w.stop();
}

/// A handler that leaves a busy thread and a busy daemon child behind on its first call.
const SPINNER: &str = r#"import os, threading

started = False

def spin():
    while True:
        pass

def f(event):
    global started
    if not started:
        started = True
        threading.Thread(target=spin, daemon=True).start()
        if os.fork() == 0:
            os.setsid()
            spin()
    return {"pid": os.getpid()}
"#;

/// CPU time (clock ticks, user + system) of the given host processes so far.
fn cpu_ticks(pids: &[i32]) -> u64 {
    pids.iter()
        .filter_map(|pid| std::fs::read_to_string(format!("/proc/{pid}/stat")).ok())
        .filter_map(|stat| {
            let after = stat[stat.rfind(')')? + 2..].to_string();
            let fields: Vec<&str> = after.split(' ').collect();
            Some(fields.get(11)?.parse::<u64>().ok()? + fields.get(12)?.parse::<u64>().ok()?)
        })
        .sum()
}

/// An idle instance's background processes get no CPU: the thread and the daemon child its
/// handler left spinning stop while it is idle (cold and forked instances alike), and it still
/// answers the next call, warm.
#[test]
fn idle_instances_use_no_cpu() {
    for (config, start) in [("", "cold"), ("[zygotes]\nenabled = true\n", "fork")] {
        let w = Worker::start(config);
        w.deploy_ok("spinner", &[("f.py", SPINNER)]);
        let r = w.request(
            "POST",
            "/run/spinner",
            &[("X-Kindling-Start", start)],
            b"{}",
        );
        assert_eq!(r.status, 200, "{}", r.text());
        assert_eq!(r.header("x-kindling-start"), Some(start), "{}", r.text());
        let sandbox = r.header("x-kindling-sandbox").unwrap().to_string();
        std::thread::sleep(Duration::from_millis(300));
        let procs: Vec<i32> = w
            .processes_of_sandbox(&sandbox)
            .iter()
            .map(|p| p.pid)
            .collect();
        assert!(procs.len() >= 2, "{start}: no spinning child in {procs:?}");
        let before = cpu_ticks(&procs);
        std::thread::sleep(Duration::from_millis(1500));
        let idle = cpu_ticks(&procs) - before;
        // 100 ticks a second: unfrozen, the spinners take ~150 in 1.5 s.
        assert!(
            idle <= 5,
            "{start}: the idle instance used {idle} ticks of CPU"
        );
        // The kernel says so too (v2 reports `frozen 1`, v1 `FROZEN`).
        let states: Vec<String> = w
            .sandbox_cgroups(&sandbox)
            .iter()
            .filter_map(|cg| {
                let events = std::fs::read_to_string(cg.join("cgroup.events")).ok();
                events
                    .and_then(|e| {
                        e.lines()
                            .find(|l| l.starts_with("frozen "))
                            .map(str::to_string)
                    })
                    .or_else(|| std::fs::read_to_string(cg.join("freezer.state")).ok())
            })
            .collect();
        assert!(
            states
                .iter()
                .any(|s| s.trim() == "frozen 1" || s.trim() == "FROZEN"),
            "{start}: {states:?}"
        );
        let r = w.run("spinner", "{}");
        assert_eq!(r.status, 200, "{start}: {}", r.text());
        assert_eq!(r.header("x-kindling-start"), Some("warm"));
        assert_eq!(r.header("x-kindling-sandbox"), Some(sandbox.as_str()));
        // Frozen instances are still destroyed completely (a redeploy replaces this one)...
        let procs = w.processes_of_sandbox(&sandbox);
        w.deploy_ok(
            "spinner",
            &[("f.py", SPINNER.replace("\"pid\"", "\"v2\"").as_str())],
        );
        w.assert_sandbox_gone(&sandbox, &procs);
        w.assert_no_leaks();
        // ... and die with a worker killed while they are frozen.
        let r = w.run("spinner", "{}");
        assert_eq!(r.status, 200, "{start}: {}", r.text());
        let sandbox = r.header("x-kindling-sandbox").unwrap().to_string();
        std::thread::sleep(Duration::from_millis(300));
        let procs = w.processes_of_sandbox(&sandbox);
        assert!(procs.len() >= 2, "{start}: {procs:?}");
        let mut w = w;
        w.crash();
        let deadline = Instant::now() + Duration::from_secs(10);
        while procs.iter().any(|p| p.alive()) {
            assert!(
                Instant::now() < deadline,
                "{start}: frozen processes outlived the worker: {procs:?}"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        w.spawn();
        w.assert_no_leaks();
        w.stop();
    }
}
