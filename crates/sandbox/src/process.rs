//! Processes the worker holds by a pidfd (a sandbox's init, a zygote): signals that cannot hit
//! a recycled pid, and whether the process still exists. Also [`signal`], for a process known
//! only by its pid (the CLI stopping a worker).

use crate::sys;
use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};

/// A process, held by a pidfd.
#[derive(Debug)]
pub struct Process {
    pidfd: OwnedFd,
}

impl Process {
    /// Holds the process with this pid (in the caller's pid namespace).
    pub fn open(pid: i32) -> io::Result<Self> {
        Ok(Self {
            pidfd: sys::pidfd_open(pid)?,
        })
    }

    /// Holds the process behind a pidfd the caller owns.
    pub fn from_pidfd(pidfd: OwnedFd) -> Self {
        Self { pidfd }
    }

    /// Its pid in the caller's pid namespace; `None` once it has exited.
    pub fn pid(&self) -> io::Result<Option<i32>> {
        sys::pidfd_pid(self.pidfd.as_raw_fd())
    }

    /// Whether it still exists (not yet reaped).
    pub fn is_alive(&self) -> bool {
        sys::pidfd_send_signal(self.pidfd.as_raw_fd(), 0).is_ok()
    }

    /// SIGKILLs it.
    pub fn kill(&self) -> io::Result<()> {
        sys::pidfd_kill(self.pidfd.as_raw_fd())
    }

    /// SIGSTOPs it (pausing an idle zygote).
    pub fn stop(&self) -> io::Result<()> {
        sys::pidfd_stop(self.pidfd.as_raw_fd())
    }

    /// SIGCONTs it.
    pub fn resume(&self) -> io::Result<()> {
        sys::pidfd_resume(self.pidfd.as_raw_fd())
    }
}

impl AsFd for Process {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.pidfd.as_fd()
    }
}

/// Sends `signal` to the process with this pid (`kill(2)`).
pub fn signal(pid: i32, signal: i32) -> io::Result<()> {
    sys::kill(pid, signal)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    // No child is forked here: a fork would make this test process's pages shared, which
    // `working_set::tests` (same process) must not see. Killing and stopping are covered by
    // the root end-to-end tests (zygote eviction and pausing).
    #[test]
    fn holds_this_process() {
        let me = i32::try_from(std::process::id()).unwrap();
        let p = Process::open(me).unwrap();
        assert_eq!(p.pid().unwrap(), Some(me));
        assert!(p.is_alive());
        signal(me, 0).unwrap();
        assert!(Process::open(-1).is_err());
    }
}
