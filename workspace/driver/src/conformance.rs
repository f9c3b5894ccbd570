//! The behaviours every [`HostDriver`] must have, as one suite that runs against each
//! driver: the simulated host, the kube driver on the fake API server, and the kube
//! driver on a real cluster (`KUBECONFIG` + `OVC_E2E_KUBE=1`). A workflow that is
//! correct against one driver relies only on what this suite checks, so it is correct
//! against all of them.
//!
//! Each check takes a [`ConformanceHost`]: the driver plus what only the harness can do
//! (let the host's controllers catch up, plant an object someone else owns).

use crate::{
    BackingStoreSink, BackingStoreSource, CallCtx, DriverError, DriverResult, HostDriver, Owner,
    ReleaseValues, Target,
};
use async_trait::async_trait;
use bytes::Bytes;
use ovc_types::error::Code;
use ovc_types::spec::VClusterSpec;
use ovc_types::{ObjectLocation, OperationId};
use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// A driver under test and its harness.
#[async_trait]
pub trait ConformanceHost: Send + Sync {
    /// The driver.
    fn driver(&self) -> &dyn HostDriver;
    /// The host name the checks' targets carry.
    fn host_name(&self) -> &str {
        "default"
    }
    /// The prefix of the checks' namespaces (a real cluster's run picks a unique one).
    fn namespace_prefix(&self) -> &str {
        "ovc-conf"
    }
    /// A target no other check uses (`name` is unique per check).
    fn target(&self, name: &str) -> Target {
        Target {
            host: self.host_name().into(),
            namespace: format!("{}-{name}", self.namespace_prefix()),
            release: name.into(),
        }
    }
    /// Lets the host move on once (pods start, Secrets appear, deletions finish).
    async fn settle(&self);
    /// Creates namespace `t.namespace` as someone other than ovc; false when the host
    /// cannot model that (then the check says so and skips that part).
    async fn create_foreign_namespace(&self, t: &Target) -> bool;
    /// How many times [`settle`](Self::settle) may be called while waiting.
    fn patience(&self) -> u32 {
        50
    }
    /// The snapshot storage of the checks and where its object `name` lives; `None` when
    /// the harness has none the host can reach (then the snapshot check says so and
    /// skips).
    fn snapshot_storage(&self, name: &str) -> Option<(ObjectShelf, ObjectLocation)> {
        let _ = name;
        None
    }
}

/// An in-memory object storage shared by a harness and its host: the checks' snapshot
/// storage. Objects are named by [`ObjectLocation::url`], so a fake host that is told
/// `s3://bucket/key` finds what a sink of that location holds.
#[derive(Debug, Clone, Default)]
pub struct ObjectShelf(Arc<Mutex<BTreeMap<String, Vec<u8>>>>);

impl ObjectShelf {
    /// The object named `url`.
    pub fn get(&self, url: &str) -> Option<Vec<u8>> {
        self.0.lock().expect("shelf").get(url).cloned()
    }

    /// Stores `bytes` as `url`.
    pub fn put(&self, url: &str, bytes: Vec<u8>) {
        self.0.lock().expect("shelf").insert(url.to_string(), bytes);
    }

    /// A sink writing the object at `location` (written through it, or by the host).
    pub fn sink(&self, location: ObjectLocation) -> ShelfSink {
        ShelfSink {
            shelf: self.clone(),
            url: location.url(),
            location,
            started: false,
            objects_unavailable: None,
            info: None,
        }
    }

    /// A source reading the object at `location` (`None`: absent).
    pub fn source(&self, location: ObjectLocation) -> Option<ShelfSource> {
        let url = location.url();
        let data = Bytes::from(self.get(&url)?);
        Some(ShelfSource {
            size: data.len() as u64,
            data,
            url,
            location,
        })
    }
}

/// A [`BackingStoreSink`] into an [`ObjectShelf`].
#[derive(Debug)]
pub struct ShelfSink {
    shelf: ObjectShelf,
    location: ObjectLocation,
    url: String,
    /// Something was written through this sink: a first write replaces the object.
    started: bool,
    /// Why the driver said there is no per-object export.
    pub objects_unavailable: Option<String>,
    /// What the driver said about the dump.
    pub info: Option<crate::BackingStoreInfo>,
}

#[async_trait]
impl BackingStoreSink for ShelfSink {
    fn location(&self) -> &str {
        &self.url
    }

    fn object(&self) -> ObjectLocation {
        self.location.clone()
    }

    async fn write(&mut self, chunk: Bytes) -> DriverResult<()> {
        let mut map = self.shelf.0.lock().expect("shelf");
        let object = map.entry(self.url.clone()).or_default();
        if !self.started {
            object.clear();
            self.started = true;
        }
        object.extend_from_slice(&chunk);
        Ok(())
    }

    async fn adopt_written(&mut self) -> DriverResult<u64> {
        self.shelf
            .get(&self.url)
            .map(|b| b.len() as u64)
            .ok_or_else(|| {
                DriverError::permanent(
                    Code::NotFound,
                    format!("the host wrote no object at {}", self.url),
                )
            })
    }

    // The shelf holds the data object only (what a vcluster pod writes): exported objects
    // are the artifact's business, not the conformance suite's; what the driver says
    // about them is kept for the tests.
    async fn write_object(&mut self, _object: &crate::ExportedObject) -> DriverResult<()> {
        Ok(())
    }

    fn objects_unavailable(&mut self, reason: String) {
        self.objects_unavailable = Some(reason);
    }

    fn record_backing_store(&mut self, info: crate::BackingStoreInfo) {
        self.info = Some(info);
    }
}

/// A [`BackingStoreSource`] from an [`ObjectShelf`].
#[derive(Debug)]
pub struct ShelfSource {
    location: ObjectLocation,
    url: String,
    data: Bytes,
    size: u64,
}

#[async_trait]
impl BackingStoreSource for ShelfSource {
    fn location(&self) -> &str {
        &self.url
    }

    fn object(&self) -> ObjectLocation {
        self.location.clone()
    }

    fn size(&self) -> u64 {
        self.size
    }

    async fn next_chunk(&mut self) -> DriverResult<Option<Bytes>> {
        if self.data.is_empty() {
            return Ok(None);
        }
        let n = self.data.len().min(crate::MemorySource::CHUNK);
        Ok(Some(self.data.split_to(n)))
    }
}

/// Runs `fut` (a call that waits on the host's controllers) while letting the host
/// settle, as a real cluster's controllers would run meanwhile.
async fn settling<T>(host: &dyn ConformanceHost, fut: impl std::future::Future<Output = T>) -> T {
    let mut fut = std::pin::pin!(fut);
    loop {
        tokio::select! {
            r = &mut fut => return r,
            _ = tokio::time::sleep(Duration::from_millis(5)) => host.settle().await,
        }
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
        host: t.host.clone(),
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

/// Snapshot then restore returns the same objects: vcluster A's snapshot restored over
/// vcluster B (which started with data of its own) makes B's next snapshot hold exactly
/// A's data; a repeated snapshot to the same location is harmless.
pub async fn snapshot_then_restore_returns_the_same_objects(host: &dyn ConformanceHost) {
    let Some((shelf, _)) = host.snapshot_storage("probe") else {
        eprintln!(
            "snapshot_then_restore_returns_the_same_objects: skipped (the harness has no \
             snapshot storage this host can reach)"
        );
        return;
    };
    let d = host.driver();
    let (a, b) = (host.target("snap-a"), host.target("snap-b"));
    create(host, &a, &values(1)).await;
    create(host, &b, &values(1)).await;
    let dump = |t: Target, name: &'static str| {
        let shelf = shelf.clone();
        async move {
            let (_, loc) = host.snapshot_storage(name).expect("storage");
            let mut sink = shelf.sink(loc.clone());
            let n = settling(host, d.dump_backing_store(&ctx("snapshot"), &t, &mut sink))
                .await
                .expect("dump_backing_store");
            let data = shelf.get(&loc.url()).expect("the snapshot object exists");
            assert_eq!(n, data.len() as u64, "dump returns the object's size");
            (loc, data)
        }
    };
    let (a_loc, a_data) = dump(a.clone(), "a-1").await;
    let (_, a_again) = dump(a.clone(), "a-1").await;
    assert_eq!(a_again, a_data, "a repeated snapshot writes the same data");
    let (_, b_before) = dump(b.clone(), "b-0").await;
    assert_ne!(
        b_before, a_data,
        "two vclusters start with data of their own (else the check proves nothing)"
    );
    d.pause_control_plane(&ctx("pause_control_plane"), &b)
        .await
        .expect("pause");
    let mut source = shelf.source(a_loc).expect("a's snapshot");
    let size = source.size();
    let loaded = settling(
        host,
        d.load_backing_store(&ctx("load_backing_store"), &b, &mut source),
    )
    .await
    .expect("load_backing_store");
    assert_eq!(loaded, size, "load returns the object's size");
    d.resume_control_plane(&ctx("resume_control_plane"), &b)
        .await
        .expect("resume");
    until(host, "restored control plane ready", || async {
        d.control_plane(&ctx("wait_ready"), &b)
            .await
            .expect("control_plane")
            .is_some_and(|c| c.is_ready())
    })
    .await;
    let (_, b_after) = dump(b.clone(), "b-1").await;
    assert_eq!(
        b_after, a_data,
        "after the restore, b's snapshot holds exactly a's objects"
    );
    destroy(host, &a).await;
    destroy(host, &b).await;
}

/// Runs every check.
pub async fn run_all(host: &dyn ConformanceHost) {
    removals_tolerate_already_gone(host).await;
    each_call_repeated_is_harmless(host).await;
    pause_resume_round_trips_the_replicas(host).await;
    a_paused_control_plane_refuses_an_upgrade(host).await;
    readiness_is_false_until_true(host).await;
    ownership_is_respected(host).await;
    snapshot_then_restore_returns_the_same_objects(host).await;
}

/// How long a real cluster may take per settle.
pub const REAL_CLUSTER_SETTLE: Duration = Duration::from_secs(3);
