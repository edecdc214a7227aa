//! Isolation (issue 2): each test deploys a handler that tries something a function must not be
//! able to do and reports what happened; the test asserts it failed. Every test runs twice, on
//! an instance started cold and on one forked from a zygote (`<test>::cold`, `<test>::fork`):
//! a forked instance must be isolated exactly like a cold one.

use crate::harness::{self, Worker};
use kindling_api::StartMethod;
use serde_json::{json, Value};

/// Runs each test for both start methods that make a sandbox.
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
    cannot_see_host_files,
    cannot_connect_without_network,
    runs_unprivileged_without_capabilities,
    cannot_write_outside_tmp,
    cannot_mount,
    cannot_see_host_processes,
    functions_cannot_find_each_others_files,
    functions_keep_their_own_tmp,
);

/// A worker whose new instances start by `start`: zygotes off for `cold`; for `fork`, only the
/// root zygote (no packages), which every function here can fork from.
fn worker(start: StartMethod) -> Worker {
    match start {
        StartMethod::Fork => Worker::start("[zygotes]\nenabled = true\nauto = false\ntree = []\n"),
        _ => Worker::start(""),
    }
}

/// Deploys `code` as `f.py` (plus `extra` files), starts an instance of it by `start` with
/// `event`, and returns its JSON.
fn probe(
    w: &Worker,
    start: StartMethod,
    name: &str,
    code: &str,
    extra: &[(&str, &str)],
    event: &Value,
) -> Value {
    let mut files = vec![("f.py", code)];
    files.extend_from_slice(extra);
    w.deploy_ok(name, &files);
    let r = w.request(
        "POST",
        &format!("/run/{name}"),
        &[(kindling_api::headers::START, start.as_str())],
        event.to_string().as_bytes(),
    );
    assert_eq!(r.status, 200, "{name}: {}", r.text());
    assert_eq!(
        r.run_info().start,
        Some(start),
        "{name} did not start {start}\nworker log:\n{}",
        w.log_text()
    );
    r.json()
}

fn finish(w: Worker) {
    w.assert_serves();
    w.assert_no_leaks();
    w.stop();
}

fn names(v: &Value) -> Vec<String> {
    v.as_array()
        .unwrap_or_else(|| panic!("not an array: {v}"))
        .iter()
        .map(|s| s.as_str().unwrap().to_string())
        .collect()
}

fn cannot_see_host_files(start: StartMethod) {
    let w = worker(start);
    // One per variant: the cold and fork variants run at once in this process.
    let marker = std::env::temp_dir().join(format!(
        "kindling-host-marker-{}-{start:?}",
        std::process::id()
    ));
    std::fs::write(&marker, "host only").unwrap();
    let root = w.root.path().display().to_string();
    let paths = vec![
        root.clone(),
        format!("{root}/functions"),
        marker.display().to_string(),
        "/work".into(),
        "/work/main".into(),
        harness::base_dir().display().to_string(),
        "/var/lib/kindling".into(),
        env!("CARGO_MANIFEST_DIR").into(),
        "/root/.cargo".into(),
        "/proc/1/root/work".into(),
        "/sys/fs/cgroup/memory".into(),
    ];
    let v = probe(
        &w,
        start,
        "peek",
        r#"import os

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
    return {"exists": exists, "root": sorted(os.listdir("/")), "tmp": sorted(os.listdir("/tmp"))}
"#,
        &[],
        &json!({ "paths": paths }),
    );
    for p in &paths {
        let seen = v["exists"][p].as_str().unwrap();
        assert!(
            seen == "absent"
                || ((p.starts_with("/root") || p.starts_with("/proc"))
                    && seen == "PermissionError"),
            "{p} is visible in the sandbox ({seen})"
        );
    }
    // The root directory is the base rootfs and nothing else.
    let inside = names(&v["root"]);
    let base: Vec<String> = std::fs::read_dir(harness::base_dir().join("debian-python/rootfs"))
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    for n in &inside {
        assert!(
            base.contains(n),
            "/{n} in the sandbox is not from the base rootfs: {inside:?}"
        );
    }
    assert!(
        !inside.contains(&"work".to_string()),
        "host-only /work is visible: {inside:?}"
    );
    assert!(
        names(&v["tmp"]).is_empty(),
        "the sandbox's /tmp is not empty: {}",
        v["tmp"]
    );
    std::fs::remove_file(&marker).unwrap();
    finish(w);
}

const NET_PROBE: &str = r#"import socket

def attempt(fn):
    try:
        fn()
        return "ok"
    except OSError as e:
        return f"{type(e).__name__}: {e}"

def tcp(host, port):
    s = socket.create_connection((host, port), timeout=2)
    s.close()

def udp():
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        s.sendto(b"\0" * 12, ("1.1.1.1", 53))
    finally:
        s.close()

def raw():
    socket.socket(socket.AF_PACKET, socket.SOCK_RAW).close()

def f(event):
    with open("/proc/net/dev") as fh:
        ifaces = [l.split(":")[0].strip() for l in fh.read().splitlines()[2:]]
    return {
        "ifaces": ifaces,
        "internet": attempt(lambda: tcp("1.1.1.1", 53)),
        "worker": attempt(lambda: tcp("127.0.0.1", event["port"])),
        "udp": attempt(udp),
        "raw": attempt(raw),
    }
"#;

fn cannot_connect_without_network(start: StartMethod) {
    let w = worker(start);
    let port = w.addr.port();
    let v = probe(
        &w,
        start,
        "offline",
        NET_PROBE,
        &[],
        &json!({ "port": port }),
    );
    assert_eq!(names(&v["ifaces"]), vec!["lo"], "{v}");
    for key in ["internet", "worker", "udp", "raw"] {
        assert_ne!(v[key], "ok", "{key} succeeded without networking: {v}");
    }
    // Loopback inside is the sandbox's own: the worker's port is not there.
    assert!(v["worker"].as_str().unwrap().contains("Refused"), "{v}");

    // Nor may a function grant itself network: `network: true` needs the operator's
    // `allow_network` (what it then gets is tested in network.rs).
    let r = w.deploy(
        "online",
        &[("f.py", NET_PROBE), ("ol.yaml", "network: true\n")],
    );
    assert_eq!(r.status, 400, "{}", r.text());
    finish(w);
}

fn runs_unprivileged_without_capabilities(start: StartMethod) {
    let w = worker(start);
    let v = probe(
        &w,
        start,
        "whoami",
        r#"import os

def f(event):
    status = {}
    with open("/proc/self/status") as fh:
        for line in fh:
            k, _, val = line.partition(":")
            status[k] = val.strip()
    try:
        os.setuid(0)
        setuid = "ok"
    except OSError as e:
        setuid = type(e).__name__
    try:
        os.chown("/tmp", 0, 0)
        chown = "ok"
    except OSError as e:
        chown = type(e).__name__
    return {
        "uid": os.getuid(), "euid": os.geteuid(), "gid": os.getgid(), "egid": os.getegid(),
        "groups": os.getgroups(), "status": status, "setuid": setuid, "chown": chown,
    }
"#,
        &[],
        &json!({}),
    );
    for k in ["uid", "euid", "gid", "egid"] {
        assert_eq!(v[k], 65534, "{k}: {v}");
    }
    for g in v["groups"].as_array().unwrap() {
        assert_eq!(g, 65534, "supplementary groups: {v}");
    }
    let st = &v["status"];
    assert_eq!(st["Uid"], "65534\t65534\t65534\t65534", "{st}");
    assert_eq!(st["Gid"], "65534\t65534\t65534\t65534", "{st}");
    for cap in ["CapInh", "CapPrm", "CapEff", "CapBnd", "CapAmb"] {
        assert_eq!(st[cap], "0000000000000000", "{cap}: {st}");
    }
    assert_eq!(st["NoNewPrivs"], "1", "{st}");
    assert_eq!(st["Seccomp"], "2", "{st}");
    assert_eq!(v["setuid"], "PermissionError", "{v}");
    assert_eq!(v["chown"], "PermissionError", "{v}");
    finish(w);
}

fn cannot_write_outside_tmp(start: StartMethod) {
    let w = worker(start);
    let v = probe(
        &w,
        start,
        "writer",
        r#"import errno, os

def attempt(fn):
    try:
        fn()
        return "ok"
    except OSError as e:
        return errno.errorcode.get(e.errno, str(e.errno))

def create(path):
    with open(path, "w") as fh:
        fh.write("x")

def append(path):
    with open(path, "a") as fh:
        fh.write("x")

def f(event):
    out = {}
    for p in ["/x", "/handler/x", "/usr/x", "/usr/bin/x", "/etc/x", "/var/x", "/var/tmp/x",
              "/root/x", "/home/x", "/kindling/x", "/dev/x", "/dev/shm/x", "/run/x", "/sys/x",
              "/tmp/x"]:
        out["create " + p] = attempt(lambda: create(p))
    for p in ["/handler/f.py", "/etc/passwd", "/usr/bin/python3"]:
        out["append " + p] = attempt(lambda: append(p))
    out["mkdir /handler/d"] = attempt(lambda: os.mkdir("/handler/d"))
    out["unlink /handler/f.py"] = attempt(lambda: os.unlink("/handler/f.py"))
    out["chmod /tmp"] = attempt(lambda: os.chmod("/tmp", 0o700))
    out["mkdir /tmp/d"] = attempt(lambda: os.mkdir("/tmp/d"))
    with open("/tmp/x") as fh:
        out["read /tmp/x"] = fh.read()
    return out
"#,
        &[],
        &json!({}),
    );
    let map = v.as_object().unwrap();
    for (what, result) in map {
        // /dev/shm is a symlink to /tmp (for multiprocessing), so writes there land in /tmp.
        if what.contains("/tmp") || what.contains("/dev/shm") {
            continue;
        }
        let r = result.as_str().unwrap();
        assert!(
            ["EROFS", "EACCES", "EPERM"].contains(&r),
            "{what} → {r}: {v}"
        );
    }
    assert_eq!(v["create /tmp/x"], "ok", "{v}");
    assert_eq!(v["mkdir /tmp/d"], "ok", "{v}");
    assert_eq!(v["read /tmp/x"], "x", "{v}");
    finish(w);
}

fn cannot_mount(start: StartMethod) {
    let w = worker(start);
    let v = probe(
        &w,
        start,
        "mounter",
        r#"import ctypes, os

libc = ctypes.CDLL(None, use_errno=True)

def call(fn, *args):
    ctypes.set_errno(0)
    r = fn(*args)
    return [r, os.strerror(ctypes.get_errno())]

def f(event):
    os.makedirs("/tmp/m", exist_ok=True)
    with open("/proc/self/mountinfo") as fh:
        before = fh.read()
    MS_BIND, MS_REMOUNT = 4096, 32
    out = {
        "tmpfs": call(libc.mount, b"none", b"/tmp/m", b"tmpfs", 0, None),
        "bind": call(libc.mount, b"/handler", b"/tmp/m", None, MS_BIND, None),
        "remount rw": call(libc.mount, None, b"/", None, MS_REMOUNT, None),
        "proc": call(libc.mount, b"proc", b"/tmp/m", b"proc", 0, None),
        "umount": call(libc.umount2, b"/handler", 2),
        "userns": call(libc.unshare, 0x10000000),
        "mntns": call(libc.unshare, 0x00020000),
        "netns": call(libc.unshare, 0x40000000),
        "pidns": call(libc.unshare, 0x20000000),
        "chroot": call(libc.chroot, b"/tmp"),
        "pivot_root": call(libc.syscall, 155, b"/tmp", b"/tmp/m"),
        "sethostname": call(libc.sethostname, b"evil", 4),
    }
    with open("/proc/self/mountinfo") as fh:
        out["unchanged"] = fh.read() == before
    out["m"] = os.listdir("/tmp/m")
    return out
"#,
        &[],
        &json!({}),
    );
    for k in [
        "tmpfs",
        "bind",
        "remount rw",
        "proc",
        "umount",
        "userns",
        "mntns",
        "netns",
        "pidns",
        "chroot",
        "pivot_root",
        "sethostname",
    ] {
        assert_eq!(v[k][0], -1, "{k} succeeded: {v}");
    }
    assert_eq!(v["unchanged"], true, "{v}");
    assert_eq!(v["m"], json!([]), "{v}");
    finish(w);
}

fn cannot_see_host_processes(start: StartMethod) {
    let w = worker(start);
    let worker_pid = w.pid();
    let test_pid = std::process::id();
    let v = probe(
        &w,
        start,
        "ps",
        r#"import os

def f(event):
    pids = sorted(int(p) for p in os.listdir("/proc") if p.isdigit())
    cmds = {}
    for p in pids:
        try:
            with open(f"/proc/{p}/cmdline", "rb") as fh:
                cmds[str(p)] = fh.read().replace(b"\0", b" ").decode(errors="replace")
        except OSError as e:
            cmds[str(p)] = type(e).__name__
    kills = {}
    for p in event["host_pids"]:
        try:
            os.kill(p, 0)
            kills[str(p)] = "ok"
        except OSError as e:
            kills[str(p)] = type(e).__name__
    return {"pids": pids, "cmds": cmds, "me": os.getpid(), "kills": kills}
"#,
        &[],
        &json!({ "host_pids": [worker_pid, test_pid] }),
    );
    let pids: Vec<u64> = v["pids"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p.as_u64().unwrap())
        .collect();
    assert!(
        pids.len() <= 4,
        "the sandbox sees {} processes: {v}",
        pids.len()
    );
    let host_count = std::fs::read_dir("/proc")
        .unwrap()
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().parse::<u32>().is_ok())
        .count();
    assert!(
        host_count > pids.len(),
        "host {host_count}, sandbox {}",
        pids.len()
    );
    assert!(
        !pids.contains(&(worker_pid as u64)),
        "the worker's pid is visible: {v}"
    );
    assert!(
        !pids.contains(&(test_pid as u64)),
        "the test's pid is visible: {v}"
    );
    assert!(v["me"].as_u64().unwrap() < 10, "{v}");
    for (pid, cmd) in v["cmds"].as_object().unwrap() {
        let cmd = cmd.as_str().unwrap();
        assert!(
            !cmd.contains("kindling up") && !cmd.contains("cargo"),
            "host process {pid} visible: {cmd}"
        );
    }
    for (pid, r) in v["kills"].as_object().unwrap() {
        assert_eq!(r, "ProcessLookupError", "host pid {pid} reachable: {v}");
    }
    finish(w);
}

const ALICE: &str = r#"import os

def f(event):
    path = "/tmp/secret-" + event["token"]
    if not os.path.exists(path):
        with open(path, "w") as fh:
            fh.write(event["token"])
    with open(path) as fh:
        secret = fh.read()
    with open("/handler/marker-" + event["token"] + ".txt") as fh:
        marker = fh.read()
    return {"secret": secret, "marker": marker}
"#;

/// Alice's secrets: a token in a file of her code and in her /tmp.
struct Alice {
    token: String,
    marker_file: String,
    /// Her deployed version's directory on the host.
    version_dir: std::path::PathBuf,
}

/// Deploys alice, who keeps a secret in her code and writes it to her /tmp on her first call.
fn alice_with_secrets(w: &Worker, start: StartMethod) -> Alice {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .subsec_nanos();
    let token = format!("tok{}x{nanos}", std::process::id());
    let marker_file = format!("marker-{token}.txt");
    let a = probe(
        w,
        start,
        "alice",
        ALICE,
        &[(marker_file.as_str(), token.as_str())],
        &json!({ "token": token }),
    );
    assert_eq!(a, json!({"secret": token, "marker": token}));
    let alice: kindling_api::FunctionDetail = w.request("GET", "/registry/alice", &[], b"").typed();
    let version_dir = w.functions_dir().join("alice").join(&alice.function.hash);
    assert!(
        version_dir.join(&marker_file).is_file(),
        "{}",
        version_dir.display()
    );
    Alice {
        token,
        marker_file,
        version_dir,
    }
}

/// Bob searches the whole sandbox for alice's code, files and data, by name and content.
fn functions_cannot_find_each_others_files(start: StartMethod) {
    let w = worker(start);
    let alice = alice_with_secrets(&w, start);
    let alice_dir = w.functions_dir().join("alice");
    let paths = [
        alice_dir.display().to_string(),
        alice.version_dir.display().to_string(),
        alice
            .version_dir
            .join(&alice.marker_file)
            .display()
            .to_string(),
        w.functions_dir().display().to_string(),
        format!("/handler/{}", alice.marker_file),
        format!("/tmp/secret-{}", alice.token),
        "/handler/../alice".into(),
    ];
    let b = probe(
        &w,
        start,
        "bob",
        r#"import os

def f(event):
    token = event["token"]
    found_names, found_contents, errors = [], [], 0
    for top, dirs, files in os.walk("/", onerror=lambda e: None):
        if top == "/":
            dirs[:] = [d for d in dirs if d not in ("proc", "sys")]
        for name in dirs + files:
            if token in name:
                found_names.append(os.path.join(top, name))
    for base in ["/tmp", "/handler", "/var/tmp", "/dev/shm", "/run", "/kindling"]:
        for top, dirs, files in os.walk(base, onerror=lambda e: None):
            for name in files:
                p = os.path.join(top, name)
                try:
                    with open(p, "rb") as fh:
                        if token.encode() in fh.read(1 << 20):
                            found_contents.append(p)
                except OSError:
                    errors += 1
    visible = [p for p in event["paths"] if os.path.lexists(p)]
    return {"names": found_names, "contents": found_contents, "visible": visible,
            "handler": sorted(os.listdir("/handler"))}
"#,
        &[],
        &json!({ "token": alice.token, "paths": paths }),
    );
    assert_eq!(
        b["names"],
        json!([]),
        "bob found alice's files by name: {b}"
    );
    assert_eq!(b["contents"], json!([]), "bob found alice's data: {b}");
    assert_eq!(b["visible"], json!([]), "bob sees alice's paths: {b}");
    // Bob's own code, byte-compiled at deploy.
    assert_eq!(b["handler"], json!(["__pycache__", "f.py"]), "{b}");
    finish(w);
}

/// What alice wrote to her /tmp is still there at her next (warm) call, after bob ran beside.
fn functions_keep_their_own_tmp(start: StartMethod) {
    let w = worker(start);
    let alice = alice_with_secrets(&w, start);
    let b = probe(
        &w,
        start,
        "bob",
        "import os\n\ndef f(event):\n    return sorted(os.listdir(\"/tmp\"))\n",
        &[],
        &json!({}),
    );
    assert_eq!(b, json!([]), "bob sees alice's /tmp: {b}");
    let r = w.run("alice", &json!({ "token": alice.token }).to_string());
    assert_eq!(r.run_info().start, Some(StartMethod::Warm));
    assert_eq!(
        r.json(),
        json!({"secret": alice.token, "marker": alice.token})
    );
    finish(w);
}
