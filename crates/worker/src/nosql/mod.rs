//! NoSQL for functions: SeBS's `nosql` interface (`insert`, `get`, `update`, `query`, `delete`
//! on tables whose items are keyed by a primary and a secondary key), kept in an embedded SQLite
//! database and served to sandboxes over a Unix socket, so that no sandbox needs a network.
//!
//! Each function has tables of its own: function `a`'s table `t` is not function `b`'s table
//! `t`. Tables are declared with the names of their two key attributes, in the function's
//! config or by an operator ([`table::parse_declarations`], [`Store::declare`]). Which function
//! calls is never taken from the request: as for object storage, the worker asks the kernel which
//! process connected and the pool which function that process's sandbox serves
//! ([`crate::tenants`]); a host process, a zygote, a job or a seed not yet assigned is refused.
//!
//! The parts: [`table`] (names, key values, declarations), [`store`] (the database: items,
//! tables, bounds, atomic calls), [`protocol`] (the typed request and reply frames), [`service`]
//! (the socket, callers, connection limits). The client function code imports is
//! `runtime/nosql.py`. Why SQLite: `docs/adr/0007-nosql-store.md`.

pub mod protocol;
pub mod service;
pub mod store;
pub mod table;

pub use service::NosqlService;
pub use store::Store;

use crate::tenants::Refused;
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

/// Directory of the worker root holding the socket (root's, mode 0700).
pub use crate::layout::NOSQL_SOCKET_DIR as SOCKET_DIR;
/// The socket's file name.
pub use crate::layout::NOSQL_SOCKET_NAME as SOCKET_NAME;
/// Directory of the worker root holding the database, unless `[nosql] dir` says otherwise.
pub const DATA_DIR: &str = "nosql";

/// Most of a name or value an error message repeats.
const ECHO_BYTES: usize = 128;

/// At most [`ECHO_BYTES`] of `s` (on a character boundary), for error messages.
pub(crate) fn clip(s: &str) -> String {
    if s.len() <= ECHO_BYTES {
        return s.to_string();
    }
    let mut end = ECHO_BYTES;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}...", &s[..end])
}

/// NoSQL for functions (`[nosql]` in the worker's config).
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct NosqlConfig {
    /// Serve NoSQL to functions (default true).
    pub enabled: bool,
    /// Directory of the database (default `<root>/nosql`).
    pub dir: Option<PathBuf>,
    /// Largest item, as JSON with its key attributes (default 400 KiB, DynamoDB's limit).
    pub max_item_bytes: u64,
    /// Most items a function's tables hold together (default 1,000,000).
    pub max_function_items: u64,
    /// Most bytes a function's items take together, counted as JSON (default 1 GiB).
    pub max_function_bytes: u64,
    /// Most bytes the items of every function take together (default 16 GiB).
    pub max_total_bytes: u64,
    /// Most tables a function declares (default 64).
    pub max_tables_per_function: usize,
    /// Largest reply to a call, as JSON: a `query` matching more is refused (default 16 MiB).
    pub max_reply_bytes: u64,
    /// Connections served at once, all functions together; more wait to be accepted
    /// (default 256).
    pub max_connections: usize,
    /// Connections one function holds open at once; more are answered busy (default 16).
    pub max_connections_per_function: usize,
    /// Seconds a connection may take to send its request (default 10).
    pub request_timeout_secs: f64,
}

impl Default for NosqlConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            dir: None,
            max_item_bytes: 400 * 1024,
            max_function_items: 1_000_000,
            max_function_bytes: 1 << 30,
            max_total_bytes: 16 << 30,
            max_tables_per_function: 64,
            max_reply_bytes: 16 << 20,
            max_connections: 256,
            max_connections_per_function: 16,
            request_timeout_secs: 10.0,
        }
    }
}

impl NosqlConfig {
    /// Checks the settings as the config is loaded.
    pub fn check(&self) -> Result<(), String> {
        if !(self.request_timeout_secs > 0.0 && self.request_timeout_secs <= 3600.0) {
            return Err(format!(
                "nosql.request_timeout_secs must be in (0, 3600], not {}",
                self.request_timeout_secs
            ));
        }
        let positive = [
            ("max_item_bytes", self.max_item_bytes),
            ("max_function_items", self.max_function_items),
            ("max_function_bytes", self.max_function_bytes),
            ("max_total_bytes", self.max_total_bytes),
            ("max_reply_bytes", self.max_reply_bytes),
            (
                "max_tables_per_function",
                self.max_tables_per_function as u64,
            ),
            ("max_connections", self.max_connections as u64),
            (
                "max_connections_per_function",
                self.max_connections_per_function as u64,
            ),
        ];
        if let Some((name, _)) = positive.iter().find(|(_, v)| *v == 0) {
            return Err(format!("nosql.{name} must be at least 1"));
        }
        // A request carries one item plus its keys and table name.
        if self.max_item_bytes > u64::from(u32::MAX) - protocol::REQUEST_OVERHEAD_BYTES as u64 {
            return Err("nosql.max_item_bytes must be below 4 GiB".into());
        }
        Ok(())
    }

    /// The database's directory for a worker rooted at `root`.
    pub fn data_dir(&self, root: &Path) -> PathBuf {
        self.dir.clone().unwrap_or_else(|| root.join(DATA_DIR))
    }
}

/// The class of a failed call: what the Python client maps to an exception type.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorKind {
    /// A bad table name, key, value or argument.
    Invalid,
    /// The table is not declared for the function.
    NoSuchTable,
    /// No item has the given keys.
    NotFound,
    /// An item, request or reply over its size limit.
    TooLarge,
    /// The function's (or the store's) items or bytes would pass their limit.
    Quota,
    /// A declaration that contradicts the table's existing one.
    Conflict,
    /// The caller is no function's instance.
    Denied,
    /// The function has its limit of connections open.
    Busy,
    /// A malformed frame or request.
    Protocol,
    /// The database failed.
    Internal,
}

/// Why a NoSQL call failed. The message (without its source) is what function code sees.
#[derive(Debug, thiserror::Error)]
pub enum NosqlError {
    #[error("invalid function name {0:?}")]
    InvalidFunction(String),
    #[error("invalid table name {name:?}: {reason}")]
    InvalidTable { name: String, reason: &'static str },
    #[error("invalid key attribute name {name:?}: {reason}")]
    InvalidKeyName { name: String, reason: &'static str },
    #[error("invalid declaration of table {table:?}: {reason}")]
    InvalidDeclaration { table: String, reason: String },
    #[error("invalid value of key {key:?}: {reason}")]
    InvalidKeyValue { key: String, reason: String },
    #[error("{0}")]
    InvalidArgument(String),
    #[error("table {table:?} does not exist; {}", tables_of(function, tables))]
    NoSuchTable {
        function: String,
        table: String,
        tables: Vec<String>,
    },
    #[error("table {table:?} has {which} key {declared:?}, not {given:?}")]
    KeyMismatch {
        table: String,
        which: &'static str,
        declared: String,
        given: String,
    },
    #[error("no item with {primary} and {secondary} in table {table:?}")]
    NoSuchItem {
        table: String,
        primary: String,
        secondary: String,
    },
    #[error("item of {size} bytes is larger than the limit of {limit} bytes per item")]
    ItemTooLarge { size: u64, limit: u64 },
    #[error("the reply would be larger than the limit of {limit} bytes")]
    ReplyTooLarge { limit: u64 },
    #[error("function {function:?} has {limit} items, its limit")]
    ItemQuota { function: String, limit: u64 },
    #[error(
        "this call would take the items of function {function:?} to {would} bytes, over its \
         quota of {limit} bytes"
    )]
    ByteQuota {
        function: String,
        would: u64,
        limit: u64,
    },
    #[error(
        "this call would take the NoSQL store to {would} bytes, over its quota of {limit} bytes"
    )]
    StoreFull { would: u64, limit: u64 },
    #[error("function {function:?} has {limit} tables, its limit")]
    TableQuota { function: String, limit: usize },
    #[error(
        "table {table:?} holds {items} items keyed by ({primary_key:?}, {secondary_key:?}); \
         drop it before declaring other keys"
    )]
    TableConflict {
        table: String,
        primary_key: String,
        secondary_key: String,
        items: u64,
    },
    #[error("NoSQL refused the caller: {0}")]
    Refused(#[from] Refused),
    #[error(
        "function {function:?} has {limit} NoSQL connections open, its limit; try again later"
    )]
    Busy { function: String, limit: usize },
    #[error("malformed NoSQL request: {0}")]
    Protocol(String),
    #[error("NoSQL database at {path}")]
    Database {
        path: PathBuf,
        #[source]
        source: rusqlite::Error,
    },
    #[error("NoSQL database holds a corrupt item in table {table:?}")]
    Corrupt { table: String },
    #[error("NoSQL is disabled on this worker ([nosql] enabled = false)")]
    Disabled,
    #[error("cannot prepare the NoSQL directory {path}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// "function f has tables a, b" for an unknown table's message.
fn tables_of(function: &str, tables: &[String]) -> String {
    if tables.is_empty() {
        return format!("function {function:?} has no tables");
    }
    let names: Vec<String> = tables.iter().map(|t| format!("{t:?}")).collect();
    format!("function {function:?} has {}", names.join(", "))
}

impl NosqlError {
    pub fn kind(&self) -> ErrorKind {
        match self {
            Self::InvalidFunction(_)
            | Self::InvalidTable { .. }
            | Self::InvalidKeyName { .. }
            | Self::InvalidDeclaration { .. }
            | Self::InvalidKeyValue { .. }
            | Self::InvalidArgument(_)
            | Self::KeyMismatch { .. } => ErrorKind::Invalid,
            Self::NoSuchTable { .. } => ErrorKind::NoSuchTable,
            Self::NoSuchItem { .. } => ErrorKind::NotFound,
            Self::ItemTooLarge { .. } | Self::ReplyTooLarge { .. } => ErrorKind::TooLarge,
            Self::ItemQuota { .. }
            | Self::ByteQuota { .. }
            | Self::StoreFull { .. }
            | Self::TableQuota { .. } => ErrorKind::Quota,
            Self::TableConflict { .. } => ErrorKind::Conflict,
            Self::Refused(_) | Self::Disabled => ErrorKind::Denied,
            Self::Busy { .. } => ErrorKind::Busy,
            Self::Protocol(_) => ErrorKind::Protocol,
            Self::Database { .. } | Self::Corrupt { .. } | Self::Io { .. } => ErrorKind::Internal,
        }
    }

    /// The message for function code and API clients: host paths stay on the host.
    pub fn client_message(&self) -> String {
        match self {
            Self::Database { source, .. } => format!("NoSQL database failed: {source}"),
            Self::Io { source, .. } => format!("NoSQL store failed: {source}"),
            other => other.to_string(),
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn config_defaults_are_valid_and_bad_settings_are_named() {
        assert!(NosqlConfig::default().check().is_ok());
        let parsed: NosqlConfig = toml::from_str("max_item_bytes = 1024").unwrap();
        assert_eq!(parsed.max_item_bytes, 1024);
        assert_eq!(parsed.max_connections, 256);
        assert!(toml::from_str::<NosqlConfig>("max_items = 3").is_err());
        let zero = NosqlConfig {
            max_connections_per_function: 0,
            ..NosqlConfig::default()
        };
        assert_eq!(
            zero.check().unwrap_err(),
            "nosql.max_connections_per_function must be at least 1"
        );
        let slow = NosqlConfig {
            request_timeout_secs: f64::NAN,
            ..NosqlConfig::default()
        };
        assert!(slow.check().is_err());
        assert_eq!(
            NosqlConfig::default().data_dir(Path::new("/r")),
            Path::new("/r/nosql")
        );
    }

    #[test]
    fn an_unknown_table_names_the_tables_the_function_has() {
        let e = NosqlError::NoSuchTable {
            function: "shop".into(),
            table: "cart".into(),
            tables: vec!["orders".into(), "shopping_cart".into()],
        };
        assert_eq!(
            e.to_string(),
            r#"table "cart" does not exist; function "shop" has "orders", "shopping_cart""#
        );
        assert_eq!(e.kind(), ErrorKind::NoSuchTable);
        let none = NosqlError::NoSuchTable {
            function: "shop".into(),
            table: "cart".into(),
            tables: vec![],
        };
        assert!(none
            .to_string()
            .ends_with(r#"function "shop" has no tables"#));
    }

    #[test]
    fn clip_cuts_on_a_character_boundary() {
        let s = "é".repeat(100);
        let c = clip(&s);
        assert!(c.ends_with("..."));
        assert!(c.len() <= ECHO_BYTES + 3);
        assert_eq!(clip("short"), "short");
    }
}
