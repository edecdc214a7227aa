//! Assembling a sandbox's root filesystem inside its new mount namespace, then entering it.
//!
//! The sequence follows the jailer's: make every inherited mount private (so nothing propagates
//! back to the host), bind the base read-only on the mount point, add the sandbox's mounts on
//! top, then `pivot_root(".", ".")` and detach the old root. Everything here runs in the
//! sandbox's init before any untrusted code exists, and nothing it mounts is visible outside.

use crate::spec::{MountSpec, SandboxSpec};
use crate::sys;
use std::io;
use std::path::{Path, PathBuf};

/// A failed step, with the path it concerned.
#[derive(Debug, thiserror::Error)]
#[error("{step} {path}")]
pub struct RootfsError {
    step: &'static str,
    path: PathBuf,
    #[source]
    source: io::Error,
}

fn at<'a>(step: &'static str, path: &'a Path) -> impl FnOnce(io::Error) -> RootfsError + 'a {
    move |source| RootfsError {
        step,
        path: path.to_path_buf(),
        source,
    }
}

const RO_FLAGS: libc::c_ulong =
    libc::MS_BIND | libc::MS_REMOUNT | libc::MS_RDONLY | libc::MS_NOSUID | libc::MS_NODEV;

/// Joins `inside` (absolute path in the sandbox) onto the host-side mount point.
fn host_path(mountpoint: &Path, inside: &Path) -> PathBuf {
    mountpoint.join(inside.strip_prefix("/").unwrap_or(inside))
}

/// Builds the root described by `spec` and makes it `/`. Must run in a fresh mount namespace.
pub fn enter(spec: &SandboxSpec) -> Result<(), RootfsError> {
    let root = spec.mountpoint.as_path();
    sys::mount(
        None,
        Path::new("/"),
        None,
        libc::MS_REC | libc::MS_PRIVATE,
        None,
    )
    .map_err(at("making mounts private at", Path::new("/")))?;
    sys::mount(Some(&spec.rootfs), root, None, libc::MS_BIND, None)
        .map_err(at("binding base rootfs", &spec.rootfs))?;
    sys::mount(None, root, None, RO_FLAGS, None).map_err(at("making read-only", root))?;
    for m in &spec.mounts {
        apply(root, m)?;
    }
    sys::chdir(root).map_err(at("entering", root))?;
    sys::pivot_root(Path::new("."), Path::new(".")).map_err(at("pivot_root to", root))?;
    sys::umount2(Path::new("."), libc::MNT_DETACH)
        .map_err(at("detaching old root", Path::new("/")))?;
    sys::chdir(Path::new("/")).map_err(at("entering", Path::new("/")))?;
    Ok(())
}

fn apply(root: &Path, m: &MountSpec) -> Result<(), RootfsError> {
    match m {
        MountSpec::Bind {
            source,
            target,
            writable,
        } => {
            let dst = host_path(root, target);
            sys::mount(Some(source), &dst, None, libc::MS_BIND | libc::MS_REC, None)
                .map_err(at("binding", source))?;
            if !writable {
                sys::mount(None, &dst, None, RO_FLAGS, None)
                    .map_err(at("making read-only", &dst))?;
            }
        }
        MountSpec::Tmpfs { target, size_bytes } => {
            let dst = host_path(root, target);
            let opts = format!("size={size_bytes},mode=1777");
            sys::mount(
                Some(Path::new("tmpfs")),
                &dst,
                Some("tmpfs"),
                libc::MS_NOSUID | libc::MS_NODEV,
                Some(&opts),
            )
            .map_err(at("mounting tmpfs on", &dst))?;
        }
        MountSpec::Proc { target } => {
            let dst = host_path(root, target);
            sys::mount(
                Some(Path::new("proc")),
                &dst,
                Some("proc"),
                libc::MS_NOSUID | libc::MS_NODEV | libc::MS_NOEXEC,
                None,
            )
            .map_err(at("mounting proc on", &dst))?;
        }
        MountSpec::Dev { target } => dev(&host_path(root, target))?,
    }
    Ok(())
}

/// Character devices of a minimal `/dev`: name, major, minor.
const DEVICES: &[(&str, u32, u32)] = &[
    ("null", 1, 3),
    ("zero", 1, 5),
    ("full", 1, 7),
    ("random", 1, 8),
    ("urandom", 1, 9),
    ("tty", 5, 0),
];

fn dev(dst: &Path) -> Result<(), RootfsError> {
    sys::mount(
        Some(Path::new("tmpfs")),
        dst,
        Some("tmpfs"),
        libc::MS_NOSUID | libc::MS_NOEXEC,
        Some("size=64k,mode=755"),
    )
    .map_err(at("mounting tmpfs on", dst))?;
    for (name, major, minor) in DEVICES {
        let node = dst.join(name);
        sys::mknod_char(&node, 0o666, *major, *minor).map_err(at("creating device", &node))?;
        // mknod's mode is narrowed by the umask.
        sys::chmod(&node, 0o666).map_err(at("chmod", &node))?;
    }
    for (name, target) in [
        ("fd", "/proc/self/fd"),
        ("stdin", "/proc/self/fd/0"),
        ("stdout", "/proc/self/fd/1"),
        ("stderr", "/proc/self/fd/2"),
        // POSIX shared memory and semaphores (multiprocessing) live in /dev/shm; pointing it at
        // /tmp keeps /tmp the only writable place, and its size limit covers both.
        ("shm", "/tmp"),
    ] {
        let link = dst.join(name);
        std::os::unix::fs::symlink(target, &link).map_err(at("creating symlink", &link))?;
    }
    // Read-only, but not nodev: the nodes above are the point of this mount.
    let flags =
        libc::MS_BIND | libc::MS_REMOUNT | libc::MS_RDONLY | libc::MS_NOSUID | libc::MS_NOEXEC;
    sys::mount(None, dst, None, flags, None).map_err(at("making read-only", dst))
}
