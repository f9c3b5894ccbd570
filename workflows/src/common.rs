//! Pieces several workflows share: chart values from a spec, readiness waits, and the
//! snapshot artifact steps.

use ovc_driver::ReleaseValues;
use ovc_engine::{StepCtx, StepError, StepOutput, StepResult};
use ovc_snapshots::{ManifestInput, artifact_prefix, read_snapshot, write_snapshot};
use ovc_types::SnapshotId;
use ovc_types::error::Code;
use ovc_types::event::{Event, StreamName};
use ovc_types::spec::VClusterSpec;
use std::time::Duration;

/// How often waits look again.
pub const CHECK_IN: Duration = Duration::from_millis(200);

/// The chart values for `spec`.
pub fn values(spec: &VClusterSpec) -> ReleaseValues {
    ReleaseValues {
        kubernetes_version: spec.kubernetes_version.clone(),
        control_plane: spec.control_plane.clone(),
        quota: spec.quota.clone(),
        labels: spec.labels.clone(),
        helm_values: spec.helm_values.clone(),
        chart_version: None,
    }
}

/// Done when the control plane is ready, else pending.
pub async fn wait_ready(ctx: &StepCtx) -> StepResult {
    match ctx.driver.control_plane(&ctx.call, &ctx.target).await? {
        Some(cp) if cp.is_ready() => Ok(StepOutput::output(serde_json::json!({
            "replicas": cp.replicas
        }))),
        Some(_) => Ok(StepOutput::pending(CHECK_IN)),
        None => Err(StepError::permanent(
            Code::NotFound,
            format!("release {} is not installed", ctx.target.release),
        )),
    }
}

/// Done when no control-plane pod is left, else pending.
pub async fn wait_pods_gone(ctx: &StepCtx) -> StepResult {
    match ctx.driver.control_plane(&ctx.call, &ctx.target).await? {
        Some(cp) if cp.pods > 0 => Ok(StepOutput::pending(CHECK_IN)),
        _ => Ok(StepOutput::done()),
    }
}

/// The snapshot a step of this operation writes: its id is the operation's id, so a
/// repeated step writes the same artifact.
pub fn own_snapshot_id(ctx: &StepCtx) -> SnapshotId {
    SnapshotId(ctx.operation_id.as_uuid())
}

/// The artifact prefix of `id` for this vcluster.
pub fn prefix(ctx: &StepCtx, id: SnapshotId) -> String {
    artifact_prefix(
        ctx.project.as_str(),
        ctx.vcluster_name.as_str(),
        &id.to_string(),
    )
}

fn artifact_error(e: ovc_snapshots::SnapshotError) -> StepError {
    if e.is_transient() {
        StepError::transient(e.to_string())
    } else {
        StepError::permanent(Code::FailedPrecondition, e.to_string())
    }
}

/// Dumps the backing store and writes artifact + manifest; emits `SnapshotStarted` and
/// `SnapshotCompleted` on `snapshot-<id>` with the step's success.
pub async fn take_snapshot(ctx: &StepCtx, description: Option<String>) -> StepResult {
    let spec = ctx.spec()?.clone();
    let id = own_snapshot_id(ctx);
    let data = ctx
        .driver
        .dump_backing_store(&ctx.call, &ctx.target)
        .await?;
    let release = ctx.driver.release(&ctx.call, &ctx.target).await?;
    let metadata = serde_json::json!({
        "spec": spec,
        "helm_values": spec.helm_values,
        "kubernetes_version": spec.kubernetes_version,
        "labels": spec.labels,
        "release_revision": release.map(|r| r.revision),
    });
    let written = write_snapshot(
        ctx.services.artifacts.as_ref(),
        &prefix(ctx, id),
        ManifestInput {
            snapshot_id: id.to_string(),
            project: ctx.project.to_string(),
            vcluster: ctx.vcluster_name.to_string(),
            created_at: ctx.clock.now().to_rfc3339(),
            metadata: metadata.clone(),
        },
        &data,
    )
    .await
    .map_err(artifact_error)?;
    let stream = StreamName::snapshot(id);
    Ok(StepOutput::Done {
        output: serde_json::json!({
            "snapshot_id": id,
            "location": written.location,
            "sha256": written.manifest_sha256,
            "size_bytes": written.size_bytes,
        }),
        events: vec![
            (
                stream.clone(),
                Event::SnapshotStarted {
                    operation_id: ctx.operation_id,
                    vcluster_uid: ctx.vcluster_uid,
                    vcluster: ctx.vcluster_name.clone(),
                    project: ctx.project.clone(),
                    description,
                },
            ),
            (
                stream,
                Event::SnapshotCompleted {
                    size_bytes: written.size_bytes,
                    sha256: written.manifest_sha256,
                    location: written.location,
                    metadata,
                },
            ),
        ],
    })
}

/// Undo of [`take_snapshot`]: deletes the artifact and marks the snapshot deleted.
pub async fn delete_own_snapshot(ctx: &StepCtx) -> StepResult {
    let id = own_snapshot_id(ctx);
    ctx.services
        .artifacts
        .delete_prefix(&prefix(ctx, id))
        .await
        .map_err(|e| StepError::transient(e.to_string()))?;
    Ok(StepOutput::Done {
        output: serde_json::Value::Null,
        events: vec![(StreamName::snapshot(id), Event::SnapshotDeleted {})],
    })
}

/// Reads and verifies (sizes, sha256) the artifact of snapshot `id` taken of
/// `project/vcluster`.
pub async fn load_artifact(
    ctx: &StepCtx,
    project: &str,
    vcluster: &str,
    id: SnapshotId,
) -> Result<(ovc_snapshots::Manifest, Vec<u8>), StepError> {
    read_snapshot(
        ctx.services.artifacts.as_ref(),
        &artifact_prefix(project, vcluster, &id.to_string()),
    )
    .await
    .map_err(artifact_error)
}
