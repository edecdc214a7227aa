//! A real worker for end-to-end tests: the `kindling` binary started with a temporary root, its
//! own port and its own cgroup parent, on the base built by `kindling base build`. Requests carry
//! the worker's admin token (`<root>/token`) unless a test asks for an unauthenticated one.
//! Requests go through the API's own client (`kindling_api::client::blocking`); only
//! [`Worker::raw_request`] writes bytes of its own, for malformed and chunked requests.
//!
//! Needs root. Run with `cargo test -p kindling --features e2e --test e2e`.

#![allow(dead_code)]

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

static COUNTER: AtomicUsize = AtomicUsize::new(0);

/// Longest a request may take (deploys install packages).
const REQUEST_TIMEOUT: Duration = Duration::from_secs(600);

/// Where the shared base lives (built once by `kindling base build` before the tests).
pub fn base_dir() -> PathBuf {
    std::env::var_os("KINDLING_TEST_BASE_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/var/lib/kindling/base"))
}

pub fn kindling_bin() -> &'static str {
    env!("CARGO_BIN_EXE_kindling")
}

/// A running worker; stopped (and checked for leaks) on drop.
pub struct Worker {
    pub addr: SocketAddr,
    pub root: tempfile::TempDir,
    pub cgroup_parent: String,
    /// The worker's admin token, read from `<root>/token` once it is up.
    pub token: String,
    child: Option<Child>,
    log: PathBuf,
}

/// An HTTP response.
#[derive(Debug)]
pub struct Resp {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Resp {
    fn of(r: kindling_api::client::Response) -> Resp {
        Resp {
            status: r.status.as_u16(),
            headers: r
                .headers
                .iter()
                .map(|(k, v)| {
                    (
                        k.to_string(),
                        String::from_utf8_lossy(v.as_bytes()).into_owned(),
                    )
                })
                .collect(),
            body: r.body.to_vec(),
        }
    }

    /// What a `/run` reply's headers say about the invocation.
    pub fn run_info(&self) -> kindling_api::RunInfo {
        kindling_api::RunInfo::from_headers(|name| self.header(name))
    }

    /// The body read as JSON into a type of the API.
    pub fn typed<T: serde::de::DeserializeOwned>(&self) -> T {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("unexpected reply ({e}): {}", self.text()))
    }

    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("response is not JSON ({e}): {}", self.text()))
    }
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("free port")
}

impl Worker {
    /// Starts a worker with extra TOML config lines. Zygotes are off (new instances start
    /// cold) unless the extra config has a `[zygotes]` table.
    pub fn start(extra_config: &str) -> Worker {
        let zygotes = if extra_config.contains("[zygotes]") {
            ""
        } else {
            "\n[zygotes]\nenabled = false\n"
        };
        let extra_config = format!("{extra_config}{zygotes}");
        let extra_config = extra_config.as_str();
        let n = COUNTER.fetch_add(1, Ordering::SeqCst);
        let root = tempfile::Builder::new()
            .prefix("kindling-e2e-")
            .tempdir()
            .expect("tempdir");
        let port = free_port();
        let addr: SocketAddr = format!("127.0.0.1:{port}").parse().expect("addr");
        let cgroup_parent = format!("kindling-e2e-{}-{n}", std::process::id());
        let config = root.path().join("config.toml");
        std::fs::write(
            &config,
            format!(
                "listen = \"{addr}\"\nroot = \"{}\"\nbase_dir = \"{}\"\ncgroup_parent = \"{cgroup_parent}\"\n{extra_config}\n",
                root.path().display(),
                base_dir().display()
            ),
        )
        .expect("config");
        let log = root.path().join("worker.log");
        let mut w = Worker {
            addr,
            root,
            cgroup_parent,
            token: String::new(),
            child: None,
            log,
        };
        w.spawn();
        w
    }

    /// Starts the worker process on this worker's config (again, after `crash`) and waits
    /// until it answers.
    pub fn spawn(&mut self) {
        let config = self.root.path().join("config.toml");
        let logf = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .expect("log");
        let child = Command::new(kindling_bin())
            .arg("up")
            .arg("--config")
            .arg(&config)
            .env("KINDLING_LOG", "info")
            .stdin(Stdio::null())
            .stdout(logf.try_clone().expect("log"))
            .stderr(logf)
            .spawn()
            .expect("start worker");
        self.child = Some(child);
        let w = self;
        let deadline = Instant::now() + Duration::from_secs(120);
        loop {
            // Unauthenticated: /status answers anyone, and the token may not exist yet.
            if let Ok(r) = w.try_request_unauthenticated("GET", "/status", &[], b"") {
                if r.status == 200 {
                    break;
                }
            }
            if let Some(c) = w.child.as_mut() {
                if let Ok(Some(st)) = c.try_wait() {
                    panic!("worker exited ({st}):\n{}", w.log_text());
                }
            }
            assert!(
                Instant::now() < deadline,
                "worker not ready:\n{}",
                w.log_text()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        let token = w.root.path().join("token");
        w.token = std::fs::read_to_string(&token)
            .unwrap_or_else(|e| panic!("no admin token at {}: {e}", token.display()))
            .trim()
            .to_string();
    }

    /// The `Authorization` header value of the admin.
    pub fn bearer(&self) -> String {
        format!("Bearer {}", self.token)
    }

    /// The `kindling` client set up for this worker (its address and root, so it finds the
    /// token as root would).
    pub fn cli_command(&self) -> Command {
        let mut c = Command::new(kindling_bin());
        c.arg("--addr")
            .arg(self.addr.to_string())
            .arg("--root")
            .arg(self.root.path())
            .env_remove("KINDLING_TOKEN");
        c
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().map(|c| c.id()).unwrap_or(0)
    }

    /// One HTTP/1.1 request on a fresh connection, as the admin (unless `headers` has its own
    /// `Authorization`).
    pub fn try_request(
        &self,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: &[u8],
    ) -> std::io::Result<Resp> {
        let bearer = self.bearer();
        let mut all = headers.to_vec();
        if !headers
            .iter()
            .any(|(k, _)| k.eq_ignore_ascii_case("authorization"))
        {
            all.push(("Authorization", bearer.as_str()));
        }
        self.try_request_unauthenticated(method, path, &all, body)
    }

    /// One HTTP/1.1 request on a fresh connection with only the given headers (no token).
    pub fn try_request_unauthenticated(
        &self,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: &[u8],
    ) -> std::io::Result<Resp> {
        let method = kindling_api::Method::from_bytes(method.as_bytes())
            .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidInput, e))?;
        // The worker closes the connection after the reply, so that it no longer counts
        // against the connection caps when the next request (or test) comes.
        let mut all = headers.to_vec();
        all.push(("Connection", "close"));
        let r = kindling_api::client::blocking::Client::with_token(self.addr, None)
            .map(|c| c.timeout(REQUEST_TIMEOUT))
            .and_then(|mut c| {
                let r = c.request(method, path, &all, body.to_vec());
                c.close();
                r
            })
            .map_err(|e| std::io::Error::other(format!("{e:#}")))?;
        Ok(Resp::of(r))
    }

    pub fn request(&self, method: &str, path: &str, headers: &[(&str, &str)], body: &[u8]) -> Resp {
        self.try_request(method, path, headers, body)
            .unwrap_or_else(|e| panic!("{method} {path}: {e}\nworker log:\n{}", self.log_text()))
    }

    /// A request without the admin token (`headers` may carry a wrong one).
    pub fn request_unauthenticated(
        &self,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: &[u8],
    ) -> Resp {
        self.try_request_unauthenticated(method, path, headers, body)
            .unwrap_or_else(|e| panic!("{method} {path}: {e}\nworker log:\n{}", self.log_text()))
    }

    pub fn run(&self, name: &str, event: &str) -> Resp {
        self.request("POST", &format!("/run/{name}"), &[], event.as_bytes())
    }

    pub fn run_cold(&self, name: &str, event: &str) -> Resp {
        self.request(
            "POST",
            &format!("/run/{name}"),
            &[("X-Kindling-Start", "cold")],
            event.as_bytes(),
        )
    }

    /// Deploys files as a function.
    pub fn deploy(&self, name: &str, files: &[(&str, &str)]) -> Resp {
        self.request(
            "POST",
            &format!("/registry/{name}"),
            &[],
            &pack_files(files),
        )
    }

    pub fn deploy_ok(&self, name: &str, files: &[(&str, &str)]) {
        let r = self.deploy(name, files);
        assert_eq!(r.status, 200, "deploy {name}: {}", r.text());
    }

    pub fn stats(&self) -> serde_json::Value {
        self.request("GET", "/stats", &[], b"").json()
    }

    /// `/stats` as the API's type.
    pub fn typed_stats(&self) -> kindling_api::Stats {
        self.request("GET", "/stats", &[], b"").typed()
    }

    /// Cgroup directories of sandboxes under this worker's parent, in every hierarchy (not the
    /// worker's own dot-named ones, such as the freezer's anchor).
    pub fn cgroups(&self) -> Vec<PathBuf> {
        let mut out = Vec::new();
        for h in cgroup_hierarchies() {
            if let Ok(rd) = std::fs::read_dir(h.join(&self.cgroup_parent)) {
                out.extend(rd.flatten().filter(is_sandbox_cgroup).map(|e| e.path()));
            }
        }
        out
    }

    /// Processes in this worker's cgroups.
    pub fn sandbox_pids(&self) -> Vec<i32> {
        let mut pids = Vec::new();
        for cg in self.cgroups() {
            if let Ok(text) = std::fs::read_to_string(cg.join("cgroup.procs")) {
                pids.extend(text.lines().filter_map(|l| l.trim().parse::<i32>().ok()));
            }
        }
        pids.sort();
        pids.dedup();
        pids
    }

    /// Live sandboxes as the worker reports them: instances', zygotes', pooled and seeded ones.
    pub fn live_sandboxes(&self) -> u64 {
        self.typed_stats().all_sandboxes()
    }

    /// Waits until the worker's cgroups number exactly its live sandboxes (cleanup is async).
    pub fn assert_no_leaks(&self) {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let live = self.live_sandboxes();
            let per_hierarchy = cgroup_hierarchies()
                .iter()
                .map(|h| {
                    std::fs::read_dir(h.join(&self.cgroup_parent))
                        .map(|rd| rd.flatten().filter(is_sandbox_cgroup).count())
                        .unwrap_or(0)
                })
                .max()
                .unwrap_or(0) as u64;
            if per_hierarchy == live && host_mounts_mentioning(self.root.path()) == 0 {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "leak: {per_hierarchy} cgroups for {live} live sandboxes, {} host mounts under the root",
                host_mounts_mentioning(self.root.path())
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Stops the worker with SIGTERM and checks it left nothing behind.
    pub fn stop(mut self) {
        self.stop_inner(true);
    }

    fn stop_inner(&mut self, check: bool) {
        let Some(mut child) = self.child.take() else {
            return;
        };
        let pid = child.id() as i32;
        let _ = kindling_sandbox::process::signal(pid, 15);
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Ok(Some(_)) = child.try_wait() {
                break;
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                if check {
                    panic!("worker did not stop on SIGTERM:\n{}", self.log_text());
                }
                break;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        if check {
            let left = self.cgroups();
            assert!(left.is_empty(), "cgroups left after stop: {left:?}");
            assert_eq!(
                host_mounts_mentioning(self.root.path()),
                0,
                "mounts left after stop"
            );
        }
        remove_parent_cgroups(&self.cgroup_parent);
    }

    /// Kills the worker with SIGKILL (a crash), leaving its sandboxes to a successor.
    pub fn crash(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Drop for Worker {
    fn drop(&mut self) {
        self.stop_inner(false);
    }
}

fn is_sandbox_cgroup(e: &std::fs::DirEntry) -> bool {
    e.path().is_dir() && !e.file_name().to_string_lossy().starts_with('.')
}

/// Mount points of the cgroup hierarchies that hold Kindling's controllers and its freezer
/// (in a hybrid layout, the cgroup2 tree at `unified`, else the v1 `freezer`).
pub fn cgroup_hierarchies() -> Vec<PathBuf> {
    let mut out = Vec::new();
    for c in ["memory", "cpu", "pids", "unified", "freezer"] {
        let p = Path::new("/sys/fs/cgroup").join(c);
        if p.join("cgroup.procs").exists() {
            out.push(p);
        }
    }
    if out.is_empty() {
        out.push(PathBuf::from("/sys/fs/cgroup"));
    }
    out.dedup();
    out
}

fn remove_parent_cgroups(parent: &str) {
    for h in cgroup_hierarchies() {
        // The freezer's anchor, left by a worker that did not stop cleanly.
        let _ = std::fs::remove_dir(h.join(parent).join(".freezer-anchor"));
        let _ = std::fs::remove_dir(h.join(parent));
    }
}

/// Host mounts whose mount point lies under `root`.
pub fn host_mounts_mentioning(root: &Path) -> usize {
    let root = root.to_string_lossy();
    std::fs::read_to_string("/proc/self/mountinfo")
        .unwrap_or_default()
        .lines()
        .filter(|l| {
            l.split(' ')
                .nth(4)
                .is_some_and(|mp| mp.starts_with(root.as_ref()))
        })
        .count()
}

/// Pids of processes whose command line contains `needle`.
pub fn processes_matching(needle: &str) -> Vec<i32> {
    let mut out = Vec::new();
    if let Ok(rd) = std::fs::read_dir("/proc") {
        for e in rd.flatten() {
            let Ok(pid) = e.file_name().to_string_lossy().parse::<i32>() else {
                continue;
            };
            if let Ok(cmd) = std::fs::read(e.path().join("cmdline")) {
                if String::from_utf8_lossy(&cmd)
                    .replace('\0', " ")
                    .contains(needle)
                {
                    out.push(pid);
                }
            }
        }
    }
    out
}

fn parse_response(raw: &[u8]) -> std::io::Result<Resp> {
    let bad = || std::io::Error::new(std::io::ErrorKind::InvalidData, "malformed HTTP response");
    let end = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .ok_or_else(bad)?;
    let head = std::str::from_utf8(&raw[..end]).map_err(|_| bad())?;
    let mut lines = head.split("\r\n");
    let status: u16 = lines
        .next()
        .and_then(|l| l.split(' ').nth(1))
        .and_then(|s| s.parse().ok())
        .ok_or_else(bad)?;
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_string(), v.trim().to_string()))
        .collect();
    let mut body = raw[end + 4..].to_vec();
    let chunked = headers
        .iter()
        .any(|(k, v)| k.eq_ignore_ascii_case("transfer-encoding") && v.contains("chunked"));
    if chunked {
        let mut out = Vec::new();
        let mut rest = &body[..];
        loop {
            let nl = rest.windows(2).position(|w| w == b"\r\n").ok_or_else(bad)?;
            let size = usize::from_str_radix(
                std::str::from_utf8(&rest[..nl]).map_err(|_| bad())?.trim(),
                16,
            )
            .map_err(|_| bad())?;
            rest = &rest[nl + 2..];
            if size == 0 {
                break;
            }
            out.extend_from_slice(&rest[..size]);
            rest = &rest[size + 2..];
        }
        body = out;
    }
    Ok(Resp {
        status,
        headers,
        body,
    })
}

/// A function archive (tar.gz) of the given files.
pub fn pack_files(files: &[(&str, &str)]) -> Vec<u8> {
    let dir = tempfile::tempdir().expect("tempdir");
    for (f, body) in files {
        let p = dir.path().join(f);
        if let Some(parent) = p.parent() {
            std::fs::create_dir_all(parent).expect("mkdir");
        }
        std::fs::write(p, body).expect("write");
    }
    kindling_worker::archive::pack_dir(dir.path()).expect("pack")
}

// ---------------------------------------------------------------------------------------------
// Helpers for the fault and isolation tests.

/// A trivial OpenLambda function, deployed as a canary to check that the worker still serves.
pub const CANARY: &str = "def f(event):\n    return {\"ok\": True}\n";

impl Worker {
    /// Sends raw bytes as a request on a fresh connection (for chunked bodies and the like).
    pub fn raw_request(&self, raw: &[u8]) -> Resp {
        let go = || -> std::io::Result<Resp> {
            let mut s = TcpStream::connect(self.addr)?;
            s.set_read_timeout(Some(Duration::from_secs(60)))?;
            s.write_all(raw)?;
            let mut out = Vec::new();
            // The worker may answer (and close) before reading the whole body.
            let _ = s.read_to_end(&mut out);
            parse_response(&out)
        };
        go().unwrap_or_else(|e| panic!("raw request: {e}\nworker log:\n{}", self.log_text()))
    }

    /// The worker's `functions/` directory.
    pub fn functions_dir(&self) -> PathBuf {
        self.root.path().join("functions")
    }

    /// Checks that the worker process is alive and still runs functions: (re)deploys a canary
    /// function and calls it.
    pub fn assert_serves(&self) {
        if let Some(pid) = self.child.as_ref().map(|c| c.id()) {
            assert!(
                Path::new(&format!("/proc/{pid}")).exists(),
                "worker process is gone:\n{}",
                self.log_text()
            );
        }
        let r = self.request("GET", "/status", &[], b"");
        assert_eq!(r.status, 200, "status: {}", r.text());
        self.deploy_ok("canary", &[("f.py", CANARY)]);
        let r = self.run("canary", "{}");
        assert_eq!(
            r.status,
            200,
            "canary call: {}\nworker log:\n{}",
            r.text(),
            self.log_text()
        );
        assert_eq!(r.json(), serde_json::json!({"ok": true}));
    }

    /// The cgroup directories of one sandbox (named by its id, the `X-Kindling-Sandbox` header).
    pub fn sandbox_cgroups(&self, id: &str) -> Vec<PathBuf> {
        cgroup_hierarchies()
            .iter()
            .map(|h| h.join(&self.cgroup_parent).join(id))
            .filter(|p| p.is_dir())
            .collect()
    }

    /// Host pids of the processes in one sandbox's cgroups, with their start times.
    pub fn processes_of_sandbox(&self, id: &str) -> Vec<Proc> {
        let mut pids = Vec::new();
        for cg in self.sandbox_cgroups(id) {
            if let Ok(text) = std::fs::read_to_string(cg.join("cgroup.procs")) {
                pids.extend(text.lines().filter_map(|l| l.trim().parse::<i32>().ok()));
            }
        }
        pids.sort();
        pids.dedup();
        pids.into_iter().filter_map(Proc::of).collect()
    }

    /// Waits (a few seconds at most) until a destroyed sandbox has no process and no cgroup left.
    pub fn assert_sandbox_gone(&self, id: &str, procs: &[Proc]) {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let alive: Vec<&Proc> = procs.iter().filter(|p| p.alive()).collect();
            let cgroups = self.sandbox_cgroups(id);
            if alive.is_empty() && cgroups.is_empty() {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "sandbox {id} survives: processes {alive:?}, cgroups {cgroups:?}\nworker log:\n{}",
                self.log_text()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

/// A host process, identified by pid and start time (so a reused pid is not mistaken for it).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Proc {
    pub pid: i32,
    pub start: u64,
}

impl Proc {
    pub fn of(pid: i32) -> Option<Proc> {
        proc_start_time(pid).map(|start| Proc { pid, start })
    }
    /// Still running (zombies count as gone).
    pub fn alive(&self) -> bool {
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{}/stat", self.pid)) else {
            return false;
        };
        let Some(after) = stat.rfind(')').map(|i| &stat[i + 2..]) else {
            return false;
        };
        let fields: Vec<&str> = after.split(' ').collect();
        fields.first() != Some(&"Z")
            && fields.get(19).and_then(|s| s.parse().ok()) == Some(self.start)
    }
}

/// Field 22 of /proc/<pid>/stat: the process's start time in clock ticks since boot.
pub fn proc_start_time(pid: i32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let after = &stat[stat.rfind(')')? + 2..];
    after.split(' ').nth(19)?.parse().ok()
}

/// Every path under `dir`, relative, sorted (a snapshot to compare before and after).
pub fn tree(dir: &Path) -> Vec<String> {
    fn walk(root: &Path, dir: &Path, out: &mut Vec<String>) {
        let Ok(rd) = std::fs::read_dir(dir) else {
            return;
        };
        for e in rd.flatten() {
            let p = e.path();
            out.push(
                p.strip_prefix(root)
                    .unwrap_or(&p)
                    .to_string_lossy()
                    .into_owned(),
            );
            if e.file_type().map(|t| t.is_dir()).unwrap_or(false) {
                walk(root, &p, out);
            }
        }
    }
    let mut out = Vec::new();
    walk(dir, dir, &mut out);
    out.sort();
    out
}

/// Builds tar archives from raw headers, so names and entry types a well-behaved archiver
/// refuses to write (absolute paths, `..`, escaping links, devices) can be.
pub struct RawTar {
    builder: tar::Builder<Vec<u8>>,
}

impl Default for RawTar {
    fn default() -> Self {
        Self::new()
    }
}

impl RawTar {
    pub fn new() -> Self {
        RawTar {
            builder: tar::Builder::new(Vec::new()),
        }
    }

    /// One entry with the name and link name written byte for byte.
    pub fn entry(
        mut self,
        name: &str,
        kind: tar::EntryType,
        mode: u32,
        link: &str,
        data: &[u8],
    ) -> Self {
        let mut h = tar::Header::new_gnu();
        {
            let old = h.as_old_mut();
            assert!(name.len() <= old.name.len() && link.len() <= old.linkname.len());
            old.name[..name.len()].copy_from_slice(name.as_bytes());
            old.linkname[..link.len()].copy_from_slice(link.as_bytes());
        }
        h.set_entry_type(kind);
        h.set_mode(mode);
        h.set_mtime(0);
        h.set_uid(0);
        h.set_gid(0);
        h.set_size(data.len() as u64);
        if matches!(kind, tar::EntryType::Char | tar::EntryType::Block) {
            h.set_device_major(1).expect("major");
            h.set_device_minor(3).expect("minor");
        }
        h.set_cksum();
        self.builder.append(&h, data).expect("append");
        self
    }

    pub fn file(self, name: &str, data: &[u8]) -> Self {
        self.entry(name, tar::EntryType::Regular, 0o644, "", data)
    }

    pub fn dir(self, name: &str) -> Self {
        self.entry(name, tar::EntryType::Directory, 0o755, "", b"")
    }

    pub fn symlink(self, name: &str, target: &str) -> Self {
        self.entry(name, tar::EntryType::Symlink, 0o777, target, b"")
    }

    pub fn hard_link(self, name: &str, target: &str) -> Self {
        self.entry(name, tar::EntryType::Link, 0o644, target, b"")
    }

    /// The archive, gzip-compressed.
    pub fn gz(self) -> Vec<u8> {
        let raw = self.builder.into_inner().expect("tar");
        let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        enc.write_all(&raw).expect("gzip");
        enc.finish().expect("gzip")
    }
}
