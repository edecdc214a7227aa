//! The worker daemon's lifecycle: start (clean up after a crashed predecessor, make sure the
//! base and runtime exist, start the spawner), serve, and shut down leaving nothing behind.

use crate::base::{self, Base};
use crate::bounds;
use crate::config::Config;
use crate::function_config::{Entry, Format};
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
    #[error("S3 API")]
    S3(#[from] crate::s3::StartError),
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
    /// The S3 API over it (None unless `[s3] listen` is set).
    pub s3: Option<crate::s3::S3Server>,
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
        let s3 = crate::s3::start_configured(&config.s3, storage.as_ref(), &config.storage)?;
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
            s3,
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
        let code = self.precompile(&staged.version);
        staged.version.imports = code.imports;
        staged.version.entry = match code.entry {
            Ok(entry) => entry,
            Err(e) => {
                self.registry.discard(staged);
                return Err(RegistryError::InvalidFunction(e).into());
            }
        };
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
    /// (which see it read-only) import bytecode instead of compiling at every start, and parses
    /// it (never runs it): the modules it imports, and for an OpenLambda function its entry (a
    /// plain `f` or a web app) or why that entry is missing or not callable. A syntax error is
    /// not a deploy error: the invocation reports it with its traceback.
    fn precompile(&self, version: &FunctionVersion) -> CodeFacts {
        let mut env = vec![("PATH".to_string(), "/usr/bin:/bin".to_string())];
        if version.format == Format::OpenLambda {
            let (wsgi, asgi) = version.config.web_entries();
            env.push(("ENTRY_FILE".into(), version.config.entry_file().into()));
            env.extend(wsgi.map(|n| ("WSGI_ENTRY".to_string(), n.to_string())));
            env.extend(asgi.map(|n| ("ASGI_ENTRY".to_string(), n.to_string())));
        }
        let job = crate::sandboxes::Job {
            argv: vec![
                self.base.info.python.clone(),
                "-S".into(),
                "-c".into(),
                PRECOMPILE.into(),
            ],
            env,
            mounts: vec![kindling_sandbox::spec::MountSpec::Bind {
                source: version.dir.clone(),
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
        let output = match self.instances.sandboxes.run_job(job) {
            Ok(out) => {
                if out.code != Some(0) {
                    tracing::debug!("precompiling function code: {}", out.output.trim());
                }
                out.output
            }
            Err(e) => {
                tracing::warn!("cannot precompile function code: {e}");
                String::new()
            }
        };
        CodeFacts {
            imports: imports_of(&output),
            entry: entry_of(&output, version),
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
        if let Some(s) = &self.s3 {
            s.stop();
        }
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

/// What the deploy-time job found in a function's code.
struct CodeFacts {
    imports: Vec<String>,
    /// The entry, or why it cannot serve (a deploy error naming it).
    entry: Result<Entry, String>,
}

/// The deploy-time job on a function's code (at /handler): byte-compile it, list the modules it
/// imports by absolute name, and (with `ENTRY_FILE` set: an OpenLambda function) find its entry
/// as OpenLambda's runtime would choose it (`WSGI_ENTRY`, `ASGI_ENTRY`, else `f`, else `app`),
/// all parsed with `ast` (nothing runs), each on one marked line. A name is bound when a
/// module-level statement binds it (a def, a class, an import, an assignment, also inside a
/// top-level `if`/`try`/`with`/`for`); bound only to literals it is not callable; a star import,
/// `globals()`, `setattr` or a module `__getattr__` may bind anything (and a `global` statement
/// binds its names), so then a missing name is
/// not an error.
const PRECOMPILE: &str = r#"
import ast, compileall, json, os
compileall.compile_dir("/handler", quiet=1)
names = set()
trees = {}
for root, dirs, files in os.walk("/handler"):
    for f in files:
        if not f.endswith(".py"):
            continue
        try:
            with open(os.path.join(root, f), "rb") as src:
                tree = ast.parse(src.read())
        except (SyntaxError, ValueError, OSError, RecursionError, MemoryError):
            continue
        trees[os.path.join(root, f)] = tree
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                names.update(a.name for a in node.names)
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names.add(node.module)
                names.update(node.module + "." + a.name for a in node.names if a.name != "*")
print("\nkindling-imports " + json.dumps(sorted(names)[:2000]))

LITERALS = (ast.Constant, ast.List, ast.Tuple, ast.Dict, ast.Set, ast.JoinedStr, ast.ListComp,
            ast.SetComp, ast.DictComp, ast.GeneratorExp, ast.BinOp, ast.UnaryOp, ast.Compare, ast.BoolOp)

def bindings(tree, name):
    """'callable', 'literal', 'unknown' (something may bind it dynamically) or 'missing'."""
    kinds = set()
    dynamic = False
    def target(t, value):
        if isinstance(t, ast.Name) and t.id == name:
            kinds.add("literal" if isinstance(value, LITERALS) else "callable")
        elif isinstance(t, (ast.Tuple, ast.List, ast.Starred)):
            for e in ast.walk(t):
                if isinstance(e, ast.Name) and e.id == name:
                    kinds.add("callable")
    def visit(body):
        nonlocal dynamic
        for node in body:
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
                if node.name == name:
                    kinds.add("callable")
                if node.name == "__getattr__":
                    dynamic = True
            elif isinstance(node, (ast.Import, ast.ImportFrom)):
                for a in node.names:
                    if a.name == "*":
                        dynamic = True
                    elif (a.asname or a.name.split(".")[0]) == name:
                        kinds.add("callable")
            elif isinstance(node, ast.Assign):
                for t in node.targets:
                    target(t, node.value)
            elif isinstance(node, ast.AnnAssign) and node.value is not None:
                target(node.target, node.value)
            elif isinstance(node, ast.AugAssign):
                target(node.target, None)
            elif isinstance(node, (ast.For, ast.AsyncFor)):
                target(node.target, None)
            elif isinstance(node, (ast.With, ast.AsyncWith)):
                for item in node.items:
                    if item.optional_vars is not None:
                        target(item.optional_vars, None)
            for field in ("body", "orelse", "finalbody"):
                if not isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
                    visit(getattr(node, field, None) or [])
            for h in getattr(node, "handlers", None) or []:
                visit(h.body)
            for c in getattr(node, "cases", None) or []:
                visit(c.body)
    visit(tree.body)
    for node in ast.walk(tree):
        if isinstance(node, ast.NamedExpr):
            target(node.target, None)
        elif isinstance(node, ast.Global) and name in node.names:
            kinds.add("callable")
        elif isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id in ("globals", "setattr", "vars", "exec"):
            dynamic = True
    if "callable" in kinds:
        return "callable"
    if kinds:
        return "literal"
    return "unknown" if dynamic else "missing"

def entry():
    file = os.environ["ENTRY_FILE"]
    tree = trees.get("/handler/" + file)
    wsgi, asgi = os.environ.get("WSGI_ENTRY"), os.environ.get("ASGI_ENTRY")
    if tree is None:  # unparsable: the invocation reports why
        return {"entry": "http" if wsgi or asgi else "event"}
    for var, name in (("OL_WSGI_ENTRY", wsgi), ("OL_ASGI_ENTRY", asgi)):
        if name:
            found = bindings(tree, name)
            if found == "missing":
                return {"error": f"{var} names `{name}`, which {file} does not define"}
            if found == "literal":
                return {"error": f"{var} names `{name}`, which is not callable in {file}"}
            return {"entry": "http"}
    f, app = bindings(tree, "f"), bindings(tree, "app")
    if f == "literal":
        return {"error": f"`f` is not callable in {file}"}
    if f != "missing":
        return {"entry": "event"}
    if app == "literal":
        return {"error": f"`app` is not callable in {file}"}
    if app == "callable":
        return {"entry": "http"}
    if app == "unknown":
        return {"entry": "event"}
    return {"error": f"{file} defines neither `f` (a function) nor `app` (a WSGI or ASGI app)"}

if "ENTRY_FILE" in os.environ:
    print("\nkindling-entry " + json.dumps(entry()))
"#;

/// The entry of the precompile job's output (its last marked line), or the deploy error it
/// reports. Without one (the job failed), the environment decides: an app named → HTTP.
fn entry_of(output: &str, version: &FunctionVersion) -> Result<Entry, String> {
    #[derive(serde::Deserialize)]
    struct Found {
        entry: Option<Entry>,
        error: Option<String>,
    }
    if version.format != Format::OpenLambda {
        return Ok(Entry::Event);
    }
    let found = output
        .lines()
        .rev()
        .find_map(|l| l.strip_prefix("kindling-entry "))
        .and_then(|json| serde_json::from_str::<Found>(json).ok());
    match found {
        Some(Found { error: Some(e), .. }) => Err(crate::echo::echo(&e).into_owned()),
        Some(Found {
            entry: Some(entry), ..
        }) => Ok(entry),
        _ => Ok(match version.config.web_entries() {
            (None, None) => Entry::Event,
            _ => Entry::Http,
        }),
    }
}

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
#[allow(clippy::unwrap_used)]
mod precompile_tests {
    use super::{entry_of, imports_of, Entry, Format, FunctionVersion};

    fn version(format: Format, env: &[(&str, &str)]) -> FunctionVersion {
        let mut config = crate::function_config::FunctionConfig::default();
        for (k, v) in env {
            config.environment.insert(k.to_string(), v.to_string());
        }
        FunctionVersion {
            name: "f".into(),
            hash: "h".into(),
            format,
            dir: "/x".into(),
            config,
            lock: Default::default(),
            imports: Vec::new(),
            entry: Entry::default(),
        }
    }

    /// The entry comes from the job's last marked line; without one, from the environment.
    #[test]
    fn entries_come_from_the_last_marked_line() {
        let ol = version(Format::OpenLambda, &[]);
        let out = "kindling-entry {\"entry\": \"event\"}\nkindling-entry {\"entry\": \"http\"}\n";
        assert_eq!(entry_of(out, &ol), Ok(Entry::Http));
        let out = "kindling-entry {\"error\": \"OL_WSGI_ENTRY names `x`, which main.py does not define\"}";
        assert!(entry_of(out, &ol).unwrap_err().contains("`x`"));
        assert_eq!(entry_of("", &ol), Ok(Entry::Event));
        assert_eq!(entry_of("kindling-entry junk", &ol), Ok(Entry::Event));
        let wsgi = version(Format::OpenLambda, &[("OL_WSGI_ENTRY", "app")]);
        assert_eq!(entry_of("", &wsgi), Ok(Entry::Http));
        let sebs = version(Format::Sebs, &[]);
        assert_eq!(
            entry_of(out, &sebs),
            Ok(Entry::Event),
            "SeBS functions take events"
        );
    }

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
