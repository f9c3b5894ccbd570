//! `HostRouter`: several host clusters behind one driver. Two kube drivers on two fake
//! API servers (each with its own stand-in helm) are routed by `Target::host`: every call
//! lands on the named host's API server and none on the other's, the whole conformance
//! suite passes through the router, and an unknown host is refused before any host is
//! called.

use async_trait::async_trait;
use ovc_driver::conformance::{ConformanceHost, ObjectShelf, run_all};
use ovc_driver::kube::KubeHost;
use ovc_driver::kube::fake::{FakeCluster, install_stand_in_helm};
use ovc_driver::router::{DEFAULT_HOST, HostConfigError, HostRouter};
use ovc_driver::{CallCtx, DriverError, HostDriver, Owner, Target};
use ovc_types::error::Code;
use ovc_types::{ObjectLocation, OperationId};
use std::sync::Arc;

const NS: &str = "/api/v1/namespaces";

struct Cluster {
    _dir: tempfile::TempDir,
    fake: FakeCluster,
    driver: KubeHost,
}

fn cluster() -> Cluster {
    let dir = tempfile::tempdir().expect("tempdir");
    let helm = install_stand_in_helm(dir.path()).expect("helm");
    let fake = FakeCluster::new(dir.path());
    let driver = fake.driver(&helm);
    Cluster {
        _dir: dir,
        fake,
        driver,
    }
}

fn router(east: &Cluster, west: &Cluster) -> HostRouter {
    let mut r = HostRouter::new();
    r.add("east", Arc::new(east.driver.clone()))
        .expect("east")
        .add("west", Arc::new(west.driver.clone()))
        .expect("west");
    r
}

fn target(host: &str, name: &str) -> Target {
    Target {
        host: host.into(),
        namespace: format!("ovc-{host}-{name}"),
        release: name.into(),
    }
}

fn ctx() -> CallCtx {
    CallCtx::for_step(OperationId(uuid::Uuid::now_v7()), "test", "route", 1)
}

fn owner(name: &str) -> Owner {
    Owner {
        project: "routing".parse().expect("project"),
        vcluster: name.parse().expect("name"),
        uid: ovc_types::VClusterId(uuid::Uuid::now_v7()),
    }
}

#[tokio::test]
async fn calls_land_on_the_host_the_target_names() {
    let (east, west) = (cluster(), cluster());
    let r = router(&east, &west);
    assert_eq!(r.names(), ["east", "west"]);
    let (te, tw) = (target("east", "a"), target("west", "b"));
    r.ensure_namespace(&ctx(), &te, &owner("a"))
        .await
        .expect("east namespace");
    r.ensure_namespace(&ctx(), &tw, &owner("b"))
        .await
        .expect("west namespace");
    assert_eq!(east.fake.names(NS), ["ovc-east-a"]);
    assert_eq!(west.fake.names(NS), ["ovc-west-b"]);
    // Reads go the same way: each host sees only its own namespace.
    assert!(r.namespace_exists(&ctx(), &te).await.expect("east read"));
    let misrouted = Target {
        host: "west".into(),
        ..te.clone()
    };
    assert!(
        !r.namespace_exists(&ctx(), &misrouted)
            .await
            .expect("west read"),
        "west has no namespace of east's vcluster"
    );
    let east_calls = east.fake.requests().len();
    r.delete_namespace(&ctx(), &tw).await.expect("west delete");
    assert_eq!(
        east.fake.requests().len(),
        east_calls,
        "a west call reached east"
    );
    assert!(east.fake.names(NS).contains(&"ovc-east-a".to_string()));
}

#[tokio::test]
async fn an_unknown_host_is_refused_without_calling_any_host() {
    let (east, west) = (cluster(), cluster());
    let r = router(&east, &west);
    let err = r
        .ensure_namespace(&ctx(), &target("north", "a"), &owner("a"))
        .await
        .expect_err("north is not configured");
    let DriverError::Permanent(status) = err else {
        panic!("an unknown host is permanent: {err:?}");
    };
    assert_eq!(status.code, Code::InvalidArgument, "{status:?}");
    assert!(
        status.message.contains("\"north\"") && status.message.contains("\"east\", \"west\""),
        "{}",
        status.message
    );
    assert!(east.fake.requests().is_empty() && west.fake.requests().is_empty());
}

#[tokio::test]
async fn a_host_name_given_twice_or_not_a_dns_label_is_refused() {
    let c = cluster();
    let mut r = HostRouter::single(Arc::new(c.driver.clone()));
    assert_eq!(r.names(), [DEFAULT_HOST]);
    assert_eq!(
        r.add(DEFAULT_HOST, Arc::new(c.driver.clone())).err(),
        Some(HostConfigError::Duplicate(DEFAULT_HOST.into()))
    );
    for bad in ["", "East", "a_b", "-x"] {
        assert!(
            matches!(
                r.add(bad, Arc::new(c.driver.clone())),
                Err(HostConfigError::InvalidName { .. })
            ),
            "{bad:?}"
        );
    }
    assert_eq!(r.names(), [DEFAULT_HOST]);
}

/// The conformance suite through the router, on its `west` host.
struct Routed {
    router: HostRouter,
    east: Cluster,
    west: Cluster,
}

#[async_trait]
impl ConformanceHost for Routed {
    fn driver(&self) -> &dyn HostDriver {
        &self.router
    }
    fn host_name(&self) -> &str {
        "west"
    }
    fn namespace_prefix(&self) -> &str {
        "ovc-west"
    }
    async fn settle(&self) {
        self.west.fake.settle();
    }
    async fn create_foreign_namespace(&self, t: &Target) -> bool {
        self.west
            .fake
            .insert(NS, serde_json::json!({"metadata": {"name": t.namespace}}));
        true
    }
    fn patience(&self) -> u32 {
        5
    }
    fn snapshot_storage(&self, name: &str) -> Option<(ObjectShelf, ObjectLocation)> {
        let location = ObjectLocation::S3 {
            bucket: "routing".into(),
            key: format!("snapshots/{name}/backing-store.bin"),
            region: "us-east-1".into(),
            endpoint: Some("http://127.0.0.1:9000".into()),
            path_style: true,
        };
        Some((self.west.fake.shelf(), location))
    }
}

#[tokio::test]
async fn the_conformance_suite_passes_through_the_router_and_touches_only_its_host() {
    let (east, west) = (cluster(), cluster());
    let router = router(&east, &west);
    let routed = Routed { router, east, west };
    run_all(&routed).await;
    assert!(!routed.west.fake.requests().is_empty());
    assert!(
        routed.east.fake.requests().is_empty(),
        "east was called: {:?}",
        routed.east.fake.requests().first().map(|r| r.line())
    );
}
