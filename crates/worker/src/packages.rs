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
use crate::echo::{echo, excerpt};
use crate::layout;
/// Package versions, as the store names them (the lock model is `crate::lock`).
pub use crate::lock::PackageRef;
use crate::lock::{normalize, Lock};
use crate::sandboxes::{Job, Sandboxes};
use kindling_sandbox::cgroup::Limits as CgroupLimits;
use kindling_sandbox::spec::MountSpec;
use parking_lot::Mutex;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use std::collections::{BTreeMap, HashMap, HashSet};
use std::io;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Errors of the package puller. Whatever they repeat of a tenant's input is cut short
/// ([`crate::echo`]).
#[derive(Debug, thiserror::Error)]
pub enum PackageError {
    #[error("requirements.txt line {line}: `{text}` is refused: {reason} (set `allow_unsafe_requirements = true` in the worker config to allow it)")]
    Refused {
        line: usize,
        text: String,
        reason: String,
    },
    #[error("requirements.txt line {line}: `{text}` is invalid: {reason}")]
    Invalid {
        line: usize,
        text: String,
        reason: String,
    },
    #[error("{what} is larger than the limit of {limit}")]
    TooLarge { what: &'static str, limit: String },
    #[error("function has requirements but no uv binary is configured or found on PATH")]
    NoUv,
    #[error("resolving requirements `{requirements}` failed:\n{output}")]
    Resolve {
        requirements: String,
        output: String,
    },
    #[error("installing {package} failed:\n{output}")]
    Install { package: String, output: String },
    #[error("installing {package} failed: the installed files are refused: {reason}")]
    UnsafeTree { package: String, reason: String },
    #[error("no package {0} in the store")]
    NotFound(String),
    #[error("package {package} is used by {users:?}")]
    InUse { package: String, users: Vec<String> },
    #[error("installer sandbox")]
    Job(#[from] crate::sandboxes::StartError),
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

/// The store version of a direct reference: `0+direct.<digest>` of what it names (the file or
/// directory in the function's own files for `file:///handler/...`, else the reference itself),
/// a PEP 440 local version the index never publishes.
fn direct_version(source: &str, function: Option<&Path>) -> String {
    let mut h = Sha256::new();
    h.update(source.as_bytes());
    let local = source
        .strip_prefix("file:///handler/")
        .zip(function)
        .map(|(rel, dir)| dir.join(rel));
    if let Some(path) = local {
        hash_tree(&mut h, &path);
    }
    format!("0+direct.{}", &hex::encode(h.finalize())[..16])
}

/// Feeds the names and contents of the files under `path` (not following symlinks) to `h`.
fn hash_tree(h: &mut Sha256, path: &Path) {
    let Ok(meta) = std::fs::symlink_metadata(path) else {
        return;
    };
    if meta.is_dir() {
        let mut entries: Vec<_> = std::fs::read_dir(path)
            .map(|rd| rd.flatten().map(|e| e.path()).collect())
            .unwrap_or_default();
        entries.sort();
        for e in entries {
            h.update(e.as_os_str().as_encoded_bytes());
            hash_tree(h, &e);
        }
    } else if meta.is_file() {
        if let Ok(mut f) = std::fs::File::open(path) {
            let _ = io::copy(&mut f, h);
        }
    }
}

/// Limits of installer sandboxes (config `[installer_limits]`).
#[derive(Debug, Clone, PartialEq, Deserialize, serde::Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct InstallerLimits {
    /// Memory limit of each installer sandbox, in MB.
    pub memory_mb: u64,
    /// Time limit of each resolution or install job, in seconds.
    pub timeout_secs: u64,
    /// CPU quota of each installer sandbox, in cores.
    pub cpu_cores: f64,
    /// Pids limit of each installer sandbox.
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

/// Largest `requirements.txt` accepted.
pub const MAX_REQUIREMENTS_BYTES: usize = 128 * 1024;
/// Longest line of a `requirements.txt`.
pub const MAX_REQUIREMENT_LINE_BYTES: usize = 4096;
/// Most requirements (lines other than blanks and comments) in one `requirements.txt`.
pub const MAX_REQUIREMENTS: usize = 1000;
/// Largest lock (`uv pip compile` output) the worker reads back from an installer job.
const MAX_LOCK_BYTES: u64 = 4 << 20;
/// Lines of a resolver's or installer's output that an error message shows: its start (where uv
/// names the failure), lines mentioning an error, and its end (uv's cause and hints).
const OUTPUT_HEAD_LINES: usize = 10;
const OUTPUT_TAIL_LINES: usize = 20;

/// Requirements checked against the policy, ready for uv.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Requirements {
    /// One requirement per line: canonical PEP 508 text for index packages, the line as written
    /// for what only `allow_unsafe_requirements` lets through.
    pub lines: Vec<String>,
    /// Some line is not a plain requirement on the index (a URL, a path, an option): allowed by
    /// the operator, and resolved against the function's own files.
    pub unsafe_lines: bool,
}

/// Reads a function's `requirements.txt`, at most one byte past [`MAX_REQUIREMENTS_BYTES`] (so
/// [`validate_requirements`] can refuse a larger one without it ever being read whole).
pub fn read_requirements(path: &Path) -> io::Result<Option<String>> {
    use std::io::Read;
    let file = match std::fs::File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e),
    };
    let mut bytes = Vec::new();
    file.take(MAX_REQUIREMENTS_BYTES as u64 + 1)
        .read_to_end(&mut bytes)?;
    // Invalid UTF-8 becomes U+FFFD, which no requirement accepts: a 400, not a 500.
    Ok(Some(String::from_utf8_lossy(&bytes).into_owned()))
}

/// Checks a `requirements.txt` against the policy: every line is a PEP 508 requirement of a
/// named package (version specifiers, extras and markers allowed; comments and blank lines
/// ignored). URLs, paths, editables and options are refused unless `allow_unsafe`, which
/// passes such lines to uv as written. The file, its lines and their number are bounded either
/// way.
pub fn validate_requirements(text: &str, allow_unsafe: bool) -> Result<Requirements, PackageError> {
    if text.len() > MAX_REQUIREMENTS_BYTES {
        return Err(PackageError::TooLarge {
            what: "requirements.txt",
            limit: format!("{MAX_REQUIREMENTS_BYTES} bytes"),
        });
    }
    let mut out = Requirements::default();
    for (i, raw) in text.lines().enumerate() {
        let invalid = |reason: String| PackageError::Invalid {
            line: i + 1,
            text: echo(raw.trim()).into_owned(),
            reason,
        };
        if raw.len() > MAX_REQUIREMENT_LINE_BYTES {
            return Err(invalid(format!(
                "longer than {MAX_REQUIREMENT_LINE_BYTES} bytes"
            )));
        }
        let line = strip_comment(raw).trim();
        if line.is_empty() {
            continue;
        }
        if out.lines.len() == MAX_REQUIREMENTS {
            return Err(PackageError::TooLarge {
                what: "requirements.txt",
                limit: format!("{MAX_REQUIREMENTS} requirements"),
            });
        }
        match index_requirement(line) {
            Ok(canonical) => out.lines.push(canonical),
            Err(_) if allow_unsafe => {
                out.unsafe_lines = true;
                out.lines.push(line.to_string());
            }
            Err(reason) => {
                return Err(PackageError::Refused {
                    line: i + 1,
                    text: echo(line).into_owned(),
                    reason,
                })
            }
        }
    }
    Ok(out)
}

/// A requirements-file comment starts at a `#` that begins the line or follows whitespace.
fn strip_comment(line: &str) -> &str {
    let bytes = line.as_bytes();
    let at = (0..bytes.len())
        .find(|&i| bytes[i] == b'#' && (i == 0 || bytes[i - 1].is_ascii_whitespace()));
    at.map_or(line, |i| &line[..i])
}

/// The canonical form of a requirement of a named package on the index, or why the line is not
/// one. What uv is given is this canonical text, so uv sees exactly what was checked.
fn index_requirement(line: &str) -> Result<String, String> {
    if line.starts_with('-') {
        return Err("options (such as -e, -r, --index-url) are not allowed".into());
    }
    if line.ends_with('\\') {
        return Err("line continuations are not allowed".into());
    }
    // pep508_rs 0.9 panics on a name ending in `.`, `-` or `_` followed by more text (found by
    // fuzzing: `6.$`); such a name is invalid anyway.
    let name_len = line
        .bytes()
        .take_while(|b| b.is_ascii_alphanumeric() || b".-_".contains(b))
        .count();
    if name_len > 0 && b".-_".contains(&line.as_bytes()[name_len - 1]) {
        return Err("not a PEP 508 requirement of a package on the index: a package name must end with a letter or digit".into());
    }
    // The same bug exists for extras (`x[y.]`); whatever else may panic in the parser, a panic
    // refuses the line rather than failing the deploy.
    let parsed = std::panic::catch_unwind(|| {
        pep508_rs::Requirement::<pep508_rs::VerbatimUrl>::from_str(line)
    })
    .map_err(|_| {
        "not a PEP 508 requirement of a package on the index: the parser failed on it".to_string()
    })?;
    let req = parsed.map_err(|e| {
        format!(
            "not a PEP 508 requirement of a package on the index: {}",
            echo(&e.message.to_string())
        )
    })?;
    if let Some(pep508_rs::VersionOrUrl::Url(_)) = req.version_or_url {
        return Err("direct references (URLs and paths) are not allowed".into());
    }
    Ok(req.to_string())
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
        let (name, version, source) = match (spec.split_once("=="), spec.split_once(" @ ")) {
            (_, Some((name, url))) => (name, String::new(), Some(url.trim().to_string())),
            (Some((name, version)), None) => (name, version.trim().to_string(), None),
            (None, None) => continue,
        };
        let name = normalize(name.split('[').next().unwrap_or(name).trim());
        let pkg = PackageRef {
            name: name.clone(),
            version,
            source,
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

/// Who installer jobs run as and where they fetch from (config keys of the same names).
#[derive(Debug, Clone, PartialEq)]
pub struct InstallerSettings {
    /// Runs jobs that only fetch wheels (no third-party code) and owns the shared uv cache.
    pub installer_uid: u32,
    pub installer_gid: u32,
    /// Runs jobs that may build sdists (third-party code): owns nothing but its scratch.
    pub build_uid: u32,
    pub build_gid: u32,
    /// The package index (uv's `--default-index`); None: uv's default (PyPI).
    pub index_url: Option<String>,
    /// HTTP(S) proxy for installer jobs; None: none (nothing is inherited from the worker).
    pub proxy: Option<String>,
}

/// How an installer job runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum JobMode {
    /// Wheels only (`--no-build`): no third-party code runs, so the job may use the shared uv
    /// cache, as the installer uid.
    Wheels,
    /// May build sdists, which runs third-party code: the build uid, a private empty cache that
    /// is thrown away, and nothing shared writable.
    Build,
}

/// uv's hint when `--no-build` stopped it: the job must be retried as a build.
fn needs_build(output: &str) -> bool {
    let output = output.to_ascii_lowercase();
    output.contains("building from source is disabled")
        || (output.contains("building source distributions for") && output.contains("is disabled"))
        || output.contains("building source distributions is disabled")
        || output.contains("--no-build")
}

/// A job's scratch directory (`<root>/pkgwork/jobs/<id>`, owned by the job's uid, mode 0700):
/// its cwd, HOME, TMPDIR, install target and, for builds, its uv cache. Removed on drop.
struct Scratch {
    dir: PathBuf,
}

impl Scratch {
    fn create(dir: PathBuf, uid: u32, gid: u32) -> Result<Self, PackageError> {
        use std::os::unix::fs::DirBuilderExt;
        std::fs::DirBuilder::new()
            .mode(0o700)
            .create(&dir)
            .map_err(io_at(&dir))?;
        let scratch = Self { dir };
        for sub in ["", "home", "tmp", "cache", "target"] {
            let p = scratch.dir.join(sub);
            if !sub.is_empty() {
                std::fs::create_dir(&p).map_err(io_at(&p))?;
            }
            std::os::unix::fs::chown(&p, Some(uid), Some(gid)).map_err(io_at(&p))?;
        }
        Ok(scratch)
    }

    /// Reads a file the job wrote: never through a symlink, at most `limit` bytes.
    fn read(&self, name: &str, limit: u64) -> Option<String> {
        use std::io::Read;
        use std::os::unix::fs::OpenOptionsExt;
        let path = self.dir.join(name);
        let file = std::fs::OpenOptions::new()
            .read(true)
            .custom_flags(kindling_sandbox::mount::O_NOFOLLOW)
            .open(&path)
            .ok()?;
        if !file.metadata().ok()?.is_file() {
            return None;
        }
        let mut bytes = Vec::new();
        file.take(limit).read_to_end(&mut bytes).ok()?;
        String::from_utf8(bytes).ok()
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        if let Err(e) = std::fs::remove_dir_all(&self.dir) {
            tracing::warn!(dir = %self.dir.display(), "removing an installer job's scratch: {e}");
        }
    }
}

/// Gives a directory tree to `uid`/`gid` (never following symlinks).
fn chown_tree(root: &Path, uid: u32, gid: u32) -> io::Result<()> {
    let mut stack = vec![root.to_path_buf()];
    while let Some(p) = stack.pop() {
        let meta = std::fs::symlink_metadata(&p)?;
        std::os::unix::fs::lchown(&p, Some(uid), Some(gid))?;
        if meta.is_dir() {
            for e in std::fs::read_dir(&p)? {
                stack.push(e?.path());
            }
        }
    }
    Ok(())
}

/// The package store and puller.
pub struct PackageStore {
    /// `<root>/packages`: the store, bound read-only into sandboxes.
    pub dir: PathBuf,
    /// `<root>/pkgwork`: the shared uv cache, job scratch directories, staging.
    work: PathBuf,
    /// `<root>/tools`: the uv binary, bound at /kindling in installer sandboxes.
    tools: PathBuf,
    /// `<root>/locks`: resolution cache, by requirements and interpreter.
    locks: PathBuf,
    /// Packages of deploys in flight (installed or checked, not yet committed): key -> count.
    pinned: Mutex<HashMap<String, usize>>,
    uv: Option<PathBuf>,
    limits: InstallerLimits,
    settings: InstallerSettings,
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
        settings: InstallerSettings,
        allow_unsafe: bool,
    ) -> Result<Self, PackageError> {
        use std::os::unix::fs::PermissionsExt;
        let dir = root.join("packages");
        let work = root.join("pkgwork");
        let tools = root.join("tools");
        let cache = work.join("cache");
        for d in [
            &dir,
            &work,
            &cache,
            &work.join("staging"),
            &work.join("jobs"),
            &root.join("locks"),
            &tools,
        ] {
            std::fs::create_dir_all(d).map_err(io_at(d))?;
        }
        // Only root reaches into pkgwork; jobs see their own scratch and (wheel-only jobs) the
        // cache, which only the installer uid may write.
        for (d, mode) in [(&work, 0o711), (&work.join("staging"), 0o700)] {
            std::fs::set_permissions(d, std::fs::Permissions::from_mode(mode)).map_err(io_at(d))?;
        }
        let want = (settings.installer_uid, settings.installer_gid);
        let meta = std::fs::metadata(&cache).map_err(io_at(&cache))?;
        {
            use std::os::unix::fs::MetadataExt;
            if (meta.uid(), meta.gid()) != want {
                // A cache written by an earlier worker (as root) or for another installer uid.
                chown_tree(&cache, want.0, want.1).map_err(io_at(&cache))?;
            }
        }
        std::fs::set_permissions(&cache, std::fs::Permissions::from_mode(0o700))
            .map_err(io_at(&cache))?;
        // Whatever a crashed install left in staging or a job's scratch is garbage.
        for sub in ["staging", "jobs", "resolve"] {
            let p = work.join(sub);
            if let Ok(rd) = std::fs::read_dir(&p) {
                for e in rd.flatten() {
                    let _ = std::fs::remove_dir_all(e.path());
                }
            }
        }
        let _ = std::fs::remove_dir(work.join("resolve"));
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
            settings,
            allow_unsafe,
            ca_bundle,
            installing: Mutex::new(HashMap::new()),
            counter: AtomicU64::new(0),
            pulls: AtomicU64::new(0),
            hits: AtomicU64::new(0),
        })
    }

    /// A fresh scratch directory for a job in `mode`.
    fn scratch(&self, mode: JobMode) -> Result<Scratch, PackageError> {
        let n = self.counter.fetch_add(1, Ordering::Relaxed);
        let (uid, gid) = match mode {
            JobMode::Wheels => (self.settings.installer_uid, self.settings.installer_gid),
            JobMode::Build => (self.settings.build_uid, self.settings.build_gid),
        };
        Scratch::create(
            self.work
                .join("jobs")
                .join(format!("{}-{n}", std::process::id())),
            uid,
            gid,
        )
    }

    /// An installer job running `uv <args>` in `scratch` (at /packages inside the sandbox).
    /// Nothing of the worker's environment or of any uv configuration file reaches uv: its
    /// settings are these arguments and variables only. With `function`, the function's own
    /// files are visible (read-only) at /handler, which is then the cwd, so the relative paths
    /// that `allow_unsafe_requirements` lets through name the function's files.
    fn job(
        &self,
        base: &Base,
        mode: JobMode,
        scratch: &Scratch,
        function: Option<&Path>,
        args: Vec<String>,
    ) -> Result<Job, PackageError> {
        if self.uv.is_none() {
            return Err(PackageError::NoUv);
        }
        let mut argv = vec![format!("{}/uv", layout::RUNTIME)];
        argv.extend(args);
        argv.extend(
            [
                "--no-config",
                "--cache-dir",
                "/packages/cache",
                "--python",
                &base.info.python,
                "--no-python-downloads",
            ]
            .map(str::to_string),
        );
        // Only uv writes a wheels job's tree, so its files may be the cache's own inodes (sealed
        // read-only with the tree); a build's tree holds copies.
        argv.extend(
            match mode {
                JobMode::Wheels => ["--no-build", "--link-mode", "hardlink"].as_slice(),
                JobMode::Build => ["--link-mode", "copy"].as_slice(),
            }
            .iter()
            .map(|s| s.to_string()),
        );
        if let Some(index) = &self.settings.index_url {
            argv.extend(["--default-index".to_string(), index.clone()]);
        }
        let mut env: Vec<(String, String)> = [
            ("PATH", "/usr/local/bin:/usr/bin:/bin"),
            ("HOME", "/packages/home"),
            ("TMPDIR", "/packages/tmp"),
            ("LANG", "C.UTF-8"),
            ("UV_NO_PROGRESS", "1"),
        ]
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .into();
        if self.ca_bundle {
            env.push((
                "SSL_CERT_FILE".into(),
                format!("{}/ca-certificates.crt", layout::RUNTIME),
            ));
        }
        if let Some(proxy) = &self.settings.proxy {
            for var in ["HTTPS_PROXY", "HTTP_PROXY", "https_proxy", "http_proxy"] {
                env.push((var.into(), proxy.clone()));
            }
        }
        let mut mounts = vec![
            MountSpec::Bind {
                source: self.tools.clone(),
                target: layout::RUNTIME.into(),
                writable: false,
            },
            MountSpec::Bind {
                source: scratch.dir.clone(),
                target: layout::PACKAGES.into(),
                writable: true,
            },
        ];
        if mode == JobMode::Wheels {
            mounts.push(MountSpec::Bind {
                source: self.work.join("cache"),
                target: "/packages/cache".into(),
                writable: true,
            });
        }
        if let Some(dir) = function {
            mounts.push(MountSpec::Bind {
                source: dir.to_path_buf(),
                target: layout::HANDLER.into(),
                writable: false,
            });
        }
        let (uid, gid) = match mode {
            JobMode::Wheels => (self.settings.installer_uid, self.settings.installer_gid),
            JobMode::Build => (self.settings.build_uid, self.settings.build_gid),
        };
        Ok(Job {
            argv,
            env,
            mounts,
            // Wheel-only jobs need the index; builds need it for their build dependencies.
            network: true,
            uid,
            gid,
            limits: CgroupLimits {
                memory_bytes: Some(self.limits.memory_mb << 20),
                cpu_cores: Some(self.limits.cpu_cores),
                pids: Some(self.limits.pids),
            },
            timeout: Duration::from_secs(self.limits.timeout_secs),
            cwd: if function.is_some() {
                layout::HANDLER.into()
            } else {
                layout::PACKAGES.into()
            },
        })
    }

    /// Runs a job; `Err(output)` when it failed, with a note naming the limit it hit.
    fn run(
        &self,
        sandboxes: &Sandboxes,
        job: Job,
        what: &str,
    ) -> Result<Result<(), String>, PackageError> {
        let out = sandboxes.run_job(job)?;
        if out.code == Some(0) {
            return Ok(Ok(()));
        }
        let mut msg = out.output.trim().to_string();
        if out.timed_out {
            msg.push_str(&format!(
                "\n({what} exceeded the installer time limit of {} s)",
                self.limits.timeout_secs
            ));
        } else if out.code.is_none() {
            msg.push_str(&format!(
                "\n(the {what} was killed; installer memory limit {} MB)",
                self.limits.memory_mb
            ));
        }
        Ok(Err(msg))
    }

    /// Resolves requirements into a lock, reusing the cached lock of identical requirements.
    /// `function` is the function's directory (what relative paths name, when allowed).
    pub fn resolve(
        &self,
        sandboxes: &Sandboxes,
        base: &Base,
        requirements: &str,
        function: &Path,
    ) -> Result<Lock, PackageError> {
        let reqs = validate_requirements(requirements, self.allow_unsafe)?;
        if reqs.lines.is_empty() {
            return Ok(Lock::default());
        }
        let mut h = Sha256::new();
        h.update(base.info.python_version.as_bytes());
        h.update(b"\0");
        h.update(base.info.platform.as_bytes());
        h.update(b"\0");
        h.update(base.info.cache_tag.as_bytes());
        h.update(b"\0");
        h.update(self.settings.index_url.as_deref().unwrap_or("").as_bytes());
        for l in &reqs.lines {
            h.update(b"\0");
            h.update(l.as_bytes());
        }
        // What only the operator's opt-in allows may name the function's own files: such a lock
        // is the function's alone.
        if reqs.unsafe_lines {
            h.update(b"\0function\0");
            h.update(function.as_os_str().as_encoded_bytes());
        }
        let key = hex::encode(h.finalize());
        // Outside pkgwork: installer sandboxes (which run package build code) cannot touch it.
        let cached = self.locks.join(format!("{key}.json"));
        if let Ok(text) = std::fs::read_to_string(&cached) {
            if let Ok(lock) = serde_json::from_str::<Lock>(&text) {
                return Ok(lock);
            }
        }
        let function = reqs.unsafe_lines.then_some(function);
        let mut result = self.compile(sandboxes, base, &reqs, JobMode::Wheels, function)?;
        if let Err(output) = &result {
            if needs_build(output) {
                // Some requirement has no wheel: its metadata comes from building its sdist.
                result = self.compile(sandboxes, base, &reqs, JobMode::Build, function)?;
            }
        }
        let text = result.map_err(|output| PackageError::Resolve {
            requirements: echo(&reqs.lines.join(", ")).into_owned(),
            output: excerpt(&output, OUTPUT_HEAD_LINES, OUTPUT_TAIL_LINES),
        })?;
        let mut lock = self.checked_lock(&text, &reqs)?;
        for pkg in &mut lock.packages {
            if let Some(source) = &pkg.source {
                pkg.version = direct_version(source, function);
            }
        }
        // Concurrent deploys of the same requirements each write a file of their own, and the
        // last rename wins (the locks are equal); one shared temporary name made the loser's
        // rename fail.
        let n = self.counter.fetch_add(1, Ordering::Relaxed);
        let tmp = self
            .locks
            .join(format!(".{key}.{}.{n}.tmp", std::process::id()));
        let text = serde_json::to_string(&lock).map_err(|e| io_at(&tmp)(io::Error::other(e)))?;
        std::fs::write(&tmp, text).map_err(io_at(&tmp))?;
        std::fs::rename(&tmp, &cached).map_err(io_at(&cached))?;
        Ok(lock)
    }

    /// One `uv pip compile` job: `Ok(Ok(lock text))` or `Ok(Err(uv's output))`.
    fn compile(
        &self,
        sandboxes: &Sandboxes,
        base: &Base,
        reqs: &Requirements,
        mode: JobMode,
        function: Option<&Path>,
    ) -> Result<Result<String, String>, PackageError> {
        let scratch = self.scratch(mode)?;
        let req = scratch.dir.join("requirements.in");
        std::fs::write(&req, reqs.lines.join("\n") + "\n").map_err(io_at(&req))?;
        let job = self.job(
            base,
            mode,
            &scratch,
            function,
            [
                "pip",
                "compile",
                "/packages/requirements.in",
                "-o",
                "/packages/lock.txt",
                "--no-header",
                "--annotation-style",
                "line",
                "--quiet",
            ]
            .map(str::to_string)
            .into(),
        )?;
        if let Err(output) = self.run(sandboxes, job, "resolution")? {
            return Ok(Err(output));
        }
        match scratch.read("lock.txt", MAX_LOCK_BYTES) {
            Some(text) if !text.trim().is_empty() => Ok(Ok(text)),
            _ => Ok(Err("the resolver wrote no readable lock".into())),
        }
    }

    /// The lock of a resolver's output. Without the operator's opt-in, every entry must pin a
    /// package on the index (`name==version`): a build during resolution runs third-party code,
    /// which must not smuggle a URL or path into what is installed.
    fn checked_lock(&self, text: &str, reqs: &Requirements) -> Result<Lock, PackageError> {
        if !self.allow_unsafe {
            for line in text.lines() {
                let spec = line.split('#').next().unwrap_or("").trim();
                if spec.is_empty() {
                    continue;
                }
                let pinned = spec.split_once("==").is_some_and(|(n, v)| {
                    PackageRef::parse(&format!("{}=={}", n.trim(), v.trim())).is_some()
                });
                if !pinned {
                    return Err(PackageError::Resolve {
                        requirements: echo(&reqs.lines.join(", ")).into_owned(),
                        output: format!(
                            "the resolution named `{}`, which is not a package version on the index",
                            echo(spec)
                        ),
                    });
                }
            }
        }
        Ok(parse_compiled(text))
    }

    /// Keeps a lock's packages from removal until the guard drops (a deploy between `ensure`
    /// and `commit`: its packages are in the store but no committed function uses them yet).
    pub fn pin<'a>(&'a self, lock: &Lock) -> Pin<'a> {
        let keys: Vec<String> = lock.packages.iter().map(PackageRef::key).collect();
        let mut pinned = self.pinned.lock();
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
    /// `function` is the function's directory, which direct references may name.
    pub fn ensure(
        &self,
        sandboxes: &Sandboxes,
        base: &Base,
        lock: &Lock,
        function: &Path,
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
                    let next = queue.lock().next();
                    let Some(pkg) = next else { break };
                    let r = self.install_one(sandboxes, base, pkg, function, progress);
                    let failed = r.is_err();
                    results.lock().push(r);
                    if failed {
                        break;
                    }
                });
            }
        });
        for r in results.into_inner() {
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
        sandboxes: &Sandboxes,
        base: &Base,
        pkg: &PackageRef,
        function: &Path,
        progress: &(dyn Fn(String) + Sync),
    ) -> InstallResult {
        let key = pkg.key();
        let lock = self
            .installing
            .lock()
            .entry(key.clone())
            .or_default()
            .clone();
        let _guard = lock.lock();
        if self.contains(pkg) {
            self.hits.fetch_add(1, Ordering::Relaxed);
            return Ok(None);
        }
        progress(format!("installing {key}"));
        let started = Instant::now();
        let n = self.counter.fetch_add(1, Ordering::Relaxed);
        let staging = self
            .work
            .join("staging")
            .join(format!("{key}-{}-{n}", std::process::id()));
        let result: Result<u64, PackageError> = (|| {
            std::fs::create_dir(&staging).map_err(io_at(&staging))?;
            let mut mode = JobMode::Wheels;
            let mut installed = self.install_job(sandboxes, base, pkg, mode, function)?;
            if let Err(output) = &installed {
                if needs_build(output) {
                    progress(format!("building {key} from its sdist"));
                    mode = JobMode::Build;
                    installed = self.install_job(sandboxes, base, pkg, mode, function)?;
                }
            }
            let scratch = installed.map_err(|output| PackageError::Install {
                package: key.clone(),
                output: excerpt(&output, OUTPUT_HEAD_LINES, OUTPUT_TAIL_LINES),
            })?;
            // Out of the job's scratch first: from here on no uid but root reaches the tree.
            let files = staging.join("files");
            let target = scratch.dir.join("target");
            std::fs::rename(&target, &files).map_err(io_at(&target))?;
            drop(scratch);
            let links = match mode {
                JobMode::Wheels => crate::install_tree::HardLinks::FromCache,
                JobMode::Build => crate::install_tree::HardLinks::Refuse,
            };
            let summary = self.check_tree(pkg, &files, links)?;
            let meta = StoredPackage {
                name: pkg.name.clone(),
                version: pkg.version.clone(),
                size_bytes: summary.size,
                has_pth: summary.has_pth,
            };
            let meta_path = staging.join("meta.json");
            let text =
                serde_json::to_string(&meta).map_err(|e| io_at(&meta_path)(io::Error::other(e)))?;
            std::fs::write(&meta_path, text).map_err(io_at(&meta_path))?;
            crate::install_tree::seal(&staging).map_err(|e| self.unsafe_tree(pkg, e))?;
            let dst = self.dir.join(&key);
            if dst.exists() {
                // A package directory without meta.json is a leftover; replace it.
                std::fs::remove_dir_all(&dst).map_err(io_at(&dst))?;
            }
            std::fs::rename(&staging, &dst).map_err(io_at(&dst))?;
            Ok(summary.size)
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

    /// One `uv pip install --target` job: its scratch (holding `target/`) or uv's output.
    fn install_job(
        &self,
        sandboxes: &Sandboxes,
        base: &Base,
        pkg: &PackageRef,
        mode: JobMode,
        function: &Path,
    ) -> Result<Result<Scratch, String>, PackageError> {
        let scratch = self.scratch(mode)?;
        let spec = match &pkg.source {
            Some(source) => format!("{} @ {source}", pkg.name),
            None => format!("{}=={}", pkg.name, pkg.version),
        };
        let job = self.job(
            base,
            mode,
            &scratch,
            pkg.source.as_ref().map(|_| function),
            vec![
                "pip".into(),
                "install".into(),
                "--no-deps".into(),
                "--compile-bytecode".into(),
                "--quiet".into(),
                "--target".into(),
                "/packages/target".into(),
                spec,
            ],
        )?;
        Ok(self.run(sandboxes, job, "install")?.map(|()| scratch))
    }

    /// The checks an installed tree passes before it enters the store: the tree checks of
    /// [`crate::install_tree::check`], and exactly one `.dist-info` naming the package asked for.
    fn check_tree(
        &self,
        pkg: &PackageRef,
        files: &Path,
        links: crate::install_tree::HardLinks,
    ) -> Result<crate::install_tree::TreeSummary, PackageError> {
        let summary =
            crate::install_tree::check(files, links).map_err(|e| self.unsafe_tree(pkg, e))?;
        // A direct reference's version is Kindling's digest, not the one it was built with.
        let matches = |d: &str| {
            let stem = d.strip_suffix(".dist-info").unwrap_or(d);
            stem.rsplit_once('-').is_some_and(|(name, version)| {
                normalize(name) == pkg.name
                    && (pkg.source.is_some() || same_version(version, &pkg.version))
            })
        };
        match summary.dist_infos.as_slice() {
            [one] if matches(one) => Ok(summary),
            found => Err(PackageError::UnsafeTree {
                package: pkg.key(),
                reason: format!(
                    "expected one {}-{}.dist-info, found {}",
                    pkg.name,
                    pkg.version,
                    echo(&format!("{found:?}"))
                ),
            }),
        }
    }

    fn unsafe_tree(&self, pkg: &PackageRef, e: crate::install_tree::TreeError) -> PackageError {
        match e {
            crate::install_tree::TreeError::Io { path, source } => {
                PackageError::Io { path, source }
            }
            e => PackageError::UnsafeTree {
                package: pkg.key(),
                reason: e.to_string(),
            },
        }
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
            .entry(key.clone())
            .or_default()
            .clone();
        let _guard = lock.lock();
        if self.pinned.lock().get(&key).is_some_and(|n| *n > 0) {
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
        let mut pinned = self.store.pinned.lock();
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

/// Whether two version strings name the same PEP 440 version (`1.0` and `1.0.0` do).
fn same_version(a: &str, b: &str) -> bool {
    use pep508_rs::pep440_rs::Version;
    match (Version::from_str(a), Version::from_str(b)) {
        (Ok(x), Ok(y)) => x == y,
        _ => a == b,
    }
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

    fn refused(text: &str) -> String {
        match validate_requirements(text, false) {
            Err(e @ PackageError::Refused { .. }) => e.to_string(),
            other => panic!("{text:?} was not refused: {other:?}"),
        }
    }

    #[test]
    fn accepts_named_packages_with_specifiers_extras_and_markers() {
        let ok = "requests[socks]>=2.0 ; python_version >= '3.8'\n# comment\nnumpy==1.26.4  # pinned\n\n\tsix\r\nFoo_Bar[x,y] ~= 1.2, != 1.2.5\n";
        let reqs = validate_requirements(ok, false).unwrap();
        assert!(!reqs.unsafe_lines);
        assert_eq!(reqs.lines.len(), 4, "{reqs:?}");
        assert!(
            reqs.lines[0].starts_with("requests[socks]>=2.0 ; "),
            "{reqs:?}"
        );
        assert_eq!(reqs.lines[1], "numpy==1.26.4");
        assert_eq!(reqs.lines[2], "six");
        // What uv gets is canonical, so whitespace cannot hide anything from the check.
        assert_eq!(reqs.lines[3], "foo-bar[x,y]~=1.2,!=1.2.5");
        assert!(validate_requirements("", false).unwrap().lines.is_empty());
    }

    /// Every form that reached uv as a URL or a path before (research/security.md C12, C13).
    const BYPASSES: [&str; 17] = [
        "-e .",
        "--index-url http://evil/simple",
        "-r other.txt",
        "pkg @ https://example.invalid/pkg.whl",
        "git+https://example.invalid/x.git",
        "./local",
        "/abs/path",
        "file:///x",
        "~/x",
        "foo/bar",
        "evil@/kindling",
        "evil\t@\t/kindling",
        "evil@file:/kindling",
        "evil@http:/host/x.tar.gz",
        "evil @ file:///kindling",
        "six==1.16 --hash=sha256:abc",
        "six==1.16 \\",
    ];

    #[test]
    fn refuses_urls_paths_and_options() {
        for bad in BYPASSES {
            let msg = refused(&format!("six\n{bad}\n"));
            assert!(msg.contains("line 2"), "{msg}");
            assert!(msg.contains("allow_unsafe_requirements"), "{msg}");
            let allowed = validate_requirements(bad, true).unwrap();
            assert!(allowed.unsafe_lines, "{bad}");
            assert_eq!(allowed.lines, [bad.trim()]);
        }
        // Names pep508_rs itself would panic on.
        for bad in ["6.$", "a-!", "x_ y", "six.==1"] {
            assert!(
                refused(bad).contains("must end with a letter or digit"),
                "{bad}"
            );
        }
        let msg = refused("evil@http:/host/x.tar.gz");
        assert!(msg.contains("direct references"), "{msg}");
        // A `#` that does not follow whitespace is no comment (a URL fragment).
        assert!(refused("evil@http://h/x#egg=evil").contains("direct references"));
    }

    #[test]
    fn bounds_the_file_its_lines_and_their_number() {
        let huge_line = format!("six{}\n", " ".repeat(10 << 20));
        let err = validate_requirements(&huge_line, false).unwrap_err();
        assert!(matches!(err, PackageError::TooLarge { .. }), "{err}");
        assert!(err.to_string().len() < 100, "{err}");
        let long_line = format!("{}==1\n", "a".repeat(MAX_REQUIREMENT_LINE_BYTES));
        let err = validate_requirements(&long_line, true).unwrap_err();
        assert!(
            matches!(err, PackageError::Invalid { line: 1, .. }),
            "{err}"
        );
        assert!(err.to_string().len() < 400, "{}", err.to_string().len());
        let many: String = (0..=MAX_REQUIREMENTS).map(|i| format!("p{i}\n")).collect();
        assert!(matches!(
            validate_requirements(&many, false),
            Err(PackageError::TooLarge { .. })
        ));
        let bad = format!("{}/x\n", "b".repeat(4000));
        let msg = refused(&bad);
        assert!(msg.len() < 1000, "{} bytes: {msg}", msg.len());
    }

    #[test]
    fn reads_at_most_one_byte_past_the_limit() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("requirements.txt");
        assert_eq!(read_requirements(&p).unwrap(), None);
        std::fs::write(&p, vec![b'a'; 10 << 20]).unwrap();
        let text = read_requirements(&p).unwrap().unwrap();
        assert_eq!(text.len(), MAX_REQUIREMENTS_BYTES + 1);
        std::fs::write(&p, b"six\n\xff\xfe\n").unwrap();
        let text = read_requirements(&p).unwrap().unwrap();
        assert!(matches!(
            validate_requirements(&text, false),
            Err(PackageError::Refused { line: 2, .. })
        ));
    }

    #[test]
    fn retries_as_a_build_only_when_wheels_were_missing() {
        assert!(needs_build("hint: Wheels are required for `pycrypto` because building from source is disabled for all packages (i.e., with `--no-build`)"));
        assert!(needs_build(
            "  cause: Building source distributions for `evil` is disabled"
        ));
        assert!(!needs_build("error: No solution found: kindling-no-such-package-xyzzy was not found in the package registry"));
    }

    #[test]
    fn compares_versions_as_pep_440() {
        assert!(same_version("1.0", "1.0.0"));
        assert!(same_version("2.6.1", "2.6.1"));
        assert!(!same_version("2.6.1", "2.6.2"));
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
