//! `kindling bench run`: SeBS's perf-cost experiment against a running worker.
//!
//! For each benchmark of `benchmarks/` (SeBS layout), it deploys `python/` plus `config.json`,
//! builds the event with the benchmark's `input.py` (run by `python3`, standard library only),
//! invokes the function `--repetitions` times from `--concurrency` clients, each on its own
//! keep-alive connection, with the requested start method (`cold` and `fork` are forced on every
//! invocation with `X-Kindling-Start`; `warm` runs one untimed warm-up call per client first),
//! and checks every distinct output with `input.py`'s `validate(event, output)`.
//!
//! It writes one file per benchmark and start method, `<output-dir>/<bench>/<start>.json`, with
//! SeBS's `ExecutionResult` fields for each invocation plus Kindling's start method and timing
//! breakdown, and `<output-dir>/result.csv` over every result file in the directory, with the
//! columns of SeBS's `perf-cost/result.csv` first.

use anyhow::{anyhow, bail, Context, Result};
use hyper::body::Bytes;
use hyper::Method;
use kindling_api::client::{Client, Response};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use std::collections::{BTreeMap, HashMap};
use std::io::{IsTerminal, Write};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};
use tokio::io::AsyncWriteExt;

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

/// The start method an experiment asks for.
#[derive(
    Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, clap::ValueEnum, Serialize, Deserialize,
)]
#[serde(rename_all = "lowercase")]
pub enum StartMethod {
    Cold,
    Fork,
    Warm,
}

impl StartMethod {
    pub fn as_str(self) -> &'static str {
        match self {
            StartMethod::Cold => "cold",
            StartMethod::Fork => "fork",
            StartMethod::Warm => "warm",
        }
    }

    /// The `X-Kindling-Start` value that forces this method on every invocation, if any.
    fn forced(self) -> Option<&'static str> {
        match self {
            StartMethod::Cold | StartMethod::Fork => Some(self.as_str()),
            StartMethod::Warm => None,
        }
    }
}

#[derive(clap::Args)]
pub struct RunArgs {
    /// Benchmarks to run: directory names under --benchmarks-dir.
    #[arg(required = true, value_name = "BENCH")]
    pub benchmarks: Vec<String>,
    /// Input size passed to each benchmark's generate_input().
    #[arg(long, value_enum, default_value_t = Size::Test)]
    pub size: Size,
    /// Start method; several may be given, comma-separated (cold and fork are forced on every
    /// invocation, warm runs one untimed warm-up call per client first).
    #[arg(long, value_enum, value_delimiter = ',', default_value = "warm")]
    pub start: Vec<StartMethod>,
    /// Measured invocations per benchmark and start method.
    #[arg(long, default_value_t = 10, value_parser = clap::value_parser!(u64).range(1..))]
    pub repetitions: u64,
    /// Clients invoking at once, each with its own connection.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u64).range(1..=1024))]
    pub concurrency: u64,
    /// Directory of the benchmarks (SeBS layout).
    #[arg(long, default_value = "benchmarks")]
    pub benchmarks_dir: PathBuf,
    /// Where results go: <DIR>/<bench>/<start>.json and <DIR>/result.csv.
    #[arg(long, default_value = "bench-results")]
    pub output_dir: PathBuf,
    /// Prefix of the deployed function names (run_local.py's default too).
    #[arg(long, default_value = "bench-")]
    pub prefix: String,
    /// Python that runs the benchmarks' input.py (generate_input, validate).
    #[arg(long, default_value = "python3")]
    pub python: String,
    /// Directory of the worker's storage backend (`<dir>/<function>/<bucket>/<key>`), where the
    /// input objects of storage benchmarks are written (default: the worker's, from /status).
    #[arg(long)]
    pub storage_dir: Option<PathBuf>,
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

pub(crate) fn now_unix() -> f64 {
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
fn tail(text: &str, max: usize) -> &str {
    let mut start = text.len().saturating_sub(max);
    while !text.is_char_boundary(start) {
        start += 1;
    }
    &text[start..]
}

impl Invocation {
    /// A successful invocation timed by the client, with nothing else known yet.
    fn timed(begin: f64, end: f64, client: Duration) -> Self {
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

    fn failed(error: String, begin: f64, end: f64, client: Duration) -> Self {
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
        let mut inv = Invocation {
            request_id: r.header("x-kindling-request").unwrap_or("").to_string(),
            start: start.clone(),
            status: Status::Ok,
            error: None,
            times: Times {
                client: client.as_micros() as u64,
                client_begin: begin,
                client_end: end,
                benchmark: 0,
                initialization,
                http_startup: 0,
            },
            provider_times: ProviderTimes {
                initialization,
                execution: ms_to_us(ms("total")),
            },
            stats: Stats {
                cold_start: start.as_deref() == Some("cold"),
                memory_used,
                failure: false,
            },
            timing,
            container_id: r.header("x-kindling-sandbox").map(str::to_string),
            output: Value::Null,
        };
        if !r.status.is_success() {
            let why = format!("HTTP {}: {}", r.status, tail(r.text().trim_end(), 2000));
            inv.output = Value::String(r.text());
            return inv.fail(why);
        }
        let inv = inv.with_envelope(&r.body);
        if inv.status != Status::Ok {
            return inv;
        }
        if let Some(forced) = asked.forced() {
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

    /// Builds the record of one run of a baseline (a process that printed the SeBS envelope,
    /// see `crate::baseline`): `ok` when it exited 0 with an envelope holding `result.output`.
    pub(crate) fn from_baseline(
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
    pub(crate) fn fail(mut self, why: String) -> Self {
        self.status = Status::Error;
        self.stats.failure = true;
        self.error = Some(why);
        self
    }

    /// Reads the SeBS envelope in `body` (the function's response) into this record; an
    /// invocation whose body is not an envelope with `result.output` fails.
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
        let has_output = envelope
            .get("result")
            .is_some_and(|r| r.get("output").is_some());
        self.output = envelope;
        if !has_output {
            return self.fail("not a SeBS envelope: no result.output".into());
        }
        self
    }

    /// `result.output` of the envelope: what `validate()` checks.
    fn handler_output(&self) -> Option<&Value> {
        self.output.get("result")?.get("output")
    }
}

/// Benchmarks in `dir`: directories with `input.py` and `python/function.py`.
pub fn discover(dir: &Path) -> Result<Vec<String>> {
    let entries = std::fs::read_dir(dir).with_context(|| {
        format!(
            "cannot read the benchmarks directory {} (pass --benchmarks-dir)",
            dir.display()
        )
    })?;
    let mut names = Vec::new();
    for entry in entries {
        let entry = entry?;
        let name = entry.file_name().to_string_lossy().into_owned();
        let path = entry.path();
        if !name.starts_with(['_', '.'])
            && path.join("input.py").is_file()
            && path.join("python").join("function.py").is_file()
        {
            names.push(name);
        }
    }
    names.sort();
    Ok(names)
}

/// Checks `wanted` against the benchmarks in `dir`, naming the valid ones on a miss.
pub fn check_benchmarks(dir: &Path, wanted: &[String]) -> Result<()> {
    let valid = discover(dir)?;
    if valid.is_empty() {
        bail!("no benchmarks in {} (pass --benchmarks-dir)", dir.display());
    }
    let unknown: Vec<&str> = wanted
        .iter()
        .filter(|w| !valid.contains(w))
        .map(String::as_str)
        .collect();
    if !unknown.is_empty() {
        bail!(
            "unknown benchmark{} {}; valid benchmarks: {}",
            if unknown.len() > 1 { "s" } else { "" },
            unknown.join(", "),
            valid.join(", ")
        );
    }
    Ok(())
}

/// The function upload of a benchmark, as run_local.py packs it: the files of `python/` at the
/// root (without `__pycache__` and `.pyc`), plus `config.json`.
pub fn pack_benchmark(dir: &Path) -> Result<Vec<u8>> {
    use flate2::write::GzEncoder;
    fn header(size: u64, mode: u32, kind: tar::EntryType) -> tar::Header {
        let mut h = tar::Header::new_gnu();
        h.set_entry_type(kind);
        h.set_size(size);
        h.set_mode(mode);
        h.set_mtime(0);
        h.set_uid(0);
        h.set_gid(0);
        h
    }
    fn walk(tar: &mut tar::Builder<GzEncoder<Vec<u8>>>, root: &Path, dir: &Path) -> Result<()> {
        let mut entries: Vec<_> = std::fs::read_dir(dir)
            .with_context(|| format!("cannot read {}", dir.display()))?
            .collect::<std::io::Result<_>>()?;
        entries.sort_by_key(|e| e.file_name());
        for e in entries {
            let path = e.path();
            let name = e.file_name();
            let name = name.to_string_lossy();
            let rel = path.strip_prefix(root)?;
            let kind = e.file_type()?;
            if kind.is_dir() {
                if name == "__pycache__" {
                    continue;
                }
                tar.append_data(
                    &mut header(0, 0o755, tar::EntryType::Directory),
                    rel,
                    std::io::empty(),
                )?;
                walk(tar, root, &path)?;
            } else if kind.is_file() && !name.ends_with(".pyc") {
                let data = std::fs::read(&path)
                    .with_context(|| format!("cannot read {}", path.display()))?;
                tar.append_data(
                    &mut header(data.len() as u64, 0o644, tar::EntryType::Regular),
                    rel,
                    data.as_slice(),
                )?;
            }
        }
        Ok(())
    }
    let mut tar = tar::Builder::new(GzEncoder::new(Vec::new(), flate2::Compression::fast()));
    let code = dir.join("python");
    walk(&mut tar, &code, &code)?;
    let config = dir.join("config.json");
    if config.is_file() {
        let data = std::fs::read(&config)?;
        tar.append_data(
            &mut header(data.len() as u64, 0o644, tar::EntryType::Regular),
            "config.json",
            data.as_slice(),
        )?;
    }
    Ok(tar.into_inner()?.finish()?)
}

/// Runs `input.py` of a benchmark: `generate <size> [function's storage dir]` prints
/// `{"event": ...}`, after writing the benchmark's input objects as `<dir>/<bucket>/<key>`;
/// `validate` reads `{"event": ..., "outputs": [...]}` and prints one `{"ok", "error"}` per
/// output (a validator that raises is a failed check, never a pass).
const INPUT_DRIVER: &str = r#"
import importlib.util, json, os, sys
spec = importlib.util.spec_from_file_location("kindling_bench_input", sys.argv[1])
m = importlib.util.module_from_spec(spec)
spec.loader.exec_module(m)
if sys.argv[2] == "generate":
    size = sys.argv[3]
    storage = sys.argv[4] if len(sys.argv) > 4 else ""
    if hasattr(m, "storage_inputs"):
        if not storage:
            print("this benchmark reads object storage: pass --storage-dir (the worker's storage directory)", file=sys.stderr)
            sys.exit(3)
        for bucket, objects in m.storage_inputs(size).items():
            for key, data in objects.items():
                path = os.path.join(storage, bucket, key)
                os.makedirs(os.path.dirname(path), exist_ok=True)
                with open(path, "wb") as f:
                    f.write(data)
    json.dump({"event": m.generate_input(size)}, sys.stdout)
else:
    req = json.load(sys.stdin)
    out = []
    for o in req["outputs"]:
        try:
            out.append({"ok": bool(m.validate(req["event"], o)), "error": None})
        except Exception as e:
            out.append({"ok": False, "error": "validate() raised %s: %s" % (type(e).__name__, e)})
    json.dump(out, sys.stdout)
"#;

async fn run_driver(python: &str, args: &[&str], stdin: Vec<u8>) -> Result<Vec<u8>> {
    let mut child = tokio::process::Command::new(python)
        .arg("-c")
        .arg(INPUT_DRIVER)
        .args(args)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .with_context(|| format!("cannot run {python} (pass --python)"))?;
    let mut pipe = child.stdin.take().ok_or_else(|| anyhow!("no stdin pipe"))?;
    let writer = tokio::spawn(async move {
        let _ = pipe.write_all(&stdin).await;
    });
    let out = child.wait_with_output().await?;
    let _ = writer.await;
    if !out.status.success() {
        let err = String::from_utf8_lossy(&out.stderr);
        bail!("{}", tail(err.trim_end(), 3000));
    }
    Ok(out.stdout)
}

pub(crate) async fn generate_event(
    python: &str,
    input_py: &Path,
    size: Size,
    storage_dir: Option<&Path>,
) -> Result<Value> {
    let path = input_py.to_string_lossy();
    let storage = storage_dir.map(|p| p.to_string_lossy().into_owned());
    let mut args = vec![path.as_ref(), "generate", size.as_str()];
    if let Some(s) = &storage {
        args.push(s);
    }
    let out = run_driver(python, &args, Vec::new())
        .await
        .context("generate_input() failed")?;
    let mut v: Value = serde_json::from_slice(&out).context("generate_input() printed no JSON")?;
    Ok(v["event"].take())
}

/// Validates every distinct output of `invocations` once, turning `ok` into `incorrect` where
/// `validate()` says no (or raises, or the validator cannot run).
pub(crate) async fn validate(
    python: &str,
    input_py: &Path,
    event: &Value,
    invocations: &mut [Invocation],
) -> Result<()> {
    let mut distinct: Vec<Value> = Vec::new();
    let mut index: HashMap<String, usize> = HashMap::new();
    let mut which = vec![None; invocations.len()];
    for (i, inv) in invocations.iter().enumerate() {
        if inv.status != Status::Ok {
            continue;
        }
        let output = inv.handler_output().cloned().unwrap_or(Value::Null);
        let key = output.to_string();
        let n = *index.entry(key).or_insert_with(|| {
            distinct.push(output);
            distinct.len() - 1
        });
        which[i] = Some(n);
    }
    if distinct.is_empty() {
        return Ok(());
    }
    let request = serde_json::to_vec(&serde_json::json!({"event": event, "outputs": distinct}))?;
    let path = input_py.to_string_lossy();
    let verdicts: Vec<(bool, Option<String>)> =
        match run_driver(python, &[path.as_ref(), "validate"], request).await {
            Ok(out) => {
                #[derive(Deserialize)]
                struct Verdict {
                    ok: bool,
                    error: Option<String>,
                }
                let v: Vec<Verdict> = serde_json::from_slice(&out)
                    .context("validate() driver printed no JSON list")?;
                v.into_iter().map(|v| (v.ok, v.error)).collect()
            }
            Err(e) => vec![(false, Some(format!("the validator failed: {e:#}"))); distinct.len()],
        };
    for (inv, n) in invocations.iter_mut().zip(which) {
        let Some(n) = n else { continue };
        let (ok, why) = verdicts
            .get(n)
            .cloned()
            .unwrap_or((false, Some("the validator gave no verdict".into())));
        if !ok {
            inv.status = Status::Incorrect;
            inv.stats.failure = true;
            inv.error = Some(why.unwrap_or_else(|| "validate() returned False".into()));
        }
    }
    Ok(())
}

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

/// A progress line on stderr: redrawn in place on a terminal, every 10 s otherwise.
pub(crate) struct Progress {
    label: String,
    total: u64,
    done: AtomicU64,
    failed: AtomicU64,
    began: Instant,
}

impl Progress {
    pub(crate) fn new(label: String, total: u64) -> Arc<Self> {
        Arc::new(Progress {
            label,
            total,
            done: AtomicU64::new(0),
            failed: AtomicU64::new(0),
            began: Instant::now(),
        })
    }

    /// Counts one finished invocation.
    pub(crate) fn record(&self, ok: bool) {
        self.done.fetch_add(1, Ordering::Relaxed);
        if !ok {
            self.failed.fetch_add(1, Ordering::Relaxed);
        }
    }

    fn line(&self) -> String {
        let done = self.done.load(Ordering::Relaxed);
        let width = 24;
        let filled = (done * width / self.total.max(1)) as usize;
        format!(
            "{} [{}{}] {done}/{} ({} failed) {:.1}s",
            self.label,
            "#".repeat(filled),
            "-".repeat(width as usize - filled),
            self.total,
            self.failed.load(Ordering::Relaxed),
            self.began.elapsed().as_secs_f64()
        )
    }

    pub(crate) fn spawn_ticker(self: &Arc<Self>) -> tokio::task::JoinHandle<()> {
        let p = self.clone();
        tokio::spawn(async move {
            let tty = std::io::stderr().is_terminal();
            let mut last = Instant::now();
            loop {
                tokio::time::sleep(Duration::from_millis(200)).await;
                if tty {
                    eprint!("\r{}\x1b[K", p.line());
                } else if last.elapsed() >= Duration::from_secs(10) {
                    eprintln!("{}", p.line());
                    last = Instant::now();
                }
            }
        })
    }

    pub(crate) fn finish(&self, ticker: tokio::task::JoinHandle<()>) {
        ticker.abort();
        if std::io::stderr().is_terminal() {
            eprintln!("\r{}\x1b[K", self.line());
        } else {
            eprintln!("{}", self.line());
        }
    }
}

/// One invocation on `c`'s connection. A reply that takes longer than `limit` is an error, and
/// the connection, which still carries that request, is replaced.
async fn invoke(
    c: &mut Client,
    addr: SocketAddr,
    path: &str,
    asked: StartMethod,
    event: Bytes,
    limit: Duration,
) -> (Result<Response>, Duration, f64, f64) {
    let mut headers = vec![("content-type", "application/json")];
    if let Some(m) = asked.forced() {
        headers.push(("x-kindling-start", m));
    }
    let begin = now_unix();
    let t = Instant::now();
    let r = match tokio::time::timeout(limit, c.request(Method::POST, path, &headers, event)).await
    {
        Ok(r) => r,
        Err(_) => {
            *c = Client::new(addr);
            Err(anyhow!("no reply within {} s", limit.as_secs()))
        }
    };
    let elapsed = t.elapsed();
    (r, elapsed, begin, now_unix())
}

/// What one experiment invokes, how and how often.
pub(crate) struct Plan {
    pub(crate) addr: SocketAddr,
    pub(crate) function: String,
    pub(crate) event: Bytes,
    pub(crate) start: StartMethod,
    pub(crate) repetitions: u64,
    pub(crate) clients: u64,
    /// Longest wait for one reply.
    pub(crate) limit: Duration,
}

/// Invokes the plan's function `repetitions` times from `clients` concurrent clients; returns
/// the invocations in the order they were started.
pub(crate) async fn measure(plan: &Plan, progress: Arc<Progress>) -> Vec<Invocation> {
    let Plan {
        addr,
        ref function,
        ref event,
        start: asked,
        repetitions: reps,
        clients,
        limit,
    } = *plan;
    let path: Arc<str> = format!("/run/{function}").into();
    if asked == StartMethod::Fork {
        // The first forced fork of a function creates its zygote; it is not a fork from a
        // ready zygote, so it is not measured.
        let mut c = Client::new(addr);
        let (r, ..) = invoke(&mut c, addr, &path, asked, event.clone(), limit).await;
        if let Ok(r) = r {
            if r.header("x-kindling-start") != Some("fork") {
                eprintln!(
                    "warning: {function}: the fork warm-up came back as {:?} (are zygotes enabled?)",
                    r.header("x-kindling-start").unwrap_or("-")
                );
            }
        }
    }
    let next = Arc::new(AtomicU64::new(0));
    let barrier = Arc::new(tokio::sync::Barrier::new(clients as usize));
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..clients {
        let (path, event, next, barrier, progress) = (
            path.clone(),
            event.clone(),
            next.clone(),
            barrier.clone(),
            progress.clone(),
        );
        tasks.spawn(async move {
            let mut c = Client::new(addr);
            // Open the connection before measuring, so no invocation pays for it.
            let opened = match c.get("/status").await {
                Ok(_) => Ok(()),
                Err(e) => Err(format!("{e:#}")),
            };
            if asked == StartMethod::Warm && opened.is_ok() {
                // One instance per client, so the measured calls find an idle one.
                let _ = invoke(&mut c, addr, &path, asked, event.clone(), limit).await;
            }
            barrier.wait().await;
            let mut done = Vec::new();
            loop {
                let n = next.fetch_add(1, Ordering::Relaxed);
                if n >= reps {
                    break;
                }
                let inv = match &opened {
                    Err(e) => Invocation::failed(e.clone(), now_unix(), now_unix(), Duration::ZERO),
                    Ok(()) => {
                        if asked != StartMethod::Warm && clients == 1 {
                            // Sequential starts: each on a worker done with the last one's
                            // background work (bursts measure starts under load instead).
                            let _ = c.settle().await;
                        }
                        let (r, elapsed, begin, end) =
                            invoke(&mut c, addr, &path, asked, event.clone(), limit).await;
                        Invocation::from_response(asked, r, elapsed, begin, end)
                    }
                };
                progress.record(inv.status == Status::Ok);
                done.push((n, inv));
            }
            done
        });
    }
    let mut all = Vec::with_capacity(reps as usize);
    while let Some(r) = tasks.join_next().await {
        match r {
            Ok(done) => all.extend(done),
            Err(e) => eprintln!("warning: a client task failed: {e}"),
        }
    }
    all.sort_by_key(|(n, _)| *n);
    all.into_iter().map(|(_, inv)| inv).collect()
}

pub(crate) async fn deploy(c: &mut Client, function: &str, dir: &Path) -> Result<Value> {
    let packed = pack_benchmark(dir)?;
    let mut last = Value::Null;
    let status = c
        .request_lines(
            Method::POST,
            &format!("/registry/{function}?progress"),
            packed,
            |line| match serde_json::from_str::<Value>(line) {
                Ok(v) if v.get("progress").is_some() && v.get("status").is_none() => {
                    eprintln!("  {function}: {}", v["progress"].as_str().unwrap_or(""));
                }
                Ok(v) => last = v,
                Err(_) => last = Value::String(line.to_string()),
            },
        )
        .await?;
    if !status.is_success() {
        bail!(
            "deploy of {function}: {status}: {}",
            last.as_str()
                .map(str::to_string)
                .unwrap_or_else(|| last.to_string())
        );
    }
    if let Some(err) = last.get("error") {
        bail!(
            "deploy of {function} failed: {}",
            err.as_str()
                .map(str::to_string)
                .unwrap_or_else(|| err.to_string())
        );
    }
    Ok(last)
}

fn config_value(dir: &Path, key: &str) -> Option<f64> {
    let text = std::fs::read_to_string(dir.join("config.json")).ok()?;
    serde_json::from_str::<Value>(&text).ok()?[key].as_f64()
}

pub(crate) fn config_memory(dir: &Path) -> Option<u64> {
    config_value(dir, "memory").map(|m| m as u64)
}

/// How long the client waits for one reply: twice the function's `timeout` (60 s when
/// config.json has none) plus 30 s, so that the worker's own timeout answers first.
pub(crate) fn reply_limit(dir: &Path) -> Duration {
    let timeout = config_value(dir, "timeout")
        .filter(|t| *t > 0.0)
        .unwrap_or(60.0);
    Duration::from_secs_f64(timeout * 2.0 + 30.0)
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
    runs.sort_by(|a, b| (&a.benchmark, a.start).cmp(&(&b.benchmark, b.start)));
    Ok(runs)
}

/// The columns of SeBS's `perf-cost/result.csv`, then Kindling's. Times in microseconds,
/// memory in MB, as in SeBS.
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

fn csv_field(s: &str) -> String {
    if s.contains([',', '"', '\n', '\r']) {
        format!("\"{}\"", s.replace('"', "\"\""))
    } else {
        s.to_string()
    }
}

/// Writes one CSV row per invocation of `runs`.
pub fn write_csv(runs: &[RunFile], out: &mut impl Write) -> std::io::Result<()> {
    writeln!(out, "{}", CSV_HEADER.join(","))?;
    for run in runs {
        for i in &run.invocations {
            let row = [
                run.memory_mb.map(|m| m.to_string()).unwrap_or_default(),
                run.start.as_str().to_string(),
                i.stats.cold_start.to_string(),
                i.times.benchmark.to_string(),
                i.times.http_startup.to_string(),
                i.times.client.to_string(),
                i.provider_times.execution.to_string(),
                i.stats
                    .memory_used
                    .map(|m| format!("{m:.3}"))
                    .unwrap_or_default(),
                run.benchmark.clone(),
                run.size.as_str().to_string(),
                i.start.clone().unwrap_or_default(),
                i.times.initialization.to_string(),
                i.status.as_str().to_string(),
                i.request_id.clone(),
            ];
            let row: Vec<String> = row.iter().map(|f| csv_field(f)).collect();
            writeln!(out, "{}", row.join(","))?;
        }
    }
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
    f.flush()?;
    Ok(path)
}

pub async fn run(addr: SocketAddr, args: RunArgs) -> Result<()> {
    check_benchmarks(&args.benchmarks_dir, &args.benchmarks)?;
    let mut c = Client::new(addr);
    let status = c.get("/status").await?;
    if !status.status.is_success() {
        bail!(
            "{addr} answered /status with {}; is it a Kindling worker?",
            status.status
        );
    }
    // Storage benchmarks write their inputs into the worker's own storage directory unless
    // told otherwise (the directory backend: each function's buckets as directories).
    let status_json: serde_json::Value = serde_json::from_slice(&status.body).unwrap_or_default();
    let storage_dir = args.storage_dir.clone().or_else(|| {
        status_json["storage_dir"]
            .as_str()
            .map(PathBuf::from)
            .filter(|p| p.is_dir())
    });
    std::fs::create_dir_all(&args.output_dir)
        .with_context(|| format!("cannot create {}", args.output_dir.display()))?;
    let mut starts = args.start.clone();
    starts.sort();
    starts.dedup();
    let clients = args.concurrency.min(args.repetitions);
    let mut problems = Vec::new();
    let mut written = Vec::new();
    for bench in &args.benchmarks {
        let dir = args.benchmarks_dir.join(bench);
        let function = format!("{}{bench}", args.prefix);
        let input_py = std::path::absolute(dir.join("input.py"))?;
        // The function's own buckets: <storage dir>/<function>/<bucket>/<key>.
        let function_storage = storage_dir.as_ref().map(|d| d.join(&function));
        let event = match generate_event(
            &args.python,
            &input_py,
            args.size,
            function_storage.as_deref(),
        )
        .await
        {
            Ok(e) => e,
            Err(e) => {
                eprintln!("{bench}: cannot prepare the input: {e:#}");
                problems.push(format!("{bench}: input not prepared"));
                continue;
            }
        };
        eprintln!("{bench}: deploying {function}");
        match deploy(&mut c, &function, &dir).await {
            Ok(d) => {
                let hash = d["hash"].as_str().unwrap_or("");
                eprintln!(
                    "{bench}: {} (version {})",
                    if d["changed"].as_bool() == Some(false) {
                        "unchanged"
                    } else {
                        "deployed"
                    },
                    &hash[..hash.len().min(12)]
                );
            }
            Err(e) => {
                eprintln!("{bench}: {e:#}");
                problems.push(format!("{bench}: not deployed"));
                continue;
            }
        }
        let body = Bytes::from(serde_json::to_vec(&event)?);
        for &start in &starts {
            // A worker that went away ends the run with the client's one message, instead
            // of a result file of connection errors per remaining experiment.
            if let Err(e) = c.get("/status").await {
                if !written.is_empty() {
                    write_result_csv(&args.output_dir)?;
                }
                return Err(e);
            }
            let progress = Progress::new(format!("{bench} {}", start.as_str()), args.repetitions);
            let ticker = progress.spawn_ticker();
            let begin = now_unix();
            let plan = Plan {
                addr,
                function: function.clone(),
                event: body.clone(),
                start,
                repetitions: args.repetitions,
                clients,
                limit: reply_limit(&dir),
            };
            let mut invocations = measure(&plan, progress.clone()).await;
            let end = now_unix();
            progress.finish(ticker);
            validate(&args.python, &input_py, &event, &mut invocations).await?;
            let statistics = statistics(&invocations, start);
            let run = RunFile {
                benchmark: bench.clone(),
                function: function.clone(),
                size: args.size,
                start,
                repetitions: args.repetitions,
                concurrency: clients,
                memory_mb: config_memory(&dir),
                worker: addr.to_string(),
                kindling_version: env!("CARGO_PKG_VERSION").to_string(),
                begin,
                end,
                statistics,
                invocations,
            };
            let out_dir = args.output_dir.join(bench);
            std::fs::create_dir_all(&out_dir)?;
            let path = out_dir.join(format!("{}.json", start.as_str()));
            std::fs::write(&path, serde_json::to_vec_pretty(&run)?)
                .with_context(|| format!("cannot write {}", path.display()))?;
            let s = &run.statistics;
            let mut latencies: Vec<f64> = run
                .measured()
                .map(|i| i.times.client as f64 / 1000.0)
                .collect();
            let summary = crate::report::Summary::of(&mut latencies);
            eprintln!(
                "{bench} {}: {} ok, {} incorrect, {} failed{}; client p50 {} ms, p99 {} ms -> {}",
                start.as_str(),
                s.ok,
                s.incorrect,
                s.failures,
                if s.start_mismatch > 0 {
                    format!(", {} with another start method", s.start_mismatch)
                } else {
                    String::new()
                },
                summary
                    .as_ref()
                    .map_or("-".into(), |x| crate::report::fmt_ms(x.p50)),
                summary
                    .as_ref()
                    .map_or("-".into(), |x| crate::report::fmt_ms(x.p99)),
                path.display()
            );
            if let Some(first) = run.invocations.iter().find(|i| i.status != Status::Ok) {
                eprintln!(
                    "  first {}: {}",
                    first.status.as_str(),
                    first.error.as_deref().unwrap_or("-")
                );
            }
            if s.incorrect > 0 || s.failures > 0 {
                problems.push(format!(
                    "{bench} {}: {} incorrect, {} failed",
                    start.as_str(),
                    s.incorrect,
                    s.failures
                ));
            }
            written.push(path);
        }
    }
    if !written.is_empty() {
        let csv = write_result_csv(&args.output_dir)?;
        println!(
            "wrote {} result files to {}; CSV of all results there: {}; report: kindling bench report {}",
            written.len(),
            args.output_dir.display(),
            csv.display(),
            args.output_dir.display()
        );
    }
    if !problems.is_empty() {
        bail!("{}", problems.join("; "));
    }
    Ok(())
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
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
        "result": {"output": {"records": 20}, "measurement": {"compute_time": 323.6}},
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
            Some(&serde_json::json!({"records": 20}))
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
                output: serde_json::json!({"result": {"output": {"a, \"b\"": 1}}}),
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
    fn csv_has_sebs_columns_and_quotes_fields() {
        let mut run = fixture_run("gzip", StartMethod::Cold, &[1.5, 2.5]);
        run.invocations[1].request_id = "id,with \"quotes\"".into();
        run.invocations[1].stats.memory_used = None;
        let mut out = Vec::new();
        write_csv(&[run], &mut out).expect("csv");
        let text = String::from_utf8(out).expect("utf8");
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 3);
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

    #[test]
    fn unknown_benchmarks_are_named_with_the_valid_ones() {
        let dir = tempfile::tempdir().expect("tempdir");
        for b in ["gzip", "json_serdes", "_shared"] {
            std::fs::create_dir_all(dir.path().join(b).join("python")).expect("mkdir");
            std::fs::write(dir.path().join(b).join("input.py"), "").expect("write");
            std::fs::write(dir.path().join(b).join("python/function.py"), "").expect("write");
        }
        assert_eq!(
            discover(dir.path()).expect("discover"),
            ["gzip", "json_serdes"]
        );
        check_benchmarks(dir.path(), &["gzip".into()]).expect("known");
        let err = check_benchmarks(dir.path(), &["gzip".into(), "nope".into()])
            .expect_err("unknown")
            .to_string();
        assert_eq!(
            err,
            "unknown benchmark nope; valid benchmarks: gzip, json_serdes"
        );
        let err =
            check_benchmarks(&dir.path().join("missing"), &["gzip".into()]).expect_err("no dir");
        assert!(format!("{err:#}").contains("--benchmarks-dir"));
    }

    #[test]
    fn package_holds_python_files_and_config() {
        let dir = tempfile::tempdir().expect("tempdir");
        let b = dir.path();
        std::fs::create_dir_all(b.join("python/templates")).expect("mkdir");
        std::fs::create_dir_all(b.join("python/__pycache__")).expect("mkdir");
        std::fs::write(b.join("python/function.py"), "def handler(e): return {}\n").expect("w");
        std::fs::write(b.join("python/templates/page.html"), "<p/>").expect("w");
        std::fs::write(b.join("python/__pycache__/function.cpython-311.pyc"), "x").expect("w");
        std::fs::write(b.join("config.json"), r#"{"memory": 256}"#).expect("w");
        std::fs::write(b.join("input.py"), "").expect("w");
        let packed = pack_benchmark(b).expect("pack");
        let mut archive = tar::Archive::new(flate2::read::GzDecoder::new(packed.as_slice()));
        let mut names: Vec<String> = archive
            .entries()
            .expect("entries")
            .map(|e| {
                e.expect("entry")
                    .path()
                    .expect("path")
                    .to_string_lossy()
                    .into_owned()
            })
            .collect();
        names.sort();
        assert_eq!(
            names,
            [
                "config.json",
                "function.py",
                "templates",
                "templates/page.html"
            ]
        );
        assert_eq!(config_memory(b), Some(256));
    }

    #[test]
    fn the_input_driver_generates_and_validates() {
        // input.py is standard-library Python; skip where no python3 is installed.
        if std::process::Command::new("python3")
            .arg("-c")
            .arg("")
            .status()
            .is_err()
        {
            return;
        }
        let dir = tempfile::tempdir().expect("tempdir");
        let input = dir.path().join("input.py");
        std::fs::write(
            &input,
            "def generate_input(size):\n    return {'n': {'test': 1}[size]}\n\n\
             def validate(event, output):\n    if output == 'boom':\n        raise ValueError('bad')\n    \
             return output == event['n'] * 2\n",
        )
        .expect("write");
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        rt.block_on(async {
            let event = generate_event("python3", &input, Size::Test, None)
                .await
                .expect("gen");
            assert_eq!(event, serde_json::json!({"n": 1}));
            let mk = |out: Value| Invocation {
                output: serde_json::json!({"result": {"output": out}}),
                ..Invocation::failed(String::new(), 0.0, 0.0, Duration::ZERO)
            };
            let mut invs = vec![mk(2.into()), mk(3.into()), mk("boom".into()), mk(2.into())];
            for i in &mut invs {
                i.status = Status::Ok;
                i.error = None;
            }
            invs.push(Invocation::failed(
                "HTTP 500".into(),
                0.0,
                0.0,
                Duration::ZERO,
            ));
            validate("python3", &input, &event, &mut invs)
                .await
                .expect("validate");
            let statuses: Vec<Status> = invs.iter().map(|i| i.status).collect();
            assert_eq!(
                statuses,
                [
                    Status::Ok,
                    Status::Incorrect,
                    Status::Incorrect,
                    Status::Ok,
                    Status::Error
                ]
            );
            assert!(invs[2]
                .error
                .as_deref()
                .is_some_and(|e| e.contains("ValueError")));
            assert!(invs[1].stats.failure);
        });
    }
}
