//! The S3 API driven in-process: HTTP requests into the `s3s` service over a directory backend,
//! as a client would send them (unsigned, on a service without keys, except where signing is
//! what is tested). boto3 against a running worker is the end-to-end test.

#![allow(clippy::unwrap_used)]

use super::*;
use crate::storage::quota::{Quotas, BLOCK};
use crate::storage::Space;
use crate::storage::{DirectoryBackend, StorageBackend};
use http_body_util::BodyExt;
use hyper::{Method, StatusCode};
use std::path::{Path, PathBuf};

const AK: &str = "kindling-test";
const SK: &str = "kindling-secret-key";

struct Fixture {
    _tmp: tempfile::TempDir,
    dir: PathBuf,
    store: Store,
    api: objects::ObjectApi,
    service: s3s::service::S3Service,
}

struct Reply {
    status: StatusCode,
    headers: hyper::HeaderMap,
    body: Vec<u8>,
}

impl Reply {
    fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    /// The S3 error code of an error reply.
    fn code(&self) -> String {
        let text = self.text();
        let start = text.find("<Code>").map(|i| i + 6).unwrap_or(0);
        let end = text.find("</Code>").unwrap_or(start);
        text[start..end].to_string()
    }

    fn header(&self, name: &str) -> &str {
        self.headers
            .get(name)
            .map(|v| v.to_str().unwrap())
            .unwrap_or("")
    }
}

fn config(keys: bool) -> S3Config {
    S3Config {
        listen: Some("127.0.0.1:0".parse().unwrap()),
        access_key: keys.then(|| AK.to_string()),
        secret_key: keys.then(|| SK.to_string()),
        ..S3Config::default()
    }
}

impl Fixture {
    fn new(max_object_bytes: u64, max_function_bytes: u64, config: &S3Config) -> Self {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("storage");
        let backend: Arc<dyn StorageBackend> = Arc::new(DirectoryBackend::open(&dir).unwrap());
        let quotas = Arc::new(Quotas::new(
            max_function_bytes,
            u64::MAX,
            Duration::from_secs(3600),
            &NoUsage,
        ));
        let store = Store {
            backend,
            quotas,
            max_object_bytes,
        };
        let api = objects::ObjectApi::new(store.clone(), config);
        let service = build_service(api.clone(), config);
        Self {
            _tmp: tmp,
            dir,
            store,
            api,
            service,
        }
    }

    fn open() -> Self {
        Self::new(1 << 20, 1 << 30, &config(false))
    }

    async fn call(
        &self,
        method: Method,
        uri: &str,
        headers: &[(&str, &str)],
        body: &[u8],
    ) -> Reply {
        let mut req = hyper::Request::builder()
            .method(method)
            .uri(uri)
            .header("host", "127.0.0.1:5001");
        if !body.is_empty() || headers.iter().all(|(n, _)| *n != "content-length") {
            req = req.header("content-length", body.len());
        }
        for (name, value) in headers {
            req = req.header(*name, *value);
        }
        let req = req.body(s3s::Body::from(body.to_vec())).unwrap();
        let resp = self.service.call(req).await.unwrap();
        let (parts, body) = resp.into_parts();
        let body = body.collect().await.unwrap().to_bytes().to_vec();
        Reply {
            status: parts.status,
            headers: parts.headers,
            body,
        }
    }

    async fn put(&self, path: &str, data: &[u8]) -> Reply {
        self.call(Method::PUT, path, &[], data).await
    }

    async fn get(&self, path: &str) -> Reply {
        self.call(Method::GET, path, &[], b"").await
    }

    /// What the backend's temporary and upload directories hold (nothing, between calls).
    fn leftovers(&self) -> usize {
        let count = |p: &Path| std::fs::read_dir(p).map_or(0, |d| d.count());
        count(&self.dir.join(".tmp")) + count(&self.dir.join("thumbnailer/.uploads"))
    }
}

/// A backend count for quotas that starts empty.
struct NoUsage;

impl crate::storage::quota::Usage for NoUsage {
    fn usage(&self, _space: &str) -> Option<u64> {
        None
    }
    fn spaces(&self) -> Vec<String> {
        Vec::new()
    }
}

#[tokio::test]
async fn buckets_are_functions_and_keys_name_their_bucket() {
    let f = Fixture::open();
    let r = f.call(Method::PUT, "/thumbnailer", &[], b"").await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text());
    assert!(f.dir.join("thumbnailer").is_dir());
    let r = f.call(Method::PUT, "/thumbnailer", &[], b"").await;
    assert_eq!(
        (r.status, r.code().as_str()),
        (StatusCode::CONFLICT, "BucketAlreadyOwnedByYou")
    );
    // Function names are bucket names, upper case and `_` included.
    assert_eq!(
        f.call(Method::PUT, "/My_fn", &[], b"").await.status,
        StatusCode::OK
    );
    let r = f.call(Method::PUT, "/-x", &[], b"").await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST);
    let r = f.get("/").await;
    assert_eq!(r.status, StatusCode::OK);
    let text = r.text();
    assert!(text.contains("<Name>My_fn</Name>") && text.contains("<Name>thumbnailer</Name>"));
    assert!(text.contains("<CreationDate>"), "{text}");
    assert_eq!(
        f.call(Method::HEAD, "/thumbnailer", &[], b"").await.status,
        StatusCode::OK
    );
    assert_eq!(
        f.call(Method::HEAD, "/nobody", &[], b"").await.status,
        StatusCode::NOT_FOUND
    );
    let r = f.call(Method::GET, "/thumbnailer?location", &[], b"").await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text());

    // An object is <bucket>/<key> of the function's storage.
    let r = f.put("/thumbnailer/photos/in/a.jpg", b"0123456789").await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text());
    let etag = r.header("etag").to_string();
    assert!(etag.starts_with('"') && etag.len() > 4, "{etag}");
    assert_eq!(
        std::fs::read(f.dir.join("thumbnailer/photos/in/a.jpg")).unwrap(),
        b"0123456789"
    );
    let r = f.get("/thumbnailer/photos/in/a.jpg").await;
    assert_eq!(
        (r.status, r.body.as_slice()),
        (StatusCode::OK, &b"0123456789"[..])
    );
    assert_eq!(r.header("etag"), etag);
    assert!(!r.header("last-modified").is_empty());
    let r = f
        .call(Method::HEAD, "/thumbnailer/photos/in/a.jpg", &[], b"")
        .await;
    assert_eq!(
        (r.status, r.header("content-length")),
        (StatusCode::OK, "10")
    );
    assert_eq!(r.header("etag"), etag);
    // What a function stores (a file in its bucket) is an object too.
    std::fs::write(f.dir.join("thumbnailer/photos/out.txt"), b"made by f").unwrap();
    assert_eq!(
        f.get("/thumbnailer/photos/out.txt").await.body,
        b"made by f"
    );
    // Replacing an object changes its ETag.
    f.put("/thumbnailer/photos/in/a.jpg", b"abc").await;
    let r = f.get("/thumbnailer/photos/in/a.jpg").await;
    assert_eq!(r.body, b"abc");
    assert_ne!(r.header("etag"), etag);

    // Missing: the key, the function's bucket, the function.
    let r = f.get("/thumbnailer/photos/nope").await;
    assert_eq!(
        (r.status, r.code().as_str()),
        (StatusCode::NOT_FOUND, "NoSuchKey")
    );
    assert_eq!(f.get("/thumbnailer/nobucket/x").await.code(), "NoSuchKey");
    assert_eq!(f.get("/nobody/b/x").await.code(), "NoSuchBucket");
    let r = f.put("/nobody/b/x", b"x").await;
    assert_eq!(
        (r.status, r.code().as_str()),
        (StatusCode::NOT_FOUND, "NoSuchBucket")
    );
    assert!(!f.dir.join("nobody").exists());

    // Delete: the object, then the directories it leaves empty (never the bucket).
    let r = f
        .call(Method::DELETE, "/thumbnailer/photos/in/a.jpg", &[], b"")
        .await;
    assert_eq!(r.status, StatusCode::NO_CONTENT, "{}", r.text());
    assert!(!f.dir.join("thumbnailer/photos/in").exists());
    assert!(f.dir.join("thumbnailer/photos").is_dir());
    // A key that was a directory can now be an object; deleting a missing key is no error.
    assert_eq!(
        f.put("/thumbnailer/photos/in", b"now a file").await.status,
        StatusCode::OK
    );
    let r = f
        .call(Method::DELETE, "/thumbnailer/photos/gone", &[], b"")
        .await;
    assert_eq!(r.status, StatusCode::NO_CONTENT);
    // An object cannot also be a prefix of other keys (as in MinIO's file system mode).
    let r = f.put("/thumbnailer/photos/in/x", b"x").await;
    assert_eq!(
        (r.status, r.code().as_str()),
        (StatusCode::BAD_REQUEST, "XMinioParentIsObject")
    );
    assert_eq!(f.leftovers(), 0);
}

#[tokio::test]
async fn keys_that_leave_their_bucket_are_refused() {
    let f = Fixture::open();
    f.call(Method::PUT, "/thumbnailer", &[], b"").await;
    f.put("/thumbnailer/photos/a", b"a").await;
    for (uri, why) in [
        ("/thumbnailer/photos/../../etc/passwd", "`..`"),
        ("/thumbnailer/photos/a/../../x", "`..`"),
        ("/thumbnailer/../x/y", "bucket"),
        ("/thumbnailer//etc/passwd", "bucket"),
        ("/thumbnailer/photos//etc/passwd", "absolute"),
        ("/thumbnailer/photos/a//b", "empty path component"),
        ("/thumbnailer/photos/a%00b", "NUL"),
        ("/thumbnailer/photos/./a", "`.`"),
        ("/thumbnailer/plain-key", "names no bucket"),
    ] {
        for method in [Method::PUT, Method::GET, Method::DELETE] {
            let r = f.call(method.clone(), uri, &[], b"x").await;
            assert_eq!(
                r.status,
                StatusCode::BAD_REQUEST,
                "{method} {uri}: {}",
                r.text()
            );
            assert_eq!(r.code(), "InvalidArgument", "{method} {uri}");
            assert!(r.text().contains(why), "{method} {uri}: {}", r.text());
            assert!(r.body.len() < 1024, "{uri}: {}", r.text());
        }
    }
    // A very long key is echoed cut short.
    let long = format!("/thumbnailer/photos/{}", "../".repeat(300));
    let r = f.get(&long).await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST);
    assert!(r.body.len() < 1024);
    // Nothing outside the bucket was touched, and the object is still there.
    let entries: Vec<_> = std::fs::read_dir(&f.dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    let mut entries = entries;
    entries.sort();
    assert_eq!(entries, [".tmp", "thumbnailer"]);
    assert_eq!(f.get("/thumbnailer/photos/a").await.body, b"a");
    assert_eq!(f.leftovers(), 0);
}

#[tokio::test]
async fn ranges_and_conditions() {
    let f = Fixture::open();
    f.call(Method::PUT, "/fn", &[], b"").await;
    f.put("/fn/b/k", b"0123456789").await;
    let fr = &f;
    let range = |spec: &'static str| async move {
        fr.call(Method::GET, "/fn/b/k", &[("range", spec)], b"")
            .await
    };
    let r = range("bytes=2-4").await;
    assert_eq!(
        (r.status, r.body.as_slice()),
        (StatusCode::PARTIAL_CONTENT, &b"234"[..])
    );
    assert_eq!(r.header("content-range"), "bytes 2-4/10");
    assert_eq!(r.header("content-length"), "3");
    assert_eq!(range("bytes=7-").await.body, b"789");
    assert_eq!(range("bytes=-3").await.body, b"789");
    assert_eq!(range("bytes=8-100").await.body, b"89");
    let r = range("bytes=10-").await;
    assert_eq!(
        (r.status, r.code().as_str()),
        (StatusCode::RANGE_NOT_SATISFIABLE, "InvalidRange")
    );
    // A large object read in several chunks.
    let big: Vec<u8> = (0..700_000u32).map(|i| (i % 251) as u8).collect();
    f.put("/fn/b/big", &big).await;
    assert_eq!(f.get("/fn/b/big").await.body, big);
    let r = f
        .call(
            Method::GET,
            "/fn/b/big",
            &[("range", "bytes=300000-600000")],
            b"",
        )
        .await;
    assert_eq!(r.body, &big[300_000..=600_000]);

    let etag = f.get("/fn/b/k").await.header("etag").to_string();
    let cond = |name: &'static str, value: String| {
        let f = &f;
        async move {
            f.call(Method::GET, "/fn/b/k", &[(name, value.as_str())], b"")
                .await
                .status
        }
    };
    assert_eq!(cond("if-match", etag.clone()).await, StatusCode::OK);
    assert_eq!(
        cond("if-match", "\"other\"".into()).await,
        StatusCode::PRECONDITION_FAILED
    );
    assert_eq!(
        cond("if-none-match", etag.clone()).await,
        StatusCode::NOT_MODIFIED
    );
    assert_eq!(
        cond("if-none-match", "\"other\"".into()).await,
        StatusCode::OK
    );
    let future = "Fri, 01 Jan 2100 00:00:00 GMT".to_string();
    let past = "Mon, 01 Jan 2001 00:00:00 GMT".to_string();
    assert_eq!(
        cond("if-modified-since", future.clone()).await,
        StatusCode::NOT_MODIFIED
    );
    assert_eq!(
        cond("if-modified-since", past.clone()).await,
        StatusCode::OK
    );
    assert_eq!(
        cond("if-unmodified-since", past).await,
        StatusCode::PRECONDITION_FAILED
    );
    assert_eq!(cond("if-unmodified-since", future).await, StatusCode::OK);
}

#[tokio::test]
async fn listings_show_buckets_as_common_prefixes_and_page() {
    let f = Fixture::open();
    f.call(Method::PUT, "/thumbnailer", &[], b"").await;
    for key in [
        "photos/in/a.jpg",
        "photos/in/b c.jpg",
        "photos/out/a.png",
        "logs/1",
        "logs-old/1",
    ] {
        let r = f
            .put(&format!("/thumbnailer/{}", key.replace(' ', "%20")), b"x")
            .await;
        assert_eq!(r.status, StatusCode::OK, "{key}: {}", r.text());
    }
    // Another function's bucket of the same name is not mixed in.
    f.call(Method::PUT, "/other", &[], b"").await;
    f.put("/other/photos/secret", b"s").await;

    let fr = &f;
    let list = |query: &'static str| async move {
        let r = fr.get(&format!("/thumbnailer?list-type=2{query}")).await;
        assert_eq!(r.status, StatusCode::OK, "{query}: {}", r.text());
        r.text()
    };
    let keys = |xml: &str| -> Vec<String> {
        xml.split("<Key>")
            .skip(1)
            .map(|s| s[..s.find("</Key>").unwrap()].to_string())
            .collect()
    };
    let prefixes = |xml: &str| -> Vec<String> {
        xml.split("<CommonPrefixes><Prefix>")
            .skip(1)
            .map(|s| s[..s.find("</Prefix>").unwrap()].to_string())
            .collect()
    };
    let all = list("").await;
    assert_eq!(
        keys(&all),
        [
            "logs-old/1",
            "logs/1",
            "photos/in/a.jpg",
            "photos/in/b c.jpg",
            "photos/out/a.png"
        ]
    );
    assert!(
        all.contains("<Size>1</Size>") && all.contains("<ETag>"),
        "{all}"
    );
    let top = list("&delimiter=/").await;
    assert!(keys(&top).is_empty());
    assert_eq!(prefixes(&top), ["logs-old/", "logs/", "photos/"]);
    let photos = list("&delimiter=/&prefix=photos/").await;
    assert_eq!(prefixes(&photos), ["photos/in/", "photos/out/"]);
    assert_eq!(
        keys(&list("&prefix=photos/in/").await),
        ["photos/in/a.jpg", "photos/in/b c.jpg"]
    );
    assert_eq!(keys(&list("&prefix=logs").await), ["logs-old/1", "logs/1"]);
    assert!(keys(&list("&prefix=nothing/here").await).is_empty());
    // URL encoding, as boto3 asks for it.
    let encoded = list("&prefix=photos/in/&encoding-type=url").await;
    assert_eq!(keys(&encoded), ["photos/in/a.jpg", "photos/in/b%20c.jpg"]);
    assert!(encoded.contains("<EncodingType>url</EncodingType>"));
    // Pages of two, resumed by their tokens.
    let mut seen = Vec::new();
    let mut token = String::new();
    for _ in 0..3 {
        let query = if token.is_empty() {
            "/thumbnailer?list-type=2&max-keys=2".to_string()
        } else {
            format!("/thumbnailer?list-type=2&max-keys=2&continuation-token={token}")
        };
        let xml = f.get(&query).await.text();
        seen.extend(keys(&xml));
        token = match xml.find("<NextContinuationToken>") {
            Some(i) => {
                let rest = &xml[i + 23..];
                let raw = &rest[..rest.find('<').unwrap()];
                urlencoding::encode(raw).into_owned()
            }
            None => break,
        };
    }
    assert_eq!(seen, keys(&all));
    assert!(list("&start-after=photos/in/b%20c.jpg")
        .await
        .contains("<Key>photos/out/a.png</Key>"));
    // Version 1 listings too.
    let v1 = f
        .get("/thumbnailer?delimiter=/&prefix=photos/")
        .await
        .text();
    assert_eq!(prefixes(&v1), ["photos/in/", "photos/out/"]);
    // A prefix that could only name keys outside a bucket is refused.
    let r = f.get("/thumbnailer?list-type=2&prefix=photos/../").await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST);
    let r = f.get("/nobody?list-type=2").await;
    assert_eq!(r.code(), "NoSuchBucket");
    // Deleting several at once; an invalid key is reported, not fatal.
    let delete =
        b"<Delete><Object><Key>logs/1</Key></Object><Object><Key>logs-old/1</Key></Object>\
<Object><Key>x/../y</Key></Object></Delete>";
    let r = f
        .call(Method::POST, "/thumbnailer?delete", &[], delete)
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text());
    assert!(
        r.text().contains("<Code>InvalidArgument</Code>"),
        "{}",
        r.text()
    );
    assert_eq!(prefixes(&list("&delimiter=/").await), ["photos/"]);
}

#[tokio::test]
async fn uploads_are_bounded_checked_and_never_half_written() {
    let f = Fixture::new(1000, 64 * BLOCK, &config(false));
    f.call(Method::PUT, "/fn", &[], b"").await;
    f.put("/fn/b/keep", b"old").await;
    // Over the object limit: refused before its body is read, nothing stored.
    let r = f.put("/fn/b/big", &[7u8; 1001]).await;
    assert_eq!(
        (r.status, r.code().as_str()),
        (StatusCode::BAD_REQUEST, "EntityTooLarge")
    );
    assert!(
        r.text()
            .contains("1001 bytes is larger than the limit of 1000"),
        "{}",
        r.text()
    );
    assert!(!f.dir.join("fn/b/big").exists());
    // A Content-MD5 or a checksum that does not match: nothing stored, the old object kept.
    let md5_of_other = "rL0Y20zC+Fzt72VPzMSk2A=="; // MD5 of "foo"
    let r = f
        .call(
            Method::PUT,
            "/fn/b/keep",
            &[("content-md5", md5_of_other)],
            b"new",
        )
        .await;
    assert_eq!(
        (r.status, r.code().as_str()),
        (StatusCode::BAD_REQUEST, "BadDigest")
    );
    let r = f
        .call(
            Method::PUT,
            "/fn/b/keep",
            &[("x-amz-checksum-crc32", "AAAAAA==")],
            b"new",
        )
        .await;
    assert_eq!(r.code(), "BadDigest", "{}", r.text());
    assert_eq!(std::fs::read(f.dir.join("fn/b/keep")).unwrap(), b"old");
    // Matching ones are accepted, and the checksum is echoed.
    let r = f
        .call(
            Method::PUT,
            "/fn/b/foo",
            &[("content-md5", md5_of_other)],
            b"foo",
        )
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text());
    let crc32_of_foo = "jHNlIQ==";
    let r = f
        .call(
            Method::PUT,
            "/fn/b/foo",
            &[("x-amz-checksum-crc32", crc32_of_foo)],
            b"foo",
        )
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text());
    assert_eq!(r.header("x-amz-checksum-crc32"), crc32_of_foo);
    // An empty object.
    assert_eq!(f.put("/fn/b/empty", b"").await.status, StatusCode::OK);
    assert_eq!(f.get("/fn/b/empty").await.body, b"");
    // No Content-Length.
    let r = f
        .call(Method::PUT, "/fn/b/nolen", &[("content-length", "")], b"")
        .await;
    assert_ne!(r.status, StatusCode::OK);
    assert_eq!(f.leftovers(), 0);
}

#[tokio::test]
async fn uploads_share_the_functions_quota() {
    let f = Fixture::new(1 << 20, 16 * BLOCK, &config(false));
    f.call(Method::PUT, "/fn", &[], b"").await;
    // The function itself stored 9 blocks in its bucket `b` (10 with the directory), as it
    // would through the storage service.
    std::fs::create_dir_all(f.dir.join("fn/b")).unwrap();
    std::fs::write(f.dir.join("fn/b/own"), [0u8; 9 * 4096]).unwrap();
    f.store
        .quotas
        .reserve("fn", 10 * BLOCK, &NoUsage)
        .unwrap()
        .commit(10 * BLOCK, 0);
    // 6 blocks and (at most) the bucket's directory do not fit in the 6 left.
    let r = f.put("/fn/b/x", &[1u8; 6 * 4096]).await;
    assert_eq!(
        (r.status, r.code().as_str()),
        (StatusCode::FORBIDDEN, "QuotaExceeded")
    );
    assert!(
        r.text().contains("over its quota of 65536 bytes"),
        "{}",
        r.text()
    );
    assert!(!f.dir.join("fn/b/x").exists());
    // One that fits; deleting it gives its room back.
    assert_eq!(f.put("/fn/b/x", &[1u8; 4096]).await.status, StatusCode::OK);
    assert_eq!(f.store.quotas.used("fn"), 11 * BLOCK);
    f.call(Method::DELETE, "/fn/b/x", &[], b"").await;
    assert_eq!(f.store.quotas.used("fn"), 10 * BLOCK);
    // Another function is unaffected.
    f.call(Method::PUT, "/other", &[], b"").await;
    assert_eq!(
        f.put("/other/b/x", &[1u8; 5 * 4096]).await.status,
        StatusCode::OK
    );
}

/// The upload id in a CreateMultipartUpload reply.
fn upload_id(r: &Reply) -> String {
    let text = r.text();
    let start = text.find("<UploadId>").unwrap() + 10;
    text[start..text.find("</UploadId>").unwrap()].to_string()
}

fn complete_body(parts: &[(u32, &str)]) -> Vec<u8> {
    let mut xml = String::from("<CompleteMultipartUpload>");
    for (n, etag) in parts {
        xml.push_str(&format!(
            "<Part><PartNumber>{n}</PartNumber><ETag>{etag}</ETag></Part>"
        ));
    }
    xml.push_str("</CompleteMultipartUpload>");
    xml.into_bytes()
}

#[tokio::test]
async fn multipart_uploads_appear_whole_on_completion() {
    let f = Fixture::new(1 << 20, 1 << 30, &config(false));
    f.call(Method::PUT, "/thumbnailer", &[], b"").await;
    let key = "/thumbnailer/photos/big.bin";
    let r = f
        .call(Method::POST, &format!("{key}?uploads"), &[], b"")
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text());
    let id = upload_id(&r);
    let part = |n: u32, data: Vec<u8>| {
        let f = &f;
        let id = id.clone();
        async move {
            let r = f
                .call(
                    Method::PUT,
                    &format!("{key}?partNumber={n}&uploadId={id}"),
                    &[],
                    &data,
                )
                .await;
            assert_eq!(r.status, StatusCode::OK, "{}", r.text());
            r.header("etag").to_string()
        }
    };
    let one = vec![1u8; 300_000];
    let two = vec![2u8; 200_000];
    // Out of order, and part 1 sent twice: the last one counts.
    let e2 = part(2, two.clone()).await;
    part(1, vec![9u8; 10]).await;
    let e1 = part(1, one.clone()).await;
    // Parts are nowhere to be seen before completion.
    assert_eq!(f.get(key).await.code(), "NoSuchKey");
    let listed = f.get("/thumbnailer?list-type=2").await.text();
    assert!(!listed.contains("<Key>"), "{listed}");
    // Parts over the object limit together are refused.
    let r = f
        .call(
            Method::PUT,
            &format!("{key}?partNumber=3&uploadId={id}"),
            &[],
            &[3u8; 600_000],
        )
        .await;
    assert_eq!(r.code(), "EntityTooLarge", "{}", r.text());
    // Completion checks order and ETags.
    let uri = format!("{key}?uploadId={id}");
    let r = f
        .call(
            Method::POST,
            &uri,
            &[],
            &complete_body(&[(2, &e2), (1, &e1)]),
        )
        .await;
    assert_eq!(r.code(), "InvalidPartOrder", "{}", r.text());
    let r = f
        .call(
            Method::POST,
            &uri,
            &[],
            &complete_body(&[(1, "\"x\""), (2, &e2)]),
        )
        .await;
    assert_eq!(r.code(), "InvalidPart", "{}", r.text());
    let r = f
        .call(
            Method::POST,
            &uri,
            &[],
            &complete_body(&[(1, &e1), (2, &e2)]),
        )
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text());
    let mut whole = one.clone();
    whole.extend_from_slice(&two);
    assert_eq!(f.get(key).await.body, whole);
    assert_eq!(f.leftovers(), 0, "parts removed");
    // Done: the upload is gone.
    let r = f
        .call(Method::POST, &uri, &[], &complete_body(&[(1, &e1)]))
        .await;
    assert_eq!(
        (r.status, r.code().as_str()),
        (StatusCode::NOT_FOUND, "NoSuchUpload")
    );
    // Its room is counted once, the object and its bucket's directory, both on disk and by
    // the quotas.
    let usage = f
        .store
        .backend
        .usage(&Space::parse("thumbnailer").unwrap())
        .unwrap();
    assert_eq!(usage, crate::storage::quota::charge(500_000) + BLOCK);
    assert_eq!(f.store.quotas.used("thumbnailer"), usage);

    // Aborted: parts removed, no object.
    let r = f
        .call(Method::POST, "/thumbnailer/photos/gone?uploads", &[], b"")
        .await;
    let id = upload_id(&r);
    let r = f
        .call(
            Method::PUT,
            &format!("/thumbnailer/photos/gone?partNumber=1&uploadId={id}"),
            &[],
            b"x",
        )
        .await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(f.leftovers(), 1);
    let r = f
        .call(
            Method::DELETE,
            &format!("/thumbnailer/photos/gone?uploadId={id}"),
            &[],
            b"",
        )
        .await;
    assert_eq!(r.status, StatusCode::NO_CONTENT, "{}", r.text());
    assert_eq!(f.leftovers(), 0);
    assert_eq!(f.get("/thumbnailer/photos/gone").await.code(), "NoSuchKey");
    assert_eq!(f.store.quotas.used("thumbnailer"), usage);
    // An upload id naming a path, or another key's upload: no such upload.
    let r = f
        .call(
            Method::PUT,
            "/thumbnailer/photos/x?partNumber=1&uploadId=../../etc",
            &[],
            b"x",
        )
        .await;
    assert_eq!(r.code(), "NoSuchUpload");
}

#[tokio::test]
async fn idle_uploads_expire_and_leftovers_are_removed() {
    let config = S3Config {
        upload_expiry_secs: 1,
        ..config(false)
    };
    let f = Fixture::new(1 << 20, 1 << 30, &config);
    f.call(Method::PUT, "/thumbnailer", &[], b"").await;
    let r = f
        .call(Method::POST, "/thumbnailer/b/k?uploads", &[], b"")
        .await;
    let id = upload_id(&r);
    f.call(
        Method::PUT,
        &format!("/thumbnailer/b/k?partNumber=1&uploadId={id}"),
        &[],
        b"x",
    )
    .await;
    // Parts of an upload from before a restart, which no table names.
    let orphan = f
        .dir
        .join("thumbnailer/.uploads/00000000000000000000000000000000");
    std::fs::create_dir_all(&orphan).unwrap();
    std::fs::write(orphan.join("00001"), b"old").unwrap();
    f.api.expire_uploads().await;
    assert_eq!(f.leftovers(), 2, "young uploads are kept");
    tokio::time::sleep(Duration::from_millis(1100)).await;
    f.api.expire_uploads().await;
    assert_eq!(f.leftovers(), 0);
    let r = f
        .call(
            Method::PUT,
            &format!("/thumbnailer/b/k?partNumber=2&uploadId={id}"),
            &[],
            b"x",
        )
        .await;
    assert_eq!(r.code(), "NoSuchUpload");
}

/// Now as an `x-amz-date`.
fn amz_date() -> String {
    let now = s3s::dto::Timestamp::from(std::time::SystemTime::now());
    let mut iso = Vec::new();
    now.format(s3s::dto::TimestampFormat::DateTime, &mut iso)
        .unwrap();
    let iso = String::from_utf8(iso).unwrap();
    // 2026-12-07T23:33:46.000Z -> 20261207T233346Z
    let digits: String = iso[..19]
        .chars()
        .filter(|c| c.is_ascii_digit() || *c == 'T')
        .collect();
    format!("{digits}Z")
}

#[tokio::test]
async fn requests_without_a_valid_signature_are_refused() {
    let f = Fixture::new(1 << 20, 1 << 30, &config(true));
    // Unsigned.
    for (method, uri) in [
        (Method::GET, "/"),
        (Method::PUT, "/fn"),
        (Method::GET, "/fn/b/k"),
        (Method::PUT, "/fn/b/k"),
    ] {
        let r = f.call(method.clone(), uri, &[], b"").await;
        assert_eq!(
            (r.status, r.code().as_str()),
            (StatusCode::FORBIDDEN, "AccessDenied"),
            "{method} {uri}"
        );
    }
    assert!(!f.dir.join("fn").exists());
    let date = amz_date();
    let authorization = |key: &str| {
        format!(
            "AWS4-HMAC-SHA256 Credential={key}/{}/us-east-1/s3/aws4_request, \
             SignedHeaders=host;x-amz-content-sha256;x-amz-date, Signature={}",
            &date[..8],
            "0".repeat(64)
        )
    };
    let signed = |key: &str| {
        let auth = authorization(key);
        let date = date.clone();
        let f = &f;
        async move {
            f.call(
                Method::PUT,
                "/fn",
                &[
                    ("authorization", auth.as_str()),
                    ("x-amz-date", date.as_str()),
                    ("x-amz-content-sha256", "UNSIGNED-PAYLOAD"),
                ],
                b"",
            )
            .await
        }
    };
    let r = signed("someone-else").await;
    assert_eq!(
        (r.status, r.code().as_str()),
        (StatusCode::FORBIDDEN, "InvalidAccessKeyId")
    );
    let r = signed(AK).await;
    assert_eq!(
        (r.status, r.code().as_str()),
        (StatusCode::FORBIDDEN, "SignatureDoesNotMatch")
    );
    assert!(!f.dir.join("fn").exists());
    // A browser form upload is not served, and is not read into memory first.
    let r = f
        .call(
            Method::POST,
            "/fn",
            &[("content-type", "multipart/form-data; boundary=xyz")],
            b"--xyz\r\nContent-Disposition: form-data; name=\"key\"\r\n\r\nb/k\r\n--xyz\r\n\
Content-Disposition: form-data; name=\"file\"; filename=\"a\"\r\n\r\nDATA\r\n--xyz--\r\n",
        )
        .await;
    assert!(r.status.is_client_error(), "{}: {}", r.status, r.text());
    assert!(!f.dir.join("fn").exists());
}

#[test]
fn config_needs_keys_to_listen() {
    let mut c = S3Config::default();
    assert!(c.check().is_ok(), "off: nothing to check");
    c.listen = Some("127.0.0.1:5001".parse().unwrap());
    assert!(c.check().unwrap_err().contains("access_key"));
    c.access_key = Some("ak".into());
    c.secret_key = Some("secret-key".into());
    assert!(c.check().unwrap_err().contains("access_key must"));
    c.access_key = Some("kindling".into());
    assert!(c.check().is_ok());
    c.secret_key = Some("short".into());
    assert!(c.check().is_err());
    c.secret_key = Some("with space inside".into());
    assert!(c.check().is_err());
    // The secret stays out of logs.
    c.secret_key = Some("very-secret-value".into());
    assert!(!format!("{c:?}").contains("very-secret-value"));
    let parsed: S3Config = toml::from_str(
        "listen = \"127.0.0.1:5001\"\naccess_key = \"kindling\"\nsecret_key = \"kindling-secret\"\n",
    )
    .unwrap();
    assert!(parsed.check().is_ok());
    assert!(toml::from_str::<S3Config>("listen = \"no-port\"").is_err());
    assert!(toml::from_str::<S3Config>("lisen = \"127.0.0.1:1\"").is_err());
    let store = Fixture::open().store;
    let mut missing = config(false);
    assert!(matches!(
        S3Server::start(&missing, store.clone()),
        Err(StartError::Config(_))
    ));
    missing.listen = None;
    assert!(S3Server::start(&missing, store).unwrap().is_none());
}

#[test]
fn the_server_listens_caps_connections_and_stops() {
    use std::io::{Read as _, Write as _};
    let config = S3Config {
        max_connections: 2,
        max_connections_per_client: 2,
        ..config(true)
    };
    let fixture = Fixture::open();
    let server = S3Server::start(&config, fixture.store.clone())
        .unwrap()
        .unwrap();
    let addr = server.local_addr();
    assert_ne!(addr.port(), 0);
    let request = |s: &mut std::net::TcpStream| {
        s.write_all(b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            .unwrap();
        let mut reply = String::new();
        s.read_to_string(&mut reply).unwrap();
        reply
    };
    let reply = request(&mut std::net::TcpStream::connect(addr).unwrap());
    assert!(reply.starts_with("HTTP/1.1 403"), "{reply}");
    assert!(reply.contains("<Code>AccessDenied</Code>"), "{reply}");
    // Two idle connections take both places: a third is answered 503 at once.
    let held: Vec<_> = (0..2)
        .map(|_| std::net::TcpStream::connect(addr).unwrap())
        .collect();
    // Once the server has taken both (it may be slow to, on a busy machine).
    let refused = (0..100).find_map(|_| {
        let reply = request(&mut std::net::TcpStream::connect(addr).unwrap());
        if reply.starts_with("HTTP/1.1 503") {
            return Some(reply);
        }
        std::thread::sleep(Duration::from_millis(50));
        None
    });
    let reply = refused.unwrap();
    assert!(reply.ends_with("</Error>\n"), "{reply}");
    drop(held);
    std::thread::sleep(Duration::from_millis(200));
    let reply = request(&mut std::net::TcpStream::connect(addr).unwrap());
    assert!(reply.starts_with("HTTP/1.1 403"), "{reply}");
    // A refusal before the body was read (here: unsigned) closes the connection, and says so,
    // whether the client waits for `100 Continue` or sends its body at once; a request without
    // a body keeps it open.
    for expect in ["Expect: 100-continue\r\n", ""] {
        let mut s = std::net::TcpStream::connect(addr).unwrap();
        let head = format!("PUT /fn/b/k HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n{expect}\r\n");
        s.write_all(head.as_bytes()).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        let mut reply = String::new();
        s.read_to_string(&mut reply).unwrap();
        assert!(reply.starts_with("HTTP/1.1 403"), "{reply}");
        assert!(
            reply.to_ascii_lowercase().contains("connection: close"),
            "{reply}"
        );
    }
    let mut s = std::net::TcpStream::connect(addr).unwrap();
    s.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
    let mut buf = [0u8; 1024];
    let n = s.read(&mut buf).unwrap();
    let reply = String::from_utf8_lossy(&buf[..n]).to_ascii_lowercase();
    assert!(
        reply.starts_with("http/1.1 403") && !reply.contains("connection: close"),
        "{reply}"
    );
    drop(s);
    // A second server on the same address is refused.
    let again = S3Config {
        listen: Some(addr),
        ..config.clone()
    };
    assert!(matches!(
        S3Server::start(&again, fixture.store.clone()),
        Err(StartError::Listen { .. })
    ));
    server.stop();
    assert!(std::net::TcpStream::connect(addr).is_err());
}

#[test]
fn slow_clients_are_cut_off_as_by_the_api() {
    use std::io::{Read as _, Write as _};
    let config = S3Config {
        idle_timeout_secs: 1,
        ..config(true)
    };
    let fixture = Fixture::open();
    let server = S3Server::start(&config, fixture.store.clone())
        .unwrap()
        .unwrap();
    let t = std::time::Instant::now();
    // Half a request head, then nothing: closed at the deadline.
    let mut s = std::net::TcpStream::connect(server.local_addr()).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    s.write_all(b"GET / HTTP/1.1\r\nHost: x\r\nX-Slow: ")
        .unwrap();
    let mut rest = Vec::new();
    let _ = s.read_to_end(&mut rest);
    assert!(t.elapsed() < Duration::from_secs(5), "{:?}", t.elapsed());
    server.stop();
}
