//! Object storage for functions: SeBS's storage API (`upload`, `download`, `download_directory`,
//! `upload_stream`, `download_stream`, `list`), served to sandboxes over a Unix socket so that no
//! sandbox needs networking.
//!
//! The worker listens on `<root>/storage-socket/storage.sock`, mode 0666 (`connect()` needs write
//! permission on the socket file, and function code runs unprivileged). That directory is bound
//! read-only at `/kindling/storage-socket` in every function sandbox: a directory of the runtime
//! (see `runtime.rs`), so bases built before storage existed need no new mount point, and a
//! read-only mount still lets a process connect to a socket. The client, `storage.py`, ships in
//! the runtime next to `kindling_runtime.py`, so function code can `import storage`.
//!
//! Protocol, one call per connection: the client sends a frame (4-byte big-endian length, JSON
//! [`Request`]), followed for `put` by exactly `size` bytes; the worker answers with a frame
//! (JSON: `{"ok": true, ...}` or `{"ok": false, "kind": ..., "error": message}`), followed for
//! `get` by exactly `size` bytes.
//!
//! Objects live in a [`StorageBackend`]. The default, [`DirectoryBackend`], keeps
//! `<dir>/<bucket>/<key>` with keys as relative paths, so host tools (benchmarks/run_local.py
//! `--storage-dir`) can put inputs in place with plain file writes. Another backend (S3) only has
//! to implement the trait.

use serde::Deserialize;
use std::io::{self, Read, Write};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// Directory of the worker root holding the socket.
pub const SOCKET_DIR: &str = "storage-socket";
/// The socket's file name.
pub const SOCKET_NAME: &str = "storage.sock";
/// Where the socket directory appears in function sandboxes (a directory of the runtime).
pub const SANDBOX_SOCKET_DIR: &str = "/kindling/storage-socket";

/// Longest key (S3's limit).
pub const MAX_KEY_BYTES: usize = 1024;
/// Longest bucket name, and longest path component of a key (a file name).
pub const MAX_NAME_BYTES: usize = 255;
/// Largest request header.
const MAX_HEADER_BYTES: usize = 64 * 1024;
/// A call whose client sends or reads nothing for this long is dropped.
const IO_TIMEOUT: Duration = Duration::from_secs(60);
/// Uploads in progress (directory backend), renamed into place when complete.
const TMP_DIR: &str = ".tmp";

/// Why a storage call failed. The message (without its source) is what function code sees.
#[derive(Debug, thiserror::Error)]
pub enum StorageError {
    #[error("invalid bucket name {name:?}: {reason}")]
    InvalidBucket { name: String, reason: &'static str },
    #[error("invalid key {key:?}: {reason}")]
    InvalidKey { key: String, reason: &'static str },
    #[error("invalid prefix {prefix:?}: {reason}")]
    InvalidPrefix {
        prefix: String,
        reason: &'static str,
    },
    #[error("bucket {0:?} does not exist")]
    NoSuchBucket(String),
    #[error("object {key:?} does not exist in bucket {bucket:?}")]
    NoSuchObject { bucket: String, key: String },
    #[error("object of {size} bytes is larger than the limit of {limit} bytes per object")]
    TooLarge { size: u64, limit: u64 },
    #[error(
        "key {key:?} conflicts with {existing:?} in bucket {bucket:?}: a key cannot be both an \
         object and a prefix of other keys"
    )]
    Conflict {
        bucket: String,
        key: String,
        existing: String,
    },
    #[error("upload ended after {got} of {size} bytes")]
    Truncated { got: u64, size: u64 },
    #[error("malformed storage request: {0}")]
    Protocol(String),
    #[error("storage backend failed at {path}")]
    Io {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
}

impl StorageError {
    /// The error class the Python client maps to an exception type.
    pub fn kind(&self) -> &'static str {
        match self {
            Self::InvalidBucket { .. } | Self::InvalidKey { .. } | Self::InvalidPrefix { .. } => {
                "invalid"
            }
            Self::NoSuchBucket(_) | Self::NoSuchObject { .. } => "not_found",
            Self::TooLarge { .. } => "too_large",
            Self::Conflict { .. } => "conflict",
            Self::Truncated { .. } | Self::Protocol(_) => "protocol",
            Self::Io { .. } => "internal",
        }
    }

    /// The message for function code: host paths stay on the host.
    fn client_message(&self) -> String {
        match self {
            Self::Io { source, .. } => format!("storage backend failed: {source}"),
            other => other.to_string(),
        }
    }
}

fn io_at(path: &Path) -> impl FnOnce(io::Error) -> StorageError + '_ {
    move |source| StorageError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// A valid bucket name: 1 to 255 bytes of `[A-Za-z0-9._-]`, not starting with `.`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Bucket(String);

impl Bucket {
    pub fn parse(name: &str) -> Result<Self, StorageError> {
        let bad = |reason| {
            Err(StorageError::InvalidBucket {
                name: name.to_string(),
                reason,
            })
        };
        if name.is_empty() {
            return bad("it is empty");
        }
        if name.len() > MAX_NAME_BYTES {
            return bad("it is longer than 255 bytes");
        }
        if name.starts_with('.') {
            return bad("it starts with `.`");
        }
        if !name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
        {
            return bad("only letters, digits, `.`, `_` and `-` are allowed");
        }
        Ok(Self(name.to_string()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// Checks one `/`-separated component of a key.
fn component_problem(c: &str) -> Option<&'static str> {
    match c {
        "" => Some("it has an empty path component (leading, trailing or doubled `/`)"),
        "." | ".." => Some("`.` and `..` components are not allowed"),
        c if c.len() > MAX_NAME_BYTES => Some("a path component is longer than 255 bytes"),
        _ => None,
    }
}

/// A valid object key: a relative path (1 to 1024 bytes, no NUL, no empty, `.` or `..`
/// components), so it can never name anything outside its bucket.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Key(String);

impl Key {
    pub fn parse(key: &str) -> Result<Self, StorageError> {
        let bad = |reason| {
            Err(StorageError::InvalidKey {
                key: key.to_string(),
                reason,
            })
        };
        if key.is_empty() {
            return bad("it is empty");
        }
        if key.len() > MAX_KEY_BYTES {
            return bad("it is longer than 1024 bytes");
        }
        if key.contains('\0') {
            return bad("it contains a NUL byte");
        }
        if key.starts_with('/') {
            return bad("it is absolute (starts with `/`)");
        }
        if let Some(reason) = key.split('/').find_map(component_problem) {
            return bad(reason);
        }
        Ok(Self(key.to_string()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// A valid listing prefix: empty, or a key's beginning. Its complete components (before the
/// last `/`) follow the rules of keys; the last, partial one only filters names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Prefix(String);

impl Prefix {
    pub fn parse(prefix: &str) -> Result<Self, StorageError> {
        let bad = |reason| {
            Err(StorageError::InvalidPrefix {
                prefix: prefix.to_string(),
                reason,
            })
        };
        if prefix.len() > MAX_KEY_BYTES {
            return bad("it is longer than 1024 bytes");
        }
        if prefix.contains('\0') {
            return bad("it contains a NUL byte");
        }
        if prefix.starts_with('/') {
            return bad("it is absolute (starts with `/`)");
        }
        if let Some((dirs, _)) = prefix.rsplit_once('/') {
            if let Some(reason) = dirs.split('/').find_map(component_problem) {
                return bad(reason);
            }
        }
        Ok(Self(prefix.to_string()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The complete components: the directory every match lies under ("" for the bucket).
    fn directory(&self) -> &str {
        self.0.rsplit_once('/').map(|(d, _)| d).unwrap_or("")
    }
}

/// Where objects live. Calls are blocking; the server runs them on blocking threads.
pub trait StorageBackend: Send + Sync {
    /// Stores exactly `size` bytes from `data` as `key`, replacing any object of that key.
    /// A partial upload leaves no object behind.
    fn put(
        &self,
        bucket: &Bucket,
        key: &Key,
        size: u64,
        data: &mut dyn Read,
    ) -> Result<(), StorageError>;

    /// Opens an object: its size and a reader of its bytes.
    fn get(&self, bucket: &Bucket, key: &Key) -> Result<(u64, Box<dyn Read + Send>), StorageError>;

    /// The keys of `bucket` that start with `prefix`, sorted.
    fn list(&self, bucket: &Bucket, prefix: &Prefix) -> Result<Vec<String>, StorageError>;

    /// The host directory holding the objects, for backends that have one.
    fn local_dir(&self) -> Option<&Path> {
        None
    }
}

/// The default backend: `<dir>/<bucket>/<key>`, buckets as directories, keys as relative paths.
/// Buckets are created by their first upload. Uploads are written under `<dir>/.tmp` and renamed
/// into place, so readers never see a partial object.
pub struct DirectoryBackend {
    dir: PathBuf,
    tmp: PathBuf,
    counter: AtomicU64,
}

impl DirectoryBackend {
    /// Opens (creating) the directory, and removes uploads a crashed worker left unfinished.
    pub fn open(dir: &Path) -> Result<Self, StorageError> {
        let tmp = dir.join(TMP_DIR);
        std::fs::create_dir_all(&tmp).map_err(io_at(&tmp))?;
        // Only old leftovers: another worker may share the directory and be uploading now.
        let stale = Duration::from_secs(3600);
        for entry in std::fs::read_dir(&tmp).map_err(io_at(&tmp))?.flatten() {
            let old = entry
                .metadata()
                .and_then(|m| m.modified())
                .ok()
                .and_then(|t| t.elapsed().ok())
                .is_some_and(|age| age > stale);
            if old {
                let _ = std::fs::remove_file(entry.path());
            }
        }
        Ok(Self {
            dir: dir.to_path_buf(),
            tmp,
            counter: AtomicU64::new(0),
        })
    }

    /// Makes sure `path` is a directory, creating it if missing. `key` is what it stands for.
    fn ensure_dir(&self, path: &Path, bucket: &Bucket, key: &Key) -> Result<(), StorageError> {
        match std::fs::metadata(path) {
            Ok(m) if m.is_dir() => Ok(()),
            Ok(_) => Err(StorageError::Conflict {
                bucket: bucket.0.clone(),
                key: key.0.clone(),
                existing: self.relative(bucket, path),
            }),
            Err(e) if e.kind() == io::ErrorKind::NotFound => match std::fs::create_dir(path) {
                Ok(()) => Ok(()),
                // Created meanwhile by a concurrent upload.
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists && path.is_dir() => Ok(()),
                Err(e) => Err(io_at(path)(e)),
            },
            Err(e) => Err(io_at(path)(e)),
        }
    }

    /// The key a path in `bucket` stands for.
    fn relative(&self, bucket: &Bucket, path: &Path) -> String {
        path.strip_prefix(self.dir.join(&bucket.0))
            .unwrap_or(path)
            .to_string_lossy()
            .into_owned()
    }

    fn write_tmp(&self, tmp: &Path, size: u64, data: &mut dyn Read) -> Result<(), StorageError> {
        let mut file = std::fs::File::create_new(tmp).map_err(io_at(tmp))?;
        let got = io::copy(&mut data.take(size), &mut file).map_err(io_at(tmp))?;
        if got != size {
            return Err(StorageError::Truncated { got, size });
        }
        Ok(())
    }
}

impl StorageBackend for DirectoryBackend {
    fn put(
        &self,
        bucket: &Bucket,
        key: &Key,
        size: u64,
        data: &mut dyn Read,
    ) -> Result<(), StorageError> {
        let mut parent = self.dir.join(&bucket.0);
        self.ensure_dir(&parent, bucket, key)?;
        let (dirs, _) = key.0.rsplit_once('/').unwrap_or(("", &key.0));
        for c in dirs.split('/').filter(|c| !c.is_empty()) {
            parent.push(c);
            self.ensure_dir(&parent, bucket, key)?;
        }
        let target = self.dir.join(&bucket.0).join(&key.0);
        if target.is_dir() {
            return Err(StorageError::Conflict {
                bucket: bucket.0.clone(),
                key: key.0.clone(),
                existing: format!("{}/", key.0),
            });
        }
        let n = self.counter.fetch_add(1, Ordering::Relaxed);
        let tmp = self.tmp.join(format!("{}-{n}", std::process::id()));
        let written = self
            .write_tmp(&tmp, size, data)
            .and_then(|()| std::fs::rename(&tmp, &target).map_err(io_at(&target)));
        if written.is_err() {
            let _ = std::fs::remove_file(&tmp);
        }
        written
    }

    fn get(&self, bucket: &Bucket, key: &Key) -> Result<(u64, Box<dyn Read + Send>), StorageError> {
        let bucket_dir = self.dir.join(&bucket.0);
        let path = bucket_dir.join(&key.0);
        let missing = || {
            if bucket_dir.is_dir() {
                StorageError::NoSuchObject {
                    bucket: bucket.0.clone(),
                    key: key.0.clone(),
                }
            } else {
                StorageError::NoSuchBucket(bucket.0.clone())
            }
        };
        let file = match std::fs::File::open(&path) {
            Ok(f) => f,
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::NotFound | io::ErrorKind::NotADirectory
                ) =>
            {
                return Err(missing())
            }
            Err(e) => return Err(io_at(&path)(e)),
        };
        let meta = file.metadata().map_err(io_at(&path))?;
        if !meta.is_file() {
            return Err(missing());
        }
        Ok((meta.len(), Box::new(file.take(meta.len()))))
    }

    fn list(&self, bucket: &Bucket, prefix: &Prefix) -> Result<Vec<String>, StorageError> {
        let bucket_dir = self.dir.join(&bucket.0);
        if !bucket_dir.is_dir() {
            return Err(StorageError::NoSuchBucket(bucket.0.clone()));
        }
        let start = prefix.directory();
        let mut keys = Vec::new();
        let mut stack = vec![start.to_string()];
        while let Some(rel) = stack.pop() {
            let dir = bucket_dir.join(&rel);
            let entries = match std::fs::read_dir(&dir) {
                Ok(rd) => rd,
                Err(e)
                    if matches!(
                        e.kind(),
                        io::ErrorKind::NotFound | io::ErrorKind::NotADirectory
                    ) =>
                {
                    continue
                }
                Err(e) => return Err(io_at(&dir)(e)),
            };
            for entry in entries {
                let entry = entry.map_err(io_at(&dir))?;
                // Names that cannot be keys (not UTF-8) are not objects.
                let Ok(name) = entry.file_name().into_string() else {
                    continue;
                };
                let key = if rel.is_empty() {
                    name
                } else {
                    format!("{rel}/{name}")
                };
                if key.len() > MAX_KEY_BYTES {
                    continue;
                }
                // Symbolic links (made on the host, never through this API) count as what
                // they point to; the key length bound stops a loop.
                let Ok(meta) = std::fs::metadata(entry.path()) else {
                    continue;
                };
                if meta.is_dir() {
                    let as_dir = format!("{key}/");
                    if as_dir.starts_with(prefix.as_str()) || prefix.as_str().starts_with(&as_dir) {
                        stack.push(key);
                    }
                } else if meta.is_file() && key.starts_with(prefix.as_str()) {
                    keys.push(key);
                }
            }
        }
        keys.sort();
        Ok(keys)
    }

    fn local_dir(&self) -> Option<&Path> {
        Some(&self.dir)
    }
}

/// One call, as the client frames it.
#[derive(Debug, Deserialize)]
#[serde(tag = "op", rename_all = "lowercase")]
pub enum Request {
    Put {
        bucket: String,
        key: String,
        size: u64,
    },
    Get {
        bucket: String,
        key: String,
    },
    List {
        bucket: String,
        #[serde(default)]
        prefix: String,
    },
}

/// What a call answers: a header, and for `get` the object's bytes.
enum Reply {
    Header(serde_json::Value),
    Object(u64, Box<dyn Read + Send>),
}

pub(crate) fn read_request(stream: &mut UnixStream) -> Result<Request, StorageError> {
    let protocol = |m: String| StorageError::Protocol(m);
    let mut head = [0u8; 4];
    stream
        .read_exact(&mut head)
        .map_err(|e| protocol(format!("cannot read the request: {e}")))?;
    let n = u32::from_be_bytes(head) as usize;
    if n > MAX_HEADER_BYTES {
        return Err(protocol(format!(
            "request header of {n} bytes is larger than {MAX_HEADER_BYTES}"
        )));
    }
    let mut raw = vec![0u8; n];
    stream
        .read_exact(&mut raw)
        .map_err(|e| protocol(format!("cannot read the request: {e}")))?;
    serde_json::from_slice(&raw).map_err(|e| protocol(e.to_string()))
}

/// Reads one request and carries it out.
fn dispatch(
    stream: &mut UnixStream,
    backend: &dyn StorageBackend,
    max_object_bytes: u64,
) -> Result<Reply, StorageError> {
    match read_request(stream)? {
        Request::Put { bucket, key, size } => {
            let bucket = Bucket::parse(&bucket)?;
            let key = Key::parse(&key)?;
            if size > max_object_bytes {
                return Err(StorageError::TooLarge {
                    size,
                    limit: max_object_bytes,
                });
            }
            backend.put(&bucket, &key, size, stream)?;
            Ok(Reply::Header(
                serde_json::json!({"ok": true, "key": key.as_str()}),
            ))
        }
        Request::Get { bucket, key } => {
            let (size, data) = backend.get(&Bucket::parse(&bucket)?, &Key::parse(&key)?)?;
            Ok(Reply::Object(size, data))
        }
        Request::List { bucket, prefix } => {
            let keys = backend.list(&Bucket::parse(&bucket)?, &Prefix::parse(&prefix)?)?;
            Ok(Reply::Header(serde_json::json!({"ok": true, "keys": keys})))
        }
    }
}

fn write_frame(stream: &mut UnixStream, value: &serde_json::Value) -> io::Result<()> {
    let body = serde_json::to_vec(value)?;
    let mut frame = Vec::with_capacity(body.len() + 4);
    frame.extend_from_slice(&(body.len() as u32).to_be_bytes());
    frame.extend_from_slice(&body);
    stream.write_all(&frame)
}

/// Serves one connection (blocking).
pub fn serve_connection(
    mut stream: UnixStream,
    backend: &dyn StorageBackend,
    max_object_bytes: u64,
) {
    let setup = stream
        .set_nonblocking(false)
        .and_then(|()| stream.set_read_timeout(Some(IO_TIMEOUT)))
        .and_then(|()| stream.set_write_timeout(Some(IO_TIMEOUT)));
    if let Err(e) = setup {
        tracing::warn!("storage connection setup: {e}");
        return;
    }
    let sent = match dispatch(&mut stream, backend, max_object_bytes) {
        Ok(Reply::Header(v)) => write_frame(&mut stream, &v),
        Ok(Reply::Object(size, mut data)) => {
            write_frame(&mut stream, &serde_json::json!({"ok": true, "size": size})).and_then(
                |()| {
                    // An object that shrank meanwhile ends the connection early; the client
                    // reports the short read.
                    io::copy(&mut data, &mut stream).map(|_| ())
                },
            )
        }
        Err(e) => {
            match &e {
                StorageError::Io { path, source } => {
                    tracing::warn!(path = %path.display(), "storage call failed: {source}")
                }
                _ => tracing::debug!("storage call refused: {e}"),
            }
            write_frame(
                &mut stream,
                &serde_json::json!({"ok": false, "kind": e.kind(), "error": e.client_message()}),
            )
        }
    };
    if let Err(e) = sent {
        tracing::debug!("storage client went away: {e}");
    }
}

/// Settings of the storage service.
#[derive(Debug, Clone)]
pub struct ServiceLimits {
    pub max_object_bytes: u64,
    pub max_connections: usize,
}

/// The running storage service: a thread with a small tokio runtime accepting connections on
/// the socket, each call served on a blocking thread. It has its own runtime because the worker
/// starts before the API's runtime exists, and storage I/O then never delays the API.
pub struct StorageService {
    backend: Arc<dyn StorageBackend>,
    socket_dir: PathBuf,
    socket: PathBuf,
    stop: Mutex<Option<tokio::sync::oneshot::Sender<()>>>,
    thread: Mutex<Option<std::thread::JoinHandle<()>>>,
}

/// Errors starting the storage service.
#[derive(Debug, thiserror::Error)]
pub enum ServiceError {
    #[error("cannot listen on {path}")]
    Listen {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("another process serves object storage on {0}")]
    InUse(PathBuf),
    #[error("object storage backend")]
    Backend(#[from] StorageError),
}

impl StorageService {
    /// Binds `<socket_dir>/storage.sock` (replacing a stale socket) and starts serving.
    pub fn start(
        socket_dir: &Path,
        backend: Arc<dyn StorageBackend>,
        limits: ServiceLimits,
    ) -> Result<Self, ServiceError> {
        let listen_err = |path: &Path| {
            let path = path.to_path_buf();
            move |source| ServiceError::Listen { path, source }
        };
        std::fs::create_dir_all(socket_dir).map_err(listen_err(socket_dir))?;
        std::fs::set_permissions(socket_dir, std::fs::Permissions::from_mode(0o755))
            .map_err(listen_err(socket_dir))?;
        let socket = socket_dir.join(SOCKET_NAME);
        if UnixStream::connect(&socket).is_ok() {
            return Err(ServiceError::InUse(socket));
        }
        match std::fs::remove_file(&socket) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => return Err(listen_err(&socket)(e)),
            _ => {}
        }
        let listener = UnixListener::bind(&socket).map_err(listen_err(&socket))?;
        // Function code runs as an unprivileged user, and connect() needs write permission.
        std::fs::set_permissions(&socket, std::fs::Permissions::from_mode(0o666))
            .map_err(listen_err(&socket))?;
        listener
            .set_nonblocking(true)
            .map_err(listen_err(&socket))?;
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_io()
            .enable_time()
            .max_blocking_threads(limits.max_connections.max(1))
            .thread_name("kindling-storage")
            .build()
            .map_err(listen_err(&socket))?;
        let (stop_tx, stop_rx) = tokio::sync::oneshot::channel();
        let served = backend.clone();
        let thread = std::thread::Builder::new()
            .name("kindling-storage".into())
            .spawn(move || {
                runtime.block_on(accept_loop(listener, served, limits, stop_rx));
                runtime.shutdown_timeout(Duration::from_secs(5));
            })
            .map_err(listen_err(&socket))?;
        Ok(Self {
            backend,
            socket_dir: socket_dir.to_path_buf(),
            socket,
            stop: Mutex::new(Some(stop_tx)),
            thread: Mutex::new(Some(thread)),
        })
    }

    /// The directory holding the socket (bound into sandboxes).
    pub fn socket_dir(&self) -> &Path {
        &self.socket_dir
    }

    /// The socket's path on the host.
    pub fn socket(&self) -> &Path {
        &self.socket
    }

    pub fn backend(&self) -> &Arc<dyn StorageBackend> {
        &self.backend
    }

    /// Stops accepting calls, waits a little for calls in progress, removes the socket.
    pub fn stop(&self) {
        let stop = self.stop.lock().unwrap_or_else(|p| p.into_inner()).take();
        if let Some(tx) = stop {
            let _ = tx.send(());
        }
        let thread = self.thread.lock().unwrap_or_else(|p| p.into_inner()).take();
        if let Some(t) = thread {
            let _ = t.join();
        }
        let _ = std::fs::remove_file(&self.socket);
    }
}

impl Drop for StorageService {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Starts the service the configuration asks for: the directory backend at `storage_dir`, the
/// socket in `<root>/storage-socket`. None when storage is disabled.
pub fn start_configured(
    config: &crate::config::StorageConfig,
    storage_dir: &Path,
    root: &Path,
) -> Result<Option<StorageService>, ServiceError> {
    if !config.enabled {
        return Ok(None);
    }
    let backend = Arc::new(DirectoryBackend::open(storage_dir)?);
    let service = StorageService::start(
        &root.join(SOCKET_DIR),
        backend,
        ServiceLimits {
            max_object_bytes: config.max_object_bytes,
            max_connections: config.max_connections,
        },
    )?;
    tracing::info!(
        dir = %storage_dir.display(),
        socket = %service.socket().display(),
        "object storage ready"
    );
    Ok(Some(service))
}

async fn accept_loop(
    listener: UnixListener,
    backend: Arc<dyn StorageBackend>,
    limits: ServiceLimits,
    mut stop: tokio::sync::oneshot::Receiver<()>,
) {
    let listener = match tokio::net::UnixListener::from_std(listener) {
        Ok(l) => l,
        Err(e) => {
            tracing::error!("object storage cannot serve: {e}");
            return;
        }
    };
    let permits = Arc::new(tokio::sync::Semaphore::new(limits.max_connections.max(1)));
    loop {
        // Beyond max_connections, callers wait in the listen backlog.
        let permit = tokio::select! {
            _ = &mut stop => break,
            p = permits.clone().acquire_owned() => match p {
                Ok(p) => p,
                Err(_) => break,
            },
        };
        let stream = tokio::select! {
            _ = &mut stop => break,
            accepted = listener.accept() => match accepted {
                Ok((s, _)) => s,
                Err(e) => {
                    tracing::warn!("object storage accept failed: {e}");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let backend = backend.clone();
        let max = limits.max_object_bytes;
        match stream.into_std() {
            Ok(s) => {
                tokio::task::spawn_blocking(move || {
                    serve_connection(s, backend.as_ref(), max);
                    drop(permit);
                });
            }
            Err(e) => tracing::warn!("object storage connection: {e}"),
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn b(s: &str) -> Bucket {
        Bucket::parse(s).unwrap()
    }
    fn k(s: &str) -> Key {
        Key::parse(s).unwrap()
    }
    fn p(s: &str) -> Prefix {
        Prefix::parse(s).unwrap()
    }

    #[test]
    fn key_validation() {
        for good in [
            "a",
            "dir/a.txt",
            "a/b/c",
            ".hidden",
            "a/..b",
            "x y/é",
            "a\\b",
        ] {
            assert!(Key::parse(good).is_ok(), "{good}");
        }
        let long = "a".repeat(MAX_KEY_BYTES + 1);
        let long_component = format!("d/{}", "a".repeat(256));
        for (bad, why) in [
            ("", "empty"),
            ("/etc/passwd", "absolute"),
            ("..", "`..`"),
            ("../x", "`..`"),
            ("a/../../b", "`..`"),
            ("a/./b", "`.`"),
            ("a//b", "empty path component"),
            ("a/", "empty path component"),
            ("a\0b", "NUL"),
            (long.as_str(), "1024"),
            (long_component.as_str(), "255"),
        ] {
            let err = Key::parse(bad).unwrap_err();
            assert!(err.to_string().contains(why), "{bad:?}: {err}");
            assert_eq!(err.kind(), "invalid");
        }
        // NUL is shown escaped in the message.
        assert!(Key::parse("a\0b")
            .unwrap_err()
            .to_string()
            .contains(r#""a\0b""#));
    }

    #[test]
    fn bucket_and_prefix_validation() {
        assert!(Bucket::parse("kindling-benchmarks").is_ok());
        assert!(Bucket::parse("My_bucket.1").is_ok());
        for bad in [
            "",
            ".",
            "..",
            ".tmp",
            "a/b",
            "a\0",
            "../x",
            "é",
            &"b".repeat(256),
        ] {
            assert!(Bucket::parse(bad).is_err(), "{bad:?}");
        }
        for good in ["", "dir", "dir/", "dir/sub/fi", "..", "dir/..x"] {
            assert!(Prefix::parse(good).is_ok(), "{good:?}");
        }
        for bad in ["/", "/dir", "../x", "a/../", "a//b", "a\0"] {
            assert!(Prefix::parse(bad).is_err(), "{bad:?}");
        }
        assert_eq!(p("dir/sub/fi").directory(), "dir/sub");
        assert_eq!(p("dir").directory(), "");
    }

    fn put(backend: &DirectoryBackend, bucket: &str, key: &str, data: &[u8]) {
        backend
            .put(&b(bucket), &k(key), data.len() as u64, &mut &data[..])
            .unwrap();
    }

    fn get(backend: &DirectoryBackend, bucket: &str, key: &str) -> Result<Vec<u8>, StorageError> {
        let (size, mut r) = backend.get(&b(bucket), &k(key))?;
        let mut out = Vec::new();
        r.read_to_end(&mut out).unwrap();
        assert_eq!(out.len() as u64, size);
        Ok(out)
    }

    #[test]
    fn directory_backend_round_trip() {
        let tmp = tempfile::tempdir().unwrap();
        let backend = DirectoryBackend::open(tmp.path()).unwrap();
        put(&backend, "bkt", "dir/a.txt", b"alpha");
        put(&backend, "bkt", "dir/sub/b.bin", &[0, 1, 2]);
        put(&backend, "bkt", "top", b"");
        put(&backend, "bkt", "dir/a.txt", b"alpha2"); // replaces
        assert_eq!(
            std::fs::read(tmp.path().join("bkt/dir/a.txt")).unwrap(),
            b"alpha2"
        );
        assert_eq!(get(&backend, "bkt", "dir/sub/b.bin").unwrap(), [0, 1, 2]);
        assert_eq!(get(&backend, "bkt", "top").unwrap(), b"");
        // Written on the host, as run_local.py does.
        std::fs::write(tmp.path().join("bkt/host.txt"), b"host").unwrap();
        assert_eq!(get(&backend, "bkt", "host.txt").unwrap(), b"host");

        let list = |prefix: &str| backend.list(&b("bkt"), &p(prefix)).unwrap();
        assert_eq!(list(""), ["dir/a.txt", "dir/sub/b.bin", "host.txt", "top"]);
        assert_eq!(list("dir/"), ["dir/a.txt", "dir/sub/b.bin"]);
        assert_eq!(list("dir"), ["dir/a.txt", "dir/sub/b.bin"]);
        assert_eq!(list("dir/s"), ["dir/sub/b.bin"]);
        assert_eq!(list("t"), ["top"]);
        assert!(list("nothing/here").is_empty());
        assert!(list("top/").is_empty());
        // Uploads in progress are not in the bucket.
        assert_eq!(
            std::fs::read_dir(tmp.path().join(TMP_DIR)).unwrap().count(),
            0
        );
    }

    #[test]
    fn directory_backend_errors() {
        let tmp = tempfile::tempdir().unwrap();
        let backend = DirectoryBackend::open(tmp.path()).unwrap();
        assert!(matches!(
            get(&backend, "nob", "x"),
            Err(StorageError::NoSuchBucket(_))
        ));
        assert!(matches!(
            backend.list(&b("nob"), &p("")),
            Err(StorageError::NoSuchBucket(_))
        ));
        put(&backend, "bkt", "a/b", b"x");
        let err = get(&backend, "bkt", "missing").unwrap_err();
        assert_eq!(
            err.to_string(),
            r#"object "missing" does not exist in bucket "bkt""#
        );
        assert_eq!(err.kind(), "not_found");
        // A key prefix (a directory) is not an object; an object is not a directory.
        assert!(matches!(
            get(&backend, "bkt", "a"),
            Err(StorageError::NoSuchObject { .. })
        ));
        assert!(matches!(
            get(&backend, "bkt", "a/b/c"),
            Err(StorageError::NoSuchObject { .. })
        ));
        let err = backend
            .put(&b("bkt"), &k("a"), 1, &mut &b"y"[..])
            .unwrap_err();
        assert_eq!(err.kind(), "conflict", "{err}");
        let err = backend
            .put(&b("bkt"), &k("a/b/c"), 1, &mut &b"y"[..])
            .unwrap_err();
        assert!(
            matches!(&err, StorageError::Conflict { existing, .. } if existing == "a/b"),
            "{err}"
        );
        // A short upload leaves nothing behind and keeps the old object.
        let err = backend
            .put(&b("bkt"), &k("a/b"), 10, &mut &b"abc"[..])
            .unwrap_err();
        assert!(matches!(err, StorageError::Truncated { got: 3, size: 10 }));
        assert_eq!(get(&backend, "bkt", "a/b").unwrap(), b"x");
        assert_eq!(
            std::fs::read_dir(tmp.path().join(TMP_DIR)).unwrap().count(),
            0
        );
    }

    /// A client speaking the socket protocol, as storage.py does.
    fn call(sock: &Path, header: serde_json::Value, body: &[u8]) -> (serde_json::Value, Vec<u8>) {
        let mut s = UnixStream::connect(sock).unwrap();
        let raw = serde_json::to_vec(&header).unwrap();
        let mut frame = (raw.len() as u32).to_be_bytes().to_vec();
        frame.extend_from_slice(&raw);
        s.write_all(&frame).unwrap();
        // The worker may refuse (and close) before reading the body.
        let _ = s.write_all(body);
        let mut head = [0u8; 4];
        s.read_exact(&mut head).unwrap();
        let mut raw = vec![0u8; u32::from_be_bytes(head) as usize];
        s.read_exact(&mut raw).unwrap();
        let mut rest = Vec::new();
        s.read_to_end(&mut rest).unwrap();
        (serde_json::from_slice(&raw).unwrap(), rest)
    }

    #[test]
    fn service_over_the_socket() {
        let tmp = tempfile::tempdir().unwrap();
        let backend = Arc::new(DirectoryBackend::open(&tmp.path().join("storage")).unwrap());
        let service = StorageService::start(
            &tmp.path().join(SOCKET_DIR),
            backend,
            ServiceLimits {
                max_object_bytes: 1 << 20,
                max_connections: 4,
            },
        )
        .unwrap();
        let sock = service.socket().to_path_buf();
        let mode = std::fs::metadata(&sock).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o666);
        // A second service on the same socket is refused.
        assert!(matches!(
            StorageService::start(
                &tmp.path().join(SOCKET_DIR),
                Arc::new(DirectoryBackend::open(&tmp.path().join("s2")).unwrap()),
                ServiceLimits {
                    max_object_bytes: 1,
                    max_connections: 1
                }
            ),
            Err(ServiceError::InUse(_))
        ));

        let (r, _) = call(
            &sock,
            serde_json::json!({"op": "put", "bucket": "bk", "key": "d/x", "size": 3}),
            b"abc",
        );
        assert_eq!(r, serde_json::json!({"ok": true, "key": "d/x"}));
        assert_eq!(
            std::fs::read(tmp.path().join("storage/bk/d/x")).unwrap(),
            b"abc"
        );
        let (r, body) = call(
            &sock,
            serde_json::json!({"op": "get", "bucket": "bk", "key": "d/x"}),
            b"",
        );
        assert_eq!(
            (r["size"].as_u64(), body.as_slice()),
            (Some(3), &b"abc"[..])
        );
        let (r, _) = call(
            &sock,
            serde_json::json!({"op": "list", "bucket": "bk"}),
            b"",
        );
        assert_eq!(r["keys"], serde_json::json!(["d/x"]));
        let (r, _) = call(
            &sock,
            serde_json::json!({"op": "get", "bucket": "bk", "key": "../../etc/passwd"}),
            b"",
        );
        assert_eq!(r["ok"], false);
        assert_eq!(r["kind"], "invalid");
        // Too large: refused before the body is read, and the reply still arrives.
        let big = vec![7u8; 4 << 20];
        let (r, _) = call(
            &sock,
            serde_json::json!({"op": "put", "bucket": "bk", "key": "big", "size": big.len()}),
            &big,
        );
        assert_eq!(r["kind"], "too_large", "{r}");
        assert!(!tmp.path().join("storage/bk/big").exists());
        let (r, _) = call(&sock, serde_json::json!({"op": "delete"}), b"");
        assert_eq!(r["kind"], "protocol");
        service.stop();
        assert!(!sock.exists());
    }
}
