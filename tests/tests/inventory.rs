//! The snapshot inventory, end to end through `ovc dev` on a real directory: a READY
//! snapshot whose artifact file vanishes becomes MISSING (API and `/metrics`), a restore
//! from it is refused before anything runs, and it is READY again once the file is back.
//! `ovc snapshot import` registers the artifacts of a storage in a database that lost
//! (or never had) their index entries, once, and a restore from an imported snapshot
//! works; a manifest that cannot be imported is reported with exit code 1.

use ovc_client::{
    Accepted, Client, Error, ListOperations, RestoreSnapshot, RestoreTarget, SnapshotVCluster,
};
use ovc_tests::dev::DevServer;
use ovc_tests::ovc_bin;
use ovc_types::resource::{Operation, Snapshot};
use ovc_types::state::{OperationState, SnapshotState};
use serde_json::{Value, json};
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

async fn done(c: &Client, accepted: Result<Accepted, Error>) -> Operation {
    let accepted = accepted.expect("accepted");
    assert!(!accepted.duplicate);
    let op = c
        .wait(accepted.operation.id, Some(Duration::from_secs(30)))
        .await
        .expect("wait");
    assert_eq!(op.state, OperationState::Succeeded, "{op:?}");
    op
}

fn create(name: &str) -> ovc_client::CreateVCluster {
    ovc_client::CreateVCluster {
        name: name.into(),
        ..Default::default()
    }
}

fn restore(target: RestoreTarget) -> RestoreSnapshot {
    RestoreSnapshot {
        target,
        request_id: None,
    }
}

fn start(data: &Path, artifacts: &Path) -> DevServer {
    DevServer::start(
        data,
        &[
            "--artifacts",
            artifacts.to_str().unwrap(),
            "--inventory-every",
            "500ms",
        ],
        &[("OVC_SIM_READY_MS", "50")],
    )
}

/// Polls the snapshot until it is in `state` (the inventory runs every 500 ms).
async fn wait_state(c: &Client, id: &str, state: SnapshotState) -> Snapshot {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let snap = c.get_snapshot(id).await.expect("get snapshot");
        if snap.state == state {
            return snap;
        }
        assert!(
            Instant::now() < deadline,
            "snapshot {id} did not become {state:?}: {snap:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn metric(dev: &DevServer, line_start: &str) -> String {
    let (s, body) = dev.call("GET", "/metrics", None);
    assert_eq!(s, 200);
    let text = body.as_str().expect("metrics are text").to_string();
    text.lines()
        .find(|l| l.starts_with(line_start))
        .unwrap_or_else(|| panic!("no {line_start} in {text}"))
        .to_string()
}

fn import(db: &str, artifacts: &Path, extra: &[&str]) -> (i32, Value) {
    let out = Command::new(ovc_bin())
        .args(["snapshot", "import", "--database-url", db, "--artifacts"])
        .arg(artifacts)
        .args(["-o", "json"])
        .args(extra)
        .env_remove("OVC_SERVER")
        .output()
        .expect("run ovc snapshot import");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let report = serde_json::from_str(&stdout).unwrap_or_else(|e| {
        panic!(
            "not a JSON report ({e}): {stdout}\n{}",
            String::from_utf8_lossy(&out.stderr)
        )
    });
    (out.status.code().unwrap_or(-1), report)
}

#[tokio::test]
async fn a_vanished_artifact_is_missing_until_it_is_back_and_is_never_restored() {
    let dir = tempfile::tempdir().unwrap();
    let artifacts = dir.path().join("artifacts");
    let dev = start(&dir.path().join("data"), &artifacts);
    let c = dev.client();
    done(&c, c.create_vcluster(&create("team-a")).await).await;
    let op = done(
        &c,
        c.snapshot_vcluster("team-a", &SnapshotVCluster::default())
            .await,
    )
    .await;
    let id = op.result["id"].as_str().unwrap().to_string();
    wait_state(&c, &id, SnapshotState::Ready).await;

    let data = artifacts.join(format!("snapshots/default/team-a/{id}/backing-store.bin"));
    let aside = dir.path().join("aside.bin");
    std::fs::rename(&data, &aside).expect("move the data file away");
    let snap = wait_state(&c, &id, SnapshotState::Missing).await;
    let error = snap.error.as_ref().expect("the snapshot's error");
    assert_eq!(error.reason(), Some("SNAPSHOT_MISSING"), "{snap:?}");
    assert!(error.message.contains("backing-store.bin"), "{snap:?}");
    assert_eq!(
        metric(&dev, "ovc_snapshots{state=\"MISSING\"}"),
        "ovc_snapshots{state=\"MISSING\"} 1"
    );
    let refused = c
        .restore_snapshot(&id, &restore(RestoreTarget::Existing("team-a".into())))
        .await
        .expect_err("a restore from a missing artifact");
    assert!(
        matches!(
            refused,
            Error::Api {
                http_status: 400,
                ..
            }
        ),
        "{refused:?}"
    );
    assert_eq!(refused.code(), Some(ovc_client::Code::FailedPrecondition));
    assert_eq!(refused.reason(), Some("SNAPSHOT_MISSING"));
    let ops = c
        .list_operations(&ListOperations {
            kind: Some("RESTORE".into()),
            ..Default::default()
        })
        .await
        .expect("list");
    assert!(ops.operations.is_empty(), "nothing was accepted: {ops:?}");

    // Put back (from a backup, say): READY again, and restorable.
    std::fs::rename(&aside, &data).expect("put the data file back");
    let snap = wait_state(&c, &id, SnapshotState::Ready).await;
    assert_eq!(snap.error, None, "{snap:?}");
    done(
        &c,
        c.restore_snapshot(&id, &restore(RestoreTarget::Existing("team-a".into())))
            .await,
    )
    .await;

    // A MISSING snapshot can be deleted: what is left goes, and so does the entry.
    std::fs::remove_file(&data).unwrap();
    wait_state(&c, &id, SnapshotState::Missing).await;
    done(&c, c.delete_snapshot(&id, None).await).await;
    wait_state(&c, &id, SnapshotState::Deleted).await;
    assert!(
        !artifacts
            .join(format!("snapshots/default/team-a/{id}"))
            .join("manifest.json")
            .exists()
    );
}

#[tokio::test]
async fn import_registers_lost_snapshots_once_and_they_restore() {
    let dir = tempfile::tempdir().unwrap();
    let artifacts = dir.path().join("artifacts");
    let (id, sha256, size) = {
        let dev = start(&dir.path().join("old"), &artifacts);
        let c = dev.client();
        done(&c, c.create_vcluster(&create("team-a")).await).await;
        let snapshot = SnapshotVCluster {
            description: Some("before the migration".into()),
            ..Default::default()
        };
        let op = done(&c, c.snapshot_vcluster("team-a", &snapshot).await).await;
        let id = op.result["id"].as_str().unwrap().to_string();
        let snap = wait_state(&c, &id, SnapshotState::Ready).await;
        (id, snap.sha256, snap.size_bytes)
    };
    // A new database beside the old storage: the index entry is "lost".
    let new_data = dir.path().join("new");
    std::fs::create_dir_all(&new_data).unwrap();
    let db = format!("sqlite://{}", new_data.join("ovc.db").display());
    let migrated = Command::new(ovc_bin())
        .args(["migrate", "--database-url", &db])
        .output()
        .unwrap();
    assert!(migrated.status.success(), "{migrated:?}");

    let (code, dry) = import(&db, &artifacts, &["--dry-run"]);
    assert_eq!((code, &dry["imported"]), (0, &json!(1)), "{dry}");
    assert_eq!(dry["artifacts"][0]["outcome"], "would_import", "{dry}");
    let (code, report) = import(&db, &artifacts, &[]);
    assert_eq!(code, 0, "{report}");
    assert_eq!(
        (&report["imported"], &report["known"], &report["refused"]),
        (&json!(1), &json!(0), &json!(0)),
        "{report}"
    );
    assert_eq!(report["artifacts"][0]["snapshot_id"], id.as_str());
    let (code, again) = import(&db, &artifacts, &[]);
    assert_eq!(code, 0, "{again}");
    assert_eq!(
        (&again["imported"], &again["known"]),
        (&json!(0), &json!(1)),
        "a second import changes nothing: {again}"
    );
    let (_, other) = import(&db, &artifacts, &["--project", "elsewhere"]);
    assert_eq!(other["artifacts"], json!([]), "{other}");

    let dev = start(&new_data, &artifacts);
    let c = dev.client();
    let snap = wait_state(&c, &id, SnapshotState::Ready).await;
    assert_eq!(snap.sha256, sha256, "{snap:?}");
    assert_eq!(snap.size_bytes, size, "{snap:?}");
    assert_eq!(snap.vcluster.as_str(), "team-a");
    assert_eq!(snap.description.as_deref(), Some("before the migration"));
    let op = done(
        &c,
        c.restore_snapshot(&id, &restore(RestoreTarget::NewName("team-b".into())))
            .await,
    )
    .await;
    assert_eq!(op.result["name"], "team-b", "{op:?}");
    assert_eq!(op.result["state"], "RUNNING", "{op:?}");
    drop(dev);

    // A manifest that does not parse, and one copied under another vcluster's prefix:
    // both refused, named, and the exit code says so.
    let bad = artifacts.join("snapshots/default/team-c/not-a-snapshot");
    std::fs::create_dir_all(&bad).unwrap();
    std::fs::write(bad.join("manifest.json"), b"{ not json").unwrap();
    let copy = artifacts.join(format!("snapshots/default/team-d/{id}"));
    std::fs::create_dir_all(&copy).unwrap();
    for f in ["manifest.json", "backing-store.bin"] {
        std::fs::copy(
            artifacts.join(format!("snapshots/default/team-a/{id}/{f}")),
            copy.join(f),
        )
        .unwrap();
    }
    let (code, report) = import(&db, &artifacts, &[]);
    assert_eq!(code, 1, "{report}");
    assert_eq!(report["refused"], 2, "{report}");
    let text = report.to_string();
    assert!(text.contains("team-c/not-a-snapshot"), "{report}");
    assert!(text.contains("belongs under"), "{report}");
}
