//! The S3 API with a real S3 client (boto3, from PyPI: `scripts/install-deps` installs it):
//! inputs put in through S3, read and written by a function through `storage`, outputs taken
//! out through S3; listings, multipart uploads, credentials, bad keys, limits and quotas.

use crate::harness::Worker;
use std::net::TcpListener;
use std::process::Command;

const ACCESS_KEY: &str = "kindling-e2e";
const SECRET_KEY: &str = "kindling-e2e-secret";

/// Runs a Python script with boto3's `s3` client for the worker's S3 API (`secret` as its
/// secret key) and returns what the script prints (one JSON value). Fails, never skips, if
/// boto3 is missing.
fn boto(port: u16, secret: &str, script: &str) -> serde_json::Value {
    let prelude = r#"
import io, json, os, sys, hashlib
import boto3
import botocore
from botocore.config import Config
from botocore.exceptions import ClientError
s3 = boto3.client(
    "s3",
    endpoint_url="http://127.0.0.1:" + os.environ["S3_PORT"],
    aws_access_key_id=os.environ["S3_ACCESS_KEY"],
    aws_secret_access_key=os.environ["S3_SECRET_KEY"],
    region_name="us-east-1",
    config=Config(s3={"addressing_style": "path"}, retries={"max_attempts": 1}),
)
def error(call):
    try:
        call()
    except ClientError as e:
        return [e.response["ResponseMetadata"]["HTTPStatusCode"], e.response["Error"]["Code"]]
    return None
"#;
    let out = Command::new("python3")
        .arg("-c")
        .arg(format!("{prelude}\n{script}"))
        .env("S3_PORT", port.to_string())
        .env("S3_ACCESS_KEY", ACCESS_KEY)
        .env("S3_SECRET_KEY", secret)
        .output()
        .expect("python3 runs");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        !stderr.contains("No module named 'boto3'"),
        "boto3 is missing: run scripts/install-deps (python3 -m pip install boto3)"
    );
    assert!(out.status.success(), "boto3 script failed:\n{stderr}");
    let stdout = String::from_utf8_lossy(&out.stdout);
    serde_json::from_str(stdout.trim())
        .unwrap_or_else(|e| panic!("script printed no JSON ({e}): {stdout}\n{stderr}"))
}

/// A worker serving the S3 API on a port of its own, with `extra` config.
fn worker(extra: &str) -> (Worker, u16) {
    let port = TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("free port");
    let w = Worker::start(&format!(
        "{extra}\n[s3]\nlisten = \"127.0.0.1:{port}\"\naccess_key = \"{ACCESS_KEY}\"\n\
         secret_key = \"{SECRET_KEY}\"\n"
    ));
    (w, port)
}

/// Reads its inputs through `storage`, writes outputs through it.
const THUMBNAILER: &str = r#"
import hashlib
import storage

client = storage.storage.get_instance()


def f(event):
    names = client.list("inputs", "in/")
    for key in names:
        data = client.download_stream("inputs", key)
        client.upload_stream("outputs", "out/" + key[len("in/"):], data.upper())
    big = client.download_stream("inputs", "big.bin") if event.get("big") else b""
    return {"read": names, "big": len(big), "big_sha": hashlib.sha256(big).hexdigest()}
"#;

/// Writes into a bucket of its own through `storage`.
const OTHER: &str = r#"
import storage


def f(event):
    storage.storage.get_instance().upload_stream("inputs", "in/secret.txt", b"other's")
    return {"ok": True}
"#;

#[test]
fn s3_inputs_and_outputs_of_a_function() {
    let (w, port) = worker("");
    let out = boto(
        port,
        SECRET_KEY,
        r#"
s3.create_bucket(Bucket="thumbnailer")
for name, body in [("a.txt", b"alpha"), ("b c.txt", b"beta"), ("sub/c.txt", b"gamma")]:
    s3.put_object(Bucket="thumbnailer", Key="inputs/in/" + name, Body=body)
s3.put_object(Bucket="thumbnailer", Key="inputs/other/x", Body=b"x")
print(json.dumps({"again": error(lambda: s3.create_bucket(Bucket="thumbnailer"))}))
"#,
    );
    assert_eq!(
        out["again"],
        serde_json::json!([409, "BucketAlreadyOwnedByYou"])
    );
    // The objects are the function's, where its storage keeps them.
    let inputs = w.root.path().join("storage/thumbnailer/inputs");
    assert_eq!(std::fs::read(inputs.join("in/b c.txt")).unwrap(), b"beta");

    w.deploy_ok("thumbnailer", &[("f.py", THUMBNAILER)]);
    let r = w.run("thumbnailer", "{}");
    assert_eq!(r.status, 200, "{}\n{}", r.text(), w.log_text());
    assert_eq!(
        r.json()["read"],
        serde_json::json!(["in/a.txt", "in/b c.txt", "in/sub/c.txt"])
    );
    // Another function's bucket of the same name is its own, and not in thumbnailer's.
    w.deploy_ok("other", &[("f.py", OTHER)]);
    assert_eq!(w.run("other", "{}").status, 200);

    let out = boto(
        port,
        SECRET_KEY,
        r#"
out = {}
get = lambda key: s3.get_object(Bucket="thumbnailer", Key=key)["Body"].read().decode()
out["outputs"] = [get("outputs/out/" + n) for n in ["a.txt", "b c.txt", "sub/c.txt"]]
keys = lambda **kw: [o["Key"] for o in s3.list_objects_v2(Bucket="thumbnailer", **kw).get("Contents", [])]
prefixes = lambda **kw: [p["Prefix"] for p in s3.list_objects_v2(Bucket="thumbnailer", **kw).get("CommonPrefixes", [])]
out["buckets"] = prefixes(Delimiter="/")
out["in"] = keys(Prefix="inputs/in/")
out["in_top"] = prefixes(Prefix="inputs/", Delimiter="/")
out["out"] = keys(Prefix="outputs/")
pages = s3.get_paginator("list_objects_v2").paginate(Bucket="thumbnailer", PaginationConfig={"PageSize": 2})
out["paged"] = [o["Key"] for p in pages for o in p.get("Contents", [])]
out["all"] = keys()
out["functions"] = sorted(b["Name"] for b in s3.list_buckets()["Buckets"])
out["other"] = s3.get_object(Bucket="other", Key="inputs/in/secret.txt")["Body"].read().decode()
out["range"] = s3.get_object(Bucket="thumbnailer", Key="outputs/out/a.txt", Range="bytes=1-3")["Body"].read().decode()
out["head"] = s3.head_object(Bucket="thumbnailer", Key="outputs/out/a.txt")["ContentLength"]
s3.delete_object(Bucket="thumbnailer", Key="inputs/other/x")
out["after_delete"] = prefixes(Prefix="inputs/", Delimiter="/")
print(json.dumps(out))
"#,
    );
    assert_eq!(
        out["outputs"],
        serde_json::json!(["ALPHA", "BETA", "GAMMA"])
    );
    assert_eq!(out["buckets"], serde_json::json!(["inputs/", "outputs/"]));
    assert_eq!(
        out["in"],
        serde_json::json!([
            "inputs/in/a.txt",
            "inputs/in/b c.txt",
            "inputs/in/sub/c.txt"
        ])
    );
    assert_eq!(
        out["in_top"],
        serde_json::json!(["inputs/in/", "inputs/other/"])
    );
    assert_eq!(
        out["out"],
        serde_json::json!([
            "outputs/out/a.txt",
            "outputs/out/b c.txt",
            "outputs/out/sub/c.txt"
        ])
    );
    assert_eq!(out["paged"], out["all"]);
    assert_eq!(out["all"].as_array().unwrap().len(), 7, "{out}");
    assert!(
        !out["all"].to_string().contains("secret"),
        "another function's object is listed: {out}"
    );
    assert_eq!(
        out["functions"],
        serde_json::json!(["other", "thumbnailer"])
    );
    assert_eq!(out["other"], "other's");
    assert_eq!(out["range"], "LPH");
    assert_eq!(out["head"], 5);
    assert_eq!(out["after_delete"], serde_json::json!(["inputs/in/"]));
    w.assert_no_leaks();
    w.stop();
}

#[test]
fn s3_multipart_upload_read_by_a_function() {
    let (w, port) = worker("[storage]\nmax_object_bytes = 33554432\n");
    let out = boto(
        port,
        SECRET_KEY,
        r#"
from boto3.s3.transfer import TransferConfig
s3.create_bucket(Bucket="thumbnailer")
big = os.urandom(12 * 1024 * 1024 + 12345)
parts = TransferConfig(multipart_threshold=5 * 1024 * 1024, multipart_chunksize=5 * 1024 * 1024)
s3.upload_fileobj(io.BytesIO(big), "thumbnailer", "inputs/big.bin", Config=parts)
back = io.BytesIO()
s3.download_fileobj("thumbnailer", "inputs/big.bin", back, Config=parts)
# An upload aborted halfway leaves nothing.
up = s3.create_multipart_upload(Bucket="thumbnailer", Key="inputs/gone.bin")["UploadId"]
s3.upload_part(Bucket="thumbnailer", Key="inputs/gone.bin", UploadId=up, PartNumber=1, Body=b"x" * 100)
s3.abort_multipart_upload(Bucket="thumbnailer", Key="inputs/gone.bin", UploadId=up)
print(json.dumps({
    "sha": hashlib.sha256(big).hexdigest(),
    "same": back.getvalue() == big,
    "etag": s3.head_object(Bucket="thumbnailer", Key="inputs/big.bin")["ETag"],
    "gone": error(lambda: s3.head_object(Bucket="thumbnailer", Key="inputs/gone.bin")),
}))
"#,
    );
    assert_eq!(out["same"], true, "{out}");
    assert_eq!(out["gone"], serde_json::json!([404, "404"]));
    let space = w.root.path().join("storage/thumbnailer");
    assert!(!space.join(".uploads").exists(), "parts left behind");
    w.deploy_ok("thumbnailer", &[("f.py", THUMBNAILER)]);
    let r = w.run("thumbnailer", r#"{"big": true}"#);
    assert_eq!(r.status, 200, "{}\n{}", r.text(), w.log_text());
    assert_eq!(r.json()["big"], 12 * 1024 * 1024 + 12345);
    assert_eq!(r.json()["big_sha"], out["sha"]);
    w.stop();
}

#[test]
fn s3_refuses_bad_credentials_keys_and_uploads() {
    let (w, port) = worker("[storage]\nmax_object_bytes = 1048576\nmax_function_bytes = 1572864\n");
    let out = boto(
        port,
        SECRET_KEY,
        r#"
s3.create_bucket(Bucket="fn")
out = {}
out["dotdot"] = error(lambda: s3.put_object(Bucket="fn", Key="inputs/../../escape", Body=b"x"))
out["absolute"] = error(lambda: s3.put_object(Bucket="fn", Key="/etc/passwd", Body=b"x"))
out["no_bucket"] = error(lambda: s3.put_object(Bucket="fn", Key="plain", Body=b"x"))
out["get_dotdot"] = error(lambda: s3.get_object(Bucket="fn", Key="inputs/../x"))
out["too_large"] = error(lambda: s3.put_object(Bucket="fn", Key="inputs/big", Body=b"x" * (2 << 20)))
out["too_large_head"] = error(lambda: s3.head_object(Bucket="fn", Key="inputs/big"))
s3.put_object(Bucket="fn", Key="inputs/one", Body=b"1" * 1000000)
out["quota"] = error(lambda: s3.put_object(Bucket="fn", Key="inputs/two", Body=b"2" * 1000000))
out["no_function"] = error(lambda: s3.put_object(Bucket="nobody", Key="b/k", Body=b"x"))
print(json.dumps(out))
"#,
    );
    assert_eq!(
        out["dotdot"],
        serde_json::json!([400, "InvalidArgument"]),
        "{out}"
    );
    assert_eq!(
        out["absolute"],
        serde_json::json!([400, "InvalidArgument"]),
        "{out}"
    );
    assert_eq!(
        out["no_bucket"],
        serde_json::json!([400, "InvalidArgument"]),
        "{out}"
    );
    assert_eq!(
        out["get_dotdot"],
        serde_json::json!([400, "InvalidArgument"]),
        "{out}"
    );
    assert_eq!(
        out["too_large"],
        serde_json::json!([400, "EntityTooLarge"]),
        "{out}"
    );
    assert_eq!(
        out["too_large_head"],
        serde_json::json!([404, "404"]),
        "{out}"
    );
    assert_eq!(
        out["quota"],
        serde_json::json!([403, "QuotaExceeded"]),
        "{out}"
    );
    assert_eq!(
        out["no_function"],
        serde_json::json!([404, "NoSuchBucket"]),
        "{out}"
    );
    let root = w.root.path();
    assert!(!root.join("escape").exists() && !root.join("storage/escape").exists());
    assert!(!root.join("storage/fn/inputs/big").exists());
    assert!(!root.join("storage/fn/inputs/two").exists());
    assert!(!root.join("storage/nobody").exists());

    // Wrong secret, unknown key, no signature: 403, nothing created.
    let out = boto(
        port,
        "not-the-secret",
        r#"
anonymous = boto3.client("s3", endpoint_url="http://127.0.0.1:" + os.environ["S3_PORT"],
    region_name="us-east-1", config=Config(signature_version=botocore.UNSIGNED,
    s3={"addressing_style": "path"}, retries={"max_attempts": 1}))
stranger = boto3.client("s3", endpoint_url="http://127.0.0.1:" + os.environ["S3_PORT"],
    aws_access_key_id="stranger", aws_secret_access_key="whatever-secret", region_name="us-east-1",
    config=Config(s3={"addressing_style": "path"}, retries={"max_attempts": 1}))
print(json.dumps({
    "wrong_secret": error(lambda: s3.list_buckets()),
    "wrong_secret_put": error(lambda: s3.put_object(Bucket="fn", Key="inputs/evil", Body=b"x")),
    "unknown_key": error(lambda: stranger.list_buckets()),
    "unsigned": error(lambda: anonymous.get_object(Bucket="fn", Key="inputs/one")),
}))
"#,
    );
    assert_eq!(
        out["wrong_secret"],
        serde_json::json!([403, "SignatureDoesNotMatch"]),
        "{out}"
    );
    assert_eq!(
        out["wrong_secret_put"],
        serde_json::json!([403, "SignatureDoesNotMatch"]),
        "{out}"
    );
    assert_eq!(
        out["unknown_key"],
        serde_json::json!([403, "InvalidAccessKeyId"]),
        "{out}"
    );
    assert_eq!(
        out["unsigned"],
        serde_json::json!([403, "AccessDenied"]),
        "{out}"
    );
    assert!(!root.join("storage/fn/inputs/evil").exists());
    w.stop();
}

#[test]
fn s3_and_functions_share_one_quota() {
    let (w, port) = worker("[storage]\nmax_function_bytes = 1048576\n");
    boto(
        port,
        SECRET_KEY,
        r#"s3.create_bucket(Bucket="filler"); print("{}")"#,
    );
    w.deploy_ok(
        "filler",
        &[(
            "f.py",
            "import storage\n\ndef f(event):\n    storage.storage.get_instance().upload_stream(\"b\", \"own\", b\"f\" * 600000)\n    return {}\n",
        )],
    );
    assert_eq!(w.run("filler", "{}").status, 200);
    let out = boto(
        port,
        SECRET_KEY,
        r#"print(json.dumps({"quota": error(lambda: s3.put_object(Bucket="filler", Key="b/s3", Body=b"s" * 600000))}))"#,
    );
    assert_eq!(
        out["quota"],
        serde_json::json!([403, "QuotaExceeded"]),
        "{out}"
    );
    assert!(!w.root.path().join("storage/filler/b/s3").exists());
    w.stop();
}
