//! The package puller and the shared package store (issue 3), end to end with real packages
//! from the index: resolution (pins, ranges, extras, markers), the shared store, side-by-side
//! versions, zero-install deploys, the store operations, and every kind of bad input.
//!
//! Each worker starts with an empty store and an empty uv cache, so installs come from the
//! network (a few seconds each); checks share a worker within a test where they can.

use crate::harness::Worker;
use kindling_api::{DeployLine, DeployOutcome, Deployed, PackagesGc};
use serde_json::{json, Value};
use std::collections::BTreeSet;
use std::time::{Duration, Instant};

/// Config lines every worker here gets (top-level keys: tables must come after them).
const UV: &str = "uv = \"/usr/local/bin/uv\"\n";

/// Packs files into the archive the worker's deploy endpoint takes.
fn pack(files: &[(&str, &str)]) -> Vec<u8> {
    let dir = tempfile::tempdir().expect("tempdir");
    for (f, body) in files {
        std::fs::write(dir.path().join(f), body).expect("write");
    }
    kindling_worker::archive::pack_dir(dir.path()).expect("pack")
}

/// Deploys `f.py` (plus `requirements.txt` when given); returns the status and JSON body.
fn deploy(w: &Worker, name: &str, code: &str, requirements: Option<&str>) -> (u16, Value) {
    let mut files = vec![("f.py", code)];
    if let Some(r) = requirements {
        files.push(("requirements.txt", r));
    }
    let r = w.request("POST", &format!("/registry/{name}"), &[], &pack(&files));
    let v = serde_json::from_slice(&r.body)
        .unwrap_or_else(|_| json!({ "error": r.text(), "not_json": true }));
    (r.status, v)
}

/// A deploy that must succeed; returns its JSON answer.
fn deploy_ok(w: &Worker, name: &str, code: &str, requirements: Option<&str>) -> Value {
    let (status, v) = deploy(w, name, code, requirements);
    assert_eq!(
        status,
        200,
        "deploy {name}: {v}\nworker log:\n{}",
        w.log_text()
    );
    v
}

/// Calls a function that must answer 200 with JSON.
fn call(w: &Worker, name: &str) -> Value {
    let r = w.run(name, "{}");
    assert_eq!(r.status, 200, "run {name}: {}", r.text());
    r.json()
}

fn strings(v: &Value) -> Vec<String> {
    v.as_array()
        .unwrap_or_else(|| panic!("not an array: {v}"))
        .iter()
        .map(|s| s.as_str().unwrap().to_string())
        .collect()
}

/// Package names (without versions) of a deploy answer's `packages` (or `installed`) list.
fn names(v: &Value) -> BTreeSet<String> {
    strings(v)
        .iter()
        .map(|k| k.split_once("==").expect("name==version").0.to_string())
        .collect()
}

fn stat(w: &Worker, key: &str) -> u64 {
    let s = w.stats();
    s[key]
        .as_u64()
        .unwrap_or_else(|| panic!("/stats has no {key}: {s}"))
}

/// The base's Python version (`3.11`), from `GET /status`.
fn base_python(w: &Worker) -> (u32, u32) {
    let s = w.request("GET", "/status", &[], b"").json();
    let v = s["base"]["python_version"]
        .as_str()
        .unwrap_or_else(|| panic!("no base.python_version in /status: {s}"));
    let (a, b) = v.split_once('.').unwrap();
    (a.parse().unwrap(), b.parse().unwrap())
}

/// Nothing half-installed: every store entry is complete, staging and resolve areas are empty.
fn assert_store_clean(w: &Worker) {
    let root = w.root.path();
    for e in std::fs::read_dir(root.join("packages")).unwrap().flatten() {
        assert!(
            e.path().join("meta.json").is_file(),
            "{} is in the store without meta.json (half-installed)",
            e.path().display()
        );
        assert!(
            e.path().join("files").is_dir(),
            "{} is in the store without files/",
            e.path().display()
        );
    }
    for sub in ["staging", "jobs"] {
        let left: Vec<_> = std::fs::read_dir(root.join("pkgwork").join(sub))
            .unwrap()
            .flatten()
            .map(|e| e.file_name())
            .collect();
        assert!(left.is_empty(), "pkgwork/{sub} is not empty: {left:?}");
    }
}

/// Store directory names (`<name>==<version>`).
fn store_keys(w: &Worker) -> BTreeSet<String> {
    std::fs::read_dir(w.root.path().join("packages"))
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect()
}

/// `GET /packages` as `key -> users`.
fn package_users(w: &Worker) -> std::collections::BTreeMap<String, Vec<String>> {
    let r = w.request("GET", "/packages", &[], b"");
    assert_eq!(r.status, 200, "{}", r.text());
    r.json()
        .as_array()
        .unwrap()
        .iter()
        .map(|p| {
            assert!(p["size_bytes"].as_u64().unwrap() > 0, "{p}");
            (
                format!(
                    "{}=={}",
                    p["name"].as_str().unwrap(),
                    p["version"].as_str().unwrap()
                ),
                strings(&p["users"]),
            )
        })
        .collect()
}

/// Runs the `kindling` client against the worker.
fn cli(w: &Worker, args: &[&str]) -> (bool, String) {
    let out = w.cli_command().args(args).output().expect("run kindling");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr),
    )
}

const REQUESTS_FN: &str = r#"import sys
import requests

def f(event):
    return {
        "file": requests.__file__,
        "version": requests.__version__,
        "path": [p for p in sys.path if p.startswith("/packages")],
    }
"#;

const SOCKS_FN: &str = r#"import requests
import socks

def f(event):
    return {"socks": socks.__file__, "requests": requests.__file__}
"#;

const MARKER_FN: &str = r#"import importlib.util
import sys
import six

def f(event):
    spec = importlib.util.find_spec("tomli")
    return {
        "six": six.__file__,
        "tomli": spec.origin if spec else None,
        "python": "%d.%d" % sys.version_info[:2],
    }
"#;

const REQUESTS_CLOSURE: [&str; 5] = [
    "certifi",
    "charset-normalizer",
    "idna",
    "requests",
    "urllib3",
];

/// Deploys `requests` (no progress stream) and returns the deploy.
fn deploy_requests(w: &Worker, name: &str) -> Deployed {
    deployed(
        w,
        name,
        &REQUESTS_FN.replace("def f", &format!("# {name}\ndef f")),
        Some("requests\n"),
    )
}

/// A deploy that must succeed, as the API's type.
fn deployed(w: &Worker, name: &str, code: &str, requirements: Option<&str>) -> Deployed {
    serde_json::from_value(deploy_ok(w, name, code, requirements))
        .unwrap_or_else(|e| panic!("deploy {name}: not a deploy reply ({e})"))
}

/// Package names (without versions) of package keys.
fn key_names(keys: &[String]) -> BTreeSet<String> {
    keys.iter()
        .map(|k| k.split_once("==").expect("name==version").0.to_string())
        .collect()
}

fn closure() -> BTreeSet<String> {
    REQUESTS_CLOSURE.iter().map(|s| s.to_string()).collect()
}

/// `requests` (5 packages) deployed with `?progress`: NDJSON progress lines, then the result;
/// the function imports requests from the store, with exactly its closure on sys.path.
#[test]
fn requests_streams_its_installs_and_imports_from_the_store() {
    let w = Worker::start(UV);
    assert_eq!(stat(&w, "pull-package.cnt"), 0);
    let r = w.request(
        "POST",
        "/registry/req?progress",
        &[],
        &pack(&[("f.py", REQUESTS_FN), ("requirements.txt", "requests\n")]),
    );
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.header("content-type"), Some("application/x-ndjson"));
    let lines: Vec<DeployLine> = r
        .text()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("bad NDJSON line ({e}): {l}")))
        .collect();
    let (last, progress) = lines.split_last().expect("no lines");
    let DeployLine::Done {
        outcome: DeployOutcome::Deployed(last),
        status: 200,
    } = last
    else {
        panic!("the deploy did not end in success: {}", r.text());
    };
    assert!(progress.len() >= 2, "expected progress lines: {}", r.text());
    let msgs: Vec<&str> = progress
        .iter()
        .map(|l| match l {
            DeployLine::Progress { progress } => progress.as_str(),
            other => panic!("not a progress line: {other:?}"),
        })
        .collect();
    assert!(
        msgs.iter().any(|m| m.contains("resolved 5 packages")),
        "{msgs:?}"
    );
    for p in REQUESTS_CLOSURE {
        assert!(
            msgs.iter()
                .any(|m| m.starts_with("installed ") && m.contains(&format!("{p}=="))),
            "no progress line for installing {p}: {msgs:?}"
        );
    }
    let packages = &last.packages;
    assert_eq!(key_names(packages), closure());
    assert_eq!(
        packages[0].split("==").next(),
        Some("requests"),
        "requests comes before its dependencies: {packages:?}"
    );
    assert_eq!(key_names(&last.installed).len(), 5, "{last:?}");
    assert_eq!(stat(&w, "pull-package.cnt"), 5);
    assert_store_clean(&w);

    let v = call(&w, "req");
    let file = v["file"].as_str().unwrap();
    let requests_key = packages[0].clone();
    assert!(
        file.starts_with(&format!("/packages/{requests_key}/files/requests/")),
        "requests imported from {file}"
    );
    assert_eq!(
        Some(v["version"].as_str().unwrap()),
        requests_key.split("==").nth(1)
    );
    let expected_path: Vec<String> = packages
        .iter()
        .map(|k| format!("/packages/{k}/files"))
        .collect();
    assert_eq!(strings(&v["path"]), expected_path);
    w.assert_no_leaks();
    w.stop();
}

/// A second function needing the same packages: zero installs, all store hits, the same files.
#[test]
fn a_second_function_shares_the_installed_closure() {
    let w = Worker::start(UV);
    let first = deploy_requests(&w, "req");
    let (pulls, hits) = (
        stat(&w, "pull-package.cnt"),
        stat(&w, "package-store-hit.cnt"),
    );
    let second = deploy_requests(&w, "req2");
    assert_eq!(second.installed, Vec::<String>::new(), "{second:?}");
    assert_eq!(second.packages, first.packages);
    assert_eq!(second.bytes_added, 0);
    assert_eq!(
        stat(&w, "pull-package.cnt"),
        pulls,
        "a shared deploy installed"
    );
    assert_eq!(stat(&w, "package-store-hit.cnt"), hits + 5);
    assert_eq!(call(&w, "req2")["file"], call(&w, "req")["file"]);
    w.assert_no_leaks();
    w.stop();
}

/// New code, unchanged requirements: no second resolution (the lock cache entry is not
/// rewritten), no install, and quick; the same code again changes nothing at all.
#[test]
fn unchanged_requirements_are_not_resolved_again() {
    let w = Worker::start(UV);
    let first = deploy_requests(&w, "req");
    let file = call(&w, "req")["file"].clone();
    let pulls = stat(&w, "pull-package.cnt");
    let locks = w.root.path().join("locks");
    let lock_files = || -> Vec<(String, std::time::SystemTime, u64)> {
        use std::os::unix::fs::MetadataExt;
        let mut v: Vec<_> = std::fs::read_dir(&locks)
            .unwrap()
            .flatten()
            .map(|e| {
                let m = e.metadata().unwrap();
                (
                    e.file_name().to_string_lossy().into_owned(),
                    m.modified().unwrap(),
                    m.ino(),
                )
            })
            .collect();
        v.sort();
        v
    };
    let before = lock_files();
    assert_eq!(before.len(), 1, "one lock cached: {before:?}");
    let started = Instant::now();
    let v3 = deployed(
        &w,
        "req",
        &REQUESTS_FN.replace("def f", "# version 2\ndef f"),
        Some("requests\n"),
    );
    let took = started.elapsed();
    assert!(v3.changed);
    assert_eq!(v3.installed, Vec::<String>::new());
    assert_eq!(v3.packages, first.packages);
    assert_eq!(lock_files(), before, "requirements were resolved again");
    assert_eq!(stat(&w, "pull-package.cnt"), pulls);
    assert!(
        took < Duration::from_secs(3),
        "redeploy took {took:?} ({} ms of package work)",
        v3.package_ms
    );
    let v4 = deployed(
        &w,
        "req",
        &REQUESTS_FN.replace("def f", "# version 2\ndef f"),
        Some("requests\n"),
    );
    assert!(!v4.changed);
    assert_eq!(v4.hash, v3.hash);
    assert_eq!(lock_files(), before);
    assert_eq!(call(&w, "req")["file"], file);
    w.assert_no_leaks();
    w.stop();
}

/// `requests[socks]` beside `requests`: the extra adds PySocks, the only new install.
#[test]
fn an_extra_installs_only_what_it_adds() {
    let w = Worker::start(UV);
    deploy_requests(&w, "req");
    let pulls = stat(&w, "pull-package.cnt");
    let vs = deployed(&w, "socks", SOCKS_FN, Some("requests[socks]\n"));
    let mut want = closure();
    want.insert("pysocks".into());
    assert_eq!(key_names(&vs.packages), want, "{vs:?}");
    assert_eq!(
        key_names(&vs.installed),
        BTreeSet::from(["pysocks".to_string()]),
        "{vs:?}"
    );
    let pysocks = vs
        .packages
        .iter()
        .find(|k| k.starts_with("pysocks=="))
        .unwrap();
    let v = call(&w, "socks");
    assert!(
        v["socks"]
            .as_str()
            .unwrap()
            .starts_with(&format!("/packages/{pysocks}/files/")),
        "{v}"
    );
    assert_eq!(stat(&w, "pull-package.cnt"), pulls + 1);
    w.assert_no_leaks();
    w.stop();
}

/// Environment markers, evaluated for the base's Python.
#[test]
fn markers_are_evaluated_for_the_base_python() {
    let w = Worker::start(UV);
    let py = base_python(&w);
    let vm = deployed(
        &w,
        "marker",
        MARKER_FN,
        Some("tomli ; python_version < \"3.11\"\nsix ; python_version >= \"3.8\"\n"),
    );
    let got = key_names(&vm.packages);
    assert!(got.contains("six"), "{vm:?}");
    assert_eq!(
        got.contains("tomli"),
        py < (3, 11),
        "tomli in the closure for Python {py:?}: {vm:?}"
    );
    let v = call(&w, "marker");
    assert_eq!(v["python"], format!("{}.{}", py.0, py.1));
    assert!(
        v["six"].as_str().unwrap().starts_with("/packages/six=="),
        "{v}"
    );
    if py >= (3, 11) {
        assert!(
            !v["tomli"].as_str().unwrap_or("").starts_with("/packages"),
            "tomli came from the store: {v}"
        );
    }
    assert_store_clean(&w);
    w.assert_no_leaks();
    w.stop();
}

/// The store's operations: ls shows users, rm refuses packages in use, gc removes only what no
/// deployed function uses (through the API and the CLI).
#[test]
fn store_operations_list_refuse_and_collect() {
    let w = Worker::start(UV);
    let requests_key = deploy_requests(&w, "req").packages[0].clone();
    deploy_requests(&w, "req2");
    let vs = deployed(&w, "socks", SOCKS_FN, Some("requests[socks]\n"));
    let pysocks = vs
        .packages
        .iter()
        .find(|k| k.starts_with("pysocks=="))
        .unwrap()
        .clone();
    let vm = deployed(&w, "marker", MARKER_FN, Some("six\n"));
    let six = vm
        .packages
        .iter()
        .find(|k| k.starts_with("six=="))
        .unwrap()
        .clone();

    let users = package_users(&w);
    assert_eq!(users.len(), 7, "{users:?}");
    assert_eq!(users[&requests_key], ["req", "req2", "socks"]);
    assert_eq!(users[&pysocks], ["socks"]);
    assert_eq!(users[&six], ["marker"]);
    let (ok, out) = cli(&w, &["pkg", "ls"]);
    assert!(ok, "{out}");
    assert!(
        out.lines()
            .any(|l| l.starts_with("pysocks ") && l.trim_end().ends_with("socks")),
        "{out}"
    );
    assert!(
        out.lines()
            .any(|l| l.starts_with("requests ") && l.contains("req,req2,socks")),
        "{out}"
    );

    let r = w.request("DELETE", &format!("/packages/{pysocks}"), &[], b"");
    assert_eq!(r.status, 409, "{}", r.text());
    assert_eq!(r.header("x-kindling-error"), Some("in-use"));
    assert!(r.text().contains("socks"), "{}", r.text());
    let (ok, out) = cli(&w, &["pkg", "rm", &requests_key]);
    assert!(!ok, "pkg rm of a package in use succeeded: {out}");
    assert!(store_keys(&w).contains(&requests_key));
    let r = w.request("DELETE", "/packages/nosuchpackage==1.0", &[], b"");
    assert_eq!(r.status, 404, "{}", r.text());
    let r = w.request("DELETE", "/packages/..==1", &[], b"");
    assert_eq!(r.status, 400, "{}", r.text());

    // Nothing unused yet: gc removes nothing.
    let r = w.request("POST", "/packages/gc", &[], b"");
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.typed::<PackagesGc>().removed, Vec::<String>::new());

    // Without `socks`, PySocks is unused: gc removes it and only it.
    let r = w.request("DELETE", "/registry/socks", &[], b"");
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(package_users(&w)[&pysocks], Vec::<String>::new());
    let r = w.request("POST", "/packages/gc", &[], b"");
    assert_eq!(r.status, 200, "{}", r.text());
    let gc: PackagesGc = r.typed();
    assert_eq!(gc.removed, [pysocks.as_str()], "{gc:?}");
    assert!(gc.bytes_freed > 0, "{gc:?}");
    assert!(!store_keys(&w).contains(&pysocks));
    assert_eq!(store_keys(&w).len(), 6);
    // The functions still using the rest still run.
    assert_eq!(call(&w, "req")["file"], requests_file(&requests_key));
    assert!(call(&w, "marker")["six"]
        .as_str()
        .unwrap()
        .starts_with("/packages/six=="));

    // Without `req` and `req2`, the requests closure goes too (through the CLI's gc).
    for f in ["req", "req2"] {
        let r = w.request("DELETE", &format!("/registry/{f}"), &[], b"");
        assert_eq!(r.status, 200, "{}", r.text());
    }
    let (ok, out) = cli(&w, &["pkg", "gc"]);
    assert!(ok, "{out}");
    assert!(out.contains("removed 5 unused packages"), "{out}");
    assert_eq!(store_keys(&w), BTreeSet::from([six.clone()]));
    // An unused package can be removed by hand.
    let r = w.request("DELETE", "/registry/marker", &[], b"");
    assert_eq!(r.status, 200, "{}", r.text());
    let (ok, out) = cli(&w, &["pkg", "rm", &six]);
    assert!(ok, "{out}");
    assert!(store_keys(&w).is_empty());
    assert!(package_users(&w).is_empty());
    assert_store_clean(&w);
    w.assert_no_leaks();
    w.stop();
}

fn requests_file(requests_key: &str) -> String {
    format!("/packages/{requests_key}/files/requests/__init__.py")
}

const NUMPY_FN: &str = r#"import numpy

def f(event):
    a = numpy.arange(12).reshape(3, 4)
    return {
        "version": numpy.__version__,
        "file": numpy.__file__,
        "sum": int(a.sum()),
        "trace": int((a @ a.T).trace()),
    }
"#;

/// numpy 1.26 and numpy 2.x, deployed concurrently (plus a third function sharing numpy 1.26,
/// so two concurrent deploys need the same package), then run side by side on one worker.
#[test]
fn numpy_1_and_2_side_by_side() {
    let w = Worker::start(UV);
    let deploys = [
        ("np1", "numpy==1.26.4\n", "# one\n"),
        ("np2", "numpy>=2,<3\n", "# two\n"),
        ("np1b", "numpy==1.26.4\n", "# one again\n"),
    ];
    let answers: Vec<Value> = std::thread::scope(|s| {
        let handles: Vec<_> = deploys
            .iter()
            .map(|(name, reqs, comment)| {
                let w = &w;
                s.spawn(move || deploy_ok(w, name, &format!("{comment}{NUMPY_FN}"), Some(reqs)))
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    for a in &answers {
        assert_eq!(
            names(&a["packages"]),
            BTreeSet::from(["numpy".to_string()]),
            "{a}"
        );
    }
    assert_eq!(strings(&answers[0]["packages"]), ["numpy==1.26.4"]);
    assert_eq!(answers[0]["packages"], answers[2]["packages"]);
    let np2 = strings(&answers[1]["packages"]).remove(0);
    assert!(np2.starts_with("numpy==2."), "{np2}");
    // numpy 1.26.4 was installed once although two deploys needed it at the same time.
    assert_eq!(stat(&w, "pull-package.cnt"), 2, "{answers:?}");
    let installed: usize = answers.iter().map(|a| strings(&a["installed"]).len()).sum();
    assert_eq!(installed, 2, "{answers:?}");
    assert_eq!(
        store_keys(&w),
        BTreeSet::from(["numpy==1.26.4".to_string(), np2.clone()])
    );
    assert_store_clean(&w);

    for (name, key) in [
        ("np1", "numpy==1.26.4"),
        ("np2", np2.as_str()),
        ("np1b", "numpy==1.26.4"),
        ("np2", np2.as_str()),
        ("np1", "numpy==1.26.4"),
    ] {
        let v = call(&w, name);
        assert_eq!(v["version"].as_str(), key.split("==").nth(1), "{name}: {v}");
        assert!(
            v["file"]
                .as_str()
                .unwrap()
                .starts_with(&format!("/packages/{key}/files/numpy/")),
            "{name}: {v}"
        );
        assert_eq!(v["sum"], 66, "{name}: {v}");
        assert_eq!(v["trace"], 506, "{name}: {v}");
    }
    let users = package_users(&w);
    assert_eq!(users["numpy==1.26.4"], ["np1", "np1b"]);
    assert_eq!(users[&np2], ["np2"]);
    w.assert_no_leaks();
    w.stop();
}

const VERSIONED_FN: &str = "def f(event):\n    return {\"v\": 1}\n";

/// Deploys a bad version of `fn` and checks it failed with 400 naming everything in `mentions`,
/// that version 1 stays in service, and that the store holds nothing half-installed.
fn assert_bad_deploy(w: &Worker, requirements: &str, mentions: &[&str]) -> String {
    let before = w.request("GET", "/registry/fn", &[], b"").json();
    let (status, v) = deploy(
        w,
        "fn",
        "def f(event):\n    return {\"v\": 2}\n",
        Some(requirements),
    );
    let msg = v["error"].as_str().unwrap_or_default().to_string();
    assert_eq!(status, 400, "deploy of {requirements:?}: {v}");
    for m in mentions {
        assert!(
            msg.contains(m),
            "the error for {requirements:?} does not mention `{m}`:\n{msg}"
        );
    }
    assert_old_version_serves(w, &before);
    msg
}

fn assert_old_version_serves(w: &Worker, before: &Value) {
    assert_eq!(call(w, "fn"), json!({"v": 1}));
    let after = w.request("GET", "/registry/fn", &[], b"").json();
    assert_eq!(&after, before, "the version in service changed");
    assert_store_clean(w);
}

/// A first version that runs (and uses a package, so it has a lock to keep).
fn deploy_v1(w: &Worker) {
    let v = deploy_ok(
        w,
        "fn",
        &format!("import six\n{VERSIONED_FN}"),
        Some("six\n"),
    );
    assert_eq!(names(&v["packages"]), BTreeSet::from(["six".to_string()]));
    assert_eq!(call(w, "fn"), json!({"v": 1}));
    assert_instance_layout(w, "fn", "six");
}

/// `GET /registry/<name>` reports how the function's instances are laid out (what the
/// baselines of `kindling bench startup` reproduce): the code, runtime and store as host
/// paths, and the closure in the environment.
fn assert_instance_layout(w: &Worker, name: &str, package: &str) {
    let info = w
        .request("GET", &format!("/registry/{name}"), &[], b"")
        .json();
    let layout = &info["instance"];
    let bind = |target: &str| {
        layout["mounts"]
            .as_array()
            .expect("mounts")
            .iter()
            .find(|m| m["kind"] == "bind" && m["target"] == target)
            .unwrap_or_else(|| panic!("no bind at {target}: {layout}"))["source"]
            .as_str()
            .expect("source")
            .to_string()
    };
    let code = std::path::PathBuf::from(bind("/handler"));
    assert!(code.starts_with(w.root.path().join("functions").join(name)));
    assert!(code.join("f.py").is_file(), "no f.py in {}", code.display());
    // Only the function's closure of the store is mounted at /packages.
    let store = layout["mounts"]
        .as_array()
        .expect("mounts")
        .iter()
        .find(|m| m["kind"] == "packages" && m["target"] == "/packages")
        .unwrap_or_else(|| panic!("no packages mount: {layout}"));
    assert_eq!(
        store["store"].as_str().map(std::path::PathBuf::from),
        Some(w.root.path().join("packages"))
    );
    let keys: Vec<&str> = store["keys"]
        .as_array()
        .expect("keys")
        .iter()
        .filter_map(|k| k.as_str())
        .collect();
    assert!(
        keys.iter().any(|k| k.starts_with(&format!("{package}=="))),
        "{keys:?}"
    );
    assert!(std::path::Path::new(&bind("/kindling"))
        .join("kindling_runtime.py")
        .is_file());
    let env: std::collections::HashMap<String, String> =
        serde_json::from_value::<Vec<(String, String)>>(layout["env"].clone())
            .expect("env pairs")
            .into_iter()
            .collect();
    let path = &env["KINDLING_PATH"];
    assert!(
        path.starts_with(&format!("/packages/{package}==")) && path.ends_with("/files"),
        "KINDLING_PATH={path}"
    );
    assert!(!env.contains_key("KINDLING_SANDBOX"));
    assert_eq!(layout["cwd"], "/handler");
    assert_eq!(layout["interpreter"][1], "-S");
}

/// A package or version that doesn't exist, conflicting requirements, and an sdist whose build
/// fails: 400 with uv's own text naming the package, the previous version stays in service.
#[test]
fn bad_requirements_keep_the_previous_version() {
    let w = Worker::start(UV);
    deploy_v1(&w);
    let pulls = stat(&w, "pull-package.cnt");

    assert_bad_deploy(
        &w,
        "kindling-no-such-package-xyzzy\n",
        &[
            "kindling-no-such-package-xyzzy",
            "not found in the package registry",
        ],
    );
    assert_bad_deploy(
        &w,
        "requests==0.0.0.1\n",
        &["requests==0.0.0.1", "no version of requests"],
    );
    assert_bad_deploy(
        &w,
        "requests==2.31.0\nurllib3<1.0\n",
        &["urllib3", "requests", "unsatisfiable"],
    );
    // sdist-only, needs a C compiler, which the minbase base lacks.
    assert_bad_deploy(
        &w,
        "pycrypto==2.6.1\n",
        &["pycrypto", "Failed to build", "no acceptable C compiler"],
    );
    assert_eq!(
        stat(&w, "pull-package.cnt"),
        pulls,
        "a failed deploy counted an install"
    );
    assert!(!store_keys(&w).iter().any(|k| k.starts_with("pycrypto")));
    w.assert_no_leaks();
    w.stop();
}

const UNSAFE_LINES: [&str; 4] = [
    "-e .",
    "--index-url http://x",
    "pkg @ https://x/y.whl",
    "./local",
];

/// Malicious requirement lines are refused, naming the line; nothing reaches uv.
#[test]
fn unsafe_requirement_lines_are_refused() {
    let w = Worker::start(UV);
    deploy_v1(&w);
    for line in UNSAFE_LINES {
        let msg = assert_bad_deploy(&w, &format!("six\n{line}\n"), &[line, "refused", "line 2"]);
        assert!(msg.contains("allow_unsafe_requirements"), "{msg}");
    }
    w.assert_no_leaks();
    w.stop();
}

/// With `allow_unsafe_requirements = true` Kindling does not refuse those lines (uv may still
/// fail on them, which must still leave the previous version in service).
#[test]
fn unsafe_requirement_lines_pass_when_allowed() {
    let w = Worker::start(&format!("{UV}allow_unsafe_requirements = true\n"));
    deploy_v1(&w);
    for line in UNSAFE_LINES {
        let before = w.request("GET", "/registry/fn", &[], b"").json();
        let (status, v) = deploy(
            &w,
            "fn",
            "def f(event):\n    return {\"v\": 2}\n",
            Some(&format!("six\n{line}\n")),
        );
        let msg = v["error"].as_str().unwrap_or_default();
        assert!(
            !msg.contains("refused"),
            "{line}: refused although allowed: {msg}"
        );
        if status == 200 {
            // Put version 1 back for the next line.
            deploy_v1(&w);
        } else {
            assert_eq!(status, 400, "{line}: {v}");
            assert_old_version_serves(&w, &before);
        }
    }
    w.assert_no_leaks();
    w.stop();
}

/// Deploys numpy on a worker with tight installer limits: the deploy fails naming the package
/// and the limit, and leaves nothing in the store.
fn assert_limit_fails_cleanly(limits: &str, what: &str) {
    let w = Worker::start(&format!("{UV}[installer_limits]\n{limits}\n"));
    // Version 1 needs no package (the limits would stop its install too).
    let v = deploy_ok(&w, "fn", VERSIONED_FN, None);
    assert_eq!(v["changed"], true);
    assert_eq!(call(&w, "fn"), json!({"v": 1}));
    assert_bad_deploy(&w, "numpy\n", &["numpy", "limit"]);
    assert!(store_keys(&w).is_empty(), "{what}: {:?}", store_keys(&w));
    assert_eq!(stat(&w, "pull-package.cnt"), 0);
    w.assert_no_leaks();
    w.stop();
}

/// An install over the installer's memory limit (numpy resolves within 32 MB, its install is
/// killed).
#[test]
fn installer_memory_limit_fails_cleanly() {
    assert_limit_fails_cleanly("memory_mb = 32", "memory");
}

/// A resolution over the installer's memory limit (16 MB: uv is killed while resolving) must
/// fail the same way: naming the package and the limit.
#[test]
fn installer_memory_limit_during_resolution_fails_cleanly() {
    assert_limit_fails_cleanly("memory_mb = 16", "memory (resolution)");
}

/// An installer sandbox over its time limit.
#[test]
fn installer_time_limit_fails_cleanly() {
    assert_limit_fails_cleanly("timeout_secs = 1", "time");
}

/// Decodes a chunked HTTP/1.1 body (the head already stripped).
fn dechunk(mut rest: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    while let Some(nl) = rest.windows(2).position(|w| w == b"\r\n") {
        let size = usize::from_str_radix(std::str::from_utf8(&rest[..nl]).unwrap().trim(), 16)
            .expect("chunk size");
        rest = &rest[nl + 2..];
        if size == 0 {
            break;
        }
        out.extend_from_slice(&rest[..size]);
        rest = &rest[size + 2..];
    }
    out
}

/// `POST /packages/gc` while a deploy is between installing its packages and putting the
/// function in service must not remove those packages: the deployed function must run.
#[test]
fn gc_during_a_deploy_keeps_its_packages() {
    use std::io::{Read, Write};
    let w = Worker::start(UV);
    let body = pack(&[("f.py", REQUESTS_FN), ("requirements.txt", "requests\n")]);
    let mut s = std::net::TcpStream::connect(w.addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(120))).unwrap();
    write!(
        s,
        "POST /registry/req?progress HTTP/1.1\r\nHost: x\r\nConnection: close\r\nAuthorization: {}\r\nContent-Length: {}\r\n\r\n",
        w.bearer(),
        body.len()
    )
    .unwrap();
    s.write_all(&body).unwrap();
    // Wait for the first package to land in the store, then collect garbage.
    let mut raw = Vec::new();
    let mut buf = [0u8; 4096];
    let mut collected = Vec::new();
    loop {
        let n = s.read(&mut buf).unwrap();
        if n == 0 {
            break;
        }
        raw.extend_from_slice(&buf[..n]);
        if collected.is_empty() && String::from_utf8_lossy(&raw).contains("\"installed ") {
            let r = w.request("POST", "/packages/gc", &[], b"");
            assert_eq!(r.status, 200, "{}", r.text());
            collected = strings(&r.json()["removed"]);
            if collected.is_empty() {
                collected.push(String::new());
            }
        }
    }
    let end = raw.windows(4).position(|w| w == b"\r\n\r\n").unwrap();
    let text = String::from_utf8(dechunk(&raw[end + 4..])).unwrap();
    let last: Value = serde_json::from_str(text.lines().last().unwrap()).unwrap();
    assert_eq!(last["status"], 200, "{text}");
    let packages = strings(&last["packages"]);
    let keys = store_keys(&w);
    let missing: Vec<&String> = packages.iter().filter(|k| !keys.contains(*k)).collect();
    assert!(
        missing.is_empty(),
        "gc during the deploy removed {collected:?}; the deployed function's {missing:?} are gone from the store"
    );
    let r = w.run("req", "{}");
    assert_eq!(
        r.status,
        200,
        "the function cannot import its packages: {}",
        r.text()
    );
    w.assert_no_leaks();
    w.stop();
}
