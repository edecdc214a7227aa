//! The HTTP API: routes only. Each handler parses the request, calls the registry or the pool,
//! and turns the result into a response. OpenLambda-compatible paths (`/run/<name>`,
//! `/registry/<name>`, `/status`, `/stats`) plus `/metrics`. Every route and who may call it is
//! in one table, [`Route`]; the connections themselves are `crate::http`'s.

use crate::auth::{Access, Caller};
use crate::daemon::{DeployError, Worker};
use crate::instance::InvokeError;
use crate::packages::{PackageError, PackageRef};
use crate::pool::{PoolError, StartPolicy};
use crate::registry::{validate_name, RegistryError};
use http_body_util::{BodyExt, Channel, Either, Full, Limited};
use hyper::body::{Bytes, Incoming};
use hyper::header::{HeaderValue, AUTHORIZATION, CONTENT_TYPE, WWW_AUTHENTICATE};
use hyper::{Method, Request, Response, StatusCode};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

type Body = Either<Full<Bytes>, Channel<Bytes>>;
type Reply = Response<Body>;

static REQUEST_COUNTER: AtomicU64 = AtomicU64::new(0);

fn full(bytes: impl Into<Bytes>) -> Body {
    Either::Left(Full::new(bytes.into()))
}

fn text(status: StatusCode, body: impl Into<String>) -> Reply {
    let mut r = Response::new(full(body.into()));
    *r.status_mut() = status;
    r.headers_mut().insert(
        CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    r
}

fn json(status: StatusCode, value: &serde_json::Value) -> Reply {
    let mut r = Response::new(full(value.to_string()));
    *r.status_mut() = status;
    r.headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    r
}

fn error(status: StatusCode, kind: &'static str, message: impl Into<String>) -> Reply {
    let mut msg = message.into();
    if !msg.ends_with('\n') {
        msg.push('\n');
    }
    let mut r = text(status, msg);
    r.headers_mut()
        .insert("x-kindling-error", HeaderValue::from_static(kind));
    r
}

/// Most bytes of a deploy's error message: each piece of input it repeats is already cut short
/// where it is made ([`crate::echo`]); this bounds the whole.
const MAX_DEPLOY_ERROR_BYTES: usize = 16 * 1024;

/// Prints an error with its sources, for response bodies.
use crate::error_chain as chain;

/// Longest piece of a request (a path, a name) echoed in an error message.
const MAX_ECHO: usize = 256;

/// `text` cut to [`MAX_ECHO`] bytes (on a character boundary), marked when cut.
fn echo(text: &str) -> String {
    if text.len() <= MAX_ECHO {
        return text.to_string();
    }
    let mut end = MAX_ECHO;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}...", &text[..end])
}

/// Every route of the API. A new route is a variant here, its line in [`Route::parse`], its
/// handler in [`handle`], and its [`Access`] in [`Route::access`], which matches exhaustively so
/// that no route can be added without saying who may call it.
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

/// 401 for a caller without the admin token (RFC 6750's challenge).
fn unauthorized(caller: Caller) -> Reply {
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
    let mut r = error(StatusCode::UNAUTHORIZED, "unauthorized", message);
    r.headers_mut()
        .insert(WWW_AUTHENTICATE, HeaderValue::from_static(challenge));
    r
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
        Err(NoRoute::RunPath) => {
            return Ok(error(
                StatusCode::BAD_REQUEST,
                "invalid-name",
                "use /run/<name>",
            ))
        }
        Err(NoRoute::Method) => {
            return Ok(error(
                StatusCode::METHOD_NOT_ALLOWED,
                "method",
                format!("{method} is not allowed on {}", echo(&path)),
            ))
        }
        Err(NoRoute::NotFound) => {
            return Ok(error(
                StatusCode::NOT_FOUND,
                "not-found",
                format!("no such endpoint: {}", echo(&path)),
            ))
        }
    };
    let authorization = req.headers().get(AUTHORIZATION).map(HeaderValue::as_bytes);
    let caller = Caller::identify(&worker.token, authorization);
    if !worker.auth.allows(route.access(), caller) {
        worker.metrics.add("errors.unauthorized", 1);
        return Ok(unauthorized(caller));
    }
    let reply = match route {
        Route::Run(name) => run(&worker, name, req).await,
        Route::Functions => list(&worker),
        Route::Deploy(name) => deploy(&worker, name, req).await,
        Route::Function(name) => info(&worker, name),
        Route::Remove(name) => remove(&worker, name),
        Route::Status => status(&worker, caller == Caller::Admin),
        Route::Stats => stats(&worker),
        Route::Metrics => metrics(&worker),
        Route::Packages => packages(&worker),
        Route::PackagesGc => packages_gc(&worker),
        Route::RemovePackage(key) => package_remove(&worker, key),
        Route::Logs(name) => logs(&worker, name, req.uri().query()),
    };
    Ok(reply)
}

/// Reads the whole body, refusing more than `limit` bytes, and a body that sends nothing for
/// `stall` (408).
async fn read_body(req: Request<Incoming>, limit: usize, stall: Duration) -> Result<Bytes, Reply> {
    let too_large = || {
        error(
            StatusCode::PAYLOAD_TOO_LARGE,
            "too-large",
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
                return Err(error(
                    StatusCode::REQUEST_TIMEOUT,
                    "body-timeout",
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
                return Err(error(
                    StatusCode::BAD_REQUEST,
                    "body",
                    format!("cannot read request body: {e}"),
                ))
            }
        }
    }
}

fn body_stall(worker: &Worker) -> Duration {
    Duration::from_secs_f64(worker.config.http.body_read_timeout_secs)
}

async fn run(worker: &Worker, name: &str, req: Request<Incoming>) -> Reply {
    let mut reply = run_inner(worker, name, req).await;
    if !reply.headers().contains_key("x-kindling-start") {
        reply
            .headers_mut()
            .insert("x-kindling-start", HeaderValue::from_static("none"));
    }
    reply
}

async fn run_inner(worker: &Worker, name: &str, req: Request<Incoming>) -> Reply {
    if let Err(e) = validate_name(name) {
        worker.metrics.add("errors.bad-request", 1);
        return error(StatusCode::BAD_REQUEST, "invalid-name", e.to_string());
    }
    let Some(function) = worker.registry.get(name) else {
        worker.metrics.add("errors.not-found", 1);
        return error(
            StatusCode::NOT_FOUND,
            "not-found",
            format!("no function named `{name}`"),
        );
    };
    if !function.config.methods.is_empty()
        && !function
            .config
            .methods
            .iter()
            .any(|m| m == req.method().as_str())
    {
        return error(
            StatusCode::METHOD_NOT_ALLOWED,
            "method",
            format!(
                "function `{name}` accepts {}",
                function.config.methods.join(", ")
            ),
        );
    }
    let policy = match req.headers().get("x-kindling-start").map(|v| v.to_str()) {
        None => StartPolicy::Any,
        Some(Ok(v)) => match v.trim().to_ascii_lowercase().as_str() {
            "" | "any" | "warm" => StartPolicy::Any,
            "fork" => StartPolicy::Fork,
            "cold" => StartPolicy::Cold,
            other => {
                return error(
                    StatusCode::BAD_REQUEST,
                    "start-method",
                    format!(
                    "unknown start method `{other}` in X-Kindling-Start; valid: cold, fork, warm, any"
                ),
                )
            }
        },
        Some(Err(_)) => {
            return error(
                StatusCode::BAD_REQUEST,
                "start-method",
                "X-Kindling-Start is not ASCII",
            )
        }
    };
    let body = match read_body(req, worker.config.max_body_bytes, body_stall(worker)).await {
        Ok(b) => b,
        Err(r) => {
            worker.metrics.add("errors.too-large", 1);
            return r;
        }
    };
    let event: Bytes = if body.iter().all(u8::is_ascii_whitespace) {
        Bytes::from_static(b"null")
    } else {
        if let Err(e) = serde_json::from_slice::<serde::de::IgnoredAny>(&body) {
            worker.metrics.add("errors.bad-request", 1);
            return error(
                StatusCode::BAD_REQUEST,
                "malformed-json",
                format!("request body is not valid JSON: {e}"),
            );
        }
        body
    };
    let request_id = format!(
        "{:x}-{:x}",
        worker.started.elapsed().as_micros() & 0xffff_ffff,
        REQUEST_COUNTER.fetch_add(1, Ordering::Relaxed)
    );
    let limits = worker.limits_for(&function);
    let outcome = match worker
        .pool
        .invoke(&function, &limits, &request_id, &event, policy)
        .await
    {
        Ok(o) => o,
        Err(e) => {
            let (status, kind) = match &e {
                PoolError::QueueFull(_) | PoolError::NoCapacity(_) => {
                    (StatusCode::TOO_MANY_REQUESTS, "busy")
                }
                PoolError::ShuttingDown => (StatusCode::SERVICE_UNAVAILABLE, "shutting-down"),
                PoolError::Start(_) => (StatusCode::INTERNAL_SERVER_ERROR, "sandbox"),
            };
            worker.metrics.add(&format!("errors.{kind}"), 1);
            if matches!(e, PoolError::Start(_)) {
                tracing::error!(function = name, "cannot start sandbox: {}", chain(&e));
            }
            return error(status, kind, chain(&e));
        }
    };
    let mut reply = match outcome.result {
        Ok(r) => {
            let mut resp = Response::new(full(r.body));
            resp.headers_mut()
                .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
            resp
        }
        Err(e) => {
            let (status, kind) = match &e {
                InvokeError::Handler(_) => (StatusCode::INTERNAL_SERVER_ERROR, "exception"),
                InvokeError::Timeout(_) => (StatusCode::GATEWAY_TIMEOUT, "timeout"),
                InvokeError::OutOfMemory(_) => (StatusCode::INTERNAL_SERVER_ERROR, "out-of-memory"),
                InvokeError::Setup(_) => (StatusCode::INTERNAL_SERVER_ERROR, "sandbox"),
                InvokeError::Died(_) | InvokeError::Protocol => {
                    (StatusCode::BAD_GATEWAY, "instance-died")
                }
            };
            worker.metrics.add(&format!("errors.{kind}"), 1);
            error(status, kind, e.to_string())
        }
    };
    let h = reply.headers_mut();
    h.insert(
        "x-kindling-start",
        HeaderValue::from_static(outcome.start.as_str()),
    );
    if let Ok(v) = HeaderValue::from_str(&outcome.timing.header()) {
        h.insert("x-kindling-timing", v);
    }
    if let Some(m) = outcome.memory_bytes {
        h.insert("x-kindling-memory", HeaderValue::from(m));
    }
    if let Ok(v) = HeaderValue::from_str(&outcome.instance_id) {
        h.insert("x-kindling-sandbox", v);
    }
    if let Ok(v) = HeaderValue::from_str(&request_id) {
        h.insert("x-kindling-request", v);
    }
    reply
}

async fn deploy(worker: &Arc<Worker>, name: &str, req: Request<Incoming>) -> Reply {
    if let Err(e) = validate_name(name) {
        let msg = crate::echo::truncate(&e.to_string(), MAX_DEPLOY_ERROR_BYTES).into_owned();
        return error(StatusCode::BAD_REQUEST, "invalid-name", msg);
    }
    // `?progress` (or `Accept: application/x-ndjson`) streams one JSON line per install step,
    // then the result; otherwise the reply comes when the deploy is done.
    let streaming = req.uri().query().is_some_and(|q| {
        q.split('&')
            .any(|kv| kv == "progress" || kv.starts_with("progress="))
    }) || req
        .headers()
        .get(hyper::header::ACCEPT)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.contains("application/x-ndjson"));
    let body = match read_body(req, worker.config.max_upload_bytes, body_stall(worker)).await {
        Ok(b) => b,
        Err(r) => return r,
    };
    let (w, n) = (worker.clone(), name.to_string());
    if !streaming {
        let result = tokio::task::spawn_blocking(move || w.deploy(&n, &body, &|_| ())).await;
        let (status, value) = deploy_result(worker, name, result);
        return json(status, &value);
    }
    let (sender, channel) = Channel::<Bytes>::new(16);
    let sender = std::sync::Mutex::new(sender);
    let handle = tokio::runtime::Handle::current();
    // The deploy runs on a blocking thread, which feeds the response body as it goes.
    tokio::task::spawn_blocking(move || {
        let send = |line: serde_json::Value| {
            let mut s = sender.lock().unwrap_or_else(|p| p.into_inner());
            let _ = handle.block_on(s.send_data(Bytes::from(line.to_string() + "\n")));
        };
        let r = w.deploy(&n, &body, &|msg: String| {
            send(serde_json::json!({ "progress": msg }))
        });
        let (status, mut value) = deploy_result(&w, &n, Ok(r));
        value["status"] = status.as_u16().into();
        send(value);
    });
    let mut r = Response::new(Either::Right(channel));
    r.headers_mut().insert(
        CONTENT_TYPE,
        HeaderValue::from_static("application/x-ndjson"),
    );
    r
}

type DeployResult = Result<
    Result<(crate::registry::Deployed, crate::packages::EnsureStats), DeployError>,
    tokio::task::JoinError,
>;

/// Turns a deploy's outcome into a status and a JSON body (and counts it).
fn deploy_result(
    worker: &Worker,
    name: &str,
    result: DeployResult,
) -> (StatusCode, serde_json::Value) {
    match result {
        Err(e) => (
            StatusCode::INTERNAL_SERVER_ERROR,
            serde_json::json!({ "error": format!("deploy task failed: {e}") }),
        ),
        Ok(Err(e)) => {
            let status = match &e {
                DeployError::Registry(RegistryError::Io { .. })
                | DeployError::Packages(
                    PackageError::Io { .. } | PackageError::Job(_) | PackageError::NoUv,
                ) => StatusCode::INTERNAL_SERVER_ERROR,
                _ => StatusCode::BAD_REQUEST,
            };
            worker.metrics.add("deploys.failed", 1);
            let msg = chain(&e);
            let msg = crate::echo::truncate(&msg, MAX_DEPLOY_ERROR_BYTES);
            (status, serde_json::json!({ "error": msg }))
        }
        Ok(Ok((d, stats))) => {
            if d.changed {
                worker.pool.invalidate(name);
                worker.metrics.add("deploys", 1);
                tracing::info!(function = name, hash = %&d.version.hash[..12], installed = stats.installed.len(), "deployed");
            }
            (
                StatusCode::OK,
                serde_json::json!({
                    "name": d.version.name,
                    "hash": d.version.hash,
                    "format": d.version.format,
                    "changed": d.changed,
                    "packages": d.version.lock.packages.iter().map(PackageRef::key).collect::<Vec<_>>(),
                    "installed": stats.installed,
                    "store_hits": stats.hits,
                    "bytes_added": stats.bytes_added,
                    "package_ms": stats.package_ms,
                }),
            )
        }
    }
}

fn packages(worker: &Worker) -> Reply {
    let users = worker.package_users();
    let list: Vec<_> = worker
        .packages
        .list()
        .into_iter()
        .map(|p| {
            let key = format!("{}=={}", p.name, p.version);
            serde_json::json!({
                "name": p.name,
                "version": p.version,
                "size_bytes": p.size_bytes,
                "users": users.get(&key).cloned().unwrap_or_default(),
            })
        })
        .collect();
    json(StatusCode::OK, &serde_json::Value::Array(list))
}

fn package_remove(worker: &Worker, key: &str) -> Reply {
    let Some(pkg) = PackageRef::parse(key) else {
        return error(
            StatusCode::BAD_REQUEST,
            "invalid-package",
            format!("`{key}` is not <name>==<version>"),
        );
    };
    let users = worker
        .package_users()
        .remove(&pkg.key())
        .unwrap_or_default();
    match worker.packages.remove(&pkg, users) {
        Ok(()) => json(StatusCode::OK, &serde_json::json!({ "removed": pkg.key() })),
        Err(e @ PackageError::NotFound(_)) => {
            error(StatusCode::NOT_FOUND, "not-found", e.to_string())
        }
        Err(e @ PackageError::InUse { .. }) => error(StatusCode::CONFLICT, "in-use", e.to_string()),
        Err(e) => error(StatusCode::INTERNAL_SERVER_ERROR, "packages", chain(&e)),
    }
}

fn packages_gc(worker: &Worker) -> Reply {
    let users = worker.package_users();
    let mut removed = Vec::new();
    let mut freed = 0u64;
    for p in worker.packages.list() {
        let pkg = PackageRef {
            name: p.name.clone(),
            version: p.version.clone(),
            source: None,
        };
        if users.contains_key(&pkg.key()) {
            continue;
        }
        if worker.packages.remove(&pkg, Vec::new()).is_ok() {
            freed += p.size_bytes;
            removed.push(pkg.key());
        }
    }
    json(
        StatusCode::OK,
        &serde_json::json!({ "removed": removed, "bytes_freed": freed }),
    )
}

fn list(worker: &Worker) -> Reply {
    let all: Vec<_> = worker
        .registry
        .list()
        .iter()
        .map(|v| serde_json::to_value(v.as_ref()).unwrap_or_default())
        .collect();
    json(StatusCode::OK, &serde_json::Value::Array(all))
}

fn info(worker: &Worker, name: &str) -> Reply {
    if let Err(e) = validate_name(name) {
        return error(StatusCode::BAD_REQUEST, "invalid-name", e.to_string());
    }
    match worker.registry.get(name) {
        Some(v) => {
            // The version as deployed, plus how its instances are laid out (for baselines).
            let mut body = serde_json::to_value(v.as_ref()).unwrap_or_default();
            body["instance"] = serde_json::to_value(worker.instance_layout(&v)).unwrap_or_default();
            json(StatusCode::OK, &body)
        }
        None => error(
            StatusCode::NOT_FOUND,
            "not-found",
            format!("no function named `{name}`"),
        ),
    }
}

fn remove(worker: &Worker, name: &str) -> Reply {
    match worker.registry.remove(name) {
        Ok(_) => {
            worker.pool.invalidate(name);
            json(StatusCode::OK, &serde_json::json!({ "removed": name }))
        }
        Err(e @ RegistryError::NotFound(_)) => {
            error(StatusCode::NOT_FOUND, "not-found", e.to_string())
        }
        Err(e @ RegistryError::InvalidName(_)) => {
            error(StatusCode::BAD_REQUEST, "invalid-name", e.to_string())
        }
        Err(e) => error(StatusCode::INTERNAL_SERVER_ERROR, "registry", chain(&e)),
    }
}

fn gauges(worker: &Worker) -> Vec<(&'static str, u64)> {
    vec![
        ("sandboxes.live", worker.pool.live_sandboxes() as u64),
        ("instances.idle", worker.pool.idle_instances() as u64),
        ("zygotes.live", worker.zygotes.count() as u64),
        ("sandboxes.zygote", worker.zygotes.sandboxes() as u64),
        ("sandboxes.pooled", worker.zygotes.pooled() as u64),
        ("sandboxes.seeded", worker.zygotes.seeded() as u64),
        (
            "background.pending",
            worker.pool.background_pending() as u64,
        ),
        ("functions", worker.registry.list().len() as u64),
        ("http.connections", worker.connections.open() as u64),
    ]
}

/// The worker's state; for callers without the admin token, only that it is up (no host paths,
/// no function or package names).
fn status(worker: &Worker, admin: bool) -> Reply {
    if !admin {
        return json(
            StatusCode::OK,
            &serde_json::json!({
                "status": "ready",
                "version": env!("CARGO_PKG_VERSION"),
                "uptime_secs": worker.started.elapsed().as_secs(),
            }),
        );
    }
    json(
        StatusCode::OK,
        &serde_json::json!({
            "status": "ready",
            "version": env!("CARGO_PKG_VERSION"),
            "uptime_secs": worker.started.elapsed().as_secs(),
            "root": worker.config.root,
            "base": worker.base.info,
            "rootfs": worker.base.rootfs,
            "storage_dir": worker.storage.as_ref().and_then(|s| s.backend().local_dir()),
            "cgroups": worker.cgroup_layout,
            "freezer": worker.freezer,
            "functions": worker.registry.list().len(),
            "sandboxes": worker.pool.live_sandboxes(),
            "idle_instances": worker.pool.idle_instances(),
            "connections": worker.connections.open(),
            "zygotes": worker.zygotes.describe(),
        }),
    )
}

fn stats(worker: &Worker) -> Reply {
    let mut g = gauges(worker);
    g.push((
        "pull-package.cnt",
        worker
            .packages
            .pulls
            .load(std::sync::atomic::Ordering::Relaxed),
    ));
    g.push((
        "package-store-hit.cnt",
        worker
            .packages
            .hits
            .load(std::sync::atomic::Ordering::Relaxed),
    ));
    json(StatusCode::OK, &worker.metrics.stats_json(&g))
}

fn metrics(worker: &Worker) -> Reply {
    let mut r = text(StatusCode::OK, worker.metrics.prometheus(&gauges(worker)));
    r.headers_mut().insert(
        CONTENT_TYPE,
        HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
    );
    r
}

/// `GET /logs/<name>?tail=N[&follow]`: the last N lines (default 100) of a function's log, then
/// with `follow` the lines written after them, as they come.
fn logs(worker: &Worker, name: &str, query: Option<&str>) -> Reply {
    use crate::logs::{LogError, MAX_TAIL_LINES};
    if let Err(e) = validate_name(name) {
        return error(StatusCode::BAD_REQUEST, "invalid-name", e.to_string());
    }
    let (mut lines, mut follow) = (100, false);
    for pair in query.unwrap_or("").split('&').filter(|p| !p.is_empty()) {
        match pair.split_once('=').unwrap_or((pair, "")) {
            ("tail", n) => match n.parse::<usize>() {
                Ok(n) if n <= MAX_TAIL_LINES => lines = n,
                _ => {
                    return error(
                        StatusCode::BAD_REQUEST,
                        "invalid-tail",
                        format!(
                            "tail must be a number of lines up to {MAX_TAIL_LINES}, not `{}`",
                            n.chars().take(32).collect::<String>()
                        ),
                    )
                }
            },
            ("follow", _) => follow = true,
            _ => {}
        }
    }
    let (text, from) = match worker.logs.tail(name, lines) {
        Ok(t) => (t.text, t.from),
        Err(LogError::NotFound(_)) if worker.registry.get(name).is_some() => {
            (Vec::new(), worker.logs.follower(name))
        }
        Err(e @ LogError::NotFound(_)) => {
            return error(StatusCode::NOT_FOUND, "not-found", e.to_string())
        }
        Err(e) => return error(StatusCode::INTERNAL_SERVER_ERROR, "logs", chain(&e)),
    };
    if !follow {
        let mut r = Response::new(full(text));
        r.headers_mut().insert(
            CONTENT_TYPE,
            HeaderValue::from_static("text/plain; charset=utf-8"),
        );
        return r;
    }
    let (mut sender, channel) = Channel::<Bytes>::new(4);
    tokio::spawn(async move {
        let mut from = from;
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
    let mut r = Response::new(Either::Right(channel));
    r.headers_mut().insert(
        CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    r
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn route(method: &str, path: &'static str) -> Result<Route<'static>, NoRoute> {
        Route::parse(&Method::from_bytes(method.as_bytes()).unwrap(), path)
    }

    #[test]
    fn routes() {
        assert_eq!(route("POST", "/run/hello"), Ok(Route::Run("hello")));
        assert_eq!(route("GET", "/run/hello/"), Ok(Route::Run("hello")));
        assert_eq!(route("POST", "/run/a/b"), Err(NoRoute::RunPath));
        assert_eq!(route("POST", "/run"), Err(NoRoute::RunPath));
        assert_eq!(route("GET", "/registry"), Ok(Route::Functions));
        assert_eq!(route("PUT", "/registry/f"), Ok(Route::Deploy("f")));
        assert_eq!(route("POST", "/registry/f"), Ok(Route::Deploy("f")));
        assert_eq!(route("GET", "/registry/f"), Ok(Route::Function("f")));
        assert_eq!(route("DELETE", "/registry/f"), Ok(Route::Remove("f")));
        assert_eq!(route("PATCH", "/registry/f"), Err(NoRoute::Method));
        assert_eq!(route("POST", "/status"), Err(NoRoute::Method));
        assert_eq!(route("GET", "/packages/gc"), Err(NoRoute::Method));
        assert_eq!(
            route("DELETE", "/packages/six==1.16.0"),
            Ok(Route::RemovePackage("six==1.16.0"))
        );
        assert_eq!(route("GET", "/nowhere"), Err(NoRoute::NotFound));
    }

    /// Which requests need the admin token: every one but `/status` and (by default) `/run`.
    #[test]
    fn route_access() {
        let table = [
            ("POST", "/run/f", Access::Invoke),
            ("GET", "/status", Access::Public),
            ("GET", "/registry", Access::Admin),
            ("POST", "/registry/f", Access::Admin),
            ("PUT", "/registry/f", Access::Admin),
            ("GET", "/registry/f", Access::Admin),
            ("DELETE", "/registry/f", Access::Admin),
            ("GET", "/stats", Access::Admin),
            ("GET", "/metrics", Access::Admin),
            ("GET", "/packages", Access::Admin),
            ("POST", "/packages/gc", Access::Admin),
            ("DELETE", "/packages/six==1.16.0", Access::Admin),
            ("GET", "/logs/f", Access::Admin),
        ];
        let open = crate::auth::Policy::default();
        for (method, path, access) in table {
            let r = route(method, path).unwrap();
            assert_eq!(r.access(), access, "{method} {path}");
            let anonymous_ok = access != Access::Admin;
            assert_eq!(
                open.allows(r.access(), Caller::Anonymous),
                anonymous_ok,
                "{method} {path}"
            );
            assert!(open.allows(r.access(), Caller::Admin), "{method} {path}");
        }
    }

    #[test]
    fn echoed_input_is_bounded() {
        assert_eq!(echo("/short"), "/short");
        let long = format!("/{}", "é".repeat(300));
        let cut = echo(&long);
        assert!(cut.len() <= MAX_ECHO + 3, "{}", cut.len());
        assert!(cut.ends_with("..."));
    }
}
