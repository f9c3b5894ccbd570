//! `plan(journal, workflow) -> Next`: the pure decision of what happens next.
//!
//! Decide, then do (restate's ActionCollector, omicron's recovery plan): the planner reads
//! nothing but the journal and the workflow definition, so every branch is a table test
//! without a database, and replay after a crash takes exactly the same decisions.

use crate::journal::{Journal, StepStatus};
use crate::model::WorkflowDef;
use ovc_types::error::{Code, Status};

/// What the executor does next.
#[derive(Debug, Clone, PartialEq)]
pub enum Next {
    /// Run `step`. `started`: a `StepStarted` for this attempt is already journaled (the
    /// previous run crashed or was pending), so do not journal another.
    Run {
        /// The step.
        step: &'static str,
        /// The attempt number (from 1).
        attempt: u32,
        /// Already journaled as started.
        started: bool,
    },
    /// Journal `StepSkipped` for `step`.
    Skip {
        /// The step.
        step: &'static str,
    },
    /// Begin compensation with this cause.
    Compensate {
        /// Why.
        error: Status,
    },
    /// Run the undo of `step` (a step without undo is marked compensated directly).
    Undo {
        /// The step.
        step: &'static str,
    },
    /// Every step succeeded or was skipped.
    Succeed,
    /// Every completed step was undone: the operation failed (or was cancelled).
    Fail {
        /// The cause (from `CompensationStarted`).
        error: Status,
        /// True when the cause was a cancellation.
        cancelled: bool,
    },
    /// An undo failed permanently earlier: the operation is stuck.
    Stuck {
        /// Why.
        error: Status,
    },
    /// The operation already ended; nothing to do but finish the run.
    Ended,
}

/// The cancellation status.
pub fn cancelled_status() -> Status {
    Status::new(Code::Cancelled, "the operation was cancelled on request").with_reason("CANCELLED")
}

/// Decides what happens next.
pub fn plan(journal: &Journal, def: &WorkflowDef) -> Next {
    if journal.terminal.is_some() {
        return Next::Ended;
    }
    let Some(requested) = &journal.requested else {
        return Next::Stuck {
            error: Status::internal("the operation stream has no OperationRequested"),
        };
    };
    if let Some(cause) = &journal.compensating {
        for step in def.steps.iter().rev() {
            match journal.step(step.name).status {
                StepStatus::Succeeded => return Next::Undo { step: step.name },
                StepStatus::UndoFailed => {
                    return Next::Stuck {
                        error: journal
                            .step(step.name)
                            .last_error
                            .unwrap_or_else(|| Status::internal("undo failed")),
                    };
                }
                _ => {}
            }
        }
        return Next::Fail {
            error: cause.clone(),
            cancelled: cause.code == Code::Cancelled,
        };
    }
    if journal.cancel_requested {
        return Next::Compensate {
            error: cancelled_status(),
        };
    }
    for step in &def.steps {
        let rec = journal.step(step.name);
        match rec.status {
            StepStatus::Succeeded | StepStatus::Skipped => continue,
            StepStatus::NotStarted => {
                if step.skip_if.is_some_and(|f| f(&requested.command)) {
                    return Next::Skip { step: step.name };
                }
                return Next::Run {
                    step: step.name,
                    attempt: 1,
                    started: false,
                };
            }
            StepStatus::Started => {
                return Next::Run {
                    step: step.name,
                    attempt: rec.attempts.max(1),
                    started: true,
                };
            }
            StepStatus::FailedRetryable => {
                if rec.attempts >= step.max_attempts {
                    return Next::Compensate {
                        error: rec.last_error.unwrap_or_else(|| {
                            Status::new(Code::Unavailable, "attempts exhausted")
                        }),
                    };
                }
                return Next::Run {
                    step: step.name,
                    attempt: rec.attempts + 1,
                    started: false,
                };
            }
            StepStatus::FailedPermanent => {
                return Next::Compensate {
                    error: rec
                        .last_error
                        .unwrap_or_else(|| Status::internal("step failed")),
                };
            }
            StepStatus::Compensated | StepStatus::UndoFailed => {
                return Next::Stuck {
                    error: Status::internal(format!(
                        "step {} is {:?} but compensation never started",
                        step.name, rec.status
                    )),
                };
            }
        }
    }
    Next::Succeed
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{StepDef, StepOutput, StepResult, WorkflowDef};
    use futures::future::BoxFuture;
    use ovc_types::command::Command;
    use ovc_types::event::Event;
    use ovc_types::state::{OperationKind, VClusterState};
    use ovc_types::{VClusterId, VClusterName};

    fn noop(_: &crate::model::StepCtx) -> BoxFuture<'_, StepResult> {
        Box::pin(async { Ok(StepOutput::done()) })
    }

    fn def() -> WorkflowDef {
        WorkflowDef {
            kind: OperationKind::SUSPEND,
            name: "suspend",
            params: crate::operation::ParamsDef::untyped(),
            rule: ovc_types::state::CallRule::outside("suspend"),
            api: None,
            steps: vec![
                StepDef::new("snapshot", noop)
                    .undo(noop)
                    .skip_if(|c| c.params_json()["snapshot"] == false),
                StepDef::new("scale_to_zero", noop)
                    .undo(noop)
                    .max_attempts(3),
                StepDef::new("wait_pods_gone", noop),
            ],
            settle: |_| {
                Ok(crate::model::Settlement {
                    state: Some(VClusterState::Suspended),
                    spec: None,
                    result: serde_json::Value::Null,
                })
            },
            revert: None,
            admit: None,
        }
    }

    fn journal(snapshot: bool, events: &[Event]) -> Journal {
        let mut j = Journal::default();
        let requested = Event::OperationRequested {
            vcluster_uid: VClusterId(uuid::Uuid::nil()),
            vcluster: "a".parse::<VClusterName>().expect("name"),
            project: "default".parse().expect("project"),
            command: Command::from_parts(
                OperationKind::SUSPEND,
                serde_json::json!({"snapshot": snapshot, "evict_workloads": false}),
            )
            .expect("object"),
            request_id: None,
            retry_of: None,
            prior_state: Some(VClusterState::Running),
            steps: vec![],
        };
        j.apply("operation-x", 1, &requested).expect("requested");
        for (i, e) in events.iter().enumerate() {
            j.apply("operation-x", i as u64 + 2, e)
                .expect("legal event");
        }
        j
    }

    fn started(step: &str, attempt: u32) -> Event {
        Event::StepStarted {
            step: step.into(),
            attempt,
        }
    }
    fn ok(step: &str) -> Event {
        Event::StepSucceeded {
            step: step.into(),
            output: serde_json::Value::Null,
        }
    }
    fn failed(step: &str, attempt: u32, will_retry: bool) -> Event {
        Event::StepFailed {
            step: step.into(),
            attempt,
            error: Status::new(Code::Unavailable, "boom"),
            will_retry,
        }
    }
    fn comp_started() -> Event {
        Event::CompensationStarted {
            error: Status::new(Code::FailedPrecondition, "boom"),
        }
    }

    #[test]
    fn table() {
        let d = def();
        let cases: Vec<(&str, bool, Vec<Event>, Next)> = vec![
            (
                "fresh with snapshot runs the first step",
                true,
                vec![],
                Next::Run {
                    step: "snapshot",
                    attempt: 1,
                    started: false,
                },
            ),
            (
                "fresh without snapshot skips it",
                false,
                vec![],
                Next::Skip { step: "snapshot" },
            ),
            (
                "after skip, the next step",
                false,
                vec![Event::StepSkipped {
                    step: "snapshot".into(),
                }],
                Next::Run {
                    step: "scale_to_zero",
                    attempt: 1,
                    started: false,
                },
            ),
            (
                "started but not finished (crash or pending) reruns the same attempt",
                true,
                vec![started("snapshot", 1)],
                Next::Run {
                    step: "snapshot",
                    attempt: 1,
                    started: true,
                },
            ),
            (
                "a retryable failure runs the next attempt",
                true,
                vec![
                    ok_pair("snapshot").0,
                    ok_pair("snapshot").1,
                    started("scale_to_zero", 1),
                    failed("scale_to_zero", 1, true),
                ],
                Next::Run {
                    step: "scale_to_zero",
                    attempt: 2,
                    started: false,
                },
            ),
            (
                "attempts exhausted compensates",
                true,
                vec![
                    started("snapshot", 1),
                    ok("snapshot"),
                    started("scale_to_zero", 1),
                    failed("scale_to_zero", 1, true),
                    started("scale_to_zero", 2),
                    failed("scale_to_zero", 2, true),
                    started("scale_to_zero", 3),
                    failed("scale_to_zero", 3, true),
                ],
                Next::Compensate {
                    error: Status::new(Code::Unavailable, "boom"),
                },
            ),
            (
                "a permanent failure compensates",
                true,
                vec![started("snapshot", 1), failed("snapshot", 1, false)],
                Next::Compensate {
                    error: Status::new(Code::Unavailable, "boom"),
                },
            ),
            (
                "compensation undoes the last succeeded step first",
                true,
                vec![
                    started("snapshot", 1),
                    ok("snapshot"),
                    started("scale_to_zero", 1),
                    ok("scale_to_zero"),
                    started("wait_pods_gone", 1),
                    failed("wait_pods_gone", 1, false),
                    comp_started(),
                ],
                Next::Undo {
                    step: "scale_to_zero",
                },
            ),
            (
                "then the one before",
                true,
                vec![
                    started("snapshot", 1),
                    ok("snapshot"),
                    started("scale_to_zero", 1),
                    ok("scale_to_zero"),
                    started("wait_pods_gone", 1),
                    failed("wait_pods_gone", 1, false),
                    comp_started(),
                    Event::StepCompensated {
                        step: "scale_to_zero".into(),
                    },
                ],
                Next::Undo { step: "snapshot" },
            ),
            (
                "all undone: failed",
                true,
                vec![
                    started("snapshot", 1),
                    ok("snapshot"),
                    started("scale_to_zero", 1),
                    failed("scale_to_zero", 1, false),
                    comp_started(),
                    Event::StepCompensated {
                        step: "snapshot".into(),
                    },
                ],
                Next::Fail {
                    error: Status::new(Code::FailedPrecondition, "boom"),
                    cancelled: false,
                },
            ),
            (
                "an undo failed: stuck",
                true,
                vec![
                    started("snapshot", 1),
                    ok("snapshot"),
                    started("scale_to_zero", 1),
                    failed("scale_to_zero", 1, false),
                    comp_started(),
                    Event::UndoFailed {
                        step: "snapshot".into(),
                        error: Status::internal("gone"),
                    },
                ],
                Next::Stuck {
                    error: Status::internal("gone"),
                },
            ),
            (
                "cancel between steps compensates",
                true,
                vec![
                    started("snapshot", 1),
                    ok("snapshot"),
                    Event::CancelRequested { actor: None },
                ],
                Next::Compensate {
                    error: cancelled_status(),
                },
            ),
            (
                "cancelled compensation ends cancelled",
                true,
                vec![
                    started("snapshot", 1),
                    ok("snapshot"),
                    Event::CancelRequested { actor: None },
                    Event::CompensationStarted {
                        error: cancelled_status(),
                    },
                    Event::StepCompensated {
                        step: "snapshot".into(),
                    },
                ],
                Next::Fail {
                    error: cancelled_status(),
                    cancelled: true,
                },
            ),
            (
                "all done: succeed",
                true,
                vec![
                    started("snapshot", 1),
                    ok("snapshot"),
                    started("scale_to_zero", 1),
                    ok("scale_to_zero"),
                    started("wait_pods_gone", 1),
                    ok("wait_pods_gone"),
                ],
                Next::Succeed,
            ),
            (
                "ended: nothing to do",
                true,
                vec![Event::OperationSucceeded {
                    result: serde_json::Value::Null,
                }],
                Next::Ended,
            ),
        ];
        for (name, snapshot, events, want) in cases {
            assert_eq!(plan(&journal(snapshot, &events), &d), want, "{name}");
        }
    }

    fn ok_pair(step: &str) -> (Event, Event) {
        (started(step, 1), ok(step))
    }

    #[test]
    fn grammar_violations_are_refused() {
        let mut j = journal(true, &[]);
        assert!(
            j.apply("operation-x", 2, &ok("snapshot")).is_err(),
            "success before start"
        );
        let mut j2 = journal(true, &[started("snapshot", 1), ok("snapshot")]);
        assert!(
            j2.apply("operation-x", 4, &started("snapshot", 2)).is_err(),
            "restart after success"
        );
        assert!(
            j.apply(
                "operation-x",
                2,
                &Event::StepCompensated {
                    step: "snapshot".into()
                }
            )
            .is_err(),
            "compensated before success"
        );
        let mut ended = journal(
            true,
            &[Event::OperationFailed {
                error: Status::internal("x"),
            }],
        );
        assert!(
            ended
                .apply("operation-x", 3, &started("snapshot", 1))
                .is_err(),
            "after the end"
        );
        let mut empty = Journal::default();
        assert!(
            empty
                .apply("operation-x", 1, &started("snapshot", 1))
                .is_err(),
            "before request"
        );
    }

    /// A one-step workflow whose subject is a snapshot (DELETE_SNAPSHOT): with nothing to
    /// undo, a failure or a cancellation goes straight to `Fail`, where the executor
    /// runs the workflow's revert.
    #[test]
    fn nothing_to_undo_fails_at_once() {
        let d = WorkflowDef {
            kind: OperationKind::DELETE_SNAPSHOT,
            name: "delete_snapshot",
            params: crate::operation::ParamsDef::untyped(),
            rule: ovc_types::state::CallRule::outside("delete snapshot"),
            api: None,
            steps: vec![StepDef::new("delete_artifacts", noop).max_attempts(2)],
            settle: |_| {
                Ok(crate::model::Settlement {
                    state: None,
                    spec: None,
                    result: serde_json::Value::Null,
                })
            },
            revert: Some(noop),
            admit: None,
        };
        let mut base = Journal::default();
        base.apply(
            "operation-y",
            1,
            &Event::OperationRequested {
                vcluster_uid: VClusterId(uuid::Uuid::nil()),
                vcluster: "a".parse::<VClusterName>().expect("name"),
                project: "default".parse().expect("project"),
                command: Command::new(ovc_types::command::DeleteSnapshotParams {
                    snapshot_id: ovc_types::SnapshotId(uuid::Uuid::nil()),
                }),
                request_id: None,
                retry_of: None,
                prior_state: None,
                steps: vec!["delete_artifacts".into()],
            },
        )
        .expect("requested");
        let boom = Status::new(Code::Unavailable, "boom");
        let cases: Vec<(&str, Vec<Event>, Next)> = vec![
            (
                "fresh runs the step",
                vec![],
                Next::Run {
                    step: "delete_artifacts",
                    attempt: 1,
                    started: false,
                },
            ),
            (
                "attempts exhausted compensates",
                vec![
                    started("delete_artifacts", 1),
                    failed("delete_artifacts", 1, true),
                    started("delete_artifacts", 2),
                    failed("delete_artifacts", 2, true),
                ],
                Next::Compensate {
                    error: boom.clone(),
                },
            ),
            (
                "compensation with nothing succeeded fails",
                vec![
                    started("delete_artifacts", 1),
                    failed("delete_artifacts", 1, false),
                    Event::CompensationStarted {
                        error: boom.clone(),
                    },
                ],
                Next::Fail {
                    error: boom,
                    cancelled: false,
                },
            ),
            (
                "cancelled before the step ran",
                vec![
                    Event::CancelRequested { actor: None },
                    Event::CompensationStarted {
                        error: cancelled_status(),
                    },
                ],
                Next::Fail {
                    error: cancelled_status(),
                    cancelled: true,
                },
            ),
            (
                "the step done: succeed",
                vec![started("delete_artifacts", 1), ok("delete_artifacts")],
                Next::Succeed,
            ),
        ];
        for (name, events, want) in cases {
            let mut j = base.clone();
            for (i, e) in events.iter().enumerate() {
                j.apply("operation-y", i as u64 + 2, e)
                    .expect("legal event");
            }
            assert_eq!(plan(&j, &d), want, "{name}");
        }
    }

    #[test]
    fn no_request_is_stuck() {
        assert!(matches!(
            plan(&Journal::default(), &def()),
            Next::Stuck { .. }
        ));
    }
}
