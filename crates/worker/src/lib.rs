//! The Kindling worker: function registry, sandbox pool, scheduler and HTTP API. It knows
//! nothing of system calls; sandboxes come from `kindling-sandbox`.

pub mod api;
pub mod archive;
pub mod auth;
pub mod base;
pub mod config;
pub mod daemon;
pub mod http;
pub mod instance;
pub mod metrics;
pub mod packages;
pub mod pool;
pub mod registry;
pub mod runtime;
pub mod storage;
pub mod zygote;
