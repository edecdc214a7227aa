//! Object storage for functions: SeBS's storage API (`upload`, `download`, `download_directory`,
//! `upload_stream`, `download_stream`, `list`), served to sandboxes over a Unix socket so that no
//! sandbox needs networking.
//!
//! Each function has buckets of its own: function `f`'s bucket `b` is not function `g`'s bucket
//! `b`, although both call it `b`. Beyond its own, a function reaches only the buckets the
//! operator grants it (`[[storage.grants]]`, read-only or read-write). Which function calls is
//! never taken from the request: the worker asks the kernel which process connected, and the
//! pool which function that process's sandbox serves ([`crate::tenants`]); a process in no
//! sandbox, or in one that serves no function (zygotes, jobs, waiting seeds), is refused.
//!
//! The worker listens on `<root>/storage-socket/storage.sock`. The directory is root's, mode
//! 0700, so no other host user reaches the socket; the socket file alone is bound read-only at
//! `/kindling/storage-socket/storage.sock` in every function sandbox (on an empty file of the
//! runtime directory, see `runtime.rs`), mode 0666 because function code runs unprivileged and
//! `connect()` needs write permission. A read-only mount still lets a process connect. The
//! client, `storage.py`, ships in the runtime next to `kindling_runtime.py`, so function code can
//! `import storage`.
//!
//! Protocol, one call per connection: the client sends a frame (4-byte big-endian length, JSON
//! [`Request`]), followed for `put` by exactly `size` bytes; the worker answers with a frame
//! (JSON: `{"ok": true, ...}` or `{"ok": false, "kind": ..., "error": message}`), followed for
//! `get` by exactly `size` bytes. A connection refused before its request (an unknown caller, or
//! a function at its connection limit: kind `busy`) gets the error frame at once.
//!
//! Bounds: an object is at most `max_object_bytes`; a function's buckets hold at most
//! `max_function_bytes` and the whole store `max_total_bytes` ([`quota`]), checked against the
//! size an upload declares before any of its bytes is written; a function has at most
//! `max_connections_per_function` connections open, each waiting at most [`HEADER_TIMEOUT`] for
//! its request, so that one function holding connections open cannot keep another's waiting.
//!
//! Objects live in a [`StorageBackend`]. The default, [`DirectoryBackend`], keeps
//! `<dir>/<function>/<bucket>/<key>` with keys as relative paths, so host tools
//! (benchmarks/run_local.py `--storage-dir`, `kindling bench`) can put a function's inputs in
//! place with plain file writes. Another backend (S3) only has to implement the trait.

pub mod quota;

use crate::frame::FrameError;
use crate::tenants::{Callers, Refused};
use parking_lot::Mutex;
use quota::{charge, Exceeded, Quotas, BLOCK};
use serde::Deserialize;
use std::collections::HashMap;
use std::io::{self, Read, Write};
use std::os::fd::AsFd;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

/// Where the socket appears in function sandboxes.
pub use crate::layout::STORAGE_SOCKET as SANDBOX_SOCKET;
/// Directory of the worker root holding the socket.
pub use crate::layout::STORAGE_SOCKET_DIR as SOCKET_DIR;
/// The socket's file name.
pub use crate::layout::STORAGE_SOCKET_NAME as SOCKET_NAME;

/// Longest key (S3's limit).
pub const MAX_KEY_BYTES: usize = 1024;
/// Longest bucket name, and longest path component of a key (a file name).
pub const MAX_NAME_BYTES: usize = 255;
/// Largest request header.
const MAX_HEADER_BYTES: usize = 64 * 1024;
/// A connection that has not sent its request after this long is dropped.
pub const HEADER_TIMEOUT: Duration = Duration::from_secs(10);
/// A call whose client sends or reads nothing for this long is dropped.
const IO_TIMEOUT: Duration = Duration::from_secs(60);
/// Uploads in progress (directory backend), renamed into place when complete.
const TMP_DIR: &str = ".tmp";
/// Most of a name or key an error message repeats.
const ECHO_BYTES: usize = 256;
/// How often a refused upload may have its function's space counted again (see [`quota`]).
const RECOUNT_AFTER: Duration = Duration::from_secs(60);

/// At most [`ECHO_BYTES`] of `s` (on a character boundary), for error messages.
pub(crate) fn clip(s: &str) -> String {
    if s.len() <= ECHO_BYTES {
        return s.to_string();
    }
    let mut end = ECHO_BYTES;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}...", &s[..end])
}

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
    #[error("invalid function name {0:?}")]
    InvalidFunction(String),
    #[error("bucket {0:?} does not exist")]
    NoSuchBucket(String),
    #[error("object {key:?} does not exist in bucket {bucket:?}")]
    NoSuchObject { bucket: String, key: String },
    #[error("object of {size} bytes is larger than the limit of {limit} bytes per object")]
    TooLarge { size: u64, limit: u64 },
    #[error(
        "upload of {size} bytes would take the buckets of function {function:?} to {would} \
         bytes, over its quota of {limit} bytes"
    )]
    Quota {
        function: String,
        size: u64,
        would: u64,
        limit: u64,
    },
    #[error(
        "upload of {size} bytes would take object storage to {would} bytes, over its total \
         quota of {limit} bytes"
    )]
    StoreFull { size: u64, would: u64, limit: u64 },
    #[error("bucket {bucket:?} is granted to function {function:?} read-only")]
    ReadOnly { function: String, bucket: String },
    #[error("object storage refused the caller: {0}")]
    Refused(#[from] Refused),
    #[error(
        "function {function:?} has {limit} object storage connections open, its limit; \
         try again later"
    )]
    Busy { function: String, limit: usize },
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
            Self::InvalidBucket { .. }
            | Self::InvalidKey { .. }
            | Self::InvalidPrefix { .. }
            | Self::InvalidFunction(_) => "invalid",
            Self::NoSuchBucket(_) | Self::NoSuchObject { .. } => "not_found",
            Self::TooLarge { .. } => "too_large",
            Self::Quota { .. } | Self::StoreFull { .. } => "quota",
            Self::ReadOnly { .. } | Self::Refused(_) => "denied",
            Self::Busy { .. } => "busy",
            Self::Conflict { .. } => "conflict",
            Self::Truncated { .. } | Self::Protocol(_) => "protocol",
            Self::Io { .. } => "internal",
        }
    }

    /// The message for function code: host paths stay on the host.
    pub(crate) fn client_message(&self) -> String {
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

/// Whose buckets: a function's name, as the registry allows it (so never `.tmp`, `..` or a
/// path).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Space(String);

impl Space {
    pub fn parse(function: &str) -> Result<Self, StorageError> {
        if !crate::function_config::is_valid_name(function) {
            return Err(StorageError::InvalidFunction(clip(function)));
        }
        Ok(Self(function.to_string()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// How much of a granted bucket a function may use.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Access {
    /// `list`, `download`.
    Read,
    /// Also `upload`.
    ReadWrite,
}

/// An operator's grant (`[[storage.grants]]`): `function` may use bucket `bucket` of function
/// `owner`, under that name. Uploads through it count against the owner's quota.
#[derive(Debug, Clone, PartialEq, Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields)]
pub struct Grant {
    /// The function granted access.
    pub function: String,
    /// The function whose bucket it is (its quota pays for writes).
    pub owner: String,
    /// The bucket's name.
    pub bucket: String,
    /// `"read"` (list, download) or `"read-write"` (also upload).
    pub access: Access,
}

/// Checks grants as a config is loaded: valid names, no self-grant, one grant per function
/// and bucket.
pub fn check_grants(grants: &[Grant]) -> Result<(), String> {
    let mut seen = std::collections::HashSet::new();
    for g in grants {
        for name in [&g.function, &g.owner] {
            Space::parse(name).map_err(|e| format!("storage.grants: {e}"))?;
        }
        Bucket::parse(&g.bucket).map_err(|e| format!("storage.grants: {e}"))?;
        if g.function == g.owner {
            return Err(format!(
                "storage.grants: function {:?} is granted its own bucket {:?}",
                g.function, g.bucket
            ));
        }
        if !seen.insert((&g.function, &g.bucket)) {
            return Err(format!(
                "storage.grants: function {:?} is granted bucket {:?} twice",
                g.function, g.bucket
            ));
        }
    }
    Ok(())
}

/// Where each function's calls on each bucket go.
struct Scopes {
    grants: HashMap<(String, String), (Space, Access)>,
}

impl Scopes {
    fn new(grants: &[Grant]) -> Result<Self, StorageError> {
        let mut map = HashMap::new();
        for g in grants {
            map.insert(
                (g.function.clone(), g.bucket.clone()),
                (Space::parse(&g.owner)?, g.access),
            );
        }
        Ok(Self { grants: map })
    }

    /// The space holding `function`'s bucket `bucket`: the owner's through a grant, else its
    /// own. Writing through a read-only grant is refused.
    fn resolve(&self, function: &str, bucket: &Bucket, write: bool) -> Result<Space, StorageError> {
        match self.grants.get(&(function.to_string(), bucket.0.clone())) {
            Some((_, Access::Read)) if write => Err(StorageError::ReadOnly {
                function: function.to_string(),
                bucket: bucket.0.clone(),
            }),
            Some((owner, _)) => Ok(owner.clone()),
            None => Space::parse(function),
        }
    }
}

/// A valid bucket name: 1 to 255 bytes of `[A-Za-z0-9._-]`, not starting with `.`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Bucket(String);

impl Bucket {
    pub fn parse(name: &str) -> Result<Self, StorageError> {
        let bad = |reason| {
            Err(StorageError::InvalidBucket {
                name: clip(name),
                reason,
            })
        };
        match name_problem(name) {
            Some(reason) => bad(reason),
            None => Ok(Self(name.to_string())),
        }
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// What is wrong with a bucket's (or a NoSQL table's) name, if anything: it must be 1 to 255
/// bytes of `[A-Za-z0-9._-]`, not starting with `.`.
pub(crate) fn name_problem(name: &str) -> Option<&'static str> {
    if name.is_empty() {
        Some("it is empty")
    } else if name.len() > MAX_NAME_BYTES {
        Some("it is longer than 255 bytes")
    } else if name.starts_with('.') {
        Some("it starts with `.`")
    } else if !name
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
    {
        Some("only letters, digits, `.`, `_` and `-` are allowed")
    } else {
        None
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
                key: clip(key),
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
                prefix: clip(prefix),
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

/// What an upload changed, as quotas count it (see [`quota::charge`]).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Stored {
    /// The new object, and the directories made for its key.
    pub added: u64,
    /// The object it replaced.
    pub released: u64,
}

/// Where objects live: buckets grouped by the function (space) that owns them. Calls are
/// blocking; the server runs them on blocking threads.
pub trait StorageBackend: Send + Sync {
    /// Stores exactly `size` bytes from `data` as `key`, replacing any object of that key.
    /// A partial upload leaves no object behind.
    fn put(
        &self,
        space: &Space,
        bucket: &Bucket,
        key: &Key,
        size: u64,
        data: &mut dyn Read,
    ) -> Result<Stored, StorageError>;

    /// Opens an object: its size and a reader of its bytes.
    fn get(
        &self,
        space: &Space,
        bucket: &Bucket,
        key: &Key,
    ) -> Result<(u64, Box<dyn Read + Send>), StorageError>;

    /// The keys of `bucket` that start with `prefix`, sorted.
    fn list(
        &self,
        space: &Space,
        bucket: &Bucket,
        prefix: &Prefix,
    ) -> Result<Vec<String>, StorageError>;

    /// What `space` holds, counted as quotas count it.
    fn usage(&self, space: &Space) -> Result<u64, StorageError>;

    /// The spaces that hold anything.
    fn spaces(&self) -> Result<Vec<Space>, StorageError>;

    /// The host directory holding the objects, for backends that have one.
    fn local_dir(&self) -> Option<&Path> {
        None
    }

    // What the S3 API needs beyond SeBS's calls ([`crate::s3`]).

    /// An object's size and modification time.
    fn stat(&self, space: &Space, bucket: &Bucket, key: &Key) -> Result<ObjectInfo, StorageError>;

    /// Opens an object at byte `offset`: its size and modification time, and a reader of its
    /// bytes from `offset` on (none if `offset` is past its end).
    fn open_at(
        &self,
        space: &Space,
        bucket: &Bucket,
        key: &Key,
        offset: u64,
    ) -> Result<(ObjectInfo, Box<dyn Read + Send>), StorageError>;

    /// Removes an object, and the directories of its key that this leaves empty (never the
    /// bucket). Returns what that freed, as quotas count it; a missing object frees nothing.
    fn delete(&self, space: &Space, bucket: &Bucket, key: &Key) -> Result<u64, StorageError>;

    /// The buckets of `space`, sorted by name (none if the space does not exist).
    fn buckets(&self, space: &Space) -> Result<Vec<Bucket>, StorageError>;

    /// When `space` was created, or `None` if it does not exist.
    fn space_created(&self, space: &Space) -> Result<Option<std::time::SystemTime>, StorageError>;

    /// Creates `space` with no buckets; false if it existed already.
    fn create_space(&self, space: &Space) -> Result<bool, StorageError>;

    /// Stores exactly `size` bytes from `data` as part `part` of multipart upload `upload`,
    /// replacing an earlier part of that number. Parts are kept in `space` (so its quota counts
    /// them) but outside every bucket, where no listing sees them.
    fn put_part(
        &self,
        space: &Space,
        upload: &UploadId,
        part: u32,
        size: u64,
        data: &mut dyn Read,
    ) -> Result<(ObjectInfo, Stored), StorageError>;

    /// Stores the concatenation of `parts` of `upload` as `key`, as [`StorageBackend::put`]
    /// does (the object appears whole or not at all). The parts stay until discarded.
    fn complete_upload(
        &self,
        space: &Space,
        upload: &UploadId,
        parts: &[u32],
        bucket: &Bucket,
        key: &Key,
    ) -> Result<Stored, StorageError>;

    /// Removes every part of `upload`; returns what that freed, as quotas count it.
    fn discard_upload(&self, space: &Space, upload: &UploadId) -> Result<u64, StorageError>;

    /// The uploads with parts in `space`, each with when a part was last stored.
    fn uploads(
        &self,
        space: &Space,
    ) -> Result<Vec<(UploadId, std::time::SystemTime)>, StorageError>;
}

/// An object's size and when it was last written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ObjectInfo {
    pub size: u64,
    pub modified: std::time::SystemTime,
}

/// A multipart upload's name: 16 to 64 lower-case hexadecimal digits, so that it is a safe
/// file name.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct UploadId(String);

impl UploadId {
    pub fn parse(id: &str) -> Option<Self> {
        let ok = (16..=64).contains(&id.len())
            && id
                .bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b));
        ok.then(|| Self(id.to_string()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// What an upload of `size` bytes as `key` may add at most: the object, its bucket's directory
/// and one directory per `/` of its key.
pub fn upload_charge(key: &Key, size: u64) -> u64 {
    let dirs = 1 + key.0.matches('/').count() as u64;
    charge(size).saturating_add(dirs * BLOCK)
}

/// Reserves `most` bytes in `space` for an upload of `size` bytes, or says which quota refuses
/// it.
pub fn reserve<'q>(
    quotas: &'q Quotas,
    backend: &dyn StorageBackend,
    space: &Space,
    size: u64,
    most: u64,
) -> Result<quota::Reservation<'q>, StorageError> {
    let usage = BackendUsage(backend);
    quotas
        .reserve(space.as_str(), most, &usage)
        .map_err(|over| match over {
            Exceeded::Function { would, limit } => StorageError::Quota {
                function: space.0.clone(),
                size,
                would,
                limit,
            },
            Exceeded::Store { would, limit } => StorageError::StoreFull { size, would, limit },
        })
}

/// A backend as the quotas see it.
struct BackendUsage<'a>(&'a dyn StorageBackend);

impl quota::Usage for BackendUsage<'_> {
    fn usage(&self, space: &str) -> Option<u64> {
        let counted = Space::parse(space).and_then(|s| self.0.usage(&s));
        counted
            .inspect_err(|e| tracing::warn!(space, "cannot count object storage: {e}"))
            .ok()
    }

    fn spaces(&self) -> Vec<String> {
        match self.0.spaces() {
            Ok(s) => s.into_iter().map(|s| s.0).collect(),
            Err(e) => {
                tracing::warn!("cannot list object storage: {e}");
                Vec::new()
            }
        }
    }
}

/// The default backend: `<dir>/<function>/<bucket>/<key>`, buckets as directories, keys as
/// relative paths. Buckets are created by their first upload. Uploads are written under
/// `<dir>/.tmp` and renamed into place, so readers never see a partial object.
pub struct DirectoryBackend {
    dir: PathBuf,
    tmp: PathBuf,
    counter: AtomicU64,
    /// Held while an upload replaces its key, so that two uploads of one key agree on which
    /// object each replaced.
    replacing: Mutex<()>,
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
            replacing: Mutex::new(()),
        })
    }

    fn bucket_dir(&self, space: &Space, bucket: &Bucket) -> PathBuf {
        self.dir.join(&space.0).join(&bucket.0)
    }

    /// Makes sure `path` is a directory, creating it if missing (then true). `key` is what it
    /// stands for, in `bucket_dir`.
    fn ensure_dir(
        &self,
        path: &Path,
        bucket_dir: &Path,
        bucket: &Bucket,
        key: &Key,
    ) -> Result<bool, StorageError> {
        match std::fs::metadata(path) {
            Ok(m) if m.is_dir() => Ok(false),
            Ok(_) => Err(StorageError::Conflict {
                bucket: bucket.0.clone(),
                key: key.0.clone(),
                existing: path
                    .strip_prefix(bucket_dir)
                    .unwrap_or(path)
                    .to_string_lossy()
                    .into_owned(),
            }),
            Err(e) if e.kind() == io::ErrorKind::NotFound => match std::fs::create_dir(path) {
                Ok(()) => Ok(true),
                // Created meanwhile by a concurrent upload.
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists && path.is_dir() => Ok(false),
                Err(e) => Err(io_at(path)(e)),
            },
            Err(e) => Err(io_at(path)(e)),
        }
    }

    fn write_tmp(&self, tmp: &Path, size: u64, data: &mut dyn Read) -> Result<(), StorageError> {
        let mut file = std::fs::File::create_new(tmp).map_err(io_at(tmp))?;
        let got = io::copy(&mut data.take(size), &mut file).map_err(io_at(tmp))?;
        if got != size {
            return Err(StorageError::Truncated { got, size });
        }
        Ok(())
    }

    /// Renames the finished upload onto `target`; returns the charge of the object replaced.
    fn replace(&self, tmp: &Path, target: &Path) -> Result<u64, StorageError> {
        let _one_at_a_time = self.replacing.lock();
        // A delete may have pruned the (then empty) directory meanwhile.
        if let Some(parent) = target.parent() {
            std::fs::create_dir_all(parent).map_err(io_at(parent))?;
        }
        let replaced = std::fs::symlink_metadata(target)
            .ok()
            .filter(|m| m.is_file())
            .map_or(0, |m| charge(m.len()));
        std::fs::rename(tmp, target).map_err(io_at(target))?;
        Ok(replaced)
    }
}

/// What a directory tree holds, counted as quotas count it: every file its charge, every
/// directory and link one block. Links are not followed.
fn tree_usage(dir: &Path) -> io::Result<u64> {
    let mut total = 0u64;
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let entries = match std::fs::read_dir(&d) {
            Ok(rd) => rd,
            Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
            Err(e) => return Err(e),
        };
        for entry in entries {
            let entry = entry?;
            let meta = entry.metadata()?;
            if meta.is_dir() {
                total = total.saturating_add(BLOCK);
                stack.push(entry.path());
            } else if meta.is_file() {
                total = total.saturating_add(charge(meta.len()));
            } else {
                total = total.saturating_add(BLOCK);
            }
        }
    }
    Ok(total)
}

impl StorageBackend for DirectoryBackend {
    fn put(
        &self,
        space: &Space,
        bucket: &Bucket,
        key: &Key,
        size: u64,
        data: &mut dyn Read,
    ) -> Result<Stored, StorageError> {
        let space_dir = self.dir.join(&space.0);
        if let Err(e) = std::fs::create_dir(&space_dir) {
            if e.kind() != io::ErrorKind::AlreadyExists {
                return Err(io_at(&space_dir)(e));
            }
        }
        let bucket_dir = self.bucket_dir(space, bucket);
        let mut made = 0u64;
        let mut parent = bucket_dir.clone();
        made += u64::from(self.ensure_dir(&parent, &bucket_dir, bucket, key)?);
        let (dirs, _) = key.0.rsplit_once('/').unwrap_or(("", &key.0));
        for c in dirs.split('/').filter(|c| !c.is_empty()) {
            parent.push(c);
            made += u64::from(self.ensure_dir(&parent, &bucket_dir, bucket, key)?);
        }
        let target = bucket_dir.join(&key.0);
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
            .and_then(|()| self.replace(&tmp, &target));
        match written {
            Ok(released) => Ok(Stored {
                added: charge(size) + made * BLOCK,
                released,
            }),
            Err(e) => {
                let _ = std::fs::remove_file(&tmp);
                Err(e)
            }
        }
    }

    fn get(
        &self,
        space: &Space,
        bucket: &Bucket,
        key: &Key,
    ) -> Result<(u64, Box<dyn Read + Send>), StorageError> {
        let (info, data) = self.open_at(space, bucket, key, 0)?;
        Ok((info.size, data))
    }

    fn list(
        &self,
        space: &Space,
        bucket: &Bucket,
        prefix: &Prefix,
    ) -> Result<Vec<String>, StorageError> {
        let bucket_dir = self.bucket_dir(space, bucket);
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

    fn usage(&self, space: &Space) -> Result<u64, StorageError> {
        let dir = self.dir.join(&space.0);
        tree_usage(&dir).map_err(io_at(&dir))
    }

    fn spaces(&self) -> Result<Vec<Space>, StorageError> {
        let entries = std::fs::read_dir(&self.dir).map_err(io_at(&self.dir))?;
        Ok(entries
            .flatten()
            .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
            .filter_map(|e| Space::parse(e.file_name().to_str()?).ok())
            .collect())
    }

    fn local_dir(&self) -> Option<&Path> {
        Some(&self.dir)
    }

    fn stat(&self, space: &Space, bucket: &Bucket, key: &Key) -> Result<ObjectInfo, StorageError> {
        self.open_object(space, bucket, key).map(|(_, info)| info)
    }

    fn open_at(
        &self,
        space: &Space,
        bucket: &Bucket,
        key: &Key,
        offset: u64,
    ) -> Result<(ObjectInfo, Box<dyn Read + Send>), StorageError> {
        use std::io::Seek;
        let (mut file, info) = self.open_object(space, bucket, key)?;
        let offset = offset.min(info.size);
        if offset > 0 {
            let path = self.bucket_dir(space, bucket).join(&key.0);
            file.seek(io::SeekFrom::Start(offset))
                .map_err(io_at(&path))?;
        }
        Ok((info, Box::new(file.take(info.size - offset))))
    }

    fn delete(&self, space: &Space, bucket: &Bucket, key: &Key) -> Result<u64, StorageError> {
        let bucket_dir = self.bucket_dir(space, bucket);
        let path = bucket_dir.join(&key.0);
        // Under the lock uploads take to rename into place, so that none lands in a directory
        // being pruned.
        let _one_at_a_time = self.replacing.lock();
        let freed = match std::fs::symlink_metadata(&path) {
            Ok(m) if m.is_dir() => return Ok(0),
            Ok(m) => match std::fs::remove_file(&path) {
                Ok(()) if m.is_file() => charge(m.len()),
                Ok(()) => BLOCK,
                Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(0),
                Err(e) => return Err(io_at(&path)(e)),
            },
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::NotFound | io::ErrorKind::NotADirectory
                ) =>
            {
                return Ok(0)
            }
            Err(e) => return Err(io_at(&path)(e)),
        };
        let mut pruned = 0u64;
        let mut dir = path.parent();
        while let Some(d) = dir.filter(|d| *d != bucket_dir && d.starts_with(&bucket_dir)) {
            if std::fs::remove_dir(d).is_err() {
                break;
            }
            pruned += 1;
            dir = d.parent();
        }
        Ok(freed + pruned * BLOCK)
    }

    fn buckets(&self, space: &Space) -> Result<Vec<Bucket>, StorageError> {
        let dir = self.dir.join(&space.0);
        let entries = match std::fs::read_dir(&dir) {
            Ok(rd) => rd,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(io_at(&dir)(e)),
        };
        let mut buckets: Vec<Bucket> = entries
            .flatten()
            .filter(|e| e.path().is_dir())
            .filter_map(|e| Bucket::parse(e.file_name().to_str()?).ok())
            .collect();
        buckets.sort_by(|a, b| a.0.cmp(&b.0));
        Ok(buckets)
    }

    fn space_created(&self, space: &Space) -> Result<Option<std::time::SystemTime>, StorageError> {
        let dir = self.dir.join(&space.0);
        match std::fs::metadata(&dir) {
            Ok(m) if m.is_dir() => Ok(m.created().or_else(|_| m.modified()).ok()),
            Ok(_) => Ok(None),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(io_at(&dir)(e)),
        }
    }

    fn create_space(&self, space: &Space) -> Result<bool, StorageError> {
        make_dir(&self.dir.join(&space.0))
    }

    fn put_part(
        &self,
        space: &Space,
        upload: &UploadId,
        part: u32,
        size: u64,
        data: &mut dyn Read,
    ) -> Result<(ObjectInfo, Stored), StorageError> {
        let space_dir = self.dir.join(&space.0);
        make_dir(&space_dir)?;
        let uploads = space_dir.join(UPLOADS_DIR);
        let dir = uploads.join(&upload.0);
        let made = u64::from(make_dir(&uploads)?) + u64::from(make_dir(&dir)?);
        let target = dir.join(format!("{part:05}"));
        let n = self.counter.fetch_add(1, Ordering::Relaxed);
        let tmp = self.tmp.join(format!("{}-{n}", std::process::id()));
        let written = self
            .write_tmp(&tmp, size, data)
            .and_then(|()| self.replace(&tmp, &target));
        let released = written.inspect_err(|_| {
            let _ = std::fs::remove_file(&tmp);
        })?;
        let meta = std::fs::metadata(&target).map_err(io_at(&target))?;
        let info = ObjectInfo {
            size: meta.len(),
            modified: meta.modified().map_err(io_at(&target))?,
        };
        let stored = Stored {
            added: charge(size) + made * BLOCK,
            released,
        };
        Ok((info, stored))
    }

    fn complete_upload(
        &self,
        space: &Space,
        upload: &UploadId,
        parts: &[u32],
        bucket: &Bucket,
        key: &Key,
    ) -> Result<Stored, StorageError> {
        let dir = self.dir.join(&space.0).join(UPLOADS_DIR).join(&upload.0);
        let mut files = Vec::with_capacity(parts.len());
        let mut total = 0u64;
        for part in parts {
            let path = dir.join(format!("{part:05}"));
            let file = std::fs::File::open(&path).map_err(io_at(&path))?;
            let len = file.metadata().map_err(io_at(&path))?.len();
            total = total.saturating_add(len);
            files.push(file.take(len));
        }
        let mut joined = Concat {
            current: None,
            rest: files.into_iter(),
        };
        self.put(space, bucket, key, total, &mut joined)
    }

    fn discard_upload(&self, space: &Space, upload: &UploadId) -> Result<u64, StorageError> {
        let uploads = self.dir.join(&space.0).join(UPLOADS_DIR);
        let dir = uploads.join(&upload.0);
        // Under the lock parts take to rename into place, so that none lands meanwhile.
        let _one_at_a_time = self.replacing.lock();
        let held = tree_usage(&dir).map_err(io_at(&dir))?;
        match std::fs::remove_dir_all(&dir) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(0),
            Err(e) => return Err(io_at(&dir)(e)),
        }
        let emptied = std::fs::remove_dir(&uploads).is_ok();
        Ok(held + BLOCK + u64::from(emptied) * BLOCK)
    }

    fn uploads(
        &self,
        space: &Space,
    ) -> Result<Vec<(UploadId, std::time::SystemTime)>, StorageError> {
        let dir = self.dir.join(&space.0).join(UPLOADS_DIR);
        let entries = match std::fs::read_dir(&dir) {
            Ok(rd) => rd,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(io_at(&dir)(e)),
        };
        Ok(entries
            .flatten()
            .filter_map(|e| {
                let id = UploadId::parse(e.file_name().to_str()?)?;
                let modified = e.metadata().and_then(|m| m.modified()).ok()?;
                Some((id, modified))
            })
            .collect())
    }
}

/// Where the directory backend keeps the parts of multipart uploads, in each space: a name no
/// bucket can have.
const UPLOADS_DIR: &str = ".uploads";

/// Creates directory `path` if missing; whether it did.
fn make_dir(path: &Path) -> Result<bool, StorageError> {
    match std::fs::create_dir(path) {
        Ok(()) => Ok(true),
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists && path.is_dir() => Ok(false),
        Err(e) => Err(io_at(path)(e)),
    }
}

/// The parts of an upload read one after the other.
struct Concat {
    current: Option<io::Take<std::fs::File>>,
    rest: std::vec::IntoIter<io::Take<std::fs::File>>,
}

impl Read for Concat {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        loop {
            if let Some(part) = &mut self.current {
                let n = part.read(buf)?;
                if n > 0 || buf.is_empty() {
                    return Ok(n);
                }
            }
            match self.rest.next() {
                Some(next) => self.current = Some(next),
                None => return Ok(0),
            }
        }
    }
}

impl DirectoryBackend {
    /// Opens an object's file: the file, and the object's size and modification time.
    fn open_object(
        &self,
        space: &Space,
        bucket: &Bucket,
        key: &Key,
    ) -> Result<(std::fs::File, ObjectInfo), StorageError> {
        let bucket_dir = self.bucket_dir(space, bucket);
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
        let modified = meta.modified().map_err(io_at(&path))?;
        let info = ObjectInfo {
            size: meta.len(),
            modified,
        };
        Ok((file, info))
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

/// Parses one request header (the payload of a frame).
pub(crate) fn parse_request(raw: &[u8]) -> Result<Request, StorageError> {
    serde_json::from_slice(raw).map_err(|e| StorageError::Protocol(clip(&e.to_string())))
}

/// Reads one request frame, without a blocking thread: a connection that sends nothing costs
/// the worker a descriptor and a little memory, until [`HEADER_TIMEOUT`].
async fn read_request(stream: &mut tokio::net::UnixStream) -> Result<Request, StorageError> {
    let raw = crate::frame::read_async(stream, MAX_HEADER_BYTES)
        .await
        .map_err(|e| match e {
            FrameError::TooLarge { len, max } => StorageError::Protocol(format!(
                "request header of {len} bytes is larger than {max}"
            )),
            FrameError::Io(e) => StorageError::Protocol(format!("cannot read the request: {e}")),
        })?;
    parse_request(&raw)
}

/// A reply header as a frame.
fn frame(value: &serde_json::Value) -> io::Result<Vec<u8>> {
    crate::frame::encode(value.to_string().as_bytes())
}

fn error_reply(e: &StorageError) -> serde_json::Value {
    serde_json::json!({"ok": false, "kind": e.kind(), "error": e.client_message()})
}

/// Object storage for functions (`[storage]`).
#[derive(Debug, Clone, PartialEq, Deserialize, serde::Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct StorageConfig {
    /// Serve it; when false, `import storage` calls fail.
    pub enabled: bool,
    /// The directory backend: `<dir>/<function>/<bucket>/<key>`, each function seeing only its
    /// own buckets (unset: `<root>/storage`). An absolute path.
    pub dir: Option<PathBuf>,
    /// Largest object one upload may store.
    pub max_object_bytes: u64,
    /// What one function's buckets may hold: an object counts its size rounded up to 4 KiB (at
    /// least 4 KiB), each directory a key creates 4 KiB; an upload past it fails, storing
    /// nothing (it must fit beside an object it replaces).
    pub max_function_bytes: u64,
    /// What the whole store may hold, every function together.
    pub max_total_bytes: u64,
    /// Storage connections open at once, all functions together (more wait in the socket's
    /// backlog).
    pub max_connections: usize,
    /// Connections one function may have open; more are refused at once as busy (the client
    /// retries for up to 10 s), so one function cannot keep another waiting.
    pub max_connections_per_function: usize,
    /// Buckets of other functions that a function may use (`[[storage.grants]]`, one table per
    /// grant; none by default).
    pub grants: Vec<Grant>,
}

impl Default for StorageConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            dir: None,
            max_object_bytes: 256 * 1024 * 1024,
            max_function_bytes: 1024 * 1024 * 1024,
            max_total_bytes: 16 * 1024 * 1024 * 1024,
            max_connections: 256,
            max_connections_per_function: 16,
            grants: Vec::new(),
        }
    }
}

/// Settings of the storage service.
#[derive(Debug, Clone)]
pub struct ServicePolicy {
    pub max_object_bytes: u64,
    pub max_function_bytes: u64,
    pub max_total_bytes: u64,
    pub max_connections: usize,
    pub max_connections_per_function: usize,
    pub grants: Vec<Grant>,
}

impl ServicePolicy {
    /// The policy `[storage]` sets.
    pub fn of(config: &StorageConfig) -> Self {
        Self {
            max_object_bytes: config.max_object_bytes,
            max_function_bytes: config.max_function_bytes,
            max_total_bytes: config.max_total_bytes,
            max_connections: config.max_connections,
            max_connections_per_function: config.max_connections_per_function,
            grants: config.grants.clone(),
        }
    }
}

/// Carries out calls: who may use which space, how much, how many at once.
struct Server {
    backend: Arc<dyn StorageBackend>,
    callers: Arc<dyn Callers>,
    scopes: Scopes,
    quotas: Arc<Quotas>,
    max_object_bytes: u64,
    per_function: usize,
    /// Open connections by function.
    open: Mutex<HashMap<String, usize>>,
}

/// One open connection of a function, counted against its limit until dropped.
struct Slot {
    server: Arc<Server>,
    function: String,
}

impl Drop for Slot {
    fn drop(&mut self) {
        let mut open = self.server.open.lock();
        if let Some(n) = open.get_mut(&self.function) {
            *n -= 1;
            if *n == 0 {
                open.remove(&self.function);
            }
        }
    }
}

impl Server {
    /// Counts a connection of `function`, unless it has its limit open already.
    fn open_slot(self: &Arc<Self>, function: &str) -> Result<Slot, StorageError> {
        let mut open = self.open.lock();
        let n = open.entry(function.to_string()).or_default();
        if *n >= self.per_function {
            return Err(StorageError::Busy {
                function: function.to_string(),
                limit: self.per_function,
            });
        }
        *n += 1;
        Ok(Slot {
            server: self.clone(),
            function: function.to_string(),
        })
    }

    /// Carries out one request of `function` (blocking).
    fn dispatch(
        &self,
        stream: &mut UnixStream,
        function: &str,
        request: Request,
    ) -> Result<Reply, StorageError> {
        match request {
            Request::Put { bucket, key, size } => {
                let bucket = Bucket::parse(&bucket)?;
                let key = Key::parse(&key)?;
                let space = self.scopes.resolve(function, &bucket, true)?;
                if size > self.max_object_bytes {
                    return Err(StorageError::TooLarge {
                        size,
                        limit: self.max_object_bytes,
                    });
                }
                let most = upload_charge(&key, size);
                let reservation = reserve(&self.quotas, self.backend.as_ref(), &space, size, most)?;
                let stored = self.backend.put(&space, &bucket, &key, size, stream)?;
                reservation.commit(stored.added, stored.released);
                Ok(Reply::Header(
                    serde_json::json!({"ok": true, "key": key.as_str()}),
                ))
            }
            Request::Get { bucket, key } => {
                let bucket = Bucket::parse(&bucket)?;
                let key = Key::parse(&key)?;
                let space = self.scopes.resolve(function, &bucket, false)?;
                let (size, data) = self.backend.get(&space, &bucket, &key)?;
                Ok(Reply::Object(size, data))
            }
            Request::List { bucket, prefix } => {
                let bucket = Bucket::parse(&bucket)?;
                let prefix = Prefix::parse(&prefix)?;
                let space = self.scopes.resolve(function, &bucket, false)?;
                let keys = self.backend.list(&space, &bucket, &prefix)?;
                Ok(Reply::Header(serde_json::json!({"ok": true, "keys": keys})))
            }
        }
    }

    /// Serves one request on a connection (blocking), replying with its result. The function's
    /// connection is counted until its reply is sent: the last bytes of a download, or before
    /// a reply that is only a header (so that a client calling again at once finds it free).
    fn serve(&self, mut stream: UnixStream, function: &str, request: Request, slot: Slot) {
        let setup = stream
            .set_nonblocking(false)
            .and_then(|()| stream.set_read_timeout(Some(IO_TIMEOUT)))
            .and_then(|()| stream.set_write_timeout(Some(IO_TIMEOUT)));
        if let Err(e) = setup {
            tracing::warn!("storage connection setup: {e}");
            return;
        }
        let sent = match self.dispatch(&mut stream, function, request) {
            Ok(Reply::Header(v)) => {
                drop(slot);
                frame(&v).and_then(|f| stream.write_all(&f))
            }
            Ok(Reply::Object(size, mut data)) => {
                frame(&serde_json::json!({"ok": true, "size": size}))
                    .and_then(|f| stream.write_all(&f))
                    .and_then(|()| {
                        // An object that shrank meanwhile ends the connection early; the client
                        // reports the short read.
                        io::copy(&mut data, &mut stream).map(|_| ())
                    })
            }
            Err(e) => {
                drop(slot);
                match &e {
                    StorageError::Io { path, source } => {
                        tracing::warn!(path = %path.display(), "storage call failed: {source}")
                    }
                    _ => tracing::debug!(function, "storage call refused: {e}"),
                }
                frame(&error_reply(&e)).and_then(|f| stream.write_all(&f))
            }
        };
        if let Err(e) = sent {
            tracing::debug!("storage client went away: {e}");
        }
    }
}

/// One connection: who calls (from the kernel), within its function's connection limit, its
/// request read without a thread, then carried out on a blocking thread.
async fn connection(server: Arc<Server>, mut stream: tokio::net::UnixStream) {
    let admitted = server
        .callers
        .function_of(stream.as_fd())
        .map_err(StorageError::from)
        .and_then(|function| Ok((server.open_slot(&function)?, function)));
    let (slot, function) = match admitted {
        Ok(a) => a,
        Err(e) => {
            tracing::debug!("storage connection refused: {e}");
            return refuse(stream, &e).await;
        }
    };
    let request = match tokio::time::timeout(HEADER_TIMEOUT, read_request(&mut stream)).await {
        Ok(Ok(r)) => r,
        Ok(Err(e)) => return refuse(stream, &e).await,
        Err(_) => return,
    };
    let stream = match stream.into_std() {
        Ok(s) => s,
        Err(e) => {
            tracing::warn!("storage connection: {e}");
            return;
        }
    };
    let _ = tokio::task::spawn_blocking(move || {
        let server = slot.server.clone();
        server.serve(stream, &function, request, slot);
    })
    .await;
}

/// Answers a connection that will not be served with its error, at once.
async fn refuse(mut stream: tokio::net::UnixStream, e: &StorageError) {
    use tokio::io::AsyncWriteExt;
    let Ok(reply) = frame(&error_reply(e)) else {
        return;
    };
    let _ = tokio::time::timeout(Duration::from_secs(1), stream.write_all(&reply)).await;
}

/// The running storage service: a thread with a small tokio runtime accepting connections on
/// the socket, each call served on a blocking thread. It has its own runtime because the worker
/// starts before the API's runtime exists, and storage I/O then never delays the API.
pub struct StorageService {
    backend: Arc<dyn StorageBackend>,
    quotas: Arc<Quotas>,
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
    /// Binds `<socket_dir>/storage.sock` (replacing a stale socket) and starts serving the
    /// functions `callers` names, as `policy` allows.
    pub fn start(
        socket_dir: &Path,
        backend: Arc<dyn StorageBackend>,
        callers: Arc<dyn Callers>,
        policy: ServicePolicy,
    ) -> Result<Self, ServiceError> {
        let listen_err = |path: &Path| {
            let path = path.to_path_buf();
            move |source| ServiceError::Listen { path, source }
        };
        std::fs::create_dir_all(socket_dir).map_err(listen_err(socket_dir))?;
        // Only root may reach the socket on the host; sandboxes get the socket file itself.
        std::fs::set_permissions(socket_dir, std::fs::Permissions::from_mode(0o700))
            .map_err(listen_err(socket_dir))?;
        let socket = socket_dir.join(SOCKET_NAME);
        if UnixStream::connect(&socket).is_ok() {
            return Err(ServiceError::InUse(socket));
        }
        match std::fs::remove_file(&socket) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => return Err(listen_err(&socket)(e)),
            _ => {}
        }
        let quotas = Arc::new(Quotas::new(
            policy.max_function_bytes,
            policy.max_total_bytes,
            RECOUNT_AFTER,
            &BackendUsage(backend.as_ref()),
        ));
        let server = Arc::new(Server {
            backend: backend.clone(),
            callers,
            scopes: Scopes::new(&policy.grants)?,
            quotas: quotas.clone(),
            max_object_bytes: policy.max_object_bytes,
            per_function: policy.max_connections_per_function.max(1),
            open: Mutex::new(HashMap::new()),
        });
        let listener = UnixListener::bind(&socket).map_err(listen_err(&socket))?;
        // Function code runs as an unprivileged user, and connect() needs write permission.
        std::fs::set_permissions(&socket, std::fs::Permissions::from_mode(0o666))
            .map_err(listen_err(&socket))?;
        listener
            .set_nonblocking(true)
            .map_err(listen_err(&socket))?;
        let max_connections = policy.max_connections.max(1);
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_io()
            .enable_time()
            .max_blocking_threads(max_connections)
            .thread_name("kindling-storage")
            .build()
            .map_err(listen_err(&socket))?;
        let (stop_tx, stop_rx) = tokio::sync::oneshot::channel();
        let thread = std::thread::Builder::new()
            .name("kindling-storage".into())
            .spawn(move || {
                runtime.block_on(crate::unix_service::accept_loop(
                    listener,
                    max_connections,
                    stop_rx,
                    "object storage",
                    |stream| connection(server.clone(), stream),
                ));
                runtime.shutdown_timeout(Duration::from_secs(5));
            })
            .map_err(listen_err(&socket))?;
        Ok(Self {
            backend,
            quotas,
            socket,
            stop: Mutex::new(Some(stop_tx)),
            thread: Mutex::new(Some(thread)),
        })
    }

    /// The socket's path on the host (bound into sandboxes).
    pub fn socket(&self) -> &Path {
        &self.socket
    }

    pub fn backend(&self) -> &Arc<dyn StorageBackend> {
        &self.backend
    }

    /// The quotas uploads are checked against, to share with other ways in (the S3 API).
    pub fn quotas(&self) -> &Arc<Quotas> {
        &self.quotas
    }

    /// Stops accepting calls, waits a little for calls in progress, removes the socket.
    pub fn stop(&self) {
        let stop = self.stop.lock().take();
        if let Some(tx) = stop {
            let _ = tx.send(());
        }
        let thread = self.thread.lock().take();
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
/// socket in `<root>/storage-socket`, serving the functions `callers` names. None when storage
/// is disabled.
pub fn start_configured(
    config: &StorageConfig,
    storage_dir: &Path,
    root: &Path,
    callers: Arc<dyn Callers>,
) -> Result<Option<StorageService>, ServiceError> {
    if !config.enabled {
        return Ok(None);
    }
    let backend = Arc::new(DirectoryBackend::open(storage_dir)?);
    let service = StorageService::start(
        &root.join(SOCKET_DIR),
        backend,
        callers,
        ServicePolicy::of(config),
    )?;
    tracing::info!(
        dir = %storage_dir.display(),
        socket = %service.socket().display(),
        "object storage ready"
    );
    Ok(Some(service))
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

    fn sp() -> Space {
        Space::parse("fn").unwrap()
    }

    fn put(backend: &DirectoryBackend, bucket: &str, key: &str, data: &[u8]) -> Stored {
        backend
            .put(
                &sp(),
                &b(bucket),
                &k(key),
                data.len() as u64,
                &mut &data[..],
            )
            .unwrap()
    }

    fn get(backend: &DirectoryBackend, bucket: &str, key: &str) -> Result<Vec<u8>, StorageError> {
        let (size, mut r) = backend.get(&sp(), &b(bucket), &k(key))?;
        let mut out = Vec::new();
        r.read_to_end(&mut out).unwrap();
        assert_eq!(out.len() as u64, size);
        Ok(out)
    }

    #[test]
    fn directory_backend_round_trip() {
        let tmp = tempfile::tempdir().unwrap();
        let backend = DirectoryBackend::open(tmp.path()).unwrap();
        // A new object counts its blocks and the directories made for it: bkt/ and dir/.
        assert_eq!(
            put(&backend, "bkt", "dir/a.txt", b"alpha"),
            Stored {
                added: 3 * BLOCK,
                released: 0
            }
        );
        put(&backend, "bkt", "dir/sub/b.bin", &[0, 1, 2]);
        put(&backend, "bkt", "top", b"");
        // Replacing releases the old object.
        assert_eq!(
            put(&backend, "bkt", "dir/a.txt", &[7; 5000]),
            Stored {
                added: 2 * BLOCK,
                released: BLOCK
            }
        );
        assert_eq!(
            std::fs::read(tmp.path().join("fn/bkt/dir/a.txt")).unwrap(),
            [7; 5000]
        );
        assert_eq!(get(&backend, "bkt", "dir/sub/b.bin").unwrap(), [0, 1, 2]);
        assert_eq!(get(&backend, "bkt", "top").unwrap(), b"");
        // Written on the host, as run_local.py does.
        std::fs::write(tmp.path().join("fn/bkt/host.txt"), b"host").unwrap();
        assert_eq!(get(&backend, "bkt", "host.txt").unwrap(), b"host");
        // Usage as quotas count it: 4 objects (a.txt 2 blocks) and the dirs bkt, dir, sub.
        assert_eq!(backend.usage(&sp()).unwrap(), (5 + 3) * BLOCK);
        assert_eq!(backend.spaces().unwrap(), [sp()]);
        // Another function's bucket of the same name is another bucket.
        let other = Space::parse("other").unwrap();
        assert!(matches!(
            backend.get(&other, &b("bkt"), &k("top")),
            Err(StorageError::NoSuchBucket(_))
        ));

        let list = |prefix: &str| backend.list(&sp(), &b("bkt"), &p(prefix)).unwrap();
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
            backend.list(&sp(), &b("nob"), &p("")),
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
            .put(&sp(), &b("bkt"), &k("a"), 1, &mut &b"y"[..])
            .unwrap_err();
        assert_eq!(err.kind(), "conflict", "{err}");
        let err = backend
            .put(&sp(), &b("bkt"), &k("a/b/c"), 1, &mut &b"y"[..])
            .unwrap_err();
        assert!(
            matches!(&err, StorageError::Conflict { existing, .. } if existing == "a/b"),
            "{err}"
        );
        // A short upload leaves nothing behind and keeps the old object.
        let err = backend
            .put(&sp(), &b("bkt"), &k("a/b"), 10, &mut &b"abc"[..])
            .unwrap_err();
        assert!(matches!(err, StorageError::Truncated { got: 3, size: 10 }));
        assert_eq!(get(&backend, "bkt", "a/b").unwrap(), b"x");
        assert_eq!(
            std::fs::read_dir(tmp.path().join(TMP_DIR)).unwrap().count(),
            0
        );
    }

    /// Callers as a test sets them: every connection acts for the function named last.
    struct Acting(Mutex<Option<String>>);

    impl Callers for Acting {
        fn function_of(&self, _peer: std::os::fd::BorrowedFd<'_>) -> Result<String, Refused> {
            self.0.lock().clone().ok_or(Refused::NotASandbox)
        }
    }

    fn policy() -> ServicePolicy {
        ServicePolicy {
            max_object_bytes: 1 << 20,
            max_function_bytes: 64 * BLOCK,
            max_total_bytes: 1 << 30,
            max_connections: 8,
            max_connections_per_function: 4,
            grants: vec![
                Grant {
                    function: "reader".into(),
                    owner: "alpha".into(),
                    bucket: "pub".into(),
                    access: Access::Read,
                },
                Grant {
                    function: "writer".into(),
                    owner: "alpha".into(),
                    bucket: "pub".into(),
                    access: Access::ReadWrite,
                },
            ],
        }
    }

    struct Fixture {
        _tmp: tempfile::TempDir,
        dir: PathBuf,
        service: StorageService,
        acting: Arc<Acting>,
    }

    impl Fixture {
        fn new(policy: ServicePolicy) -> Self {
            let tmp = tempfile::tempdir().unwrap();
            let dir = tmp.path().join("storage");
            let backend = Arc::new(DirectoryBackend::open(&dir).unwrap());
            let acting = Arc::new(Acting(Mutex::new(None)));
            let service = StorageService::start(
                &tmp.path().join(SOCKET_DIR),
                backend,
                acting.clone(),
                policy,
            )
            .unwrap();
            Self {
                _tmp: tmp,
                dir,
                service,
                acting,
            }
        }

        /// One call as `function` (None: a caller that is no function's).
        fn call(
            &self,
            function: Option<&str>,
            header: serde_json::Value,
            body: &[u8],
        ) -> (serde_json::Value, Vec<u8>) {
            *self.acting.0.lock() = function.map(str::to_string);
            call(self.service.socket(), header, body)
        }
    }

    /// A client speaking the socket protocol, as storage.py does.
    fn call(sock: &Path, header: serde_json::Value, body: &[u8]) -> (serde_json::Value, Vec<u8>) {
        let mut s = UnixStream::connect(sock).unwrap();
        let raw = serde_json::to_vec(&header).unwrap();
        let mut frame = (raw.len() as u32).to_be_bytes().to_vec();
        frame.extend_from_slice(&raw);
        // The worker may refuse (and close) before reading the request or the body.
        let _ = s.write_all(&frame);
        let _ = s.write_all(body);
        let mut head = [0u8; 4];
        s.read_exact(&mut head).unwrap();
        let mut raw = vec![0u8; u32::from_be_bytes(head) as usize];
        s.read_exact(&mut raw).unwrap();
        let mut rest = Vec::new();
        // A refusal closes the connection with the request's bytes unread, which the kernel
        // reports to this end as a reset once the reply is read.
        match s.read_to_end(&mut rest) {
            Err(e) if e.kind() == io::ErrorKind::ConnectionReset => {}
            r => {
                r.unwrap();
            }
        }
        (serde_json::from_slice(&raw).unwrap(), rest)
    }

    #[test]
    fn service_over_the_socket() {
        let f = Fixture::new(policy());
        let sock = f.service.socket().to_path_buf();
        let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode(&sock), 0o666);
        assert_eq!(mode(sock.parent().unwrap()), 0o700);
        // A second service on the same socket is refused.
        assert!(matches!(
            StorageService::start(
                sock.parent().unwrap(),
                Arc::new(DirectoryBackend::open(&f.dir.join("s2")).unwrap()),
                f.acting.clone(),
                policy(),
            ),
            Err(ServiceError::InUse(_))
        ));
        let alpha = Some("alpha");
        let (r, _) = f.call(
            alpha,
            serde_json::json!({"op": "put", "bucket": "bk", "key": "d/x", "size": 3}),
            b"abc",
        );
        assert_eq!(r, serde_json::json!({"ok": true, "key": "d/x"}));
        assert_eq!(std::fs::read(f.dir.join("alpha/bk/d/x")).unwrap(), b"abc");
        let (r, body) = f.call(
            alpha,
            serde_json::json!({"op": "get", "bucket": "bk", "key": "d/x"}),
            b"",
        );
        assert_eq!(
            (r["size"].as_u64(), body.as_slice()),
            (Some(3), &b"abc"[..])
        );
        let (r, _) = f.call(
            alpha,
            serde_json::json!({"op": "list", "bucket": "bk"}),
            b"",
        );
        assert_eq!(r["keys"], serde_json::json!(["d/x"]));
        let (r, _) = f.call(
            alpha,
            serde_json::json!({"op": "get", "bucket": "bk", "key": "../../etc/passwd"}),
            b"",
        );
        assert_eq!(r["ok"], false);
        assert_eq!(r["kind"], "invalid");
        // An echoed name is cut short.
        let long = "k/".repeat(600);
        let (r, _) = f.call(
            alpha,
            serde_json::json!({"op": "list", "bucket": "bk", "prefix": long}),
            b"",
        );
        assert!(r["error"].as_str().unwrap().len() < 400, "{r}");
        // Too large: refused before the body is read, and the reply still arrives.
        let big = vec![7u8; 4 << 20];
        let (r, _) = f.call(
            alpha,
            serde_json::json!({"op": "put", "bucket": "bk", "key": "big", "size": big.len()}),
            &big,
        );
        assert_eq!(r["kind"], "too_large", "{r}");
        assert!(!f.dir.join("alpha/bk/big").exists());
        let (r, _) = f.call(alpha, serde_json::json!({"op": "delete"}), b"");
        assert_eq!(r["kind"], "protocol");
        // A caller that is no function's instance is refused before its request is read.
        let (r, _) = f.call(None, serde_json::json!({"op": "list", "bucket": "bk"}), b"");
        assert_eq!(r["kind"], "denied", "{r}");
        f.service.stop();
        assert!(!sock.exists());
    }

    #[test]
    fn functions_see_their_own_buckets_and_granted_ones() {
        let f = Fixture::new(policy());
        let put = |who, bucket: &str, key: &str, data: &[u8]| {
            f.call(
                Some(who),
                serde_json::json!({"op": "put", "bucket": bucket, "key": key, "size": data.len()}),
                data,
            )
            .0
        };
        let get = |who, bucket: &str, key: &str| {
            f.call(
                Some(who),
                serde_json::json!({"op": "get", "bucket": bucket, "key": key}),
                b"",
            )
        };
        assert_eq!(put("alpha", "priv", "s", b"A")["ok"], true);
        assert_eq!(put("alpha", "pub", "p", b"P")["ok"], true);
        // Beta's bucket of the same name is its own: alpha's object is not in it, and writing
        // it leaves alpha's alone.
        assert_eq!(get("beta", "priv", "s").0["kind"], "not_found");
        assert_eq!(put("beta", "priv", "s", b"B")["ok"], true);
        assert_eq!(get("alpha", "priv", "s").1, b"A");
        assert_eq!(get("beta", "priv", "s").1, b"B");
        // Granted read-only: lists and reads alpha's bucket, cannot write it.
        assert_eq!(get("reader", "pub", "p").1, b"P");
        let r = put("reader", "pub", "p", b"X");
        assert_eq!(r["kind"], "denied", "{r}");
        assert_eq!(
            r["error"],
            r#"bucket "pub" is granted to function "reader" read-only"#
        );
        // Granted read-write: its writes land in alpha's bucket.
        assert_eq!(put("writer", "pub", "w", b"W")["ok"], true);
        assert_eq!(std::fs::read(f.dir.join("alpha/pub/w")).unwrap(), b"W");
        // The grant covers that bucket only.
        assert_eq!(get("reader", "priv", "s").0["kind"], "not_found");
    }

    #[test]
    fn quota_refuses_an_upload_before_writing_it() {
        let f = Fixture::new(policy());
        // 64 blocks per function: 40 blocks fit (plus the bucket's directory)...
        let data = vec![1u8; 40 * BLOCK as usize];
        let put = |who, key: &str, data: &[u8]| {
            f.call(
                Some(who),
                serde_json::json!({"op": "put", "bucket": "b", "key": key, "size": data.len()}),
                data,
            )
            .0
        };
        assert_eq!(put("alpha", "one", &data)["ok"], true);
        // ...40 more do not: refused with the numbers, and nothing of it is stored.
        let r = put("alpha", "two", &data);
        assert_eq!(r["kind"], "quota", "{r}");
        assert_eq!(
            r["error"],
            format!(
                "upload of {} bytes would take the buckets of function \"alpha\" to {} bytes, \
                 over its quota of {} bytes",
                data.len(),
                82 * BLOCK,
                64 * BLOCK
            )
        );
        assert!(!f.dir.join("alpha/b/two").exists());
        assert_eq!(std::fs::read_dir(f.dir.join(TMP_DIR)).unwrap().count(), 0);
        // An upload must fit beside the object it replaces (both are on disk until it is
        // stored); a small one does, and replacing it frees what the old one took.
        assert_eq!(put("alpha", "one", &data)["kind"], "quota");
        assert_eq!(put("alpha", "small", &[2u8; 100])["ok"], true);
        assert_eq!(put("alpha", "small", &[3u8; 200])["ok"], true);
        assert_eq!(
            std::fs::read(f.dir.join("alpha/b/small")).unwrap(),
            [3u8; 200]
        );
        // Another function is unaffected.
        assert_eq!(put("beta", "two", &data)["ok"], true);
        // Writes through a grant count against the owner.
        let r = f
            .call(
                Some("writer"),
                serde_json::json!({"op": "put", "bucket": "pub", "key": "w", "size": data.len()}),
                &data,
            )
            .0;
        assert_eq!(r["kind"], "quota", "{r}");
    }

    #[test]
    fn total_quota_covers_every_function() {
        let f = Fixture::new(ServicePolicy {
            max_total_bytes: 20 * BLOCK,
            ..policy()
        });
        let data = vec![1u8; 8 * BLOCK as usize];
        let put = |who, data: &[u8]| {
            f.call(
                Some(who),
                serde_json::json!({"op": "put", "bucket": "b", "key": "k", "size": data.len()}),
                data,
            )
            .0
        };
        assert_eq!(put("alpha", &data)["ok"], true);
        assert_eq!(put("beta", &data)["ok"], true);
        let r = put("gamma", &data);
        assert_eq!(r["kind"], "quota", "{r}");
        assert!(r["error"]
            .as_str()
            .unwrap()
            .contains("over its total quota of 81920 bytes"));
    }

    #[test]
    fn one_function_at_its_connection_limit_does_not_hold_up_another() {
        let f = Fixture::new(ServicePolicy {
            max_connections_per_function: 2,
            ..policy()
        });
        *f.acting.0.lock() = Some("alpha".into());
        // Alpha holds its two connections open without sending anything.
        let idle: Vec<UnixStream> = (0..2)
            .map(|_| UnixStream::connect(f.service.socket()).unwrap())
            .collect();
        std::thread::sleep(Duration::from_millis(100));
        // A third is refused at once, as busy.
        let (r, _) = call(
            f.service.socket(),
            serde_json::json!({"op": "list", "bucket": "b"}),
            b"",
        );
        assert_eq!(r["kind"], "busy", "{r}");
        // Beta is served meanwhile.
        let t = std::time::Instant::now();
        let (r, _) = f.call(
            Some("beta"),
            serde_json::json!({"op": "list", "bucket": "b"}),
            b"",
        );
        assert_eq!(r["kind"], "not_found", "{r}");
        assert!(t.elapsed() < Duration::from_secs(1));
        // Once alpha lets go, it is served again.
        drop(idle);
        std::thread::sleep(Duration::from_millis(100));
        let (r, _) = f.call(
            Some("alpha"),
            serde_json::json!({"op": "list", "bucket": "b"}),
            b"",
        );
        assert_eq!(r["kind"], "not_found", "{r}");
    }

    #[test]
    fn grants_are_checked() {
        let g = |function: &str, owner: &str, bucket: &str| Grant {
            function: function.into(),
            owner: owner.into(),
            bucket: bucket.into(),
            access: Access::Read,
        };
        assert!(check_grants(&[g("a", "b", "x"), g("a", "b", "y"), g("c", "b", "x")]).is_ok());
        assert!(check_grants(&[g("a", "a", "x")]).is_err());
        assert!(check_grants(&[g("a", "b", "x"), g("a", "c", "x")]).is_err());
        assert!(check_grants(&[g("a", "../b", "x")]).is_err());
        assert!(check_grants(&[g("a", "b", ".tmp")]).is_err());
    }

    #[test]
    fn directory_backend_serves_what_the_s3_api_needs() {
        let tmp = tempfile::tempdir().unwrap();
        let backend = DirectoryBackend::open(tmp.path()).unwrap();
        let other = Space::parse("other").unwrap();
        assert_eq!(backend.space_created(&sp()).unwrap(), None);
        assert!(backend.create_space(&sp()).unwrap());
        assert!(!backend.create_space(&sp()).unwrap());
        assert!(backend.space_created(&sp()).unwrap().is_some());
        assert!(backend.buckets(&other).unwrap().is_empty());
        put(&backend, "zeta", "a/b/c", b"0123456789");
        put(&backend, "alpha", "x", b"");
        assert_eq!(backend.buckets(&sp()).unwrap(), [b("alpha"), b("zeta")]);
        // Stat and reads from an offset.
        let info = backend.stat(&sp(), &b("zeta"), &k("a/b/c")).unwrap();
        assert_eq!(info.size, 10);
        let (at, mut r) = backend.open_at(&sp(), &b("zeta"), &k("a/b/c"), 4).unwrap();
        assert_eq!(at, info);
        let mut rest = Vec::new();
        r.read_to_end(&mut rest).unwrap();
        assert_eq!(rest, b"456789");
        let (_, mut r) = backend.open_at(&sp(), &b("zeta"), &k("a/b/c"), 99).unwrap();
        assert_eq!(r.read(&mut [0u8; 4]).unwrap(), 0);
        assert!(matches!(
            backend.stat(&sp(), &b("zeta"), &k("a/b")),
            Err(StorageError::NoSuchObject { .. })
        ));
        // Delete frees the object and the directories it leaves empty, as usage counts them.
        let before = backend.usage(&sp()).unwrap();
        let freed = backend.delete(&sp(), &b("zeta"), &k("a/b/c")).unwrap();
        assert_eq!(freed, BLOCK + 2 * BLOCK);
        assert_eq!(backend.usage(&sp()).unwrap(), before - freed);
        assert!(tmp.path().join("fn/zeta").is_dir());
        assert_eq!(backend.delete(&sp(), &b("zeta"), &k("a/b/c")).unwrap(), 0);
        assert_eq!(backend.delete(&sp(), &b("nob"), &k("x")).unwrap(), 0);
        // A directory is no object to delete.
        put(&backend, "zeta", "d/e", b"e");
        assert_eq!(backend.delete(&sp(), &b("zeta"), &k("d")).unwrap(), 0);

        // Multipart: parts counted in the space, in no bucket, joined in the order given.
        let up = UploadId::parse("0123456789abcdef").unwrap();
        assert!(UploadId::parse("0123456789abcde").is_none());
        assert!(UploadId::parse("../0123456789abcdef").is_none());
        assert!(UploadId::parse("0123456789ABCDEF").is_none());
        let before = backend.usage(&sp()).unwrap();
        let (i1, s1) = backend
            .put_part(&sp(), &up, 1, 3, &mut &b"one"[..])
            .unwrap();
        assert_eq!((i1.size, s1.added, s1.released), (3, 3 * BLOCK, 0));
        let (_, s2) = backend
            .put_part(&sp(), &up, 2, 3, &mut &b"two"[..])
            .unwrap();
        assert_eq!(s2.added, BLOCK);
        let (_, again) = backend
            .put_part(&sp(), &up, 2, 3, &mut &b"TWO"[..])
            .unwrap();
        assert_eq!(again.released, BLOCK);
        assert_eq!(backend.usage(&sp()).unwrap(), before + 4 * BLOCK);
        assert_eq!(backend.buckets(&sp()).unwrap(), [b("alpha"), b("zeta")]);
        assert_eq!(backend.uploads(&sp()).unwrap()[0].0, up);
        let stored = backend
            .complete_upload(&sp(), &up, &[2, 1], &b("alpha"), &k("joined"))
            .unwrap();
        assert_eq!(stored.added, BLOCK);
        assert_eq!(get(&backend, "alpha", "joined").unwrap(), b"TWOone");
        assert_eq!(backend.discard_upload(&sp(), &up).unwrap(), 4 * BLOCK);
        assert!(backend.uploads(&sp()).unwrap().is_empty());
        assert_eq!(backend.discard_upload(&sp(), &up).unwrap(), 0);
        assert_eq!(backend.usage(&sp()).unwrap(), before + BLOCK);
    }
}
