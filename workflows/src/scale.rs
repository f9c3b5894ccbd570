//! ScaleVCluster (docs/vcluster-mechanics.md §6): `helm upgrade` with the patched values
//! (quota, control-plane resources, replicas 1 <-> 3; only the given fields change), then
//! wait until the control plane is ready at its new size. Undo: upgrade back to the old
//! values. On success the vcluster is RUNNING with the new spec.

use crate::common::{values, wait_ready};
use futures::FutureExt;
use ovc_engine::model::{Settlement, WorkflowDef};
use ovc_engine::{StepCtx, StepDef, StepError, StepOutput, StepResult};
use ovc_types::command::Command;
use ovc_types::error::{Code, Status};
use ovc_types::resource::VCluster;
use ovc_types::spec::VClusterSpec;
use ovc_types::state::{OperationKind, VClusterState};

/// The scale workflow.
pub fn definition() -> WorkflowDef {
    WorkflowDef {
        kind: OperationKind::Scale,
        name: "scale",
        steps: vec![
            StepDef::new("upgrade_release", |c| upgrade(c).boxed()).undo(|c| downgrade(c).boxed()),
            StepDef::new("wait_ready", |c| wait_ready(c).boxed()),
        ],
        settle: |ctx| {
            let spec = new_spec(ctx)?;
            Ok(Settlement {
                state: Some(VClusterState::Running),
                spec: Some(spec.clone()),
                result: serde_json::json!({"spec": spec}),
            })
        },
        revert: None,
        admit: Some(admit),
    }
}

/// Accept's check: the patch must make a valid spec that differs from the current one.
fn admit(command: &Command, vc: &VCluster) -> Result<(), Status> {
    match command {
        Command::Scale { patch } => patch.apply_to(&vc.spec).map(drop).map_err(Status::from),
        other => Err(Status::internal(format!(
            "the scale workflow was given a {} command",
            other.kind()
        ))),
    }
}

/// The spec after the patch. The vcluster's spec cannot change while it is SCALING (one
/// operation at a time), so this is the same on every replay.
fn new_spec(ctx: &StepCtx) -> Result<VClusterSpec, StepError> {
    let Command::Scale { patch } = &ctx.command else {
        return Err(StepError::permanent(
            Code::Internal,
            "scale step without a scale command",
        ));
    };
    patch
        .apply_to(ctx.spec()?)
        .map_err(|e| StepError::Permanent(e.into()))
}

async fn upgrade(ctx: &StepCtx) -> StepResult {
    let spec = new_spec(ctx)?;
    let revision = ctx
        .driver
        .install_release(&ctx.call, &ctx.target, &values(&spec))
        .await?;
    Ok(StepOutput::output(
        serde_json::json!({"revision": revision}),
    ))
}

async fn downgrade(ctx: &StepCtx) -> StepResult {
    ctx.driver
        .install_release(&ctx.call, &ctx.target, &values(ctx.spec()?))
        .await?;
    Ok(StepOutput::done())
}

#[cfg(test)]
mod sweeps {
    use crate::sweep::{self, Fixture, Harness, sweeps};
    use ovc_types::command::Command;
    use ovc_types::spec::{ControlPlanePatch, ScalePatch};

    /// A RUNNING vcluster, scaled to three control-plane replicas.
    struct Running;

    impl Fixture for Running {
        async fn setup(&self, h: &Harness) -> Command {
            sweep::create(h, "vc").await;
            Command::Scale {
                patch: ScalePatch {
                    control_plane: Some(ControlPlanePatch {
                        replicas: Some(3),
                        ..ControlPlanePatch::default()
                    }),
                    quota: None,
                },
            }
        }
    }

    sweeps!(crate::scale::definition(); running: Running);
}
