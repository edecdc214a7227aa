//! The control channel between the worker and a sandbox's init: requests one way, events the
//! other, as JSON messages on a `SOCK_SEQPACKET` socket that can also carry descriptors.

use crate::spec::InstanceSpec;
use crate::sys;
use serde::{Deserialize, Serialize};
use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd, RawFd};
use std::path::PathBuf;

/// Largest control message.
const MAX_MESSAGE: usize = 64 * 1024;

/// What the worker asks of a sandbox's init.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum ControlRequest {
    /// Start another instance; the message carries its end of the invocation socket, then the
    /// write ends of its stdout and stderr pipes when `instance.output_pipes`.
    Spawn { instance: InstanceSpec },
    /// Replace whatever is mounted at `target` with the detached mount tree the message carries
    /// (made with [`sys::open_tree_clone`] in the worker's mount namespace); with `create`, make
    /// the directory `target` first if it is missing (an entry of a read-only `Packages` mount).
    Mount {
        target: PathBuf,
        #[serde(default)]
        create: bool,
    },
    /// Kill every process of the sandbox except init.
    KillInstances,
    /// Make the sandbox clean for another function (see [`crate::purge`]): kill every process
    /// but init, remove every System V IPC object, replace `/tmp` with an empty tmpfs of
    /// `tmp_bytes`, set the hostname to `hostname` and the domain name back to the sandbox's
    /// first, and remove every entry of `packages_dir` (a `Packages` mount) not in `packages`.
    Purge {
        hostname: String,
        tmp_bytes: u64,
        packages_dir: PathBuf,
        packages: Vec<String>,
    },
    /// The sandbox's network is configured: a networked sandbox's init starts its first
    /// instance (and reports `Ready`) only after this.
    NetworkReady,
}

/// What a sandbox's init reports.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "event", rename_all = "snake_case")]
pub enum ControlEvent {
    /// The root filesystem is ready and the first instance (if any) was started. With
    /// `export_namespaces`, the message carries a pidfd of the first instance (if any), then
    /// one descriptor per entry of `namespaces` (names as in `/proc/<pid>/ns`).
    Ready {
        instance_pid: Option<i32>,
        #[serde(default)]
        instance_pidfd: bool,
        #[serde(default)]
        namespaces: Vec<String>,
    },
    /// A `Spawn` request succeeded.
    Spawned { pid: i32 },
    /// A `Mount` request succeeded.
    Mounted { target: PathBuf },
    /// `KillInstances` was carried out.
    Killed,
    /// `Purge` was carried out; `packages` are the entries of `/packages` it kept.
    Purged { packages: Vec<String> },
    /// A request failed; the sandbox lives on.
    Failed { message: String },
    /// Setting the sandbox up failed; init exits after sending this.
    SetupFailed { message: String },
    /// A process of the sandbox ended: its exit code, or the signal that killed it.
    Exited {
        pid: i32,
        code: Option<i32>,
        signal: Option<i32>,
    },
}

/// One end of a control channel.
#[derive(Debug)]
pub struct ControlChannel {
    fd: OwnedFd,
}

impl ControlChannel {
    /// Wraps a connected `SOCK_SEQPACKET` socket.
    pub fn new(fd: OwnedFd) -> Self {
        Self { fd }
    }

    /// Sends a message with descriptors attached.
    pub fn send<T: Serialize>(&self, msg: &T, fds: &[RawFd]) -> io::Result<()> {
        let data = serde_json::to_vec(msg).map_err(io::Error::other)?;
        sys::send_with_fds(self.fd.as_raw_fd(), &data, fds)
    }

    /// Receives one message (blocking unless `nonblock`). `Ok(None)`: the peer hung up.
    /// With `nonblock`, an empty queue is `Err(WouldBlock)`.
    pub fn recv<T: for<'de> Deserialize<'de>>(
        &self,
        nonblock: bool,
    ) -> io::Result<Option<(T, Vec<OwnedFd>)>> {
        let mut buf = vec![0u8; MAX_MESSAGE];
        match sys::recv_with_fds(self.fd.as_raw_fd(), &mut buf, nonblock)? {
            None => Ok(None),
            Some((n, fds)) => {
                let msg = serde_json::from_slice(&buf[..n])
                    .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))?;
                Ok(Some((msg, fds)))
            }
        }
    }

    /// Marks the socket nonblocking (for use with an async reactor).
    pub fn set_nonblocking(&self) -> io::Result<()> {
        sys::set_nonblocking(self.fd.as_raw_fd())
    }

    /// Marks the socket blocking again.
    pub fn set_blocking(&self) -> io::Result<()> {
        sys::set_blocking(self.fd.as_raw_fd())
    }
}

impl AsRawFd for ControlChannel {
    fn as_raw_fd(&self) -> RawFd {
        self.fd.as_raw_fd()
    }
}

impl AsFd for ControlChannel {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }
}
