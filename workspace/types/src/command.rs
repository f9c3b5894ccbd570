//! What a caller asked for: the parameters of each mutating call, as recorded in the
//! operation's first event so a worker knows exactly what to do, and hashed for
//! idempotency (API.md "Idempotency": same `request_id` + same parameters = same op).

use crate::ids::SnapshotId;
use crate::name::{ProjectName, VClusterName};
use crate::spec::{ScalePatch, VClusterSpec};
use crate::state::{Call, OperationKind};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

/// Where a restore goes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
pub enum RestoreTarget {
    /// Into a new vcluster with this name (spec from the snapshot's metadata).
    NewName(VClusterName),
    /// Over an existing vcluster.
    Existing(VClusterName),
}

/// The parameters of one mutating call.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(tag = "kind", rename_all = "SCREAMING_SNAKE_CASE", deny_unknown_fields)]
pub enum Command {
    /// CreateVCluster.
    Create {
        /// The desired spec.
        spec: VClusterSpec,
    },
    /// SuspendVCluster.
    Suspend {
        /// Take a snapshot first.
        #[serde(default)]
        snapshot: bool,
        /// Evict workload pods before scaling the control plane down.
        #[serde(default)]
        evict_workloads: bool,
    },
    /// ResumeVCluster.
    Resume {
        /// Trigger a workload reconcile after the control plane is ready.
        #[serde(default)]
        reconcile_workloads: bool,
    },
    /// SnapshotVCluster.
    Snapshot {
        /// Free text kept with the snapshot.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        description: Option<String>,
    },
    /// RestoreVCluster.
    Restore {
        /// The snapshot to restore.
        snapshot_id: SnapshotId,
        /// Where to restore it.
        target: RestoreTarget,
    },
    /// ScaleVCluster.
    Scale {
        /// The fields to change.
        patch: ScalePatch,
    },
    /// UpgradeVCluster: move the chart and/or the virtual Kubernetes on, one minor
    /// version at a time. A field left out keeps its current value.
    Upgrade {
        /// The new chart version (`MAJOR.MINOR.PATCH`).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        vcluster_version: Option<String>,
        /// The new Kubernetes version (`1.MINOR`).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        kubernetes_version: Option<String>,
    },
    /// DeleteVCluster.
    Delete {},
    /// DeleteSnapshot (`DELETE /v1/snapshots/{id}`): deletes the snapshot's artifact. It
    /// targets the snapshot, not a vcluster: the operation carries the snapshot's project
    /// and vcluster name, and the vcluster's state is neither checked nor changed.
    DeleteSnapshot {
        /// The snapshot to delete.
        snapshot_id: SnapshotId,
    },
}

impl Command {
    /// The operation kind this command starts.
    pub fn kind(&self) -> OperationKind {
        match self {
            Command::Create { .. } => OperationKind::Create,
            Command::Suspend { .. } => OperationKind::Suspend,
            Command::Resume { .. } => OperationKind::Resume,
            Command::Snapshot { .. } => OperationKind::Snapshot,
            Command::Restore { .. } => OperationKind::Restore,
            Command::Scale { .. } => OperationKind::Scale,
            Command::Upgrade { .. } => OperationKind::Upgrade,
            Command::Delete {} => OperationKind::Delete,
            Command::DeleteSnapshot { .. } => OperationKind::DeleteSnapshot,
        }
    }

    /// The vcluster state-machine call this command is; `None` for commands that do not
    /// go through the vcluster's state machine (DeleteSnapshot is checked against its
    /// snapshot instead).
    pub fn call(&self) -> Option<Call> {
        Some(match self {
            Command::Create { .. } => Call::Create,
            Command::Suspend { .. } => Call::Suspend,
            Command::Resume { .. } => Call::Resume,
            Command::Snapshot { .. } => Call::Snapshot,
            Command::Restore {
                target: RestoreTarget::NewName(_),
                ..
            } => Call::RestoreNew,
            Command::Restore {
                target: RestoreTarget::Existing(_),
                ..
            } => Call::RestoreOverwrite,
            Command::Scale { .. } => Call::Scale,
            Command::Upgrade { .. } => Call::Upgrade,
            Command::Delete {} => Call::Delete,
            Command::DeleteSnapshot { .. } => return None,
        })
    }
}

/// The idempotency hash of a request: SHA-256 (hex) of the canonical JSON of the
/// project, the target vcluster and the command. Two requests with the same
/// `request_id` must have the same hash, or the second is `REQUEST_ID_REUSED`.
pub fn request_hash(project: &ProjectName, vcluster: &VClusterName, command: &Command) -> String {
    #[derive(Serialize)]
    struct Canonical<'a> {
        project: &'a ProjectName,
        vcluster: &'a VClusterName,
        command: &'a Command,
    }
    // serde_json writes struct fields in declaration order and maps (BTreeMap, and
    // serde_json::Map without `preserve_order`) sorted, so the bytes are canonical.
    let bytes = serde_json::to_vec(&Canonical {
        project,
        vcluster,
        command,
    })
    .unwrap_or_default();
    let digest = Sha256::digest(&bytes);
    digest.iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn names() -> (ProjectName, VClusterName) {
        (
            "default".parse().expect("project"),
            "team-a".parse().expect("name"),
        )
    }

    #[test]
    fn commands_roundtrip_with_kind_tag() {
        let cmds = vec![
            Command::Create {
                spec: VClusterSpec::default(),
            },
            Command::Suspend {
                snapshot: true,
                evict_workloads: false,
            },
            Command::Resume {
                reconcile_workloads: true,
            },
            Command::Snapshot {
                description: Some("before upgrade".into()),
            },
            Command::Restore {
                snapshot_id: SnapshotId(uuid::Uuid::nil()),
                target: RestoreTarget::NewName("copy".parse().expect("name")),
            },
            Command::Scale {
                patch: ScalePatch::default(),
            },
            Command::Upgrade {
                vcluster_version: Some("0.30.0".into()),
                kubernetes_version: None,
            },
            Command::Delete {},
            Command::DeleteSnapshot {
                snapshot_id: SnapshotId(uuid::Uuid::from_u128(5)),
            },
        ];
        for c in cmds {
            let v = serde_json::to_value(&c).expect("ser");
            assert_eq!(v["kind"], c.kind().as_str());
            let back: Command = serde_json::from_value(v).expect("de");
            assert_eq!(back, c);
        }
    }

    #[test]
    fn hash_is_stable_and_parameter_sensitive() {
        let (p, n) = names();
        let a = Command::Suspend {
            snapshot: true,
            evict_workloads: true,
        };
        let b = Command::Suspend {
            snapshot: true,
            evict_workloads: false,
        };
        assert_eq!(request_hash(&p, &n, &a), request_hash(&p, &n, &a.clone()));
        assert_ne!(request_hash(&p, &n, &a), request_hash(&p, &n, &b));
        let other: VClusterName = "team-b".parse().expect("name");
        assert_ne!(request_hash(&p, &n, &a), request_hash(&p, &other, &a));
        assert_eq!(request_hash(&p, &n, &a).len(), 64);
    }

    #[test]
    fn hash_ignores_json_key_order_of_helm_values() {
        let (p, n) = names();
        let s1: VClusterSpec =
            serde_json::from_value(json!({"helm_values": {"a": 1, "b": {"c": 2, "d": 3}}}))
                .expect("spec");
        let s2: VClusterSpec =
            serde_json::from_value(json!({"helm_values": {"b": {"d": 3, "c": 2}, "a": 1}}))
                .expect("spec");
        assert_eq!(
            request_hash(&p, &n, &Command::Create { spec: s1 }),
            request_hash(&p, &n, &Command::Create { spec: s2 })
        );
    }

    #[test]
    fn restore_target_decides_the_call() {
        let id = SnapshotId(uuid::Uuid::nil());
        let new = Command::Restore {
            snapshot_id: id,
            target: RestoreTarget::NewName("x".parse().expect("name")),
        };
        let over = Command::Restore {
            snapshot_id: id,
            target: RestoreTarget::Existing("x".parse().expect("name")),
        };
        assert_eq!(new.call(), Some(Call::RestoreNew));
        assert_eq!(over.call(), Some(Call::RestoreOverwrite));
        let del = Command::DeleteSnapshot { snapshot_id: id };
        assert_eq!(del.call(), None);
        assert_eq!(
            serde_json::to_value(&del).expect("ser"),
            json!({"kind": "DELETE_SNAPSHOT", "snapshot_id": id})
        );
        assert_eq!(
            serde_json::to_value(&new).expect("ser")["target"],
            json!({"new_name": "x"})
        );
    }
}
