//! The NoSQL database: every function's tables and items in one SQLite file,
//! `<dir>/nosql.sqlite3`, with the bounds of `[nosql]`.
//!
//! Each call is one transaction, so a crash (of the worker or the machine) never leaves half of
//! it applied; the database runs in WAL mode with `synchronous = NORMAL`: a worker that is
//! killed loses nothing it answered, a machine that loses power may lose the last calls but
//! never the database's consistency.
//!
//! An item is stored whole, as the JSON object a `get` returns (its attributes and both key
//! attributes), beside its two key values, which SQLite keeps as given (`STRICT` tables, columns
//! of type `ANY`): an integer key and a string key are different keys, and a query's items come
//! in order of their secondary key (integers first, numerically, then strings by their bytes).
//! An item's size is the length of that JSON; quotas count items and those bytes per function,
//! kept in memory and counted again from the database when it opens.

use super::table::{Declaration, Key, KeyValue, Owner, TableName, TableSpec};
use super::{clip, NosqlConfig, NosqlError};
use parking_lot::{Mutex, MutexGuard};
use rusqlite::types::{ToSqlOutput, ValueRef};
use rusqlite::{params, Connection, OptionalExtension, ToSql, Transaction};
use serde_json::{Map, Value};
use std::collections::HashMap;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

/// An item: a JSON object.
pub type Item = Map<String, Value>;

/// The database's file name in its directory.
pub const FILE_NAME: &str = "nosql.sqlite3";

/// Version of the schema below, in `PRAGMA user_version`.
const SCHEMA_VERSION: i64 = 1;

const SCHEMA: &str = "
    CREATE TABLE IF NOT EXISTS tables (
        function TEXT NOT NULL,
        name TEXT NOT NULL,
        primary_key TEXT NOT NULL,
        secondary_key TEXT NOT NULL,
        PRIMARY KEY (function, name)
    ) STRICT, WITHOUT ROWID;
    CREATE TABLE IF NOT EXISTS items (
        function TEXT NOT NULL,
        tbl TEXT NOT NULL,
        pk ANY NOT NULL,
        sk ANY NOT NULL,
        item TEXT NOT NULL,
        bytes INTEGER NOT NULL,
        PRIMARY KEY (function, tbl, pk, sk)
    ) STRICT, WITHOUT ROWID;
";

/// The bounds a store keeps.
#[derive(Debug, Clone, PartialEq)]
pub struct Limits {
    pub max_item_bytes: u64,
    pub max_function_items: u64,
    pub max_function_bytes: u64,
    pub max_total_bytes: u64,
    pub max_tables_per_function: usize,
    pub max_reply_bytes: u64,
}

impl Limits {
    /// The bounds `[nosql]` sets.
    pub fn of(config: &NosqlConfig) -> Self {
        Self {
            max_item_bytes: config.max_item_bytes,
            max_function_items: config.max_function_items,
            max_function_bytes: config.max_function_bytes,
            max_total_bytes: config.max_total_bytes,
            max_tables_per_function: config.max_tables_per_function,
            max_reply_bytes: config.max_reply_bytes,
        }
    }
}

/// What a function's items take.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Usage {
    pub items: u64,
    pub bytes: u64,
}

/// What a call changes in its function's usage.
#[derive(Debug, Clone, Copy, Default)]
struct Delta {
    items: i64,
    bytes: i64,
}

impl Delta {
    fn apply(value: u64, by: i64) -> u64 {
        value.saturating_add_signed(by)
    }
}

/// What declaring a table did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Declared {
    Created,
    /// Declared before with the same keys.
    Unchanged,
    /// Declared before with other keys, and empty: now keyed as declared.
    Rekeyed,
}

struct Inner {
    conn: Connection,
    usage: HashMap<String, Usage>,
    total_bytes: u64,
}

/// The database; calls are blocking and run one at a time.
pub struct Store {
    inner: Mutex<Inner>,
    path: PathBuf,
    limits: Limits,
}

impl ToSql for KeyValue {
    fn to_sql(&self) -> rusqlite::Result<ToSqlOutput<'_>> {
        Ok(match self {
            Self::Int(i) => ToSqlOutput::Borrowed(ValueRef::Integer(*i)),
            Self::Str(s) => ToSqlOutput::Borrowed(ValueRef::Text(s.as_bytes())),
        })
    }
}

/// An item's JSON, checked against the size limit.
fn encode(item: &Item, limit: u64) -> Result<String, NosqlError> {
    let text = Value::Object(item.clone()).to_string();
    let size = text.len() as u64;
    if size > limit {
        return Err(NosqlError::ItemTooLarge { size, limit });
    }
    Ok(text)
}

/// A stored item's JSON, as an item.
fn decode(text: &str, table: &TableName) -> Result<Item, NosqlError> {
    match serde_json::from_str(text) {
        Ok(Value::Object(item)) => Ok(item),
        _ => Err(NosqlError::Corrupt {
            table: table.as_str().to_string(),
        }),
    }
}

/// Checks that a call names the key attribute the table declares.
fn check_key_name(
    table: &TableName,
    which: &'static str,
    declared: &super::table::KeyName,
    given: &str,
) -> Result<(), NosqlError> {
    if declared.as_str() == given {
        return Ok(());
    }
    Err(NosqlError::KeyMismatch {
        table: table.as_str().to_string(),
        which,
        declared: declared.as_str().to_string(),
        given: clip(given),
    })
}

/// Checks both keys of a call against the table's declaration.
fn check_keys(
    table: &TableName,
    spec: &TableSpec,
    primary: &Key,
    secondary: &Key,
) -> Result<(), NosqlError> {
    check_key_name(table, "primary", &spec.primary_key, &primary.name)?;
    check_key_name(table, "secondary", &spec.secondary_key, &secondary.name)
}

impl Store {
    /// Opens (creating) the database in `dir`, root's alone, and counts what each function
    /// stores.
    pub fn open(dir: &Path, limits: Limits) -> Result<Self, NosqlError> {
        let io_err = |source| NosqlError::Io {
            path: dir.to_path_buf(),
            source,
        };
        std::fs::create_dir_all(dir).map_err(io_err)?;
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700)).map_err(io_err)?;
        let path = dir.join(FILE_NAME);
        let db = |source| NosqlError::Database {
            path: path.clone(),
            source,
        };
        let conn = Connection::open(&path).map_err(db)?;
        conn.execute_batch(
            "PRAGMA journal_mode = WAL; PRAGMA synchronous = NORMAL; PRAGMA foreign_keys = OFF;",
        )
        .map_err(db)?;
        let version: i64 = conn
            .query_row("PRAGMA user_version", [], |r| r.get(0))
            .map_err(db)?;
        if version > SCHEMA_VERSION {
            return Err(NosqlError::Protocol(format!(
                "the NoSQL database at {} has schema {version}, newer than this worker's \
                 {SCHEMA_VERSION}",
                path.display()
            )));
        }
        conn.execute_batch(SCHEMA).map_err(db)?;
        conn.pragma_update(None, "user_version", SCHEMA_VERSION)
            .map_err(db)?;
        let mut usage = HashMap::new();
        let mut total_bytes = 0u64;
        {
            let mut stmt = conn
                .prepare("SELECT function, COUNT(*), SUM(bytes) FROM items GROUP BY function")
                .map_err(db)?;
            let rows = stmt
                .query_map([], |r| {
                    Ok((
                        r.get::<_, String>(0)?,
                        r.get::<_, i64>(1)?,
                        r.get::<_, i64>(2)?,
                    ))
                })
                .map_err(db)?;
            for row in rows {
                let (function, items, bytes) = row.map_err(db)?;
                let used = Usage {
                    items: items.max(0) as u64,
                    bytes: bytes.max(0) as u64,
                };
                total_bytes = total_bytes.saturating_add(used.bytes);
                usage.insert(function, used);
            }
        }
        // The database and its journal hold every tenant's items.
        for file in [FILE_NAME, "nosql.sqlite3-wal", "nosql.sqlite3-shm"] {
            let p = dir.join(file);
            if p.exists() {
                std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o600))
                    .map_err(|source| NosqlError::Io { path: p, source })?;
            }
        }
        Ok(Self {
            inner: Mutex::new(Inner {
                conn,
                usage,
                total_bytes,
            }),
            path,
            limits,
        })
    }

    /// The database file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn limits(&self) -> &Limits {
        &self.limits
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock()
    }

    fn db(&self) -> impl Fn(rusqlite::Error) -> NosqlError + '_ {
        move |source| NosqlError::Database {
            path: self.path.clone(),
            source,
        }
    }

    /// What `owner`'s items take now.
    pub fn usage(&self, owner: &Owner) -> Usage {
        self.lock()
            .usage
            .get(owner.as_str())
            .copied()
            .unwrap_or_default()
    }

    /// The tables `owner` has, by name.
    pub fn tables(&self, owner: &Owner) -> Result<Vec<Declaration>, NosqlError> {
        let inner = self.lock();
        self.tables_in(&inner.conn, owner)
    }

    fn tables_in(&self, conn: &Connection, owner: &Owner) -> Result<Vec<Declaration>, NosqlError> {
        let mut stmt = conn
            .prepare_cached(
                "SELECT name, primary_key, secondary_key FROM tables WHERE function = ?1 \
                 ORDER BY name",
            )
            .map_err(self.db())?;
        let rows = stmt
            .query_map([owner.as_str()], |r| {
                Ok((
                    r.get::<_, String>(0)?,
                    r.get::<_, String>(1)?,
                    r.get::<_, String>(2)?,
                ))
            })
            .map_err(self.db())?;
        let mut tables = Vec::new();
        for row in rows {
            let (name, primary, secondary) = row.map_err(self.db())?;
            tables.push(Declaration {
                table: TableName::parse(&name)?,
                spec: TableSpec::new(&primary, &secondary)?,
            });
        }
        Ok(tables)
    }

    /// The declaration of `owner`'s table `table`; an unknown table's error names the tables
    /// the function has.
    fn table(
        &self,
        conn: &Connection,
        owner: &Owner,
        table: &str,
    ) -> Result<(TableName, TableSpec), NosqlError> {
        let name = TableName::parse(table)?;
        let found = conn
            .prepare_cached(
                "SELECT primary_key, secondary_key FROM tables WHERE function = ?1 AND name = ?2",
            )
            .and_then(|mut s| {
                s.query_row([owner.as_str(), name.as_str()], |r| {
                    Ok((r.get::<_, String>(0)?, r.get::<_, String>(1)?))
                })
                .optional()
            })
            .map_err(self.db())?;
        match found {
            Some((primary, secondary)) => Ok((name, TableSpec::new(&primary, &secondary)?)),
            None => Err(NosqlError::NoSuchTable {
                function: owner.as_str().to_string(),
                table: name.as_str().to_string(),
                tables: self
                    .tables_in(conn, owner)?
                    .into_iter()
                    .map(|d| d.table.as_str().to_string())
                    .collect(),
            }),
        }
    }

    /// Declares `owner`'s table: a new table, the same declaration again, or other keys for a
    /// table that holds no items.
    pub fn declare(&self, owner: &Owner, decl: &Declaration) -> Result<Declared, NosqlError> {
        let mut done = self.declare_all(owner, std::slice::from_ref(decl))?;
        Ok(done.pop().map_or(Declared::Unchanged, |(_, d)| d))
    }

    /// Declares each of `owner`'s tables as [`Store::declare`] does, all or none (a deploy
    /// whose config declares a table wrongly changes nothing).
    pub fn declare_all(
        &self,
        owner: &Owner,
        decls: &[Declaration],
    ) -> Result<Vec<(TableName, Declared)>, NosqlError> {
        let mut inner = self.lock();
        let tx = inner.conn.transaction().map_err(self.db())?;
        let mut done = Vec::with_capacity(decls.len());
        for decl in decls {
            let declared = self.declare_in(&tx, owner, decl)?;
            done.push((decl.table.clone(), declared));
        }
        tx.commit().map_err(self.db())?;
        Ok(done)
    }

    fn declare_in(
        &self,
        tx: &Transaction<'_>,
        owner: &Owner,
        decl: &Declaration,
    ) -> Result<Declared, NosqlError> {
        let existing = tx
            .query_row(
                "SELECT primary_key, secondary_key FROM tables WHERE function = ?1 AND name = ?2",
                [owner.as_str(), decl.table.as_str()],
                |r| Ok((r.get::<_, String>(0)?, r.get::<_, String>(1)?)),
            )
            .optional()
            .map_err(self.db())?;
        let (pk, sk) = (
            decl.spec.primary_key.as_str(),
            decl.spec.secondary_key.as_str(),
        );
        let declared = match existing {
            Some((p, s)) if p == pk && s == sk => return Ok(Declared::Unchanged),
            Some((p, s)) => {
                let items: i64 = tx
                    .query_row(
                        "SELECT COUNT(*) FROM items WHERE function = ?1 AND tbl = ?2",
                        [owner.as_str(), decl.table.as_str()],
                        |r| r.get(0),
                    )
                    .map_err(self.db())?;
                if items > 0 {
                    return Err(NosqlError::TableConflict {
                        table: decl.table.as_str().to_string(),
                        primary_key: p,
                        secondary_key: s,
                        items: items as u64,
                    });
                }
                Declared::Rekeyed
            }
            None => {
                let count: i64 = tx
                    .query_row(
                        "SELECT COUNT(*) FROM tables WHERE function = ?1",
                        [owner.as_str()],
                        |r| r.get(0),
                    )
                    .map_err(self.db())?;
                if count as u64 >= self.limits.max_tables_per_function as u64 {
                    return Err(NosqlError::TableQuota {
                        function: owner.as_str().to_string(),
                        limit: self.limits.max_tables_per_function,
                    });
                }
                Declared::Created
            }
        };
        tx.execute(
            "INSERT OR REPLACE INTO tables (function, name, primary_key, secondary_key) \
             VALUES (?1, ?2, ?3, ?4)",
            params![owner.as_str(), decl.table.as_str(), pk, sk],
        )
        .map_err(self.db())?;
        Ok(declared)
    }

    /// `owner`'s tables with what each holds.
    pub fn table_usage(&self, owner: &Owner) -> Result<Vec<(Declaration, Usage)>, NosqlError> {
        let inner = self.lock();
        let mut counts = HashMap::new();
        {
            let mut stmt = inner
                .conn
                .prepare_cached(
                    "SELECT tbl, COUNT(*), SUM(bytes) FROM items WHERE function = ?1 GROUP BY tbl",
                )
                .map_err(self.db())?;
            let rows = stmt
                .query_map([owner.as_str()], |r| {
                    Ok((
                        r.get::<_, String>(0)?,
                        r.get::<_, i64>(1)?,
                        r.get::<_, i64>(2)?,
                    ))
                })
                .map_err(self.db())?;
            for row in rows {
                let (table, items, bytes) = row.map_err(self.db())?;
                counts.insert(
                    table,
                    Usage {
                        items: items.max(0) as u64,
                        bytes: bytes.max(0) as u64,
                    },
                );
            }
        }
        Ok(self
            .tables_in(&inner.conn, owner)?
            .into_iter()
            .map(|d| {
                let used = counts.get(d.table.as_str()).copied().unwrap_or_default();
                (d, used)
            })
            .collect())
    }

    /// Drops `owner`'s table and its items; returns how many items it held.
    pub fn drop_table(&self, owner: &Owner, table: &str) -> Result<u64, NosqlError> {
        let mut guard = self.lock();
        let inner = &mut *guard;
        let (name, _) = self.table(&inner.conn, owner, table)?;
        let tx = inner.conn.transaction().map_err(self.db())?;
        let (items, bytes): (i64, Option<i64>) = tx
            .query_row(
                "SELECT COUNT(*), SUM(bytes) FROM items WHERE function = ?1 AND tbl = ?2",
                [owner.as_str(), name.as_str()],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )
            .map_err(self.db())?;
        tx.execute(
            "DELETE FROM items WHERE function = ?1 AND tbl = ?2",
            [owner.as_str(), name.as_str()],
        )
        .map_err(self.db())?;
        tx.execute(
            "DELETE FROM tables WHERE function = ?1 AND name = ?2",
            [owner.as_str(), name.as_str()],
        )
        .map_err(self.db())?;
        tx.commit().map_err(self.db())?;
        Self::account(
            inner,
            owner,
            Delta {
                items: -items,
                bytes: -bytes.unwrap_or(0),
            },
        );
        Ok(items as u64)
    }

    /// Refuses a call that would take `owner` (or the store) past a limit. Only growth is
    /// refused, so a function over a lowered limit can still delete and shrink.
    fn check_quota(
        &self,
        usage: &HashMap<String, Usage>,
        total_bytes: u64,
        owner: &Owner,
        delta: Delta,
    ) -> Result<(), NosqlError> {
        let used = usage.get(owner.as_str()).copied().unwrap_or_default();
        let limits = &self.limits;
        let items = Delta::apply(used.items, delta.items);
        if delta.items > 0 && items > limits.max_function_items {
            return Err(NosqlError::ItemQuota {
                function: owner.as_str().to_string(),
                limit: limits.max_function_items,
            });
        }
        if delta.bytes > 0 {
            let would = Delta::apply(used.bytes, delta.bytes);
            if would > limits.max_function_bytes {
                return Err(NosqlError::ByteQuota {
                    function: owner.as_str().to_string(),
                    would,
                    limit: limits.max_function_bytes,
                });
            }
            let would = Delta::apply(total_bytes, delta.bytes);
            if would > limits.max_total_bytes {
                return Err(NosqlError::StoreFull {
                    would,
                    limit: limits.max_total_bytes,
                });
            }
        }
        Ok(())
    }

    /// Counts a committed call's change.
    fn account(inner: &mut Inner, owner: &Owner, delta: Delta) {
        let used = inner.usage.entry(owner.as_str().to_string()).or_default();
        used.items = Delta::apply(used.items, delta.items);
        used.bytes = Delta::apply(used.bytes, delta.bytes);
        if used.items == 0 {
            inner.usage.remove(owner.as_str());
        }
        inner.total_bytes = Delta::apply(inner.total_bytes, delta.bytes);
    }

    /// Writes one item in a transaction; returns what it changed.
    fn put(
        &self,
        tx: &Transaction<'_>,
        owner: &Owner,
        table: &TableName,
        primary: &KeyValue,
        secondary: &KeyValue,
        text: &str,
    ) -> Result<Delta, NosqlError> {
        let old: Option<i64> = tx
            .prepare_cached(
                "SELECT bytes FROM items WHERE function = ?1 AND tbl = ?2 AND pk = ?3 AND sk = ?4",
            )
            .and_then(|mut s| {
                s.query_row(
                    params![owner.as_str(), table.as_str(), primary, secondary],
                    |r| r.get(0),
                )
                .optional()
            })
            .map_err(self.db())?;
        tx.prepare_cached(
            "INSERT OR REPLACE INTO items (function, tbl, pk, sk, item, bytes) \
             VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
        )
        .and_then(|mut s| {
            s.execute(params![
                owner.as_str(),
                table.as_str(),
                primary,
                secondary,
                text,
                text.len() as i64
            ])
        })
        .map_err(self.db())?;
        Ok(Delta {
            items: i64::from(old.is_none()),
            bytes: text.len() as i64 - old.unwrap_or(0),
        })
    }

    /// Stores `data` with both key attributes set as the keys say (they win over attributes
    /// of the same names in `data`), replacing any item of those keys.
    pub fn insert(
        &self,
        owner: &Owner,
        table: &str,
        primary: &Key,
        secondary: &Key,
        mut data: Item,
    ) -> Result<(), NosqlError> {
        let mut guard = self.lock();
        let inner = &mut *guard;
        let (name, spec) = self.table(&inner.conn, owner, table)?;
        check_keys(&name, &spec, primary, secondary)?;
        data.insert(primary.name.clone(), primary.value.to_json());
        data.insert(secondary.name.clone(), secondary.value.to_json());
        let text = encode(&data, self.limits.max_item_bytes)?;
        let tx = inner.conn.transaction().map_err(self.db())?;
        let delta = self.put(&tx, owner, &name, &primary.value, &secondary.value, &text)?;
        // Checked after the write but before its commit: dropping `tx` rolls it back.
        self.check_quota(&inner.usage, inner.total_bytes, owner, delta)?;
        tx.commit().map_err(self.db())?;
        Self::account(inner, owner, delta);
        Ok(())
    }

    /// Loads items from outside (an operator, SeBS's harness): each carries both key
    /// attributes. All are stored, or none.
    pub fn load(&self, owner: &Owner, table: &str, items: Vec<Item>) -> Result<usize, NosqlError> {
        let mut guard = self.lock();
        let inner = &mut *guard;
        let (name, spec) = self.table(&inner.conn, owner, table)?;
        let key_of = |item: &Item, i: usize, key: &super::table::KeyName| {
            let value = item.get(key.as_str()).ok_or_else(|| {
                NosqlError::InvalidArgument(format!(
                    "item {i} lacks the key attribute {:?} of table {:?}",
                    key.as_str(),
                    name.as_str()
                ))
            })?;
            KeyValue::parse(key.as_str(), value)
        };
        let mut rows = Vec::with_capacity(items.len());
        for (i, item) in items.iter().enumerate() {
            let primary = key_of(item, i, &spec.primary_key)?;
            let secondary = key_of(item, i, &spec.secondary_key)?;
            rows.push((
                primary,
                secondary,
                encode(item, self.limits.max_item_bytes)?,
            ));
        }
        let tx = inner.conn.transaction().map_err(self.db())?;
        let mut delta = Delta::default();
        for (primary, secondary, text) in &rows {
            let d = self.put(&tx, owner, &name, primary, secondary, text)?;
            delta.items += d.items;
            delta.bytes += d.bytes;
        }
        self.check_quota(&inner.usage, inner.total_bytes, owner, delta)?;
        tx.commit().map_err(self.db())?;
        Self::account(inner, owner, delta);
        Ok(rows.len())
    }

    /// The stored item's JSON and size, if there is one.
    fn find(
        &self,
        conn: &Connection,
        owner: &Owner,
        table: &TableName,
        primary: &Key,
        secondary: &Key,
    ) -> Result<Option<String>, NosqlError> {
        conn.prepare_cached(
            "SELECT item FROM items WHERE function = ?1 AND tbl = ?2 AND pk = ?3 AND sk = ?4",
        )
        .and_then(|mut s| {
            s.query_row(
                params![
                    owner.as_str(),
                    table.as_str(),
                    primary.value,
                    secondary.value
                ],
                |r| r.get(0),
            )
            .optional()
        })
        .map_err(self.db())
    }

    fn no_such_item(table: &TableName, primary: &Key, secondary: &Key) -> NosqlError {
        NosqlError::NoSuchItem {
            table: table.as_str().to_string(),
            primary: primary.to_string(),
            secondary: secondary.to_string(),
        }
    }

    /// The item with these keys, both key attributes included.
    pub fn get(
        &self,
        owner: &Owner,
        table: &str,
        primary: &Key,
        secondary: &Key,
    ) -> Result<Item, NosqlError> {
        let inner = self.lock();
        let (name, spec) = self.table(&inner.conn, owner, table)?;
        check_keys(&name, &spec, primary, secondary)?;
        match self.find(&inner.conn, owner, &name, primary, secondary)? {
            Some(text) => decode(&text, &name),
            None => Err(Self::no_such_item(&name, primary, secondary)),
        }
    }

    /// Sets the attributes of `updates` on the existing item with these keys (others are
    /// kept); returns the item as stored. A key attribute keeps its value: naming it with
    /// another value is refused.
    pub fn update(
        &self,
        owner: &Owner,
        table: &str,
        primary: &Key,
        secondary: &Key,
        updates: Item,
    ) -> Result<Item, NosqlError> {
        let mut guard = self.lock();
        let inner = &mut *guard;
        let (name, spec) = self.table(&inner.conn, owner, table)?;
        check_keys(&name, &spec, primary, secondary)?;
        for key in [primary, secondary] {
            if let Some(v) = updates.get(&key.name) {
                if *v != key.value.to_json() {
                    return Err(NosqlError::InvalidArgument(format!(
                        "an update cannot change the key attribute {:?}",
                        clip(&key.name)
                    )));
                }
            }
        }
        let tx = inner.conn.transaction().map_err(self.db())?;
        let Some(text) = self.find(&tx, owner, &name, primary, secondary)? else {
            return Err(Self::no_such_item(&name, primary, secondary));
        };
        let mut item = decode(&text, &name)?;
        item.extend(updates);
        let text = encode(&item, self.limits.max_item_bytes)?;
        let delta = self.put(&tx, owner, &name, &primary.value, &secondary.value, &text)?;
        self.check_quota(&inner.usage, inner.total_bytes, owner, delta)?;
        tx.commit().map_err(self.db())?;
        Self::account(inner, owner, delta);
        Ok(item)
    }

    /// Every item with this primary key, in order of their secondary keys.
    pub fn query(
        &self,
        owner: &Owner,
        table: &str,
        primary: &Key,
        secondary_key: &str,
    ) -> Result<Vec<Item>, NosqlError> {
        let inner = self.lock();
        let (name, spec) = self.table(&inner.conn, owner, table)?;
        check_key_name(&name, "primary", &spec.primary_key, &primary.name)?;
        check_key_name(&name, "secondary", &spec.secondary_key, secondary_key)?;
        self.select(&inner.conn, owner, &name, Some(&primary.value))
    }

    /// For the operator: the items of `owner`'s table with this primary key value, or all of
    /// them, in key order.
    pub fn read(
        &self,
        owner: &Owner,
        table: &str,
        primary: Option<&KeyValue>,
    ) -> Result<Vec<Item>, NosqlError> {
        let inner = self.lock();
        let (name, _) = self.table(&inner.conn, owner, table)?;
        self.select(&inner.conn, owner, &name, primary)
    }

    /// The items of a table (of one primary key value), within the reply limit.
    fn select(
        &self,
        conn: &Connection,
        owner: &Owner,
        table: &TableName,
        primary: Option<&KeyValue>,
    ) -> Result<Vec<Item>, NosqlError> {
        // Two statements, so that a query by primary key is a range of the index.
        let (sql, by_primary) = match primary {
            Some(_) => (
                "SELECT item FROM items WHERE function = ?1 AND tbl = ?2 AND pk = ?3 \
                 ORDER BY sk",
                true,
            ),
            None => (
                "SELECT item FROM items WHERE function = ?1 AND tbl = ?2 ORDER BY pk, sk",
                false,
            ),
        };
        let mut stmt = conn.prepare_cached(sql).map_err(self.db())?;
        let mut rows = if by_primary {
            stmt.query(params![owner.as_str(), table.as_str(), primary])
        } else {
            stmt.query(params![owner.as_str(), table.as_str()])
        }
        .map_err(self.db())?;
        let mut items = Vec::new();
        let mut size = 2u64;
        while let Some(row) = rows.next().map_err(self.db())? {
            let text: String = row.get(0).map_err(self.db())?;
            size += text.len() as u64 + 1;
            if size > self.limits.max_reply_bytes {
                return Err(NosqlError::ReplyTooLarge {
                    limit: self.limits.max_reply_bytes,
                });
            }
            items.push(decode(&text, table)?);
        }
        Ok(items)
    }

    /// Removes the item with these keys; true if there was one. Removing a missing item is
    /// not an error (as in DynamoDB).
    pub fn delete(
        &self,
        owner: &Owner,
        table: &str,
        primary: &Key,
        secondary: &Key,
    ) -> Result<bool, NosqlError> {
        let mut guard = self.lock();
        let inner = &mut *guard;
        let (name, spec) = self.table(&inner.conn, owner, table)?;
        check_keys(&name, &spec, primary, secondary)?;
        let removed: Option<i64> = inner
            .conn
            .prepare_cached(
                "DELETE FROM items WHERE function = ?1 AND tbl = ?2 AND pk = ?3 AND sk = ?4 \
                 RETURNING bytes",
            )
            .and_then(|mut s| {
                s.query_row(
                    params![
                        owner.as_str(),
                        name.as_str(),
                        primary.value,
                        secondary.value
                    ],
                    |r| r.get(0),
                )
                .optional()
            })
            .map_err(self.db())?;
        if let Some(bytes) = removed {
            Self::account(
                inner,
                owner,
                Delta {
                    items: -1,
                    bytes: -bytes,
                },
            );
        }
        Ok(removed.is_some())
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
pub(crate) mod tests {
    use super::*;
    use crate::nosql::table::parse_declarations;
    use crate::nosql::ErrorKind;
    use serde_json::json;

    pub(crate) fn limits() -> Limits {
        Limits::of(&NosqlConfig::default())
    }

    pub(crate) fn owner(name: &str) -> Owner {
        Owner::parse(name).unwrap()
    }

    pub(crate) fn key(name: &str, value: Value) -> Key {
        Key::parse(name, &value).unwrap()
    }

    pub(crate) fn item(v: Value) -> Item {
        match v {
            Value::Object(m) => m,
            _ => panic!("not an object"),
        }
    }

    /// Declares SeBS's shopping cart for `function`.
    pub(crate) fn cart(store: &Store, function: &str) {
        let decl = parse_declarations(
            &json!({"shopping_cart": {"primary_key": "cart_id", "secondary_key": "product_id"}}),
        )
        .unwrap();
        assert_eq!(
            store.declare(&owner(function), &decl[0]).unwrap(),
            Declared::Created
        );
    }

    fn open(dir: &Path) -> Store {
        Store::open(dir, limits()).unwrap()
    }

    fn c(id: &str) -> Key {
        key("cart_id", json!(id))
    }
    fn p(id: &str) -> Key {
        key("product_id", json!(id))
    }

    #[test]
    fn insert_get_update_query_delete() {
        let tmp = tempfile::tempdir().unwrap();
        let store = open(tmp.path());
        let f = owner("shop");
        cart(&store, "shop");
        let t = "shopping_cart";
        store
            .insert(
                &f,
                t,
                &c("c1"),
                &p("p1"),
                item(json!({"name": "pen", "price": 2.5, "quantity": 3})),
            )
            .unwrap();
        store
            .insert(
                &f,
                t,
                &c("c1"),
                &p("p0"),
                item(json!({"name": "ink", "price": 7, "quantity": 1, "product_id": "ignored"})),
            )
            .unwrap();
        store
            .insert(&f, t, &c("c2"), &p("p1"), item(json!({})))
            .unwrap();
        // get: the data and both key attributes; numbers keep their types.
        let got = store.get(&f, t, &c("c1"), &p("p1")).unwrap();
        assert_eq!(
            Value::Object(got.clone()),
            json!({"cart_id": "c1", "product_id": "p1", "name": "pen", "price": 2.5, "quantity": 3})
        );
        assert!(got["quantity"].is_i64());
        assert!(got["price"].is_f64());
        // The key given wins over an attribute of the same name.
        assert_eq!(
            store.get(&f, t, &c("c1"), &p("p0")).unwrap()["product_id"],
            "p0"
        );
        // update merges into the existing item.
        let updated = store
            .update(
                &f,
                t,
                &c("c1"),
                &p("p1"),
                item(json!({"quantity": 4, "gift": true, "price": 3.0})),
            )
            .unwrap();
        assert_eq!(updated["name"], "pen");
        assert_eq!(
            Value::Object(store.get(&f, t, &c("c1"), &p("p1")).unwrap()),
            json!({"cart_id": "c1", "product_id": "p1", "name": "pen", "price": 3.0,
                   "quantity": 4, "gift": true})
        );
        assert!(store.get(&f, t, &c("c1"), &p("p1")).unwrap()["price"].is_f64());
        // query: every item of the primary key, in order of the secondary key.
        let items = store.query(&f, t, &c("c1"), "product_id").unwrap();
        let ids: Vec<&Value> = items.iter().map(|i| &i["product_id"]).collect();
        assert_eq!(ids, [&json!("p0"), &json!("p1")]);
        assert!(store
            .query(&f, t, &c("none"), "product_id")
            .unwrap()
            .is_empty());
        // delete; deleting again is no error; a deleted item is missing.
        assert!(store.delete(&f, t, &c("c1"), &p("p1")).unwrap());
        assert!(!store.delete(&f, t, &c("c1"), &p("p1")).unwrap());
        let e = store.get(&f, t, &c("c1"), &p("p1")).unwrap_err();
        assert_eq!(e.kind(), ErrorKind::NotFound);
        assert_eq!(
            e.to_string(),
            r#"no item with cart_id="c1" and product_id="p1" in table "shopping_cart""#
        );
        let e = store
            .update(&f, t, &c("c1"), &p("p1"), item(json!({"a": 1})))
            .unwrap_err();
        assert_eq!(e.kind(), ErrorKind::NotFound);
        assert_eq!(store.usage(&f).items, 2);
    }

    #[test]
    fn integer_and_string_keys_are_different_keys_and_round_trip() {
        let tmp = tempfile::tempdir().unwrap();
        let store = open(tmp.path());
        let f = owner("shop");
        cart(&store, "shop");
        let t = "shopping_cart";
        let int = key("cart_id", json!(1));
        let text = key("cart_id", json!("1"));
        for (sk, v) in [(json!(10), 1), (json!(9), 2), (json!("a"), 3)] {
            store
                .insert(&f, t, &int, &key("product_id", sk), item(json!({"v": v})))
                .unwrap();
        }
        store
            .insert(&f, t, &text, &p("x"), item(json!({"v": 0})))
            .unwrap();
        let items = store.query(&f, t, &int, "product_id").unwrap();
        let sks: Vec<&Value> = items.iter().map(|i| &i["product_id"]).collect();
        // Integers first, numerically; then strings.
        assert_eq!(sks, [&json!(9), &json!(10), &json!("a")]);
        assert!(items.iter().all(|i| i["cart_id"] == json!(1)));
        assert_eq!(store.query(&f, t, &text, "product_id").unwrap().len(), 1);
        let big = json!({"n": i64::MIN, "u": u64::MAX, "f": 1.0, "e": 1e300, "s": "é\u{0}"});
        store
            .insert(&f, t, &c("big"), &p("n"), item(big.clone()))
            .unwrap();
        let got = store.get(&f, t, &c("big"), &p("n")).unwrap();
        for k in ["n", "u", "f", "e", "s"] {
            assert_eq!(got[k], big[k], "{k}");
        }
        assert!(got["f"].is_f64());
        assert!(got["u"].is_u64());
    }

    #[test]
    fn tables_belong_to_their_function() {
        let tmp = tempfile::tempdir().unwrap();
        let store = open(tmp.path());
        cart(&store, "alpha");
        cart(&store, "beta");
        let t = "shopping_cart";
        let (a, b) = (owner("alpha"), owner("beta"));
        store
            .insert(&a, t, &c("c"), &p("p"), item(json!({"who": "alpha"})))
            .unwrap();
        assert_eq!(
            store.get(&b, t, &c("c"), &p("p")).unwrap_err().kind(),
            ErrorKind::NotFound
        );
        assert!(store
            .query(&b, t, &c("c"), "product_id")
            .unwrap()
            .is_empty());
        store
            .insert(&b, t, &c("c"), &p("p"), item(json!({"who": "beta"})))
            .unwrap();
        assert_eq!(store.get(&a, t, &c("c"), &p("p")).unwrap()["who"], "alpha");
        assert!(store.delete(&b, t, &c("c"), &p("p")).unwrap());
        assert_eq!(store.get(&a, t, &c("c"), &p("p")).unwrap()["who"], "alpha");
        // A table only gamma has declared is unknown to alpha.
        let decl =
            parse_declarations(&json!({"secret": {"primary_key": "k", "secondary_key": "s"}}))
                .unwrap();
        store.declare(&owner("gamma"), &decl[0]).unwrap();
        let e = store
            .get(&a, "secret", &key("k", json!(1)), &key("s", json!(1)))
            .unwrap_err();
        assert_eq!(
            e.to_string(),
            r#"table "secret" does not exist; function "alpha" has "shopping_cart""#
        );
        assert_eq!(store.usage(&a).items, 1);
        assert_eq!(store.usage(&b).items, 0);
    }

    #[test]
    fn calls_must_name_the_declared_keys() {
        let tmp = tempfile::tempdir().unwrap();
        let store = open(tmp.path());
        let f = owner("shop");
        cart(&store, "shop");
        let t = "shopping_cart";
        let e = store
            .insert(&f, t, &key("id", json!("c")), &p("p"), Item::new())
            .unwrap_err();
        assert_eq!(
            e.to_string(),
            r#"table "shopping_cart" has primary key "cart_id", not "id""#
        );
        assert_eq!(e.kind(), ErrorKind::Invalid);
        let e = store.query(&f, t, &c("c"), "sku").unwrap_err();
        assert!(e
            .to_string()
            .contains(r#"secondary key "product_id", not "sku""#));
        store.insert(&f, t, &c("c"), &p("p"), Item::new()).unwrap();
        let e = store
            .update(&f, t, &c("c"), &p("p"), item(json!({"cart_id": "d"})))
            .unwrap_err();
        assert!(e.to_string().contains("cannot change the key attribute"));
        // Naming a key with its own value is harmless.
        store
            .update(
                &f,
                t,
                &c("c"),
                &p("p"),
                item(json!({"cart_id": "c", "n": 1})),
            )
            .unwrap();
        assert_eq!(store.get(&f, t, &c("c"), &p("p")).unwrap()["n"], 1);
        let e = store.get(&f, "bad/name", &c("c"), &p("p")).unwrap_err();
        assert_eq!(e.kind(), ErrorKind::Invalid);
    }

    #[test]
    fn data_persists_across_a_reopen() {
        let tmp = tempfile::tempdir().unwrap();
        {
            let store = open(tmp.path());
            cart(&store, "shop");
            store
                .insert(
                    &owner("shop"),
                    "shopping_cart",
                    &c("c"),
                    &p("p"),
                    item(json!({"n": 1})),
                )
                .unwrap();
        }
        let store = open(tmp.path());
        let f = owner("shop");
        assert_eq!(
            store.get(&f, "shopping_cart", &c("c"), &p("p")).unwrap()["n"],
            1
        );
        let used = store.usage(&f);
        assert_eq!(used.items, 1);
        assert!(used.bytes > 0);
        let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode(tmp.path()), 0o700);
        assert_eq!(mode(&tmp.path().join(FILE_NAME)), 0o600);
        assert_eq!(store.tables(&f).unwrap()[0].table.as_str(), "shopping_cart");
    }

    #[test]
    fn declarations_are_kept_unless_a_table_is_empty() {
        let tmp = tempfile::tempdir().unwrap();
        let store = open(tmp.path());
        let f = owner("shop");
        cart(&store, "shop");
        let other = parse_declarations(
            &json!({"shopping_cart": {"primary_key": "cart", "secondary_key": "product"}}),
        )
        .unwrap();
        let same = parse_declarations(
            &json!({"shopping_cart": {"primary_key": "cart_id", "secondary_key": "product_id"}}),
        )
        .unwrap();
        assert_eq!(store.declare(&f, &same[0]).unwrap(), Declared::Unchanged);
        store
            .insert(&f, "shopping_cart", &c("c"), &p("p"), Item::new())
            .unwrap();
        let e = store.declare(&f, &other[0]).unwrap_err();
        assert_eq!(e.kind(), ErrorKind::Conflict);
        assert!(e.to_string().contains("holds 1 items"), "{e}");
        assert_eq!(store.drop_table(&f, "shopping_cart").unwrap(), 1);
        assert_eq!(store.usage(&f), Usage::default());
        assert_eq!(store.declare(&f, &other[0]).unwrap(), Declared::Created);
        assert_eq!(store.declare(&f, &same[0]).unwrap(), Declared::Rekeyed);
        assert_eq!(
            store.drop_table(&f, "nothing").unwrap_err().kind(),
            ErrorKind::NoSuchTable
        );
    }

    #[test]
    fn bounds_refuse_a_call_and_store_nothing_of_it() {
        let tmp = tempfile::tempdir().unwrap();
        let store = Store::open(
            tmp.path(),
            Limits {
                max_item_bytes: 200,
                max_function_items: 3,
                max_function_bytes: 350,
                max_total_bytes: 500,
                max_tables_per_function: 2,
                max_reply_bytes: 250,
            },
        )
        .unwrap();
        let f = owner("shop");
        cart(&store, "shop");
        let t = "shopping_cart";
        let e = store
            .insert(
                &f,
                t,
                &c("c"),
                &p("big"),
                item(json!({"x": "y".repeat(200)})),
            )
            .unwrap_err();
        assert_eq!(e.kind(), ErrorKind::TooLarge);
        assert!(e.to_string().contains("limit of 200 bytes per item"), "{e}");
        let pad = |n: usize| item(json!({"x": "y".repeat(n)}));
        // Items of ~100 bytes: three fit the item limit; the fourth is refused.
        for id in ["a", "b", "c"] {
            store.insert(&f, t, &c("c"), &p(id), pad(60)).unwrap();
        }
        let e = store.insert(&f, t, &c("c"), &p("d"), pad(1)).unwrap_err();
        assert_eq!(e.kind(), ErrorKind::Quota);
        assert_eq!(e.to_string(), r#"function "shop" has 3 items, its limit"#);
        assert_eq!(
            store.get(&f, t, &c("c"), &p("d")).unwrap_err().kind(),
            ErrorKind::NotFound
        );
        // Replacing an item with a larger one counts the difference: past 350 bytes, refused,
        // and the old item stays.
        let before = store.usage(&f);
        let e = store.update(&f, t, &c("c"), &p("a"), pad(150)).unwrap_err();
        assert!(matches!(e, NosqlError::ByteQuota { limit: 350, .. }), "{e}");
        assert_eq!(store.usage(&f), before);
        assert_eq!(
            store.get(&f, t, &c("c"), &p("a")).unwrap()["x"],
            json!("y".repeat(60))
        );
        // A query replying more than 250 bytes is refused.
        let e = store.query(&f, t, &c("c"), "product_id").unwrap_err();
        assert_eq!(e.kind(), ErrorKind::TooLarge);
        // Shrinking and deleting are always allowed.
        store.insert(&f, t, &c("c"), &p("a"), pad(1)).unwrap();
        store.delete(&f, t, &c("c"), &p("b")).unwrap();
        assert_eq!(store.usage(&f).items, 2);
        // The whole store's bytes: another function fills most of it.
        cart(&store, "other");
        let g = owner("other");
        store.insert(&g, t, &c("c"), &p("a"), pad(100)).unwrap();
        store.insert(&g, t, &c("c"), &p("b"), pad(100)).unwrap();
        let e = store.insert(&f, t, &c("c"), &p("z"), pad(100)).unwrap_err();
        assert!(matches!(e, NosqlError::StoreFull { limit: 500, .. }), "{e}");
        // Tables per function.
        let more = parse_declarations(&json!({"t2": {"primary_key": "a", "secondary_key": "b"},
                                       "t3": {"primary_key": "a", "secondary_key": "b"}}))
        .unwrap();
        store.declare(&f, &more[0]).unwrap();
        let e = store.declare(&f, &more[1]).unwrap_err();
        assert_eq!(e.to_string(), r#"function "shop" has 2 tables, its limit"#);
        // The counts agree with the database after a reopen.
        let (fu, gu) = (store.usage(&f), store.usage(&g));
        drop(store);
        let store = open(tmp.path());
        assert_eq!((store.usage(&f), store.usage(&g)), (fu, gu));
    }

    #[test]
    fn a_load_stores_every_item_or_none() {
        let tmp = tempfile::tempdir().unwrap();
        let store = Store::open(
            tmp.path(),
            Limits {
                max_function_items: 3,
                ..limits()
            },
        )
        .unwrap();
        let f = owner("shop");
        cart(&store, "shop");
        let t = "shopping_cart";
        let row = |p: &str| item(json!({"cart_id": "c", "product_id": p, "price": 1}));
        assert_eq!(store.load(&f, t, vec![row("a"), row("b")]).unwrap(), 2);
        assert_eq!(store.get(&f, t, &c("c"), &p("b")).unwrap()["price"], 1);
        // One item without its keys: nothing is stored.
        let e = store
            .load(&f, t, vec![row("x"), item(json!({"cart_id": "c"}))])
            .unwrap_err();
        assert_eq!(
            e.to_string(),
            r#"item 1 lacks the key attribute "product_id" of table "shopping_cart""#
        );
        // Past the quota: nothing is stored.
        let e = store.load(&f, t, vec![row("x"), row("y")]).unwrap_err();
        assert_eq!(e.kind(), ErrorKind::Quota);
        assert_eq!(store.usage(&f).items, 2);
        assert_eq!(
            store.get(&f, t, &c("c"), &p("x")).unwrap_err().kind(),
            ErrorKind::NotFound
        );
        // Replacing counts no new item.
        assert_eq!(store.load(&f, t, vec![row("a"), row("x")]).unwrap(), 2);
        assert_eq!(store.usage(&f).items, 3);
    }

    #[test]
    fn a_deploy_declares_all_its_tables_or_none() {
        let tmp = tempfile::tempdir().unwrap();
        let store = open(tmp.path());
        let f = owner("shop");
        cart(&store, "shop");
        store
            .insert(&f, "shopping_cart", &c("c"), &p("p"), Item::new())
            .unwrap();
        // "orders" is new, "shopping_cart" conflicts: neither is applied.
        let decls = parse_declarations(&json!({
            "orders": {"primary_key": "order", "secondary_key": "line"},
            "shopping_cart": {"primary_key": "cart", "secondary_key": "product"},
        }))
        .unwrap();
        let e = store.declare_all(&f, &decls).unwrap_err();
        assert_eq!(e.kind(), ErrorKind::Conflict);
        let names = |s: &Store| -> Vec<String> {
            s.tables(&f)
                .unwrap()
                .into_iter()
                .map(|d| d.table.as_str().to_string())
                .collect()
        };
        assert_eq!(names(&store), ["shopping_cart"]);
        let decls = parse_declarations(&json!({
            "orders": {"primary_key": "order", "secondary_key": "line"},
            "shopping_cart": {"primary_key": "cart_id", "secondary_key": "product_id"},
        }))
        .unwrap();
        let done = store.declare_all(&f, &decls).unwrap();
        assert_eq!(
            done.iter().map(|(_, d)| *d).collect::<Vec<_>>(),
            [Declared::Created, Declared::Unchanged]
        );
        assert_eq!(names(&store), ["orders", "shopping_cart"]);
        let usage = store.table_usage(&f).unwrap();
        assert_eq!(usage[0].1, Usage::default());
        assert_eq!(usage[1].1.items, 1);
        assert_eq!(usage[1].0.spec.primary_key.as_str(), "cart_id");
    }

    #[test]
    fn the_operator_reads_a_table_or_one_primary_key() {
        let tmp = tempfile::tempdir().unwrap();
        let store = open(tmp.path());
        let f = owner("shop");
        cart(&store, "shop");
        let t = "shopping_cart";
        for (cart, product) in [("b", "2"), ("a", "1"), ("b", "1")] {
            store
                .insert(&f, t, &c(cart), &p(product), Item::new())
                .unwrap();
        }
        let keys = |items: Vec<Item>| -> Vec<(Value, Value)> {
            items
                .into_iter()
                .map(|i| (i["cart_id"].clone(), i["product_id"].clone()))
                .collect()
        };
        assert_eq!(
            keys(store.read(&f, t, None).unwrap()),
            [
                (json!("a"), json!("1")),
                (json!("b"), json!("1")),
                (json!("b"), json!("2"))
            ]
        );
        assert_eq!(
            keys(store.read(&f, t, Some(&KeyValue::Str("b".into()))).unwrap()).len(),
            2
        );
        assert_eq!(
            store.read(&owner("other"), t, None).unwrap_err().kind(),
            ErrorKind::NoSuchTable
        );
    }

    #[test]
    fn a_query_is_a_range_of_the_index() {
        let tmp = tempfile::tempdir().unwrap();
        let store = open(tmp.path());
        let inner = store.lock();
        let plan: Vec<String> = inner
            .conn
            .prepare(
                "EXPLAIN QUERY PLAN SELECT item FROM items WHERE function = ?1 AND tbl = ?2 \
                 AND pk = ?3 ORDER BY sk",
            )
            .unwrap()
            .query_map(params!["f", "t", "c"], |r| r.get::<_, String>(3))
            .unwrap()
            .map(Result::unwrap)
            .collect();
        assert_eq!(
            plan,
            ["SEARCH items USING PRIMARY KEY (function=? AND tbl=? AND pk=?)"]
        );
    }

    #[test]
    fn concurrent_calls_keep_the_counts_right() {
        let tmp = tempfile::tempdir().unwrap();
        let store = std::sync::Arc::new(open(tmp.path()));
        cart(&store, "shop");
        let threads: Vec<_> = (0..4)
            .map(|t| {
                let store = store.clone();
                std::thread::spawn(move || {
                    let f = owner("shop");
                    for i in 0..100 {
                        let (cart, product) = (c(&format!("t{t}")), p(&format!("{}", i % 50)));
                        store
                            .insert(&f, "shopping_cart", &cart, &product, item(json!({"i": i})))
                            .unwrap();
                        if i % 3 == 0 {
                            store.delete(&f, "shopping_cart", &cart, &product).unwrap();
                        }
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        let f = owner("shop");
        let counted = store.usage(&f);
        let stored = store.read(&f, "shopping_cart", None).unwrap();
        assert_eq!(counted.items, stored.len() as u64);
        let bytes: usize = stored
            .iter()
            .map(|i| Value::Object(i.clone()).to_string().len())
            .sum();
        assert_eq!(counted.bytes, bytes as u64);
        drop(store);
        assert_eq!(open(tmp.path()).usage(&f), counted);
    }

    /// Set in the child process of [`a_killed_writer_leaves_whole_calls`]: the database's
    /// directory.
    const CRASH_CHILD: &str = "KINDLING_NOSQL_TEST_WRITER";
    const BATCH: usize = 400;

    #[test]
    fn a_killed_writer_leaves_whole_calls() {
        if let Some(dir) = std::env::var_os(CRASH_CHILD) {
            // The child: loads batches until it is killed (or for 60 s at most).
            let store = open(Path::new(&dir));
            let f = owner("shop");
            let start = std::time::Instant::now();
            let mut batch = 0;
            while start.elapsed() < std::time::Duration::from_secs(60) {
                let items = (0..BATCH)
                    .map(|i| {
                        item(json!({"cart_id": batch, "product_id": i, "pad": "x".repeat(200)}))
                    })
                    .collect();
                store.load(&f, "shopping_cart", items).unwrap();
                batch += 1;
            }
            return;
        }
        let tmp = tempfile::tempdir().unwrap();
        cart(&open(tmp.path()), "shop");
        let mut child = std::process::Command::new(std::env::current_exe().unwrap())
            .args([
                "--exact",
                "nosql::store::tests::a_killed_writer_leaves_whole_calls",
                "--nocapture",
            ])
            .env(CRASH_CHILD, tmp.path())
            .stdout(std::process::Stdio::null())
            .spawn()
            .unwrap();
        // Kill it once a few batches are in, most likely in the middle of one.
        let count = || -> i64 {
            let conn = Connection::open(tmp.path().join(FILE_NAME)).unwrap();
            conn.query_row("SELECT COUNT(*) FROM items", [], |r| r.get(0))
                .unwrap()
        };
        let start = std::time::Instant::now();
        while count() < 3 * BATCH as i64 {
            assert!(start.elapsed() < std::time::Duration::from_secs(60));
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        std::thread::sleep(std::time::Duration::from_millis(37));
        child.kill().unwrap();
        child.wait().unwrap();
        // Every batch is whole, and the counts agree with the items.
        let store = open(tmp.path());
        let f = owner("shop");
        let inner = store.lock();
        let sizes: Vec<i64> = inner
            .conn
            .prepare("SELECT COUNT(*) FROM items GROUP BY pk")
            .unwrap()
            .query_map([], |r| r.get(0))
            .unwrap()
            .map(Result::unwrap)
            .collect();
        drop(inner);
        assert!(sizes.len() >= 3, "{sizes:?}");
        assert!(sizes.iter().all(|n| *n == BATCH as i64), "{sizes:?}");
        assert_eq!(store.usage(&f).items, (sizes.len() * BATCH) as u64);
    }
}
