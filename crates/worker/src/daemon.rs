//! The worker daemon's lifecycle: start (clean up after a crashed predecessor, make sure the
//! base and runtime exist, start the spawner), serve, and shut down leaving nothing behind.

use crate::base::{self, Base};
use crate::bounds;
use crate::config::Config;
use crate::instance::Instances;
use crate::layout;
use crate::lock::Lock;
use crate::metrics::Metrics;
use crate::packages::{EnsureStats, PackageError, PackageStore};
use crate::pool::Pool;
use crate::registry::{Deployed, FunctionVersion, Registry, RegistryError};
use crate::sandboxes::{FunctionLimits, SandboxSetup, Sandboxes, USERNS_INSTANCE_ID};
use crate::starts::Starts;
use crate::zygote::{SandboxHost, Zygotes};
use kindling_sandbox::cgroup::CgroupManager;
use kindling_sandbox::spawner::Spawner;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Errors starting the worker.
#[derive(Debug, thiserror::Error)]
pub enum StartupError {
    #[error("cannot create {path}")]
    Dir {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cgroups are not usable")]
    Cgroups(#[from] kindling_sandbox::cgroup::CgroupError),
    #[error("base root filesystem")]
    Base(#[from] base::BaseError),
    #[error("cannot start the sandbox spawner")]
    Spawner(#[from] kindling_sandbox::spawner::SpawnerError),
    #[error("runtime")]
    Runtime(#[from] crate::runtime::RuntimeError),
    #[error("function registry")]
    Registry(#[from] crate::registry::RegistryError),
    #[error("package store")]
    Packages(#[from] PackageError),
    #[error("object storage")]
    Storage(#[from] crate::storage::ServiceError),
    #[error("NoSQL")]
    Nosql(#[from] crate::nosql::service::ServiceError),
    #[error("function logs")]
    Logs(#[from] crate::logs::LogError),
    #[error("sandbox networks")]
    Network(#[from] kindling_sandbox::net::NetError),
    #[error("admin token")]
    Token(#[from] crate::auth::TokenError),
}

/// Why a deploy failed; the version in service (if any) stays.
#[derive(Debug, thiserror::Error)]
pub enum DeployError {
    #[error(transparent)]
    Registry(#[from] RegistryError),
    #[error(transparent)]
    Packages(#[from] PackageError),
    #[error("NoSQL tables of config")]
    Nosql(#[from] crate::nosql::NosqlError),
}

/// A running worker: everything the API needs.
pub struct Worker {
    pub config: Config,
    pub registry: Registry,
    pub packages: PackageStore,
    pub pool: Arc<Pool<Starts>>,
    pub zygotes: Arc<Zygotes>,
    pub metrics: Arc<Metrics>,
    pub base: Base,
    pub cgroup_layout: String,
    /// Where idle instances are frozen: `v1`, `v2` or `none`.
    pub freezer: &'static str,
    pub started: Instant,
    /// Object storage for functions (None when disabled).
    pub storage: Option<crate::storage::StorageService>,
    /// NoSQL tables for functions (None when disabled).
    pub nosql: Option<crate::nosql::NosqlService>,
    /// What instances write to stdout and stderr, per function.
    pub logs: Arc<crate::logs::Logs>,
    /// The admin token callers of admin routes present, and who needs it.
    pub token: crate::auth::Token,
    pub auth: crate::auth::Policy,
    /// The API's open connections, within their caps.
    pub connections: crate::http::Connections,
    /// Starting, ready or draining (`/status`).
    pub state: crate::commands::Lifecycle,
    instances: Arc<Instances>,
}

fn mkdir(path: &Path) -> Result<(), StartupError> {
    std::fs::create_dir_all(path).map_err(|source| StartupError::Dir {
        path: path.to_path_buf(),
        source,
    })
}

impl Worker {
    /// Starts a worker. `program` is the `kindling` binary, run again as the spawner.
    /// Blocking: may build the base (about a minute) on first use.
    pub fn start(config: Config, program: &Path) -> Result<Arc<Self>, StartupError> {
        let root = config.root.clone();
        mkdir(&root)?;
        let admin_gid = match &config.admin_group {
            Some(group) => {
                let etc_group = std::fs::read_to_string("/etc/group").unwrap_or_default();
                Some(crate::auth::group_id(group, &etc_group)?)
            }
            None => None,
        };
        let token = crate::auth::Token::load_or_create(&root, admin_gid)?;
        let mountpoint = root.join("sandboxes").join("root");
        mkdir(&mountpoint)?;
        let cgroups = CgroupManager::detect(&config.cgroup_parent)?;
        if config.cgroup_favor_dynmods {
            match cgroups.favor_dynmods() {
                Ok(Some(mount)) => tracing::info!(
                    mount = %mount.display(),
                    "remounted with favordynmods: moving a process into a sandbox's cgroup no \
                     longer waits for an RCU grace period"
                ),
                Ok(None) => {}
                Err(e) => tracing::warn!(
                    "{e} ({}); sandbox starts pay an RCU grace period",
                    std::error::Error::source(&e)
                        .map(ToString::to_string)
                        .unwrap_or_default()
                ),
            }
        }
        let stale = cgroups.remove_stale()?;
        if stale > 0 {
            tracing::warn!(
                count = stale,
                "removed sandboxes left behind by a previous worker"
            );
        }
        match cgroups.prepare_freezer() {
            Ok(true) if cgroups.freezer_summary() == "v1" => tracing::warn!(
                "idle instances are frozen with the cgroup v1 freezer (no cgroup2 is mounted): \
                 v1 holds SIGKILL until a thaw, so if this worker is killed its frozen instances \
                 stay (frozen) until the next start cleans them up"
            ),
            Ok(true) => {}
            Ok(false) => tracing::warn!(
                "no cgroup freezer (neither a v1 `freezer` hierarchy nor cgroup2 is mounted): \
                 idle instances are not frozen, so their background processes keep running"
            ),
            Err(e) => tracing::warn!(
                "cannot prepare the cgroup freezer ({e}): freezing idle instances may be slow"
            ),
        }
        let base = base::ensure(&config.base_dir(), &config.base)?;
        let spawner = Spawner::start(program)?;
        let networking =
            crate::network::start(&config.network, &config.cgroup_parent, &root, &base.rootfs)?;
        let sandboxes = Arc::new(Sandboxes::new(SandboxSetup {
            spawner,
            cgroups: cgroups.clone(),
            rootfs: base.rootfs.clone(),
            python: base.info.python.clone(),
            mountpoint,
            uid: config.sandbox_uid,
            gid: config.sandbox_gid,
            zygote_uid: config.zygote_uid,
            zygote_gid: config.zygote_gid,
            max_open_files: config.max_open_files,
            network: Some(networking.network),
            resolv_conf: networking.resolv_conf,
        }));
        let runtime_dir = crate::runtime::install(&root, &base, &sandboxes)?;
        let packages = PackageStore::open(
            &root,
            config.uv_path(),
            config.installer_limits.clone(),
            config.installer_settings(),
            config.allow_unsafe_requirements,
        )?;
        let logs = Arc::new(crate::logs::Logs::open(
            &config.logs_dir(),
            crate::logs::LogLimits::of(&config.logs),
        )?);
        // Storage callers are known by the kernel's word: their cgroup, their sandbox's function.
        let assignments = Arc::new(crate::tenants::Assignments::default());
        let callers = Arc::new(crate::tenants::SandboxCallers::new(
            crate::tenants::KernelPeers::new(&config.cgroup_parent),
            assignments.clone(),
        ));
        let storage = crate::storage::start_configured(
            &config.storage,
            &config.storage_dir(),
            &root,
            callers.clone(),
        )?;
        let nosql = crate::nosql::NosqlService::start_configured(&config.nosql, &root, callers)?;
        let instances = Arc::new(Instances {
            sandboxes,
            runtime_dir,
            packages_dir: packages.dir.clone(),
            storage_socket: storage.as_ref().map(|s| s.socket().to_path_buf()),
            nosql_socket: nosql.as_ref().map(|s| s.socket().to_path_buf()),
            assignments,
            logs: Some(logs.clone()),
        });
        let bounds = config.bounds();
        let registry = Registry::open(&root.join("functions"), config.archive.clone())?
            .with_bounds(bounds.clone());
        for f in registry.list() {
            let (_, clamped) = bounds::effective(&f.config, f.format, &config.defaults, &bounds);
            for c in clamped {
                tracing::warn!(
                    function = %f.name,
                    "{c}; the version deployed before runs within the bound"
                );
            }
        }
        let metrics = Arc::new(Metrics::default());
        let zygote_host = SandboxHost::new(
            instances.clone(),
            (USERNS_INSTANCE_ID, USERNS_INSTANCE_ID),
            config.max_open_files,
            config.zygotes.memory_mb,
            config.defaults.tmp_mb,
        );
        let zygotes = Arc::new(Zygotes::new(
            zygote_host,
            config.zygotes.clone(),
            config.defaults.tmp_mb,
        ));
        let starts = Arc::new(Starts {
            instances: instances.clone(),
            zygotes: zygotes.clone(),
        });
        let pool = Pool::new(starts, config.pool(), metrics.clone());
        tracing::info!(
            root = %root.display(),
            base = %base.info.name,
            python = %base.info.python_version,
            cgroups = %cgroups.version_summary(),
            freezer = cgroups.freezer_summary(),
            functions = registry.list().len(),
            "worker ready"
        );
        Ok(Arc::new(Self {
            cgroup_layout: cgroups.version_summary(),
            freezer: cgroups.freezer_summary(),
            registry,
            packages,
            pool,
            zygotes,
            metrics,
            base,
            started: Instant::now(),
            storage,
            nosql,
            logs,
            auth: crate::auth::Policy {
                run_requires_token: config.run_requires_token,
            },
            connections: crate::http::Connections::new(
                config.http.max_connections,
                config.http.max_connections_per_client,
            ),
            token,
            config,
            state: Default::default(),
            instances,
        }))
    }

    /// Deploys a function: stage the upload, resolve and install its packages, then put it in
    /// service. Blocking; `progress` hears of package installs.
    pub fn deploy(
        &self,
        name: &str,
        tar_gz: &[u8],
        progress: &(dyn Fn(String) + Sync),
    ) -> Result<(Deployed, EnsureStats), DeployError> {
        let mut staged = self.registry.stage(name, tar_gz)?;
        // Tables first (all or none): a declaration the store refuses refuses the deploy. They
        // outlive the version, as buckets do, so a deploy failing later leaves them declared.
        if let Err(e) = self.declare_tables(name, &staged.version.config) {
            self.registry.discard(staged);
            return Err(e.into());
        }
        if staged.unchanged.is_some() {
            return Ok((
                self.registry.commit(staged, Default::default())?,
                EnsureStats::default(),
            ));
        }
        staged.version.imports = self.precompile(&staged.version.dir);
        let started = Instant::now();
        let resolved = (|| {
            let Some(reqs) = staged.requirements.as_deref() else {
                return Ok(Lock::default());
            };
            let lock = self.packages.resolve(
                &self.instances.sandboxes,
                &self.base,
                reqs,
                &staged.version.dir,
            )?;
            if !lock.packages.is_empty() {
                progress(format!("resolved {} packages", lock.packages.len()));
            }
            Ok::<_, PackageError>(lock)
        })();
        let mut lock = match resolved {
            Ok(l) => l,
            Err(e) => {
                self.registry.discard(staged);
                return Err(e.into());
            }
        };
        // From here until the commit, no gc may take this deploy's packages away.
        let pin = self.packages.pin(&lock);
        match self.packages.ensure(
            &self.instances.sandboxes,
            &self.base,
            &lock,
            &staged.version.dir,
            progress,
        ) {
            Ok(mut stats) => {
                self.packages.mark_site_packages(&mut lock);
                stats.package_ms = started.elapsed().as_secs_f64() * 1000.0;
                let deployed = self.registry.commit(staged, lock);
                drop(pin);
                Ok((deployed?, stats))
            }
            Err(e) => {
                drop(pin);
                self.registry.discard(staged);
                Err(e.into())
            }
        }
    }

    /// Declares the NoSQL tables a function's config lists (nothing when NoSQL is off).
    fn declare_tables(
        &self,
        name: &str,
        config: &crate::function_config::FunctionConfig,
    ) -> Result<(), crate::nosql::NosqlError> {
        let Some(nosql) = &self.nosql else {
            return Ok(());
        };
        if config.nosql_tables.is_empty() {
            return Ok(());
        }
        let owner = crate::nosql::table::Owner::parse(name)?;
        for (table, declared) in nosql.store().declare_all(&owner, &config.nosql_tables)? {
            tracing::debug!(
                function = name,
                table = table.as_str(),
                ?declared,
                "NoSQL table"
            );
        }
        Ok(())
    }

    /// Byte-compiles a staged function's code with the base's interpreter, so that instances
    /// (which see it read-only) import bytecode instead of compiling at every start, and returns
    /// the modules the code imports (parsed, never run). A syntax error is not a deploy error:
    /// the invocation reports it with its traceback.
    fn precompile(&self, dir: &Path) -> Vec<String> {
        let job = crate::sandboxes::Job {
            argv: vec![
                self.base.info.python.clone(),
                "-S".into(),
                "-c".into(),
                PRECOMPILE.into(),
            ],
            env: vec![("PATH".into(), "/usr/bin:/bin".into())],
            mounts: vec![kindling_sandbox::spec::MountSpec::Bind {
                source: dir.to_path_buf(),
                target: layout::HANDLER.into(),
                writable: true,
            }],
            network: false,
            // Root without capabilities: it owns the staged files, nothing more.
            uid: 0,
            gid: 0,
            limits: kindling_sandbox::cgroup::Limits {
                memory_bytes: Some(256 << 20),
                cpu_cores: Some(1.0),
                pids: Some(16),
            },
            timeout: Duration::from_secs(60),
            cwd: "/".into(),
        };
        match self.instances.sandboxes.run_job(job) {
            Ok(out) => {
                if out.code != Some(0) {
                    tracing::debug!("precompiling function code: {}", out.output.trim());
                }
                imports_of(&out.output)
            }
            Err(e) => {
                tracing::warn!("cannot precompile function code: {e}");
                Vec::new()
            }
        }
    }

    /// Names of deployed functions whose lock includes each package key.
    pub fn package_users(&self) -> std::collections::HashMap<String, Vec<String>> {
        let mut users: std::collections::HashMap<String, Vec<String>> = Default::default();
        for f in self.registry.list() {
            for p in &f.lock.packages {
                users.entry(p.key()).or_default().push(f.name.clone());
            }
        }
        users
    }

    /// The limits a function runs under: its own config over the worker's defaults, within the
    /// operator's bounds (a version deployed before a bound was lowered runs clamped to it).
    pub fn limits_for(&self, f: &FunctionVersion) -> FunctionLimits {
        bounds::effective(
            &f.config,
            f.format,
            &self.config.defaults,
            &self.config.bounds(),
        )
        .0
    }

    /// How instances of `f` are laid out (mounts, environment, user, limits).
    pub fn instance_layout(&self, f: &FunctionVersion) -> crate::instance::InstanceLayout {
        self.instances.instance_layout(f, &self.limits_for(f))
    }

    /// Periodic housekeeping: expire idle instances past their keep-alive.
    pub async fn housekeeping(self: Arc<Self>) {
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        loop {
            tick.tick().await;
            self.pool.expire_idle();
            let z = self.zygotes.clone();
            let _ = tokio::task::spawn_blocking(move || {
                z.housekeeping();
                if z.config.enabled {
                    z.refill();
                }
            })
            .await;
        }
    }

    /// Destroys every sandbox this worker made (blocking).
    pub fn shutdown(&self) {
        self.pool.shutdown();
        self.zygotes.shutdown();
        if let Some(s) = &self.storage {
            s.stop();
        }
        let sandboxes = &self.instances.sandboxes;
        if let Some(n) = &sandboxes.network {
            n.close();
        }
        if let Err(e) = sandboxes.cgroups.remove_stale() {
            tracing::warn!("cleaning cgroups at shutdown: {e}");
        }
        sandboxes.cgroups.remove_parent();
        tracing::info!("worker stopped");
    }
}

/// The deploy-time job on a function's code (at /handler): byte-compile it, then list the
/// modules it imports by absolute name, parsed with `ast` (nothing runs), on one marked line.
const PRECOMPILE: &str = r#"
import ast, compileall, json, os
compileall.compile_dir("/handler", quiet=1)
names = set()
for root, dirs, files in os.walk("/handler"):
    for f in files:
        if not f.endswith(".py"):
            continue
        try:
            with open(os.path.join(root, f), "rb") as src:
                tree = ast.parse(src.read())
        except (SyntaxError, ValueError, OSError, RecursionError, MemoryError):
            continue
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                names.update(a.name for a in node.names)
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names.add(node.module)
                names.update(node.module + "." + a.name for a in node.names if a.name != "*")
print("\nkindling-imports " + json.dumps(sorted(names)[:2000]))
"#;

/// The module list of the precompile job's output (its last marked line).
fn imports_of(output: &str) -> Vec<String> {
    output
        .lines()
        .rev()
        .find_map(|l| l.strip_prefix("kindling-imports "))
        .and_then(|json| serde_json::from_str::<Vec<String>>(json).ok())
        .unwrap_or_default()
        .into_iter()
        .filter(|m| {
            !m.is_empty()
                && m.len() <= 200
                && m.split('.').all(|part| {
                    !part.is_empty() && part.chars().all(|c| c.is_alphanumeric() || c == '_')
                })
        })
        .collect()
}

#[cfg(test)]
mod precompile_tests {
    use super::imports_of;

    #[test]
    fn imports_come_from_the_last_marked_line_and_are_checked() {
        let out = "*** Error compiling '/handler/bad.py'...\n\
                   kindling-imports [\"old\"]\n\
                   kindling-imports [\"numpy\", \"sklearn.linear_model\", \"a;b\", \"\", \"x..y\"]\n";
        assert_eq!(imports_of(out), vec!["numpy", "sklearn.linear_model"]);
        assert!(imports_of("no marker").is_empty());
        assert!(imports_of("kindling-imports not json").is_empty());
    }
}
