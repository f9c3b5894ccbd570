//! The nine workflows, one file each. A newcomer who wants to change what "suspend"
//! does opens `workflows/src/suspend.rs` and nothing else.
//!
//! Every step is an *ensure* with its undo, following docs/vcluster-mechanics.md. Step
//! names are persisted in events: never rename one, add a new one.

/// `impl OperationBody` for parameters that are their own REST body and CLI flags
/// (every operation but SCALE, which has a body and flags of its own).
macro_rules! params_are_the_body {
    ($params:ty) => {
        impl ovc_engine::OperationBody for $params {
            type Body = Self;
            type Args = Self;
            fn from_body(body: Self) -> Result<Self, ovc_types::error::Status> {
                Ok(body)
            }
            fn body_of_args(args: Self) -> Result<serde_json::Value, String> {
                serde_json::to_value(args).map_err(|e| e.to_string())
            }
        }
    };
}

pub mod bench;
mod common;
#[cfg(test)]
mod contract;
pub mod create;
pub mod delete;
pub mod delete_snapshot;
#[cfg(feature = "harness")]
pub mod harness;
pub mod restore;
pub mod resume;
pub mod scale;
pub mod snapshot;
pub mod suspend;
#[cfg(test)]
mod sweep;
pub mod upgrade;

use ovc_engine::Registry;

/// A registry with every workflow.
pub fn registry() -> Registry {
    let mut r = Registry::new();
    r.register(create::definition())
        .register(suspend::definition())
        .register(resume::definition())
        .register(snapshot::definition())
        .register(restore::definition())
        .register(scale::definition())
        .register(upgrade::definition())
        .register(delete::definition())
        .register(delete_snapshot::definition());
    r
}

/// The registry `ovc bench workflows` uses: the five-step bench workflow runs CREATE.
pub fn bench_registry() -> Registry {
    let mut r = Registry::new();
    r.register(bench::definition());
    r
}
