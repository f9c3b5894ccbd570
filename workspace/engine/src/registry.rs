//! The registry: which workflow runs which operation kind.

use crate::model::WorkflowDef;
use ovc_types::state::OperationKind;
use std::collections::HashMap;

/// Workflows by operation kind.
#[derive(Debug, Clone, Default)]
pub struct Registry {
    workflows: HashMap<OperationKind, WorkflowDef>,
}

impl Registry {
    /// An empty registry.
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
}
