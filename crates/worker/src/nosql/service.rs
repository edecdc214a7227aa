//! The NoSQL socket: `<root>/nosql-socket/nosql.sock`, bound read-only at
//! `/kindling/nosql-socket/nosql.sock` in every function sandbox, as object storage's is.
//!
//! The directory is root's, mode 0700, so no other host user reaches the socket; the socket
//! file is mode 0666 because function code runs unprivileged and `connect()` needs write
//! permission. Each connection is one call: the kernel names the caller's function
//! ([`crate::tenants::Callers`]) before the request is read; a caller that is no function's
//! instance, or whose function already has `max_connections_per_function` connections open, is
//! answered with an error at once, so one function holding connections open cannot keep
//! another's waiting. A request must arrive within `request_timeout_secs` and fit
//! `max_item_bytes` plus [`REQUEST_OVERHEAD_BYTES`]; at most `max_connections` are served at
//! once, the rest wait in the listen backlog.

use super::protocol::{self, Reply, Request, REQUEST_OVERHEAD_BYTES};
use super::store::{Limits, Store};
use super::table::Owner;
use super::{NosqlConfig, NosqlError, SOCKET_DIR, SOCKET_NAME};
use crate::tenants::Callers;
use parking_lot::Mutex;
use std::collections::HashMap;
use std::io;
use std::os::fd::AsFd;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

/// How long a reply may take to be read by its client.
const WRITE_TIMEOUT: Duration = Duration::from_secs(10);
/// Calls carried out at once on blocking threads (they take the store's lock one at a time).
const BLOCKING_THREADS: usize = 8;

/// Settings of the service.
#[derive(Debug, Clone)]
pub struct ServicePolicy {
    pub max_connections: usize,
    pub max_connections_per_function: usize,
    pub max_request_bytes: usize,
    pub request_timeout: Duration,
}

impl ServicePolicy {
    /// The policy `[nosql]` sets.
    pub fn of(config: &NosqlConfig) -> Self {
        Self {
            max_connections: config.max_connections.max(1),
            max_connections_per_function: config.max_connections_per_function.max(1),
            max_request_bytes: usize::try_from(config.max_item_bytes)
                .unwrap_or(usize::MAX)
                .saturating_add(REQUEST_OVERHEAD_BYTES),
            request_timeout: Duration::from_secs_f64(config.request_timeout_secs),
        }
    }
}

/// Carries out one call of `owner`'s.
pub fn carry_out(store: &Store, owner: &Owner, request: Request) -> Result<Reply, NosqlError> {
    Ok(match request {
        Request::Insert {
            table,
            primary,
            secondary,
            data,
        } => {
            store.insert(owner, &table, &primary.parse()?, &secondary.parse()?, data)?;
            Reply::Done
        }
        Request::Get {
            table,
            primary,
            secondary,
        } => Reply::Item {
            item: store.get(owner, &table, &primary.parse()?, &secondary.parse()?)?,
        },
        Request::Update {
            table,
            primary,
            secondary,
            data,
        } => {
            store.update(owner, &table, &primary.parse()?, &secondary.parse()?, data)?;
            Reply::Done
        }
        Request::Query {
            table,
            primary,
            secondary_key,
        } => Reply::Items {
            items: store.query(owner, &table, &primary.parse()?, &secondary_key)?,
        },
        Request::Delete {
            table,
            primary,
            secondary,
        } => {
            store.delete(owner, &table, &primary.parse()?, &secondary.parse()?)?;
            Reply::Done
        }
    })
}

/// Open connections by function, each function within its limit.
struct Slots {
    limit: usize,
    open: Mutex<HashMap<String, usize>>,
}

/// One open connection of a function, counted until dropped.
struct Slot {
    slots: Arc<Slots>,
    function: String,
}

impl Slots {
    fn take(self: &Arc<Self>, function: &str) -> Result<Slot, NosqlError> {
        let mut open = self.open.lock();
        let n = open.entry(function.to_string()).or_default();
        if *n >= self.limit {
            return Err(NosqlError::Busy {
                function: function.to_string(),
                limit: self.limit,
            });
        }
        *n += 1;
        Ok(Slot {
            slots: self.clone(),
            function: function.to_string(),
        })
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        let mut open = self.slots.open.lock();
        if let Some(n) = open.get_mut(&self.function) {
            *n -= 1;
            if *n == 0 {
                open.remove(&self.function);
            }
        }
    }
}

struct Server {
    store: Arc<Store>,
    callers: Arc<dyn Callers>,
    slots: Arc<Slots>,
    max_request_bytes: usize,
    request_timeout: Duration,
}

impl Server {
    /// Who calls and within which limit; then its request, read without a thread.
    async fn admit(
        &self,
        stream: &mut tokio::net::UnixStream,
    ) -> Result<Option<(Owner, Slot, Request)>, NosqlError> {
        let function = self.callers.function_of(stream.as_fd())?;
        let owner = Owner::parse(&function)?;
        let slot = self.slots.take(&function)?;
        let read = protocol::read_request(stream, self.max_request_bytes);
        let Ok(request) = tokio::time::timeout(self.request_timeout, read).await else {
            return Ok(None);
        };
        Ok(Some((owner, slot, request?)))
    }

    /// Serves one connection: admission, the call on a blocking thread, the reply.
    async fn connection(self: Arc<Self>, mut stream: tokio::net::UnixStream) {
        let reply = match self.admit(&mut stream).await {
            Ok(None) => return,
            Ok(Some((owner, slot, request))) => {
                let server = self.clone();
                let done = tokio::task::spawn_blocking(move || {
                    let reply = carry_out(&server.store, &owner, request);
                    // Free before the reply is sent, so that a client calling again at once
                    // finds its slot free.
                    drop(slot);
                    reply
                })
                .await;
                match done {
                    Ok(Ok(reply)) => reply,
                    Ok(Err(e)) => self.failed(&e),
                    Err(e) => {
                        tracing::error!("NoSQL call panicked: {e}");
                        Reply::Error {
                            kind: super::ErrorKind::Internal,
                            error: "NoSQL call failed".into(),
                        }
                    }
                }
            }
            Err(e) => self.failed(&e),
        };
        use tokio::io::AsyncWriteExt;
        let frame = protocol::reply_frame(&reply);
        match tokio::time::timeout(WRITE_TIMEOUT, stream.write_all(&frame)).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => tracing::debug!("NoSQL client went away: {e}"),
            Err(_) => tracing::debug!("NoSQL client did not read its reply"),
        }
    }

    fn failed(&self, e: &NosqlError) -> Reply {
        match e.kind() {
            super::ErrorKind::Internal => {
                tracing::warn!("NoSQL call failed: {}", crate::error_chain(e))
            }
            _ => tracing::debug!("NoSQL call refused: {e}"),
        }
        Reply::from(e)
    }
}

/// Errors starting the service.
#[derive(Debug, thiserror::Error)]
pub enum ServiceError {
    #[error("cannot listen on {path}")]
    Listen {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("another process serves NoSQL on {0}")]
    InUse(PathBuf),
    #[error("NoSQL store")]
    Store(#[from] NosqlError),
}

/// The running service: a thread with a small tokio runtime of its own (the worker starts it
/// before the API's runtime exists, and its calls then never delay the API).
pub struct NosqlService {
    store: Arc<Store>,
    socket: PathBuf,
    stop: Mutex<Option<tokio::sync::oneshot::Sender<()>>>,
    thread: Mutex<Option<std::thread::JoinHandle<()>>>,
}

impl NosqlService {
    /// Binds `<socket_dir>/nosql.sock` (replacing a stale socket) and serves `store` to the
    /// functions `callers` names.
    pub fn start(
        socket_dir: &Path,
        store: Arc<Store>,
        callers: Arc<dyn Callers>,
        policy: ServicePolicy,
    ) -> Result<Self, ServiceError> {
        let listen_err = |path: &Path| {
            let path = path.to_path_buf();
            move |source| ServiceError::Listen { path, source }
        };
        std::fs::create_dir_all(socket_dir).map_err(listen_err(socket_dir))?;
        std::fs::set_permissions(socket_dir, std::fs::Permissions::from_mode(0o700))
            .map_err(listen_err(socket_dir))?;
        let socket = socket_dir.join(SOCKET_NAME);
        if UnixStream::connect(&socket).is_ok() {
            return Err(ServiceError::InUse(socket));
        }
        match std::fs::remove_file(&socket) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => return Err(listen_err(&socket)(e)),
            _ => {}
        }
        let listener = UnixListener::bind(&socket).map_err(listen_err(&socket))?;
        std::fs::set_permissions(&socket, std::fs::Permissions::from_mode(0o666))
            .map_err(listen_err(&socket))?;
        listener
            .set_nonblocking(true)
            .map_err(listen_err(&socket))?;
        let server = Arc::new(Server {
            store: store.clone(),
            callers,
            slots: Arc::new(Slots {
                limit: policy.max_connections_per_function.max(1),
                open: Mutex::new(HashMap::new()),
            }),
            max_request_bytes: policy.max_request_bytes,
            request_timeout: policy.request_timeout,
        });
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_io()
            .enable_time()
            .max_blocking_threads(BLOCKING_THREADS)
            .thread_name("kindling-nosql")
            .build()
            .map_err(listen_err(&socket))?;
        let max_connections = policy.max_connections.max(1);
        let (stop_tx, stop_rx) = tokio::sync::oneshot::channel();
        let thread = std::thread::Builder::new()
            .name("kindling-nosql".into())
            .spawn(move || {
                runtime.block_on(crate::unix_service::accept_loop(
                    listener,
                    max_connections,
                    stop_rx,
                    "NoSQL",
                    |stream| {
                        let server = server.clone();
                        async move { server.connection(stream).await }
                    },
                ));
                runtime.shutdown_timeout(Duration::from_secs(5));
            })
            .map_err(listen_err(&socket))?;
        Ok(Self {
            store,
            socket,
            stop: Mutex::new(Some(stop_tx)),
            thread: Mutex::new(Some(thread)),
        })
    }

    /// Opens the store `[nosql]` configures (`<root>/nosql` unless `dir` is set) and serves it
    /// on `<root>/nosql-socket`. None when NoSQL is disabled.
    pub fn start_configured(
        config: &NosqlConfig,
        root: &Path,
        callers: Arc<dyn Callers>,
    ) -> Result<Option<Self>, ServiceError> {
        if !config.enabled {
            return Ok(None);
        }
        let store = Arc::new(Store::open(&config.data_dir(root), Limits::of(config))?);
        let service = Self::start(
            &root.join(SOCKET_DIR),
            store,
            callers,
            ServicePolicy::of(config),
        )?;
        tracing::info!(
            database = %service.store.path().display(),
            socket = %service.socket.display(),
            "NoSQL ready"
        );
        Ok(Some(service))
    }

    /// The socket's path on the host (bound into sandboxes).
    pub fn socket(&self) -> &Path {
        &self.socket
    }

    /// The store, for the worker's own API.
    pub fn store(&self) -> &Arc<Store> {
        &self.store
    }

    /// Stops accepting calls, waits a little for calls in progress, removes the socket.
    pub fn stop(&self) {
        let stop = self.stop.lock().take();
        if let Some(tx) = stop {
            let _ = tx.send(());
        }
        let thread = self.thread.lock().take();
        if let Some(t) = thread {
            let _ = t.join();
        }
        let _ = std::fs::remove_file(&self.socket);
    }
}

impl Drop for NosqlService {
    fn drop(&mut self) {
        self.stop();
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
pub(crate) mod tests {
    use super::*;
    use crate::nosql::store::tests::{cart, limits};
    use crate::tenants::Refused;
    use serde_json::{json, Value};
    use std::io::{Read, Write};

    /// Callers as a test sets them: every connection acts for the function named last.
    pub(crate) struct Acting(pub Mutex<Option<String>>);

    impl Callers for Acting {
        fn function_of(&self, _peer: std::os::fd::BorrowedFd<'_>) -> Result<String, Refused> {
            self.0.lock().clone().ok_or(Refused::NotASandbox)
        }
    }

    pub(crate) fn policy() -> ServicePolicy {
        ServicePolicy {
            max_connections: 8,
            max_connections_per_function: 2,
            max_request_bytes: 64 * 1024,
            request_timeout: Duration::from_millis(300),
        }
    }

    struct Fixture {
        _tmp: tempfile::TempDir,
        service: NosqlService,
        acting: Arc<Acting>,
    }

    impl Fixture {
        fn new() -> Self {
            let tmp = tempfile::tempdir().unwrap();
            let store = Arc::new(Store::open(&tmp.path().join("db"), limits()).unwrap());
            cart(&store, "alpha");
            cart(&store, "beta");
            let acting = Arc::new(Acting(Mutex::new(None)));
            let service = NosqlService::start(
                &tmp.path().join(SOCKET_DIR),
                store,
                acting.clone(),
                policy(),
            )
            .unwrap();
            Self {
                _tmp: tmp,
                service,
                acting,
            }
        }

        fn call(&self, function: Option<&str>, request: Value) -> Value {
            *self.acting.0.lock() = function.map(str::to_string);
            call_raw(
                self.service.socket(),
                &serde_json::to_vec(&request).unwrap(),
            )
        }
    }

    /// A client of the socket, as nosql.py is.
    fn call_raw(socket: &Path, payload: &[u8]) -> Value {
        let mut s = UnixStream::connect(socket).unwrap();
        // A refusal may close the connection before the request is read.
        let _ = s.write_all(&crate::frame::encode(payload).unwrap());
        read_reply(&mut s)
    }

    fn read_reply(s: &mut UnixStream) -> Value {
        serde_json::from_slice(&crate::frame::read(s, 1 << 24).unwrap()).unwrap()
    }

    fn insert(cart: &str, product: &str, data: Value) -> Value {
        json!({"op": "insert", "table": "shopping_cart", "primary": ["cart_id", cart],
               "secondary": ["product_id", product], "data": data})
    }

    #[test]
    fn calls_over_the_socket() {
        let f = Fixture::new();
        let sock = f.service.socket().to_path_buf();
        let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode(&sock), 0o666);
        assert_eq!(mode(sock.parent().unwrap()), 0o700);
        assert!(matches!(
            NosqlService::start(
                sock.parent().unwrap(),
                f.service.store().clone(),
                f.acting.clone(),
                policy()
            ),
            Err(ServiceError::InUse(_))
        ));
        let a = Some("alpha");
        assert_eq!(
            f.call(a, insert("c1", "p1", json!({"price": 2.5, "quantity": 2}))),
            json!({"reply": "done"})
        );
        let get = json!({"op": "get", "table": "shopping_cart", "primary": ["cart_id", "c1"],
                         "secondary": ["product_id", "p1"]});
        assert_eq!(
            f.call(a, get.clone()),
            json!({"reply": "item", "item": {"cart_id": "c1", "product_id": "p1",
                                            "price": 2.5, "quantity": 2}})
        );
        // Beta's table of the same name is its own.
        assert_eq!(f.call(Some("beta"), get.clone())["kind"], "not_found");
        let r = f.call(
            a,
            json!({"op": "query", "table": "shopping_cart", "primary": ["cart_id", "c1"],
                   "secondary_key": "product_id"}),
        );
        assert_eq!(r["items"].as_array().unwrap().len(), 1);
        let r = f.call(
            a,
            json!({"op": "update", "table": "shopping_cart", "primary": ["cart_id", "c1"],
                   "secondary": ["product_id", "p1"], "data": {"quantity": 5}}),
        );
        assert_eq!(r, json!({"reply": "done"}));
        assert_eq!(f.call(a, get.clone())["item"]["quantity"], 5);
        let r = f.call(
            a,
            json!({"op": "delete", "table": "shopping_cart", "primary": ["cart_id", "c1"],
                   "secondary": ["product_id", "p1"]}),
        );
        assert_eq!(r, json!({"reply": "done"}));
        let r = f.call(a, get);
        assert_eq!(r["kind"], "not_found");
        assert_eq!(
            r["error"],
            r#"no item with cart_id="c1" and product_id="p1" in table "shopping_cart""#
        );
        let r = f.call(
            a,
            json!({"op": "get", "table": "orders", "primary": ["id", 1],
                   "secondary": ["line", 1]}),
        );
        assert_eq!(r["kind"], "no_such_table");
        assert_eq!(
            r["error"],
            r#"table "orders" does not exist; function "alpha" has "shopping_cart""#
        );
        let mut float_key = insert("c1", "p1", json!({}));
        float_key["primary"][1] = json!(1.5);
        let r = f.call(a, float_key);
        assert_eq!(r["kind"], "invalid", "{r}");
        let r = f.call(a, json!({"op": "scan", "table": "shopping_cart"}));
        assert_eq!(r["kind"], "protocol", "{r}");
        f.service.stop();
        assert!(!sock.exists());
    }

    #[test]
    fn callers_that_are_no_function_are_refused_before_their_request() {
        let f = Fixture::new();
        // The refusal comes without the request being sent.
        *f.acting.0.lock() = None;
        let mut s = UnixStream::connect(f.service.socket()).unwrap();
        let r = read_reply(&mut s);
        assert_eq!(r["kind"], "denied", "{r}");
        assert!(r["error"]
            .as_str()
            .unwrap()
            .contains("only function instances may use this service"));
    }

    #[test]
    fn oversized_slow_and_malformed_requests_are_answered_and_dropped() {
        let f = Fixture::new();
        let big = vec![b' '; 64 * 1024 + 1];
        *f.acting.0.lock() = Some("alpha".into());
        let r = call_raw(f.service.socket(), &big);
        assert_eq!(r["kind"], "protocol");
        assert!(r["error"]
            .as_str()
            .unwrap()
            .contains("larger than the limit"));
        // A connection that sends nothing is closed after the request timeout, freeing its
        // function's slot.
        let mut idle = UnixStream::connect(f.service.socket()).unwrap();
        let t = std::time::Instant::now();
        let mut rest = Vec::new();
        idle.read_to_end(&mut rest).unwrap();
        assert!(rest.is_empty());
        assert!(
            t.elapsed() >= Duration::from_millis(250),
            "{:?}",
            t.elapsed()
        );
        let r = call_raw(f.service.socket(), b"{\"op\": ");
        assert_eq!(r["kind"], "protocol");
        // The service is unharmed.
        assert_eq!(
            f.call(Some("alpha"), insert("c", "p", json!({}))),
            json!({"reply": "done"})
        );
    }

    #[test]
    fn one_function_at_its_connection_limit_does_not_hold_up_another() {
        let f = Fixture::new();
        *f.acting.0.lock() = Some("alpha".into());
        let idle: Vec<UnixStream> = (0..2)
            .map(|_| UnixStream::connect(f.service.socket()).unwrap())
            .collect();
        std::thread::sleep(Duration::from_millis(50));
        let r = f.call(Some("alpha"), insert("c", "p", json!({})));
        assert_eq!(r["kind"], "busy", "{r}");
        let t = std::time::Instant::now();
        assert_eq!(
            f.call(Some("beta"), insert("c", "p", json!({}))),
            json!({"reply": "done"})
        );
        assert!(t.elapsed() < Duration::from_millis(250));
        drop(idle);
        std::thread::sleep(Duration::from_millis(50));
        assert_eq!(
            f.call(Some("alpha"), insert("c", "p", json!({}))),
            json!({"reply": "done"})
        );
    }
}
