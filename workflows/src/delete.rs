//! DeleteVCluster (docs/vcluster-mechanics.md §7): Helm uninstall (with the control-plane
//! PVCs), then delete the namespace and wait until it is gone. Every step tolerates
//! "already gone". Deletion is irreversible: once the release is uninstalled, a later
//! failure cannot be undone, so that undo fails permanently and the vcluster ends FAILED
//! (delete it again) instead of pretending to be RUNNING. On success it is DELETED.

use crate::common::CHECK_IN;
use futures::FutureExt;
use ovc_engine::model::{Settlement, WorkflowDef};
use ovc_engine::{StepCtx, StepDef, StepError, StepOutput, StepResult};
use ovc_types::error::Code;
use ovc_types::state::{OperationKind, VClusterState};

/// The delete workflow.
pub fn definition() -> WorkflowDef {
    WorkflowDef {
        kind: OperationKind::DELETE,
        name: "delete",
        params: ovc_engine::ParamsDef::of::<ovc_types::command::DeleteParams>(),
        rule: ovc_types::state::CallRule {
            verb: "delete",
            new_verb: None,
            starts_from: &[
                VClusterState::Running,
                VClusterState::Suspended,
                VClusterState::Failed,
            ],
            in_progress: Some(VClusterState::Deleting),
            hints: &[],
        },
        api: None,
        steps: vec![
            StepDef::new("uninstall_release", |c| uninstall(c).boxed())
                .undo(|c| cannot_undo(c).boxed())
                .irreversible()
                .max_attempts(20),
            StepDef::new("delete_namespace", |c| delete_namespace(c).boxed()).max_attempts(20),
        ],
        settle: |_| {
            Ok(Settlement {
                state: Some(VClusterState::Deleted),
                spec: None,
                result: serde_json::Value::Null,
            })
        },
        revert: None,
        admit: None,
    }
}

async fn uninstall(ctx: &StepCtx) -> StepResult {
    ctx.driver.uninstall_release(&ctx.call, &ctx.target).await?;
    Ok(StepOutput::done())
}

async fn cannot_undo(_: &StepCtx) -> StepResult {
    Err(StepError::permanent(
        Code::FailedPrecondition,
        "the release was already uninstalled; delete cannot be undone, delete the vcluster again",
    ))
}

async fn delete_namespace(ctx: &StepCtx) -> StepResult {
    if ctx.driver.delete_namespace(&ctx.call, &ctx.target).await? {
        Ok(StepOutput::done())
    } else {
        Ok(StepOutput::pending(CHECK_IN))
    }
}

#[cfg(test)]
mod sweeps {
    use crate::sweep::{self, Fixture, Harness, sweeps};
    use ovc_types::command::Command;
    use ovc_types::command::DeleteParams;

    /// A RUNNING vcluster. A failure after the uninstall (declared irreversible) leaves
    /// the operation STUCK and the vcluster FAILED; the sweep expects that from the
    /// declaration.
    struct Running;

    impl Fixture for Running {
        async fn setup(&self, h: &Harness) -> Command {
            sweep::create(h, "vc").await;
            Command::new(DeleteParams {})
        }
    }

    sweeps!(crate::delete::definition(); running: Running);
}
