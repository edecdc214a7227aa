//! Operator bounds on tenant settings and private, egress-only networking (issue 9, item 4).
//!
//! Network tests talk only to this machine: a TCP server in a network namespace the test makes
//! itself (its "outside"), listeners of the test process on the host, and the worker.

use crate::harness::{self, Resp, Worker};
use serde_json::{json, Value};
use std::net::{IpAddr, Ipv4Addr, TcpListener, TcpStream};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

const HELLO_V1: &str = "def f(event):\n    return {\"version\": 1}\n";

fn error_of(r: &Resp) -> String {
    r.json()["error"].as_str().unwrap_or_default().to_string()
}

/// A deploy that must be refused with 400 naming `words`; the version in service still answers.
fn assert_refused(w: &Worker, name: &str, files: &[(&str, &str)], words: &[&str]) {
    let r = w.deploy(name, files);
    assert_eq!(r.status, 400, "{name} {files:?}: {}", r.text());
    let e = error_of(&r);
    for word in words {
        assert!(e.contains(word), "`{word}` missing from: {e}");
    }
    assert!(r.body.len() < 512, "unbounded error: {}", r.text());
    let r = w.run(name, "{}");
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(
        r.json()["version"],
        1,
        "the version in service changed: {}",
        r.text()
    );
}

#[test]
fn tenant_settings_over_the_operators_bounds_are_refused() {
    let w = Worker::start("max_memory_mb = 512\nmax_timeout_secs = 60\n");
    w.deploy_ok("ol", &[("f.py", HELLO_V1)]);
    let sebs_v1 = "def handler(event):\n    return {\"version\": 1}\n";
    w.deploy_ok("sebs", &[("function.py", sebs_v1)]);
    let ol = |yaml: &'static str| [("f.py", "def f(e):\n    return 2\n"), ("ol.yaml", yaml)];
    assert_refused(
        &w,
        "ol",
        &ol("memory_mb: 1048576\n"),
        &[
            "`memory_mb`",
            "1048576 MB",
            "maximum of 512 MB",
            "max_memory_mb",
        ],
    );
    assert_refused(
        &w,
        "ol",
        &ol("timeout_secs: 1.0e30\n"),
        &[
            "`timeout_secs`",
            "1e30 s",
            "maximum of 60 s",
            "max_timeout_secs",
        ],
    );
    assert_refused(
        &w,
        "ol",
        &ol("network: true\n"),
        &["`network: true`", "allow_network = false"],
    );
    let sebs = |json: &'static str| {
        [
            ("function.py", "def handler(e):\n    return {}\n"),
            ("config.json", json),
        ]
    };
    // SeBS's own names for the same settings.
    for (config, expected) in [
        (
            r#"{"memory": 4096, "timeout": 10}"#,
            "`memory` of 4096 MB in config.json",
        ),
        (r#"{"timeout": 1e300}"#, "`timeout` of 1e300 s"),
        (r#"{"network": true}"#, "`network: true` in config.json"),
    ] {
        let r = w.deploy("sebs", &sebs(config));
        assert_eq!(r.status, 400, "{}", r.text());
        assert!(error_of(&r).contains(expected), "{}", r.text());
    }
    let r = w.run("sebs", "{}");
    assert_eq!(r.json()["result"]["version"], 1, "{}", r.text());
    // At the bounds is fine.
    w.deploy_ok(
        "ol",
        &ol("memory_mb: 512\ntimeout_secs: 60\nnetwork: false\n"),
    );
    assert_eq!(w.run("ol", "{}").json(), json!(2));
    w.assert_serves();
    w.assert_no_leaks();
    w.stop();
}

#[test]
fn versions_deployed_before_the_bounds_run_clamped() {
    let mut w = Worker::start("max_memory_mb = 512\n");
    w.deploy_ok(
        "old",
        &[
            ("f.py", HELLO_V1),
            ("ol.yaml", "timeout_secs: 5\nmemory_mb: 256\n"),
        ],
    );
    w.crash();
    // As an older worker (no bounds) would have accepted it, and as C16 found: a timeout that
    // panicked `Duration::from_secs_f64` on every call and every `GET /registry/<name>`.
    let fdir = w.functions_dir().join("old");
    let hash = std::fs::read_to_string(fdir.join("current")).unwrap();
    std::fs::write(
        fdir.join(hash.trim()).join("ol.yaml"),
        "timeout_secs: 1.0e30\nmemory_mb: 1048576\nnetwork: true\n",
    )
    .unwrap();
    w.spawn();
    let r = w.request("GET", "/registry/old", &[], b"");
    assert_eq!(r.status, 200, "{}", r.text());
    let layout = &r.json()["instance"];
    assert_eq!(layout["limits"]["memory_bytes"], 512u64 << 20, "{layout}");
    assert_eq!(layout["network"], false, "{layout}");
    let r = w.run("old", "{}");
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json()["version"], 1);
    let log = w.log_text();
    for setting in ["`timeout_secs`", "`memory_mb`", "`network: true`"] {
        assert!(
            log.lines()
                .any(|l| l.contains("WARN") && l.contains("old") && l.contains(setting)),
            "no warning about {setting}:\n{log}"
        );
    }
    w.assert_serves();
    w.assert_no_leaks();
    w.stop();
}

// --- networking ----------------------------------------------------------------------------

static PEERS: AtomicU32 = AtomicU32::new(0);

fn ip(args: &[&str]) {
    let out = Command::new("ip").args(args).output().expect("run ip");
    assert!(
        out.status.success(),
        "ip {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The "outside" a networked sandbox may reach: a network namespace made by the test, joined
/// to the host by a veth pair, with a TCP server that answers every connection with a token.
/// It also holds a link-local address (which sandboxes must not reach).
struct Peer {
    ns: String,
    addr: Ipv4Addr,
    host_addr: Ipv4Addr,
    link_local: Ipv4Addr,
    port: u16,
    token: String,
    server: Child,
}

impl Peer {
    fn start() -> Peer {
        let n = PEERS.fetch_add(1, Ordering::SeqCst);
        let idx = (std::process::id() * 16 + n) % 32768;
        // 198.18.0.0/15 (benchmarking, never routed), a /30 per peer.
        let base = u32::from(Ipv4Addr::new(198, 18, 0, 0)) + idx * 4;
        let (host_addr, addr) = (Ipv4Addr::from(base + 1), Ipv4Addr::from(base + 2));
        let link_local =
            Ipv4Addr::new(169, 254, 200 + (idx % 50) as u8, 1 + (idx / 50 % 250) as u8);
        // Not "kl": that prefix is Kindling's.
        let host_if = format!("kt{:08x}", base);
        let ns = format!("kindling-e2e-peer-{}-{n}", std::process::id());
        ip(&["netns", "add", &ns]);
        ip(&[
            "link", "add", &host_if, "type", "veth", "peer", "name", "eth0", "netns", &ns,
        ]);
        ip(&["addr", "add", &format!("{host_addr}/30"), "dev", &host_if]);
        ip(&["link", "set", &host_if, "up"]);
        ip(&[
            "-n",
            &ns,
            "addr",
            "add",
            &format!("{addr}/30"),
            "dev",
            "eth0",
        ]);
        ip(&[
            "-n",
            &ns,
            "addr",
            "add",
            &format!("{link_local}/32"),
            "dev",
            "eth0",
        ]);
        ip(&["-n", &ns, "link", "set", "eth0", "up"]);
        ip(&["-n", &ns, "link", "set", "lo", "up"]);
        ip(&[
            "-n",
            &ns,
            "route",
            "add",
            "default",
            "via",
            &host_addr.to_string(),
        ]);
        ip(&["route", "add", &format!("{link_local}/32"), "dev", &host_if]);
        let port = 20000 + (idx % 20000) as u16;
        let token = format!("peer-{}-{n}", std::process::id());
        let server = Command::new("ip")
            .args(["netns", "exec", &ns, "python3", "-c", PEER_SERVER])
            .arg(port.to_string())
            .arg(&token)
            .stdin(Stdio::null())
            .spawn()
            .expect("start the peer's server");
        let peer = Peer {
            ns,
            addr,
            host_addr,
            link_local,
            port,
            token,
            server,
        };
        // The host reaches it directly (this is not the path under test).
        let deadline = Instant::now() + Duration::from_secs(10);
        while TcpStream::connect_timeout(&(addr, port).into(), Duration::from_millis(200)).is_err()
        {
            assert!(Instant::now() < deadline, "the peer's server did not start");
            std::thread::sleep(Duration::from_millis(50));
        }
        peer
    }
}

impl Peer {
    /// TCP segments the peer has received (`InSegs`).
    fn segments_received(&self) -> u64 {
        let out = Command::new("ip")
            .args(["netns", "exec", &self.ns, "cat", "/proc/net/snmp"])
            .output()
            .expect("read the peer's counters");
        let text = String::from_utf8_lossy(&out.stdout);
        let mut tcp = text.lines().filter(|l| l.starts_with("Tcp:"));
        let (names, values) = (tcp.next().unwrap_or(""), tcp.next().unwrap_or(""));
        names
            .split_whitespace()
            .zip(values.split_whitespace())
            .find(|(n, _)| *n == "InSegs")
            .and_then(|(_, v)| v.parse().ok())
            .unwrap_or_else(|| panic!("no InSegs in\n{text}"))
    }
}

impl Drop for Peer {
    fn drop(&mut self) {
        let _ = self.server.kill();
        let _ = self.server.wait();
        // The veth pair and the route go with the namespace.
        let _ = Command::new("ip").args(["netns", "del", &self.ns]).status();
    }
}

/// Bounded: serves for two minutes at most.
const PEER_SERVER: &str = r#"
import socket, sys, time
s = socket.socket()
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("0.0.0.0", int(sys.argv[1])))
s.listen(16)
s.settimeout(0.5)
end = time.time() + 120
while time.time() < end:
    try:
        c, _ = s.accept()
    except socket.timeout:
        continue
    c.sendall(sys.argv[2].encode())
    c.close()
"#;

/// Tries TCP connections to `event["targets"]` ([host, port] pairs, all at once); says for each
/// whether it connected and what it read. Also reports the sandbox's interfaces, address,
/// gateway and resolv.conf.
const NET_PROBE: &str = r#"import socket, concurrent.futures

def attempt(target):
    host, port = target
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    s = socket.socket(family, socket.SOCK_STREAM)
    s.settimeout(1.5)
    try:
        if family == socket.AF_INET6:
            s.connect((host, port, 0, socket.if_nametoindex("eth0") if host.startswith("fe80") else 0))
        else:
            s.connect((host, port))
    except OSError as e:
        s.close()
        return f"{type(e).__name__}: {e}"
    try:
        s.settimeout(1)
        return "connected " + s.recv(64).decode(errors="replace")
    except OSError:
        return "connected"
    finally:
        s.close()

def own_address():
    u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        u.connect(("198.18.0.1", 9))
        return u.getsockname()[0]
    except OSError:
        return None
    finally:
        u.close()

def gateway():
    with open("/proc/net/route") as fh:
        for line in fh.read().splitlines()[1:]:
            f = line.split()
            if f[1] == "00000000":
                return socket.inet_ntoa(int(f[2], 16).to_bytes(4, "little"))
    return None

def f(event):
    with open("/proc/net/dev") as fh:
        ifaces = sorted(l.split(":")[0].strip() for l in fh.read().splitlines()[2:])
    targets = [tuple(t) for t in (event or {}).get("targets", [])]
    with concurrent.futures.ThreadPoolExecutor(max(1, len(targets))) as pool:
        results = list(pool.map(attempt, targets))
    try:
        with open("/etc/resolv.conf") as fh:
            resolv = fh.read()
    except OSError as e:
        resolv = str(e)
    return {
        "ifaces": ifaces, "address": own_address(), "gateway": gateway(), "resolv": resolv,
        "results": {f"{h}:{p}": r for (h, p), r in zip(targets, results)},
    }
"#;

/// Starts listening on a port of every host address (IPv4 and IPv6) and keeps it open; a
/// connection that gets there completes its handshake in the kernel.
fn host_listener() -> (TcpListener, u16) {
    let l = TcpListener::bind("[::]:0").expect("listen on the host");
    let port = l.local_addr().unwrap().port();
    (l, port)
}

/// The host's own addresses on its interfaces, except loopback and the test's and Kindling's
/// veths: (device, address).
fn host_addresses() -> Vec<(String, IpAddr)> {
    let out = Command::new("ip")
        .args(["-o", "addr", "show"])
        .output()
        .expect("ip addr");
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            let dev = f
                .get(1)?
                .trim_end_matches(':')
                .split('@')
                .next()?
                .to_string();
            let addr: IpAddr = f.get(3)?.split('/').next()?.parse().ok()?;
            (dev != "lo" && !dev.starts_with("kl") && !dev.starts_with("kt")).then_some((dev, addr))
        })
        .collect()
}

fn probe(
    w: &Worker,
    name: &str,
    targets: &[(String, u16)],
    headers: &[(&str, &str)],
) -> (Value, Resp) {
    let event = json!({ "targets": targets });
    let r = w.request(
        "POST",
        &format!("/run/{name}"),
        headers,
        event.to_string().as_bytes(),
    );
    assert_eq!(
        r.status,
        200,
        "{name}: {}\nworker log:\n{}",
        r.text(),
        w.log_text()
    );
    (r.json(), r)
}

fn result<'a>(v: &'a Value, host: &str, port: u16) -> &'a str {
    v["results"][format!("{host}:{port}")]
        .as_str()
        .unwrap_or_else(|| panic!("no result for {host}:{port}: {v}"))
}

/// Asserts a probe reached the peer's server through the sandbox's own network.
fn assert_reaches_peer(v: &Value, peer: &Peer) {
    assert_eq!(
        result(v, &peer.addr.to_string(), peer.port),
        format!("connected {}", peer.token),
        "the networked sandbox cannot reach the outside: {v}"
    );
    assert_eq!(
        v["ifaces"],
        json!(["eth0", "lo"]),
        "a networked sandbox has its own eth0 and loopback only: {v}"
    );
}

fn assert_unreachable(v: &Value, host: &str, port: u16, what: &str) {
    let r = result(v, host, port);
    assert!(
        !r.starts_with("connected"),
        "a networked sandbox reached {what} at {host}:{port}: {v}"
    );
}

const NETWORKED: &str = "allow_network = true\n";

/// Host-side veths Kindling made for this worker (their alias names its cgroup parent).
fn kindling_interfaces(w: &Worker) -> Vec<String> {
    let alias = format!("kindling {}", w.cgroup_parent);
    std::fs::read_dir("/sys/class/net")
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| {
            n.starts_with("kl")
                && std::fs::read_to_string(format!("/sys/class/net/{n}/ifalias"))
                    .is_ok_and(|a| a.trim_end() == alias)
        })
        .collect()
}

/// The nftables table of a worker.
fn table_of(w: &Worker) -> String {
    kindling_sandbox::net::table_name(&w.cgroup_parent)
}

fn table_exists(table: &str) -> bool {
    Command::new("nft")
        .args(["list", "table", "inet", table])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .expect("run nft")
        .success()
}

/// Waits until every process of `procs` is gone (a crashed worker's sandboxes die with it).
fn wait_dead(procs: &[harness::Proc]) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while procs.iter().any(|p| p.alive()) {
        assert!(
            Instant::now() < deadline,
            "sandbox processes outlive the worker: {procs:?}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Waits (a few seconds at most, the kernel tears namespaces down asynchronously) until no
/// veth of this worker is left but `keep`.
fn assert_interfaces(w: &Worker, keep: usize) {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let left = kindling_interfaces(w);
        if left.len() <= keep {
            return;
        }
        assert!(Instant::now() < deadline, "sandbox veths left: {left:?}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn networked_function_reaches_out_but_never_the_host() {
    let peer = Peer::start();
    let (listener, port) = host_listener();
    let w = Worker::start(NETWORKED);
    w.deploy_ok(
        "online",
        &[("f.py", NET_PROBE), ("ol.yaml", "network: true\n")],
    );
    let host = host_addresses();
    assert!(
        host.iter().any(|(_, a)| a.is_ipv4()),
        "the host has no non-loopback IPv4 address to test with: {host:?}"
    );
    // The listener is there: the host itself reaches it on each address.
    for (_, a) in host.iter().filter(|(_, a)| a.is_ipv4()) {
        TcpStream::connect_timeout(&(*a, port).into(), Duration::from_secs(2))
            .unwrap_or_else(|e| panic!("the host cannot reach its own listener on {a}: {e}"));
    }
    let (v, _) = probe(&w, "online", &[], &[]);
    let gateway = v["gateway"]
        .as_str()
        .unwrap_or_else(|| panic!("no gateway: {v}"))
        .to_string();
    let host_end: Ipv4Addr = gateway.parse().unwrap();
    let host_if = format!("kl{:08x}", u32::from(host_end) - 1);
    assert!(
        kindling_interfaces(&w).contains(&host_if),
        "{host_if} is not this worker's: {v}"
    );
    let host_end_v6 = Command::new("ip")
        .args(["-6", "-o", "addr", "show", "dev", &host_if, "scope", "link"])
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
        .unwrap_or_default()
        .split_whitespace()
        .nth(3)
        .and_then(|a| a.split('/').next().map(str::to_string));

    let api = w.addr.port();
    let mut targets = vec![
        (peer.addr.to_string(), peer.port),
        // The worker's API, and a listening host loopback port.
        ("127.0.0.1".to_string(), api),
        ("127.0.0.1".to_string(), port),
        ("::1".to_string(), port),
        // The host's own addresses: the sandbox's gateway, the test veth's, every interface's.
        (gateway.clone(), port),
        (gateway.clone(), api),
        (peer.host_addr.to_string(), port),
        // Link-local: an address that answers from the outside when reached directly.
        (peer.link_local.to_string(), peer.port),
    ];
    targets.extend(host.iter().map(|(_, a)| (a.to_string(), port)));
    let (v, _) = probe(&w, "online", &targets, &[]);
    eprintln!("probe: {v:#}");
    assert_reaches_peer(&v, &peer);
    assert!(
        v["address"]
            .as_str()
            .is_some_and(|a| a.starts_with("10.231.")),
        "{v}"
    );
    for (host, p) in &targets[1..] {
        assert_unreachable(&v, host, *p, "the host or a link-local address");
    }
    // IPv6 link-local: the host end's and the host's own, once the sandbox's link-local
    // address has passed duplicate address detection (before, it cannot send at all).
    let link_local: Vec<(String, u16)> = host_end_v6
        .iter()
        .cloned()
        .chain(
            host.iter()
                .filter(|(_, a)| matches!(a, IpAddr::V6(v6) if v6.segments()[0] == 0xfe80))
                .map(|(_, a)| a.to_string()),
        )
        .map(|a| (a, port))
        .collect();
    assert!(
        !link_local.is_empty(),
        "no IPv6 link-local address to test with"
    );
    let deadline = Instant::now() + Duration::from_secs(10);
    let v6 = loop {
        let (v6, _) = probe(&w, "online", &link_local, &[]);
        if !v6.to_string().contains("Errno 99") {
            break v6;
        }
        assert!(
            Instant::now() < deadline,
            "the sandbox's link-local address stays tentative: {v6}"
        );
        std::thread::sleep(Duration::from_millis(200));
    };
    eprintln!("link-local probe: {v6:#}");
    for (host, p) in &link_local {
        assert_unreachable(&v6, host, *p, "an IPv6 link-local address of the host");
    }
    // The worker's API on loopback is the sandbox's own loopback: nothing listens there.
    assert!(result(&v, "127.0.0.1", api).contains("Refused"), "{v}");
    // The link-local address does answer the host: only the sandbox is kept from it.
    TcpStream::connect_timeout(&(peer.link_local, peer.port).into(), Duration::from_secs(2))
        .expect("the host reaches the peer's link-local address");
    // DNS: the host's reachable servers, never a loopback resolver.
    let resolv = v["resolv"].as_str().unwrap();
    assert!(resolv.starts_with("# Written by Kindling"), "{resolv}");
    assert!(!resolv.contains("nameserver 127."), "{resolv}");
    for line in std::fs::read_to_string("/etc/resolv.conf").unwrap().lines() {
        if let Some(ns) = line.strip_prefix("nameserver ") {
            if ns.parse::<Ipv4Addr>().is_ok_and(|a| !a.is_loopback()) {
                assert!(resolv.contains(line), "{line} missing from {resolv}");
            }
        }
    }
    drop(listener);
    let table = table_of(&w);
    assert!(table_exists(&table), "no nftables table {table}");
    w.assert_serves();
    w.assert_no_leaks();
    w.stop();
    assert!(
        !table_exists(&table),
        "{table} is left after a clean shutdown"
    );
}

/// Listens on `event["port"]` of every address of its sandbox (the kernel completes handshakes
/// without an accept), then connects to itself.
const LISTENER: &str = r#"import socket

_server = None

def f(event):
    global _server
    if _server is None:
        _server = socket.socket()
        _server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        _server.bind(("0.0.0.0", event["port"]))
        _server.listen(16)
    u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    u.connect(("198.18.0.1", 9))
    me = u.getsockname()[0]
    u.close()
    c = socket.create_connection((me, event["port"]), timeout=2)
    c.close()
    return {"address": me}
"#;

/// Connects from source address argv[1] to argv[2]:argv[3]; prints what happened.
const SPOOF: &str = r#"
import socket, sys
s = socket.socket()
s.settimeout(1.5)
try:
    s.bind((sys.argv[1], 0))
    s.connect((sys.argv[2], int(sys.argv[3])))
    print("connected", s.recv(64).decode())
except OSError as e:
    print(type(e).__name__, e)
"#;

#[test]
fn networked_sandboxes_cannot_reach_each_other() {
    let peer = Peer::start();
    // Two sandboxes at once: the prober must not switch into the listener's idle sandbox.
    let w = Worker::start(&format!(
        "{NETWORKED}start_order = [\"warm\", \"fork\", \"cold\"]\n"
    ));
    let networked = ("ol.yaml", "network: true\n");
    w.deploy_ok("listener", &[("f.py", LISTENER), networked]);
    w.deploy_ok("prober", &[("f.py", NET_PROBE), networked]);
    let port = 8080;
    let r = w.run("listener", &json!({ "port": port }).to_string());
    assert_eq!(r.status, 200, "{}", r.text());
    let a = r.json()["address"].as_str().unwrap().to_string();
    let targets = [(peer.addr.to_string(), peer.port), (a.clone(), port)];
    let (v, r) = probe(&w, "prober", &targets, &[]);
    assert_reaches_peer(&v, &peer);
    assert_ne!(v["address"], json!(a), "two sandboxes share an address");
    assert_unreachable(&v, &a, port, "another sandbox");
    // Nor can it pass for another: even root inside the prober's namespace (which its function
    // is not), sending from the listener's address, does not get out.
    let b = v["address"].as_str().unwrap().to_string();
    let pid = w.processes_of_sandbox(r.header("x-kindling-sandbox").unwrap())[0].pid;
    let netns = format!("--net=/proc/{pid}/ns/net");
    let from = |source: &str| {
        let out = Command::new("nsenter")
            .args([
                &netns,
                "python3",
                "-c",
                SPOOF,
                source,
                &peer.addr.to_string(),
            ])
            .arg(peer.port.to_string())
            .output()
            .expect("nsenter");
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    };
    let added = Command::new("nsenter")
        .args([
            &netns,
            "ip",
            "addr",
            "add",
            &format!("{a}/32"),
            "dev",
            "eth0",
        ])
        .status()
        .unwrap();
    assert!(added.success());
    assert_eq!(
        from(&b),
        format!("connected {}", peer.token),
        "the control failed"
    );
    // The answer to a spoofed SYN would go to the listener's sandbox, so the spoofer never
    // connects either way: the peer's count of segments received tells whether it got out.
    let received = peer.segments_received();
    let spoofed = from(&a);
    assert!(!spoofed.starts_with("connected"), "{spoofed}");
    assert_eq!(peer.segments_received(), received, "a spoofed SYN got out");
    // The listener is still there for its own sandbox.
    let r = w.run("listener", &json!({ "port": port }).to_string());
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(kindling_interfaces(&w).len(), 2);
    // A sandbox's veth goes with it.
    let r = w.request("DELETE", "/registry/listener", &[], b"");
    assert_eq!(r.status, 200, "{}", r.text());
    assert_interfaces(&w, 1);
    w.assert_no_leaks();
    w.stop();
}

#[test]
fn networked_forked_instances_and_installs_use_the_egress_path() {
    let peer = Peer::start();
    let (listener, port) = host_listener();
    let w = Worker::start(&format!(
        "uv = \"/usr/local/bin/uv\"\n{NETWORKED}[zygotes]\nenabled = true\nauto = false\ntree = []\n"
    ));
    let table = table_of(&w);
    assert!(
        !table_exists(&table),
        "{table} exists before any networked sandbox"
    );
    // Installers resolve and download through the sandboxes' NAT (the table appears with them).
    let r = w.deploy(
        "forked",
        &[
            ("f.py", NET_PROBE),
            ("ol.yaml", "network: true\n"),
            ("requirements.txt", "six==1.16.0\n"),
        ],
    );
    assert_eq!(r.status, 200, "{}\nworker log:\n{}", r.text(), w.log_text());
    assert!(
        table_exists(&table),
        "the installer did not use the sandbox network"
    );
    let targets = [
        (peer.addr.to_string(), peer.port),
        ("127.0.0.1".to_string(), w.addr.port()),
        ("127.0.0.1".to_string(), port),
    ];
    let fork = [("X-Kindling-Start", "fork")];
    let (v, r) = probe(&w, "forked", &targets, &fork);
    assert_eq!(r.header("x-kindling-start"), Some("fork"), "{r:?}");
    assert_reaches_peer(&v, &peer);
    assert_unreachable(&v, "127.0.0.1", port, "a host loopback port");
    assert!(
        result(&v, "127.0.0.1", w.addr.port()).contains("Refused"),
        "{v}"
    );
    drop(listener);
    w.assert_no_leaks();
    w.stop();
    assert!(
        !table_exists(&table),
        "{table} is left after a clean shutdown"
    );
}

#[test]
fn crashed_worker_leaves_no_stale_veth_or_table() {
    let peer = Peer::start();
    let mut w = Worker::start(NETWORKED);
    let table = table_of(&w);
    w.deploy_ok(
        "online",
        &[("f.py", NET_PROBE), ("ol.yaml", "network: true\n")],
    );
    let (v, r) = probe(&w, "online", &[(peer.addr.to_string(), peer.port)], &[]);
    assert_reaches_peer(&v, &peer);
    let sandbox = r.header("x-kindling-sandbox").unwrap().to_string();
    // Hold the sandbox's network namespace, as a process that survived the worker would: its
    // veth then outlives the crash.
    let procs = w.processes_of_sandbox(&sandbox);
    let held = std::fs::File::open(format!("/proc/{}/ns/net", procs[0].pid)).unwrap();
    let veths = kindling_interfaces(&w);
    assert_eq!(veths.len(), 1, "{veths:?}");
    w.crash();
    wait_dead(&procs);
    assert_eq!(
        kindling_interfaces(&w),
        veths,
        "the held veth should outlive the crash"
    );
    assert!(
        table_exists(&table),
        "a crash leaves the table (nothing removed it)"
    );
    w.spawn();
    assert!(
        kindling_interfaces(&w).is_empty(),
        "a stale veth survived the restart: {:?}",
        kindling_interfaces(&w)
    );
    assert!(
        !table_exists(&table),
        "the stale table survived the restart"
    );
    // Recreated on demand, once.
    let (v, _) = probe(&w, "online", &[(peer.addr.to_string(), peer.port)], &[]);
    assert_reaches_peer(&v, &peer);
    let list = Command::new("nft")
        .args(["list", "tables"])
        .output()
        .unwrap();
    let tables = String::from_utf8_lossy(&list.stdout);
    assert_eq!(
        tables.matches(&format!("inet {table}\n")).count(),
        1,
        "{tables}"
    );
    drop(held);
    w.assert_no_leaks();
    w.stop();
    assert!(!table_exists(&table));
}

#[test]
fn a_pool_overlapping_a_host_route_fails_networked_starts_clearly() {
    // The peer's /30 is routed on the host: a pool there would steal its traffic.
    let peer = Peer::start();
    let pool = format!("{}/30", Ipv4Addr::from(u32::from(peer.host_addr) - 1));
    let w = Worker::start(&format!("{NETWORKED}[network]\npool = \"{pool}\"\n"));
    w.deploy_ok(
        "online",
        &[("f.py", NET_PROBE), ("ol.yaml", "network: true\n")],
    );
    let r = w.run("online", "{}");
    assert_eq!(r.status, 500, "{}", r.text());
    let e = r.text();
    assert!(
        e.contains(&format!("network pool {pool} overlaps the host's route")),
        "{e}"
    );
    assert!(kindling_interfaces(&w).is_empty());
    // Offline functions are unaffected.
    w.assert_serves();
    w.assert_no_leaks();
    w.stop();
}
