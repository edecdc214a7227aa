//! The in-sandbox runtime (Python), shipped inside the binary and installed under
//! `<root>/runtime/<base>/`, bound read-only at `/kindling` in every sandbox: the runtime
//! itself, the `storage` and `nosql` modules function code imports for object storage and NoSQL,
//! and empty files `storage-socket/storage.sock` and `nosql-socket/nosql.sock`, the mount
//! points of their sockets.
//!
//! It is byte-compiled once per base by the base's own interpreter (in a job sandbox), because
//! compiling it at every cold start would cost milliseconds.

use crate::base::Base;
use crate::layout;
use crate::sandboxes::{Job, Sandboxes};
use kindling_sandbox::cgroup::Limits;
use kindling_sandbox::spec::MountSpec;
use std::io;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// The runtime's source.
pub const SOURCE: &str = include_str!("../runtime/kindling_runtime.py");

/// The object storage client's source (`import storage`).
pub const STORAGE_SOURCE: &str = include_str!("../runtime/storage.py");

/// The NoSQL client's source (`import nosql`).
pub const NOSQL_SOURCE: &str = include_str!("../runtime/nosql.py");

/// Module name and source of each file installed.
const MODULES: &[(&str, &str)] = &[
    ("kindling_runtime", SOURCE),
    ("storage", STORAGE_SOURCE),
    ("nosql", NOSQL_SOURCE),
];

/// Errors installing the runtime.
#[derive(Debug, thiserror::Error)]
pub enum RuntimeError {
    #[error("cannot write the runtime to {path}")]
    Io {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("cannot start the job compiling the runtime")]
    Job(#[from] crate::sandboxes::StartError),
    #[error("compiling the runtime failed: {0}")]
    Compile(String),
}

/// Writes the runtime for `base` and compiles it; returns the directory to bind at /kindling.
pub fn install(root: &Path, base: &Base, sandboxes: &Sandboxes) -> Result<PathBuf, RuntimeError> {
    let dir = root.join("runtime").join(&base.info.name);
    let io_err = |path: &Path| {
        let path = path.to_path_buf();
        move |source| RuntimeError::Io { path, source }
    };
    std::fs::create_dir_all(&dir).map_err(io_err(&dir))?;
    for (socket_dir, socket) in [
        (layout::STORAGE_SOCKET_DIR, layout::STORAGE_SOCKET_NAME),
        (layout::NOSQL_SOCKET_DIR, layout::NOSQL_SOCKET_NAME),
    ] {
        let mount_dir = dir.join(socket_dir);
        std::fs::create_dir_all(&mount_dir).map_err(io_err(&mount_dir))?;
        let mount_point = mount_dir.join(socket);
        if !mount_point.is_file() {
            std::fs::write(&mount_point, b"").map_err(io_err(&mount_point))?;
        }
    }
    let pyc = |module: &str| {
        dir.join("__pycache__")
            .join(format!("{module}.{}.pyc", base.info.cache_tag))
    };
    let unchanged = MODULES.iter().all(|(module, source)| {
        std::fs::read_to_string(dir.join(format!("{module}.py"))).is_ok_and(|s| s == *source)
            && pyc(module).is_file()
    });
    if unchanged {
        return Ok(dir);
    }
    for (module, source) in MODULES {
        let file = dir.join(format!("{module}.py"));
        std::fs::write(&file, source).map_err(io_err(&file))?;
    }
    let compile: Vec<String> = MODULES
        .iter()
        .map(|(module, _)| {
            format!(
                "py_compile.compile('/kindling/{module}.py', doraise=True, \
                 invalidation_mode=py_compile.PycInvalidationMode.UNCHECKED_HASH)"
            )
        })
        .collect();
    // An unchecked-hash pyc is never revalidated against the source at import (no stat, no
    // hashing at each cold start); it is rebuilt here whenever the shipped source changes.
    let out = sandboxes.run_job(Job {
        argv: vec![
            base.info.python.clone(),
            "-S".into(),
            "-c".into(),
            format!("import py_compile; {}", compile.join("; ")),
        ],
        env: vec![("PATH".into(), "/usr/bin:/bin".into())],
        mounts: vec![MountSpec::Bind {
            source: dir.clone(),
            target: layout::RUNTIME.into(),
            writable: true,
        }],
        network: false,
        // Root without capabilities: enough to write the root-owned runtime directory.
        uid: 0,
        gid: 0,
        limits: Limits {
            memory_bytes: Some(256 << 20),
            cpu_cores: Some(1.0),
            pids: Some(16),
        },
        timeout: Duration::from_secs(60),
        cwd: "/".into(),
    })?;
    if out.code != Some(0) || !MODULES.iter().all(|(module, _)| pyc(module).is_file()) {
        return Err(RuntimeError::Compile(out.output));
    }
    Ok(dir)
}
