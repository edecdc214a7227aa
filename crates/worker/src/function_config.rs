//! A function's own configuration, as its files state it: SeBS `config.json` or OpenLambda
//! `ol.yaml` (memory, timeout, network, environment, HTTP methods, NoSQL tables, and the web
//! entry that OpenLambda's `OL_ENTRY_FILE`, `OL_WSGI_ENTRY` and `OL_ASGI_ENTRY` variables name),
//! and which format a version uses. The registry reads it at deploy; the operator's bounds
//! (`bounds.rs`) hold it in check.

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

/// How `/run` hands a request to a function's instance.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Entry {
    /// As an event: the JSON body in, the JSON result out (`f(event)`, SeBS's `handler`).
    #[default]
    Event,
    /// As HTTP: method, path, query, headers and raw body in; status, headers, body out (a
    /// WSGI or ASGI app).
    Http,
}

/// The variable naming the module of an OpenLambda function (default `f.py`).
pub const OL_ENTRY_FILE: &str = "OL_ENTRY_FILE";
/// The variable naming a WSGI app in that module.
pub const OL_WSGI_ENTRY: &str = "OL_WSGI_ENTRY";
/// The variable naming an ASGI app in that module.
pub const OL_ASGI_ENTRY: &str = "OL_ASGI_ENTRY";
/// The module of an OpenLambda function without `OL_ENTRY_FILE`.
pub const DEFAULT_ENTRY_FILE: &str = "f.py";

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
    /// HTTP methods `/run/<name>` accepts; empty (or `*` among them) means any.
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

impl FunctionConfig {
    /// Whether `/run/<name>` accepts `method`.
    pub fn allows_method(&self, method: &str) -> bool {
        self.methods.is_empty() || self.methods.iter().any(|m| m == "*" || m == method)
    }

    /// The module file OpenLambda imports: `OL_ENTRY_FILE`, or `f.py`.
    pub fn entry_file(&self) -> &str {
        self.environment
            .get(OL_ENTRY_FILE)
            .map_or(DEFAULT_ENTRY_FILE, String::as_str)
    }

    /// The WSGI and ASGI app names the environment gives (empty values count as unset, as in
    /// OpenLambda's runtime).
    pub fn web_entries(&self) -> (Option<&str>, Option<&str>) {
        let get = |k| {
            self.environment
                .get(k)
                .map(String::as_str)
                .filter(|v| !v.is_empty())
        };
        (get(OL_WSGI_ENTRY), get(OL_ASGI_ENTRY))
    }

    /// Checks the entry variables' form: the entry file is a module at the function's top
    /// level (`<identifier>.py`), the app names are identifiers.
    pub fn check_entry(&self) -> Result<(), String> {
        let file = self.entry_file();
        if !file.strip_suffix(".py").is_some_and(is_python_identifier) {
            return Err(format!(
                "{OL_ENTRY_FILE} `{}` must name a module at the function's top level, such as `main.py`",
                crate::echo::echo(file)
            ));
        }
        let (wsgi, asgi) = self.web_entries();
        for (var, name) in [(OL_WSGI_ENTRY, wsgi), (OL_ASGI_ENTRY, asgi)] {
            if let Some(name) = name.filter(|n| !is_python_identifier(n)) {
                return Err(format!(
                    "{var} `{}` is not a Python name",
                    crate::echo::echo(name)
                ));
            }
        }
        Ok(())
    }
}

/// Whether `s` is an ASCII Python identifier.
fn is_python_identifier(s: &str) -> bool {
    let mut chars = s.chars();
    chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
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
        .map(|h| h.method.trim().to_ascii_uppercase())
        .collect::<Vec<_>>();
    if let Some(m) = methods
        .iter()
        .find(|m| m.as_str() != "*" && hyper::Method::from_bytes(m.as_bytes()).is_err())
    {
        return Err(format!(
            "ol.yaml: `{}` is not an HTTP method",
            crate::echo::echo(m)
        ));
    }
    Ok(FunctionConfig {
        memory_mb: c.memory_mb,
        timeout_secs: c.timeout_secs,
        network: c.network,
        environment,
        methods,
        nosql_tables: nosql_tables("ol.yaml", c.nosql)?,
    })
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn with_env(pairs: &[(&str, &str)]) -> FunctionConfig {
        FunctionConfig {
            environment: pairs
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            ..FunctionConfig::default()
        }
    }

    #[test]
    fn methods() {
        let mut c = FunctionConfig::default();
        assert!(c.allows_method("PUT"), "no triggers: every method");
        c.methods = vec!["GET".into(), "POST".into()];
        assert!(c.allows_method("GET") && !c.allows_method("PUT"));
        c.methods.push("*".into());
        assert!(c.allows_method("PUT") && c.allows_method("PATCH"));
    }

    #[test]
    fn ol_yaml_methods_and_entries() {
        let d = tempfile::tempdir().unwrap();
        let path = d.path().join("ol.yaml");
        std::fs::write(
            &path,
            "triggers:\n  http:\n    - method: get\n    - method: \"*\"\nenvironment:\n  OL_ENTRY_FILE: main.py\n  OL_WSGI_ENTRY: my_wsgi_app\n",
        )
        .unwrap();
        let c = ol_config(&path).unwrap();
        assert_eq!(c.methods, ["GET", "*"]);
        assert_eq!(c.entry_file(), "main.py");
        assert_eq!(c.web_entries(), (Some("my_wsgi_app"), None));
        assert!(c.check_entry().is_ok());
        std::fs::write(&path, "triggers:\n  http:\n    - method: \"GE T\"\n").unwrap();
        assert!(ol_config(&path).unwrap_err().contains("not an HTTP method"));
    }

    #[test]
    fn entry_variables_are_checked() {
        assert_eq!(FunctionConfig::default().entry_file(), "f.py");
        assert_eq!(FunctionConfig::default().web_entries(), (None, None));
        assert_eq!(with_env(&[(OL_ASGI_ENTRY, "")]).web_entries(), (None, None));
        for bad in [
            "main", "../x.py", "/abs.py", "a/b.py", "1x.py", ".py", "a-b.py",
        ] {
            let e = with_env(&[(OL_ENTRY_FILE, bad)]).check_entry().unwrap_err();
            assert!(e.contains(OL_ENTRY_FILE), "{bad}: {e}");
        }
        let e = with_env(&[(OL_ASGI_ENTRY, "app.x")])
            .check_entry()
            .unwrap_err();
        assert!(e.contains("OL_ASGI_ENTRY `app.x`"), "{e}");
        assert!(
            with_env(&[(OL_ENTRY_FILE, "_main2.py"), (OL_ASGI_ENTRY, "api")])
                .check_entry()
                .is_ok()
        );
    }
}
