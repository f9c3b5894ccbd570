//! Black-box tests of the gRPC API (package `ovc.v1`): the built `ovc` binary (`ovc dev`,
//! or `ovc serve --auth token`) driven with the generated tonic clients of
//! `ovc_api::grpc::proto` — the lifecycle, API.md's status codes, idempotency, auth,
//! the resumable event stream and reflection.

use futures::StreamExt;
use ovc_api::grpc::proto;
use ovc_api::grpc::proto::event_service_client::EventServiceClient;
use ovc_api::grpc::proto::operation_service_client::OperationServiceClient;
use ovc_api::grpc::proto::v_cluster_service_client::VClusterServiceClient;
use ovc_tests::dev::DevServer;
use ovc_tests::ovc_bin;
use std::io::{Read, Write};
use std::process::Command;
use std::time::Duration;
use tonic::transport::Channel;
use tonic::{Code, Request};
use tonic_types::StatusExt;

/// A running `ovc dev` or `ovc serve`, killed on drop.
type Server = DevServer;

/// `ovc dev` on free ports, with its own data directory.
fn start_dev(data: &std::path::Path) -> Server {
    DevServer::start(data, &[], &[])
}

/// `ovc serve --auth token` on free ports over the SQLite database `url`.
fn start_serve(url: &str) -> Server {
    DevServer::serve(&["--database-url", url, "--auth", "token"])
}

async fn channel(server: &Server) -> Channel {
    Channel::from_shared(server.grpc.clone())
        .expect("uri")
        .connect()
        .await
        .expect("connect to the gRPC API")
}

struct Clients {
    vc: VClusterServiceClient<Channel>,
    ops: OperationServiceClient<Channel>,
    events: EventServiceClient<Channel>,
}

async fn clients(server: &Server) -> Clients {
    let ch = channel(server).await;
    Clients {
        vc: VClusterServiceClient::new(ch.clone()),
        ops: OperationServiceClient::new(ch.clone()),
        events: EventServiceClient::new(ch),
    }
}

/// The reason of an error, from the `ovc-reason` metadata; also checks that the
/// google.rpc.ErrorInfo detail carries the same reason.
fn reason(s: &tonic::Status) -> String {
    let meta = s
        .metadata()
        .get("ovc-reason")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_string();
    let info = s.get_error_details();
    let info = info
        .error_info()
        .map(|i| (i.reason.clone(), i.domain.clone()));
    if !meta.is_empty() {
        assert_eq!(info, Some((meta.clone(), "ovc.v1".to_string())), "{s:?}");
    }
    meta
}

fn expect_code<T: std::fmt::Debug>(r: Result<T, tonic::Status>, code: Code) -> tonic::Status {
    match r {
        Ok(v) => panic!("expected {code:?}, got {v:?}"),
        Err(s) => {
            assert_eq!(s.code(), code, "{s:?}");
            assert!(!s.message().is_empty(), "{s:?}");
            s
        }
    }
}

/// Waits with WaitOperation until the operation is done; returns it.
async fn wait(c: &mut Clients, op: &proto::Operation) -> proto::Operation {
    let done = c
        .ops
        .wait_operation(proto::WaitOperationRequest {
            id: op.id.clone(),
            timeout: Some(prost_types::Duration {
                seconds: 30,
                nanos: 0,
            }),
        })
        .await
        .expect("wait operation")
        .into_inner();
    assert!(done.done, "not done after 30 s: {done:?}");
    done
}

/// Follows WatchOperation to its end; returns every version seen.
async fn watch(c: &mut Clients, op: &proto::Operation) -> Vec<proto::Operation> {
    let mut stream = c
        .ops
        .watch_operation(proto::WatchOperationRequest { id: op.id.clone() })
        .await
        .expect("watch operation")
        .into_inner();
    let mut seen = Vec::new();
    loop {
        match tokio::time::timeout(Duration::from_secs(30), stream.next()).await {
            Ok(Some(Ok(o))) => seen.push(o),
            Ok(Some(Err(e))) => panic!("watch failed: {e:?}"),
            Ok(None) => break,
            Err(_) => panic!("watch did not end within 30 s: {seen:?}"),
        }
    }
    seen
}

async fn get_vc(c: &mut Clients, name: &str) -> proto::VCluster {
    c.vc.get_v_cluster(proto::GetVClusterRequest {
        name: name.into(),
        project: String::new(),
    })
    .await
    .unwrap_or_else(|e| panic!("get {name}: {e:?}"))
    .into_inner()
}

async fn create(c: &mut Clients, name: &str) -> proto::Operation {
    c.vc.create_v_cluster(proto::CreateVClusterRequest {
        name: name.into(),
        ..Default::default()
    })
    .await
    .unwrap_or_else(|e| panic!("create {name}: {e:?}"))
    .into_inner()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lifecycle_over_grpc() {
    let dir = tempfile::tempdir().expect("tmp");
    let server = start_dev(&dir.path().join("data"));
    let mut c = clients(&server).await;

    // Create, followed with WatchOperation.
    let spec = proto::VClusterSpec {
        quota: Some(proto::Quota {
            cpu: Some("8".into()),
            ..Default::default()
        }),
        labels: [("env".to_string(), "dev".to_string())].into(),
        ..Default::default()
    };
    let op =
        c.vc.create_v_cluster(proto::CreateVClusterRequest {
            name: "team-a".into(),
            project: String::new(),
            spec: Some(spec),
            request_id: String::new(),
        })
        .await
        .expect("create")
        .into_inner();
    assert_eq!((op.kind.as_str(), op.done), ("CREATE", false), "{op:?}");
    assert_eq!(op.name, format!("operations/{}", op.id));
    let seen = watch(&mut c, &op).await;
    let last = seen.last().expect("at least one version");
    assert_eq!(last.state, "SUCCEEDED", "{last:?}");
    assert!(last.done);
    assert!(
        seen[..seen.len() - 1].iter().all(|o| !o.done),
        "only the last version is done: {seen:?}"
    );
    assert!(!last.steps.is_empty());
    assert!(
        last.steps.iter().all(|s| s.state == "SUCCEEDED"),
        "{last:?}"
    );
    let vc = get_vc(&mut c, "team-a").await;
    assert_eq!(vc.state, "RUNNING");
    let spec = vc.spec.expect("spec");
    assert_eq!(
        spec.quota.as_ref().and_then(|q| q.cpu.as_deref()),
        Some("8")
    );
    assert_eq!(spec.quota.as_ref().and_then(|q| q.pods), Some(50));
    assert_eq!(spec.labels.get("env").map(String::as_str), Some("dev"));
    assert_eq!(spec.distro.as_deref(), Some("k8s"));
    assert_eq!(spec.host.as_deref(), Some("default"));

    // Suspend with snapshot and eviction, then resume.
    let op =
        c.vc.suspend_v_cluster(proto::SuspendVClusterRequest {
            name: "team-a".into(),
            snapshot: true,
            evict_workloads: true,
            ..Default::default()
        })
        .await
        .expect("suspend")
        .into_inner();
    assert_eq!(wait(&mut c, &op).await.state, "SUCCEEDED");
    assert_eq!(get_vc(&mut c, "team-a").await.state, "SUSPENDED");
    let op =
        c.vc.resume_v_cluster(proto::ResumeVClusterRequest {
            name: "team-a".into(),
            ..Default::default()
        })
        .await
        .expect("resume")
        .into_inner();
    assert_eq!(
        watch(&mut c, &op).await.last().map(|o| o.state.as_str()),
        Some("SUCCEEDED")
    );
    assert_eq!(get_vc(&mut c, "team-a").await.state, "RUNNING");

    // Snapshot: the result names the snapshot.
    let op =
        c.vc.snapshot_v_cluster(proto::SnapshotVClusterRequest {
            name: "team-a".into(),
            description: Some("nightly".into()),
            ..Default::default()
        })
        .await
        .expect("snapshot")
        .into_inner();
    let done = wait(&mut c, &op).await;
    assert_eq!(done.state, "SUCCEEDED", "{done:?}");
    let result =
        ovc_api::grpc::struct_to_map(done.result.as_ref().expect("result")).expect("result json");
    let snapshot_id = result["id"].as_str().expect("snapshot_id").to_string();
    let snap =
        c.vc.get_snapshot(proto::GetSnapshotRequest {
            id: snapshot_id.clone(),
        })
        .await
        .expect("get snapshot")
        .into_inner();
    assert_eq!(
        (snap.state.as_str(), snap.vcluster.as_str()),
        ("READY", "team-a")
    );
    assert_eq!(snap.description, "nightly");
    let list =
        c.vc.list_snapshots(proto::ListSnapshotsRequest {
            vcluster: "team-a".into(),
            ..Default::default()
        })
        .await
        .expect("list snapshots")
        .into_inner();
    assert!(
        list.snapshots.iter().any(|s| s.id == snapshot_id),
        "{list:?}"
    );

    // Scale: only the given field changes.
    let op =
        c.vc.scale_v_cluster(proto::ScaleVClusterRequest {
            name: "team-a".into(),
            control_plane: Some(proto::ControlPlane {
                replicas: Some(3),
                ..Default::default()
            }),
            ..Default::default()
        })
        .await
        .expect("scale")
        .into_inner();
    assert_eq!(wait(&mut c, &op).await.state, "SUCCEEDED");
    let vc = get_vc(&mut c, "team-a").await;
    assert_eq!(vc.state, "RUNNING");
    let spec = vc.spec.expect("spec");
    assert_eq!(
        spec.control_plane.as_ref().and_then(|c| c.replicas),
        Some(3)
    );
    assert_eq!(
        spec.quota.as_ref().and_then(|q| q.cpu.as_deref()),
        Some("8")
    );

    // Upgrade: one minor version at a time; a skip is refused with the next version.
    let skip =
        c.vc.upgrade_v_cluster(proto::UpgradeVClusterRequest {
            name: "team-a".into(),
            vcluster_version: Some("0.31.0".into()),
            ..Default::default()
        })
        .await
        .expect_err("skips a minor version");
    assert_eq!(skip.code(), tonic::Code::FailedPrecondition, "{skip:?}");
    assert!(skip.message().contains("next to 0.30"), "{skip:?}");
    let op =
        c.vc.upgrade_v_cluster(proto::UpgradeVClusterRequest {
            name: "team-a".into(),
            vcluster_version: Some("0.30.0".into()),
            kubernetes_version: Some("1.32".into()),
            ..Default::default()
        })
        .await
        .expect("upgrade")
        .into_inner();
    assert_eq!(op.kind, "UPGRADE");
    assert_eq!(wait(&mut c, &op).await.state, "SUCCEEDED");
    let spec = get_vc(&mut c, "team-a").await.spec.expect("spec");
    assert_eq!(
        (
            spec.vcluster_version.as_deref(),
            spec.kubernetes_version.as_deref()
        ),
        (Some("0.30.0"), Some("1.32"))
    );

    // Any registered operation through the generic StartOperation, its REST body as
    // params; an unknown kind or a field the operation does not have is INVALID_ARGUMENT.
    let params = |v: serde_json::Value| ovc_api::grpc::json_to_struct(&v);
    let op =
        c.vc.start_operation(proto::StartOperationRequest {
            name: "team-a".into(),
            kind: "SNAPSHOT".into(),
            params: params(serde_json::json!({"description": "via StartOperation"})),
            ..Default::default()
        })
        .await
        .expect("start operation")
        .into_inner();
    assert_eq!(op.kind, "SNAPSHOT");
    assert_eq!(wait(&mut c, &op).await.state, "SUCCEEDED");
    for (kind, body) in [
        ("EXPLODE", serde_json::json!({})),
        ("SNAPSHOT", serde_json::json!({"colour": "blue"})),
    ] {
        let bad =
            c.vc.start_operation(proto::StartOperationRequest {
                name: "team-a".into(),
                kind: kind.into(),
                params: params(body),
                ..Default::default()
            })
            .await
            .expect_err("refused");
        assert_eq!(bad.code(), tonic::Code::InvalidArgument, "{kind}: {bad:?}");
    }

    // Restore as a new vcluster, then over the existing one.
    use proto::restore_snapshot_request::Target;
    for target in [
        Target::NewName("copy".into()),
        Target::Existing("team-a".into()),
    ] {
        let op =
            c.vc.restore_snapshot(proto::RestoreSnapshotRequest {
                id: snapshot_id.clone(),
                target: Some(target.clone()),
                ..Default::default()
            })
            .await
            .unwrap_or_else(|e| panic!("restore {target:?}: {e:?}"))
            .into_inner();
        assert_eq!(op.kind, "RESTORE");
        assert_eq!(wait(&mut c, &op).await.state, "SUCCEEDED", "{target:?}");
    }
    assert_eq!(get_vc(&mut c, "copy").await.state, "RUNNING");
    assert_eq!(get_vc(&mut c, "team-a").await.state, "RUNNING");

    // The kubeconfig, read live from the host.
    let k =
        c.vc.get_kubeconfig(proto::GetKubeconfigRequest {
            name: "team-a".into(),
            ..Default::default()
        })
        .await
        .expect("kubeconfig")
        .into_inner();
    assert!(k.kubeconfig.contains("kind: Config"), "{}", k.kubeconfig);

    // Delete the snapshot: an operation of its own; team-a is not touched.
    let op =
        c.vc.delete_snapshot(proto::DeleteSnapshotRequest {
            id: snapshot_id.clone(),
            ..Default::default()
        })
        .await
        .expect("delete snapshot")
        .into_inner();
    assert_eq!(op.kind, "DELETE_SNAPSHOT");
    assert_eq!(wait(&mut c, &op).await.state, "SUCCEEDED");
    let snap =
        c.vc.get_snapshot(proto::GetSnapshotRequest {
            id: snapshot_id.clone(),
        })
        .await
        .expect("get snapshot")
        .into_inner();
    assert_eq!(snap.state, "DELETED");
    assert_eq!(get_vc(&mut c, "team-a").await.state, "RUNNING");

    // Delete both; nothing is left in the list.
    for name in ["copy", "team-a"] {
        let op =
            c.vc.delete_v_cluster(proto::DeleteVClusterRequest {
                name: name.into(),
                ..Default::default()
            })
            .await
            .expect("delete")
            .into_inner();
        assert_eq!(wait(&mut c, &op).await.state, "SUCCEEDED", "{name}");
    }
    let list =
        c.vc.list_v_clusters(proto::ListVClustersRequest::default())
            .await
            .expect("list")
            .into_inner();
    assert!(list.vclusters.is_empty(), "{list:?}");
    let ops = c
        .ops
        .list_operations(proto::ListOperationsRequest {
            vcluster: "team-a".into(),
            ..Default::default()
        })
        .await
        .expect("list operations")
        .into_inner();
    // Newest first, as REST.
    let kinds: Vec<&str> = ops.operations.iter().map(|o| o.kind.as_str()).collect();
    assert_eq!(
        kinds,
        [
            "DELETE",
            "DELETE_SNAPSHOT",
            "RESTORE",
            "SNAPSHOT",
            "UPGRADE",
            "SCALE",
            "SNAPSHOT",
            "RESUME",
            "SUSPEND",
            "CREATE"
        ]
    );
    assert!(ops.operations.iter().all(|o| o.state == "SUCCEEDED"));

    // The calls are counted in /metrics by method and code.
    let mut conn = std::net::TcpStream::connect(server.rest_addr()).expect("connect REST");
    write!(
        conn,
        "GET /metrics HTTP/1.1\r\nHost: {}\r\nConnection: close\r\n\r\n",
        server.rest_addr()
    )
    .expect("write");
    let mut metrics = String::new();
    conn.read_to_string(&mut metrics).expect("read");
    let created = metrics
        .lines()
        .find(|l| {
            l.starts_with(
                "ovc_grpc_requests_total{method=\"/ovc.v1.VClusterService/CreateVCluster\",code=\"0\"}",
            )
        })
        .unwrap_or_else(|| panic!("no CreateVCluster count in:\n{metrics}"));
    assert!(created.ends_with(" 1"), "{created}");
}

/// `GET path` on the REST API: the status line's code and the JSON body.
fn rest_get(addr: &str, path: &str) -> (u16, serde_json::Value) {
    let mut s = std::net::TcpStream::connect(addr).expect("connect REST");
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )
    .expect("write");
    let mut text = String::new();
    s.read_to_string(&mut text).expect("read");
    let code = text
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .expect("status code");
    let body = text.split("\r\n\r\n").nth(1).unwrap_or_default();
    (code, serde_json::from_str(body).expect("json body"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn errors_have_the_codes_and_messages_of_rest() {
    let dir = tempfile::tempdir().expect("tmp");
    let server = start_dev(&dir.path().join("data"));
    let mut c = clients(&server).await;
    let op = create(&mut c, "demo").await;
    assert_eq!(wait(&mut c, &op).await.state, "SUCCEEDED");

    // A transition the state machine refuses.
    expect_code(
        c.vc.resume_v_cluster(proto::ResumeVClusterRequest {
            name: "demo".into(),
            ..Default::default()
        })
        .await,
        Code::FailedPrecondition,
    );
    // NOT_FOUND, with the very message REST gives.
    let s = expect_code(
        c.vc.get_v_cluster(proto::GetVClusterRequest {
            name: "nope".into(),
            project: String::new(),
        })
        .await,
        Code::NotFound,
    );
    let (http, body) = rest_get(server.rest_addr(), "/v1/vclusters/nope");
    assert_eq!(http, 404);
    assert_eq!(body["error"]["message"], s.message(), "{body}");
    expect_code(
        c.ops
            .get_operation(proto::GetOperationRequest {
                id: uuid::Uuid::new_v4().to_string(),
            })
            .await,
        Code::NotFound,
    );
    let s = expect_code(
        c.ops
            .get_operation(proto::GetOperationRequest {
                id: "not-a-uuid".into(),
            })
            .await,
        Code::InvalidArgument,
    );
    assert_eq!(reason(&s), "INVALID_ID");
    // INVALID_ARGUMENT: a bad name, bad spec values.
    let s = expect_code(
        c.vc.create_v_cluster(proto::CreateVClusterRequest {
            name: "Bad_Name".into(),
            ..Default::default()
        })
        .await,
        Code::InvalidArgument,
    );
    assert_eq!(reason(&s), "INVALID_NAME");
    let (http, body) = rest_get(server.rest_addr(), "/v1/vclusters/Bad_Name");
    assert_eq!(http, 400);
    assert_eq!(body["error"]["message"], s.message(), "{body}");
    for (spec, needle) in [
        (
            proto::VClusterSpec {
                distro: Some("k3s".into()),
                ..Default::default()
            },
            "k3s",
        ),
        (
            proto::VClusterSpec {
                quota: Some(proto::Quota {
                    cpu: Some("lots".into()),
                    ..Default::default()
                }),
                ..Default::default()
            },
            "lots",
        ),
        (
            proto::VClusterSpec {
                control_plane: Some(proto::ControlPlane {
                    replicas: Some(2),
                    ..Default::default()
                }),
                ..Default::default()
            },
            "replicas",
        ),
        (
            proto::VClusterSpec {
                host: Some("north".into()),
                ..Default::default()
            },
            "unknown host \"north\"",
        ),
    ] {
        let s = expect_code(
            c.vc.create_v_cluster(proto::CreateVClusterRequest {
                name: "fresh".into(),
                spec: Some(spec),
                ..Default::default()
            })
            .await,
            Code::InvalidArgument,
        );
        assert!(s.message().contains(needle), "{needle}: {s:?}");
    }
    // Nothing was created by the refused calls.
    expect_code(
        c.vc.get_v_cluster(proto::GetVClusterRequest {
            name: "fresh".into(),
            project: String::new(),
        })
        .await,
        Code::NotFound,
    );
    // ALREADY_EXISTS.
    expect_code(
        c.vc.create_v_cluster(proto::CreateVClusterRequest {
            name: "demo".into(),
            ..Default::default()
        })
        .await,
        Code::AlreadyExists,
    );
    // Time-outs beyond 60 s, restores without a target.
    let s = expect_code(
        c.ops
            .wait_operation(proto::WaitOperationRequest {
                id: op.id.clone(),
                timeout: Some(prost_types::Duration {
                    seconds: 61,
                    nanos: 0,
                }),
            })
            .await,
        Code::InvalidArgument,
    );
    assert_eq!(reason(&s), "INVALID_TIMEOUT");
    let s = expect_code(
        c.vc.restore_snapshot(proto::RestoreSnapshotRequest {
            id: uuid::Uuid::new_v4().to_string(),
            ..Default::default()
        })
        .await,
        Code::InvalidArgument,
    );
    assert_eq!(reason(&s), "INVALID_TARGET");
    // A snapshot that does not exist cannot be deleted.
    expect_code(
        c.vc.delete_snapshot(proto::DeleteSnapshotRequest {
            id: "00000000-0000-0000-0000-000000000000".into(),
            ..Default::default()
        })
        .await,
        Code::NotFound,
    );
    // No kubeconfig for a vcluster that does not exist.
    expect_code(
        c.vc.get_kubeconfig(proto::GetKubeconfigRequest {
            name: "nope".into(),
            project: String::new(),
        })
        .await,
        Code::NotFound,
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn request_ids_make_mutations_idempotent() {
    let dir = tempfile::tempdir().expect("tmp");
    let server = start_dev(&dir.path().join("data"));
    let mut c = clients(&server).await;
    let request = |env: &str| proto::CreateVClusterRequest {
        name: "idem".into(),
        project: String::new(),
        spec: Some(proto::VClusterSpec {
            labels: [("env".to_string(), env.to_string())].into(),
            ..Default::default()
        }),
        request_id: "key-1".into(),
    };
    let duplicate = |r: &tonic::Response<proto::Operation>| {
        r.metadata()
            .get("ovc-duplicate")
            .and_then(|v| v.to_str().ok())
            .map(str::to_string)
    };
    let first = c.vc.create_v_cluster(request("dev")).await.expect("first");
    assert_eq!(duplicate(&first).as_deref(), Some("false"));
    let again = c.vc.create_v_cluster(request("dev")).await.expect("again");
    assert_eq!(duplicate(&again).as_deref(), Some("true"));
    assert_eq!(again.get_ref().id, first.get_ref().id);
    assert_eq!(again.get_ref().request_id, "key-1");
    let s = expect_code(
        c.vc.create_v_cluster(request("prod")).await,
        Code::InvalidArgument,
    );
    assert_eq!(reason(&s), "REQUEST_ID_REUSED");
    let first = first.into_inner();
    assert_eq!(wait(&mut c, &first).await.state, "SUCCEEDED");
    // A repeat after the end still answers the same (done) operation.
    let late = c.vc.create_v_cluster(request("dev")).await.expect("late");
    assert_eq!(duplicate(&late).as_deref(), Some("true"));
    assert_eq!(
        (late.get_ref().id.as_str(), late.get_ref().done),
        (first.id.as_str(), true)
    );
    let ops = c
        .ops
        .list_operations(proto::ListOperationsRequest {
            vcluster: "idem".into(),
            ..Default::default()
        })
        .await
        .expect("list")
        .into_inner();
    assert_eq!(ops.operations.len(), 1, "{ops:?}");
}

/// `ovc token create` for `project` with `role`: the printed token.
fn token(url: &str, project: &str, role: &str) -> String {
    let out = Command::new(ovc_bin())
        .args(["token", "create", "--database-url", url])
        .args(["--project", project, "--role", role])
        .output()
        .expect("run ovc token create");
    assert!(out.status.success(), "{out:?}");
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

fn with_token<T>(token: &str, message: T) -> Request<T> {
    let mut r = Request::new(message);
    r.metadata_mut().insert(
        "authorization",
        format!("Bearer {token}").parse().expect("metadata value"),
    );
    r
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tokens_scope_grpc_calls_to_their_project_and_role() {
    let dir = tempfile::tempdir().expect("tmp");
    let url = format!("sqlite://{}", dir.path().join("ovc.db").display());
    let out = Command::new(ovc_bin())
        .args(["migrate", "--database-url", &url])
        .output()
        .expect("run ovc migrate");
    assert!(out.status.success(), "{out:?}");
    let alpha = token(&url, "alpha", "operator");
    let beta = token(&url, "beta", "operator");
    let viewer = token(&url, "beta", "viewer");
    let server = start_serve(&url);
    let mut c = clients(&server).await;

    // No token, a malformed one, an unknown one.
    let s = expect_code(
        c.vc.list_v_clusters(proto::ListVClustersRequest::default())
            .await,
        Code::Unauthenticated,
    );
    assert_eq!(reason(&s), "UNAUTHENTICATED");
    expect_code(
        c.vc.list_v_clusters(with_token(
            "ovc_not-a-token",
            proto::ListVClustersRequest::default(),
        ))
        .await,
        Code::Unauthenticated,
    );

    // Beta's operator creates a vcluster in its own project (no worker: it stays pending).
    let op =
        c.vc.create_v_cluster(with_token(
            &beta,
            proto::CreateVClusterRequest {
                name: "shared".into(),
                ..Default::default()
            },
        ))
        .await
        .expect("create as beta")
        .into_inner();
    assert_eq!(op.project, "beta");

    // Alpha sees none of it: NOT_FOUND, as if it did not exist.
    for project in ["", "beta"] {
        expect_code(
            c.vc.get_v_cluster(with_token(
                &alpha,
                proto::GetVClusterRequest {
                    name: "shared".into(),
                    project: project.into(),
                },
            ))
            .await,
            Code::NotFound,
        );
    }
    expect_code(
        c.ops
            .get_operation(with_token(
                &alpha,
                proto::GetOperationRequest { id: op.id.clone() },
            ))
            .await,
        Code::NotFound,
    );
    expect_code(
        c.ops
            .cancel_operation(with_token(
                &alpha,
                proto::CancelOperationRequest { id: op.id.clone() },
            ))
            .await,
        Code::NotFound,
    );
    let list = c
        .ops
        .list_operations(with_token(&alpha, proto::ListOperationsRequest::default()))
        .await
        .expect("alpha lists")
        .into_inner();
    assert!(list.operations.is_empty(), "{list:?}");
    let events = c
        .events
        .list_events(with_token(&alpha, proto::ListEventsRequest::default()))
        .await
        .expect("alpha reads events")
        .into_inner();
    assert!(events.events.is_empty(), "{events:?}");

    // Beta's viewer may read, not change.
    let seen = c
        .ops
        .get_operation(with_token(
            &viewer,
            proto::GetOperationRequest { id: op.id.clone() },
        ))
        .await
        .expect("viewer reads")
        .into_inner();
    assert_eq!(seen.id, op.id);
    let s = expect_code(
        c.vc.create_v_cluster(with_token(
            &viewer,
            proto::CreateVClusterRequest {
                name: "other".into(),
                ..Default::default()
            },
        ))
        .await,
        Code::PermissionDenied,
    );
    assert_eq!(reason(&s), "ROLE_VIEWER");
    expect_code(
        c.ops
            .cancel_operation(with_token(
                &viewer,
                proto::CancelOperationRequest { id: op.id.clone() },
            ))
            .await,
        Code::PermissionDenied,
    );
    // A kubeconfig needs an operator; deletes need an admin (checked before the state).
    let s = expect_code(
        c.vc.get_kubeconfig(with_token(
            &viewer,
            proto::GetKubeconfigRequest {
                name: "shared".into(),
                ..Default::default()
            },
        ))
        .await,
        Code::PermissionDenied,
    );
    assert_eq!(reason(&s), "ROLE_VIEWER");
    let s = expect_code(
        c.vc.delete_v_cluster(with_token(
            &beta,
            proto::DeleteVClusterRequest {
                name: "shared".into(),
                ..Default::default()
            },
        ))
        .await,
        Code::PermissionDenied,
    );
    assert_eq!(reason(&s), "ROLE_NOT_ADMIN");
    // The scheme is case-insensitive in gRPC metadata too.
    let mut lower = Request::new(proto::ListVClustersRequest::default());
    lower.metadata_mut().insert(
        "authorization",
        format!("bearer {beta}").parse().expect("metadata value"),
    );
    let list =
        c.vc.list_v_clusters(lower)
            .await
            .expect("lower-case bearer");
    assert_eq!(list.into_inner().vclusters.len(), 1);
}

#[test]
fn serve_refuses_auth_none_on_a_non_loopback_grpc_address() {
    let dir = tempfile::tempdir().expect("tmp");
    let url = format!("sqlite://{}", dir.path().join("ovc.db").display());
    let out = Command::new(ovc_bin())
        .args(["serve", "--database-url", &url, "--auth", "none"])
        .args(["--http", "127.0.0.1:0", "--grpc", "0.0.0.0:0"])
        .output()
        .expect("run ovc serve");
    assert!(!out.status.success(), "{out:?}");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("--grpc 0.0.0.0:0"), "{stderr}");
}

/// Every event `ListEvents` returns after position 0, paging to the end.
async fn all_events(c: &mut Clients, operation_id: &str) -> Vec<proto::Event> {
    let mut all = Vec::new();
    let mut after = 0;
    loop {
        let page = c
            .events
            .list_events(proto::ListEventsRequest {
                after,
                limit: 50,
                operation_id: operation_id.into(),
            })
            .await
            .expect("list events")
            .into_inner();
        if page.events.is_empty() {
            return all;
        }
        after = page.next_after;
        all.extend(page.events);
    }
}

/// The next `n` events of a live stream (panics after 20 s without one).
async fn take(stream: &mut tonic::Streaming<proto::Event>, n: usize) -> Vec<proto::Event> {
    let mut got = Vec::with_capacity(n);
    while got.len() < n {
        match tokio::time::timeout(Duration::from_secs(20), stream.next()).await {
            Ok(Some(Ok(e))) => got.push(e),
            other => panic!(
                "stream ended or stalled after {} events: {other:?}",
                got.len()
            ),
        }
    }
    got
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stream_events_resumes_after_the_last_position_without_gaps_or_repeats() {
    let dir = tempfile::tempdir().expect("tmp");
    let server = start_dev(&dir.path().join("data"));
    let mut c = clients(&server).await;
    let created = create(&mut c, "feed").await;
    wait(&mut c, &created).await;
    let before = all_events(&mut c, "").await;
    assert!(before.len() >= 4, "{before:?}");

    // Read half, drop the stream.
    let mut stream = c
        .events
        .stream_events(proto::StreamEventsRequest::default())
        .await
        .expect("stream")
        .into_inner();
    let mut seen = take(&mut stream, before.len() / 2).await;
    drop(stream);
    let last = seen.last().expect("some").position;

    // More events happen while disconnected.
    let op =
        c.vc.suspend_v_cluster(proto::SuspendVClusterRequest {
            name: "feed".into(),
            ..Default::default()
        })
        .await
        .expect("suspend")
        .into_inner();
    wait(&mut c, &op).await;
    let expected = all_events(&mut c, "").await;
    assert!(expected.len() > before.len());

    // Resume after the last position seen, live, up to the head.
    let mut stream = c
        .events
        .stream_events(proto::StreamEventsRequest {
            after: last,
            operation_id: String::new(),
        })
        .await
        .expect("resume")
        .into_inner();
    seen.extend(take(&mut stream, expected.len() - seen.len()).await);
    let key = |e: &proto::Event| (e.position, e.stream.clone(), e.version, e.r#type.clone());
    assert_eq!(
        seen.iter().map(key).collect::<Vec<_>>(),
        expected.iter().map(key).collect::<Vec<_>>(),
        "each position once, in order"
    );
    assert!(seen.windows(2).all(|w| w[0].position < w[1].position));
    assert_eq!(seen[0].position, 1);

    // Live: a new event arrives on the open stream.
    let op =
        c.vc.resume_v_cluster(proto::ResumeVClusterRequest {
            name: "feed".into(),
            ..Default::default()
        })
        .await
        .expect("resume vcluster")
        .into_inner();
    let next = take(&mut stream, 1).await;
    let head = expected.last().expect("some").position;
    let listed = c
        .events
        .list_events(proto::ListEventsRequest {
            after: head,
            limit: 1,
            operation_id: String::new(),
        })
        .await
        .expect("list after the head")
        .into_inner();
    assert_eq!(
        next.iter().map(key).collect::<Vec<_>>(),
        listed.events.iter().map(key).collect::<Vec<_>>()
    );
    assert_eq!(next[0].position, head + 1);
    wait(&mut c, &op).await;

    // One operation's stream carries only that operation's events.
    let own = all_events(&mut c, &created.id).await;
    let mut stream = c
        .events
        .stream_events(proto::StreamEventsRequest {
            after: 0,
            operation_id: created.id.clone(),
        })
        .await
        .expect("operation stream")
        .into_inner();
    let got = take(&mut stream, own.len()).await;
    assert_eq!(
        got.iter().map(key).collect::<Vec<_>>(),
        own.iter().map(key).collect::<Vec<_>>()
    );
    let stream_name = format!("operation-{}", created.id);
    assert!(got.iter().all(|e| e.stream == stream_name), "{got:?}");
    assert_eq!(
        got.first().map(|e| e.r#type.as_str()),
        Some("OperationRequested")
    );
    assert!(got[0].data.is_some() && got[0].recorded_at.is_some());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reflection_lists_the_ovc_services() {
    use tonic_reflection::pb::v1::ServerReflectionRequest;
    use tonic_reflection::pb::v1::server_reflection_client::ServerReflectionClient;
    use tonic_reflection::pb::v1::server_reflection_request::MessageRequest;
    use tonic_reflection::pb::v1::server_reflection_response::MessageResponse;

    let dir = tempfile::tempdir().expect("tmp");
    let server = start_dev(&dir.path().join("data"));
    let mut client = ServerReflectionClient::new(channel(&server).await);
    let requests = [
        MessageRequest::ListServices(String::new()),
        MessageRequest::FileContainingSymbol("ovc.v1.VClusterService".into()),
    ]
    .map(|m| ServerReflectionRequest {
        host: String::new(),
        message_request: Some(m),
    });
    let mut responses = client
        .server_reflection_info(futures::stream::iter(requests))
        .await
        .expect("reflection")
        .into_inner();
    let first = responses
        .next()
        .await
        .expect("a response")
        .expect("ok")
        .message_response;
    let Some(MessageResponse::ListServicesResponse(list)) = first else {
        panic!("expected a service list, got {first:?}");
    };
    let names: Vec<&str> = list.service.iter().map(|s| s.name.as_str()).collect();
    for want in [
        "ovc.v1.VClusterService",
        "ovc.v1.OperationService",
        "ovc.v1.EventService",
    ] {
        assert!(names.contains(&want), "{want} missing from {names:?}");
    }
    let second = responses
        .next()
        .await
        .expect("a response")
        .expect("ok")
        .message_response;
    let Some(MessageResponse::FileDescriptorResponse(files)) = second else {
        panic!("expected file descriptors, got {second:?}");
    };
    assert!(!files.file_descriptor_proto.is_empty());
}

/// A request body that is not the method's message (here a `google.protobuf.Duration`,
/// whose field 1 is a varint, sent where field 1 is a string) is INVALID_ARGUMENT with
/// reason MALFORMED_PROTOBUF, not INTERNAL (API.md: INTERNAL is a bug, never bad input).
#[tokio::test]
async fn malformed_protobuf_is_invalid_argument() {
    use tonic::codegen::http::uri::PathAndQuery;
    let dir = tempfile::tempdir().expect("tmp");
    let server = start_dev(&dir.path().join("data"));
    let mut grpc = tonic::client::Grpc::new(channel(&server).await);
    for path in [
        "/ovc.v1.VClusterService/GetVCluster",
        "/ovc.v1.VClusterService/CreateVCluster",
        "/ovc.v1.OperationService/GetOperation",
    ] {
        grpc.ready().await.expect("ready");
        let codec =
            ovc_api::grpc::codec::ApiCodec::<prost_types::Duration, proto::VCluster>::default();
        let err = grpc
            .unary(
                Request::new(prost_types::Duration {
                    seconds: 5,
                    nanos: 0,
                }),
                PathAndQuery::from_static(path),
                codec,
            )
            .await
            .expect_err("a malformed request is refused");
        assert_eq!(err.code(), Code::InvalidArgument, "{path}: {err:?}");
        assert_eq!(reason(&err), "MALFORMED_PROTOBUF", "{path}");
        assert!(err.message().contains("protobuf"), "{}", err.message());
    }
    // The API still answers well-formed calls.
    let mut c = clients(&server).await;
    let list =
        c.vc.list_snapshots(proto::ListSnapshotsRequest {
            state: "READY".into(),
            ..Default::default()
        })
        .await
        .expect("list snapshots by state");
    assert!(list.into_inner().snapshots.is_empty());
    let err =
        c.vc.list_snapshots(proto::ListSnapshotsRequest {
            state: "WEIRD".into(),
            ..Default::default()
        })
        .await
        .expect_err("unknown state");
    assert_eq!(err.code(), Code::InvalidArgument);
}
