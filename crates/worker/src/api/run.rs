//! `/run/<name>[/<path>]`: parse the request (function, allowed method, start method, input),
//! invoke, and write the function's reply with the invocation's headers.
//!
//! A plain function (its entry an event) gets the body as a JSON event, whatever the method and
//! sub-path (OpenLambda passes the body only), and replies JSON. A web function (a WSGI or ASGI
//! app) gets the whole request ([`HttpRequest`]: method, sub-path below `/run/<name>`, query,
//! headers, raw body) and controls its reply's status, headers and body.

use super::body::{body_stall, read_body};
use super::reply::{self, echo, failure, Reply};
use crate::auth::Caller;
use crate::commands::Invocation;
use crate::daemon::Worker;
use crate::function_config::Entry;
use crate::instance::{latin1, percent_decode, HttpRequest};
use crate::pool::StartPolicy;
use crate::registry::FunctionVersion;
use hyper::body::{Bytes, Incoming};
use hyper::header::{HeaderMap, HeaderValue, ALLOW, AUTHORIZATION, CONTENT_TYPE};
use hyper::{Method, Request, StatusCode, Uri};
use kindling_api::types::{self as api, headers};
use kindling_api::{ApiError, ErrorKind};
use std::net::SocketAddr;
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

/// A `/run` request: the function, how to start it, and its input (an event, or an HTTP
/// request for a web function).
struct RunRequest {
    function: Arc<FunctionVersion>,
    policy: StartPolicy,
    input: Bytes,
}

/// A `/run` request refused before any instance ran, with the `Allow` header of a 405.
struct Refused {
    error: ApiError,
    allow: Option<HeaderValue>,
}

impl From<ApiError> for Refused {
    fn from(error: ApiError) -> Self {
        Refused { error, allow: None }
    }
}

/// What `/run` knows of the request besides its head and body.
pub(super) struct Target<'a> {
    pub name: &'a str,
    /// The path below `/run/<name>`, as sent (empty or starting with `/`).
    pub sub_path: &'a str,
    pub caller: Caller,
}

async fn parse_run(
    worker: &Worker,
    target: &Target<'_>,
    req: Request<Incoming>,
) -> Result<RunRequest, Refused> {
    let name = target.name;
    let function = worker.function(name).map_err(|e| failure(&e))?;
    let config = &function.config;
    if !config.allows_method(req.method().as_str()) {
        return Err(Refused {
            error: ApiError::new(
                ErrorKind::Method,
                format!(
                    "function `{name}` does not accept {}; it accepts {}",
                    echo(req.method().as_str()),
                    config.methods.join(", ")
                ),
            ),
            allow: HeaderValue::from_str(&config.methods.join(", ")).ok(),
        });
    }
    let policy = parse_start(req.headers().get(headers::START))?;
    let http = (function.entry == Entry::Http).then(|| {
        http_request(
            target,
            req.method(),
            req.uri(),
            req.headers(),
            worker.config.listen,
        )
    });
    let body = read_body(req, worker.config.max_body_bytes, body_stall(worker)).await?;
    let input = match http {
        Some(http) => Bytes::from(http.input(&body)),
        None => parse_event(body)?,
    };
    Ok(RunRequest {
        function,
        policy,
        input,
    })
}

/// The request as a web function sees it. The admin token never reaches a function: an
/// `Authorization` that carries it is left out.
pub(super) fn http_request(
    target: &Target<'_>,
    method: &Method,
    uri: &Uri,
    headers: &HeaderMap,
    listen: SocketAddr,
) -> HttpRequest {
    let raw_path = if target.sub_path.is_empty() {
        "/"
    } else {
        target.sub_path
    };
    let headers = headers
        .iter()
        .filter(|(k, _)| !(*k == AUTHORIZATION && target.caller == Caller::Admin))
        .map(|(k, v)| (k.as_str().to_string(), latin1(v.as_bytes())))
        .collect();
    HttpRequest {
        method: method.as_str().to_string(),
        path: latin1(&percent_decode(raw_path)),
        raw_path: raw_path.to_string(),
        query: uri.query().unwrap_or("").to_string(),
        root: format!("/run/{}", target.name),
        headers,
        server: (listen.ip().to_string(), listen.port()),
    }
}

/// `/run/<name>[/<path>]`: the function's reply, or an error; always with `X-Kindling-Start`
/// (`none` when no instance ran), and the invocation's headers when one did.
pub(super) async fn run(worker: &Worker, target: Target<'_>, req: Request<Incoming>) -> Reply {
    let invoked = match parse_run(worker, &target, req).await {
        Ok(r) => worker
            .invoke(&r.function, &r.input, r.policy)
            .await
            .map_err(|e| Refused::from(failure(&e))),
        Err(e) => Err(e),
    };
    let mut reply = match invoked {
        Ok(invocation) => run_reply(worker, invocation),
        Err(Refused { error, allow }) => {
            worker.metrics.add(&api::stats::errors(error.kind), 1);
            let mut reply = reply::error(&error);
            if let Some(allow) = allow {
                reply.headers_mut().insert(ALLOW, allow);
            }
            reply
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
        Ok(r) => match r.http {
            None => reply::body(StatusCode::OK, reply::JSON, r.body),
            Some(http) => {
                let mut reply = reply::body(http.status, reply::JSON, r.body);
                // The app's headers, and no content type unless it set one.
                reply.headers_mut().remove(CONTENT_TYPE);
                reply.headers_mut().extend(http.headers);
                reply
            }
        },
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
