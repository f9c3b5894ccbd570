//! The workflow model: a workflow is an ordered list of named steps, each with `run` and
//! an optional `undo` (steno's action / undo action), plus what the vcluster becomes on
//! success.
//!
//! Steps are plain async functions over a [`StepCtx`]; they return a [`StepOutput`]
//! (done with an output, or pending with a check-in time for long waits) or a
//! [`StepError`] whose kind chooses the path: transient → retry, permanent → compensate.
//! Step names are persisted in events: never rename one, add a new one.

use crate::operation::{OperationApi, ParamsDef};
use crate::services::Services;
use futures::future::BoxFuture;
use ovc_driver::{CallCtx, DriverError, HostDriver, Target};
use ovc_types::command::Command;
use ovc_types::command::OperationParams;
use ovc_types::error::{Code, Status};
use ovc_types::event::{Event, StreamName};
use ovc_types::resource::VCluster;
use ovc_types::spec::VClusterSpec;
use ovc_types::state::{CallRule, OperationKind, VClusterState};
use ovc_types::time::{Clock, IdSource};
use ovc_types::{OperationId, ProjectName, VClusterId, VClusterName};
use serde::Serialize;
use serde::de::DeserializeOwned;
use std::collections::BTreeMap;
use std::marker::PhantomData;
use std::sync::Arc;
use std::time::Duration;

/// What a step (or undo) achieved.
#[derive(Debug, Clone, PartialEq)]
pub enum StepOutput {
    /// The effect is in place. `output` is journaled and readable by later steps and
    /// undos; `events` are appended (to their streams) in the same commit.
    Done {
        /// Journaled output.
        output: serde_json::Value,
        /// Extra events, e.g. `SnapshotCompleted` on `snapshot-<id>`.
        events: Vec<(StreamName, Event)>,
    },
    /// Not yet (e.g. pods still terminating): check again after `check_in`, without
    /// holding a worker slot. The run is rescheduled durably.
    Pending {
        /// When to look again.
        check_in: Duration,
    },
}

impl StepOutput {
    /// Done with no output.
    pub fn done() -> Self {
        StepOutput::Done {
            output: serde_json::Value::Null,
            events: Vec::new(),
        }
    }

    /// Done with `output`.
    pub fn output(output: serde_json::Value) -> Self {
        StepOutput::Done {
            output,
            events: Vec::new(),
        }
    }

    /// Pending; look again after `check_in`.
    pub fn pending(check_in: Duration) -> Self {
        StepOutput::Pending { check_in }
    }
}

/// Why a step (or undo) failed.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum StepError {
    /// Worth retrying: in process with backoff, then durably.
    #[error("{message}")]
    Transient {
        /// What happened.
        message: String,
        /// A hint for the next attempt.
        retry_after: Option<Duration>,
    },
    /// Retrying will not help: compensate (or, in an undo, get stuck).
    #[error("{0}")]
    Permanent(Status),
}

impl StepError {
    /// A transient error.
    pub fn transient(message: impl Into<String>) -> Self {
        StepError::Transient {
            message: message.into(),
            retry_after: None,
        }
    }

    /// A permanent error with `code`.
    pub fn permanent(code: Code, message: impl Into<String>) -> Self {
        StepError::Permanent(Status::new(code, message))
    }

    /// The status to journal.
    pub fn status(&self) -> Status {
        match self {
            StepError::Transient { message, .. } => {
                Status::new(Code::Unavailable, message.clone()).with_reason("TRANSIENT")
            }
            StepError::Permanent(s) => s.clone(),
        }
    }
}

impl From<DriverError> for StepError {
    fn from(e: DriverError) -> Self {
        match e {
            DriverError::Transient {
                message,
                retry_after,
            } => StepError::Transient {
                message,
                retry_after,
            },
            DriverError::Permanent(s) => StepError::Permanent(s),
        }
    }
}

/// A step's or undo's result.
pub type StepResult = Result<StepOutput, StepError>;

/// A step's persisted name together with the type of the output it journals, so that a
/// later step or undo reads it typed and by a name the compiler checks
/// (`ctx.output(&SAFETY_COPY)?`): a renamed step or a changed output type is a compile
/// error or a clear permanent error, never a silent `null`. Declare one per step whose
/// output is read: `const SAFETY_COPY: StepKey<SafetyCopy> = StepKey::named("safety_copy");`
/// and `StepDef::new(SAFETY_COPY.name, ...)`.
pub struct StepKey<O> {
    /// The persisted step name.
    pub name: &'static str,
    output: PhantomData<fn() -> O>,
}

impl<O> StepKey<O> {
    /// The key of step `name`.
    pub const fn named(name: &'static str) -> Self {
        Self {
            name,
            output: PhantomData,
        }
    }
}

impl<O: Serialize> StepKey<O> {
    /// Done, journaling `output` as this step's output.
    pub fn done(&self, output: &O) -> StepResult {
        let output = serde_json::to_value(output).map_err(|e| {
            StepError::permanent(
                Code::Internal,
                format!("step {}: its output does not serialize: {e}", self.name),
            )
        })?;
        Ok(StepOutput::output(output))
    }
}

/// The signature of `run` and `undo`.
pub type StepFn = for<'a> fn(&'a StepCtx) -> BoxFuture<'a, StepResult>;

/// Decides from the command alone whether a step is skipped (pure, so planning stays
/// deterministic).
pub type SkipFn = fn(&Command) -> bool;

/// One step of a workflow.
#[derive(Clone)]
pub struct StepDef {
    /// Persisted name; never rename.
    pub name: &'static str,
    /// The action (an ensure).
    pub run: StepFn,
    /// The compensation (an ensure that tolerates "run never happened").
    pub undo: Option<StepFn>,
    /// The effect cannot be taken back (deleted data stays deleted): the undo fails
    /// permanently on purpose, so a failure after this step leaves the operation STUCK
    /// and the vcluster FAILED rather than compensated. The engine runs that undo like
    /// any other; the declaration is what the sweeps of the workflow files expect.
    pub irreversible: bool,
    /// Skipped when this returns true for the command.
    pub skip_if: Option<SkipFn>,
    /// Attempts before the step fails permanently.
    pub max_attempts: u32,
    /// One attempt's time limit; exceeding it is a transient failure.
    pub timeout: Duration,
}

impl std::fmt::Debug for StepDef {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StepDef")
            .field("name", &self.name)
            .field("undo", &self.undo.is_some())
            .field("irreversible", &self.irreversible)
            .field("skip_if", &self.skip_if.is_some())
            .field("max_attempts", &self.max_attempts)
            .field("timeout", &self.timeout)
            .finish()
    }
}

/// Default attempts per step.
pub const DEFAULT_MAX_ATTEMPTS: u32 = 5;
/// Default time limit of one attempt.
pub const DEFAULT_STEP_TIMEOUT: Duration = Duration::from_secs(60);
/// Default limit of a step's waiting (readiness and the like), from its first start: 10
/// minutes, as `vcluster create` waits.
pub const DEFAULT_READY_TIMEOUT: Duration = Duration::from_secs(600);

impl StepDef {
    /// A step with default limits and no undo.
    pub fn new(name: &'static str, run: StepFn) -> Self {
        Self {
            name,
            run,
            undo: None,
            irreversible: false,
            skip_if: None,
            max_attempts: DEFAULT_MAX_ATTEMPTS,
            timeout: DEFAULT_STEP_TIMEOUT,
        }
    }

    /// With a compensation.
    pub fn undo(mut self, undo: StepFn) -> Self {
        self.undo = Some(undo);
        self
    }

    /// Declares the effect irreversible (see [`StepDef::irreversible`]).
    pub fn irreversible(mut self) -> Self {
        self.irreversible = true;
        self
    }

    /// Skipped when `skip_if(command)`.
    pub fn skip_if(mut self, skip_if: SkipFn) -> Self {
        self.skip_if = Some(skip_if);
        self
    }

    /// With an attempt limit.
    pub fn max_attempts(mut self, n: u32) -> Self {
        self.max_attempts = n.max(1);
        self
    }

    /// With a per-attempt time limit.
    pub fn timeout(mut self, t: Duration) -> Self {
        self.timeout = t;
        self
    }
}

/// What the vcluster becomes when the workflow succeeds.
#[derive(Debug, Clone, PartialEq)]
pub struct Settlement {
    /// The stable state (RUNNING, SUSPENDED, DELETED); `None` for workflows whose kind
    /// leaves the vcluster's state alone (DELETE_SNAPSHOT): nothing is appended to the
    /// vcluster's stream.
    pub state: Option<VClusterState>,
    /// The new spec, when the workflow changed it.
    pub spec: Option<VClusterSpec>,
    /// The operation's `result`.
    pub result: serde_json::Value,
}

/// Computes the settlement from the finished workflow's context.
pub type SettleFn = fn(&StepCtx) -> Result<Settlement, StepError>;

/// The workflow's own check of a command against the existing vcluster, run by accept
/// after the state machine allowed the call and before anything is written: what only
/// this operation knows (a scale patch that changes nothing, an upgrade that skips a
/// minor version). The refusal is the caller's answer, with its code and reason.
pub type AdmitFn = fn(&Command, &VCluster) -> Result<(), Status>;

/// A workflow: its kind, its parameters, its row of the state machine, its transports,
/// its steps in order, and its settlement — everything about one operation, declared in
/// its own file and registered with one line ([`crate::Registry::register`]).
#[derive(Debug, Clone)]
pub struct WorkflowDef {
    /// Which operations it runs.
    pub kind: OperationKind,
    /// Short name used in logs and fault rules, e.g. `suspend`.
    pub name: &'static str,
    /// Its typed parameters ([`ParamsDef::of`]).
    pub params: ParamsDef,
    /// Its row of the transition table: the states it starts from, its in-progress
    /// state, its verb and refusal hints. A new in-progress state is a new
    /// `VClusterState`, a change of the wire contract.
    pub rule: CallRule,
    /// Its generated transports (REST route + OpenAPI, gRPC `StartOperation`, CLI
    /// subcommand), for operations on an existing vcluster; `None` for the calls with
    /// hand-written routes (create, restore, delete, delete snapshot).
    pub api: Option<OperationApi>,
    /// The steps, in order.
    pub steps: Vec<StepDef>,
    /// The outcome on success.
    pub settle: SettleFn,
    /// The operation's own accept-time check (see [`AdmitFn`]); `None`: the state
    /// machine's answer is the whole check.
    pub admit: Option<AdmitFn>,
    /// Runs once compensation is over and the operation is about to end FAILED or
    /// CANCELLED; the events it returns are journaled with that outcome. For workflows
    /// whose subject is not the vcluster (DELETE_SNAPSHOT puts its snapshot back to
    /// READY or FAILED), where the engine's own `VClusterReverted` does not apply. It
    /// must be an idempotent read-and-decide: a transient error retries it (like an
    /// undo), a permanent one makes the operation STUCK. Most workflows have none.
    pub revert: Option<StepFn>,
}

impl WorkflowDef {
    /// The step called `name`.
    pub fn step(&self, name: &str) -> Option<&StepDef> {
        self.steps.iter().find(|s| s.name == name)
    }

    /// The names of the steps that run for `command` (skipped ones excluded), in order.
    pub fn planned_steps(&self, command: &Command) -> Vec<String> {
        self.steps
            .iter()
            .filter(|s| !s.skip_if.is_some_and(|f| f(command)))
            .map(|s| s.name.to_string())
            .collect()
    }
}

/// Everything a step may use. Built by the executor for each attempt.
pub struct StepCtx {
    /// The operation.
    pub operation_id: OperationId,
    /// Its parameters.
    pub command: Command,
    /// The vcluster's uid.
    pub vcluster_uid: VClusterId,
    /// The vcluster's name.
    pub vcluster_name: VClusterName,
    /// The project.
    pub project: ProjectName,
    /// The vcluster as it was when the run was claimed (`None` if it is gone).
    pub vcluster: Option<VCluster>,
    /// The stable state before the operation (`None`: it created the vcluster).
    pub prior_state: Option<VClusterState>,
    /// Outputs of the steps that succeeded so far, by step name.
    pub outputs: BTreeMap<String, serde_json::Value>,
    /// Where on the host.
    pub target: Target,
    /// Who is calling (for the driver).
    pub call: CallCtx,
    /// The host.
    pub driver: Arc<dyn HostDriver>,
    /// Other services (snapshot storage).
    pub services: Arc<Services>,
    /// The store, read-only use (e.g. a snapshot's record for a restore).
    pub store: Arc<dyn ovc_store::Store>,
    /// The clock.
    pub clock: Arc<dyn Clock>,
    /// The id source.
    pub ids: Arc<dyn IdSource>,
}

impl StepCtx {
    /// The typed output of step `key`: `None` when that step has not succeeded (or was
    /// skipped) in this operation; a permanent error when what it journaled is not an `O`
    /// (a step changed its output type without a new name).
    pub fn output<O: DeserializeOwned>(&self, key: &StepKey<O>) -> Result<Option<O>, StepError> {
        match self.outputs.get(key.name) {
            None | Some(serde_json::Value::Null) => Ok(None),
            Some(v) => serde_json::from_value(v.clone()).map(Some).map_err(|e| {
                StepError::permanent(
                    Code::Internal,
                    format!(
                        "the journaled output of step {} is not a {}: {e}",
                        key.name,
                        std::any::type_name::<O>()
                    ),
                )
            }),
        }
    }

    /// The operation's parameters, typed (`ctx.params::<SuspendParams>()?`); a
    /// permanent error when they are not a `P` (accept checked them, so a bug).
    pub fn params<P: OperationParams>(&self) -> Result<P, StepError> {
        self.command
            .params::<P>()
            .map_err(|e| StepError::permanent(Code::Internal, e.to_string()))
    }

    /// The vcluster's current spec, or a permanent error if the vcluster is unknown.
    pub fn spec(&self) -> Result<&VClusterSpec, StepError> {
        self.vcluster.as_ref().map(|v| &v.spec).ok_or_else(|| {
            StepError::permanent(
                Code::NotFound,
                format!("vcluster {} is not in the projections", self.vcluster_uid),
            )
        })
    }
}
