//! The package puller and the shared package store.
//!
//! A function's `requirements.txt` (any PEP 508 form) is resolved by uv, with the base's own
//! interpreter, into an exact closure — the lock — which is cached by the requirements' content
//! and the interpreter, so unchanged requirements are never resolved again. Each
//! `<name>==<version>` of a lock is installed once (`uv pip install --no-deps --target`) into
//! `packages/<name>==<version>/files`, atomically (staging directory, then rename) and under a
//! per-package lock, and from then on shared read-only by every sandbox (`/packages`).
//!
//! Resolution and installs run as jobs in installer sandboxes (network on, their own memory and
//! time limits), never inside a user's invocation. uv's cache and the staging area live together
//! under `pkgwork/` so that installs hard-link from the cache instead of copying.

use crate::base::Base;
use crate::instance::{Factory, Job};
use kindling_sandbox::cgroup::Limits as CgroupLimits;
use kindling_sandbox::spec::MountSpec;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use std::collections::{BTreeMap, HashMap, HashSet};
use std::io;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Errors of the package puller.
#[derive(Debug, thiserror::Error)]
pub enum PackageError {
    #[error("requirements.txt line {line}: `{text}` is refused: {reason} (set `allow_unsafe_requirements = true` in the worker config to allow it)")]
    Refused {
        line: usize,
        text: String,
        reason: &'static str,
    },
    #[error("function has requirements but no uv binary is configured or found on PATH")]
    NoUv,
    #[error("resolving requirements `{requirements}` failed:\n{output}")]
    Resolve {
        requirements: String,
        output: String,
    },
    #[error("installing {package} failed:\n{output}")]
    Install { package: String, output: String },
    #[error("no package {0} in the store")]
    NotFound(String),
    #[error("package {package} is used by {users:?}")]
    InUse { package: String, users: Vec<String> },
    #[error("installer sandbox")]
    Job(#[from] crate::instance::StartError),
    #[error("package store failed at {path}")]
    Io {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
}

fn io_at(path: &Path) -> impl FnOnce(io::Error) -> PackageError + '_ {
    move |source| PackageError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// One exact package version.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct PackageRef {
    /// Normalized (PEP 503) name.
    pub name: String,
    pub version: String,
}

impl PackageRef {
    /// `<name>==<version>`: the store directory's name.
    pub fn key(&self) -> String {
        format!("{}=={}", self.name, self.version)
    }

    /// Parses `<name>==<version>`.
    pub fn parse(key: &str) -> Option<Self> {
        let (name, version) = key.split_once("==")?;
        let ok = |s: &str| {
            !s.is_empty()
                && s.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"-_.+!".contains(&b))
                && !s.starts_with('.')
        };
        (ok(name) && ok(version)).then(|| Self {
            name: normalize(name),
            version: version.to_string(),
        })
    }
}

/// PEP 503 name normalization.
pub fn normalize(name: &str) -> String {
    let mut out = String::with_capacity(name.len());
    let mut sep = false;
    for c in name.chars() {
        if c == '-' || c == '_' || c == '.' {
            sep = true;
        } else {
            if sep && !out.is_empty() {
                out.push('-');
            }
            sep = false;
            out.push(c.to_ascii_lowercase());
        }
    }
    out
}

/// A function's resolved closure, in `sys.path` order (each package before its dependencies).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Lock {
    pub packages: Vec<PackageRef>,
    /// Keys of packages shipping `.pth` files, which the runtime adds with `site.addsitedir`.
    #[serde(default)]
    pub site_packages: Vec<String>,
    /// Direct dependencies within the closure: package name -> names it requires.
    #[serde(default)]
    pub requires: BTreeMap<String, Vec<String>>,
}

impl Lock {
    /// Keys of `names` and everything they require, transitively, within this lock.
    pub fn closure_of(&self, names: &[String]) -> std::collections::BTreeSet<String> {
        let by_name: HashMap<&str, &PackageRef> =
            self.packages.iter().map(|p| (p.name.as_str(), p)).collect();
        let mut seen = HashSet::new();
        let mut stack: Vec<String> = names.iter().map(|n| normalize(n)).collect();
        let mut out = std::collections::BTreeSet::new();
        while let Some(n) = stack.pop() {
            if !seen.insert(n.clone()) {
                continue;
            }
            if let Some(p) = by_name.get(n.as_str()) {
                out.insert(p.key());
                stack.extend(self.requires.get(&n).cloned().unwrap_or_default());
            }
        }
        out
    }

    /// `KINDLING_PATH` and `KINDLING_SITE` for the runtime: store paths inside the sandbox.
    pub fn runtime_env(&self) -> [(String, String); 2] {
        let path = |k: &str| format!("/packages/{k}/files");
        let plain: Vec<String> = self.packages.iter().map(|p| path(&p.key())).collect();
        let site: Vec<String> = self.site_packages.iter().map(|k| path(k)).collect();
        [
            ("KINDLING_PATH".into(), plain.join(":")),
            ("KINDLING_SITE".into(), site.join(":")),
        ]
    }
}

/// Limits of installer sandboxes (config `[installer_limits]`).
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct InstallerLimits {
    pub memory_mb: u64,
    pub timeout_secs: u64,
    pub cpu_cores: f64,
    pub pids: u64,
    /// Packages installed at once by one deploy.
    pub parallel: usize,
}

impl Default for InstallerLimits {
    fn default() -> Self {
        Self {
            memory_mb: 2048,
            timeout_secs: 600,
            cpu_cores: 2.0,
            pids: 512,
            parallel: 3,
        }
    }
}

/// What `ensure` did.
#[derive(Debug, Default, Clone, Serialize)]
pub struct EnsureStats {
    pub installed: Vec<String>,
    pub hits: usize,
    pub bytes_added: u64,
    /// Time spent on packages (resolution and installs) in this deploy, in milliseconds.
    pub package_ms: f64,
}

/// A package in the store.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct StoredPackage {
    pub name: String,
    pub version: String,
    pub size_bytes: u64,
    /// Directories holding `.pth` files, which need `site.addsitedir` rather than a plain path.
    pub has_pth: bool,
}

/// One install: `Some((key, bytes))`, or `None` when another deploy installed it first.
type InstallResult = Result<Option<(String, u64)>, PackageError>;

/// Checks each requirement line; URLs, paths, editables and options are refused unless allowed.
pub fn validate_requirements(text: &str, allow_unsafe: bool) -> Result<Vec<String>, PackageError> {
    let mut out = Vec::new();
    for (i, raw) in text.lines().enumerate() {
        let line = match raw.find(" #").or_else(|| raw.starts_with('#').then_some(0)) {
            Some(p) => &raw[..p],
            None => raw,
        }
        .trim();
        if line.is_empty() {
            continue;
        }
        let refuse = |reason| PackageError::Refused {
            line: i + 1,
            text: line.chars().take(200).collect(),
            reason,
        };
        if !allow_unsafe {
            if line.starts_with('-') {
                return Err(refuse(
                    "options (such as -e, -r, --index-url) are not allowed",
                ));
            }
            if line.contains("://")
                || line.contains(" @ ")
                || line.contains("@ ")
                || line.starts_with("git+")
            {
                return Err(refuse("direct URL references are not allowed"));
            }
            if line.starts_with('.')
                || line.starts_with('/')
                || line.starts_with('~')
                || line.starts_with("file:")
            {
                return Err(refuse("local paths are not allowed"));
            }
            if !line.as_bytes()[0].is_ascii_alphanumeric() {
                return Err(refuse("not a PEP 508 requirement"));
            }
            if line.ends_with('\\') {
                return Err(refuse("line continuations are not allowed"));
            }
        }
        out.push(line.to_string());
    }
    Ok(out)
}

/// Parses `uv pip compile --annotation-style line` output into a lock in dependency order.
pub fn parse_compiled(text: &str) -> Lock {
    let mut order: Vec<PackageRef> = Vec::new();
    // package -> the packages that require it
    let mut via: HashMap<String, Vec<String>> = HashMap::new();
    for line in text.lines() {
        let (spec, comment) = match line.split_once('#') {
            Some((s, c)) => (s.trim(), c.trim()),
            None => (line.trim(), ""),
        };
        if spec.is_empty() || spec.starts_with('-') {
            continue;
        }
        let spec = spec.split(';').next().unwrap_or(spec).trim();
        let Some((name, version)) = spec.split_once("==") else {
            continue;
        };
        let name = normalize(name.split('[').next().unwrap_or(name).trim());
        let pkg = PackageRef {
            name: name.clone(),
            version: version.trim().to_string(),
        };
        if let Some(list) = comment.strip_prefix("via") {
            let parents = list
                .split(',')
                .map(str::trim)
                .filter(|p| !p.is_empty() && !p.starts_with('-'))
                .map(normalize)
                .collect();
            via.insert(name.clone(), parents);
        }
        order.push(pkg);
    }
    // Depth-first from the top-level requirements: a package comes before its dependencies.
    let mut children: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for (child, parents) in &via {
        for p in parents {
            children.entry(p.clone()).or_default().push(child.clone());
        }
    }
    let names: HashSet<&str> = order.iter().map(|p| p.name.as_str()).collect();
    let roots: Vec<String> = order
        .iter()
        .filter(|p| {
            via.get(&p.name)
                .is_none_or(|ps| ps.iter().all(|x| !names.contains(x.as_str())))
        })
        .map(|p| p.name.clone())
        .collect();
    let mut seen = HashSet::new();
    let mut sorted = Vec::new();
    fn visit(
        n: &str,
        children: &BTreeMap<String, Vec<String>>,
        seen: &mut HashSet<String>,
        out: &mut Vec<String>,
    ) {
        if !seen.insert(n.to_string()) {
            return;
        }
        out.push(n.to_string());
        if let Some(cs) = children.get(n) {
            let mut cs = cs.clone();
            cs.sort();
            for c in cs {
                visit(&c, children, seen, out);
            }
        }
    }
    for r in roots {
        visit(&r, &children, &mut seen, &mut sorted);
    }
    for p in &order {
        visit(&p.name, &children, &mut seen, &mut sorted);
    }
    let by_name: HashMap<&str, &PackageRef> = order.iter().map(|p| (p.name.as_str(), p)).collect();
    let requires = children
        .into_iter()
        .map(|(parent, mut cs)| {
            cs.sort();
            cs.dedup();
            (parent, cs)
        })
        .filter(|(parent, _)| names.contains(parent.as_str()))
        .collect();
    Lock {
        site_packages: Vec::new(),
        requires,
        packages: sorted
            .iter()
            .filter_map(|n| by_name.get(n.as_str()).map(|p| (*p).clone()))
            .collect(),
    }
}

/// The package store and puller.
pub struct PackageStore {
    /// `<root>/packages`: the store, bound read-only into sandboxes.
    pub dir: PathBuf,
    /// `<root>/pkgwork`: uv cache, staging, resolution cache.
    work: PathBuf,
    /// `<root>/tools`: the uv binary, bound at /kindling in installer sandboxes.
    tools: PathBuf,
    /// `<root>/locks`: resolution cache, by requirements and interpreter.
    locks: PathBuf,
    /// Packages of deploys in flight (installed or checked, not yet committed): key -> count.
    pinned: Mutex<HashMap<String, usize>>,
    uv: Option<PathBuf>,
    limits: InstallerLimits,
    allow_unsafe: bool,
    ca_bundle: bool,
    installing: Mutex<HashMap<String, Arc<Mutex<()>>>>,
    counter: AtomicU64,
    /// Installs performed and store hits, for `/stats`.
    pub pulls: AtomicU64,
    pub hits: AtomicU64,
}

impl PackageStore {
    /// Opens the store under `root`; `uv` is the host's uv binary (copied into the tools dir).
    pub fn open(
        root: &Path,
        uv: Option<PathBuf>,
        limits: InstallerLimits,
        allow_unsafe: bool,
    ) -> Result<Self, PackageError> {
        let dir = root.join("packages");
        let work = root.join("pkgwork");
        let tools = root.join("tools");
        for d in [
            &dir,
            &work,
            &work.join("cache"),
            &work.join("staging"),
            &root.join("locks"),
            &work.join("resolve"),
            &tools,
        ] {
            std::fs::create_dir_all(d).map_err(io_at(d))?;
        }
        // Whatever a crashed install left in staging is garbage.
        for sub in ["staging", "resolve"] {
            let p = work.join(sub);
            if let Ok(rd) = std::fs::read_dir(&p) {
                for e in rd.flatten() {
                    let _ = std::fs::remove_dir_all(e.path());
                }
            }
        }
        // The installer fetches with the host's trust store (which may hold a proxy's CA), so a
        // copy of the host's CA bundle goes to the tools directory the installer sandbox sees.
        let host_ca = std::env::var_os("SSL_CERT_FILE")
            .map(PathBuf::from)
            .filter(|p| p.is_file())
            .or_else(|| {
                let p = PathBuf::from("/etc/ssl/certs/ca-certificates.crt");
                p.is_file().then_some(p)
            });
        let ca_bundle = match host_ca {
            Some(src) => {
                let dst = tools.join("ca-certificates.crt");
                std::fs::copy(&src, &dst).map_err(io_at(&src))?;
                true
            }
            None => false,
        };
        let uv = match uv {
            Some(src) => {
                let dst = tools.join("uv");
                let stale = std::fs::metadata(&dst).ok().map(|m| m.len())
                    != std::fs::metadata(&src).ok().map(|m| m.len());
                if stale {
                    let tmp = tools.join(".uv.tmp");
                    std::fs::copy(&src, &tmp).map_err(io_at(&src))?;
                    std::fs::rename(&tmp, &dst).map_err(io_at(&dst))?;
                }
                Some(dst)
            }
            None => None,
        };
        Ok(Self {
            dir,
            work,
            tools,
            locks: root.join("locks"),
            pinned: Mutex::new(HashMap::new()),
            uv,
            limits,
            allow_unsafe,
            ca_bundle,
            installing: Mutex::new(HashMap::new()),
            counter: AtomicU64::new(0),
            pulls: AtomicU64::new(0),
            hits: AtomicU64::new(0),
        })
    }

    fn job(&self, base: &Base, args: Vec<String>) -> Result<Job, PackageError> {
        if self.uv.is_none() {
            return Err(PackageError::NoUv);
        }
        let mut argv = vec!["/kindling/uv".to_string()];
        argv.extend(args);
        let mut env: Vec<(String, String)> = Vec::new();
        if self.ca_bundle {
            env.push((
                "SSL_CERT_FILE".into(),
                "/kindling/ca-certificates.crt".into(),
            ));
        }
        // An operator's proxy settings apply to package downloads too.
        for var in [
            "HTTPS_PROXY",
            "HTTP_PROXY",
            "ALL_PROXY",
            "NO_PROXY",
            "https_proxy",
            "http_proxy",
            "no_proxy",
        ] {
            if let Ok(v) = std::env::var(var) {
                env.push((var.into(), v));
            }
        }
        Ok(Job {
            argv,
            env: env
                .into_iter()
                .chain([
                    ("PATH".into(), "/usr/local/bin:/usr/bin:/bin".into()),
                    ("HOME".into(), "/tmp".into()),
                    ("LANG".into(), "C.UTF-8".into()),
                    ("UV_CACHE_DIR".into(), "/packages/cache".into()),
                    ("UV_PYTHON".into(), base.info.python.clone()),
                    ("UV_NO_PROGRESS".into(), "1".into()),
                    ("UV_PYTHON_DOWNLOADS".into(), "never".into()),
                ])
                .collect(),
            mounts: vec![
                MountSpec::Bind {
                    source: self.tools.clone(),
                    target: "/kindling".into(),
                    writable: false,
                },
                MountSpec::Bind {
                    source: self.work.clone(),
                    target: "/packages".into(),
                    writable: true,
                },
            ],
            network: true,
            // Root without capabilities (they are dropped at exec): enough to write the
            // root-owned work directory, nothing more.
            uid: 0,
            gid: 0,
            limits: CgroupLimits {
                memory_bytes: Some(self.limits.memory_mb << 20),
                cpu_cores: Some(self.limits.cpu_cores),
                pids: Some(self.limits.pids),
            },
            timeout: Duration::from_secs(self.limits.timeout_secs),
            cwd: "/packages".into(),
        })
    }

    /// Resolves requirements into a lock, reusing the cached lock of identical requirements.
    pub fn resolve(
        &self,
        factory: &Factory,
        base: &Base,
        requirements: &str,
    ) -> Result<Lock, PackageError> {
        let lines = validate_requirements(requirements, self.allow_unsafe)?;
        if lines.is_empty() {
            return Ok(Lock::default());
        }
        let mut h = Sha256::new();
        h.update(base.info.python_version.as_bytes());
        h.update(b"\0");
        h.update(base.info.platform.as_bytes());
        h.update(b"\0");
        h.update(base.info.cache_tag.as_bytes());
        for l in &lines {
            h.update(b"\0");
            h.update(l.as_bytes());
        }
        let key = hex(&h.finalize());
        // Outside pkgwork: installer sandboxes (which run package build code) cannot touch it.
        let cached = self.locks.join(format!("{key}.json"));
        if let Ok(text) = std::fs::read_to_string(&cached) {
            if let Ok(lock) = serde_json::from_str::<Lock>(&text) {
                return Ok(lock);
            }
        }
        let n = self.counter.fetch_add(1, Ordering::Relaxed);
        let rel = format!("resolve/{}-{n}", std::process::id());
        let dir = self.work.join(&rel);
        std::fs::create_dir_all(&dir).map_err(io_at(&dir))?;
        let req = dir.join("requirements.in");
        std::fs::write(&req, lines.join("\n") + "\n").map_err(io_at(&req))?;
        let job = self.job(
            base,
            vec![
                "pip".into(),
                "compile".into(),
                format!("/packages/{rel}/requirements.in"),
                "-o".into(),
                format!("/packages/{rel}/lock.txt"),
                "--no-header".into(),
                "--annotation-style".into(),
                "line".into(),
                "--quiet".into(),
            ],
        )?;
        let out = factory.run_job(job);
        let result = (|| {
            let out = out?;
            let text = std::fs::read_to_string(dir.join("lock.txt")).unwrap_or_default();
            if out.code != Some(0) || text.trim().is_empty() {
                let mut msg = out.output.trim().to_string();
                if out.timed_out {
                    msg.push_str(&format!(
                        "\n(resolution exceeded the installer time limit of {} s)",
                        self.limits.timeout_secs
                    ));
                } else if out.code.is_none() {
                    msg.push_str(&format!(
                        "\n(the resolver was killed; installer memory limit {} MB)",
                        self.limits.memory_mb
                    ));
                }
                return Err(PackageError::Resolve {
                    requirements: lines.join(", "),
                    output: msg,
                });
            }
            Ok(parse_compiled(&text))
        })();
        let _ = std::fs::remove_dir_all(&dir);
        let lock = result?;
        let tmp = cached.with_extension("tmp");
        let text = serde_json::to_string(&lock).map_err(|e| io_at(&tmp)(io::Error::other(e)))?;
        std::fs::write(&tmp, text).map_err(io_at(&tmp))?;
        std::fs::rename(&tmp, &cached).map_err(io_at(&cached))?;
        Ok(lock)
    }

    /// Keeps a lock's packages from removal until the guard drops (a deploy between `ensure`
    /// and `commit`: its packages are in the store but no committed function uses them yet).
    pub fn pin<'a>(&'a self, lock: &Lock) -> Pin<'a> {
        let keys: Vec<String> = lock.packages.iter().map(PackageRef::key).collect();
        let mut pinned = self.pinned.lock().unwrap_or_else(|p| p.into_inner());
        for k in &keys {
            *pinned.entry(k.clone()).or_default() += 1;
        }
        Pin { store: self, keys }
    }

    /// Whether a package is installed.
    pub fn contains(&self, pkg: &PackageRef) -> bool {
        self.dir.join(pkg.key()).join("meta.json").is_file()
    }

    /// The installed package's metadata.
    pub fn stored(&self, pkg: &PackageRef) -> Option<StoredPackage> {
        let text = std::fs::read_to_string(self.dir.join(pkg.key()).join("meta.json")).ok()?;
        serde_json::from_str(&text).ok()
    }

    /// Installs every package of `lock` that the store lacks; `progress` hears of each install.
    pub fn ensure(
        &self,
        factory: &Factory,
        base: &Base,
        lock: &Lock,
        progress: &(dyn Fn(String) + Sync),
    ) -> Result<EnsureStats, PackageError> {
        let missing: Vec<&PackageRef> =
            lock.packages.iter().filter(|p| !self.contains(p)).collect();
        let mut stats = EnsureStats {
            hits: lock.packages.len() - missing.len(),
            ..EnsureStats::default()
        };
        self.hits.fetch_add(stats.hits as u64, Ordering::Relaxed);
        if missing.is_empty() {
            return Ok(stats);
        }
        let results: Mutex<Vec<InstallResult>> = Mutex::new(Vec::new());
        let queue = Mutex::new(missing.into_iter());
        std::thread::scope(|s| {
            for _ in 0..self.limits.parallel.max(1) {
                s.spawn(|| loop {
                    let next = queue.lock().unwrap_or_else(|p| p.into_inner()).next();
                    let Some(pkg) = next else { break };
                    let r = self.install_one(factory, base, pkg, progress);
                    let failed = r.is_err();
                    results.lock().unwrap_or_else(|p| p.into_inner()).push(r);
                    if failed {
                        break;
                    }
                });
            }
        });
        for r in results.into_inner().unwrap_or_else(|p| p.into_inner()) {
            match r? {
                Some((key, bytes)) => {
                    stats.installed.push(key);
                    stats.bytes_added += bytes;
                }
                None => stats.hits += 1,
            }
        }
        Ok(stats)
    }

    /// Installs one package under its lock. `Ok(None)`: someone else installed it meanwhile.
    fn install_one(
        &self,
        factory: &Factory,
        base: &Base,
        pkg: &PackageRef,
        progress: &(dyn Fn(String) + Sync),
    ) -> InstallResult {
        let key = pkg.key();
        let lock = self
            .installing
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .entry(key.clone())
            .or_default()
            .clone();
        let _guard = lock.lock().unwrap_or_else(|p| p.into_inner());
        if self.contains(pkg) {
            self.hits.fetch_add(1, Ordering::Relaxed);
            return Ok(None);
        }
        progress(format!("installing {key}"));
        let started = Instant::now();
        let n = self.counter.fetch_add(1, Ordering::Relaxed);
        let rel = format!("staging/{key}-{}-{n}", std::process::id());
        let staging = self.work.join(&rel);
        let result = (|| {
            std::fs::create_dir_all(staging.join("files")).map_err(io_at(&staging))?;
            let job = self.job(
                base,
                vec![
                    "pip".into(),
                    "install".into(),
                    "--no-deps".into(),
                    "--compile-bytecode".into(),
                    "--quiet".into(),
                    "--target".into(),
                    format!("/packages/{rel}/files"),
                    format!("{}=={}", pkg.name, pkg.version),
                ],
            )?;
            let out = factory.run_job(job)?;
            if out.code != Some(0) {
                let mut output = out.output.trim().to_string();
                if out.timed_out {
                    output.push_str(&format!(
                        "\n(install exceeded the installer time limit of {} s)",
                        self.limits.timeout_secs
                    ));
                } else if out.code.is_none() {
                    output.push_str(&format!(
                        "\n(the installer was killed; memory limit {} MB)",
                        self.limits.memory_mb
                    ));
                }
                return Err(PackageError::Install {
                    package: key.clone(),
                    output,
                });
            }
            let (size, has_pth) = walk_size(&staging.join("files"));
            let meta = StoredPackage {
                name: pkg.name.clone(),
                version: pkg.version.clone(),
                size_bytes: size,
                has_pth,
            };
            let meta_path = staging.join("meta.json");
            let text =
                serde_json::to_string(&meta).map_err(|e| io_at(&meta_path)(io::Error::other(e)))?;
            std::fs::write(&meta_path, text).map_err(io_at(&meta_path))?;
            let dst = self.dir.join(&key);
            if dst.exists() {
                // A package directory without meta.json is a leftover; replace it.
                std::fs::remove_dir_all(&dst).map_err(io_at(&dst))?;
            }
            std::fs::rename(&staging, &dst).map_err(io_at(&dst))?;
            Ok(size)
        })();
        let _ = std::fs::remove_dir_all(&staging);
        let size = result?;
        self.pulls.fetch_add(1, Ordering::Relaxed);
        progress(format!(
            "installed {key} ({:.1} MB, {:.1} s)",
            size as f64 / 1e6,
            started.elapsed().as_secs_f64()
        ));
        Ok(Some((key, size)))
    }

    /// Every installed package.
    pub fn list(&self) -> Vec<StoredPackage> {
        let mut out = Vec::new();
        if let Ok(rd) = std::fs::read_dir(&self.dir) {
            for e in rd.flatten() {
                if let Some(p) = e.file_name().to_str().and_then(PackageRef::parse) {
                    if let Some(s) = self.stored(&p) {
                        out.push(s);
                    }
                }
            }
        }
        out.sort_by(|a, b| (&a.name, &a.version).cmp(&(&b.name, &b.version)));
        out
    }

    /// Removes one package; refused while a deployed function uses it.
    pub fn remove(&self, pkg: &PackageRef, mut users: Vec<String>) -> Result<(), PackageError> {
        let key = pkg.key();
        // Hold the package's install lock so a removal never races an install of it.
        let lock = self
            .installing
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .entry(key.clone())
            .or_default()
            .clone();
        let _guard = lock.lock().unwrap_or_else(|p| p.into_inner());
        if self
            .pinned
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(&key)
            .is_some_and(|n| *n > 0)
        {
            users.push("(a deploy in progress)".into());
        }
        if !users.is_empty() {
            return Err(PackageError::InUse {
                package: pkg.key(),
                users,
            });
        }
        let dir = self.dir.join(pkg.key());
        if !dir.exists() {
            return Err(PackageError::NotFound(pkg.key()));
        }
        // Rename first so no sandbox sees a half-deleted package under its real name.
        let trash = self.work.join("staging").join(format!(
            "{}-removed-{}",
            pkg.key(),
            self.counter.fetch_add(1, Ordering::Relaxed)
        ));
        std::fs::rename(&dir, &trash).map_err(io_at(&dir))?;
        std::fs::remove_dir_all(&trash).map_err(io_at(&trash))
    }

    /// Records which of the lock's (installed) packages need `site.addsitedir`.
    pub fn mark_site_packages(&self, lock: &mut Lock) {
        lock.site_packages = lock
            .packages
            .iter()
            .filter(|p| self.stored(p).is_some_and(|s| s.has_pth))
            .map(PackageRef::key)
            .collect();
    }
}

/// Packages pinned by a deploy in flight; unpinned on drop.
pub struct Pin<'a> {
    store: &'a PackageStore,
    keys: Vec<String>,
}

impl Drop for Pin<'_> {
    fn drop(&mut self) {
        let mut pinned = self.store.pinned.lock().unwrap_or_else(|p| p.into_inner());
        for k in &self.keys {
            if let Some(n) = pinned.get_mut(k) {
                *n -= 1;
                if *n == 0 {
                    pinned.remove(k);
                }
            }
        }
    }
}

fn walk_size(dir: &Path) -> (u64, bool) {
    let mut size = 0;
    let mut has_pth = false;
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(rd) = std::fs::read_dir(&d) else {
            continue;
        };
        for e in rd.flatten() {
            let Ok(ft) = e.file_type() else { continue };
            if ft.is_dir() {
                stack.push(e.path());
            } else if let Ok(m) = e.metadata() {
                size += m.len();
                if d == dir && e.file_name().to_string_lossy().ends_with(".pth") {
                    has_pth = true;
                }
            }
        }
    }
    (size, has_pth)
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn normalizes_names() {
        assert_eq!(normalize("Foo_Bar.baz"), "foo-bar-baz");
        assert_eq!(normalize("PySocks"), "pysocks");
        assert_eq!(normalize("a--b"), "a-b");
    }

    #[test]
    fn refuses_unsafe_requirements() {
        let ok = "requests[socks]>=2.0 ; python_version >= '3.8'\n# comment\nnumpy==1.26.4  # pinned\n\n";
        assert_eq!(validate_requirements(ok, false).unwrap().len(), 2);
        for bad in [
            "-e .",
            "--index-url http://evil/simple",
            "-r other.txt",
            "pkg @ https://example.invalid/pkg.whl",
            "git+https://example.invalid/x.git",
            "./local",
            "/abs/path",
            "file:///x",
        ] {
            assert!(
                matches!(
                    validate_requirements(bad, false),
                    Err(PackageError::Refused { .. })
                ),
                "{bad}"
            );
            assert!(validate_requirements(bad, true).is_ok());
        }
    }

    #[test]
    fn parses_uv_output_in_dependency_order() {
        let text = "certifi==2024.2.2  # via requests\ncharset-normalizer==3.3.2  # via requests\nidna==3.6  # via requests\nrequests==2.31.0  # via -r requirements.in\nurllib3==2.2.1  # via requests\n";
        let lock = parse_compiled(text);
        let names: Vec<_> = lock.packages.iter().map(|p| p.name.as_str()).collect();
        assert_eq!(
            names,
            [
                "requests",
                "certifi",
                "charset-normalizer",
                "idna",
                "urllib3"
            ]
        );
        assert_eq!(lock.packages[0].version, "2.31.0");
    }

    #[test]
    fn parses_keys() {
        let p = PackageRef::parse("NumPy==1.26.4").unwrap();
        assert_eq!(p.key(), "numpy==1.26.4");
        assert!(PackageRef::parse("../x==1").is_none());
        assert!(PackageRef::parse("x").is_none());
        assert!(PackageRef::parse("x==1/2").is_none());
    }
}
