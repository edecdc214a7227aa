//! The one frame codec of the worker's sockets (instances, zygotes, object storage): a payload
//! preceded by its length as a 4-byte big-endian unsigned integer. Readers bound the length
//! before they allocate; what a payload means is each protocol's business.

use std::io::{self, Read};
use tokio::io::{AsyncRead, AsyncReadExt};

/// Bytes of a frame's length prefix.
pub const HEAD_BYTES: usize = 4;

/// Why a frame could not be read.
#[derive(Debug, thiserror::Error)]
pub enum FrameError {
    #[error("frame of {len} bytes is larger than {max}")]
    TooLarge { len: usize, max: usize },
    #[error("cannot read a frame")]
    Io(#[from] io::Error),
}

/// The length prefix of a payload of `len` bytes.
pub fn head(len: usize) -> io::Result<[u8; HEAD_BYTES]> {
    u32::try_from(len)
        .map(u32::to_be_bytes)
        .map_err(|_| io::Error::other(format!("a payload of {len} bytes does not fit a frame")))
}

/// A whole frame: prefix and payload.
pub fn encode(payload: &[u8]) -> io::Result<Vec<u8>> {
    let mut frame = Vec::with_capacity(HEAD_BYTES + payload.len());
    frame.extend_from_slice(&head(payload.len())?);
    frame.extend_from_slice(payload);
    Ok(frame)
}

/// A frame whose payload is several parts, written one after the other.
pub fn encode_parts(parts: &[&[u8]]) -> io::Result<Vec<u8>> {
    let len = parts.iter().map(|p| p.len()).sum();
    let mut frame = Vec::with_capacity(HEAD_BYTES + len);
    frame.extend_from_slice(&head(len)?);
    for p in parts {
        frame.extend_from_slice(p);
    }
    Ok(frame)
}

/// The payload length a prefix announces, if at most `max`.
pub fn length(head: [u8; HEAD_BYTES], max: usize) -> Result<usize, FrameError> {
    // A u32 always fits a usize on the platforms the worker runs on (64-bit Linux).
    let len = usize::try_from(u32::from_be_bytes(head)).unwrap_or(usize::MAX);
    if len > max {
        return Err(FrameError::TooLarge { len, max });
    }
    Ok(len)
}

/// Reads one frame of at most `max` payload bytes (blocking).
pub fn read(r: &mut impl Read, max: usize) -> Result<Vec<u8>, FrameError> {
    let mut head = [0u8; HEAD_BYTES];
    r.read_exact(&mut head)?;
    read_after(r, head, max)
}

/// Reads the payload of a frame whose prefix was read already (blocking).
pub fn read_after(
    r: &mut impl Read,
    head: [u8; HEAD_BYTES],
    max: usize,
) -> Result<Vec<u8>, FrameError> {
    let mut payload = vec![0u8; length(head, max)?];
    r.read_exact(&mut payload)?;
    Ok(payload)
}

/// Reads one frame of at most `max` payload bytes, without a blocking thread.
pub async fn read_async(
    r: &mut (impl AsyncRead + Unpin),
    max: usize,
) -> Result<Vec<u8>, FrameError> {
    let mut head = [0u8; HEAD_BYTES];
    r.read_exact(&mut head).await?;
    let mut payload = vec![0u8; length(head, max)?];
    r.read_exact(&mut payload).await?;
    Ok(payload)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_bounds() {
        let frame = encode(b"ready").unwrap();
        assert_eq!(frame, b"\0\0\0\x05ready");
        assert_eq!(encode_parts(&[b"re", b"ady"]).unwrap(), frame);
        assert_eq!(read(&mut &frame[..], 5).unwrap(), b"ready");
        assert!(matches!(
            read(&mut &frame[..], 4),
            Err(FrameError::TooLarge { len: 5, max: 4 })
        ));
        assert!(matches!(read(&mut &frame[..6], 5), Err(FrameError::Io(_))));
        let huge = [0xff_u8; 4];
        assert!(matches!(
            read(&mut &huge[..], 1 << 20),
            Err(FrameError::TooLarge { .. })
        ));
    }

    #[tokio::test]
    async fn reads_without_a_thread() {
        let frame = encode(b"{}").unwrap();
        assert_eq!(read_async(&mut &frame[..], 2).await.unwrap(), b"{}");
        assert!(read_async(&mut &frame[..], 1).await.is_err());
    }
}
