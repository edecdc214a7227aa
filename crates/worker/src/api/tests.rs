//! The route table, its parse functions, and its agreement with `docs/api/openapi.yaml`.

use super::logs::parse_logs_query;
use super::run::{parse_event, parse_start};
use super::*;
use crate::pool::StartPolicy;
use hyper::body::Bytes;
use std::collections::BTreeSet;

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

#[test]
fn no_route_errors() {
    let get = Method::GET;
    assert_eq!(
        NoRoute::RunPath.error(&get, "/run").kind,
        ErrorKind::InvalidName
    );
    let e = NoRoute::Method.error(&Method::POST, "/status");
    assert_eq!(
        (e.kind, e.message.as_str()),
        (ErrorKind::Method, "POST is not allowed on /status")
    );
    let e = NoRoute::NotFound.error(&get, "/nowhere");
    assert_eq!(e.status(), StatusCode::NOT_FOUND);
    assert_eq!(e.message, "no such endpoint: /nowhere");
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
fn start_header() {
    let h = |v: &str| parse_start(Some(&HeaderValue::from_str(v).unwrap()));
    assert_eq!(parse_start(None), Ok(StartPolicy::Any));
    assert_eq!(h(""), Ok(StartPolicy::Any));
    assert_eq!(h("Warm"), Ok(StartPolicy::Any));
    assert_eq!(h("any"), Ok(StartPolicy::Any));
    assert_eq!(h(" FORK "), Ok(StartPolicy::Fork));
    assert_eq!(h("cold"), Ok(StartPolicy::Cold));
    assert_eq!(h("Switch"), Ok(StartPolicy::Switch));
    let e = h("teleport").unwrap_err();
    assert_eq!(e.kind, ErrorKind::StartMethod);
    assert!(e.message.contains("`teleport`"), "{}", e.message);
    assert!(e.message.contains("switch"), "{}", e.message);
    let e = parse_start(Some(&HeaderValue::from_bytes(b"\xff").unwrap())).unwrap_err();
    assert_eq!(e.status(), StatusCode::BAD_REQUEST);
}

#[test]
fn events() {
    assert_eq!(parse_event(Bytes::from_static(b" \n")).unwrap(), "null");
    assert_eq!(
        parse_event(Bytes::from_static(b"{\"a\":1}")).unwrap(),
        "{\"a\":1}"
    );
    let e = parse_event(Bytes::from_static(b"{nope")).unwrap_err();
    assert_eq!(
        (e.kind, e.status()),
        (ErrorKind::MalformedJson, StatusCode::BAD_REQUEST)
    );
}

#[test]
fn logs_query() {
    assert_eq!(parse_logs_query(None), Ok((100, false)));
    assert_eq!(parse_logs_query(Some("tail=5&follow")), Ok((5, true)));
    assert_eq!(parse_logs_query(Some("follow=1&other=x")), Ok((100, true)));
    let e = parse_logs_query(Some("tail=-1")).unwrap_err();
    assert_eq!(e.kind, ErrorKind::InvalidTail);
    let too_many = format!("tail={}", crate::logs::MAX_TAIL_LINES + 1);
    assert!(parse_logs_query(Some(&too_many)).is_err());
}

#[test]
fn package_keys() {
    assert_eq!(parse_package("six==1.16.0").unwrap().key(), "six==1.16.0");
    let e = parse_package("six").unwrap_err();
    assert_eq!(
        (e.kind, e.status()),
        (ErrorKind::InvalidPackage, StatusCode::BAD_REQUEST)
    );
}

/// One request per route (the match is exhaustive: a new route must be added here), with the
/// method the OpenAPI description gives it.
fn every_route() -> Vec<(&'static str, &'static str, Route<'static>)> {
    let all = [
        ("POST", "/run/f", Route::Run("f")),
        ("GET", "/registry", Route::Functions),
        ("POST", "/registry/f", Route::Deploy("f")),
        ("PUT", "/registry/f", Route::Deploy("f")),
        ("GET", "/registry/f", Route::Function("f")),
        ("DELETE", "/registry/f", Route::Remove("f")),
        ("GET", "/status", Route::Status),
        ("GET", "/stats", Route::Stats),
        ("GET", "/metrics", Route::Metrics),
        ("GET", "/packages", Route::Packages),
        ("POST", "/packages/gc", Route::PackagesGc),
        (
            "DELETE",
            "/packages/six==1.16.0",
            Route::RemovePackage("six==1.16.0"),
        ),
        ("GET", "/logs/f", Route::Logs("f")),
    ];
    for (_, _, r) in &all {
        match r {
            Route::Run(_)
            | Route::Functions
            | Route::Deploy(_)
            | Route::Function(_)
            | Route::Remove(_)
            | Route::Status
            | Route::Stats
            | Route::Metrics
            | Route::Packages
            | Route::PackagesGc
            | Route::RemovePackage(_)
            | Route::Logs(_) => {}
        }
    }
    all.to_vec()
}

/// `(METHOD, path)` of every operation in `docs/api/openapi.yaml`.
fn openapi_operations() -> (serde_json::Value, BTreeSet<(String, String)>) {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../../docs/api/openapi.yaml");
    let text = std::fs::read_to_string(path).unwrap();
    let doc: serde_json::Value = serde_norway::from_str(&text).unwrap();
    let mut ops = BTreeSet::new();
    for (p, item) in doc["paths"].as_object().unwrap() {
        for method in item.as_object().unwrap().keys() {
            if ["get", "put", "post", "delete", "patch", "head", "options"]
                .contains(&method.as_str())
            {
                ops.insert((method.to_uppercase(), p.clone()));
            }
        }
    }
    (doc, ops)
}

/// The OpenAPI description and the route table describe the same routes: every route is an
/// operation of the description, and every operation is a route.
#[test]
fn openapi_matches_the_routes() {
    let (_, ops) = openapi_operations();
    let routes: BTreeSet<(String, String)> = every_route()
        .into_iter()
        .map(|(method, path, r)| {
            assert_eq!(route(method, path), Ok(r), "{method} {path}");
            (method.to_string(), r.template().to_string())
        })
        .collect();
    assert_eq!(
        ops, routes,
        "docs/api/openapi.yaml and the route table differ"
    );
    // Each documented path, filled in, reaches the route of that path.
    for (method, template) in &ops {
        let concrete = template
            .replace("{name}", "f")
            .replace("{package}", "six==1.16.0");
        let concrete: &'static str = Box::leak(concrete.into_boxed_str());
        let r = route(method, concrete).unwrap_or_else(|e| panic!("{method} {template}: {e:?}"));
        assert_eq!(r.template(), template);
    }
}

/// The description names every error kind the API can send, and the worker states.
#[test]
fn openapi_names_errors_and_states() {
    let (doc, _) = openapi_operations();
    let text = doc.to_string();
    for kind in ErrorKind::ALL {
        assert!(
            text.contains(&format!("\"{}\"", kind.as_str())),
            "{kind:?} undocumented"
        );
    }
    for state in [
        WorkerState::Starting,
        WorkerState::Ready,
        WorkerState::Draining,
    ] {
        assert!(
            text.contains(&format!("\"{state}\"")),
            "{state} undocumented"
        );
    }
}
