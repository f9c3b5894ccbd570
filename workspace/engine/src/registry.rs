//! The registry: which workflow runs which operation kind — and so which kinds exist,
//! the transition table (each workflow's [`CallRule`]), and the generated transports
//! (REST routes, CLI subcommands, `StartOperation`) — and which host clusters a vcluster
//! may name (`spec.host`), so accept refuses an unknown host before anything is written,
//! and the chart version a new vcluster gets when its spec names none.

use crate::model::WorkflowDef;
use crate::operation::OperationApi;
use ovc_driver::DEFAULT_VCLUSTER_VERSION;
use ovc_driver::router::{DEFAULT_HOST, unknown_host};
use ovc_types::error::Status;
use ovc_types::state::{CallRule, CallRules, OperationKind};
use std::collections::{BTreeMap, BTreeSet};

/// Workflows by operation kind, and the known host names.
#[derive(Debug, Clone)]
pub struct Registry {
    workflows: BTreeMap<OperationKind, WorkflowDef>,
    hosts: BTreeSet<String>,
    default_vcluster_version: String,
}

impl Default for Registry {
    /// No workflows; one host, [`DEFAULT_HOST`].
    fn default() -> Self {
        Self {
            workflows: BTreeMap::new(),
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
    ///
    /// # Panics
    /// When the kind is not a valid kind name, or another kind has the same REST route
    /// or CLI verb: a programming error of the workflow file, caught by any test.
    pub fn register(&mut self, def: WorkflowDef) -> &mut Self {
        assert!(
            OperationKind::is_valid_name(def.kind.as_str()),
            "workflow {}: {:?} is not a valid kind name",
            def.name,
            def.kind.as_str()
        );
        if let Some(api) = &def.api {
            for other in self.workflows.values().filter(|o| o.kind != def.kind) {
                if let Some(o) = &other.api {
                    assert!(
                        o.route != api.route && o.verb != api.verb,
                        "workflows {} and {} share a route or verb",
                        other.name,
                        def.name
                    );
                }
            }
        }
        self.workflows.insert(def.kind, def);
        self
    }

    /// The workflow for `kind`.
    pub fn get(&self, kind: OperationKind) -> Option<&WorkflowDef> {
        self.workflows.get(&kind)
    }

    /// The registered kind called `name` (user input: never mints a kind).
    pub fn kind(&self, name: &str) -> Option<OperationKind> {
        self.workflows.keys().find(|k| k.as_str() == name).copied()
    }

    /// The registered kinds, sorted.
    pub fn kinds(&self) -> impl Iterator<Item = OperationKind> + '_ {
        self.workflows.keys().copied()
    }

    /// The registered workflows, by kind.
    pub fn workflows(&self) -> impl Iterator<Item = &WorkflowDef> {
        self.workflows.values()
    }

    /// The operations with generated transports, by kind: their kind and transports.
    pub fn operations(&self) -> impl Iterator<Item = (OperationKind, &OperationApi)> {
        self.workflows
            .values()
            .filter_map(|d| d.api.as_ref().map(|a| (d.kind, a)))
    }

    /// The operation whose REST route segment is `route`.
    pub fn by_route(&self, route: &str) -> Option<(OperationKind, &OperationApi)> {
        self.operations().find(|(_, a)| a.route == route)
    }

    /// The operation whose CLI verb is `verb`.
    pub fn by_verb(&self, verb: &str) -> Option<(OperationKind, &OperationApi)> {
        self.operations().find(|(_, a)| a.verb == verb)
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

impl CallRules for Registry {
    fn rule(&self, kind: OperationKind) -> Option<CallRule> {
        self.get(kind).map(|d| d.rule)
    }
}
