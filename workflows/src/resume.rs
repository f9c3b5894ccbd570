//! ResumeVCluster (docs/vcluster-mechanics.md §3): scale the control plane back to the
//! remembered replicas, wait until ready, health-check the virtual API, optionally ask
//! for a workload reconcile. On success the vcluster is RUNNING.

use crate::common::{health_check, wait_ready};
use futures::FutureExt;
use ovc_engine::model::{Settlement, WorkflowDef};
use ovc_engine::{StepCtx, StepDef, StepOutput, StepResult};
use ovc_types::command::Command;
use ovc_types::state::{OperationKind, VClusterState};

/// The resume workflow.
pub fn definition() -> WorkflowDef {
    WorkflowDef {
        kind: OperationKind::Resume,
        name: "resume",
        steps: vec![
            StepDef::new("scale_up", |c| scale_up(c).boxed()).undo(|c| scale_down(c).boxed()),
            StepDef::new("wait_ready", |c| wait_ready(c).boxed()),
            StepDef::new("health_check", |c| health_check(c).boxed()),
            StepDef::new("reconcile_workloads", |c| reconcile(c).boxed()).skip_if(|c| {
                !matches!(
                    c,
                    Command::Resume {
                        reconcile_workloads: true
                    }
                )
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
    use crate::sweep::{self, Fixture, Harness, sweeps};
    use ovc_types::command::Command;

    /// A SUSPENDED vcluster, resumed with a workload reconcile (every step planned).
    struct Suspended;

    impl Fixture for Suspended {
        async fn setup(&self, h: &Harness) -> Command {
            sweep::create(h, "vc").await;
            let suspend = Command::Suspend {
                snapshot: false,
                evict_workloads: false,
            };
            sweep::succeed(h, "vc", suspend).await;
            Command::Resume {
                reconcile_workloads: true,
            }
        }
    }

    sweeps!(crate::resume::definition(); suspended: Suspended);
}
