//! RestoreVCluster (docs/vcluster-mechanics.md §5), into a new vcluster or over an
//! existing one.
//!
//! New: verify the artifact, namespace, hold the control plane back (vcluster's
//! `vcluster-restore` quota, so the fresh control plane cannot start before its data is
//! in), Helm install with the snapshot's spec, pause the fresh control plane, load the
//! backing store (which lifts the hold), resume, wait ready.
//! Existing: verify, take a safety copy of the current data (when it is running), pause,
//! load, resume, wait ready; undoing the load puts the safety copy back. A restore over a
//! SUSPENDED vcluster has no safety copy (its data cannot be dumped while paused) and ends
//! RUNNING. The spec of an existing vcluster is kept: restore brings back data, not size.

use crate::common::{CHECK_IN, dump_to_artifact, load_from_artifact, verify_artifact, wait_ready};
use crate::create::{self, delete_namespace, uninstall_release};
use futures::FutureExt;
use ovc_engine::model::{Settlement, WorkflowDef};
use ovc_engine::{StepCtx, StepDef, StepError, StepKey, StepOutput, StepResult};
use ovc_snapshots::{ManifestInput, artifact_prefix};
use ovc_types::SnapshotId;
use ovc_types::command::{Command, RestoreParams, RestoreTarget};
use ovc_types::error::Code;
use ovc_types::state::{OperationKind, SnapshotState, VClusterState};
use serde::{Deserialize, Serialize};

/// The restore workflow.
pub fn definition() -> WorkflowDef {
    WorkflowDef {
        kind: OperationKind::RESTORE,
        name: "restore",
        params: ovc_engine::ParamsDef::of::<RestoreParams>(),
        // Into a new vcluster (a hand-written call of its own), or over one.
        rule: ovc_types::state::CallRule {
            verb: "restore",
            new_verb: Some("restore into a new vcluster"),
            starts_from: &[VClusterState::Running, VClusterState::Suspended],
            in_progress: Some(VClusterState::Restoring),
            hints: &[],
        },
        api: None,
        steps: vec![
            StepDef::new("verify_snapshot", |c| verify(c).boxed()),
            StepDef::new(create::CREATE_NAMESPACE.name, |c| {
                create::create_namespace(c).boxed()
            })
            .undo(|c| delete_namespace(c).boxed())
            .skip_if(overwrites),
            StepDef::new("hold_control_plane", |c| hold(c, true).boxed())
                .undo(|c| hold(c, false).boxed())
                .skip_if(overwrites),
            StepDef::new(create::INSTALL_RELEASE.name, |c| {
                create::install_release(c).boxed()
            })
            .undo(|c| uninstall_release(c).boxed())
            .skip_if(overwrites),
            StepDef::new(SAFETY_COPY.name, |c| safety_copy(c).boxed()).skip_if(creates),
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
        admit: None,
    }
}

/// `safety_copy` journals whether it took a copy of the current data, and where.
const SAFETY_COPY: StepKey<SafetyCopy> = StepKey::named("safety_copy");

/// The output of `safety_copy`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct SafetyCopy {
    /// False when the vcluster was not running (its data cannot be dumped while paused).
    taken: bool,
    /// The copy's artifact prefix.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    prefix: Option<String>,
    /// Its manifest's sha256.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    sha256: Option<String>,
}

fn overwrites(c: &Command) -> bool {
    matches!(
        c.params::<RestoreParams>(),
        Ok(RestoreParams {
            target: RestoreTarget::Existing(_),
            ..
        })
    )
}

fn creates(c: &Command) -> bool {
    !overwrites(c)
}

fn snapshot_id(ctx: &StepCtx) -> Result<SnapshotId, StepError> {
    Ok(ctx.params::<RestoreParams>()?.snapshot_id)
}

/// The snapshot to restore (it must be READY), its artifact's prefix and the manifest
/// sha256 the index recorded.
async fn source(ctx: &StepCtx) -> Result<(String, Option<String>), StepError> {
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
    let prefix = artifact_prefix(
        snap.project.as_str(),
        snap.vcluster.as_str(),
        &id.to_string(),
    );
    Ok((prefix, snap.sha256))
}

/// Checks the whole artifact (manifest sha256 against the index, every file's size and
/// sha256) before anything touches the target.
async fn verify(ctx: &StepCtx) -> StepResult {
    let (prefix, sha256) = source(ctx).await?;
    let manifest = verify_artifact(ctx, &prefix, sha256.as_deref()).await?;
    let bytes: u64 = manifest.files.iter().map(|f| f.size).sum();
    Ok(StepOutput::output(
        serde_json::json!({"verified_bytes": bytes}),
    ))
}

/// Keeps a new vcluster's control plane from starting until the restore (`hold`), or
/// lets it start again (the undo).
async fn hold(ctx: &StepCtx, hold: bool) -> StepResult {
    ctx.driver
        .hold_new_control_plane(&ctx.call, &ctx.target, hold)
        .await?;
    Ok(StepOutput::output(serde_json::json!({"held": hold})))
}

async fn safety_copy(ctx: &StepCtx) -> StepResult {
    if ctx.prior_state != Some(VClusterState::Running) {
        return SAFETY_COPY.done(&SafetyCopy {
            taken: false,
            prefix: None,
            sha256: None,
        });
    }
    let prefix = safety_prefix(ctx);
    let written = dump_to_artifact(
        ctx,
        &prefix,
        ManifestInput {
            snapshot_id: ctx.operation_id.to_string(),
            project: ctx.project.to_string(),
            vcluster: ctx.vcluster_name.to_string(),
            created_at: ctx.clock.now().to_rfc3339(),
            metadata: serde_json::json!({"safety_copy_of_restore": ctx.operation_id}),
        },
    )
    .await?;
    SAFETY_COPY.done(&SafetyCopy {
        taken: true,
        prefix: Some(prefix),
        sha256: Some(written.manifest_sha256),
    })
}

fn safety_prefix(ctx: &StepCtx) -> String {
    format!(
        "restore-safety/{}/{}/{}/",
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
    let (prefix, sha256) = source(ctx).await?;
    let loaded = load_from_artifact(ctx, &prefix, sha256.as_deref()).await?;
    Ok(StepOutput::output(
        serde_json::json!({"loaded_bytes": loaded}),
    ))
}

async fn unload(ctx: &StepCtx) -> StepResult {
    let Some(safety) = ctx.output(&SAFETY_COPY)?.filter(|s| s.taken) else {
        // New vcluster (it is uninstalled next) or no safety copy could be taken.
        return Ok(StepOutput::done());
    };
    load_from_artifact(ctx, &safety_prefix(ctx), safety.sha256.as_deref()).await?;
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

#[cfg(test)]
mod sweeps {
    use crate::suspend::SuspendParams;
    use crate::sweep::{self, Fixture, Harness, sweeps};
    use ovc_types::command::RestoreParams;
    use ovc_types::command::{Command, RestoreTarget};

    /// A RUNNING vcluster `vc` and a snapshot of it, restored over `vc`.
    struct OverExisting;

    impl Fixture for OverExisting {
        async fn setup(&self, h: &Harness) -> Command {
            sweep::create(h, "vc").await;
            Command::new(RestoreParams {
                snapshot_id: sweep::snapshot(h, "vc").await,
                target: RestoreTarget::Existing("vc".parse().expect("name")),
            })
        }
    }

    /// A snapshot of `vc`, restored over `vc` after it was SUSPENDED (no safety copy; a
    /// compensated restore leaves it paused).
    struct OverSuspended;

    impl Fixture for OverSuspended {
        async fn setup(&self, h: &Harness) -> Command {
            sweep::create(h, "vc").await;
            let snapshot_id = sweep::snapshot(h, "vc").await;
            let suspend = Command::new(SuspendParams {
                snapshot: false,
                evict_workloads: false,
            });
            sweep::succeed(h, "vc", suspend).await;
            Command::new(RestoreParams {
                snapshot_id,
                target: RestoreTarget::Existing("vc".parse().expect("name")),
            })
        }
    }

    /// The same snapshot restored into a new vcluster `copy`.
    struct IntoNew;

    impl Fixture for IntoNew {
        fn target(&self) -> &'static str {
            "copy"
        }

        async fn setup(&self, h: &Harness) -> Command {
            sweep::create(h, "vc").await;
            Command::new(RestoreParams {
                snapshot_id: sweep::snapshot(h, "vc").await,
                target: RestoreTarget::NewName("copy".parse().expect("name")),
            })
        }
    }

    sweeps!(
        crate::restore::definition();
        over_existing: OverExisting,
        over_suspended: OverSuspended,
        into_new: IntoNew,
    );
}
