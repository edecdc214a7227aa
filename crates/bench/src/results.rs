//! The results of `kindling bench`: what one invocation was (SeBS's `ExecutionResult` plus
//! Kindling's start method and timing breakdown), the result file of one benchmark and start
//! method (`<output-dir>/<bench>/<start>.json`), loading a directory of them, and
//! `result.csv` (the columns of SeBS's `perf-cost/result.csv` first, then Kindling's).

use anyhow::{Context, Result};
use kindling_api::client::Response;
use kindling_api::StartMethod;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// Input sizes every benchmark's `generate_input` accepts.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Size {
    Test,
    Small,
    Large,
}

impl Size {
    pub fn as_str(self) -> &'static str {
        match self {
            Size::Test => "test",
            Size::Small => "small",
            Size::Large => "large",
        }
    }
}

/// The `X-Kindling-Start` value that forces `start` on every invocation, if any: cold, fork and
/// switch are forced, warm is what the worker's policy gives an idle instance.
pub fn forced(start: StartMethod) -> Option<&'static str> {
    match start {
        StartMethod::Cold | StartMethod::Fork | StartMethod::Switch => Some(start.as_str()),
        StartMethod::Warm => None,
    }
}

/// The order of start methods in result files, tables and plots: by name (cold, fork, warm).
pub fn start_order(a: &StartMethod, b: &StartMethod) -> std::cmp::Ordering {
    a.as_str().cmp(b.as_str())
}

/// Outcome of one invocation. Only `ok` is a success: an output that `validate()` rejects is
/// `incorrect`, whatever its latency.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    Ok,
    Incorrect,
    Error,
}

impl Status {
    pub fn as_str(self) -> &'static str {
        match self {
            Status::Ok => "ok",
            Status::Incorrect => "incorrect",
            Status::Error => "error",
        }
    }
}

/// SeBS's `ExecutionTimes`; every duration in microseconds, timestamps in Unix seconds.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Times {
    /// End to end, measured by the client around the HTTP request.
    pub client: u64,
    pub client_begin: f64,
    pub client_end: f64,
    /// `end - begin` of the SeBS envelope: the handler as the function's wrapper saw it.
    pub benchmark: u64,
    /// Getting an instance (Kindling's `sandbox + instance` time) on a cold or fork start;
    /// 0 on a warm start.
    pub initialization: u64,
    /// Connection setup: 0, each client opens its connection before measuring.
    pub http_startup: u64,
}

/// SeBS's `ProviderTimes`, as the worker measured them (microseconds).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct ProviderTimes {
    pub initialization: u64,
    /// The worker's `total`: queueing, instance and handler.
    pub execution: u64,
}

/// SeBS's `ExecutionStats`.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Stats {
    pub cold_start: bool,
    /// Memory of the instance's sandbox after the invocation (`X-Kindling-Memory`), in MB of
    /// 2^20 bytes; null when the worker did not report it.
    pub memory_used: Option<f64>,
    /// True unless the invocation is `ok`.
    pub failure: bool,
}

/// One invocation: SeBS's `ExecutionResult` plus Kindling's start method and timing.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Invocation {
    pub request_id: String,
    /// The start method the worker reports (`X-Kindling-Start`).
    pub start: Option<String>,
    pub status: Status,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    pub times: Times,
    pub provider_times: ProviderTimes,
    pub stats: Stats,
    /// `X-Kindling-Timing` in milliseconds: queue, sandbox, instance, handler, total.
    pub timing: BTreeMap<String, f64>,
    pub container_id: Option<String>,
    /// The function's whole response (the SeBS envelope), or null after an error.
    pub output: Value,
}

/// Counts over one result file, as SeBS's `statistics`.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Statistics {
    pub samples: u64,
    pub ok: u64,
    pub incorrect: u64,
    pub failures: u64,
    /// Successful invocations that came back with another start method than asked (warm
    /// runs with more clients than idle instances); left out of the latency statistics.
    pub start_mismatch: u64,
    pub cold_count: u64,
}

/// One `<output-dir>/<bench>/<start>.json`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct RunFile {
    pub benchmark: String,
    pub function: String,
    pub size: Size,
    pub start: StartMethod,
    pub repetitions: u64,
    pub concurrency: u64,
    /// `memory` of the benchmark's config.json (MB).
    pub memory_mb: Option<u64>,
    pub worker: String,
    pub kindling_version: String,
    pub begin: f64,
    pub end: f64,
    pub statistics: Statistics,
    pub invocations: Vec<Invocation>,
}

impl RunFile {
    /// The invocations that count in latency statistics: `ok`, with the asked start method.
    pub fn measured(&self) -> impl Iterator<Item = &Invocation> {
        self.invocations
            .iter()
            .filter(|i| i.status == Status::Ok && i.start.as_deref() == Some(self.start.as_str()))
    }
}

pub fn now_unix() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or(0.0)
}

/// Parses `X-Kindling-Timing` (`queue=0.002;sandbox=1.5;...`, milliseconds).
pub fn parse_timing(header: &str) -> BTreeMap<String, f64> {
    header
        .split(';')
        .filter_map(|kv| {
            let (k, v) = kv.split_once('=')?;
            let k = k.trim();
            (!k.is_empty()).then_some(())?;
            Some((k.to_string(), v.trim().parse().ok()?))
        })
        .collect()
}

fn ms_to_us(ms: f64) -> u64 {
    (ms * 1000.0).round().max(0.0) as u64
}

/// A float that the SeBS wrapper may send as a number or as a string.
fn envelope_f64(v: &Value) -> Option<f64> {
    match v {
        Value::Number(n) => n.as_f64(),
        Value::String(s) => s.trim().parse().ok(),
        _ => None,
    }
}

/// The last `max` bytes of `text`, cut at a character boundary.
pub fn tail(text: &str, max: usize) -> &str {
    let mut start = text.len().saturating_sub(max);
    while !text.is_char_boundary(start) {
        start += 1;
    }
    &text[start..]
}

impl Invocation {
    /// A successful invocation timed by the client, with nothing else known yet.
    pub fn timed(begin: f64, end: f64, client: Duration) -> Self {
        Invocation {
            request_id: String::new(),
            start: None,
            status: Status::Ok,
            error: None,
            times: Times {
                client: client.as_micros() as u64,
                client_begin: begin,
                client_end: end,
                ..Times::default()
            },
            provider_times: ProviderTimes::default(),
            stats: Stats::default(),
            timing: BTreeMap::new(),
            container_id: None,
            output: Value::Null,
        }
    }

    pub fn failed(error: String, begin: f64, end: f64, client: Duration) -> Self {
        Self::timed(begin, end, client).fail(error)
    }

    /// Builds the record of one invocation from the worker's reply. The status is `ok` or
    /// `error` here; validation may turn an `ok` into `incorrect` later.
    pub fn from_response(
        asked: StartMethod,
        reply: Result<Response>,
        client: Duration,
        begin: f64,
        end: f64,
    ) -> Self {
        let r = match reply {
            Ok(r) => r,
            Err(e) => return Self::failed(format!("{e:#}"), begin, end, client),
        };
        let start = r.header("x-kindling-start").map(str::to_string);
        let timing = r
            .header("x-kindling-timing")
            .map(parse_timing)
            .unwrap_or_default();
        let memory_used = r
            .header("x-kindling-memory")
            .and_then(|m| m.trim().parse::<u64>().ok())
            .map(|b| b as f64 / (1u64 << 20) as f64);
        let ms = |k: &str| timing.get(k).copied().unwrap_or(0.0);
        let initialization = if start.as_deref() == Some("warm") {
            0
        } else {
            ms_to_us(ms("sandbox") + ms("instance"))
        };
        let mut inv = Self::timed(begin, end, client);
        inv.request_id = r.header("x-kindling-request").unwrap_or("").to_string();
        inv.start = start.clone();
        inv.times.initialization = initialization;
        inv.provider_times = ProviderTimes {
            initialization,
            execution: ms_to_us(ms("total")),
        };
        inv.stats.cold_start = start.as_deref() == Some("cold");
        inv.stats.memory_used = memory_used;
        inv.timing = timing;
        inv.container_id = r.header("x-kindling-sandbox").map(str::to_string);
        if !r.status.is_success() {
            let why = format!("HTTP {}: {}", r.status, tail(r.text().trim_end(), 2000));
            inv.output = Value::String(r.text());
            return inv.fail(why);
        }
        let inv = inv.with_envelope(&r.body);
        if inv.status != Status::Ok {
            return inv;
        }
        if let Some(forced) = forced(asked) {
            if start.as_deref() != Some(forced) {
                let why = format!(
                    "asked for a {forced} start, the worker used {}",
                    start.as_deref().unwrap_or("an unreported method")
                );
                return inv.fail(why);
            }
        }
        inv
    }

    /// Builds the record of one run of a baseline (a process outside Kindling that printed
    /// the SeBS envelope): `ok` when it exited 0 with an envelope holding `result`.
    pub fn from_baseline(
        run: Result<std::process::Output>,
        client: Duration,
        begin: f64,
        end: f64,
    ) -> Self {
        let out = match run {
            Ok(out) => out,
            Err(e) => return Self::failed(format!("{e:#}"), begin, end, client),
        };
        let mut inv = Self::timed(begin, end, client);
        inv.stats.cold_start = true;
        if !out.status.success() {
            let err = String::from_utf8_lossy(&out.stderr);
            let why = format!("{}: {}", out.status, tail(err.trim_end(), 2000));
            inv.output = Value::String(String::from_utf8_lossy(&out.stdout).into_owned());
            return inv.fail(why);
        }
        inv.with_envelope(&out.stdout)
    }

    /// Marks this invocation failed (`error`), saying why.
    pub fn fail(mut self, why: String) -> Self {
        self.status = Status::Error;
        self.stats.failure = true;
        self.error = Some(why);
        self
    }

    /// Reads the SeBS envelope in `body` (the function's response) into this record; an
    /// invocation whose body is not an envelope with `result` fails.
    fn with_envelope(mut self, body: &[u8]) -> Self {
        let envelope: Value = match serde_json::from_slice(body) {
            Ok(v) => v,
            Err(_) => {
                let text = String::from_utf8_lossy(body).into_owned();
                let why = format!("not a SeBS envelope: {}", tail(&text, 500));
                self.output = Value::String(text);
                return self.fail(why);
            }
        };
        if let (Some(b), Some(e)) = (
            envelope.get("begin").and_then(envelope_f64),
            envelope.get("end").and_then(envelope_f64),
        ) {
            self.times.benchmark = ((e - b) * 1e6).round().max(0.0) as u64;
        }
        if let Some(cold) = envelope.get("is_cold").and_then(Value::as_bool) {
            self.stats.cold_start = cold;
        }
        if self.request_id.is_empty() {
            if let Some(id) = envelope.get("request_id").and_then(Value::as_str) {
                self.request_id = id.to_string();
            }
        }
        if self.container_id.is_none() {
            self.container_id = envelope
                .get("container_id")
                .and_then(Value::as_str)
                .map(str::to_string);
        }
        let has_result = envelope.get("result").is_some();
        self.output = envelope;
        if !has_result {
            return self.fail("not a SeBS envelope: no result".into());
        }
        self
    }

    /// `result` of the envelope, the handler's return value as it returned it (SeBS's
    /// `{"result": ..., "measurement": {...}}`): what `validate()` checks, as SeBS's validators
    /// read `output["result"]`.
    pub fn handler_output(&self) -> Option<&Value> {
        self.output.get("result")
    }
}

/// Counts over `invocations`, which asked for `asked`.
pub fn statistics(invocations: &[Invocation], asked: StartMethod) -> Statistics {
    let mut s = Statistics {
        samples: invocations.len() as u64,
        ..Statistics::default()
    };
    for i in invocations {
        match i.status {
            Status::Ok => {
                s.ok += 1;
                if i.start.as_deref() != Some(asked.as_str()) {
                    s.start_mismatch += 1;
                }
            }
            Status::Incorrect => s.incorrect += 1,
            Status::Error => s.failures += 1,
        }
        s.cold_count += u64::from(i.stats.cold_start);
    }
    s
}

/// Reads every `<dir>/<bench>/<start>.json`; files that are not results are skipped with a
/// warning. Sorted by benchmark, then start method.
pub fn load_runs(dir: &Path) -> Result<Vec<RunFile>> {
    let mut runs = Vec::new();
    let entries =
        std::fs::read_dir(dir).with_context(|| format!("cannot read {}", dir.display()))?;
    let mut subdirs: Vec<PathBuf> = entries
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.is_dir())
        .collect();
    subdirs.sort();
    for sub in subdirs {
        let mut files: Vec<PathBuf> = std::fs::read_dir(&sub)?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.extension().is_some_and(|x| x == "json"))
            .collect();
        files.sort();
        for f in files {
            let text = std::fs::read(&f).with_context(|| format!("cannot read {}", f.display()))?;
            match serde_json::from_slice::<RunFile>(&text) {
                Ok(r) => runs.push(r),
                Err(e) => eprintln!(
                    "warning: skipping {}: not a `kindling bench run` result ({e})",
                    f.display()
                ),
            }
        }
    }
    runs.sort_by(|a, b| {
        a.benchmark
            .cmp(&b.benchmark)
            .then(start_order(&a.start, &b.start))
    });
    Ok(runs)
}

/// The columns of `result.csv`: SeBS's `perf-cost/result.csv` first, then Kindling's; the
/// fields of [`CsvRow`] in order. Times in microseconds, memory in MB, as in SeBS.
pub const CSV_HEADER: &[&str] = &[
    "memory",
    "type",
    "is_cold",
    "exec_time",
    "connection_time",
    "client_time",
    "provider_time",
    "mem_used",
    "benchmark",
    "size",
    "start_method",
    "initialization_time",
    "status",
    "request_id",
];

/// One row of `result.csv` (see [`CSV_HEADER`]).
#[derive(Serialize)]
struct CsvRow<'a> {
    /// `memory` of the benchmark's config.json.
    memory: Option<u64>,
    /// The start method asked for.
    #[serde(rename = "type")]
    asked: &'a str,
    is_cold: bool,
    exec_time: u64,
    connection_time: u64,
    client_time: u64,
    provider_time: u64,
    mem_used: Option<String>,
    benchmark: &'a str,
    size: &'a str,
    /// The start method the worker reports.
    start_method: &'a str,
    initialization_time: u64,
    status: &'a str,
    request_id: &'a str,
}

/// Writes the header line, then one CSV row per invocation of `runs`.
pub fn write_csv(runs: &[RunFile], out: impl Write) -> Result<()> {
    // The header is written by hand so that a directory without invocations still gets one.
    let mut w = csv::WriterBuilder::new()
        .has_headers(false)
        .terminator(csv::Terminator::Any(b'\n'))
        .from_writer(out);
    w.write_record(CSV_HEADER)?;
    for run in runs {
        for i in &run.invocations {
            w.serialize(CsvRow {
                memory: run.memory_mb,
                asked: run.start.as_str(),
                is_cold: i.stats.cold_start,
                exec_time: i.times.benchmark,
                connection_time: i.times.http_startup,
                client_time: i.times.client,
                provider_time: i.provider_times.execution,
                mem_used: i.stats.memory_used.map(|m| format!("{m:.3}")),
                benchmark: &run.benchmark,
                size: run.size.as_str(),
                start_method: i.start.as_deref().unwrap_or(""),
                initialization_time: i.times.initialization,
                status: i.status.as_str(),
                request_id: &i.request_id,
            })?;
        }
    }
    w.flush()?;
    Ok(())
}

/// Rewrites `<dir>/result.csv` from every result file in `dir`.
pub fn write_result_csv(dir: &Path) -> Result<PathBuf> {
    let runs = load_runs(dir)?;
    let path = dir.join("result.csv");
    let mut f = std::io::BufWriter::new(
        std::fs::File::create(&path).with_context(|| format!("cannot write {}", path.display()))?,
    );
    write_csv(&runs, &mut f)?;
    f.flush()
        .with_context(|| format!("cannot write {}", path.display()))?;
    Ok(path)
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use anyhow::anyhow;
    use hyper::body::Bytes;
    use hyper::{HeaderMap, StatusCode};

    fn response(status: u16, headers: &[(&'static str, &str)], body: &str) -> Response {
        let mut h = HeaderMap::new();
        for (k, v) in headers {
            h.insert(*k, v.parse().expect("header value"));
        }
        Response {
            status: StatusCode::from_u16(status).expect("status"),
            headers: h,
            body: Bytes::from(body.to_string()),
        }
    }

    const ENVELOPE: &str = r#"{"begin": "1795329595.721848", "end": "1795329595.722256", "is_cold": true,
        "results_time": 0, "result": {"result": {"records": 20}, "measurement": {"compute_time": 323.6}},
        "request_id": "1fbecca7-2a", "container_id": "sb-1"}"#;

    #[test]
    fn timing_header_parses() {
        let t =
            parse_timing("queue=0.002;sandbox=1.504;instance=46.540;handler=0.517;total=48.564");
        assert_eq!(t["sandbox"], 1.504);
        assert_eq!(t["total"], 48.564);
        assert_eq!(t.len(), 5);
        assert!(parse_timing("garbage;x=;=1").is_empty());
    }

    #[test]
    fn invocation_from_a_sebs_reply() {
        let r = response(
            200,
            &[
                ("x-kindling-start", "cold"),
                (
                    "x-kindling-timing",
                    "queue=0.002;sandbox=1.5;instance=46.5;handler=0.5;total=48.5",
                ),
                ("x-kindling-memory", "10485760"),
                ("x-kindling-request", "1fbecca7-2a"),
                ("x-kindling-sandbox", "sb-1"),
            ],
            ENVELOPE,
        );
        let inv = Invocation::from_response(
            StartMethod::Cold,
            Ok(r),
            Duration::from_micros(49_000),
            10.0,
            10.049,
        );
        assert_eq!(inv.status, Status::Ok);
        assert_eq!(inv.times.client, 49_000);
        assert_eq!(inv.times.benchmark, 408);
        assert_eq!(inv.times.initialization, 48_000);
        assert_eq!(inv.provider_times.execution, 48_500);
        assert_eq!(inv.stats.memory_used, Some(10.0));
        assert!(inv.stats.cold_start);
        assert!(!inv.stats.failure);
        assert_eq!(inv.start.as_deref(), Some("cold"));
        assert_eq!(inv.request_id, "1fbecca7-2a");
        assert_eq!(
            inv.handler_output(),
            Some(
                &serde_json::json!({"result": {"records": 20}, "measurement": {"compute_time": 323.6}})
            ),
            "the handler's dict, as it returned it"
        );
    }

    #[test]
    fn errors_and_unforced_starts_are_failures() {
        let boom = response(500, &[("x-kindling-start", "cold")], "Traceback: KeyError");
        let inv = Invocation::from_response(StartMethod::Cold, Ok(boom), Duration::ZERO, 0.0, 0.0);
        assert_eq!(inv.status, Status::Error);
        assert!(inv.stats.failure);
        assert!(inv.error.as_deref().is_some_and(|e| e.contains("KeyError")));

        let warm = response(200, &[("x-kindling-start", "warm")], ENVELOPE);
        let inv = Invocation::from_response(StartMethod::Fork, Ok(warm), Duration::ZERO, 0.0, 0.0);
        assert_eq!(inv.status, Status::Error, "a forced fork that did not fork");

        let not_sebs = response(200, &[("x-kindling-start", "warm")], r#"{"hello": 1}"#);
        let inv =
            Invocation::from_response(StartMethod::Warm, Ok(not_sebs), Duration::ZERO, 0.0, 0.0);
        assert_eq!(inv.status, Status::Error);

        let down = Invocation::from_response(
            StartMethod::Warm,
            Err(anyhow!("cannot reach the Kindling worker")),
            Duration::ZERO,
            0.0,
            0.0,
        );
        assert_eq!(down.status, Status::Error);
        assert!(down.stats.failure);
    }

    pub(crate) fn fixture_run(bench: &str, start: StartMethod, client_ms: &[f64]) -> RunFile {
        let invocations: Vec<Invocation> = client_ms
            .iter()
            .enumerate()
            .map(|(n, ms)| Invocation {
                request_id: format!("r-{n}"),
                start: Some(start.as_str().to_string()),
                status: if n == 0 && client_ms.len() > 3 {
                    Status::Incorrect
                } else {
                    Status::Ok
                },
                error: None,
                times: Times {
                    client: (ms * 1000.0) as u64,
                    client_begin: 1.0,
                    client_end: 2.0,
                    benchmark: 300,
                    initialization: 0,
                    http_startup: 0,
                },
                provider_times: ProviderTimes {
                    initialization: 0,
                    execution: 250,
                },
                stats: Stats {
                    cold_start: start == StartMethod::Cold,
                    memory_used: Some(12.5 + n as f64),
                    failure: false,
                },
                timing: parse_timing("queue=0.01;sandbox=1;instance=2;handler=0.3;total=3.31"),
                container_id: Some("sb-1".into()),
                output: serde_json::json!({"result": {"result": {"a, \"b\"": 1}}}),
            })
            .collect();
        RunFile {
            benchmark: bench.into(),
            function: format!("bench-{bench}"),
            size: Size::Test,
            start,
            repetitions: client_ms.len() as u64,
            concurrency: 1,
            memory_mb: Some(512),
            worker: "127.0.0.1:5000".into(),
            kindling_version: "0.1.0".into(),
            begin: 1.0,
            end: 2.0,
            statistics: statistics(&invocations, start),
            invocations,
        }
    }

    #[test]
    fn results_serialize_with_sebs_field_names_and_round_trip() {
        let run = fixture_run("gzip", StartMethod::Warm, &[1.0, 2.0, 3.0, 4.0, 5.0]);
        let v = serde_json::to_value(&run).expect("serialize");
        assert_eq!(v["start"], "warm");
        assert_eq!(v["size"], "test");
        let inv = &v["invocations"][1];
        for field in [
            "client",
            "benchmark",
            "initialization",
            "client_begin",
            "http_startup",
        ] {
            assert!(inv["times"].get(field).is_some(), "times.{field}");
        }
        for field in ["cold_start", "memory_used", "failure"] {
            assert!(inv["stats"].get(field).is_some(), "stats.{field}");
        }
        assert_eq!(inv["times"]["client"], 2000);
        assert_eq!(inv["status"], "ok");
        assert_eq!(v["invocations"][0]["status"], "incorrect");
        assert!(inv["timing"]["total"].is_number());
        assert!(inv.get("error").is_none(), "no error key on success");
        let back: RunFile = serde_json::from_value(v).expect("deserialize");
        assert_eq!(back, run);
        assert_eq!(run.statistics.incorrect, 1);
        assert_eq!(run.statistics.ok, 4);
        assert_eq!(
            run.measured().count(),
            4,
            "the incorrect one is not measured"
        );
    }

    #[test]
    fn runs_load_sorted_by_benchmark_then_start_method_name() {
        let dir = tempfile::tempdir().expect("tempdir");
        for (bench, start) in [
            ("b", StartMethod::Warm),
            ("b", StartMethod::Cold),
            ("a", StartMethod::Fork),
            ("b", StartMethod::Fork),
        ] {
            let run = fixture_run(bench, start, &[1.0]);
            let sub = dir.path().join(bench);
            std::fs::create_dir_all(&sub).expect("mkdir");
            std::fs::write(
                sub.join(format!("{start}.json")),
                serde_json::to_vec(&run).expect("json"),
            )
            .expect("write");
        }
        std::fs::write(dir.path().join("b/notes.json"), "{}").expect("write");
        let order: Vec<String> = load_runs(dir.path())
            .expect("load")
            .iter()
            .map(|r| format!("{} {}", r.benchmark, r.start))
            .collect();
        assert_eq!(order, ["a fork", "b cold", "b fork", "b warm"]);
        assert!(forced(StartMethod::Warm).is_none());
        assert_eq!(forced(StartMethod::Fork), Some("fork"));
    }

    #[test]
    fn csv_has_sebs_columns_and_quotes_fields() {
        let mut run = fixture_run("gzip", StartMethod::Cold, &[1.5, 2.5]);
        run.invocations[1].request_id = "id,with \"quotes\"".into();
        run.invocations[1].stats.memory_used = None;
        let mut out = Vec::new();
        write_csv(&[run], &mut out).expect("csv");
        let text = String::from_utf8(out).expect("utf8");
        assert!(text.ends_with("\"\n") && !text.contains('\r'), "{text:?}");
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 3);
        assert_eq!(lines[0], CSV_HEADER.join(","));
        assert!(lines[0].starts_with(
            "memory,type,is_cold,exec_time,connection_time,client_time,provider_time,mem_used,"
        ));
        assert_eq!(
            lines[1],
            "512,cold,true,300,0,1500,250,12.500,gzip,test,cold,0,ok,r-0"
        );
        assert_eq!(
            lines[2],
            "512,cold,true,300,0,2500,250,,gzip,test,cold,0,ok,\"id,with \"\"quotes\"\"\""
        );
    }
}
