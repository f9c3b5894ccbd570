//! The read models of API.md (`VCluster`, `Operation` with its steps, `Snapshot`) and the
//! pure functions that fold events into them.
//!
//! The store keeps these as inline projections, updated in the same transaction as the
//! events, and rebuilds them from the log with exactly the same functions, so a rebuild
//! equals the live tables by construction. The `apply` functions also check the log's
//! grammar (steno's lesson): an event that makes no sense for the current read model
//! (a second `CreateRequested`, a step event after the operation ended) is refused with a
//! [`ProjectionError`] instead of being folded into nonsense.

use crate::command::Command;
use crate::error::Status;
use crate::event::Event;
use crate::ids::{OperationId, SnapshotId, VClusterId};
use crate::name::{ProjectName, VClusterName};
use crate::spec::VClusterSpec;
use crate::state::{OperationKind, OperationState, SnapshotState, StepState, VClusterState};
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

/// A vcluster as API.md shows it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct VCluster {
    /// Its name, unique among live vclusters of the project.
    pub name: VClusterName,
    /// Its project.
    pub project: ProjectName,
    /// The uid of this incarnation.
    pub uid: VClusterId,
    /// Lifecycle state.
    pub state: VClusterState,
    /// The current spec.
    pub spec: VClusterSpec,
    /// Where it lives on the host.
    pub host_namespace: String,
    /// The operation running on it now.
    pub active_operation: Option<OperationId>,
    /// The last operation that ended on it.
    pub last_operation: Option<OperationId>,
    /// The version of its event stream (usable as an etag).
    pub version: u64,
    /// When it was requested.
    pub created_at: DateTime<Utc>,
    /// When its stream last changed.
    pub updated_at: DateTime<Utc>,
}

/// One step of an operation as API.md shows it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct OperationStep {
    /// The persisted step name.
    pub name: String,
    /// Its state.
    pub state: StepState,
    /// Attempts made so far.
    pub attempts: u32,
    /// When the first attempt started.
    pub started_at: Option<DateTime<Utc>>,
    /// When it reached SUCCEEDED, FAILED, COMPENSATED or SKIPPED.
    pub finished_at: Option<DateTime<Utc>>,
    /// The last error, if the last attempt or the undo failed.
    pub error: Option<Status>,
}

/// A long-running operation as API.md shows it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Operation {
    /// Its id.
    pub id: OperationId,
    /// `operations/<id>` (AIP-151).
    pub name: String,
    /// What it does.
    pub kind: OperationKind,
    /// The vcluster's name.
    pub vcluster: VClusterName,
    /// The vcluster's uid.
    pub vcluster_uid: VClusterId,
    /// The project.
    pub project: ProjectName,
    /// The client's request id.
    pub request_id: Option<String>,
    /// Its state.
    pub state: OperationState,
    /// True once the state is terminal.
    pub done: bool,
    /// Its steps, in plan order.
    pub steps: Vec<OperationStep>,
    /// Why it failed, was cancelled or got stuck.
    pub error: Option<Status>,
    /// What it produced.
    pub result: serde_json::Value,
    /// The operation it retries.
    pub retry_of: Option<OperationId>,
    /// The vcluster's stable state when the operation was accepted.
    pub prior_state: Option<VClusterState>,
    /// The parameters it was called with.
    pub command: Command,
    /// True once someone asked to cancel it.
    pub cancel_requested: bool,
    /// The version of its event stream.
    pub version: u64,
    /// When it was accepted.
    pub created_at: DateTime<Utc>,
    /// When its stream last changed.
    pub updated_at: DateTime<Utc>,
}

/// A snapshot as API.md shows it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Snapshot {
    /// Its id.
    pub id: SnapshotId,
    /// The vcluster it was taken of.
    pub vcluster: VClusterName,
    /// That vcluster's uid.
    pub vcluster_uid: VClusterId,
    /// The project.
    pub project: ProjectName,
    /// Its state.
    pub state: SnapshotState,
    /// Total artifact size.
    pub size_bytes: Option<u64>,
    /// SHA-256 of the manifest.
    pub sha256: Option<String>,
    /// Storage URL of the artifact.
    pub location: Option<String>,
    /// Spec, helm values, versions, labels.
    pub metadata: serde_json::Value,
    /// Free text.
    pub description: Option<String>,
    /// The operation that wrote it.
    pub operation_id: OperationId,
    /// Why it failed (or why a delete left it FAILED).
    pub error: Option<Status>,
    /// The DELETE_SNAPSHOT operation deleting (or that deleted) it; cleared when such an
    /// operation fails and the snapshot is READY or FAILED again.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub deleted_by: Option<OperationId>,
    /// The version of its event stream.
    pub version: u64,
    /// When it was started.
    pub created_at: DateTime<Utc>,
    /// When its stream last changed.
    pub updated_at: DateTime<Utc>,
}

/// An event that cannot be folded into the read model it targets.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ProjectionError {
    /// The event needs an existing entity and there is none.
    #[error("{event_type} on {stream}: no such entity")]
    Missing {
        /// The stream.
        stream: String,
        /// The event.
        event_type: &'static str,
    },
    /// The event creates an entity that exists.
    #[error("{event_type} on {stream}: entity already exists")]
    AlreadyExists {
        /// The stream.
        stream: String,
        /// The event.
        event_type: &'static str,
    },
    /// The event does not belong on this kind of stream.
    #[error("{event_type} does not belong on stream {stream}")]
    WrongStream {
        /// The stream.
        stream: String,
        /// The event.
        event_type: &'static str,
    },
    /// The event is not allowed in the entity's current state (e.g. a restore or a
    /// delete of a snapshot that is not READY).
    #[error("{event_type} on {stream}: not allowed in state {state}")]
    InvalidState {
        /// The stream.
        stream: String,
        /// The event.
        event_type: &'static str,
        /// The entity's state (wire name).
        state: &'static str,
    },
    /// The operation already ended.
    #[error("{event_type} on {stream}: the operation already ended ({state:?})")]
    AfterTerminal {
        /// The stream.
        stream: String,
        /// The event.
        event_type: &'static str,
        /// Its terminal state.
        state: OperationState,
    },
}

/// The most characters of the vcluster's name that [`host_namespace`] keeps.
pub const HOST_NAMESPACE_NAME_CHARS: usize = 26;

/// Where a new vcluster lives on the host:
/// `ovc-<name, first 26 characters, trailing '-' trimmed>-<uid as 32 lowercase hex>`.
///
/// At most 63 characters (4 + 26 + 1 + 32), a valid DNS-1123 label, and injective: the
/// uid is unique, so two vclusters never share a namespace, whatever their projects and
/// names are, and a name reused after deletion (a new uid) gets a new namespace. The
/// namespace is recorded in `CreateRequested` / `RestoreRequested` and read back from
/// the projection by every later operation, so changing this function never moves an
/// existing vcluster (those created before it keep [`legacy_host_namespace`]).
pub fn host_namespace(name: &VClusterName, uid: VClusterId) -> String {
    // Names are ASCII (DNS-1123), so byte slicing is safe.
    let name = name.as_str();
    let prefix = name[..name.len().min(HOST_NAMESPACE_NAME_CHARS)].trim_end_matches('-');
    format!("ovc-{prefix}-{}", uid.as_uuid().simple())
}

/// The namespace scheme of vclusters created before host identities carried the uid:
/// `ovc-<project>-<name>` (shortened with a hash past 63 characters). It is *not*
/// injective (project `a` + vcluster `b-c` and project `a-b` + vcluster `c` collide), so
/// it is never used for a new vcluster; it only names what old events recorded.
pub fn legacy_host_namespace(project: &ProjectName, name: &VClusterName) -> String {
    let full = format!("ovc-{project}-{name}");
    if full.len() <= 63 {
        return full;
    }
    let digest = Sha256::digest(full.as_bytes());
    let hash: String = digest.iter().take(4).map(|b| format!("{b:02x}")).collect();
    // 63 - len("-") - 8 hex = 54; the prefix is ASCII, so byte slicing is safe.
    let prefix = full[..54].trim_end_matches('-');
    format!("{prefix}-{hash}")
}

fn missing(stream: &str, event: &Event) -> ProjectionError {
    ProjectionError::Missing {
        stream: stream.to_string(),
        event_type: event.event_type(),
    }
}

fn exists(stream: &str, event: &Event) -> ProjectionError {
    ProjectionError::AlreadyExists {
        stream: stream.to_string(),
        event_type: event.event_type(),
    }
}

fn invalid(stream: &str, event: &Event, state: SnapshotState) -> ProjectionError {
    ProjectionError::InvalidState {
        stream: stream.to_string(),
        event_type: event.event_type(),
        state: state.as_str(),
    }
}

fn wrong(stream: &str, event: &Event) -> ProjectionError {
    ProjectionError::WrongStream {
        stream: stream.to_string(),
        event_type: event.event_type(),
    }
}

impl VCluster {
    /// Folds one event of stream `vcluster-<uid>` (at stream `version`, recorded `at`).
    pub fn apply(
        current: Option<VCluster>,
        uid: VClusterId,
        stream: &str,
        version: u64,
        at: DateTime<Utc>,
        event: &Event,
    ) -> Result<VCluster, ProjectionError> {
        let begin = |current: Option<VCluster>, op: OperationId, state: VClusterState| {
            let mut vc = current.ok_or_else(|| missing(stream, event))?;
            vc.state = state;
            vc.active_operation = Some(op);
            Ok::<_, ProjectionError>(vc)
        };
        let mut vc = match event {
            Event::CreateRequested {
                operation_id,
                name,
                project,
                spec,
                host_namespace,
            } => {
                if current.is_some() {
                    return Err(exists(stream, event));
                }
                VCluster {
                    name: name.clone(),
                    project: project.clone(),
                    uid,
                    state: VClusterState::Creating,
                    spec: spec.clone(),
                    host_namespace: host_namespace.clone(),
                    active_operation: Some(*operation_id),
                    last_operation: None,
                    version,
                    created_at: at,
                    updated_at: at,
                }
            }
            Event::RestoreRequested {
                operation_id,
                new_vcluster: Some(new),
                ..
            } => {
                if current.is_some() {
                    return Err(exists(stream, event));
                }
                VCluster {
                    name: new.name.clone(),
                    project: new.project.clone(),
                    uid,
                    state: VClusterState::Restoring,
                    spec: new.spec.clone(),
                    host_namespace: new.host_namespace.clone(),
                    active_operation: Some(*operation_id),
                    last_operation: None,
                    version,
                    created_at: at,
                    updated_at: at,
                }
            }
            Event::RestoreRequested {
                operation_id,
                new_vcluster: None,
                ..
            } => begin(current, *operation_id, VClusterState::Restoring)?,
            Event::SuspendRequested { operation_id } => {
                begin(current, *operation_id, VClusterState::Suspending)?
            }
            Event::ResumeRequested { operation_id } => {
                begin(current, *operation_id, VClusterState::Resuming)?
            }
            Event::SnapshotRequested { operation_id, .. } => {
                begin(current, *operation_id, VClusterState::Snapshotting)?
            }
            Event::ScaleRequested { operation_id } => {
                begin(current, *operation_id, VClusterState::Scaling)?
            }
            Event::DeleteRequested { operation_id } => {
                begin(current, *operation_id, VClusterState::Deleting)?
            }
            Event::OperationAccepted {
                operation_id,
                kind,
                state,
            }
            | Event::RetryRequested {
                operation_id,
                kind,
                state,
                ..
            } => {
                let state = state
                    .or_else(|| kind.legacy_in_progress_state())
                    .ok_or_else(|| wrong(stream, event))?;
                begin(current, *operation_id, state)?
            }
            Event::VClusterSettled {
                operation_id,
                state,
                spec,
            } => {
                let mut vc = current.ok_or_else(|| missing(stream, event))?;
                vc.state = *state;
                if let Some(spec) = spec {
                    vc.spec = spec.clone();
                }
                vc.active_operation = None;
                vc.last_operation = Some(*operation_id);
                vc
            }
            Event::VClusterReverted {
                operation_id,
                state,
            } => {
                let mut vc = current.ok_or_else(|| missing(stream, event))?;
                vc.state = *state;
                vc.active_operation = None;
                vc.last_operation = Some(*operation_id);
                vc
            }
            Event::VClusterFailed { operation_id, .. } => {
                let mut vc = current.ok_or_else(|| missing(stream, event))?;
                vc.state = VClusterState::Failed;
                vc.active_operation = None;
                vc.last_operation = Some(*operation_id);
                vc
            }
            _ => return Err(wrong(stream, event)),
        };
        vc.version = version;
        vc.updated_at = at;
        Ok(vc)
    }
}

impl Operation {
    /// Folds one event of stream `operation-<id>`.
    pub fn apply(
        current: Option<Operation>,
        id: OperationId,
        stream: &str,
        version: u64,
        at: DateTime<Utc>,
        event: &Event,
    ) -> Result<Operation, ProjectionError> {
        if let Event::OperationRequested {
            vcluster_uid,
            vcluster,
            project,
            command,
            request_id,
            retry_of,
            prior_state,
            steps,
        } = event
        {
            if current.is_some() {
                return Err(exists(stream, event));
            }
            return Ok(Operation {
                id,
                name: format!("operations/{id}"),
                kind: command.kind(),
                vcluster: vcluster.clone(),
                vcluster_uid: *vcluster_uid,
                project: project.clone(),
                request_id: request_id.clone(),
                state: OperationState::Pending,
                done: false,
                steps: steps
                    .iter()
                    .map(|name| OperationStep {
                        name: name.clone(),
                        state: StepState::Pending,
                        attempts: 0,
                        started_at: None,
                        finished_at: None,
                        error: None,
                    })
                    .collect(),
                error: None,
                result: serde_json::Value::Null,
                retry_of: *retry_of,
                prior_state: *prior_state,
                command: command.clone(),
                cancel_requested: false,
                version,
                created_at: at,
                updated_at: at,
            });
        }
        let mut op = current.ok_or_else(|| missing(stream, event))?;
        if op.done {
            return Err(ProjectionError::AfterTerminal {
                stream: stream.to_string(),
                event_type: event.event_type(),
                state: op.state,
            });
        }
        match event {
            Event::StepStarted { step, attempt } => {
                if op.state == OperationState::Pending {
                    op.state = OperationState::Running;
                }
                let s = op.step_mut(step);
                s.state = StepState::Running;
                s.attempts = *attempt;
                s.started_at.get_or_insert(at);
                s.finished_at = None;
            }
            Event::StepSucceeded { step, .. } => {
                let s = op.step_mut(step);
                s.state = StepState::Succeeded;
                s.finished_at = Some(at);
                s.error = None;
            }
            Event::StepFailed {
                step,
                attempt,
                error,
                will_retry,
            } => {
                let s = op.step_mut(step);
                s.attempts = s.attempts.max(*attempt);
                s.error = Some(error.clone());
                if !*will_retry {
                    s.state = StepState::Failed;
                    s.finished_at = Some(at);
                }
            }
            Event::StepSkipped { step } => {
                let s = op.step_mut(step);
                s.state = StepState::Skipped;
                s.finished_at = Some(at);
            }
            Event::StepInherited { step, .. } => {
                let s = op.step_mut(step);
                s.state = StepState::Succeeded;
                s.finished_at = Some(at);
            }
            Event::CompensationStarted { error } => {
                op.state = OperationState::Compensating;
                op.error = Some(error.clone());
            }
            Event::StepCompensated { step } => {
                let s = op.step_mut(step);
                s.state = StepState::Compensated;
                s.finished_at = Some(at);
            }
            Event::UndoFailed { step, error } => {
                let s = op.step_mut(step);
                s.state = StepState::Failed;
                s.error = Some(error.clone());
                s.finished_at = Some(at);
            }
            Event::CancelRequested { .. } => op.cancel_requested = true,
            Event::OperationSucceeded { result } => {
                op.finish(OperationState::Succeeded, None);
                op.result = result.clone();
            }
            Event::OperationFailed { error } => op.finish(OperationState::Failed, Some(error)),
            Event::OperationCancelled { error } => {
                op.finish(OperationState::Cancelled, Some(error))
            }
            Event::OperationStuck { error } => op.finish(OperationState::Stuck, Some(error)),
            _ => return Err(wrong(stream, event)),
        }
        op.version = version;
        op.updated_at = at;
        Ok(op)
    }

    fn step_mut(&mut self, name: &str) -> &mut OperationStep {
        let idx = match self.steps.iter().position(|s| s.name == name) {
            Some(idx) => idx,
            None => {
                self.steps.push(OperationStep {
                    name: name.to_string(),
                    state: StepState::Pending,
                    attempts: 0,
                    started_at: None,
                    finished_at: None,
                    error: None,
                });
                self.steps.len() - 1
            }
        };
        &mut self.steps[idx]
    }

    fn finish(&mut self, state: OperationState, error: Option<&Status>) {
        self.state = state;
        self.done = true;
        if let Some(error) = error {
            self.error = Some(error.clone());
        }
    }
}

impl Snapshot {
    /// Folds one event of stream `snapshot-<id>`.
    pub fn apply(
        current: Option<Snapshot>,
        id: SnapshotId,
        stream: &str,
        version: u64,
        at: DateTime<Utc>,
        event: &Event,
    ) -> Result<Snapshot, ProjectionError> {
        let mut snap = match event {
            Event::SnapshotStarted {
                operation_id,
                vcluster_uid,
                vcluster,
                project,
                description,
            } => {
                if current.is_some() {
                    return Err(exists(stream, event));
                }
                Snapshot {
                    id,
                    vcluster: vcluster.clone(),
                    vcluster_uid: *vcluster_uid,
                    project: project.clone(),
                    state: SnapshotState::Creating,
                    size_bytes: None,
                    sha256: None,
                    location: None,
                    metadata: serde_json::Value::Null,
                    description: description.clone(),
                    operation_id: *operation_id,
                    error: None,
                    deleted_by: None,
                    version,
                    created_at: at,
                    updated_at: at,
                }
            }
            Event::SnapshotCompleted {
                size_bytes,
                sha256,
                location,
                metadata,
            } => {
                let mut s = current.ok_or_else(|| missing(stream, event))?;
                s.state = SnapshotState::Ready;
                s.size_bytes = Some(*size_bytes);
                s.sha256 = Some(sha256.clone());
                s.location = Some(location.clone());
                s.metadata = metadata.clone();
                s
            }
            Event::SnapshotFailed { error } => {
                let mut s = current.ok_or_else(|| missing(stream, event))?;
                s.state = SnapshotState::Failed;
                s.error = Some(error.clone());
                s
            }
            Event::SnapshotDeleted {} => {
                let mut s = current.ok_or_else(|| missing(stream, event))?;
                s.state = SnapshotState::Deleted;
                s
            }
            Event::SnapshotDeleteRequested { operation_id } => {
                let mut s = current.ok_or_else(|| missing(stream, event))?;
                if !s.state.is_deletable() {
                    return Err(invalid(stream, event, s.state));
                }
                s.state = SnapshotState::Deleting;
                s.deleted_by = Some(*operation_id);
                s
            }
            Event::SnapshotRestoreRequested { .. } => {
                let s = current.ok_or_else(|| missing(stream, event))?;
                if s.state != SnapshotState::Ready {
                    return Err(invalid(stream, event, s.state));
                }
                s
            }
            Event::SnapshotDeleteFailed { state, error } => {
                let mut s = current.ok_or_else(|| missing(stream, event))?;
                if s.state != SnapshotState::Deleting || !state.is_deletable() {
                    return Err(invalid(stream, event, s.state));
                }
                s.state = *state;
                s.error = (*state == SnapshotState::Failed).then(|| error.clone());
                s.deleted_by = None;
                s
            }
            Event::SnapshotArtifactMissing { missing: gone } => {
                let mut s = current.ok_or_else(|| missing(stream, event))?;
                if s.state != SnapshotState::Ready {
                    return Err(invalid(stream, event, s.state));
                }
                s.state = SnapshotState::Missing;
                s.error = Some(
                    Status::new(
                        crate::error::Code::FailedPrecondition,
                        format!(
                            "the artifact is incomplete in the snapshot storage: {} missing or changed",
                            gone.join(", ")
                        ),
                    )
                    .with_reason("SNAPSHOT_MISSING"),
                );
                s
            }
            Event::SnapshotArtifactFound {} => {
                let mut s = current.ok_or_else(|| missing(stream, event))?;
                if s.state != SnapshotState::Missing {
                    return Err(invalid(stream, event, s.state));
                }
                s.state = SnapshotState::Ready;
                s.error = None;
                s
            }
            Event::SnapshotImported {
                vcluster_uid,
                vcluster,
                project,
                description,
                taken_at,
                size_bytes,
                sha256,
                location,
                metadata,
            } => {
                // An import is a snapshot started and completed at once, taken when the
                // manifest says; its id is the id of the operation that wrote it.
                let started = Event::SnapshotStarted {
                    operation_id: OperationId(id.0),
                    vcluster_uid: *vcluster_uid,
                    vcluster: vcluster.clone(),
                    project: project.clone(),
                    description: description.clone(),
                };
                let completed = Event::SnapshotCompleted {
                    size_bytes: *size_bytes,
                    sha256: sha256.clone(),
                    location: location.clone(),
                    metadata: metadata.clone(),
                };
                let s = Snapshot::apply(current, id, stream, version, at, &started)?;
                let mut s = Snapshot::apply(Some(s), id, stream, version, at, &completed)?;
                s.created_at = *taken_at;
                s
            }
            _ => return Err(wrong(stream, event)),
        };
        snap.version = version;
        snap.updated_at = at;
        Ok(snap)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::Code;

    fn t(s: i64) -> DateTime<Utc> {
        DateTime::from_timestamp(1_700_000_000 + s, 0).expect("time")
    }

    fn op_id() -> OperationId {
        OperationId(uuid::Uuid::from_u128(1))
    }

    #[test]
    fn vcluster_lifecycle_folds() {
        let uid = VClusterId(uuid::Uuid::from_u128(9));
        let create = Event::CreateRequested {
            operation_id: op_id(),
            name: "team-a".parse().expect("name"),
            project: "default".parse().expect("project"),
            spec: VClusterSpec::default(),
            host_namespace: "ovc-default-team-a".into(),
        };
        let vc = VCluster::apply(None, uid, "s", 1, t(0), &create).expect("create");
        assert_eq!(vc.state, VClusterState::Creating);
        assert_eq!(vc.active_operation, Some(op_id()));
        assert!(VCluster::apply(Some(vc.clone()), uid, "s", 2, t(1), &create).is_err());

        let settled = Event::VClusterSettled {
            operation_id: op_id(),
            state: VClusterState::Running,
            spec: None,
        };
        let vc = VCluster::apply(Some(vc), uid, "s", 2, t(1), &settled).expect("settle");
        assert_eq!(vc.state, VClusterState::Running);
        assert_eq!(vc.active_operation, None);
        assert_eq!(vc.last_operation, Some(op_id()));
        assert_eq!(vc.version, 2);
        assert_eq!(vc.updated_at, t(1));
        assert_eq!(vc.created_at, t(0));

        let suspend = Event::SuspendRequested {
            operation_id: op_id(),
        };
        assert!(VCluster::apply(None, uid, "s", 1, t(0), &suspend).is_err());
        // The generic command event moves the vcluster to its kind's in-progress state,
        // as the per-kind events it replaces did.
        for kind in [
            "CREATE",
            "SUSPEND",
            "RESUME",
            "SNAPSHOT",
            "RESTORE",
            "SCALE",
            "UPGRADE",
            "DELETE",
            "DELETE_SNAPSHOT",
            "NEW_ONE",
        ] {
            let kind = OperationKind::from_trusted(kind).expect("kind");
            let accepted = Event::OperationAccepted {
                operation_id: op_id(),
                kind,
                state: None,
            };
            let got = VCluster::apply(Some(vc.clone()), uid, "s", 3, t(2), &accepted);
            match kind.legacy_in_progress_state() {
                Some(state) => {
                    let got = got.expect("accepted");
                    assert_eq!(got.state, state, "{kind}");
                    assert_eq!(got.active_operation, Some(op_id()));
                }
                None => assert!(got.is_err(), "{kind} has no vcluster state"),
            }
            // A new event names its state: any kind, any in-progress state.
            let accepted = Event::OperationAccepted {
                operation_id: op_id(),
                kind,
                state: Some(VClusterState::Upgrading),
            };
            let got =
                VCluster::apply(Some(vc.clone()), uid, "s", 3, t(2), &accepted).expect("accepted");
            assert_eq!(got.state, VClusterState::Upgrading);
        }
        let step = Event::StepStarted {
            step: "x".into(),
            attempt: 1,
        };
        assert!(matches!(
            VCluster::apply(Some(vc), uid, "s", 3, t(2), &step),
            Err(ProjectionError::WrongStream { .. })
        ));
    }

    #[test]
    fn operation_steps_fold_and_terminal_is_final() {
        let requested = Event::OperationRequested {
            vcluster_uid: VClusterId(uuid::Uuid::from_u128(9)),
            vcluster: "team-a".parse().expect("name"),
            project: "default".parse().expect("project"),
            command: Command::new(crate::command::DeleteParams {}),
            request_id: Some("r1".into()),
            retry_of: None,
            prior_state: Some(VClusterState::Running),
            steps: vec!["uninstall".into(), "delete_namespace".into()],
        };
        let mut op = Operation::apply(None, op_id(), "o", 1, t(0), &requested).expect("req");
        assert_eq!(op.steps.len(), 2);
        assert_eq!(op.state, OperationState::Pending);
        let events = [
            Event::StepStarted {
                step: "uninstall".into(),
                attempt: 1,
            },
            Event::StepFailed {
                step: "uninstall".into(),
                attempt: 1,
                error: Status::new(Code::Unavailable, "blip"),
                will_retry: true,
            },
            Event::StepStarted {
                step: "uninstall".into(),
                attempt: 2,
            },
            Event::StepSucceeded {
                step: "uninstall".into(),
                output: serde_json::Value::Null,
            },
        ];
        for (i, e) in events.iter().enumerate() {
            op = Operation::apply(Some(op), op_id(), "o", i as u64 + 2, t(i as i64 + 1), e)
                .expect("fold");
        }
        assert_eq!(op.state, OperationState::Running);
        assert_eq!(op.steps[0].state, StepState::Succeeded);
        assert_eq!(op.steps[0].attempts, 2);
        assert_eq!(op.steps[0].started_at, Some(t(1)));
        assert_eq!(op.steps[0].error, None);
        assert_eq!(op.steps[1].state, StepState::Pending);

        let done = Event::OperationSucceeded {
            result: serde_json::json!({"ok": true}),
        };
        op = Operation::apply(Some(op), op_id(), "o", 6, t(9), &done).expect("done");
        assert!(op.done);
        let late = Event::StepStarted {
            step: "delete_namespace".into(),
            attempt: 1,
        };
        assert!(matches!(
            Operation::apply(Some(op), op_id(), "o", 7, t(10), &late),
            Err(ProjectionError::AfterTerminal { .. })
        ));
    }

    #[test]
    fn snapshot_deletion_folds_and_checks_the_state() {
        let id = SnapshotId(uuid::Uuid::from_u128(3));
        let del = OperationId(uuid::Uuid::from_u128(4));
        let fold = |s: Option<Snapshot>, v: u64, e: &Event| {
            Snapshot::apply(s, id, "snap", v, t(v as i64), e)
        };
        let started = Event::SnapshotStarted {
            operation_id: op_id(),
            vcluster_uid: VClusterId(uuid::Uuid::from_u128(9)),
            vcluster: "team-a".parse().expect("name"),
            project: "default".parse().expect("project"),
            description: None,
        };
        let creating = fold(None, 1, &started).expect("started");
        let delete = Event::SnapshotDeleteRequested { operation_id: del };
        let restore = Event::SnapshotRestoreRequested { operation_id: del };
        assert!(matches!(
            fold(Some(creating.clone()), 2, &delete),
            Err(ProjectionError::InvalidState {
                state: "CREATING",
                ..
            })
        ));
        assert!(fold(Some(creating.clone()), 2, &restore).is_err());
        let ready = fold(
            Some(creating),
            2,
            &Event::SnapshotCompleted {
                size_bytes: 3,
                sha256: "ab".into(),
                location: "file:///x/".into(),
                metadata: serde_json::json!({}),
            },
        )
        .expect("completed");
        let used = fold(Some(ready), 3, &restore).expect("restore requested");
        assert_eq!(used.state, SnapshotState::Ready);
        assert_eq!(used.version, 3);
        let deleting = fold(Some(used), 4, &delete).expect("delete requested");
        assert_eq!(deleting.state, SnapshotState::Deleting);
        assert_eq!(deleting.deleted_by, Some(del));
        assert!(fold(Some(deleting.clone()), 5, &restore).is_err());
        assert!(fold(Some(deleting.clone()), 5, &delete).is_err());
        let error = Status::new(Code::FailedPrecondition, "refused");
        let back = fold(
            Some(deleting.clone()),
            5,
            &Event::SnapshotDeleteFailed {
                state: SnapshotState::Ready,
                error: error.clone(),
            },
        )
        .expect("back to ready");
        assert_eq!(
            (back.state, back.deleted_by, back.error),
            (SnapshotState::Ready, None, None)
        );
        let failed = fold(
            Some(deleting.clone()),
            5,
            &Event::SnapshotDeleteFailed {
                state: SnapshotState::Failed,
                error: error.clone(),
            },
        )
        .expect("failed");
        assert_eq!(failed.state, SnapshotState::Failed);
        assert_eq!(failed.error, Some(error.clone()));
        // A FAILED snapshot may be deleted again; a delete cannot "fail" into DELETED.
        assert!(fold(Some(failed), 6, &delete).is_ok());
        assert!(
            fold(
                Some(deleting.clone()),
                5,
                &Event::SnapshotDeleteFailed {
                    state: SnapshotState::Deleted,
                    error,
                },
            )
            .is_err()
        );
        let gone = fold(Some(deleting), 5, &Event::SnapshotDeleted {}).expect("deleted");
        assert_eq!(gone.state, SnapshotState::Deleted);
        assert_eq!(gone.deleted_by, Some(del));
        assert!(fold(Some(gone), 6, &delete).is_err());
    }

    #[test]
    fn a_vanished_artifact_makes_the_snapshot_missing_until_it_is_back() {
        let id = SnapshotId(uuid::Uuid::from_u128(3));
        let fold = |s: Option<Snapshot>, v: u64, e: &Event| {
            Snapshot::apply(s, id, "snap", v, t(v as i64), e)
        };
        let imported = Event::SnapshotImported {
            vcluster_uid: VClusterId(uuid::Uuid::from_u128(9)),
            vcluster: "team-a".parse().expect("name"),
            project: "default".parse().expect("project"),
            description: Some("nightly".into()),
            taken_at: t(-100),
            size_bytes: 3,
            sha256: "ab".into(),
            location: "file:///x/".into(),
            metadata: serde_json::json!({}),
        };
        let ready = fold(None, 1, &imported).expect("imported");
        assert_eq!(ready.state, SnapshotState::Ready);
        assert_eq!(
            ready.created_at,
            t(-100),
            "the time it was taken, not imported"
        );
        assert_eq!(ready.operation_id, OperationId(id.0));
        assert!(
            fold(Some(ready.clone()), 2, &imported).is_err(),
            "imported twice"
        );
        let lost = Event::SnapshotArtifactMissing {
            missing: vec!["backing-store.bin".into()],
        };
        let missing = fold(Some(ready.clone()), 2, &lost).expect("missing");
        assert_eq!(missing.state, SnapshotState::Missing);
        let why = missing.error.clone().expect("why");
        assert_eq!(why.reason(), Some("SNAPSHOT_MISSING"));
        assert!(why.message.contains("backing-store.bin"), "{why:?}");
        assert!(fold(Some(missing.clone()), 3, &lost).is_err());
        assert!(
            fold(
                Some(missing.clone()),
                3,
                &Event::SnapshotRestoreRequested {
                    operation_id: op_id()
                }
            )
            .is_err(),
            "a MISSING snapshot is never restored"
        );
        assert!(
            fold(
                Some(missing.clone()),
                3,
                &Event::SnapshotDeleteRequested {
                    operation_id: op_id()
                }
            )
            .is_ok(),
            "a MISSING snapshot may be deleted"
        );
        let back = fold(Some(missing), 3, &Event::SnapshotArtifactFound {}).expect("found");
        assert_eq!((back.state, back.error), (SnapshotState::Ready, None));
        assert!(fold(Some(ready), 2, &Event::SnapshotArtifactFound {}).is_err());
    }

    #[test]
    fn host_namespace_is_short_readable_and_injective() {
        let uid = |n: u128| VClusterId(uuid::Uuid::from_u128(n));
        let long: VClusterName = "b".repeat(40).parse().expect("name");
        let ns = host_namespace(&long, uid(1));
        assert_eq!(ns.len(), 63, "{ns}");
        assert_eq!(ns, format!("ovc-{}-{:032x}", "b".repeat(26), 1));
        // A '-' at the cut is trimmed, so the label stays valid.
        let cut: VClusterName = format!("{}-tail", "x".repeat(25)).parse().expect("name");
        let ns = host_namespace(&cut, uid(2));
        assert!(
            ns.starts_with(&format!("ovc-{}-0000", "x".repeat(25))),
            "{ns}"
        );
        assert!(!ns.contains("--"), "{ns}");
        // The pair that collided under the legacy scheme (projects a and a-b).
        let (p1, n1): (ProjectName, VClusterName) =
            ("a".parse().expect("p"), "b-c".parse().expect("n"));
        let (p2, n2): (ProjectName, VClusterName) =
            ("a-b".parse().expect("p"), "c".parse().expect("n"));
        assert_eq!(
            legacy_host_namespace(&p1, &n1),
            legacy_host_namespace(&p2, &n2)
        );
        assert_ne!(host_namespace(&n1, uid(3)), host_namespace(&n2, uid(4)));
        // The same name with a new uid (reused after deletion) is a new namespace.
        assert_ne!(host_namespace(&n1, uid(3)), host_namespace(&n1, uid(5)));
        let short = host_namespace(&"team-a".parse().expect("n"), uid(0xab));
        assert_eq!(short, format!("ovc-team-a-{:032x}", 0xab));
    }

    #[test]
    fn legacy_host_namespace_fits_63_chars() {
        let p: ProjectName = "a".repeat(63).parse().expect("project");
        let n: VClusterName = "b".repeat(40).parse().expect("name");
        let ns = legacy_host_namespace(&p, &n);
        assert!(ns.len() <= 63, "{ns}");
        assert_ne!(
            ns,
            legacy_host_namespace(&p, &"c".repeat(40).parse().expect("name"))
        );
        let short = legacy_host_namespace(
            &"default".parse().expect("p"),
            &"team-a".parse().expect("n"),
        );
        assert_eq!(short, "ovc-default-team-a");
    }
}
