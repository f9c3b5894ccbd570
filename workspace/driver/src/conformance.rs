//! The behaviours every [`HostDriver`] must have, as one suite that runs against each
//! driver: the simulated host, the kube driver on the fake API server, and the kube
//! driver on a real cluster (`KUBECONFIG` + `OVC_E2E_KUBE=1`). A workflow that is
//! correct against one driver relies only on what this suite checks, so it is correct
//! against all of them.
//!
//! Each check takes a [`ConformanceHost`]: the driver plus what only the harness can do
//! (let the host's controllers catch up, plant an object someone else owns).

use crate::{CallCtx, DriverError, HostDriver, Owner, ReleaseValues, Target};
use async_trait::async_trait;
use ovc_types::OperationId;
use ovc_types::error::Code;
use ovc_types::spec::VClusterSpec;
use std::time::Duration;

/// A driver under test and its harness.
#[async_trait]
pub trait ConformanceHost: Send + Sync {
    /// The driver.
    fn driver(&self) -> &dyn HostDriver;
    /// A target no other check uses (`name` is unique per check).
    fn target(&self, name: &str) -> Target;
    /// Lets the host move on once (pods start, Secrets appear, deletions finish).
    async fn settle(&self);
    /// Creates namespace `t.namespace` as someone other than ovc; false when the host
    /// cannot model that (then the check says so and skips that part).
    async fn create_foreign_namespace(&self, t: &Target) -> bool;
    /// How many times [`settle`](Self::settle) may be called while waiting.
    fn patience(&self) -> u32 {
        50
    }
}

fn ctx(step: &str) -> CallCtx {
    CallCtx::for_step(OperationId(uuid::Uuid::now_v7()), "conformance", step, 1)
}

/// The vcluster every namespace of these checks belongs to.
pub fn owner() -> Owner {
    Owner {
        project: "conformance".parse().expect("project"),
        vcluster: "demo".parse().expect("name"),
        uid: ovc_types::VClusterId(uuid::Uuid::from_u128(0x0c0f)),
    }
}

/// Default values with `replicas`.
pub fn values(replicas: u32) -> ReleaseValues {
    let spec: VClusterSpec = serde_json::from_value(serde_json::json!({})).expect("defaults");
    let mut control_plane = spec.control_plane;
    control_plane.replicas = replicas;
    ReleaseValues {
        kubernetes_version: spec.kubernetes_version,
        control_plane,
        quota: spec.quota,
        labels: [("conformance".to_string(), "yes".to_string())].into(),
        helm_values: serde_json::Map::new(),
        chart_version: None,
    }
}

fn permanent_code(r: &Result<impl std::fmt::Debug, DriverError>) -> Option<Code> {
    match r {
        Err(DriverError::Permanent(s)) => Some(s.code),
        _ => None,
    }
}

async fn until<F, Fut>(host: &dyn ConformanceHost, what: &str, mut f: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    for _ in 0..host.patience() {
        if f().await {
            return;
        }
        host.settle().await;
    }
    panic!("{what}: not reached after {} settles", host.patience());
}

async fn create(host: &dyn ConformanceHost, t: &Target, v: &ReleaseValues) -> u32 {
    let d = host.driver();
    d.ensure_namespace(&ctx("create_namespace"), t, &owner())
        .await
        .expect("ensure_namespace");
    let rev = d
        .install_release(&ctx("install_release"), t, v)
        .await
        .expect("install_release");
    until(host, "control plane ready after install", || async {
        d.control_plane(&ctx("wait_ready"), t)
            .await
            .expect("control_plane")
            .is_some_and(|c| c.is_ready())
    })
    .await;
    rev
}

async fn destroy(host: &dyn ConformanceHost, t: &Target) {
    let d = host.driver();
    d.uninstall_release(&ctx("uninstall_release"), t)
        .await
        .expect("uninstall");
    until(host, "namespace gone", || async {
        d.delete_namespace(&ctx("delete_namespace"), t)
            .await
            .expect("delete_namespace")
    })
    .await;
}

/// Each call repeated is harmless: the second ensure finds its effect in place.
pub async fn each_call_repeated_is_harmless(host: &dyn ConformanceHost) {
    let d = host.driver();
    let t = host.target("repeat");
    let c = ctx("repeat");
    d.ensure_namespace(&c, &t, &owner())
        .await
        .expect("ensure_namespace");
    d.ensure_namespace(&c, &t, &owner())
        .await
        .expect("ensure_namespace again");
    let v = values(1);
    let rev = d.install_release(&c, &t, &v).await.expect("install");
    assert_eq!(
        d.install_release(&c, &t, &v).await,
        Ok(rev),
        "the same values again: no new revision"
    );
    host.settle().await;
    let info = d
        .release(&c, &t)
        .await
        .expect("release")
        .expect("installed");
    assert_eq!(info.revision, rev);
    assert_eq!(info.status, crate::ReleaseStatus::Deployed);
    assert!(
        !info.chart_version.is_empty(),
        "the chart version is reported"
    );
    assert_eq!(
        (
            info.values.control_plane.clone(),
            info.values.quota.clone(),
            info.values.labels.clone()
        ),
        (v.control_plane.clone(), v.quota.clone(), v.labels.clone()),
        "the release reads back the values it was installed with"
    );
    until(host, "ready", || async {
        d.control_plane(&c, &t)
            .await
            .expect("cp")
            .is_some_and(|c| c.is_ready())
    })
    .await;
    assert_eq!(d.pause_control_plane(&c, &t).await, Ok(1));
    assert_eq!(
        d.pause_control_plane(&c, &t).await,
        Ok(1),
        "a second pause keeps paused-replicas"
    );
    host.settle().await;
    assert_eq!(
        d.pause_control_plane(&c, &t).await,
        Ok(1),
        "also after the pods are gone"
    );
    assert_eq!(d.evict_workload_pods(&c, &t).await.map(|_| ()), Ok(()));
    assert_eq!(
        d.evict_workload_pods(&c, &t).await,
        Ok(0),
        "a second eviction finds nothing"
    );
    assert_eq!(d.resume_control_plane(&c, &t).await, Ok(1));
    assert_eq!(
        d.resume_control_plane(&c, &t).await,
        Ok(1),
        "a second resume is a no-op"
    );
    d.uninstall_release(&c, &t).await.expect("uninstall");
    d.uninstall_release(&c, &t).await.expect("uninstall again");
    until(host, "namespace gone", || async {
        d.delete_namespace(&c, &t).await.expect("delete_namespace")
    })
    .await;
    assert_eq!(
        d.delete_namespace(&c, &t).await,
        Ok(true),
        "deleting a gone namespace again"
    );
}

/// Removals and reads tolerate "already gone" (never created, here).
pub async fn removals_tolerate_already_gone(host: &dyn ConformanceHost) {
    let d = host.driver();
    let t = host.target("never");
    let c = ctx("gone");
    assert_eq!(d.namespace_exists(&c, &t).await, Ok(false));
    assert_eq!(d.uninstall_release(&c, &t).await, Ok(()));
    assert_eq!(d.delete_namespace(&c, &t).await, Ok(true));
    assert_eq!(d.evict_workload_pods(&c, &t).await, Ok(0));
    assert_eq!(d.workload_pods(&c, &t).await, Ok(Vec::new()));
    assert_eq!(d.release(&c, &t).await, Ok(None));
    assert_eq!(d.control_plane(&c, &t).await, Ok(None));
    assert_eq!(d.kubeconfig(&c, &t).await, Ok(None));
    assert_eq!(d.health_check(&c, &t).await, Ok(false));
    assert_eq!(
        permanent_code(&d.pause_control_plane(&c, &t).await),
        Some(Code::NotFound),
        "pausing a missing release is NOT_FOUND"
    );
    assert_eq!(
        permanent_code(&d.resume_control_plane(&c, &t).await),
        Some(Code::NotFound)
    );
}

/// Pause then resume brings back the replicas the control plane had.
pub async fn pause_resume_round_trips_the_replicas(host: &dyn ConformanceHost) {
    let d = host.driver();
    let t = host.target("roundtrip");
    let c = ctx("roundtrip");
    create(host, &t, &values(3)).await;
    assert_eq!(d.pause_control_plane(&c, &t).await, Ok(3));
    let cp = d.control_plane(&c, &t).await.expect("cp").expect("exists");
    assert_eq!(
        (cp.replicas, cp.paused, cp.paused_replicas),
        (0, true, Some(3))
    );
    until(host, "pods gone after pause", || async {
        d.control_plane(&c, &t)
            .await
            .expect("cp")
            .is_some_and(|c| c.pods == 0)
    })
    .await;
    assert_eq!(
        d.health_check(&c, &t).await,
        Ok(false),
        "a paused vcluster is not healthy"
    );
    assert_eq!(d.resume_control_plane(&c, &t).await, Ok(3));
    let cp = d.control_plane(&c, &t).await.expect("cp").expect("exists");
    assert_eq!(
        (cp.replicas, cp.paused, cp.paused_replicas),
        (3, false, None)
    );
    until(host, "ready after resume", || async {
        d.control_plane(&c, &t)
            .await
            .expect("cp")
            .is_some_and(|c| c.is_ready() && c.ready == 3)
    })
    .await;
    destroy(host, &t).await;
}

/// A paused control plane refuses an upgrade (new values); the same values are a no-op.
pub async fn a_paused_control_plane_refuses_an_upgrade(host: &dyn ConformanceHost) {
    let d = host.driver();
    let t = host.target("paused-upgrade");
    let c = ctx("upgrade_release");
    let rev = create(host, &t, &values(1)).await;
    d.pause_control_plane(&c, &t).await.expect("pause");
    let r = d.install_release(&c, &t, &values(3)).await;
    assert_eq!(
        permanent_code(&r),
        Some(Code::FailedPrecondition),
        "upgrade while paused: {r:?}"
    );
    assert_eq!(
        d.install_release(&c, &t, &values(1)).await,
        Ok(rev),
        "same values: no-op"
    );
    host.settle().await;
    let cp = d.control_plane(&c, &t).await.expect("cp").expect("exists");
    assert_eq!(
        (cp.replicas, cp.paused),
        (0, true),
        "still paused after the refused upgrade"
    );
    d.resume_control_plane(&c, &t).await.expect("resume");
    destroy(host, &t).await;
}

/// Readiness is false until it is true: right after the install the control plane is
/// not ready, the kubeconfig is absent and the virtual API does not answer; later all are.
pub async fn readiness_is_false_until_true(host: &dyn ConformanceHost) {
    let d = host.driver();
    let t = host.target("ready");
    let c = ctx("wait_ready");
    d.ensure_namespace(&c, &t, &owner()).await.expect("ns");
    d.install_release(&c, &t, &values(1))
        .await
        .expect("install");
    let cp = d.control_plane(&c, &t).await.expect("cp");
    assert!(
        !cp.is_some_and(|c| c.is_ready()),
        "ready at once after the install: {cp:?}"
    );
    assert_eq!(d.health_check(&c, &t).await, Ok(false));
    until(host, "healthy", || async {
        d.health_check(&c, &t).await == Ok(true)
    })
    .await;
    assert!(
        d.control_plane(&c, &t)
            .await
            .expect("cp")
            .is_some_and(|c| c.is_ready())
    );
    let kubeconfig = d.kubeconfig(&c, &t).await.expect("kubeconfig");
    assert!(
        kubeconfig.is_some_and(|k| k.contains("server:")),
        "a kubeconfig with a server"
    );
    destroy(host, &t).await;
}

/// Ownership: a namespace ovc did not create is refused and never deleted; one
/// namespace holds one vcluster.
pub async fn ownership_is_respected(host: &dyn ConformanceHost) {
    let d = host.driver();
    let c = ctx("create_namespace");
    let foreign = host.target("foreign");
    if host.create_foreign_namespace(&foreign).await {
        let r = d.ensure_namespace(&c, &foreign, &owner()).await;
        assert_eq!(
            permanent_code(&r),
            Some(Code::FailedPrecondition),
            "a foreign namespace: {r:?}"
        );
        assert_eq!(
            d.delete_namespace(&c, &foreign).await,
            Ok(true),
            "not ours: left alone"
        );
        host.settle().await;
        assert_eq!(
            d.namespace_exists(&c, &foreign).await,
            Ok(true),
            "a foreign namespace is never deleted"
        );
    } else {
        eprintln!("conformance: this host cannot plant a foreign namespace; that part is skipped");
    }
    let t = host.target("owner");
    create(host, &t, &values(1)).await;
    let second = Target {
        namespace: t.namespace.clone(),
        release: format!("{}-2", t.release),
    };
    let r = d.install_release(&c, &second, &values(1)).await;
    assert_eq!(
        permanent_code(&r),
        Some(Code::FailedPrecondition),
        "a second vcluster in one namespace: {r:?}"
    );
    destroy(host, &t).await;
}

/// Runs every check.
pub async fn run_all(host: &dyn ConformanceHost) {
    removals_tolerate_already_gone(host).await;
    each_call_repeated_is_harmless(host).await;
    pause_resume_round_trips_the_replicas(host).await;
    a_paused_control_plane_refuses_an_upgrade(host).await;
    readiness_is_false_until_true(host).await;
    ownership_is_respected(host).await;
}

/// How long a real cluster may take per settle.
pub const REAL_CLUSTER_SETTLE: Duration = Duration::from_secs(3);
