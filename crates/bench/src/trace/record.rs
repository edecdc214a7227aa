//! The results of `kindling bench trace`: one `<output-dir>/trace-<policy>.json` per policy
//! (the workload, the worker's settings, every request and the per-second samples), and
//! `<output-dir>/trace.csv` (one row per request) and `<output-dir>/memory.csv` (one row per
//! second) over every policy in the directory.

use crate::results::Invocation;
use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// Which phase of the workload a request or sample belongs to.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Phase {
    Warmup,
    Test,
}

impl Phase {
    pub fn as_str(self) -> &'static str {
        match self {
            Phase::Warmup => "warmup",
            Phase::Test => "test",
        }
    }
}

/// One request of the workload.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct TraceRequest {
    /// The deployed function and the benchmark it runs.
    pub function: String,
    pub benchmark: String,
    pub phase: Phase,
    /// When it was due, in seconds from the start of its phase (its second plus jitter).
    pub at: f64,
    /// Due → first send: the wait for a free client of the pool.
    pub queued_ms: f64,
    /// Attempts after the first (TrEnv: at most 3, 0.5·2^k s apart).
    pub retries: u32,
    /// End to end, first send to final reply, retries and back-off included.
    pub latency_ms: f64,
    /// The final attempt alone (TrEnv's `e2e_latency`).
    pub last_attempt_ms: f64,
    /// The final attempt: start method, timing breakdown, status (validated), output.
    pub invocation: Invocation,
}

/// One second's sample of the worker.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Sample {
    /// Seconds from the start of the replay (warm-up included).
    pub t: f64,
    pub phase: Phase,
    /// Memory of every cgroup under the worker's cgroup_parent (sandboxes, zygotes, seeds),
    /// page cache included, in bytes; None when it could not be read.
    pub memory_bytes: Option<u64>,
    /// Their anonymous memory alone, in bytes.
    #[serde(default)]
    pub anon_bytes: Option<u64>,
    /// Cgroups under the parent.
    pub cgroups: u64,
    /// The worker's `sandboxes.*` gauges from `/stats` (live, zygote, pooled, seeded, ...).
    pub sandboxes: BTreeMap<String, u64>,
}

/// A deployed function of the workload.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct FunctionInfo {
    pub name: String,
    pub benchmark: String,
    pub memory_mb: u64,
}

/// One `trace-<policy>.json`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct TraceFile {
    pub workload: String,
    pub policy: String,
    pub scale: f64,
    pub seed: u64,
    pub size: String,
    pub memory_budget_mb: u64,
    pub keep_alive_secs: u64,
    pub zygotes: bool,
    pub start_order: Vec<String>,
    /// False when the worker did not accept `start_order`/`memory_budget_mb` and the policy
    /// was approximated with zygotes on or off and the keep-alive alone.
    pub policy_applied: bool,
    pub notes: Vec<String>,
    pub functions: Vec<FunctionInfo>,
    pub kindling_version: String,
    pub begin: f64,
    pub end: f64,
    pub requests: Vec<TraceRequest>,
    pub samples: Vec<Sample>,
}

impl TraceFile {
    /// The requests of the measured phase.
    pub fn measured(&self) -> impl Iterator<Item = &TraceRequest> {
        self.requests.iter().filter(|r| r.phase == Phase::Test)
    }

    /// Peak memory (MB) of the measured phase, from the per-second samples: usage (page cache
    /// included) and anonymous memory.
    pub fn peak_mb(&self) -> (Option<f64>, Option<f64>) {
        let peak = |f: fn(&Sample) -> Option<u64>| {
            self.samples
                .iter()
                .filter(|s| s.phase == Phase::Test)
                .filter_map(f)
                .max()
                .map(|b| b as f64 / 1048576.0)
        };
        (peak(|s| s.memory_bytes), peak(|s| s.anon_bytes))
    }
}

/// Reads every `<dir>/trace-*.json`, sorted by file name.
pub fn load_traces(dir: &Path) -> Result<Vec<TraceFile>> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .with_context(|| format!("cannot read {}", dir.display()))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with("trace-") && n.ends_with(".json"))
        })
        .collect();
    files.sort();
    files
        .iter()
        .map(|f| {
            let text = std::fs::read(f).with_context(|| format!("cannot read {}", f.display()))?;
            serde_json::from_slice(&text)
                .with_context(|| format!("{} is not a `kindling bench trace` result", f.display()))
        })
        .collect()
}

/// Writes `trace-<policy>.json`, then rewrites `trace.csv` and `memory.csv` over every policy
/// in `dir`.
pub fn write(dir: &Path, file: &TraceFile) -> Result<PathBuf> {
    std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let path = dir.join(format!("trace-{}.json", file.policy));
    std::fs::write(&path, serde_json::to_vec_pretty(file)?)
        .with_context(|| format!("cannot write {}", path.display()))?;
    let all = load_traces(dir)?;
    write_csvs(dir, &all)?;
    Ok(path)
}

fn mb(bytes: Option<u64>) -> String {
    bytes
        .map(|b| format!("{:.1}", b as f64 / 1048576.0))
        .unwrap_or_default()
}

const TIMING_KEYS: [&str; 5] = ["queue", "sandbox", "instance", "handler", "total"];

fn write_csvs(dir: &Path, traces: &[TraceFile]) -> Result<()> {
    let mut w = csv::Writer::from_path(dir.join("trace.csv"))?;
    let mut header = vec![
        "policy",
        "workload",
        "phase",
        "function",
        "benchmark",
        "at",
        "start_method",
        "status",
        "retries",
        "latency_ms",
        "last_attempt_ms",
        "queued_ms",
    ];
    header.extend(TIMING_KEYS);
    header.push("request_id");
    w.write_record(&header)?;
    for t in traces {
        for r in &t.requests {
            let i = &r.invocation;
            let mut row = vec![
                t.policy.clone(),
                t.workload.clone(),
                r.phase.as_str().into(),
                r.function.clone(),
                r.benchmark.clone(),
                format!("{:.3}", r.at),
                i.start.clone().unwrap_or_default(),
                i.status.as_str().into(),
                r.retries.to_string(),
                format!("{:.3}", r.latency_ms),
                format!("{:.3}", r.last_attempt_ms),
                format!("{:.3}", r.queued_ms),
            ];
            row.extend(TIMING_KEYS.iter().map(|k| {
                i.timing
                    .get(*k)
                    .map(|v| format!("{v:.3}"))
                    .unwrap_or_default()
            }));
            row.push(i.request_id.clone());
            w.write_record(&row)?;
        }
    }
    w.flush()?;
    let mut keys: Vec<&str> = traces
        .iter()
        .flat_map(|t| t.samples.iter().flat_map(|s| s.sandboxes.keys()))
        .map(String::as_str)
        .collect();
    keys.sort();
    keys.dedup();
    let mut w = csv::Writer::from_path(dir.join("memory.csv"))?;
    let mut header = vec!["policy", "t", "phase", "memory_mb", "anon_mb", "cgroups"];
    header.extend(&keys);
    w.write_record(&header)?;
    for t in traces {
        for s in &t.samples {
            let mut row = vec![
                t.policy.clone(),
                format!("{:.1}", s.t),
                s.phase.as_str().into(),
                mb(s.memory_bytes),
                mb(s.anon_bytes),
                s.cgroups.to_string(),
            ];
            row.extend(
                keys.iter()
                    .map(|k| s.sandboxes.get(*k).copied().unwrap_or(0).to_string()),
            );
            w.write_record(&row)?;
        }
    }
    w.flush()?;
    Ok(())
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::results::Status;
    use std::time::Duration;

    /// A trace result with one measured request per latency, of `function`, started `start`.
    pub(crate) fn fixture(policy: &str, reqs: &[(&str, &str, f64)], memory: &[u64]) -> TraceFile {
        TraceFile {
            workload: "w2".into(),
            policy: policy.into(),
            scale: 0.1,
            seed: 1,
            size: "test".into(),
            memory_budget_mb: 900,
            keep_alive_secs: 120,
            zygotes: true,
            start_order: vec!["warm".into(), "cold".into()],
            policy_applied: true,
            notes: vec!["a note".into()],
            functions: vec![],
            kindling_version: "0".into(),
            begin: 0.0,
            end: 1.0,
            requests: reqs
                .iter()
                .map(|(f, start, ms)| {
                    let mut inv = Invocation::timed(0.0, 0.0, Duration::from_secs_f64(ms / 1000.0));
                    inv.start = Some(start.to_string());
                    inv.status = Status::Ok;
                    TraceRequest {
                        function: f.to_string(),
                        benchmark: f.to_string(),
                        phase: Phase::Test,
                        at: 0.5,
                        queued_ms: 0.0,
                        retries: 0,
                        latency_ms: *ms,
                        last_attempt_ms: *ms,
                        invocation: inv,
                    }
                })
                .collect(),
            samples: memory
                .iter()
                .enumerate()
                .map(|(t, m)| Sample {
                    t: t as f64,
                    phase: Phase::Test,
                    memory_bytes: Some(m << 20),
                    anon_bytes: Some(m << 19),
                    cgroups: 2,
                    sandboxes: BTreeMap::from([("sandboxes.live".to_string(), 2)]),
                })
                .collect(),
        }
    }

    #[test]
    fn results_round_trip_with_csvs() {
        let dir = tempfile::tempdir().expect("tmp");
        let a = fixture("full", &[("pyaes", "fork", 3.0)], &[100, 120]);
        let b = fixture("keepalive", &[("pyaes", "cold", 300.0)], &[200]);
        write(dir.path(), &a).expect("write");
        write(dir.path(), &b).expect("write");
        let back = load_traces(dir.path()).expect("load");
        assert_eq!(back, [a, b]);
        let csv = std::fs::read_to_string(dir.path().join("trace.csv")).expect("csv");
        assert_eq!(csv.lines().count(), 3, "{csv}");
        assert!(
            csv.lines()
                .nth(1)
                .expect("row")
                .starts_with("full,w2,test,pyaes,pyaes,0.500,fork,ok,0,3.000"),
            "{csv}"
        );
        let mem = std::fs::read_to_string(dir.path().join("memory.csv")).expect("csv");
        assert_eq!(
            mem.lines().next(),
            Some("policy,t,phase,memory_mb,anon_mb,cgroups,sandboxes.live")
        );
        assert_eq!(mem.lines().count(), 4, "{mem}");
    }
}
