//! Mounts the worker prepares on the host for a live sandbox's init to attach.

use crate::sys;
use std::io;
use std::os::fd::{AsRawFd, OwnedFd};
use std::path::Path;

/// A detached, read-only copy of the mount of `source` (not its submounts), for a sandbox's
/// init to attach inside the sandbox (`ControlRequest::Mount`).
pub fn readonly_tree(source: &Path) -> io::Result<OwnedFd> {
    let tree = sys::open_tree_clone(source, false)?;
    sys::mount_tree_readonly(tree.as_raw_fd())?;
    Ok(tree)
}

/// `O_NOFOLLOW` for `open(2)` (`OpenOptionsExt::custom_flags`): refuse a symlink in the last
/// component.
pub const O_NOFOLLOW: i32 = libc::O_NOFOLLOW;
