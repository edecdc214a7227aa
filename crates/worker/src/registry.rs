//! The function registry: deployed functions, their code versions and their configuration.
//!
//! On disk, `functions/<name>/<hash>/` holds one version's code and `functions/<name>/current`
//! names the version in service. A version's hash is the content hash of its files, so
//! redeploying unchanged code changes nothing.

use crate::archive::{self, ArchiveError, ArchiveLimits};
use crate::bounds::Bounds;
use crate::function_config::{ol_config, sebs_config, Format, FunctionConfig};
use crate::lock::Lock;
use parking_lot::{Mutex, RwLock};
use serde::Serialize;
use std::collections::HashMap;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

/// Errors of registry operations; the API maps them to HTTP statuses.
#[derive(Debug, thiserror::Error)]
pub enum RegistryError {
    #[error("invalid function name `{0}`: use 1-63 letters, digits, `_`, `-` or `.`, starting with a letter or digit")]
    InvalidName(String),
    #[error("no function named `{0}`")]
    NotFound(String),
    #[error(transparent)]
    Archive(#[from] ArchiveError),
    #[error(transparent)]
    OverBound(#[from] crate::bounds::OverBound),
    #[error("invalid function: {0}")]
    InvalidFunction(String),
    #[error("registry storage failed at {path}")]
    Io {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
}

fn io_at(path: &Path) -> impl FnOnce(io::Error) -> RegistryError + '_ {
    move |source| RegistryError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// One deployed version of a function.
#[derive(Debug, Clone, Serialize)]
pub struct FunctionVersion {
    pub name: String,
    pub hash: String,
    pub format: Format,
    #[serde(skip)]
    pub dir: PathBuf,
    pub config: FunctionConfig,
    /// The resolved package closure (empty without requirements).
    pub lock: Lock,
    /// Modules the function's code imports by absolute name (`import a.b`, `from a.b import c`
    /// gives `a.b` and `a.b.c`), found by parsing it at deploy; zygotes preload those of their
    /// packages.
    #[serde(default)]
    pub imports: Vec<String>,
}

/// The outcome of a deploy.
#[derive(Debug)]
pub struct Deployed {
    pub version: Arc<FunctionVersion>,
    /// False when the same code was already in service.
    pub changed: bool,
}

/// Deployed functions.
pub struct Registry {
    dir: PathBuf,
    limits: ArchiveLimits,
    bounds: Bounds,
    current: RwLock<HashMap<String, Arc<FunctionVersion>>>,
    deploy_lock: Mutex<()>,
    counter: AtomicU64,
}

/// An uploaded version, extracted and checked but not yet in service.
#[derive(Debug)]
pub struct Staged {
    pub version: FunctionVersion,
    /// The same code is already in service.
    pub unchanged: Option<Arc<FunctionVersion>>,
    /// The function's `requirements.txt`, if any.
    pub requirements: Option<String>,
}

/// Checks a function name: it becomes a directory name and a URL path segment.
pub fn validate_name(name: &str) -> Result<(), RegistryError> {
    if crate::function_config::is_valid_name(name) {
        Ok(())
    } else {
        Err(RegistryError::InvalidName(name.chars().take(80).collect()))
    }
}

impl Registry {
    /// Opens (or creates) the registry at `dir` and loads the versions in service.
    pub fn open(dir: &Path, limits: ArchiveLimits) -> Result<Self, RegistryError> {
        std::fs::create_dir_all(dir).map_err(io_at(dir))?;
        let mut current = HashMap::new();
        for entry in std::fs::read_dir(dir).map_err(io_at(dir))? {
            let entry = entry.map_err(io_at(dir))?;
            let name = entry.file_name().to_string_lossy().into_owned();
            if validate_name(&name).is_err() {
                continue;
            }
            let fdir = entry.path();
            // Leftovers of an interrupted deploy.
            remove_temporaries(&fdir);
            let Ok(hash) = std::fs::read_to_string(fdir.join("current")) else {
                continue;
            };
            let hash = hash.trim().to_string();
            match load_version(&name, &hash, &fdir.join(&hash)) {
                Ok(mut v) => {
                    v.lock = read_json(&fdir.join(format!("{hash}.lock.json")));
                    v.imports = read_json(&fdir.join(format!("{hash}.imports.json")));
                    current.insert(name, Arc::new(v));
                }
                Err(e) => tracing::warn!(function = %name, "skipping unloadable function: {e}"),
            }
        }
        Ok(Self {
            dir: dir.to_path_buf(),
            limits,
            bounds: Bounds::default(),
            current: RwLock::new(current),
            deploy_lock: Mutex::new(()),
            counter: AtomicU64::new(0),
        })
    }

    /// Refuses deploys whose config asks for more than `bounds` allow.
    pub fn with_bounds(mut self, bounds: Bounds) -> Self {
        self.bounds = bounds;
        self
    }

    /// Extracts and checks an upload (its config within the operator's bounds); nothing
    /// changes in service until [`Registry::commit`].
    pub fn stage(&self, name: &str, tar_gz: &[u8]) -> Result<Staged, RegistryError> {
        validate_name(name)?;
        let fdir = self.dir.join(name);
        std::fs::create_dir_all(&fdir).map_err(io_at(&fdir))?;
        let n = self.counter.fetch_add(1, Ordering::Relaxed);
        let tmp = fdir.join(format!(".deploy-{}-{n}", std::process::id()));
        let _ = std::fs::remove_dir_all(&tmp);
        std::fs::create_dir(&tmp).map_err(io_at(&tmp))?;
        let staged = (|| {
            archive::extract(tar_gz, &tmp, &self.limits)?;
            let hash = archive::tree_hash(&tmp).map_err(io_at(&tmp))?;
            let version = load_version(name, &hash, &tmp)?;
            crate::bounds::check(&version.config, version.format, &self.bounds)?;
            let requirements = crate::packages::read_requirements(&tmp.join("requirements.txt"))
                .map_err(io_at(&tmp))?;
            Ok::<_, RegistryError>((version, requirements))
        })();
        match staged {
            Ok((version, requirements)) => {
                let unchanged = self.get(name).filter(|cur| cur.hash == version.hash);
                Ok(Staged {
                    version,
                    unchanged,
                    requirements,
                })
            }
            Err(e) => {
                let _ = std::fs::remove_dir_all(&tmp);
                self.forget_if_empty(&fdir);
                Err(e)
            }
        }
    }

    /// Drops a staged upload (a failed deploy): the version in service stays.
    pub fn discard(&self, staged: Staged) {
        let _ = std::fs::remove_dir_all(&staged.version.dir);
        if let Some(parent) = staged.version.dir.parent() {
            self.forget_if_empty(parent);
        }
    }

    /// Puts a staged version with its package lock in service.
    pub fn commit(&self, staged: Staged, lock: Lock) -> Result<Deployed, RegistryError> {
        if let Some(cur) = staged.unchanged.clone() {
            self.discard(staged);
            return Ok(Deployed {
                version: cur,
                changed: false,
            });
        }
        let _guard = self.deploy_lock.lock();
        let mut version = staged.version;
        let name = version.name.clone();
        let hash = version.hash.clone();
        let tmp = version.dir.clone();
        let fdir = self.dir.join(&name);
        let lock_path = fdir.join(format!("{hash}.lock.json"));
        let text =
            serde_json::to_string(&lock).map_err(|e| io_at(&lock_path)(io::Error::other(e)))?;
        std::fs::write(&lock_path, text).map_err(io_at(&lock_path))?;
        let imports_path = fdir.join(format!("{hash}.imports.json"));
        let text = serde_json::to_string(&version.imports)
            .map_err(|e| io_at(&imports_path)(io::Error::other(e)))?;
        std::fs::write(&imports_path, text).map_err(io_at(&imports_path))?;
        let vdir = fdir.join(&hash);
        if vdir.exists() {
            let _ = std::fs::remove_dir_all(&tmp);
        } else {
            std::fs::rename(&tmp, &vdir).map_err(io_at(&vdir))?;
        }
        let pointer = fdir.join("current");
        let pointer_tmp = fdir.join(".current.tmp");
        std::fs::write(&pointer_tmp, &hash).map_err(io_at(&pointer_tmp))?;
        std::fs::rename(&pointer_tmp, &pointer).map_err(io_at(&pointer))?;
        version.dir = vdir;
        version.lock = lock;
        let version = Arc::new(version);
        let old = self.current.write().insert(name, version.clone());
        // Running sandboxes keep their bind mount of the old code alive; the files can go.
        if let Some(old) = old.filter(|o| o.hash != hash) {
            let _ = std::fs::remove_dir_all(&old.dir);
            let _ = std::fs::remove_file(fdir.join(format!("{}.lock.json", old.hash)));
            let _ = std::fs::remove_file(fdir.join(format!("{}.imports.json", old.hash)));
        }
        Ok(Deployed {
            version,
            changed: true,
        })
    }

    /// Stages and commits in one step, for functions without requirements (and tests).
    pub fn deploy(&self, name: &str, tar_gz: &[u8]) -> Result<Deployed, RegistryError> {
        let staged = self.stage(name, tar_gz)?;
        self.commit(staged, Lock::default())
    }

    /// The version of `name` in service.
    pub fn get(&self, name: &str) -> Option<Arc<FunctionVersion>> {
        self.current.read().get(name).cloned()
    }

    /// Every function in service, sorted by name.
    pub fn list(&self) -> Vec<Arc<FunctionVersion>> {
        let mut all: Vec<_> = self.current.read().values().cloned().collect();
        all.sort_by(|a, b| a.name.cmp(&b.name));
        all
    }

    /// Removes a function and all its versions.
    pub fn remove(&self, name: &str) -> Result<Arc<FunctionVersion>, RegistryError> {
        validate_name(name)?;
        let _guard = self.deploy_lock.lock();
        let old = self
            .current
            .write()
            .remove(name)
            .ok_or_else(|| RegistryError::NotFound(name.to_string()))?;
        let fdir = self.dir.join(name);
        std::fs::remove_dir_all(&fdir).map_err(io_at(&fdir))?;
        Ok(old)
    }

    fn forget_if_empty(&self, fdir: &Path) {
        // A first deploy that failed leaves no empty function directory behind.
        let _ = std::fs::remove_dir(fdir);
    }
}

fn remove_temporaries(fdir: &Path) {
    if let Ok(entries) = std::fs::read_dir(fdir) {
        for e in entries.flatten() {
            if e.file_name().to_string_lossy().starts_with('.') {
                let p = e.path();
                let _ = std::fs::remove_dir_all(&p).or_else(|_| std::fs::remove_file(&p));
            }
        }
    }
}

/// Reads a version's format and configuration from its code directory.
fn load_version(name: &str, hash: &str, dir: &Path) -> Result<FunctionVersion, RegistryError> {
    let invalid = |m: String| RegistryError::InvalidFunction(m);
    let (format, config) = if dir.join("function.py").is_file() {
        (
            Format::Sebs,
            sebs_config(&dir.join("config.json")).map_err(invalid)?,
        )
    } else if dir.join("f.py").is_file() {
        (
            Format::OpenLambda,
            ol_config(&dir.join("ol.yaml")).map_err(invalid)?,
        )
    } else {
        return Err(invalid(
            "archive has neither f.py (OpenLambda format) nor function.py (SeBS format) at its top level".into(),
        ));
    };
    if let Some(m) = config.memory_mb {
        if m < 16 {
            return Err(invalid(format!(
                "memory limit of {m} MB is below the minimum of 16 MB"
            )));
        }
    }
    if let Some(t) = config.timeout_secs {
        if !(t > 0.0 && t.is_finite()) {
            return Err(invalid(format!(
                "timeout {t} must be a positive number of seconds"
            )));
        }
    }
    for key in config.environment.keys() {
        if key.is_empty() || key.contains('=') || key.contains('\0') {
            return Err(invalid(format!(
                "invalid environment variable name `{key}`"
            )));
        }
    }
    Ok(FunctionVersion {
        name: name.to_string(),
        hash: hash.to_string(),
        format,
        dir: dir.to_path_buf(),
        config,
        lock: Lock::default(),
        imports: Vec::new(),
    })
}

/// A JSON file written by `commit`; missing or unreadable gives the default.
fn read_json<T: serde::de::DeserializeOwned + Default>(path: &Path) -> T {
    std::fs::read_to_string(path)
        .ok()
        .and_then(|t| serde_json::from_str(&t).ok())
        .unwrap_or_default()
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn write(dir: &Path, files: &[(&str, &str)]) {
        for (name, body) in files {
            std::fs::write(dir.join(name), body).unwrap();
        }
    }

    #[test]
    fn names() {
        for ok in ["hello", "a", "json-gzip", "f_1.2"] {
            assert!(validate_name(ok).is_ok(), "{ok}");
        }
        for bad in ["", "..", ".x", "a/b", "a b", &"x".repeat(64), "-x", "é"] {
            assert!(validate_name(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn formats_and_configs() {
        let d = tempfile::tempdir().unwrap();
        write(
            d.path(),
            &[
                ("f.py", "def f(e): return e"),
                (
                    "ol.yaml",
                    "triggers:\n  http:\n    - method: post\nenvironment:\n  A: 1\n  B: x\n",
                ),
            ],
        );
        let v = load_version("x", "h", d.path()).unwrap();
        assert_eq!(v.format, Format::OpenLambda);
        assert_eq!(v.config.methods, vec!["POST"]);
        assert_eq!(v.config.environment["A"], "1");

        let d = tempfile::tempdir().unwrap();
        write(
            d.path(),
            &[
                ("function.py", "def handler(e): return {}"),
                (
                    "config.json",
                    // SeBS's keys Kindling does not use are accepted, never refused.
                    r#"{"timeout": 5, "memory": 128, "languages": ["python", "nodejs", "pypy"],
                        "modules": ["nosql", "storage"], "architecture": {"x64": true}}"#,
                ),
            ],
        );
        let v = load_version("x", "h", d.path()).unwrap();
        assert_eq!(v.format, Format::Sebs);
        assert_eq!(v.config.memory_mb, Some(128));
        assert_eq!(v.config.timeout_secs, Some(5.0));

        let d = tempfile::tempdir().unwrap();
        write(d.path(), &[("function.py", ""), ("config.json", "{nope")]);
        assert!(load_version("x", "h", d.path()).is_err());
        let d = tempfile::tempdir().unwrap();
        write(d.path(), &[("main.py", "")]);
        assert!(matches!(
            load_version("x", "h", d.path()),
            Err(RegistryError::InvalidFunction(_))
        ));
    }

    #[test]
    fn deploy_is_versioned_by_content() {
        let root = tempfile::tempdir().unwrap();
        let src = tempfile::tempdir().unwrap();
        write(src.path(), &[("f.py", "def f(e): return 1")]);
        let reg = Registry::open(root.path(), ArchiveLimits::default()).unwrap();
        let a = reg
            .deploy("hello", &archive::pack_dir(src.path()).unwrap())
            .unwrap();
        assert!(a.changed);
        let b = reg
            .deploy("hello", &archive::pack_dir(src.path()).unwrap())
            .unwrap();
        assert!(!b.changed);
        assert_eq!(a.version.hash, b.version.hash);
        write(src.path(), &[("f.py", "def f(e): return 2")]);
        let c = reg
            .deploy("hello", &archive::pack_dir(src.path()).unwrap())
            .unwrap();
        assert!(c.changed);
        assert!(!a.version.dir.exists(), "old version removed");
        // Reopening finds the version in service.
        let reg2 = Registry::open(root.path(), ArchiveLimits::default()).unwrap();
        assert_eq!(reg2.get("hello").unwrap().hash, c.version.hash);
        reg2.remove("hello").unwrap();
        assert!(reg2.get("hello").is_none());
        assert!(!root.path().join("hello").exists());
    }

    #[test]
    fn deploys_over_the_bounds_are_refused_and_the_old_version_stays() {
        let root = tempfile::tempdir().unwrap();
        let src = tempfile::tempdir().unwrap();
        let reg = Registry::open(root.path(), ArchiveLimits::default())
            .unwrap()
            .with_bounds(Bounds {
                max_memory_mb: 512,
                ..Bounds::default()
            });
        write(src.path(), &[("f.py", "def f(e): return 1")]);
        let v1 = reg
            .deploy("b", &archive::pack_dir(src.path()).unwrap())
            .unwrap();
        for (yaml, setting) in [
            ("memory_mb: 1024\n", "memory_mb"),
            ("timeout_secs: 1.0e30\n", "timeout_secs"),
            ("network: true\n", "network"),
        ] {
            write(src.path(), &[("ol.yaml", yaml)]);
            let e = reg
                .deploy("b", &archive::pack_dir(src.path()).unwrap())
                .unwrap_err();
            assert!(matches!(e, RegistryError::OverBound(_)), "{e}");
            assert!(e.to_string().contains(setting), "{e}");
            assert_eq!(reg.get("b").unwrap().hash, v1.version.hash);
        }
        // Nothing staged is left behind.
        let left: Vec<_> = std::fs::read_dir(root.path().join("b"))
            .unwrap()
            .flatten()
            .filter(|e| e.file_name().to_string_lossy().starts_with('.'))
            .collect();
        assert!(left.is_empty(), "{left:?}");
    }

    #[test]
    fn failed_first_deploy_leaves_nothing() {
        let root = tempfile::tempdir().unwrap();
        let reg = Registry::open(root.path(), ArchiveLimits::default()).unwrap();
        assert!(reg.deploy("x", b"not a tarball").is_err());
        assert!(!root.path().join("x").exists());
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod environment_tests {
    use super::*;

    #[test]
    fn environment_values_are_never_serialized() {
        let config = FunctionConfig {
            environment: std::collections::BTreeMap::from([
                ("DB_PASSWORD".to_string(), "hunter2".to_string()),
                ("MODE".to_string(), "fast".to_string()),
            ]),
            ..FunctionConfig::default()
        };
        let v = serde_json::to_value(&config).unwrap();
        assert_eq!(v["environment"], serde_json::json!(["DB_PASSWORD", "MODE"]));
        assert!(!v.to_string().contains("hunter2"));
    }
}
