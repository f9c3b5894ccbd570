//! The journal: an operation's event stream folded into what the planner needs — per
//! step status, attempts and outputs, compensation and cancellation, the end.
//!
//! The fold checks the log's grammar (steno's `next_status`): a step can only succeed
//! after it started, only be compensated after it succeeded, and so on. A log that breaks
//! the grammar is not guessed at; the operation is marked stuck with the reason.

use chrono::{DateTime, Utc};
use ovc_store::RecordedEvent;
use ovc_types::command::Command;
use ovc_types::error::Status;
use ovc_types::event::Event;
use ovc_types::state::{OperationState, VClusterState};
use ovc_types::{OperationId, ProjectName, VClusterId, VClusterName};
use std::collections::BTreeMap;

/// Where one step stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StepStatus {
    /// Never started.
    NotStarted,
    /// Started; it may or may not have had its effect (a crash or a pending wait).
    Started,
    /// The last attempt failed and the step will be retried.
    FailedRetryable,
    /// Failed for good.
    FailedPermanent,
    /// Its effect is in place.
    Succeeded,
    /// Not needed.
    Skipped,
    /// Undone.
    Compensated,
    /// Its undo failed for good.
    UndoFailed,
}

/// One step's record.
#[derive(Debug, Clone, PartialEq)]
pub struct StepRecord {
    /// Status.
    pub status: StepStatus,
    /// Attempts started.
    pub attempts: u32,
    /// Output of the successful attempt.
    pub output: serde_json::Value,
    /// The last error.
    pub last_error: Option<Status>,
    /// When its first attempt started (the commit time of its first `StepStarted`), the
    /// origin of the wait limit: durable, since it comes from the log, not from memory.
    pub first_started_at: Option<DateTime<Utc>>,
}

impl Default for StepRecord {
    fn default() -> Self {
        Self {
            status: StepStatus::NotStarted,
            attempts: 0,
            output: serde_json::Value::Null,
            last_error: None,
            first_started_at: None,
        }
    }
}

/// What `OperationRequested` said.
#[derive(Debug, Clone, PartialEq)]
pub struct Requested {
    /// The vcluster's uid.
    pub vcluster_uid: VClusterId,
    /// Its name.
    pub vcluster: VClusterName,
    /// The project.
    pub project: ProjectName,
    /// The parameters.
    pub command: Command,
    /// The operation it retries.
    pub retry_of: Option<OperationId>,
    /// The stable state before.
    pub prior_state: Option<VClusterState>,
}

/// An event that breaks the journal's grammar.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "journal of operation {operation}: {event} at version {version} is not allowed when {detail}"
)]
pub struct IllegalTransition {
    /// The operation.
    pub operation: String,
    /// The event type.
    pub event: &'static str,
    /// Its stream version.
    pub version: u64,
    /// The state that made it illegal.
    pub detail: String,
}

/// The folded operation stream.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Journal {
    /// The request (absent only for a corrupt or empty stream).
    pub requested: Option<Requested>,
    /// Step records by name.
    pub steps: BTreeMap<String, StepRecord>,
    /// Set once compensation started, with its cause.
    pub compensating: Option<Status>,
    /// Someone asked to cancel.
    pub cancel_requested: bool,
    /// The terminal state, once reached.
    pub terminal: Option<OperationState>,
    /// The stream version folded so far.
    pub version: u64,
}

impl Journal {
    /// Folds a whole stream.
    pub fn fold(events: &[RecordedEvent]) -> Result<Journal, JournalError> {
        let mut j = Journal::default();
        for e in events {
            let ev = e
                .decode()
                .map_err(|err| JournalError::Decode(err.to_string()))?;
            j.apply_at(&e.stream, e.version, Some(e.recorded_at), &ev)?;
        }
        Ok(j)
    }

    /// The record of `step` (default: not started).
    pub fn step(&self, step: &str) -> StepRecord {
        self.steps.get(step).cloned().unwrap_or_default()
    }

    /// Outputs of the succeeded steps.
    pub fn outputs(&self) -> BTreeMap<String, serde_json::Value> {
        self.steps
            .iter()
            .filter(|(_, r)| r.status == StepStatus::Succeeded)
            .map(|(k, r)| (k.clone(), r.output.clone()))
            .collect()
    }

    /// Folds one event at stream `version`, with no commit time.
    pub fn apply(&mut self, stream: &str, version: u64, event: &Event) -> Result<(), JournalError> {
        self.apply_at(stream, version, None, event)
    }

    /// Folds one event at stream `version`, committed `at` (for a step's first start).
    pub fn apply_at(
        &mut self,
        stream: &str,
        version: u64,
        at: Option<DateTime<Utc>>,
        event: &Event,
    ) -> Result<(), JournalError> {
        let illegal = |detail: String| {
            JournalError::Illegal(IllegalTransition {
                operation: stream.to_string(),
                event: event.event_type(),
                version,
                detail,
            })
        };
        if let Some(state) = self.terminal {
            return Err(illegal(format!("the operation already ended ({state:?})")));
        }
        match event {
            Event::OperationRequested {
                vcluster_uid,
                vcluster,
                project,
                command,
                retry_of,
                prior_state,
                ..
            } => {
                if self.requested.is_some() {
                    return Err(illegal("it was already requested".into()));
                }
                self.requested = Some(Requested {
                    vcluster_uid: *vcluster_uid,
                    vcluster: vcluster.clone(),
                    project: project.clone(),
                    command: command.clone(),
                    retry_of: *retry_of,
                    prior_state: *prior_state,
                });
            }
            _ if self.requested.is_none() => {
                return Err(illegal("the operation was never requested".into()));
            }
            Event::StepStarted { step, attempt } => {
                let r = self.steps.entry(step.clone()).or_default();
                match r.status {
                    StepStatus::NotStarted | StepStatus::FailedRetryable | StepStatus::Started => {
                        r.status = StepStatus::Started;
                        r.attempts = *attempt;
                        if r.first_started_at.is_none() {
                            r.first_started_at = at;
                        }
                    }
                    s => return Err(illegal(format!("step {step} is {s:?}"))),
                }
            }
            Event::StepSucceeded { step, output } => {
                let r = self.steps.entry(step.clone()).or_default();
                if r.status != StepStatus::Started {
                    return Err(illegal(format!("step {step} is {:?}", r.status)));
                }
                r.status = StepStatus::Succeeded;
                r.output = output.clone();
                r.last_error = None;
            }
            Event::StepFailed {
                step,
                error,
                will_retry,
                ..
            } => {
                let r = self.steps.entry(step.clone()).or_default();
                if r.status != StepStatus::Started {
                    return Err(illegal(format!("step {step} is {:?}", r.status)));
                }
                r.status = if *will_retry {
                    StepStatus::FailedRetryable
                } else {
                    StepStatus::FailedPermanent
                };
                r.last_error = Some(error.clone());
            }
            Event::StepInherited { step, output, .. } => {
                let r = self.steps.entry(step.clone()).or_default();
                if r.status != StepStatus::NotStarted {
                    return Err(illegal(format!("step {step} is {:?}", r.status)));
                }
                r.status = StepStatus::Succeeded;
                r.output = output.clone();
            }
            Event::StepSkipped { step } => {
                let r = self.steps.entry(step.clone()).or_default();
                if r.status != StepStatus::NotStarted {
                    return Err(illegal(format!("step {step} is {:?}", r.status)));
                }
                r.status = StepStatus::Skipped;
            }
            Event::CompensationStarted { error } => {
                if self.compensating.is_some() {
                    return Err(illegal("compensation already started".into()));
                }
                self.compensating = Some(error.clone());
            }
            Event::StepCompensated { step } => {
                let r = self.steps.entry(step.clone()).or_default();
                if r.status != StepStatus::Succeeded || self.compensating.is_none() {
                    return Err(illegal(format!(
                        "step {step} is {:?} (compensating: {})",
                        r.status,
                        self.compensating.is_some()
                    )));
                }
                r.status = StepStatus::Compensated;
            }
            Event::UndoFailed { step, error } => {
                let r = self.steps.entry(step.clone()).or_default();
                if r.status != StepStatus::Succeeded {
                    return Err(illegal(format!("step {step} is {:?}", r.status)));
                }
                r.status = StepStatus::UndoFailed;
                r.last_error = Some(error.clone());
            }
            Event::CancelRequested { .. } => self.cancel_requested = true,
            Event::OperationSucceeded { .. } => self.terminal = Some(OperationState::Succeeded),
            Event::OperationFailed { .. } => self.terminal = Some(OperationState::Failed),
            Event::OperationCancelled { .. } => self.terminal = Some(OperationState::Cancelled),
            Event::OperationStuck { .. } => self.terminal = Some(OperationState::Stuck),
            other => {
                return Err(illegal(format!(
                    "{} does not belong on an operation stream",
                    other.event_type()
                )));
            }
        }
        self.version = version;
        Ok(())
    }
}

/// Why a journal could not be folded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum JournalError {
    /// The grammar was broken.
    #[error(transparent)]
    Illegal(#[from] IllegalTransition),
    /// An event could not be decoded.
    #[error("undecodable event: {0}")]
    Decode(String),
}
