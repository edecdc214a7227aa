//! The NoSQL admin routes: a function's tables declared, listed and dropped, items loaded and
//! read from outside, as SeBS's harness does before a run (`nosql_upload`). Each parses its
//! request and runs its command on a blocking thread (the database is SQLite).

use super::body::{body_stall, read_body};
use super::reply::{self, failure, Reply};
use crate::daemon::Worker;
use crate::nosql::store::Item;
use crate::nosql::table::KeyValue;
use crate::nosql::NosqlError;
use hyper::body::Incoming;
use hyper::{Request, StatusCode};
use kindling_api::types as api;
use kindling_api::{ApiError, ErrorKind};
use std::sync::Arc;

/// What a NoSQL route does.
pub(super) enum Call {
    Tables,
    Declare(api::TableKeys),
    Drop,
    Load(Vec<Item>),
    Items(Option<KeyValue>),
}

/// The body of `PUT /nosql/<function>/<table>`.
pub(super) fn parse_keys(body: &[u8]) -> Result<api::TableKeys, ApiError> {
    serde_json::from_slice(body).map_err(|e| {
        ApiError::new(
            ErrorKind::NosqlInvalid,
            format!(
                "the body must be {{\"primary_key\": name, \"secondary_key\": name}}: {}",
                crate::echo::echo(&e.to_string())
            ),
        )
    })
}

/// The body of `POST /nosql/<function>/<table>/items`: a JSON list of items (objects).
pub(super) fn parse_items(body: &[u8]) -> Result<Vec<Item>, ApiError> {
    serde_json::from_slice(body).map_err(|e| {
        ApiError::new(
            ErrorKind::NosqlInvalid,
            format!(
                "the body must be a JSON list of items (objects with both key attributes): {}",
                crate::echo::echo(&e.to_string())
            ),
        )
    })
}

/// `?primary=<string>` or `?primary_int=<integer>`: the primary key value to read.
pub(super) fn parse_primary(query: Option<&str>) -> Result<Option<KeyValue>, ApiError> {
    let bad = |msg: String| ApiError::new(ErrorKind::NosqlInvalid, msg);
    let mut primary = None;
    for (k, v) in form_urlencoded::parse(query.unwrap_or("").as_bytes()) {
        let value = match k.as_ref() {
            "primary" => KeyValue::Str(v.into_owned()),
            "primary_int" => KeyValue::Int(v.parse().map_err(|_| {
                bad(format!(
                    "primary_int must be a 64-bit integer, not `{}`",
                    crate::echo::echo(&v)
                ))
            })?),
            _ => continue,
        };
        if primary.replace(value).is_some() {
            return Err(bad("give one of primary and primary_int, once".into()));
        }
    }
    Ok(primary)
}

/// Serves one NoSQL route for `function`'s `table`.
pub(super) async fn nosql(
    worker: &Arc<Worker>,
    function: &str,
    table: Option<&str>,
    call: Result<Call, ApiError>,
) -> Reply {
    let call = match call {
        Ok(c) => c,
        Err(e) => return reply::error(&e),
    };
    let (w, function, table) = (
        worker.clone(),
        function.to_string(),
        table.unwrap_or_default().to_string(),
    );
    let done = tokio::task::spawn_blocking(move || -> Result<Reply, NosqlError> {
        let ok = StatusCode::OK;
        Ok(match call {
            Call::Tables => reply::json(ok, &w.nosql_tables(&function)?),
            Call::Declare(keys) => reply::json(ok, &w.nosql_declare(&function, &table, &keys)?),
            Call::Drop => reply::json(ok, &w.nosql_drop(&function, &table)?),
            Call::Load(items) => reply::json(ok, &w.nosql_load(&function, &table, items)?),
            Call::Items(primary) => {
                reply::json(ok, &w.nosql_items(&function, &table, primary.as_ref())?)
            }
        })
    })
    .await;
    match done {
        Ok(Ok(r)) => r,
        Ok(Err(e)) => reply::error(&failure(&e)),
        Err(e) => reply::error(&ApiError::new(
            ErrorKind::Internal,
            format!("NoSQL call failed: {e}"),
        )),
    }
}

/// Reads the body of a route that takes one, within the NoSQL reply bound.
pub(super) async fn body_of(worker: &Worker, req: Request<Incoming>) -> Result<Vec<u8>, ApiError> {
    let limit = usize::try_from(worker.config.nosql.max_reply_bytes).unwrap_or(usize::MAX);
    Ok(read_body(req, limit, body_stall(worker)).await?.to_vec())
}

impl From<&NosqlError> for ErrorKind {
    fn from(e: &NosqlError) -> Self {
        match e {
            NosqlError::Disabled => ErrorKind::NosqlDisabled,
            NosqlError::InvalidFunction(_) => ErrorKind::InvalidName,
            NosqlError::NoSuchTable { .. } => ErrorKind::NoSuchTable,
            NosqlError::ItemTooLarge { .. } | NosqlError::ReplyTooLarge { .. } => {
                ErrorKind::TooLarge
            }
            NosqlError::ItemQuota { .. }
            | NosqlError::ByteQuota { .. }
            | NosqlError::StoreFull { .. }
            | NosqlError::TableQuota { .. } => ErrorKind::NosqlQuota,
            NosqlError::TableConflict { .. } => ErrorKind::NosqlConflict,
            NosqlError::Database { .. } | NosqlError::Corrupt { .. } | NosqlError::Io { .. } => {
                ErrorKind::Nosql
            }
            _ => ErrorKind::NosqlInvalid,
        }
    }
}
