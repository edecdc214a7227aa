//! `POST|PUT /registry/<name>`: a deploy, answered when done or streamed as JSON lines.

use super::body::{body_stall, read_body};
use super::reply::{self, Reply};
use crate::daemon::Worker;
use crate::registry::validate_name;
use http_body_util::Channel;
use hyper::body::{Bytes, Incoming};
use hyper::{Request, StatusCode};
use kindling_api::types as api;
use kindling_api::{ApiError, ErrorKind};
use std::sync::Arc;

/// Most bytes of a deploy's error message: each piece of input it repeats is already cut short
/// where it is made ([`crate::echo`]); this bounds the whole.
const MAX_DEPLOY_ERROR_BYTES: usize = 16 * 1024;

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

pub(super) async fn deploy(worker: &Arc<Worker>, name: &str, req: Request<Incoming>) -> Reply {
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
    let sender = parking_lot::Mutex::new(sender);
    let handle = tokio::runtime::Handle::current();
    // The deploy runs on a blocking thread, which feeds the response body as it goes.
    tokio::task::spawn_blocking(move || {
        let send = |line: &api::DeployLine| {
            let Ok(mut text) = serde_json::to_string(line) else {
                return;
            };
            text.push('\n');
            let mut s = sender.lock();
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
