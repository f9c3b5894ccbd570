//! RestoreVCluster (docs/vcluster-mechanics.md §5), into a new vcluster or over an
//! existing one.
//!
//! New: verify the artifact, namespace, Helm install with the snapshot's spec, pause the
//! fresh control plane, load the backing store, resume, wait ready.
//! Existing: verify, take a safety copy of the current data (when it is running), pause,
//! load, resume, wait ready; undoing the load puts the safety copy back. A restore over a
//! SUSPENDED vcluster has no safety copy (its data cannot be dumped while paused) and ends
//! RUNNING. The spec of an existing vcluster is kept: restore brings back data, not size.

use crate::common::{CHECK_IN, load_artifact, wait_ready};
use crate::create::{self, delete_namespace, uninstall_release};
use futures::FutureExt;
use ovc_engine::model::{Settlement, WorkflowDef};
use ovc_engine::{StepCtx, StepDef, StepError, StepOutput, StepResult};
use ovc_types::SnapshotId;
use ovc_types::command::{Command, RestoreTarget};
use ovc_types::error::Code;
use ovc_types::state::{OperationKind, SnapshotState, VClusterState};

/// The restore workflow.
pub fn definition() -> WorkflowDef {
    WorkflowDef {
        kind: OperationKind::Restore,
        name: "restore",
        steps: vec![
            StepDef::new("verify_snapshot", |c| verify(c).boxed()),
            StepDef::new("create_namespace", |c| create::create_namespace(c).boxed())
                .undo(|c| delete_namespace(c).boxed())
                .skip_if(overwrites),
            StepDef::new("install_release", |c| create::install_release(c).boxed())
                .undo(|c| uninstall_release(c).boxed())
                .skip_if(overwrites),
            StepDef::new("safety_copy", |c| safety_copy(c).boxed()).skip_if(creates),
            StepDef::new("pause_control_plane", |c| pause(c).boxed()).undo(|c| unpause(c).boxed()),
            StepDef::new("load_backing_store", |c| load(c).boxed()).undo(|c| unload(c).boxed()),
            StepDef::new("resume_control_plane", |c| resume(c).boxed())
                .undo(|c| repause(c).boxed()),
            StepDef::new("wait_ready", |c| wait_ready(c).boxed()),
        ],
        settle: |ctx| {
            Ok(Settlement {
                state: Some(VClusterState::Running),
                spec: None,
                result: serde_json::json!({
                    "name": ctx.vcluster_name,
                    "project": ctx.project,
                    "uid": ctx.vcluster_uid,
                    "snapshot_id": snapshot_id(ctx).ok(),
                }),
            })
        },
        revert: None,
    }
}

fn overwrites(c: &Command) -> bool {
    matches!(
        c,
        Command::Restore {
            target: RestoreTarget::Existing(_),
            ..
        }
    )
}

fn creates(c: &Command) -> bool {
    !overwrites(c)
}

fn snapshot_id(ctx: &StepCtx) -> Result<SnapshotId, StepError> {
    match &ctx.command {
        Command::Restore { snapshot_id, .. } => Ok(*snapshot_id),
        _ => Err(StepError::permanent(
            Code::Internal,
            "restore step without a restore command",
        )),
    }
}

/// Reads the snapshot's artifact (checksums verified) wherever it was taken.
async fn artifact(ctx: &StepCtx) -> Result<Vec<u8>, StepError> {
    let id = snapshot_id(ctx)?;
    let snap = ctx
        .store
        .get_snapshot(id)
        .await
        .map_err(|e| StepError::transient(e.to_string()))?
        .ok_or_else(|| StepError::permanent(Code::NotFound, format!("snapshot {id} not found")))?;
    if snap.state != SnapshotState::Ready {
        return Err(StepError::permanent(
            Code::FailedPrecondition,
            format!("snapshot {id} is {}, not READY", snap.state.as_str()),
        ));
    }
    let (_, data) = load_artifact(ctx, snap.project.as_str(), snap.vcluster.as_str(), id).await?;
    Ok(data)
}

async fn verify(ctx: &StepCtx) -> StepResult {
    let data = artifact(ctx).await?;
    Ok(StepOutput::output(
        serde_json::json!({"verified_bytes": data.len()}),
    ))
}

async fn safety_copy(ctx: &StepCtx) -> StepResult {
    if ctx.prior_state != Some(VClusterState::Running) {
        return Ok(StepOutput::output(serde_json::json!({"taken": false})));
    }
    let data = ctx
        .driver
        .dump_backing_store(&ctx.call, &ctx.target)
        .await?;
    let key = safety_key(ctx);
    ctx.services
        .artifacts
        .put(&key, data)
        .await
        .map_err(|e| StepError::transient(e.to_string()))?;
    Ok(StepOutput::output(
        serde_json::json!({"taken": true, "key": key}),
    ))
}

fn safety_key(ctx: &StepCtx) -> String {
    format!(
        "restore-safety/{}/{}/{}/backing-store.bin",
        ctx.project, ctx.vcluster_name, ctx.operation_id
    )
}

async fn pause(ctx: &StepCtx) -> StepResult {
    let r = ctx
        .driver
        .pause_control_plane(&ctx.call, &ctx.target)
        .await?;
    Ok(StepOutput::output(
        serde_json::json!({"paused_replicas": r}),
    ))
}

async fn unpause(ctx: &StepCtx) -> StepResult {
    // Back to how it was: a vcluster that was SUSPENDED before stays paused.
    if ctx.prior_state != Some(VClusterState::Suspended) {
        ctx.driver
            .resume_control_plane(&ctx.call, &ctx.target)
            .await?;
    }
    Ok(StepOutput::done())
}

async fn load(ctx: &StepCtx) -> StepResult {
    let data = artifact(ctx).await?;
    ctx.driver
        .load_backing_store(&ctx.call, &ctx.target, &data)
        .await?;
    Ok(StepOutput::output(
        serde_json::json!({"loaded_bytes": data.len()}),
    ))
}

async fn unload(ctx: &StepCtx) -> StepResult {
    let taken = ctx.output_of("safety_copy")["taken"].as_bool() == Some(true);
    if !taken {
        // New vcluster (it is uninstalled next) or no safety copy could be taken.
        return Ok(StepOutput::done());
    }
    let key = safety_key(ctx);
    let data = ctx
        .services
        .artifacts
        .get(&key)
        .await
        .map_err(|e| StepError::transient(e.to_string()))?
        .ok_or_else(|| {
            StepError::permanent(Code::Internal, format!("safety copy {key} is gone"))
        })?;
    ctx.driver
        .load_backing_store(&ctx.call, &ctx.target, &data)
        .await?;
    Ok(StepOutput::done())
}

async fn resume(ctx: &StepCtx) -> StepResult {
    let r = ctx
        .driver
        .resume_control_plane(&ctx.call, &ctx.target)
        .await?;
    Ok(StepOutput::output(serde_json::json!({"replicas": r})))
}

async fn repause(ctx: &StepCtx) -> StepResult {
    ctx.driver
        .pause_control_plane(&ctx.call, &ctx.target)
        .await?;
    match ctx.driver.control_plane(&ctx.call, &ctx.target).await? {
        Some(cp) if cp.pods > 0 => Ok(StepOutput::pending(CHECK_IN)),
        _ => Ok(StepOutput::done()),
    }
}
