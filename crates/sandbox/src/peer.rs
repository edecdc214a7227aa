//! Who is at the other end of a Unix socket, in the kernel's words: the process that connected
//! (`SO_PEERCRED`, `SO_PEERPIDFD`) and the sandbox whose cgroup it belongs to. A service the
//! worker offers sandboxes over a socket (object storage) learns from this which sandbox calls;
//! nothing the caller sends can change the answer.
//!
//! The cgroup is read from `/proc/<pid>/cgroup`, and a pid can be reused once its process has
//! exited. So the answer is confirmed against a pidfd of the connecting process, taken when it
//! connected: if that process is still alive after the read, the pid still names it, and what
//! was read is its cgroup. Sandbox processes cannot move themselves to another cgroup (they see
//! no cgroupfs and hold no capability).

use std::io;
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};

/// `SO_PEERPIDFD` (Linux 6.5): a pidfd of the peer as it was at `connect()`. The same number on
/// every architecture Kindling builds for.
const SO_PEERPIDFD: libc::c_int = 77;

/// The process at the other end of a connected Unix socket.
#[derive(Debug)]
pub struct Peer {
    /// Its pid in our pid namespace, as of `connect()`.
    pub pid: i32,
    pub uid: u32,
    pub gid: u32,
    pidfd: OwnedFd,
}

impl Peer {
    /// The peer of `sock`. On kernels without `SO_PEERPIDFD` the pidfd is opened from the pid
    /// now, which leaves a window for pid reuse between the peer's `connect()` and this call.
    pub fn of(sock: BorrowedFd<'_>) -> io::Result<Self> {
        let cred = peer_cred(sock.as_raw_fd())?;
        let pidfd = match peer_pidfd(sock.as_raw_fd()) {
            Ok(fd) => fd,
            Err(e)
                if matches!(
                    e.raw_os_error(),
                    Some(libc::ENOPROTOOPT) | Some(libc::EINVAL)
                ) =>
            {
                crate::sys::pidfd_open(cred.pid)?
            }
            Err(e) => return Err(e),
        };
        Ok(Self {
            pid: cred.pid,
            uid: cred.uid,
            gid: cred.gid,
            pidfd,
        })
    }

    /// Whether the process that connected still exists (and so still owns its pid).
    pub fn alive(&self) -> io::Result<bool> {
        // Signal 0 checks existence in one system call; without the right to signal the
        // process, its pidfd's fdinfo says the same.
        match crate::sys::pidfd_send_signal(self.pidfd.as_raw_fd(), 0) {
            Ok(()) => Ok(true),
            Err(e) if e.raw_os_error() == Some(libc::ESRCH) => Ok(false),
            Err(_) => Ok(pidfd_pid(self.pidfd.as_raw_fd())? == Some(self.pid)),
        }
    }

    /// The sandbox the peer runs in: the name of its cgroup under Kindling's `cgroup_parent`.
    /// `None` when it is in no sandbox, or it exited before the answer could be confirmed.
    pub fn sandbox(&self, cgroup_parent: &str) -> io::Result<Option<String>> {
        let text = match std::fs::read_to_string(format!("/proc/{}/cgroup", self.pid)) {
            Ok(t) => t,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(e),
        };
        // Alive after the read: the pid was never reused, so `text` is the peer's.
        if !self.alive()? {
            return Ok(None);
        }
        Ok(sandbox_in(&text, cgroup_parent))
    }
}

/// The sandbox named by a `/proc/<pid>/cgroup` text: the cgroup directly under
/// `cgroup_parent`, which every hierarchy placing the process under that parent must agree on.
/// Hierarchies Kindling does not use (where the process sits elsewhere) are ignored.
pub fn sandbox_in(proc_cgroup: &str, cgroup_parent: &str) -> Option<String> {
    let mut found: Option<&str> = None;
    for line in proc_cgroup.lines() {
        // `<hierarchy id>:<controllers>:<path>`; the path may itself contain `:`.
        let Some(path) = line.splitn(3, ':').nth(2) else {
            continue;
        };
        let mut parts = path.trim_end_matches('/').rsplit('/');
        let (Some(name), Some(parent)) = (parts.next(), parts.next()) else {
            continue;
        };
        if parent != cgroup_parent {
            continue;
        }
        if name.is_empty() || name == "." || name == ".." {
            return None;
        }
        match found {
            None => found = Some(name),
            Some(other) if other == name => {}
            Some(_) => return None,
        }
    }
    found.map(str::to_string)
}

#[derive(Debug, Clone, Copy)]
struct Cred {
    pid: i32,
    uid: u32,
    gid: u32,
}

fn peer_cred(sock: RawFd) -> io::Result<Cred> {
    let mut cred = libc::ucred {
        pid: 0,
        uid: 0,
        gid: 0,
    };
    let mut len = std::mem::size_of::<libc::ucred>() as libc::socklen_t;
    // SAFETY: `cred` is a writable ucred and `len` holds its size, as SO_PEERCRED expects.
    let ret = unsafe {
        libc::getsockopt(
            sock,
            libc::SOL_SOCKET,
            libc::SO_PEERCRED,
            &mut cred as *mut libc::ucred as *mut libc::c_void,
            &mut len,
        )
    };
    if ret == -1 {
        return Err(io::Error::last_os_error());
    }
    if cred.pid <= 0 {
        // The peer's pid is not visible in our pid namespace.
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            "the peer has no pid in this pid namespace",
        ));
    }
    Ok(Cred {
        pid: cred.pid,
        uid: cred.uid,
        gid: cred.gid,
    })
}

fn peer_pidfd(sock: RawFd) -> io::Result<OwnedFd> {
    let mut fd: libc::c_int = -1;
    let mut len = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
    // SAFETY: `fd` is a writable int and `len` holds its size, as SO_PEERPIDFD expects.
    let ret = unsafe {
        libc::getsockopt(
            sock,
            libc::SOL_SOCKET,
            SO_PEERPIDFD,
            &mut fd as *mut libc::c_int as *mut libc::c_void,
            &mut len,
        )
    };
    if ret == -1 {
        return Err(io::Error::last_os_error());
    }
    if fd < 0 {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            "SO_PEERPIDFD returned no descriptor",
        ));
    }
    // SAFETY: the kernel returned a fresh pidfd (close-on-exec) that nobody else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// The pid a pidfd refers to in our pid namespace (its `fdinfo`), `None` once the process has
/// exited.
pub fn pidfd_pid(pidfd: RawFd) -> io::Result<Option<i32>> {
    let info = std::fs::read_to_string(format!("/proc/self/fdinfo/{pidfd}"))?;
    let pid = info
        .lines()
        .find_map(|l| l.strip_prefix("Pid:"))
        .and_then(|v| v.trim().parse::<i32>().ok())
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidData, "fdinfo has no Pid line"))?;
    Ok((pid > 0).then_some(pid))
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use std::os::fd::AsFd;

    #[test]
    fn sandbox_from_proc_cgroup() {
        let v1 = "12:pids:/kindling/sb-1a-7\n\
                  9:name=systemd:/user.slice\n\
                  4:memory:/kindling/sb-1a-7\n\
                  2:cpu,cpuacct:/kindling/sb-1a-7\n\
                  0::/user.slice/session-1.scope\n";
        assert_eq!(sandbox_in(v1, "kindling").as_deref(), Some("sb-1a-7"));
        // The parent may sit anywhere in the hierarchy; only the last two components count.
        let nested = "0::/system.slice/kindling/zy-sb-1a-2\n";
        assert_eq!(
            sandbox_in(nested, "kindling").as_deref(),
            Some("zy-sb-1a-2")
        );
        // Another worker's parent, the host's own cgroups, or the parent itself: no sandbox.
        assert_eq!(sandbox_in(v1, "kindling-e2e"), None);
        assert_eq!(sandbox_in("0::/\n4:memory:/user.slice\n", "kindling"), None);
        assert_eq!(sandbox_in("4:memory:/kindling\n", "kindling"), None);
        assert_eq!(sandbox_in("", "kindling"), None);
        // Hierarchies that disagree name no sandbox.
        let split = "4:memory:/kindling/sb-a\n8:pids:/kindling/sb-b\n";
        assert_eq!(sandbox_in(split, "kindling"), None);
        // A path with `:` in it, and a trailing slash.
        let odd = "4:memory:/x:y/kindling/sb-c/\n";
        assert_eq!(sandbox_in(odd, "kindling").as_deref(), Some("sb-c"));
    }

    #[test]
    fn peer_of_a_socket_pair_is_this_process() {
        let (a, _b) = crate::sys::socketpair(crate::sys::SocketKind::Stream).unwrap();
        let peer = Peer::of(a.as_fd()).unwrap();
        assert_eq!(peer.pid, std::process::id() as i32);
        assert!(peer.alive().unwrap());
        // The test runner is in no Kindling sandbox.
        assert_eq!(peer.sandbox("kindling-no-such-parent").unwrap(), None);
    }

    #[test]
    fn a_pidfd_of_an_exited_process_names_no_pid() {
        let mut child = std::process::Command::new("true").spawn().unwrap();
        let pidfd = crate::sys::pidfd_open(child.id() as i32).unwrap();
        assert_eq!(
            pidfd_pid(pidfd.as_raw_fd()).unwrap(),
            Some(child.id() as i32)
        );
        child.wait().unwrap();
        // Reaped: the pid may be reused by anyone, and the pidfd says the process is gone.
        assert_eq!(pidfd_pid(pidfd.as_raw_fd()).unwrap(), None);
    }
}
