//! The kube driver against the fake Kubernetes API server and the stand-in helm: the
//! exact requests of every step of every workflow, each step repeated, the error
//! mapping, and helm's stuck releases. Assertions are on the requests the server got
//! and the arguments helm got, never on what the driver logged.

use ovc_driver::conformance::values;
use ovc_driver::kube::StorageCredentials;
use ovc_driver::kube::fake::{
    FakeCluster, RecordedRequest, helm_calls, install_stand_in_helm, set_helm_status,
};
use ovc_driver::kube::{KubeError, KubeHost, RestoreProgress, SnapshotPhase};
use ovc_driver::{CallCtx, DriverError, HostDriver, Owner, Target};
use ovc_types::ObjectLocation;
use ovc_types::OperationId;
use ovc_types::error::Code;
use serde_json::{Value, json};
use std::path::PathBuf;
use std::time::Duration;

struct Env {
    _dir: tempfile::TempDir,
    dir: PathBuf,
    fake: FakeCluster,
    host: KubeHost,
}

fn env() -> Env {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().to_owned();
    let helm = install_stand_in_helm(&path).expect("stand-in helm");
    let fake = FakeCluster::new(&path);
    let host = fake.driver(&helm);
    Env {
        _dir: dir,
        dir: path,
        fake,
        host,
    }
}

fn t() -> Target {
    Target {
        host: "default".into(),
        namespace: "ovc-p-demo".into(),
        release: "demo".into(),
    }
}

fn ctx(step: &str) -> CallCtx {
    CallCtx::for_step(OperationId(uuid::Uuid::now_v7()), "test", step, 1)
}

/// The vcluster every namespace of these checks belongs to.
fn owner() -> Owner {
    Owner {
        project: "conformance".parse().expect("project"),
        vcluster: "demo".parse().expect("name"),
        uid: ovc_types::VClusterId(uuid::Uuid::from_u128(0x0c0f)),
    }
}

const NS: &str = "/api/v1/namespaces";
const STS: &str = "/apis/apps/v1/namespaces/ovc-p-demo/statefulsets";
const PODS: &str = "/api/v1/namespaces/ovc-p-demo/pods";
const SECRETS: &str = "/api/v1/namespaces/ovc-p-demo/secrets";
const CMS: &str = "/api/v1/namespaces/ovc-p-demo/configmaps";
const PVCS: &str = "/api/v1/namespaces/ovc-p-demo/persistentvolumeclaims";

fn lines(reqs: &[RecordedRequest]) -> Vec<String> {
    reqs.iter().map(RecordedRequest::line).collect()
}

/// The helm subcommands called (first argument), without `version`.
fn helm_verbs(e: &Env) -> Vec<String> {
    helm_calls(&e.dir)
        .into_iter()
        .map(|c| c[0].clone())
        .filter(|c| c != "version")
        .collect()
}

fn clear(e: &Env) {
    e.fake.clear_requests();
    let _ = std::fs::remove_file(e.dir.join("calls.log"));
}

/// Namespace, release, and the controllers until the control plane is ready.
async fn running(e: &Env, replicas: u32) {
    e.host
        .ensure_namespace(&ctx("create_namespace"), &t(), &owner())
        .await
        .expect("ns");
    e.host
        .install_release(&ctx("install_release"), &t(), &values(replicas))
        .await
        .expect("install");
    e.fake.settle();
    e.fake.settle();
    clear(e);
}

fn permanent(r: Result<impl std::fmt::Debug, DriverError>) -> ovc_types::error::Status {
    match r {
        Err(DriverError::Permanent(s)) => s,
        other => panic!("expected a permanent error, got {other:?}"),
    }
}

// ---- create ----

#[tokio::test]
async fn create_namespace_posts_it_labelled_and_annotated_once() {
    let e = env();
    e.host
        .ensure_namespace(&ctx("create_namespace"), &t(), &owner())
        .await
        .expect("ensure");
    let reqs = e.fake.requests();
    assert_eq!(
        lines(&reqs),
        vec![format!("GET {NS}/ovc-p-demo"), format!("POST {NS}")]
    );
    let body = reqs[1].body.clone().expect("body");
    assert_eq!(body["metadata"]["name"], "ovc-p-demo");
    assert_eq!(
        body["metadata"]["labels"]["app.kubernetes.io/managed-by"],
        "ovc"
    );
    assert_eq!(
        body["metadata"]["annotations"]["vcluster.loft.sh/created"],
        "true"
    );

    clear(&e);
    e.host
        .ensure_namespace(&ctx("create_namespace"), &t(), &owner())
        .await
        .expect("again");
    assert_eq!(
        lines(&e.fake.requests()),
        vec![format!("GET {NS}/ovc-p-demo")],
        "a repeat only reads"
    );
}

#[tokio::test]
async fn create_namespace_refuses_a_foreign_one_and_waits_out_a_terminating_one() {
    let e = env();
    e.fake
        .insert(NS, json!({"metadata": {"name": "ovc-p-demo"}}));
    let s = permanent(e.host.ensure_namespace(&ctx("c"), &t(), &owner()).await);
    assert_eq!(
        (s.code, s.reason()),
        (Code::FailedPrecondition, Some("NAMESPACE_NOT_OURS"))
    );
    assert!(
        e.fake.writes().is_empty(),
        "nothing written to a foreign namespace"
    );

    e.fake.patch(NS, "ovc-p-demo", &json!({"metadata": {"labels": {"app.kubernetes.io/managed-by": "ovc"}, "deletionTimestamp": "2026-01-01T00:00:00Z"}}));
    // The step's deadline is shorter than the namespace's termination: transient.
    clear(&e);
    let short = ctx("c").with_deadline(std::time::Instant::now() + Duration::from_millis(200));
    let started = std::time::Instant::now();
    match e.host.ensure_namespace(&short, &t(), &owner()).await {
        Err(DriverError::Transient {
            retry_after,
            message,
        }) => {
            assert!(retry_after.is_some());
            assert!(message.contains("terminating"), "{message}");
        }
        other => panic!("a terminating namespace outlasting the deadline: {other:?}"),
    }
    assert!(
        started.elapsed() < Duration::from_millis(200),
        "gave up before the deadline, not after: {:?}",
        started.elapsed()
    );
    let gets = e.fake.requests().len();
    assert!(gets >= 2, "it looked again while waiting ({gets} requests)");
    assert!(
        e.fake.writes().is_empty(),
        "nothing written while terminating"
    );
    // Within the deadline: the namespace goes and is created anew, in the same call.
    clear(&e);
    let settler = {
        let fake = e.fake.clone();
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(50)).await;
            fake.settle();
        })
    };
    let outcome = e
        .host
        .ensure_namespace(
            &ctx("c").with_deadline(std::time::Instant::now() + Duration::from_secs(10)),
            &t(),
            &owner(),
        )
        .await;
    settler.await.expect("settler");
    assert_eq!(outcome, Ok(ovc_driver::NamespaceOutcome::Created));
    assert_eq!(
        lines(&e.fake.writes()),
        vec![format!("POST {NS}")],
        "waited out, then created once"
    );
}

#[tokio::test]
async fn create_namespace_verifies_a_409_is_ours() {
    let e = env();
    // Someone creates it between our GET and our POST.
    e.fake.fail_next("POST", NS, 409, "AlreadyExists", None);
    e.fake
        .insert(NS, json!({"metadata": {"name": "ovc-p-demo-x"}}));
    e.fake.insert(
        NS,
        json!({"metadata": {"name": "ovc-p-demo", "labels": owner().labels()}}),
    );
    // The GET finds it already: ours, fine, no POST.
    e.host
        .ensure_namespace(&ctx("c"), &t(), &owner())
        .await
        .expect("ours");
    let e2 = env();
    e2.fake.fail_next("POST", NS, 409, "AlreadyExists", None);
    let s = permanent(e2.host.ensure_namespace(&ctx("c"), &t(), &owner()).await);
    // The 409'd namespace does not exist in the fake, so the verifying GET is a 404.
    assert_eq!(s.code, Code::FailedPrecondition);
    assert_eq!(
        lines(&e2.fake.requests()),
        vec![
            format!("GET {NS}/ovc-p-demo"),
            format!("POST {NS}"),
            format!("GET {NS}/ovc-p-demo")
        ]
    );
}

#[tokio::test]
async fn install_runs_helm_upgrade_install_with_the_rendered_values_once() {
    let e = env();
    e.host
        .ensure_namespace(&ctx("c"), &t(), &owner())
        .await
        .expect("ns");
    clear(&e);
    let rev = e
        .host
        .install_release(&ctx("install_release"), &t(), &values(1))
        .await
        .expect("install");
    assert_eq!(rev, 1);
    let calls = helm_calls(&e.dir);
    assert_eq!(calls[0], vec!["version", "--short"]);
    assert_eq!(
        calls[1],
        vec!["status", "demo", "-n", "ovc-p-demo", "-o", "json"]
    );
    let up = &calls[2];
    assert_eq!(
        up[..11].to_vec(),
        vec![
            "upgrade",
            "--install",
            "demo",
            "vcluster",
            "--repo",
            "https://charts.loft.sh",
            "--version",
            "0.29.1",
            "-n",
            "ovc-p-demo",
            "-f"
        ]
    );
    assert!(up[11].ends_with("values.yaml"));
    assert_eq!(calls[3][0], "status");
    assert_eq!(calls.len(), 4);
    assert_eq!(
        lines(&e.fake.requests()),
        vec![
            format!("GET {NS}/ovc-p-demo"),
            format!("GET {STS}?labelSelector=app=vcluster"),
            "GET /apis/apps/v1/namespaces/ovc-p-demo/deployments?labelSelector=app=vcluster"
                .to_string(),
        ],
        "the namespace exists and holds no other vcluster"
    );
    // What helm got: the typed values.
    let rel: Value = serde_json::from_str(
        &std::fs::read_to_string(e.dir.join("releases/ovc-p-demo/demo.json")).expect("release"),
    )
    .expect("json");
    let config = &rel["config"];
    assert_eq!(
        config["controlPlane"]["statefulSet"]["highAvailability"]["replicas"],
        1
    );
    assert_eq!(
        config["exportKubeConfig"]["server"],
        "https://demo.ovc-p-demo:443"
    );
    assert_eq!(config["policies"]["resourceQuota"]["enabled"], true);

    clear(&e);
    assert_eq!(
        e.host
            .install_release(&ctx("install_release"), &t(), &values(1))
            .await,
        Ok(1)
    );
    assert_eq!(
        helm_verbs(&e),
        vec!["status"],
        "a repeat reads the release and stops"
    );
    assert!(e.fake.writes().is_empty());
}

#[tokio::test]
async fn install_refuses_a_second_vcluster_and_a_missing_namespace() {
    let e = env();
    let s = permanent(e.host.install_release(&ctx("i"), &t(), &values(1)).await);
    assert_eq!(s.reason(), Some("NAMESPACE_MISSING"));
    e.host
        .ensure_namespace(&ctx("c"), &t(), &owner())
        .await
        .expect("ns");
    e.fake.insert(STS, json!({"metadata": {"name": "other", "labels": {"app": "vcluster", "release": "other"}}, "spec": {"replicas": 1, "selector": {}, "template": {}, "serviceName": "x"}}));
    let s = permanent(e.host.install_release(&ctx("i"), &t(), &values(1)).await);
    assert_eq!(s.reason(), Some("NAMESPACE_TAKEN"));
    assert!(
        !helm_verbs(&e).contains(&"upgrade".to_string()),
        "helm never ran an upgrade"
    );
}

#[tokio::test]
async fn readiness_needs_pods_the_kubeconfig_secret_and_the_virtual_api() {
    let e = env();
    e.host
        .ensure_namespace(&ctx("c"), &t(), &owner())
        .await
        .expect("ns");
    e.host
        .install_release(&ctx("i"), &t(), &values(1))
        .await
        .expect("install");
    let r = e.host.readiness(&t()).await.expect("readiness");
    assert!(!r.control_plane && !r.kubeconfig && !r.virtual_api, "{r:?}");
    assert_eq!(e.host.kubeconfig(&ctx("k"), &t()).await, Ok(None));
    e.fake.settle();
    clear(&e);
    let r = e.host.readiness(&t()).await.expect("readiness");
    assert!(r.is_ready(), "{r:?}");
    let reqs = e.fake.requests();
    let probe: Vec<&RecordedRequest> = reqs.iter().filter(|r| r.virtual_api).collect();
    assert_eq!(probe.len(), 1);
    assert_eq!(
        probe[0].line(),
        "GET /api/v1/namespaces/default/serviceaccounts/default"
    );
    assert!(
        reqs.iter()
            .any(|r| r.line() == format!("GET {SECRETS}/vc-demo"))
    );
    // The kubeconfig points at the configured server, keeps the credentials.
    let k = e
        .host
        .kubeconfig(&ctx("k"), &t())
        .await
        .expect("kc")
        .expect("some");
    assert!(k.contains("https://demo.ovc-p-demo:443"), "{k}");
    assert!(!k.contains("localhost:8443"), "{k}");
    assert!(k.contains("secret-token-of-demo"), "{k}");
}

// ---- suspend / resume ----

#[tokio::test]
async fn pause_is_one_merge_patch_with_vclusters_annotations() {
    let e = env();
    running(&e, 1).await;
    assert_eq!(
        e.host
            .pause_control_plane(&ctx("scale_to_zero"), &t())
            .await,
        Ok(1)
    );
    let writes = e.fake.writes();
    assert_eq!(lines(&writes), vec![format!("PATCH {STS}/demo")]);
    assert_eq!(
        writes[0].content_type.as_deref(),
        Some("application/merge-patch+json")
    );
    let body = writes[0].body.clone().expect("body");
    let date = body["metadata"]["annotations"]["loft.sh/paused-date"]
        .as_str()
        .expect("date")
        .to_owned();
    assert_eq!(
        body,
        json!({"metadata": {"annotations": {"loft.sh/paused": "true", "loft.sh/paused-replicas": "1", "loft.sh/paused-date": date}}, "spec": {"replicas": 0}})
    );
    assert!(
        chrono::DateTime::parse_from_rfc3339(&date).is_ok()
            && date.ends_with('Z')
            && date.len() == 24,
        "{date}"
    );
    assert!(
        e.fake
            .requests()
            .iter()
            .any(|r| r.line() == format!("GET {STS}?labelSelector=app=vcluster,release=demo")),
        "discovery by app=vcluster,release=NAME"
    );
    clear(&e);
    e.fake.settle();
    assert_eq!(
        e.host
            .pause_control_plane(&ctx("scale_to_zero"), &t())
            .await,
        Ok(1)
    );
    assert!(
        e.fake.writes().is_empty(),
        "already paused: nothing written"
    );
}

#[tokio::test]
async fn pause_of_a_control_plane_at_zero_remembers_the_configured_replicas() {
    let e = env();
    running(&e, 3).await;
    e.fake.patch(STS, "demo", &json!({"spec": {"replicas": 0}}));
    assert_eq!(
        e.host.pause_control_plane(&ctx("p"), &t()).await,
        Ok(3),
        "from vc-config-demo"
    );
    assert!(
        e.fake
            .requests()
            .iter()
            .any(|r| r.line() == format!("GET {SECRETS}/vc-config-demo"))
    );
}

#[tokio::test]
async fn evicting_workloads_deletes_the_managed_pods_by_label() {
    let e = env();
    e.fake.set_workloads("ovc-p-demo", "demo", 2);
    running(&e, 1).await;
    e.fake.settle();
    clear(&e);
    let c = ctx("evict_workloads");
    assert_eq!(e.host.workload_pods(&c, &t()).await.map(|p| p.len()), Ok(2));
    assert_eq!(e.host.evict_workload_pods(&c, &t()).await, Ok(2));
    let writes = lines(&e.fake.writes());
    assert_eq!(
        writes,
        vec![
            format!("DELETE {PODS}/web-0-x-default-x-demo"),
            format!("DELETE {PODS}/web-1-x-default-x-demo"),
        ]
    );
    assert!(
        e.fake
            .requests()
            .iter()
            .any(|r| r.line()
                == format!("GET {PODS}?labelSelector=vcluster.loft.sh/managed-by=demo"))
    );
    clear(&e);
    assert_eq!(e.host.evict_workload_pods(&c, &t()).await, Ok(0));
    assert!(e.fake.writes().is_empty());
    // A pod that vanished between LIST and DELETE is fine.
    e.fake.insert(
        PODS,
        json!({"metadata": {"name": "late", "labels": {"vcluster.loft.sh/managed-by": "demo"}}}),
    );
    e.fake
        .fail_next("DELETE", "/pods/late", 404, "NotFound", None);
    assert_eq!(e.host.evict_workload_pods(&c, &t()).await, Ok(0));
}

#[tokio::test]
async fn resume_removes_the_annotations_and_restores_the_replicas() {
    let e = env();
    running(&e, 3).await;
    e.host
        .pause_control_plane(&ctx("p"), &t())
        .await
        .expect("pause");
    e.fake.settle();
    clear(&e);
    assert_eq!(
        e.host.resume_control_plane(&ctx("scale_up"), &t()).await,
        Ok(3)
    );
    let writes = e.fake.writes();
    assert_eq!(lines(&writes), vec![format!("PATCH {STS}/demo")]);
    assert_eq!(
        writes[0].content_type.as_deref(),
        Some("application/merge-patch+json")
    );
    assert_eq!(
        writes[0].body,
        Some(
            json!({"metadata": {"annotations": {"loft.sh/paused": null, "loft.sh/restoring": null, "loft.sh/paused-replicas": null, "loft.sh/paused-date": null}}, "spec": {"replicas": 3}})
        )
    );
    let sts = e.fake.object(STS, "demo").expect("sts");
    assert!(
        sts["metadata"]["annotations"]
            .get("loft.sh/paused")
            .is_none()
    );
    clear(&e);
    assert_eq!(
        e.host.resume_control_plane(&ctx("scale_up"), &t()).await,
        Ok(3)
    );
    assert!(e.fake.writes().is_empty(), "not paused: no-op");
}

#[tokio::test]
async fn resume_refuses_a_control_plane_scaled_down_outside_ovc() {
    let e = env();
    running(&e, 1).await;
    e.fake.patch(STS, "demo", &json!({"spec": {"replicas": 0}}));
    let s = permanent(e.host.resume_control_plane(&ctx("r"), &t()).await);
    assert_eq!(s.reason(), Some("SCALED_DOWN"));
    assert!(e.fake.writes().is_empty());
}

#[tokio::test]
async fn sleep_mode_is_left_to_the_platform() {
    let e = env();
    running(&e, 1).await;
    e.fake.patch(
        STS,
        "demo",
        &json!({"metadata": {"labels": {"loft.sh/sleep-mode": "true"}}}),
    );
    assert_eq!(
        permanent(e.host.pause_control_plane(&ctx("p"), &t()).await).reason(),
        Some("SLEEP_MODE")
    );
    assert!(e.fake.writes().is_empty());
}

#[tokio::test]
async fn a_deployment_control_plane_and_a_deployed_etcd_are_paused_in_order() {
    let e = env();
    e.host
        .ensure_namespace(&ctx("c"), &t(), &owner())
        .await
        .expect("ns");
    let dep = "/apis/apps/v1/namespaces/ovc-p-demo/deployments";
    e.fake.insert(dep, json!({"metadata": {"name": "demo", "labels": {"app": "vcluster", "release": "demo"}}, "spec": {"replicas": 2, "selector": {}, "template": {}}}));
    e.fake.insert(STS, json!({"metadata": {"name": "demo-etcd", "labels": {"app": "vcluster-etcd", "release": "demo"}}, "spec": {"replicas": 3, "selector": {}, "template": {}, "serviceName": "x"}}));
    clear(&e);
    assert_eq!(e.host.pause_control_plane(&ctx("p"), &t()).await, Ok(2));
    let w = e.fake.writes();
    assert_eq!(
        lines(&w),
        vec![
            format!("PATCH {dep}/demo"),
            format!("PATCH {STS}/demo-etcd")
        ],
        "control plane first"
    );
    assert_eq!(
        w[1].body.as_ref().unwrap()["metadata"]["annotations"]["loft.sh/paused-replicas"],
        "3"
    );
    clear(&e);
    assert_eq!(e.host.resume_control_plane(&ctx("r"), &t()).await, Ok(2));
    let w = e.fake.writes();
    assert_eq!(
        lines(&w),
        vec![
            format!("PATCH {STS}/demo-etcd"),
            format!("PATCH {dep}/demo")
        ],
        "etcd first"
    );
    assert_eq!(w[0].body.as_ref().unwrap()["spec"]["replicas"], 3);
}

// ---- scale ----

#[tokio::test]
async fn scale_upgrades_through_helm_and_never_while_paused() {
    let e = env();
    running(&e, 1).await;
    assert_eq!(
        e.host
            .install_release(&ctx("upgrade_release"), &t(), &values(3))
            .await,
        Ok(2)
    );
    assert_eq!(helm_verbs(&e), vec!["status", "upgrade", "status"]);
    assert!(
        e.fake.writes().is_empty(),
        "sizes go through helm values, never a direct patch"
    );
    e.fake.settle();
    let info = e
        .host
        .release(&ctx("r"), &t())
        .await
        .expect("release")
        .expect("some");
    assert_eq!((info.revision, info.values.control_plane.replicas), (2, 3));
    assert_eq!(info.chart_version, "0.29.1");
    e.host
        .pause_control_plane(&ctx("p"), &t())
        .await
        .expect("pause");
    clear(&e);
    let s = permanent(
        e.host
            .install_release(&ctx("upgrade_release"), &t(), &values(1))
            .await,
    );
    assert_eq!(s.reason(), Some("CONTROL_PLANE_PAUSED"));
    assert_eq!(
        helm_verbs(&e),
        vec!["status"],
        "no helm upgrade of a paused vcluster"
    );
}

// ---- helm recovery and errors ----

#[tokio::test]
async fn a_release_stuck_in_pending_install_is_uninstalled_then_installed() {
    let e = env();
    running(&e, 1).await;
    set_helm_status(&e.dir, "ovc-p-demo", "demo", "pending-install").expect("status");
    let rev = e
        .host
        .install_release(&ctx("install_release"), &t(), &values(1))
        .await
        .expect("install");
    assert_eq!(rev, 1, "a fresh install");
    assert_eq!(
        helm_verbs(&e),
        vec!["status", "uninstall", "status", "upgrade", "status"]
    );
}

#[tokio::test]
async fn a_release_stuck_in_pending_upgrade_is_rolled_back() {
    let e = env();
    running(&e, 1).await;
    set_helm_status(&e.dir, "ovc-p-demo", "demo", "pending-upgrade").expect("status");
    assert_eq!(
        e.host
            .install_release(&ctx("install_release"), &t(), &values(1))
            .await,
        Ok(1)
    );
    assert_eq!(
        helm_verbs(&e),
        vec!["status", "rollback", "status"],
        "rolled back to the same values: nothing more"
    );
    set_helm_status(&e.dir, "ovc-p-demo", "demo", "pending-rollback").expect("status");
    clear(&e);
    assert_eq!(
        e.host
            .install_release(&ctx("install_release"), &t(), &values(3))
            .await,
        Ok(2)
    );
    assert_eq!(
        helm_verbs(&e),
        vec!["status", "rollback", "status", "upgrade", "status"]
    );
}

#[tokio::test]
async fn a_missing_or_old_helm_is_a_clear_permanent_error() {
    let e = env();
    let missing = ovc_driver::kube::fake::FakeCluster::new(&e.dir)
        .driver(std::path::Path::new("/nonexistent/helm"));
    e.host
        .ensure_namespace(&ctx("c"), &t(), &owner())
        .await
        .expect("ns");
    let s = permanent(missing.install_release(&ctx("i"), &t(), &values(1)).await);
    assert!(
        s.message.contains("helm not found") && s.message.contains("OVC_HELM"),
        "{}",
        s.message
    );
    std::fs::write(e.dir.join("version"), "v2.17.0+ga690bad\n").expect("version");
    let old = e.fake.driver(&e.dir.join("helm"));
    let s = permanent(old.install_release(&ctx("i"), &t(), &values(1)).await);
    assert!(
        s.message.contains("v2.17.0") && s.message.contains("Helm v3"),
        "{}",
        s.message
    );
}

#[tokio::test]
async fn api_errors_map_to_transient_or_permanent() {
    let e = env();
    let c = ctx("x");
    e.fake.fail_next(
        "GET",
        "/namespaces/ovc-p-demo",
        429,
        "TooManyRequests",
        Some(7),
    );
    match e.host.namespace_exists(&c, &t()).await {
        Err(DriverError::Transient { retry_after, .. }) => {
            assert_eq!(retry_after, Some(Duration::from_secs(7)))
        }
        other => panic!("429 is transient with Retry-After: {other:?}"),
    }
    e.fake.fail_next(
        "GET",
        "/namespaces/ovc-p-demo",
        503,
        "ServiceUnavailable",
        None,
    );
    assert!(matches!(
        e.host.namespace_exists(&c, &t()).await,
        Err(DriverError::Transient { .. })
    ));
    e.fake
        .fail_next("GET", "/namespaces/ovc-p-demo", 403, "Forbidden", None);
    let s = permanent(e.host.namespace_exists(&c, &t()).await);
    assert_eq!(s.code, Code::FailedPrecondition);
    assert!(
        s.message.contains("injected by the test"),
        "the server's message: {}",
        s.message
    );
    e.fake.fail_next("POST", NS, 422, "Invalid", None);
    assert_eq!(
        permanent(e.host.ensure_namespace(&c, &t(), &owner()).await).code,
        Code::InvalidArgument
    );
    // 404 on a removal is success.
    assert_eq!(e.host.delete_namespace(&c, &t()).await, Ok(true));
    // Connection refused: transient.
    let config = kube::Config::new("http://127.0.0.1:9".parse().expect("uri"));
    let client = kube::Client::try_from(config).expect("client");
    let unreachable = KubeHost::new(client, Default::default());
    assert!(matches!(
        unreachable.namespace_exists(&c, &t()).await,
        Err(DriverError::Transient { .. })
    ));
    let mapped: DriverError = KubeError::Timeout {
        what: "GET x".into(),
        after: Duration::from_secs(1),
    }
    .into();
    assert!(matches!(mapped, DriverError::Transient { .. }));
}

// ---- snapshot ----

fn options() -> Value {
    json!({"type": "s3", "s3": {"bucket": "b", "key": "k", "accessKeyID": "AKIA", "secretAccessKey": "s3cr3t"}})
}

#[tokio::test]
async fn snapshot_posts_a_secret_and_a_configmap_and_polls_the_phase() {
    let e = env();
    running(&e, 1).await;
    let url = "s3://b/snapshots/p/demo/op-1";
    assert_eq!(
        e.host.request_snapshot(&t(), url, &options()).await,
        Ok(SnapshotPhase::Pending)
    );
    let w = e.fake.writes();
    assert_eq!(
        lines(&w),
        vec![format!("POST {SECRETS}"), format!("POST {CMS}")]
    );
    let labels = json!({"vcluster.loft.sh/snapshot-request": "", "vcluster.loft.sh/vcluster-name": "demo", "vcluster.loft.sh/vcluster-namespace": "ovc-p-demo"});
    let secret = w[0].body.clone().expect("secret");
    assert_eq!(secret["metadata"]["generateName"], "demo-snapshot-request-");
    assert_eq!(secret["metadata"]["labels"], labels);
    use base64::Engine;
    let opts = base64::engine::general_purpose::STANDARD
        .decode(secret["data"]["snapshotOptions"].as_str().expect("b64"))
        .expect("decode");
    assert_eq!(
        serde_json::from_slice::<Value>(&opts).expect("json"),
        options()
    );
    let cm = w[1].body.clone().expect("cm");
    assert_eq!(
        cm["metadata"]["name"], "demo-snapshot-request-00001",
        "named after the Secret"
    );
    assert_eq!(cm["metadata"]["labels"], labels);
    let req: Value =
        serde_json::from_str(cm["data"]["snapshotRequest"].as_str().expect("s")).expect("json");
    assert_eq!(req["spec"], json!({"url": url}));
    assert_eq!(req["status"], json!({}));
    assert_eq!(req["metadata"]["name"], "demo-snapshot-request-00001");
    for r in e.fake.requests() {
        assert!(
            !r.line().contains("s3cr3t"),
            "credentials never in a path or query"
        );
    }
    clear(&e);
    assert_eq!(
        e.host.request_snapshot(&t(), url, &options()).await,
        Ok(SnapshotPhase::Pending)
    );
    assert!(
        e.fake.writes().is_empty(),
        "the same URL again: the request is found, not repeated"
    );
    assert!(e.fake.requests().iter().any(|r| r.line() == format!("GET {CMS}?labelSelector=vcluster.loft.sh/snapshot-request,vcluster.loft.sh/vcluster-name=demo")));
    e.fake.settle();
    assert_eq!(
        e.host.snapshot_phase(&t(), url).await,
        Ok(Some(SnapshotPhase::Completed))
    );
    assert_eq!(e.host.snapshot_phase(&t(), "s3://b/other").await, Ok(None));
    // Undo: the request goes (finalizer kept while the vcluster runs; its controller removes it).
    e.host
        .delete_snapshot_request(&t(), url)
        .await
        .expect("delete request");
    e.host
        .delete_snapshot_request(&t(), url)
        .await
        .expect("again");
}

#[tokio::test]
async fn snapshot_refuses_a_paused_control_plane_and_a_deployed_etcd() {
    let e = env();
    running(&e, 1).await;
    e.host
        .pause_control_plane(&ctx("p"), &t())
        .await
        .expect("pause");
    clear(&e);
    let r = e.host.request_snapshot(&t(), "s3://b/k", &options()).await;
    assert!(
        matches!(
            &r,
            Err(KubeError::Refused {
                reason: "CONTROL_PLANE_PAUSED",
                ..
            })
        ),
        "{r:?}"
    );
    e.host
        .resume_control_plane(&ctx("r"), &t())
        .await
        .expect("resume");
    e.fake.insert(STS, json!({"metadata": {"name": "demo-etcd", "labels": {"app": "vcluster-etcd", "release": "demo"}}, "spec": {"replicas": 1, "selector": {}, "template": {}, "serviceName": "x"}}));
    clear(&e);
    let r = e.host.request_snapshot(&t(), "s3://b/k", &options()).await;
    assert!(
        matches!(
            &r,
            Err(KubeError::Refused {
                reason: "SNAPSHOT_UNSUPPORTED",
                ..
            })
        ),
        "{r:?}"
    );
    assert!(e.fake.writes().is_empty());
}

// ---- restore ----

#[tokio::test]
async fn restore_pauses_runs_the_restore_pod_and_resumes() {
    let e = env();
    e.fake.set_workloads("ovc-p-demo", "demo", 1);
    running(&e, 3).await;
    e.fake.settle();
    clear(&e);
    let url = "s3://b/snapshots/p/demo/snap-1";
    assert_eq!(
        e.host.restore(&t(), url, &options(), false).await,
        Ok(RestoreProgress::Running)
    );
    let w = e.fake.writes();
    let l = lines(&w);
    assert_eq!(l[0], format!("PATCH {STS}/demo"));
    assert_eq!(
        w[0].body.as_ref().unwrap()["metadata"]["annotations"]["loft.sh/restoring"],
        "true"
    );
    assert_eq!(w[0].body.as_ref().unwrap()["spec"]["replicas"], 0);
    assert_eq!(l[1], format!("DELETE {PODS}/web-0-x-default-x-demo"));
    assert_eq!(
        l[2..4].to_vec(),
        vec![
            format!("DELETE {PVCS}/data-demo-1"),
            format!("DELETE {PVCS}/data-demo-2")
        ],
        "HA: every PVC not ending -0"
    );
    assert!(l[4].starts_with(&format!("POST {SECRETS}")));
    let secret = w[4].body.clone().unwrap();
    assert_eq!(
        secret["metadata"]["annotations"]["ovc.dev/new-vcluster"], "false",
        "the Secret remembers the kind of restore before the hold is lifted"
    );
    assert_eq!(
        l[5], "DELETE /api/v1/namespaces/ovc-p-demo/resourcequotas/vcluster-restore",
        "the quota goes only after the Secret is written"
    );
    let id = secret["metadata"]["name"]
        .as_str()
        .unwrap()
        .trim_start_matches("vcluster-snapshot-options-")
        .to_owned();
    assert_eq!(l[6], format!("POST {PODS}"));
    let pod = w[6].body.clone().unwrap();
    assert_eq!(pod["metadata"]["name"], format!("vcluster-snapshot-{id}"));
    assert_eq!(pod["metadata"]["labels"]["app"], "vcluster-snapshot");
    assert_eq!(pod["spec"]["restartPolicy"], "Never");
    assert_eq!(pod["spec"]["serviceAccountName"], "vc-demo");
    let c = &pod["spec"]["containers"][0];
    assert_eq!(c["name"], "snapshot");
    assert_eq!(c["image"], "ghcr.io/loft-sh/vcluster-pro:0.29.1");
    assert_eq!(c["command"], json!(["/vcluster", "restore"]));
    assert!(
        c["env"]
            .as_array()
            .unwrap()
            .contains(&json!({"name": "POD_NAME", "value": "demo-0"}))
    );
    assert!(
        pod["spec"]["volumes"].as_array().unwrap().contains(
            &json!({"name": "data", "persistentVolumeClaim": {"claimName": "data-demo-0"}})
        )
    );
    assert_eq!(
        l[7],
        format!("PATCH {SECRETS}/vcluster-snapshot-options-{id}")
    );
    let owners = &w[7].body.as_ref().unwrap()["metadata"]["ownerReferences"];
    let pod_uid = e
        .fake
        .object(PODS, &format!("vcluster-snapshot-{id}"))
        .unwrap()["metadata"]["uid"]
        .clone();
    assert_eq!(
        owners,
        &json!([{"apiVersion": "v1", "kind": "Pod", "name": format!("vcluster-snapshot-{id}"), "uid": pod_uid}]),
        "the restore pod owns its options Secret"
    );
    assert_eq!(l.len(), 8);
    e.fake.shelf().put("s3://b/k", b"{}".to_vec());
    clear(&e);
    assert_eq!(
        e.host.restore(&t(), url, &options(), false).await,
        Ok(RestoreProgress::Running)
    );
    assert!(
        e.fake.writes().is_empty(),
        "a running restore pod is only looked at"
    );
    e.fake.settle();
    clear(&e);
    assert_eq!(
        e.host.restore(&t(), url, &options(), false).await,
        Ok(RestoreProgress::Done)
    );
    let l = lines(&e.fake.writes());
    assert_eq!(
        l,
        vec![
            format!("DELETE {PODS}/vcluster-snapshot-{id}"),
            format!("DELETE {SECRETS}/vcluster-snapshot-options-{id}"),
            format!("PATCH {STS}/demo"),
        ]
    );
    let sts = e.fake.object(STS, "demo").unwrap();
    assert_eq!(sts["spec"]["replicas"], 3);
    assert!(
        sts["metadata"]["annotations"]
            .get("loft.sh/restoring")
            .is_none()
    );
}

#[tokio::test]
async fn restore_into_a_new_vcluster_blocks_its_pods_with_a_quota_first() {
    let e = env();
    e.host
        .ensure_namespace(&ctx("c"), &t(), &owner())
        .await
        .expect("ns");
    clear(&e);
    e.host.block_new_control_plane(&t()).await.expect("quota");
    let w = e.fake.writes();
    assert_eq!(
        lines(&w),
        vec!["POST /api/v1/namespaces/ovc-p-demo/resourcequotas".to_string()]
    );
    assert_eq!(
        w[0].body.as_ref().unwrap()["metadata"]["name"],
        "vcluster-restore"
    );
    assert_eq!(
        w[0].body.as_ref().unwrap()["spec"],
        json!({"hard": {"pods": "0"}})
    );
    e.host
        .block_new_control_plane(&t())
        .await
        .expect("a repeat: 409 is fine");
}

#[tokio::test]
async fn a_failed_restore_pod_resumes_and_fails_permanently() {
    let e = env();
    running(&e, 1).await;
    e.fake.fail_restores();
    e.fake.shelf().put("s3://b/k", b"{}".to_vec());
    assert_eq!(
        e.host.restore(&t(), "s3://b/k", &options(), true).await,
        Ok(RestoreProgress::Running)
    );
    e.fake.settle();
    let r = e.host.restore(&t(), "s3://b/k", &options(), true).await;
    assert!(
        matches!(
            &r,
            Err(KubeError::Refused {
                reason: "RESTORE_FAILED",
                message,
                ..
            }) if message.contains("exit code 1: restore failed (injected)")
        ),
        "{r:?}"
    );
    let sts = e.fake.object(STS, "demo").unwrap();
    assert_eq!(sts["spec"]["replicas"], 1, "resumed even on failure");
}

// ---- delete ----

#[tokio::test]
async fn delete_uninstalls_cleans_pvcs_and_request_finalizers_and_the_namespace() {
    let e = env();
    running(&e, 1).await;
    e.host
        .request_snapshot(&t(), "s3://b/k", &options())
        .await
        .expect("snapshot");
    e.fake.settle();
    e.fake
        .insert(PVCS, json!({"metadata": {"name": "data-demo-etcd-0"}}));
    e.fake
        .insert(PVCS, json!({"metadata": {"name": "keep-me"}}));
    clear(&e);
    let c = ctx("uninstall_release");
    e.host.uninstall_release(&c, &t()).await.expect("uninstall");
    assert_eq!(helm_verbs(&e), vec!["uninstall"]);
    let w = e.fake.writes();
    assert_eq!(
        lines(&w),
        vec![
            format!("DELETE {PVCS}/data-demo-0"),
            format!("DELETE {PVCS}/data-demo-etcd-0"),
            format!("PATCH {CMS}/demo-snapshot-request-00001"),
            format!("DELETE {CMS}/demo-snapshot-request-00001"),
        ]
    );
    assert_eq!(w[2].body, Some(json!({"metadata": {"finalizers": []}})));
    assert_eq!(
        w[2].content_type.as_deref(),
        Some("application/merge-patch+json")
    );
    assert!(e.fake.object(PVCS, "keep-me").is_some());
    clear(&e);
    e.host.uninstall_release(&c, &t()).await.expect("again");
    assert!(e.fake.writes().is_empty(), "a repeat changes nothing");
    e.fake.settle();
    clear(&e);
    let c = ctx("delete_namespace");
    assert_eq!(
        e.host.delete_namespace(&c, &t()).await,
        Ok(false),
        "terminating"
    );
    assert_eq!(
        lines(&e.fake.writes()),
        vec![format!("DELETE {NS}/ovc-p-demo")]
    );
    clear(&e);
    assert_eq!(e.host.delete_namespace(&c, &t()).await, Ok(false));
    assert!(
        e.fake.writes().is_empty(),
        "terminating: waited, not deleted again"
    );
    e.fake.settle();
    assert_eq!(e.host.delete_namespace(&c, &t()).await, Ok(true));
}

#[tokio::test]
async fn delete_leaves_a_namespace_ovc_did_not_create() {
    let e = env();
    e.fake.insert(NS, json!({"metadata": {"name": "ovc-p-demo", "labels": {"app.kubernetes.io/managed-by": "ovc"}}}));
    assert_eq!(e.host.delete_namespace(&ctx("d"), &t()).await, Ok(true));
    assert!(
        e.fake.writes().is_empty(),
        "no vcluster.loft.sh/created annotation: never deleted"
    );
}

// ---- snapshot and restore through the trait (by location) ----

const SECRET_KEY: &str = "wJalrXUtnFEMI-K7MDENG-bPxRfiCY";

fn credentials() -> StorageCredentials {
    StorageCredentials::from_vars([
        ("AWS_ACCESS_KEY_ID".to_string(), "AKIDEXAMPLE42".to_string()),
        ("AWS_SECRET_ACCESS_KEY".to_string(), SECRET_KEY.to_string()),
    ])
}

fn location(key: &str) -> ObjectLocation {
    ObjectLocation::S3 {
        bucket: "snaps".into(),
        key: format!("snapshots/p/demo/{key}/backing-store.bin"),
        region: "us-east-1".into(),
        endpoint: Some("http://minio.storage:9000".into()),
        path_style: true,
    }
}

/// The fake's controllers run every few milliseconds while `fut` waits on them.
async fn with_controllers<T>(e: &Env, fut: impl std::future::Future<Output = T>) -> T {
    let fake = e.fake.clone();
    let controllers = tokio::spawn(async move {
        loop {
            tokio::time::sleep(Duration::from_millis(5)).await;
            fake.settle();
        }
    });
    let r = fut.await;
    controllers.abort();
    r
}

#[tokio::test]
async fn dump_asks_the_vcluster_to_write_to_the_artifact_location_and_adopts_the_object() {
    let mut e = env();
    e.host = e.host.clone().with_storage_credentials(credentials());
    running(&e, 1).await;
    let shelf = e.fake.shelf();
    let mut sink = shelf.sink(location("op-1"));
    let n = with_controllers(
        &e,
        e.host
            .dump_backing_store(&ctx("upload_snapshot"), &t(), &mut sink),
    )
    .await
    .expect("dump");
    let object = shelf
        .get("s3://snaps/snapshots/p/demo/op-1/backing-store.bin")
        .expect("the vcluster wrote the object");
    assert_eq!(
        n,
        object.len() as u64,
        "the size of the object the vcluster wrote"
    );
    let data: Value = serde_json::from_slice(&object).expect("archive");
    assert_eq!(data, e.fake.virtual_data("ovc-p-demo", "demo").unwrap());
    // vcluster's own archive: no per-object export, and the manifest will say why.
    let why = sink
        .objects_unavailable
        .as_deref()
        .expect("a reason for no export");
    assert!(why.contains("vcluster wrote this snapshot itself"), "{why}");
    assert_eq!(
        sink.info.as_ref().map(|i| i.kind.as_str()),
        Some("vcluster")
    );

    let reqs = e.fake.requests();
    let w: Vec<&RecordedRequest> = reqs.iter().filter(|r| !r.is_read()).collect();
    assert_eq!(
        w.iter().map(|r| r.line()).collect::<Vec<_>>(),
        vec![format!("POST {SECRETS}"), format!("POST {CMS}")]
    );
    let labels = json!({"vcluster.loft.sh/snapshot-request": "", "vcluster.loft.sh/vcluster-name": "demo", "vcluster.loft.sh/vcluster-namespace": "ovc-p-demo"});
    let secret = w[0].body.clone().unwrap();
    assert_eq!(secret["metadata"]["generateName"], "demo-snapshot-request-");
    assert_eq!(secret["metadata"]["labels"], labels);
    use base64::Engine;
    let options: Value = serde_json::from_slice(
        &base64::engine::general_purpose::STANDARD
            .decode(secret["data"]["snapshotOptions"].as_str().unwrap())
            .unwrap(),
    )
    .unwrap();
    assert_eq!(options["type"], "s3");
    assert_eq!(
        options["s3"],
        json!({"bucket": "snaps", "key": "snapshots/p/demo/op-1/backing-store.bin",
               "region": "us-east-1", "url": "http://minio.storage:9000", "force-path-style": true,
               "access-key-id": "AKIDEXAMPLE42", "secret-access-key": SECRET_KEY})
    );
    assert_eq!(options["release"]["releaseName"], "demo");
    assert_eq!(options["release"]["chartName"], "vcluster");
    let cm = w[1].body.clone().unwrap();
    assert_eq!(cm["metadata"]["labels"], labels);
    let req: Value = serde_json::from_str(cm["data"]["snapshotRequest"].as_str().unwrap()).unwrap();
    let endpoint = base64::engine::general_purpose::STANDARD.encode("http://minio.storage:9000");
    let url = format!(
        "s3://snaps/snapshots/p/demo/op-1/backing-store.bin?region=us-east-1&url={}&force-path-style=true",
        endpoint
            .replace('=', "%3D")
            .replace('+', "%2B")
            .replace('/', "%2F")
    );
    assert_eq!(req["spec"]["url"], json!(url));
    let cm_text = cm.to_string();
    assert!(
        !cm_text.contains(SECRET_KEY) && !cm_text.contains("AKIDEXAMPLE42"),
        "no credentials in the ConfigMap"
    );
    assert!(
        reqs.iter().any(|r| r.line()
            == format!("GET {CMS}?labelSelector=vcluster.loft.sh/snapshot-request,vcluster.loft.sh/vcluster-name=demo")),
        "polled by label"
    );

    // The step again (its journal entry was lost): the completed request is found by
    // its URL, no second request object.
    clear(&e);
    let mut sink = shelf.sink(location("op-1"));
    let again = e
        .host
        .dump_backing_store(&ctx("upload_snapshot"), &t(), &mut sink)
        .await;
    assert_eq!(again, Ok(n));
    assert!(
        e.fake.writes().is_empty(),
        "a retry creates nothing: {:?}",
        lines(&e.fake.writes())
    );
}

#[tokio::test]
async fn a_failed_snapshot_request_is_permanent_with_the_servers_message_and_no_credentials() {
    let mut e = env();
    e.host = e.host.clone().with_storage_credentials(credentials());
    running(&e, 1).await;
    e.fake.fail_snapshots(&format!(
        "operation error S3: PutObject, https response error StatusCode: 403, InvalidAccessKeyId for {SECRET_KEY}"
    ));
    let mut sink = e.fake.shelf().sink(location("op-2"));
    let s = permanent(
        with_controllers(
            &e,
            e.host
                .dump_backing_store(&ctx("upload_snapshot"), &t(), &mut sink),
        )
        .await,
    );
    assert_eq!(
        (s.code, s.reason()),
        (Code::FailedPrecondition, Some("SNAPSHOT_FAILED"))
    );
    assert!(s.message.contains("InvalidAccessKeyId"), "{}", s.message);
    assert!(
        !s.message.contains(SECRET_KEY),
        "credentials masked: {}",
        s.message
    );
    assert!(!s.message.contains("AKIDEXAMPLE42"), "{}", s.message);
    // Retried: still the same verdict, and still one request.
    let again = permanent(
        e.host
            .dump_backing_store(&ctx("upload_snapshot"), &t(), &mut sink)
            .await,
    );
    assert_eq!(again.reason(), Some("SNAPSHOT_FAILED"));
    assert_eq!(
        e.fake.names(CMS).len(),
        1,
        "one request object, whatever the retries"
    );
}

#[tokio::test]
async fn a_snapshot_outlasting_the_deadline_is_transient_and_the_retry_reuses_the_request() {
    let e = env();
    running(&e, 1).await;
    let mut sink = e.fake.shelf().sink(location("op-3"));
    // No controller runs: the request stays pending.
    let c = ctx("upload_snapshot")
        .with_deadline(std::time::Instant::now() + Duration::from_millis(100));
    match e.host.dump_backing_store(&c, &t(), &mut sink).await {
        Err(DriverError::Transient { message, .. }) => {
            assert!(message.contains("not started"), "{message}")
        }
        other => panic!("{other:?}"),
    }
    let n = with_controllers(
        &e,
        e.host
            .dump_backing_store(&ctx("upload_snapshot"), &t(), &mut sink),
    )
    .await
    .expect("the retry completes");
    assert!(n > 0);
    assert_eq!(
        e.fake.names(CMS).len(),
        1,
        "the retry found the first request"
    );
}

#[tokio::test]
async fn snapshots_are_refused_to_a_store_the_pod_cannot_reach_and_for_a_paused_vcluster() {
    let e = env();
    running(&e, 1).await;
    let mut local = ovc_driver::MemorySink::default();
    let s = permanent(e.host.dump_backing_store(&ctx("s"), &t(), &mut local).await);
    assert_eq!(
        (s.code, s.reason()),
        (
            Code::FailedPrecondition,
            Some("SNAPSHOT_STORAGE_UNREACHABLE")
        )
    );
    let shelf = e.fake.shelf();
    let mut gcs = shelf.sink(ObjectLocation::Gcs {
        bucket: "b".into(),
        key: "k".into(),
        endpoint: None,
    });
    let s = permanent(e.host.dump_backing_store(&ctx("s"), &t(), &mut gcs).await);
    assert_eq!(s.reason(), Some("SNAPSHOT_STORAGE_UNREACHABLE"));
    e.host
        .pause_control_plane(&ctx("pause"), &t())
        .await
        .expect("pause");
    let mut sink = shelf.sink(location("op-4"));
    let s = permanent(e.host.dump_backing_store(&ctx("s"), &t(), &mut sink).await);
    assert_eq!(s.reason(), Some("CONTROL_PLANE_PAUSED"));
    assert!(
        e.fake
            .writes()
            .iter()
            .all(|w| !w.path.contains("/secrets") && !w.path.contains("/configmaps")),
        "no request objects for a refused snapshot"
    );
}

#[tokio::test]
async fn load_restores_over_an_existing_vcluster_through_the_restore_pod() {
    let e = env();
    running(&e, 1).await;
    let shelf = e.fake.shelf();
    let snapshot = json!({"configmaps/default/origin": {"data": {"created-in": "elsewhere"}}});
    shelf.put(
        &location("snap-1").url(),
        serde_json::to_vec(&snapshot).unwrap(),
    );
    e.host
        .pause_control_plane(&ctx("pause_control_plane"), &t())
        .await
        .expect("pause");
    clear(&e);
    let mut source = shelf.source(location("snap-1")).expect("object");
    let n = with_controllers(
        &e,
        e.host
            .load_backing_store(&ctx("load_backing_store"), &t(), &mut source),
    )
    .await
    .expect("load");
    assert_eq!(n, serde_json::to_vec(&snapshot).unwrap().len() as u64);
    assert_eq!(e.fake.virtual_data("ovc-p-demo", "demo"), Some(snapshot));
    let w = e.fake.writes();
    let pod = w
        .iter()
        .find(|r| r.line() == format!("POST {PODS}"))
        .and_then(|r| r.body.clone())
        .expect("restore pod");
    assert_eq!(
        pod["spec"]["containers"][0]["command"],
        json!(["/vcluster", "restore"]),
        "over an existing vcluster: no --new-vcluster"
    );
    let sts = e.fake.object(STS, "demo").unwrap();
    assert_eq!(sts["spec"]["replicas"], 1, "resumed");
    assert!(
        e.fake
            .names(PODS)
            .iter()
            .all(|p| !p.starts_with("vcluster-snapshot-"))
    );
    assert!(
        e.fake
            .names(SECRETS)
            .iter()
            .all(|s| !s.starts_with("vcluster-snapshot-options-"))
    );
}

#[tokio::test]
async fn restore_into_a_new_vcluster_holds_it_with_the_quota_and_passes_new_vcluster() {
    let e = env();
    let shelf = e.fake.shelf();
    shelf.put(&location("snap-2").url(), b"{\"x\":1}".to_vec());
    e.host
        .ensure_namespace(&ctx("create_namespace"), &t(), &owner())
        .await
        .expect("ns");
    e.host
        .hold_new_control_plane(&ctx("hold_control_plane"), &t(), true)
        .await
        .expect("hold");
    assert!(
        e.fake
            .object(
                "/api/v1/namespaces/ovc-p-demo/resourcequotas",
                "vcluster-restore"
            )
            .is_some()
    );
    e.host
        .install_release(&ctx("install_release"), &t(), &values(1))
        .await
        .expect("install");
    e.fake.settle();
    e.host
        .pause_control_plane(&ctx("pause_control_plane"), &t())
        .await
        .expect("pause");
    clear(&e);
    let mut source = shelf.source(location("snap-2")).expect("object");
    with_controllers(
        &e,
        e.host
            .load_backing_store(&ctx("load_backing_store"), &t(), &mut source),
    )
    .await
    .expect("load");
    let l = lines(&e.fake.writes());
    let secret = l
        .iter()
        .position(|x| x == &format!("POST {SECRETS}"))
        .expect("secret");
    let quota = l
        .iter()
        .position(|x| x == "DELETE /api/v1/namespaces/ovc-p-demo/resourcequotas/vcluster-restore")
        .expect("the hold is lifted");
    let pod = l
        .iter()
        .position(|x| x == &format!("POST {PODS}"))
        .expect("pod");
    assert!(
        secret < quota && quota < pod,
        "Secret, then the quota goes, then the pod: {l:?}"
    );
    let body = e.fake.writes()[pod].body.clone().unwrap();
    assert_eq!(
        body["spec"]["containers"][0]["command"],
        json!(["/vcluster", "restore", "--new-vcluster"])
    );
    assert_eq!(
        e.fake.virtual_data("ovc-p-demo", "demo"),
        Some(json!({"x": 1}))
    );
    // The undo of the hold on a namespace without it: fine.
    e.host
        .hold_new_control_plane(&ctx("undo:hold_control_plane"), &t(), false)
        .await
        .expect("unhold is idempotent");
}

#[tokio::test]
async fn a_canceled_snapshot_request_is_removed_and_asked_for_again() {
    let e = env();
    running(&e, 1).await;
    let mut sink = e.fake.shelf().sink(location("op-5"));
    let short = || {
        ctx("upload_snapshot").with_deadline(std::time::Instant::now() + Duration::from_millis(60))
    };
    assert!(matches!(
        e.host.dump_backing_store(&short(), &t(), &mut sink).await,
        Err(DriverError::Transient { .. })
    ));
    let first = e.fake.names(CMS);
    assert_eq!(first.len(), 1);
    // A newer request for the same URL made vcluster cancel this one.
    let cm = e.fake.object(CMS, &first[0]).unwrap();
    let mut req: Value =
        serde_json::from_str(cm["data"]["snapshotRequest"].as_str().unwrap()).unwrap();
    req["status"] = json!({"phase": "Canceled"});
    e.fake.patch(
        CMS,
        &first[0],
        &json!({"data": {"snapshotRequest": req.to_string()}}),
    );
    match e.host.dump_backing_store(&short(), &t(), &mut sink).await {
        Err(DriverError::Transient { message, .. }) => {
            assert!(message.contains("canceled"), "{message}")
        }
        other => panic!("canceled → transient: {other:?}"),
    }
    assert!(
        e.fake.names(CMS).is_empty(),
        "the canceled request was removed"
    );
    with_controllers(
        &e,
        e.host
            .dump_backing_store(&ctx("upload_snapshot"), &t(), &mut sink),
    )
    .await
    .expect("asked again, completed");
    let now = e.fake.names(CMS);
    assert_eq!(now.len(), 1);
    assert_ne!(now, first, "a new request");
}

/// What UPGRADE asks of the driver: `upgrade_release` installs the new chart version
/// with the new values, its undo installs the old ones (Helm's rollback, as a new
/// revision). The chart version reaches helm as `--version` and comes back in the
/// release.
#[tokio::test]
async fn an_upgrade_installs_the_new_chart_version_and_its_undo_the_old_one() {
    let e = env();
    running(&e, 1).await;
    let version_flag = |e: &Env| {
        let up = helm_calls(&e.dir)
            .into_iter()
            .find(|c| c[0] == "upgrade")
            .expect("a helm upgrade");
        let at = up.iter().position(|a| a == "--version").expect("--version");
        up[at + 1].clone()
    };
    for (revision, chart, kubernetes) in [(2, "0.30.0", "1.32"), (3, "0.29.1", "1.31")] {
        clear(&e);
        let mut next = values(1);
        next.chart_version = Some(chart.into());
        next.kubernetes_version = kubernetes.into();
        assert_eq!(
            e.host
                .install_release(&ctx("upgrade_release"), &t(), &next)
                .await,
            Ok(revision),
            "{chart}"
        );
        assert_eq!(version_flag(&e), chart);
        assert!(e.fake.writes().is_empty(), "versions go through helm only");
        e.fake.settle();
        let info = e
            .host
            .release(&ctx("check_versions"), &t())
            .await
            .expect("release")
            .expect("installed");
        assert_eq!(info.revision, revision);
        assert_eq!(info.chart_version, chart);
        assert_eq!(info.values.kubernetes_version, kubernetes);
    }
}
