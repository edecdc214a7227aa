//! The Kindling worker: function registry, sandbox pool, scheduler and HTTP API. It knows
//! nothing of system calls; sandboxes come from `kindling-sandbox`.

pub mod api;
pub mod archive;
pub mod auth;
pub mod base;
pub mod bounds;
pub mod config;
pub mod daemon;
pub mod echo;
#[doc(hidden)]
pub mod fuzz;
pub mod http;
pub mod install_tree;
pub mod instance;
pub mod logs;
pub mod metrics;
pub mod network;
pub mod packages;
pub mod pool;
pub mod registry;
pub mod runtime;
pub mod s3;
pub mod storage;
pub mod tenants;
pub mod zygote;

/// An error with its sources, `outer: inner: ...`, for logs and response bodies.
pub fn error_chain(err: &dyn std::error::Error) -> String {
    let mut s = err.to_string();
    let mut cur = err.source();
    while let Some(e) = cur {
        s.push_str(": ");
        s.push_str(&e.to_string());
        cur = e.source();
    }
    s
}
