//! CreateVCluster (docs/vcluster-mechanics.md §1): namespace, Helm install, wait until the
//! control plane is ready, confirm the kubeconfig exists. Undo: uninstall, delete the
//! namespace. On success the vcluster is RUNNING.

use crate::common::{CHECK_IN, values, wait_ready};
use futures::FutureExt;
use ovc_engine::model::{Settlement, WorkflowDef};
use ovc_engine::{StepCtx, StepDef, StepOutput, StepResult};
use ovc_types::state::{OperationKind, VClusterState};

/// The create workflow.
pub fn definition() -> WorkflowDef {
    WorkflowDef {
        kind: OperationKind::Create,
        name: "create",
        steps: vec![
            StepDef::new("create_namespace", |c| create_namespace(c).boxed())
                .undo(|c| delete_namespace(c).boxed()),
            StepDef::new("install_release", |c| install_release(c).boxed())
                .undo(|c| uninstall_release(c).boxed()),
            StepDef::new("wait_ready", |c| wait_ready(c).boxed()),
            StepDef::new("read_kubeconfig", |c| read_kubeconfig(c).boxed()),
        ],
        settle: |ctx| {
            Ok(Settlement {
                state: Some(VClusterState::Running),
                spec: None,
                result: serde_json::json!({
                    "name": ctx.vcluster_name,
                    "project": ctx.project,
                    "uid": ctx.vcluster_uid,
                    "host_namespace": ctx.target.namespace,
                }),
            })
        },
        revert: None,
    }
}

/// Ensures the namespace (also used by restore into a new vcluster).
pub(crate) async fn create_namespace(ctx: &StepCtx) -> StepResult {
    ctx.driver.ensure_namespace(&ctx.call, &ctx.target).await?;
    Ok(StepOutput::output(
        serde_json::json!({"namespace": ctx.target.namespace}),
    ))
}

/// Undo of create_namespace (also used by restore): delete and wait until gone.
pub(crate) async fn delete_namespace(ctx: &StepCtx) -> StepResult {
    if ctx.driver.delete_namespace(&ctx.call, &ctx.target).await? {
        Ok(StepOutput::done())
    } else {
        Ok(StepOutput::pending(CHECK_IN))
    }
}

/// Ensures the release with the vcluster's spec (also used by restore).
pub(crate) async fn install_release(ctx: &StepCtx) -> StepResult {
    let revision = ctx
        .driver
        .install_release(&ctx.call, &ctx.target, &values(ctx.spec()?))
        .await?;
    Ok(StepOutput::output(
        serde_json::json!({"revision": revision}),
    ))
}

/// Undo of install_release (also used by restore).
pub(crate) async fn uninstall_release(ctx: &StepCtx) -> StepResult {
    ctx.driver.uninstall_release(&ctx.call, &ctx.target).await?;
    Ok(StepOutput::done())
}

async fn read_kubeconfig(ctx: &StepCtx) -> StepResult {
    // The kubeconfig itself is a credential: it is read live by the API, never journaled.
    match ctx.driver.kubeconfig(&ctx.call, &ctx.target).await? {
        Some(_) => Ok(StepOutput::output(
            serde_json::json!({"kubeconfig": "present"}),
        )),
        None => Ok(StepOutput::pending(CHECK_IN)),
    }
}
