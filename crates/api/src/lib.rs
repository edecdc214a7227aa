//! The worker's HTTP API shared by the worker and its clients (the CLI, the benchmarks and the
//! end-to-end tests): what lives on the wire ([`types`], [`error`], [`StartMethod`]), and the one
//! client that speaks it ([`client`]). `docs/api/openapi.yaml` describes the same API.

pub mod client;
pub mod error;
pub mod types;

pub use error::{ApiError, ErrorKind};
pub use hyper::{Method, StatusCode};
pub use types::*;

/// The admin token's file name under the worker's root.
pub const TOKEN_FILE: &str = "token";

use serde::{Deserialize, Serialize};

/// How an invocation got its instance (DESIGN.md's start methods), as the worker reports it in
/// `X-Kindling-Start` and as a caller may force it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum StartMethod {
    /// An idle instance of the same function version.
    Warm,
    /// An idle sandbox of another function, purged and given to this one.
    Switch,
    /// A new sandbox whose instance is forked from a zygote.
    Fork,
    /// A new sandbox and a fresh interpreter.
    Cold,
}

impl StartMethod {
    /// Every start method.
    pub const ALL: [StartMethod; 4] = [
        StartMethod::Warm,
        StartMethod::Switch,
        StartMethod::Fork,
        StartMethod::Cold,
    ];

    /// The name on the wire (`X-Kindling-Start`, `/stats` keys, reports).
    pub fn as_str(self) -> &'static str {
        match self {
            StartMethod::Warm => "warm",
            StartMethod::Switch => "switch",
            StartMethod::Fork => "fork",
            StartMethod::Cold => "cold",
        }
    }
}

impl std::fmt::Display for StartMethod {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::str::FromStr for StartMethod {
    type Err = UnknownStartMethod;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        StartMethod::ALL
            .into_iter()
            .find(|m| m.as_str().eq_ignore_ascii_case(s.trim()))
            .ok_or_else(|| UnknownStartMethod(s.chars().take(64).collect()))
    }
}

/// A start method name that is none of [`StartMethod::ALL`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UnknownStartMethod(pub String);

impl std::fmt::Display for UnknownStartMethod {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "unknown start method {:?} (expected warm, switch, fork or cold)",
            self.0
        )
    }
}

impl std::error::Error for UnknownStartMethod {}
