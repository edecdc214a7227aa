//! Worker configuration: one TOML file, every key optional. This module only aggregates: each
//! table's type lives in the module it configures (`[zygotes]` in `zygote`, `[storage]` in
//! `storage`, ...) and documents its keys there; the top-level keys are documented below.
//! `kindling.example.toml` at the repository's root lists every key with its default, and a test
//! keeps it equal to [`Config::default`].

use crate::archive::ArchiveLimits;
use crate::bounds::{Bounds, Limits};
use crate::logs::LogConfig;
use crate::network::NetworkConfig;
use crate::nosql::NosqlConfig;
use crate::packages::{InstallerLimits, InstallerSettings};
use crate::pool::{PoolConfig, StartMethod};
use crate::s3::S3Config;
use crate::storage::StorageConfig;
use crate::zygote::ZygoteConfig;
use serde::Deserialize;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// The default policy's order of start methods (the reasoning: docs/adr/0009).
pub const DEFAULT_START_ORDER: [StartMethod; 4] = [
    StartMethod::Warm,
    StartMethod::Fork,
    StartMethod::Switch,
    StartMethod::Cold,
];

/// Largest `max_memory_mb` (4 TiB): its byte count stays far inside a u64.
pub const MAX_MEMORY_MB: u64 = 4 << 20;
/// Largest `max_timeout_secs` (a year): a `Duration` of it cannot overflow a deadline.
pub const MAX_TIMEOUT_SECS: f64 = 365.0 * 86400.0;

/// Errors loading a configuration file.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("invalid config file {path}")]
    Parse {
        path: PathBuf,
        #[source]
        source: toml::de::Error,
    },
    #[error("invalid config: {0}")]
    Invalid(String),
}

/// The worker's configuration.
#[derive(Debug, Clone, PartialEq, Deserialize, serde::Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// HTTP address of the API.
    pub listen: SocketAddr,
    /// The worker's root: bases, functions, packages, sandboxes, state. An absolute path.
    pub root: PathBuf,
    /// The default base root filesystem (a directory under `base_dir`).
    pub base: String,
    /// Where bases live (unset: `<root>/base`).
    pub base_dir: Option<PathBuf>,
    /// Largest invocation body (`POST /run/<name>`); larger gets 413.
    pub max_body_bytes: usize,
    /// Largest function archive (`POST /registry/<name>`); larger gets 413.
    pub max_upload_bytes: usize,
    /// How long an idle instance stays warm, in seconds.
    pub keep_alive_secs: u64,
    /// The start methods the default policy tries, in order: any of `warm`, `switch`, `fork`
    /// and `cold`, each at most once, ending with `cold`. Requests forcing a method
    /// (`X-Kindling-Start`) are not held to it.
    pub start_order: Vec<String>,
    /// Worker-wide memory budget in MB for sandboxes, instances, zygotes, seeds and spare
    /// sandboxes together (their cgroups' charges; a busy instance counts at its memory limit).
    /// A start that would exceed it first evicts idle instances, least recently used first,
    /// then seeds and spare sandboxes, then idle zygotes. 0: no budget. At least
    /// `max_memory_mb`.
    pub memory_budget_mb: u64,
    /// Freeze an idle instance's processes (cgroup freezer) until its next invocation, so that
    /// background work it left gets no CPU.
    pub freeze_idle: bool,
    /// How long after its reply an idle instance is frozen, in milliseconds (at most 60000):
    /// back-to-back calls then pay no freeze and thaw, and left-over work gets at most this.
    pub freeze_idle_after_ms: u64,
    /// Instances of one function running at once.
    pub max_instances_per_function: usize,
    /// Calls of one function waiting for an instance beyond that; more get 429.
    pub max_queue_per_function: usize,
    /// Sandboxes on the worker; at the limit, idle instances are evicted (least recently used
    /// first), and with none idle a call is refused (429).
    pub max_sandboxes: usize,
    /// The directory Kindling owns in each cgroup hierarchy (a plain name); two workers on one
    /// machine need different ones. Networked sandboxes' nftables table is named after it.
    pub cgroup_parent: String,
    /// At start, remount a cgroup hierarchy with `favordynmods` (Linux 6.0+, machine-wide):
    /// moving a process into a sandbox's cgroup (every cold and fork start) then need not wait
    /// for an RCU grace period, at the cost of slightly slower fork and exit for every process
    /// (the kernel's documented trade-off).
    pub cgroup_favor_dynmods: bool,
    /// The unprivileged uid function code runs as (not 0).
    pub sandbox_uid: u32,
    /// The unprivileged gid function code runs as (not 0).
    pub sandbox_gid: u32,
    /// Host uid of the root of zygotes' user namespaces: an unprivileged id nothing else on the
    /// host may use (not 0, not `sandbox_uid`).
    pub zygote_uid: u32,
    /// Host gid of the root of zygotes' user namespaces (not 0, not `sandbox_gid`).
    pub zygote_gid: u32,
    /// RLIMIT_NOFILE of instances.
    pub max_open_files: u64,
    /// Most memory a function's config may ask for (ol.yaml `memory_mb`, config.json `memory`),
    /// in MB; more is refused at deploy (400).
    pub max_memory_mb: u64,
    /// Longest timeout a function's config may ask for (`timeout_secs`, `timeout`), in seconds.
    pub max_timeout_secs: f64,
    /// Bound on `[defaults] pids`.
    pub max_pids: u64,
    /// Whether a function may ask for `network: true` (else 400 at deploy). Versions deployed
    /// before a bound was lowered run clamped to it (memory, timeout) or without network, with a
    /// warning at start.
    pub allow_network: bool,
    /// Per-function limits for functions whose config does not set them (`[defaults]`).
    pub defaults: Limits,
    /// Limits on uploaded function archives (`[archive]`).
    pub archive: ArchiveLimits,
    /// The uv binary of the package puller (unset: the first real executable `uv` on PATH).
    pub uv: Option<PathBuf>,
    /// Allow URLs, paths, `-e` and options in requirements.txt (relative paths then name the
    /// function's own files).
    pub allow_unsafe_requirements: bool,
    /// Sandboxes that resolve and install packages (`[installer_limits]`).
    pub installer_limits: InstallerLimits,
    /// Fork starts from zygotes (`[zygotes]`).
    pub zygotes: ZygoteConfig,
    /// Object storage for functions (`[storage]`).
    pub storage: StorageConfig,
    /// NoSQL tables for functions (`[nosql]`).
    pub nosql: NosqlConfig,
    /// The S3 API over functions' object storage (`[s3]`; off unless `listen` is set).
    pub s3: S3Config,
    /// Uid of installer jobs that only fetch wheels (no third-party code runs); owns uv's
    /// shared cache. Pick an id nothing else on the host uses.
    pub installer_uid: u32,
    /// Gid of those installer jobs.
    pub installer_gid: u32,
    /// Uid of jobs that build sdists (third-party code), with a private cache; owns nothing
    /// else. Not the installer's.
    pub build_uid: u32,
    /// Gid of build jobs.
    pub build_gid: u32,
    /// The package index uv resolves and installs from (unset: uv's default, PyPI).
    pub package_index: Option<String>,
    /// HTTP(S) proxy of installer jobs (unset: none; installer jobs inherit no environment and
    /// no uv configuration).
    pub package_proxy: Option<String>,
    /// Function logs (`[logs]`).
    pub logs: LogConfig,
    /// Networked sandboxes (`[network]`).
    pub network: NetworkConfig,
    /// The group (name or gid) that may read `<root>/token`, the admin token (mode 0640); unset:
    /// root only (mode 0600).
    pub admin_group: Option<String>,
    /// `POST /run/<name>` needs the admin token too; off by default so that OpenLambda clients
    /// keep working unmodified.
    pub run_requires_token: bool,
    /// The API's connections (`[http]`).
    pub http: HttpConfig,
}

/// The API's connections (`[http]`).
#[derive(Debug, Clone, PartialEq, Deserialize, serde::Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct HttpConfig {
    /// A request head must be complete this long after its first byte, else the connection is
    /// closed (half-open connections), in seconds.
    pub header_read_timeout_secs: f64,
    /// A connection waiting this long for its next request (or its first) is closed.
    pub idle_timeout_secs: f64,
    /// A request body that sends nothing for this long gets 408.
    pub body_read_timeout_secs: f64,
    /// A client that takes none of a response for this long is disconnected.
    pub write_timeout_secs: f64,
    /// Open connections; more are refused at once with 503.
    pub max_connections: usize,
    /// Open connections from one IP address (IPv6: one /64).
    pub max_connections_per_client: usize,
}

impl Default for HttpConfig {
    fn default() -> Self {
        Self {
            header_read_timeout_secs: 10.0,
            idle_timeout_secs: 60.0,
            body_read_timeout_secs: 30.0,
            write_timeout_secs: 30.0,
            max_connections: 1024,
            max_connections_per_client: 256,
        }
    }
}

impl Default for Config {
    fn default() -> Self {
        let bounds = Bounds::default();
        Self {
            listen: SocketAddr::from(([127, 0, 0, 1], 5000)),
            root: PathBuf::from("/var/lib/kindling"),
            base: "debian-python".into(),
            base_dir: None,
            max_body_bytes: 6 * 1024 * 1024,
            max_upload_bytes: 256 * 1024 * 1024,
            keep_alive_secs: 600,
            start_order: DEFAULT_START_ORDER.iter().map(|m| m.to_string()).collect(),
            memory_budget_mb: 0,
            freeze_idle: true,
            freeze_idle_after_ms: 2,
            max_instances_per_function: 8,
            max_queue_per_function: 64,
            max_sandboxes: 256,
            cgroup_parent: "kindling".into(),
            cgroup_favor_dynmods: true,
            sandbox_uid: 65534,
            sandbox_gid: 65534,
            zygote_uid: 2_100_000_000,
            zygote_gid: 2_100_000_000,
            max_open_files: 1024,
            max_memory_mb: bounds.max_memory_mb,
            max_timeout_secs: bounds.max_timeout_secs,
            max_pids: bounds.max_pids,
            allow_network: bounds.allow_network,
            defaults: Limits::default(),
            archive: ArchiveLimits::default(),
            uv: None,
            allow_unsafe_requirements: false,
            installer_limits: Default::default(),
            zygotes: ZygoteConfig::default(),
            storage: StorageConfig::default(),
            nosql: NosqlConfig::default(),
            s3: S3Config::default(),
            installer_uid: 65530,
            installer_gid: 65530,
            build_uid: 65531,
            build_gid: 65531,
            package_index: None,
            package_proxy: None,
            logs: LogConfig::default(),
            network: NetworkConfig::default(),
            admin_group: None,
            run_requires_token: false,
            http: HttpConfig::default(),
        }
    }
}

impl Config {
    /// Loads a TOML file; missing keys take their defaults.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        let cfg: Config = toml::from_str(&text).map_err(|source| ConfigError::Parse {
            path: path.to_path_buf(),
            source,
        })?;
        cfg.validate()?;
        Ok(cfg)
    }

    /// Checks values that parse but make no sense.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let bad = |m: &str| Err(ConfigError::Invalid(m.into()));
        if self.sandbox_uid == 0 || self.sandbox_gid == 0 {
            return bad("sandbox_uid and sandbox_gid must not be 0 (root)");
        }
        if self.zygote_uid == 0 || self.zygote_gid == 0 {
            return bad("zygote_uid and zygote_gid must not be 0 (root)");
        }
        if self.zygote_uid == self.sandbox_uid || self.zygote_gid == self.sandbox_gid {
            return bad("zygote_uid/zygote_gid must differ from sandbox_uid/sandbox_gid");
        }
        if self.max_instances_per_function == 0 {
            return bad("max_instances_per_function must be at least 1");
        }
        if self.defaults.memory_mb < 16 {
            return bad("defaults.memory_mb must be at least 16");
        }
        if !(self.defaults.timeout_secs > 0.0 && self.defaults.timeout_secs.is_finite()) {
            return bad("defaults.timeout_secs must be a positive number");
        }
        self.validate_bounds()?;
        if self.cgroup_parent.is_empty()
            || self.cgroup_parent.contains('/')
            || self.cgroup_parent.starts_with('.')
        {
            return bad("cgroup_parent must be a plain directory name");
        }
        if !self.root.is_absolute() {
            return bad("root must be an absolute path");
        }
        if self.storage.dir.as_ref().is_some_and(|d| !d.is_absolute()) {
            return bad("storage.dir must be an absolute path");
        }
        let installer = (self.installer_uid, self.installer_gid);
        let build = (self.build_uid, self.build_gid);
        if [installer.0, installer.1, build.0, build.1].contains(&0) {
            return bad("installer_uid/gid and build_uid/gid must not be 0 (root)");
        }
        if installer.0 == build.0
            || [installer.0, build.0].contains(&self.sandbox_uid)
            || installer.1 == build.1
            || [installer.1, build.1].contains(&self.sandbox_gid)
        {
            return bad("installer_uid, build_uid and sandbox_uid (and their gids) must differ");
        }
        if self.storage.max_object_bytes == 0 || self.storage.max_connections == 0 {
            return bad("storage.max_object_bytes and storage.max_connections must be positive");
        }
        let h = &self.http;
        let timeouts = [
            h.header_read_timeout_secs,
            h.idle_timeout_secs,
            h.body_read_timeout_secs,
            h.write_timeout_secs,
        ];
        // Bounded, so that Duration::from_secs_f64 cannot panic.
        if timeouts.iter().any(|t| !(*t > 0.0 && *t <= 86_400.0)) {
            return bad("http timeouts must be between 0 and 86400 seconds");
        }
        if h.max_connections == 0 || h.max_connections_per_client == 0 {
            return bad(
                "http.max_connections and http.max_connections_per_client must be positive",
            );
        }
        if self.freeze_idle_after_ms > 60_000 {
            return bad("freeze_idle_after_ms must be at most 60000");
        }
        if self.admin_group.as_deref() == Some("") {
            return bad("admin_group must not be empty");
        }
        if self.storage.max_connections_per_function == 0 {
            return bad("storage.max_connections_per_function must be at least 1");
        }
        crate::storage::check_grants(&self.storage.grants).map_err(ConfigError::Invalid)?;
        if self.nosql.dir.as_ref().is_some_and(|d| !d.is_absolute()) {
            return bad("nosql.dir must be an absolute path");
        }
        self.nosql.check().map_err(ConfigError::Invalid)?;
        self.s3.check().map_err(ConfigError::Invalid)?;
        if self.s3.listen.is_some() && !self.storage.enabled {
            return bad("s3.listen is set, but storage.enabled is false: the S3 API serves it");
        }
        if self.logs.dir.as_ref().is_some_and(|d| !d.is_absolute()) {
            return bad("logs.dir must be an absolute path");
        }
        if self.logs.max_line_bytes < 80 || self.logs.max_line_bytes > 1 << 20 {
            return bad("logs.max_line_bytes must be between 80 and 1048576");
        }
        // Room for several of the longest lines (escaped, tagged) in every file.
        if self.logs.max_file_bytes < 8 * self.logs.max_line_bytes as u64 + 4096 {
            return bad("logs.max_file_bytes must be at least 8 * logs.max_line_bytes + 4096");
        }
        Ok(())
    }

    /// Checks the operator's bounds on tenant settings and that `[defaults]` lie within them.
    fn validate_bounds(&self) -> Result<(), ConfigError> {
        let invalid = |m: String| Err(ConfigError::Invalid(m));
        if !(16..=MAX_MEMORY_MB).contains(&self.max_memory_mb) {
            return invalid(format!(
                "max_memory_mb must be between 16 and {MAX_MEMORY_MB}"
            ));
        }
        let t = self.max_timeout_secs;
        if !(t > 0.0 && t <= MAX_TIMEOUT_SECS) {
            return invalid(format!(
                "max_timeout_secs must be positive and at most {MAX_TIMEOUT_SECS}"
            ));
        }
        if self.max_pids == 0 {
            return invalid("max_pids must be at least 1".into());
        }
        let d = &self.defaults;
        if d.memory_mb > self.max_memory_mb {
            return invalid(format!(
                "defaults.memory_mb ({}) is over max_memory_mb ({})",
                d.memory_mb, self.max_memory_mb
            ));
        }
        if d.timeout_secs > t {
            return invalid(format!(
                "defaults.timeout_secs ({}) is over max_timeout_secs ({t})",
                d.timeout_secs
            ));
        }
        if d.pids > self.max_pids {
            return invalid(format!(
                "defaults.pids ({}) is over max_pids ({})",
                d.pids, self.max_pids
            ));
        }
        if d.network && !self.allow_network {
            return invalid("defaults.network = true needs allow_network = true".into());
        }
        if self.memory_budget_mb != 0 && self.memory_budget_mb < self.max_memory_mb {
            return invalid(format!(
                "memory_budget_mb ({}) is smaller than max_memory_mb ({}), the largest memory \
                 limit a function may have: raise the budget or lower max_memory_mb",
                self.memory_budget_mb, self.max_memory_mb
            ));
        }
        self.start_order()?;
        if let Err(e) = self.network.pool.parse::<kindling_sandbox::net::Pool>() {
            return invalid(format!("network.pool: {e}"));
        }
        Ok(())
    }

    /// The uv binary: configured, or the first `uv` on PATH that is a real executable (not a
    /// wrapper script such as a pyenv shim, which could not run inside a sandbox).
    pub fn uv_path(&self) -> Option<PathBuf> {
        if let Some(p) = &self.uv {
            return Some(p.clone());
        }
        let is_elf = |p: &Path| {
            use std::io::Read;
            let mut magic = [0u8; 4];
            std::fs::File::open(p)
                .and_then(|mut f| f.read_exact(&mut magic))
                .is_ok()
                && magic == *b"\x7fELF"
        };
        std::env::var_os("PATH").and_then(|path| {
            std::env::split_paths(&path)
                .map(|d| d.join("uv"))
                .find(|p| is_elf(p))
        })
    }

    /// `start_order` as start methods, checked: known names, each once, ending with cold.
    pub fn start_order(&self) -> Result<Vec<StartMethod>, ConfigError> {
        let invalid = |m: String| ConfigError::Invalid(m);
        let mut order = Vec::new();
        for name in &self.start_order {
            let m: StartMethod = name
                .parse()
                .map_err(|e: kindling_api::UnknownStartMethod| {
                    invalid(format!("start_order: {e}"))
                })?;
            if order.contains(&m) {
                return Err(invalid(format!("start_order names `{m}` twice")));
            }
            order.push(m);
        }
        if order.last() != Some(&StartMethod::Cold) {
            return Err(invalid(
                "start_order must end with `cold` (the method that always serves)".into(),
            ));
        }
        Ok(order)
    }

    /// The operator's bounds on tenant settings.
    pub fn bounds(&self) -> Bounds {
        Bounds {
            max_memory_mb: self.max_memory_mb,
            max_timeout_secs: self.max_timeout_secs,
            max_pids: self.max_pids,
            allow_network: self.allow_network,
        }
    }

    /// Who installer jobs run as and where they fetch from.
    pub fn installer_settings(&self) -> InstallerSettings {
        InstallerSettings {
            installer_uid: self.installer_uid,
            installer_gid: self.installer_gid,
            build_uid: self.build_uid,
            build_gid: self.build_gid,
            index_url: self.package_index.clone(),
            proxy: self.package_proxy.clone(),
        }
    }

    /// The pool's limits.
    pub fn pool(&self) -> PoolConfig {
        PoolConfig {
            keep_alive: Duration::from_secs(self.keep_alive_secs),
            freeze_idle_after: self
                .freeze_idle
                .then(|| Duration::from_millis(self.freeze_idle_after_ms)),
            max_instances_per_function: self.max_instances_per_function,
            max_queue_per_function: self.max_queue_per_function,
            max_sandboxes: self.max_sandboxes,
            start_order: self
                .start_order()
                .unwrap_or_else(|_| DEFAULT_START_ORDER.to_vec()),
            memory_budget: (self.memory_budget_mb > 0).then_some(self.memory_budget_mb << 20),
        }
    }

    /// Directory of the object storage's directory backend.
    pub fn storage_dir(&self) -> PathBuf {
        self.storage
            .dir
            .clone()
            .unwrap_or_else(|| self.root.join("storage"))
    }

    /// Directory of the function logs.
    pub fn logs_dir(&self) -> PathBuf {
        self.logs
            .dir
            .clone()
            .unwrap_or_else(|| self.root.join("logs"))
    }

    /// Directory holding base root filesystems.
    pub fn base_dir(&self) -> PathBuf {
        self.base_dir
            .clone()
            .unwrap_or_else(|| self.root.join("base"))
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn empty_file_gives_defaults() {
        let cfg: Config = toml::from_str("").unwrap();
        assert_eq!(cfg.listen.port(), 5000);
        assert_eq!(cfg.defaults, Limits::default());
        assert_eq!(cfg.base_dir(), PathBuf::from("/var/lib/kindling/base"));
    }

    #[test]
    fn overrides_and_unknown_keys() {
        let cfg: Config =
            toml::from_str("keep_alive_secs = 5\n[defaults]\nmemory_mb = 64\n").unwrap();
        assert_eq!(cfg.keep_alive_secs, 5);
        assert_eq!(cfg.defaults.memory_mb, 64);
        assert_eq!(cfg.defaults.pids, 64);
        assert!(toml::from_str::<Config>("no_such_key = 1").is_err());
    }

    #[test]
    fn storage_keys() {
        let cfg: Config = toml::from_str("").unwrap();
        assert_eq!(
            cfg.storage_dir(),
            PathBuf::from("/var/lib/kindling/storage")
        );
        assert_eq!(cfg.storage.max_object_bytes, 256 << 20);
        let cfg: Config =
            toml::from_str("[storage]\ndir = \"/srv/objects\"\nmax_object_bytes = 10\n").unwrap();
        assert_eq!(cfg.storage_dir(), PathBuf::from("/srv/objects"));
        assert!(cfg.validate().is_ok());
        let cfg: Config = toml::from_str("[storage]\ndir = \"rel\"\n").unwrap();
        assert!(cfg.validate().is_err());
        assert!(toml::from_str::<Config>("[storage]\nbogus = 1\n").is_err());
    }

    #[test]
    fn installer_ids_are_distinct_and_unprivileged() {
        let cfg: Config = toml::from_str("").unwrap();
        assert!(cfg.validate().is_ok());
        assert_eq!((cfg.installer_uid, cfg.build_uid), (65530, 65531));
        for bad in [
            "installer_uid = 0",
            "build_gid = 0",
            "build_uid = 65530",
            "installer_uid = 65534",
        ] {
            let cfg: Config = toml::from_str(bad).unwrap();
            assert!(cfg.validate().is_err(), "{bad}");
        }
        let cfg: Config =
            toml::from_str("package_index = \"https://mirror.example/simple\"\n").unwrap();
        assert_eq!(
            cfg.package_index.as_deref(),
            Some("https://mirror.example/simple")
        );
    }

    #[test]
    fn start_order_and_memory_budget() {
        let cfg = |text: &str| toml::from_str::<Config>(text).unwrap();
        let ok = cfg("start_order = [\"warm\", \"switch\", \"cold\"]\nmemory_budget_mb = 8192\n");
        assert!(ok.validate().is_ok(), "{:?}", ok.validate());
        let pool = ok.pool();
        assert_eq!(
            pool.start_order,
            [StartMethod::Warm, StartMethod::Switch, StartMethod::Cold]
        );
        assert_eq!(pool.memory_budget, Some(8192 << 20));
        assert_eq!(Config::default().pool().memory_budget, None);
        assert_eq!(Config::default().pool().start_order, DEFAULT_START_ORDER);
        let refused = |text: &str| match cfg(text).validate() {
            Err(ConfigError::Invalid(m)) => m,
            other => panic!("{text}: {other:?}"),
        };
        let m = refused("start_order = [\"warm\", \"teleport\", \"cold\"]\n");
        assert!(
            m.contains("teleport") && m.contains("warm, switch, fork or cold"),
            "{m}"
        );
        assert!(refused("start_order = [\"warm\", \"fork\"]\n").contains("end with `cold`"));
        assert!(refused("start_order = []\n").contains("end with `cold`"));
        assert!(refused("start_order = [\"cold\", \"cold\"]\n").contains("twice"));
        let m = refused("max_memory_mb = 1024\nmemory_budget_mb = 512\n");
        assert!(
            m.contains("memory_budget_mb (512)") && m.contains("max_memory_mb (1024)"),
            "{m}"
        );
    }

    #[test]
    fn tenancy_keys() {
        let cfg: Config = toml::from_str(
            "[storage]\nmax_function_bytes = 10\nmax_connections_per_function = 2\n\
             [[storage.grants]]\nfunction = \"b\"\nowner = \"a\"\nbucket = \"pub\"\n\
             access = \"read\"\n[logs]\nmax_files = 0\n",
        )
        .unwrap();
        assert!(cfg.validate().is_ok(), "{:?}", cfg.validate());
        assert_eq!(cfg.storage.grants.len(), 1);
        assert_eq!(cfg.storage.grants[0].access, crate::storage::Access::Read);
        assert_eq!(cfg.logs_dir(), PathBuf::from("/var/lib/kindling/logs"));
        assert_eq!(cfg.logs.max_files, 0);
        for bad in [
            "[logs]\nmax_line_bytes = 10\n",
            "[logs]\nmax_file_bytes = 1000\n",
            "[logs]\ndir = \"rel\"\n",
            "[storage]\nmax_connections_per_function = 0\n",
            "[[storage.grants]]\nfunction = \"a\"\nowner = \"a\"\nbucket = \"x\"\naccess = \"read\"\n",
            "[[storage.grants]]\nfunction = \"a/b\"\nowner = \"c\"\nbucket = \"x\"\naccess = \"read\"\n",
            "[[storage.grants]]\nfunction = \"a\"\nowner = \"c\"\nbucket = \"../x\"\naccess = \"read\"\n",
        ] {
            let cfg: Config = toml::from_str(bad).unwrap();
            assert!(cfg.validate().is_err(), "{bad}");
        }
        let bad_access = "[[storage.grants]]\nfunction = \"a\"\nowner = \"c\"\nbucket = \"x\"\naccess = \"all\"\n";
        assert!(toml::from_str::<Config>(bad_access).is_err());
    }

    #[test]
    fn bounds_hold_the_defaults() {
        let ok = |t: &str| {
            let cfg: Config = toml::from_str(t).unwrap();
            cfg.validate().map_err(|e| e.to_string())
        };
        assert!(ok("").is_ok());
        let cfg: Config = toml::from_str("").unwrap();
        assert_eq!(cfg.max_memory_mb, 2048);
        assert!(!cfg.allow_network);
        assert_eq!(cfg.network.pool, "10.231.0.0/16");
        assert!(ok("max_memory_mb = 512\n[defaults]\nmemory_mb = 512").is_ok());
        let e = ok("max_memory_mb = 128\n").unwrap_err();
        assert!(
            e.contains("defaults.memory_mb (256) is over max_memory_mb (128)"),
            "{e}"
        );
        let e = ok("max_timeout_secs = 10\n").unwrap_err();
        assert!(e.contains("max_timeout_secs"), "{e}");
        let e = ok("max_pids = 8\n").unwrap_err();
        assert!(e.contains("max_pids"), "{e}");
        let e = ok("[defaults]\nnetwork = true").unwrap_err();
        assert!(e.contains("allow_network"), "{e}");
        assert!(ok("allow_network = true\n[defaults]\nnetwork = true").is_ok());
        for bad in [
            "max_memory_mb = 8",
            "max_memory_mb = 9223372036854775807",
            "max_timeout_secs = 1.0e30",
            "max_timeout_secs = nan",
            "max_timeout_secs = inf",
            "max_timeout_secs = 0",
            "max_pids = 0",
            "[defaults]\ntimeout_secs = inf",
            "[defaults]\ntimeout_secs = nan",
            "[network]\npool = \"10.0.0.1/8\"",
            "[network]\npool = \"127.0.0.0/16\"",
        ] {
            assert!(ok(bad).is_err(), "{bad}");
        }
        let cfg: Config =
            toml::from_str("[network]\nnameservers = [\"192.0.2.53\", \"192.0.2.54\"]\n").unwrap();
        assert_eq!(cfg.network.nameservers.len(), 2);
        assert!(toml::from_str::<Config>("[network]\nnameservers = [\"2001:db8::53\"]\n").is_err());
        assert!(toml::from_str::<Config>("[network]\nbogus = 1\n").is_err());
    }

    #[test]
    fn s3_keys() {
        let cfg: Config = toml::from_str("").unwrap();
        assert_eq!(cfg.s3.listen, None);
        let on = "[s3]\nlisten = \"127.0.0.1:5001\"\naccess_key = \"kindling\"\n\
                  secret_key = \"s3cret-key\"\n";
        let cfg: Config = toml::from_str(on).unwrap();
        assert!(cfg.validate().is_ok());
        for bad in [
            "[s3]\nlisten = \"127.0.0.1:5001\"\n".to_string(),
            format!("{on}[storage]\nenabled = false\n"),
        ] {
            let cfg: Config = toml::from_str(&bad).unwrap();
            assert!(cfg.validate().is_err(), "{bad}");
        }
    }

    #[test]
    fn auth_and_http_keys() {
        let cfg: Config = toml::from_str("").unwrap();
        assert_eq!(cfg.admin_group, None);
        assert!(!cfg.run_requires_token);
        assert_eq!(cfg.http, HttpConfig::default());
        let cfg: Config = toml::from_str(
            "admin_group = \"kindling\"\nrun_requires_token = true\n\
             [http]\nheader_read_timeout_secs = 2.5\nmax_connections = 8\n",
        )
        .unwrap();
        assert_eq!(cfg.admin_group.as_deref(), Some("kindling"));
        assert!(cfg.run_requires_token);
        assert_eq!(cfg.http.header_read_timeout_secs, 2.5);
        assert_eq!(cfg.http.max_connections, 8);
        assert_eq!(cfg.http.max_connections_per_client, 256);
        assert!(cfg.validate().is_ok());
        for bad in [
            "[http]\nidle_timeout_secs = 0\n",
            "[http]\nwrite_timeout_secs = 1e30\n",
            "[http]\nmax_connections = 0\n",
            "admin_group = \"\"\n",
        ] {
            let cfg: Config = toml::from_str(bad).unwrap();
            assert!(cfg.validate().is_err(), "{bad}");
        }
        assert!(toml::from_str::<Config>("[http]\nbogus = 1\n").is_err());
    }

    /// The checked-in example lists every key with its default value, so it cannot drift from
    /// the code.
    #[test]
    fn the_example_file_is_the_default() {
        let example = include_str!("../../../kindling.example.toml");
        let cfg: Config = toml::from_str(example).unwrap();
        assert_eq!(cfg, Config::default());
        cfg.validate().unwrap();
        // Keys without a default value (and a grant) are there commented out: they parse too.
        let uncommented: String = example
            .lines()
            .map(|l| match l.strip_prefix("# ") {
                Some(rest) if rest.contains(" = ") || rest.starts_with('[') => rest,
                _ => l,
            })
            .map(|l| format!("{l}\n"))
            .collect();
        let cfg: Config = toml::from_str(&uncommented).unwrap();
        cfg.validate().unwrap();
        assert_ne!(cfg, Config::default());
        assert_eq!(cfg.storage.grants.len(), 1);
        assert!(cfg.uv.is_some() && cfg.admin_group.is_some() && cfg.logs.dir.is_some());
        // And it names every key there is (a key missing from it would parse to its default).
        let listed = keys(
            &serde_json::to_value(toml::from_str::<toml::Value>(&uncommented).unwrap()).unwrap(),
        );
        let known = keys(&serde_json::to_value(&cfg).unwrap());
        assert_eq!(listed, known);
    }

    /// Dotted paths of the keys of tables, array elements' keys under `[]`.
    fn keys(v: &serde_json::Value) -> std::collections::BTreeSet<String> {
        let mut out = std::collections::BTreeSet::new();
        fn walk(v: &serde_json::Value, at: &str, out: &mut std::collections::BTreeSet<String>) {
            match v {
                serde_json::Value::Object(map) => {
                    for (k, v) in map {
                        let path = if at.is_empty() {
                            k.clone()
                        } else {
                            format!("{at}.{k}")
                        };
                        out.insert(path.clone());
                        walk(v, &path, out);
                    }
                }
                serde_json::Value::Array(items) => {
                    for item in items.iter().filter(|i| i.is_object()) {
                        walk(item, &format!("{at}[]"), out);
                    }
                }
                _ => {}
            }
        }
        walk(v, "", &mut out);
        out
    }

    /// Pre-created clean sandboxes are spare sandboxes now; the old key still works.
    #[test]
    fn sandbox_pool_is_an_alias_of_spare_sandboxes() {
        let cfg: Config = toml::from_str("[zygotes]\nsandbox_pool = 7\n").unwrap();
        assert_eq!(cfg.zygotes.spare_sandboxes, 7);
        let cfg: Config = toml::from_str("[zygotes]\nspare_sandboxes = 3\n").unwrap();
        assert_eq!(cfg.zygotes.spare_sandboxes, 3);
    }

    #[test]
    fn rejects_root_uid() {
        let cfg: Config = toml::from_str("sandbox_uid = 0").unwrap();
        assert!(cfg.validate().is_err());
        let cfg: Config = toml::from_str("zygote_uid = 0").unwrap();
        assert!(cfg.validate().is_err());
        let cfg: Config = toml::from_str("zygote_uid = 65534").unwrap();
        assert!(cfg.validate().is_err());
        assert!(Config::default().validate().is_ok());
    }
}
