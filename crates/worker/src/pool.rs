//! The pool: idle instances kept warm per function, and the scheduling of each invocation onto
//! an instance — warm when an idle instance of the same function version exists, else forked
//! from a zygote, else cold — within the per-function instance limit, a bounded wait queue, and
//! the worker-wide sandbox limit (idle instances of other functions are evicted, least recently
//! used first). Idle instances are frozen (their cgroup's freezer) shortly after their reply and
//! thawed when taken, so that processes they left running get no CPU while nobody pays for it.

use crate::instance::{Instance, Instances, InvokeError, Reply};
use crate::metrics::Metrics;
use crate::registry::FunctionVersion;
use crate::sandboxes::{FunctionLimits, StartError};
use crate::zygote::{ForkError, Forked, Zygotes};
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
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
}

/// Milliseconds spent in each phase of an invocation.
#[derive(Debug, Clone, Default)]
pub struct Timing {
    pub queue_ms: f64,
    pub sandbox_ms: f64,
    pub instance_ms: f64,
    pub handler_ms: f64,
    pub total_ms: f64,
}

impl Timing {
    /// The `X-Kindling-Timing` header value.
    pub fn header(&self) -> String {
        format!(
            "queue={:.3};sandbox={:.3};instance={:.3};handler={:.3};total={:.3}",
            self.queue_ms, self.sandbox_ms, self.instance_ms, self.handler_ms, self.total_ms
        )
    }
}

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

/// Pool limits.
#[derive(Debug, Clone)]
pub struct PoolConfig {
    pub keep_alive: Duration,
    /// How long after its reply an idle instance is frozen (None: never).
    pub freeze_idle_after: Option<Duration>,
    pub max_instances_per_function: usize,
    pub max_queue_per_function: usize,
    pub max_sandboxes: usize,
}

struct FunctionPool {
    busy: Arc<Semaphore>,
    waiting: AtomicUsize,
    idle: Mutex<Vec<Instance>>,
    /// A task will freeze this function's idle instances (see [`Pool::freeze_idle`]).
    freeze_armed: AtomicBool,
}

/// Instances of every function.
pub struct Pool {
    instances: Arc<Instances>,
    zygotes: Arc<Zygotes>,
    config: PoolConfig,
    metrics: Arc<Metrics>,
    functions: Mutex<HashMap<String, Arc<FunctionPool>>>,
    live: Arc<AtomicUsize>,
    /// Sandboxes being destroyed in the background.
    destroying: Arc<AtomicUsize>,
    /// False once freezing failed (a kernel without the freezer file): idle instances then
    /// stay unfrozen.
    freezing: Arc<AtomicBool>,
}

impl Pool {
    pub fn new(
        instances: Arc<Instances>,
        zygotes: Arc<Zygotes>,
        config: PoolConfig,
        metrics: Arc<Metrics>,
    ) -> Arc<Self> {
        Arc::new(Self {
            instances,
            zygotes,
            config,
            metrics,
            functions: Mutex::new(HashMap::new()),
            live: Arc::new(AtomicUsize::new(0)),
            destroying: Arc::new(AtomicUsize::new(0)),
            freezing: Arc::new(AtomicBool::new(true)),
        })
    }

    fn function_pool(&self, name: &str) -> Arc<FunctionPool> {
        let mut map = self.functions.lock().unwrap_or_else(|p| p.into_inner());
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

    /// Background work in flight: sandboxes being destroyed, refills of seeds and the pool.
    pub fn background_pending(&self) -> usize {
        self.destroying.load(Ordering::SeqCst) + self.zygotes.refills_pending()
    }

    /// Sandboxes alive now (idle and busy).
    pub fn live_sandboxes(&self) -> usize {
        self.live.load(Ordering::Relaxed)
    }

    /// Idle instances now.
    pub fn idle_instances(&self) -> usize {
        let map = self.functions.lock().unwrap_or_else(|p| p.into_inner());
        map.values()
            .map(|f| f.idle.lock().unwrap_or_else(|p| p.into_inner()).len())
            .sum()
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
        let warm = match policy {
            StartPolicy::Cold | StartPolicy::Fork => None,
            StartPolicy::Any => self.take_idle(&fp, function),
        };
        let (mut instance, start, forked) = match warm {
            Some(i) => (i, StartMethod::Warm, None),
            None => {
                let t = Instant::now();
                self.reserve_sandbox()?;
                let forked = match policy {
                    StartPolicy::Cold => None,
                    StartPolicy::Any | StartPolicy::Fork => self.fork_start(function, limits).await,
                };
                let made = match forked {
                    Some((i, f)) => Ok((i, StartMethod::Fork, Some(f))),
                    None => {
                        let instances = self.instances.clone();
                        let (f, l) = (function.clone(), limits.clone());
                        tokio::task::spawn_blocking(move || instances.cold_start(&f, &l))
                            .await
                            .map_err(|e| StartError::Io(std::io::Error::other(e)))
                            .and_then(|r| r)
                            .map(|i| (i, StartMethod::Cold, None))
                    }
                };
                match made {
                    Ok((i, how, f)) => {
                        timing.sandbox_ms = ms(t.elapsed());
                        (i, how, f)
                    }
                    Err(e) => {
                        self.live.fetch_sub(1, Ordering::SeqCst);
                        return Err(e.into());
                    }
                }
            }
        };
        let t = Instant::now();
        let result = instance.invoke(request_id, event, limits.timeout).await;
        let in_instance = ms(t.elapsed());
        if start != StartMethod::Warm && self.zygotes.config.enabled {
            // Replace the seed or pooled sandbox this start may have used, off the request path
            // and after the invocation, so that it does not compete with the new instance; a
            // forked instance that served its first invocation shows what seeds will write.
            let learn = forked
                .filter(|_| result.is_ok())
                .map(|f| (f, instance.take_loaded_modules()));
            self.zygotes.schedule_refill(learn);
        }
        timing.handler_ms = result.as_ref().map(|r| r.handler_ms).unwrap_or(0.0);
        timing.instance_ms = (in_instance - timing.handler_ms).max(0.0);
        timing.total_ms = ms(t0.elapsed());
        let instance_id = instance.id.clone();
        let memory_bytes = instance.memory_usage();
        let keep = match &result {
            Ok(_) => true,
            Err(e) => !e.is_fatal(),
        };
        if keep {
            let mut idle = fp.idle.lock().unwrap_or_else(|p| p.into_inner());
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

    /// Tries a fork start; `None` (counted as `fork.fallback`) sends the caller to a cold start.
    async fn fork_start(
        &self,
        function: &Arc<FunctionVersion>,
        limits: &FunctionLimits,
    ) -> Option<(Instance, Forked)> {
        if !self.zygotes.config.enabled {
            return None;
        }
        let zygotes = self.zygotes.clone();
        let (f, l) = (function.clone(), limits.clone());
        let result = tokio::task::spawn_blocking(move || {
            let z = zygotes.acquire(&f)?;
            zygotes.fork_start(&z, &f, &l).inspect_err(|e| {
                // A zygote that cannot fork is replaced on the next need.
                if matches!(e, ForkError::Io(_) | ForkError::Zygote(_)) {
                    zygotes.discard(&z);
                }
            })
        })
        .await;
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
    fn take_idle(&self, fp: &FunctionPool, function: &FunctionVersion) -> Option<Instance> {
        let mut idle = fp.idle.lock().unwrap_or_else(|p| p.into_inner());
        while let Some(mut i) = idle.pop() {
            if i.function.hash == function.hash {
                match i.set_frozen(false) {
                    Ok(()) => return Some(i),
                    Err(e) => tracing::warn!(instance = %i.id, "cannot thaw an idle instance: {e}"),
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
    fn freeze_idle(&self, fp: &Arc<FunctionPool>) {
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
            let mut idle = fp.idle.lock().unwrap_or_else(|p| p.into_inner());
            let mut next: Option<Duration> = None;
            for instance in idle.iter_mut().filter(|i| !i.is_frozen()) {
                let quiet = instance.last_used.elapsed();
                if quiet < delay {
                    next = Some(next.map_or(delay - quiet, |n| n.min(delay - quiet)));
                } else if let Err(e) = instance.set_frozen(true) {
                    if matches!(e, kindling_sandbox::cgroup::CgroupError::FreezerJoin { .. }) {
                        // This instance's processes fork too fast to move; it stays unfrozen.
                        tracing::warn!(instance = %instance.id, "cannot freeze: {e}");
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
    fn reserve_sandbox(&self) -> Result<(), PoolError> {
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
            if !self.evict_lru() {
                return Err(PoolError::NoCapacity(self.config.max_sandboxes));
            }
        }
    }

    /// Destroys the least recently used idle instance; false if there is none.
    fn evict_lru(&self) -> bool {
        let map = self.functions.lock().unwrap_or_else(|p| p.into_inner());
        let mut best: Option<(Instant, &Arc<FunctionPool>)> = None;
        for fp in map.values() {
            let idle = fp.idle.lock().unwrap_or_else(|p| p.into_inner());
            if let Some(oldest) = idle.iter().map(|i| i.last_used).min() {
                if best.is_none_or(|(t, _)| oldest < t) {
                    best = Some((oldest, fp));
                }
            }
        }
        let Some((_, fp)) = best else { return false };
        let mut idle = fp.idle.lock().unwrap_or_else(|p| p.into_inner());
        let Some(pos) = idle
            .iter()
            .enumerate()
            .min_by_key(|(_, i)| i.last_used)
            .map(|(n, _)| n)
        else {
            return false;
        };
        let victim = idle.remove(pos);
        drop(idle);
        self.metrics.add("evictions", 1);
        self.destroy(victim);
        true
    }

    /// Destroys an instance's sandbox in the background.
    fn destroy(&self, instance: Instance) {
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
            Ok(h) => {
                h.spawn_blocking(work);
            }
            Err(_) => work(),
        }
    }

    /// Destroys idle instances of `name` (after a redeploy or removal).
    pub fn invalidate(&self, name: &str) {
        let fp = self
            .functions
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(name)
            .cloned();
        if let Some(fp) = fp {
            let drained: Vec<_> = fp
                .idle
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .drain(..)
                .collect();
            for i in drained {
                self.destroy(i);
            }
        }
    }

    /// Destroys idle instances unused for longer than the keep-alive.
    pub fn expire_idle(&self) {
        let now = Instant::now();
        let pools: Vec<_> = self
            .functions
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .values()
            .cloned()
            .collect();
        for fp in pools {
            let expired: Vec<_> = {
                let mut idle = fp.idle.lock().unwrap_or_else(|p| p.into_inner());
                let (old, keep): (Vec<_>, Vec<_>) = idle
                    .drain(..)
                    .partition(|i| now.duration_since(i.last_used) >= self.config.keep_alive);
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
        let pools: Vec<_> = self
            .functions
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .values()
            .cloned()
            .collect();
        for fp in pools {
            fp.busy.close();
            let drained: Vec<_> = fp
                .idle
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .drain(..)
                .collect();
            for i in drained {
                i.destroy();
                self.live.fetch_sub(1, Ordering::SeqCst);
            }
        }
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
