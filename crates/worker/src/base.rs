//! Base root filesystems: `<base_dir>/<name>/rootfs`, plus `<base_dir>/<name>/base.json`
//! describing it. The default base, `debian-python`, is Debian bookworm (minbase) with its own
//! python3, made by debootstrap. A base is just a directory, so other ways of making one (an
//! imported OCI image) only need to produce the same layout.

use std::io;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

/// Name of the default base.
pub const DEFAULT_BASE: &str = "debian-python";

/// Directories every base must have, as mount points for the sandbox's own mounts.
pub const MOUNT_POINTS: &[&str] = &["handler", "kindling", "packages", "tmp", "proc", "dev"];

/// Errors making or finding a base.
#[derive(Debug, thiserror::Error)]
pub enum BaseError {
    #[error("base `{0}` does not exist; build it with `kindling base build`")]
    Missing(String),
    #[error("unknown base `{0}`: only `debian-python` can be built")]
    Unknown(String),
    #[error("`debootstrap` is not installed (apt-get install debootstrap)")]
    NoDebootstrap,
    #[error("debootstrap failed ({status}); its output is above")]
    Debootstrap { status: std::process::ExitStatus },
    #[error("the new base's python3 does not run ({0})")]
    Python(String),
    #[error("base storage failed at {path}")]
    Io {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
}

fn io_at(path: &Path) -> impl FnOnce(io::Error) -> BaseError + '_ {
    move |source| BaseError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// What `base.json` records about a base (as `/status` reports it).
pub use kindling_api::BaseInfo;

/// A base ready for use.
#[derive(Debug, Clone)]
pub struct Base {
    pub info: BaseInfo,
    pub rootfs: PathBuf,
}

/// Opens an existing base.
pub fn open(base_dir: &Path, name: &str) -> Result<Base, BaseError> {
    let dir = base_dir.join(name);
    let meta = dir.join("base.json");
    let text = match std::fs::read_to_string(&meta) {
        Ok(t) => t,
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            return Err(BaseError::Missing(name.to_string()))
        }
        Err(e) => return Err(io_at(&meta)(e)),
    };
    let info: BaseInfo = serde_json::from_str(&text)
        .map_err(|e| io_at(&meta)(io::Error::new(io::ErrorKind::InvalidData, e)))?;
    Ok(Base {
        info,
        rootfs: dir.join("rootfs"),
    })
}

/// Opens the base, building it first if it is missing (idempotent; concurrent callers are not
/// expected: the worker and `kindling base build` take the worker's lock).
pub fn ensure(base_dir: &Path, name: &str) -> Result<Base, BaseError> {
    match open(base_dir, name) {
        Err(BaseError::Missing(_)) => build(base_dir, name),
        other => other,
    }
}

/// Builds `name` (only `debian-python` is known) with debootstrap.
pub fn build(base_dir: &Path, name: &str) -> Result<Base, BaseError> {
    if name != DEFAULT_BASE {
        return Err(BaseError::Unknown(name.to_string()));
    }
    if let Ok(base) = open(base_dir, name) {
        return Ok(base);
    }
    let dir = base_dir.join(name);
    std::fs::create_dir_all(&dir).map_err(io_at(&dir))?;
    let staging = dir.join("rootfs.partial");
    if staging.exists() {
        std::fs::remove_dir_all(&staging).map_err(io_at(&staging))?;
    }
    tracing::info!(
        base = name,
        "building base with debootstrap (about a minute)"
    );
    let status = Command::new("debootstrap")
        .args(["--variant=minbase", "--include=python3", "bookworm"])
        .arg(&staging)
        .stdin(Stdio::null())
        .status()
        .map_err(|e| {
            if e.kind() == io::ErrorKind::NotFound {
                BaseError::NoDebootstrap
            } else {
                io_at(&staging)(e)
            }
        })?;
    if !status.success() {
        let _ = std::fs::remove_dir_all(&staging);
        return Err(BaseError::Debootstrap { status });
    }
    finish(&staging, name).inspect_err(|_| {
        let _ = std::fs::remove_dir_all(&staging);
    })?;
    let info = probe(&staging, name)?;
    let rootfs = dir.join("rootfs");
    if rootfs.exists() {
        std::fs::remove_dir_all(&rootfs).map_err(io_at(&rootfs))?;
    }
    std::fs::rename(&staging, &rootfs).map_err(io_at(&rootfs))?;
    let meta = dir.join("base.json");
    let text =
        serde_json::to_string_pretty(&info).map_err(|e| io_at(&meta)(io::Error::other(e)))?;
    std::fs::write(&meta, text).map_err(io_at(&meta))?;
    tracing::info!(base = name, python = %info.python_version, "base ready");
    Ok(Base { info, rootfs })
}

/// Trims what a sandbox never needs and adds the mount points.
fn finish(rootfs: &Path, _name: &str) -> Result<(), BaseError> {
    for dir in ["var/cache/apt/archives", "var/lib/apt/lists"] {
        let p = rootfs.join(dir);
        if let Ok(entries) = std::fs::read_dir(&p) {
            for e in entries.flatten() {
                if e.path().is_file() {
                    let _ = std::fs::remove_file(e.path());
                }
            }
        }
    }
    for m in MOUNT_POINTS {
        let p = rootfs.join(m);
        std::fs::create_dir_all(&p).map_err(io_at(&p))?;
    }
    Ok(())
}

/// Asks the base's own interpreter what it is (in a chroot: the host's may differ).
fn probe(rootfs: &Path, name: &str) -> Result<BaseInfo, BaseError> {
    let python = "/usr/bin/python3";
    let out = Command::new("chroot")
        .arg(rootfs)
        .args([
            python,
            "-S",
            "-c",
            "import sys, sysconfig; print('%d.%d' % sys.version_info[:2]); \
             print(sys.implementation.cache_tag); print(sysconfig.get_platform())",
        ])
        .stdin(Stdio::null())
        .output()
        .map_err(|e| BaseError::Python(e.to_string()))?;
    if !out.status.success() {
        return Err(BaseError::Python(
            String::from_utf8_lossy(&out.stderr).trim().to_string(),
        ));
    }
    let text = String::from_utf8_lossy(&out.stdout);
    let mut lines = text.lines().map(str::to_string);
    let mut next = || {
        lines
            .next()
            .ok_or_else(|| BaseError::Python("no output".into()))
    };
    Ok(BaseInfo {
        name: name.to_string(),
        python: python.to_string(),
        python_version: next()?,
        cache_tag: next()?,
        platform: next()?,
    })
}
