//! What the API asks of the worker, as commands on [`Worker`]: invoke, deploy and remove
//! functions, manage the package store, report status and counters. The policy behind a reply
//! lives here (request ids, limits, pool invalidation on deploy, package GC, the lifecycle
//! state), so that `api` only parses requests and writes replies. Replies are `kindling_api`
//! types; failures are the worker's own errors, which `api` maps to statuses.

use crate::daemon::{DeployError, Worker};
use crate::instance::InstanceLayout;
use crate::logs::{LogError, Tail};
use crate::nosql::store::{Declared, Item};
use crate::nosql::table::{Declaration, KeyValue, Owner, TableName, TableSpec};
use crate::nosql::NosqlError;
use crate::packages::{EnsureStats, PackageError, PackageRef};
use crate::pool::{Outcome, PoolError, StartPolicy};
use crate::registry::{Deployed, FunctionVersion, RegistryError};
use kindling_api::types as api;
use kindling_api::WorkerState;
use std::sync::atomic::{AtomicU64, AtomicU8, Ordering};
use std::sync::Arc;
use tracing::Instrument;

/// The worker's lifecycle state: `starting` until the API serves, `ready`, then `draining`
/// from the shutdown signal on (new requests get 503).
#[derive(Debug)]
pub struct Lifecycle(AtomicU8);

impl Default for Lifecycle {
    fn default() -> Self {
        Self(AtomicU8::new(WorkerState::Starting as u8))
    }
}

impl Lifecycle {
    pub fn get(&self) -> WorkerState {
        match self.0.load(Ordering::SeqCst) {
            s if s == WorkerState::Starting as u8 => WorkerState::Starting,
            s if s == WorkerState::Ready as u8 => WorkerState::Ready,
            _ => WorkerState::Draining,
        }
    }

    /// Moves on to `to`; the state never goes back (a draining worker stays draining).
    pub fn advance(&self, to: WorkerState) {
        self.0.fetch_max(to as u8, Ordering::SeqCst);
    }
}

/// An invocation that reached an instance, under the id the worker gave it.
#[derive(Debug)]
pub struct Invocation {
    pub request_id: String,
    pub outcome: Outcome,
}

static REQUEST_COUNTER: AtomicU64 = AtomicU64::new(0);

impl Worker {
    /// A new request id: microseconds since start (low 32 bits) and a sequence number, in hex.
    fn next_request_id(&self) -> String {
        format!(
            "{:x}-{:x}",
            self.started.elapsed().as_micros() & 0xffff_ffff,
            REQUEST_COUNTER.fetch_add(1, Ordering::Relaxed)
        )
    }

    /// The deployed version of function `name`.
    pub fn function(&self, name: &str) -> Result<Arc<FunctionVersion>, RegistryError> {
        crate::registry::validate_name(name)?;
        self.registry
            .get(name)
            .ok_or_else(|| RegistryError::NotFound(name.to_string()))
    }

    /// Runs one invocation of `function` with `event` (JSON) under its limits, in a span that
    /// carries its request id and function name.
    pub async fn invoke(
        &self,
        function: &Arc<FunctionVersion>,
        event: &[u8],
        policy: StartPolicy,
    ) -> Result<Invocation, PoolError> {
        let request_id = self.next_request_id();
        let span =
            tracing::info_span!("invoke", request_id = %request_id, function = %function.name);
        let limits = self.limits_for(function);
        let outcome = self
            .pool
            .invoke(function, &limits, &request_id, event, policy)
            .instrument(span.clone())
            .await;
        match outcome {
            Ok(outcome) => Ok(Invocation {
                request_id,
                outcome,
            }),
            Err(e) => {
                if matches!(e, PoolError::Start(_)) {
                    span.in_scope(|| {
                        tracing::error!("cannot start sandbox: {}", crate::error_chain(&e))
                    });
                }
                Err(e)
            }
        }
    }

    /// Deploys a function (blocking) and, when its code changed, puts the new version in
    /// service: idle instances of the old one go.
    pub fn deploy_function(
        &self,
        name: &str,
        tar_gz: &[u8],
        progress: &(dyn Fn(String) + Sync),
    ) -> Result<api::Deployed, DeployError> {
        match self.deploy(name, tar_gz, progress) {
            Ok((d, stats)) => {
                if d.changed {
                    self.pool.invalidate(name);
                    self.metrics.add("deploys", 1);
                    tracing::info!(function = name, hash = %&d.version.hash[..12], installed = stats.installed.len(), "deployed");
                }
                Ok(deployed(&d, stats))
            }
            Err(e) => {
                self.metrics.add("deploys.failed", 1);
                Err(e)
            }
        }
    }

    /// The NoSQL store, if NoSQL is on.
    fn nosql_store(&self) -> Result<&crate::nosql::Store, NosqlError> {
        self.nosql
            .as_ref()
            .map(|s| s.store().as_ref())
            .ok_or(NosqlError::Disabled)
    }

    /// A function's NoSQL tables with what each holds (blocking).
    pub fn nosql_tables(&self, function: &str) -> Result<api::NosqlTables, NosqlError> {
        let owner = Owner::parse(function)?;
        let tables = self.nosql_store()?.table_usage(&owner)?;
        Ok(api::NosqlTables {
            function: function.to_string(),
            tables: tables
                .into_iter()
                .map(|(d, used)| api::NosqlTable {
                    table: d.table.as_str().to_string(),
                    primary_key: d.spec.primary_key.as_str().to_string(),
                    secondary_key: d.spec.secondary_key.as_str().to_string(),
                    items: used.items,
                    bytes: used.bytes,
                })
                .collect(),
        })
    }

    /// Declares a function's NoSQL table (blocking); the function need not be deployed.
    pub fn nosql_declare(
        &self,
        function: &str,
        table: &str,
        keys: &api::TableKeys,
    ) -> Result<api::TableDeclared, NosqlError> {
        let owner = Owner::parse(function)?;
        let decl = Declaration {
            table: TableName::parse(table)?,
            spec: TableSpec::new(&keys.primary_key, &keys.secondary_key)?,
        };
        let declared = match self.nosql_store()?.declare(&owner, &decl)? {
            Declared::Created => api::Declared::Created,
            Declared::Unchanged => api::Declared::Unchanged,
            Declared::Rekeyed => api::Declared::Rekeyed,
        };
        tracing::info!(function, table, ?declared, "NoSQL table declared");
        Ok(api::TableDeclared {
            function: function.to_string(),
            table: table.to_string(),
            declared,
        })
    }

    /// Drops a function's NoSQL table and its items (blocking).
    pub fn nosql_drop(&self, function: &str, table: &str) -> Result<api::TableDropped, NosqlError> {
        let owner = Owner::parse(function)?;
        let items = self.nosql_store()?.drop_table(&owner, table)?;
        tracing::info!(function, table, items, "NoSQL table dropped");
        Ok(api::TableDropped {
            table: table.to_string(),
            items,
        })
    }

    /// Stores items in a function's NoSQL table, all or none (blocking).
    pub fn nosql_load(
        &self,
        function: &str,
        table: &str,
        items: Vec<Item>,
    ) -> Result<api::ItemsLoaded, NosqlError> {
        let owner = Owner::parse(function)?;
        let loaded = self.nosql_store()?.load(&owner, table, items)?;
        Ok(api::ItemsLoaded { loaded })
    }

    /// The items of a function's NoSQL table, or those of one primary key value (blocking).
    pub fn nosql_items(
        &self,
        function: &str,
        table: &str,
        primary: Option<&KeyValue>,
    ) -> Result<api::NosqlItems, NosqlError> {
        let owner = Owner::parse(function)?;
        let items = self.nosql_store()?.read(&owner, table, primary)?;
        Ok(api::NosqlItems { items })
    }

    /// Removes a function; its idle instances go.
    pub fn remove_function(&self, name: &str) -> Result<api::Removed, RegistryError> {
        self.registry.remove(name)?;
        self.pool.invalidate(name);
        Ok(api::Removed {
            removed: name.to_string(),
        })
    }

    /// Every deployed function.
    pub fn functions(&self) -> Vec<api::Function> {
        self.registry
            .list()
            .iter()
            .map(|f| function_reply(f))
            .collect()
    }

    /// A deployed function and how its instances are laid out.
    pub fn function_detail(&self, name: &str) -> Result<api::FunctionDetail, RegistryError> {
        let f = self.function(name)?;
        Ok(api::FunctionDetail {
            function: function_reply(&f),
            instance: layout_reply(self.instance_layout(&f)),
        })
    }

    /// The package store's packages with the functions using each.
    pub fn stored_packages(&self) -> Vec<api::StoredPackage> {
        let users = self.package_users();
        self.packages
            .list()
            .into_iter()
            .map(|p| {
                let key = format!("{}=={}", p.name, p.version);
                api::StoredPackage {
                    users: users.get(&key).cloned().unwrap_or_default(),
                    name: p.name,
                    version: p.version,
                    size_bytes: p.size_bytes,
                }
            })
            .collect()
    }

    /// Removes one package, refused while a deployed function uses it.
    pub fn remove_package(&self, pkg: &PackageRef) -> Result<api::Removed, PackageError> {
        let users = self.package_users().remove(&pkg.key()).unwrap_or_default();
        self.packages.remove(pkg, users)?;
        Ok(api::Removed { removed: pkg.key() })
    }

    /// Removes every package no deployed function uses.
    pub fn collect_packages(&self) -> api::PackagesGc {
        let users = self.package_users();
        let mut gc = api::PackagesGc::default();
        for p in self.packages.list() {
            let pkg = PackageRef {
                name: p.name.clone(),
                version: p.version.clone(),
                source: None,
            };
            if users.contains_key(&pkg.key()) {
                continue;
            }
            if self.packages.remove(&pkg, Vec::new()).is_ok() {
                gc.bytes_freed += p.size_bytes;
                gc.removed.push(pkg.key());
            }
        }
        gc
    }

    /// The last `lines` lines of a function's log (none yet for a deployed function that has
    /// written nothing), and where to follow it from.
    pub fn log_tail(&self, name: &str, lines: usize) -> Result<Tail, LogError> {
        match self.logs.tail(name, lines) {
            Err(LogError::NotFound(_)) if self.registry.get(name).is_some() => Ok(Tail {
                text: Vec::new(),
                lines: 0,
                from: self.logs.follower(name),
            }),
            other => other,
        }
    }

    /// `/status`; for callers without the admin token, only the state, version and uptime.
    pub fn status_report(&self, admin: bool) -> api::Status {
        let detail = admin.then(|| api::StatusDetail {
            root: self.config.root.clone(),
            base: self.base.info.clone(),
            rootfs: self.base.rootfs.clone(),
            storage_dir: self
                .storage
                .as_ref()
                .and_then(|s| s.backend().local_dir())
                .map(|d| d.to_path_buf()),
            cgroups: self.cgroup_layout.clone(),
            freezer: self.freezer.to_string(),
            functions: self.registry.list().len(),
            sandboxes: self.pool.live_sandboxes(),
            idle_instances: self.pool.idle_instances(),
            connections: self.connections.open(),
            zygotes: self.zygotes.describe(),
        });
        api::Status {
            status: self.state.get(),
            version: env!("CARGO_PKG_VERSION").to_string(),
            uptime_secs: self.started.elapsed().as_secs(),
            detail,
        }
    }

    /// The gauges of `/stats` and `/metrics`, read now.
    pub fn gauges(&self) -> Vec<(&'static str, u64)> {
        use kindling_api::types::stats::*;
        vec![
            (SANDBOXES_LIVE, self.pool.live_sandboxes() as u64),
            (INSTANCES_IDLE, self.pool.idle_instances() as u64),
            (ZYGOTES_LIVE, self.zygotes.count() as u64),
            (SANDBOXES_ZYGOTE, self.zygotes.sandboxes() as u64),
            (SANDBOXES_POOLED, self.zygotes.pooled() as u64),
            (SANDBOXES_SEEDED, self.zygotes.seeded() as u64),
            (BACKGROUND_PENDING, self.pool.background_pending() as u64),
            (FUNCTIONS, self.registry.list().len() as u64),
            (HTTP_CONNECTIONS, self.connections.open() as u64),
        ]
    }

    /// `/stats`: counters, mean latencies, gauges and the package store's counts.
    pub fn stats(&self) -> api::Stats {
        use kindling_api::types::stats::{PACKAGE_PULLS, PACKAGE_STORE_HITS};
        let mut gauges = self.gauges();
        gauges.push((PACKAGE_PULLS, self.packages.pulls.load(Ordering::Relaxed)));
        gauges.push((
            PACKAGE_STORE_HITS,
            self.packages.hits.load(Ordering::Relaxed),
        ));
        self.metrics.stats(&gauges)
    }

    /// `/metrics`: the Prometheus (OpenMetrics) text.
    pub fn metrics_text(&self) -> String {
        self.metrics.exposition(&self.gauges())
    }
}

/// A deploy as the API reports it.
fn deployed(d: &Deployed, stats: EnsureStats) -> api::Deployed {
    api::Deployed {
        name: d.version.name.clone(),
        hash: d.version.hash.clone(),
        format: format_reply(d.version.format),
        changed: d.changed,
        packages: d
            .version
            .lock
            .packages
            .iter()
            .map(PackageRef::key)
            .collect(),
        installed: stats.installed,
        store_hits: stats.hits,
        bytes_added: stats.bytes_added,
        package_ms: stats.package_ms,
    }
}

fn format_reply(f: crate::function_config::Format) -> api::Format {
    match f {
        crate::function_config::Format::OpenLambda => api::Format::OpenLambda,
        crate::function_config::Format::Sebs => api::Format::Sebs,
    }
}

/// A deployed version as the API reports it (environment variables by name only).
fn function_reply(f: &FunctionVersion) -> api::Function {
    api::Function {
        name: f.name.clone(),
        hash: f.hash.clone(),
        format: format_reply(f.format),
        config: api::FunctionConfig {
            memory_mb: f.config.memory_mb,
            timeout_secs: f.config.timeout_secs,
            network: f.config.network,
            environment: f.config.environment.keys().cloned().collect(),
            methods: f.config.methods.clone(),
        },
        lock: api::Lock {
            packages: f
                .lock
                .packages
                .iter()
                .map(|p| api::Package {
                    name: p.name.clone(),
                    version: p.version.clone(),
                    source: p.source.clone(),
                })
                .collect(),
            site_packages: f.lock.site_packages.clone(),
            requires: f.lock.requires.clone(),
        },
        imports: f.imports.clone(),
    }
}

/// An instance layout as the API reports it.
fn layout_reply(l: InstanceLayout) -> api::InstanceLayout {
    use kindling_sandbox::spec::MountSpec;
    api::InstanceLayout {
        interpreter: l.interpreter,
        mounts: l
            .mounts
            .into_iter()
            .map(|m| match m {
                MountSpec::Bind {
                    source,
                    target,
                    writable,
                } => api::Mount::Bind {
                    source,
                    target,
                    writable,
                },
                MountSpec::Tmpfs { target, size_bytes } => api::Mount::Tmpfs { target, size_bytes },
                MountSpec::Proc { target } => api::Mount::Proc { target },
                MountSpec::Dev { target } => api::Mount::Dev { target },
                MountSpec::Packages {
                    store,
                    target,
                    keys,
                } => api::Mount::Packages {
                    store,
                    target,
                    keys,
                },
            })
            .collect(),
        env: l.env,
        cwd: l.cwd,
        uid: l.uid,
        gid: l.gid,
        limits: api::Limits {
            memory_bytes: l.limits.memory_bytes,
            cpu_cores: l.limits.cpu_cores,
            pids: l.limits.pids,
        },
        network: l.network,
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn lifecycle_only_moves_forward() {
        let l = Lifecycle::default();
        assert_eq!(l.get(), WorkerState::Starting);
        l.advance(WorkerState::Ready);
        assert_eq!(l.get(), WorkerState::Ready);
        l.advance(WorkerState::Draining);
        l.advance(WorkerState::Ready);
        assert_eq!(l.get(), WorkerState::Draining);
    }

    /// The typed reply of a function is what the worker used to serialize from its own type.
    #[test]
    fn function_reply_keeps_the_wire_format() {
        let mut f = FunctionVersion {
            name: "f".into(),
            hash: "ab12".into(),
            format: crate::function_config::Format::Sebs,
            dir: "/x".into(),
            config: Default::default(),
            lock: Default::default(),
            imports: vec!["numpy".into()],
        };
        f.config.memory_mb = Some(128);
        f.config.environment.insert("SECRET".into(), "value".into());
        f.config.methods = vec!["POST".into()];
        f.lock.packages.push(PackageRef {
            name: "six".into(),
            version: "1.16.0".into(),
            source: None,
        });
        f.lock.site_packages.push("six==1.16.0".into());
        f.lock.requires.insert("six".into(), vec![]);
        let old = serde_json::to_value(&f).unwrap();
        let new = serde_json::to_value(function_reply(&f)).unwrap();
        assert_eq!(old, new);
        assert!(!new.to_string().contains("value"), "{new}");
    }

    /// Likewise the instance layout.
    #[test]
    fn layout_reply_keeps_the_wire_format() {
        use kindling_sandbox::spec::MountSpec;
        let l = InstanceLayout {
            interpreter: vec!["/usr/bin/python3".into(), "-S".into()],
            mounts: vec![
                MountSpec::Bind {
                    source: "/srv/f".into(),
                    target: "/handler".into(),
                    writable: false,
                },
                MountSpec::Tmpfs {
                    target: "/tmp".into(),
                    size_bytes: 1 << 20,
                },
                MountSpec::Proc {
                    target: "/proc".into(),
                },
                MountSpec::Dev {
                    target: "/dev".into(),
                },
                MountSpec::Packages {
                    store: "/store".into(),
                    target: "/packages".into(),
                    keys: vec!["six==1.16.0".into()],
                },
            ],
            env: vec![("A".into(), Some("1".into())), ("B".into(), None)],
            cwd: "/handler".into(),
            uid: 1000,
            gid: 1000,
            limits: kindling_sandbox::cgroup::Limits {
                memory_bytes: Some(1 << 27),
                cpu_cores: Some(0.5),
                pids: None,
            },
            network: false,
        };
        let old = serde_json::to_value(&l).unwrap();
        let new = serde_json::to_value(layout_reply(l)).unwrap();
        assert_eq!(old, new);
    }
}
