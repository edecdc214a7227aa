//! Assembling a sandbox's root filesystem inside its new mount namespace, then entering it.
//!
//! The sequence follows the jailer's: make every inherited mount private (so nothing propagates
//! back to the host), bind the base read-only on the mount point, add the sandbox's mounts on
//! top, then `pivot_root(".", ".")` and detach the old root. Everything here runs in the
//! sandbox's init before any untrusted code exists, and nothing it mounts is visible outside.
//!
//! A sandbox in a user namespace of its own (a zygote's, or one made within a zygote's) is
//! built by an init that is only the root of that user namespace: an unprivileged user on the
//! host, who could neither read the host files it binds nor write the cgroup files it joins. The
//! spawner, still root in the host's namespaces, therefore prepares those for it with
//! [`detach`]: a detached copy (`open_tree`) of every tree the sandbox binds, already made
//! read-only, and open `cgroup.procs` files; the init attaches the copies with `move_mount`,
//! which needs no access to the host paths. Such an init cannot create device nodes either, so
//! its `/dev` binds the host's, and it assembles the root at `/tmp` of its private mount
//! namespace (a directory anyone may enter) rather than under the worker's root.

use crate::spec::{MountSpec, SandboxSpec};
use crate::sys;
use std::io;
use std::os::fd::{AsRawFd, OwnedFd};
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

/// Flags of the `Packages` tmpfs once filled: read-only (its init makes it writable for a moment
/// to add an entry, see [`add_package_entry`]).
const PACKAGES_RO: libc::c_ulong = libc::MS_BIND
    | libc::MS_REMOUNT
    | libc::MS_RDONLY
    | libc::MS_NOSUID
    | libc::MS_NODEV
    | libc::MS_NOEXEC;

/// Makes the directory `entry` in a live sandbox's read-only `Packages` tmpfs (its parent).
pub fn add_package_entry(entry: &Path) -> io::Result<()> {
    let parent = entry.parent().unwrap_or(Path::new("/"));
    sys::mount(None, parent, None, PACKAGES_RO & !libc::MS_RDONLY, None)?;
    let made = match std::fs::create_dir(entry) {
        Err(e) if e.kind() != io::ErrorKind::AlreadyExists => Err(e),
        _ => Ok(()),
    };
    sys::mount(None, parent, None, PACKAGES_RO, None)?;
    made
}

/// Removes the (unmounted) directories `entries` of a live sandbox's read-only `Packages`
/// tmpfs (their parent).
pub fn remove_package_entries(entries: &[PathBuf]) -> io::Result<()> {
    let Some(parent) = entries.first().and_then(|e| e.parent()) else {
        return Ok(());
    };
    sys::mount(None, parent, None, PACKAGES_RO & !libc::MS_RDONLY, None)?;
    let removed = entries.iter().try_for_each(std::fs::remove_dir);
    sys::mount(None, parent, None, PACKAGES_RO, None)?;
    removed
}

/// Replaces whatever is mounted at `dst` with an empty `/tmp` tmpfs of `size_bytes`.
pub fn fresh_tmp(dst: &Path, size_bytes: u64) -> Result<(), RootfsError> {
    crate::purge::unmount_all(dst).map_err(at("unmounting", dst))?;
    tmp(dst, size_bytes)
}

fn tmp(dst: &Path, size_bytes: u64) -> Result<(), RootfsError> {
    let opts = format!("size={size_bytes},mode=1777");
    tmpfs(dst, libc::MS_NOSUID | libc::MS_NODEV, &opts)
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

/// What the spawner prepares for a sandbox in a user namespace (see the module documentation).
pub struct Detached {
    rootfs: OwnedFd,
    /// For each mount of the spec, in order: the trees it attaches.
    mounts: Vec<Vec<OwnedFd>>,
    /// The host's device nodes, one per entry of [`DEVICES`].
    devices: Vec<OwnedFd>,
    /// The sandbox's `cgroup.procs` files, open for writing.
    pub cgroup_procs: Vec<OwnedFd>,
}

/// Where an init in a user namespace assembles the root: a directory of its private mount
/// namespace that the user namespace's root can enter.
pub const USERNS_MOUNTPOINT: &str = "/tmp";

/// A detached copy of the tree at `path` with `attrs` set (`sys::MOUNT_ATTR_*`).
fn detach_one(path: &Path, recursive: bool, attrs: u64) -> Result<OwnedFd, RootfsError> {
    let tree = sys::open_tree_clone(path, recursive).map_err(at("copying the mount of", path))?;
    if attrs != 0 {
        sys::mount_setattr(tree.as_raw_fd(), attrs).map_err(at("setting attributes of", path))?;
    }
    Ok(tree)
}

/// A package key as a single path component (the worker names them; never trust blindly).
fn valid_key(key: &str) -> bool {
    !key.is_empty() && key != "." && key != ".." && !key.contains('/') && !key.contains('\0')
}

const READ_ONLY: u64 = sys::MOUNT_ATTR_RDONLY | sys::MOUNT_ATTR_NOSUID | sys::MOUNT_ATTR_NODEV;

/// Prepares what an init in a user namespace needs (see [`Detached`]). Runs in the spawner.
pub fn detach(spec: &SandboxSpec) -> Result<Detached, RootfsError> {
    let rootfs = detach_one(&spec.rootfs, false, READ_ONLY)?;
    let mut mounts = Vec::with_capacity(spec.mounts.len());
    for m in &spec.mounts {
        mounts.push(match m {
            MountSpec::Bind {
                source, writable, ..
            } => {
                let attrs = if *writable { 0 } else { READ_ONLY };
                vec![detach_one(source, true, attrs)?]
            }
            MountSpec::Packages { store, keys, .. } => keys
                .iter()
                .map(|key| {
                    if !valid_key(key) {
                        return Err(at("package key", Path::new(key))(io::Error::from(
                            io::ErrorKind::InvalidInput,
                        )));
                    }
                    detach_one(&store.join(key), true, READ_ONLY)
                })
                .collect::<Result<_, _>>()?,
            MountSpec::Tmpfs { .. } | MountSpec::Proc { .. } | MountSpec::Dev { .. } => Vec::new(),
        });
    }
    let devices = DEVICES
        .iter()
        .map(|(name, ..)| {
            detach_one(
                &Path::new("/dev").join(name),
                false,
                sys::MOUNT_ATTR_NOSUID | sys::MOUNT_ATTR_NOEXEC,
            )
        })
        .collect::<Result<_, _>>()?;
    let cgroup_procs = spec
        .cgroup_procs
        .iter()
        .map(|p| {
            std::fs::OpenOptions::new()
                .write(true)
                .open(p)
                .map(OwnedFd::from)
                .map_err(at("opening", p))
        })
        .collect::<Result<_, _>>()?;
    Ok(Detached {
        rootfs,
        mounts,
        devices,
        cgroup_procs,
    })
}

/// Joins `inside` (absolute path in the sandbox) onto the host-side mount point.
fn host_path(mountpoint: &Path, inside: &Path) -> PathBuf {
    mountpoint.join(inside.strip_prefix("/").unwrap_or(inside))
}

/// Builds the root described by `spec` and makes it `/`. Must run in a fresh mount namespace:
/// with `detached` (a sandbox in a user namespace), from the trees the spawner prepared, at
/// [`USERNS_MOUNTPOINT`]; otherwise by binding host paths at the spec's mount point.
pub fn enter(spec: &SandboxSpec, detached: Option<Detached>) -> Result<(), RootfsError> {
    let root = match detached {
        Some(_) => Path::new(USERNS_MOUNTPOINT),
        None => spec.mountpoint.as_path(),
    };
    sys::mount(
        None,
        Path::new("/"),
        None,
        libc::MS_REC | libc::MS_PRIVATE,
        None,
    )
    .map_err(at("making mounts private at", Path::new("/")))?;
    match &detached {
        Some(d) => sys::move_mount_to(d.rootfs.as_raw_fd(), root)
            .map_err(at("attaching base rootfs", &spec.rootfs))?,
        None => {
            sys::mount(Some(&spec.rootfs), root, None, libc::MS_BIND, None)
                .map_err(at("binding base rootfs", &spec.rootfs))?;
            sys::mount(None, root, None, RO_FLAGS, None).map_err(at("making read-only", root))?;
        }
    }
    for (i, m) in spec.mounts.iter().enumerate() {
        let trees = detached.as_ref().map(|d| Trees {
            mounts: &d.mounts[i],
            devices: &d.devices,
        });
        apply(root, m, trees)?;
    }
    sys::chdir(root).map_err(at("entering", root))?;
    sys::pivot_root(Path::new("."), Path::new(".")).map_err(at("pivot_root to", root))?;
    sys::umount2(Path::new("."), libc::MNT_DETACH)
        .map_err(at("detaching old root", Path::new("/")))?;
    sys::chdir(Path::new("/")).map_err(at("entering", Path::new("/")))?;
    drop(detached);
    Ok(())
}

/// The prepared trees of one mount.
#[derive(Clone, Copy)]
struct Trees<'a> {
    mounts: &'a [OwnedFd],
    devices: &'a [OwnedFd],
}

/// Binds host path `source` at `dst`, or attaches its prepared copy `tree`.
fn bind(
    source: &Path,
    tree: Option<&OwnedFd>,
    dst: &Path,
    writable: bool,
) -> Result<(), RootfsError> {
    match tree {
        Some(t) => sys::move_mount_to(t.as_raw_fd(), dst).map_err(at("attaching", source)),
        None => {
            sys::mount(Some(source), dst, None, libc::MS_BIND | libc::MS_REC, None)
                .map_err(at("binding", source))?;
            if !writable {
                sys::mount(None, dst, None, RO_FLAGS, None).map_err(at("making read-only", dst))?;
            }
            Ok(())
        }
    }
}

fn tmpfs(dst: &Path, flags: libc::c_ulong, opts: &str) -> Result<(), RootfsError> {
    sys::mount(
        Some(Path::new("tmpfs")),
        dst,
        Some("tmpfs"),
        flags,
        Some(opts),
    )
    .map_err(at("mounting tmpfs on", dst))
}

fn apply(root: &Path, m: &MountSpec, trees: Option<Trees<'_>>) -> Result<(), RootfsError> {
    let tree = |i: usize| trees.and_then(|t| t.mounts.get(i));
    match m {
        MountSpec::Bind {
            source,
            target,
            writable,
        } => bind(source, tree(0), &host_path(root, target), *writable)?,
        MountSpec::Tmpfs { target, size_bytes } => tmp(&host_path(root, target), *size_bytes)?,
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
        MountSpec::Dev { target } => {
            dev(&host_path(root, target), trees.map(|t| t.devices))?;
        }
        MountSpec::Packages {
            store,
            target,
            keys,
        } => {
            let dst = host_path(root, target);
            tmpfs(
                &dst,
                libc::MS_NOSUID | libc::MS_NODEV | libc::MS_NOEXEC,
                "size=1m,mode=755",
            )?;
            for (i, key) in keys.iter().enumerate() {
                if !valid_key(key) {
                    return Err(at("package key", Path::new(key))(io::Error::from(
                        io::ErrorKind::InvalidInput,
                    )));
                }
                let entry = dst.join(key);
                std::fs::create_dir(&entry).map_err(at("creating", &entry))?;
                bind(&store.join(key), tree(i), &entry, false)?;
            }
            sys::mount(None, &dst, None, PACKAGES_RO, None)
                .map_err(at("making read-only", &dst))?;
        }
    }
    Ok(())
}

/// A minimal `/dev` on a small tmpfs: device nodes made with `mknod`, or, in a user namespace
/// (where new nodes would not work), empty files with the host's nodes bound over them.
fn dev(dst: &Path, devices: Option<&[OwnedFd]>) -> Result<(), RootfsError> {
    tmpfs(dst, libc::MS_NOSUID | libc::MS_NOEXEC, "size=64k,mode=755")?;
    for (i, (name, major, minor)) in DEVICES.iter().enumerate() {
        let node = dst.join(name);
        match devices.and_then(|d| d.get(i)) {
            Some(host) => {
                std::fs::File::create(&node).map_err(at("creating", &node))?;
                sys::move_mount_to(host.as_raw_fd(), &node)
                    .map_err(at("attaching device", &node))?;
            }
            None => {
                sys::mknod_char(&node, 0o666, *major, *minor)
                    .map_err(at("creating device", &node))?;
                // mknod's mode is narrowed by the umask.
                sys::chmod(&node, 0o666).map_err(at("chmod", &node))?;
            }
        }
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn package_keys_are_single_components() {
        assert!(valid_key("numpy==2.0.0"));
        for bad in ["", ".", "..", "a/b", "../x", "a\0b"] {
            assert!(!valid_key(bad), "{bad:?}");
        }
    }
}
