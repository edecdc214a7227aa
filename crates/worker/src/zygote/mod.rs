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
//!
//! This module and `seeds`, `learning` and `eviction` are the policy ([`Zygotes`]); what it
//! makes (zygote processes, sandboxes within them, children, instances) it makes through a
//! [`ZygoteHost`]: [`SandboxHost`] on real sandboxes (`host.rs`, `process.rs`), a fake in the
//! unit tests (`tests.rs`). See docs/adr/0006-worker-layering.md.

mod eviction;
pub(crate) mod host;
mod learning;
mod policy;
mod process;
mod seeds;
#[cfg(test)]
mod tests;

pub use host::{SandboxHost, Started, ZygoteHost, ZygoteProcess};
pub use learning::top_level_modules;

pub(crate) use process::read_reply;

use crate::lock::Lock;
use crate::registry::FunctionVersion;
use crate::sandboxes::{FunctionLimits, StartError};
use crate::spares::Reserve;
use learning::{submodules_of, WorkingSet};
use parking_lot::Mutex;
use serde::Deserialize;
use std::collections::{BTreeSet, HashMap};
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
    /// Seeds a zygote keeps at most after a burst: one that lately had N fork starts in flight
    /// at once keeps min(N, max_seeds) seeds (at least `seeds`), so that the next burst does
    /// not wait on the zygote's forks one after another.
    pub max_seeds: usize,
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
                // Web frameworks: OpenLambda's WSGI and ASGI apps.
                vec!["flask".into()],
                vec!["starlette".into()],
                vec!["fastapi".into()],
            ],
            memory_mb: 2048,
            idle_pause_secs: 60,
            min_available_mb: 1024,
            spare_sandboxes: 4,
            seeds: 1,
            max_seeds: 32,
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

/// One zygote, as the policy keeps it: its package set, its place in the tree, its use; its
/// process is the host's.
pub struct Zygote<P: ZygoteProcess> {
    pub id: String,
    pub packages: PackageSet,
    pub parent: Option<Arc<Zygote<P>>>,
    /// Its pid on the host.
    pub pid: i32,
    pub(crate) process: P,
    last_used: Mutex<Instant>,
    dead: AtomicBool,
    pub forks: AtomicU64,
    /// Whether it has started an instance (then it keeps seeds).
    serves_instances: AtomicBool,
    /// Fork starts in flight now.
    starting: AtomicUsize,
    /// The most fork starts it had in flight at once, and when.
    burst: Mutex<(usize, Instant)>,
    /// Modules that failed to preload (they are imported by the instance instead).
    pub failed_imports: Vec<String>,
}

impl<P: ZygoteProcess> Zygote<P> {
    /// Whether the zygote is gone: marked dead, or its process no longer exists.
    pub fn is_dead(&self) -> bool {
        if self.dead.load(Ordering::SeqCst) {
            return true;
        }
        if !self.process.is_alive() {
            self.dead.store(true, Ordering::SeqCst);
            return true;
        }
        false
    }

    /// Kills the zygote process. Its sandbox goes when the last sandbox made within it does
    /// (their pid namespaces lie inside its own).
    fn kill(&self) {
        self.dead.store(true, Ordering::SeqCst);
        self.process.kill();
    }

    /// Records a use (a request to the zygote).
    fn touch(&self) {
        *self.last_used.lock() = Instant::now();
    }

    /// When it was last used.
    fn last_used(&self) -> Instant {
        *self.last_used.lock()
    }

    /// Memory charged to the zygote's cgroup.
    pub fn memory_usage(&self) -> Option<u64> {
        self.process.memory_usage()
    }

    /// The most fork starts it had in flight at once within the last [`BURST_MEMORY`] (0: none
    /// that long).
    fn recent_burst(&self) -> usize {
        let (peak, at) = *self.burst.lock();
        if at.elapsed() <= BURST_MEMORY {
            peak
        } else {
            0
        }
    }

    /// Counts a fork start in flight until the returned guard drops.
    fn start_counted(&self) -> Starting<'_> {
        let now = self.starting.fetch_add(1, Ordering::SeqCst) + 1;
        let mut burst = self.burst.lock();
        let peak = if burst.1.elapsed() > BURST_MEMORY {
            0
        } else {
            burst.0
        };
        if now >= peak {
            *burst = (now, Instant::now());
        }
        Starting(&self.starting)
    }
}

/// A fork start in flight (see `Zygote::start_counted`).
struct Starting<'a>(&'a AtomicUsize);

impl Drop for Starting<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

/// How long a burst of fork starts keeps its zygote's seeds topped up to its size.
const BURST_MEMORY: Duration = Duration::from_secs(600);

impl<P: ZygoteProcess> Drop for Zygote<P> {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Every zygote of the worker, and the policy: which zygote serves a function (created on first
/// need, with its ancestors), seed or spare sandbox or a new sandbox for a fork start, refills,
/// learning and eviction. What it makes, it makes through its [`ZygoteHost`].
pub struct Zygotes<H: ZygoteHost = SandboxHost> {
    host: H,
    pub config: ZygoteConfig,
    nodes: Mutex<HashMap<PackageSet, Arc<Zygote<H::Process>>>>,
    /// Serializes creation so concurrent first uses create a zygote once.
    creating: Mutex<()>,
    /// Spare sandboxes made within zygotes' namespaces for their fork starts, by zygote id.
    spares: Reserve<String, H::Sandbox>,
    /// Seeds by the package set of the zygote they were forked from.
    seeds: Reserve<PackageSet, H::Child>,
    /// What seeds write ahead of need, by zygote package set.
    working_sets: Mutex<HashMap<PackageSet, WorkingSet>>,
    /// `/tmp` size of spare sandboxes: the worker's default.
    spare_tmp_mb: u64,
    refilling: Mutex<()>,
    refills_pending: AtomicUsize,
    stopping: AtomicBool,
}

impl<H: ZygoteHost> Zygotes<H> {
    pub fn new(host: H, config: ZygoteConfig, spare_tmp_mb: u64) -> Self {
        Self {
            host,
            config,
            nodes: Mutex::new(HashMap::new()),
            creating: Mutex::new(()),
            spares: Reserve::default(),
            seeds: Reserve::default(),
            working_sets: Mutex::new(HashMap::new()),
            spare_tmp_mb,
            refilling: Mutex::new(()),
            refills_pending: AtomicUsize::new(0),
            stopping: AtomicBool::new(false),
        }
    }

    /// The package sets of the zygotes a function could use, smallest first: the root (no
    /// packages), the operator's tree entries its lock contains, and (with `auto`) its whole lock.
    pub fn candidates(&self, lock: &Lock) -> Vec<PackageSet> {
        policy::candidates(&self.config, lock)
    }

    /// The deepest zygote for `function`, created (with its ancestors) if missing. Blocking.
    pub fn acquire(
        &self,
        function: &FunctionVersion,
    ) -> Result<Arc<Zygote<H::Process>>, ForkError> {
        if !self.config.enabled {
            return Err(ForkError::Disabled);
        }
        let sets = self.candidates(&function.lock);
        let target = sets.last().cloned().unwrap_or_default();
        if let Some(z) = self.live(&target) {
            return Ok(z);
        }
        let _guard = self.creating.lock();
        let mut parent: Option<Arc<Zygote<H::Process>>> = None;
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

    /// The zygote `function` forks from, if it is alive now (never made here).
    pub fn ready_for(&self, function: &FunctionVersion) -> Option<Arc<Zygote<H::Process>>> {
        if !self.config.enabled {
            return None;
        }
        let target = self.candidates(&function.lock).pop().unwrap_or_default();
        self.nodes
            .lock()
            .get(&target)
            .filter(|z| !z.is_dead())
            .cloned()
    }

    fn live(&self, set: &PackageSet) -> Option<Arc<Zygote<H::Process>>> {
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
        for sandbox in self.spares.remove(&id.to_string()) {
            self.host.destroy_sandbox(sandbox);
        }
    }

    /// Forgets a zygote that failed; the next need recreates it.
    pub fn discard(&self, z: &Arc<Zygote<H::Process>>) {
        z.dead.store(true, Ordering::SeqCst);
        {
            let mut nodes = self.nodes.lock();
            if nodes.get(&z.packages).is_some_and(|n| Arc::ptr_eq(n, z)) {
                nodes.remove(&z.packages);
            }
        }
        self.drop_spares(&z.id);
    }

    /// Creates the zygote for `set`: from scratch (the root), or forked from `parent`. Of
    /// `imports` (module names a function imports), the submodules of the set's packages are
    /// preloaded too, where they exist.
    fn create(
        &self,
        set: &PackageSet,
        parent: Option<Arc<Zygote<H::Process>>>,
        imports: &[String],
    ) -> Result<Zygote<H::Process>, ForkError> {
        let id = self.host.zygote_id();
        let inherited = parent
            .as_ref()
            .map(|p| p.packages.clone())
            .unwrap_or_default();
        let modules: Vec<String> = set
            .difference(&inherited)
            .flat_map(|k| self.host.top_level_modules(k))
            .collect();
        let mut imports = imports.to_vec();
        if let Some(ws) = self.working_sets.lock().get(set) {
            imports.extend(ws.modules.iter().cloned());
        }
        let submodules = submodules_of(&imports, &self.top_level_of(set));
        if let Some(p) = &parent {
            p.touch();
        }
        let started = self
            .host
            .start_zygote(&id, set, &modules, &submodules, parent.as_deref())?;
        Ok(Zygote {
            id,
            packages: set.clone(),
            parent,
            pid: started.pid,
            process: started.process,
            last_used: Mutex::new(Instant::now()),
            dead: AtomicBool::new(false),
            forks: AtomicU64::new(0),
            serves_instances: AtomicBool::new(false),
            starting: AtomicUsize::new(0),
            burst: Mutex::new((0, Instant::now())),
            failed_imports: started.failed_imports,
        })
    }

    /// Fork start: an instance of `function` forked from `zygote`. A seed of the zygote (a
    /// child forked ahead of need, waiting in a clean sandbox) becomes the instance when there is
    /// one and the function's mounts allow; else a child is forked now, into a spare sandbox of
    /// the zygote or one made for the function. Says whether a seed was used.
    pub fn fork_start(
        &self,
        zygote: &Zygote<H::Process>,
        function: &Arc<FunctionVersion>,
        limits: &FunctionLimits,
    ) -> Result<(H::Instance, Forked), ForkError> {
        zygote.serves_instances.store(true, Ordering::SeqCst);
        let _starting = zygote.start_counted();
        let forked = |pid, seeded| Forked {
            zygote: zygote.packages.clone(),
            pid,
            seeded,
        };
        let clean = policy::fits_clean_sandbox(limits, self.spare_tmp_mb);
        if clean {
            while let Some(seed) = self.seeds.take(&zygote.packages) {
                match self
                    .host
                    .assign(seed, &zygote.packages, function, limits, true)
                {
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
        let (sandbox, clean) = match spare {
            Some(sandbox) => (sandbox, true),
            None => (self.host.function_sandbox(zygote, function, limits)?, false),
        };
        let child = self.fork_child(zygote, sandbox, &[])?;
        let (instance, pid) = self
            .host
            .assign(child, &zygote.packages, function, limits, clean)?;
        Ok((instance, forked(pid, false)))
    }

    /// Switch start from a zygote: an instance of `function` forked from `zygote` into
    /// `sandbox`, another function's sandbox made clean for it, within the zygote's pid
    /// namespace; its code and the packages of its closure the zygote lacks are attached.
    pub fn fork_into(
        &self,
        zygote: &Zygote<H::Process>,
        sandbox: H::Sandbox,
        function: &Arc<FunctionVersion>,
        limits: &FunctionLimits,
    ) -> Result<H::Instance, ForkError> {
        let child = self.fork_child(zygote, sandbox, &[])?;
        let (instance, _) = self
            .host
            .assign(child, &zygote.packages, function, limits, true)?;
        Ok(instance)
    }

    /// Forks a child of `zygote` into `sandbox`, counting the fork. Destroys the sandbox on
    /// failure.
    fn fork_child(
        &self,
        zygote: &Zygote<H::Process>,
        sandbox: H::Sandbox,
        write_ahead: &[(u64, u64)],
    ) -> Result<H::Child, ForkError> {
        zygote.touch();
        let child = self.host.fork_child(zygote, sandbox, write_ahead)?;
        zygote.forks.fetch_add(1, Ordering::Relaxed);
        Ok(child)
    }

    /// Zygote sandboxes that exist, including those kept after their zygote died because
    /// sandboxes made within them (forked instances, seeds) still live.
    pub fn sandboxes(&self) -> usize {
        self.host.zygote_sandboxes()
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
                    "paused": z.process.is_paused(),
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
        for sandbox in self.spares.drain() {
            self.host.destroy_sandbox(sandbox);
        }
        for seed in self.seeds.drain() {
            self.host.destroy_child(seed);
        }
        let nodes: Vec<_> = self.nodes.lock().drain().map(|(_, z)| z).collect();
        for z in nodes {
            z.kill();
        }
    }
}
