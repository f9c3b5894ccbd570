//! Engine behaviour on the simulated host: cancellation, time limits, attempt limits,
//! stuck compensation, durable waits, and refusals at accept time.

use ovc_engine::accept::{cancel, retry};
use ovc_store::{Backend, RunStatus};
use ovc_tests::{Harness, HarnessOptions};
use ovc_types::Code;
use ovc_types::command::Command;
use ovc_types::command::{CreateParams, DeleteParams};
use ovc_types::spec::{ControlPlanePatch, ScalePatch, VClusterSpec};
use ovc_types::state::{OperationState, StepState, VClusterState};
use ovc_workflows::resume::ResumeParams;
use ovc_workflows::scale::ScaleParams;
use ovc_workflows::snapshot::SnapshotParams;
use ovc_workflows::suspend::SuspendParams;
use std::time::Duration;

async fn harness(rules: &str, ready_delay_ms: u64, max_step_timeout: Option<Duration>) -> Harness {
    let mut options = HarnessOptions::with_fault_rules(rules);
    options.sim.ready_delay = Duration::from_millis(ready_delay_ms);
    options.max_step_timeout = max_step_timeout;
    Harness::start(Backend::Sqlite, options).await
}

fn create() -> Command {
    Command::new(CreateParams {
        spec: VClusterSpec::default(),
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancel_compensates_a_running_operation() {
    let h = harness("", 3000, None).await;
    let id = h.submit("vc", create()).await.expect("submit");
    // Wait until it is waiting for readiness (namespace and release are in place).
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let op = h.store.get_operation(id).await.expect("get").expect("op");
        if op
            .steps
            .iter()
            .any(|s| s.name == "wait_ready" && s.state == StepState::Running)
        {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "never reached wait_ready: {op:#?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    cancel(h.store.as_ref(), id, Some("test".into()))
        .await
        .expect("cancel");
    let op = h.wait(id).await;
    assert_eq!(op.state, OperationState::Cancelled, "{op:#?}");
    assert_eq!(op.error.as_ref().map(|e| e.code), Some(Code::Cancelled));
    assert_eq!(
        h.vcluster("vc").await.map(|v| v.state),
        Some(VClusterState::Deleted)
    );
    let state = h.sim.state().await.expect("state");
    assert!(
        state.namespaces.is_empty() && state.releases.is_empty(),
        "{state:#?}"
    );
    // A finished operation cannot be cancelled.
    let err = cancel(h.store.as_ref(), id, None).await.expect_err("done");
    assert_eq!(err.code, Code::FailedPrecondition);
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hanging_step_times_out_then_compensates() {
    let h = harness(
        "suspend/scale_to_zero:hang",
        0,
        Some(Duration::from_millis(100)),
    )
    .await;
    assert_eq!(h.run("vc", create()).await.state, OperationState::Succeeded);
    let op = h
        .run(
            "vc",
            Command::new(SuspendParams {
                snapshot: false,
                evict_workloads: false,
            }),
        )
        .await;
    assert_eq!(op.state, OperationState::Failed, "{op:#?}");
    let step = op
        .steps
        .iter()
        .find(|s| s.name == "scale_to_zero")
        .expect("step");
    assert_eq!(step.attempts, 5, "the default attempt limit");
    assert!(
        step.error
            .as_ref()
            .is_some_and(|e| e.message.contains("timed out")),
        "{step:#?}"
    );
    assert_eq!(
        h.vcluster("vc").await.map(|v| v.state),
        Some(VClusterState::Running)
    );
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn transient_failures_beyond_the_limit_compensate() {
    let h = harness("scale/upgrade_release:transient:100", 0, None).await;
    assert_eq!(h.run("vc", create()).await.state, OperationState::Succeeded);
    let before = h.vcluster("vc").await.expect("vc").spec;
    let op = h
        .run(
            "vc",
            Command::new(ScaleParams {
                patch: ScalePatch {
                    control_plane: Some(ControlPlanePatch {
                        replicas: Some(3),
                        ..ControlPlanePatch::default()
                    }),
                    quota: None,
                },
            }),
        )
        .await;
    assert_eq!(op.state, OperationState::Failed, "{op:#?}");
    assert_eq!(op.steps[0].attempts, 5);
    let vc = h.vcluster("vc").await.expect("vc");
    assert_eq!(vc.state, VClusterState::Running);
    assert_eq!(vc.spec, before);
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_permanent_undo_failure_leaves_the_operation_stuck_and_the_vcluster_failed() {
    let h = harness(
        "suspend/wait_pods_gone:permanent;suspend/undo:scale_to_zero:permanent",
        0,
        None,
    )
    .await;
    assert_eq!(h.run("vc", create()).await.state, OperationState::Succeeded);
    let op = h
        .run(
            "vc",
            Command::new(SuspendParams {
                snapshot: false,
                evict_workloads: false,
            }),
        )
        .await;
    assert_eq!(op.state, OperationState::Stuck, "{op:#?}");
    let steps: Vec<(&str, StepState)> = op
        .steps
        .iter()
        .map(|s| (s.name.as_str(), s.state))
        .collect();
    assert!(
        steps.contains(&("scale_to_zero", StepState::Failed)),
        "{steps:?}"
    );
    assert!(
        steps.contains(&("wait_pods_gone", StepState::Failed)),
        "{steps:?}"
    );
    assert_eq!(
        h.vcluster("vc").await.map(|v| v.state),
        Some(VClusterState::Failed)
    );
    // FAILED allows delete, which cleans up.
    let del = h.run("vc", Command::new(DeleteParams {})).await;
    assert_eq!(del.state, OperationState::Succeeded, "{del:#?}");
    assert_eq!(
        h.vcluster("vc").await.map(|v| v.state),
        Some(VClusterState::Deleted)
    );
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn long_waits_are_durable_timers_not_held_slots() {
    let h = harness("", 600, None).await;
    let op = h.run("vc", create()).await;
    assert_eq!(op.state, OperationState::Succeeded, "{op:#?}");
    let runs = h.store.runs_of_operation(op.id).await.expect("runs");
    assert_eq!(runs.len(), 1);
    assert_eq!(runs[0].status, RunStatus::Done);
    assert!(
        runs[0].attempts > 1,
        "waiting for readiness should have released and re-claimed the run: {runs:?}"
    );
    let history = h
        .store
        .lease_history(Some(op.vcluster_uid))
        .await
        .expect("history");
    assert!(
        history.iter().all(|l| l.released_at.is_some()),
        "{history:?}"
    );
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refused_commands_write_nothing() {
    let h = harness("", 0, None).await;
    assert_eq!(h.run("vc", create()).await.state, OperationState::Succeeded);
    let suspend = Command::new(SuspendParams {
        snapshot: false,
        evict_workloads: false,
    });
    assert_eq!(
        h.run("vc", suspend.clone()).await.state,
        OperationState::Succeeded
    );
    let head = h.store.head_position().await.expect("head");
    let cases = [
        ("vc", suspend.clone(), Code::FailedPrecondition),
        (
            "vc",
            Command::new(SnapshotParams { description: None }),
            Code::FailedPrecondition,
        ),
        ("vc", create(), Code::AlreadyExists),
        (
            "nope",
            Command::new(ResumeParams {
                reconcile_workloads: false,
            }),
            Code::NotFound,
        ),
        (
            "bad",
            Command::new(CreateParams {
                spec: serde_json::from_value(serde_json::json!({"control_plane": {"replicas": 2}}))
                    .expect("spec"),
            }),
            Code::InvalidArgument,
        ),
    ];
    for (vc, command, code) in cases {
        let err = h.submit(vc, command.clone()).await.expect_err("refused");
        assert_eq!(err.code, code, "{vc} {command:?}: {err}");
    }
    assert_eq!(
        h.store.head_position().await.expect("head"),
        head,
        "a refusal wrote"
    );
    // Scaling a running vcluster with a patch that changes nothing is INVALID_ARGUMENT.
    assert_eq!(
        h.run(
            "vc",
            Command::new(ResumeParams {
                reconcile_workloads: false
            })
        )
        .await
        .state,
        OperationState::Succeeded
    );
    let err = h
        .submit(
            "vc",
            Command::new(ScaleParams {
                patch: ScalePatch::default(),
            }),
        )
        .await
        .expect_err("empty patch");
    assert_eq!(err.code, Code::InvalidArgument);
    // Nothing reached the host for the refused vcluster: no namespace is named after it.
    assert!(
        !h.sim
            .state()
            .await
            .expect("s")
            .namespaces
            .iter()
            .any(|n| n.name.starts_with("ovc-bad-") || n.name == "ovc-default-bad")
    );
    h.stop().await;
}

/// A caller's W3C trace context.
const TRACEPARENT: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retry_of_a_failed_operation_runs_again_from_the_start() {
    let mut h = harness("scale/upgrade_release:transient:100", 0, None).await;
    assert_eq!(h.run("vc", create()).await.state, OperationState::Succeeded);
    let scale = Command::new(ScaleParams {
        patch: ScalePatch {
            control_plane: Some(ControlPlanePatch {
                replicas: Some(3),
                ..ControlPlanePatch::default()
            }),
            quota: None,
        },
    });
    let failed = h.run("vc", scale).await;
    assert_eq!(failed.state, OperationState::Failed);
    // The host is fixed; an operator retries.
    h.restart_worker(HarnessOptions::default()).await;
    let registry = ovc_workflows::registry();
    let ids = ovc_types::time::RandomIds;
    let accepted = retry(
        h.store.as_ref(),
        &registry,
        &ids,
        failed.id,
        Some("r1".into()),
        None,
        Some(TRACEPARENT.into()),
    )
    .await
    .expect("retry");
    let again = retry(
        h.store.as_ref(),
        &registry,
        &ids,
        failed.id,
        Some("r1".into()),
        None,
        Some(TRACEPARENT.into()),
    )
    .await
    .expect("same request");
    assert_eq!(again.operation_id, accepted.operation_id);
    assert!(again.duplicate);
    let op = h.wait(accepted.operation_id).await;
    assert_eq!(op.state, OperationState::Succeeded, "{op:#?}");
    assert_eq!(op.retry_of, Some(failed.id));
    assert_eq!(op.steps[0].attempts, 1, "ran from the start: {op:#?}");
    // The retry continues the trace of the call that asked for it.
    let first = h
        .store
        .read_stream(
            &ovc_types::event::StreamName::operation(accepted.operation_id),
            0,
            1,
        )
        .await
        .expect("operation stream");
    assert_eq!(first[0].metadata["traceparent"], TRACEPARENT);
    let vc = h.vcluster("vc").await.expect("vc");
    assert_eq!(vc.spec.control_plane.replicas, 3);
    assert_eq!(vc.state, VClusterState::Running);
    // Succeeded operations are not retried.
    let err = retry(h.store.as_ref(), &registry, &ids, op.id, None, None, None)
        .await
        .expect_err("not retryable");
    assert_eq!(err.code, Code::FailedPrecondition);
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retry_of_a_stuck_operation_resumes_at_the_failed_step() {
    let mut h = harness(
        "suspend/wait_pods_gone:permanent;suspend/undo:scale_to_zero:permanent",
        0,
        None,
    )
    .await;
    assert_eq!(h.run("vc", create()).await.state, OperationState::Succeeded);
    let stuck = h
        .run(
            "vc",
            Command::new(SuspendParams {
                snapshot: false,
                evict_workloads: false,
            }),
        )
        .await;
    assert_eq!(stuck.state, OperationState::Stuck);
    assert_eq!(
        h.vcluster("vc").await.map(|v| v.state),
        Some(VClusterState::Failed)
    );
    h.restart_worker(HarnessOptions::default()).await;
    let accepted = retry(
        h.store.as_ref(),
        &ovc_workflows::registry(),
        &ovc_types::time::RandomIds,
        stuck.id,
        None,
        Some("operator".into()),
        None,
    )
    .await
    .expect("retry");
    let op = h.wait(accepted.operation_id).await;
    assert_eq!(op.state, OperationState::Succeeded, "{op:#?}");
    let scale = op
        .steps
        .iter()
        .find(|s| s.name == "scale_to_zero")
        .expect("step");
    assert_eq!(
        (scale.state, scale.attempts),
        (StepState::Succeeded, 0),
        "scale_to_zero is inherited, not run again"
    );
    let events = h
        .store
        .read_stream(&ovc_types::StreamName::operation(op.id), 0, 1000)
        .await
        .expect("events");
    assert!(events.iter().any(|e| e.event_type == "StepInherited"));
    assert_eq!(
        h.vcluster("vc").await.map(|v| v.state),
        Some(VClusterState::Suspended)
    );
    h.stop().await;
}
