//! Zygotes: interpreters that have imported a set of packages and fork instances on request
//! (SOCK's import cache), giving the `fork` start method.
//!
//! A zygote runs package import-time code, which is as untrusted as function code, so it has
//! no privilege on the host (docs/adr/0004): it lives in a sandbox of its own (no network, its
//! own cgroup and limits) with a user namespace of its own, whose root it is, an unprivileged
//! user on the host; it keeps only the capabilities forking needs, and those only over its own
//! namespaces, under no_new_privs and a seccomp filter. The sandboxes it forks into are made
//! within its user and pid namespaces, so it can enter them and nothing else. A zygote is
//! identified by the exact package versions on its `sys.path`, so an instance only forks from a
//! zygote whose every package is in its function's lock at the same version: the packages whose
//! code the zygote ran are ones the function named. Zygotes form a tree: a child is forked from
//! its parent into a sandbox with a user namespace below its parent's, and imports the packages
//! it adds. They are created on first need, paused (SIGSTOP) when idle, evicted under memory
//! pressure, and recreated on next need after they die.
//!
//! Forking a large interpreter costs milliseconds (page tables), and so does the child's way
//! into its sandbox; a zygote that has started an instance therefore keeps `seeds` children
//! forked ahead of need, each waiting entered and unprivileged in a clean sandbox until a
//! function takes it: then only the function's limits, code and environment are applied on the
//! request path.

use crate::instance::{Instance, Instances};
use crate::layout;
use crate::lock::Lock;
use crate::registry::FunctionVersion;
use crate::sandboxes::{
    FunctionLimits, Nesting, SandboxHandle, Sandboxes, SharedSandbox, StartError,
};
use kindling_sandbox::cgroup::Limits as CgroupLimits;
use kindling_sandbox::spec::{InstanceSpec, MountSpec, Privilege};
use kindling_sandbox::sys::{self, SocketKind};
use serde::Deserialize;
use std::collections::{BTreeSet, HashMap};
use std::io::{Read, Write};
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// How long a zygote may take to import its packages.
const READY_TIMEOUT: Duration = Duration::from_secs(120);
/// How long a fork request may take.
const FORK_TIMEOUT: Duration = Duration::from_secs(10);
/// How many forked instances (after their first invocation) a zygote learns its seeds' working
/// set from.
const LEARN_FROM: usize = 4;
/// Most pages a seed writes ahead of need (32 MiB).
const MAX_WRITE_AHEAD_PAGES: usize = 8192;
/// A refill waits this long first, so that it does not compete with the response it follows.
const REFILL_DELAY: Duration = Duration::from_millis(2);

/// Zygote settings (`[zygotes]`).
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ZygoteConfig {
    pub enabled: bool,
    pub auto: bool,
    pub tree: Vec<Vec<String>>,
    pub memory_mb: u64,
    pub idle_pause_secs: u64,
    pub min_available_mb: u64,
    pub sandbox_pool: usize,
    pub seeds: usize,
}

impl Default for ZygoteConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            auto: true,
            tree: vec![
                vec!["numpy".into()],
                vec!["numpy".into(), "pandas".into()],
                vec!["requests".into()],
            ],
            memory_mb: 2048,
            idle_pause_secs: 60,
            min_available_mb: 1024,
            sandbox_pool: 4,
            seeds: 1,
        }
    }
}

/// Why a fork start did not happen.
#[derive(Debug, thiserror::Error)]
pub enum ForkError {
    #[error("zygotes are disabled")]
    Disabled,
    #[error("cannot create zygote")]
    Create(#[from] StartError),
    #[error("zygote did not become ready: {0}")]
    NotReady(String),
    #[error("zygote failed: {0}")]
    Zygote(String),
    #[error("zygote channel broke")]
    Io(#[from] std::io::Error),
}

/// A package set: sorted `<name>==<version>` keys.
pub type PackageSet = BTreeSet<String>;

/// How a fork start went: the zygote's package set, the child's host pid, whether it was a seed.
#[derive(Debug, Clone)]
pub struct Forked {
    pub zygote: PackageSet,
    pub pid: i32,
    pub seeded: bool,
}

/// The pages seeds of one zygote write ahead of need: those its forked instances wrote during
/// their first invocation (REAP's idea of recording a first invocation's working set, applied
/// to copy-on-write after fork).
#[derive(Default)]
struct WorkingSet {
    pages: BTreeSet<u64>,
    /// Submodules forked instances imported, which the zygote imports too (also when it is
    /// recreated).
    modules: BTreeSet<String>,
    learned_from: usize,
}

/// One zygote process.
pub struct Zygote {
    pub id: String,
    pub packages: PackageSet,
    pub parent: Option<Arc<Zygote>>,
    /// Its pid on the host.
    pub pid: i32,
    pidfd: OwnedFd,
    channel: Mutex<UnixStream>,
    /// Its sandbox, which outlives it while sandboxes made within it live.
    sandbox: Arc<SharedSandbox>,
    last_used: Mutex<Instant>,
    paused: AtomicBool,
    dead: AtomicBool,
    pub forks: AtomicU64,
    /// Whether it has started an instance (then it keeps seeds).
    serves_instances: AtomicBool,
    /// Modules that failed to preload (they are imported by the instance instead).
    pub failed_imports: Vec<String>,
    /// What a root zygote prints goes to the zygotes' log while this lives.
    _output: Option<crate::logs::InstanceOutput>,
}

impl Zygote {
    /// Sends a request with descriptors and reads the reply.
    fn call(&self, req: &serde_json::Value, fds: &[RawFd]) -> Result<serde_json::Value, ForkError> {
        // Holding the channel while resuming: housekeeping pauses only a zygote whose channel
        // it holds, so a request can never be stopped halfway.
        let mut chan = self.channel.lock().unwrap_or_else(|p| p.into_inner());
        if self.paused.swap(false, Ordering::SeqCst) {
            let _ = sys::pidfd_resume(self.pidfd.as_raw_fd());
        }
        *self.last_used.lock().unwrap_or_else(|p| p.into_inner()) = Instant::now();
        let body = serde_json::to_vec(req).map_err(std::io::Error::other)?;
        let mut frame = (body.len() as u32).to_be_bytes().to_vec();
        frame.extend_from_slice(&body);
        sys::send_with_fds(chan.as_raw_fd(), &frame, fds)?;
        let reply = read_frame(&mut chan, FORK_TIMEOUT)?;
        if reply["ok"].as_bool() == Some(true) {
            Ok(reply)
        } else {
            Err(ForkError::Zygote(
                reply["error"]
                    .as_str()
                    .unwrap_or("unknown error")
                    .to_string(),
            ))
        }
    }

    /// Whether the zygote is gone: marked dead, or its process no longer exists.
    pub fn is_dead(&self) -> bool {
        if self.dead.load(Ordering::SeqCst) {
            return true;
        }
        // Signal 0 checks for existence; the zygote's init reaps it when it dies.
        if sys::pidfd_send_signal(self.pidfd.as_raw_fd(), 0).is_err() {
            self.dead.store(true, Ordering::SeqCst);
            return true;
        }
        false
    }

    /// Kills the zygote process. Its sandbox goes when the last sandbox made within it does
    /// (their pid namespaces lie inside its own).
    fn kill(&self) {
        self.dead.store(true, Ordering::SeqCst);
        let _ = sys::pidfd_kill(self.pidfd.as_raw_fd());
    }

    /// Memory charged to the zygote's cgroup.
    pub fn memory_usage(&self) -> Option<u64> {
        self.sandbox.memory_usage()
    }
}

impl Drop for Zygote {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A child forked ahead of need (like Android's unspecialized app processes): it has entered a
/// clean sandbox and dropped every privilege, and waits on `channel` for the function it becomes.
struct Seed {
    id: String,
    sandbox: SandboxHandle,
    channel: UnixStream,
    /// The child's pid on the host, from the credentials of its `ready` frame.
    pid: i32,
    /// Whether its `ready` frame was read.
    ready: bool,
}

impl Seed {
    /// Waits for the child's `ready` frame (sent once it is entered and unprivileged).
    fn wait_ready(&mut self) -> Result<(), ForkError> {
        self.channel.set_read_timeout(Some(FORK_TIMEOUT))?;
        let mut frame = [0u8; 9];
        let got = read_exact_with_pid(&self.channel, &mut frame);
        self.channel.set_read_timeout(None)?;
        match got {
            Ok(pid) if &frame == b"\0\0\0\x05ready" => {
                self.pid = pid;
                self.ready = true;
                Ok(())
            }
            Ok(_) => Err(ForkError::Zygote(
                "forked child sent a malformed ready frame".into(),
            )),
            Err(e) => Err(ForkError::Zygote(format!(
                "forked child did not get ready ({e}); {}",
                self.sandbox
                    .setup_error()
                    .unwrap_or_else(|| "see the worker log".into())
            ))),
        }
    }
}

/// Fills `buf` from a socket with `SO_PASSCRED` set; returns the sender's pid on the host (the
/// credentials of the first bytes).
fn read_exact_with_pid(chan: &UnixStream, buf: &mut [u8]) -> std::io::Result<i32> {
    let mut pid = None;
    let mut got = 0;
    while got < buf.len() {
        match sys::recv_with_credentials(chan.as_raw_fd(), &mut buf[got..])? {
            None => return Err(std::io::ErrorKind::UnexpectedEof.into()),
            Some((n, sender)) => {
                got += n;
                pid = pid.or(sender);
            }
        }
    }
    pid.ok_or_else(|| std::io::Error::other("the forked child's credentials are missing"))
}

/// Reads one length-prefixed JSON frame.
pub(crate) fn read_frame(
    chan: &mut UnixStream,
    timeout: Duration,
) -> Result<serde_json::Value, ForkError> {
    read_frame_after(chan, timeout, None)
}

/// Reads one length-prefixed JSON frame whose 4-byte head may have been read already.
fn read_frame_after(
    chan: &mut UnixStream,
    timeout: Duration,
    head: Option<[u8; 4]>,
) -> Result<serde_json::Value, ForkError> {
    chan.set_read_timeout(Some(timeout))?;
    let head = match head {
        Some(h) => h,
        None => {
            let mut h = [0u8; 4];
            chan.read_exact(&mut h)?;
            h
        }
    };
    let n = u32::from_be_bytes(head) as usize;
    if n > 1 << 20 {
        return Err(ForkError::Zygote("oversized reply".into()));
    }
    let mut body = vec![0u8; n];
    chan.read_exact(&mut body)?;
    serde_json::from_slice(&body).map_err(|e| ForkError::Zygote(format!("malformed reply: {e}")))
}

/// Every zygote of the worker.
pub struct Zygotes {
    instances: Arc<Instances>,
    pub config: ZygoteConfig,
    nodes: Mutex<HashMap<PackageSet, Arc<Zygote>>>,
    /// Serializes creation so concurrent first uses create a zygote once.
    creating: Mutex<()>,
    seccomp_hex: String,
    max_open_files: u64,
    uid: u32,
    gid: u32,
    /// Clean sandboxes created ahead of fork starts within a zygote's namespaces, by the
    /// zygote's id (useless to any other zygote, even one with the same packages).
    pool: Mutex<HashMap<String, Vec<(String, SandboxHandle)>>>,
    /// Seeds by the package set of the zygote they were forked from.
    seeds: Mutex<HashMap<PackageSet, Vec<Seed>>>,
    /// What seeds write ahead of need, by zygote package set.
    working_sets: Mutex<HashMap<PackageSet, WorkingSet>>,
    /// `/tmp` size of pooled sandboxes: the worker's default.
    pool_tmp_mb: u64,
    refilling: Mutex<()>,
    refills_pending: AtomicUsize,
    stopping: AtomicBool,
    /// Zygote sandboxes that exist: a zygote's, or one kept after its zygote died for the
    /// sandboxes made within it.
    sandboxes: Arc<AtomicUsize>,
}

impl Zygotes {
    pub fn new(
        instances: Arc<Instances>,
        config: ZygoteConfig,
        uid: u32,
        gid: u32,
        max_open_files: u64,
        pool_tmp_mb: u64,
    ) -> Self {
        let seccomp_hex = kindling_sandbox::seccomp::instance_filter_bytes()
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        Self {
            instances,
            config,
            nodes: Mutex::new(HashMap::new()),
            creating: Mutex::new(()),
            seccomp_hex,
            max_open_files,
            uid,
            gid,
            pool: Mutex::new(HashMap::new()),
            seeds: Mutex::new(HashMap::new()),
            working_sets: Mutex::new(HashMap::new()),
            pool_tmp_mb,
            refilling: Mutex::new(()),
            refills_pending: AtomicUsize::new(0),
            stopping: AtomicBool::new(false),
            sandboxes: Arc::new(AtomicUsize::new(0)),
        }
    }

    /// The package sets of the zygotes a function could use, smallest first: the root (no
    /// packages), the operator's tree entries its lock contains, and (with `auto`) its whole lock.
    pub fn candidates(&self, lock: &Lock) -> Vec<PackageSet> {
        let names: BTreeSet<&str> = lock.packages.iter().map(|p| p.name.as_str()).collect();
        let mut sets = vec![PackageSet::new()];
        for entry in &self.config.tree {
            let normalized: Vec<String> = entry.iter().map(|n| crate::lock::normalize(n)).collect();
            if !normalized.is_empty() && normalized.iter().all(|n| names.contains(n.as_str())) {
                sets.push(lock.closure_of(&normalized));
            }
        }
        if self.config.auto && !lock.packages.is_empty() {
            sets.push(lock.packages.iter().map(|p| p.key()).collect());
        }
        sets.sort_by_key(|s| s.len());
        sets.dedup();
        sets
    }

    /// The deepest zygote for `function`, created (with its ancestors) if missing. Blocking.
    pub fn acquire(&self, function: &FunctionVersion) -> Result<Arc<Zygote>, ForkError> {
        if !self.config.enabled {
            return Err(ForkError::Disabled);
        }
        let sets = self.candidates(&function.lock);
        let target = sets.last().cloned().unwrap_or_default();
        if let Some(z) = self.live(&target) {
            return Ok(z);
        }
        let _guard = self.creating.lock().unwrap_or_else(|p| p.into_inner());
        let mut parent: Option<Arc<Zygote>> = None;
        for set in &sets {
            if let Some(z) = self.live(set) {
                parent = Some(z);
                continue;
            }
            // The zygote the function forks from also preloads the submodules of its packages
            // that the function's code imports (e.g. `sklearn.linear_model`).
            let imports: &[String] = if *set == target {
                &function.imports
            } else {
                &[]
            };
            let z = match self.create(set, parent.clone(), imports) {
                Ok(z) => Arc::new(z),
                Err(e) => {
                    // A parent that cannot fork is replaced on the next need.
                    if let (Some(p), ForkError::Io(_) | ForkError::Zygote(_)) = (&parent, &e) {
                        self.discard(p);
                    }
                    return Err(e);
                }
            };
            tracing::info!(zygote = %z.id, packages = set.len(), pid = z.pid, "zygote ready");
            self.nodes
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .insert(set.clone(), z.clone());
            parent = Some(z);
        }
        parent.ok_or_else(|| ForkError::NotReady("no zygote".into()))
    }

    fn live(&self, set: &PackageSet) -> Option<Arc<Zygote>> {
        let dead = {
            let mut nodes = self.nodes.lock().unwrap_or_else(|p| p.into_inner());
            match nodes.get(set) {
                Some(z) if z.is_dead() => nodes.remove(set),
                Some(z) => return Some(z.clone()),
                None => return None,
            }
        };
        if let Some(z) = dead {
            self.drop_pooled(&z);
        }
        None
    }

    /// Forgets a zygote that failed; the next need recreates it.
    pub fn discard(&self, z: &Arc<Zygote>) {
        z.dead.store(true, Ordering::SeqCst);
        {
            let mut nodes = self.nodes.lock().unwrap_or_else(|p| p.into_inner());
            if nodes.get(&z.packages).is_some_and(|n| Arc::ptr_eq(n, z)) {
                nodes.remove(&z.packages);
            }
        }
        self.drop_pooled(z);
    }

    /// Destroys the pooled sandboxes made within `z`'s namespaces.
    fn drop_pooled(&self, z: &Zygote) {
        let dropped = self
            .pool
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&z.id);
        for (_, sandbox) in dropped.into_iter().flatten() {
            sandbox.destroy();
        }
    }

    /// The mounts of a zygote's sandbox: runtime, its packages, /tmp, /proc, /dev.
    fn mounts(&self, set: &PackageSet) -> Vec<MountSpec> {
        let mut mounts = vec![
            self.instances.runtime_mount(),
            self.instances.packages_mount(set.iter().cloned()),
        ];
        mounts.extend(Sandboxes::base_mounts(16 << 20));
        mounts
    }

    fn cgroup_limits(&self) -> CgroupLimits {
        CgroupLimits {
            memory_bytes: Some(self.config.memory_mb << 20),
            cpu_cores: Some(2.0),
            pids: Some(64),
        }
    }

    /// Creates the zygote for `set`: from scratch (the root), or forked from `parent`. Of
    /// `imports` (module names a function imports), the submodules of the set's packages are
    /// preloaded too, where they exist.
    fn create(
        &self,
        set: &PackageSet,
        parent: Option<Arc<Zygote>>,
        imports: &[String],
    ) -> Result<Zygote, ForkError> {
        let id = format!("zy-{}", self.instances.sandboxes.next_id());
        let paths: Vec<String> = set.iter().map(|k| layout::package_files(k)).collect();
        let inherited = parent
            .as_ref()
            .map(|p| p.packages.clone())
            .unwrap_or_default();
        let modules: Vec<String> = set
            .difference(&inherited)
            .flat_map(|k| top_level_modules(&self.instances.packages_dir.join(k).join("files")))
            .collect();
        let mut imports = imports.to_vec();
        if let Some(ws) = self
            .working_sets
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(set)
        {
            imports.extend(ws.modules.iter().cloned());
        }
        let submodules = submodules_of(&imports, &self.top_level_of(set));
        let sites: Vec<String> = set
            .iter()
            .filter(|k| has_pth(&self.instances.packages_dir.join(k).join("files")))
            .map(|k| layout::package_files(k))
            .collect();
        let (sandbox, channel, pid) = match &parent {
            None => {
                let spec = InstanceSpec {
                    argv: [
                        self.instances.sandboxes.interpreter(),
                        vec![
                            "-c".into(),
                            format!("{}; kindling_runtime.zygote_main()", layout::RUNTIME_IMPORT),
                        ],
                    ]
                    .concat(),
                    env: zygote_env(&paths, &sites, &modules),
                    cwd: "/".into(),
                    // The root of the zygote's own user namespace.
                    uid: 0,
                    gid: 0,
                    max_open_files: self.max_open_files,
                    stdio_to_socket: false,
                    output_pipes: self.instances.logs_instances(),
                    privilege: Privilege::Zygote,
                };
                let (mut sandbox, sock) = self.instances.sandboxes.create_sandbox(
                    &id,
                    self.mounts(set),
                    false,
                    Nesting::Zygote,
                    &self.cgroup_limits(),
                    Some(spec),
                )?;
                let output = sandbox.take_output();
                let started = sandbox
                    .wait_ready()
                    .map_err(ForkError::from)
                    .and_then(|pidfd| {
                        let pidfd =
                            pidfd.ok_or_else(|| ForkError::NotReady("no zygote pidfd".into()))?;
                        let pid = sys::pidfd_pid(pidfd.as_raw_fd())?
                            .ok_or_else(|| ForkError::NotReady("the zygote exited".into()))?;
                        let sock =
                            sock.ok_or_else(|| ForkError::NotReady("no zygote socket".into()))?;
                        let mut chan = UnixStream::from(sock);
                        let ready = read_frame(&mut chan, READY_TIMEOUT).map_err(|e| {
                            ForkError::NotReady(format!(
                                "{e}; {}",
                                sandbox.setup_error().unwrap_or_default()
                            ))
                        })?;
                        let output = self.instances.collect_zygote_output(&id, output)?;
                        Ok((chan, ready, pid, output))
                    });
                match started {
                    Ok((chan, ready, pid, output)) => (sandbox, chan, (ready, pid, output)),
                    Err(e) => {
                        sandbox.destroy();
                        return Err(e);
                    }
                }
            }
            Some(p) => {
                let (mut sandbox, _) = self.instances.sandboxes.create_sandbox(
                    &id,
                    self.mounts(set),
                    false,
                    Nesting::Within(&p.sandbox),
                    &self.cgroup_limits(),
                    None,
                )?;
                if let Err(e) = sandbox.wait_ready() {
                    sandbox.destroy();
                    return Err(e.into());
                }
                let req = serde_json::json!({
                    "op": "fork", "kind": "zygote", "sandbox": id,
                    "paths": paths, "sites": sites, "modules": modules,
                    "submodules": submodules,
                });
                let forked = self.fork_request(p, &sandbox, &req).and_then(|mut chan| {
                    let mut head = [0u8; 4];
                    let pid = read_exact_with_pid(&chan, &mut head)?;
                    let ready = read_frame_after(&mut chan, READY_TIMEOUT, Some(head))
                        .map_err(|e| ForkError::NotReady(e.to_string()))?;
                    Ok((chan, ready, pid))
                });
                match forked {
                    Ok((chan, ready, pid)) => (sandbox, chan, (ready, pid, None)),
                    Err(e) => {
                        sandbox.destroy();
                        return Err(e);
                    }
                }
            }
        };
        let (ready, pid, output) = pid;
        let failed_imports: Vec<String> = ready["failed"]
            .as_array()
            .map(|a| {
                a.iter()
                    .filter_map(|v| v.as_str().map(str::to_string))
                    .collect()
            })
            .unwrap_or_default();
        if !failed_imports.is_empty() {
            tracing::debug!(zygote = %id, ?failed_imports, "modules a zygote could not preload");
        }
        let pidfd = match sys::pidfd_open(pid) {
            Ok(fd) => fd,
            Err(e) => {
                sandbox.destroy();
                return Err(e.into());
            }
        };
        Ok(Zygote {
            id,
            packages: set.clone(),
            parent,
            pid,
            pidfd,
            channel: Mutex::new(channel),
            sandbox: SharedSandbox::new(sandbox, &self.sandboxes),
            last_used: Mutex::new(Instant::now()),
            paused: AtomicBool::new(false),
            dead: AtomicBool::new(false),
            forks: AtomicU64::new(0),
            serves_instances: AtomicBool::new(false),
            failed_imports,
            _output: output,
        })
    }

    /// Asks `zygote` to fork a child into `sandbox` (made within the zygote's namespaces, its
    /// root complete): the child gets the sandbox's namespaces and cgroup and the returned
    /// socket's other end, which carries its credentials (so its host pid) with every frame.
    fn fork_request(
        &self,
        zygote: &Zygote,
        sandbox: &SandboxHandle,
        req: &serde_json::Value,
    ) -> Result<UnixStream, ForkError> {
        let namespaces = sandbox
            .namespace_fds(&["pid", "mnt", "ipc", "uts", "net"])
            .ok_or_else(|| ForkError::NotReady("the sandbox exported no namespaces".into()))?;
        let (ours, theirs) = sys::socketpair(SocketKind::Stream)?;
        sys::set_passcred(ours.as_raw_fd())?;
        let procs = open_procs(&sandbox.cgroup_procs())?;
        let mut fds = vec![theirs.as_raw_fd()];
        fds.extend(namespaces);
        fds.extend(procs.iter().map(|f| f.as_raw_fd()));
        zygote.call(req, &fds)?;
        Ok(UnixStream::from(ours))
    }

    /// Fork start: an instance of `function` forked from `zygote`. A seed of the zygote (a
    /// child forked ahead of need, waiting in a clean sandbox) becomes the instance when there is
    /// one and the function's mounts allow; else a child is forked now, into a clean pooled
    /// sandbox of the zygote or one created for the function. Says whether a seed was used.
    pub fn fork_start(
        &self,
        zygote: &Zygote,
        function: &Arc<FunctionVersion>,
        limits: &FunctionLimits,
    ) -> Result<(Instance, Forked), ForkError> {
        zygote.serves_instances.store(true, Ordering::SeqCst);
        let forked = |pid, seeded| Forked {
            zygote: zygote.packages.clone(),
            pid,
            seeded,
        };
        let clean = self.fits_clean_sandbox(limits);
        if clean {
            while let Some(seed) = self.take_seed(&zygote.packages) {
                match self.assign(seed, &zygote.packages, function, limits, true) {
                    Ok((i, pid)) => return Ok((i, forked(pid, true))),
                    Err(e) => tracing::warn!(function = %function.name, "seed unusable: {e}"),
                }
            }
        }
        let pooled = if clean {
            self.take_pooled(zygote)
        } else {
            None
        };
        let (id, sandbox, clean) = match pooled {
            Some((id, sandbox)) => (id, sandbox, true),
            None => {
                let id = self.instances.sandboxes.next_id();
                let (mut sandbox, _) = self.instances.sandboxes.create_sandbox(
                    &id,
                    self.instances.function_mounts(function, limits),
                    limits.network,
                    Nesting::Within(&zygote.sandbox),
                    &limits.cgroup(),
                    None,
                )?;
                // The child enters the sandbox's mount namespace, so its root must be complete.
                if let Err(e) = sandbox.wait_ready() {
                    sandbox.destroy();
                    return Err(e.into());
                }
                (id, sandbox, false)
            }
        };
        let child = self.fork_into(zygote, id, sandbox, &[])?;
        let (instance, pid) = self.assign(child, &zygote.packages, function, limits, clean)?;
        Ok((instance, forked(pid, false)))
    }

    /// Learns from a forked instance that has served its first invocation: which submodules of
    /// its packages the zygote should import too (those the instance imported on the way, e.g.
    /// plugins loaded on first use; the zygote imports them now, so later forks inherit them),
    /// and which pages its zygote's seeds should write ahead of need. Blocking.
    pub fn learn(&self, forked: &Forked, modules: &[String]) {
        if self.config.seeds == 0 {
            return;
        }
        if self
            .working_sets
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(&forked.zygote)
            .is_some_and(|w| w.learned_from >= LEARN_FROM)
        {
            return;
        }
        self.import_into_zygote(&forked.zygote, modules);
        let pages =
            match kindling_sandbox::working_set::written_pages(forked.pid, MAX_WRITE_AHEAD_PAGES) {
                Ok(p) => p,
                Err(e) => {
                    tracing::debug!(
                        pid = forked.pid,
                        "cannot read a forked instance's pages: {e}"
                    );
                    return;
                }
            };
        let mut sets = self.working_sets.lock().unwrap_or_else(|p| p.into_inner());
        let ws = sets.entry(forked.zygote.clone()).or_default();
        ws.learned_from += 1;
        for page in pages {
            if ws.pages.len() >= MAX_WRITE_AHEAD_PAGES {
                break;
            }
            ws.pages.insert(page);
        }
        tracing::debug!(pages = ws.pages.len(), "seed working set learned");
    }

    /// Has the live zygote holding `set` import the public submodules of its packages among
    /// `modules` (names reported by an instance: untrusted, so filtered like function imports).
    fn import_into_zygote(&self, set: &PackageSet, modules: &[String]) {
        let wanted = submodules_of(modules, &self.top_level_of(set));
        let fresh: Vec<String> = {
            let mut sets = self.working_sets.lock().unwrap_or_else(|p| p.into_inner());
            let known = &mut sets.entry(set.clone()).or_default().modules;
            wanted
                .into_iter()
                .filter(|m| known.insert(m.clone()))
                .collect()
        };
        if fresh.is_empty() {
            return;
        }
        let Some(z) = self.live(set) else {
            return;
        };
        let req = serde_json::json!({"op": "import", "modules": fresh});
        match z.call(&req, &[]) {
            // Seeds forked before lack the modules: the refill that follows forks new ones.
            Ok(_) => self.drop_seeds(set),
            Err(e) => {
                // Its channel may be out of step (a reply still to come): replace the zygote,
                // without those modules.
                tracing::warn!(zygote = %z.id, "zygote could not import learned modules: {e}");
                if let Some(ws) = self
                    .working_sets
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .get_mut(set)
                {
                    for m in &fresh {
                        ws.modules.remove(m);
                    }
                }
                self.discard(&z);
                z.kill();
            }
        }
    }

    /// The top-level modules of the packages of `set`.
    fn top_level_of(&self, set: &PackageSet) -> BTreeSet<String> {
        set.iter()
            .flat_map(|k| top_level_modules(&self.instances.packages_dir.join(k).join("files")))
            .collect()
    }

    /// The runs of pages seeds of the zygote holding `set` write ahead of need.
    fn write_ahead(&self, set: &PackageSet) -> Vec<(u64, u64)> {
        self.working_sets
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(set)
            .map(|w| kindling_sandbox::working_set::runs(w.pages.iter().copied()))
            .unwrap_or_default()
    }

    /// Whether `function` can run in a clean sandbox (pooled or seeded): the pool's mounts.
    fn fits_clean_sandbox(&self, limits: &FunctionLimits) -> bool {
        !limits.network && limits.tmp_mb == self.pool_tmp_mb
    }

    /// Forks a child of `zygote` into `sandbox` (made within the zygote's namespaces), where it
    /// enters the sandbox's cgroup and namespaces, drops every privilege and waits for its
    /// function. Destroys the sandbox on failure.
    fn fork_into(
        &self,
        zygote: &Zygote,
        id: String,
        sandbox: SandboxHandle,
        write_ahead: &[(u64, u64)],
    ) -> Result<Seed, ForkError> {
        let req = serde_json::json!({
            "op": "fork", "kind": "instance", "sandbox": id,
            "uid": self.uid, "gid": self.gid, "nofile": self.max_open_files,
            "seccomp": self.seccomp_hex, "write_ahead": write_ahead,
        });
        match self.fork_request(zygote, &sandbox, &req) {
            Ok(channel) => {
                zygote.forks.fetch_add(1, Ordering::Relaxed);
                Ok(Seed {
                    id,
                    sandbox,
                    channel,
                    pid: 0,
                    ready: false,
                })
            }
            Err(e) => {
                sandbox.destroy();
                Err(e)
            }
        }
    }

    /// Makes a forked child of the zygote holding `set` an instance of `function`: in a clean
    /// sandbox, sets its limits and attaches the function's code and the packages of its
    /// closure the zygote lacks; waits for the child's setup, records the sandbox's function,
    /// then sends the child the function's environment, upon which it imports the handler. The
    /// write ends of its output pipes travel with the first bytes of that frame (SCM_RIGHTS), so
    /// the function writes to its own log from its first line on. Returns the instance and the
    /// child's host pid. Destroys the sandbox on failure.
    fn assign(
        &self,
        mut seed: Seed,
        set: &PackageSet,
        function: &Arc<FunctionVersion>,
        limits: &FunctionLimits,
        clean: bool,
    ) -> Result<(Instance, i32), ForkError> {
        let assignment = self.instances.assign(&seed.id, function);
        let result = (|| {
            if clean {
                seed.sandbox.set_limits(&limits.cgroup())?;
                seed.sandbox.attach(&function.dir, layout::HANDLER, false)?;
                for key in function.lock.packages.iter().map(|p| p.key()) {
                    if !set.contains(&key) {
                        seed.sandbox.attach(
                            &self.instances.packages_dir.join(&key),
                            &layout::package_dir(&key),
                            true,
                        )?;
                    }
                }
            }
            if !seed.ready {
                seed.wait_ready()?;
            }
            let env: serde_json::Map<String, serde_json::Value> = self
                .instances
                .instance_env(function, &seed.id)
                .into_iter()
                .map(|(k, v)| (k, serde_json::Value::String(v)))
                .collect();
            let body = serde_json::to_vec(&env).map_err(std::io::Error::other)?;
            let mut frame = (body.len() as u32).to_be_bytes().to_vec();
            frame.extend_from_slice(&body);
            let pipes = if self.instances.logs_instances() {
                let (read, write) = kindling_sandbox::stdio::OutputPipes::new()?;
                let fds = [write.stdout.as_raw_fd(), write.stderr.as_raw_fd()];
                sys::send_with_fds(seed.channel.as_raw_fd(), &frame[..4], &fds)?;
                // Ours close here: the instance holds the only write ends.
                drop(write);
                Some(read)
            } else {
                seed.channel.write_all(&frame[..4])?;
                None
            };
            seed.channel.write_all(&frame[4..])?;
            Ok::<_, ForkError>(self.instances.collect_output(function, &seed.id, pipes)?)
        })();
        match result {
            Ok(output) => {
                let Seed {
                    id,
                    sandbox,
                    channel,
                    pid,
                    ..
                } = seed;
                let instance = Instance::new(
                    id,
                    function,
                    limits,
                    sandbox,
                    channel.into(),
                    assignment,
                    output,
                )?;
                Ok((instance, pid))
            }
            Err(e) => {
                seed.sandbox.destroy();
                Err(e)
            }
        }
    }

    /// A clean sandbox made within `zygote`'s namespaces, from the pool.
    fn take_pooled(&self, zygote: &Zygote) -> Option<(String, SandboxHandle)> {
        let mut pool = self.pool.lock().unwrap_or_else(|p| p.into_inner());
        let list = pool.get_mut(&zygote.id)?;
        let sandbox = list.pop();
        if list.is_empty() {
            pool.remove(&zygote.id);
        }
        sandbox
    }

    /// A seed of the zygote holding `set`.
    fn take_seed(&self, set: &PackageSet) -> Option<Seed> {
        let mut seeds = self.seeds.lock().unwrap_or_else(|p| p.into_inner());
        let list = seeds.get_mut(set)?;
        let seed = list.pop();
        if list.is_empty() {
            seeds.remove(set);
        }
        seed
    }

    /// Destroys the seeds of the zygote holding `set`.
    fn drop_seeds(&self, set: &PackageSet) {
        let dropped = self
            .seeds
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(set);
        for seed in dropped.into_iter().flatten() {
            seed.sandbox.destroy();
        }
    }

    /// A live zygote that started instances and has fewer than `seeds` seeds.
    fn short_of_seeds(&self) -> Option<Arc<Zygote>> {
        if self.config.seeds == 0 {
            return None;
        }
        let seeds = self.seeds.lock().unwrap_or_else(|p| p.into_inner());
        self.nodes
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .values()
            .filter(|z| z.serves_instances.load(Ordering::SeqCst) && !z.is_dead())
            .find(|z| seeds.get(&z.packages).map_or(0, Vec::len) < self.config.seeds)
            .cloned()
    }

    /// On a thread of its own, learns from `forked` (a forked instance that has served its
    /// first invocation, and the modules it reported importing) if given, then runs
    /// [`Zygotes::refill`]; `/stats` counts it as pending until done.
    pub fn schedule_refill(self: &Arc<Self>, forked: Option<(Forked, Vec<String>)>) {
        self.refills_pending.fetch_add(1, Ordering::SeqCst);
        let zygotes = self.clone();
        std::thread::spawn(move || {
            std::thread::sleep(REFILL_DELAY);
            if let Some((f, modules)) = forked {
                zygotes.learn(&f, &modules);
            }
            zygotes.refill();
            zygotes.refills_pending.fetch_sub(1, Ordering::SeqCst);
        });
    }

    /// Refills scheduled and not finished.
    pub fn refills_pending(&self) -> usize {
        self.refills_pending.load(Ordering::SeqCst)
    }

    /// Forks seeds for the zygotes that start instances, then tops the pool of clean sandboxes
    /// up to `sandbox_pool`, spread over the zygotes that start instances (blocking; run off
    /// the request path).
    pub fn refill(&self) {
        // One refiller at a time; others find the work being done and leave.
        let Ok(_refilling) = self.refilling.try_lock() else {
            return;
        };
        loop {
            if self.stopping.load(Ordering::SeqCst) {
                return;
            }
            if let Some(z) = self.short_of_seeds() {
                let clean = match self.take_pooled(&z) {
                    Some(p) => Ok(p),
                    None => self.create_clean(&z),
                };
                let write_ahead = self.write_ahead(&z.packages);
                let seeded = clean
                    .and_then(|(id, sandbox)| self.fork_into(&z, id, sandbox, &write_ahead))
                    .and_then(|mut seed| match seed.wait_ready() {
                        Ok(()) => Ok(seed),
                        Err(e) => {
                            seed.sandbox.destroy();
                            Err(e)
                        }
                    });
                match seeded {
                    Ok(seed) => self
                        .seeds
                        .lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .entry(z.packages.clone())
                        .or_default()
                        .push(seed),
                    Err(e) => {
                        tracing::warn!(zygote = %z.id, "cannot fork a seed: {e}");
                        if matches!(e, ForkError::Io(_) | ForkError::Zygote(_)) {
                            self.discard(&z);
                        }
                        return;
                    }
                }
                continue;
            }
            let Some(z) = self.short_of_spares() else {
                return;
            };
            match self.create_clean(&z) {
                Ok(p) => self
                    .pool
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .entry(z.id.clone())
                    .or_default()
                    .push(p),
                Err(e) => {
                    tracing::warn!(zygote = %z.id, "cannot pre-create a sandbox: {e}");
                    return;
                }
            }
        }
    }

    /// The live zygote that starts instances and should get the next pooled sandbox (the
    /// fewest, then the most recently used), while the pool is below `sandbox_pool`.
    fn short_of_spares(&self) -> Option<Arc<Zygote>> {
        let pool = self.pool.lock().unwrap_or_else(|p| p.into_inner());
        if pool.values().map(Vec::len).sum::<usize>() >= self.config.sandbox_pool {
            return None;
        }
        self.nodes
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .values()
            .filter(|z| z.serves_instances.load(Ordering::SeqCst) && !z.is_dead())
            .min_by_key(|z| {
                let last = *z.last_used.lock().unwrap_or_else(|p| p.into_inner());
                (pool.get(&z.id).map_or(0, Vec::len), std::cmp::Reverse(last))
            })
            .cloned()
    }

    /// A clean sandbox within `zygote`'s namespaces: a function's mounts with the zygote's
    /// packages and without its code, its root complete.
    fn create_clean(&self, zygote: &Zygote) -> Result<(String, SandboxHandle), ForkError> {
        let id = self.instances.sandboxes.next_id();
        let (mut sandbox, _) = self.instances.sandboxes.create_sandbox(
            &id,
            self.pool_mounts(&zygote.packages),
            false,
            Nesting::Within(&zygote.sandbox),
            &self.cgroup_limits(),
            None,
        )?;
        match sandbox.wait_ready() {
            Ok(_) => Ok((id, sandbox)),
            Err(e) => {
                sandbox.destroy();
                Err(e.into())
            }
        }
    }

    /// Pooled sandboxes: a function's mounts without its code (attached on use), with the
    /// zygote's packages (the function's others are attached on use too).
    fn pool_mounts(&self, set: &PackageSet) -> Vec<MountSpec> {
        let mut mounts = self.mounts(set);
        for m in &mut mounts {
            if let MountSpec::Tmpfs { size_bytes, .. } = m {
                *size_bytes = self.pool_tmp_mb << 20;
            }
        }
        // Function sandboxes reach object storage (see Factory::function_mounts).
        mounts.extend(self.instances.storage_mount());
        mounts
    }

    /// Sandboxes waiting in the pool.
    pub fn pooled(&self) -> usize {
        self.pool
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .values()
            .map(Vec::len)
            .sum()
    }

    /// Seeds waiting to become instances.
    pub fn seeded(&self) -> usize {
        self.seeds
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .values()
            .map(Vec::len)
            .sum()
    }

    /// Pauses zygotes idle past `idle_pause_secs`; evicts idle leaf zygotes while the machine
    /// is short of memory.
    pub fn housekeeping(&self) {
        let idle_pause = Duration::from_secs(self.config.idle_pause_secs);
        let nodes: Vec<Arc<Zygote>> = self
            .nodes
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .values()
            .cloned()
            .collect();
        for z in &nodes {
            let idle = z
                .last_used
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .elapsed();
            if idle >= idle_pause && !z.paused.load(Ordering::SeqCst) {
                // Only while no request is in flight (the guard is held until the zygote stops).
                if let Ok(_idle) = z.channel.try_lock() {
                    z.paused.store(true, Ordering::SeqCst);
                    let _ = sys::pidfd_stop(z.pidfd.as_raw_fd());
                }
            }
        }
        if available_mb().is_some_and(|mb| mb < self.config.min_available_mb) {
            let parents: BTreeSet<String> = nodes
                .iter()
                .filter_map(|z| z.parent.as_ref().map(|p| p.id.clone()))
                .collect();
            let victim = nodes
                .iter()
                .filter(|z| !parents.contains(&z.id))
                .min_by_key(|z| *z.last_used.lock().unwrap_or_else(|p| p.into_inner()));
            if let Some(v) = victim {
                tracing::warn!(zygote = %v.id, "evicting zygote under memory pressure");
                self.discard(v);
                self.drop_seeds(&v.packages);
                v.kill();
            }
        }
    }

    /// Zygote sandboxes that exist, including those kept after their zygote died because
    /// sandboxes made within them (forked instances, seeds) still live.
    pub fn sandboxes(&self) -> usize {
        self.sandboxes.load(Ordering::SeqCst)
    }

    /// Zygotes alive now (each has a sandbox of its own).
    pub fn count(&self) -> usize {
        self.nodes
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .values()
            .filter(|z| !z.is_dead())
            .count()
    }

    /// Zygotes for `/status`: id, packages, pid, forks, memory.
    pub fn describe(&self) -> Vec<serde_json::Value> {
        let seeds = self.seeds.lock().unwrap_or_else(|p| p.into_inner());
        let working_sets = self.working_sets.lock().unwrap_or_else(|p| p.into_inner());
        let nodes = self.nodes.lock().unwrap_or_else(|p| p.into_inner());
        let mut out: Vec<_> = nodes
            .values()
            .filter(|z| !z.is_dead())
            .map(|z| {
                serde_json::json!({
                    "id": z.id, "pid": z.pid, "packages": z.packages,
                    "parent": z.parent.as_ref().map(|p| p.id.clone()),
                    "forks": z.forks.load(Ordering::Relaxed),
                    "seeds": seeds.get(&z.packages).map_or(0, Vec::len),
                    "seed_write_ahead_pages": working_sets.get(&z.packages).map_or(0, |w| w.pages.len()),
                    "paused": z.paused.load(Ordering::Relaxed),
                    "memory_bytes": z.memory_usage(),
                    "failed_imports": z.failed_imports,
                })
            })
            .collect();
        out.sort_by_key(|v| v["packages"].as_array().map(|a| a.len()).unwrap_or(0));
        out
    }

    /// Kills every zygote and pooled sandbox (shutdown). Blocking.
    pub fn shutdown(&self) {
        // No refill may start now, and one in flight is waited for (it holds `refilling`).
        self.stopping.store(true, Ordering::SeqCst);
        let _refilling = self.refilling.lock().unwrap_or_else(|p| p.into_inner());
        let pooled: Vec<_> = self
            .pool
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .drain()
            .flat_map(|(_, list)| list)
            .collect();
        for (_, s) in pooled {
            s.destroy();
        }
        let seeds: Vec<_> = self
            .seeds
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .drain()
            .flat_map(|(_, list)| list)
            .collect();
        for seed in seeds {
            seed.sandbox.destroy();
        }
        let nodes: Vec<_> = self
            .nodes
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .drain()
            .map(|(_, z)| z)
            .collect();
        for z in nodes {
            z.kill();
        }
    }
}

/// The names in `imports` below one of the top-level modules `tops` (`a.b` for `a`), sorted so
/// that a package comes before its submodules. Names come from function code, so private parts
/// (`a._b`, `a.__main__`, which may run a program when imported) are never preloaded: a shared,
/// privileged zygote imports only a package's public modules.
fn submodules_of(imports: &[String], tops: &BTreeSet<String>) -> Vec<String> {
    let mut out: Vec<String> = imports
        .iter()
        .filter(|m| {
            m.split_once('.').is_some_and(|(top, rest)| {
                tops.contains(top) && rest.split('.').all(|part| !part.starts_with('_'))
            })
        })
        .cloned()
        .collect();
    out.sort();
    out.dedup();
    out
}

fn zygote_env(paths: &[String], sites: &[String], modules: &[String]) -> Vec<(String, String)> {
    [
        ("PATH", layout::PATH.to_string()),
        ("HOME", layout::TMP.to_string()),
        ("LANG", "C.UTF-8".to_string()),
        ("KINDLING_PATH", paths.join(":")),
        ("KINDLING_SITE", sites.join(":")),
        ("KINDLING_PRELOAD", modules.join(",")),
        // Thread pools started at import would be lost in forked children.
        ("OPENBLAS_NUM_THREADS", "1".to_string()),
        ("OMP_NUM_THREADS", "1".to_string()),
        ("MKL_NUM_THREADS", "1".to_string()),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v))
    .collect()
}

/// Opens a sandbox's `cgroup.procs` files for writing, so a forked child can join the cgroup
/// by writing "0" into them from inside its new mount namespace.
fn open_procs(files: &[PathBuf]) -> std::io::Result<Vec<OwnedFd>> {
    files
        .iter()
        .map(|f| {
            std::fs::OpenOptions::new()
                .write(true)
                .open(f)
                .map(OwnedFd::from)
        })
        .collect()
}

/// Importable top-level names of an installed package directory.
pub fn top_level_modules(files: &Path) -> Vec<String> {
    let Ok(rd) = std::fs::read_dir(files) else {
        return Vec::new();
    };
    let mut names = BTreeSet::new();
    let mut declared = None;
    for e in rd.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        if name.ends_with(".dist-info") {
            if let Ok(t) = std::fs::read_to_string(e.path().join("top_level.txt")) {
                declared = Some(
                    t.lines()
                        .map(|l| l.trim().to_string())
                        .filter(|l| !l.is_empty())
                        .collect::<Vec<_>>(),
                );
            }
            continue;
        }
        let path = e.path();
        let module = if path.is_dir() {
            (path.join("__init__.py").is_file()).then_some(name.clone())
        } else if let Some(stem) = name.strip_suffix(".py") {
            Some(stem.to_string())
        } else if name.ends_with(".so") {
            name.split('.').next().map(str::to_string)
        } else {
            None
        };
        if let Some(m) = module {
            names.insert(m);
        }
    }
    let candidates: Vec<String> = match declared {
        Some(d) => d.into_iter().filter(|m| names.contains(m)).collect(),
        None => names.into_iter().collect(),
    };
    candidates
        .into_iter()
        .filter(|m| {
            !m.starts_with('_') && !m.starts_with("test") && m != "setup" && m != "conftest"
        })
        .collect()
}

fn has_pth(files: &Path) -> bool {
    std::fs::read_dir(files)
        .map(|rd| {
            rd.flatten()
                .any(|e| e.file_name().to_string_lossy().ends_with(".pth"))
        })
        .unwrap_or(false)
}

/// MemAvailable in MB.
fn available_mb() -> Option<u64> {
    let text = std::fs::read_to_string("/proc/meminfo").ok()?;
    let line = text.lines().find(|l| l.starts_with("MemAvailable:"))?;
    line.split_whitespace()
        .nth(1)?
        .parse::<u64>()
        .ok()
        .map(|kb| kb / 1024)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_submodules_of_the_zygotes_packages_are_preloaded() {
        let imports: Vec<String> = [
            "sklearn.linear_model",
            "sklearn",
            "json",
            "os.path",
            "helpers.io",
            "pandas.core.frame",
            "sklearn.linear_model",
            "numpy_extra.x",
            "pandas.__main__",
            "sklearn.utils._testing",
        ]
        .map(String::from)
        .to_vec();
        let tops: BTreeSet<String> = ["sklearn", "pandas", "numpy"].map(String::from).into();
        assert_eq!(
            submodules_of(&imports, &tops),
            vec!["pandas.core.frame", "sklearn.linear_model"]
        );
    }
}
