//! Every workflow in sequence on PostgreSQL. The failure sweeps of each workflow
//! (a permanent failure at each step, transient failures at each step, every step run
//! twice) live at the end of its own file in `workflows/src/` and run from its
//! definition (`workflows/src/sweep.rs`).

use ovc_store::Backend;
use ovc_tests::{Harness, HarnessOptions};
use ovc_types::command::{Command, RestoreTarget};
use ovc_types::command::{CreateParams, DeleteParams, DeleteSnapshotParams, RestoreParams};
use ovc_types::spec::{ControlPlanePatch, ScalePatch, VClusterSpec};
use ovc_types::state::{OperationState, VClusterState};
use ovc_types::{SnapshotId, SnapshotState};
use ovc_workflows::resume::ResumeParams;
use ovc_workflows::scale::ScaleParams;
use ovc_workflows::snapshot::SnapshotParams;
use ovc_workflows::suspend::SuspendParams;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn full_lifecycle_on_postgres() {
    let h = Harness::start(Backend::Postgres, HarnessOptions::default()).await;
    let steps = [
        Command::new(CreateParams {
            spec: VClusterSpec::default(),
        }),
        Command::new(SuspendParams {
            snapshot: true,
            evict_workloads: true,
        }),
        Command::new(ResumeParams {
            reconcile_workloads: true,
        }),
        Command::new(SnapshotParams { description: None }),
    ];
    let mut last = None;
    for c in steps {
        let op = h.run("vc", c).await;
        assert_eq!(op.state, OperationState::Succeeded, "{op:#?}");
        last = Some(op);
    }
    let snap = SnapshotId(last.expect("op").id.as_uuid());
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
    assert_eq!(op.state, OperationState::Succeeded, "{op:#?}");
    assert_eq!(
        h.vcluster("vc")
            .await
            .expect("vc")
            .spec
            .control_plane
            .replicas,
        3
    );
    for target in [
        RestoreTarget::NewName("copy".parse().expect("n")),
        RestoreTarget::Existing("vc".parse().expect("n")),
    ] {
        let vc = match &target {
            RestoreTarget::NewName(n) | RestoreTarget::Existing(n) => n.to_string(),
        };
        let op = h
            .run(
                &vc,
                Command::new(RestoreParams {
                    snapshot_id: snap,
                    target,
                }),
            )
            .await;
        assert_eq!(op.state, OperationState::Succeeded, "{op:#?}");
    }
    for vc in ["copy", "vc"] {
        let op = h.run(vc, Command::new(DeleteParams {})).await;
        assert_eq!(op.state, OperationState::Succeeded, "{op:#?}");
        assert_eq!(
            h.vcluster(vc).await.map(|v| v.state),
            Some(VClusterState::Deleted)
        );
    }
    // Snapshots outlive their vcluster; deleting one of a DELETED vcluster works.
    let op = h
        .run(
            "vc",
            Command::new(DeleteSnapshotParams { snapshot_id: snap }),
        )
        .await;
    assert_eq!(op.state, OperationState::Succeeded, "{op:#?}");
    let deleted = h.store.get_snapshot(snap).await.expect("get").expect("row");
    assert_eq!(deleted.state, SnapshotState::Deleted);
    let state = h.sim.state().await.expect("state");
    assert!(state.namespaces.is_empty(), "{state:#?}");
    assert!(state.releases.is_empty(), "{state:#?}");
    // The projections equal a rebuild from the events.
    let live = h.store.dump_projections().await.expect("dump");
    h.store.rebuild_projections().await.expect("rebuild");
    assert_eq!(h.store.dump_projections().await.expect("dump"), live);
    h.stop().await;
}
