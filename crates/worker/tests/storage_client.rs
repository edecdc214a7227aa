//! The object storage client that function code imports (`runtime/storage.py`), run by the
//! host's python3 against a socket that answers like the worker.

#![allow(clippy::unwrap_used)]

use std::io::{Read, Write};
use std::os::unix::net::UnixListener;
use std::process::Command;

/// Regression: a refusal the worker sends before reading an upload's body (here: a read-only
/// grant) reached function code as "closed the connection during the request" whenever the
/// body's send failed first, because PermissionDeniedError is also an OSError. It is the
/// worker's error now.
#[test]
fn an_upload_refused_before_its_body_is_read_raises_the_workers_error() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("storage.py"),
        kindling_worker::runtime::STORAGE_SOURCE,
    )
    .unwrap();
    let socket = dir.path().join("storage.sock");
    let listener = UnixListener::bind(&socket).unwrap();
    let server = std::thread::spawn(move || {
        let (mut s, _) = listener.accept().unwrap();
        let mut head = [0u8; 4];
        s.read_exact(&mut head).unwrap();
        let mut header = vec![0u8; u32::from_be_bytes(head) as usize];
        s.read_exact(&mut header).unwrap();
        let header: serde_json::Value = serde_json::from_slice(&header).unwrap();
        assert_eq!(header["op"], "put");
        let reply = br#"{"ok": false, "kind": "denied", "error": "bucket \"b\" is read-only"}"#;
        s.write_all(&(reply.len() as u32).to_be_bytes()).unwrap();
        s.write_all(reply).unwrap();
        // Closed without reading the body: the client's send of it fails.
    });
    // A body far larger than the socket's buffers, so that its send fails every time.
    let script = "import storage\n\
                  try:\n\
                  \x20   storage.storage.get_instance().upload_stream('b', 'k', bytes(16 << 20))\n\
                  except storage.StorageError as e:\n\
                  \x20   print(type(e).__name__, e)\n";
    let out = Command::new("python3")
        .arg("-c")
        .arg(script)
        .env("PYTHONPATH", dir.path())
        .env("KINDLING_STORAGE_SOCKET", &socket)
        .output()
        .expect("python3 runs (the storage client is Python)");
    server.join().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        stdout.trim(),
        r#"PermissionDeniedError bucket "b" is read-only"#
    );
}
