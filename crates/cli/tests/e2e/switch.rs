//! `switch` (issue 12): an idle sandbox of function A becomes a sandbox of function B. B must
//! find nothing of A — no file in `/tmp`, no process, no System V IPC object, no abstract Unix
//! socket, no environment variable, no descriptor beyond its own, the hostname its own — and
//! its memory accounting and limits must be its own. Each test runs with A's sandbox made cold
//! and made by a fork from a zygote (`<test>::cold`, `<test>::fork`).

use crate::harness::Worker;
use kindling_api::{headers, StartMethod};
use serde_json::{json, Value};

macro_rules! for_cold_and_fork {
    ($($test:ident),* $(,)?) => {
        $(mod $test {
            #[test]
            fn cold() {
                super::$test(kindling_api::StartMethod::Cold)
            }
            #[test]
            fn fork() {
                super::$test(kindling_api::StartMethod::Fork)
            }
        })*
    };
}

for_cold_and_fork!(
    b_finds_nothing_of_a,
    memory_accounting_starts_from_b,
    never_into_a_sandbox_b_would_be_killed_in,
    survives_daemons_and_a_fork_bomb,
);

/// A worker whose first sandboxes are made by `start` (zygotes off for cold; the root zygote
/// only for fork), with idle instances never frozen unless `freeze`.
fn worker(start: StartMethod, extra: &str) -> Worker {
    let zygotes = match start {
        StartMethod::Fork => "[zygotes]\nenabled = true\nauto = false\ntree = []\n",
        _ => "",
    };
    Worker::start(&format!("{extra}\n{zygotes}"))
}

/// Runs `name` forcing `start`; asserts it got it and returns the response's JSON and headers.
fn run(
    w: &Worker,
    name: &str,
    start: StartMethod,
    event: &Value,
) -> (Value, kindling_api::RunInfo) {
    let r = w.request(
        "POST",
        &format!("/run/{name}"),
        &[(headers::START, start.as_str())],
        event.to_string().as_bytes(),
    );
    assert_eq!(
        r.status,
        200,
        "{name}: {}\nworker log:\n{}",
        r.text(),
        w.log_text()
    );
    let info = r.run_info();
    assert_eq!(
        info.start,
        Some(start),
        "{name} did not start {start}: {}\nworker log:\n{}",
        w.stats(),
        w.log_text()
    );
    (r.json(), info)
}

/// A leaves everything it can behind: a file in /tmp (and in /dev/shm, which is /tmp), a
/// daemon holding an abstract Unix socket and an open file, System V shared memory, a
/// semaphore set, a message queue and a POSIX message queue; it tries to change the hostname.
const LEAVER: &str = r#"import ctypes, os, socket, time

def f(event):
    out = {}
    with open("/tmp/a-was-here", "w") as fh:
        fh.write("secret of a")
    libc = ctypes.CDLL(None, use_errno=True)
    IPC_CREAT = 0o1000
    out["shm"] = libc.shmget(0, 4096, IPC_CREAT | 0o600)
    out["sem"] = libc.semget(0, 1, IPC_CREAT | 0o600)
    out["msg"] = libc.msgget(0, IPC_CREAT | 0o600)
    O_CREAT, O_RDWR = 0o100, 2
    out["mq"] = libc.mq_open(b"/kindling-a-mq", O_CREAT | O_RDWR, 0o600, None)
    try:
        socket.sethostname("a-was-here")
        out["hostname"] = "changed"
    except OSError as e:
        out["hostname"] = str(e)
    r, w = os.pipe()
    if os.fork() == 0:
        os.setsid()
        if os.fork() == 0:
            s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            s.bind("\0kindling-a-socket")
            s.listen(1)
            keep = open("/tmp/a-was-here")
            os.write(w, b"x")
            while True:
                time.sleep(1)
        os._exit(0)
    os.read(r, 1)
    out["env"] = os.environ.get("A_SECRET")
    with open("/proc/net/unix") as fh:
        out["abstract"] = "@kindling-a-socket" in fh.read()
    out["processes"] = len([p for p in os.listdir("/proc") if p.isdigit()])
    return out
"#;

/// B reports what it finds.
const FINDER: &str = r#"import ctypes, os, socket

def f(event):
    libc = ctypes.CDLL(None, use_errno=True)
    def table(name):
        with open("/proc/sysvipc/" + name) as fh:
            return fh.read().splitlines()[1:]
    with open("/proc/net/unix") as fh:
        unix = [l.split()[-1] for l in fh.read().splitlines()[1:] if l.split()[-1].startswith("@")]
    fds = sorted(int(n) for n in os.listdir("/proc/self/fd"))
    return {
        "tmp": sorted(os.listdir("/tmp")),
        "pids": sorted(int(p) for p in os.listdir("/proc") if p.isdigit()),
        "me": os.getpid(),
        "ppid": os.getppid(),
        "shm": table("shm"), "sem": table("sem"), "msg": table("msg"),
        "mq": libc.mq_open(b"/kindling-a-mq", 0),
        "abstract": unix,
        "env": sorted(os.environ),
        "fds": fds,
        "fd_targets": sorted(os.readlink("/proc/self/fd/%d" % n).split("[")[0] for n in fds if os.path.exists("/proc/self/fd/%d" % n)),
        "ifaces": sorted(l.split(":")[0].strip() for l in open("/proc/net/dev").read().splitlines()[2:]),
        "hostname": socket.gethostname(),
        "domainname": open("/proc/sys/kernel/domainname").read().strip(),
        "sandbox": os.environ.get("KINDLING_SANDBOX"),
    }
"#;

fn b_finds_nothing_of_a(start: StartMethod) {
    let w = worker(start, "");
    w.deploy_ok(
        "a",
        &[
            ("f.py", LEAVER),
            ("ol.yaml", "environment:\n  A_SECRET: hush\n"),
        ],
    );
    w.deploy_ok("b", &[("f.py", FINDER)]);
    w.deploy_ok("b_cold", &[("f.py", FINDER)]);
    let (a, a_info) = run(&w, "a", start, &json!({}));
    // A did leave all of it.
    for kind in ["shm", "sem", "msg"] {
        assert!(
            a[kind].as_i64().unwrap() >= 0,
            "A could not make its {kind}: {a}"
        );
    }
    assert!(
        a["mq"].as_i64().unwrap() >= 0,
        "A could not make its POSIX message queue: {a}"
    );
    assert_eq!(a["abstract"], true, "{a}");
    assert_eq!(a["env"], "hush", "{a}");
    assert!(
        a["processes"].as_u64().unwrap() >= 3,
        "A's daemon is missing: {a}"
    );

    let (b, b_info) = run(&w, "b", StartMethod::Switch, &json!({}));
    assert_ne!(
        b_info.sandbox, a_info.sandbox,
        "a switched sandbox gets a new id"
    );
    assert_eq!(b["tmp"], json!([]), "A's /tmp reached B: {b}");
    let me = b["me"].as_i64().unwrap();
    assert_eq!(b["pids"], json!([1, me]), "A's processes reached B: {b}");
    for kind in ["shm", "sem", "msg"] {
        assert_eq!(b[kind], json!([]), "A's System V {kind} reached B: {b}");
    }
    assert_eq!(b["mq"], -1, "A's POSIX message queue reached B: {b}");
    assert_eq!(
        b["abstract"],
        json!([]),
        "A's abstract socket reached B: {b}"
    );
    assert!(
        !b["env"].as_array().unwrap().contains(&json!("A_SECRET")),
        "A's environment reached B: {b}"
    );
    assert_eq!(b["hostname"], b["sandbox"], "the hostname is not B's: {b}");

    // In a sandbox made within the zygote B forks from, B is forked (its parent, the zygote,
    // is outside the sandbox's pid namespace); in a cold one, the sandbox's init execs it.
    let parent = if start == StartMethod::Fork { 0 } else { 1 };
    assert_eq!(b["ppid"], parent, "{b}");
    // B in a sandbox of its own, started as A was: the same descriptors, environment and
    // domain name.
    let (c, _) = run(&w, "b_cold", start, &json!({}));
    for key in ["fds", "fd_targets", "domainname"] {
        assert_eq!(
            b[key], c[key],
            "B's {key} differ from a cold start's: {b} vs {c}"
        );
    }
    let names = |v: &Value| -> Vec<Value> {
        v["env"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|k| !k.as_str().unwrap().starts_with("KINDLING_"))
            .cloned()
            .collect()
    };
    assert_eq!(names(&b), names(&c), "{b} vs {c}");
    assert_eq!(b["ppid"], c["ppid"], "{b} vs {c}");
    assert_eq!(w.stats()["start.switch"], 1, "{}", w.stats());
    // The switched instance serves warm afterwards, and A starts anew.
    let (again, info) = run(&w, "b", StartMethod::Warm, &json!({}));
    assert_eq!(info.sandbox, b_info.sandbox);
    assert_eq!(again["tmp"], json!([]));
    w.assert_serves();
    w.assert_no_leaks();
    w.stop();
}

/// A fills its memory (page cache it alone read, a /tmp file, its heap); B, switched into
/// its sandbox, is charged from its own usage.
const HOG: &str = r#"import os

def f(event):
    # Page cache of a file nobody else read: charged to this sandbox's cgroup.
    fd = os.open("/handler/blob.bin", os.O_RDONLY)
    os.fsync(fd)
    os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    while os.read(fd, 1 << 20):
        pass
    os.close(fd)
    with open("/tmp/fill", "wb") as fh:
        fh.write(b"x" * (24 << 20))
    global keep
    keep = bytearray(24 << 20)
    return {"ok": True}
"#;

fn memory_accounting_starts_from_b(start: StartMethod) {
    let w = worker(start, "");
    let blob = "y".repeat(32 << 20);
    w.deploy_ok(
        "hog",
        &[
            ("f.py", HOG),
            ("blob.bin", &blob),
            ("ol.yaml", "memory_mb: 256\n"),
        ],
    );
    w.deploy_ok("b", &[("f.py", FINDER)]);
    w.deploy_ok("b_cold", &[("f.py", FINDER)]);
    let (_, hog) = run(&w, "hog", start, &json!({}));
    let hog_bytes = hog.memory_bytes.unwrap();
    assert!(
        hog_bytes > 60 << 20,
        "the hog's sandbox holds only {hog_bytes} bytes"
    );
    let (_, b) = run(&w, "b", StartMethod::Switch, &json!({}));
    let (_, c) = run(&w, "b_cold", StartMethod::Cold, &json!({}));
    let (b_bytes, c_bytes) = (b.memory_bytes.unwrap(), c.memory_bytes.unwrap());
    // B is charged about what a cold B is: nothing of the hog's 80 MB.
    assert!(
        b_bytes < c_bytes + (16 << 20),
        "B after a switch is charged {b_bytes} bytes, a cold B {c_bytes}, the hog {hog_bytes}"
    );
    w.assert_no_leaks();
    w.stop();
}

fn never_into_a_sandbox_b_would_be_killed_in(start: StartMethod) {
    let w = worker(start, "");
    w.deploy_ok(
        "hog",
        &[
            ("f.py", HOG),
            ("blob.bin", "z"),
            ("ol.yaml", "memory_mb: 256\n"),
        ],
    );
    w.deploy_ok("small", &[("f.py", FINDER), ("ol.yaml", "memory_mb: 32\n")]);
    let (_, hog) = run(&w, "hog", start, &json!({}));
    assert!(hog.memory_bytes.unwrap() > 32 << 20);
    // The only idle sandbox holds more than `small` may use: no switch, a cold start.
    let r = w.request("POST", "/run/small", &[(headers::START, "switch")], b"{}");
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.run_info().start, Some(StartMethod::Cold), "{}", w.stats());
    assert_eq!(w.stats()["switch.fallback"], 1, "{}", w.stats());
    // The hog is still warm: its sandbox was never touched.
    let (_, again) = run(&w, "hog", StartMethod::Warm, &json!({}));
    assert_eq!(again.sandbox, hog.sandbox);
    // With a limit that fits, B is switched into it, and its limit is B's.
    w.deploy_ok("fits", &[("f.py", FINDER), ("ol.yaml", "memory_mb: 512\n")]);
    let (_, fits) = run(&w, "fits", StartMethod::Switch, &json!({}));
    let limit = w
        .sandbox_cgroups(fits.sandbox.as_deref().unwrap())
        .into_iter()
        .find_map(|d| {
            std::fs::read_to_string(d.join("memory.limit_in_bytes"))
                .or_else(|_| std::fs::read_to_string(d.join("memory.max")))
                .ok()
        })
        .unwrap();
    assert_eq!(limit.trim(), (512u64 << 20).to_string());
    w.assert_no_leaks();
    w.stop();
}

/// A leaves daemons in a loop of forks, and a fork bomb.
const BOMB: &str = r#"import os, time

def f(event):
    for _ in range(3):
        try:
            pid = os.fork()
        except OSError:
            # The bomb of an earlier child already holds every pid the sandbox may have.
            continue
        if pid == 0:
            os.setsid()
            while True:
                try:
                    os.fork()
                except OSError:
                    time.sleep(0.01)
    time.sleep(0.2)
    return {"ok": True}
"#;

fn survives_daemons_and_a_fork_bomb(start: StartMethod) {
    let w = worker(start, "");
    w.deploy_ok("bomb", &[("f.py", BOMB)]);
    w.deploy_ok("b", &[("f.py", FINDER)]);
    run(&w, "bomb", start, &json!({}));
    let (b, _) = run(&w, "b", StartMethod::Switch, &json!({}));
    let me = b["me"].as_i64().unwrap();
    assert_eq!(b["pids"], json!([1, me]), "{b}");
    w.assert_serves();
    w.assert_no_leaks();
    w.stop();
}

/// A networked sandbox never becomes a non-networked function's, nor the reverse.
#[test]
fn never_across_the_network_setting() {
    let w = Worker::start("allow_network = true\n");
    let online = [("f.py", FINDER), ("ol.yaml", "network: true\n")];
    for name in ["online", "online2", "online3"] {
        w.deploy_ok(name, &online);
    }
    w.deploy_ok("offline", &[("f.py", FINDER)]);
    w.deploy_ok("offline2", &[("f.py", FINDER)]);
    let (_, first) = run(&w, "online", StartMethod::Cold, &json!({}));
    // The only idle sandbox is networked: no switch for a function without network.
    let r = w.request("POST", "/run/offline", &[(headers::START, "switch")], b"{}");
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.run_info().start, Some(StartMethod::Cold), "{}", w.stats());
    assert_eq!(r.json()["ifaces"], json!(["lo"]));
    // With both idle, each setting takes its own kind, even when the other is older.
    let (v, _) = run(&w, "offline2", StartMethod::Switch, &json!({}));
    assert_eq!(v["ifaces"], json!(["lo"]), "{v}");
    let (_, again) = run(&w, "online", StartMethod::Warm, &json!({}));
    assert_eq!(again.sandbox, first.sandbox);
    let (v, _) = run(&w, "online2", StartMethod::Switch, &json!({}));
    assert_eq!(v["ifaces"], json!(["eth0", "lo"]), "{v}");
    let (v, _) = run(&w, "online3", StartMethod::Switch, &json!({}));
    assert_eq!(v["ifaces"], json!(["eth0", "lo"]), "{v}");
    w.assert_no_leaks();
    w.stop();
}

/// A frozen idle instance is thawed and its processes killed before the switch.
#[test]
fn a_frozen_idle_sandbox_switches() {
    let w = Worker::start("freeze_idle = true\nfreeze_idle_after_ms = 1\n");
    w.deploy_ok("bomb", &[("f.py", BOMB)]);
    w.deploy_ok("b", &[("f.py", FINDER)]);
    run(&w, "bomb", StartMethod::Cold, &json!({}));
    std::thread::sleep(std::time::Duration::from_millis(100));
    let (b, _) = run(&w, "b", StartMethod::Switch, &json!({}));
    let me = b["me"].as_i64().unwrap();
    assert_eq!(b["pids"], json!([1, me]), "{b}");
    w.assert_no_leaks();
    w.stop();
}
