//! What NoSQL calls name: the owning function, tables, key attributes and key values, and table
//! declarations as a function's config (`"nosql"` in `config.json`, `nosql:` in `ol.yaml`) or
//! an operator writes them, in the shape of SeBS's `allocate_nosql()`:
//! `{"shopping_cart": {"primary_key": "cart_id", "secondary_key": "product_id"}}`.

use super::{clip, NosqlError};
use serde_json::Value;

/// Longest table name (DynamoDB's limit), and longest key attribute name.
pub const MAX_NAME_BYTES: usize = 255;
/// Longest string key value (DynamoDB's sort key limit).
pub const MAX_KEY_VALUE_BYTES: usize = 1024;

/// Whose tables: a function's name, as the registry allows it.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Owner(String);

impl Owner {
    pub fn parse(function: &str) -> Result<Self, NosqlError> {
        if !crate::function_config::is_valid_name(function) {
            return Err(NosqlError::InvalidFunction(clip(function)));
        }
        Ok(Self(function.to_string()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// A valid table name: 1 to 255 bytes of `[A-Za-z0-9._-]`, not starting with `.`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct TableName(String);

impl TableName {
    pub fn parse(name: &str) -> Result<Self, NosqlError> {
        let bad = |reason| {
            Err(NosqlError::InvalidTable {
                name: clip(name),
                reason,
            })
        };
        match crate::storage::name_problem(name) {
            Some(reason) => bad(reason),
            None => Ok(Self(name.to_string())),
        }
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// A valid key attribute name: 1 to 255 bytes, no NUL or other control character.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct KeyName(String);

impl KeyName {
    pub fn parse(name: &str) -> Result<Self, NosqlError> {
        let bad = |reason| {
            Err(NosqlError::InvalidKeyName {
                name: clip(name),
                reason,
            })
        };
        if name.is_empty() {
            return bad("it is empty");
        }
        if name.len() > MAX_NAME_BYTES {
            return bad("it is longer than 255 bytes");
        }
        if name.chars().any(char::is_control) {
            return bad("it contains a control character");
        }
        Ok(Self(name.to_string()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// A key's value: a string or an integer (a signed 64-bit one). `1` and `"1"` are different
/// keys, and each comes back as it went in.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum KeyValue {
    Int(i64),
    Str(String),
}

impl KeyValue {
    /// The value of key `key` as a call gives it.
    pub fn parse(key: &str, value: &Value) -> Result<Self, NosqlError> {
        let bad = |reason: String| NosqlError::InvalidKeyValue {
            key: clip(key),
            reason,
        };
        match value {
            Value::String(s) if s.len() > MAX_KEY_VALUE_BYTES => Err(bad(format!(
                "a string key is at most {MAX_KEY_VALUE_BYTES} bytes, this one has {}",
                s.len()
            ))),
            Value::String(s) => Ok(Self::Str(s.clone())),
            Value::Number(n) => match n.as_i64() {
                Some(i) => Ok(Self::Int(i)),
                None if n.is_f64() => Err(bad(
                    "a key is a string or an integer, not a floating-point number".into(),
                )),
                None => Err(bad("an integer key must fit in 64 bits, signed".into())),
            },
            other => Err(bad(format!(
                "a key is a string or an integer, not {}",
                json_type(other)
            ))),
        }
    }

    pub fn to_json(&self) -> Value {
        match self {
            Self::Int(i) => Value::from(*i),
            Self::Str(s) => Value::from(s.as_str()),
        }
    }
}

impl std::fmt::Display for KeyValue {
    /// As JSON, cut short for messages: `"c1"` or `7`.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Int(i) => write!(f, "{i}"),
            Self::Str(s) => write!(f, "{:?}", clip(s)),
        }
    }
}

/// A key as a call gives it: the attribute's name and its value, as SeBS's `(name, value)`
/// tuples. The name is checked against the table's declaration by the store.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Key {
    pub name: String,
    pub value: KeyValue,
}

impl Key {
    pub fn parse(name: &str, value: &Value) -> Result<Self, NosqlError> {
        Ok(Self {
            name: name.to_string(),
            value: KeyValue::parse(name, value)?,
        })
    }
}

impl std::fmt::Display for Key {
    /// `cart_id="c1"`, for messages.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}={}", clip(&self.name), self.value)
    }
}

/// The JSON type of a value, for messages.
pub(crate) fn json_type(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "a list",
        Value::Object(_) => "an object",
    }
}

/// A table's keys: the names of its primary (partition) and secondary (sort) key attributes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TableSpec {
    pub primary_key: KeyName,
    pub secondary_key: KeyName,
}

impl TableSpec {
    pub fn new(primary_key: &str, secondary_key: &str) -> Result<Self, NosqlError> {
        let spec = Self {
            primary_key: KeyName::parse(primary_key)?,
            secondary_key: KeyName::parse(secondary_key)?,
        };
        if spec.primary_key == spec.secondary_key {
            return Err(NosqlError::InvalidKeyName {
                name: clip(primary_key),
                reason: "the primary and secondary keys must differ",
            });
        }
        Ok(spec)
    }
}

/// One table a function declares.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Declaration {
    pub table: TableName,
    pub spec: TableSpec,
}

/// Most tables one declaration lists (the store bounds a function's tables further).
pub const MAX_DECLARED_TABLES: usize = 1024;

/// Parses declarations in SeBS's shape: an object from table name to
/// `{"primary_key": name, "secondary_key": name}`. Every error names the table it is about.
pub fn parse_declarations(value: &Value) -> Result<Vec<Declaration>, NosqlError> {
    let Value::Object(tables) = value else {
        return Err(NosqlError::InvalidArgument(format!(
            "NoSQL tables are declared as an object from table name to \
             {{\"primary_key\": ..., \"secondary_key\": ...}}, not {}",
            json_type(value)
        )));
    };
    if tables.len() > MAX_DECLARED_TABLES {
        return Err(NosqlError::InvalidArgument(format!(
            "{} NoSQL tables declared, more than {MAX_DECLARED_TABLES}",
            tables.len()
        )));
    }
    tables
        .iter()
        .map(|(name, spec)| {
            let table = TableName::parse(name)?;
            let bad = |reason: String| NosqlError::InvalidDeclaration {
                table: clip(name),
                reason,
            };
            let Value::Object(fields) = spec else {
                return Err(bad(format!(
                    "expected {{\"primary_key\": ..., \"secondary_key\": ...}}, not {}",
                    json_type(spec)
                )));
            };
            if let Some(unknown) = fields
                .keys()
                .find(|k| !matches!(k.as_str(), "primary_key" | "secondary_key"))
            {
                return Err(bad(format!(
                    "unknown field {:?} (expected primary_key and secondary_key)",
                    clip(unknown)
                )));
            }
            let field = |f: &str| match fields.get(f) {
                Some(Value::String(s)) => Ok(s.as_str()),
                Some(other) => Err(bad(format!(
                    "{f} must be a string, not {}",
                    json_type(other)
                ))),
                None => Err(bad(format!("{f} is missing"))),
            };
            let spec = TableSpec::new(field("primary_key")?, field("secondary_key")?)
                .map_err(|e| bad(e.to_string()))?;
            Ok(Declaration { table, spec })
        })
        .collect()
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn names_are_checked() {
        for good in ["shopping_cart", "T-1.x", &"t".repeat(255)] {
            assert!(TableName::parse(good).is_ok(), "{good}");
        }
        for bad in ["", ".hidden", "a/b", "a b", "é", "..", &"t".repeat(256)] {
            let e = TableName::parse(bad).unwrap_err();
            assert_eq!(e.kind(), crate::nosql::ErrorKind::Invalid, "{bad}");
        }
        assert!(KeyName::parse("cart id/é").is_ok());
        assert!(KeyName::parse("").is_err());
        assert!(KeyName::parse("a\0b").is_err());
        assert!(Owner::parse("fn-1").is_ok());
        assert!(Owner::parse("../x").is_err());
    }

    #[test]
    fn key_values_are_strings_or_integers() {
        assert_eq!(
            KeyValue::parse("k", &json!("c1")).unwrap(),
            KeyValue::Str("c1".into())
        );
        assert_eq!(KeyValue::parse("k", &json!(-7)).unwrap(), KeyValue::Int(-7));
        assert_ne!(
            KeyValue::parse("k", &json!(1)).unwrap(),
            KeyValue::parse("k", &json!("1")).unwrap()
        );
        for (bad, why) in [
            (json!(1.5), "floating-point"),
            (json!(u64::MAX), "64 bits"),
            (json!(true), "a boolean"),
            (json!(null), "null"),
            (json!(["a"]), "a list"),
            (json!("x".repeat(1025)), "at most 1024 bytes"),
        ] {
            let e = KeyValue::parse("cart_id", &bad).unwrap_err();
            assert!(e.to_string().contains(why), "{bad}: {e}");
            assert!(e
                .to_string()
                .starts_with(r#"invalid value of key "cart_id""#));
        }
        assert_eq!(KeyValue::Str("c1".into()).to_string(), r#""c1""#);
        assert_eq!(KeyValue::Int(3).to_json(), json!(3));
    }

    #[test]
    fn declarations_in_sebs_shape() {
        let d = parse_declarations(&json!({
            "shopping_cart": {"primary_key": "cart_id", "secondary_key": "product_id"},
            "orders": {"secondary_key": "line", "primary_key": "order"},
        }))
        .unwrap();
        assert_eq!(d.len(), 2);
        assert_eq!(d[1].table.as_str(), "shopping_cart");
        assert_eq!(d[1].spec.primary_key.as_str(), "cart_id");
        assert_eq!(d[1].spec.secondary_key.as_str(), "product_id");
        assert!(parse_declarations(&json!({})).unwrap().is_empty());
    }

    #[test]
    fn a_bad_declaration_names_its_table() {
        for (decl, msg) in [
            (
                json!({"cart": {"primary_key": "id"}}),
                r#"invalid declaration of table "cart": secondary_key is missing"#,
            ),
            (
                json!({"cart": {"primary_key": 1, "secondary_key": "b"}}),
                r#"invalid declaration of table "cart": primary_key must be a string, not a number"#,
            ),
            (
                json!({"cart": {"primary_key": "a", "secondary_key": "a"}}),
                "the primary and secondary keys must differ",
            ),
            (
                json!({"cart": {"primary_key": "a", "secondary_key": "b", "sort": "c"}}),
                r#"unknown field "sort""#,
            ),
            (json!({"cart": "cart_id"}), r#"table "cart": expected"#),
            (json!({"a/b": {}}), r#"invalid table name "a/b""#),
            (json!(["cart"]), "not a list"),
        ] {
            let e = parse_declarations(&decl).unwrap_err();
            assert!(e.to_string().contains(msg), "{decl}: {e}");
        }
    }
}
