//! The accept loop shared by the worker's Unix-socket services for sandboxes (object storage,
//! NoSQL): at most `max_connections` served at once (beyond that, callers wait in the listen
//! backlog), each connection on a task of its own, until `stop` fires.

use std::future::Future;
use std::os::unix::net::UnixListener;
use std::sync::Arc;
use std::time::Duration;

/// Accepts on `listener` and hands each connection to `serve`; `what` names the service in logs.
pub async fn accept_loop<F, Fut>(
    listener: UnixListener,
    max_connections: usize,
    mut stop: tokio::sync::oneshot::Receiver<()>,
    what: &'static str,
    serve: F,
) where
    F: Fn(tokio::net::UnixStream) -> Fut,
    Fut: Future<Output = ()> + Send + 'static,
{
    let listener = match tokio::net::UnixListener::from_std(listener) {
        Ok(l) => l,
        Err(e) => {
            tracing::error!("{what} cannot serve: {e}");
            return;
        }
    };
    let permits = Arc::new(tokio::sync::Semaphore::new(max_connections));
    loop {
        // Beyond max_connections, callers wait in the listen backlog. A function past its own
        // limit is refused at once by the service, so one function cannot take every permit
        // for long.
        let permit = tokio::select! {
            _ = &mut stop => break,
            p = permits.clone().acquire_owned() => match p {
                Ok(p) => p,
                Err(_) => break,
            },
        };
        let stream = tokio::select! {
            _ = &mut stop => break,
            accepted = listener.accept() => match accepted {
                Ok((s, _)) => s,
                Err(e) => {
                    tracing::warn!("{what} accept failed: {e}");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let served = serve(stream);
        tokio::spawn(async move {
            served.await;
            drop(permit);
        });
    }
}
