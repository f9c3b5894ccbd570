//! The states of vclusters, operations, steps and snapshots, and the one table that
//! says which call is allowed from which vcluster state (API.md "States and transitions",
//! seed 状态转换约束).
//!
//! [`transition`] is the only place that decides whether a call is allowed; the API
//! checks it before it appends a command, and its tests walk every state × every call.

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

/// The kind of a long-running operation (API.md `Operation.kind`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum OperationKind {
    /// CreateVCluster.
    Create,
    /// SuspendVCluster.
    Suspend,
    /// ResumeVCluster.
    Resume,
    /// SnapshotVCluster.
    Snapshot,
    /// RestoreVCluster (new or over an existing one).
    Restore,
    /// ScaleVCluster.
    Scale,
    /// UpgradeVCluster: a new chart and/or Kubernetes version, one minor at a time.
    Upgrade,
    /// DeleteVCluster.
    Delete,
    /// DeleteSnapshot: deletes a snapshot's artifact; the vcluster's state is left alone.
    DeleteSnapshot,
}

impl OperationKind {
    /// Every kind.
    pub const ALL: [OperationKind; 9] = [
        OperationKind::Create,
        OperationKind::Suspend,
        OperationKind::Resume,
        OperationKind::Snapshot,
        OperationKind::Restore,
        OperationKind::Scale,
        OperationKind::Upgrade,
        OperationKind::Delete,
        OperationKind::DeleteSnapshot,
    ];

    /// The wire name, e.g. `SUSPEND`.
    pub fn as_str(self) -> &'static str {
        match self {
            OperationKind::Create => "CREATE",
            OperationKind::Suspend => "SUSPEND",
            OperationKind::Resume => "RESUME",
            OperationKind::Snapshot => "SNAPSHOT",
            OperationKind::Restore => "RESTORE",
            OperationKind::Scale => "SCALE",
            OperationKind::Upgrade => "UPGRADE",
            OperationKind::Delete => "DELETE",
            OperationKind::DeleteSnapshot => "DELETE_SNAPSHOT",
        }
    }

    /// Parses a wire name.
    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|v| v.as_str() == s)
    }

    /// The state a vcluster is in while an operation of this kind runs; `None` for kinds
    /// that leave the vcluster's state alone (DELETE_SNAPSHOT: a snapshot outlives its
    /// vcluster, and deleting it neither needs nor changes a vcluster state).
    pub fn in_progress_state(self) -> Option<VClusterState> {
        match self {
            OperationKind::Create => Some(VClusterState::Creating),
            OperationKind::Suspend => Some(VClusterState::Suspending),
            OperationKind::Resume => Some(VClusterState::Resuming),
            OperationKind::Snapshot => Some(VClusterState::Snapshotting),
            OperationKind::Restore => Some(VClusterState::Restoring),
            OperationKind::Scale => Some(VClusterState::Scaling),
            OperationKind::Upgrade => Some(VClusterState::Upgrading),
            OperationKind::Delete => Some(VClusterState::Deleting),
            OperationKind::DeleteSnapshot => None,
        }
    }

    /// True when operations of this kind move the vcluster to a transitional state and
    /// settle, revert or fail it at their end (every kind but DELETE_SNAPSHOT).
    pub fn changes_vcluster_state(self) -> bool {
        self.in_progress_state().is_some()
    }
}

impl fmt::Display for OperationKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A mutating call as the state machine sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Call {
    /// POST /v1/vclusters.
    Create,
    /// POST .../suspend.
    Suspend,
    /// POST .../resume.
    Resume,
    /// POST .../snapshots.
    Snapshot,
    /// POST /v1/snapshots/{id}/restore with `{new_name}`: makes a new vcluster.
    RestoreNew,
    /// POST /v1/snapshots/{id}/restore with `{existing}`: overwrites this vcluster.
    RestoreOverwrite,
    /// POST .../scale.
    Scale,
    /// POST .../upgrade.
    Upgrade,
    /// DELETE /v1/vclusters/{name}.
    Delete,
    /// POST /v1/operations/{id}/retry of an operation of the given kind.
    Retry(OperationKind),
}

impl Call {
    /// Every call, for exhaustive tests.
    pub const ALL: [Call; 17] = [
        Call::Create,
        Call::Suspend,
        Call::Resume,
        Call::Snapshot,
        Call::RestoreNew,
        Call::RestoreOverwrite,
        Call::Scale,
        Call::Upgrade,
        Call::Delete,
        Call::Retry(OperationKind::Create),
        Call::Retry(OperationKind::Suspend),
        Call::Retry(OperationKind::Resume),
        Call::Retry(OperationKind::Snapshot),
        Call::Retry(OperationKind::Restore),
        Call::Retry(OperationKind::Scale),
        Call::Retry(OperationKind::Upgrade),
        Call::Retry(OperationKind::Delete),
    ];

    /// The kind of operation this call starts.
    pub fn kind(self) -> OperationKind {
        match self {
            Call::Create => OperationKind::Create,
            Call::Suspend => OperationKind::Suspend,
            Call::Resume => OperationKind::Resume,
            Call::Snapshot => OperationKind::Snapshot,
            Call::RestoreNew | Call::RestoreOverwrite => OperationKind::Restore,
            Call::Scale => OperationKind::Scale,
            Call::Upgrade => OperationKind::Upgrade,
            Call::Delete => OperationKind::Delete,
            Call::Retry(kind) => kind,
        }
    }

    /// A short verb for messages, e.g. `suspend`.
    pub fn verb(self) -> &'static str {
        match self {
            Call::Create => "create",
            Call::Suspend => "suspend",
            Call::Resume => "resume",
            Call::Snapshot => "snapshot",
            Call::RestoreNew => "restore into a new vcluster",
            Call::RestoreOverwrite => "restore",
            Call::Scale => "scale",
            Call::Upgrade => "upgrade",
            Call::Delete => "delete",
            Call::Retry(_) => "retry",
        }
    }
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
        };
        Status::new(e.code(), e.to_string()).with_reason(reason)
    }
}

/// The state machine of API.md as one table.
///
/// `current` is the vcluster's state, or `None` when no vcluster of that name exists
/// (a `DELETED` vcluster counts as absent: its name may be reused). On success it
/// returns the state the vcluster enters while the call's operation runs.
pub fn transition(
    current: Option<VClusterState>,
    call: Call,
) -> Result<VClusterState, TransitionError> {
    use Call as C;
    use VClusterState as S;
    let Some(busy) = call.kind().in_progress_state() else {
        return Err(TransitionError::NotAVClusterCall {
            verb: call.verb(),
            kind: call.kind(),
        });
    };
    let current = match current {
        None | Some(S::Deleted) => {
            return match call {
                C::Create | C::RestoreNew => Ok(busy),
                _ => Err(TransitionError::NotFound),
            };
        }
        Some(state) => state,
    };
    if matches!(call, C::Create | C::RestoreNew) {
        return Err(TransitionError::AlreadyExists { state: current });
    }
    if current.is_transitional() && current != S::Deleting {
        return Err(TransitionError::InProgress {
            verb: call.verb(),
            state: current,
        });
    }
    let allowed = match (current, call) {
        // RUNNING | suspend, scale, snapshot, restore (overwrite), upgrade, delete
        (
            S::Running,
            C::Suspend | C::Scale | C::Snapshot | C::RestoreOverwrite | C::Upgrade | C::Delete,
        ) => true,
        // SUSPENDED | resume, restore (overwrite), delete
        (S::Suspended, C::Resume | C::RestoreOverwrite | C::Delete) => true,
        // FAILED | delete, operation retry
        (S::Failed, C::Delete | C::Retry(_)) => true,
        // A retry re-issues the failed operation's call; from a stable state (the failed
        // operation was compensated) it is allowed exactly when that call would be.
        (S::Running | S::Suspended, C::Retry(kind)) => {
            let same = match kind {
                OperationKind::Create => {
                    return Err(TransitionError::AlreadyExists { state: current });
                }
                OperationKind::Suspend => C::Suspend,
                OperationKind::Resume => C::Resume,
                OperationKind::Snapshot => C::Snapshot,
                OperationKind::Restore => C::RestoreOverwrite,
                OperationKind::Scale => C::Scale,
                OperationKind::Upgrade => C::Upgrade,
                OperationKind::Delete => C::Delete,
                OperationKind::DeleteSnapshot => {
                    return Err(TransitionError::NotAVClusterCall {
                        verb: call.verb(),
                        kind,
                    });
                }
            };
            return transition(Some(current), same);
        }
        _ => false,
    };
    if allowed {
        return Ok(busy);
    }
    let hint = match (current, call) {
        (S::Suspended, C::Scale | C::Snapshot) => "; resume it first",
        (S::Suspended, C::Upgrade) => "; ovc never upgrades a paused vcluster, resume it first",
        (S::Running, C::Resume) => "; it is already running",
        (S::Suspended, C::Suspend) => "; it is already suspended",
        (S::Failed, _) => "; delete it or retry the failed operation",
        (S::Deleting, _) => "; it is being deleted",
        _ => "",
    };
    Err(TransitionError::NotAllowed {
        verb: call.verb(),
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
    use Call as C;
    use VClusterState as S;

    /// The allowed calls per state, transcribed from API.md's table and the seed's
    /// 有效的状态转换 diagram. Anything not listed must be refused.
    fn allowed_by_contract(state: Option<S>, call: C) -> bool {
        match state {
            None | Some(S::Deleted) => matches!(call, C::Create | C::RestoreNew),
            Some(S::Running) => matches!(
                call,
                C::Suspend
                    | C::Scale
                    | C::Snapshot
                    | C::RestoreOverwrite
                    | C::Upgrade
                    | C::Delete
                    | C::Retry(
                        OperationKind::Suspend
                            | OperationKind::Scale
                            | OperationKind::Snapshot
                            | OperationKind::Restore
                            | OperationKind::Upgrade
                            | OperationKind::Delete
                    )
            ),
            Some(S::Suspended) => matches!(
                call,
                C::Resume
                    | C::RestoreOverwrite
                    | C::Delete
                    | C::Retry(
                        OperationKind::Resume | OperationKind::Restore | OperationKind::Delete
                    )
            ),
            Some(S::Failed) => matches!(call, C::Delete | C::Retry(_)),
            Some(_) => false,
        }
    }

    #[test]
    fn every_state_times_every_call_matches_the_contract() {
        let mut states: Vec<Option<S>> = vec![None];
        states.extend(S::ALL.into_iter().map(Some));
        let mut checked = 0;
        for state in states {
            for call in Call::ALL {
                let got = transition(state, call);
                assert_eq!(
                    got.is_ok(),
                    allowed_by_contract(state, call),
                    "{state:?} x {call:?} gave {got:?}"
                );
                if let Ok(next) = got {
                    assert_eq!(Some(next), call.kind().in_progress_state());
                    assert!(next.is_transitional());
                }
                checked += 1;
            }
        }
        assert_eq!(checked, 13 * 17);
    }

    #[test]
    fn seed_valid_transitions() {
        // RUNNING -suspend-> (SUSPENDING ->) SUSPENDED
        assert_eq!(transition(Some(S::Running), C::Suspend), Ok(S::Suspending));
        // SUSPENDED -resume-> RUNNING
        assert_eq!(transition(Some(S::Suspended), C::Resume), Ok(S::Resuming));
        // RUNNING -scale-> RUNNING, -snapshot-> RUNNING
        assert_eq!(transition(Some(S::Running), C::Scale), Ok(S::Scaling));
        assert_eq!(
            transition(Some(S::Running), C::Snapshot),
            Ok(S::Snapshotting)
        );
        // RUNNING/SUSPENDED -delete-> DELETING
        assert_eq!(transition(Some(S::Running), C::Delete), Ok(S::Deleting));
        assert_eq!(transition(Some(S::Suspended), C::Delete), Ok(S::Deleting));
    }

    #[test]
    fn seed_invalid_transitions_are_failed_precondition() {
        // SUSPENDED -scale-> rejected; SUSPENDED -snapshot-> rejected;
        // CREATING -suspend-> rejected; DELETING -any-> rejected.
        let cases = [
            (S::Suspended, C::Scale),
            (S::Suspended, C::Snapshot),
            (S::Creating, C::Suspend),
        ];
        for (state, call) in cases {
            let err = transition(Some(state), call).expect_err("must be refused");
            assert_eq!(err.code(), Code::FailedPrecondition, "{state} {call:?}");
        }
        for call in Call::ALL {
            let err = transition(Some(S::Deleting), call).expect_err("deleting refuses all");
            let want = if matches!(call, C::Create | C::RestoreNew) {
                Code::AlreadyExists
            } else {
                Code::FailedPrecondition
            };
            assert_eq!(err.code(), want, "{call:?}");
        }
    }

    #[test]
    fn refusal_codes() {
        assert_eq!(
            transition(None, C::Suspend).expect_err("absent").code(),
            Code::NotFound
        );
        assert_eq!(
            transition(Some(S::Running), C::Create)
                .expect_err("taken")
                .code(),
            Code::AlreadyExists
        );
        let busy = transition(Some(S::Suspending), C::Resume).expect_err("busy");
        assert!(matches!(busy, TransitionError::InProgress { .. }));
        let status: Status = busy.into();
        assert_eq!(status.code, Code::FailedPrecondition);
        assert_eq!(status.reason(), Some("OPERATION_IN_PROGRESS"));
        assert!(status.message.contains("SUSPENDING"), "{}", status.message);
    }

    #[test]
    fn deleted_name_can_be_reused() {
        assert_eq!(transition(Some(S::Deleted), C::Create), Ok(S::Creating));
        assert_eq!(
            transition(Some(S::Deleted), C::Delete)
                .expect_err("gone")
                .code(),
            Code::NotFound
        );
    }

    #[test]
    fn a_retried_snapshot_deletion_never_goes_through_the_vcluster_table() {
        let mut states: Vec<Option<S>> = vec![None];
        states.extend(S::ALL.into_iter().map(Some));
        for state in states {
            let err = transition(state, C::Retry(OperationKind::DeleteSnapshot))
                .expect_err("not a vcluster call");
            assert!(
                matches!(err, TransitionError::NotAVClusterCall { .. }),
                "{state:?}: {err:?}"
            );
            assert_eq!(err.code(), Code::FailedPrecondition);
        }
        assert!(!OperationKind::DeleteSnapshot.changes_vcluster_state());
        assert!(
            OperationKind::ALL
                .into_iter()
                .filter(|k| *k != OperationKind::DeleteSnapshot)
                .all(OperationKind::changes_vcluster_state)
        );
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
        assert_eq!(OperationKind::DeleteSnapshot.as_str(), "DELETE_SNAPSHOT");
    }

    #[test]
    fn wire_names_roundtrip() {
        for s in S::ALL {
            assert_eq!(S::parse(s.as_str()), Some(s));
            assert_eq!(serde_json::to_value(s).expect("ser"), s.as_str());
        }
        for k in OperationKind::ALL {
            assert_eq!(OperationKind::parse(k.as_str()), Some(k));
            assert_eq!(serde_json::to_value(k).expect("ser"), k.as_str());
        }
        for o in OperationState::ALL {
            assert_eq!(OperationState::parse(o.as_str()), Some(o));
            assert_eq!(serde_json::to_value(o).expect("ser"), o.as_str());
        }
    }
}
