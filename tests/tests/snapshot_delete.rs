//! DELETE_SNAPSHOT end to end, on SQLite and PostgreSQL, through `accept` and a worker
//! on the simulated host: the artifact goes, the snapshot ends DELETED, the vcluster is
//! left alone (also when it is DELETED); the refusals at accept; a restore and a delete
//! of one snapshot never both get in; failures put the snapshot back to READY (intact)
//! or FAILED (damaged); and a rebuild of the projections equals the live tables.

use ovc_snapshots::{BACKING_STORE_FILE, MANIFEST_FILE, artifact_prefix};
use ovc_store::Backend;
use ovc_tests::{Harness, HarnessOptions};
use ovc_types::command::{Command, RestoreTarget};
use ovc_types::command::{CreateParams, DeleteParams, DeleteSnapshotParams, RestoreParams};
use ovc_types::error::Code;
use ovc_types::resource::Snapshot;
use ovc_types::spec::VClusterSpec;
use ovc_types::state::{OperationKind, OperationState, VClusterState};
use ovc_types::{SnapshotId, SnapshotState};
use ovc_workflows::snapshot::SnapshotParams;

const BACKENDS: [Backend; 2] = [Backend::Sqlite, Backend::Postgres];

async fn harness(backend: Backend, rules: &str) -> Harness {
    Harness::start(backend, HarnessOptions::with_fault_rules(rules)).await
}

/// Creates vcluster `vc` and takes a snapshot of it.
async fn vcluster_with_snapshot(h: &Harness, vc: &str) -> SnapshotId {
    let op = h
        .run(
            vc,
            Command::new(CreateParams {
                spec: VClusterSpec::default(),
            }),
        )
        .await;
    assert_eq!(op.state, OperationState::Succeeded, "create: {op:#?}");
    let op = h
        .run(vc, Command::new(SnapshotParams { description: None }))
        .await;
    assert_eq!(op.state, OperationState::Succeeded, "snapshot: {op:#?}");
    SnapshotId(op.id.as_uuid())
}

async fn snapshot(h: &Harness, id: SnapshotId) -> Snapshot {
    h.store
        .get_snapshot(id)
        .await
        .expect("get snapshot")
        .expect("snapshot row")
}

fn delete(id: SnapshotId) -> Command {
    Command::new(DeleteSnapshotParams { snapshot_id: id })
}

fn restore_into(id: SnapshotId, name: &str) -> Command {
    Command::new(RestoreParams {
        snapshot_id: id,
        target: RestoreTarget::NewName(name.parse().expect("name")),
    })
}

/// The artifact's files that are still in the snapshot storage.
async fn files_left(h: &Harness, vc: &str, id: SnapshotId) -> Vec<&'static str> {
    let prefix = artifact_prefix("default", vc, &id.to_string());
    let mut left = Vec::new();
    for file in [MANIFEST_FILE, BACKING_STORE_FILE] {
        if h.artifacts
            .get(&format!("{prefix}{file}"))
            .await
            .expect("get")
            .is_some()
        {
            left.push(file);
        }
    }
    left
}

async fn assert_rebuild_equals_live(h: &Harness) {
    let live = h.store.dump_projections().await.expect("dump");
    h.store.rebuild_projections().await.expect("rebuild");
    assert_eq!(h.store.dump_projections().await.expect("dump"), live);
}

fn refused(r: Result<impl std::fmt::Debug, ovc_types::Status>, code: Code, reason: &str) {
    match r {
        Err(s) => {
            assert_eq!(s.code, code, "{s:?}");
            assert_eq!(s.reason(), Some(reason), "{s:?}");
        }
        Ok(v) => panic!("expected {code:?} ({reason}), got {v:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deleting_a_snapshot_removes_its_artifact_and_leaves_the_vcluster_alone() {
    for backend in BACKENDS {
        let h = harness(backend, "").await;
        let id = vcluster_with_snapshot(&h, "vc").await;
        assert_eq!(files_left(&h, "vc", id).await.len(), 2);
        let before = h.vcluster("vc").await.expect("vc");

        let op = h.run("vc", delete(id)).await;
        assert_eq!(op.state, OperationState::Succeeded, "{backend:?}: {op:#?}");
        assert_eq!(op.kind, OperationKind::DELETE_SNAPSHOT);
        assert_eq!(op.vcluster.as_str(), "vc");
        assert_eq!(op.vcluster_uid, before.uid);
        assert_eq!(op.result["id"], serde_json::json!(id));
        assert!(files_left(&h, "vc", id).await.is_empty(), "{backend:?}");
        let snap = snapshot(&h, id).await;
        assert_eq!(snap.state, SnapshotState::Deleted, "{backend:?}");
        assert_eq!(snap.deleted_by, Some(op.id));
        // The vcluster's stream was not touched: same state, same version.
        let after = h.vcluster("vc").await.expect("vc");
        assert_eq!(after.state, VClusterState::Running, "{backend:?}");
        assert_eq!(after.version, before.version, "{backend:?}");
        assert_eq!(after.active_operation, None);

        // Nothing can be restored from it any more.
        refused(
            h.submit("copy", restore_into(id, "copy")).await,
            Code::FailedPrecondition,
            "SNAPSHOT_NOT_READY",
        );
        assert_rebuild_equals_live(&h).await;
        h.stop().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_snapshot_of_a_deleted_vcluster_can_be_deleted() {
    for backend in BACKENDS {
        let h = harness(backend, "").await;
        let id = vcluster_with_snapshot(&h, "vc").await;
        let op = h.run("vc", Command::new(DeleteParams {})).await;
        assert_eq!(op.state, OperationState::Succeeded, "{op:#?}");
        let gone = h.vcluster("vc").await.expect("vc");
        assert_eq!(gone.state, VClusterState::Deleted);
        assert_eq!(snapshot(&h, id).await.state, SnapshotState::Ready);

        // The request names any vcluster: the snapshot's own is used.
        let op = h.run("whatever", delete(id)).await;
        assert_eq!(op.state, OperationState::Succeeded, "{backend:?}: {op:#?}");
        assert_eq!(op.vcluster.as_str(), "vc");
        assert!(files_left(&h, "vc", id).await.is_empty());
        assert_eq!(snapshot(&h, id).await.state, SnapshotState::Deleted);
        let still = h.vcluster("vc").await.expect("vc");
        assert_eq!(
            (still.state, still.version),
            (VClusterState::Deleted, gone.version)
        );
        // The name is free and a new vcluster of that name is untouched by it.
        assert_rebuild_equals_live(&h).await;
        h.stop().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refusals_at_accept_and_idempotent_repeats() {
    for backend in BACKENDS {
        // Restores hang at their first step, so they stay unfinished.
        let h = harness(backend, "restore/verify_snapshot:hang").await;
        let id = vcluster_with_snapshot(&h, "vc").await;

        refused(
            h.submit("vc", delete(SnapshotId(uuid::Uuid::from_u128(42))))
                .await,
            Code::NotFound,
            "SNAPSHOT_NOT_FOUND",
        );

        // In use by an accepted, unfinished restore.
        let restore = h
            .submit("copy", restore_into(id, "copy"))
            .await
            .expect("restore");
        let r = h.submit("vc", delete(id)).await;
        refused(r.clone(), Code::FailedPrecondition, "SNAPSHOT_IN_USE");
        let msg = r.expect_err("refused").message;
        assert!(msg.contains(&restore.to_string()), "{msg}");
        assert_eq!(snapshot(&h, id).await.state, SnapshotState::Ready);

        // A second snapshot: delete it, repeat the request, delete it again.
        let op = h
            .run("vc", Command::new(SnapshotParams { description: None }))
            .await;
        let id2 = SnapshotId(op.id.as_uuid());
        let first = h
            .submit_with("vc", delete(id2), Some("del-1"))
            .await
            .expect("accepted");
        assert!(!first.duplicate);
        let op = h.wait(first.operation_id).await;
        assert_eq!(op.state, OperationState::Succeeded, "{op:#?}");
        let again = h
            .submit_with("vc", delete(id2), Some("del-1"))
            .await
            .expect("the same operation");
        assert_eq!(again.operation_id, first.operation_id);
        assert!(again.duplicate);
        refused(
            h.submit_with("vc", delete(id2), Some("del-2")).await,
            Code::FailedPrecondition,
            "SNAPSHOT_DELETED",
        );
        refused(
            h.submit_with("vc", delete(id), Some("del-1")).await,
            Code::InvalidArgument,
            "REQUEST_ID_REUSED",
        );
        drop(h);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pending_delete_refuses_restores_and_a_second_delete() {
    for backend in BACKENDS {
        let h = harness(backend, "delete_snapshot/delete_artifacts:hang").await;
        let id = vcluster_with_snapshot(&h, "vc").await;
        let del = h.submit("vc", delete(id)).await.expect("accepted");
        assert_eq!(snapshot(&h, id).await.state, SnapshotState::Deleting);
        refused(
            h.submit("copy", restore_into(id, "copy")).await,
            Code::FailedPrecondition,
            "SNAPSHOT_NOT_READY",
        );
        let r = h.submit("vc", delete(id)).await;
        refused(r.clone(), Code::FailedPrecondition, "SNAPSHOT_DELETING");
        assert!(r.expect_err("refused").message.contains(&del.to_string()));
        // The vcluster's state is untouched (its next operation would be accepted and
        // wait behind the delete in the vcluster's run queue).
        assert_eq!(
            h.vcluster("vc").await.map(|v| v.state),
            Some(VClusterState::Running)
        );
        drop(h);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_racing_restore_and_delete_never_both_get_in() {
    for backend in BACKENDS {
        // Restores never finish here, so an accepted restore always still uses it.
        let h = harness(backend, "restore/verify_snapshot:hang").await;
        let op = h
            .run(
                "vc",
                Command::new(CreateParams {
                    spec: VClusterSpec::default(),
                }),
            )
            .await;
        assert_eq!(op.state, OperationState::Succeeded);
        for i in 0..6 {
            let op = h
                .run("vc", Command::new(SnapshotParams { description: None }))
                .await;
            let id = SnapshotId(op.id.as_uuid());
            let target = format!("copy-{i}");
            let (restore, delete) = tokio::join!(
                h.submit(&target, restore_into(id, &target)),
                h.submit("vc", delete(id))
            );
            assert!(
                !(restore.is_ok() && delete.is_ok()),
                "{backend:?} round {i}: both accepted"
            );
            for r in [&restore, &delete] {
                if let Err(s) = r {
                    assert!(
                        matches!(s.code, Code::FailedPrecondition | Code::Aborted),
                        "{s:?}"
                    );
                }
            }
            let state = snapshot(&h, id).await.state;
            if restore.is_ok() {
                assert_eq!(state, SnapshotState::Ready, "round {i}");
            }
        }
        drop(h);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn transient_storage_faults_retry_to_success() {
    for backend in BACKENDS {
        let h = harness(backend, "delete_snapshot/delete_artifacts:transient:3").await;
        let id = vcluster_with_snapshot(&h, "vc").await;
        let op = h.run("vc", delete(id)).await;
        assert_eq!(op.state, OperationState::Succeeded, "{backend:?}: {op:#?}");
        assert_eq!(op.steps[0].attempts, 4);
        assert_eq!(snapshot(&h, id).await.state, SnapshotState::Deleted);
        assert!(files_left(&h, "vc", id).await.is_empty());
        h.stop().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_delete_leaves_an_intact_snapshot_ready_and_a_damaged_one_failed() {
    for backend in BACKENDS {
        let h = harness(backend, "delete_snapshot/delete_artifacts:permanent").await;
        let id = vcluster_with_snapshot(&h, "vc").await;
        let op = h.run("vc", delete(id)).await;
        assert_eq!(op.state, OperationState::Failed, "{backend:?}: {op:#?}");
        let snap = snapshot(&h, id).await;
        assert_eq!(snap.state, SnapshotState::Ready, "{snap:#?}");
        assert_eq!((snap.deleted_by, snap.error), (None, None));
        assert_eq!(files_left(&h, "vc", id).await.len(), 2);
        assert_eq!(
            h.vcluster("vc").await.map(|v| v.state),
            Some(VClusterState::Running)
        );
        // Still restorable: nothing was lost.
        let restored = h.run("copy", restore_into(id, "copy")).await;
        assert_eq!(restored.state, OperationState::Succeeded, "{restored:#?}");

        // The manifest disappears behind our back; the next failed delete says FAILED.
        let prefix = artifact_prefix("default", "vc", &id.to_string());
        h.artifacts
            .delete(&format!("{prefix}{MANIFEST_FILE}"))
            .await
            .expect("delete manifest");
        let op = h.run("vc", delete(id)).await;
        assert_eq!(op.state, OperationState::Failed);
        let snap = snapshot(&h, id).await;
        assert_eq!(snap.state, SnapshotState::Failed, "{snap:#?}");
        assert_eq!(
            snap.error.as_ref().and_then(|e| e.reason()),
            Some("SNAPSHOT_DAMAGED")
        );
        refused(
            h.submit("copy2", restore_into(id, "copy2")).await,
            Code::FailedPrecondition,
            "SNAPSHOT_NOT_READY",
        );

        // A FAILED snapshot can be deleted (the storage works again): retry the failed
        // operation, which is a new delete with retry_of.
        let mut h = h;
        h.restart_worker(HarnessOptions::default()).await;
        let retry = ovc_engine::accept::retry(
            h.store.as_ref(),
            &ovc_workflows::registry(),
            &ovc_types::time::RandomIds,
            op.id,
            None,
            None,
            None,
        )
        .await
        .expect("retry");
        let op2 = h.wait(retry.operation_id).await;
        assert_eq!(op2.state, OperationState::Succeeded, "{op2:#?}");
        assert_eq!(op2.retry_of, Some(op.id));
        assert_eq!(snapshot(&h, id).await.state, SnapshotState::Deleted);
        assert!(files_left(&h, "vc", id).await.is_empty());
        assert_rebuild_equals_live(&h).await;
        h.stop().await;
    }
}
