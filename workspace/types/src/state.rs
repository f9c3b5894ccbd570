//! The states of vclusters, operations, steps and snapshots, and the one table that
//! says which call is allowed from which vcluster state (API.md "States and transitions",
//! seed 状态转换约束).
//!
//! [`transition`] is the only place that decides whether a call is allowed; the API
//! checks it before it appends a command. Each kind's row (the states it may start from,
//! its in-progress state) is declared by its workflow and served by the registry
//! ([`CallRules`]); the exhaustive test that walks every state × every call of the
//! seed's table against the registry lives in `ovc-workflows` (`contract.rs`), which
//! sees the registry.

use crate::error::{Code, Status};
use serde::{Deserialize, Serialize};
use std::fmt;

/// The lifecycle state of a vcluster (API.md).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum VClusterState {
    /// Being created.
    Creating,
    /// Up and serving.
    Running,
    /// Being suspended.
    Suspending,
    /// Control plane scaled to zero; data kept.
    Suspended,
    /// Being resumed.
    Resuming,
    /// Being resized.
    Scaling,
    /// A snapshot is being taken.
    Snapshotting,
    /// A snapshot is being restored into it.
    Restoring,
    /// Its chart or Kubernetes version is being upgraded.
    Upgrading,
    /// Being deleted.
    Deleting,
    /// Gone; the name may be reused.
    Deleted,
    /// An operation failed and could not be undone; only delete or retry are allowed.
    Failed,
}

impl VClusterState {
    /// Every state, for exhaustive tests.
    pub const ALL: [VClusterState; 12] = [
        VClusterState::Creating,
        VClusterState::Running,
        VClusterState::Suspending,
        VClusterState::Suspended,
        VClusterState::Resuming,
        VClusterState::Scaling,
        VClusterState::Snapshotting,
        VClusterState::Restoring,
        VClusterState::Upgrading,
        VClusterState::Deleting,
        VClusterState::Deleted,
        VClusterState::Failed,
    ];

    /// The wire name, e.g. `RUNNING`.
    pub fn as_str(self) -> &'static str {
        match self {
            VClusterState::Creating => "CREATING",
            VClusterState::Running => "RUNNING",
            VClusterState::Suspending => "SUSPENDING",
            VClusterState::Suspended => "SUSPENDED",
            VClusterState::Resuming => "RESUMING",
            VClusterState::Scaling => "SCALING",
            VClusterState::Snapshotting => "SNAPSHOTTING",
            VClusterState::Restoring => "RESTORING",
            VClusterState::Upgrading => "UPGRADING",
            VClusterState::Deleting => "DELETING",
            VClusterState::Deleted => "DELETED",
            VClusterState::Failed => "FAILED",
        }
    }

    /// Parses a wire name.
    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|v| v.as_str() == s)
    }

    /// True for the states in which an operation is running.
    pub fn is_transitional(self) -> bool {
        matches!(
            self,
            VClusterState::Creating
                | VClusterState::Suspending
                | VClusterState::Resuming
                | VClusterState::Scaling
                | VClusterState::Snapshotting
                | VClusterState::Restoring
                | VClusterState::Upgrading
                | VClusterState::Deleting
        )
    }
}

impl fmt::Display for VClusterState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The kind of a long-running operation (API.md `Operation.kind`): an open, upper-case
/// name such as `SUSPEND`. Which kinds exist is the registry's business
/// (`ovc_engine::Registry`, one entry per workflow file); the API refuses a kind it does
/// not know with INVALID_ARGUMENT. The constants below are the kinds that code outside
/// their own workflow file names (the contract's seed kinds); a new operation declares
/// its kind in its own file with [`OperationKind::from_static`].
///
/// A kind is a `&'static str`, so it is `Copy` and usable in patterns. Kinds decoded from
/// the log are interned once per distinct name (the log's kinds are few and trusted);
/// untrusted input never mints a kind: it is looked up in the registry.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct OperationKind(&'static str);

impl OperationKind {
    /// CreateVCluster.
    pub const CREATE: OperationKind = OperationKind("CREATE");
    /// SuspendVCluster.
    pub const SUSPEND: OperationKind = OperationKind("SUSPEND");
    /// ResumeVCluster.
    pub const RESUME: OperationKind = OperationKind("RESUME");
    /// SnapshotVCluster.
    pub const SNAPSHOT: OperationKind = OperationKind("SNAPSHOT");
    /// RestoreVCluster (new or over an existing one).
    pub const RESTORE: OperationKind = OperationKind("RESTORE");
    /// ScaleVCluster.
    pub const SCALE: OperationKind = OperationKind("SCALE");
    /// DeleteVCluster.
    pub const DELETE: OperationKind = OperationKind("DELETE");
    /// DeleteSnapshot: deletes a snapshot's artifact; the vcluster's state is left alone.
    pub const DELETE_SNAPSHOT: OperationKind = OperationKind("DELETE_SNAPSHOT");

    /// The kind called `name` (a workflow file's constant). `name` must be a valid kind
    /// name ([`OperationKind::is_valid_name`]); the registry refuses one that is not.
    pub const fn from_static(name: &'static str) -> Self {
        OperationKind(name)
    }

    /// True for `[A-Z][A-Z0-9_]*`, at most 63 characters.
    pub fn is_valid_name(name: &str) -> bool {
        let mut chars = name.chars();
        name.len() <= 63
            && chars.next().is_some_and(|c| c.is_ascii_uppercase())
            && chars.all(|c| c.is_ascii_uppercase() || c.is_ascii_digit() || c == '_')
    }

    /// The kind of a trusted name (read from the log or the store), interned; `None` when
    /// it is not a valid kind name. Not for user input: look that up in the registry.
    pub fn from_trusted(name: &str) -> Option<Self> {
        use std::collections::BTreeSet;
        use std::sync::{Mutex, OnceLock};
        static INTERNED: OnceLock<Mutex<BTreeSet<&'static str>>> = OnceLock::new();
        if !Self::is_valid_name(name) {
            return None;
        }
        let mut set = INTERNED
            .get_or_init(|| Mutex::new(BTreeSet::new()))
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some(s) = set.get(name) {
            return Some(OperationKind(s));
        }
        let leaked: &'static str = Box::leak(name.to_string().into_boxed_str());
        set.insert(leaked);
        Some(OperationKind(leaked))
    }

    /// The wire name, e.g. `SUSPEND`.
    pub fn as_str(self) -> &'static str {
        self.0
    }

    /// True when operations of this kind move the vcluster to a transitional state and
    /// settle, revert or fail it at their end: every kind but DELETE_SNAPSHOT, whose
    /// subject is a snapshot (hand-written in accept; a registered operation on a
    /// vcluster always has an in-progress state).
    pub fn changes_vcluster_state(self) -> bool {
        self != OperationKind::DELETE_SNAPSHOT
    }

    /// The in-progress state of the kinds whose `OperationAccepted` / `RetryRequested`
    /// events were written before those events recorded the state (the log is forever):
    /// a frozen list, never extended — new events carry their state.
    pub fn legacy_in_progress_state(self) -> Option<VClusterState> {
        Some(match self.0 {
            "CREATE" => VClusterState::Creating,
            "SUSPEND" => VClusterState::Suspending,
            "RESUME" => VClusterState::Resuming,
            "SNAPSHOT" => VClusterState::Snapshotting,
            "RESTORE" => VClusterState::Restoring,
            "SCALE" => VClusterState::Scaling,
            "UPGRADE" => VClusterState::Upgrading,
            "DELETE" => VClusterState::Deleting,
            _ => return None,
        })
    }
}

impl fmt::Debug for OperationKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "OperationKind({})", self.0)
    }
}

impl fmt::Display for OperationKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl Serialize for OperationKind {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.0)
    }
}

impl<'de> Deserialize<'de> for OperationKind {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = std::borrow::Cow::<'de, str>::deserialize(d)?;
        OperationKind::from_trusted(&s)
            .ok_or_else(|| serde::de::Error::custom(format!("{s:?} is not an operation kind name")))
    }
}

impl utoipa::PartialSchema for OperationKind {
    fn schema() -> utoipa::openapi::RefOr<utoipa::openapi::schema::Schema> {
        utoipa::openapi::schema::ObjectBuilder::new()
            .schema_type(utoipa::openapi::schema::Type::String)
            .description(Some(
                "An operation kind; the API's document lists the kinds of this build",
            ))
            .pattern(Some("^[A-Z][A-Z0-9_]*$"))
            .into()
    }
}

impl utoipa::ToSchema for OperationKind {
    fn name() -> std::borrow::Cow<'static, str> {
        "OperationKind".into()
    }
}

/// A mutating call as the state machine sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Call {
    /// An operation that makes a new vcluster: CREATE (`POST /v1/vclusters`), RESTORE
    /// into a new name.
    New(OperationKind),
    /// An operation of `kind` on an existing vcluster (suspend, ..., delete, restore over
    /// it).
    On(OperationKind),
    /// POST /v1/operations/{id}/retry of an operation of the given kind.
    Retry(OperationKind),
}

impl Call {
    /// The kind of operation this call starts.
    pub fn kind(self) -> OperationKind {
        match self {
            Call::New(k) | Call::On(k) | Call::Retry(k) => k,
        }
    }
}

/// What the state machine knows of one operation kind; declared by its workflow and
/// served by the registry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CallRule {
    /// A short verb for messages, e.g. `suspend`.
    pub verb: &'static str,
    /// The verb when it makes a new vcluster (`Some`: the kind may start with no
    /// vcluster, e.g. `create`, `restore into a new vcluster`).
    pub new_verb: Option<&'static str>,
    /// The stable states it may start from on an existing vcluster (empty: never).
    pub starts_from: &'static [VClusterState],
    /// The state the vcluster is in while it runs; `None` for kinds outside the
    /// vcluster's state machine (DELETE_SNAPSHOT).
    pub in_progress: Option<VClusterState>,
    /// Hints appended to a refusal from a stable state, e.g. `(SUSPENDED, "; resume it
    /// first")`.
    pub hints: &'static [(VClusterState, &'static str)],
}

impl CallRule {
    /// A kind outside the vcluster's state machine (it starts from nowhere and never
    /// changes the vcluster's state), with `verb`.
    pub const fn outside(verb: &'static str) -> Self {
        CallRule {
            verb,
            new_verb: None,
            starts_from: &[],
            in_progress: None,
            hints: &[],
        }
    }
}

/// Where [`transition`] looks kinds up (the registry).
pub trait CallRules {
    /// The rule of `kind`, `None` when this build has no such operation.
    fn rule(&self, kind: OperationKind) -> Option<CallRule>;
}

/// Why a call was refused by the state machine.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TransitionError {
    /// The vcluster does not exist (only create and restore-new need no vcluster).
    #[error("vcluster does not exist")]
    NotFound,
    /// Create or restore-new onto a name that is taken.
    #[error("a vcluster with this name already exists (state {state})")]
    AlreadyExists {
        /// The state of the existing vcluster.
        state: VClusterState,
    },
    /// Another operation is running on this vcluster.
    #[error(
        "cannot {verb}: an operation is in progress (state {state}); wait for it or cancel it first"
    )]
    InProgress {
        /// The call's verb.
        verb: &'static str,
        /// The transitional state.
        state: VClusterState,
    },
    /// The call is not allowed from this stable state.
    #[error("cannot {verb} a vcluster in state {state}{hint}")]
    NotAllowed {
        /// The call's verb.
        verb: &'static str,
        /// The current state.
        state: VClusterState,
        /// What the caller can do instead, starting with "; ".
        hint: &'static str,
    },
    /// The call starts an operation that does not go through the vcluster's state
    /// machine (a retry of DELETE_SNAPSHOT, which is checked against its snapshot).
    #[error("{verb} of a {kind} operation does not depend on the vcluster's state")]
    NotAVClusterCall {
        /// The call's verb.
        verb: &'static str,
        /// The operation kind.
        kind: OperationKind,
    },
    /// This build has no operation of this kind.
    #[error("unknown operation kind {kind}")]
    UnknownKind {
        /// The kind.
        kind: OperationKind,
    },
}

impl TransitionError {
    /// The status code API.md gives this refusal.
    pub fn code(&self) -> Code {
        match self {
            TransitionError::NotFound => Code::NotFound,
            TransitionError::AlreadyExists { .. } => Code::AlreadyExists,
            TransitionError::InProgress { .. }
            | TransitionError::NotAllowed { .. }
            | TransitionError::NotAVClusterCall { .. } => Code::FailedPrecondition,
            TransitionError::UnknownKind { .. } => Code::InvalidArgument,
        }
    }
}

impl From<TransitionError> for Status {
    fn from(e: TransitionError) -> Self {
        let reason = match &e {
            TransitionError::NotFound => "VCLUSTER_NOT_FOUND",
            TransitionError::AlreadyExists { .. } => "VCLUSTER_EXISTS",
            TransitionError::InProgress { .. } => "OPERATION_IN_PROGRESS",
            TransitionError::NotAllowed { .. } | TransitionError::NotAVClusterCall { .. } => {
                "INVALID_TRANSITION"
            }
            TransitionError::UnknownKind { .. } => "UNKNOWN_KIND",
        };
        Status::new(e.code(), e.to_string()).with_reason(reason)
    }
}

/// The state machine of API.md, with each kind's row from `rules` (the registry).
///
/// `current` is the vcluster's state, or `None` when no vcluster of that name exists
/// (a `DELETED` vcluster counts as absent: its name may be reused). On success it
/// returns the state the vcluster enters while the call's operation runs. The rules
/// common to every kind live here: a transitional state refuses everything, FAILED
/// allows delete (its rule lists FAILED) and every retry, and a retry from a stable
/// state (the failed operation was compensated) is allowed exactly when the original
/// call would be.
pub fn transition(
    current: Option<VClusterState>,
    call: Call,
    rules: &dyn CallRules,
) -> Result<VClusterState, TransitionError> {
    use VClusterState as S;
    let kind = call.kind();
    let rule = rules
        .rule(kind)
        .ok_or(TransitionError::UnknownKind { kind })?;
    let verb = match call {
        Call::New(_) => rule.new_verb.unwrap_or(rule.verb),
        Call::On(_) => rule.verb,
        Call::Retry(_) => "retry",
    };
    let Some(busy) = rule.in_progress else {
        return Err(TransitionError::NotAVClusterCall { verb, kind });
    };
    let current = match current {
        None | Some(S::Deleted) => {
            return match call {
                Call::New(_) if rule.new_verb.is_some() => Ok(busy),
                _ => Err(TransitionError::NotFound),
            };
        }
        Some(state) => state,
    };
    if matches!(call, Call::New(_)) {
        return Err(TransitionError::AlreadyExists { state: current });
    }
    if current.is_transitional() && current != S::Deleting {
        return Err(TransitionError::InProgress {
            verb,
            state: current,
        });
    }
    let allowed = match call {
        Call::On(_) => rule.starts_from.contains(&current),
        Call::Retry(_) if current == S::Failed => true,
        Call::Retry(_) if matches!(current, S::Running | S::Suspended) => {
            // A kind that only makes vclusters (CREATE) is taken by the existing one.
            if rule.starts_from.is_empty() && rule.new_verb.is_some() {
                return Err(TransitionError::AlreadyExists { state: current });
            }
            return transition(Some(current), Call::On(kind), rules);
        }
        _ => false,
    };
    if allowed {
        return Ok(busy);
    }
    let hint = match current {
        S::Failed => "; delete it or retry the failed operation",
        S::Deleting => "; it is being deleted",
        state => rule
            .hints
            .iter()
            .find(|(s, _)| *s == state)
            .map_or("", |(_, h)| *h),
    };
    Err(TransitionError::NotAllowed {
        verb,
        state: current,
        hint,
    })
}

/// The state of an operation (API.md `Operation.state`, plus `STUCK` of DESIGN.md §6).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum OperationState {
    /// Accepted, waiting for a worker.
    Pending,
    /// A worker is running its steps.
    Running,
    /// Undoing completed steps after a failure or cancellation.
    Compensating,
    /// Done, successfully.
    Succeeded,
    /// Done; failed and compensated.
    Failed,
    /// Done; cancelled on request and compensated.
    Cancelled,
    /// Done; an undo failed permanently, the vcluster is FAILED and needs an operator.
    Stuck,
}

impl OperationState {
    /// Every state.
    pub const ALL: [OperationState; 7] = [
        OperationState::Pending,
        OperationState::Running,
        OperationState::Compensating,
        OperationState::Succeeded,
        OperationState::Failed,
        OperationState::Cancelled,
        OperationState::Stuck,
    ];

    /// True once nothing more will happen (`Operation.done`).
    pub fn is_terminal(self) -> bool {
        matches!(
            self,
            OperationState::Succeeded
                | OperationState::Failed
                | OperationState::Cancelled
                | OperationState::Stuck
        )
    }

    /// The wire name.
    pub fn as_str(self) -> &'static str {
        match self {
            OperationState::Pending => "PENDING",
            OperationState::Running => "RUNNING",
            OperationState::Compensating => "COMPENSATING",
            OperationState::Succeeded => "SUCCEEDED",
            OperationState::Failed => "FAILED",
            OperationState::Cancelled => "CANCELLED",
            OperationState::Stuck => "STUCK",
        }
    }

    /// Parses a wire name.
    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|v| v.as_str() == s)
    }
}

/// The state of one step of an operation (API.md `steps[].state`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum StepState {
    /// Not started.
    Pending,
    /// Started (possibly retrying).
    Running,
    /// Its effect is in place.
    Succeeded,
    /// Failed permanently (or its undo failed).
    Failed,
    /// Its effect was undone.
    Compensated,
    /// Not needed for this operation's parameters.
    Skipped,
}

impl StepState {
    /// The wire name.
    pub fn as_str(self) -> &'static str {
        match self {
            StepState::Pending => "PENDING",
            StepState::Running => "RUNNING",
            StepState::Succeeded => "SUCCEEDED",
            StepState::Failed => "FAILED",
            StepState::Compensated => "COMPENSATED",
            StepState::Skipped => "SKIPPED",
        }
    }

    /// Parses a wire name.
    pub fn parse(s: &str) -> Option<Self> {
        [
            StepState::Pending,
            StepState::Running,
            StepState::Succeeded,
            StepState::Failed,
            StepState::Compensated,
            StepState::Skipped,
        ]
        .into_iter()
        .find(|v| v.as_str() == s)
    }
}

/// The state of a snapshot artifact.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum SnapshotState {
    /// Being written.
    Creating,
    /// Complete and verified.
    Ready,
    /// Could not be written.
    Failed,
    /// A DELETE_SNAPSHOT operation was accepted and has not ended: the artifact may be
    /// partly gone, so it can no longer be restored (an addition to API.md's states).
    Deleting,
    /// The artifact was deleted.
    Deleted,
    /// The inventory check found the READY snapshot's artifact (or part of it) gone
    /// from the storage: it cannot be restored. READY again if the artifact comes back;
    /// a DELETE_SNAPSHOT removes what is left and the entry.
    Missing,
}

impl SnapshotState {
    /// Every state.
    pub const ALL: [SnapshotState; 6] = [
        SnapshotState::Creating,
        SnapshotState::Ready,
        SnapshotState::Failed,
        SnapshotState::Deleting,
        SnapshotState::Deleted,
        SnapshotState::Missing,
    ];

    /// The wire name.
    pub fn as_str(self) -> &'static str {
        match self {
            SnapshotState::Creating => "CREATING",
            SnapshotState::Ready => "READY",
            SnapshotState::Failed => "FAILED",
            SnapshotState::Deleting => "DELETING",
            SnapshotState::Deleted => "DELETED",
            SnapshotState::Missing => "MISSING",
        }
    }

    /// Parses a wire name.
    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|v| v.as_str() == s)
    }

    /// True when a DELETE_SNAPSHOT may start: READY, or FAILED or MISSING (a failed
    /// write, a failed earlier delete or a partly vanished artifact leaves objects behind
    /// that only a delete removes).
    pub fn is_deletable(self) -> bool {
        matches!(
            self,
            SnapshotState::Ready | SnapshotState::Failed | SnapshotState::Missing
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kind_names_are_checked_and_interned() {
        assert!(OperationKind::is_valid_name("DELETE_SNAPSHOT"));
        for bad in ["", "suspend", "1X", "A-B", &"A".repeat(64)] {
            assert!(!OperationKind::is_valid_name(bad), "{bad:?}");
            assert_eq!(OperationKind::from_trusted(bad), None);
        }
        let a = OperationKind::from_trusted("SOME_NEW_KIND").expect("valid");
        let b = OperationKind::from_trusted("SOME_NEW_KIND").expect("valid");
        assert!(std::ptr::eq(a.as_str(), b.as_str()), "interned once");
        assert_eq!(
            OperationKind::from_trusted("SUSPEND"),
            Some(OperationKind::SUSPEND)
        );
        let k: OperationKind = serde_json::from_value(serde_json::json!("UPGRADE")).expect("de");
        assert_eq!(k, OperationKind::from_static("UPGRADE"));
        assert_eq!(serde_json::to_value(k).expect("ser"), "UPGRADE");
        assert!(serde_json::from_value::<OperationKind>(serde_json::json!("no")).is_err());
        assert!(!OperationKind::DELETE_SNAPSHOT.changes_vcluster_state());
        assert!(OperationKind::SUSPEND.changes_vcluster_state());
    }

    #[test]
    fn only_ready_failed_and_missing_snapshots_are_deletable() {
        for s in SnapshotState::ALL {
            assert_eq!(SnapshotState::parse(s.as_str()), Some(s));
            assert_eq!(serde_json::to_value(s).expect("ser"), s.as_str());
            assert_eq!(
                s.is_deletable(),
                matches!(
                    s,
                    SnapshotState::Ready | SnapshotState::Failed | SnapshotState::Missing
                ),
                "{s:?}"
            );
        }
        assert_eq!(SnapshotState::Deleting.as_str(), "DELETING");
    }

    #[test]
    fn wire_names_roundtrip() {
        for s in VClusterState::ALL {
            assert_eq!(VClusterState::parse(s.as_str()), Some(s));
            assert_eq!(serde_json::to_value(s).expect("ser"), s.as_str());
        }
        for o in OperationState::ALL {
            assert_eq!(OperationState::parse(o.as_str()), Some(o));
            assert_eq!(serde_json::to_value(o).expect("ser"), o.as_str());
        }
    }
}
