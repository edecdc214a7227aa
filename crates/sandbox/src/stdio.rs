//! The pipes an instance's standard output and error go to. The worker keeps the read ends and
//! writes what arrives to the function's log; the instance only ever holds write ends of pipes
//! of its own, never a descriptor of the worker's (which it could truncate, or fill the disk
//! through, or forge the worker's log lines on).

use std::io;
use std::os::fd::{AsRawFd, BorrowedFd, OwnedFd};

/// One end of each of an instance's two output pipes.
#[derive(Debug)]
pub struct OutputPipes {
    pub stdout: OwnedFd,
    pub stderr: OwnedFd,
}

impl OutputPipes {
    /// Both pipes: the read ends (for the worker) and the write ends (for the instance). All
    /// four are close-on-exec; the instance's ends are `dup2`ed onto 1 and 2, which clears it.
    pub fn new() -> io::Result<(OutputPipes, OutputPipes)> {
        let (out_r, out_w) = crate::sys::pipe()?;
        let (err_r, err_w) = crate::sys::pipe()?;
        Ok((
            OutputPipes {
                stdout: out_r,
                stderr: err_r,
            },
            OutputPipes {
                stdout: out_w,
                stderr: err_w,
            },
        ))
    }
}

/// One `read(2)` from a descriptor the caller does not own (a pipe whose readiness an event
/// loop tracks, read once more without asking it).
pub fn read(fd: BorrowedFd<'_>, buf: &mut [u8]) -> io::Result<usize> {
    // SAFETY: `buf` is writable for its whole length, and `fd` is open for the call.
    let n = unsafe {
        libc::read(
            fd.as_raw_fd(),
            buf.as_mut_ptr() as *mut libc::c_void,
            buf.len(),
        )
    };
    if n < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(n as usize)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use std::io::{Read, Write};

    #[test]
    fn pipes_carry_bytes_and_end_when_the_writer_closes() {
        let (read, write) = OutputPipes::new().unwrap();
        let mut w = std::fs::File::from(write.stdout);
        w.write_all(b"line\n").unwrap();
        drop(w);
        drop(write.stderr);
        let mut got = String::new();
        std::fs::File::from(read.stdout)
            .read_to_string(&mut got)
            .unwrap();
        assert_eq!(got, "line\n");
        let mut rest = Vec::new();
        std::fs::File::from(read.stderr)
            .read_to_end(&mut rest)
            .unwrap();
        assert!(rest.is_empty());
    }
}
