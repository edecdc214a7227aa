//! Kindling's sandbox library: namespaces, cgroups, mounts, seccomp and the processes that hold
//! them (the spawner and the per-sandbox init). It knows nothing of HTTP or functions; the worker
//! describes a sandbox with a [`spec::SandboxSpec`] and gets back descriptors to talk to it.
//!
//! All of Kindling's `unsafe` code lives in this crate, most of it in its private `sys` module;
//! the worker uses the operations above it (processes by pidfd, descriptor-passing channels,
//! mounts), never a system call.

pub mod cgroup;
pub mod channel;
pub mod control;
pub mod init;
pub mod mount;
pub mod net;
pub mod peer;
pub mod process;
pub mod purge;
pub mod rootfs;
pub mod seccomp;
pub mod spawner;
pub mod spec;
pub mod stdio;
pub(crate) mod sys;
pub mod working_set;
