//! Security of zygotes and of what sandboxes see (issue 9, findings 1, 8 and 9): package
//! import-time code in a zygote holds no privilege on the host and sees no host process or
//! file; nothing a worker starts outlives it; a sandbox sees only its own packages; sockets are
//! limited to the families functions need.

use crate::harness::{Proc, Worker};
use serde_json::{json, Value};
use std::time::{Duration, Instant};

const UV: &str = "uv = \"/usr/local/bin/uv\"\n";

/// Zygotes on: a root zygote and one per deployed package set.
const ZYGOTES: &str = "[zygotes]\nenabled = true\nauto = true\ntree = []\n";

/// The default host uid of zygotes (config `zygote_uid`).
const ZYGOTE_UID: u64 = 2_100_000_000;

/// Import-time code of the `evilzyg` package: what a hostile package can do where the zygote
/// imports it. It keeps its findings in `REPORT`, which instances forked from that zygote
/// inherit and return.
const PROBE: &str = r#"
import ctypes
import os
import socket

def _try(f):
    try:
        return ["allowed", repr(f())[:300]]
    except BaseException as e:
        return ["denied", (type(e).__name__ + ": " + str(e))[:300]]

def _status(path="/proc/self/status"):
    keep = ("Uid", "Gid", "CapEff", "CapPrm", "CapBnd", "NoNewPrivs", "Seccomp", "NSpid")
    out = {}
    with open(path) as f:
        for line in f:
            k, _, v = line.partition(":")
            if k in keep:
                out[k] = v.split()
    return out

def _exec_status():
    # A program it executes: does execve bring capabilities back?
    import subprocess
    text = subprocess.run(["/bin/cat", "/proc/self/status"], capture_output=True, text=True).stdout
    out = {}
    for line in text.splitlines():
        k, _, v = line.partition(":")
        if k in ("Uid", "CapEff", "CapPrm", "CapBnd", "NoNewPrivs"):
            out[k] = v.split()
    return out

_libc = ctypes.CDLL(None, use_errno=True)

# Output of import-time code: never in the worker's own log.
print("2026-01-01T00:00:00Z INFO kindling: forged by a zygote", flush=True)

def _syscall(f):
    def run():
        if f() != 0:
            e = ctypes.get_errno()
            raise OSError(e, os.strerror(e))
        return "ok"
    return run

_pids = sorted(int(p) for p in os.listdir("/proc") if p.isdigit())
_others = [p for p in _pids if p != os.getpid()]

REPORT = {
    "in_zygote": "KINDLING_PRELOAD" in os.environ,
    "pid": os.getpid(),
    "status": _status(),
    "exec": _try(_exec_status),
    "pids": _pids,
    "roots": {str(p): _try(lambda p=p: os.listdir(f"/proc/{p}/root/"))[0] for p in _others},
    "environs": {str(p): _try(lambda p=p: open(f"/proc/{p}/environ", "rb").read())[0] for p in _others},
    "mount_ns": {str(p): _try(lambda p=p: os.open(f"/proc/{p}/ns/mnt", os.O_RDONLY))[0] for p in _others},
    "write_host": _try(lambda: open("/proc/1/root/tmp/ESCAPED_FROM_ZYGOTE", "w").write("x")),
    "write_packages": _try(lambda: open("/packages/ESCAPED", "w").write("x")),
    "mount": _try(_syscall(lambda: _libc.mount(b"tmpfs", b"/tmp", b"tmpfs", 0, None))),
    "unshare": _try(_syscall(lambda: _libc.unshare(0x10000000))),
    "ptrace": _try(_syscall(lambda: _libc.ptrace(16, _others[0] if _others else 1, 0, 0))),
    "setuid_host_root": _try(lambda: os.setuid(0) or open("/etc/shadow").read(1)),
    "vsock": _try(lambda: socket.socket(40, socket.SOCK_STREAM)),
    "netlink": _try(lambda: socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, 9)),
}
"#;

/// A PEP 517 backend (no build dependencies) that builds the `evilzyg` wheel from `probe.py`.
const BACKEND: &str = r#"
import base64, hashlib, os, zipfile

NAME, VERSION = "evilzyg", "0.1"
DIST = f"{NAME}-{VERSION}.dist-info"
METADATA = f"Metadata-Version: 2.1\nName: {NAME}\nVersion: {VERSION}\n"
WHEEL = "Wheel-Version: 1.0\nGenerator: kindling-test\nRoot-Is-Purelib: true\nTag: py3-none-any\n"

def _digest(data):
    return "sha256=" + base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()

def get_requires_for_build_wheel(config_settings=None):
    return []

def prepare_metadata_for_build_wheel(metadata_directory, config_settings=None):
    d = os.path.join(metadata_directory, DIST)
    os.makedirs(d)
    for name, text in (("METADATA", METADATA), ("WHEEL", WHEEL)):
        with open(os.path.join(d, name), "w") as f:
            f.write(text)
    return DIST

def build_wheel(wheel_directory, config_settings=None, metadata_directory=None):
    here = os.path.dirname(os.path.abspath(__file__))
    with open(os.path.join(here, "probe.py"), "rb") as f:
        probe = f.read()
    files = {f"{NAME}/__init__.py": probe, f"{DIST}/METADATA": METADATA.encode(),
             f"{DIST}/WHEEL": WHEEL.encode(), f"{DIST}/top_level.txt": b"evilzyg\n"}
    record = "".join(f"{k},{_digest(v)},{len(v)}\n" for k, v in files.items()) + f"{DIST}/RECORD,,\n"
    name = f"{NAME}-{VERSION}-py3-none-any.whl"
    with zipfile.ZipFile(os.path.join(wheel_directory, name), "w") as z:
        for k, v in files.items():
            z.writestr(k, v)
        z.writestr(f"{DIST}/RECORD", record)
    return name
"#;

/// The `evilzyg` sdist.
fn probe_sdist() -> Vec<u8> {
    let pyproject = "[build-system]\nrequires = []\nbuild-backend = \"backend\"\nbackend-path = [\".\"]\n\n[project]\nname = \"evilzyg\"\nversion = \"0.1\"\n";
    let mut builder = tar::Builder::new(flate2::write::GzEncoder::new(
        Vec::new(),
        flate2::Compression::fast(),
    ));
    for (name, data) in [
        ("pyproject.toml", pyproject),
        ("backend.py", BACKEND),
        ("probe.py", PROBE),
    ] {
        let mut h = tar::Header::new_gnu();
        h.set_mode(0o644);
        h.set_size(data.len() as u64);
        builder
            .append_data(&mut h, format!("evilzyg-0.1/{name}"), data.as_bytes())
            .unwrap();
    }
    builder.into_inner().unwrap().finish().unwrap()
}

/// A function archive with binary files.
fn archive(files: &[(&str, &[u8])]) -> Vec<u8> {
    let mut t = crate::harness::RawTar::new();
    for (name, data) in files {
        t = t.file(name, data);
    }
    t.gz()
}

fn zygotes(w: &Worker) -> Vec<Value> {
    w.request("GET", "/status", &[], b"").json()["zygotes"]
        .as_array()
        .cloned()
        .unwrap_or_default()
}

fn fork(w: &Worker, name: &str) -> Value {
    let r = w.request(
        "POST",
        &format!("/run/{name}"),
        &[("X-Kindling-Start", "fork")],
        b"{}",
    );
    assert_eq!(r.status, 200, "{}\n{}", r.text(), w.log_text());
    assert_eq!(
        r.header("x-kindling-start"),
        Some("fork"),
        "{name} was not forked: {}\n{}",
        r.text(),
        w.log_text()
    );
    r.json()
}

fn allowed(v: &Value) -> bool {
    v[0] == "allowed"
}

/// Finding 1: a package's import-time code ran as root with SYS_ADMIN in the host's pid
/// namespace, read host files through /proc/<worker>/root and regained every capability by
/// execve. Now the zygote that imports it is an unprivileged user on the host, holds only the
/// forking capabilities and only in its own user namespace, under no_new_privs and seccomp, and
/// sees no process but its own sandbox's.
#[test]
fn package_code_in_a_zygote_has_no_host_privilege() {
    let w = Worker::start(&format!("{UV}allow_unsafe_requirements = true\n{ZYGOTES}"));
    let body = archive(&[
        (
            "f.py",
            b"import evilzyg\n\ndef f(event):\n    return evilzyg.REPORT\n",
        ),
        ("evilzyg-0.1.tar.gz", &probe_sdist()),
        (
            "requirements.txt",
            b"evilzyg @ file:///handler/evilzyg-0.1.tar.gz\n",
        ),
    ]);
    let r = w.request("POST", "/registry/evil", &[], &body);
    assert_eq!(r.status, 200, "deploy: {}\n{}", r.text(), w.log_text());
    let report = fork(&w, "evil");
    assert_eq!(
        report["in_zygote"], true,
        "imported outside a zygote: {report}"
    );

    // The zygote as the host sees it.
    let zygote = zygotes(&w)
        .into_iter()
        .find(|z| {
            z["packages"].as_array().is_some_and(|p| {
                p.iter().any(|k| {
                    k.as_str()
                        .is_some_and(|k| k.starts_with("evilzyg==0+direct."))
                })
            })
        })
        .unwrap_or_else(|| panic!("no evilzyg zygote: {:?}", zygotes(&w)));
    let zpid = zygote["pid"].as_i64().unwrap();
    let host_status = std::fs::read_to_string(format!("/proc/{zpid}/status")).unwrap();
    let field = |k: &str| {
        host_status
            .lines()
            .find_map(|l| l.strip_prefix(&format!("{k}:")))
            .map(|v| v.split_whitespace().map(str::to_string).collect::<Vec<_>>())
            .unwrap_or_default()
    };
    assert!(
        field("Uid").iter().all(|u| u == &ZYGOTE_UID.to_string()),
        "{host_status}"
    );
    assert!(field("Gid").iter().all(|g| g != "0"), "{host_status}");
    let own_user_ns = std::fs::read_link(format!("/proc/{zpid}/ns/user")).unwrap();
    let host_user_ns = std::fs::read_link("/proc/self/ns/user").unwrap();
    assert_ne!(
        own_user_ns, host_user_ns,
        "the zygote's capabilities would be the host's"
    );
    let own_pid_ns = std::fs::read_link(format!("/proc/{zpid}/ns/pid")).unwrap();
    assert_ne!(own_pid_ns, std::fs::read_link("/proc/self/ns/pid").unwrap());

    // What its import-time code found from inside.
    let status = &report["status"];
    assert_eq!(status["NoNewPrivs"], json!(["1"]), "{report}");
    assert_eq!(status["Seccomp"], json!(["2"]), "{report}");
    // SETGID, SETUID, SETPCAP, SYS_CHROOT, SYS_ADMIN: bits 6, 7, 8, 18, 21.
    let forking = json!(["00000000002401c0"]);
    assert_eq!(status["CapEff"], forking, "{report}");
    assert_eq!(status["CapBnd"], forking, "{report}");
    let exec = &report["exec"];
    assert!(allowed(exec), "{report}");
    let exec: Value = {
        // `repr` of a dict of lists: JSON once the quotes are swapped.
        let text = exec[1].as_str().unwrap().replace('\'', "\"");
        serde_json::from_str(&text).unwrap_or_else(|e| panic!("{e}: {text}"))
    };
    assert_eq!(
        exec["CapEff"], forking,
        "execve regained capabilities: {exec}"
    );
    assert_eq!(exec["CapBnd"], forking, "{exec}");
    assert_eq!(exec["NoNewPrivs"], json!(["1"]), "{exec}");

    // Only its own sandbox's processes: its init, itself, its parent zygote's sandbox init is
    // not even there; nothing of the host.
    let pids = report["pids"].as_array().unwrap();
    assert!(
        pids.len() <= 8,
        "the zygote sees {} processes: {report}",
        pids.len()
    );
    let host_pids = std::fs::read_dir("/proc")
        .unwrap()
        .filter(|e| {
            e.as_ref()
                .is_ok_and(|e| e.file_name().to_string_lossy().parse::<u32>().is_ok())
        })
        .count();
    assert!(host_pids > pids.len() + 10, "{host_pids} host processes");
    for key in ["roots", "environs", "mount_ns"] {
        for (pid, how) in report[key].as_object().unwrap() {
            assert_eq!(how, "denied", "{key} of pid {pid}: {report}");
        }
    }
    for key in [
        "write_host",
        "write_packages",
        "mount",
        "unshare",
        "ptrace",
        "setuid_host_root",
        "vsock",
        "netlink",
    ] {
        assert!(!allowed(&report[key]), "{key}: {report}");
    }
    assert!(
        report["vsock"][1]
            .as_str()
            .unwrap()
            .contains("Address family not supported"),
        "{report}"
    );
    // What it printed is in the zygotes' log, not the worker's.
    assert!(
        !w.log_text().contains("forged by a zygote"),
        "{}",
        w.log_text()
    );
    let zygote_log =
        std::fs::read_to_string(w.root.path().join("logs/_zygotes.log")).unwrap_or_default();
    assert!(
        zygote_log.contains("forged by a zygote"),
        "zygotes' log: {zygote_log}"
    );
    let escaped: Vec<_> = ["/tmp/ESCAPED_FROM_ZYGOTE", "/ESCAPED_FROM_ZYGOTE"]
        .into_iter()
        .filter(|p| std::path::Path::new(p).exists())
        .collect();
    assert!(escaped.is_empty(), "{escaped:?}");
    w.assert_no_leaks();
    w.stop();
}

/// Every process of the worker: its sandboxes' (instances, zygotes, seeds, pooled sandboxes).
fn processes(w: &Worker) -> Vec<Proc> {
    let mut pids = w.sandbox_pids();
    pids.extend(
        zygotes(w)
            .iter()
            .filter_map(|z| z["pid"].as_i64().map(|p| p as i32)),
    );
    pids.sort();
    pids.dedup();
    pids.into_iter().filter_map(Proc::of).collect()
}

fn settle(w: &Worker) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while w.stats()["background.pending"].as_u64() != Some(0) {
        assert!(Instant::now() < deadline, "background work never settled");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Finding 8: child zygotes survived `kill -9` of the worker (reparented to pid 1, root with
/// capabilities): a zygote exits when its socket to the worker closes, but not a paused
/// (stopped) one, and a forked child zygote had no parent-death signal. Now every zygote, child
/// zygote, seed, pooled sandbox and instance is inside a pid namespace whose init dies with the
/// spawner, so nothing is left, paused or not.
#[test]
fn killing_the_worker_leaves_no_zygote_seed_or_sandbox() {
    let mut w = Worker::start(&format!(
        "{UV}[zygotes]\nenabled = true\nauto = true\ntree = [[\"six\"]]\nseeds = 2\nsandbox_pool = 2\n\
         idle_pause_secs = 1\n"
    ));
    w.deploy_ok(
        "six",
        &[
            (
                "f.py",
                "import six\n\ndef f(event):\n    return {\"v\": six.__version__}\n",
            ),
            ("requirements.txt", "six==1.16.0\n"),
        ],
    );
    w.deploy_ok("hello", &[("f.py", "def f(event):\n    return {}\n")]);
    fork(&w, "six");
    fork(&w, "hello");
    settle(&w);
    fork(&w, "six");
    settle(&w);
    let zs = zygotes(&w);
    assert!(zs.len() >= 2, "root and six zygotes: {zs:?}");
    assert!(
        w.stats()["sandboxes.seeded"].as_u64() > Some(0),
        "{}",
        w.stats()
    );
    let procs = processes(&w);
    assert!(procs.len() >= 6, "{procs:?}");
    // Idle zygotes are paused (SIGSTOP) by housekeeping: a stopped process cannot notice that
    // its worker is gone.
    let deadline = Instant::now() + Duration::from_secs(30);
    while !zygotes(&w).iter().all(|z| z["paused"] == true) {
        assert!(
            Instant::now() < deadline,
            "zygotes never paused: {:?}",
            zygotes(&w)
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    w.crash();
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let alive: Vec<&Proc> = procs.iter().filter(|p| p.alive()).collect();
        if alive.is_empty() {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "processes outlived the worker: {:?}",
            alive
                .iter()
                .map(
                    |p| std::fs::read_to_string(format!("/proc/{}/status", p.pid))
                        .unwrap_or_default()
                        .lines()
                        .take(9)
                        .collect::<Vec<_>>()
                        .join(" | ")
                )
                .collect::<Vec<_>>()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    // The next worker on the same root removes what cgroups are left and serves.
    w.spawn();
    w.assert_no_leaks();
    let r = w.run("six", "{}");
    assert_eq!(r.status, 200, "{}", r.text());
    w.stop();
}

/// Finding 9: every tenant saw every other tenant's packages under /packages. Now a sandbox
/// sees exactly its function's closure, cold or forked (and a forked instance of a function
/// that uses a zygote of fewer packages gets the rest attached).
#[test]
fn a_sandbox_sees_only_its_own_packages() {
    let w = Worker::start(&format!(
        "{UV}[zygotes]\nenabled = true\nauto = false\ntree = [[\"six\"]]\n"
    ));
    let lister = "import os\n\ndef f(event):\n    return sorted(os.listdir('/packages'))\n";
    w.deploy_ok(
        "with-six",
        &[("f.py", lister), ("requirements.txt", "six==1.16.0\n")],
    );
    w.deploy_ok(
        "with-more",
        &[
            ("f.py", lister),
            ("requirements.txt", "six==1.16.0\nidna==3.7\n"),
        ],
    );
    w.deploy_ok("bare", &[("f.py", lister)]);
    for start in ["cold", "fork"] {
        let run = |name: &str| {
            let r = w.request(
                "POST",
                &format!("/run/{name}"),
                &[("X-Kindling-Start", start)],
                b"{}",
            );
            assert_eq!(r.status, 200, "{name} {start}: {}", r.text());
            assert_eq!(r.header("x-kindling-start"), Some(start), "{name}");
            r.json()
        };
        assert_eq!(run("bare"), json!([]), "{start}");
        assert_eq!(run("with-six"), json!(["six==1.16.0"]), "{start}");
        assert_eq!(
            run("with-more"),
            json!(["idna==3.7", "six==1.16.0"]),
            "{start}"
        );
        settle(&w);
        // Seeded forks get the same view.
        assert_eq!(
            run("with-more"),
            json!(["idna==3.7", "six==1.16.0"]),
            "{start}"
        );
        assert_eq!(run("bare"), json!([]), "{start}");
    }
    w.assert_no_leaks();
    w.stop();
}

/// Finding 9: AF_VSOCK sockets (not namespaced) were allowed in sandboxes. Now only Unix,
/// IPv4, IPv6 and route netlink sockets can be made, cold or forked.
#[test]
fn sockets_are_limited_to_the_families_functions_need() {
    let w = Worker::start(ZYGOTES);
    let code = r#"
import socket

def f(event):
    out = {}
    for name, args in [("unix", (socket.AF_UNIX, socket.SOCK_STREAM)),
                       ("inet", (socket.AF_INET, socket.SOCK_STREAM)),
                       ("inet6", (socket.AF_INET6, socket.SOCK_DGRAM)),
                       ("route", (socket.AF_NETLINK, socket.SOCK_RAW, 0)),
                       ("audit", (socket.AF_NETLINK, socket.SOCK_RAW, 9)),
                       ("vsock", (40, socket.SOCK_STREAM)),
                       ("packet", (17, socket.SOCK_DGRAM))]:
        try:
            socket.socket(*args).close()
            out[name] = "ok"
        except OSError as e:
            out[name] = e.errno
    return out
"#;
    w.deploy_ok("sockets", &[("f.py", code)]);
    let eafnosupport = 97;
    for start in ["cold", "fork"] {
        let r = w.request(
            "POST",
            "/run/sockets",
            &[("X-Kindling-Start", start)],
            b"{}",
        );
        assert_eq!(r.status, 200, "{}", r.text());
        assert_eq!(r.header("x-kindling-start"), Some(start));
        assert_eq!(
            r.json(),
            json!({"unix": "ok", "inet": "ok", "inet6": "ok", "route": "ok",
                   "audit": eafnosupport, "vsock": eafnosupport, "packet": eafnosupport}),
            "{start}"
        );
    }
    w.assert_no_leaks();
    w.stop();
}
