//! Request and response bodies of every route, and the headers of a `/run` reply, as types: the
//! worker builds its replies from them and clients read them back, so a renamed field is a
//! compile error on both sides rather than an empty string on one.

use crate::StartMethod;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::PathBuf;

/// Where the worker is in its life, as `/status` reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum WorkerState {
    /// Setting up; not serving functions yet.
    Starting,
    /// Serving.
    Ready,
    /// Shutting down: in-flight requests finish, new ones get 503 `shutting-down`.
    Draining,
}

impl WorkerState {
    pub fn as_str(self) -> &'static str {
        match self {
            WorkerState::Starting => "starting",
            WorkerState::Ready => "ready",
            WorkerState::Draining => "draining",
        }
    }
}

impl std::fmt::Display for WorkerState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// `GET /status`. Callers without the admin token get only the first three fields.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Status {
    pub status: WorkerState,
    /// The worker's version.
    pub version: String,
    pub uptime_secs: u64,
    /// What only the admin sees: host paths, counts, zygotes.
    #[serde(flatten, default, skip_serializing_if = "Option::is_none")]
    pub detail: Option<StatusDetail>,
}

/// The admin's part of `/status`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StatusDetail {
    /// The worker's root directory.
    pub root: PathBuf,
    /// The base root filesystem in use.
    pub base: BaseInfo,
    /// The base's root filesystem on the host.
    pub rootfs: PathBuf,
    /// Where object storage keeps buckets (none when disabled or not a local directory).
    pub storage_dir: Option<PathBuf>,
    /// The cgroup layout, e.g. `v1 (memory, cpu, pids)`.
    pub cgroups: String,
    /// Where idle instances are frozen: `v1`, `v2` or `none`.
    pub freezer: String,
    pub functions: usize,
    pub sandboxes: usize,
    pub idle_instances: usize,
    pub connections: usize,
    /// One object per live zygote (id, pid, packages, forks, seeds, memory, ...), for
    /// diagnostics: its fields may change between versions.
    pub zygotes: Vec<serde_json::Value>,
}

/// The base root filesystem (`/status`'s `base`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BaseInfo {
    pub name: String,
    /// Interpreter path inside the base.
    pub python: String,
    /// `major.minor` of that interpreter, e.g. "3.11".
    pub python_version: String,
    /// The interpreter's bytecode cache tag, e.g. "cpython-311".
    pub cache_tag: String,
    /// `sysconfig.get_platform()` of the interpreter, e.g. "linux-x86_64".
    pub platform: String,
}

/// Keys of `GET /stats`, a flat object of counters (dotted, OpenLambda style), gauges and mean
/// latencies. Counters appear once they are non-zero; gauges are always there.
pub mod stats {
    /// Sandboxes holding instances.
    pub const SANDBOXES_LIVE: &str = "sandboxes.live";
    pub const INSTANCES_IDLE: &str = "instances.idle";
    pub const ZYGOTES_LIVE: &str = "zygotes.live";
    /// Sandboxes zygotes live in.
    pub const SANDBOXES_ZYGOTE: &str = "sandboxes.zygote";
    /// Spare sandboxes, made ahead of need.
    pub const SANDBOXES_POOLED: &str = "sandboxes.pooled";
    /// Sandboxes holding a seed.
    pub const SANDBOXES_SEEDED: &str = "sandboxes.seeded";
    /// Refills and sandbox removals in flight.
    pub const BACKGROUND_PENDING: &str = "background.pending";
    pub const FUNCTIONS: &str = "functions";
    pub const HTTP_CONNECTIONS: &str = "http.connections";
    /// Package installs since the worker started (`/stats` only).
    pub const PACKAGE_PULLS: &str = "pull-package.cnt";
    /// Packages a deploy found in the store (`/stats` only).
    pub const PACKAGE_STORE_HITS: &str = "package-store-hit.cnt";

    /// The gauges, in `/stats` and (with `.`/`-` as `_`, prefixed `kindling_`) in `/metrics`.
    pub const GAUGES: &[&str] = &[
        SANDBOXES_LIVE,
        INSTANCES_IDLE,
        ZYGOTES_LIVE,
        SANDBOXES_ZYGOTE,
        SANDBOXES_POOLED,
        SANDBOXES_SEEDED,
        BACKGROUND_PENDING,
        FUNCTIONS,
        HTTP_CONNECTIONS,
    ];

    /// The counter of invocations that started by `method`.
    pub fn start(method: crate::StartMethod) -> String {
        format!("start.{method}")
    }

    /// The key of the mean latency (ms) of invocations started by `method`.
    pub fn latency_avg_ms(method: crate::StartMethod) -> String {
        format!("latency.{method}.ms-avg")
    }

    /// The counter of error replies of a kind.
    pub fn errors(kind: crate::ErrorKind) -> String {
        format!("errors.{kind}")
    }
}

/// `GET /stats`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Stats(pub BTreeMap<String, serde_json::Number>);

impl Stats {
    /// A counter or gauge (0 when absent: counters appear at their first event).
    pub fn count(&self, key: &str) -> u64 {
        self.0
            .get(key)
            .and_then(serde_json::Number::as_u64)
            .unwrap_or(0)
    }

    /// Any value as a float (mean latencies are).
    pub fn value(&self, key: &str) -> Option<f64> {
        self.0.get(key).and_then(serde_json::Number::as_f64)
    }

    /// Sandboxes of every kind: instances', zygotes', spare and seeded.
    pub fn all_sandboxes(&self) -> u64 {
        [
            stats::SANDBOXES_LIVE,
            stats::SANDBOXES_ZYGOTE,
            stats::SANDBOXES_POOLED,
            stats::SANDBOXES_SEEDED,
        ]
        .iter()
        .map(|k| self.count(k))
        .sum()
    }
}

/// Which function format a version uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Format {
    /// `f.py` with `def f(event)`.
    OpenLambda,
    /// `function.py` with `def handler(event)`.
    Sebs,
}

impl Format {
    pub fn as_str(self) -> &'static str {
        match self {
            Format::OpenLambda => "openlambda",
            Format::Sebs => "sebs",
        }
    }
}

/// One exact package version of a function's closure.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Package {
    /// Normalized (PEP 503) name.
    pub name: String,
    pub version: String,
    /// A direct reference (URL or path) the package is installed from.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source: Option<String>,
}

impl Package {
    /// `<name>==<version>`.
    pub fn key(&self) -> String {
        format!("{}=={}", self.name, self.version)
    }
}

/// A function's resolved package closure.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Lock {
    pub packages: Vec<Package>,
    /// Keys of packages shipping `.pth` files.
    #[serde(default)]
    pub site_packages: Vec<String>,
    /// Direct dependencies within the closure: package name -> names it requires.
    #[serde(default)]
    pub requires: BTreeMap<String, Vec<String>>,
}

/// A function's own configuration (`config.json` or `ol.yaml`), as deployed.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct FunctionConfig {
    pub memory_mb: Option<u64>,
    pub timeout_secs: Option<f64>,
    pub network: Option<bool>,
    /// Names of its environment variables; values are never in a reply (they may be secrets).
    pub environment: Vec<String>,
    /// HTTP methods `/run/<name>` accepts; empty means any.
    pub methods: Vec<String>,
}

/// One deployed function version (`GET /registry` lists them).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Function {
    pub name: String,
    /// The content hash of its code.
    pub hash: String,
    pub format: Format,
    pub config: FunctionConfig,
    pub lock: Lock,
    /// Modules its code imports by absolute name.
    #[serde(default)]
    pub imports: Vec<String>,
}

/// `GET /registry/<name>`: the version and how its instances are laid out.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FunctionDetail {
    #[serde(flatten)]
    pub function: Function,
    pub instance: InstanceLayout,
}

/// How a function's instances are set up: what a benchmark baseline needs to run the same
/// handler outside Kindling in the same layout.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct InstanceLayout {
    /// The interpreter (a path inside the sandbox) and its flags; the runtime's `-c` follows.
    pub interpreter: Vec<String>,
    /// The sandbox's mounts in order, sources as host paths.
    pub mounts: Vec<Mount>,
    /// The environment: Kindling's variables with their values, the function's own by name
    /// only (`None`: withheld).
    pub env: Vec<(String, Option<String>)>,
    pub cwd: PathBuf,
    pub uid: u32,
    pub gid: u32,
    pub limits: Limits,
    pub network: bool,
}

/// One mount of a sandbox; `target` is a path inside it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Mount {
    Bind {
        source: PathBuf,
        target: PathBuf,
        writable: bool,
    },
    Tmpfs {
        target: PathBuf,
        size_bytes: u64,
    },
    Proc {
        target: PathBuf,
    },
    Dev {
        target: PathBuf,
    },
    /// The listed entries of the package store, read-only, under `target`.
    Packages {
        store: PathBuf,
        target: PathBuf,
        keys: Vec<String>,
    },
}

/// A sandbox's resource limits; `None` is unlimited.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct Limits {
    pub memory_bytes: Option<u64>,
    pub cpu_cores: Option<f64>,
    pub pids: Option<u64>,
}

/// A successful deploy (`POST /registry/<name>`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Deployed {
    pub name: String,
    pub hash: String,
    pub format: Format,
    /// False when the same code was already in service.
    pub changed: bool,
    /// Keys (`<name>==<version>`) of its package closure.
    pub packages: Vec<String>,
    /// Keys of the packages this deploy installed.
    pub installed: Vec<String>,
    /// Packages found already in the store.
    pub store_hits: usize,
    pub bytes_added: u64,
    /// Time spent on packages, in milliseconds.
    pub package_ms: f64,
}

/// A failed deploy's body (400 for what was uploaded, 500 for the worker's side).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeployFailure {
    pub error: String,
}

/// How a deploy ended.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum DeployOutcome {
    Deployed(Deployed),
    Failed(DeployFailure),
}

/// One line of a streamed deploy (`?progress`, or `Accept: application/x-ndjson`): progress
/// lines, then the outcome with the status the non-streamed reply would have had.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum DeployLine {
    Progress {
        progress: String,
    },
    Done {
        #[serde(flatten)]
        outcome: DeployOutcome,
        status: u16,
    },
}

/// `GET /packages`: one installed package.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StoredPackage {
    pub name: String,
    pub version: String,
    pub size_bytes: u64,
    /// Deployed functions whose closure holds it.
    pub users: Vec<String>,
}

/// `DELETE /registry/<name>` and `DELETE /packages/<key>`: what was removed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Removed {
    pub removed: String,
}

/// `POST /packages/gc`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PackagesGc {
    /// Keys of the packages removed.
    pub removed: Vec<String>,
    pub bytes_freed: u64,
}

/// Milliseconds spent in each phase of an invocation (`X-Kindling-Timing`).
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Timing {
    pub queue_ms: f64,
    pub sandbox_ms: f64,
    pub instance_ms: f64,
    pub handler_ms: f64,
    pub total_ms: f64,
}

impl Timing {
    /// The header value: `queue=..;sandbox=..;instance=..;handler=..;total=..`.
    pub fn header(&self) -> String {
        format!(
            "queue={:.3};sandbox={:.3};instance={:.3};handler={:.3};total={:.3}",
            self.queue_ms, self.sandbox_ms, self.instance_ms, self.handler_ms, self.total_ms
        )
    }

    /// Reads a header value; phases it does not name stay 0, unknown ones are ignored.
    pub fn parse(value: &str) -> Option<Timing> {
        let mut t = Timing::default();
        for part in value.split(';').filter(|p| !p.trim().is_empty()) {
            let (k, v) = part.split_once('=')?;
            let v: f64 = v.trim().parse().ok()?;
            match k.trim() {
                "queue" => t.queue_ms = v,
                "sandbox" => t.sandbox_ms = v,
                "instance" => t.instance_ms = v,
                "handler" => t.handler_ms = v,
                "total" => t.total_ms = v,
                _ => {}
            }
        }
        Some(t)
    }
}

/// Headers of a `/run` reply.
pub mod headers {
    /// Request: force a start method (`cold`, `fork`; `warm` or `any`: the default policy).
    /// Reply: how the instance was got (`warm`, `fork`, `cold`, or `none` when no instance ran).
    pub const START: &str = "x-kindling-start";
    /// Milliseconds per phase ([`super::Timing`]).
    pub const TIMING: &str = "x-kindling-timing";
    /// Bytes charged to the sandbox's cgroup after the invocation.
    pub const MEMORY: &str = "x-kindling-memory";
    /// The request's id (as in the function's log).
    pub const REQUEST: &str = "x-kindling-request";
    /// The sandbox's id (as in the function's log).
    pub const SANDBOX: &str = "x-kindling-sandbox";
    /// The `X-Kindling-Start` value of a reply where no instance ran.
    pub const NO_START: &str = "none";
}

/// What a `/run` reply's headers say about the invocation. Every field is `None` when the
/// invocation never reached an instance (then `X-Kindling-Start` is `none`).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct RunInfo {
    pub start: Option<StartMethod>,
    pub timing: Option<Timing>,
    pub memory_bytes: Option<u64>,
    pub request_id: Option<String>,
    pub sandbox: Option<String>,
}

impl RunInfo {
    /// Reads the headers through `get` (a header's value by lower-case name).
    pub fn from_headers<'a>(get: impl Fn(&str) -> Option<&'a str>) -> RunInfo {
        RunInfo {
            start: get(headers::START).and_then(|s| s.parse().ok()),
            timing: get(headers::TIMING).and_then(Timing::parse),
            memory_bytes: get(headers::MEMORY).and_then(|m| m.trim().parse().ok()),
            request_id: get(headers::REQUEST).map(str::to_string),
            sandbox: get(headers::SANDBOX).map(str::to_string),
        }
    }
}

/// A NoSQL table's keys: the names of its primary (partition) and secondary (sort) key
/// attributes. The body of `PUT /nosql/<function>/<table>`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TableKeys {
    pub primary_key: String,
    pub secondary_key: String,
}

/// One of a function's NoSQL tables, with what it holds.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NosqlTable {
    pub table: String,
    pub primary_key: String,
    pub secondary_key: String,
    pub items: u64,
    /// The items' size, as JSON.
    pub bytes: u64,
}

/// `GET /nosql/<function>`: the function's tables, by name.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NosqlTables {
    pub function: String,
    pub tables: Vec<NosqlTable>,
}

/// What declaring a table did.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Declared {
    Created,
    /// Declared before with the same keys.
    Unchanged,
    /// Declared before with other keys and empty: keyed anew.
    Rekeyed,
}

/// `PUT /nosql/<function>/<table>`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TableDeclared {
    pub function: String,
    pub table: String,
    pub declared: Declared,
}

/// `DELETE /nosql/<function>/<table>`: the table dropped, with how many items it held.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TableDropped {
    pub table: String,
    pub items: u64,
}

/// `POST /nosql/<function>/<table>/items` (body: a JSON list of items, each with both key
/// attributes): how many were stored.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ItemsLoaded {
    pub loaded: usize,
}

/// `GET /nosql/<function>/<table>/items[?primary=<string>|?primary_int=<integer>]`: the
/// table's items (those of one primary key value), in key order.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct NosqlItems {
    pub items: Vec<serde_json::Map<String, serde_json::Value>>,
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn timing_reads_back_what_it_writes() {
        let t = Timing {
            queue_ms: 0.01,
            sandbox_ms: 4.5,
            instance_ms: 7.125,
            handler_ms: 0.25,
            total_ms: 12.0,
        };
        assert_eq!(
            t.header(),
            "queue=0.010;sandbox=4.500;instance=7.125;handler=0.250;total=12.000"
        );
        assert_eq!(Timing::parse(&t.header()), Some(t));
        assert_eq!(Timing::parse("total=3;later=1").unwrap().total_ms, 3.0);
        assert_eq!(Timing::parse("total"), None);
        assert_eq!(Timing::parse("total=x"), None);
    }

    #[test]
    fn run_info_from_headers() {
        let h = [
            ("x-kindling-start", "fork"),
            ("x-kindling-timing", "queue=0;total=2.5"),
            ("x-kindling-memory", "1048576"),
            ("x-kindling-request", "3f2a-9"),
            ("x-kindling-sandbox", "sb-1-7"),
        ];
        let info = RunInfo::from_headers(|k| h.iter().find(|(n, _)| *n == k).map(|(_, v)| *v));
        assert_eq!(info.start, Some(StartMethod::Fork));
        assert_eq!(info.timing.unwrap().total_ms, 2.5);
        assert_eq!(info.memory_bytes, Some(1 << 20));
        assert_eq!(info.request_id.as_deref(), Some("3f2a-9"));
        assert_eq!(info.sandbox.as_deref(), Some("sb-1-7"));
        let none = RunInfo::from_headers(|k| (k == "x-kindling-start").then_some("none"));
        assert_eq!(none, RunInfo::default());
    }

    #[test]
    fn status_without_detail_is_the_public_reply() {
        let s = Status {
            status: WorkerState::Ready,
            version: "0.1.0".into(),
            uptime_secs: 3,
            detail: None,
        };
        let v = serde_json::to_value(&s).unwrap();
        assert_eq!(
            v,
            serde_json::json!({"status": "ready", "version": "0.1.0", "uptime_secs": 3})
        );
        let back: Status = serde_json::from_value(v).unwrap();
        assert_eq!(back, s);
    }

    #[test]
    fn status_with_detail_reads_back() {
        let s = Status {
            status: WorkerState::Draining,
            version: "0.1.0".into(),
            uptime_secs: 9,
            detail: Some(StatusDetail {
                root: "/var/lib/kindling".into(),
                base: BaseInfo {
                    name: "debian-python".into(),
                    python: "/usr/bin/python3".into(),
                    python_version: "3.11".into(),
                    cache_tag: "cpython-311".into(),
                    platform: "linux-x86_64".into(),
                },
                rootfs: "/var/lib/kindling/base/debian-python/rootfs".into(),
                storage_dir: None,
                cgroups: "v1".into(),
                freezer: "v2".into(),
                functions: 1,
                sandboxes: 2,
                idle_instances: 1,
                connections: 3,
                zygotes: vec![serde_json::json!({"id": "z-1", "pid": 42})],
            }),
        };
        let v = serde_json::to_value(&s).unwrap();
        assert_eq!(v["status"], "draining");
        assert_eq!(v["base"]["python"], "/usr/bin/python3");
        assert_eq!(v["storage_dir"], serde_json::Value::Null);
        assert_eq!(serde_json::from_value::<Status>(v).unwrap(), s);
    }

    #[test]
    fn deploy_lines() {
        let p: DeployLine = serde_json::from_str(r#"{"progress":"resolved 3 packages"}"#).unwrap();
        assert_eq!(
            p,
            DeployLine::Progress {
                progress: "resolved 3 packages".into()
            }
        );
        let f: DeployLine =
            serde_json::from_str(r#"{"error":"bad archive","status":400}"#).unwrap();
        assert_eq!(
            f,
            DeployLine::Done {
                outcome: DeployOutcome::Failed(DeployFailure {
                    error: "bad archive".into()
                }),
                status: 400
            }
        );
        let d = Deployed {
            name: "f".into(),
            hash: "ab".into(),
            format: Format::Sebs,
            changed: true,
            packages: vec!["six==1.16.0".into()],
            installed: vec![],
            store_hits: 1,
            bytes_added: 0,
            package_ms: 1.5,
        };
        let line = DeployLine::Done {
            outcome: DeployOutcome::Deployed(d.clone()),
            status: 200,
        };
        let text = serde_json::to_string(&line).unwrap();
        assert!(text.contains(r#""status":200"#), "{text}");
        assert_eq!(serde_json::from_str::<DeployLine>(&text).unwrap(), line);
    }

    #[test]
    fn stats_read_counters_and_means() {
        let s: Stats = serde_json::from_str(
            r#"{"background.pending": 2, "start.cold": 5, "latency.cold.ms-avg": 12.5}"#,
        )
        .unwrap();
        assert_eq!(s.count(stats::BACKGROUND_PENDING), 2);
        assert_eq!(s.count(&stats::start(StartMethod::Cold)), 5);
        assert_eq!(s.count("start.fork"), 0);
        assert_eq!(
            s.value(&stats::latency_avg_ms(StartMethod::Cold)),
            Some(12.5)
        );
    }
}
