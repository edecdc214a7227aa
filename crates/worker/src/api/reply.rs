//! Writing replies: bodies, content types, and errors. Every error reply is made from a
//! [`kindling_api::ApiError`], whose kind gives its status and `X-Kindling-Error`; the worker's
//! error types convert into a kind here, in one place.

use crate::auth::Caller;
use crate::daemon::DeployError;
use crate::instance::InvokeError;
use crate::logs::LogError;
use crate::packages::PackageError;
use crate::pool::PoolError;
use crate::registry::RegistryError;
use http_body_util::{Channel, Either, Full};
use hyper::body::Bytes;
use hyper::header::{HeaderValue, CONTENT_TYPE, WWW_AUTHENTICATE};
use hyper::{Response, StatusCode};
use kindling_api::error::ERROR_HEADER;
use kindling_api::{ApiError, ErrorKind};

pub(crate) type Body = Either<Full<Bytes>, Channel<Bytes>>;
pub(crate) type Reply = Response<Body>;

pub(crate) const TEXT: &str = "text/plain; charset=utf-8";
pub(crate) const JSON: &str = "application/json";
pub(crate) const NDJSON: &str = "application/x-ndjson";

/// A piece of a request (a path, a name) as an error message repeats it, bounded.
pub(crate) fn echo(text: &str) -> String {
    crate::echo::echo(text).into_owned()
}

/// A reply with a whole body of the given content type.
pub(crate) fn body(
    status: StatusCode,
    content_type: &'static str,
    bytes: impl Into<Bytes>,
) -> Reply {
    let mut r = Response::new(Either::Left(Full::new(bytes.into())));
    *r.status_mut() = status;
    r.headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static(content_type));
    r
}

/// A reply whose body is written as it comes.
pub(crate) fn streamed(content_type: &'static str, channel: Channel<Bytes>) -> Reply {
    let mut r = Response::new(Either::Right(channel));
    r.headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static(content_type));
    r
}

/// A JSON reply.
pub(crate) fn json(status: StatusCode, value: &impl serde::Serialize) -> Reply {
    match serde_json::to_vec(value) {
        Ok(bytes) => body(status, JSON, bytes),
        Err(e) => error(&ApiError::new(
            ErrorKind::Internal,
            format!("cannot write the reply: {e}"),
        )),
    }
}

/// An error reply: its kind's status and `X-Kindling-Error`, the message as plain text.
pub(crate) fn error(e: &ApiError) -> Reply {
    let mut msg = e.message.clone();
    if !msg.ends_with('\n') {
        msg.push('\n');
    }
    let mut r = body(e.status(), TEXT, msg);
    r.headers_mut()
        .insert(ERROR_HEADER, HeaderValue::from_static(e.kind.as_str()));
    r
}

/// 401 for a caller without the admin token (RFC 6750's challenge).
pub(crate) fn unauthorized(caller: Caller) -> Reply {
    let (challenge, message) = match caller {
        Caller::Invalid => (
            "Bearer realm=\"kindling\", error=\"invalid_token\"",
            "the credential is not this worker's admin token",
        ),
        Caller::Anonymous | Caller::Admin => (
            "Bearer realm=\"kindling\"",
            "this endpoint needs the worker's admin token: send `Authorization: Bearer <token>` \
             (`kindling token` prints it, to root)",
        ),
    };
    let mut r = error(&ApiError::new(ErrorKind::Unauthorized, message));
    r.headers_mut()
        .insert(WWW_AUTHENTICATE, HeaderValue::from_static(challenge));
    r
}

/// An error of the worker as the API reports it: its kind, and its message with its sources.
pub(crate) fn failure<E>(e: &E) -> ApiError
where
    E: std::error::Error,
    for<'a> ErrorKind: From<&'a E>,
{
    ApiError::new(ErrorKind::from(e), crate::error_chain(e))
}

impl From<&PoolError> for ErrorKind {
    fn from(e: &PoolError) -> Self {
        match e {
            PoolError::QueueFull(_) | PoolError::NoCapacity(_) => ErrorKind::Busy,
            PoolError::ShuttingDown => ErrorKind::ShuttingDown,
            PoolError::Start(_) => ErrorKind::Sandbox,
        }
    }
}

impl From<&InvokeError> for ErrorKind {
    fn from(e: &InvokeError) -> Self {
        match e {
            InvokeError::Handler(_) => ErrorKind::Exception,
            InvokeError::Timeout(_) => ErrorKind::Timeout,
            InvokeError::OutOfMemory(_) => ErrorKind::OutOfMemory,
            InvokeError::Setup(_) => ErrorKind::Sandbox,
            InvokeError::Died(_) | InvokeError::Protocol => ErrorKind::InstanceDied,
        }
    }
}

impl From<&RegistryError> for ErrorKind {
    fn from(e: &RegistryError) -> Self {
        match e {
            RegistryError::NotFound(_) => ErrorKind::NotFound,
            RegistryError::InvalidName(_) => ErrorKind::InvalidName,
            _ => ErrorKind::Registry,
        }
    }
}

impl From<&PackageError> for ErrorKind {
    fn from(e: &PackageError) -> Self {
        match e {
            PackageError::NotFound(_) => ErrorKind::NotFound,
            PackageError::InUse { .. } => ErrorKind::InUse,
            _ => ErrorKind::Packages,
        }
    }
}

impl From<&LogError> for ErrorKind {
    fn from(e: &LogError) -> Self {
        match e {
            LogError::NotFound(_) => ErrorKind::NotFound,
            _ => ErrorKind::Logs,
        }
    }
}

/// A deploy fails on the worker's side (500) for disk, installer and missing-`uv` failures,
/// else for what was uploaded (400).
impl From<&DeployError> for ErrorKind {
    fn from(e: &DeployError) -> Self {
        match e {
            DeployError::Registry(RegistryError::Io { .. })
            | DeployError::Packages(
                PackageError::Io { .. } | PackageError::Job(_) | PackageError::NoUv,
            ) => ErrorKind::DeployFailed,
            DeployError::Nosql(e) if e.kind() == crate::nosql::ErrorKind::Internal => {
                ErrorKind::DeployFailed
            }
            _ => ErrorKind::DeployRejected,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn echoed_input_is_bounded() {
        assert_eq!(echo("/short"), "/short");
        let long = format!("/{}", "é".repeat(300));
        let cut = echo(&long);
        assert!(
            cut.len() <= crate::echo::MAX_ECHO_BYTES + 32,
            "{}",
            cut.len()
        );
        assert!(cut.ends_with("(601 bytes in all)"), "{cut}");
    }

    /// The statuses the worker's errors had before they were mapped in one place.
    #[test]
    fn worker_errors_keep_their_status() {
        let status = |k: ErrorKind| (k.status().as_u16(), k.as_str());
        assert_eq!(
            status((&PoolError::QueueFull("f".into())).into()),
            (429, "busy")
        );
        assert_eq!(status((&PoolError::NoCapacity(4)).into()), (429, "busy"));
        assert_eq!(
            status((&PoolError::ShuttingDown).into()),
            (503, "shutting-down")
        );
        assert_eq!(
            status((&InvokeError::Handler("tb".into())).into()),
            (500, "exception")
        );
        assert_eq!(
            status((&InvokeError::Timeout(1.0)).into()),
            (504, "timeout")
        );
        assert_eq!(
            status((&InvokeError::OutOfMemory(64)).into()),
            (500, "out-of-memory")
        );
        assert_eq!(
            status((&InvokeError::Setup("x".into())).into()),
            (500, "sandbox")
        );
        assert_eq!(
            status((&InvokeError::Died("x".into())).into()),
            (502, "instance-died")
        );
        assert_eq!(
            status((&InvokeError::Protocol).into()),
            (502, "instance-died")
        );
        assert_eq!(
            status((&RegistryError::NotFound("f".into())).into()),
            (404, "not-found")
        );
        assert_eq!(
            status((&RegistryError::InvalidName("..".into())).into()),
            (400, "invalid-name")
        );
        assert_eq!(
            status((&PackageError::NotFound("six==1".into())).into()),
            (404, "not-found")
        );
        assert_eq!(
            status(
                (&PackageError::InUse {
                    package: "six==1".into(),
                    users: vec![]
                })
                    .into()
            ),
            (409, "in-use")
        );
        assert_eq!(
            status((&LogError::NotFound("f".into())).into()),
            (404, "not-found")
        );
        assert_eq!(
            ErrorKind::from(&DeployError::Packages(PackageError::NoUv)).status(),
            StatusCode::INTERNAL_SERVER_ERROR
        );
        assert_eq!(
            ErrorKind::from(&DeployError::Registry(RegistryError::InvalidFunction(
                "x".into()
            )))
            .status(),
            StatusCode::BAD_REQUEST
        );
    }

    #[test]
    fn error_replies_carry_kind_and_a_final_newline() {
        let r = error(&ApiError::new(ErrorKind::Busy, "queue full"));
        assert_eq!(r.status(), StatusCode::TOO_MANY_REQUESTS);
        assert_eq!(r.headers()[ERROR_HEADER], "busy");
        assert_eq!(r.headers()[CONTENT_TYPE], TEXT);
        let r = unauthorized(Caller::Invalid);
        assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
        assert!(r.headers()[WWW_AUTHENTICATE]
            .to_str()
            .is_ok_and(|v| v.contains("invalid_token")));
    }
}
