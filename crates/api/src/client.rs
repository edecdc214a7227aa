//! The one HTTP/1.1 client of the worker's API, keeping one connection open across requests
//! (benchmarks measure with it, so it must not add a connection setup to every call). Every
//! request carries the admin token when this process has one ([`set_token`]), or the client's
//! own ([`Client::with_token`]). Beside the raw [`Client::request`] are typed methods, one per
//! route, that read replies into [`crate::types`]; [`blocking`] wraps it for synchronous callers.

use crate::types::{self, DeployLine, DeployOutcome};
use crate::{ApiError, ErrorKind, StartMethod};
use anyhow::{anyhow, bail, Context, Result};
use http_body_util::{BodyExt, Full};
use hyper::body::Bytes;
use hyper::client::conn::http1::SendRequest;
use hyper::{Method, Request, StatusCode};
use std::net::SocketAddr;
use std::path::Path;
use std::sync::OnceLock;

/// The admin token every client of this process sends: a process talks to one worker.
static TOKEN: OnceLock<Option<String>> = OnceLock::new();

/// Where the worker's token is found: `KINDLING_TOKEN`, else `<root>/token` if this user may read
/// it (root, or the worker's admin group), else none (routes that need it then answer 401).
pub fn find_token(root: &Path) -> Option<String> {
    if let Some(t) = std::env::var("KINDLING_TOKEN")
        .ok()
        .filter(|t| !t.trim().is_empty())
    {
        return Some(t.trim().to_string());
    }
    let path = root.join(crate::TOKEN_FILE);
    match std::fs::read_to_string(&path) {
        Ok(t) => Some(t.trim().to_string()),
        Err(e) => {
            tracing::debug!("no admin token from {}: {e}", path.display());
            None
        }
    }
}

/// Sets the token of every client of this process (once, at start-up).
pub fn set_token(token: Option<String>) {
    let _ = TOKEN.set(token);
}

/// A response: status, headers and the whole body.
pub struct Response {
    pub status: StatusCode,
    pub headers: hyper::HeaderMap,
    pub body: Bytes,
}

impl Response {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }

    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    /// The body read as JSON into `T`.
    pub fn json<T: serde::de::DeserializeOwned>(&self) -> Result<T> {
        serde_json::from_slice(&self.body).with_context(|| {
            format!(
                "unexpected reply ({}): {}",
                self.status,
                String::from_utf8_lossy(&self.body[..self.body.len().min(512)])
            )
        })
    }

    /// The error this reply reports (`X-Kindling-Error` and its status), if it is one.
    pub fn error(&self) -> Option<ApiError> {
        let kind = ErrorKind::parse(self.status, self.header(crate::error::ERROR_HEADER)?)?;
        Some(ApiError::new(kind, self.text()))
    }

    /// What a `/run` reply's headers say about the invocation.
    pub fn run_info(&self) -> types::RunInfo {
        types::RunInfo::from_headers(|name| self.header(name))
    }

    /// Fails with the body as the message unless the status is 2xx.
    pub fn ok(self) -> Result<Self> {
        if self.status.is_success() {
            Ok(self)
        } else if self.status == StatusCode::UNAUTHORIZED {
            Err(anyhow!(
                "{}: {}\n(the worker's admin token is in <root>/token, readable by root or the \
                 worker's admin_group: run as root, give the worker's --root or KINDLING_ROOT, or \
                 set KINDLING_TOKEN)",
                self.status,
                self.text().trim_end()
            ))
        } else {
            Err(anyhow!("{}: {}", self.status, self.text().trim_end()))
        }
    }
}

/// Which admin token a client sends.
#[derive(Debug, Clone)]
enum Auth {
    /// The process's ([`set_token`]).
    Process,
    /// Its own, or none.
    Own(Option<String>),
}

/// A connection to the worker.
pub struct Client {
    addr: SocketAddr,
    auth: Auth,
    sender: Option<SendRequest<Full<Bytes>>>,
    /// The connection's task: it ends when the connection is done, handing back its socket.
    connection: Option<tokio::task::JoinHandle<Option<tokio::net::TcpStream>>>,
}

impl Client {
    /// A client sending the process's token ([`set_token`]).
    pub fn new(addr: SocketAddr) -> Self {
        Self {
            addr,
            auth: Auth::Process,
            sender: None,
            connection: None,
        }
    }

    /// A client sending `token` (none: no `Authorization`), whatever the process's.
    pub fn with_token(addr: SocketAddr, token: Option<String>) -> Self {
        Self {
            addr,
            auth: Auth::Own(token),
            sender: None,
            connection: None,
        }
    }

    /// Adds the client's admin token, if any, to a request (unless the caller gave its own
    /// `Authorization`).
    fn authorized(&self, builder: hyper::http::request::Builder) -> hyper::http::request::Builder {
        let own = builder
            .headers_ref()
            .is_some_and(|h| h.contains_key(hyper::header::AUTHORIZATION));
        let token = match &self.auth {
            Auth::Process => TOKEN.get().and_then(Option::as_deref),
            Auth::Own(t) => t.as_deref(),
        };
        match token {
            Some(token) if !own => {
                builder.header(hyper::header::AUTHORIZATION, format!("Bearer {token}"))
            }
            _ => builder,
        }
    }

    async fn connect(&mut self) -> Result<&mut SendRequest<Full<Bytes>>> {
        if self.sender.as_ref().is_none_or(|s| s.is_closed()) {
            let stream = tokio::net::TcpStream::connect(self.addr).await.map_err(|e| {
                anyhow!(
                    "cannot reach the Kindling worker at {} ({e}); is it running? Start it with `kindling up`",
                    self.addr
                )
            })?;
            stream.set_nodelay(true)?;
            let (sender, conn) =
                hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream)).await?;
            self.connection = Some(tokio::spawn(async move {
                conn.without_shutdown()
                    .await
                    .ok()
                    .map(|parts| parts.io.into_inner())
            }));
            self.sender = Some(sender);
        }
        self.sender.as_mut().ok_or_else(|| anyhow!("no connection"))
    }

    /// Sends one request.
    pub async fn request(
        &mut self,
        method: Method,
        path: &str,
        headers: &[(&str, &str)],
        body: impl Into<Bytes>,
    ) -> Result<Response> {
        let mut builder = Request::builder()
            .method(method)
            .uri(path)
            .header(hyper::header::HOST, self.addr.to_string());
        for (k, v) in headers {
            builder = builder.header(*k, *v);
        }
        let req = self.authorized(builder).body(Full::new(body.into()))?;
        let sender = self.connect().await?;
        sender.ready().await?;
        let resp = sender
            .send_request(req)
            .await
            .with_context(|| format!("request to {path} failed"))?;
        let (parts, body) = resp.into_parts();
        let body = body.collect().await?.to_bytes();
        Ok(Response {
            status: parts.status,
            headers: parts.headers,
            body,
        })
    }

    /// Sends one request and hands each line of the (streamed) response body to `on_line` as it
    /// arrives; returns the status.
    pub async fn request_lines(
        &mut self,
        method: Method,
        path: &str,
        body: impl Into<Bytes>,
        mut on_line: impl FnMut(&str),
    ) -> Result<StatusCode> {
        let req = self
            .authorized(
                Request::builder()
                    .method(method)
                    .uri(path)
                    .header(hyper::header::HOST, self.addr.to_string())
                    .header(hyper::header::ACCEPT, "application/x-ndjson"),
            )
            .body(Full::new(body.into()))?;
        let sender = self.connect().await?;
        sender.ready().await?;
        let resp = sender
            .send_request(req)
            .await
            .with_context(|| format!("request to {path} failed"))?;
        let status = resp.status();
        let mut body = resp.into_body();
        let mut pending = Vec::new();
        while let Some(frame) = body.frame().await {
            if let Ok(data) = frame?.into_data() {
                pending.extend_from_slice(&data);
                while let Some(nl) = pending.iter().position(|&b| b == b'\n') {
                    let line: Vec<u8> = pending.drain(..=nl).collect();
                    on_line(String::from_utf8_lossy(&line).trim_end());
                }
            }
        }
        if !pending.is_empty() {
            on_line(String::from_utf8_lossy(&pending).trim_end());
        }
        Ok(status)
    }

    /// Closes the connection. After a request that sent `Connection: close`, this waits (up to
    /// a second) until the worker has closed its side, so that the connection no longer counts
    /// against the worker's connection caps when the caller's next one comes.
    pub async fn close(mut self) {
        self.sender = None;
        let Some(connection) = self.connection.take() else {
            return;
        };
        if let Ok(Some(mut stream)) = connection.await {
            use tokio::io::AsyncReadExt;
            let mut buf = [0u8; 256];
            let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(1);
            while let Ok(Ok(n)) = tokio::time::timeout_at(deadline, stream.read(&mut buf)).await {
                if n == 0 {
                    break;
                }
            }
        }
    }

    pub async fn get(&mut self, path: &str) -> Result<Response> {
        self.request(Method::GET, path, &[], Bytes::new()).await
    }

    /// Waits (up to 10 s) until the worker has no background work pending (refills of seeds and
    /// pooled sandboxes, sandboxes being destroyed), so that a measured start neither competes
    /// with it nor finds the previous start's seed not yet replaced.
    pub async fn settle(&mut self) -> Result<()> {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        loop {
            let stats = self.stats().await?;
            if stats.count(types::stats::BACKGROUND_PENDING) == 0
                || std::time::Instant::now() >= deadline
            {
                return Ok(());
            }
            tokio::time::sleep(std::time::Duration::from_millis(2)).await;
        }
    }

    /// A GET whose 2xx reply is read as `T`.
    async fn get_json<T: serde::de::DeserializeOwned>(&mut self, path: &str) -> Result<T> {
        self.get(path).await?.ok()?.json()
    }

    /// A request without a body whose 2xx reply is read as `T`.
    async fn send_json<T: serde::de::DeserializeOwned>(
        &mut self,
        method: Method,
        path: &str,
    ) -> Result<T> {
        self.request(method, path, &[], Bytes::new())
            .await?
            .ok()?
            .json()
    }

    /// `GET /status`.
    pub async fn status(&mut self) -> Result<types::Status> {
        self.get_json("/status").await
    }

    /// `GET /stats`.
    pub async fn stats(&mut self) -> Result<types::Stats> {
        self.get_json("/stats").await
    }

    /// `GET /registry`.
    pub async fn functions(&mut self) -> Result<Vec<types::Function>> {
        self.get_json("/registry").await
    }

    /// `GET /registry/<name>`.
    pub async fn function(&mut self, name: &str) -> Result<types::FunctionDetail> {
        self.get_json(&format!("/registry/{name}")).await
    }

    /// `DELETE /registry/<name>`.
    pub async fn remove(&mut self, name: &str) -> Result<types::Removed> {
        self.send_json(Method::DELETE, &format!("/registry/{name}"))
            .await
    }

    /// `GET /packages`.
    pub async fn packages(&mut self) -> Result<Vec<types::StoredPackage>> {
        self.get_json("/packages").await
    }

    /// `DELETE /packages/<name>==<version>`.
    pub async fn remove_package(&mut self, key: &str) -> Result<types::Removed> {
        self.send_json(Method::DELETE, &format!("/packages/{key}"))
            .await
    }

    /// `POST /packages/gc`.
    pub async fn packages_gc(&mut self) -> Result<types::PackagesGc> {
        self.send_json(Method::POST, "/packages/gc").await
    }

    /// A request with a JSON body whose 2xx reply is read as `T`.
    async fn send_body_json<T: serde::de::DeserializeOwned>(
        &mut self,
        method: Method,
        path: &str,
        body: &impl serde::Serialize,
    ) -> Result<T> {
        let body = serde_json::to_vec(body)?;
        self.request(method, path, &[("content-type", "application/json")], body)
            .await?
            .ok()?
            .json()
    }

    /// `GET /nosql/<function>`.
    pub async fn nosql_tables(&mut self, function: &str) -> Result<types::NosqlTables> {
        self.get_json(&format!("/nosql/{function}")).await
    }

    /// `PUT /nosql/<function>/<table>`.
    pub async fn nosql_declare(
        &mut self,
        function: &str,
        table: &str,
        keys: &types::TableKeys,
    ) -> Result<types::TableDeclared> {
        self.send_body_json(Method::PUT, &format!("/nosql/{function}/{table}"), keys)
            .await
    }

    /// `DELETE /nosql/<function>/<table>`.
    pub async fn nosql_drop(&mut self, function: &str, table: &str) -> Result<types::TableDropped> {
        self.send_json(Method::DELETE, &format!("/nosql/{function}/{table}"))
            .await
    }

    /// `POST /nosql/<function>/<table>/items`: stores `items` (each with both key attributes),
    /// all or none.
    pub async fn nosql_load(
        &mut self,
        function: &str,
        table: &str,
        items: &[serde_json::Value],
    ) -> Result<types::ItemsLoaded> {
        let path = format!("/nosql/{function}/{table}/items");
        self.send_body_json(Method::POST, &path, &items).await
    }

    /// `GET /nosql/<function>/<table>/items`: every item, or those whose primary key is
    /// `primary` (a string or an integer).
    pub async fn nosql_items(
        &mut self,
        function: &str,
        table: &str,
        primary: Option<&serde_json::Value>,
    ) -> Result<types::NosqlItems> {
        let mut path = format!("/nosql/{function}/{table}/items");
        if let Some(value) = primary {
            let mut query = form_urlencoded::Serializer::new(String::new());
            match value {
                serde_json::Value::String(s) => query.append_pair("primary", s),
                serde_json::Value::Number(n) if n.is_i64() => {
                    query.append_pair("primary_int", &n.to_string())
                }
                other => bail!("a primary key is a string or an integer, not {other}"),
            };
            path = format!("{path}?{}", query.finish());
        }
        self.get_json(&path).await
    }

    /// `POST /registry/<name>?progress` with a `.tar.gz` body: hands each progress line to
    /// `on_progress`, and returns the deploy, or fails with the worker's message.
    pub async fn deploy(
        &mut self,
        name: &str,
        tar_gz: impl Into<Bytes>,
        mut on_progress: impl FnMut(&str),
    ) -> Result<types::Deployed> {
        let mut last: Option<std::result::Result<DeployLine, String>> = None;
        let status = self
            .request_lines(
                Method::POST,
                &format!("/registry/{name}?progress"),
                tar_gz,
                |line| match serde_json::from_str::<DeployLine>(line) {
                    Ok(DeployLine::Progress { progress }) => on_progress(&progress),
                    Ok(done) => last = Some(Ok(done)),
                    Err(_) => last = Some(Err(line.to_string())),
                },
            )
            .await?;
        deploy_outcome(name, status, last)
    }

    /// `POST /run/<name>` with a JSON event, forcing `start` if given. The reply is the
    /// function's (read its headers with [`Response::run_info`]), whatever its status.
    pub async fn invoke(
        &mut self,
        name: &str,
        event: impl Into<Bytes>,
        start: Option<StartMethod>,
    ) -> Result<Response> {
        let start = start.map(StartMethod::as_str);
        let headers: Vec<(&str, &str)> = start
            .map(|s| (types::headers::START, s))
            .into_iter()
            .collect();
        self.request(Method::POST, &format!("/run/{name}"), &headers, event)
            .await
    }
}

/// How a streamed deploy ended, from its status and its last line (an outcome, or the text of
/// a reply that was not streamed, such as a 400 for an invalid name).
fn deploy_outcome(
    name: &str,
    status: StatusCode,
    last: Option<std::result::Result<DeployLine, String>>,
) -> Result<types::Deployed> {
    match last {
        Some(Ok(DeployLine::Done {
            outcome: DeployOutcome::Deployed(d),
            ..
        })) if status.is_success() => Ok(d),
        Some(Ok(DeployLine::Done {
            outcome: DeployOutcome::Failed(f),
            ..
        })) => bail!("deploy of {name} failed: {}", f.error),
        Some(Err(text)) if !status.is_success() => bail!("{status}: {text}"),
        _ => bail!("{status}: the deploy of {name} ended without an outcome"),
    }
}

/// The client for synchronous callers (the end-to-end tests): each call runs the async client
/// on a runtime of its own.
pub mod blocking {
    use super::{Bytes, Method, Response, Result};
    use crate::{types, StartMethod};
    use std::net::SocketAddr;
    use std::time::Duration;

    /// A connection to the worker, used from synchronous code.
    pub struct Client {
        runtime: tokio::runtime::Runtime,
        inner: super::Client,
        timeout: Option<Duration>,
    }

    impl Client {
        /// A client sending the process's token.
        pub fn new(addr: SocketAddr) -> Result<Self> {
            Self::of(super::Client::new(addr))
        }

        /// A client sending `token` (none: no `Authorization`).
        pub fn with_token(addr: SocketAddr, token: Option<String>) -> Result<Self> {
            Self::of(super::Client::with_token(addr, token))
        }

        fn of(inner: super::Client) -> Result<Self> {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?;
            Ok(Self {
                runtime,
                inner,
                timeout: None,
            })
        }

        /// Fails a call that has no whole reply after `timeout`.
        pub fn timeout(mut self, timeout: Duration) -> Self {
            self.timeout = Some(timeout);
            self
        }

        /// Runs one call of the async client to its end (or the timeout).
        fn wait<T>(
            runtime: &tokio::runtime::Runtime,
            timeout: Option<Duration>,
            call: impl std::future::Future<Output = Result<T>>,
        ) -> Result<T> {
            runtime.block_on(async move {
                match timeout {
                    Some(t) => tokio::time::timeout(t, call)
                        .await
                        .map_err(|_| anyhow::anyhow!("no reply within {:.0} s", t.as_secs_f64()))?,
                    None => call.await,
                }
            })
        }

        /// Sends one request.
        pub fn request(
            &mut self,
            method: Method,
            path: &str,
            headers: &[(&str, &str)],
            body: impl Into<Bytes>,
        ) -> Result<Response> {
            let body = body.into();
            Self::wait(
                &self.runtime,
                self.timeout,
                self.inner.request(method, path, headers, body),
            )
        }

        /// Closes the connection and waits until it is closed ([`super::Client::close`]).
        pub fn close(self) {
            self.runtime.block_on(self.inner.close());
        }

        pub fn get(&mut self, path: &str) -> Result<Response> {
            Self::wait(&self.runtime, self.timeout, self.inner.get(path))
        }

        pub fn status(&mut self) -> Result<types::Status> {
            Self::wait(&self.runtime, self.timeout, self.inner.status())
        }

        pub fn stats(&mut self) -> Result<types::Stats> {
            Self::wait(&self.runtime, self.timeout, self.inner.stats())
        }

        pub fn functions(&mut self) -> Result<Vec<types::Function>> {
            Self::wait(&self.runtime, self.timeout, self.inner.functions())
        }

        pub fn function(&mut self, name: &str) -> Result<types::FunctionDetail> {
            Self::wait(&self.runtime, self.timeout, self.inner.function(name))
        }

        pub fn packages(&mut self) -> Result<Vec<types::StoredPackage>> {
            Self::wait(&self.runtime, self.timeout, self.inner.packages())
        }

        pub fn invoke(
            &mut self,
            name: &str,
            event: impl Into<Bytes>,
            start: Option<StartMethod>,
        ) -> Result<Response> {
            let event = event.into();
            Self::wait(
                &self.runtime,
                self.timeout,
                self.inner.invoke(name, event, start),
            )
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn line(text: &str) -> Option<std::result::Result<DeployLine, String>> {
        Some(serde_json::from_str(text).map_err(|_| text.to_string()))
    }

    #[test]
    fn deploy_outcomes() {
        let ok = r#"{"name":"f","hash":"ab","format":"openlambda","changed":true,"packages":[],"installed":[],"store_hits":0,"bytes_added":0,"package_ms":0.0,"status":200}"#;
        let d = deploy_outcome("f", StatusCode::OK, line(ok)).unwrap();
        assert!(d.changed);
        let failed = r#"{"error":"requirements.txt line 1: bad","status":400}"#;
        let e = deploy_outcome("f", StatusCode::OK, line(failed)).unwrap_err();
        assert_eq!(
            e.to_string(),
            "deploy of f failed: requirements.txt line 1: bad"
        );
        let e = deploy_outcome("..", StatusCode::BAD_REQUEST, line("invalid function name"))
            .unwrap_err();
        assert_eq!(e.to_string(), "400 Bad Request: invalid function name");
        assert!(deploy_outcome("f", StatusCode::OK, None).is_err());
    }

    #[test]
    fn error_replies_read_back_as_their_kind() {
        let mut headers = hyper::HeaderMap::new();
        headers.insert(crate::error::ERROR_HEADER, "busy".parse().unwrap());
        let r = Response {
            status: StatusCode::TOO_MANY_REQUESTS,
            headers,
            body: Bytes::from_static(b"queue full\n"),
        };
        let e = r.error().unwrap();
        assert_eq!(e.kind, ErrorKind::Busy);
        assert_eq!(e.message, "queue full\n");
        assert_eq!(r.run_info(), types::RunInfo::default());
    }
}
