//! The route table, its parse functions, and its agreement with `docs/api/openapi.yaml`.

use super::logs::parse_logs_query;
use super::run::{http_request, parse_event, parse_start, Target};
use super::*;
use crate::pool::StartPolicy;
use hyper::body::Bytes;
use std::collections::BTreeSet;

fn route(method: &str, path: &'static str) -> Result<Route<'static>, NoRoute> {
    Route::parse(&Method::from_bytes(method.as_bytes()).unwrap(), path)
}

#[test]
fn routes() {
    assert_eq!(route("POST", "/run/hello"), Ok(Route::Run("hello", "")));
    assert_eq!(route("GET", "/run/hello/"), Ok(Route::Run("hello", "/")));
    assert_eq!(route("POST", "/run/a/b"), Ok(Route::Run("a", "/b")));
    assert_eq!(
        route("PUT", "/run/a/b/%20c/"),
        Ok(Route::Run("a", "/b/%20c/"))
    );
    assert_eq!(route("POST", "/run"), Err(NoRoute::RunPath));
    assert_eq!(route("POST", "/run/"), Err(NoRoute::RunPath));
    assert_eq!(route("POST", "/run//a"), Err(NoRoute::RunPath));
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
    assert_eq!(route("POST", "/nosql/f/t"), Err(NoRoute::Method));
    assert_eq!(route("GET", "/nosql/f/t/x"), Err(NoRoute::Method));
    assert_eq!(
        route("GET", "/nosql/f/t/items/"),
        Ok(Route::NosqlItems("f", "t"))
    );
}

#[test]
fn nosql_queries_and_bodies() {
    use super::nosql::{parse_items, parse_keys, parse_primary};
    use crate::nosql::table::KeyValue;
    assert_eq!(parse_primary(None).unwrap(), None);
    assert_eq!(
        parse_primary(Some("primary=c%201")).unwrap(),
        Some(KeyValue::Str("c 1".into()))
    );
    assert_eq!(
        parse_primary(Some("primary_int=-7")).unwrap(),
        Some(KeyValue::Int(-7))
    );
    for bad in [
        "primary_int=1.5",
        "primary=a&primary_int=1",
        "primary=a&primary=b",
    ] {
        let e = parse_primary(Some(bad)).unwrap_err();
        assert_eq!(e.kind, ErrorKind::NosqlInvalid, "{bad}");
    }
    let keys = parse_keys(br#"{"primary_key": "cart_id", "secondary_key": "product_id"}"#).unwrap();
    assert_eq!(keys.primary_key, "cart_id");
    assert!(parse_keys(br#"{"primary_key": "a"}"#).is_err());
    assert_eq!(parse_items(br#"[{"a": 1}, {}]"#).unwrap().len(), 2);
    let e = parse_items(br#"{"a": 1}"#).unwrap_err();
    assert!(e.message.contains("JSON list of items"), "{e}");
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
        ("DELETE", "/run/f/a/b", Access::Invoke),
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

/// A web function's view of a request: the sub-path below its root, decoded; the query as sent;
/// headers by lower-case name, values one character per byte; never the admin's token.
#[test]
fn web_requests() {
    let uri: hyper::Uri = "/run/app/a%2Fb/%C3%A9?x=1&y=%26".parse().unwrap();
    let mut headers = hyper::HeaderMap::new();
    headers.insert("X-Latin", HeaderValue::from_bytes(b"caf\xe9").unwrap());
    headers.insert(AUTHORIZATION, HeaderValue::from_static("Bearer secret"));
    let listen = "127.0.0.1:5000".parse().unwrap();
    for (caller, sees_authorization) in [(Caller::Admin, false), (Caller::Invalid, true)] {
        let target = Target {
            name: "app",
            sub_path: "/a%2Fb/%C3%A9",
            caller,
        };
        let r = http_request(&target, &Method::PATCH, &uri, &headers, listen);
        assert_eq!(r.method, "PATCH");
        assert_eq!(r.root, "/run/app");
        assert_eq!(r.path, "/a/b/\u{c3}\u{a9}");
        assert_eq!(r.raw_path, "/a%2Fb/%C3%A9");
        assert_eq!(r.query, "x=1&y=%26");
        assert_eq!(r.server, ("127.0.0.1".to_string(), 5000));
        assert!(r.headers.contains(&("x-latin".into(), "caf\u{e9}".into())));
        assert_eq!(
            r.headers.iter().any(|(k, _)| k == "authorization"),
            sees_authorization,
            "{caller:?}"
        );
    }
    let root = Target {
        name: "app",
        sub_path: "",
        caller: Caller::Anonymous,
    };
    let r = http_request(
        &root,
        &Method::GET,
        &"/run/app".parse().unwrap(),
        &hyper::HeaderMap::new(),
        listen,
    );
    assert_eq!(
        (r.path.as_str(), r.raw_path.as_str(), r.query.as_str()),
        ("/", "/", "")
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
        ("POST", "/run/f", Route::Run("f", "")),
        ("POST", "/run/f/a/b", Route::Run("f", "/a/b")),
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
        ("GET", "/nosql/f", Route::NosqlTables("f")),
        ("PUT", "/nosql/f/t", Route::NosqlDeclare("f", "t")),
        ("DELETE", "/nosql/f/t", Route::NosqlDrop("f", "t")),
        ("POST", "/nosql/f/t/items", Route::NosqlLoad("f", "t")),
        ("GET", "/nosql/f/t/items", Route::NosqlItems("f", "t")),
    ];
    for (_, _, r) in &all {
        match r {
            Route::Run(..)
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
            | Route::Logs(_)
            | Route::NosqlTables(_)
            | Route::NosqlDeclare(..)
            | Route::NosqlDrop(..)
            | Route::NosqlLoad(..)
            | Route::NosqlItems(..) => {}
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
            .replace("{path}", "a/b")
            .replace("{package}", "six==1.16.0")
            .replace("{table}", "t");
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
