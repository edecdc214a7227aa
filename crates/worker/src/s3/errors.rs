//! Storage errors as S3 errors: one mapping, so that every operation answers a failure the
//! same way. Messages are the storage service's (names cut short, no host paths).

use crate::storage::StorageError;
use s3s::{s3_error, S3Error, S3ErrorCode};

/// The code of an upload over its function's quota (as Ceph's S3 gateway answers it, 403).
pub(crate) const QUOTA_EXCEEDED: &str = "QuotaExceeded";
/// The code of an upload over the whole store's quota (as MinIO answers a full store, 507).
pub(crate) const STORE_FULL: &str = "XMinioStorageFull";

/// An error with a code S3 does not define, and its status.
fn custom(code: &str, status: hyper::StatusCode, message: String) -> S3Error {
    let code: S3ErrorCode = match code.parse() {
        Ok(c) => c,
        Err(never) => match never {},
    };
    let mut e = S3Error::with_message(code, message);
    e.set_status_code(status);
    e
}

/// `e` as an S3 error.
pub(crate) fn storage(e: StorageError) -> S3Error {
    let message = e.client_message();
    match e {
        StorageError::InvalidBucket { .. }
        | StorageError::InvalidKey { .. }
        | StorageError::InvalidPrefix { .. } => s3_error!(InvalidArgument, "{message}"),
        StorageError::InvalidFunction(_) => s3_error!(InvalidBucketName, "{message}"),
        // The function's bucket is missing: so is every key in it.
        StorageError::NoSuchBucket(_) | StorageError::NoSuchObject { .. } => {
            s3_error!(NoSuchKey, "{message}")
        }
        StorageError::TooLarge { .. } => s3_error!(EntityTooLarge, "{message}"),
        StorageError::Quota { .. } => custom(QUOTA_EXCEEDED, hyper::StatusCode::FORBIDDEN, message),
        StorageError::StoreFull { .. } => {
            custom(STORE_FULL, hyper::StatusCode::INSUFFICIENT_STORAGE, message)
        }
        StorageError::ReadOnly { .. } | StorageError::Refused(_) => {
            s3_error!(AccessDenied, "{message}")
        }
        StorageError::Busy { .. } => s3_error!(SlowDown, "{message}"),
        // As MinIO, whose file system mode has the same rule: a key cannot be both an object
        // and a prefix of other keys.
        StorageError::Conflict {
            ref key,
            ref existing,
            ..
        } if *existing == format!("{key}/") => custom(
            "XMinioObjectExistsAsDirectory",
            hyper::StatusCode::CONFLICT,
            message,
        ),
        StorageError::Conflict { .. } => custom(
            "XMinioParentIsObject",
            hyper::StatusCode::BAD_REQUEST,
            message,
        ),
        StorageError::Truncated { .. } => s3_error!(IncompleteBody, "{message}"),
        StorageError::Protocol(_) => s3_error!(InvalidRequest, "{message}"),
        StorageError::Io {
            ref path,
            ref source,
        } => {
            tracing::warn!(path = %path.display(), "S3 request failed: {source}");
            s3_error!(InternalError, "{message}")
        }
    }
}

/// A task that could not finish (a panic, or the runtime stopping).
pub(crate) fn task(e: tokio::task::JoinError) -> S3Error {
    tracing::error!("S3 request task failed: {e}");
    s3_error!(InternalError, "the request could not be completed")
}
