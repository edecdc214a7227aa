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

/// A frame: the payload's length, big-endian, then the payload.
pub fn encode_frame(payload: &[u8]) -> Vec<u8> {
    let mut frame = Vec::with_capacity(payload.len() + 4);
    frame.extend_from_slice(&(payload.len() as u32).to_be_bytes());
    frame.extend_from_slice(payload);
    frame
}

/// A reply as a frame.
pub fn reply_frame(reply: &Reply) -> Vec<u8> {
    // A reply is a tree of JSON values and strings: it always serializes.
    let payload = serde_json::to_vec(reply).unwrap_or_else(|_| b"{}".to_vec());
    encode_frame(&payload)
}

/// Reads one frame of at most `max` payload bytes: its length is checked before anything is
/// allocated for it.
pub async fn read_frame<R>(reader: &mut R, max: usize) -> Result<Vec<u8>, NosqlError>
where
    R: tokio::io::AsyncRead + Unpin,
{
    use tokio::io::AsyncReadExt;
    let unreadable =
        |e: std::io::Error| NosqlError::Protocol(format!("cannot read the request: {e}"));
    let mut head = [0u8; 4];
    reader.read_exact(&mut head).await.map_err(unreadable)?;
    let n = u32::from_be_bytes(head) as usize;
    if n > max {
        return Err(NosqlError::Protocol(format!(
            "request of {n} bytes is larger than the limit of {max} bytes"
        )));
    }
    let mut payload = vec![0u8; n];
    reader.read_exact(&mut payload).await.map_err(unreadable)?;
    Ok(payload)
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
    async fn a_frame_over_the_limit_is_refused_before_it_is_read() {
        let frame = encode_frame(&[b'x'; 100]);
        assert_eq!(read_frame(&mut &frame[..], 100).await.unwrap().len(), 100);
        let e = read_frame(&mut &frame[..], 99).await.unwrap_err();
        assert_eq!(
            e.to_string(),
            "malformed NoSQL request: request of 100 bytes is larger than the limit of 99 bytes"
        );
        // A huge declared length allocates nothing.
        let e = read_frame(&mut &[0xff, 0xff, 0xff, 0xff][..], 1024)
            .await
            .unwrap_err();
        assert_eq!(e.kind(), ErrorKind::Protocol);
        let e = read_frame(&mut &frame[..50], 1024).await.unwrap_err();
        assert!(e.to_string().contains("cannot read the request"), "{e}");
    }
}
