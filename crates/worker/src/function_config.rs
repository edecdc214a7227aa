//! A function's own configuration, as its files state it: SeBS `config.json` or OpenLambda
//! `ol.yaml` (memory, timeout, network, environment, HTTP methods, NoSQL tables), and which format a version
//! uses. The registry reads it at deploy; the operator's bounds (`bounds.rs`) hold it in check.

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::io;
use std::path::Path;

/// Whether `name` may name a function: it becomes a directory name and a URL path segment, so
/// 1 to 63 ASCII letters, digits, `_`, `-` and `.`, starting with a letter or digit.
pub fn is_valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 63
        && name.as_bytes()[0].is_ascii_alphanumeric()
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-' || b == b'.')
}

/// Which function format a version uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Format {
    /// `f.py` with `def f(event)`; the return value is the response body.
    OpenLambda,
    /// `function.py` with `def handler(event)`; the response is SeBS's wrapper envelope.
    Sebs,
}

impl Format {
    /// Name passed to the runtime.
    pub fn runtime_name(self) -> &'static str {
        match self {
            Format::OpenLambda => "ol",
            Format::Sebs => "sebs",
        }
    }
}

/// A function's own configuration, from SeBS `config.json` or OpenLambda `ol.yaml`.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct FunctionConfig {
    pub memory_mb: Option<u64>,
    pub timeout_secs: Option<f64>,
    pub network: Option<bool>,
    /// The function's environment variables. Serialized (for the API) as their names only: the
    /// values are often secrets, and no reply ever carries them.
    #[serde(serialize_with = "names_only")]
    pub environment: BTreeMap<String, String>,
    /// HTTP methods `/run/<name>` accepts; empty means any.
    pub methods: Vec<String>,
    /// NoSQL tables the function declares (`"nosql"` in config.json, `nosql:` in ol.yaml, in
    /// the shape of SeBS's `allocate_nosql()`), declared in the store at deploy.
    #[serde(skip)]
    pub nosql_tables: Vec<crate::nosql::table::Declaration>,
}

/// The NoSQL tables a config declares; an error names the file and the table.
fn nosql_tables(
    file: &str,
    value: Option<serde_json::Value>,
) -> Result<Vec<crate::nosql::table::Declaration>, String> {
    value
        .map(|v| crate::nosql::table::parse_declarations(&v))
        .transpose()
        .map(Option::unwrap_or_default)
        .map_err(|e| format!("{file}: nosql: {e}"))
}

fn names_only<S: serde::Serializer>(
    env: &BTreeMap<String, String>,
    serializer: S,
) -> Result<S::Ok, S::Error> {
    serializer.collect_seq(env.keys())
}

/// SeBS `config.json`: `timeout` (s), `memory` (MB); Kindling adds `network` and `environment`.
/// SeBS's other keys (`languages`, `modules`, ...) are accepted and ignored.
pub(crate) fn sebs_config(path: &Path) -> Result<FunctionConfig, String> {
    #[derive(Deserialize)]
    struct SebsConfig {
        timeout: Option<f64>,
        memory: Option<u64>,
        network: Option<bool>,
        #[serde(default)]
        environment: BTreeMap<String, String>,
        nosql: Option<serde_json::Value>,
    }
    let text = match std::fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(FunctionConfig::default()),
        Err(e) => return Err(format!("cannot read config.json: {e}")),
    };
    let c: SebsConfig =
        serde_json::from_str(&text).map_err(|e| format!("config.json is not valid: {e}"))?;
    Ok(FunctionConfig {
        memory_mb: c.memory,
        timeout_secs: c.timeout,
        network: c.network,
        environment: c.environment,
        methods: Vec::new(),
        nosql_tables: nosql_tables("config.json", c.nosql)?,
    })
}

/// OpenLambda `ol.yaml`: `triggers.http[].method` and `environment`; Kindling adds
/// `memory_mb`, `timeout_secs` and `network`.
pub(crate) fn ol_config(path: &Path) -> Result<FunctionConfig, String> {
    #[derive(Deserialize, Default)]
    struct Http {
        method: String,
    }
    #[derive(Deserialize, Default)]
    struct Triggers {
        #[serde(default)]
        http: Vec<Http>,
    }
    #[derive(Deserialize, Default)]
    struct OlYaml {
        #[serde(default)]
        triggers: Option<Triggers>,
        #[serde(default)]
        environment: BTreeMap<String, serde_norway::Value>,
        memory_mb: Option<u64>,
        timeout_secs: Option<f64>,
        network: Option<bool>,
        nosql: Option<serde_json::Value>,
    }
    let text = match std::fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(FunctionConfig::default()),
        Err(e) => return Err(format!("cannot read ol.yaml: {e}")),
    };
    let c: OlYaml = if text.trim().is_empty() {
        OlYaml::default()
    } else {
        serde_norway::from_str(&text).map_err(|e| format!("ol.yaml is not valid: {e}"))?
    };
    let mut environment = BTreeMap::new();
    for (k, v) in c.environment {
        let v = match v {
            serde_norway::Value::String(s) => s,
            serde_norway::Value::Number(n) => n.to_string(),
            serde_norway::Value::Bool(b) => b.to_string(),
            serde_norway::Value::Null => String::new(),
            _ => {
                return Err(format!(
                    "ol.yaml: environment variable `{k}` must be a scalar"
                ))
            }
        };
        environment.insert(k, v);
    }
    let methods = c
        .triggers
        .unwrap_or_default()
        .http
        .into_iter()
        .map(|h| h.method.to_ascii_uppercase())
        .collect();
    Ok(FunctionConfig {
        memory_mb: c.memory_mb,
        timeout_secs: c.timeout_secs,
        network: c.network,
        environment,
        methods,
        nosql_tables: nosql_tables("ol.yaml", c.nosql)?,
    })
}
