//! The benchmark workflow: five steps, each one host round trip (a namespace lookup),
//! registered under CREATE in [`crate::bench_registry`] only. `ovc bench workflows` runs
//! it to measure the engine itself — claims, journal commits, leases — rather than any
//! one operation's host work.

use futures::FutureExt;
use ovc_engine::model::{Settlement, WorkflowDef};
use ovc_engine::{StepCtx, StepDef, StepOutput, StepResult};
use ovc_types::state::{OperationKind, VClusterState};

/// The bench workflow.
pub fn definition() -> WorkflowDef {
    WorkflowDef {
        kind: OperationKind::CREATE,
        name: "bench",
        params: ovc_engine::ParamsDef::of::<ovc_types::command::CreateParams>(),
        rule: crate::create::RULE,
        api: None,
        steps: vec![
            StepDef::new("bench_1", |c| look(c).boxed()),
            StepDef::new("bench_2", |c| look(c).boxed()),
            StepDef::new("bench_3", |c| look(c).boxed()),
            StepDef::new("bench_4", |c| look(c).boxed()),
            StepDef::new("bench_5", |c| look(c).boxed()),
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

async fn look(ctx: &StepCtx) -> StepResult {
    let exists = ctx.driver.namespace_exists(&ctx.call, &ctx.target).await?;
    Ok(StepOutput::output(serde_json::json!({ "exists": exists })))
}
