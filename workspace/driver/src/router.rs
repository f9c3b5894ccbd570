//! Several host clusters behind one [`HostDriver`]: [`HostRouter`] holds one driver per
//! configured host name and sends every call to the driver of its [`Target::host`].
//!
//! The engine and the API hold one `Arc<dyn HostDriver>`; with the router that one
//! driver may stand for several clusters (a kubeconfig context each), and a vcluster's
//! `spec.host` picks which. A process given no named hosts has one, named
//! [`DEFAULT_HOST`]. A target naming a host the router does not know is refused with a
//! permanent INVALID_ARGUMENT (`UNKNOWN_HOST`) before any host is called; accept refuses
//! such a spec earlier still, with [`HostRouter::names`] as the known hosts.

use crate::{
    BackingStoreSink, BackingStoreSource, CallCtx, ControlPlaneStatus, DriverError, DriverResult,
    HostDriver, NamespaceOutcome, Owner, ReleaseInfo, ReleaseValues, Target,
};
use async_trait::async_trait;
use ovc_types::error::Status;
use ovc_types::name::{NameError, validate_host_name};
pub use ovc_types::spec::DEFAULT_HOST;
use std::collections::BTreeMap;
use std::sync::Arc;

/// Why a host could not be added to a [`HostRouter`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HostConfigError {
    /// The name is not a DNS-1123 label.
    #[error("host name {name:?}: {source}")]
    InvalidName {
        /// The name given.
        name: String,
        /// What is wrong with it.
        source: NameError,
    },
    /// The name was given before.
    #[error("host {0:?} is configured twice")]
    Duplicate(String),
}

/// One [`HostDriver`] per host name; itself a [`HostDriver`] that dispatches by
/// [`Target::host`].
#[derive(Clone, Default)]
pub struct HostRouter {
    hosts: BTreeMap<String, Arc<dyn HostDriver>>,
}

impl std::fmt::Debug for HostRouter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_map().entries(self.hosts.iter()).finish()
    }
}

impl HostRouter {
    /// A router without hosts (add them with [`HostRouter::add`]).
    pub fn new() -> Self {
        Self::default()
    }

    /// A router with `driver` as its one host, [`DEFAULT_HOST`].
    pub fn single(driver: Arc<dyn HostDriver>) -> Self {
        let mut hosts = BTreeMap::new();
        hosts.insert(DEFAULT_HOST.to_string(), driver);
        Self { hosts }
    }

    /// Adds `driver` as host `name` (a DNS-1123 label, not added before).
    pub fn add(
        &mut self,
        name: impl Into<String>,
        driver: Arc<dyn HostDriver>,
    ) -> Result<&mut Self, HostConfigError> {
        let name = name.into();
        validate_host_name(&name).map_err(|source| HostConfigError::InvalidName {
            name: name.clone(),
            source,
        })?;
        if self.hosts.contains_key(&name) {
            return Err(HostConfigError::Duplicate(name));
        }
        self.hosts.insert(name, driver);
        Ok(self)
    }

    /// The known host names, sorted.
    pub fn names(&self) -> Vec<String> {
        self.hosts.keys().cloned().collect()
    }

    /// The driver of host `name`.
    pub fn get(&self, name: &str) -> Option<&Arc<dyn HostDriver>> {
        self.hosts.get(name)
    }

    /// The driver of `t`'s host, or the permanent INVALID_ARGUMENT `UNKNOWN_HOST`.
    fn route(&self, t: &Target) -> DriverResult<&dyn HostDriver> {
        match self.hosts.get(&t.host) {
            Some(d) => Ok(d.as_ref()),
            None => Err(DriverError::Permanent(unknown_host(&t.host, &self.names()))),
        }
    }
}

/// The INVALID_ARGUMENT for a host not among `known` (reason `UNKNOWN_HOST`), naming the
/// known ones.
pub fn unknown_host(host: &str, known: &[String]) -> Status {
    Status::invalid_argument(format!(
        "unknown host {host:?}: this service knows the hosts {}",
        known
            .iter()
            .map(|h| format!("{h:?}"))
            .collect::<Vec<_>>()
            .join(", ")
    ))
    .with_reason("UNKNOWN_HOST")
    .with_metadata("field", "spec.host")
}

#[async_trait]
impl HostDriver for HostRouter {
    async fn ensure_namespace(
        &self,
        ctx: &CallCtx,
        t: &Target,
        owner: &Owner,
    ) -> DriverResult<NamespaceOutcome> {
        self.route(t)?.ensure_namespace(ctx, t, owner).await
    }
    async fn delete_namespace(&self, ctx: &CallCtx, t: &Target) -> DriverResult<bool> {
        self.route(t)?.delete_namespace(ctx, t).await
    }
    async fn namespace_exists(&self, ctx: &CallCtx, t: &Target) -> DriverResult<bool> {
        self.route(t)?.namespace_exists(ctx, t).await
    }
    async fn install_release(
        &self,
        ctx: &CallCtx,
        t: &Target,
        values: &ReleaseValues,
    ) -> DriverResult<u32> {
        self.route(t)?.install_release(ctx, t, values).await
    }
    async fn release(&self, ctx: &CallCtx, t: &Target) -> DriverResult<Option<ReleaseInfo>> {
        self.route(t)?.release(ctx, t).await
    }
    async fn uninstall_release(&self, ctx: &CallCtx, t: &Target) -> DriverResult<()> {
        self.route(t)?.uninstall_release(ctx, t).await
    }
    async fn control_plane(
        &self,
        ctx: &CallCtx,
        t: &Target,
    ) -> DriverResult<Option<ControlPlaneStatus>> {
        self.route(t)?.control_plane(ctx, t).await
    }
    async fn pause_control_plane(&self, ctx: &CallCtx, t: &Target) -> DriverResult<u32> {
        self.route(t)?.pause_control_plane(ctx, t).await
    }
    async fn resume_control_plane(&self, ctx: &CallCtx, t: &Target) -> DriverResult<u32> {
        self.route(t)?.resume_control_plane(ctx, t).await
    }
    async fn workload_pods(&self, ctx: &CallCtx, t: &Target) -> DriverResult<Vec<String>> {
        self.route(t)?.workload_pods(ctx, t).await
    }
    async fn evict_workload_pods(&self, ctx: &CallCtx, t: &Target) -> DriverResult<u32> {
        self.route(t)?.evict_workload_pods(ctx, t).await
    }
    async fn reconcile_workloads(&self, ctx: &CallCtx, t: &Target) -> DriverResult<()> {
        self.route(t)?.reconcile_workloads(ctx, t).await
    }
    async fn kubeconfig(&self, ctx: &CallCtx, t: &Target) -> DriverResult<Option<String>> {
        self.route(t)?.kubeconfig(ctx, t).await
    }
    async fn health_check(&self, ctx: &CallCtx, t: &Target) -> DriverResult<bool> {
        self.route(t)?.health_check(ctx, t).await
    }
    async fn dump_backing_store(
        &self,
        ctx: &CallCtx,
        t: &Target,
        sink: &mut dyn BackingStoreSink,
    ) -> DriverResult<u64> {
        self.route(t)?.dump_backing_store(ctx, t, sink).await
    }
    async fn load_backing_store(
        &self,
        ctx: &CallCtx,
        t: &Target,
        source: &mut dyn BackingStoreSource,
    ) -> DriverResult<u64> {
        self.route(t)?.load_backing_store(ctx, t, source).await
    }
    async fn hold_new_control_plane(
        &self,
        ctx: &CallCtx,
        t: &Target,
        hold: bool,
    ) -> DriverResult<()> {
        self.route(t)?.hold_new_control_plane(ctx, t, hold).await
    }
}
