//! The worker's start methods behind the pool's [`Starter`] seam: cold and switch starts from
//! [`Instances`], fork starts from [`Zygotes`] (a zygote that cannot fork is discarded, and
//! recreated on the next need), and the refills of seeds and spare sandboxes that follow.

use crate::instance::{Instance, Instances, InvokeError, Reply};
use crate::pool::{PooledInstance, Starter};
use crate::registry::FunctionVersion;
use crate::sandboxes::{FunctionLimits, StartError};
use crate::zygote::host::Within;
use crate::zygote::{ForkError, Forked, Zygotes};
use kindling_sandbox::cgroup::CgroupError;
use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Cold starts and fork starts on this worker's sandboxes and zygotes.
pub struct Starts {
    pub instances: Arc<Instances>,
    pub zygotes: Arc<Zygotes>,
}

impl Starter for Starts {
    type Instance = Instance;

    fn forks(&self) -> bool {
        self.zygotes.config.enabled
    }

    /// Forked from the function's zygote when the sandbox lies within its pid namespace (made
    /// within it or a zygote below it: functions sharing packages), else exec'd in it.
    fn switch(
        &self,
        previous: Instance,
        function: &Arc<FunctionVersion>,
        limits: &FunctionLimits,
    ) -> Result<Instance, StartError> {
        let zygote = self
            .forks()
            .then(|| self.zygotes.acquire(function).ok())
            .flatten()
            .filter(|z| self.zygotes.reaches(z, &previous));
        let clean = self.instances.repurpose(previous, function, limits)?;
        match zygote {
            Some(z) => {
                let (id, sandbox, _) = clean;
                self.zygotes
                    .fork_into(&z, Within::new(id, sandbox), function, limits)
                    .map_err(|e| {
                        if matches!(e, ForkError::Io(_) | ForkError::Zygote(_)) {
                            self.zygotes.discard(&z);
                        }
                        match e {
                            ForkError::Create(e) => e,
                            other => StartError::SwitchFork(crate::error_chain(&other)),
                        }
                    })
            }
            None => self.instances.exec_in(clean, function, limits),
        }
    }

    fn forks_into(&self, function: &FunctionVersion, previous: &Instance) -> bool {
        self.zygotes
            .ready_for(function)
            .is_some_and(|z| self.zygotes.reaches(&z, previous))
    }

    fn memory_usage(&self) -> u64 {
        self.zygotes.memory_usage()
    }

    fn shed(&self) -> bool {
        self.zygotes.shed()
    }

    fn cold(
        &self,
        function: &Arc<FunctionVersion>,
        limits: &FunctionLimits,
    ) -> Result<Instance, StartError> {
        self.instances.cold_start(function, limits)
    }

    fn fork(
        &self,
        function: &Arc<FunctionVersion>,
        limits: &FunctionLimits,
    ) -> Result<(Instance, Forked), ForkError> {
        let z = self.zygotes.acquire(function)?;
        self.zygotes
            .fork_start(&z, function, limits)
            .inspect_err(|e| {
                // A zygote that cannot fork is replaced on the next need.
                if matches!(e, ForkError::Io(_) | ForkError::Zygote(_)) {
                    self.zygotes.discard(&z);
                }
            })
    }

    fn replenish(&self, learned: Option<(Forked, Vec<String>)>) {
        self.zygotes.schedule_refill(learned);
    }

    fn background_pending(&self) -> usize {
        self.zygotes.refills_pending()
    }
}

impl PooledInstance for Instance {
    fn id(&self) -> &str {
        &self.id
    }

    fn version(&self) -> &str {
        &self.function.hash
    }

    fn last_used(&self) -> Instant {
        self.last_used
    }

    fn invoke(
        &mut self,
        request_id: &str,
        event: &[u8],
        timeout: Duration,
    ) -> impl Future<Output = Result<Reply, InvokeError>> + Send {
        Instance::invoke(self, request_id, event, timeout)
    }

    fn take_loaded_modules(&mut self) -> Vec<String> {
        Instance::take_loaded_modules(self)
    }

    fn memory_usage(&self) -> Option<u64> {
        Instance::memory_usage(self)
    }

    fn network(&self) -> bool {
        Instance::network(self)
    }

    fn is_frozen(&self) -> bool {
        Instance::is_frozen(self)
    }

    fn set_frozen(&mut self, frozen: bool) -> Result<(), CgroupError> {
        Instance::set_frozen(self, frozen)
    }

    fn destroy(self) {
        Instance::destroy(self)
    }
}
