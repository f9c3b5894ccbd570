//! The whole lifecycle on a real host cluster, through the kube driver: create, suspend
//! with a snapshot, resume, snapshot, scale, restore over the existing vcluster and as a
//! new one, delete. Runs when `KUBECONFIG` and `OVC_E2E_KUBE=1` are set (README, "Run
//! against a real cluster"); otherwise it prints why it skipped. Snapshots need storage
//! both vclusters reach: `OVC_E2E_SNAPSHOT_URL` (`s3://bucket/prefix` or
//! `oci://registry/repo`) and `OVC_E2E_SNAPSHOT_OPTIONS` (vcluster's JSON storage options
//! with credentials, default `{}`).

use ovc_driver::conformance::values;
use ovc_driver::kube::{KubeHost, RestoreProgress, SnapshotPhase};
use ovc_driver::{CallCtx, HostDriver, Owner, Target};
use ovc_types::OperationId;
use std::time::{Duration, Instant};

fn ctx(step: &str) -> CallCtx {
    CallCtx::for_step(OperationId(uuid::Uuid::now_v7()), "e2e", step, 1)
}

/// The vcluster every namespace of these checks belongs to.
fn owner() -> Owner {
    Owner {
        project: "conformance".parse().expect("project"),
        vcluster: "demo".parse().expect("name"),
        uid: ovc_types::VClusterId(uuid::Uuid::from_u128(0x0c0f)),
    }
}

async fn wait(what: &str, limit: Duration, mut f: impl AsyncFnMut() -> bool) {
    let start = Instant::now();
    while start.elapsed() < limit {
        if f().await {
            eprintln!("e2e: {what} after {:?}", start.elapsed());
            return;
        }
        tokio::time::sleep(Duration::from_secs(3)).await;
    }
    panic!("e2e: {what}: not within {limit:?}");
}

async fn ready(host: &KubeHost, t: &Target) {
    wait("ready", Duration::from_secs(600), async || {
        host.readiness(t).await.expect("readiness").is_ready()
    })
    .await;
}

async fn snapshot(host: &KubeHost, t: &Target, url: &str, options: &serde_json::Value) {
    host.request_snapshot(t, url, options)
        .await
        .expect("request snapshot");
    wait(
        "snapshot completed",
        Duration::from_secs(600),
        async || match host.snapshot_phase(t, url).await.expect("phase") {
            Some(SnapshotPhase::Completed) => true,
            Some(SnapshotPhase::Failed(m)) => panic!("snapshot failed: {m}"),
            _ => false,
        },
    )
    .await;
}

async fn restore(host: &KubeHost, t: &Target, url: &str, options: &serde_json::Value, new: bool) {
    wait("restore done", Duration::from_secs(600), async || {
        host.restore(t, url, options, new).await.expect("restore") == RestoreProgress::Done
    })
    .await;
    ready(host, t).await;
}

async fn delete(host: &KubeHost, t: &Target) {
    host.uninstall_release(&ctx("uninstall_release"), t)
        .await
        .expect("uninstall");
    wait("namespace gone", Duration::from_secs(300), async || {
        host.delete_namespace(&ctx("delete_namespace"), t)
            .await
            .expect("delete ns")
    })
    .await;
}

#[tokio::test]
async fn lifecycle_on_a_real_cluster() {
    if std::env::var("OVC_E2E_KUBE").as_deref() != Ok("1")
        || std::env::var_os("KUBECONFIG").is_none()
    {
        eprintln!(
            "skipped: set KUBECONFIG and OVC_E2E_KUBE=1 to run the lifecycle on a real cluster"
        );
        return;
    }
    let base = std::env::var("OVC_E2E_SNAPSHOT_URL").expect(
        "OVC_E2E_SNAPSHOT_URL (s3://bucket/prefix or oci://registry/repo) is required with OVC_E2E_KUBE=1",
    );
    let options: serde_json::Value = serde_json::from_str(
        &std::env::var("OVC_E2E_SNAPSHOT_OPTIONS").unwrap_or_else(|_| "{}".into()),
    )
    .expect("OVC_E2E_SNAPSHOT_OPTIONS is JSON");
    let host = KubeHost::from_env().await.expect("KUBECONFIG");
    host.check()
        .await
        .expect("the cluster answers and helm works");
    let run = uuid::Uuid::now_v7().simple().to_string()[20..].to_owned();
    let t = Target {
        host: "default".into(),
        namespace: format!("ovc-e2e-{run}"),
        release: "e2e".into(),
    };
    let c = ctx("e2e");

    // Create.
    host.ensure_namespace(&c, &t, &owner())
        .await
        .expect("namespace");
    host.install_release(&c, &t, &values(1))
        .await
        .expect("install");
    ready(&host, &t).await;
    assert!(host.kubeconfig(&c, &t).await.expect("kubeconfig").is_some());

    // Suspend with a snapshot.
    let first = format!("{base}/{run}/suspend.tar.gz");
    snapshot(&host, &t, &first, &options).await;
    host.evict_workload_pods(&c, &t).await.expect("evict");
    assert_eq!(host.pause_control_plane(&c, &t).await.expect("pause"), 1);
    wait("pods gone", Duration::from_secs(180), async || {
        host.control_plane(&c, &t)
            .await
            .expect("cp")
            .is_some_and(|cp| cp.pods == 0)
    })
    .await;

    // Resume.
    assert_eq!(host.resume_control_plane(&c, &t).await.expect("resume"), 1);
    ready(&host, &t).await;

    // Snapshot.
    let second = format!("{base}/{run}/snapshot.tar.gz");
    snapshot(&host, &t, &second, &options).await;

    // Scale (the quota: HA needs more than the default sqlite backing store).
    let mut bigger = values(1);
    bigger.quota.pods += 10;
    assert_eq!(
        host.install_release(&c, &t, &bigger).await.expect("scale"),
        2
    );
    ready(&host, &t).await;

    // Restore over the existing vcluster, then as a new one.
    restore(&host, &t, &second, &options, false).await;
    let t2 = Target {
        host: "default".into(),
        namespace: format!("ovc-e2e-{run}-new"),
        release: "e2e-new".into(),
    };
    host.ensure_namespace(&c, &t2, &owner())
        .await
        .expect("namespace 2");
    host.block_new_control_plane(&t2).await.expect("quota");
    host.install_release(&c, &t2, &values(1))
        .await
        .expect("install 2");
    restore(&host, &t2, &second, &options, true).await;

    // Delete both.
    delete(&host, &t).await;
    delete(&host, &t2).await;
}
