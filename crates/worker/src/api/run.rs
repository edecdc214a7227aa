//! `/run/<name>`: parse the request (function, start method, event), invoke, and write the
//! function's reply with the invocation's headers.

use super::body::{body_stall, read_body};
use super::reply::{self, echo, failure, Reply};
use crate::commands::Invocation;
use crate::daemon::Worker;
use crate::pool::StartPolicy;
use crate::registry::FunctionVersion;
use hyper::body::{Bytes, Incoming};
use hyper::header::HeaderValue;
use hyper::{Request, StatusCode};
use kindling_api::types::{self as api, headers};
use kindling_api::{ApiError, ErrorKind};
use std::sync::Arc;

/// `X-Kindling-Start`: absent, empty, `any` or `warm` is the default policy.
pub(super) fn parse_start(value: Option<&HeaderValue>) -> Result<StartPolicy, ApiError> {
    let Some(value) = value else {
        return Ok(StartPolicy::Any);
    };
    let Ok(value) = value.to_str() else {
        return Err(ApiError::new(
            ErrorKind::StartMethod,
            "X-Kindling-Start is not ASCII",
        ));
    };
    match value.trim().to_ascii_lowercase().as_str() {
        "" | "any" | "warm" => Ok(StartPolicy::Any),
        "fork" => Ok(StartPolicy::Fork),
        "switch" => Ok(StartPolicy::Switch),
        "cold" => Ok(StartPolicy::Cold),
        other => Err(ApiError::new(
            ErrorKind::StartMethod,
            format!(
                "unknown start method `{}` in X-Kindling-Start; valid: warm, switch, fork, cold, any",
                echo(other)
            ),
        )),
    }
}

/// An event: a JSON body, or `null` for an empty one.
pub(super) fn parse_event(body: Bytes) -> Result<Bytes, ApiError> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Ok(Bytes::from_static(b"null"));
    }
    match serde_json::from_slice::<serde::de::IgnoredAny>(&body) {
        Ok(_) => Ok(body),
        Err(e) => Err(ApiError::new(
            ErrorKind::MalformedJson,
            format!("request body is not valid JSON: {e}"),
        )),
    }
}

/// A `/run` request: the function, how to start it, and the event.
struct RunRequest {
    function: Arc<FunctionVersion>,
    policy: StartPolicy,
    event: Bytes,
}

async fn parse_run(
    worker: &Worker,
    name: &str,
    req: Request<Incoming>,
) -> Result<RunRequest, ApiError> {
    let function = worker.function(name).map_err(|e| failure(&e))?;
    let methods = &function.config.methods;
    if !methods.is_empty() && !methods.iter().any(|m| m == req.method().as_str()) {
        return Err(ApiError::new(
            ErrorKind::Method,
            format!("function `{name}` accepts {}", methods.join(", ")),
        ));
    }
    let policy = parse_start(req.headers().get(headers::START))?;
    let body = read_body(req, worker.config.max_body_bytes, body_stall(worker)).await?;
    Ok(RunRequest {
        function,
        policy,
        event: parse_event(body)?,
    })
}

/// `/run/<name>`: the function's reply, or an error; always with `X-Kindling-Start` (`none`
/// when no instance ran), and the invocation's headers when one did.
pub(super) async fn run(worker: &Worker, name: &str, req: Request<Incoming>) -> Reply {
    let invoked = match parse_run(worker, name, req).await {
        Ok(r) => worker
            .invoke(&r.function, &r.event, r.policy)
            .await
            .map_err(|e| failure(&e)),
        Err(e) => Err(e),
    };
    let mut reply = match invoked {
        Ok(invocation) => run_reply(worker, invocation),
        Err(e) => {
            worker.metrics.add(&api::stats::errors(e.kind), 1);
            reply::error(&e)
        }
    };
    if !reply.headers().contains_key(headers::START) {
        reply
            .headers_mut()
            .insert(headers::START, HeaderValue::from_static(headers::NO_START));
    }
    reply
}

fn run_reply(worker: &Worker, invocation: Invocation) -> Reply {
    let Invocation {
        request_id,
        outcome,
    } = invocation;
    let mut reply = match outcome.result {
        Ok(r) => reply::body(StatusCode::OK, reply::JSON, r.body),
        Err(e) => {
            let e = ApiError::new(ErrorKind::from(&e), e.to_string());
            worker.metrics.add(&api::stats::errors(e.kind), 1);
            reply::error(&e)
        }
    };
    let h = reply.headers_mut();
    h.insert(
        headers::START,
        HeaderValue::from_static(outcome.start.as_str()),
    );
    if let Ok(v) = HeaderValue::from_str(&outcome.timing.header()) {
        h.insert(headers::TIMING, v);
    }
    if let Some(m) = outcome.memory_bytes {
        h.insert(headers::MEMORY, HeaderValue::from(m));
    }
    if let Ok(v) = HeaderValue::from_str(&outcome.instance_id) {
        h.insert(headers::SANDBOX, v);
    }
    if let Ok(v) = HeaderValue::from_str(&request_id) {
        h.insert(headers::REQUEST, v);
    }
    reply
}
