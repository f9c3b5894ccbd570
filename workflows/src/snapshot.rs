//! SnapshotVCluster (docs/vcluster-mechanics.md §4): dump the backing store and write it
//! with a manifest (spec, helm values, versions, labels, sha256 of every file) to the
//! snapshot storage, then read it back and verify it. The snapshot's id is the
//! operation's id. On success the vcluster is RUNNING again and the result is the
//! snapshot.

use crate::common::{
    TakenSnapshot, delete_own_snapshot, own_snapshot_id, prefix, take_snapshot, verify_artifact,
};
use futures::FutureExt;
use ovc_engine::model::{Settlement, WorkflowDef};
use ovc_engine::{StepCtx, StepDef, StepKey, StepOutput, StepResult};
use ovc_types::command::Command;
use ovc_types::state::{OperationKind, VClusterState};

/// `upload_snapshot` journals the snapshot it wrote; `verify_snapshot` checks it.
const UPLOAD_SNAPSHOT: StepKey<TakenSnapshot> = StepKey::named("upload_snapshot");

/// The snapshot workflow.
pub fn definition() -> WorkflowDef {
    WorkflowDef {
        kind: OperationKind::Snapshot,
        name: "snapshot",
        steps: vec![
            StepDef::new(UPLOAD_SNAPSHOT.name, |c| upload(c).boxed())
                .undo(|c| delete_own_snapshot(c).boxed()),
            StepDef::new("verify_snapshot", |c| verify(c).boxed()),
        ],
        settle: |_| {
            Ok(Settlement {
                state: Some(VClusterState::Running),
                spec: None,
                // The store makes the result the snapshot as the operation left it.
                result: serde_json::Value::Null,
            })
        },
        revert: None,
        admit: None,
    }
}

async fn upload(ctx: &StepCtx) -> StepResult {
    let description = match &ctx.command {
        Command::Snapshot { description } => description.clone(),
        _ => None,
    };
    take_snapshot(ctx, description).await
}

async fn verify(ctx: &StepCtx) -> StepResult {
    let sha256 = ctx.output(&UPLOAD_SNAPSHOT)?.map(|t| t.sha256);
    let manifest =
        verify_artifact(ctx, &prefix(ctx, own_snapshot_id(ctx)), sha256.as_deref()).await?;
    let bytes: u64 = manifest.files.iter().map(|f| f.size).sum();
    Ok(StepOutput::output(
        serde_json::json!({"verified_bytes": bytes}),
    ))
}

#[cfg(test)]
mod sweeps {
    use crate::sweep::{self, Fixture, Harness, sweeps};
    use ovc_types::command::Command;

    /// A RUNNING vcluster.
    struct Running;

    impl Fixture for Running {
        async fn setup(&self, h: &Harness) -> Command {
            sweep::create(h, "vc").await;
            Command::Snapshot {
                description: Some("sweep".into()),
            }
        }
    }

    sweeps!(crate::snapshot::definition(); running: Running);
}
