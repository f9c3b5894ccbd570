//! Several host clusters (issue 9 §1): a vcluster's `spec.host` names one of the hosts
//! the service is configured with, is kept for life, and an unknown one is refused at
//! accept with nothing written. On SQLite and PostgreSQL.
//!
//! The worker's driver is a `HostRouter` that knows only `eu` and `us` (both the
//! simulator), not `default`: a vcluster on `eu` runs only if the executor sends its
//! calls to the host of its spec.

use axum::body::Body;
use http_body_util::BodyExt;
use ovc_engine::Registry;
use ovc_engine::accept::{CommandRequest, accept};
use ovc_store::Backend;
use ovc_tests::{Harness, HarnessOptions, name, project};
use ovc_types::command::{Command, RestoreTarget};
use ovc_types::command::{CreateParams, DeleteParams, RestoreParams};
use ovc_types::error::Code;
use ovc_types::spec::{ControlPlanePatch, ScalePatch, VClusterSpec};
use ovc_types::state::OperationState;
use ovc_types::time::RandomIds;
use ovc_types::{OperationId, SnapshotId, Status};
use ovc_workflows::scale::ScaleParams;
use ovc_workflows::snapshot::SnapshotParams;
use ovc_workflows::suspend::SuspendParams;
use std::sync::Arc;
use tower::ServiceExt;

ovc_testkit::both_backends!(
    a_vcluster_lives_on_the_host_its_spec_names,
    the_rest_api_refuses_an_unknown_host_and_a_scale_naming_one,
);

fn registry(hosts: &[&str]) -> Registry {
    ovc_workflows::registry().with_hosts(hosts.iter().map(|h| h.to_string()))
}

async fn submit(
    h: &Harness,
    registry: &Registry,
    vc: &str,
    command: Command,
) -> Result<OperationId, Status> {
    accept(
        h.store.as_ref(),
        registry,
        &RandomIds,
        CommandRequest {
            project: project(),
            vcluster: name(vc),
            command,
            request_id: None,
            actor: Some("test".into()),
            traceparent: None,
        },
    )
    .await
    .map(|a| a.operation_id)
}

async fn succeeds(h: &Harness, registry: &Registry, vc: &str, command: Command) -> OperationId {
    let id = submit(h, registry, vc, command)
        .await
        .unwrap_or_else(|e| panic!("{vc}: {e}"));
    let op = h.wait(id).await;
    assert_eq!(op.state, OperationState::Succeeded, "{op:#?}");
    id
}

/// `command` is refused with `code` and reason `UNKNOWN_HOST`, the message naming the
/// host and the known hosts, and the log did not move.
async fn refused(
    h: &Harness,
    registry: &Registry,
    vc: &str,
    command: Command,
    code: Code,
    says: &[&str],
) {
    let head = h.store.head_position().await.expect("head");
    let err = submit(h, registry, vc, command)
        .await
        .expect_err("an unknown host is refused");
    assert_eq!(err.code, code, "{err:?}");
    assert!(
        err.details.iter().any(|d| d.reason == "UNKNOWN_HOST"),
        "{err:?}"
    );
    for s in says {
        assert!(err.message.contains(s), "wanted {s:?} in {}", err.message);
    }
    assert_eq!(
        h.store.head_position().await.expect("head"),
        head,
        "nothing is written"
    );
}

fn spec_on(host: &str) -> VClusterSpec {
    VClusterSpec {
        host: host.into(),
        ..VClusterSpec::default()
    }
}

async fn a_vcluster_lives_on_the_host_its_spec_names(backend: Backend) {
    let h = Harness::start(
        backend,
        HarnessOptions {
            hosts: vec!["eu".into(), "us".into()],
            ..HarnessOptions::default()
        },
    )
    .await;
    let both = registry(&["eu", "us"]);
    // Unknown hosts, the default one included (this service has no `default`).
    refused(
        &h,
        &both,
        "bad",
        Command::new(CreateParams {
            spec: spec_on("north"),
        }),
        Code::InvalidArgument,
        &["\"north\"", "\"eu\", \"us\""],
    )
    .await;
    refused(
        &h,
        &both,
        "bad",
        Command::new(CreateParams {
            spec: VClusterSpec::default(),
        }),
        Code::InvalidArgument,
        &["\"default\""],
    )
    .await;
    assert!(h.vcluster("bad").await.is_none());

    // A named host is recorded, used by every step, and kept through a scale.
    succeeds(
        &h,
        &both,
        "vc",
        Command::new(CreateParams {
            spec: spec_on("eu"),
        }),
    )
    .await;
    assert_eq!(h.vcluster("vc").await.expect("vc").spec.host, "eu");
    succeeds(
        &h,
        &both,
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
    let vc = h.vcluster("vc").await.expect("vc");
    assert_eq!(
        (vc.spec.control_plane.replicas, vc.spec.host.as_str()),
        (3, "eu")
    );
    let snap = SnapshotId(
        succeeds(
            &h,
            &both,
            "vc",
            Command::new(SnapshotParams { description: None }),
        )
        .await
        .as_uuid(),
    );

    // A service that no longer knows `eu`: the vcluster's commands and a restore of its
    // snapshot as a new vcluster are refused, nothing written.
    let us_only = registry(&["us"]);
    refused(
        &h,
        &us_only,
        "vc",
        Command::new(SuspendParams {
            snapshot: false,
            evict_workloads: false,
        }),
        Code::FailedPrecondition,
        &["runs on host \"eu\"", "\"us\""],
    )
    .await;
    refused(
        &h,
        &us_only,
        "copy",
        Command::new(RestoreParams {
            snapshot_id: snap,
            target: RestoreTarget::NewName(name("copy")),
        }),
        Code::InvalidArgument,
        &["\"eu\""],
    )
    .await;

    // Restore as new takes the snapshot's host; over the existing vcluster, its own.
    succeeds(
        &h,
        &both,
        "copy",
        Command::new(RestoreParams {
            snapshot_id: snap,
            target: RestoreTarget::NewName(name("copy")),
        }),
    )
    .await;
    assert_eq!(h.vcluster("copy").await.expect("copy").spec.host, "eu");
    succeeds(
        &h,
        &both,
        "vc",
        Command::new(RestoreParams {
            snapshot_id: snap,
            target: RestoreTarget::Existing(name("vc")),
        }),
    )
    .await;
    assert_eq!(h.vcluster("vc").await.expect("vc").spec.host, "eu");

    // Another vcluster on the other host runs too.
    succeeds(
        &h,
        &both,
        "west",
        Command::new(CreateParams {
            spec: spec_on("us"),
        }),
    )
    .await;
    for vc in ["vc", "copy", "west"] {
        succeeds(&h, &both, vc, Command::new(DeleteParams {})).await;
    }
    h.stop().await;
}

async fn call(
    app: &axum::Router,
    method: &str,
    uri: &str,
    body: serde_json::Value,
) -> (u16, String) {
    let req = axum::http::Request::builder()
        .method(method)
        .uri(uri)
        .header("content-type", "application/json")
        .body(Body::from(body.to_string()))
        .expect("request");
    let res = app.clone().oneshot(req).await.expect("call");
    let status = res.status().as_u16();
    let bytes = res.into_body().collect().await.expect("body").to_bytes();
    (status, String::from_utf8_lossy(&bytes).into_owned())
}

async fn the_rest_api_refuses_an_unknown_host_and_a_scale_naming_one(backend: Backend) {
    let h = Harness::start(
        backend,
        HarnessOptions {
            hosts: vec!["eu".into(), "us".into()],
            ..HarnessOptions::default()
        },
    )
    .await;
    // The kubeconfig route reads through a router of the same two hosts.
    let mut hosts = ovc_driver::router::HostRouter::new();
    for name in ["eu", "us"] {
        hosts.add(name, h.sim.clone()).expect("host");
    }
    let app = ovc_api::router(
        ovc_api::AppState::new(
            h.store.clone(),
            Arc::new(registry(&["eu", "us"])),
            ovc_api::auth::AuthMode::None,
        )
        .with_host(Arc::new(hosts)),
    );
    let head = h.store.head_position().await.expect("head");
    let (status, body) = call(
        &app,
        "POST",
        "/v1/vclusters",
        serde_json::json!({"name": "vc", "spec": {"host": "north"}}),
    )
    .await;
    assert_eq!(status, 400, "{body}");
    assert!(
        body.contains("UNKNOWN_HOST") && body.contains("north"),
        "{body}"
    );
    let (status, body) = call(
        &app,
        "POST",
        "/v1/vclusters",
        serde_json::json!({"name": "vc", "spec": {"host": "Not_A_Label"}}),
    )
    .await;
    assert_eq!(status, 400, "{body}");
    assert!(body.contains("spec.host"), "{body}");
    assert_eq!(h.store.head_position().await.expect("head"), head);

    let (status, body) = call(
        &app,
        "POST",
        "/v1/vclusters",
        serde_json::json!({"name": "vc", "spec": {"host": "us"}}),
    )
    .await;
    assert_eq!(status, 202, "{body}");
    let op: serde_json::Value = serde_json::from_str(&body).expect("operation");
    let id: OperationId = serde_json::from_value(op["id"].clone()).expect("id");
    assert_eq!(h.wait(id).await.state, OperationState::Succeeded);
    let (status, body) = call(&app, "GET", "/v1/vclusters/vc", serde_json::Value::Null).await;
    assert_eq!(status, 200, "{body}");
    let vc: serde_json::Value = serde_json::from_str(&body).expect("vcluster");
    assert_eq!(vc["spec"]["host"], "us", "{body}");
    // The kubeconfig is read from the vcluster's host.
    let (status, body) = call(
        &app,
        "GET",
        "/v1/vclusters/vc/kubeconfig",
        serde_json::Value::Null,
    )
    .await;
    assert_eq!(status, 200, "{body}");
    assert!(body.contains("kubeconfig"), "{body}");

    // The host is kept for life: a scale naming one is refused, nothing written.
    let head = h.store.head_position().await.expect("head");
    let (status, body) = call(
        &app,
        "POST",
        "/v1/vclusters/vc/scale",
        serde_json::json!({"host": "eu", "control_plane": {"replicas": 3}}),
    )
    .await;
    assert_eq!(status, 400, "{body}");
    assert!(body.contains("host"), "{body}");
    assert_eq!(h.store.head_position().await.expect("head"), head);
    assert_eq!(h.vcluster("vc").await.expect("vc").spec.host, "us");
    h.stop().await;
}
