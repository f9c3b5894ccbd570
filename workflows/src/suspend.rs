//! SuspendVCluster (docs/vcluster-mechanics.md §2): optional snapshot, optional workload
//! eviction and wait, annotate + scale the control plane to 0, wait until its pods are
//! gone. PVCs, secrets and services stay. On success the vcluster is SUSPENDED.

use crate::common::{CHECK_IN, delete_own_snapshot, take_snapshot, wait_pods_gone};
use futures::FutureExt;
use ovc_engine::model::{Settlement, WorkflowDef};
use ovc_engine::{OperationApi, ParamsDef, StepCtx, StepDef, StepOutput, StepResult};
use ovc_types::command::{Command, OperationParams};
use ovc_types::state::{CallRule, OperationKind, VClusterState};
use serde::{Deserialize, Serialize};

/// SuspendVCluster's parameters: `POST /v1/vclusters/{name}/suspend`'s body, `ovc vc
/// suspend`'s flags.
#[derive(
    Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema, clap::Args,
)]
#[serde(deny_unknown_fields)]
pub struct SuspendParams {
    /// Take a snapshot first.
    #[serde(default)]
    #[arg(long)]
    pub snapshot: bool,
    /// Evict workload pods before scaling the control plane down.
    #[serde(default)]
    #[arg(long)]
    pub evict_workloads: bool,
}

impl OperationParams for SuspendParams {
    const KIND: OperationKind = OperationKind::SUSPEND;
}

params_are_the_body!(SuspendParams);

/// The suspend workflow.
pub fn definition() -> WorkflowDef {
    WorkflowDef {
        kind: SuspendParams::KIND,
        name: "suspend",
        params: ParamsDef::of::<SuspendParams>(),
        rule: CallRule {
            verb: "suspend",
            new_verb: None,
            starts_from: &[VClusterState::Running],
            in_progress: Some(VClusterState::Suspending),
            hints: &[(VClusterState::Suspended, "; it is already suspended")],
        },
        api: Some(OperationApi::of::<SuspendParams>(
            "suspend",
            "suspend",
            "Suspend: optionally snapshot and evict, then scale to zero",
        )),
        steps: vec![
            StepDef::new("snapshot", |c| {
                take_snapshot(c, Some("taken by suspend".into())).boxed()
            })
            .undo(|c| delete_own_snapshot(c).boxed())
            .skip_if(|c| !params(c).snapshot),
            StepDef::new("evict_workloads", |c| evict_workloads(c).boxed())
                .undo(|c| reconcile_workloads(c).boxed())
                .skip_if(no_eviction),
            StepDef::new("wait_workloads_gone", |c| wait_workloads_gone(c).boxed())
                .skip_if(no_eviction),
            StepDef::new("scale_to_zero", |c| scale_to_zero(c).boxed())
                .undo(|c| scale_back(c).boxed()),
            StepDef::new("wait_pods_gone", |c| wait_pods_gone(c).boxed()),
        ],
        settle: |_| {
            Ok(Settlement {
                state: Some(VClusterState::Suspended),
                spec: None,
                result: serde_json::Value::Null,
            })
        },
        revert: None,
        admit: None,
    }
}

/// The parameters of `c` (accept checked them; undecodable ones plan every step).
fn params(c: &Command) -> SuspendParams {
    c.params().unwrap_or(SuspendParams {
        snapshot: true,
        evict_workloads: true,
    })
}

fn no_eviction(c: &Command) -> bool {
    !params(c).evict_workloads
}

async fn evict_workloads(ctx: &StepCtx) -> StepResult {
    let n = ctx
        .driver
        .evict_workload_pods(&ctx.call, &ctx.target)
        .await?;
    Ok(StepOutput::output(serde_json::json!({"evicted": n})))
}

async fn reconcile_workloads(ctx: &StepCtx) -> StepResult {
    ctx.driver
        .reconcile_workloads(&ctx.call, &ctx.target)
        .await?;
    Ok(StepOutput::done())
}

async fn wait_workloads_gone(ctx: &StepCtx) -> StepResult {
    if ctx
        .driver
        .workload_pods(&ctx.call, &ctx.target)
        .await?
        .is_empty()
    {
        Ok(StepOutput::done())
    } else {
        Ok(StepOutput::pending(CHECK_IN))
    }
}

async fn scale_to_zero(ctx: &StepCtx) -> StepResult {
    let replicas = ctx
        .driver
        .pause_control_plane(&ctx.call, &ctx.target)
        .await?;
    Ok(StepOutput::output(
        serde_json::json!({"paused_replicas": replicas}),
    ))
}

async fn scale_back(ctx: &StepCtx) -> StepResult {
    ctx.driver
        .resume_control_plane(&ctx.call, &ctx.target)
        .await?;
    Ok(StepOutput::done())
}

#[cfg(test)]
mod sweeps {
    use super::SuspendParams;
    use crate::sweep::{self, Fixture, Harness, sweeps};
    use ovc_types::command::Command;
    use ovc_types::resource::Operation;

    /// A RUNNING vcluster, suspended with a snapshot and eviction (every step planned).
    struct Running;

    impl Fixture for Running {
        async fn setup(&self, h: &Harness) -> Command {
            sweep::create(h, "vc").await;
            Command::new(SuspendParams {
                snapshot: true,
                evict_workloads: true,
            })
        }

        /// The snapshot taken by the first step is DELETED by its undo (there is none
        /// when the first step is the one that failed).
        async fn after_compensation(&self, h: &Harness, op: &Operation, failed: &str) {
            sweep::assert_own_snapshot_undone(h, op, failed, "snapshot").await;
        }
    }

    sweeps!(crate::suspend::definition(); running: Running);
}
