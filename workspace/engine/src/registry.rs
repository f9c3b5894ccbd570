//! The registry: which workflow runs which operation kind, and which host clusters a
//! vcluster may name (`spec.host`), so accept refuses an unknown host before anything is
//! written, and the chart version a new vcluster gets when its spec names none.

use crate::model::WorkflowDef;
use ovc_driver::DEFAULT_VCLUSTER_VERSION;
use ovc_driver::router::{DEFAULT_HOST, unknown_host};
use ovc_types::error::Status;
use ovc_types::state::OperationKind;
use std::collections::{BTreeSet, HashMap};

/// Workflows by operation kind, and the known host names.
#[derive(Debug, Clone)]
pub struct Registry {
    workflows: HashMap<OperationKind, WorkflowDef>,
    hosts: BTreeSet<String>,
    default_vcluster_version: String,
}

impl Default for Registry {
    /// No workflows; one host, [`DEFAULT_HOST`].
    fn default() -> Self {
        Self {
            workflows: HashMap::new(),
            hosts: BTreeSet::from([DEFAULT_HOST.to_string()]),
            default_vcluster_version: DEFAULT_VCLUSTER_VERSION.to_string(),
        }
    }
}

impl Registry {
    /// An empty registry (one host, [`DEFAULT_HOST`]).
    pub fn new() -> Self {
        Self::default()
    }

    /// Registers `def` for its kind (replacing any earlier one).
    pub fn register(&mut self, def: WorkflowDef) -> &mut Self {
        self.workflows.insert(def.kind, def);
        self
    }

    /// The workflow for `kind`.
    pub fn get(&self, kind: OperationKind) -> Option<&WorkflowDef> {
        self.workflows.get(&kind)
    }

    /// The same registry with `hosts` as the known host names (those of the process's
    /// `ovc_driver::router::HostRouter`), replacing the default one.
    pub fn with_hosts(mut self, hosts: impl IntoIterator<Item = String>) -> Self {
        self.hosts = hosts.into_iter().collect();
        self
    }

    /// The same registry with `version` as the chart version a create without
    /// `spec.vcluster_version` gets (`--vcluster-version`).
    pub fn with_default_vcluster_version(mut self, version: impl Into<String>) -> Self {
        self.default_vcluster_version = version.into();
        self
    }

    /// The chart version a create without `spec.vcluster_version` gets.
    pub fn default_vcluster_version(&self) -> &str {
        &self.default_vcluster_version
    }

    /// The known host names, sorted.
    pub fn hosts(&self) -> impl Iterator<Item = &str> {
        self.hosts.iter().map(String::as_str)
    }

    /// `Ok` when `host` is known; else INVALID_ARGUMENT `UNKNOWN_HOST` naming the known
    /// hosts.
    pub fn check_host(&self, host: &str) -> Result<(), Status> {
        if self.hosts.contains(host) {
            return Ok(());
        }
        Err(unknown_host(
            host,
            &self.hosts.iter().cloned().collect::<Vec<_>>(),
        ))
    }
}
