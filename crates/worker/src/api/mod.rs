//! The HTTP API: routes only. Each request is parsed ([`Route::parse`], then a parse function per
//! route), handed to a command of the worker (`crate::commands`), and its result written as a
//! reply ([`reply`]). OpenLambda-compatible paths (`/run/<name>`, `/registry/<name>`, `/status`,
//! `/stats`) plus `/metrics`, `/packages` and `/logs`. Every route, its OpenAPI path and who may
//! call it is in one table, [`Route`]; `docs/api/openapi.yaml` describes the same routes (a test
//! keeps them in step). The connections themselves are `crate::http`'s.

mod body;
mod deploy;
mod logs;
mod nosql;
mod reply;
mod run;

use crate::auth::{Access, Caller};
use crate::daemon::Worker;
use crate::packages::PackageRef;
use hyper::body::Incoming;
use hyper::header::{HeaderValue, AUTHORIZATION};
use hyper::{Method, Request, StatusCode};
use kindling_api::types::{self as api, headers};
use kindling_api::{ApiError, ErrorKind, WorkerState};
use reply::{echo, failure, Reply};
use std::sync::Arc;

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
    /// `GET /nosql/<name>`
    NosqlTables(&'a str),
    /// `PUT /nosql/<name>/<table>`
    NosqlDeclare(&'a str, &'a str),
    /// `DELETE /nosql/<name>/<table>`
    NosqlDrop(&'a str, &'a str),
    /// `POST /nosql/<name>/<table>/items`
    NosqlLoad(&'a str, &'a str),
    /// `GET /nosql/<name>/<table>/items`
    NosqlItems(&'a str, &'a str),
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
            (["nosql", name], &Method::GET) => Route::NosqlTables(name),
            (["nosql", name, table], &Method::PUT) => Route::NosqlDeclare(name, table),
            (["nosql", name, table], &Method::DELETE) => Route::NosqlDrop(name, table),
            (["nosql", name, table, "items"], &Method::POST) => Route::NosqlLoad(name, table),
            (["nosql", name, table, "items"], &Method::GET) => Route::NosqlItems(name, table),
            (
                ["registry" | "status" | "stats" | "metrics" | "packages" | "logs" | "nosql", ..],
                _,
            ) => return Err(NoRoute::Method),
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
            Route::NosqlTables(_) => "/nosql/{name}",
            Route::NosqlDeclare(..) | Route::NosqlDrop(..) => "/nosql/{name}/{table}",
            Route::NosqlLoad(..) | Route::NosqlItems(..) => "/nosql/{name}/{table}/items",
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
            | Route::Logs(_)
            // A function's tables are its data.
            | Route::NosqlTables(_)
            | Route::NosqlDeclare(..)
            | Route::NosqlDrop(..)
            | Route::NosqlLoad(..)
            | Route::NosqlItems(..) => Access::Admin,
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
        worker
            .metrics
            .add(&api::stats::errors(ErrorKind::Unauthorized), 1);
        return Ok(reply::unauthorized(caller));
    }
    let state = worker.state.get();
    if state == WorkerState::Draining && route != Route::Status {
        let e = ApiError::new(ErrorKind::ShuttingDown, "the worker is shutting down");
        let mut r = reply::error(&e);
        if matches!(route, Route::Run(_)) {
            worker.metrics.add(&api::stats::errors(e.kind), 1);
            r.headers_mut()
                .insert(headers::START, HeaderValue::from_static(headers::NO_START));
        }
        return Ok(r);
    }
    let reply = match route {
        Route::Run(name) => run::run(&worker, name, req).await,
        Route::Functions => reply::json(StatusCode::OK, &worker.functions()),
        Route::Deploy(name) => deploy::deploy(&worker, name, req).await,
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
        Route::Logs(name) => logs::logs(&worker, name, req.uri().query()),
        Route::NosqlTables(name) => {
            nosql::nosql(&worker, name, None, Ok(nosql::Call::Tables)).await
        }
        Route::NosqlDeclare(name, table) => {
            let call = match nosql::body_of(&worker, req).await {
                Ok(body) => nosql::parse_keys(&body).map(nosql::Call::Declare),
                Err(e) => Err(e),
            };
            nosql::nosql(&worker, name, Some(table), call).await
        }
        Route::NosqlDrop(name, table) => {
            nosql::nosql(&worker, name, Some(table), Ok(nosql::Call::Drop)).await
        }
        Route::NosqlLoad(name, table) => {
            let call = match nosql::body_of(&worker, req).await {
                Ok(body) => nosql::parse_items(&body).map(nosql::Call::Load),
                Err(e) => Err(e),
            };
            nosql::nosql(&worker, name, Some(table), call).await
        }
        Route::NosqlItems(name, table) => {
            let call = nosql::parse_primary(req.uri().query()).map(nosql::Call::Items);
            nosql::nosql(&worker, name, Some(table), call).await
        }
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

fn parse_package(key: &str) -> Result<PackageRef, ApiError> {
    PackageRef::parse(key).ok_or_else(|| {
        ApiError::new(
            ErrorKind::InvalidPackage,
            format!("`{}` is not <name>==<version>", echo(key)),
        )
    })
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests;
