//! Unix stream sockets that carry descriptors (SCM_RIGHTS) and their senders' credentials
//! (SCM_CREDENTIALS): how the worker hands a zygote the namespaces and cgroup of a sandbox to
//! fork into, and learns the host pid of the child that answers.

use crate::sys::{self, SocketKind};
use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::os::unix::net::UnixStream;

/// Most descriptors one message may carry.
pub const MAX_FDS: usize = sys::MAX_FDS;

/// A connected pair: the worker's end, which receives every sender's credentials, and the other
/// end, to hand over.
pub fn pair_with_credentials() -> io::Result<(UnixStream, OwnedFd)> {
    let (ours, theirs) = sys::socketpair(SocketKind::Stream)?;
    sys::set_passcred(ours.as_raw_fd())?;
    Ok((UnixStream::from(ours), theirs))
}

/// Sends `data` with `fds` attached to its first byte (at most [`MAX_FDS`]).
pub fn send_with_fds(sock: &impl AsFd, data: &[u8], fds: &[BorrowedFd<'_>]) -> io::Result<()> {
    if fds.len() > MAX_FDS {
        return Err(io::Error::other("too many descriptors in one message"));
    }
    let raw: Vec<_> = fds.iter().map(|fd| fd.as_raw_fd()).collect();
    sys::send_with_fds(sock.as_fd().as_raw_fd(), data, &raw)
}

/// Receives up to `buf.len()` bytes and the sender's pid on the receiver's side (see
/// [`pair_with_credentials`]); `Ok(None)` at end of stream.
pub fn recv_with_credentials(
    sock: &impl AsFd,
    buf: &mut [u8],
) -> io::Result<Option<(usize, Option<i32>)>> {
    sys::recv_with_credentials(sock.as_fd().as_raw_fd(), buf)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use std::io::Read;

    #[test]
    fn descriptors_and_credentials_travel() {
        let (ours, theirs) = pair_with_credentials().unwrap();
        let theirs = UnixStream::from(theirs);
        let (r, w) = std::os::unix::net::UnixStream::pair().unwrap();
        send_with_fds(&theirs, b"hi", &[w.as_fd()]).unwrap();
        let mut buf = [0u8; 2];
        let (n, pid) = recv_with_credentials(&ours, &mut buf).unwrap().unwrap();
        assert_eq!((n, &buf), (2, b"hi"));
        assert_eq!(pid, Some(i32::try_from(std::process::id()).unwrap()));
        drop((w, theirs));
        let mut rest = Vec::new();
        (&r).read_to_end(&mut rest).unwrap();
        assert!(recv_with_credentials(&ours, &mut buf).unwrap().is_none());
    }
}
