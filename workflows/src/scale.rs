//! ScaleVCluster (docs/vcluster-mechanics.md §6): `helm upgrade` with the patched values
//! (quota, control-plane resources, replicas 1 <-> 3; only the given fields change), then
//! wait until the control plane is ready at its new size. Undo: upgrade back to the old
//! values. On success the vcluster is RUNNING with the new spec.

use crate::common::{values, wait_ready};
use futures::FutureExt;
use ovc_engine::model::{Settlement, WorkflowDef};
use ovc_engine::{
    OperationApi, OperationBody, ParamsDef, StepCtx, StepDef, StepError, StepOutput, StepResult,
};
use ovc_types::command::{Command, OperationParams};
use ovc_types::error::Status;
use ovc_types::resource::VCluster;
use ovc_types::spec::{ControlPlanePatch, QuotaPatch, ScalePatch, VClusterSpec};
use ovc_types::state::{CallRule, OperationKind, VClusterState};
use serde::{Deserialize, Serialize};

/// ScaleVCluster's parameters, as the log records them.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ScaleParams {
    /// The fields to change.
    pub patch: ScalePatch,
}

impl OperationParams for ScaleParams {
    const KIND: OperationKind = OperationKind::SCALE;
}

/// `POST /v1/vclusters/{name}/scale`'s body: only the given fields change.
#[derive(Debug, Clone, Default, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ScaleBody {
    /// Control-plane replicas and resources.
    #[serde(default)]
    pub control_plane: Option<ControlPlanePatch>,
    /// The quota.
    #[serde(default)]
    pub quota: Option<QuotaPatch>,
}

/// `ovc vc scale`'s flags: only the given values change.
#[derive(Debug, Clone, clap::Args)]
pub struct ScaleArgs {
    /// Control-plane replicas (1 or 3).
    #[arg(long)]
    pub replicas: Option<u32>,
    /// Control-plane CPU request, e.g. 500m.
    #[arg(long)]
    pub cpu: Option<String>,
    /// Control-plane memory request, e.g. 512Mi.
    #[arg(long)]
    pub memory: Option<String>,
    /// Quota pods.
    #[arg(long)]
    pub quota_pods: Option<u32>,
}

impl OperationBody for ScaleParams {
    type Body = ScaleBody;
    type Args = ScaleArgs;
    fn from_body(body: ScaleBody) -> Result<Self, Status> {
        Ok(ScaleParams {
            patch: ScalePatch {
                control_plane: body.control_plane,
                quota: body.quota,
            },
        })
    }
    fn body_of_args(a: ScaleArgs) -> Result<serde_json::Value, String> {
        let quantity = |flag: &str, v: Option<String>| {
            v.map(|v| ovc_types::Quantity::parse(&v).map_err(|e| format!("{flag}: {e}")))
                .transpose()
        };
        let control_plane = (a.replicas.is_some() || a.cpu.is_some() || a.memory.is_some())
            .then(|| {
                Ok::<_, String>(ControlPlanePatch {
                    replicas: a.replicas,
                    cpu: quantity("--cpu", a.cpu)?,
                    memory: quantity("--memory", a.memory)?,
                })
            })
            .transpose()?;
        let quota = a.quota_pods.map(|p| QuotaPatch {
            pods: Some(p),
            ..QuotaPatch::default()
        });
        serde_json::to_value(ScalePatch {
            control_plane,
            quota,
        })
        .map_err(|e| e.to_string())
    }
}

/// The scale workflow.
pub fn definition() -> WorkflowDef {
    WorkflowDef {
        kind: ScaleParams::KIND,
        name: "scale",
        params: ParamsDef::of::<ScaleParams>(),
        rule: CallRule {
            verb: "scale",
            new_verb: None,
            starts_from: &[VClusterState::Running],
            in_progress: Some(VClusterState::Scaling),
            hints: &[(VClusterState::Suspended, "; resume it first")],
        },
        api: Some(OperationApi::of::<ScaleParams>(
            "scale",
            "scale",
            "Change the control plane or quota (only the given fields)",
        )),
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
    let ScaleParams { patch } = command.params()?;
    patch.apply_to(&vc.spec).map(drop).map_err(Status::from)
}

/// The spec after the patch. The vcluster's spec cannot change while it is SCALING (one
/// operation at a time), so this is the same on every replay.
fn new_spec(ctx: &StepCtx) -> Result<VClusterSpec, StepError> {
    let ScaleParams { patch } = ctx.params()?;
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
    use super::ScaleParams;
    use crate::sweep::{self, Fixture, Harness, sweeps};
    use ovc_types::command::Command;
    use ovc_types::spec::{ControlPlanePatch, ScalePatch};

    /// A RUNNING vcluster, scaled to three control-plane replicas.
    struct Running;

    impl Fixture for Running {
        async fn setup(&self, h: &Harness) -> Command {
            sweep::create(h, "vc").await;
            Command::new(ScaleParams {
                patch: ScalePatch {
                    control_plane: Some(ControlPlanePatch {
                        replicas: Some(3),
                        ..ControlPlanePatch::default()
                    }),
                    quota: None,
                },
            })
        }
    }

    sweeps!(crate::scale::definition(); running: Running);
}
