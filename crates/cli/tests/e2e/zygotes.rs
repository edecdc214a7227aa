//! Zygotes and the `fork` start method (issue 4): a forked instance is isolated and limited
//! exactly like a cold one, errors behave the same, package versions never mix, a killed zygote
//! is replaced, idle zygotes pause, and nothing (zygotes included) outlives the worker.

use crate::harness::{self, Proc, Resp, Worker};
use serde_json::{json, Value};
use std::collections::BTreeSet;
use std::time::{Duration, Instant};

/// Zygotes on, with only the root zygote (no packages) unless a test asks for more.
const ZYGOTES: &str = "[zygotes]\nenabled = true\nauto = false\n";

/// The package installer, for tests that deploy requirements (a top-level key).
const UV: &str = "uv = \"/usr/local/bin/uv\"\n";

const HELLO: &str =
    "def f(event):\n    return {\"hello\": (event or {}).get(\"name\", \"world\")}\n";

/// Starts a worker with zygotes enabled; `top` holds top-level keys and tables other than
/// `[zygotes]`, `zygotes` extra lines of the `[zygotes]` table.
fn start(top: &str, zygotes: &str) -> Worker {
    let tree = if zygotes.contains("tree") {
        ""
    } else {
        "tree = []\n"
    };
    Worker::start(&format!("{top}\n{ZYGOTES}{tree}{zygotes}"))
}

fn sandbox_of(r: &Resp) -> String {
    r.header("x-kindling-sandbox")
        .unwrap_or_else(|| panic!("no X-Kindling-Sandbox header: {r:?}"))
        .to_string()
}

/// Forces a fork start; asserts the worker says it forked.
fn fork(w: &Worker, name: &str, event: &Value) -> Resp {
    let r = w.request(
        "POST",
        &format!("/run/{name}"),
        &[("X-Kindling-Start", "fork")],
        event.to_string().as_bytes(),
    );
    assert_eq!(
        r.header("x-kindling-start"),
        Some("fork"),
        "{name} was not forked ({}): {}\nworker log:\n{}",
        r.status,
        r.text(),
        w.log_text()
    );
    r
}

/// A fork start that must answer 200 with JSON.
fn fork_ok(w: &Worker, name: &str, event: &Value) -> (Value, Resp) {
    let r = fork(w, name, event);
    assert_eq!(r.status, 200, "{name}: {}", r.text());
    (r.json(), r)
}

/// Deploys `code` as `f.py` and forks an instance of it with `event`.
fn probe(w: &Worker, name: &str, code: &str, event: &Value) -> (Value, Resp) {
    w.deploy_ok(name, &[("f.py", code)]);
    fork_ok(w, name, event)
}

fn status(w: &Worker) -> Value {
    w.request("GET", "/status", &[], b"").json()
}

/// The zygotes of `GET /status`.
fn zygotes(w: &Worker) -> Vec<Value> {
    let s = status(w);
    s["zygotes"]
        .as_array()
        .unwrap_or_else(|| panic!("/status has no zygotes array: {s}"))
        .clone()
}

fn zygote_pids(w: &Worker) -> Vec<i32> {
    zygotes(w)
        .iter()
        .map(|z| z["pid"].as_i64().unwrap() as i32)
        .collect()
}

fn packages_of(z: &Value) -> Vec<String> {
    z["packages"]
        .as_array()
        .unwrap_or_else(|| panic!("no packages: {z}"))
        .iter()
        .map(|p| p.as_str().unwrap().to_string())
        .collect()
}

fn stat(w: &Worker, key: &str) -> u64 {
    w.stats()[key].as_u64().unwrap_or(0)
}

/// Every process the worker's sandboxes and zygotes hold now, to check after the stop.
fn worker_processes(w: &Worker) -> Vec<Proc> {
    let mut pids = w.sandbox_pids();
    pids.extend(zygote_pids(w));
    pids.sort();
    pids.dedup();
    pids.into_iter().filter_map(Proc::of).collect()
}

/// Ends a test: the worker still serves (by fork), nothing leaked, and after a clean stop no
/// zygote, forked instance or other sandbox process of this worker is left.
fn finish(w: Worker, mut seen: Vec<Proc>) {
    let (v, _) = probe(&w, "finish-canary", HELLO, &json!({}));
    assert_eq!(v, json!({"hello": "world"}));
    w.assert_no_leaks();
    assert!(
        !zygotes(&w).is_empty(),
        "no zygote listed after a fork start"
    );
    seen.extend(worker_processes(&w));
    w.stop();
    // Give the kernel a moment to finish off what the stop killed.
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let alive: Vec<&Proc> = seen.iter().filter(|p| p.alive()).collect();
        let zygote_like: Vec<i32> = harness::processes_matching("zygote_main")
            .into_iter()
            .filter(|pid| alive.iter().any(|p| p.pid == *pid))
            .collect();
        if alive.is_empty() {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "processes survive the worker's stop: {alive:?} (zygote processes among them: {zygote_like:?})"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn names(v: &Value) -> Vec<String> {
    v.as_array()
        .unwrap_or_else(|| panic!("not an array: {v}"))
        .iter()
        .map(|s| s.as_str().unwrap().to_string())
        .collect()
}

// --- identity ----------------------------------------------------------------------------
// What a forked instance may not do (privileges, mounts, network, host files and processes)
// is tested for forked and cold instances alike in isolation.rs; here, what is particular to
// forking.

const WHOAMI: &str = r#"import os, socket

def f(event):
    status = {}
    with open("/proc/self/status") as fh:
        for line in fh:
            k, _, val = line.partition(":")
            status[k] = val.strip()
    return {"status": status, "hostname": socket.gethostname(), "cwd": os.getcwd()}
"#;

/// A forked instance is its sandbox's (hostname, working directory), not the zygote's, and its
/// next call is warm in the same sandbox, still without capabilities.
#[test]
fn forked_instance_has_its_sandboxs_identity() {
    let w = start("", "");
    let (v, r) = probe(&w, "whoami", WHOAMI, &json!({}));
    assert_eq!(v["status"]["CapEff"], "0000000000000000", "{v}");
    assert_eq!(v["cwd"], "/handler", "{v}");
    // The sandbox's own hostname (its id), not the zygote's or the host's.
    let sb = sandbox_of(&r);
    assert_eq!(v["hostname"], sb.as_str(), "{v}");
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap();
    assert_ne!(v["hostname"], host.trim(), "{v}");
    let zids: Vec<String> = zygotes(&w)
        .iter()
        .map(|z| z["id"].as_str().unwrap().to_string())
        .collect();
    assert!(!zids.contains(&sb), "hostname is a zygote's: {v}");
    // The first call was a fork; the next is warm in the same forked instance.
    let r2 = w.run("whoami", "{}");
    assert_eq!(r2.header("x-kindling-start"), Some("warm"));
    assert_eq!(sandbox_of(&r2), sb);
    assert_eq!(r2.json()["status"]["CapEff"], "0000000000000000");
    let seen = worker_processes(&w);
    finish(w, seen);
}

// --- visibility --------------------------------------------------------------------------

const PEEK: &str = r#"import os, socket

def f(event):
    exists = {}
    for p in event["paths"]:
        try:
            os.lstat(p)
            exists[p] = "exists"
        except FileNotFoundError:
            exists[p] = "absent"
        except OSError as e:
            exists[p] = type(e).__name__
    pids = sorted(int(p) for p in os.listdir("/proc") if p.isdigit())
    kills = {}
    for p in event["host_pids"]:
        try:
            os.kill(p, 0)
            kills[str(p)] = "ok"
        except OSError as e:
            kills[str(p)] = type(e).__name__
    path = "/tmp/secret-" + event["me"]
    with open(path, "w") as fh:
        fh.write(event["me"])
    return {
        "exists": exists, "pids": pids, "me": os.getpid(), "kills": kills,
        "tmp": sorted(os.listdir("/tmp")), "root": sorted(os.listdir("/")),
        "hostname": socket.gethostname(), "ppid": os.getppid(),
    }
"#;

/// Three forked instances (alice twice, bob once) from the one root zygote, each peeking at
/// host paths, processes and /tmp: what the tests below look at.
struct Peeks {
    w: Worker,
    marker: std::path::PathBuf,
    paths: Vec<String>,
    /// The zygote's host pid.
    zpid: i64,
    /// Host pids the later instances tried to see and signal.
    host_pids: Vec<i64>,
    /// (who, its reply, its response).
    seen: Vec<(&'static str, Value, Resp)>,
}

fn peek_from_three_forks() -> Peeks {
    let w = start("", "");
    let marker = std::env::temp_dir().join(format!(
        "kindling-zy-marker-{}-{}",
        std::process::id(),
        w.addr.port()
    ));
    std::fs::write(&marker, "host only").unwrap();
    let root = w.root.path().display().to_string();
    let paths = vec![
        root.clone(),
        format!("{root}/functions"),
        marker.display().to_string(),
        "/work".into(),
        harness::base_dir().display().to_string(),
        "/var/lib/kindling".into(),
        env!("CARGO_MANIFEST_DIR").into(),
        "/root/.cargo".into(),
        "/proc/1/root/work".into(),
        "/sys/fs/cgroup/memory".into(),
    ];
    // A first fork creates the zygote; its pid (a host pid) and the first instance's host pids
    // go to the later probes.
    w.deploy_ok("alice", &[("f.py", PEEK)]);
    w.deploy_ok("bob", &[("f.py", &format!("# bob\n{PEEK}"))]);
    let event =
        |me: &str, host_pids: &[i64]| json!({ "paths": paths, "me": me, "host_pids": host_pids });
    let (a1, ra1) = fork_ok(&w, "alice", &event("alice1", &[]));
    let zs = zygotes(&w);
    assert_eq!(zs.len(), 1, "only the root zygote: {zs:?}");
    let zpid = zs[0]["pid"].as_i64().unwrap();
    assert!(
        Proc::of(zpid as i32).is_some(),
        "zygote pid {zpid} from /status is not a host process"
    );
    let a1_host: Vec<i64> = w
        .processes_of_sandbox(&sandbox_of(&ra1))
        .iter()
        .map(|p| p.pid as i64)
        .collect();
    assert!(!a1_host.is_empty(), "alice1's sandbox has no processes");
    let mut host_pids = vec![zpid, w.pid() as i64, std::process::id() as i64];
    host_pids.extend(&a1_host);
    // A second forked alice (a forced fork always makes a new sandbox) and a forked bob, all
    // from the same zygote.
    let (a2, ra2) = fork_ok(&w, "alice", &event("alice2", &host_pids));
    let (b, rb) = fork_ok(&w, "bob", &event("bob", &host_pids));
    Peeks {
        w,
        marker,
        paths,
        zpid,
        host_pids,
        seen: vec![("alice1", a1, ra1), ("alice2", a2, ra2), ("bob", b, rb)],
    }
}

impl Peeks {
    fn finish(self) {
        std::fs::remove_file(&self.marker).unwrap();
        let seen = worker_processes(&self.w);
        finish(self.w, seen);
    }
}

/// No host path is visible in a forked instance, and its root is not the host's.
#[test]
fn forked_instances_see_no_host_paths() {
    let p = peek_from_three_forks();
    for (who, v, _) in &p.seen {
        for path in &p.paths {
            let seen = v["exists"][path].as_str().unwrap();
            assert!(
                seen == "absent"
                    || ((path.starts_with("/root") || path.starts_with("/proc"))
                        && seen == "PermissionError"),
                "{who}: {path} is visible in a forked instance ({seen})"
            );
        }
        assert!(
            !names(&v["root"]).contains(&"work".to_string()),
            "{who}: {v}"
        );
    }
    p.finish();
}

/// A forked instance sees and reaches neither host processes nor its zygote, and the zygote's
/// sandbox and the instances' sandboxes share no process.
#[test]
fn forked_instances_see_neither_host_nor_zygote_processes() {
    let p = peek_from_three_forks();
    let zpid = p.zpid;
    for (who, v, _) in &p.seen {
        let pids: Vec<i64> = v["pids"]
            .as_array()
            .unwrap()
            .iter()
            .map(|p| p.as_i64().unwrap())
            .collect();
        assert!(pids.len() <= 4, "{who} sees {} processes: {v}", pids.len());
        assert!(v["me"].as_i64().unwrap() < 10, "{who}: {v}");
        assert!(
            !pids.contains(&zpid),
            "{who} sees the zygote's pid {zpid}: {v}"
        );
        for h in &p.host_pids {
            assert!(!pids.contains(h), "{who} sees host pid {h}: {v}");
        }
        assert_ne!(v["ppid"], zpid, "{who}: {v}");
        for (pid, k) in v["kills"].as_object().unwrap() {
            assert_eq!(k, "ProcessLookupError", "{who} reaches host pid {pid}: {v}");
        }
    }
    // The forked instances are not processes of the zygote's sandbox, and vice versa.
    let zsb = zygotes(&p.w)[0]["id"].as_str().unwrap().to_string();
    let zprocs: Vec<i32> =
        p.w.processes_of_sandbox(&zsb)
            .iter()
            .map(|p| p.pid)
            .collect();
    assert!(zprocs.contains(&(zpid as i32)), "{zprocs:?} lacks {zpid}");
    for (_, _, r) in &p.seen {
        for proc in p.w.processes_of_sandbox(&sandbox_of(r)) {
            assert!(
                !zprocs.contains(&proc.pid),
                "{} is in both cgroups",
                proc.pid
            );
        }
    }
    p.finish();
}

/// Each forced fork gets a sandbox of its own from the same zygote: its own /tmp and its own
/// hostname.
#[test]
fn forked_instances_do_not_see_each_other() {
    let p = peek_from_three_forks();
    let sbs: BTreeSet<String> = p.seen.iter().map(|(_, _, r)| sandbox_of(r)).collect();
    assert_eq!(sbs.len(), 3, "forced forks share a sandbox: {sbs:?}");
    assert_eq!(zygote_pids(&p.w), vec![p.zpid as i32], "the zygote changed");
    assert!(
        zygotes(&p.w)[0]["forks"].as_u64().unwrap() >= 3,
        "{:?}",
        zygotes(&p.w)
    );
    for (who, v, r) in &p.seen {
        // Its own /tmp: only what it wrote itself.
        assert_eq!(
            names(&v["tmp"]),
            vec![format!("secret-{who}")],
            "{who} sees another instance's /tmp: {v}"
        );
        assert_eq!(v["hostname"], sandbox_of(r).as_str(), "{who}: {v}");
    }
    p.finish();
}

// --- limits ------------------------------------------------------------------------------

const HOG: &str = "def f(event):\n    if event.get(\"mb\"):\n        blob = b\"x\" * (event[\"mb\"] << 20)\n        return len(blob)\n    return \"small\"\n";

#[test]
fn forked_instance_memory_limit() {
    let w = start("[defaults]\nmemory_mb = 64\n", "");
    w.deploy_ok("hog", &[("f.py", HOG)]);
    let (v, r) = fork_ok(&w, "hog", &json!({}));
    assert_eq!(v, "small");
    let mem: u64 = r
        .header("x-kindling-memory")
        .unwrap_or_else(|| panic!("no X-Kindling-Memory: {r:?}"))
        .parse()
        .unwrap();
    assert!(mem <= 64 << 20, "forked sandbox charges {mem} bytes");
    let zs = zygotes(&w);
    assert_eq!(zs.len(), 1, "{zs:?}");
    let (zid, zpid) = (zs[0]["id"].clone(), zs[0]["pid"].as_i64().unwrap() as i32);
    let zproc = Proc::of(zpid).unwrap();
    let sb = sandbox_of(&r);
    let procs = w.processes_of_sandbox(&sb);
    assert!(!procs.is_empty());
    let mut seen = worker_processes(&w);

    // Warm call in the forked instance: over the limit.
    let r = w.run("hog", r#"{"mb": 200}"#);
    assert_eq!(sandbox_of(&r), sb);
    assert!(
        r.status >= 500,
        "a forked instance allocated 200 MB under a 64 MB limit: {} {}",
        r.status,
        r.text()
    );
    let text = r.text();
    assert!(text.to_lowercase().contains("memory"), "unclear: {text}");
    assert!(
        text.contains("64"),
        "message should state the limit: {text}"
    );
    w.assert_sandbox_gone(&sb, &procs);

    // A forced fork over the limit at once: same answer.
    let r = fork(&w, "hog", &json!({"mb": 200}));
    assert!(r.status >= 500, "{} {}", r.status, r.text());
    assert!(r.text().to_lowercase().contains("memory"), "{}", r.text());

    // The zygote survived both, and still forks.
    assert!(zproc.alive(), "the zygote died with its child's OOM kill");
    let zs = zygotes(&w);
    assert_eq!(zs.len(), 1, "{zs:?}");
    assert_eq!(zs[0]["id"], zid, "{zs:?}");
    assert_eq!(zs[0]["pid"], zpid, "{zs:?}");
    let (v, _) = fork_ok(&w, "hog", &json!({}));
    assert_eq!(v, "small");
    assert_eq!(stat(&w, "fork.fallback"), 0, "{}", w.stats());
    seen.extend(worker_processes(&w));
    finish(w, seen);
}

const FORKER: &str = r#"import os, time

def f(event):
    if not event.get("go"):
        return {"forked": 0, "error": None}
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
fn forked_instance_pids_limit() {
    let w = start("[defaults]\ntimeout_secs = 10\npids = 32\n", "");
    w.deploy_ok("forker", &[("f.py", FORKER)]);
    let (_, r) = fork_ok(&w, "forker", &json!({}));
    let sb = sandbox_of(&r);
    let zs = zygotes(&w);
    let (zid, zpid) = (
        zs[0]["id"].as_str().unwrap().to_string(),
        zs[0]["pid"].as_i64().unwrap() as i32,
    );
    // A seed is forked in the background after the first call; for an instant it is in the
    // zygote's cgroup, so the zygote is sampled only once that is done.
    settle(&w);
    let zygote_procs_before = w.processes_of_sandbox(&zid).len();
    let mut seen = worker_processes(&w);
    // The bomb runs (warm) in the forked instance, whose sandbox is sampled meanwhile.
    let done = std::sync::atomic::AtomicBool::new(false);
    let (r, max, zmax) = std::thread::scope(|s| {
        let sampler = s.spawn(|| {
            let (mut max, mut zmax) = (0, 0);
            while !done.load(std::sync::atomic::Ordering::SeqCst) {
                max = max.max(w.processes_of_sandbox(&sb).len());
                zmax = zmax.max(w.processes_of_sandbox(&zid).len());
                std::thread::sleep(Duration::from_millis(20));
            }
            (max, zmax)
        });
        let r = w.run("forker", r#"{"go": true}"#);
        done.store(true, std::sync::atomic::Ordering::SeqCst);
        let (max, zmax) = sampler.join().unwrap();
        (r, max, zmax)
    });
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(sandbox_of(&r), sb, "not the forked instance");
    let v = r.json();
    let forked = v["forked"].as_u64().unwrap();
    assert!(
        forked > 0 && forked < 32,
        "a forked instance forked {forked} children under pids = 32: {v}"
    );
    assert!(v["error"].is_string(), "fork never failed: {v}");
    assert!(max <= 32, "{max} processes in the forked sandbox");
    assert_eq!(
        zmax, zygote_procs_before,
        "the bomb's children landed in the zygote's cgroup"
    );
    // A forced fork running the bomb directly is contained too.
    let r = fork(&w, "forker", &json!({"go": true}));
    assert_eq!(r.status, 200, "{}", r.text());
    let v = r.json();
    let forked = v["forked"].as_u64().unwrap();
    assert!(forked > 0 && forked < 32, "{v}");
    // The zygote is unharmed.
    assert_eq!(zygote_pids(&w), vec![zpid]);
    seen.extend(worker_processes(&w));
    finish(w, seen);
}

// --- handler faults ----------------------------------------------------------------------

const SLEEPER: &str = "import time\n\ndef f(event):\n    time.sleep((event or {}).get(\"sleep\", 0))\n    return {\"slept\": (event or {}).get(\"sleep\", 0)}\n";

#[test]
fn forked_handler_exception_and_timeout() {
    let w = start("[defaults]\ntimeout_secs = 1\n", "");
    w.deploy_ok(
        "boom",
        &[(
            "f.py",
            "def helper(x):\n    raise ValueError(f\"kaboom-{x}\")\n\ndef f(event):\n    if event.get(\"ok\"):\n        return \"fine\"\n    return helper(42)\n",
        )],
    );
    let r = fork(&w, "boom", &json!({}));
    assert_eq!(r.status, 500, "{}", r.text());
    for m in ["Traceback", "ValueError", "kaboom-42", "helper"] {
        assert!(r.text().contains(m), "no `{m}` in: {}", r.text());
    }
    assert_eq!(r.header("x-kindling-error"), Some("exception"));
    let sb = sandbox_of(&r);
    // The exception does not cost the forked instance: the next call is warm in it.
    let r = w.run("boom", r#"{"ok": true}"#);
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json(), json!("fine"));
    assert_eq!(r.header("x-kindling-start"), Some("warm"));
    assert_eq!(sandbox_of(&r), sb);

    // A module that fails to import, forked: its traceback.
    w.deploy_ok(
        "badimport",
        &[(
            "f.py",
            "import no_such_module_xyz\n\ndef f(event):\n    return 1\n",
        )],
    );
    let r = fork(&w, "badimport", &json!({}));
    assert!(r.status >= 500, "{}", r.text());
    assert!(r.text().contains("no_such_module_xyz"), "{}", r.text());

    // Timeout: 504, the forked sandbox is killed, the zygote is not.
    let zpid = zygote_pids(&w)[0];
    let zproc = Proc::of(zpid).unwrap();
    w.deploy_ok("sleepy", &[("f.py", SLEEPER)]);
    let (_, r) = fork_ok(&w, "sleepy", &json!({}));
    let sb = sandbox_of(&r);
    let procs = w.processes_of_sandbox(&sb);
    assert!(!procs.is_empty());
    let mut seen = worker_processes(&w);
    let t = Instant::now();
    let r = w.run("sleepy", r#"{"sleep": 30}"#);
    assert_eq!(r.status, 504, "{}", r.text());
    assert!(r.text().contains("timeout"), "{}", r.text());
    assert!(t.elapsed() < Duration::from_secs(10), "{:?}", t.elapsed());
    assert_eq!(sandbox_of(&r), sb);
    w.assert_sandbox_gone(&sb, &procs);
    // Timed out straight from a fork start, too.
    let r = fork(&w, "sleepy", &json!({"sleep": 30}));
    assert_eq!(r.status, 504, "{}", r.text());
    assert!(zproc.alive(), "the zygote died with its child's timeout");
    assert_eq!(zygote_pids(&w), vec![zpid]);
    let r = w.run("sleepy", "{}");
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(
        r.header("x-kindling-start"),
        Some("fork"),
        "the default policy forks when no instance is idle"
    );
    assert_eq!(stat(&w, "fork.fallback"), 0, "{}", w.stats());
    seen.extend(worker_processes(&w));
    finish(w, seen);
}

// --- seeds -------------------------------------------------------------------------------

const ENV_PROBE: &str = r#"import os

def f(event):
    return {"uid": os.getuid(), "gid": os.getgid(), "greeting": os.environ.get("GREETING"),
            "sandbox": os.environ.get("KINDLING_SANDBOX"), "cwd": os.getcwd()}
"#;

/// Waits until the worker has no background work pending (seed and pool refills, removals).
fn settle(w: &Worker) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while stat(w, "background.pending") > 0 {
        assert!(
            Instant::now() < deadline,
            "background work never ended: {}",
            w.stats()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Waits until the worker holds `n` seeds.
fn wait_seeded(w: &Worker, n: u64) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while stat(w, "sandboxes.seeded") != n {
        assert!(
            Instant::now() < deadline,
            "no {n} seeds: {}\nworker log:\n{}",
            w.stats(),
            w.log_text()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// A seed, forked before any function needed it, becomes an instance of exactly the function
/// that takes it: that function's code, environment and sandbox, unprivileged.
#[test]
fn seeds_become_instances_of_the_function_that_takes_them() {
    let w = start("", "");
    w.deploy_ok(
        "envy",
        &[
            ("f.py", ENV_PROBE),
            ("ol.yaml", "environment:\n  GREETING: hi\n"),
        ],
    );
    w.deploy_ok("hello", &[("f.py", HELLO)]);
    // The first fork start asks the zygote; afterwards one seed waits for the next.
    let (first, r1) = fork_ok(&w, "envy", &json!({}));
    assert_eq!(stat(&w, "fork.seeded"), 0, "{}", w.stats());
    wait_seeded(&w, 1);
    // The seed was forked after the first instance's invocation, which showed what pages a
    // seed should write ahead of need.
    let zs = zygotes(&w);
    assert!(
        zs[0]["seed_write_ahead_pages"].as_u64().unwrap() > 0,
        "nothing learned from the first forked instance: {zs:?}"
    );
    let (v, r) = fork_ok(&w, "envy", &json!({}));
    assert_eq!(stat(&w, "fork.seeded"), 1, "{}", w.stats());
    for (v, r) in [(&first, &r1), (&v, &r)] {
        assert_eq!(v["uid"], 65534, "{v}");
        assert_eq!(v["gid"], 65534, "{v}");
        assert_eq!(
            v["greeting"], "hi",
            "the function's environment is missing: {v}"
        );
        assert_eq!(v["cwd"], "/handler", "{v}");
        assert_eq!(v["sandbox"], sandbox_of(r), "{v}");
    }
    assert_ne!(
        sandbox_of(&r1),
        sandbox_of(&r),
        "two forced forks share a sandbox"
    );
    // The seed was replaced; another function takes the next one, without envy's environment.
    wait_seeded(&w, 1);
    let (h, _) = fork_ok(&w, "hello", &json!({"name": "seed"}));
    assert_eq!(h, json!({"hello": "seed"}));
    assert_eq!(stat(&w, "fork.seeded"), 2, "{}", w.stats());
    let leak = r#"import os

def f(event):
    return {"greeting": os.environ.get("GREETING")}
"#;
    w.deploy_ok("plain", &[("f.py", leak)]);
    wait_seeded(&w, 1);
    let (p, _) = fork_ok(&w, "plain", &json!({}));
    assert_eq!(
        p,
        json!({"greeting": null}),
        "a seed carried another function's environment"
    );
    let seen = worker_processes(&w);
    finish(w, seen);
}

// --- submodules -------------------------------------------------------------------------

/// `import idna` does not import `idna.codec`; the function does.
const CODEC_FN: &str = r#"import sys
preloaded = "idna.codec" in sys.modules
import idna.codec

def f(event):
    return {"preloaded": preloaded, "codec": idna.codec.__name__}
"#;

/// The zygote a function forks from has also imported the submodules of its packages that the
/// function's code imports (found by parsing the code at deploy); a cold start has not.
#[test]
fn zygote_preloads_the_submodules_a_function_imports() {
    let w = start(UV, "tree = [[\"idna\"]]\n");
    let r = w.deploy(
        "codec",
        &[("f.py", CODEC_FN), ("requirements.txt", "idna\n")],
    );
    assert_eq!(r.status, 200, "deploy: {}", r.text());
    let (v, _) = fork_ok(&w, "codec", &json!({}));
    assert_eq!(v["preloaded"], true, "idna.codec was not preloaded: {v}");
    let r = w.request("POST", "/run/codec", &[("X-Kindling-Start", "cold")], b"{}");
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(
        r.json()["preloaded"],
        false,
        "a cold start had it: {}",
        r.text()
    );
    let seen = worker_processes(&w);
    finish(w, seen);
}

/// Imports `idna.codec` only when called, by a name no parser sees.
const LAZY_CODEC_FN: &str = r#"import importlib, sys
preloaded = "idna.codec" in sys.modules

def f(event):
    importlib.import_module("idna." + "codec")
    return {"preloaded": preloaded}
"#;

/// What a forked instance imports on its first call (here by a computed name) is reported to
/// the worker, and the zygote imports the packages' part of it: later forks inherit it.
#[test]
fn zygote_learns_the_submodules_forked_instances_import() {
    let w = start(UV, "tree = [[\"idna\"]]\n");
    let r = w.deploy(
        "lazy",
        &[("f.py", LAZY_CODEC_FN), ("requirements.txt", "idna\n")],
    );
    assert_eq!(r.status, 200, "deploy: {}", r.text());
    let (v, _) = fork_ok(&w, "lazy", &json!({}));
    assert_eq!(
        v["preloaded"], false,
        "nothing could have taught the zygote yet: {v}"
    );
    // The seed forked after that first invocation comes from a zygote that learned.
    settle(&w);
    wait_seeded(&w, 1);
    let (v, _) = fork_ok(&w, "lazy", &json!({}));
    assert_eq!(
        v["preloaded"], true,
        "the zygote did not learn idna.codec: {v}"
    );
    let seen = worker_processes(&w);
    finish(w, seen);
}

// --- package versions --------------------------------------------------------------------

const SIX_FN: &str = r#"import sys
preloaded = "six" in sys.modules
import six

def f(event):
    return {"version": six.__version__, "file": six.__file__, "preloaded": preloaded}
"#;

#[test]
fn pinned_versions_fork_only_from_matching_zygotes() {
    pinned_versions(0);
}

/// With seeds, instances come from children forked ahead of need: still each from the zygote
/// holding exactly its function's six (the module it imports is the preloaded one).
#[test]
fn pinned_versions_seeded_from_matching_zygotes() {
    pinned_versions(1);
}

/// Without seeds every fork happens at request time, so the zygote that forked is observable.
fn pinned_versions(seeds: usize) {
    let w = start(UV, &format!("tree = [[\"six\"]]\nseeds = {seeds}\n"));
    for (name, pin) in [("six16", "1.16.0"), ("six17", "1.17.0")] {
        let r = w.deploy(
            name,
            &[
                ("f.py", &format!("# {name}\n{SIX_FN}")),
                ("requirements.txt", &format!("six=={pin}\n")),
            ],
        );
        assert_eq!(r.status, 200, "deploy {name}: {}", r.text());
        assert_eq!(
            r.json()["packages"],
            json!([format!("six=={pin}")]),
            "{}",
            r.text()
        );
    }
    let forks_by_packages = |w: &Worker| -> Vec<(Vec<String>, u64, i64)> {
        zygotes(w)
            .iter()
            .map(|z| {
                (
                    packages_of(z),
                    z["forks"].as_u64().unwrap(),
                    z["pid"].as_i64().unwrap(),
                )
            })
            .collect()
    };
    for round in 0..2 {
        for (name, pin) in [
            ("six16", "1.16.0"),
            ("six17", "1.17.0"),
            ("six16", "1.16.0"),
        ] {
            let key = format!("six=={pin}");
            let before = forks_by_packages(&w);
            let (v, _) = fork_ok(&w, name, &json!({}));
            assert_eq!(v["version"], pin, "round {round}: {name} imported {v}");
            assert_eq!(
                v["preloaded"], true,
                "{name}: six was not the zygote's: {v}"
            );
            assert!(
                v["file"]
                    .as_str()
                    .unwrap()
                    .starts_with(&format!("/packages/{key}/files/")),
                "{name}: {v}"
            );
            if seeds > 0 {
                continue;
            }
            let after = forks_by_packages(&w);
            // Exactly one zygote forked, and it holds exactly this function's six.
            let grew: Vec<&(Vec<String>, u64, i64)> = after
                .iter()
                .filter(|(p, n, _)| {
                    let old = before
                        .iter()
                        .find(|(q, _, _)| q == p)
                        .map(|b| b.1)
                        .unwrap_or(0);
                    *n > old
                })
                .collect();
            assert_eq!(
                grew.len(),
                1,
                "{name}: zygotes that forked: {grew:?} (all: {after:?})"
            );
            assert_eq!(
                grew[0].0,
                vec![key.clone()],
                "{name} (six=={pin}) forked from a zygote holding {:?}",
                grew[0].0
            );
        }
    }
    // One zygote per six version plus the root, each with one version only.
    let zs = zygotes(&w);
    let sets: BTreeSet<Vec<String>> = zs.iter().map(packages_of).collect();
    assert_eq!(
        sets,
        BTreeSet::from([
            vec![],
            vec!["six==1.16.0".to_string()],
            vec!["six==1.17.0".to_string()]
        ]),
        "{zs:?}"
    );
    for z in &zs {
        let six: Vec<String> = packages_of(z)
            .into_iter()
            .filter(|p| p.starts_with("six=="))
            .collect();
        assert!(six.len() <= 1, "a zygote holds two sixes: {z}");
    }
    let root = zs.iter().find(|z| packages_of(z).is_empty()).unwrap();
    for z in zs.iter().filter(|z| !packages_of(z).is_empty()) {
        assert_eq!(z["parent"], root["id"], "{z}");
        assert_eq!(z["failed_imports"], json!([]), "six did not preload: {z}");
    }
    assert_eq!(stat(&w, "fork.fallback"), 0, "{}", w.stats());
    let seen = worker_processes(&w);
    finish(w, seen);
}

// --- a zygote dies -----------------------------------------------------------------------

#[test]
fn killed_zygote_is_replaced() {
    let w = start("", "");
    w.deploy_ok("hello", &[("f.py", HELLO)]);
    w.deploy_ok("sleepy", &[("f.py", SLEEPER)]);
    let (v, _) = fork_ok(&w, "hello", &json!({"name": "one"}));
    assert_eq!(v, json!({"hello": "one"}));
    let zs = zygotes(&w);
    assert_eq!(zs.len(), 1, "{zs:?}");
    let zpid = zs[0]["pid"].as_i64().unwrap() as i32;
    let zid = zs[0]["id"].as_str().unwrap().to_string();
    let zproc = Proc::of(zpid).unwrap();
    let mut seen = worker_processes(&w);

    // Kill it while one of its forked instances is running a request: that request finishes.
    let fallbacks = stat(&w, "fork.fallback");
    let (r, ()) = std::thread::scope(|s| {
        let h = s.spawn(|| fork(&w, "sleepy", &json!({"sleep": 2})));
        std::thread::sleep(Duration::from_millis(800));
        kindling_sandbox::process::signal(zpid, 9).unwrap();
        (h.join().unwrap(), ())
    });
    assert_eq!(
        r.status,
        200,
        "a forked instance died with its zygote: {}",
        r.text()
    );
    assert_eq!(r.json(), json!({"slept": 2}));
    let deadline = Instant::now() + Duration::from_secs(5);
    while zproc.alive() {
        assert!(Instant::now() < deadline, "SIGKILL did not kill the zygote");
        std::thread::sleep(Duration::from_millis(20));
    }

    // The next invocations succeed (fallback or a new zygote), whatever the start method.
    for i in 0..3 {
        let r = w.request(
            "POST",
            "/run/hello",
            &[("X-Kindling-Start", "fork")],
            format!("{{\"name\": \"after{i}\"}}").as_bytes(),
        );
        assert_eq!(
            r.status,
            200,
            "call {i} after the zygote's death: {}\nworker log:\n{}",
            r.text(),
            w.log_text()
        );
        assert_eq!(r.json(), json!({"hello": format!("after{i}")}));
        let how = r.header("x-kindling-start").unwrap();
        assert!(how == "fork" || how == "cold", "{how}");
        if how == "cold" {
            assert!(stat(&w, "fork.fallback") > fallbacks, "{}", w.stats());
        }
    }
    // Shortly after, a zygote exists again, with a new process, and forks.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let r = w.request("POST", "/run/hello", &[("X-Kindling-Start", "fork")], b"{}");
        assert_eq!(r.status, 200, "{}", r.text());
        let zs = zygotes(&w);
        if r.header("x-kindling-start") == Some("fork")
            && zs.len() == 1
            && zs[0]["pid"].as_i64() != Some(zpid as i64)
        {
            let new_pid = zs[0]["pid"].as_i64().unwrap() as i32;
            assert!(Proc::of(new_pid).is_some(), "{zs:?}");
            assert_ne!(zs[0]["id"], zid.as_str(), "{zs:?}");
            break;
        }
        assert!(
            Instant::now() < deadline,
            "no zygote came back: {zs:?}\nworker log:\n{}",
            w.log_text()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    // The dead zygote's sandbox stays while instances forked from it live (their pid
    // namespaces lie inside its own); once they are gone, so is it.
    for name in ["hello", "sleepy"] {
        let r = w.request("DELETE", &format!("/registry/{name}"), &[], b"");
        assert_eq!(r.status, 200, "{}", r.text());
    }
    w.assert_sandbox_gone(&zid, &[]);
    seen.extend(worker_processes(&w));
    finish(w, seen);
}

// --- idle pausing ------------------------------------------------------------------------

/// Process state letter from /proc/<pid>/stat.
fn proc_state(pid: i32) -> Option<char> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    stat[stat.rfind(')')? + 2..].chars().next()
}

#[test]
fn idle_zygote_pauses_and_resumes() {
    // No seeds: every fork start asks the zygote itself, which must be resumed for it.
    let w = start("", "idle_pause_secs = 1\nseeds = 0\n");
    w.deploy_ok("hello", &[("f.py", HELLO)]);
    let (v, _) = fork_ok(&w, "hello", &json!({"name": "a"}));
    assert_eq!(v, json!({"hello": "a"}));
    let zpid = zygote_pids(&w)[0];
    let mut seen = worker_processes(&w);
    for round in 0..2 {
        // Idle past idle_pause_secs (housekeeping runs every second).
        let deadline = Instant::now() + Duration::from_secs(10);
        std::thread::sleep(Duration::from_millis(2500));
        loop {
            let zs = zygotes(&w);
            if zs[0]["paused"] == true {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "round {round}: idle zygote not paused: {zs:?}"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        assert_eq!(
            proc_state(zpid),
            Some('T'),
            "round {round}: /status says paused but the zygote is not stopped"
        );
        let forks = zygotes(&w)[0]["forks"].as_u64().unwrap();
        // A fork from the paused zygote works and unpauses it.
        let (v, _) = fork_ok(&w, "hello", &json!({"name": format!("r{round}")}));
        assert_eq!(v, json!({"hello": format!("r{round}")}));
        let zs = zygotes(&w);
        assert_eq!(zs.len(), 1, "{zs:?}");
        assert_eq!(zs[0]["pid"], zpid, "the zygote was replaced, not resumed");
        assert_eq!(zs[0]["paused"], false, "{zs:?}");
        assert_eq!(zs[0]["forks"].as_u64().unwrap(), forks + 1, "{zs:?}");
        let st = proc_state(zpid);
        assert!(
            st.is_some() && st != Some('T'),
            "round {round}: resumed zygote is in state {st:?}"
        );
        assert!(
            zs[0]["memory_bytes"].as_u64().unwrap_or(0) > 0,
            "no zygote memory: {zs:?}"
        );
    }
    assert_eq!(stat(&w, "fork.fallback"), 0, "{}", w.stats());
    // Stop the worker while its zygote is paused: it must not survive, stopped or not.
    std::thread::sleep(Duration::from_millis(2500));
    assert_eq!(zygotes(&w)[0]["paused"], true);
    seen.extend(worker_processes(&w));
    w.assert_no_leaks();
    let zproc = Proc::of(zpid).unwrap();
    w.stop();
    let deadline = Instant::now() + Duration::from_secs(5);
    while seen.iter().any(Proc::alive) || zproc.alive() {
        assert!(
            Instant::now() < deadline,
            "paused zygote survives the stop: {:?}",
            seen.iter().filter(|p| p.alive()).collect::<Vec<_>>()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

// --- SeBS --------------------------------------------------------------------------------

#[test]
fn sebs_forked_is_cold() {
    let w = start("", "");
    let r = w.deploy(
        "sebs",
        &[
            (
                "function.py",
                "def handler(event):\n    return {\"result\": {\"double\": event[\"x\"] * 2}}\n",
            ),
            (
                "config.json",
                r#"{"timeout": 5, "memory": 128, "languages": ["python"]}"#,
            ),
        ],
    );
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json()["format"], "sebs");
    let (v, r) = fork_ok(&w, "sebs", &json!({"x": 21}));
    assert_eq!(v["is_cold"], true, "a forked instance's first call: {v}");
    assert_eq!(v["result"]["result"]["double"], 42, "{v}");
    let cid = v["container_id"].as_str().unwrap().to_string();
    assert_eq!(r.header("x-kindling-sandbox"), Some(cid.as_str()));
    assert_eq!(
        r.header("x-kindling-request"),
        v["request_id"].as_str(),
        "{v}"
    );
    let r = w.run("sebs", r#"{"x": 1}"#);
    assert_eq!(r.header("x-kindling-start"), Some("warm"));
    let v = r.json();
    assert_eq!(v["is_cold"], false, "{v}");
    assert_eq!(v["container_id"], cid.as_str(), "{v}");
    // Another forced fork is a new container, cold again.
    let (v, _) = fork_ok(&w, "sebs", &json!({"x": 2}));
    assert_eq!(v["is_cold"], true, "{v}");
    assert_ne!(v["container_id"], cid.as_str(), "{v}");
    let seen = worker_processes(&w);
    finish(w, seen);
}

/// The whole tree dies (the root zygote and its child holding a package): forks of a function
/// needing the child must come back, from a new child of a new root.
#[test]
fn killed_zygote_tree_is_replaced() {
    let w = start(UV, "tree = [[\"six\"]]\n");
    let r = w.deploy(
        "six16",
        &[("f.py", SIX_FN), ("requirements.txt", "six==1.16.0\n")],
    );
    assert_eq!(r.status, 200, "deploy: {}", r.text());
    let (v, _) = fork_ok(&w, "six16", &json!({}));
    assert_eq!(v["version"], "1.16.0", "{v}");
    let zs = zygotes(&w);
    assert_eq!(zs.len(), 2, "root and six: {zs:?}");
    let old: Vec<Proc> = zs
        .iter()
        .map(|z| Proc::of(z["pid"].as_i64().unwrap() as i32).unwrap())
        .collect();
    let mut seen = worker_processes(&w);
    for p in &old {
        kindling_sandbox::process::signal(p.pid, 9).unwrap();
    }
    let deadline = Instant::now() + Duration::from_secs(5);
    while old.iter().any(Proc::alive) {
        assert!(
            Instant::now() < deadline,
            "SIGKILL did not kill the zygotes"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut methods = Vec::new();
    loop {
        let r = w.request("POST", "/run/six16", &[("X-Kindling-Start", "fork")], b"{}");
        assert_eq!(r.status, 200, "{}", r.text());
        assert_eq!(r.json()["version"], "1.16.0");
        methods.push(r.header("x-kindling-start").unwrap_or("").to_string());
        let zs = zygotes(&w);
        let six = zs
            .iter()
            .find(|z| packages_of(z) == ["six==1.16.0"])
            .cloned();
        if methods.last().map(String::as_str) == Some("fork") {
            if let Some(z) = six {
                let pid = z["pid"].as_i64().unwrap() as i32;
                if old.iter().all(|p| p.pid != pid) {
                    assert_eq!(r.json()["preloaded"], true);
                    break;
                }
            }
        }
        assert!(
            Instant::now() < deadline,
            "the six zygote never came back after its tree was killed: start methods {methods:?}, \
             fork.fallback {}, zygotes {zs:?}\nworker log:\n{}",
            stat(&w, "fork.fallback"),
            w.log_text()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    seen.extend(worker_processes(&w));
    finish(w, seen);
}

/// Regression: a pool refill still creating sandboxes while the worker shut down left their
/// cgroups behind. Stopping right after a burst of fork starts (each triggers a refill) must
/// leave no cgroup (`stop` checks).
#[test]
fn stop_during_pool_refill_leaves_nothing() {
    for _ in 0..3 {
        // A large pool keeps the refill busy for a while after the fork.
        let w = start("max_sandboxes = 512", "sandbox_pool = 100\n");
        w.deploy_ok("hello", &[("f.py", HELLO)]);
        fork_ok(&w, "hello", &json!({}));
        w.stop();
    }
}
