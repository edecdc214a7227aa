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
use crate::rootfs;
use crate::spec::{IdMaps, SandboxSpec, UserNamespace};
use crate::stdio::OutputPipes;
use crate::sys::{self, Forked, SocketKind};
use parking_lot::Mutex;
use serde::{Deserialize, Serialize};
use std::io;
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::path::Path;
use std::process::{Child, Command, Stdio};

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
    /// Read ends of the first instance's output pipes, if its spec asked for them.
    pub output: Option<OutputPipes>,
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
    /// `namespaces` are the descriptors a [`UserNamespace::Within`] spec needs: the user and
    /// the pid namespace to make the sandbox in.
    pub fn spawn(
        &self,
        spec: &SandboxSpec,
        namespaces: &[RawFd],
    ) -> Result<SpawnedSandbox, SpawnerError> {
        let guard = self.channel.lock();
        let channel = &guard.0;
        channel
            .send(spec, namespaces)
            .map_err(SpawnerError::Channel)?;
        let (reply, mut fds) = channel
            .recv::<Reply>(false)
            .map_err(SpawnerError::Channel)?
            .ok_or(SpawnerError::Gone)?;
        match reply {
            Reply::Failed { message } => Err(SpawnerError::Clone(message)),
            Reply::Spawned { pid } => {
                let piped = spec.instance.as_ref().is_some_and(|i| i.output_pipes);
                let expected = match (&spec.instance, piped) {
                    (None, _) => 2,
                    (Some(_), false) => 3,
                    (Some(_), true) => 5,
                };
                if fds.len() != expected {
                    return Err(SpawnerError::Protocol);
                }
                let output = piped.then(|| OutputPipes {
                    stderr: fds.remove(4),
                    stdout: fds.remove(3),
                });
                let instance = (expected >= 3).then(|| fds.remove(2));
                let control = ControlChannel::new(fds.remove(1));
                let pidfd = fds.remove(0);
                Ok(SpawnedSandbox {
                    pid,
                    pidfd,
                    control,
                    instance,
                    output,
                })
            }
        }
    }
}

impl Drop for Spawner {
    fn drop(&mut self) {
        let guard = self.channel.get_mut();
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
    // Sandbox inits are forks of this process: nobody but root may look into it.
    let _ = sys::set_not_dumpable();
    let sock = match sys::dup_cloexec(0) {
        Ok(fd) => ControlChannel::new(fd),
        Err(_) => sys::exit_now(1),
    };
    sys::close_stdin();
    // Where children are born again after a sandbox was made in a zygote's pid namespace.
    let own_pid_namespace = match sys::open_own_namespace("pid") {
        Ok(fd) => fd,
        Err(_) => sys::exit_now(1),
    };
    loop {
        let (spec, fds) = match sock.recv::<SandboxSpec>(false) {
            Ok(Some(msg)) => msg,
            Ok(None) => sys::exit_now(0),
            Err(e) if e.kind() == io::ErrorKind::InvalidData => {
                let message = format!("malformed sandbox spec: {e}");
                let _ = sock.send(&Reply::Failed { message }, &[]);
                continue;
            }
            Err(_) => sys::exit_now(1),
        };
        match create(&spec, &fds, &sock, &own_pid_namespace) {
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

/// The ends of a new sandbox's channels: the init's, and the worker's.
struct Channels {
    ctl_ours: OwnedFd,
    ctl_theirs: OwnedFd,
    inst: Option<(OwnedFd, OwnedFd)>,
    /// The first instance's output pipes: read ends (the worker's), write ends (the instance's).
    output: Option<(OutputPipes, OutputPipes)>,
}

impl Channels {
    fn new(spec: &SandboxSpec) -> io::Result<Self> {
        let (ctl_ours, ctl_theirs) = sys::socketpair(SocketKind::SeqPacket)?;
        let inst = match spec.instance {
            Some(_) => Some(sys::socketpair(SocketKind::Stream)?),
            None => None,
        };
        let output = match &spec.instance {
            Some(i) if i.output_pipes => Some(OutputPipes::new()?),
            _ => None,
        };
        Ok(Self {
            ctl_ours,
            ctl_theirs,
            inst,
            output,
        })
    }

    /// In the sandbox's init: close everything but its own ends, then run it.
    fn run_init(
        self,
        spec: &SandboxSpec,
        worker: &ControlChannel,
        drop_fds: &[RawFd],
        detached: Option<rootfs::Detached>,
    ) -> ! {
        sys::close_raw(worker.as_raw_fd());
        for &fd in drop_fds {
            sys::close_raw(fd);
        }
        drop(self.ctl_ours);
        let inst_theirs = self.inst.map(|(ours, theirs)| {
            drop(ours);
            theirs
        });
        // The read ends are the worker's alone: a writer holding one could keep its pipe from
        // ever reporting the end of the instance's output.
        let output_theirs = self.output.map(|(read, write)| {
            drop(read);
            write
        });
        crate::init::run(
            spec,
            ControlChannel::new(self.ctl_theirs),
            inst_theirs,
            output_theirs,
            detached,
        )
    }

    /// In the spawner: the descriptors for the worker.
    fn worker_ends(self, pidfd: OwnedFd) -> Vec<OwnedFd> {
        drop(self.ctl_theirs);
        let mut fds = vec![pidfd, self.ctl_ours];
        if let Some((ours, theirs)) = self.inst {
            drop(theirs);
            fds.push(ours);
        }
        if let Some((read, write)) = self.output {
            drop(write);
            fds.push(read.stdout);
            fds.push(read.stderr);
        }
        fds
    }
}

/// Writes the id maps of the user namespace `pid` lives in.
fn write_id_maps(pid: libc::pid_t, maps: &IdMaps) -> io::Result<()> {
    std::fs::write(format!("/proc/{pid}/uid_map"), IdMaps::text(&maps.uid))?;
    std::fs::write(format!("/proc/{pid}/gid_map"), IdMaps::text(&maps.gid))
}

/// A child cloned into a new user namespace waits here until its parent wrote the id maps
/// (a byte on `go`); before that it is nobody in its namespace. Exits if the parent gave up.
fn wait_for_maps(go: &OwnedFd) {
    let mut byte = [0u8; 1];
    if !matches!(sys::read_raw(go.as_raw_fd(), &mut byte), Ok(1)) {
        sys::exit_now(1);
    }
}

/// Clones the sandbox's init; returns its pid and the descriptors for the worker.
fn create(
    spec: &SandboxSpec,
    fds: &[OwnedFd],
    worker: &ControlChannel,
    own_pid_namespace: &OwnedFd,
) -> io::Result<(i32, Vec<OwnedFd>)> {
    let channels = Channels::new(spec)?;
    // Every sandbox gets a network namespace of its own; a networked one is connected to the
    // host by the worker afterwards (crate::net), never given the host's.
    let flags = libc::CLONE_NEWNS
        | libc::CLONE_NEWIPC
        | libc::CLONE_NEWUTS
        | libc::CLONE_NEWPID
        | libc::CLONE_NEWNET;
    match &spec.user_namespace {
        UserNamespace::Host => {
            // SAFETY: the spawner is single-threaded (it is its own process, started by exec).
            match unsafe { sys::clone_process(flags) }? {
                Forked::Child => channels.run_init(spec, worker, &[], None),
                Forked::Parent { pid, pidfd } => Ok((pid, channels.worker_ends(pidfd))),
            }
        }
        UserNamespace::New(maps) => {
            let detached = rootfs::detach(spec).map_err(io::Error::other)?;
            let (go_read, go_write) = sys::pipe()?;
            // SAFETY: as above.
            match unsafe { sys::clone_process(flags | libc::CLONE_NEWUSER) }? {
                Forked::Child => {
                    drop(go_write);
                    wait_for_maps(&go_read);
                    channels.run_init(spec, worker, &[go_read.as_raw_fd()], Some(detached))
                }
                Forked::Parent { pid, pidfd } => {
                    drop(go_read);
                    if let Err(e) = write_id_maps(pid, maps) {
                        let _ = sys::pidfd_kill(pidfd.as_raw_fd());
                        return Err(e);
                    }
                    sys::write_all_raw(go_write.as_raw_fd(), b"1")?;
                    Ok((pid, channels.worker_ends(pidfd)))
                }
            }
        }
        UserNamespace::Within => {
            let [user, pid_ns] = fds else {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidInput,
                    "a sandbox within a zygote's namespaces needs their user and pid descriptors",
                ));
            };
            create_within(
                spec,
                flags,
                (user, pid_ns),
                channels,
                worker,
                own_pid_namespace,
            )
        }
    }
}

/// Makes a sandbox within another sandbox's user and pid namespaces (a zygote's), so that the
/// zygote can place its children in it. A new pid namespace can only be made by a process whose
/// own pid namespace is its parent, and a process cannot leave a user namespace it entered, so
/// the spawner forks a go-between born in the zygote's pid namespace, which enters the zygote's
/// user namespace and clones the init (as a child of the spawner, so that the init's parent-death
/// signal still follows the spawner), then hands its pidfd back and exits. The init builds its
/// root from trees the spawner detached beforehand, as root on the host.
fn create_within(
    spec: &SandboxSpec,
    flags: libc::c_int,
    (user, pid_ns): (&OwnedFd, &OwnedFd),
    channels: Channels,
    worker: &ControlChannel,
    own_pid_namespace: &OwnedFd,
) -> io::Result<(i32, Vec<OwnedFd>)> {
    let detached = rootfs::detach(spec).map_err(io::Error::other)?;
    let (handback_ours, handback_theirs) = sys::socketpair(SocketKind::SeqPacket)?;
    sys::setns(pid_ns.as_raw_fd(), libc::CLONE_NEWPID)?;
    // SAFETY: the spawner is single-threaded.
    let forked = unsafe { sys::fork() };
    if matches!(forked, Ok(0)) {
        // The go-between: born in the zygote's pid namespace.
        drop(handback_ours);
        let outcome = (|| -> io::Result<OwnedFd> {
            sys::setns(user.as_raw_fd(), libc::CLONE_NEWUSER)?;
            // The root of the zygote's user namespace from here on, like the zygote: the init
            // needs nothing of the host's root (the spawner prepared everything it uses), and
            // no process in the zygote's pid namespace should ever be host root.
            sys::become_user(0, 0)?;
            // SAFETY: the go-between is single-threaded (a fork of the spawner).
            match unsafe { sys::clone_process(flags | libc::CLONE_PARENT) }? {
                Forked::Child => {
                    channels.run_init(spec, worker, &[handback_theirs.as_raw_fd()], Some(detached))
                }
                Forked::Parent { pidfd, .. } => Ok(pidfd),
            }
        })();
        let code = match outcome {
            Ok(pidfd) => {
                let sent =
                    sys::send_with_fds(handback_theirs.as_raw_fd(), b"ok", &[pidfd.as_raw_fd()]);
                i32::from(sent.is_err())
            }
            Err(e) => {
                let message = e.to_string();
                let _ = sys::send_with_fds(handback_theirs.as_raw_fd(), message.as_bytes(), &[]);
                1
            }
        };
        sys::exit_now(code);
    }
    // Children of the spawner are born in its own pid namespace again.
    let back = sys::setns(own_pid_namespace.as_raw_fd(), libc::CLONE_NEWPID);
    forked?;
    back?;
    drop(handback_theirs);
    let mut buf = [0u8; 512];
    let (n, mut got) = sys::recv_with_fds(handback_ours.as_raw_fd(), &mut buf, false)?
        .ok_or_else(|| io::Error::other("the go-between exited without a reply"))?;
    let Some(pidfd) = got.pop() else {
        return Err(io::Error::other(format!(
            "making a sandbox within a zygote's namespaces: {}",
            String::from_utf8_lossy(&buf[..n])
        )));
    };
    let pid = sys::pidfd_pid(pidfd.as_raw_fd())?
        .ok_or_else(|| io::Error::other("the new sandbox's init is gone"))?;
    Ok((pid, channels.worker_ends(pidfd)))
}
