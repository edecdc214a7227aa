//! The API's errors on the wire: one [`ErrorKind`] per failure a caller can tell apart, each with
//! its HTTP status and its `X-Kindling-Error` value. This is the one place where a failure gets
//! its status; the worker's error types convert into a kind.

use crate::StatusCode;

/// The `X-Kindling-Error` header of an error reply.
pub const ERROR_HEADER: &str = "x-kindling-error";

macro_rules! error_kinds {
    ($( $(#[$doc:meta])* $variant:ident = ($status:ident, $name:literal), )*) => {
        /// What went wrong, as a caller can act on it.
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
        pub enum ErrorKind {
            $( $(#[$doc])* $variant, )*
        }

        impl ErrorKind {
            /// Every kind.
            pub const ALL: &'static [ErrorKind] = &[$(ErrorKind::$variant),*];

            /// The reply's HTTP status.
            pub fn status(self) -> StatusCode {
                match self {
                    $( ErrorKind::$variant => StatusCode::$status, )*
                }
            }

            /// The `X-Kindling-Error` value (and the `errors.<kind>` counter's suffix).
            pub fn as_str(self) -> &'static str {
                match self {
                    $( ErrorKind::$variant => $name, )*
                }
            }
        }
    };
}

error_kinds! {
    /// A function name that is not valid (or `/run` without exactly one name).
    InvalidName = (BAD_REQUEST, "invalid-name"),
    /// A method the path (or the function's config) does not take.
    Method = (METHOD_NOT_ALLOWED, "method"),
    /// No such endpoint, function, package or log.
    NotFound = (NOT_FOUND, "not-found"),
    /// No or a wrong admin token.
    Unauthorized = (UNAUTHORIZED, "unauthorized"),
    /// A request body over its limit.
    TooLarge = (PAYLOAD_TOO_LARGE, "too-large"),
    /// A request body that sent nothing for too long.
    BodyTimeout = (REQUEST_TIMEOUT, "body-timeout"),
    /// A request body that could not be read.
    Body = (BAD_REQUEST, "body"),
    /// An unknown `X-Kindling-Start`.
    StartMethod = (BAD_REQUEST, "start-method"),
    /// An event that is not JSON.
    MalformedJson = (BAD_REQUEST, "malformed-json"),
    /// The function's queue is full, or every sandbox the worker may have is busy.
    Busy = (TOO_MANY_REQUESTS, "busy"),
    /// Over the worker's connection caps (written by the server loop before any request).
    TooManyConnections = (SERVICE_UNAVAILABLE, "busy"),
    /// The worker is draining: it takes no new work.
    ShuttingDown = (SERVICE_UNAVAILABLE, "shutting-down"),
    /// A sandbox could not be made or set up.
    Sandbox = (INTERNAL_SERVER_ERROR, "sandbox"),
    /// The handler raised; the body is its traceback.
    Exception = (INTERNAL_SERVER_ERROR, "exception"),
    /// The handler ran past its timeout.
    Timeout = (GATEWAY_TIMEOUT, "timeout"),
    /// The instance hit its memory limit.
    OutOfMemory = (INTERNAL_SERVER_ERROR, "out-of-memory"),
    /// The instance died or broke its protocol.
    InstanceDied = (BAD_GATEWAY, "instance-died"),
    /// A package key that is not `<name>==<version>`.
    InvalidPackage = (BAD_REQUEST, "invalid-package"),
    /// A package that deployed functions use.
    InUse = (CONFLICT, "in-use"),
    /// The package store failed.
    Packages = (INTERNAL_SERVER_ERROR, "packages"),
    /// The function registry failed.
    Registry = (INTERNAL_SERVER_ERROR, "registry"),
    /// Function logs could not be read.
    Logs = (INTERNAL_SERVER_ERROR, "logs"),
    /// A `tail` that is not a number of lines within the bound.
    InvalidTail = (BAD_REQUEST, "invalid-tail"),
    /// A NoSQL table name, key or item that is not valid, or key names not the table's.
    NosqlInvalid = (BAD_REQUEST, "nosql-invalid"),
    /// The function has no NoSQL table of that name.
    NoSuchTable = (NOT_FOUND, "no-such-table"),
    /// A NoSQL table declared with other keys that holds items.
    NosqlConflict = (CONFLICT, "nosql-conflict"),
    /// The function's (or the store's) NoSQL items, bytes or tables would pass their limit.
    NosqlQuota = (INSUFFICIENT_STORAGE, "nosql-quota"),
    /// NoSQL is off (`[nosql] enabled = false`).
    NosqlDisabled = (SERVICE_UNAVAILABLE, "nosql-disabled"),
    /// The NoSQL database failed.
    Nosql = (INTERNAL_SERVER_ERROR, "nosql"),
    /// A reply the worker could not write (a bug).
    Internal = (INTERNAL_SERVER_ERROR, "internal"),
    /// A deploy refused for what was uploaded (archive, config, requirements); the reply is a
    /// JSON `{"error"}`, without `X-Kindling-Error`.
    DeployRejected = (BAD_REQUEST, "deploy"),
    /// A deploy that failed on the worker's side (disk, installer, a missing `uv`); the reply
    /// is a JSON `{"error"}`, without `X-Kindling-Error`.
    DeployFailed = (INTERNAL_SERVER_ERROR, "deploy"),
}

impl ErrorKind {
    /// The kind of an error reply, from its status and `X-Kindling-Error` value.
    pub fn parse(status: StatusCode, name: &str) -> Option<ErrorKind> {
        ErrorKind::ALL
            .iter()
            .copied()
            .find(|k| k.status() == status && k.as_str() == name)
    }
}

impl std::fmt::Display for ErrorKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// An error reply: its kind and the message (the body, plain text).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiError {
    pub kind: ErrorKind,
    pub message: String,
}

impl ApiError {
    pub fn new(kind: ErrorKind, message: impl Into<String>) -> Self {
        Self {
            kind,
            message: message.into(),
        }
    }

    pub fn status(&self) -> StatusCode {
        self.kind.status()
    }
}

impl std::fmt::Display for ApiError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} ({}): {}",
            self.status(),
            self.kind,
            self.message.trim_end()
        )
    }
}

impl std::error::Error for ApiError {}

#[cfg(test)]
mod tests {
    use super::*;

    /// The statuses and header values clients and the README rely on.
    #[test]
    fn kinds_keep_their_status_and_name() {
        let table = [
            (ErrorKind::InvalidName, 400, "invalid-name"),
            (ErrorKind::Method, 405, "method"),
            (ErrorKind::NotFound, 404, "not-found"),
            (ErrorKind::Unauthorized, 401, "unauthorized"),
            (ErrorKind::TooLarge, 413, "too-large"),
            (ErrorKind::BodyTimeout, 408, "body-timeout"),
            (ErrorKind::Busy, 429, "busy"),
            (ErrorKind::TooManyConnections, 503, "busy"),
            (ErrorKind::ShuttingDown, 503, "shutting-down"),
            (ErrorKind::Exception, 500, "exception"),
            (ErrorKind::Timeout, 504, "timeout"),
            (ErrorKind::OutOfMemory, 500, "out-of-memory"),
            (ErrorKind::InstanceDied, 502, "instance-died"),
            (ErrorKind::InUse, 409, "in-use"),
            (ErrorKind::DeployRejected, 400, "deploy"),
            (ErrorKind::DeployFailed, 500, "deploy"),
        ];
        for (kind, status, name) in table {
            assert_eq!(kind.status().as_u16(), status, "{kind:?}");
            assert_eq!(kind.as_str(), name, "{kind:?}");
        }
    }

    /// A status and a name together name one kind, so a client can tell every kind apart.
    #[test]
    fn every_kind_parses_back() {
        for &kind in ErrorKind::ALL {
            assert_eq!(ErrorKind::parse(kind.status(), kind.as_str()), Some(kind));
        }
        assert_eq!(ErrorKind::parse(StatusCode::OK, "busy"), None);
    }
}
