//! A small HTTP/1.1 client of the worker's API, keeping one connection open across requests
//! (benchmarks measure with it, so it must not add a connection setup to every call). Every
//! request carries the admin token when this process has one ([`set_token`]).

use anyhow::{anyhow, Context, Result};
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

/// Adds the process's admin token, if any, to a request.
fn authorized(builder: hyper::http::request::Builder) -> hyper::http::request::Builder {
    match TOKEN.get().and_then(Option::as_deref) {
        Some(token) => builder.header(hyper::header::AUTHORIZATION, format!("Bearer {token}")),
        None => builder,
    }
}

/// A connection to the worker.
pub struct Client {
    addr: SocketAddr,
    sender: Option<SendRequest<Full<Bytes>>>,
}

impl Client {
    pub fn new(addr: SocketAddr) -> Self {
        Self { addr, sender: None }
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
            tokio::spawn(async move {
                let _ = conn.await;
            });
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
        let mut builder = authorized(
            Request::builder()
                .method(method)
                .uri(path)
                .header(hyper::header::HOST, self.addr.to_string()),
        );
        for (k, v) in headers {
            builder = builder.header(*k, *v);
        }
        let req = builder.body(Full::new(body.into()))?;
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
        let req = authorized(
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

    pub async fn get(&mut self, path: &str) -> Result<Response> {
        self.request(Method::GET, path, &[], Bytes::new()).await
    }

    /// Waits (up to 10 s) until the worker has no background work pending (refills of seeds and
    /// pooled sandboxes, sandboxes being destroyed), so that a measured start neither competes
    /// with it nor finds the previous start's seed not yet replaced.
    pub async fn settle(&mut self) -> Result<()> {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        loop {
            let stats: serde_json::Value =
                serde_json::from_slice(&self.get("/stats").await?.ok()?.body)?;
            if stats["background.pending"].as_u64().unwrap_or(0) == 0
                || std::time::Instant::now() >= deadline
            {
                return Ok(());
            }
            tokio::time::sleep(std::time::Duration::from_millis(2)).await;
        }
    }
}
