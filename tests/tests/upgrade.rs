//! UPGRADE end to end on the simulated host and a real SQLite file: what accept refuses
//! before anything is written (a skipped minor version, a downgrade, nothing to do, a
//! suspended vcluster), a chart upgrade that lands in the release and the spec with a
//! pre-upgrade snapshot kept, and a failed Kubernetes upgrade whose undo puts back the
//! old chart, the old values and the data from before (the simulated API server rewrote
//! it at its new storage version).
//!
//! The per-step sweeps (fail / repeat / transient at every step) run from the workflow's
//! definition, in `workflows/src/upgrade.rs`.

use ovc_driver::Target;
use ovc_store::Backend;
use ovc_tests::{Harness, HarnessOptions};
use ovc_types::command::Command;
use ovc_types::command::CreateParams;
use ovc_types::error::Code;
use ovc_types::spec::VClusterSpec;
use ovc_types::state::{OperationState, VClusterState};
use ovc_types::{SnapshotId, SnapshotState};
use ovc_workflows::suspend::SuspendParams;
use ovc_workflows::upgrade::UpgradeParams;

fn upgrade(chart: Option<&str>, kubernetes: Option<&str>) -> Command {
    Command::new(UpgradeParams {
        vcluster_version: chart.map(str::to_string),
        kubernetes_version: kubernetes.map(str::to_string),
    })
}

async fn harness(faults: &str) -> Harness {
    Harness::start(Backend::Sqlite, HarnessOptions::with_fault_rules(faults)).await
}

/// Creates `vc` with the default spec; it gets the configured default chart version.
async fn running(h: &Harness, vc: &str) {
    let op = h
        .run(
            vc,
            Command::new(CreateParams {
                spec: VClusterSpec::default(),
            }),
        )
        .await;
    assert_eq!(op.state, OperationState::Succeeded, "{op:#?}");
}

async fn target(h: &Harness, vc: &str) -> Target {
    let v = h.vcluster(vc).await.expect("vcluster");
    Target {
        host: v.spec.host.clone(),
        namespace: v.host_namespace,
        release: vc.to_string(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_create_records_the_default_chart_version_and_an_upgrade_moves_it_one_minor() {
    let h = harness("").await;
    running(&h, "vc").await;
    let vc = h.vcluster("vc").await.expect("vc");
    assert_eq!(
        vc.spec.vcluster_version.as_deref(),
        Some(ovc_driver::DEFAULT_VCLUSTER_VERSION)
    );
    let before = vc.version;

    let op = h.run("vc", upgrade(Some("0.30.0"), None)).await;
    assert_eq!(op.state, OperationState::Succeeded, "{op:#?}");
    assert_eq!(op.kind, ovc_workflows::upgrade::KIND);
    let steps: Vec<&str> = op.steps.iter().map(|s| s.name.as_str()).collect();
    assert_eq!(
        steps,
        ovc_workflows::upgrade::definition().planned_steps(&op.command)
    );
    let vc = h.vcluster("vc").await.expect("vc");
    assert_eq!(vc.state, VClusterState::Running);
    assert_eq!(vc.spec.vcluster_version.as_deref(), Some("0.30.0"));
    assert_eq!(vc.spec.kubernetes_version, "1.31");
    assert!(vc.version > before);
    // The operation's result is the vcluster as the upgrade left it.
    assert_eq!(op.result["spec"]["vcluster_version"], "0.30.0", "{op:#?}");
    let release = h
        .sim
        .release_state(&target(&h, "vc").await)
        .await
        .expect("sim")
        .expect("release");
    assert_eq!(release.values.chart_version.as_deref(), Some("0.30.0"));
    assert_eq!(release.revision, 2);
    // The snapshot taken first stays, READY, for the user to restore or delete.
    let snap = h
        .store
        .get_snapshot(SnapshotId(op.id.as_uuid()))
        .await
        .expect("get snapshot")
        .expect("pre-upgrade snapshot");
    assert_eq!(snap.state, SnapshotState::Ready);
    assert_eq!(snap.metadata["spec"]["vcluster_version"], "0.29.1");

    // And the next minor, with Kubernetes too.
    let op = h.run("vc", upgrade(Some("0.31.0"), Some("1.32"))).await;
    assert_eq!(op.state, OperationState::Succeeded, "{op:#?}");
    let vc = h.vcluster("vc").await.expect("vc");
    assert_eq!(vc.spec.vcluster_version.as_deref(), Some("0.31.0"));
    assert_eq!(vc.spec.kubernetes_version, "1.32");
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn accept_refuses_what_the_spec_already_rules_out_and_writes_nothing() {
    let h = harness("").await;
    running(&h, "vc").await;
    let version = h.vcluster("vc").await.expect("vc").version;
    let cases = [
        (
            upgrade(Some("0.31.0"), None),
            Code::FailedPrecondition,
            "UPGRADE_SKIPS_MINOR",
        ),
        (
            upgrade(None, Some("1.33")),
            Code::FailedPrecondition,
            "UPGRADE_SKIPS_MINOR",
        ),
        (
            upgrade(Some("0.28.0"), None),
            Code::FailedPrecondition,
            "UPGRADE_IS_DOWNGRADE",
        ),
        (
            upgrade(Some("0.29.1"), Some("1.31")),
            Code::FailedPrecondition,
            "UPGRADE_NOTHING_TO_DO",
        ),
        (
            upgrade(None, None),
            Code::InvalidArgument,
            "UPGRADE_NOTHING_REQUESTED",
        ),
        (
            upgrade(Some("latest"), None),
            Code::InvalidArgument,
            "INVALID_VERSION",
        ),
        (
            upgrade(None, Some("1.99")),
            Code::InvalidArgument,
            "INVALID_SPEC",
        ),
    ];
    for (command, code, reason) in cases {
        let err = h.submit("vc", command.clone()).await.expect_err("refused");
        assert_eq!(err.code, code, "{command:?}: {err:?}");
        if reason != "INVALID_SPEC" {
            assert_eq!(err.reason(), Some(reason), "{command:?}: {err:?}");
        }
    }
    let skip = h
        .submit("vc", upgrade(Some("0.31.0"), None))
        .await
        .expect_err("skips");
    assert!(skip.message.contains("next to 0.30"), "{}", skip.message);
    let meta = &skip.details[0].metadata;
    assert_eq!(meta.get("next_allowed").map(String::as_str), Some("0.30"));
    assert_eq!(
        h.vcluster("vc").await.expect("vc").version,
        version,
        "a refusal wrote to the vcluster's stream"
    );

    // Never a paused vcluster: SUSPENDED is refused by the state machine.
    let op = h
        .run(
            "vc",
            Command::new(SuspendParams {
                snapshot: false,
                evict_workloads: false,
            }),
        )
        .await;
    assert_eq!(op.state, OperationState::Succeeded);
    let err = h
        .submit("vc", upgrade(Some("0.30.0"), None))
        .await
        .expect_err("suspended");
    assert_eq!(err.code, Code::FailedPrecondition);
    assert_eq!(err.reason(), Some("INVALID_TRANSITION"));
    assert!(err.message.contains("resume it first"), "{}", err.message);
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_kubernetes_upgrade_puts_back_the_chart_the_values_and_the_data() {
    let h = harness("upgrade/health_check:permanent").await;
    running(&h, "vc").await;
    let t = target(&h, "vc").await;
    let before = h
        .sim
        .release_state(&t)
        .await
        .expect("sim")
        .expect("release");
    let spec_before = h.vcluster("vc").await.expect("vc").spec;

    let op = h.run("vc", upgrade(Some("0.30.0"), Some("1.32"))).await;
    assert_eq!(op.state, OperationState::Failed, "{op:#?}");
    let vc = h.vcluster("vc").await.expect("vc");
    assert_eq!(vc.state, VClusterState::Running);
    assert_eq!(vc.spec, spec_before, "the spec moved on a failed upgrade");
    let after = h
        .sim
        .release_state(&t)
        .await
        .expect("sim")
        .expect("release");
    assert_eq!(
        after.values, before.values,
        "the old chart and values are back"
    );
    assert!(!after.paused, "the control plane was left paused");
    assert_eq!(
        String::from_utf8_lossy(&after.backing_store),
        String::from_utf8_lossy(&before.backing_store),
        "the data rewritten by the new API server was not restored"
    );
    // The pre-upgrade snapshot was the undo's source; it is deleted with the rest.
    let snap = h
        .store
        .get_snapshot(SnapshotId(op.id.as_uuid()))
        .await
        .expect("get snapshot")
        .expect("snapshot row");
    assert_eq!(snap.state, SnapshotState::Deleted);
    h.stop().await;
}
