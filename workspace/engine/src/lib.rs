//! The durable workflow engine (DESIGN.md §5–6).
//!
//! A workflow ([`model::WorkflowDef`]) is an ordered list of steps with `run` and `undo`.
//! The operation's event stream is its journal ([`journal::Journal`]); the pure planner
//! ([`plan::plan`]) decides the next move from the journal alone; the executor
//! ([`executor`]) performs it and journals the result in one fenced commit; the worker
//! ([`worker`]) claims runs from the store's queue, renews their leases and runs
//! executors, and shuts down gracefully. [`trace_context`] carries the request's trace
//! from the API to the workers (a span per operation run and per step attempt).

pub mod accept;
pub mod executor;
pub mod inventory;
pub mod journal;
pub mod model;
pub mod operation;
pub mod plan;
pub mod registry;
pub mod services;
pub mod submissions;
pub mod trace_context;
pub mod worker;

pub use model::{StepCtx, StepDef, StepError, StepKey, StepOutput, StepResult, WorkflowDef};
pub use operation::{OperationApi, OperationBody, ParamsDef};
pub use registry::Registry;
