//! The S3 API: functions' object storage reached by any S3 client (boto3, the MinIO client,
//! SeBS's harness) on an address of its own (`[s3]`), so that inputs can be put in and outputs
//! taken out without access to the machine's filesystem.
//!
//! It serves the same objects, through the same [`StorageBackend`] and the same [`Quotas`], as
//! the storage service functions call: an upload over S3 and an upload by a function count
//! against one quota. Its namespace (docs/adr/0008-s3-api.md):
//!
//! - each function's space is one S3 bucket, named by the function;
//! - an S3 key is `<bucket>/<key>`, the function's bucket and the key in it: function
//!   `thumbnailer`'s bucket `photos`, key `in/a.jpg`, is `s3://thumbnailer/photos/in/a.jpg`;
//!   listing with delimiter `/` shows the function's buckets as common prefixes.
//!
//! So every S3 request stays within one function's space and its quota. The S3 user is the
//! operator: one access key, checked with AWS Signature V4 (or V2) by `s3s`; requests without a
//! valid signature get 403. Storage grants (`[[storage.grants]]`) do not apply here.
//!
//! What it owns: the listener and its connections ([`S3Server`]), the mapping of S3 names onto
//! spaces, buckets and keys (`names`), the operations (`objects`), listings (`listing`),
//! multipart uploads in progress (`uploads`) and request bodies (`body`). Routing, SigV4 and
//! XML are `s3s`'s.

mod body;
mod errors;
mod listing;
mod names;
mod objects;
mod uploads;

#[cfg(test)]
mod tests;

use crate::storage::quota::Quotas;
use crate::storage::{StorageBackend, StorageConfig, StorageService};
use parking_lot::Mutex;
use serde::Deserialize;
use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

/// Settings of the S3 API (`[s3]`). It is off unless `listen` is set, and then needs `[storage]`
/// enabled (it serves the same objects) and both keys.
#[derive(Clone, PartialEq, Deserialize, serde::Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct S3Config {
    /// Address and port to serve the S3 API on, e.g. `"127.0.0.1:5001"` (an IP address, not a
    /// host name). Unset: no S3 API. Plain HTTP: put a TLS proxy in front to reach it from other
    /// machines.
    pub listen: Option<SocketAddr>,
    /// The access key clients sign with (letters, digits, `.`, `_`, `-`; 3 to 128).
    pub access_key: Option<String>,
    /// The secret key clients sign with (8 to 128 printable characters). Kept out of logs.
    pub secret_key: Option<String>,
    /// Most connections open at once; beyond it a new connection gets 503 at once.
    pub max_connections: usize,
    /// Most connections open at once from one client address (an IPv6 /64).
    pub max_connections_per_client: usize,
    /// Most multipart uploads in progress, over all functions.
    pub max_uploads: usize,
    /// A multipart upload with no part stored for this long is aborted and its parts removed.
    pub upload_expiry_secs: u64,
    /// A request body that sends nothing for this long fails (nothing of it is stored), a
    /// connection waiting this long for its next request is closed, and so is one whose client
    /// takes none of a response for this long. (A request head must be complete 10 s after its
    /// first byte.)
    pub idle_timeout_secs: u64,
}

impl Default for S3Config {
    fn default() -> Self {
        Self {
            listen: None,
            access_key: None,
            secret_key: None,
            max_connections: 64,
            max_connections_per_client: 32,
            max_uploads: 256,
            upload_expiry_secs: 24 * 3600,
            idle_timeout_secs: 60,
        }
    }
}

impl std::fmt::Debug for S3Config {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("S3Config")
            .field("listen", &self.listen)
            .field("access_key", &self.access_key)
            .field(
                "secret_key",
                &self.secret_key.as_ref().map(|_| "<redacted>"),
            )
            .field("max_connections", &self.max_connections)
            .field(
                "max_connections_per_client",
                &self.max_connections_per_client,
            )
            .field("max_uploads", &self.max_uploads)
            .field("upload_expiry_secs", &self.upload_expiry_secs)
            .field("idle_timeout_secs", &self.idle_timeout_secs)
            .finish()
    }
}

impl S3Config {
    /// Checks the section as a config is loaded: an S3 API that listens must have keys.
    pub fn check(&self) -> Result<(), String> {
        if self.listen.is_none() {
            return Ok(());
        }
        let (Some(access), Some(secret)) = (&self.access_key, &self.secret_key) else {
            return Err(
                "s3.listen is set, but s3.access_key and s3.secret_key are not: the S3 API \
                 serves only signed requests"
                    .into(),
            );
        };
        let access_ok = (3..=128).contains(&access.len())
            && access
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'));
        if !access_ok {
            return Err("s3.access_key must be 3 to 128 letters, digits, `.`, `_` or `-`".into());
        }
        let secret_ok =
            (8..=128).contains(&secret.len()) && secret.bytes().all(|b| b.is_ascii_graphic());
        if !secret_ok {
            return Err("s3.secret_key must be 8 to 128 printable characters, no spaces".into());
        }
        if self.max_connections == 0 || self.max_connections_per_client == 0 {
            return Err("s3.max_connections and s3.max_connections_per_client must be > 0".into());
        }
        if self.idle_timeout_secs == 0 || self.upload_expiry_secs == 0 {
            return Err("s3.idle_timeout_secs and s3.upload_expiry_secs must be > 0".into());
        }
        Ok(())
    }
}

/// Functions' object storage as the S3 API reaches it: the storage service's backend and
/// quotas, and the object size limit of `[storage]`.
#[derive(Clone)]
pub struct Store {
    pub backend: Arc<dyn StorageBackend>,
    pub quotas: Arc<Quotas>,
    pub max_object_bytes: u64,
}

/// Errors starting the S3 API.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("invalid [s3] settings: {0}")]
    Config(String),
    #[error("cannot serve the S3 API on {addr}")]
    Listen {
        addr: SocketAddr,
        #[source]
        source: io::Error,
    },
}

/// Starts the S3 API `config` asks for over the storage service's backend and quotas (so an
/// upload over S3 and a function's count against one quota); `None` when it is off.
pub fn start_configured(
    config: &S3Config,
    storage: Option<&StorageService>,
    storage_config: &StorageConfig,
) -> Result<Option<S3Server>, StartError> {
    if config.listen.is_none() {
        return Ok(None);
    }
    let Some(storage) = storage else {
        return Err(StartError::Config(
            "s3.listen is set, but object storage ([storage]) is disabled".into(),
        ));
    };
    let store = Store {
        backend: storage.backend().clone(),
        quotas: storage.quotas().clone(),
        max_object_bytes: storage_config.max_object_bytes,
    };
    S3Server::start(config, store)
}

/// The running S3 API: a thread with its own tokio runtime serving connections (so that S3
/// traffic never delays the worker's API), and multipart uploads expiring in the background.
pub struct S3Server {
    addr: SocketAddr,
    stop: Mutex<Option<tokio::sync::oneshot::Sender<()>>>,
    thread: Mutex<Option<std::thread::JoinHandle<()>>>,
}

impl S3Server {
    /// Starts the S3 API `config` asks for over `store`; `None` when it is off.
    pub fn start(config: &S3Config, store: Store) -> Result<Option<Self>, StartError> {
        let Some(addr) = config.listen else {
            return Ok(None);
        };
        config.check().map_err(StartError::Config)?;
        let listen_err = |source| StartError::Listen { addr, source };
        let listener = std::net::TcpListener::bind(addr).map_err(listen_err)?;
        listener.set_nonblocking(true).map_err(listen_err)?;
        let addr = listener.local_addr().map_err(listen_err)?;
        let api = objects::ObjectApi::new(store, config);
        let service = build_service(api.clone(), config);
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_io()
            .enable_time()
            .max_blocking_threads(config.max_connections.max(1) + 4)
            .thread_name("kindling-s3")
            .build()
            .map_err(listen_err)?;
        let (stop_tx, stop_rx) = tokio::sync::oneshot::channel();
        let limits = Limits::of(config);
        let thread = std::thread::Builder::new()
            .name("kindling-s3".into())
            .spawn(move || {
                runtime.block_on(async move {
                    let expiry = tokio::spawn(expire_uploads(api));
                    serve(listener, service, limits, stop_rx).await;
                    expiry.abort();
                });
                runtime.shutdown_timeout(Duration::from_secs(5));
            })
            .map_err(listen_err)?;
        tracing::info!(%addr, "S3 API ready");
        Ok(Some(Self {
            addr,
            stop: Mutex::new(Some(stop_tx)),
            thread: Mutex::new(Some(thread)),
        }))
    }

    /// The address it serves on (the port chosen, when `listen` asked for port 0).
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// Stops accepting connections, waits a little for requests in progress, and returns.
    pub fn stop(&self) {
        let stop = self.stop.lock().take();
        if let Some(tx) = stop {
            let _ = tx.send(());
        }
        let thread = self.thread.lock().take();
        if let Some(t) = thread {
            let _ = t.join();
        }
    }
}

impl Drop for S3Server {
    fn drop(&mut self) {
        self.stop();
    }
}

/// The largest XML request body (CompleteMultipartUpload of 10,000 parts, DeleteObjects of
/// 1,000 keys).
const MAX_XML_BYTES: usize = 2 << 20;

/// The `s3s` service over `api`: path-style requests, names as Kindling allows them, one
/// access key. Browser form uploads (POST Object) are not served: `s3s` would read their file
/// into memory before checking anything, so their limits are set to refuse any.
fn build_service(api: objects::ObjectApi, config: &S3Config) -> s3s::service::S3Service {
    let mut s3_config = s3s::config::S3Config::default();
    s3_config.xml_max_body_size = MAX_XML_BYTES;
    s3_config.post_object_max_file_size = 0;
    s3_config.form_max_field_size = 4096;
    s3_config.form_max_fields_size = 16 * 1024;
    s3_config.form_max_parts = 16;
    let mut builder = s3s::service::S3ServiceBuilder::new(api);
    builder.set_config(Arc::new(s3s::config::StaticConfigProvider::new(Arc::new(
        s3_config,
    ))));
    builder.set_validation(names::FunctionNames);
    if let (Some(access), Some(secret)) = (&config.access_key, &config.secret_key) {
        builder.set_auth(names::OneKey::new(access, secret));
    }
    builder.build()
}

/// What bounds connections: caps as the worker's API has them, and the same deadlines (a
/// request head must be complete [`HEADER_TIMEOUT`] after its first byte; waiting for a
/// request, and a response the client takes none of, `idle_timeout_secs`).
#[derive(Debug, Clone, Copy)]
struct Limits {
    max_connections: usize,
    max_per_client: usize,
    connection: crate::http::Limits,
}

/// How long a request head may take from its first byte.
const HEADER_TIMEOUT: Duration = Duration::from_secs(10);

impl Limits {
    fn of(config: &S3Config) -> Self {
        let idle = Duration::from_secs(config.idle_timeout_secs.max(1));
        Self {
            max_connections: config.max_connections.max(1),
            max_per_client: config.max_connections_per_client.max(1),
            connection: crate::http::Limits {
                idle,
                header: HEADER_TIMEOUT.min(idle),
                write: idle,
            },
        }
    }
}

/// The reply to a connection over the cap, written without reading its request.
const REFUSED: &[u8] = b"HTTP/1.1 503 Service Unavailable\r\nConnection: close\r\n\
Content-Type: application/xml\r\nRetry-After: 1\r\nContent-Length: 96\r\n\r\n\
<Error><Code>SlowDown</Code><Message>Too many connections; try again shortly.</Message></Error>\n";

/// Accepts connections within the caps until `stop`, each served as the worker's API serves
/// its own ([`crate::http::serve_connection`]).
async fn serve(
    listener: std::net::TcpListener,
    service: s3s::service::S3Service,
    limits: Limits,
    mut stop: tokio::sync::oneshot::Receiver<()>,
) {
    let listener = match tokio::net::TcpListener::from_std(listener) {
        Ok(l) => l,
        Err(e) => {
            tracing::error!("S3 API cannot serve: {e}");
            return;
        }
    };
    let connections = crate::http::Connections::new(limits.max_connections, limits.max_per_client);
    loop {
        let (stream, peer) = tokio::select! {
            _ = &mut stop => break,
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) => {
                    tracing::warn!("S3 API accept failed: {e}");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let Some(admission) = connections.admit(peer.ip()) else {
            crate::http::refuse(&stream, REFUSED);
            continue;
        };
        let service = service.clone();
        tokio::spawn(async move {
            let handle = move |req| call(service.clone(), req);
            let served =
                crate::http::serve_connection(stream, admission, limits.connection, handle).await;
            if let Err(e) = served {
                tracing::debug!("S3 connection ended: {e}");
            }
        });
    }
}

/// One request. A reply sent before the request's body was read (a refusal) closes the
/// connection, and says so: the client may not have sent the body (it waits for
/// `100 Continue`, which then never comes) or may still be sending it, and a client that reused
/// the connection would read its next reply out of step (boto3 then reports the previous
/// reply's status).
async fn call(
    service: s3s::service::S3Service,
    req: hyper::Request<hyper::body::Incoming>,
) -> Result<s3s::HttpResponse, s3s::HttpError> {
    use hyper::body::Body as _;
    let read = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let has_body = !req.body().is_end_stream();
    let req = req.map(|body| {
        s3s::Body::http_body(Watched {
            inner: body,
            read: read.clone(),
        })
    });
    let mut reply = service.call(req).await?;
    if has_body && !read.load(std::sync::atomic::Ordering::SeqCst) {
        reply.headers_mut().insert(
            hyper::header::CONNECTION,
            hyper::header::HeaderValue::from_static("close"),
        );
    }
    Ok(reply)
}

/// A request body that records when it has been read to its end.
struct Watched {
    inner: hyper::body::Incoming,
    read: Arc<std::sync::atomic::AtomicBool>,
}

impl hyper::body::Body for Watched {
    type Data = hyper::body::Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<hyper::body::Frame<Self::Data>, Self::Error>>> {
        let polled = std::pin::Pin::new(&mut self.inner).poll_frame(cx);
        if matches!(polled, std::task::Poll::Ready(None)) || self.inner.is_end_stream() {
            self.read.store(true, std::sync::atomic::Ordering::SeqCst);
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> hyper::body::SizeHint {
        self.inner.size_hint()
    }
}

/// Aborts multipart uploads left idle past their expiry, now and then.
async fn expire_uploads(api: objects::ObjectApi) {
    let every = (api.upload_expiry() / 4).clamp(Duration::from_secs(1), Duration::from_secs(60));
    let mut tick = tokio::time::interval(every);
    loop {
        tick.tick().await;
        api.expire_uploads().await;
    }
}
