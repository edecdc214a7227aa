//! Reading request bodies within the worker's bounds (size and stall).

use crate::daemon::Worker;
use http_body_util::{BodyExt, Limited};
use hyper::body::{Bytes, Incoming};
use hyper::Request;
use kindling_api::{ApiError, ErrorKind};
use std::time::Duration;

/// Reads the whole body, refusing more than `limit` bytes, and a body that sends nothing for
/// `stall` (408).
pub(super) async fn read_body(
    req: Request<Incoming>,
    limit: usize,
    stall: Duration,
) -> Result<Bytes, ApiError> {
    let too_large = || {
        ApiError::new(
            ErrorKind::TooLarge,
            format!("request body exceeds the limit of {limit} bytes"),
        )
    };
    if let Some(len) = req
        .headers()
        .get(hyper::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok())
    {
        if len > limit as u64 {
            return Err(too_large());
        }
    }
    let mut body = Limited::new(req.into_body(), limit);
    let mut data = Vec::new();
    loop {
        match tokio::time::timeout(stall, body.frame()).await {
            Err(_) => {
                return Err(ApiError::new(
                    ErrorKind::BodyTimeout,
                    format!(
                        "the request body sent nothing for {:.0} s",
                        stall.as_secs_f64()
                    ),
                ))
            }
            Ok(None) => return Ok(Bytes::from(data)),
            Ok(Some(Ok(frame))) => {
                if let Ok(chunk) = frame.into_data() {
                    data.extend_from_slice(&chunk);
                }
            }
            Ok(Some(Err(e)))
                if e.downcast_ref::<http_body_util::LengthLimitError>()
                    .is_some() =>
            {
                return Err(too_large())
            }
            Ok(Some(Err(e))) => {
                return Err(ApiError::new(
                    ErrorKind::Body,
                    format!("cannot read request body: {e}"),
                ))
            }
        }
    }
}

pub(super) fn body_stall(worker: &Worker) -> Duration {
    Duration::from_secs_f64(worker.config.http.body_read_timeout_secs)
}
