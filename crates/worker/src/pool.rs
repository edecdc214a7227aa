//! The pool: idle instances kept warm per function, and the scheduling of each invocation onto
//! an instance — warm when an idle instance of the same function version exists, else forked
//! from a zygote, else cold — within the per-function instance limit, a bounded wait queue, and
//! the worker-wide sandbox limit (idle instances of other functions are evicted, least recently
//! used first). Idle instances are frozen (their cgroup's freezer) shortly after their reply and
//! thawed when taken, so that processes they left running get no CPU while nobody pays for it.
//!
//! This module is the scheduling policy only. It gets new instances through [`Starter`] (the
//! start methods other than warm) and handles them through [`PooledInstance`]; the worker's
//! implementations are in `starts.rs`, and the unit tests below use fakes, so the policy runs
//! without sandboxes, root or a kernel.

use crate::instance::{InvokeError, Reply};
use crate::metrics::Metrics;
use crate::registry::FunctionVersion;
use crate::sandboxes::{FunctionLimits, StartError};
use crate::zygote::{ForkError, Forked};
use kindling_sandbox::cgroup::CgroupError;
use parking_lot::Mutex;
use std::collections::HashMap;
use std::future::Future;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::Semaphore;

pub use kindling_api::StartMethod;

/// What the caller asked for (`X-Kindling-Start`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum StartPolicy {
    /// Warm if possible, else fork, else cold.
    #[default]
    Any,
    /// A new sandbox with an instance forked from a zygote (cold if no zygote can serve).
    Fork,
    /// Always a new sandbox and a fresh interpreter (benchmarks).
    Cold,
    /// An idle sandbox of another function, purged and given to this one (cold if none can
    /// serve).
    Switch,
}

/// Milliseconds spent in each phase of an invocation (`X-Kindling-Timing`).
pub use kindling_api::Timing;

/// An invocation that reached an instance.
#[derive(Debug)]
pub struct Outcome {
    pub start: StartMethod,
    pub timing: Timing,
    pub instance_id: String,
    /// Memory charged to the sandbox's cgroup right after the invocation.
    pub memory_bytes: Option<u64>,
    pub result: Result<Reply, InvokeError>,
}

/// Why an invocation never reached an instance.
#[derive(Debug, thiserror::Error)]
pub enum PoolError {
    #[error("too many requests for function `{0}`: its queue is full")]
    QueueFull(String),
    #[error("the worker is at its limit of {0} sandboxes, all busy")]
    NoCapacity(usize),
    #[error(transparent)]
    Start(#[from] StartError),
    #[error("the worker is shutting down")]
    ShuttingDown,
}

/// How the pool gets new instances: the start methods that make one (all but `warm`, which
/// is the pool's own). Calls other than [`Starter::replenish`] may block (the pool runs them on
/// blocking threads).
pub trait Starter: Send + Sync + 'static {
    /// The instances it makes.
    type Instance: PooledInstance;

    /// Whether fork starts may be tried at all (zygotes are enabled).
    fn forks(&self) -> bool;

    /// Switch start: the sandbox of `previous`, an idle instance of another function, made
    /// clean and given to `function`. Destroys the sandbox on failure.
    fn switch(
        &self,
        previous: Self::Instance,
        function: &Arc<FunctionVersion>,
        limits: &FunctionLimits,
    ) -> Result<Self::Instance, StartError>;

    /// Whether a switch of `previous`'s sandbox to `function` would fork the new instance from
    /// a ready zygote (fast) rather than start an interpreter (as slow as a cold one).
    fn forks_into(&self, function: &FunctionVersion, previous: &Self::Instance) -> bool;

    /// Memory charged now to what it keeps ahead of need (zygotes, seeds, spare sandboxes).
    fn memory_usage(&self) -> u64;

    /// Frees memory for the budget: drops seeds and spare sandboxes, or else evicts an idle
    /// zygote. False when nothing was left to free.
    fn shed(&self) -> bool;

    /// Cold start: a new sandbox and a fresh interpreter.
    fn cold(
        &self,
        function: &Arc<FunctionVersion>,
        limits: &FunctionLimits,
    ) -> Result<Self::Instance, StartError>;

    /// Fork start: an instance forked from the zygote that suits `function` (made if missing).
    fn fork(
        &self,
        function: &Arc<FunctionVersion>,
        limits: &FunctionLimits,
    ) -> Result<(Self::Instance, Forked), ForkError>;

    /// After a start that was not warm, off the request path: replaces what the start used (a
    /// seed, a spare sandbox), learning from a forked instance that served its first
    /// invocation (and the modules it reported importing) if given. Must not block.
    fn replenish(&self, learned: Option<(Forked, Vec<String>)>);

    /// Work it has in flight in the background (refills).
    fn background_pending(&self) -> usize;
}

/// What the pool needs of an instance.
pub trait PooledInstance: Send + 'static {
    /// Its sandbox's id.
    fn id(&self) -> &str;
    /// The version (code hash) of the function it serves.
    fn version(&self) -> &str;
    /// When its last invocation ended (or it was made).
    fn last_used(&self) -> Instant;
    /// Sends one event and waits for the reply, up to `timeout`.
    fn invoke(
        &mut self,
        request_id: &str,
        event: &[u8],
        timeout: Duration,
    ) -> impl Future<Output = Result<Reply, InvokeError>> + Send;
    /// The modules a forked instance reported importing beyond its zygote's (once).
    fn take_loaded_modules(&mut self) -> Vec<String>;
    /// Memory its sandbox is charged now.
    fn memory_usage(&self) -> Option<u64>;
    /// Whether its sandbox has a network.
    fn network(&self) -> bool;
    /// Whether its sandbox is frozen.
    fn is_frozen(&self) -> bool;
    /// Freezes or thaws its sandbox.
    fn set_frozen(&mut self, frozen: bool) -> Result<(), CgroupError>;
    /// Destroys its sandbox (blocking).
    fn destroy(self);
}

/// Pool limits.
#[derive(Debug, Clone)]
pub struct PoolConfig {
    pub keep_alive: Duration,
    /// How long after its reply an idle instance is frozen (None: never).
    pub freeze_idle_after: Option<Duration>,
    pub max_instances_per_function: usize,
    pub max_queue_per_function: usize,
    pub max_sandboxes: usize,
    /// The methods the default policy tries, in order (ends with cold).
    pub start_order: Vec<StartMethod>,
    /// Worker-wide memory budget in bytes (None: none).
    pub memory_budget: Option<u64>,
}

struct FunctionPool<I> {
    busy: Arc<Semaphore>,
    waiting: AtomicUsize,
    idle: Mutex<Vec<I>>,
    /// A task will freeze this function's idle instances (see [`Pool::freeze_idle`]).
    freeze_armed: AtomicBool,
}

/// Instances of every function.
pub struct Pool<S: Starter> {
    starter: Arc<S>,
    config: PoolConfig,
    metrics: Arc<Metrics>,
    functions: Mutex<HashMap<String, Arc<FunctionPool<S::Instance>>>>,
    live: Arc<AtomicUsize>,
    /// Sandboxes being destroyed in the background.
    destroying: Arc<AtomicUsize>,
    /// Memory limits of the instances busy now (charged against the budget).
    busy_memory: AtomicU64,
    /// False once freezing failed (a kernel without the freezer file): idle instances then
    /// stay unfrozen.
    freezing: Arc<AtomicBool>,
}

impl<S: Starter> Pool<S> {
    pub fn new(starter: Arc<S>, config: PoolConfig, metrics: Arc<Metrics>) -> Arc<Self> {
        Arc::new(Self {
            starter,
            config,
            metrics,
            functions: Mutex::new(HashMap::new()),
            live: Arc::new(AtomicUsize::new(0)),
            destroying: Arc::new(AtomicUsize::new(0)),
            busy_memory: AtomicU64::new(0),
            freezing: Arc::new(AtomicBool::new(true)),
        })
    }

    fn function_pool(&self, name: &str) -> Arc<FunctionPool<S::Instance>> {
        let mut map = self.functions.lock();
        map.entry(name.to_string())
            .or_insert_with(|| {
                Arc::new(FunctionPool {
                    busy: Arc::new(Semaphore::new(self.config.max_instances_per_function)),
                    waiting: AtomicUsize::new(0),
                    idle: Mutex::new(Vec::new()),
                    freeze_armed: AtomicBool::new(false),
                })
            })
            .clone()
    }

    /// Background work in flight: sandboxes being destroyed, refills of seeds and spare sandboxes.
    pub fn background_pending(&self) -> usize {
        self.destroying.load(Ordering::SeqCst) + self.starter.background_pending()
    }

    /// Sandboxes alive now (idle and busy).
    pub fn live_sandboxes(&self) -> usize {
        self.live.load(Ordering::Relaxed)
    }

    /// Idle instances now.
    pub fn idle_instances(&self) -> usize {
        let map = self.functions.lock();
        map.values().map(|f| f.idle.lock().len()).sum()
    }

    /// Runs one invocation of `function`.
    pub async fn invoke(
        &self,
        function: &Arc<FunctionVersion>,
        limits: &FunctionLimits,
        request_id: &str,
        event: &[u8],
        policy: StartPolicy,
    ) -> Result<Outcome, PoolError> {
        let t0 = Instant::now();
        let fp = self.function_pool(&function.name);
        let permit = match fp.busy.clone().try_acquire_owned() {
            Ok(p) => p,
            Err(_) => {
                // Counted while queued, also when the caller goes away mid-wait (the future is
                // dropped, and with it the guard).
                let queued = Queued::enter(&fp.waiting);
                if queued.position >= self.config.max_queue_per_function {
                    return Err(PoolError::QueueFull(function.name.clone()));
                }
                let p = fp.busy.clone().acquire_owned().await;
                drop(queued);
                p.map_err(|_| PoolError::ShuttingDown)?
            }
        };
        let mut timing = Timing {
            queue_ms: ms(t0.elapsed()),
            ..Timing::default()
        };
        let t = Instant::now();
        let (mut instance, start, forked) = self.start(&fp, function, limits, policy).await?;
        if start != StartMethod::Warm {
            timing.sandbox_ms = ms(t.elapsed());
        }
        let charge = Charge::new(&self.busy_memory, limits.memory_mb << 20);
        let t = Instant::now();
        let result = instance.invoke(request_id, event, limits.timeout).await;
        let in_instance = ms(t.elapsed());
        if start != StartMethod::Warm && self.starter.forks() {
            // Replace the seed or spare sandbox this start may have used, off the request path
            // and after the invocation, so that it does not compete with the new instance; a
            // forked instance that served its first invocation shows what seeds will write.
            let learn = forked
                .filter(|_| result.is_ok())
                .map(|f| (f, instance.take_loaded_modules()));
            self.starter.replenish(learn);
        }
        timing.handler_ms = result.as_ref().map(|r| r.handler_ms).unwrap_or(0.0);
        timing.instance_ms = (in_instance - timing.handler_ms).max(0.0);
        timing.total_ms = ms(t0.elapsed());
        let instance_id = instance.id().to_string();
        let memory_bytes = instance.memory_usage();
        let keep = match &result {
            Ok(_) => true,
            Err(e) => !e.is_fatal(),
        };
        if keep {
            let mut idle = fp.idle.lock();
            idle.push(instance);
            // Forced cold starts add instances without taking one; keep at most as many idle
            // instances as the function may run at once, dropping the least recently used.
            let surplus = if idle.len() > self.config.max_instances_per_function {
                Some(idle.remove(0))
            } else {
                None
            };
            drop(idle);
            if let Some(old) = surplus {
                self.destroy(old);
            }
            self.freeze_idle(&fp);
        } else {
            self.destroy(instance);
        }
        drop(charge);
        drop(permit);
        self.metrics.add("invocations", 1);
        self.metrics.add(&format!("start.{}", start.as_str()), 1);
        self.metrics
            .observe_latency(start.as_str(), timing.total_ms);
        Ok(Outcome {
            start,
            timing,
            instance_id,
            memory_bytes,
            result,
        })
    }

    /// The methods tried for `policy`, in order: the configured order, or a forced method and
    /// its fallback.
    fn order(&self, policy: StartPolicy) -> Vec<StartMethod> {
        match policy {
            StartPolicy::Any => self.config.start_order.clone(),
            StartPolicy::Switch => vec![StartMethod::Switch, StartMethod::Cold],
            StartPolicy::Fork => vec![StartMethod::Fork, StartMethod::Cold],
            StartPolicy::Cold => vec![StartMethod::Cold],
        }
    }

    /// Gets an instance of `function` by the first method of the policy's order that can
    /// serve; every method but warm first makes room within the memory budget.
    async fn start(
        &self,
        fp: &FunctionPool<S::Instance>,
        function: &Arc<FunctionVersion>,
        limits: &FunctionLimits,
        policy: StartPolicy,
    ) -> Result<(S::Instance, StartMethod, Option<Forked>), PoolError> {
        let need = limits.memory_mb << 20;
        // A sandbox counted for this start (fork and cold make one; a failed fork's goes to
        // the cold start after it).
        let mut reserved = false;
        let mut budgeted = false;
        for method in self.order(policy) {
            // A new sandbox must fit the budget; a switch makes room once it holds its victim
            // (whose usage it replaces).
            let adds_sandbox = matches!(method, StartMethod::Fork | StartMethod::Cold);
            if adds_sandbox && !budgeted {
                self.make_room(need).await;
                budgeted = true;
            }
            match method {
                StartMethod::Warm => {
                    if let Some(i) = self.take_idle(fp, function) {
                        return Ok((i, StartMethod::Warm, None));
                    }
                }
                StartMethod::Switch => {
                    let forced = policy == StartPolicy::Switch;
                    if let Some(i) = self.switch_start(function, limits, forced).await {
                        if reserved {
                            self.live.fetch_sub(1, Ordering::SeqCst);
                        }
                        return Ok((i, StartMethod::Switch, None));
                    }
                }
                StartMethod::Fork if !self.starter.forks() => {}
                StartMethod::Fork => {
                    if !reserved {
                        self.reserve_sandbox().await?;
                        reserved = true;
                    }
                    if let Some((i, f)) = self.fork_start(function, limits).await {
                        return Ok((i, StartMethod::Fork, Some(f)));
                    }
                }
                StartMethod::Cold => {
                    if !reserved {
                        self.reserve_sandbox().await?;
                    }
                    let starter = self.starter.clone();
                    let (f, l) = (function.clone(), limits.clone());
                    let made = tokio::task::spawn_blocking(move || starter.cold(&f, &l))
                        .await
                        .map_err(|e| StartError::Io(std::io::Error::other(e)))
                        .and_then(|r| r);
                    return match made {
                        Ok(i) => Ok((i, StartMethod::Cold, None)),
                        Err(e) => {
                            self.live.fetch_sub(1, Ordering::SeqCst);
                            Err(e.into())
                        }
                    };
                }
            }
        }
        // Orders end with cold (checked in the configuration).
        if reserved {
            self.live.fetch_sub(1, Ordering::SeqCst);
        }
        Err(PoolError::NoCapacity(self.config.max_sandboxes))
    }

    /// Tries a switch start: the least recently used idle instance of another function with
    /// the same network setting whose sandbox's usage fits `function`'s memory limit, purged
    /// and given to `function`. `None` sends the caller on, counted as `switch.fallback` when
    /// the switch failed or was `forced` (for the default policy, no idle sandbox to switch is
    /// the common case, not a fallback).
    async fn switch_start(
        &self,
        function: &Arc<FunctionVersion>,
        limits: &FunctionLimits,
        forced: bool,
    ) -> Option<S::Instance> {
        let Some(victim) = self.switch_victim(function, limits) else {
            if forced {
                self.metrics.add("switch.fallback", 1);
            }
            return None;
        };
        self.make_room(limits.memory_mb << 20).await;
        let starter = self.starter.clone();
        let (f, l) = (function.clone(), limits.clone());
        let result = tokio::task::spawn_blocking(move || starter.switch(victim, &f, &l)).await;
        match result {
            Ok(Ok(i)) => Some(i),
            failed => {
                // The starter destroyed the sandbox it could not switch.
                self.live.fetch_sub(1, Ordering::SeqCst);
                let why = match failed {
                    Ok(Err(e)) => crate::error_chain(&e),
                    Err(e) => e.to_string(),
                    Ok(Ok(_)) => String::new(),
                };
                tracing::warn!(function = %function.name, "switch start failed: {why}");
                self.metrics.add("switch.fallback", 1);
                None
            }
        }
    }

    /// Takes the idle instance a switch start of `function` would repurpose (see
    /// [`choose_switch_victim`]).
    fn switch_victim(
        &self,
        function: &FunctionVersion,
        limits: &FunctionLimits,
    ) -> Option<S::Instance> {
        let map = self.functions.lock();
        let candidates = map
            .iter()
            .filter(|(n, _)| **n != function.name)
            .flat_map(|(_, fp)| {
                let idle = fp.idle.lock();
                idle.iter()
                    .enumerate()
                    .map(|(pos, i)| Candidate {
                        pos,
                        last_used: i.last_used(),
                        network: i.network(),
                        memory_bytes: i.memory_usage(),
                        forks: self.starter.forks_into(function, i),
                        pool: fp.clone(),
                    })
                    .collect::<Vec<_>>()
            })
            .collect::<Vec<_>>();
        let chosen = choose_switch_victim(&candidates, limits.network, limits.memory_mb << 20)?;
        let c = &candidates[chosen];
        let mut idle = c.pool.idle.lock();
        // Under the map's lock, no other start took from this list meanwhile.
        (c.pos < idle.len()).then(|| idle.remove(c.pos))
    }

    /// Evicts idle instances (least recently used first), then what the starter keeps ahead of
    /// need (seeds, spare sandboxes, then idle zygotes), until a start of `need` bytes fits the
    /// memory budget; beyond that, the start goes ahead (counted as `budget.over`).
    async fn make_room(&self, need: u64) {
        let Some(budget) = self.config.memory_budget else {
            return;
        };
        loop {
            let used = self.used_memory();
            if used.saturating_add(need) <= budget {
                return;
            }
            match self.evict_lru() {
                Some(Some(destroyed)) => {
                    let _ = destroyed.await;
                    continue;
                }
                Some(None) => continue,
                None => {}
            }
            let starter = self.starter.clone();
            let shed = tokio::task::spawn_blocking(move || starter.shed())
                .await
                .unwrap_or(false);
            if !shed {
                self.metrics.add("budget.over", 1);
                return;
            }
        }
    }

    /// Memory charged against the budget: every busy instance at its limit (what it may grow
    /// to while it runs), every idle instance at its sandbox's usage, and what the starter
    /// keeps (zygotes, seeds, spare sandboxes).
    pub fn used_memory(&self) -> u64 {
        let idle: u64 = {
            let map = self.functions.lock();
            map.values()
                .map(|fp| {
                    fp.idle
                        .lock()
                        .iter()
                        .filter_map(|i| i.memory_usage())
                        .sum::<u64>()
                })
                .sum()
        };
        self.busy_memory.load(Ordering::SeqCst) + idle + self.starter.memory_usage()
    }

    /// Tries a fork start; `None` (counted as `fork.fallback`) sends the caller to a cold start.
    async fn fork_start(
        &self,
        function: &Arc<FunctionVersion>,
        limits: &FunctionLimits,
    ) -> Option<(S::Instance, Forked)> {
        if !self.starter.forks() {
            return None;
        }
        let starter = self.starter.clone();
        let (f, l) = (function.clone(), limits.clone());
        let result = tokio::task::spawn_blocking(move || starter.fork(&f, &l)).await;
        match result {
            Ok(Ok((i, forked))) => {
                if forked.seeded {
                    self.metrics.add("fork.seeded", 1);
                }
                Some((i, forked))
            }
            Ok(Err(e)) => {
                tracing::warn!(
                    function = %function.name,
                    "fork start failed, starting cold: {}",
                    crate::error_chain(&e)
                );
                self.metrics.add("fork.fallback", 1);
                None
            }
            Err(e) => {
                tracing::warn!("fork task failed: {e}");
                self.metrics.add("fork.fallback", 1);
                None
            }
        }
    }

    /// Takes the most recently used idle instance of this exact version, thawed; idle instances
    /// of an older version (or that cannot be thawed) are destroyed on the way.
    fn take_idle(
        &self,
        fp: &FunctionPool<S::Instance>,
        function: &FunctionVersion,
    ) -> Option<S::Instance> {
        let mut idle = fp.idle.lock();
        while let Some(mut i) = idle.pop() {
            if i.version() == function.hash {
                match i.set_frozen(false) {
                    Ok(()) => return Some(i),
                    Err(e) => {
                        tracing::warn!(instance = %i.id(), "cannot thaw an idle instance: {e}")
                    }
                }
            }
            self.destroy(i);
        }
        None
    }

    /// Freezes `fp`'s idle instances once they have been idle for `freeze_idle_after`, off the
    /// reply's path, in one task per function at most: it freezes those quiet long enough, under
    /// the lock [`Pool::take_idle`] takes them with, and sleeps until the next one is. The delay
    /// spares back-to-back calls a freeze and a thaw each (tens of µs).
    fn freeze_idle(&self, fp: &Arc<FunctionPool<S::Instance>>) {
        let Some(delay) = self.config.freeze_idle_after else {
            return;
        };
        // Invocations always run on the worker's runtime.
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return;
        };
        if !self.freezing.load(Ordering::Relaxed) || fp.freeze_armed.swap(true, Ordering::SeqCst) {
            return;
        }
        let (fp, freezing) = (fp.clone(), self.freezing.clone());
        // The next wait, or None once every idle instance is frozen. Disarms under the idle
        // lock: an instance idled after that arms a new task.
        let freeze_quiet = move || -> Option<Duration> {
            let mut idle = fp.idle.lock();
            let mut next: Option<Duration> = None;
            for instance in idle.iter_mut().filter(|i| !i.is_frozen()) {
                let quiet = instance.last_used().elapsed();
                if quiet < delay {
                    next = Some(next.map_or(delay - quiet, |n| n.min(delay - quiet)));
                } else if let Err(e) = instance.set_frozen(true) {
                    if matches!(e, kindling_sandbox::cgroup::CgroupError::FreezerJoin { .. }) {
                        // This instance's processes fork too fast to move; it stays unfrozen.
                        tracing::warn!(instance = %instance.id(), "cannot freeze: {e}");
                        continue;
                    }
                    if freezing.swap(false, Ordering::Relaxed) {
                        tracing::warn!(
                            "cannot freeze idle instances ({e}); they stay unfrozen, and their \
                             background processes keep running"
                        );
                    }
                    next = None;
                    break;
                }
            }
            if next.is_none() {
                fp.freeze_armed.store(false, Ordering::SeqCst);
            }
            next
        };
        runtime.spawn(async move {
            let mut wait = delay;
            loop {
                if !wait.is_zero() {
                    tokio::time::sleep(wait).await;
                }
                // Writes to cgroupfs, a few µs each: not worth a blocking thread.
                match freeze_quiet() {
                    Some(next) => wait = next,
                    None => return,
                }
            }
        });
    }

    /// Counts one more sandbox, evicting an idle one anywhere if the worker is full.
    async fn reserve_sandbox(&self) -> Result<(), PoolError> {
        loop {
            let live = self.live.load(Ordering::SeqCst);
            if live < self.config.max_sandboxes {
                if self
                    .live
                    .compare_exchange(live, live + 1, Ordering::SeqCst, Ordering::SeqCst)
                    .is_ok()
                {
                    return Ok(());
                }
                continue;
            }
            // The victim's sandbox counts until it is gone: wait for that, so that one sandbox
            // needed evicts one idle instance (counting again at once found the worker still
            // full and evicted the next, and the next).
            match self.evict_lru() {
                Some(Some(destroyed)) => {
                    let _ = destroyed.await;
                }
                Some(None) => {}
                None => return Err(PoolError::NoCapacity(self.config.max_sandboxes)),
            }
        }
    }

    /// Destroys the least recently used idle instance; `None` if there is none, else the task
    /// destroying it (if it runs in the background).
    fn evict_lru(&self) -> Option<Option<tokio::task::JoinHandle<()>>> {
        let map = self.functions.lock();
        let mut best: Option<(Instant, &Arc<FunctionPool<S::Instance>>)> = None;
        for fp in map.values() {
            let idle = fp.idle.lock();
            if let Some(oldest) = idle.iter().map(|i| i.last_used()).min() {
                if best.is_none_or(|(t, _)| oldest < t) {
                    best = Some((oldest, fp));
                }
            }
        }
        let (_, fp) = best?;
        let mut idle = fp.idle.lock();
        let pos = idle
            .iter()
            .enumerate()
            .min_by_key(|(_, i)| i.last_used())
            .map(|(n, _)| n)?;
        let victim = idle.remove(pos);
        drop(idle);
        self.metrics.add("evictions", 1);
        Some(self.destroy(victim))
    }

    /// Destroys an instance's sandbox in the background (the returned task), or at once
    /// outside a runtime.
    fn destroy(&self, instance: S::Instance) -> Option<tokio::task::JoinHandle<()>> {
        let live = self.live.clone();
        let metrics = self.metrics.clone();
        let destroying = self.destroying.clone();
        destroying.fetch_add(1, Ordering::SeqCst);
        let work = move || {
            instance.destroy();
            live.fetch_sub(1, Ordering::SeqCst);
            destroying.fetch_sub(1, Ordering::SeqCst);
            metrics.add("sandboxes.destroyed", 1);
        };
        match tokio::runtime::Handle::try_current() {
            Ok(h) => Some(h.spawn_blocking(work)),
            Err(_) => {
                work();
                None
            }
        }
    }

    /// Destroys idle instances of `name` (after a redeploy or removal).
    pub fn invalidate(&self, name: &str) {
        let fp = self.functions.lock().get(name).cloned();
        if let Some(fp) = fp {
            let drained: Vec<_> = fp.idle.lock().drain(..).collect();
            for i in drained {
                self.destroy(i);
            }
        }
    }

    /// Destroys idle instances unused for longer than the keep-alive.
    pub fn expire_idle(&self) {
        let now = Instant::now();
        let pools: Vec<_> = self.functions.lock().values().cloned().collect();
        for fp in pools {
            let expired: Vec<_> = {
                let mut idle = fp.idle.lock();
                let (old, keep): (Vec<_>, Vec<_>) = idle
                    .drain(..)
                    .partition(|i| now.duration_since(i.last_used()) >= self.config.keep_alive);
                *idle = keep;
                old
            };
            for i in expired {
                self.metrics.add("expired", 1);
                self.destroy(i);
            }
        }
    }

    /// Destroys every idle instance and refuses new work (shutdown). Blocking.
    pub fn shutdown(&self) {
        let pools: Vec<_> = self.functions.lock().values().cloned().collect();
        for fp in pools {
            fp.busy.close();
            let drained: Vec<_> = fp.idle.lock().drain(..).collect();
            for i in drained {
                i.destroy();
                self.live.fetch_sub(1, Ordering::SeqCst);
            }
        }
    }
}

/// An idle instance a switch start could repurpose.
struct Candidate<I> {
    /// Its place in its function's idle list.
    pos: usize,
    last_used: Instant,
    network: bool,
    memory_bytes: Option<u64>,
    /// The new instance would be forked into it (see [`Starter::forks_into`]).
    forks: bool,
    pool: Arc<FunctionPool<I>>,
}

/// Which of `candidates` (idle instances of other functions) a switch start repurposes: of
/// those with the same network setting (a sandbox's network namespace stays) whose usage is
/// known and fits the new function's memory limit (else it would be killed at once), one the
/// new instance can be forked into if any (a switch that must start an interpreter costs what a
/// cold start does), the least recently used first.
fn choose_switch_victim<I>(
    candidates: &[Candidate<I>],
    network: bool,
    memory_limit: u64,
) -> Option<usize> {
    candidates
        .iter()
        .enumerate()
        .filter(|(_, c)| c.network == network)
        .filter(|(_, c)| c.memory_bytes.is_some_and(|m| m <= memory_limit))
        .min_by_key(|(_, c)| (!c.forks, c.last_used))
        .map(|(n, _)| n)
}

/// Memory a busy instance holds against the budget, given back on drop.
struct Charge<'a> {
    counter: &'a AtomicU64,
    bytes: u64,
}

impl<'a> Charge<'a> {
    fn new(counter: &'a AtomicU64, bytes: u64) -> Self {
        counter.fetch_add(bytes, Ordering::SeqCst);
        Self { counter, bytes }
    }
}

impl Drop for Charge<'_> {
    fn drop(&mut self) {
        self.counter.fetch_sub(self.bytes, Ordering::SeqCst);
    }
}

/// One place in a function's wait queue, given back on drop.
struct Queued<'a> {
    counter: &'a AtomicUsize,
    /// Callers already waiting when this one arrived.
    position: usize,
}

impl<'a> Queued<'a> {
    fn enter(counter: &'a AtomicUsize) -> Self {
        let position = counter.fetch_add(1, Ordering::SeqCst);
        Self { counter, position }
    }
}

impl Drop for Queued<'_> {
    fn drop(&mut self) {
        self.counter.fetch_sub(1, Ordering::SeqCst);
    }
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    //! The scheduling policy on fake instances: no sandbox, no root, milliseconds.

    use super::*;
    use crate::function_config::{Format, FunctionConfig};
    use crate::lock::Lock;
    use std::path::PathBuf;
    use tokio::sync::Semaphore;

    /// What the fakes did.
    #[derive(Default)]
    struct Log {
        cold: AtomicUsize,
        fork_tries: AtomicUsize,
        /// Sandboxes switched: (previous instance's id, function it went to).
        switched: Mutex<Vec<(String, String)>>,
        shed: AtomicUsize,
        replenished: AtomicUsize,
        destroyed: Mutex<Vec<String>>,
    }

    impl Log {
        fn destroyed(&self) -> Vec<String> {
            self.destroyed.lock().clone()
        }
    }

    struct FakeInstance {
        id: String,
        version: String,
        network: bool,
        memory: u64,
        last_used: Instant,
        frozen: bool,
        /// Invocations wait for a permit of this (held until released by the test).
        gate: Option<Arc<Semaphore>>,
        log: Arc<Log>,
    }

    impl PooledInstance for FakeInstance {
        fn id(&self) -> &str {
            &self.id
        }
        fn version(&self) -> &str {
            &self.version
        }
        fn last_used(&self) -> Instant {
            self.last_used
        }
        async fn invoke(
            &mut self,
            _request_id: &str,
            event: &[u8],
            _timeout: Duration,
        ) -> Result<Reply, InvokeError> {
            if let Some(g) = &self.gate {
                drop(g.acquire().await.unwrap());
            }
            self.last_used = Instant::now();
            match event {
                b"die" => Err(InvokeError::Died("fake".into())),
                b"raise" => Err(InvokeError::Handler("Traceback".into())),
                _ => Ok(Reply {
                    body: event.to_vec().into(),
                    http: None,
                    handler_ms: 0.1,
                }),
            }
        }
        fn take_loaded_modules(&mut self) -> Vec<String> {
            Vec::new()
        }
        fn memory_usage(&self) -> Option<u64> {
            Some(self.memory)
        }
        fn network(&self) -> bool {
            self.network
        }
        fn is_frozen(&self) -> bool {
            self.frozen
        }
        fn set_frozen(&mut self, frozen: bool) -> Result<(), CgroupError> {
            self.frozen = frozen;
            Ok(())
        }
        fn destroy(self) {
            self.log.destroyed.lock().push(self.id);
        }
    }

    /// How the fake starter starts instances.
    #[derive(Default)]
    struct FakeStarter {
        log: Arc<Log>,
        /// Zygotes enabled.
        forks: bool,
        /// Fork starts fail (no zygote can serve).
        fork_fails: bool,
        gate: Option<Arc<Semaphore>>,
        next: AtomicUsize,
        /// Memory of each instance it makes (default 1 MB).
        instance_memory: Option<u64>,
        /// Memory of what it keeps ahead of need.
        kept_memory: AtomicU64,
        /// How many times `shed` frees something (each frees `kept_memory / left`).
        sheddable: AtomicUsize,
    }

    impl FakeStarter {
        fn make(&self, function: &FunctionVersion) -> FakeInstance {
            let n = self.next.fetch_add(1, Ordering::SeqCst);
            FakeInstance {
                id: format!("{}-{n}", function.name),
                version: function.hash.clone(),
                network: function.config.network.unwrap_or(false),
                memory: self.instance_memory.unwrap_or(1 << 20),
                last_used: Instant::now(),
                frozen: false,
                gate: self.gate.clone(),
                log: self.log.clone(),
            }
        }
    }

    impl Starter for FakeStarter {
        type Instance = FakeInstance;
        fn forks(&self) -> bool {
            self.forks
        }
        fn cold(
            &self,
            function: &Arc<FunctionVersion>,
            _limits: &FunctionLimits,
        ) -> Result<FakeInstance, StartError> {
            self.log.cold.fetch_add(1, Ordering::SeqCst);
            Ok(self.make(function))
        }
        fn fork(
            &self,
            function: &Arc<FunctionVersion>,
            _limits: &FunctionLimits,
        ) -> Result<(FakeInstance, Forked), ForkError> {
            self.log.fork_tries.fetch_add(1, Ordering::SeqCst);
            if self.fork_fails {
                return Err(ForkError::NotReady("no zygote".into()));
            }
            let forked = Forked {
                zygote: Default::default(),
                pid: 1,
                seeded: false,
            };
            Ok((self.make(function), forked))
        }
        fn switch(
            &self,
            previous: FakeInstance,
            function: &Arc<FunctionVersion>,
            _limits: &FunctionLimits,
        ) -> Result<FakeInstance, StartError> {
            self.log
                .switched
                .lock()
                .push((previous.id.clone(), function.name.clone()));
            Ok(FakeInstance {
                version: function.hash.clone(),
                memory: self.instance_memory.unwrap_or(1 << 20),
                ..previous
            })
        }
        fn forks_into(&self, _function: &FunctionVersion, previous: &FakeInstance) -> bool {
            previous.id.starts_with("forkable")
        }
        fn memory_usage(&self) -> u64 {
            self.kept_memory.load(Ordering::SeqCst)
        }
        fn shed(&self) -> bool {
            let left = self.sheddable.load(Ordering::SeqCst);
            if left == 0 {
                return false;
            }
            let kept = self.kept_memory.load(Ordering::SeqCst);
            self.kept_memory
                .fetch_sub(kept / left as u64, Ordering::SeqCst);
            self.sheddable.fetch_sub(1, Ordering::SeqCst);
            self.log.shed.fetch_add(1, Ordering::SeqCst);
            true
        }
        fn replenish(&self, _learned: Option<(Forked, Vec<String>)>) {
            self.log.replenished.fetch_add(1, Ordering::SeqCst);
        }
        fn background_pending(&self) -> usize {
            0
        }
    }

    fn function(name: &str, hash: &str) -> Arc<FunctionVersion> {
        Arc::new(FunctionVersion {
            name: name.into(),
            hash: hash.into(),
            format: Format::OpenLambda,
            dir: PathBuf::new(),
            config: FunctionConfig::default(),
            lock: Lock::default(),
            imports: Vec::new(),
            entry: Default::default(),
        })
    }

    fn limits() -> FunctionLimits {
        FunctionLimits {
            memory_mb: 64,
            timeout: Duration::from_secs(5),
            cpu_cores: 1.0,
            pids: 8,
            tmp_mb: 8,
            network: false,
        }
    }

    fn config() -> PoolConfig {
        PoolConfig {
            keep_alive: Duration::from_secs(3600),
            freeze_idle_after: None,
            max_instances_per_function: 2,
            max_queue_per_function: 1,
            max_sandboxes: 8,
            start_order: crate::config::DEFAULT_START_ORDER.to_vec(),
            memory_budget: None,
        }
    }

    fn pool(starter: FakeStarter, config: PoolConfig) -> Arc<Pool<FakeStarter>> {
        Pool::new(Arc::new(starter), config, Arc::new(Metrics::default()))
    }

    async fn run(
        pool: &Pool<FakeStarter>,
        f: &Arc<FunctionVersion>,
        event: &str,
        policy: StartPolicy,
    ) -> Result<Outcome, PoolError> {
        pool.invoke(f, &limits(), "req", event.as_bytes(), policy)
            .await
    }

    /// Waits (a bounded time) until `cond` holds: background destruction runs on blocking
    /// threads.
    async fn eventually(cond: impl Fn() -> bool) {
        for _ in 0..500 {
            if cond() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        panic!("condition never held");
    }

    #[tokio::test]
    async fn cold_then_warm_and_a_new_version_is_cold() {
        let p = pool(FakeStarter::default(), config());
        let f = function("f", "v1");
        let first = run(&p, &f, "{}", StartPolicy::Any).await.unwrap();
        assert_eq!(first.start, StartMethod::Cold);
        assert_eq!(first.result.unwrap().body, &b"{}"[..]);
        let second = run(&p, &f, "{}", StartPolicy::Any).await.unwrap();
        assert_eq!(second.start, StartMethod::Warm);
        assert_eq!(second.instance_id, first.instance_id);
        // A forced cold start adds an instance; a forced fork without zygotes is cold.
        let forced = run(&p, &f, "{}", StartPolicy::Cold).await.unwrap();
        assert_eq!(forced.start, StartMethod::Cold);
        assert_eq!(
            run(&p, &f, "{}", StartPolicy::Fork).await.unwrap().start,
            StartMethod::Cold
        );
        // The idle instances of the old version go when the new one is invoked.
        let v2 = function("f", "v2");
        assert_eq!(
            run(&p, &v2, "{}", StartPolicy::Any).await.unwrap().start,
            StartMethod::Cold
        );
        // f-0 went as the idle instance beyond the function's limit, f-1 and f-2 as old ones.
        let log = p.starter.log.clone();
        eventually(|| log.destroyed().len() == 3).await;
        let mut destroyed = log.destroyed();
        destroyed.sort();
        assert_eq!(destroyed, ["f-0", "f-1", "f-2"]);
        assert_eq!(first.instance_id, "f-0");
    }

    #[tokio::test]
    async fn fork_start_when_zygotes_serve_else_fallback_to_cold() {
        let p = pool(
            FakeStarter {
                forks: true,
                ..Default::default()
            },
            config(),
        );
        let f = function("f", "v1");
        let o = run(&p, &f, "{}", StartPolicy::Any).await.unwrap();
        assert_eq!(o.start, StartMethod::Fork);
        assert_eq!(p.starter.log.replenished.load(Ordering::SeqCst), 1);
        assert_eq!(
            run(&p, &f, "{}", StartPolicy::Any).await.unwrap().start,
            StartMethod::Warm
        );
        // Warm starts use no seed or spare: nothing to replenish.
        assert_eq!(p.starter.log.replenished.load(Ordering::SeqCst), 1);

        let p = pool(
            FakeStarter {
                forks: true,
                fork_fails: true,
                ..Default::default()
            },
            config(),
        );
        let o = run(&p, &f, "{}", StartPolicy::Fork).await.unwrap();
        assert_eq!(o.start, StartMethod::Cold);
        assert_eq!(p.starter.log.fork_tries.load(Ordering::SeqCst), 1);
        assert_eq!(p.starter.log.cold.load(Ordering::SeqCst), 1);
        // A forced cold start never tries a zygote.
        run(&p, &f, "{}", StartPolicy::Cold).await.unwrap();
        assert_eq!(p.starter.log.fork_tries.load(Ordering::SeqCst), 1);
    }

    #[tokio::test]
    async fn per_function_limit_then_a_bounded_queue() {
        let gate = Arc::new(Semaphore::new(0));
        let p = pool(
            FakeStarter {
                gate: Some(gate.clone()),
                ..Default::default()
            },
            PoolConfig {
                // g must make a sandbox of its own, not take f's idle one.
                start_order: vec![StartMethod::Warm, StartMethod::Cold],
                ..config()
            },
        );
        let f = function("f", "v1");
        let calls: Vec<_> = (0..3)
            .map(|_| {
                let (p, f) = (p.clone(), f.clone());
                tokio::spawn(async move { run(&p, &f, "{}", StartPolicy::Any).await })
            })
            .collect();
        // Two instances at most (max_instances_per_function), the third call waits in the queue.
        let log = p.starter.log.clone();
        eventually(|| log.cold.load(Ordering::SeqCst) == 2).await;
        eventually(|| p.function_pool("f").waiting.load(Ordering::SeqCst) == 1).await;
        // The queue holds one (max_queue_per_function): the next call is refused at once.
        match run(&p, &f, "{}", StartPolicy::Any).await {
            Err(PoolError::QueueFull(name)) => assert_eq!(name, "f"),
            other => panic!("{other:?}"),
        }
        // Another function is not held up by this one's queue.
        gate.add_permits(1);
        let g = function("g", "v1");
        let other = tokio::spawn({
            let p = p.clone();
            async move { run(&p, &g, "{}", StartPolicy::Any).await }
        });
        gate.add_permits(10);
        assert!(other.await.unwrap().is_ok());
        let mut starts = Vec::new();
        for c in calls {
            starts.push(c.await.unwrap().unwrap().start);
        }
        // The queued call took an instance that had finished: warm, never a third sandbox.
        assert_eq!(log.cold.load(Ordering::SeqCst), 3);
        assert!(starts.contains(&StartMethod::Warm), "{starts:?}");
        assert_eq!(p.function_pool("f").waiting.load(Ordering::SeqCst), 0);
    }

    #[tokio::test]
    async fn keep_alive_expiry() {
        let p = pool(FakeStarter::default(), config());
        let f = function("f", "v1");
        let o = run(&p, &f, "{}", StartPolicy::Any).await.unwrap();
        p.expire_idle();
        assert_eq!(p.idle_instances(), 1, "kept within the keep-alive");
        let p2 = pool(
            FakeStarter::default(),
            PoolConfig {
                keep_alive: Duration::ZERO,
                ..config()
            },
        );
        let o2 = run(&p2, &f, "{}", StartPolicy::Any).await.unwrap();
        p2.expire_idle();
        assert_eq!(p2.idle_instances(), 0);
        let log = p2.starter.log.clone();
        eventually(|| log.destroyed() == vec![o2.instance_id.clone()]).await;
        eventually(|| p2.live_sandboxes() == 0).await;
        assert_eq!(p.live_sandboxes(), 1);
        assert!(p.starter.log.destroyed().is_empty(), "{}", o.instance_id);
    }

    #[tokio::test]
    async fn lru_eviction_at_max_sandboxes_and_no_capacity_when_all_are_busy() {
        let p = pool(
            FakeStarter::default(),
            PoolConfig {
                max_sandboxes: 2,
                start_order: vec![StartMethod::Warm, StartMethod::Cold],
                ..config()
            },
        );
        let (a, b, c) = (function("a", "1"), function("b", "1"), function("c", "1"));
        let oa = run(&p, &a, "{}", StartPolicy::Any).await.unwrap();
        tokio::time::sleep(Duration::from_millis(2)).await;
        let ob = run(&p, &b, "{}", StartPolicy::Any).await.unwrap();
        tokio::time::sleep(Duration::from_millis(2)).await;
        // a was used last longest ago: c's sandbox takes its place.
        run(&p, &c, "{}", StartPolicy::Any).await.unwrap();
        let log = p.starter.log.clone();
        eventually(|| log.destroyed() == vec![oa.instance_id.clone()]).await;
        assert_eq!(p.live_sandboxes(), 2);
        // b is warm still.
        let again = run(&p, &b, "{}", StartPolicy::Any).await.unwrap();
        assert_eq!(again.instance_id, ob.instance_id);

        // With every sandbox busy, nothing can be evicted.
        let gate = Arc::new(Semaphore::new(0));
        let p = pool(
            FakeStarter {
                gate: Some(gate.clone()),
                ..Default::default()
            },
            PoolConfig {
                max_sandboxes: 1,
                ..config()
            },
        );
        let busy = tokio::spawn({
            let (p, a) = (p.clone(), a.clone());
            async move { run(&p, &a, "{}", StartPolicy::Any).await }
        });
        let log = p.starter.log.clone();
        eventually(|| log.cold.load(Ordering::SeqCst) == 1).await;
        match run(&p, &b, "{}", StartPolicy::Any).await {
            Err(PoolError::NoCapacity(1)) => {}
            other => panic!("{other:?}"),
        }
        gate.add_permits(1);
        assert!(busy.await.unwrap().is_ok());
    }

    #[tokio::test]
    async fn a_dead_instance_goes_a_handler_error_keeps_it() {
        let p = pool(FakeStarter::default(), config());
        let f = function("f", "v1");
        let o = run(&p, &f, "raise", StartPolicy::Any).await.unwrap();
        assert!(matches!(o.result, Err(InvokeError::Handler(_))));
        assert_eq!(p.idle_instances(), 1);
        let o = run(&p, &f, "die", StartPolicy::Any).await.unwrap();
        assert_eq!(o.start, StartMethod::Warm);
        assert!(matches!(o.result, Err(InvokeError::Died(_))));
        assert_eq!(p.idle_instances(), 0);
        let log = p.starter.log.clone();
        eventually(|| log.destroyed() == vec![o.instance_id.clone()]).await;
        assert_eq!(p.live_sandboxes(), 0);
    }

    #[tokio::test]
    async fn idle_instances_beyond_the_function_limit_are_dropped() {
        let p = pool(FakeStarter::default(), config());
        let f = function("f", "v1");
        for _ in 0..3 {
            run(&p, &f, "{}", StartPolicy::Cold).await.unwrap();
        }
        assert_eq!(p.idle_instances(), 2);
        let log = p.starter.log.clone();
        eventually(|| log.destroyed() == vec!["f-0".to_string()]).await;
    }

    fn networked(name: &str) -> Arc<FunctionVersion> {
        let mut f = (*function(name, "1")).clone();
        f.config.network = Some(true);
        Arc::new(f)
    }

    fn limits_of(memory_mb: u64, network: bool) -> FunctionLimits {
        FunctionLimits {
            memory_mb,
            network,
            ..limits()
        }
    }

    #[tokio::test]
    async fn switch_takes_the_lru_idle_sandbox_of_another_function_with_the_same_network() {
        let p = pool(FakeStarter::default(), config());
        let (a, b, n) = (function("a", "1"), function("b", "1"), networked("n"));
        let on = limits_of(64, true);
        let na = p
            .invoke(&n, &on, "r", b"{}", StartPolicy::Cold)
            .await
            .unwrap();
        tokio::time::sleep(Duration::from_millis(2)).await;
        let oa = run(&p, &a, "{}", StartPolicy::Cold).await.unwrap();
        tokio::time::sleep(Duration::from_millis(2)).await;
        run(&p, &b, "{}", StartPolicy::Cold).await.unwrap();
        // The default order tries switch before cold: c takes a's sandbox (the least recently
        // used without network; n's is older but networked), b's stays warm.
        let c = function("c", "1");
        let oc = run(&p, &c, "{}", StartPolicy::Any).await.unwrap();
        assert_eq!(oc.start, StartMethod::Switch);
        assert_eq!(oc.instance_id, oa.instance_id);
        assert_eq!(
            p.starter.log.switched.lock().clone(),
            vec![(oa.instance_id.clone(), "c".to_string())]
        );
        assert_eq!(p.live_sandboxes(), 3, "a switch makes no sandbox");
        // A networked function takes the networked sandbox only.
        let m = networked("m");
        let om = p
            .invoke(&m, &on, "r", b"{}", StartPolicy::Switch)
            .await
            .unwrap();
        assert_eq!(om.start, StartMethod::Switch);
        assert_eq!(om.instance_id, na.instance_id);
        // Never its own function's idle instance: that is a warm start.
        let only = pool(FakeStarter::default(), config());
        run(&only, &a, "{}", StartPolicy::Any).await.unwrap();
        let o = run(&only, &a, "{}", StartPolicy::Switch).await.unwrap();
        assert_eq!(o.start, StartMethod::Cold);
        assert_eq!(only.metrics.stats(&[]).count("switch.fallback"), 1);
    }

    #[tokio::test]
    async fn switch_prefers_a_sandbox_it_can_fork_into() {
        let p = pool(FakeStarter::default(), config());
        run(&p, &function("plain", "1"), "{}", StartPolicy::Cold)
            .await
            .unwrap();
        tokio::time::sleep(Duration::from_millis(2)).await;
        let f = run(&p, &function("forkable", "1"), "{}", StartPolicy::Cold)
            .await
            .unwrap();
        let o = run(&p, &function("c", "1"), "{}", StartPolicy::Switch)
            .await
            .unwrap();
        assert_eq!(
            o.instance_id, f.instance_id,
            "not the older one it would exec in"
        );
    }

    #[tokio::test]
    async fn switch_never_into_a_sandbox_using_more_than_the_new_limit() {
        let p = pool(
            FakeStarter {
                instance_memory: Some(100 << 20),
                ..Default::default()
            },
            config(),
        );
        run(&p, &function("big", "1"), "{}", StartPolicy::Any)
            .await
            .unwrap();
        let small = function("small", "1");
        let o = p
            .invoke(
                &small,
                &limits_of(64, false),
                "r",
                b"{}",
                StartPolicy::Switch,
            )
            .await
            .unwrap();
        assert_eq!(o.start, StartMethod::Cold);
        let o = p
            .invoke(
                &function("fits", "1"),
                &limits_of(128, false),
                "r",
                b"{}",
                StartPolicy::Switch,
            )
            .await
            .unwrap();
        assert_eq!(o.start, StartMethod::Switch);
    }

    #[test]
    fn the_switch_victim() {
        let now = Instant::now();
        let pool = Arc::new(FunctionPool::<FakeInstance> {
            busy: Arc::new(Semaphore::new(1)),
            waiting: AtomicUsize::new(0),
            idle: Mutex::new(Vec::new()),
            freeze_armed: AtomicBool::new(false),
        });
        let c = |age_ms: u64, network: bool, memory: Option<u64>| Candidate {
            pos: 0,
            last_used: now - Duration::from_millis(age_ms),
            network,
            memory_bytes: memory,
            forks: false,
            pool: pool.clone(),
        };
        let mb = |n: u64| Some(n << 20);
        let list = [
            c(10, false, mb(10)),
            c(50, true, mb(10)),
            c(40, false, mb(200)),
            c(30, false, None),
            c(20, false, mb(64)),
        ];
        // The oldest without network whose usage is known and fits 64 MB.
        assert_eq!(choose_switch_victim(&list, false, 64 << 20), Some(4));
        assert_eq!(choose_switch_victim(&list, false, 256 << 20), Some(2));
        assert_eq!(choose_switch_victim(&list, true, 64 << 20), Some(1));
        assert_eq!(choose_switch_victim(&list, true, 1 << 20), None);
        assert_eq!(choose_switch_victim(&list[..1], true, 64 << 20), None);
        // One the new instance can be forked into goes first, however recently used.
        let mut list = list;
        list[0].forks = true;
        assert_eq!(choose_switch_victim(&list, false, 64 << 20), Some(0));
    }

    #[tokio::test]
    async fn the_configured_order_is_followed() {
        let order = |o: &[StartMethod]| PoolConfig {
            start_order: o.to_vec(),
            ..config()
        };
        use StartMethod::*;
        let forks = || FakeStarter {
            forks: true,
            ..Default::default()
        };
        let (a, b) = (function("a", "1"), function("b", "1"));
        // Switch before fork: b takes a's idle sandbox.
        let p = pool(forks(), order(&[Warm, Switch, Fork, Cold]));
        run(&p, &a, "{}", StartPolicy::Any).await.unwrap();
        let o = run(&p, &b, "{}", StartPolicy::Any).await.unwrap();
        assert_eq!(o.start, Switch);
        // Fork before switch: b forks, a stays idle.
        let p = pool(forks(), order(&[Warm, Fork, Switch, Cold]));
        assert_eq!(
            run(&p, &a, "{}", StartPolicy::Any).await.unwrap().start,
            Fork
        );
        assert_eq!(
            run(&p, &b, "{}", StartPolicy::Any).await.unwrap().start,
            Fork
        );
        assert_eq!(p.idle_instances(), 2);
        // Cold only: never warm, never a zygote (the keepalive baseline without warm).
        let p = pool(forks(), order(&[Cold]));
        run(&p, &a, "{}", StartPolicy::Any).await.unwrap();
        assert_eq!(
            run(&p, &a, "{}", StartPolicy::Any).await.unwrap().start,
            Cold
        );
        assert_eq!(p.starter.log.fork_tries.load(Ordering::SeqCst), 0);
        // Warm then cold (the keepalive baseline).
        let p = pool(forks(), order(&[Warm, Cold]));
        run(&p, &a, "{}", StartPolicy::Any).await.unwrap();
        assert_eq!(
            run(&p, &a, "{}", StartPolicy::Any).await.unwrap().start,
            Warm
        );
        assert_eq!(
            run(&p, &b, "{}", StartPolicy::Any).await.unwrap().start,
            Cold
        );
        // A forced method is tried whatever the order.
        assert_eq!(
            run(&p, &function("c", "1"), "{}", StartPolicy::Fork)
                .await
                .unwrap()
                .start,
            Fork
        );
    }

    #[tokio::test]
    async fn the_budget_evicts_idle_instances_lru_then_sheds_what_the_starter_keeps() {
        let budget = PoolConfig {
            memory_budget: Some(210 << 20),
            start_order: vec![StartMethod::Warm, StartMethod::Cold],
            ..config()
        };
        let p = pool(
            FakeStarter {
                instance_memory: Some(50 << 20),
                kept_memory: AtomicU64::new(40 << 20),
                sheddable: AtomicUsize::new(2),
                ..Default::default()
            },
            budget,
        );
        // 40 MB kept by the starter; each instance is charged its 64 MB limit while busy and
        // its 50 MB usage once idle.
        let names = ["a", "b", "c"];
        let mut ids = Vec::new();
        for n in names {
            let o = run(&p, &function(n, "1"), "{}", StartPolicy::Any)
                .await
                .unwrap();
            ids.push(o.instance_id);
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        // 40 + 3 × 50 = 190 MB: a start of 110 MB must free 90: a and b go, oldest first,
        // before anything the starter keeps.
        assert_eq!(p.used_memory(), 190 << 20);
        p.invoke(
            &function("d", "1"),
            &limits_of(110, false),
            "r",
            b"{}",
            StartPolicy::Any,
        )
        .await
        .unwrap();
        let log = p.starter.log.clone();
        eventually(|| log.destroyed().len() == 2).await;
        assert_eq!(log.destroyed(), ids[..2].to_vec());
        assert_eq!(log.shed.load(Ordering::SeqCst), 0);
        assert_eq!(p.used_memory(), 140 << 20);
        // A start that idle instances alone cannot make room for sheds the starter's too.
        let gate = Arc::new(Semaphore::new(0));
        let p2 = pool(
            FakeStarter {
                instance_memory: Some(50 << 20),
                kept_memory: AtomicU64::new(100 << 20),
                sheddable: AtomicUsize::new(2),
                gate: Some(gate.clone()),
                ..Default::default()
            },
            PoolConfig {
                memory_budget: Some(200 << 20),
                ..config()
            },
        );
        let busy = tokio::spawn({
            let p2 = p2.clone();
            async move { run(&p2, &function("a", "1"), "{}", StartPolicy::Any).await }
        });
        eventually(|| p2.used_memory() == 164 << 20).await;
        let second = tokio::spawn({
            let p2 = p2.clone();
            async move { run(&p2, &function("b", "1"), "{}", StartPolicy::Any).await }
        });
        // 164 + 64 > 200: nothing idle, so the starter sheds (100 → 50 MB kept).
        eventually(|| p2.starter.log.shed.load(Ordering::SeqCst) == 1).await;
        gate.add_permits(10);
        assert!(busy.await.unwrap().is_ok());
        assert!(second.await.unwrap().is_ok());
        assert_eq!(p2.metrics.stats(&[]).count("budget.over"), 0);
    }

    #[tokio::test]
    async fn a_switch_under_the_budget_replaces_its_victim_instead_of_evicting_it() {
        let p = pool(
            FakeStarter {
                instance_memory: Some(50 << 20),
                ..Default::default()
            },
            PoolConfig {
                memory_budget: Some(150 << 20),
                ..config()
            },
        );
        let oa = run(&p, &function("a", "1"), "{}", StartPolicy::Cold)
            .await
            .unwrap();
        tokio::time::sleep(Duration::from_millis(2)).await;
        run(&p, &function("b", "1"), "{}", StartPolicy::Cold)
            .await
            .unwrap();
        // 100 MB idle; c needs 64: counted before the switch, a would be evicted and c would
        // take b's sandbox. The switch takes a's, whose usage it replaces: 50 + 64 fits.
        let oc = run(&p, &function("c", "1"), "{}", StartPolicy::Switch)
            .await
            .unwrap();
        assert_eq!(oc.start, StartMethod::Switch);
        assert_eq!(oc.instance_id, oa.instance_id);
        tokio::time::sleep(Duration::from_millis(20)).await;
        assert!(p.starter.log.destroyed().is_empty());
        assert_eq!(p.used_memory(), 100 << 20);
    }

    #[tokio::test]
    async fn a_burst_starts_in_parallel() {
        // N concurrent starts of one function each get their own instance at once: none waits
        // for another's start (the starter is called N times concurrently).
        let gate = Arc::new(Semaphore::new(0));
        let p = pool(
            FakeStarter {
                forks: true,
                gate: Some(gate.clone()),
                ..Default::default()
            },
            PoolConfig {
                max_instances_per_function: 20,
                max_queue_per_function: 20,
                max_sandboxes: 32,
                ..config()
            },
        );
        let f = function("f", "1");
        let calls: Vec<_> = (0..20)
            .map(|_| {
                let (p, f) = (p.clone(), f.clone());
                tokio::spawn(async move { run(&p, &f, "{}", StartPolicy::Fork).await })
            })
            .collect();
        let log = p.starter.log.clone();
        eventually(|| log.fork_tries.load(Ordering::SeqCst) == 20).await;
        gate.add_permits(20);
        for c in calls {
            assert_eq!(c.await.unwrap().unwrap().start, StartMethod::Fork);
        }
        assert_eq!(log.replenished.load(Ordering::SeqCst), 20);
    }
}
