//! CreateVCluster (docs/vcluster-mechanics.md §1): namespace, Helm install, wait until the
//! control plane is ready, confirm the kubeconfig exists. Undo: uninstall, delete the
//! namespace. On success the vcluster is RUNNING.

use crate::common::{CHECK_IN, values, wait_ready};
use futures::FutureExt;
use ovc_driver::{NamespaceOutcome, Owner};
use ovc_engine::ParamsDef;
use ovc_engine::model::{Settlement, WorkflowDef};
use ovc_engine::{StepCtx, StepDef, StepError, StepKey, StepOutput, StepResult};
use ovc_types::command::CreateParams;
use ovc_types::state::{CallRule, OperationKind, VClusterState};
use serde::{Deserialize, Serialize};

/// `create_namespace` journals the namespace and whether this operation created it.
pub(crate) const CREATE_NAMESPACE: StepKey<NamespaceEnsured> = StepKey::named("create_namespace");
/// `install_release` journals the revision and whether this operation created it.
pub(crate) const INSTALL_RELEASE: StepKey<ReleaseEnsured> = StepKey::named("install_release");

/// The output of `create_namespace`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct NamespaceEnsured {
    #[serde(default)]
    namespace: String,
    /// Journals written before the output said so have none: they count as not
    /// created, since leaking a namespace beats deleting one that may be another
    /// tenant's.
    #[serde(default)]
    created: bool,
}

/// The output of `install_release`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct ReleaseEnsured {
    #[serde(default)]
    revision: u32,
    /// Journals written before the output said so have none: they uninstall (one
    /// vcluster per namespace, and the namespace is the vcluster's).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    created: Option<bool>,
}

/// CREATE's row of the transition table: it makes a vcluster, never runs on one.
pub const RULE: CallRule = CallRule {
    verb: "create",
    new_verb: Some("create"),
    starts_from: &[],
    in_progress: Some(VClusterState::Creating),
    hints: &[],
};

/// The create workflow.
pub fn definition() -> WorkflowDef {
    WorkflowDef {
        kind: OperationKind::CREATE,
        name: "create",
        params: ParamsDef::of::<CreateParams>(),
        rule: RULE,
        api: None,
        steps: vec![
            StepDef::new(CREATE_NAMESPACE.name, |c| create_namespace(c).boxed())
                .undo(|c| delete_namespace(c).boxed()),
            StepDef::new(INSTALL_RELEASE.name, |c| install_release(c).boxed())
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
        admit: None,
    }
}

/// The vcluster the host namespace must belong to.
fn owner(ctx: &StepCtx) -> Owner {
    Owner {
        project: ctx.project.clone(),
        vcluster: ctx.vcluster_name.clone(),
        uid: ctx.vcluster_uid,
    }
}

/// Ensures the namespace, labelled as this vcluster's (also used by restore into a new
/// vcluster). A namespace that exists and is someone else's is a permanent failure and
/// stays untouched. The output records whether this operation created it, which is what
/// the undo goes by.
pub(crate) async fn create_namespace(ctx: &StepCtx) -> StepResult {
    let outcome = ctx
        .driver
        .ensure_namespace(&ctx.call, &ctx.target, &owner(ctx))
        .await?;
    CREATE_NAMESPACE.done(&NamespaceEnsured {
        namespace: ctx.target.namespace.clone(),
        created: outcome == NamespaceOutcome::Created,
    })
}

/// Whether this operation created the namespace.
fn created_namespace(ctx: &StepCtx) -> Result<bool, StepError> {
    Ok(ctx.output(&CREATE_NAMESPACE)?.is_some_and(|n| n.created))
}

/// Undo of create_namespace (also used by restore): delete and wait until gone, only if
/// this operation created the namespace.
pub(crate) async fn delete_namespace(ctx: &StepCtx) -> StepResult {
    if !created_namespace(ctx)? {
        tracing::info!(
            operation = %ctx.operation_id,
            namespace = %ctx.target.namespace,
            "undo of create_namespace: this operation did not create the namespace; leaving it"
        );
        return Ok(StepOutput::done());
    }
    if ctx.driver.delete_namespace(&ctx.call, &ctx.target).await? {
        Ok(StepOutput::done())
    } else {
        Ok(StepOutput::pending(CHECK_IN))
    }
}

/// Ensures the release with the vcluster's spec (also used by restore). The output
/// records whether this operation created it: the namespace is this operation's, so
/// everything in it is, or there was no release before the install.
pub(crate) async fn install_release(ctx: &StepCtx) -> StepResult {
    let created =
        created_namespace(ctx)? || ctx.driver.release(&ctx.call, &ctx.target).await?.is_none();
    let revision = ctx
        .driver
        .install_release(&ctx.call, &ctx.target, &values(ctx.spec()?))
        .await?;
    INSTALL_RELEASE.done(&ReleaseEnsured {
        revision,
        created: Some(created),
    })
}

/// Undo of install_release (also used by restore): uninstall, unless the output says the
/// release existed before this operation.
pub(crate) async fn uninstall_release(ctx: &StepCtx) -> StepResult {
    if ctx.output(&INSTALL_RELEASE)?.and_then(|r| r.created) == Some(false) {
        return Ok(StepOutput::done());
    }
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

#[cfg(test)]
mod sweeps {
    use crate::sweep::{Fixture, Harness, sweeps};
    use ovc_types::command::Command;
    use ovc_types::command::CreateParams;
    use ovc_types::spec::VClusterSpec;

    /// No vcluster yet.
    struct Nothing;

    impl Fixture for Nothing {
        async fn setup(&self, _: &Harness) -> Command {
            Command::new(CreateParams {
                spec: VClusterSpec::default(),
            })
        }
    }

    sweeps!(crate::create::definition(); from_nothing: Nothing);
}
