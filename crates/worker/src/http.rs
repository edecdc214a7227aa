//! The API's server loop: accepts connections within a cap (worker-wide and per client) and
//! serves each with hyper under timeouts, so that slow or silent clients cannot hold the worker's
//! connections, memory or file descriptors (`[http]` in the config). The S3 API serves its
//! connections the same way ([`serve_connection`]).
//!
//! - A connection waiting for a request (its first, or the next on keep-alive) is closed after
//!   `idle_timeout_secs`: hyper's header-read timer, which runs from the moment it waits.
//! - A request head must be complete `header_read_timeout_secs` after its first byte
//!   ([`Guarded`]): a client sending half a header (slowloris) is closed at that point.
//! - A response that the client takes none of for `write_timeout_secs` ends the connection
//!   ([`Guarded`]); a request body that stalls is the API's (`api::read_body`, 408).
//! - Over `max_connections`, or over `max_connections_per_client` from one address, a new
//!   connection gets an immediate 503 and is closed ([`Connections`]).

use crate::daemon::Worker;
use crate::metrics::Metrics;
use hyper::body::{Body, Frame, SizeHint};
use parking_lot::Mutex;
use std::collections::HashMap;
use std::future::Future;
use std::io;
use std::net::{IpAddr, Ipv6Addr};
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio::time::Sleep;

/// The reply to a connection over the cap, written without reading the request.
const REFUSED: &[u8] = b"HTTP/1.1 503 Service Unavailable\r\nConnection: close\r\n\
Content-Type: text/plain; charset=utf-8\r\nRetry-After: 1\r\nX-Kindling-Error: busy\r\n\
Content-Length: 40\r\n\r\ntoo many connections; try again shortly\n";

/// Open connections, worker-wide and per client address.
pub struct Connections {
    max: usize,
    max_per_client: usize,
    open: Arc<AtomicUsize>,
    per_client: Arc<Mutex<HashMap<IpAddr, usize>>>,
}

/// One admitted connection; gives its place back on drop.
pub struct Admission {
    key: IpAddr,
    open: Arc<AtomicUsize>,
    per_client: Arc<Mutex<HashMap<IpAddr, usize>>>,
}

impl Connections {
    pub fn new(max: usize, max_per_client: usize) -> Self {
        Self {
            max,
            max_per_client,
            open: Arc::new(AtomicUsize::new(0)),
            per_client: Arc::new(Mutex::new(HashMap::new())),
        }
    }

    /// Connections open now.
    pub fn open(&self) -> usize {
        self.open.load(Ordering::Relaxed)
    }

    /// Admits a connection from `peer`, or `None` if the worker or this client is at its cap.
    pub fn admit(&self, peer: IpAddr) -> Option<Admission> {
        let key = client_key(peer);
        let mut per_client = self.per_client.lock();
        let mine = per_client.entry(key).or_insert(0);
        if *mine >= self.max_per_client || self.open.load(Ordering::SeqCst) >= self.max {
            if *mine == 0 {
                per_client.remove(&key);
            }
            return None;
        }
        *mine += 1;
        self.open.fetch_add(1, Ordering::SeqCst);
        Some(Admission {
            key,
            open: self.open.clone(),
            per_client: self.per_client.clone(),
        })
    }
}

impl Drop for Admission {
    fn drop(&mut self) {
        let mut per_client = self.per_client.lock();
        if let Some(n) = per_client.get_mut(&self.key) {
            *n -= 1;
            if *n == 0 {
                per_client.remove(&self.key);
            }
        }
        self.open.fetch_sub(1, Ordering::SeqCst);
    }
}

/// Whose share a connection counts against: its IPv4 address, or the /64 of an IPv6 one (a
/// single host commonly holds a whole /64).
fn client_key(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V4(_) => ip,
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => {
                let s = v6.segments();
                IpAddr::V6(Ipv6Addr::new(s[0], s[1], s[2], s[3], 0, 0, 0, 0))
            }
        },
    }
}

/// Serves the API on `listener` until `shutdown` resolves: the worker is `ready` from the
/// start, `draining` once `shutdown` resolves.
pub async fn serve(
    worker: Arc<Worker>,
    listener: tokio::net::TcpListener,
    shutdown: impl Future<Output = ()>,
) {
    let cfg = worker.config.http.clone();
    let limits = Limits {
        idle: Duration::from_secs_f64(cfg.idle_timeout_secs),
        header: Duration::from_secs_f64(cfg.header_read_timeout_secs),
        write: Duration::from_secs_f64(cfg.write_timeout_secs),
    };
    tokio::pin!(shutdown);
    worker.state.advance(kindling_api::WorkerState::Ready);
    loop {
        let (stream, peer) = tokio::select! {
            _ = &mut shutdown => {
                // Requests still coming on open connections get 503 from here on.
                worker.state.advance(kindling_api::WorkerState::Draining);
                break;
            }
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) => {
                    tracing::warn!("accept failed: {e}");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let Some(admission) = worker.connections.admit(peer.ip()) else {
            worker.metrics.add("http.refused", 1);
            refuse(&stream, REFUSED);
            continue;
        };
        let w = worker.clone();
        tokio::spawn(async move {
            let metrics = w.metrics.clone();
            let handle = move |req| crate::api::handle(w.clone(), req);
            if let Err(e) = serve_connection(stream, admission, limits, handle).await {
                count_error(&metrics, &e);
            }
        });
    }
}

/// Serves one admitted connection with hyper under `limits`, `handle` answering each request.
pub async fn serve_connection<H, F, B, E>(
    stream: TcpStream,
    admission: Admission,
    limits: Limits,
    handle: H,
) -> Result<(), hyper::Error>
where
    H: Fn(hyper::Request<hyper::body::Incoming>) -> F + Send + 'static,
    F: Future<Output = Result<hyper::Response<B>, E>> + Send + 'static,
    B: Body + Unpin + Send + 'static,
    B::Data: Send,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    E: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let _ = stream.set_nodelay(true);
    let mut builder = hyper::server::conn::http1::Builder::new();
    // hyper's header timer starts when the connection begins to wait for a request: it is the
    // idle timeout. The head's own deadline, from its first byte, is Guarded's.
    builder
        .timer(hyper_util::rt::TokioTimer::new())
        .header_read_timeout(limits.idle);
    let state = Arc::new(ConnState::default());
    let mut guarded = Guarded::new(stream, state.clone(), limits);
    guarded.admission = Some(admission);
    let io = hyper_util::rt::TokioIo::new(guarded);
    let service = hyper::service::service_fn(move |req| {
        state.request_started();
        let (reply, state) = (handle(req), state.clone());
        async move {
            let reply = reply.await?;
            Ok::<_, E>(reply.map(|body| Tracked { inner: body, state }))
        }
    });
    builder.serve_connection(io, service).await
}

/// Counts connections ended by a timeout.
fn count_error(metrics: &Metrics, e: &hyper::Error) {
    let io_timeout = std::error::Error::source(e)
        .and_then(|s| s.downcast_ref::<io::Error>())
        .is_some_and(|io| io.kind() == io::ErrorKind::TimedOut);
    if e.is_timeout() || io_timeout {
        metrics.add("http.timeouts", 1);
    }
}

/// Answers a connection over the cap with `reply` (a whole HTTP response) and closes it, never
/// waiting on it.
pub fn refuse(stream: &TcpStream, reply: &[u8]) {
    // What the client already sent is taken first: closing a socket with unread data resets
    // the connection, and the client might not see the reply.
    let mut buf = [0u8; 4096];
    let _ = stream.try_read(&mut buf);
    let _ = stream.try_write(reply);
}

/// A connection's deadlines.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Waiting for a request (its first, or the next on keep-alive).
    pub idle: Duration,
    /// A request head, from its first byte.
    pub header: Duration,
    /// A write the client takes none of.
    pub write: Duration,
}

/// What the service tells the connection's IO: how many request heads were complete, and
/// whether a response is under way.
#[derive(Default)]
struct ConnState {
    heads: AtomicU64,
    responding: AtomicBool,
}

impl ConnState {
    fn request_started(&self) {
        self.heads.fetch_add(1, Ordering::SeqCst);
        self.responding.store(true, Ordering::SeqCst);
    }
}

/// A response body that tells the connection when it is done (dropped by hyper once written).
struct Tracked<B> {
    inner: B,
    state: Arc<ConnState>,
}

impl<B> Drop for Tracked<B> {
    fn drop(&mut self) {
        self.state.responding.store(false, Ordering::SeqCst);
    }
}

impl<B: Body + Unpin> Body for Tracked<B> {
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        Pin::new(&mut self.inner).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// A connection's socket with two deadlines hyper lacks: a request head must be complete
/// [`Limits::header`] after its first byte, and a write may wait at most [`Limits::write`].
struct Guarded {
    /// The connection's place within the caps, given back before the socket closes (so a
    /// client that saw the close may connect again at once). First field: dropped first.
    admission: Option<Admission>,
    stream: TcpStream,
    state: Arc<ConnState>,
    limits: Limits,
    /// The head being read: how many heads were complete when its first byte came, and when.
    head: Option<(u64, Instant)>,
    head_timer: Option<Pin<Box<Sleep>>>,
    write_timer: Option<Pin<Box<Sleep>>>,
}

impl Guarded {
    fn new(stream: TcpStream, state: Arc<ConnState>, limits: Limits) -> Self {
        Self {
            admission: None,
            stream,
            state,
            limits,
            head: None,
            head_timer: None,
            write_timer: None,
        }
    }

    /// Ready(error) once a pending write has waited past its deadline.
    fn write_stalled(&mut self, cx: &mut Context<'_>) -> Poll<io::Error> {
        let deadline = tokio::time::Instant::now() + self.limits.write;
        let timer = self
            .write_timer
            .get_or_insert_with(|| Box::pin(tokio::time::sleep_until(deadline)));
        match timer.as_mut().poll(cx) {
            Poll::Ready(()) => Poll::Ready(io::Error::new(
                io::ErrorKind::TimedOut,
                "the client took none of the response in time",
            )),
            Poll::Pending => Poll::Pending,
        }
    }

    /// Turns a write's poll result into one with the write deadline applied.
    fn on_write<T>(&mut self, cx: &mut Context<'_>, r: Poll<io::Result<T>>) -> Poll<io::Result<T>> {
        match r {
            Poll::Pending => match self.write_stalled(cx) {
                Poll::Ready(e) => Poll::Ready(Err(e)),
                Poll::Pending => Poll::Pending,
            },
            done => {
                self.write_timer = None;
                done
            }
        }
    }
}

impl AsyncRead for Guarded {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = &mut *self;
        let heads = this.state.heads.load(Ordering::SeqCst);
        let responding = this.state.responding.load(Ordering::SeqCst);
        // A head that completed since (or a response under way) ends the current deadline.
        if responding || this.head.is_some_and(|(n, _)| n != heads) {
            this.head = None;
            this.head_timer = None;
        }
        let before = buf.filled().len();
        let r = Pin::new(&mut this.stream).poll_read(cx, buf);
        match &r {
            Poll::Ready(Ok(())) if buf.filled().len() > before && !responding => {
                this.head.get_or_insert((heads, Instant::now()));
            }
            Poll::Pending => {
                if let Some((_, since)) = this.head {
                    let deadline = tokio::time::Instant::from_std(since + this.limits.header);
                    let timer = this
                        .head_timer
                        .get_or_insert_with(|| Box::pin(tokio::time::sleep_until(deadline)));
                    if timer.as_mut().poll(cx).is_ready() {
                        return Poll::Ready(Err(io::Error::new(
                            io::ErrorKind::TimedOut,
                            "the request head was not complete in time",
                        )));
                    }
                }
            }
            _ => {}
        }
        r
    }
}

impl AsyncWrite for Guarded {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let r = Pin::new(&mut self.stream).poll_write(cx, buf);
        self.on_write(cx, r)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let r = Pin::new(&mut self.stream).poll_write_vectored(cx, bufs);
        self.on_write(cx, r)
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let r = Pin::new(&mut self.stream).poll_flush(cx);
        self.on_write(cx, r)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.admission = None;
        let r = Pin::new(&mut self.stream).poll_shutdown(cx);
        self.on_write(cx, r)
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    /// The reply written without hyper says what the API's error kind says, and its length.
    #[test]
    fn refusal_is_the_too_many_connections_error() {
        let text = std::str::from_utf8(REFUSED).unwrap();
        let (head, body) = text.split_once("\r\n\r\n").unwrap();
        let head = format!("{head}\r\n");
        let kind = kindling_api::ErrorKind::TooManyConnections;
        assert!(head.starts_with(&format!("HTTP/1.1 {} ", kind.status().as_u16())));
        assert!(head.contains(&format!("\r\nX-Kindling-Error: {kind}\r\n")));
        assert!(head.contains(&format!("\r\nContent-Length: {}\r\n", body.len())));
    }

    #[test]
    fn caps_connections_per_client_and_in_all() {
        let c = Connections::new(3, 2);
        let a1 = c.admit(ip("10.0.0.1")).unwrap();
        let _a2 = c.admit(ip("10.0.0.1")).unwrap();
        assert!(c.admit(ip("10.0.0.1")).is_none(), "over the client's share");
        let b1 = c.admit(ip("10.0.0.2")).unwrap();
        assert_eq!(c.open(), 3);
        assert!(c.admit(ip("10.0.0.3")).is_none(), "over the worker's cap");
        drop(b1);
        let _c1 = c.admit(ip("10.0.0.3")).unwrap();
        drop(a1);
        let _a3 = c.admit(ip("10.0.0.1")).unwrap();
        assert_eq!(c.open(), 3);
        // Refused clients leave no entry behind.
        assert!(c.admit(ip("10.0.0.9")).is_none());
        assert!(!c.per_client.lock().contains_key(&ip("10.0.0.9")));
    }

    #[test]
    fn ipv6_clients_share_their_64() {
        assert_eq!(
            client_key(ip("2001:db8:1:2:aaaa::1")),
            client_key(ip("2001:db8:1:2:bbbb::2"))
        );
        assert_ne!(
            client_key(ip("2001:db8:1:2::1")),
            client_key(ip("2001:db8:1:3::1"))
        );
        assert_eq!(client_key(ip("::ffff:10.0.0.1")), ip("10.0.0.1"));
        let c = Connections::new(10, 1);
        let _a = c.admit(ip("2001:db8::1")).unwrap();
        assert!(c.admit(ip("2001:db8::2")).is_none());
    }

    /// A socket pair over loopback: the server side wrapped, the client side raw.
    async fn pair(limits: Limits) -> (Guarded, Arc<ConnState>, TcpStream) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let client = TcpStream::connect(listener.local_addr().unwrap())
            .await
            .unwrap();
        let (server, _) = listener.accept().await.unwrap();
        let state = Arc::new(ConnState::default());
        (Guarded::new(server, state.clone(), limits), state, client)
    }

    const LIMITS: Limits = Limits {
        idle: Duration::from_secs(60),
        header: Duration::from_millis(200),
        write: Duration::from_millis(200),
    };

    #[tokio::test]
    async fn a_head_must_be_complete_in_time() {
        let (mut server, state, mut client) = pair(LIMITS).await;
        let mut buf = [0u8; 64];
        // Waiting for a first byte is hyper's (idle) business, not this deadline's.
        let idle = tokio::time::timeout(Duration::from_millis(400), server.read(&mut buf)).await;
        assert!(idle.is_err(), "no byte yet, no deadline");
        client.write_all(b"GET / HT").await.unwrap();
        assert_eq!(server.read(&mut buf).await.unwrap(), 8);
        let t = Instant::now();
        let err = server.read(&mut buf).await.unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::TimedOut);
        assert!(
            t.elapsed() < Duration::from_millis(400),
            "{:?}",
            t.elapsed()
        );

        // Once the head is complete (the service saw it), reading the body has no deadline.
        let (mut server, state2, mut client) = pair(LIMITS).await;
        drop(state);
        client.write_all(b"POST / HTTP/1.1\r\n\r\n").await.unwrap();
        assert!(server.read(&mut buf).await.unwrap() > 0);
        state2.request_started();
        let body = tokio::time::timeout(Duration::from_millis(400), server.read(&mut buf)).await;
        assert!(
            body.is_err(),
            "the body read timed out as if it were a head"
        );
        // After the response, the next head gets its own deadline from its first byte.
        state2.responding.store(false, Ordering::SeqCst);
        tokio::time::sleep(Duration::from_millis(300)).await;
        client.write_all(b"GET").await.unwrap();
        assert_eq!(server.read(&mut buf).await.unwrap(), 3);
        let t = Instant::now();
        assert!(server.read(&mut buf).await.is_err());
        assert!(
            t.elapsed() >= Duration::from_millis(150),
            "{:?}",
            t.elapsed()
        );
    }

    #[tokio::test]
    async fn a_write_nobody_reads_fails_in_time() {
        let (mut server, _state, client) = pair(LIMITS).await;
        let chunk = vec![0u8; 1 << 20];
        let t = Instant::now();
        let err = loop {
            if let Err(e) = server.write(&chunk).await {
                break e;
            }
            assert!(t.elapsed() < Duration::from_secs(5), "writes never stalled");
        };
        assert_eq!(err.kind(), io::ErrorKind::TimedOut);
        drop(client);
    }
}
