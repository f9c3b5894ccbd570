//! ResumeVCluster (docs/vcluster-mechanics.md §3): scale the control plane back to the
//! remembered replicas, wait until ready, health-check the virtual API, optionally ask
//! for a workload reconcile. On success the vcluster is RUNNING.

use crate::common::{health_check, wait_ready};
use futures::FutureExt;
use ovc_engine::model::{Settlement, WorkflowDef};
use ovc_engine::{OperationApi, ParamsDef, StepCtx, StepDef, StepOutput, StepResult};
use ovc_types::command::{Command, OperationParams};
use ovc_types::state::{CallRule, OperationKind, VClusterState};
use serde::{Deserialize, Serialize};

/// ResumeVCluster's parameters: `POST /v1/vclusters/{name}/resume`'s body, `ovc vc
/// resume`'s flags.
#[derive(
    Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema, clap::Args,
)]
#[serde(deny_unknown_fields)]
pub struct ResumeParams {
    /// Trigger a workload reconcile once the control plane is ready.
    #[serde(default)]
    #[arg(long)]
    pub reconcile_workloads: bool,
}

impl OperationParams for ResumeParams {
    const KIND: OperationKind = OperationKind::RESUME;
}

params_are_the_body!(ResumeParams);

/// The resume workflow.
pub fn definition() -> WorkflowDef {
    WorkflowDef {
        kind: ResumeParams::KIND,
        name: "resume",
        params: ParamsDef::of::<ResumeParams>(),
        rule: CallRule {
            verb: "resume",
            new_verb: None,
            starts_from: &[VClusterState::Suspended],
            in_progress: Some(VClusterState::Resuming),
            hints: &[(VClusterState::Running, "; it is already running")],
        },
        api: Some(OperationApi::of::<ResumeParams>(
            "resume",
            "resume",
            "Resume a suspended vcluster",
        )),
        steps: vec![
            StepDef::new("scale_up", |c| scale_up(c).boxed()).undo(|c| scale_down(c).boxed()),
            StepDef::new("wait_ready", |c| wait_ready(c).boxed()),
            StepDef::new("health_check", |c| health_check(c).boxed()),
            StepDef::new("reconcile_workloads", |c| reconcile(c).boxed()).skip_if(|c: &Command| {
                !c.params::<ResumeParams>()
                    .map_or(true, |p| p.reconcile_workloads)
            }),
        ],
        settle: |_| {
            Ok(Settlement {
                state: Some(VClusterState::Running),
                spec: None,
                result: serde_json::Value::Null,
            })
        },
        revert: None,
        admit: None,
    }
}

async fn scale_up(ctx: &StepCtx) -> StepResult {
    let replicas = ctx
        .driver
        .resume_control_plane(&ctx.call, &ctx.target)
        .await?;
    Ok(StepOutput::output(
        serde_json::json!({"replicas": replicas}),
    ))
}

async fn scale_down(ctx: &StepCtx) -> StepResult {
    ctx.driver
        .pause_control_plane(&ctx.call, &ctx.target)
        .await?;
    Ok(StepOutput::done())
}

async fn reconcile(ctx: &StepCtx) -> StepResult {
    ctx.driver
        .reconcile_workloads(&ctx.call, &ctx.target)
        .await?;
    Ok(StepOutput::done())
}

#[cfg(test)]
mod sweeps {
    use super::ResumeParams;
    use crate::suspend::SuspendParams;
    use crate::sweep::{self, Fixture, Harness, sweeps};
    use ovc_types::command::Command;

    /// A SUSPENDED vcluster, resumed with a workload reconcile (every step planned).
    struct Suspended;

    impl Fixture for Suspended {
        async fn setup(&self, h: &Harness) -> Command {
            sweep::create(h, "vc").await;
            let suspend = Command::new(SuspendParams {
                snapshot: false,
                evict_workloads: false,
            });
            sweep::succeed(h, "vc", suspend).await;
            Command::new(ResumeParams {
                reconcile_workloads: true,
            })
        }
    }

    sweeps!(crate::resume::definition(); suspended: Suspended);
}
