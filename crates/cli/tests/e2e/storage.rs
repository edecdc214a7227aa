//! Object storage from function code: `import storage` in a sandbox, served by the worker over
//! the socket bound at /kindling/storage-socket/storage.sock, objects under
//! `<root>/storage/<function>/<bucket>/`.

use crate::harness::Worker;

/// A function driving the storage client: a round trip, or one call expected to fail.
const STORE: &str = r#"
import os
import storage

client = storage.storage.get_instance()


def f(event):
    b = event["bucket"]
    if event["op"] == "roundtrip":
        out = {}
        out["put"] = client.upload_stream(b, "dir/a.txt", b"alpha")
        client.upload_stream(b, "dir/sub/b.bin", bytes(range(256)) * 1000)
        client.upload_stream(b, "other.txt", bytearray(b"other"))
        with open("/tmp/c.txt", "wb") as fh:
            fh.write(b"gamma")
        out["upload"] = client.upload(b, "dir/c.txt", "/tmp/c.txt")
        out["list"] = client.list(b, "dir/")
        out["all"] = client.list(b)
        out["a"] = client.download_stream(b, "dir/a.txt").decode()
        out["host"] = client.download_stream(b, "from-host.txt").decode()
        big = client.download_stream(b, "dir/sub/b.bin")
        out["big_ok"] = big == bytes(range(256)) * 1000
        client.download_directory(b, "dir", "/tmp/out")
        out["tree"] = sorted(
            os.path.relpath(os.path.join(d, n), "/tmp/out")
            for d, _, names in os.walk("/tmp/out") for n in names
        )
        client.download(b, "dir/c.txt", "/tmp/c2.txt")
        out["c"] = open("/tmp/c2.txt").read()
        out["same_instance"] = storage.storage.get_instance() is client
        return out
    try:
        if event["op"] == "get":
            client.download_stream(b, event["key"])
        elif event["op"] == "put":
            client.upload_stream(b, event["key"], b"x" * event.get("size", 1))
        elif event["op"] == "list":
            client.list(b, event["key"])
    except storage.StorageError as e:
        return {"type": type(e).__name__, "message": str(e),
                "not_found": isinstance(e, FileNotFoundError),
                "value_error": isinstance(e, ValueError)}
    return {"type": None}
"#;

#[test]
fn storage_round_trip_and_bad_keys() {
    let w = Worker::start("[storage]\nmax_object_bytes = 1048576\n");
    let root = w.root.path().to_path_buf();
    let status = w.request("GET", "/status", &[], b"").json();
    assert_eq!(
        status["storage_dir"],
        serde_json::json!(root.join("storage").to_string_lossy()),
        "{status}"
    );
    // An input put in place on the host, as benchmarks/run_local.py --storage-dir does, in the
    // function's own buckets.
    let bucket_dir = root.join("storage").join("store").join("bench");
    std::fs::create_dir_all(&bucket_dir).unwrap();
    std::fs::write(bucket_dir.join("from-host.txt"), "host").unwrap();

    w.deploy_ok("store", &[("f.py", STORE)]);
    let r = w.run("store", r#"{"op": "roundtrip", "bucket": "bench"}"#);
    assert_eq!(r.status, 200, "{}\n{}", r.text(), w.log_text());
    let out = r.json();
    assert_eq!(out["put"], "dir/a.txt");
    assert_eq!(out["upload"], "dir/c.txt");
    assert_eq!(
        out["list"],
        serde_json::json!(["dir/a.txt", "dir/c.txt", "dir/sub/b.bin"])
    );
    assert_eq!(
        out["all"],
        serde_json::json!([
            "dir/a.txt",
            "dir/c.txt",
            "dir/sub/b.bin",
            "from-host.txt",
            "other.txt"
        ])
    );
    assert_eq!(out["a"], "alpha");
    assert_eq!(out["host"], "host");
    assert_eq!(out["big_ok"], true);
    assert_eq!(
        out["tree"],
        serde_json::json!(["dir/a.txt", "dir/c.txt", "dir/sub/b.bin"])
    );
    assert_eq!(out["c"], "gamma");
    assert_eq!(out["same_instance"], true);
    // The objects are plain files under <root>/storage/<function>/<bucket>/.
    assert_eq!(
        std::fs::read_to_string(bucket_dir.join("dir/a.txt")).unwrap(),
        "alpha"
    );
    assert_eq!(
        std::fs::read(bucket_dir.join("dir/sub/b.bin"))
            .unwrap()
            .len(),
        256_000
    );
    assert_eq!(
        std::fs::read_to_string(bucket_dir.join("other.txt")).unwrap(),
        "other"
    );

    let fail = |event: serde_json::Value| {
        let r = w.run("store", &event.to_string());
        assert_eq!(r.status, 200, "{}", r.text());
        r.json()
    };
    // Keys that would escape the bucket are refused with a clear message, and nothing is
    // written outside it.
    for key in ["../escape", "/etc/passwd", "dir/../../escape", "a\u{0}b"] {
        let out = fail(serde_json::json!({"op": "put", "bucket": "bench", "key": key}));
        assert_eq!(out["type"], "InvalidNameError", "{key:?}: {out}");
        assert_eq!(out["value_error"], true);
        let message = out["message"].as_str().unwrap();
        assert!(message.starts_with("invalid key "), "{message}");
        let out = fail(serde_json::json!({"op": "get", "bucket": "bench", "key": key}));
        assert_eq!(out["type"], "InvalidNameError", "{key:?}: {out}");
    }
    assert!(!root.join("storage").join("escape").exists());
    assert!(!root.join("storage").join("store").join("escape").exists());
    assert!(!root.join("escape").exists());
    let out = fail(serde_json::json!({"op": "put", "bucket": "../x", "key": "k"}));
    assert!(
        out["message"]
            .as_str()
            .unwrap()
            .starts_with(r#"invalid bucket name "../x""#),
        "{out}"
    );
    let out = fail(serde_json::json!({"op": "list", "bucket": "bench", "key": "../"}));
    assert_eq!(out["type"], "InvalidNameError", "{out}");
    // Missing objects and buckets.
    let out = fail(serde_json::json!({"op": "get", "bucket": "bench", "key": "nope.txt"}));
    assert_eq!(out["type"], "NotFoundError");
    assert_eq!(out["not_found"], true);
    assert_eq!(
        out["message"],
        r#"object "nope.txt" does not exist in bucket "bench""#
    );
    let out = fail(serde_json::json!({"op": "list", "bucket": "nobucket", "key": ""}));
    assert_eq!(out["message"], r#"bucket "nobucket" does not exist"#);
    // The size limit (1 MiB here), refused before the bytes are read.
    let out =
        fail(serde_json::json!({"op": "put", "bucket": "bench", "key": "big", "size": 4 << 20}));
    assert_eq!(out["type"], "TooLargeError", "{out}");
    assert_eq!(
        out["message"],
        "object of 4194304 bytes is larger than the limit of 1048576 bytes per object"
    );
    assert!(!bucket_dir.join("big").exists());
    // An uncaught storage error fails the invocation with its message in the traceback.
    let r = w.run("store", r#"{"op": "roundtrip", "bucket": "bad/bucket"}"#);
    assert_eq!(r.status, 500);
    assert!(
        r.text()
            .contains(r#"storage.InvalidNameError: invalid bucket name "bad/bucket""#),
        "{}",
        r.text()
    );
    w.assert_no_leaks();
    assert!(root.join("storage-socket").join("storage.sock").exists());
    w.stop();
}
