//! DeleteSnapshot (`DELETE /v1/snapshots/{id}`): deletes a snapshot's artifact through
//! the artifact store; no host is involved, so it works for snapshots of DELETED
//! vclusters too, and it leaves the vcluster's state alone.
//!
//! Accept already moved the snapshot to DELETING (after checking that it is READY or
//! FAILED and that no unfinished RESTORE uses it), so nothing can start reading it.
//! One step, `delete_artifacts`: delete the manifest, then everything under the prefix,
//! confirm both files are gone, and journal `SnapshotDeleted` (→ DELETED) with its
//! success. Absent objects are fine, so a crash mid-delete and a re-run finish the job;
//! storage that is unavailable is a transient error (retried by the engine), storage
//! that refuses is permanent.
//!
//! Deleted bytes cannot be put back, so there is no undo. Instead, when the operation
//! fails (attempts exhausted, a permanent error, a cancellation) the workflow's `revert`
//! looks at what is left: if the manifest still has the recorded sha256 and every file
//! verifies, the snapshot is READY again (nothing was lost); otherwise it is FAILED with
//! the reason (some objects may be gone; deleting it again removes the rest).

use futures::FutureExt;
use ovc_engine::model::{Settlement, WorkflowDef};
use ovc_engine::{StepCtx, StepDef, StepError, StepOutput, StepResult};
use ovc_snapshots::manifest::sha256_hex;
use ovc_snapshots::{
    ArtifactError, BACKING_STORE_FILE, MANIFEST_FILE, SnapshotError, artifact_prefix,
    delete_snapshot, verify_snapshot,
};
use ovc_types::SnapshotId;
use ovc_types::command::DeleteSnapshotParams;
use ovc_types::error::{Code, Status};
use ovc_types::event::{Event, StreamName};
use ovc_types::resource::Snapshot;
use ovc_types::state::{OperationKind, SnapshotState};

/// The snapshot-deletion workflow.
pub fn definition() -> WorkflowDef {
    WorkflowDef {
        kind: OperationKind::DELETE_SNAPSHOT,
        name: "delete_snapshot",
        params: ovc_engine::ParamsDef::of::<DeleteSnapshotParams>(),
        // Outside the vcluster's state machine: accept checks the snapshot instead.
        rule: ovc_types::state::CallRule::outside("delete snapshot"),
        api: None,
        steps: vec![
            StepDef::new("delete_artifacts", |c| delete_artifacts(c).boxed()).max_attempts(10),
        ],
        settle: |_| {
            Ok(Settlement {
                state: None,
                spec: None,
                // The store makes the result the snapshot as the operation left it.
                result: serde_json::Value::Null,
            })
        },
        revert: Some(|c| reinstate(c).boxed()),
        admit: None,
    }
}

fn snapshot_id(ctx: &StepCtx) -> Result<SnapshotId, StepError> {
    Ok(ctx.params::<DeleteSnapshotParams>()?.snapshot_id)
}

/// The snapshot's record, and its artifact prefix.
async fn record(ctx: &StepCtx) -> Result<(Snapshot, String), StepError> {
    let id = snapshot_id(ctx)?;
    let snap = ctx
        .store
        .get_snapshot(id)
        .await
        .map_err(|e| StepError::transient(e.to_string()))?
        .ok_or_else(|| StepError::permanent(Code::NotFound, format!("snapshot {id} not found")))?;
    let prefix = artifact_prefix(
        snap.project.as_str(),
        snap.vcluster.as_str(),
        &id.to_string(),
    );
    Ok((snap, prefix))
}

fn storage_error(e: SnapshotError) -> StepError {
    if e.is_transient() {
        StepError::transient(e.to_string())
    } else {
        StepError::permanent(Code::FailedPrecondition, e.to_string())
    }
}

fn unavailable(e: ArtifactError) -> StepError {
    storage_error(SnapshotError::Artifact(e))
}

async fn delete_artifacts(ctx: &StepCtx) -> StepResult {
    let (snap, prefix) = record(ctx).await?;
    if snap.state != SnapshotState::Deleting || snap.deleted_by != Some(ctx.operation_id) {
        return Err(StepError::permanent(
            Code::FailedPrecondition,
            format!(
                "snapshot {} is {} (deleted_by {:?}), not DELETING by this operation",
                snap.id,
                snap.state.as_str(),
                snap.deleted_by
            ),
        ));
    }
    delete_snapshot(ctx.services.artifacts.as_ref(), &prefix)
        .await
        .map_err(storage_error)?;
    for file in [MANIFEST_FILE, BACKING_STORE_FILE] {
        let key = format!("{prefix}{file}");
        if ctx
            .services
            .artifacts
            .get(&key)
            .await
            .map_err(unavailable)?
            .is_some()
        {
            return Err(StepError::transient(format!(
                "{key} is still there after the delete"
            )));
        }
    }
    Ok(StepOutput::Done {
        output: serde_json::json!({
            "snapshot_id": snap.id,
            "location": snap.location,
            "deleted_bytes": snap.size_bytes,
        }),
        events: vec![(StreamName::snapshot(snap.id), Event::SnapshotDeleted {})],
    })
}

/// Why the artifact is not intact any more, or `None` when it still verifies against the
/// recorded manifest sha256 (transient storage errors are returned as errors).
async fn damage(ctx: &StepCtx, snap: &Snapshot, prefix: &str) -> Result<Option<String>, StepError> {
    let Some(recorded) = &snap.sha256 else {
        return Ok(Some("the snapshot was never completed".into()));
    };
    let manifest_key = format!("{prefix}{MANIFEST_FILE}");
    let Some(bytes) = ctx
        .services
        .artifacts
        .get(&manifest_key)
        .await
        .map_err(unavailable)?
    else {
        return Ok(Some(format!("{manifest_key} is gone")));
    };
    if !sha256_hex(&bytes).eq_ignore_ascii_case(recorded) {
        return Ok(Some(format!(
            "{manifest_key} no longer has the recorded sha256 {recorded}"
        )));
    }
    match verify_snapshot(ctx.services.artifacts.as_ref(), prefix, Some(recorded)).await {
        Ok(_) => Ok(None),
        Err(e) if e.is_transient() => Err(StepError::transient(e.to_string())),
        Err(e) => Ok(Some(e.to_string())),
    }
}

/// The workflow's revert: puts a snapshot whose deletion failed back to READY (artifact
/// intact) or FAILED (damaged or never complete).
async fn reinstate(ctx: &StepCtx) -> StepResult {
    let (snap, prefix) = record(ctx).await?;
    if snap.state != SnapshotState::Deleting || snap.deleted_by != Some(ctx.operation_id) {
        // Not ours to put back (nothing to do).
        return Ok(StepOutput::done());
    }
    let (state, error) = match damage(ctx, &snap, &prefix).await? {
        None => (
            SnapshotState::Ready,
            Status::new(
                Code::Aborted,
                "the delete did not finish; the artifact is intact",
            ),
        ),
        Some(why) => (
            SnapshotState::Failed,
            Status::failed_precondition(format!(
                "the delete did not finish and the artifact is not intact ({why}); delete the snapshot again"
            ))
            .with_reason("SNAPSHOT_DAMAGED"),
        ),
    };
    Ok(StepOutput::Done {
        output: serde_json::Value::Null,
        events: vec![(
            StreamName::snapshot(snap.id),
            Event::SnapshotDeleteFailed { state, error },
        )],
    })
}

#[cfg(test)]
mod sweeps {
    use crate::sweep::{self, Fixture, Harness, sweeps};
    use ovc_types::SnapshotState;
    use ovc_types::command::{Command, DeleteSnapshotParams};
    use ovc_types::resource::Operation;

    /// A READY snapshot of a RUNNING vcluster, whose state the deletion leaves alone.
    struct Ready;

    impl Fixture for Ready {
        async fn setup(&self, h: &Harness) -> Command {
            sweep::create(h, "vc").await;
            Command::new(DeleteSnapshotParams {
                snapshot_id: sweep::snapshot(h, "vc").await,
            })
        }

        /// The artifact was never touched: the snapshot is READY again.
        async fn after_compensation(&self, h: &Harness, op: &Operation, failed: &str) {
            let DeleteSnapshotParams { snapshot_id } =
                op.command.params().expect("a snapshot deletion");
            let snap = h.store.get_snapshot(snapshot_id).await.expect("get");
            let state = snap.expect("the snapshot's row").state;
            assert_eq!(state, SnapshotState::Ready, "failed at {failed}");
        }
    }

    sweeps!(crate::delete_snapshot::definition(); ready: Ready);
}
