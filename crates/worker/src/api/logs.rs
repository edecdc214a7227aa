//! `GET /logs/<name>?tail=N[&follow]`.

use super::reply::{self, failure, Reply};
use crate::daemon::Worker;
use crate::registry::validate_name;
use http_body_util::Channel;
use hyper::body::Bytes;
use hyper::StatusCode;
use kindling_api::{ApiError, ErrorKind};

/// `?tail=N[&follow]`: how many lines (default 100), and whether to follow.
pub(super) fn parse_logs_query(query: Option<&str>) -> Result<(usize, bool), ApiError> {
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
pub(super) fn logs(worker: &Worker, name: &str, query: Option<&str>) -> Reply {
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
