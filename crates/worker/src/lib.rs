//! The Kindling worker: function registry, package store, zygotes, the pool of instances and
//! its scheduling, and the HTTP API (module layering: docs/adr/0006-worker-layering.md). It knows
//! nothing of system calls; sandboxes come from `kindling-sandbox`.

pub mod api;
pub mod archive;
pub mod auth;
pub mod base;
pub mod bounds;
pub mod commands;
pub mod config;
pub mod daemon;
pub mod echo;
pub mod frame;
pub mod function_config;
#[doc(hidden)]
pub mod fuzz;
pub mod http;
pub mod install_tree;
pub mod instance;
pub mod layout;
pub mod lock;
pub mod logs;
pub mod metrics;
pub mod network;
pub mod nosql;
pub mod packages;
pub mod pool;
pub mod registry;
pub mod runtime;
pub mod s3;
pub mod sandboxes;
pub mod spares;
pub mod starts;
pub mod storage;
pub mod tenants;
pub mod unix_service;
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
