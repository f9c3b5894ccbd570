//! The conformance suite (`ovc_driver::conformance`) against every driver: the simulated
//! host on SQLite and PostgreSQL, the kube driver on the fake API server with the
//! stand-in helm, and the kube driver on a real cluster when `KUBECONFIG` and
//! `OVC_E2E_KUBE=1` are set (skipped with a printed reason otherwise).

use async_trait::async_trait;
use ovc_driver::conformance::{ConformanceHost, ObjectShelf, run_all};
use ovc_driver::kube::KubeHost;
use ovc_driver::kube::fake::{FakeCluster, install_stand_in_helm};
use ovc_driver::sim::{SimConfig, SimHost};
use ovc_driver::{HostDriver, Target};
use ovc_store::Backend;
use ovc_testkit::TestDb;
use ovc_types::ObjectLocation;
use std::time::Duration;

ovc_testkit::both_backends!(conformance_of_the_simulated_host);

struct Sim {
    host: SimHost,
    ready_delay: Duration,
    shelf: ObjectShelf,
}

#[async_trait]
impl ConformanceHost for Sim {
    fn driver(&self) -> &dyn HostDriver {
        &self.host
    }
    async fn settle(&self) {
        tokio::time::sleep(self.ready_delay / 4).await;
    }
    async fn create_foreign_namespace(&self, _t: &Target) -> bool {
        false
    }
    fn snapshot_storage(&self, name: &str) -> Option<(ObjectShelf, ObjectLocation)> {
        // The simulator streams its data through the sink: a local store will do.
        let url = format!("memory://conformance/{name}");
        Some((self.shelf.clone(), ObjectLocation::Local { url }))
    }
}

async fn conformance_of_the_simulated_host(backend: Backend) {
    let db = TestDb::new(backend).await;
    drop(db.open().await);
    let ready_delay = Duration::from_millis(200);
    let host = SimHost::connect(
        db.url(),
        db.config().pg_schema.as_deref(),
        SimConfig {
            ready_delay,
            ..SimConfig::default()
        },
    )
    .await
    .expect("sim host");
    run_all(&Sim {
        host,
        ready_delay,
        shelf: ObjectShelf::default(),
    })
    .await;
}

struct Fake {
    fake: FakeCluster,
    host: KubeHost,
}

#[async_trait]
impl ConformanceHost for Fake {
    fn driver(&self) -> &dyn HostDriver {
        &self.host
    }
    async fn settle(&self) {
        self.fake.settle();
    }
    async fn create_foreign_namespace(&self, t: &Target) -> bool {
        self.fake.insert(
            "/api/v1/namespaces",
            serde_json::json!({"metadata": {"name": t.namespace}}),
        );
        true
    }
    fn patience(&self) -> u32 {
        5
    }
    fn snapshot_storage(&self, name: &str) -> Option<(ObjectShelf, ObjectLocation)> {
        // The fake vcluster pods write to the fake's shelf, as real ones write to S3.
        let location = ObjectLocation::S3 {
            bucket: "conformance".into(),
            key: format!("snapshots/{name}/backing-store.bin"),
            region: "us-east-1".into(),
            endpoint: Some("http://127.0.0.1:9000".into()),
            path_style: true,
        };
        Some((self.fake.shelf(), location))
    }
}

#[tokio::test]
async fn conformance_of_the_kube_driver_on_the_fake_api_server() {
    let dir = tempfile::tempdir().expect("tempdir");
    let helm = install_stand_in_helm(dir.path()).expect("helm");
    let fake = FakeCluster::new(dir.path());
    let host = fake.driver(&helm);
    run_all(&Fake { fake, host }).await;
}

struct Real {
    host: KubeHost,
    client: kube::Client,
    prefix: String,
}

#[async_trait]
impl ConformanceHost for Real {
    fn driver(&self) -> &dyn HostDriver {
        &self.host
    }
    fn namespace_prefix(&self) -> &str {
        &self.prefix
    }
    async fn settle(&self) {
        tokio::time::sleep(ovc_driver::conformance::REAL_CLUSTER_SETTLE).await;
    }
    async fn create_foreign_namespace(&self, t: &Target) -> bool {
        use k8s_openapi::api::core::v1::Namespace;
        let api: kube::Api<Namespace> = kube::Api::all(self.client.clone());
        let ns: Namespace =
            serde_json::from_value(serde_json::json!({"metadata": {"name": t.namespace}}))
                .expect("namespace");
        api.create(&Default::default(), &ns)
            .await
            .expect("create the foreign namespace");
        true
    }
    fn patience(&self) -> u32 {
        200
    }
}

/// `Some(reason)` when the real-cluster tests must not run here.
pub fn real_cluster_gate() -> Option<&'static str> {
    if std::env::var("OVC_E2E_KUBE").as_deref() != Ok("1") {
        return Some("OVC_E2E_KUBE=1 is not set");
    }
    if std::env::var_os("KUBECONFIG").is_none() {
        return Some("KUBECONFIG is not set");
    }
    None
}

#[tokio::test]
async fn conformance_of_the_kube_driver_on_a_real_cluster() {
    if let Some(reason) = real_cluster_gate() {
        eprintln!("skipped: {reason} (set both to run the conformance suite on a real cluster)");
        return;
    }
    let host = KubeHost::from_env().await.expect("KUBECONFIG");
    host.check()
        .await
        .expect("the cluster answers and helm works");
    let client = kube::Client::try_default().await.expect("client");
    let prefix = format!(
        "ovc-conf-{}",
        &uuid::Uuid::now_v7().simple().to_string()[20..]
    );
    let real = Real {
        host,
        client: client.clone(),
        prefix,
    };
    run_all(&real).await;
    // The foreign namespace is not ovc's to delete: the test removes it.
    use k8s_openapi::api::core::v1::Namespace;
    let api: kube::Api<Namespace> = kube::Api::all(client);
    let _ = api
        .delete(&real.target("foreign").namespace, &Default::default())
        .await;
}
