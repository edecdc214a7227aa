//! The spawner: a small single-threaded process that creates sandboxes for the worker.
//!
//! The worker is a multi-threaded async program, and a multi-threaded process can neither
//! `fork` safely nor `setns` into a mount namespace. So at start the worker launches its own
//! binary as a spawner (`kindling __spawner`), connected by a `SOCK_SEQPACKET` socket on the
//! spawner's standard input. For each request the spawner clones a child into new namespaces;
//! that child becomes the sandbox's init ([`crate::init`]). The reply carries a pidfd for the
//! init, the worker's end of the control channel, and the worker's end of the first instance's
//! invocation socket. The spawner does not wait for the sandbox to be ready: the worker can send
//! the first request at once and it is read as soon as the instance is up.

use crate::control::ControlChannel;
use crate::spec::SandboxSpec;
use crate::sys::{self, Forked, SocketKind};
use serde::{Deserialize, Serialize};
use std::io;
use std::os::fd::{AsRawFd, OwnedFd};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::Mutex;

/// Errors talking to the spawner.
#[derive(Debug, thiserror::Error)]
pub enum SpawnerError {
    #[error("cannot start the spawner process")]
    Start(#[source] io::Error),
    #[error("lost the spawner process")]
    Channel(#[source] io::Error),
    #[error("the spawner process is gone")]
    Gone,
    #[error("the spawner sent a malformed reply")]
    Protocol,
    #[error("cannot create sandbox: {0}")]
    Clone(String),
}

#[derive(Serialize, Deserialize)]
enum Reply {
    Spawned { pid: i32 },
    Failed { message: String },
}

/// Worker-side handle of the spawner process.
pub struct Spawner {
    channel: Mutex<(ControlChannel, Child)>,
}

/// A sandbox just created: its init's pid and pidfd, and the worker's ends of its channels.
#[derive(Debug)]
pub struct SpawnedSandbox {
    pub pid: i32,
    pub pidfd: OwnedFd,
    pub control: ControlChannel,
    /// Invocation socket of the first instance, if the spec asked for one.
    pub instance: Option<OwnedFd>,
}

impl Spawner {
    /// Launches `program __spawner` (the `kindling` binary itself) and connects to it.
    pub fn start(program: &Path) -> Result<Self, SpawnerError> {
        let (ours, theirs) = sys::socketpair(SocketKind::SeqPacket).map_err(SpawnerError::Start)?;
        let child = Command::new(program)
            .arg("__spawner")
            .stdin(Stdio::from(theirs))
            .spawn()
            .map_err(SpawnerError::Start)?;
        Ok(Self {
            channel: Mutex::new((ControlChannel::new(ours), child)),
        })
    }

    /// Asks for a new sandbox. Blocks for the time of one clone (well under a millisecond).
    pub fn spawn(&self, spec: &SandboxSpec) -> Result<SpawnedSandbox, SpawnerError> {
        let guard = self.channel.lock().unwrap_or_else(|p| p.into_inner());
        let channel = &guard.0;
        channel.send(spec, &[]).map_err(SpawnerError::Channel)?;
        let (reply, mut fds) = channel
            .recv::<Reply>(false)
            .map_err(SpawnerError::Channel)?
            .ok_or(SpawnerError::Gone)?;
        match reply {
            Reply::Failed { message } => Err(SpawnerError::Clone(message)),
            Reply::Spawned { pid } => {
                let expected = if spec.instance.is_some() { 3 } else { 2 };
                if fds.len() != expected {
                    return Err(SpawnerError::Protocol);
                }
                let instance = (expected == 3).then(|| fds.remove(2));
                let control = ControlChannel::new(fds.remove(1));
                let pidfd = fds.remove(0);
                Ok(SpawnedSandbox {
                    pid,
                    pidfd,
                    control,
                    instance,
                })
            }
        }
    }
}

impl Drop for Spawner {
    fn drop(&mut self) {
        let guard = self.channel.get_mut().unwrap_or_else(|p| p.into_inner());
        let _ = guard.1.kill();
        let _ = guard.1.wait();
    }
}

/// Runs the spawner's loop on the socket at standard input. Never returns.
pub fn serve_stdin() -> ! {
    // The worker's death ends the spawner, whose death ends every sandbox (their inits have
    // PDEATHSIG too), so a crashed worker leaves no process behind.
    let _ = sys::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL as libc::c_ulong);
    // SAFETY-free zombie handling: the kernel reaps our children (the inits) itself.
    sys::ignore_sigchld();
    let sock = match sys::dup_cloexec(0) {
        Ok(fd) => ControlChannel::new(fd),
        Err(_) => sys::exit_now(1),
    };
    sys::close_stdin();
    loop {
        let (spec, _) = match sock.recv::<SandboxSpec>(false) {
            Ok(Some(msg)) => msg,
            Ok(None) => sys::exit_now(0),
            Err(e) if e.kind() == io::ErrorKind::InvalidData => {
                let message = format!("malformed sandbox spec: {e}");
                let _ = sock.send(&Reply::Failed { message }, &[]);
                continue;
            }
            Err(_) => sys::exit_now(1),
        };
        match create(&spec, &sock) {
            Ok((pid, fds)) => {
                let raw: Vec<_> = fds.iter().map(|f| f.as_raw_fd()).collect();
                if sock.send(&Reply::Spawned { pid }, &raw).is_err() {
                    sys::exit_now(1);
                }
            }
            Err(e) => {
                let message = e.to_string();
                let _ = sock.send(&Reply::Failed { message }, &[]);
            }
        }
    }
}

/// Clones the sandbox's init; returns its pid and the descriptors for the worker.
fn create(spec: &SandboxSpec, worker: &ControlChannel) -> io::Result<(i32, Vec<OwnedFd>)> {
    let (ctl_ours, ctl_theirs) = sys::socketpair(SocketKind::SeqPacket)?;
    let inst = match spec.instance {
        Some(_) => Some(sys::socketpair(SocketKind::Stream)?),
        None => None,
    };
    // Every sandbox gets a network namespace of its own; a networked one is connected to the
    // host by the worker afterwards (crate::net), never given the host's.
    let mut flags =
        libc::CLONE_NEWNS | libc::CLONE_NEWIPC | libc::CLONE_NEWUTS | libc::CLONE_NEWNET;
    if spec.pid_namespace {
        flags |= libc::CLONE_NEWPID;
    }
    // SAFETY: the spawner is single-threaded (it is its own process, started by exec).
    match unsafe { sys::clone_process(flags) }? {
        Forked::Child => {
            // Only the init's own ends stay open in the sandbox.
            sys::close_raw(worker.as_raw_fd());
            drop(ctl_ours);
            let inst_theirs = inst.map(|(ours, theirs)| {
                drop(ours);
                theirs
            });
            crate::init::run(spec, ControlChannel::new(ctl_theirs), inst_theirs)
        }
        Forked::Parent { pid, pidfd } => {
            drop(ctl_theirs);
            let mut fds = vec![pidfd, ctl_ours];
            if let Some((ours, theirs)) = inst {
                drop(theirs);
                fds.push(ours);
            }
            Ok((pid, fds))
        }
    }
}
