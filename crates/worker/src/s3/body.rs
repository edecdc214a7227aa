//! Bodies between HTTP and the backend, whose calls block: an upload's body is fed through a
//! small channel to a reader on a blocking thread, and an object is read in chunks on
//! blocking threads, one chunk at a time, so that a slow client holds no thread.
//!
//! An upload is checked as it streams: exactly its declared length, no pause longer than the
//! idle timeout, and the digests the client sent (`Content-MD5`, `x-amz-checksum-*` as headers
//! or as a trailer). Its last chunk is held back until all of that holds, so a backend, which
//! stores an object only once it has read all of it, never stores one that fails a check.

use super::errors;
use crate::storage::StorageError;
use futures::StreamExt;
use hyper::body::Bytes;
use s3s::checksum::ChecksumHasher;
use s3s::crypto::Checksum as _;
use s3s::dto::{Checksum, StreamingBlob};
use s3s::stream::{ByteStream, RemainingLength};
use s3s::{s3_error, S3Error, S3Result, StdError, TrailingHeaders};
use std::future::Future;
use std::io::{self, Read};
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::sync::mpsc;

/// Bytes read from an object per blocking call, and per chunk of a response.
const CHUNK: usize = 256 * 1024;

/// Chunks of an upload in flight between the connection and the blocking writer.
const IN_FLIGHT: usize = 4;

/// A body this small that is refused before it is read is read anyway, so that the client
/// (which sends it without waiting) gets the reply rather than a reset connection.
const DRAIN_BYTES: u64 = 1 << 20;

/// The digests an upload must match, and the hashers computing them.
pub(crate) struct Digests {
    hasher: ChecksumHasher,
    expected: Checksum,
    md5: Option<(s3s::crypto::Md5, Vec<u8>)>,
    /// A checksum sent as a trailer: its header name, and where `s3s` puts the trailers.
    trailer: Option<(String, TrailingHeaders)>,
}

/// Names of the `x-amz-checksum-*` algorithms, as headers.
const CRC32: &str = "x-amz-checksum-crc32";
const CRC32C: &str = "x-amz-checksum-crc32c";
const SHA1: &str = "x-amz-checksum-sha1";
const SHA256: &str = "x-amz-checksum-sha256";
const CRC64NVME: &str = "x-amz-checksum-crc64nvme";

impl Digests {
    /// What the request says its body hashes to: `expected` (its `x-amz-checksum-*`
    /// headers), `content_md5`, and a checksum trailer the request's `x-amz-trailer` header
    /// announces.
    pub(crate) fn of(
        expected: Checksum,
        content_md5: Option<&str>,
        headers: &hyper::HeaderMap,
        trailers: Option<TrailingHeaders>,
    ) -> S3Result<Self> {
        let md5 = match content_md5 {
            None => None,
            Some(b64) => {
                let digest = base64_simd::STANDARD
                    .decode_to_vec(b64.trim())
                    .ok()
                    .filter(|d| d.len() == 16)
                    .ok_or_else(|| s3_error!(InvalidDigest, "Content-MD5 is not a base64 MD5"))?;
                Some((s3s::crypto::Md5::new(), digest))
            }
        };
        let trailer = headers
            .get("x-amz-trailer")
            .and_then(|v| v.to_str().ok())
            .map(|v| v.trim().to_ascii_lowercase())
            .filter(|name| name.starts_with("x-amz-checksum-"))
            .zip(trailers);
        let mut digests = Self {
            hasher: ChecksumHasher::default(),
            expected,
            md5,
            trailer: None,
        };
        let e = &digests.expected;
        let wanted = |name: &str, header: &Option<String>| {
            header.is_some() || trailer.as_ref().is_some_and(|(t, _)| t == name)
        };
        if wanted(CRC32, &e.checksum_crc32) {
            digests.hasher.crc32 = Some(s3s::crypto::Crc32::new());
        }
        if wanted(CRC32C, &e.checksum_crc32c) {
            digests.hasher.crc32c = Some(s3s::crypto::Crc32c::new());
        }
        if wanted(SHA1, &e.checksum_sha1) {
            digests.hasher.sha1 = Some(s3s::crypto::Sha1::new());
        }
        if wanted(SHA256, &e.checksum_sha256) {
            digests.hasher.sha256 = Some(s3s::crypto::Sha256::new());
        }
        if wanted(CRC64NVME, &e.checksum_crc64nvme) {
            digests.hasher.crc64nvme = Some(s3s::crypto::Crc64Nvme::new());
        }
        digests.trailer = trailer;
        Ok(digests)
    }

    fn update(&mut self, data: &[u8]) {
        self.hasher.update(data);
        if let Some((md5, _)) = &mut self.md5 {
            md5.update(data);
        }
    }

    /// Checks the digests of the whole body; returns the checksums computed.
    fn verify(self) -> S3Result<Checksum> {
        if let Some((md5, want)) = self.md5 {
            if md5.finalize().as_slice() != want.as_slice() {
                return Err(s3_error!(
                    BadDigest,
                    "The Content-MD5 you specified did not match what was received."
                ));
            }
        }
        let mut expected = self.expected;
        if let Some((name, trailers)) = &self.trailer {
            let value = trailers
                .read(|h| {
                    h.get(name.as_str())
                        .and_then(|v| v.to_str().ok())
                        .map(str::to_string)
                })
                .flatten()
                .ok_or_else(|| s3_error!(InvalidRequest, "the trailer {name} is missing"))?;
            let slot = match name.as_str() {
                CRC32 => &mut expected.checksum_crc32,
                CRC32C => &mut expected.checksum_crc32c,
                SHA1 => &mut expected.checksum_sha1,
                SHA256 => &mut expected.checksum_sha256,
                CRC64NVME => &mut expected.checksum_crc64nvme,
                _ => return Err(s3_error!(InvalidRequest, "unknown checksum trailer {name}")),
            };
            *slot = Some(value);
        }
        let got = self.hasher.finalize();
        let pairs = [
            (CRC32, &expected.checksum_crc32, &got.checksum_crc32),
            (CRC32C, &expected.checksum_crc32c, &got.checksum_crc32c),
            (SHA1, &expected.checksum_sha1, &got.checksum_sha1),
            (SHA256, &expected.checksum_sha256, &got.checksum_sha256),
            (
                CRC64NVME,
                &expected.checksum_crc64nvme,
                &got.checksum_crc64nvme,
            ),
        ];
        for (name, want, have) in pairs {
            if let Some(want) = want {
                if Some(want.trim()) != have.as_deref() {
                    return Err(s3_error!(
                        BadDigest,
                        "The {name} you specified did not match what was received."
                    ));
                }
            }
        }
        Ok(got)
    }
}

/// How feeding a body ended.
enum Fed {
    /// All of it, matching its digests (those computed).
    Done(Checksum),
    /// The writer stopped reading (it failed; its error says why).
    WriterGone,
    /// The body failed a check, or stalled; the writer was told to abandon it.
    Failed(S3Error),
}

/// Streams an upload's `body`, exactly `size` bytes matching `digests`, into `write` (run on a
/// blocking thread with a reader of those bytes). Returns what `write` returned and the
/// checksums computed; whatever fails, `write` never reads the body's last byte.
pub(crate) async fn store<T: Send + 'static>(
    body: Option<StreamingBlob>,
    size: u64,
    digests: Digests,
    idle: Duration,
    write: impl FnOnce(&mut dyn Read) -> Result<T, StorageError> + Send + 'static,
) -> S3Result<(T, Checksum)> {
    let (tx, rx) = mpsc::channel(IN_FLIGHT);
    if size == 0 {
        // Nothing to hold back: check the (empty) body before writing.
        let sums = match feed(body, 0, digests, None, idle).await {
            Fed::Done(sums) => sums,
            Fed::Failed(e) => return Err(e),
            Fed::WriterGone => return Err(s3_error!(InternalError, "no writer was fed")),
        };
        drop(tx);
        let mut empty = Incoming::new(rx);
        let written = tokio::task::spawn_blocking(move || write(&mut empty))
            .await
            .map_err(errors::task)?;
        return written.map(|v| (v, sums)).map_err(errors::storage);
    }
    let writer = tokio::task::spawn_blocking(move || write(&mut Incoming::new(rx)));
    let fed = feed(body, size, digests, Some(tx), idle).await;
    let written = writer.await.map_err(errors::task)?;
    match (fed, written) {
        (Fed::Failed(e), _) => Err(e),
        (_, Err(e)) => Err(errors::storage(e)),
        (Fed::Done(sums), Ok(v)) => Ok((v, sums)),
        (Fed::WriterGone, Ok(_)) => Err(s3_error!(
            InternalError,
            "the upload ended before its body was stored"
        )),
    }
}

/// Feeds `body` to the writer behind `tx` (`None`: only checks it), holding the last chunk
/// back until the whole body is checked.
async fn feed(
    body: Option<StreamingBlob>,
    size: u64,
    mut digests: Digests,
    tx: Option<mpsc::Sender<io::Result<Bytes>>>,
    idle: Duration,
) -> Fed {
    let abandon = |tx: Option<mpsc::Sender<io::Result<Bytes>>>, e: S3Error| async move {
        if let Some(tx) = tx {
            let _ = tx.send(Err(io::Error::other("upload abandoned"))).await;
        }
        Fed::Failed(e)
    };
    let mut body = body.map(Box::pin);
    let mut got = 0u64;
    let mut held: Option<Bytes> = None;
    let mut writer_gone = false;
    loop {
        let next = match &mut body {
            None => None,
            Some(b) => match tokio::time::timeout(idle, b.next()).await {
                Ok(next) => next,
                Err(_) => {
                    let e = s3_error!(
                        RequestTimeout,
                        "the body sent nothing for {} s; nothing of it was stored",
                        idle.as_secs()
                    );
                    return abandon(tx, e).await;
                }
            },
        };
        let chunk = match next {
            None => break,
            Some(Ok(chunk)) => chunk,
            Some(Err(e)) => {
                let e = s3_error!(InvalidRequest, "the body was refused: {e}");
                return abandon(tx, e).await;
            }
        };
        got = got.saturating_add(chunk.len() as u64);
        if got > size {
            let e = s3_error!(
                IncompleteBody,
                "the body is longer than its length of {size} bytes"
            );
            return abandon(tx, e).await;
        }
        if writer_gone {
            // Read to its end anyway, so that the client gets the writer's error.
            continue;
        }
        digests.update(&chunk);
        if let (Some(prev), Some(tx)) = (held.replace(chunk), &tx) {
            if tx.send(Ok(prev)).await.is_err() {
                writer_gone = true;
            }
        }
    }
    if writer_gone {
        return Fed::WriterGone;
    }
    if got < size {
        let e = s3_error!(
            IncompleteBody,
            "the body ended after {got} of its {size} bytes; nothing of it was stored"
        );
        return abandon(tx, e).await;
    }
    let sums = match digests.verify() {
        Ok(sums) => sums,
        Err(e) => return abandon(tx, e).await,
    };
    if let (Some(last), Some(tx)) = (held, &tx) {
        if tx.send(Ok(last)).await.is_err() {
            return Fed::WriterGone;
        }
    }
    Fed::Done(sums)
}

/// Reads and drops a body refused before it was read, if it is small and the client sends it
/// without waiting for a go-ahead (`Expect: 100-continue`).
pub(crate) async fn discard(
    body: Option<StreamingBlob>,
    size: Option<u64>,
    headers: &hyper::HeaderMap,
    idle: Duration,
) {
    let waits = headers
        .get(hyper::header::EXPECT)
        .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"100-continue"));
    let (Some(mut body), false) = (body, waits) else {
        return;
    };
    if size.is_none_or(|s| s > DRAIN_BYTES) {
        return;
    }
    let mut got = 0u64;
    while let Ok(Some(Ok(chunk))) = tokio::time::timeout(idle, body.next()).await {
        got += chunk.len() as u64;
        if got > DRAIN_BYTES {
            return;
        }
    }
}

/// The writer's side of an upload: the chunks the connection sends, as a reader. An error
/// sent in place of a chunk (the upload was abandoned) fails the read.
struct Incoming {
    rx: mpsc::Receiver<io::Result<Bytes>>,
    current: Bytes,
}

impl Incoming {
    fn new(rx: mpsc::Receiver<io::Result<Bytes>>) -> Self {
        Self {
            rx,
            current: Bytes::new(),
        }
    }
}

impl Read for Incoming {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        while self.current.is_empty() {
            match self.rx.blocking_recv() {
                Some(Ok(chunk)) => self.current = chunk,
                Some(Err(e)) => return Err(e),
                None => return Ok(0),
            }
        }
        let n = buf.len().min(self.current.len());
        buf[..n].copy_from_slice(&self.current.split_to(n));
        Ok(n)
    }
}

type Reader = Box<dyn Read + Send>;
type ChunkRead = tokio::task::JoinHandle<(io::Result<Vec<u8>>, Reader)>;

/// An object's bytes as a response body: `left` bytes of `reader`, a chunk per blocking call.
pub(crate) struct ObjectBody {
    // In a mutex only so that the body is `Sync`, as `s3s` requires; never contended.
    reader: parking_lot::Mutex<Option<Reader>>,
    pending: Option<ChunkRead>,
    left: u64,
}

impl ObjectBody {
    pub(crate) fn blob(reader: Reader, len: u64) -> StreamingBlob {
        StreamingBlob::new(Self {
            reader: parking_lot::Mutex::new(Some(reader)),
            pending: None,
            left: len,
        })
    }
}

/// Reads up to `n` bytes (fewer only at the end).
fn read_chunk(reader: &mut Reader, n: usize) -> io::Result<Vec<u8>> {
    let mut buf = vec![0u8; n];
    let mut got = 0;
    while got < n {
        match reader.read(&mut buf[got..]) {
            Ok(0) => break,
            Ok(k) => got += k,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    buf.truncate(got);
    Ok(buf)
}

impl futures::Stream for ObjectBody {
    type Item = Result<Bytes, StdError>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = self.get_mut();
        loop {
            if let Some(pending) = &mut this.pending {
                let done = std::task::ready!(Pin::new(pending).poll(cx));
                this.pending = None;
                let failed = |e: io::Error| Poll::Ready(Some(Err(Box::new(e) as StdError)));
                return match done {
                    Ok((Ok(chunk), reader)) if !chunk.is_empty() => {
                        this.left = this.left.saturating_sub(chunk.len() as u64);
                        *this.reader.get_mut() = Some(reader);
                        Poll::Ready(Some(Ok(Bytes::from(chunk))))
                    }
                    Ok((Ok(_), _)) => {
                        this.left = 0;
                        failed(io::Error::new(
                            io::ErrorKind::UnexpectedEof,
                            "the object shrank while it was read",
                        ))
                    }
                    Ok((Err(e), _)) => {
                        this.left = 0;
                        failed(e)
                    }
                    Err(e) => {
                        this.left = 0;
                        failed(io::Error::other(e))
                    }
                };
            }
            if this.left == 0 {
                return Poll::Ready(None);
            }
            let taken = this.reader.get_mut().take();
            let Some(mut reader) = taken else {
                return Poll::Ready(None);
            };
            let n = this.left.min(CHUNK as u64) as usize;
            this.pending = Some(tokio::task::spawn_blocking(move || {
                let chunk = read_chunk(&mut reader, n);
                (chunk, reader)
            }));
        }
    }
}

impl ByteStream for ObjectBody {
    fn remaining_length(&self) -> RemainingLength {
        usize::try_from(self.left)
            .map_or_else(|_| RemainingLength::unknown(), RemainingLength::new_exact)
    }
}
