//! Replaying a workload against one worker, as TrEnv's driver does: every invocation at its
//! second plus a uniform jitter, the warm-up phase first, then the measured one; requests from
//! a bounded pool of clients (each a keep-alive connection), a timeout per attempt and up to
//! `max_retry` retries `0.5·2^k` s apart. A sampler reads, every second, the memory of the
//! worker's cgroups and its sandboxes by state.

use super::pyrandom::PyRandom;
use super::record::{Phase, Sample, TraceRequest};
use super::workload::Workload;
use crate::results::{now_unix, Invocation};
use anyhow::anyhow;
use hyper::body::Bytes;
use hyper::Method;
use kindling_api::client::{Client, Response};
use kindling_api::StartMethod;
use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// What one function is invoked with.
pub struct Target {
    pub benchmark: String,
    pub event: Bytes,
}

/// How requests are sent.
#[derive(Clone)]
pub struct Options {
    pub clients: usize,
    pub timeout: Duration,
    pub max_retry: u32,
    pub seed: u64,
    /// The worker's admin token (`/stats` needs it; runs send it too).
    pub token: Option<String>,
}

/// One due invocation.
#[derive(Debug, Clone, PartialEq)]
pub struct Arrival {
    pub phase: Phase,
    /// Seconds from the start of the phase.
    pub at: f64,
    pub function: usize,
}

/// The arrivals of one phase, sorted by time: each of a second's invocations at that second
/// plus a uniform draw in [0, 1), drawn function by function, second by second.
pub fn arrivals(workload: &Workload, phase: Phase, rng: &mut PyRandom) -> Vec<Arrival> {
    let mut out = Vec::new();
    for (f, load) in workload.loads.iter().enumerate() {
        let secs = match phase {
            Phase::Warmup => &load.warmup,
            Phase::Test => &load.test,
        };
        for (s, &n) in secs.iter().enumerate() {
            for _ in 0..n {
                out.push(Arrival {
                    phase,
                    at: s as f64 + rng.random(),
                    function: f,
                });
            }
        }
    }
    out.sort_by(|a, b| a.at.total_cmp(&b.at));
    out
}

/// The back-off before retry `k` (0-based): 0.5·2^k s.
pub fn backoff(k: u32) -> Duration {
    Duration::from_secs_f64(0.5 * f64::from(1u32 << k.min(16)))
}

/// Whether a reply is worth another attempt: the worker was overloaded or failed, not the
/// request.
fn retryable(r: &anyhow::Result<Response>) -> bool {
    match r {
        Ok(r) => r.status.is_server_error() || r.status.as_u16() == 429,
        Err(_) => true,
    }
}

/// Sends one request with retries on `c` (replaced after a timeout or error).
async fn send(
    c: &mut Client,
    addr: SocketAddr,
    token: &Option<String>,
    path: &str,
    event: &Bytes,
    opts: &Options,
) -> (Invocation, u32, f64, f64) {
    let first = Instant::now();
    let mut retries = 0;
    loop {
        let begin = now_unix();
        let t = Instant::now();
        let headers = [("content-type", "application/json")];
        let r = match tokio::time::timeout(
            opts.timeout,
            c.request(Method::POST, path, &headers, event.clone()),
        )
        .await
        {
            Ok(r) => r,
            Err(_) => Err(anyhow!("no reply within {} s", opts.timeout.as_secs())),
        };
        let elapsed = t.elapsed();
        if r.is_err() {
            *c = Client::with_token(addr, token.clone());
        }
        if retryable(&r) && retries < opts.max_retry {
            tokio::time::sleep(backoff(retries)).await;
            retries += 1;
            continue;
        }
        let inv = Invocation::from_response(StartMethod::Warm, r, elapsed, begin, now_unix());
        let total = first.elapsed().as_secs_f64() * 1000.0;
        return (inv, retries, total, elapsed.as_secs_f64() * 1000.0);
    }
}

/// Memory of the worker's cgroups (sandboxes, zygotes, seeds: the children of its
/// cgroup_parent), in the v1 memory controller or v2.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct CgroupMemory {
    /// Σ usage (v1 `memory.usage_in_bytes`, v2 `memory.current`): page cache included.
    pub usage: Option<u64>,
    /// Σ anonymous memory (v1 `total_rss` of `memory.stat`, v2 `anon`).
    pub anon: Option<u64>,
    /// Child cgroups.
    pub cgroups: u64,
}

/// Sums the children of `parent` under `cgroup_root` (`/sys/fs/cgroup`). Not the parent's own
/// counter: it keeps charges of cgroups gone, such as the page cache of package installs.
pub fn cgroup_memory(cgroup_root: &Path, parent: &str) -> CgroupMemory {
    let candidates: [(PathBuf, &str, &str); 3] = [
        (
            cgroup_root.join("memory").join(parent),
            "memory.usage_in_bytes",
            "total_rss",
        ),
        (
            cgroup_root.join("unified").join(parent),
            "memory.current",
            "anon",
        ),
        (cgroup_root.join(parent), "memory.current", "anon"),
    ];
    let read = |p: &Path| -> Option<u64> { std::fs::read_to_string(p).ok()?.trim().parse().ok() };
    let stat = |p: &Path, key: &str| -> Option<u64> {
        let text = std::fs::read_to_string(p).ok()?;
        text.lines()
            .find_map(|l| l.strip_prefix(key)?.strip_prefix(' ')?.trim().parse().ok())
    };
    for (dir, usage_file, anon_key) in candidates {
        // The hierarchy that accounts memory for this parent (its own counter exists there).
        if !dir.join(usage_file).is_file() {
            continue;
        }
        let children: Vec<PathBuf> = std::fs::read_dir(&dir)
            .map(|rd| {
                rd.flatten()
                    .map(|e| e.path())
                    .filter(|p| p.is_dir())
                    .collect()
            })
            .unwrap_or_default();
        let usage = children
            .iter()
            .filter_map(|c| read(&c.join(usage_file)))
            .sum();
        let anon = children
            .iter()
            .filter_map(|c| stat(&c.join("memory.stat"), anon_key))
            .sum();
        return CgroupMemory {
            usage: Some(usage),
            anon: Some(anon),
            cgroups: children.len() as u64,
        };
    }
    CgroupMemory::default()
}

/// Samples the worker every second until `stop` is set.
async fn sample(
    addr: SocketAddr,
    token: Option<String>,
    cgroup_parent: String,
    phase: Arc<parking_phase::Cell>,
    stop: Arc<tokio::sync::Notify>,
) -> Vec<Sample> {
    let start = Instant::now();
    let mut out = Vec::new();
    let mut c = Client::with_token(addr, token.clone());
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    loop {
        tokio::select! {
            _ = stop.notified() => return out,
            _ = tick.tick() => {}
        }
        let m = cgroup_memory(Path::new("/sys/fs/cgroup"), &cgroup_parent);
        let mut sandboxes = BTreeMap::new();
        match tokio::time::timeout(Duration::from_secs(1), c.stats()).await {
            Ok(Ok(stats)) => {
                for (k, v) in &stats.0 {
                    if k.starts_with("sandboxes.") {
                        sandboxes.insert(k.clone(), v.as_u64().unwrap_or(0));
                    }
                }
            }
            _ => c = Client::with_token(addr, token.clone()),
        }
        out.push(Sample {
            t: start.elapsed().as_secs_f64(),
            phase: phase.get(),
            memory_bytes: m.usage,
            anon_bytes: m.anon,
            cgroups: m.cgroups,
            sandboxes,
        });
    }
}

/// The phase the sampler labels its samples with.
mod parking_phase {
    use super::Phase;
    use std::sync::atomic::{AtomicBool, Ordering};

    #[derive(Default)]
    pub struct Cell(AtomicBool);

    impl Cell {
        pub fn set_test(&self) {
            self.0.store(true, Ordering::Relaxed);
        }
        pub fn get(&self) -> Phase {
            if self.0.load(Ordering::Relaxed) {
                Phase::Test
            } else {
                Phase::Warmup
            }
        }
    }
}

/// Replays `workload` (warm-up, then measured phase) against the worker at `addr`; returns
/// the requests in the order they were due, and the per-second samples.
pub async fn replay(
    addr: SocketAddr,
    cgroup_parent: &str,
    workload: &Workload,
    targets: &HashMap<String, Target>,
    opts: &Options,
) -> (Vec<TraceRequest>, Vec<Sample>) {
    let phase = Arc::new(parking_phase::Cell::default());
    let stop = Arc::new(tokio::sync::Notify::new());
    let sampler = tokio::spawn(sample(
        addr,
        opts.token.clone(),
        cgroup_parent.to_string(),
        phase.clone(),
        stop.clone(),
    ));
    let mut rng = PyRandom::new(opts.seed);
    let mut requests = Vec::new();
    for p in [Phase::Warmup, Phase::Test] {
        if p == Phase::Test {
            phase.set_test();
        }
        let due = arrivals(workload, p, &mut rng);
        eprintln!("  {} phase: {} requests", p.as_str(), due.len());
        requests.extend(run_phase(addr, workload, targets, opts, due).await);
    }
    stop.notify_one();
    let samples = sampler.await.unwrap_or_default();
    (requests, samples)
}

async fn run_phase(
    addr: SocketAddr,
    workload: &Workload,
    targets: &HashMap<String, Target>,
    opts: &Options,
    due: Vec<Arrival>,
) -> Vec<TraceRequest> {
    let (give, mut take) = tokio::sync::mpsc::channel::<Client>(opts.clients.max(1));
    for _ in 0..opts.clients.max(1) {
        let _ = give.try_send(Client::with_token(addr, opts.token.clone()));
    }
    let start = tokio::time::Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    let n = due.len();
    for (i, a) in due.into_iter().enumerate() {
        tokio::time::sleep_until(start + Duration::from_secs_f64(a.at)).await;
        let Some(mut c) = take.recv().await else {
            break;
        };
        let queued_ms = (start.elapsed().as_secs_f64() - a.at).max(0.0) * 1000.0;
        let function = workload.loads[a.function].function.clone();
        let Some(target) = targets.get(&function) else {
            let _ = give.send(c).await;
            continue;
        };
        let (path, event, benchmark) = (
            format!("/run/{function}"),
            target.event.clone(),
            target.benchmark.clone(),
        );
        let (give, opts) = (give.clone(), opts.clone());
        tasks.spawn(async move {
            let (invocation, retries, latency_ms, last_attempt_ms) =
                send(&mut c, addr, &opts.token, &path, &event, &opts).await;
            let _ = give.send(c).await;
            (
                i,
                TraceRequest {
                    function,
                    benchmark,
                    phase: a.phase,
                    at: a.at,
                    queued_ms,
                    retries,
                    latency_ms,
                    last_attempt_ms,
                    invocation,
                },
            )
        });
    }
    let mut done = Vec::with_capacity(n);
    while let Some(r) = tasks.join_next().await {
        match r {
            Ok(x) => done.push(x),
            Err(e) => eprintln!("warning: a request task failed: {e}"),
        }
    }
    done.sort_by_key(|(i, _)| *i);
    done.into_iter().map(|(_, r)| r).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::trace::workload::w2;

    #[test]
    fn arrivals_are_their_second_plus_jitter() {
        let w = w2(1, 1);
        let mut rng = PyRandom::new(3);
        let a = arrivals(&w, Phase::Test, &mut rng);
        assert_eq!(a.len(), 450);
        assert!(a.windows(2).all(|p| p[0].at <= p[1].at));
        let dynamic = w
            .loads
            .iter()
            .position(|l| l.function == "dynamic-html")
            .expect("fn");
        let d: Vec<&Arrival> = a.iter().filter(|x| x.function == dynamic).collect();
        assert_eq!(d.len(), 200);
        assert!(d.iter().all(|x| (10.0..11.0).contains(&x.at)));
        assert_eq!(arrivals(&w, Phase::Warmup, &mut rng).len(), 450);
    }

    #[test]
    fn backoff_doubles_from_half_a_second() {
        assert_eq!(backoff(0), Duration::from_millis(500));
        assert_eq!(backoff(1), Duration::from_secs(1));
        assert_eq!(backoff(2), Duration::from_secs(2));
    }

    #[test]
    fn cgroup_memory_sums_the_children_in_v1_or_v2() {
        let dir = tempfile::tempdir().expect("tmp");
        let v1 = dir.path().join("memory/kp");
        std::fs::create_dir_all(v1.join("sb1")).expect("mkdir");
        std::fs::create_dir_all(v1.join("sb2")).expect("mkdir");
        // The parent's own counter (leftover charges) is not counted.
        std::fs::write(v1.join("memory.usage_in_bytes"), "9000\n").expect("write");
        std::fs::write(v1.join("sb1/memory.usage_in_bytes"), "100\n").expect("write");
        std::fs::write(v1.join("sb2/memory.usage_in_bytes"), "50\n").expect("write");
        std::fs::write(v1.join("sb1/memory.stat"), "cache 5\nrss 7\ntotal_rss 60\n")
            .expect("write");
        std::fs::write(v1.join("sb2/memory.stat"), "total_rss 20\n").expect("write");
        let m = cgroup_memory(dir.path(), "kp");
        assert_eq!((m.usage, m.anon, m.cgroups), (Some(150), Some(80), 2));
        let v2 = dir.path().join("other");
        std::fs::create_dir_all(v2.join("a")).expect("mkdir");
        std::fs::write(v2.join("memory.current"), "7000").expect("write");
        std::fs::write(v2.join("a/memory.current"), "7").expect("write");
        std::fs::write(v2.join("a/memory.stat"), "anon 3\nfile 4\n").expect("write");
        let m = cgroup_memory(dir.path(), "other");
        assert_eq!((m.usage, m.anon, m.cgroups), (Some(7), Some(3), 1));
        std::fs::create_dir_all(dir.path().join("memory/empty")).expect("mkdir");
        std::fs::write(dir.path().join("memory/empty/memory.usage_in_bytes"), "5").expect("write");
        assert_eq!(cgroup_memory(dir.path(), "empty").usage, Some(0));
        assert_eq!(cgroup_memory(dir.path(), "none"), CgroupMemory::default());
    }
}
