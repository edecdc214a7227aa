//! Worker configuration: one TOML file, every key optional, every key documented here.
//!
//! ```toml
//! listen = "127.0.0.1:5000"       # HTTP address of the API
//! root = "/var/lib/kindling"       # worker root: bases, functions, sandboxes, state
//! base = "debian-python"           # default base root filesystem (a directory under <root>/base)
//! base_dir = "/var/lib/kindling/base"  # where bases live (default <root>/base)
//! max_body_bytes = 6291456         # largest invocation body (POST /run/<name>) -> 413
//! max_upload_bytes = 268435456     # largest function archive (POST /registry/<name>) -> 413
//! keep_alive_secs = 600            # how long an idle instance stays warm
//! freeze_idle = true               # freeze an idle instance's processes (cgroup freezer) until
//!                                  # its next invocation, so background work it left gets no CPU
//! freeze_idle_after_ms = 2         # ... this long after its reply: back-to-back calls then pay
//!                                  # no freeze and thaw, and left-over work gets at most this
//! max_instances_per_function = 8   # concurrent instances of one function
//! max_queue_per_function = 64      # waiting calls beyond that -> 429
//! max_sandboxes = 256              # sandboxes on the worker (idle ones are evicted first)
//! cgroup_parent = "kindling"       # directory Kindling owns in each cgroup hierarchy; two workers
//!                                  # on one machine need different ones
//! cgroup_favor_dynmods = true      # at start, remount a cgroup hierarchy with `favordynmods`
//!                                  # (Linux 6.0+, machine-wide): moving a process into a sandbox's
//!                                  # cgroup (every cold and fork start) then need not wait for an
//!                                  # RCU grace period, at the cost of slightly slower fork/exit for
//!                                  # every process (the kernel's documented trade-off)
//! sandbox_uid = 65534              # unprivileged uid/gid function code runs as
//! sandbox_gid = 65534
//! max_open_files = 1024            # RLIMIT_NOFILE of instances
//! # admin_group = "kindling"       # group (name or gid) that may read <root>/token, the admin
//!                                  # token (mode 0640); unset: root only (mode 0600)
//! run_requires_token = false       # POST /run/<name> needs the admin token too; off by default so
//!                                  # that OpenLambda clients keep working unmodified
//!
//! [defaults]                       # per-function limits unless the function's config says otherwise
//! memory_mb = 256                  # memory limit of the sandbox's cgroup
//! timeout_secs = 30                # handler time limit -> 504
//! cpu_cores = 1.0                  # CPU quota (cores)
//! pids = 64                        # pids limit (fork bombs)
//! tmp_mb = 64                      # size of the sandbox's /tmp
//! network = false                  # give functions the host's network
//!
//! uv = "/usr/local/bin/uv"         # uv binary for the package puller (default: found on PATH)
//! allow_unsafe_requirements = false  # allow URLs, paths, -e and options in requirements.txt
//!
//! [installer_limits]               # sandboxes that resolve and install packages
//! memory_mb = 2048
//! timeout_secs = 600
//! cpu_cores = 2.0
//! pids = 512
//! parallel = 3                     # packages installed at once by one deploy
//!
//! [zygotes]                        # fork start from interpreters with packages imported
//! enabled = true
//! auto = true                      # a zygote per deployed package set, on first need
//! tree = [["numpy"], ["numpy", "pandas"], ["requests"]]  # operator's zygotes by package names;
//!                                  # each is instantiated per version set, a child of the largest
//!                                  # zygote whose packages it contains
//! memory_mb = 2048                 # cgroup memory limit of each zygote
//! idle_pause_secs = 60             # SIGSTOP a zygote unused this long (SIGCONT on next use)
//! min_available_mb = 1024          # below this MemAvailable, evict idle zygotes (LRU, leaves first)
//! sandbox_pool = 4                 # clean sandboxes kept ready for fork starts (0: none)
//! seeds = 1                        # children forked ahead of need per zygote that started an
//!                                  # instance, waiting entered and unprivileged in a clean sandbox
//!                                  # to become the next forked instance (0: fork on request only)
//!
//! [archive]                        # limits on uploaded function archives -> 400
//! max_unpacked_bytes = 268435456
//! max_entries = 100000
//!
//! [storage]                        # object storage for functions (Python module `storage`)
//! enabled = true                   # serve it; when false, `import storage` calls fail
//! dir = "/var/lib/kindling/storage"  # directory backend: <dir>/<bucket>/<key> (default <root>/storage)
//! max_object_bytes = 268435456     # largest object one upload may store
//! max_connections = 64             # storage calls served at once (more wait their turn)
//!
//! [http]                           # the API's connections
//! header_read_timeout_secs = 10    # a request head must be complete this long after its first
//!                                  # byte, else the connection is closed (half-open connections)
//! idle_timeout_secs = 60           # a connection waiting this long for its next request (or its
//!                                  # first) is closed
//! body_read_timeout_secs = 30      # a request body that sends nothing for this long -> 408
//! write_timeout_secs = 30          # a client that takes none of a response for this long is
//!                                  # disconnected
//! max_connections = 1024           # open connections; more are refused at once with 503
//! max_connections_per_client = 256 # open connections from one IP address (IPv6: one /64)
//! ```

use serde::Deserialize;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

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
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    pub listen: SocketAddr,
    pub root: PathBuf,
    pub base: String,
    pub base_dir: Option<PathBuf>,
    pub max_body_bytes: usize,
    pub max_upload_bytes: usize,
    pub keep_alive_secs: u64,
    pub freeze_idle: bool,
    pub freeze_idle_after_ms: u64,
    pub max_instances_per_function: usize,
    pub max_queue_per_function: usize,
    pub max_sandboxes: usize,
    pub cgroup_parent: String,
    pub cgroup_favor_dynmods: bool,
    pub sandbox_uid: u32,
    pub sandbox_gid: u32,
    pub max_open_files: u64,
    pub defaults: Limits,
    pub archive: ArchiveConfig,
    pub uv: Option<PathBuf>,
    pub allow_unsafe_requirements: bool,
    pub installer_limits: crate::packages::InstallerLimits,
    pub zygotes: ZygoteConfig,
    pub storage: StorageConfig,
    pub admin_group: Option<String>,
    pub run_requires_token: bool,
    pub http: HttpConfig,
}

/// The API's connections (`[http]`).
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct HttpConfig {
    pub header_read_timeout_secs: f64,
    pub idle_timeout_secs: f64,
    pub body_read_timeout_secs: f64,
    pub write_timeout_secs: f64,
    pub max_connections: usize,
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

/// Object storage for functions (`[storage]`).
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct StorageConfig {
    pub enabled: bool,
    pub dir: Option<PathBuf>,
    pub max_object_bytes: u64,
    pub max_connections: usize,
}

impl Default for StorageConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            dir: None,
            max_object_bytes: 256 * 1024 * 1024,
            max_connections: 64,
        }
    }
}

/// Zygote settings (`[zygotes]`).
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ZygoteConfig {
    pub enabled: bool,
    pub auto: bool,
    pub tree: Vec<Vec<String>>,
    pub memory_mb: u64,
    pub idle_pause_secs: u64,
    pub min_available_mb: u64,
    pub sandbox_pool: usize,
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
            sandbox_pool: 4,
            seeds: 1,
        }
    }
}

/// Per-function limits (worker-wide defaults; functions may override memory, timeout, network).
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Limits {
    pub memory_mb: u64,
    pub timeout_secs: f64,
    pub cpu_cores: f64,
    pub pids: u64,
    pub tmp_mb: u64,
    pub network: bool,
}

/// Limits on uploaded archives.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ArchiveConfig {
    pub max_unpacked_bytes: u64,
    pub max_entries: u64,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from(([127, 0, 0, 1], 5000)),
            root: PathBuf::from("/var/lib/kindling"),
            base: "debian-python".into(),
            base_dir: None,
            max_body_bytes: 6 * 1024 * 1024,
            max_upload_bytes: 256 * 1024 * 1024,
            keep_alive_secs: 600,
            freeze_idle: true,
            freeze_idle_after_ms: 2,
            max_instances_per_function: 8,
            max_queue_per_function: 64,
            max_sandboxes: 256,
            cgroup_parent: "kindling".into(),
            cgroup_favor_dynmods: true,
            sandbox_uid: 65534,
            sandbox_gid: 65534,
            max_open_files: 1024,
            defaults: Limits::default(),
            archive: ArchiveConfig::default(),
            uv: None,
            allow_unsafe_requirements: false,
            installer_limits: Default::default(),
            zygotes: ZygoteConfig::default(),
            storage: StorageConfig::default(),
            admin_group: None,
            run_requires_token: false,
            http: HttpConfig::default(),
        }
    }
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            memory_mb: 256,
            timeout_secs: 30.0,
            cpu_cores: 1.0,
            pids: 64,
            tmp_mb: 64,
            network: false,
        }
    }
}

impl Default for ArchiveConfig {
    fn default() -> Self {
        Self {
            max_unpacked_bytes: 256 * 1024 * 1024,
            max_entries: 100_000,
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
        if self.max_instances_per_function == 0 {
            return bad("max_instances_per_function must be at least 1");
        }
        if self.defaults.memory_mb < 16 {
            return bad("defaults.memory_mb must be at least 16");
        }
        if self.defaults.timeout_secs <= 0.0 {
            return bad("defaults.timeout_secs must be positive");
        }
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

    /// Directory of the object storage's directory backend.
    pub fn storage_dir(&self) -> PathBuf {
        self.storage
            .dir
            .clone()
            .unwrap_or_else(|| self.root.join("storage"))
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

    /// The documented example parses, and its values are the defaults.
    #[test]
    fn documented_http_block_is_the_default() {
        let doc = include_str!("config.rs");
        let start = doc.find("//! [http]").unwrap();
        let block: String = doc[start..]
            .lines()
            .take_while(|l| !l.starts_with("//! ```"))
            .map(|l| l.trim_start_matches("//!").to_string() + "\n")
            .collect();
        let cfg: Config = toml::from_str(&block).unwrap();
        assert_eq!(cfg.http, HttpConfig::default());
    }

    #[test]
    fn rejects_root_uid() {
        let cfg: Config = toml::from_str("sandbox_uid = 0").unwrap();
        assert!(cfg.validate().is_err());
    }
}
