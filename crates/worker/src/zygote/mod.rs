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

mod eviction;
mod learning;
mod policy;
mod process;
mod seeds;

pub use learning::top_level_modules;
pub use process::Zygote;

use crate::frame;
use crate::instance::{Instance, Instances};
use crate::layout;
use crate::lock::Lock;
use crate::registry::FunctionVersion;
use crate::sandboxes::{
    FunctionLimits, Nesting, SandboxHandle, Sandboxes, SharedSandbox, StartError,
};
use crate::spares::{Reserve, SpareSandboxes};
use kindling_sandbox::cgroup::Limits as CgroupLimits;
use kindling_sandbox::channel;
use kindling_sandbox::process::Process;
use kindling_sandbox::spec::{InstanceSpec, MountSpec, Privilege};
use learning::{has_pth, submodules_of, WorkingSet};
use parking_lot::Mutex;
pub(crate) use process::read_reply;
use process::{read_exact_with_pid, Fork, Reply, Request};
use seeds::Seed;
use serde::Deserialize;
use std::collections::{BTreeSet, HashMap};
use std::io::Write;
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::net::UnixStream;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// How long a zygote may take to import its packages.
const READY_TIMEOUT: Duration = Duration::from_secs(120);
/// How long a fork request may take.
const FORK_TIMEOUT: Duration = Duration::from_secs(10);
/// A refill waits this long first, so that it does not compete with the response it follows.
const REFILL_DELAY: Duration = Duration::from_millis(2);

/// Zygote settings (`[zygotes]`).
#[derive(Debug, Clone, PartialEq, Deserialize, serde::Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct ZygoteConfig {
    /// Fork starts at all.
    pub enabled: bool,
    /// A zygote per deployed package set (the function's whole lock), on first need.
    pub auto: bool,
    /// The operator's zygotes, by package names: each is instantiated per version set, a child
    /// of the largest zygote whose packages it contains.
    pub tree: Vec<Vec<String>>,
    /// Cgroup memory limit of each zygote, in MB.
    pub memory_mb: u64,
    /// SIGSTOP a zygote unused this long, in seconds (SIGCONT on its next use).
    pub idle_pause_secs: u64,
    /// Below this MemAvailable (MB), idle zygotes are evicted (least recently used leaves first).
    pub min_available_mb: u64,
    /// Spare sandboxes (clean, made ahead of need) kept for fork starts (0: none). Formerly
    /// `sandbox_pool`, which is still read.
    #[serde(alias = "sandbox_pool")]
    pub spare_sandboxes: usize,
    /// Children forked ahead of need per zygote that started an instance, each waiting entered
    /// and unprivileged in a spare sandbox to become the next forked instance (0: fork on
    /// request only).
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
            spare_sandboxes: 4,
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
    /// Spare sandboxes made within zygotes' namespaces for their fork starts.
    spares: SpareSandboxes,
    /// Seeds by the package set of the zygote they were forked from.
    seeds: Reserve<PackageSet, Seed>,
    /// What seeds write ahead of need, by zygote package set.
    working_sets: Mutex<HashMap<PackageSet, WorkingSet>>,
    /// `/tmp` size of spare sandboxes: the worker's default.
    spare_tmp_mb: u64,
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
        spare_tmp_mb: u64,
    ) -> Self {
        let seccomp_hex = hex::encode(kindling_sandbox::seccomp::instance_filter_bytes());
        Self {
            instances,
            config,
            nodes: Mutex::new(HashMap::new()),
            creating: Mutex::new(()),
            seccomp_hex,
            max_open_files,
            uid,
            gid,
            spares: SpareSandboxes::default(),
            seeds: Reserve::default(),
            working_sets: Mutex::new(HashMap::new()),
            spare_tmp_mb,
            refilling: Mutex::new(()),
            refills_pending: AtomicUsize::new(0),
            stopping: AtomicBool::new(false),
            sandboxes: Arc::new(AtomicUsize::new(0)),
        }
    }

    /// The package sets of the zygotes a function could use, smallest first: the root (no
    /// packages), the operator's tree entries its lock contains, and (with `auto`) its whole lock.
    pub fn candidates(&self, lock: &Lock) -> Vec<PackageSet> {
        policy::candidates(&self.config, lock)
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
        let _guard = self.creating.lock();
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
            self.nodes.lock().insert(set.clone(), z.clone());
            parent = Some(z);
        }
        parent.ok_or_else(|| ForkError::NotReady("no zygote".into()))
    }

    fn live(&self, set: &PackageSet) -> Option<Arc<Zygote>> {
        let dead = {
            let mut nodes = self.nodes.lock();
            match nodes.get(set) {
                Some(z) if z.is_dead() => nodes.remove(set),
                Some(z) => return Some(z.clone()),
                None => return None,
            }
        };
        if let Some(z) = dead {
            self.drop_spares(&z.id);
        }
        None
    }

    /// Destroys the spare sandboxes made within zygote `id`.
    fn drop_spares(&self, id: &str) {
        for (_, sandbox) in self.spares.remove(&id.to_string()) {
            sandbox.destroy();
        }
    }

    /// Forgets a zygote that failed; the next need recreates it.
    pub fn discard(&self, z: &Arc<Zygote>) {
        z.dead.store(true, Ordering::SeqCst);
        {
            let mut nodes = self.nodes.lock();
            if nodes.get(&z.packages).is_some_and(|n| Arc::ptr_eq(n, z)) {
                nodes.remove(&z.packages);
            }
        }
        self.drop_spares(&z.id);
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
        if let Some(ws) = self.working_sets.lock().get(set) {
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
                        let pid = Process::from_pidfd(pidfd)
                            .pid()?
                            .ok_or_else(|| ForkError::NotReady("the zygote exited".into()))?;
                        let sock =
                            sock.ok_or_else(|| ForkError::NotReady("no zygote socket".into()))?;
                        let mut chan = UnixStream::from(sock);
                        let ready = read_reply(&mut chan, READY_TIMEOUT, None).map_err(|e| {
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
                let req = Request::Fork(Fork::Zygote {
                    sandbox: &id,
                    paths: &paths,
                    sites: &sites,
                    modules: &modules,
                    submodules: &submodules,
                });
                let forked = self.fork_request(p, &sandbox, &req).and_then(|mut chan| {
                    let mut head = [0u8; frame::HEAD_BYTES];
                    let pid = read_exact_with_pid(&chan, &mut head)?;
                    let ready = read_reply(&mut chan, READY_TIMEOUT, Some(head))
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
        let failed_imports = match ready {
            Reply::Ready { failed, .. } => failed,
            other => {
                sandbox.destroy();
                return Err(ForkError::NotReady(format!(
                    "the zygote's first reply is not `ready`: {other:?}"
                )));
            }
        };
        if !failed_imports.is_empty() {
            tracing::debug!(zygote = %id, ?failed_imports, "modules a zygote could not preload");
        }
        let process = match Process::open(pid) {
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
            process,
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
        req: &Request<'_>,
    ) -> Result<UnixStream, ForkError> {
        let namespaces = sandbox
            .namespace_fds(&["pid", "mnt", "ipc", "uts", "net"])
            .ok_or_else(|| ForkError::NotReady("the sandbox exported no namespaces".into()))?;
        let (ours, theirs) = channel::pair_with_credentials()?;
        let procs = open_procs(&sandbox.cgroup_procs())?;
        let mut fds = vec![theirs.as_fd()];
        fds.extend(namespaces);
        fds.extend(procs.iter().map(|f| f.as_fd()));
        zygote.call(req, &fds)?;
        Ok(ours)
    }

    /// Fork start: an instance of `function` forked from `zygote`. A seed of the zygote (a
    /// child forked ahead of need, waiting in a clean sandbox) becomes the instance when there is
    /// one and the function's mounts allow; else a child is forked now, into a clean spare
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
        let spare = if clean {
            self.spares.take(&zygote.id)
        } else {
            None
        };
        let (id, sandbox, clean) = match spare {
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

    /// Whether `function` can run in a clean sandbox (spare or seeded): the spares' mounts.
    fn fits_clean_sandbox(&self, limits: &FunctionLimits) -> bool {
        policy::fits_clean_sandbox(limits, self.spare_tmp_mb)
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
        let req = Request::Fork(Fork::Instance {
            sandbox: &id,
            uid: self.uid,
            gid: self.gid,
            nofile: self.max_open_files,
            seccomp: &self.seccomp_hex,
            write_ahead,
        });
        match self.fork_request(zygote, &sandbox, &req) {
            Ok(channel) => {
                zygote.forks.fetch_add(1, Ordering::Relaxed);
                Ok(Seed {
                    id,
                    sandbox,
                    channel,
                    pid: None,
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
            let pid = match seed.pid {
                Some(pid) => pid,
                None => seed.wait_ready()?,
            };
            let env: serde_json::Map<String, serde_json::Value> = self
                .instances
                .instance_env(function, &seed.id)
                .into_iter()
                .map(|(k, v)| (k, serde_json::Value::String(v)))
                .collect();
            let body = serde_json::to_vec(&env).map_err(std::io::Error::other)?;
            let head = frame::head(body.len())?;
            let pipes = if self.instances.logs_instances() {
                let (read, write) = kindling_sandbox::stdio::OutputPipes::new()?;
                let fds = [write.stdout.as_fd(), write.stderr.as_fd()];
                channel::send_with_fds(&seed.channel, &head, &fds)?;
                // Ours close here: the instance holds the only write ends.
                drop(write);
                Some(read)
            } else {
                seed.channel.write_all(&head)?;
                None
            };
            seed.channel.write_all(&body)?;
            Ok::<_, ForkError>((
                pid,
                self.instances.collect_output(function, &seed.id, pipes)?,
            ))
        })();
        match result {
            Ok((pid, output)) => {
                let Seed {
                    id,
                    sandbox,
                    channel,
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

    /// Zygote sandboxes that exist, including those kept after their zygote died because
    /// sandboxes made within them (forked instances, seeds) still live.
    pub fn sandboxes(&self) -> usize {
        self.sandboxes.load(Ordering::SeqCst)
    }

    /// Zygotes alive now (each has a sandbox of its own).
    pub fn count(&self) -> usize {
        self.nodes.lock().values().filter(|z| !z.is_dead()).count()
    }

    /// Zygotes for `/status`: id, packages, pid, forks, memory.
    pub fn describe(&self) -> Vec<serde_json::Value> {
        let seeds = self.seeds.counts();
        let working_sets = self.working_sets.lock();
        let nodes = self.nodes.lock();
        let mut out: Vec<_> = nodes
            .values()
            .filter(|z| !z.is_dead())
            .map(|z| {
                serde_json::json!({
                    "id": z.id, "pid": z.pid, "packages": z.packages,
                    "parent": z.parent.as_ref().map(|p| p.id.clone()),
                    "forks": z.forks.load(Ordering::Relaxed),
                    "seeds": seeds.get(&z.packages).copied().unwrap_or(0),
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

    /// Kills every zygote, seed and spare sandbox (shutdown). Blocking.
    pub fn shutdown(&self) {
        // No refill may start now, and one in flight is waited for (it holds `refilling`).
        self.stopping.store(true, Ordering::SeqCst);
        let _refilling = self.refilling.lock();
        for (_, sandbox) in self.spares.drain() {
            sandbox.destroy();
        }
        let seeds = self.seeds.drain();
        for seed in seeds {
            seed.sandbox.destroy();
        }
        let nodes: Vec<_> = self.nodes.lock().drain().map(|(_, z)| z).collect();
        for z in nodes {
            z.kill();
        }
    }
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
