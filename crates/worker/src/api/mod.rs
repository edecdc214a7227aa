//! The HTTP API: routes only. Each request is parsed ([`Route::parse`], then a parse function per
//! route), handed to a command of the worker (`crate::commands`), and its result written as a
//! reply ([`reply`]). OpenLambda-compatible paths (`/run/<name>`, `/registry/<name>`, `/status`,
//! `/stats`) plus `/metrics`, `/packages` and `/logs`. Every route, its OpenAPI path and who may
//! call it is in one table, [`Route`]; `docs/api/openapi.yaml` describes the same routes (a test
//! keeps them in step). The connections themselves are `crate::http`'s.

mod reply;

use crate::auth::{Access, Caller};
use crate::commands::Invocation;
use crate::daemon::Worker;
use crate::packages::PackageRef;
use crate::pool::StartPolicy;
use crate::registry::{validate_name, FunctionVersion};
use http_body_util::{BodyExt, Channel, Limited};
use hyper::body::{Bytes, Incoming};
use hyper::header::{HeaderValue, AUTHORIZATION};
use hyper::{Method, Request, StatusCode};
use kindling_api::types::{self as api, headers};
use kindling_api::{ApiError, ErrorKind, WorkerState};
use reply::{echo, failure, Reply};
use std::sync::Arc;
use std::time::Duration;

/// Most bytes of a deploy's error message: each piece of input it repeats is already cut short
/// where it is made ([`crate::echo`]); this bounds the whole.
const MAX_DEPLOY_ERROR_BYTES: usize = 16 * 1024;

/// Every route of the API. A new route is a variant here, its line in [`Route::parse`], its
/// OpenAPI path in [`Route::template`] (and `docs/api/openapi.yaml`), its handler in [`handle`],
/// and its [`Access`] in [`Route::access`], which matches exhaustively so that no route can be
/// added without saying who may call it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Route<'a> {
    /// `/run/<name>`, any method (the function's config may restrict them).
    Run(&'a str),
    /// `GET /registry`
    Functions,
    /// `POST|PUT /registry/<name>`
    Deploy(&'a str),
    /// `GET /registry/<name>`
    Function(&'a str),
    /// `DELETE /registry/<name>`
    Remove(&'a str),
    /// `GET /status`
    Status,
    /// `GET /stats`
    Stats,
    /// `GET /metrics`
    Metrics,
    /// `GET /packages`
    Packages,
    /// `POST /packages/gc`
    PackagesGc,
    /// `DELETE /packages/<name>==<version>`
    RemovePackage(&'a str),
    /// `GET /logs/<name>`
    Logs(&'a str),
}

/// Why a request matches no route.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum NoRoute {
    /// `/run` without exactly one name.
    RunPath,
    /// A known path, a method it does not take.
    Method,
    NotFound,
}

impl NoRoute {
    fn error(self, method: &Method, path: &str) -> ApiError {
        match self {
            NoRoute::RunPath => ApiError::new(ErrorKind::InvalidName, "use /run/<name>"),
            NoRoute::Method => ApiError::new(
                ErrorKind::Method,
                format!("{method} is not allowed on {}", echo(path)),
            ),
            NoRoute::NotFound => ApiError::new(
                ErrorKind::NotFound,
                format!("no such endpoint: {}", echo(path)),
            ),
        }
    }
}

impl<'a> Route<'a> {
    fn parse(method: &Method, path: &'a str) -> Result<Route<'a>, NoRoute> {
        let segments: Vec<&str> = path.trim_matches('/').split('/').collect();
        Ok(match (segments.as_slice(), method) {
            (["run", name], _) => Route::Run(name),
            (["run", ..], _) => return Err(NoRoute::RunPath),
            (["registry"], &Method::GET) => Route::Functions,
            (["registry", name], &Method::POST | &Method::PUT) => Route::Deploy(name),
            (["registry", name], &Method::GET) => Route::Function(name),
            (["registry", name], &Method::DELETE) => Route::Remove(name),
            (["status"], &Method::GET) => Route::Status,
            (["stats"], &Method::GET) => Route::Stats,
            (["metrics"], &Method::GET) => Route::Metrics,
            (["packages"], &Method::GET) => Route::Packages,
            (["packages", "gc"], &Method::POST) => Route::PackagesGc,
            (["packages", key], &Method::DELETE) => Route::RemovePackage(key),
            (["logs", name], &Method::GET) => Route::Logs(name),
            (["registry" | "status" | "stats" | "metrics" | "packages" | "logs", ..], _) => {
                return Err(NoRoute::Method)
            }
            _ => return Err(NoRoute::NotFound),
        })
    }

    /// The route's path as `docs/api/openapi.yaml` names it (checked by the tests).
    #[cfg(test)]
    fn template(self) -> &'static str {
        match self {
            Route::Run(_) => "/run/{name}",
            Route::Functions => "/registry",
            Route::Deploy(_) | Route::Function(_) | Route::Remove(_) => "/registry/{name}",
            Route::Status => "/status",
            Route::Stats => "/stats",
            Route::Metrics => "/metrics",
            Route::Packages => "/packages",
            Route::PackagesGc => "/packages/gc",
            Route::RemovePackage(_) => "/packages/{package}",
            Route::Logs(_) => "/logs/{name}",
        }
    }

    /// Who may call the route. Everything that changes the worker, or shows its functions,
    /// their code's layout, its packages or its counters, is the admin's; `/status` answers
    /// anyone, with host paths and names only for the admin.
    fn access(self) -> Access {
        match self {
            Route::Run(_) => Access::Invoke,
            Route::Status => Access::Public,
            Route::Functions
            | Route::Deploy(_)
            | Route::Function(_)
            | Route::Remove(_)
            | Route::Stats
            | Route::Metrics
            | Route::Packages
            | Route::PackagesGc
            | Route::RemovePackage(_)
            // A function's output may hold what it prints of its secrets.
            | Route::Logs(_) => Access::Admin,
        }
    }
}

/// Handles one HTTP request.
pub async fn handle(
    worker: Arc<Worker>,
    req: Request<Incoming>,
) -> Result<Reply, std::convert::Infallible> {
    let path = req.uri().path().to_string();
    let method = req.method().clone();
    let route = match Route::parse(&method, &path) {
        Ok(route) => route,
        Err(no) => return Ok(reply::error(&no.error(&method, &path))),
    };
    let authorization = req.headers().get(AUTHORIZATION).map(HeaderValue::as_bytes);
    let caller = Caller::identify(&worker.token, authorization);
    if !worker.auth.allows(route.access(), caller) {
        worker.metrics.add("errors.unauthorized", 1);
        return Ok(reply::unauthorized(caller));
    }
    let state = worker.state.get();
    if state == WorkerState::Draining && route != Route::Status {
        let mut r = reply::error(&ApiError::new(
            ErrorKind::ShuttingDown,
            "the worker is shutting down",
        ));
        if matches!(route, Route::Run(_)) {
            r.headers_mut()
                .insert(headers::START, HeaderValue::from_static(headers::NO_START));
        }
        return Ok(r);
    }
    let reply = match route {
        Route::Run(name) => run(&worker, name, req).await,
        Route::Functions => reply::json(StatusCode::OK, &worker.functions()),
        Route::Deploy(name) => deploy(&worker, name, req).await,
        Route::Function(name) => result(worker.function_detail(name)),
        Route::Remove(name) => result(worker.remove_function(name)),
        Route::Status => {
            // Anything but `ready` is 503, so that a load balancer stops sending.
            let status = if state == WorkerState::Ready {
                StatusCode::OK
            } else {
                StatusCode::SERVICE_UNAVAILABLE
            };
            reply::json(status, &worker.status_report(caller == Caller::Admin))
        }
        Route::Stats => reply::json(StatusCode::OK, &worker.stats()),
        Route::Metrics => reply::body(
            StatusCode::OK,
            crate::metrics::CONTENT_TYPE,
            worker.metrics_text(),
        ),
        Route::Packages => reply::json(StatusCode::OK, &worker.stored_packages()),
        Route::PackagesGc => reply::json(StatusCode::OK, &worker.collect_packages()),
        Route::RemovePackage(key) => match parse_package(key) {
            Ok(pkg) => result(worker.remove_package(&pkg)),
            Err(e) => reply::error(&e),
        },
        Route::Logs(name) => logs(&worker, name, req.uri().query()),
    };
    Ok(reply)
}

/// A command's result as a reply: its value as JSON, or its error.
fn result<T: serde::Serialize, E>(r: Result<T, E>) -> Reply
where
    E: std::error::Error,
    for<'a> ErrorKind: From<&'a E>,
{
    match r {
        Ok(value) => reply::json(StatusCode::OK, &value),
        Err(e) => reply::error(&failure(&e)),
    }
}

/// Reads the whole body, refusing more than `limit` bytes, and a body that sends nothing for
/// `stall` (408).
async fn read_body(
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

fn body_stall(worker: &Worker) -> Duration {
    Duration::from_secs_f64(worker.config.http.body_read_timeout_secs)
}

/// `X-Kindling-Start`: absent, empty, `any` or `warm` is the default policy.
fn parse_start(value: Option<&HeaderValue>) -> Result<StartPolicy, ApiError> {
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
        "cold" => Ok(StartPolicy::Cold),
        other => Err(ApiError::new(
            ErrorKind::StartMethod,
            format!(
                "unknown start method `{}` in X-Kindling-Start; valid: cold, fork, warm, any",
                echo(other)
            ),
        )),
    }
}

/// An event: a JSON body, or `null` for an empty one.
fn parse_event(body: Bytes) -> Result<Bytes, ApiError> {
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
async fn run(worker: &Worker, name: &str, req: Request<Incoming>) -> Reply {
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

/// `?progress` (or `Accept: application/x-ndjson`) asks for a streamed deploy.
fn wants_progress(req: &Request<Incoming>) -> bool {
    req.uri().query().is_some_and(|q| {
        q.split('&')
            .any(|kv| kv == "progress" || kv.starts_with("progress="))
    }) || req
        .headers()
        .get(hyper::header::ACCEPT)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.contains(reply::NDJSON))
}

async fn deploy(worker: &Arc<Worker>, name: &str, req: Request<Incoming>) -> Reply {
    if let Err(e) = validate_name(name) {
        let msg = crate::echo::truncate(&e.to_string(), MAX_DEPLOY_ERROR_BYTES).into_owned();
        return reply::error(&ApiError::new(ErrorKind::InvalidName, msg));
    }
    let streaming = wants_progress(&req);
    let body = match read_body(req, worker.config.max_upload_bytes, body_stall(worker)).await {
        Ok(b) => b,
        Err(e) => return reply::error(&e),
    };
    let (w, n) = (worker.clone(), name.to_string());
    if !streaming {
        let result =
            tokio::task::spawn_blocking(move || w.deploy_function(&n, &body, &|_| ())).await;
        let (status, outcome) = deploy_outcome(result);
        return reply::json(status, &outcome);
    }
    let (sender, channel) = Channel::<Bytes>::new(16);
    let sender = std::sync::Mutex::new(sender);
    let handle = tokio::runtime::Handle::current();
    // The deploy runs on a blocking thread, which feeds the response body as it goes.
    tokio::task::spawn_blocking(move || {
        let send = |line: &api::DeployLine| {
            let Ok(mut text) = serde_json::to_string(line) else {
                return;
            };
            text.push('\n');
            let mut s = sender.lock().unwrap_or_else(|p| p.into_inner());
            let _ = handle.block_on(s.send_data(Bytes::from(text)));
        };
        let r = w.deploy_function(&n, &body, &|progress: String| {
            send(&api::DeployLine::Progress { progress })
        });
        let (status, outcome) = deploy_outcome(Ok(r));
        send(&api::DeployLine::Done {
            outcome,
            status: status.as_u16(),
        });
    });
    reply::streamed(reply::NDJSON, channel)
}

type DeployResult =
    Result<Result<api::Deployed, crate::daemon::DeployError>, tokio::task::JoinError>;

/// A deploy's outcome and its status.
fn deploy_outcome(result: DeployResult) -> (StatusCode, api::DeployOutcome) {
    let failed = |kind: ErrorKind, error: String| {
        (
            kind.status(),
            api::DeployOutcome::Failed(api::DeployFailure { error }),
        )
    };
    match result {
        Err(e) => failed(ErrorKind::DeployFailed, format!("deploy task failed: {e}")),
        Ok(Err(e)) => {
            let msg = crate::error_chain(&e);
            let msg = crate::echo::truncate(&msg, MAX_DEPLOY_ERROR_BYTES).into_owned();
            failed(ErrorKind::from(&e), msg)
        }
        Ok(Ok(d)) => (StatusCode::OK, api::DeployOutcome::Deployed(d)),
    }
}

fn parse_package(key: &str) -> Result<PackageRef, ApiError> {
    PackageRef::parse(key).ok_or_else(|| {
        ApiError::new(
            ErrorKind::InvalidPackage,
            format!("`{}` is not <name>==<version>", echo(key)),
        )
    })
}

/// `?tail=N[&follow]`: how many lines (default 100), and whether to follow.
fn parse_logs_query(query: Option<&str>) -> Result<(usize, bool), ApiError> {
    use crate::logs::MAX_TAIL_LINES;
    let (mut lines, mut follow) = (100, false);
    for pair in query.unwrap_or("").split('&').filter(|p| !p.is_empty()) {
        match pair.split_once('=').unwrap_or((pair, "")) {
            ("tail", n) => match n.parse::<usize>() {
                Ok(n) if n <= MAX_TAIL_LINES => lines = n,
                _ => {
                    return Err(ApiError::new(
                        ErrorKind::InvalidTail,
                        format!(
                            "tail must be a number of lines up to {MAX_TAIL_LINES}, not `{}`",
                            n.chars().take(32).collect::<String>()
                        ),
                    ))
                }
            },
            ("follow", _) => follow = true,
            _ => {}
        }
    }
    Ok((lines, follow))
}

/// `GET /logs/<name>?tail=N[&follow]`: the last N lines (default 100) of a function's log, then
/// with `follow` the lines written after them, as they come.
fn logs(worker: &Worker, name: &str, query: Option<&str>) -> Reply {
    if let Err(e) = validate_name(name) {
        return reply::error(&failure(&e));
    }
    let (lines, follow) = match parse_logs_query(query) {
        Ok(q) => q,
        Err(e) => return reply::error(&e),
    };
    let tail = match worker.log_tail(name, lines) {
        Ok(t) => t,
        Err(e) => return reply::error(&failure(&e)),
    };
    if !follow {
        return reply::body(StatusCode::OK, reply::TEXT, tail.text);
    }
    let (mut sender, channel) = Channel::<Bytes>::new(4);
    let (text, mut from) = (tail.text, tail.from);
    tokio::spawn(async move {
        if sender.send_data(Bytes::from(text)).await.is_err() {
            return;
        }
        loop {
            let next = match from.step() {
                Ok(Some(data)) => Bytes::from(data),
                Ok(None) => {
                    tokio::time::sleep(crate::logs::Follower::poll_interval()).await;
                    // Sending nothing finds out whether the client is still there.
                    Bytes::new()
                }
                Err(e) => {
                    tracing::debug!("following a function log: {e}");
                    return;
                }
            };
            if sender.send_data(next).await.is_err() {
                return;
            }
        }
    });
    reply::streamed(reply::TEXT, channel)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests;
