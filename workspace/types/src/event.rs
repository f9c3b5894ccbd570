//! The events: everything ovc knows is a sequence of these, appended to streams
//! (`vcluster-<uid>`, `operation-<id>`, `snapshot-<id>`, `audit-<project>`) and never
//! changed.
//!
//! Names are past tense (DESIGN.md §4). On disk an event is a `type` string plus a JSON
//! `data` object that carries the payload version in `"v"`; [`Event::encode`] and
//! [`Event::decode`] are the only way in and out, so an old payload version is upgraded
//! in one place when a payload changes.

use crate::command::Command;
use crate::error::Status;
use crate::ids::{OperationId, SnapshotId, VClusterId};
use crate::name::{ProjectName, VClusterName};
use crate::spec::VClusterSpec;
use crate::state::{OperationKind, SnapshotState, VClusterState};
use serde::{Deserialize, Serialize};
use std::fmt;

/// The current payload version written for every event type.
pub const PAYLOAD_VERSION: u64 = 1;

/// The name of an event stream.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(transparent)]
pub struct StreamName(String);

/// The longest stream name the store accepts.
pub const MAX_STREAM_NAME_LEN: usize = 128;

/// Why a stream name was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StreamNameError {
    /// Empty.
    #[error("stream name must not be empty")]
    Empty,
    /// Longer than [`MAX_STREAM_NAME_LEN`].
    #[error("stream name is {0} bytes; at most {MAX_STREAM_NAME_LEN} allowed")]
    TooLong(usize),
    /// A character outside `[a-z0-9-_.:]`.
    #[error("stream name {0:?} may only contain a-z, 0-9, '-', '_', '.', ':'")]
    BadChar(String),
}

impl StreamName {
    /// A validated stream name.
    pub fn new(name: impl Into<String>) -> Result<Self, StreamNameError> {
        let name = name.into();
        if name.is_empty() {
            return Err(StreamNameError::Empty);
        }
        if name.len() > MAX_STREAM_NAME_LEN {
            return Err(StreamNameError::TooLong(name.len()));
        }
        if !name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"-_.:".contains(&b))
        {
            return Err(StreamNameError::BadChar(name));
        }
        Ok(Self(name))
    }

    /// `vcluster-<uid>`.
    pub fn vcluster(id: VClusterId) -> Self {
        Self(format!("vcluster-{id}"))
    }

    /// `operation-<id>`.
    pub fn operation(id: OperationId) -> Self {
        Self(format!("operation-{id}"))
    }

    /// `snapshot-<id>`.
    pub fn snapshot(id: SnapshotId) -> Self {
        Self(format!("snapshot-{id}"))
    }

    /// `audit-<project>`: the audit trail of a project (kubeconfig reads). It has no
    /// projection, and nobody waits on its version.
    pub fn audit(project: &ProjectName) -> Self {
        Self(format!("audit-{project}"))
    }

    /// The name.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// What kind of entity this stream belongs to, from its prefix.
    pub fn category(&self) -> &str {
        self.0.split('-').next().unwrap_or("")
    }
}

impl fmt::Display for StreamName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// Context recorded with every event (API.md `Event.metadata`). Never holds secrets.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct EventMetadata {
    /// The client's request id, for commands.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub request_id: Option<String>,
    /// W3C traceparent of the request that caused this, so workers continue the trace.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub traceparent: Option<String>,
    /// Who did it: a token's name, `worker:<id>`, `operator:<name>`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub actor: Option<String>,
    /// The operation this event belongs to (correlation id).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub correlation_id: Option<OperationId>,
}

/// A vcluster that a restore creates.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NewVCluster {
    /// Its name.
    pub name: VClusterName,
    /// Its project.
    pub project: ProjectName,
    /// Its spec (from the snapshot's metadata).
    pub spec: VClusterSpec,
    /// Its host namespace.
    pub host_namespace: String,
}

/// Every event ovc writes. Serialized as `{"type": "...", "data": {...}}`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", content = "data")]
pub enum Event {
    // ---- vcluster-<uid>: commands -------------------------------------------------
    /// A vcluster was requested (stream `vcluster-<uid>`, version 1).
    CreateRequested {
        /// The operation that creates it.
        operation_id: OperationId,
        /// Its name.
        name: VClusterName,
        /// Its project.
        project: ProjectName,
        /// Its spec.
        spec: VClusterSpec,
        /// The host namespace it will live in.
        host_namespace: String,
    },
    /// Suspend was requested.
    SuspendRequested {
        /// The operation.
        operation_id: OperationId,
    },
    /// Resume was requested.
    ResumeRequested {
        /// The operation.
        operation_id: OperationId,
    },
    /// A snapshot was requested.
    SnapshotRequested {
        /// The operation.
        operation_id: OperationId,
        /// The snapshot it will write.
        snapshot_id: SnapshotId,
    },
    /// A restore was requested; `new_vcluster` is set when it creates the vcluster.
    RestoreRequested {
        /// The operation.
        operation_id: OperationId,
        /// The snapshot to restore.
        snapshot_id: SnapshotId,
        /// Present when the restore creates this vcluster.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        new_vcluster: Option<NewVCluster>,
    },
    /// Scale was requested.
    ScaleRequested {
        /// The operation.
        operation_id: OperationId,
    },
    /// Delete was requested.
    DeleteRequested {
        /// The operation.
        operation_id: OperationId,
    },
    /// An operation of `kind` was accepted on this existing vcluster: the vcluster is in
    /// `kind`'s in-progress state until the operation settles, reverts or fails it. The
    /// one command event every operation on an existing vcluster writes (the operation's
    /// parameters are in its own stream's `OperationRequested`); the per-kind
    /// `*Requested` events above are what ovc wrote before, and are still read.
    OperationAccepted {
        /// The operation.
        operation_id: OperationId,
        /// Its kind.
        kind: OperationKind,
        /// The in-progress state the vcluster enters (the kind's, from the registry);
        /// absent in events written before it was recorded, which the fold reads as
        /// the kind's [`OperationKind::legacy_in_progress_state`].
        #[serde(default, skip_serializing_if = "Option::is_none")]
        state: Option<VClusterState>,
    },
    /// A failed operation is being retried by a new operation.
    RetryRequested {
        /// The new operation.
        operation_id: OperationId,
        /// The failed operation it retries.
        retry_of: OperationId,
        /// The kind of both.
        kind: OperationKind,
        /// As in `OperationAccepted`.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        state: Option<VClusterState>,
    },
    // ---- vcluster-<uid>: outcomes -------------------------------------------------
    /// The operation reached its goal; the vcluster is `state` with `spec`.
    VClusterSettled {
        /// The operation that finished.
        operation_id: OperationId,
        /// The stable state now (RUNNING, SUSPENDED or DELETED).
        state: VClusterState,
        /// The spec now, when the operation changed it (scale, restore).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        spec: Option<VClusterSpec>,
    },
    /// The operation failed and was compensated; the vcluster is back in `state`.
    VClusterReverted {
        /// The operation that failed.
        operation_id: OperationId,
        /// The stable state it had before.
        state: VClusterState,
    },
    /// An undo failed permanently; the vcluster needs delete or retry.
    VClusterFailed {
        /// The operation that got stuck.
        operation_id: OperationId,
        /// Why.
        error: Status,
    },
    // ---- operation-<id> -----------------------------------------------------------
    /// An operation was accepted (stream `operation-<id>`, version 1).
    OperationRequested {
        /// The vcluster's uid.
        vcluster_uid: VClusterId,
        /// The vcluster's name.
        vcluster: VClusterName,
        /// The project.
        project: ProjectName,
        /// What to do.
        command: Command,
        /// The client's request id.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        request_id: Option<String>,
        /// The operation this one retries.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        retry_of: Option<OperationId>,
        /// The vcluster's stable state before (`None` when it creates the vcluster).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        prior_state: Option<VClusterState>,
        /// The steps the workflow plans to run, in order.
        #[serde(default)]
        steps: Vec<String>,
    },
    /// A step began an attempt.
    StepStarted {
        /// The step's persisted name.
        step: String,
        /// 1 for the first attempt.
        attempt: u32,
    },
    /// A step's effect is in place.
    StepSucceeded {
        /// The step.
        step: String,
        /// What the step produced, read back by later steps and undos.
        #[serde(default, skip_serializing_if = "serde_json::Value::is_null")]
        output: serde_json::Value,
    },
    /// A step attempt failed.
    StepFailed {
        /// The step.
        step: String,
        /// The attempt that failed.
        attempt: u32,
        /// Why.
        error: Status,
        /// True when it will be retried; false when compensation follows.
        will_retry: bool,
    },
    /// A retry took over a step whose effect the retried operation left in place.
    StepInherited {
        /// The step.
        step: String,
        /// The retried operation.
        from_operation: OperationId,
        /// The output it journaled there.
        #[serde(default, skip_serializing_if = "serde_json::Value::is_null")]
        output: serde_json::Value,
    },
    /// A step was not needed.
    StepSkipped {
        /// The step.
        step: String,
    },
    /// Compensation began: completed steps will be undone in reverse.
    CompensationStarted {
        /// The failure (or cancellation) that caused it.
        error: Status,
    },
    /// A step's effect was undone.
    StepCompensated {
        /// The step.
        step: String,
    },
    /// A step's undo failed permanently.
    UndoFailed {
        /// The step.
        step: String,
        /// Why.
        error: Status,
    },
    /// Someone asked to cancel the operation.
    CancelRequested {
        /// Who.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        actor: Option<String>,
    },
    /// The operation finished successfully.
    OperationSucceeded {
        /// The result (e.g. the snapshot, the vcluster).
        #[serde(default, skip_serializing_if = "serde_json::Value::is_null")]
        result: serde_json::Value,
    },
    /// The operation failed and its effects were undone.
    OperationFailed {
        /// Why.
        error: Status,
    },
    /// The operation was cancelled and its effects were undone.
    OperationCancelled {
        /// The cancellation status.
        error: Status,
    },
    /// Compensation could not finish; an operator must act.
    OperationStuck {
        /// Why.
        error: Status,
    },
    // ---- snapshot-<id> ------------------------------------------------------------
    /// A snapshot artifact is being written (stream `snapshot-<id>`, version 1).
    SnapshotStarted {
        /// The operation writing it.
        operation_id: OperationId,
        /// The vcluster's uid.
        vcluster_uid: VClusterId,
        /// The vcluster's name.
        vcluster: VClusterName,
        /// The project.
        project: ProjectName,
        /// Free text.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        description: Option<String>,
    },
    /// The artifact is complete.
    SnapshotCompleted {
        /// Total bytes.
        size_bytes: u64,
        /// SHA-256 of the manifest.
        sha256: String,
        /// Where it is (storage URL).
        location: String,
        /// Spec, helm values, versions, labels.
        metadata: serde_json::Value,
    },
    /// The artifact could not be written.
    SnapshotFailed {
        /// Why.
        error: Status,
    },
    /// The artifact was deleted.
    SnapshotDeleted {},
    /// A DELETE_SNAPSHOT operation was accepted (written by accept, with the snapshot
    /// stream's expected version): the snapshot is DELETING and can no longer be
    /// restored.
    SnapshotDeleteRequested {
        /// The deleting operation.
        operation_id: OperationId,
    },
    /// A RESTORE from this snapshot was accepted. It changes no field but the stream's
    /// version, so a concurrent delete's accept (which expects the version it read)
    /// loses with ABORTED instead of deleting the artifact under the restore.
    SnapshotRestoreRequested {
        /// The restoring operation.
        operation_id: OperationId,
    },
    /// A DELETE_SNAPSHOT operation failed or was cancelled; the snapshot is `state` again:
    /// READY when its artifact still verifies against the manifest and the recorded
    /// sha256, else FAILED (some objects may be gone; delete it again).
    SnapshotDeleteFailed {
        /// READY or FAILED.
        state: SnapshotState,
        /// Why the delete failed.
        error: Status,
    },
    /// The inventory check found the READY snapshot's artifact incomplete: `missing`
    /// names what is gone (`manifest.json`, a data file) or changed (a manifest whose
    /// sha256 is not the recorded one). The snapshot is MISSING.
    SnapshotArtifactMissing {
        /// What is gone or changed, one entry per file.
        missing: Vec<String>,
    },
    /// A MISSING snapshot's artifact is complete again (put back from a backup): READY.
    SnapshotArtifactFound {},
    /// An artifact whose index entry was lost was registered again from its manifest
    /// (`ovc snapshot import`): stream `snapshot-<id>`, version 1, READY at once.
    SnapshotImported {
        /// The vcluster's uid, from the manifest's metadata (nil when an older manifest
        /// does not say and no vcluster of that name exists).
        vcluster_uid: VClusterId,
        /// The vcluster's name.
        vcluster: VClusterName,
        /// The project.
        project: ProjectName,
        /// Free text, from the manifest's metadata.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        description: Option<String>,
        /// When the snapshot was taken (the manifest's `created_at`).
        taken_at: chrono::DateTime<chrono::Utc>,
        /// Total bytes.
        size_bytes: u64,
        /// SHA-256 of the manifest.
        sha256: String,
        /// Where it is (storage URL).
        location: String,
        /// Spec, helm values, versions, labels.
        metadata: serde_json::Value,
    },
    // ---- audit-<project> ----------------------------------------------------------
    /// Somebody read a vcluster's kubeconfig (a full-control credential). Who and which
    /// vcluster, never the content; when = the event's commit time.
    KubeconfigRead {
        /// The vcluster's uid.
        vcluster_uid: VClusterId,
        /// Its name.
        vcluster: VClusterName,
        /// Its project.
        project: ProjectName,
        /// The token that read it (`None`: the server runs without auth).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        token_id: Option<uuid::Uuid>,
        /// The token's role, or `anonymous` without auth.
        role: String,
    },
}

/// Why stored bytes could not be turned back into an [`Event`].
#[derive(Debug, thiserror::Error)]
pub enum DecodeError {
    /// `data` is not a JSON object.
    #[error("event {event_type}: data is not a JSON object")]
    NotAnObject {
        /// The stored type.
        event_type: String,
    },
    /// Written by a newer ovc than this one.
    #[error(
        "event {event_type}: payload version {found} is newer than this build understands ({PAYLOAD_VERSION})"
    )]
    FutureVersion {
        /// The stored type.
        event_type: String,
        /// The stored version.
        found: u64,
    },
    /// Unknown type or payload shape.
    #[error("event {event_type}: {source}")]
    Payload {
        /// The stored type.
        event_type: String,
        /// The serde error.
        #[source]
        source: serde_json::Error,
    },
}

impl Event {
    /// The event's type name, e.g. `StepSucceeded`.
    pub fn event_type(&self) -> &'static str {
        match self {
            Event::CreateRequested { .. } => "CreateRequested",
            Event::SuspendRequested { .. } => "SuspendRequested",
            Event::ResumeRequested { .. } => "ResumeRequested",
            Event::SnapshotRequested { .. } => "SnapshotRequested",
            Event::RestoreRequested { .. } => "RestoreRequested",
            Event::ScaleRequested { .. } => "ScaleRequested",
            Event::DeleteRequested { .. } => "DeleteRequested",
            Event::OperationAccepted { .. } => "OperationAccepted",
            Event::RetryRequested { .. } => "RetryRequested",
            Event::VClusterSettled { .. } => "VClusterSettled",
            Event::VClusterReverted { .. } => "VClusterReverted",
            Event::VClusterFailed { .. } => "VClusterFailed",
            Event::OperationRequested { .. } => "OperationRequested",
            Event::StepStarted { .. } => "StepStarted",
            Event::StepSucceeded { .. } => "StepSucceeded",
            Event::StepFailed { .. } => "StepFailed",
            Event::StepInherited { .. } => "StepInherited",
            Event::StepSkipped { .. } => "StepSkipped",
            Event::CompensationStarted { .. } => "CompensationStarted",
            Event::StepCompensated { .. } => "StepCompensated",
            Event::UndoFailed { .. } => "UndoFailed",
            Event::CancelRequested { .. } => "CancelRequested",
            Event::OperationSucceeded { .. } => "OperationSucceeded",
            Event::OperationFailed { .. } => "OperationFailed",
            Event::OperationCancelled { .. } => "OperationCancelled",
            Event::OperationStuck { .. } => "OperationStuck",
            Event::SnapshotStarted { .. } => "SnapshotStarted",
            Event::SnapshotCompleted { .. } => "SnapshotCompleted",
            Event::SnapshotFailed { .. } => "SnapshotFailed",
            Event::SnapshotDeleted {} => "SnapshotDeleted",
            Event::SnapshotDeleteRequested { .. } => "SnapshotDeleteRequested",
            Event::SnapshotRestoreRequested { .. } => "SnapshotRestoreRequested",
            Event::SnapshotDeleteFailed { .. } => "SnapshotDeleteFailed",
            Event::SnapshotArtifactMissing { .. } => "SnapshotArtifactMissing",
            Event::SnapshotArtifactFound {} => "SnapshotArtifactFound",
            Event::SnapshotImported { .. } => "SnapshotImported",
            Event::KubeconfigRead { .. } => "KubeconfigRead",
        }
    }

    /// The `(type, data)` pair to store; `data` carries `"v": PAYLOAD_VERSION`.
    pub fn encode(&self) -> (&'static str, serde_json::Value) {
        let mut value = serde_json::to_value(self).unwrap_or(serde_json::Value::Null);
        let mut data = value
            .get_mut("data")
            .map(serde_json::Value::take)
            .unwrap_or_else(|| serde_json::Value::Object(Default::default()));
        if let serde_json::Value::Object(map) = &mut data {
            map.insert("v".into(), PAYLOAD_VERSION.into());
        }
        (self.event_type(), data)
    }

    /// The event stored as `(event_type, data)`; the inverse of [`Event::encode`].
    pub fn decode(event_type: &str, data: &serde_json::Value) -> Result<Event, DecodeError> {
        let serde_json::Value::Object(map) = data else {
            return Err(DecodeError::NotAnObject {
                event_type: event_type.to_string(),
            });
        };
        let mut map = map.clone();
        let version = map
            .remove("v")
            .and_then(|v| v.as_u64())
            .unwrap_or(PAYLOAD_VERSION);
        if version > PAYLOAD_VERSION {
            return Err(DecodeError::FutureVersion {
                event_type: event_type.to_string(),
                found: version,
            });
        }
        // Upcasters for older payload versions go here, keyed by (event_type, version).
        let tagged = serde_json::json!({"type": event_type, "data": map});
        serde_json::from_value(tagged).map_err(|source| DecodeError::Payload {
            event_type: event_type.to_string(),
            source,
        })
    }

    /// The operation an event on a vcluster or snapshot stream refers to, if any.
    pub fn operation_id(&self) -> Option<OperationId> {
        match self {
            Event::CreateRequested { operation_id, .. }
            | Event::SuspendRequested { operation_id }
            | Event::ResumeRequested { operation_id }
            | Event::SnapshotRequested { operation_id, .. }
            | Event::RestoreRequested { operation_id, .. }
            | Event::ScaleRequested { operation_id }
            | Event::DeleteRequested { operation_id }
            | Event::OperationAccepted { operation_id, .. }
            | Event::RetryRequested { operation_id, .. }
            | Event::VClusterSettled { operation_id, .. }
            | Event::VClusterReverted { operation_id, .. }
            | Event::VClusterFailed { operation_id, .. }
            | Event::SnapshotStarted { operation_id, .. }
            | Event::SnapshotDeleteRequested { operation_id }
            | Event::SnapshotRestoreRequested { operation_id } => Some(*operation_id),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::Code;
    use serde_json::json;

    fn samples() -> Vec<Event> {
        let op = OperationId(uuid::Uuid::from_u128(7));
        vec![
            Event::CreateRequested {
                operation_id: op,
                name: "team-a".parse().expect("name"),
                project: "default".parse().expect("project"),
                spec: VClusterSpec::default(),
                host_namespace: "ovc-default-team-a".into(),
            },
            Event::SuspendRequested { operation_id: op },
            Event::OperationAccepted {
                operation_id: op,
                kind: OperationKind::from_static("UPGRADE"),
                state: None,
            },
            Event::OperationAccepted {
                operation_id: op,
                kind: OperationKind::SUSPEND,
                state: Some(VClusterState::Suspending),
            },
            Event::StepStarted {
                step: "scale_to_zero".into(),
                attempt: 1,
            },
            Event::StepSucceeded {
                step: "scale_to_zero".into(),
                output: json!({"replicas": 1}),
            },
            Event::StepFailed {
                step: "wait".into(),
                attempt: 2,
                error: Status::new(Code::Unavailable, "host down"),
                will_retry: true,
            },
            Event::OperationSucceeded {
                result: json!(null),
            },
            Event::SnapshotDeleted {},
            Event::SnapshotDeleteRequested { operation_id: op },
            Event::SnapshotRestoreRequested { operation_id: op },
            Event::SnapshotDeleteFailed {
                state: SnapshotState::Failed,
                error: Status::new(Code::FailedPrecondition, "storage refused"),
            },
            Event::SnapshotArtifactMissing {
                missing: vec!["backing-store.bin".into()],
            },
            Event::SnapshotArtifactFound {},
            Event::SnapshotImported {
                vcluster_uid: VClusterId(uuid::Uuid::from_u128(8)),
                vcluster: "team-a".parse().expect("name"),
                project: "default".parse().expect("project"),
                description: Some("before the upgrade".into()),
                taken_at: "2026-11-30T10:00:00Z".parse().expect("time"),
                size_bytes: 42,
                sha256: "ab".repeat(32),
                location: "file:///tmp/x/".into(),
                metadata: json!({"spec": {}}),
            },
            Event::KubeconfigRead {
                vcluster_uid: VClusterId(uuid::Uuid::from_u128(8)),
                vcluster: "team-a".parse().expect("name"),
                project: "default".parse().expect("project"),
                token_id: Some(uuid::Uuid::from_u128(9)),
                role: "operator".into(),
            },
        ]
    }

    #[test]
    fn encode_decode_roundtrip_with_version() {
        for ev in samples() {
            let (ty, data) = ev.encode();
            assert_eq!(ty, ev.event_type());
            assert_eq!(data["v"], 1, "{ty}");
            let back = Event::decode(ty, &data).expect("decode");
            assert_eq!(back, ev);
        }
    }

    #[test]
    fn decode_refuses_garbage_without_panicking() {
        assert!(matches!(
            Event::decode("StepStarted", &json!([1, 2])),
            Err(DecodeError::NotAnObject { .. })
        ));
        assert!(matches!(
            Event::decode("NoSuchEvent", &json!({"v": 1})),
            Err(DecodeError::Payload { .. })
        ));
        assert!(matches!(
            Event::decode("StepStarted", &json!({"v": 1, "step": 5})),
            Err(DecodeError::Payload { .. })
        ));
        assert!(matches!(
            Event::decode("StepStarted", &json!({"v": 9, "step": "x", "attempt": 1})),
            Err(DecodeError::FutureVersion { found: 9, .. })
        ));
    }

    #[test]
    fn stream_names() {
        assert!(StreamName::new("").is_err());
        assert!(StreamName::new("a".repeat(MAX_STREAM_NAME_LEN + 1)).is_err());
        assert!(StreamName::new("Vcluster-1").is_err());
        assert!(StreamName::new("vcluster 1").is_err());
        let s = StreamName::operation(OperationId(uuid::Uuid::nil()));
        assert_eq!(s.category(), "operation");
        assert!(StreamName::new(s.as_str()).is_ok());
    }
}
