//! The NoSQL client function code imports (`runtime/nosql.py`), run by `python3` against the
//! worker's NoSQL service on a socket of a temporary directory: no root, no sandbox. Which
//! function calls is set by the test (the kernel's answer is tested in `tenants`).

use kindling_worker::nosql::service::ServicePolicy;
use kindling_worker::nosql::store::{Limits, Store};
use kindling_worker::nosql::table::{parse_declarations, Owner};
use kindling_worker::nosql::{NosqlConfig, NosqlService};
use kindling_worker::tenants::{Callers, Refused};
use parking_lot::Mutex;
use std::os::fd::BorrowedFd;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

/// Every connection acts for the function named last (None: a caller that is no function's).
struct Acting(Mutex<Option<String>>);

impl Callers for Acting {
    fn function_of(&self, _peer: BorrowedFd<'_>) -> Result<String, Refused> {
        self.0.lock().clone().ok_or(Refused::NotASandbox)
    }
}

struct Fixture {
    _tmp: tempfile::TempDir,
    service: NosqlService,
    acting: Arc<Acting>,
}

fn crate_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

impl Fixture {
    fn new() -> Self {
        let tmp = tempfile::tempdir().expect("tempdir");
        let config = NosqlConfig {
            max_item_bytes: 4096,
            max_connections_per_function: 2,
            ..NosqlConfig::default()
        };
        let store =
            Arc::new(Store::open(&tmp.path().join("db"), Limits::of(&config)).expect("store"));
        let decl = parse_declarations(&serde_json::json!({
            "shopping_cart": {"primary_key": "cart_id", "secondary_key": "product_id"}
        }))
        .expect("declaration");
        for function in ["alpha", "beta"] {
            let owner = Owner::parse(function).expect("owner");
            store.declare(&owner, &decl[0]).expect("declare");
        }
        let acting = Arc::new(Acting(Mutex::new(None)));
        let service = NosqlService::start(
            &tmp.path().join("socket"),
            store,
            acting.clone(),
            ServicePolicy::of(&config),
        )
        .expect("service");
        Self {
            _tmp: tmp,
            service,
            acting,
        }
    }

    fn act_as(&self, function: Option<&str>) {
        *self.acting.0.lock() = function.map(str::to_string);
    }

    fn run(&self, function: Option<&str>, scenario: &str) {
        self.act_as(function);
        run_script(self.service.socket(), scenario);
    }
}

/// Runs one scenario of nosql_client.py; fails the test with its output if it fails.
fn run_script(socket: &Path, scenario: &str) {
    let out = std::process::Command::new("python3")
        .arg("-B")
        .arg(crate_dir().join("tests/nosql_client.py"))
        .arg(scenario)
        .env("PYTHONPATH", crate_dir().join("runtime"))
        .env("KINDLING_NOSQL_SOCKET", socket)
        .output()
        .expect("python3 runs (the runtime's client needs it to be tested)");
    assert!(
        out.status.success(),
        "scenario {scenario} failed:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        format!("ok {scenario}")
    );
}

#[test]
fn sebs_client_round_trips_and_errors() {
    let f = Fixture::new();
    f.run(Some("alpha"), "round_trip");
    f.run(Some("alpha"), "errors");
    // Beta sees its own table, and writing it leaves alpha's alone.
    f.run(Some("beta"), "isolation");
    f.run(Some("alpha"), "alpha_unchanged");
    f.run(None, "refused");
}

#[test]
fn a_busy_function_is_retried_until_served() {
    let f = Fixture::new();
    f.act_as(Some("alpha"));
    let held: Vec<UnixStream> = (0..2)
        .map(|_| UnixStream::connect(f.service.socket()).expect("connect"))
        .collect();
    let release = std::thread::spawn(move || {
        std::thread::sleep(Duration::from_millis(300));
        drop(held);
    });
    run_script(f.service.socket(), "busy_then_served");
    release.join().expect("release");
}

#[test]
fn no_service_is_a_clear_error() {
    let tmp = tempfile::tempdir().expect("tempdir");
    run_script(&tmp.path().join("nosql.sock"), "unavailable");
}
