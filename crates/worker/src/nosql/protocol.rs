//! The NoSQL socket's protocol: one call per connection, a request frame and a reply frame,
//! each a 4-byte big-endian length and a JSON payload.
//!
//! Requests (`op` says which call; keys are SeBS's `(name, value)` pairs, as JSON arrays):
//!
//! ```text
//! {"op": "insert", "table": t, "primary": [name, value], "secondary": [name, value], "data": {...}}
//! {"op": "get",    "table": t, "primary": [name, value], "secondary": [name, value]}
//! {"op": "update", "table": t, "primary": [name, value], "secondary": [name, value], "data": {...}}
//! {"op": "query",  "table": t, "primary": [name, value], "secondary_key": name}
//! {"op": "delete", "table": t, "primary": [name, value], "secondary": [name, value]}
//! ```
//!
//! Replies: `{"reply": "done"}`, `{"reply": "item", "item": {...}}`,
//! `{"reply": "items", "items": [...]}` or `{"reply": "error", "kind": k, "error": message}`
//! (`kind` as in [`ErrorKind`]).

use super::store::Item;
use super::table::Key;
use super::{clip, ErrorKind, NosqlError};
use crate::frame::{self, FrameError};
use serde::{Deserialize, Serialize};
use serde_json::Value;

/// What a request frame holds beyond its item: table name, keys, field names (a bound, not an
/// exact count).
pub const REQUEST_OVERHEAD_BYTES: usize = 8 * 1024;

/// A key as the client sends it: `[name, value]`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct KeyArg(pub String, pub Value);

impl KeyArg {
    pub fn parse(&self) -> Result<Key, NosqlError> {
        Key::parse(&self.0, &self.1)
    }
}

/// One call.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case", deny_unknown_fields)]
pub enum Request {
    Insert {
        table: String,
        primary: KeyArg,
        secondary: KeyArg,
        data: Item,
    },
    Get {
        table: String,
        primary: KeyArg,
        secondary: KeyArg,
    },
    Update {
        table: String,
        primary: KeyArg,
        secondary: KeyArg,
        data: Item,
    },
    Query {
        table: String,
        primary: KeyArg,
        secondary_key: String,
    },
    Delete {
        table: String,
        primary: KeyArg,
        secondary: KeyArg,
    },
}

/// What a call answers.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "reply", rename_all = "snake_case")]
pub enum Reply {
    Done,
    Item { item: Item },
    Items { items: Vec<Item> },
    Error { kind: ErrorKind, error: String },
}

impl From<&NosqlError> for Reply {
    fn from(e: &NosqlError) -> Self {
        Self::Error {
            kind: e.kind(),
            error: e.client_message(),
        }
    }
}

/// Parses a request frame's payload.
pub fn parse_request(raw: &[u8]) -> Result<Request, NosqlError> {
    serde_json::from_slice(raw).map_err(|e| NosqlError::Protocol(clip(&e.to_string())))
}

/// A reply as a frame ([`crate::frame`]).
pub fn reply_frame(reply: &Reply) -> Vec<u8> {
    // A reply is a tree of JSON values and strings: it always serializes, and the store bounds
    // it far below a frame's 4 GiB.
    let payload = serde_json::to_vec(reply).unwrap_or_else(|_| b"{}".to_vec());
    frame::encode(&payload).unwrap_or_default()
}

/// Reads one request frame of at most `max` payload bytes, without a blocking thread: its
/// length is checked before anything is allocated for it.
pub async fn read_request<R>(reader: &mut R, max: usize) -> Result<Request, NosqlError>
where
    R: tokio::io::AsyncRead + Unpin,
{
    let raw = frame::read_async(reader, max).await.map_err(|e| match e {
        FrameError::TooLarge { len, max } => NosqlError::Protocol(format!(
            "request of {len} bytes is larger than the limit of {max} bytes"
        )),
        FrameError::Io(e) => NosqlError::Protocol(format!("cannot read the request: {e}")),
    })?;
    parse_request(&raw)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn requests_are_typed() {
        let r = parse_request(
            json!({"op": "insert", "table": "t", "primary": ["cart_id", "c1"],
                   "secondary": ["product_id", 2], "data": {"price": 1.5}})
            .to_string()
            .as_bytes(),
        )
        .unwrap();
        let Request::Insert {
            table,
            primary,
            secondary,
            data,
        } = r
        else {
            panic!("{r:?}")
        };
        assert_eq!(table, "t");
        assert_eq!(primary, KeyArg("cart_id".into(), json!("c1")));
        assert_eq!(secondary.parse().unwrap().to_string(), "product_id=2");
        assert_eq!(data["price"], 1.5);
        let q = parse_request(
            br#"{"op": "query", "table": "t", "primary": ["a", 1], "secondary_key": "b"}"#,
        )
        .unwrap();
        assert!(matches!(q, Request::Query { secondary_key, .. } if secondary_key == "b"));
        for (bad, why) in [
            (r#"{"op": "scan", "table": "t"}"#, "unknown variant"),
            (
                r#"{"op": "get", "table": "t", "primary": ["a"]}"#,
                "invalid length",
            ),
            (
                r#"{"op": "insert", "table": "t", "primary": ["a", 1], "secondary": ["b", 2], "data": [1]}"#,
                "invalid type",
            ),
            (
                r#"{"op": "get", "table": "t", "primary": ["a", 1], "secondary": ["b", 2], "x": 1}"#,
                "unknown field",
            ),
            ("not json", "expected"),
        ] {
            let e = parse_request(bad.as_bytes()).unwrap_err();
            assert_eq!(e.kind(), ErrorKind::Protocol);
            assert!(e.to_string().contains(why), "{bad}: {e}");
        }
    }

    #[test]
    fn replies_serialize_as_the_client_reads_them() {
        let v = |r: &Reply| serde_json::to_value(r).unwrap();
        assert_eq!(v(&Reply::Done), json!({"reply": "done"}));
        let e = NosqlError::Busy {
            function: "f".into(),
            limit: 2,
        };
        assert_eq!(
            v(&Reply::from(&e)),
            json!({"reply": "error", "kind": "busy",
                   "error": "function \"f\" has 2 NoSQL connections open, its limit; try again later"})
        );
        let frame = reply_frame(&Reply::Items { items: vec![] });
        assert_eq!(&frame[..4], &(frame.len() as u32 - 4).to_be_bytes());
        let back: Reply = serde_json::from_slice(&frame[4..]).unwrap();
        assert_eq!(back, Reply::Items { items: vec![] });
    }

    #[tokio::test]
    async fn a_request_over_the_limit_is_refused_before_it_is_read() {
        let payload =
            br#"{"op": "query", "table": "t", "primary": ["a", 1], "secondary_key": "b"}"#;
        let request = frame::encode(payload).unwrap();
        let n = payload.len();
        assert!(read_request(&mut &request[..], n).await.is_ok());
        let e = read_request(&mut &request[..], n - 1).await.unwrap_err();
        assert_eq!(
            e.to_string(),
            format!(
                "malformed NoSQL request: request of {n} bytes is larger than the limit of {} \
                 bytes",
                n - 1
            )
        );
        // A huge declared length allocates nothing.
        let e = read_request(&mut &[0xff, 0xff, 0xff, 0xff][..], 1024)
            .await
            .unwrap_err();
        assert_eq!(e.kind(), ErrorKind::Protocol);
        let e = read_request(&mut &request[..20], 1024).await.unwrap_err();
        assert!(e.to_string().contains("cannot read the request"), "{e}");
    }
}
