//! Bounded waits and sizes: a wait past the engine's `ready_timeout` (counted from the
//! step's first start in the journal, so it survives a worker restart) fails the step and
//! the operation compensates; sizes past `ovc_types::spec::bounds` are refused over REST
//! with 400 and nothing written.

use axum::body::Body;
use axum::http::{Request, StatusCode};
use http_body_util::BodyExt;
use ovc_driver::sim::SimConfig;
use ovc_store::Backend;
use ovc_tests::{Harness, HarnessOptions};
use ovc_types::Code;
use ovc_types::command::Command;
use ovc_types::command::CreateParams;
use ovc_types::spec::VClusterSpec;
use ovc_types::state::{OperationState, StepState, VClusterState};
use serde_json::{Value, json};
use std::sync::Arc;
use std::time::Duration;
use tower::ServiceExt;

/// A host whose control planes never get ready (an hour is never, for a test).
fn never_ready() -> SimConfig {
    SimConfig {
        ready_delay: Duration::from_secs(3600),
        ..SimConfig::default()
    }
}

fn options(ready_timeout: Duration) -> HarnessOptions {
    HarnessOptions {
        sim: never_ready(),
        ready_timeout: Some(ready_timeout),
        ..HarnessOptions::default()
    }
}

fn create() -> Command {
    Command::new(CreateParams {
        spec: VClusterSpec::default(),
    })
}

/// The create failed at wait_ready with the wait limit's error, compensated everything,
/// and left nothing on the host.
async fn assert_timed_out_and_compensated(h: &Harness, op: &ovc_types::resource::Operation) {
    assert_eq!(op.state, OperationState::Failed, "{op:#?}");
    let step = |n: &str| op.steps.iter().find(|s| s.name == n).expect("step");
    let wait = step("wait_ready");
    assert_eq!(wait.state, StepState::Failed, "{op:#?}");
    let error = wait.error.as_ref().expect("error");
    assert_eq!(error.code, Code::DeadlineExceeded, "{error:?}");
    assert_eq!(error.reason(), Some("WAIT_TIMEOUT"), "{error:?}");
    assert_eq!(wait.attempts, 1, "a timed-out wait is not retried: {op:#?}");
    for s in ["create_namespace", "install_release"] {
        assert_eq!(step(s).state, StepState::Compensated, "{s}: {op:#?}");
    }
    assert_eq!(
        h.vcluster("vc").await.map(|v| v.state),
        Some(VClusterState::Deleted)
    );
    let state = h.sim.state().await.expect("state");
    assert!(
        state.namespaces.is_empty() && state.releases.is_empty(),
        "{state:#?}"
    );
}

async fn a_wait_past_its_deadline_fails_and_compensates(backend: Backend) {
    let h = Harness::start(backend, options(Duration::from_millis(500))).await;
    let op = h.run("vc", create()).await;
    assert_timed_out_and_compensated(&h, &op).await;
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wait_past_its_deadline_fails_and_compensates_sqlite() {
    a_wait_past_its_deadline_fails_and_compensates(Backend::Sqlite).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wait_past_its_deadline_fails_and_compensates_postgres() {
    a_wait_past_its_deadline_fails_and_compensates(Backend::Postgres).await;
}

/// The deadline is counted from the journal, not from a worker's memory: a worker that
/// takes over a wait that began 4 s ago, with a limit of 3 s, fails it on its first look
/// (a limit counted from the takeover would give it 3 more seconds).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_deadline_survives_a_worker_restart() {
    let mut h = Harness::start(Backend::Sqlite, options(Duration::from_secs(3600))).await;
    let id = h.submit("vc", create()).await.expect("submit");
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        let op = h.store.get_operation(id).await.expect("get").expect("op");
        if op
            .steps
            .iter()
            .any(|s| s.name == "wait_ready" && s.state == StepState::Running)
        {
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "{op:#?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    tokio::time::sleep(Duration::from_secs(4)).await;
    assert!(
        !h.store
            .get_operation(id)
            .await
            .expect("get")
            .expect("op")
            .done,
        "the first worker's limit is an hour"
    );
    h.restart_worker(options(Duration::from_secs(3))).await;
    let restarted = tokio::time::Instant::now();
    let op = h.wait(id).await;
    let took = restarted.elapsed();
    assert_timed_out_and_compensated(&h, &op).await;
    assert!(
        took < Duration::from_millis(2500),
        "the new worker waited {took:?}: it restarted the clock instead of reading the journal"
    );
    h.stop().await;
}

async fn call(app: &axum::Router, method: &str, uri: &str, body: Value) -> (StatusCode, Value) {
    let req = Request::builder()
        .method(method)
        .uri(uri)
        .header("content-type", "application/json")
        .body(Body::from(body.to_string()))
        .expect("request");
    let res = app.clone().oneshot(req).await.expect("call");
    let status = res.status();
    let bytes = res.into_body().collect().await.expect("body").to_bytes();
    (
        status,
        serde_json::from_slice(&bytes).unwrap_or(Value::Null),
    )
}

async fn oversize_specs_are_refused_over_rest(backend: Backend) {
    let h = Harness::start(backend, HarnessOptions::default()).await;
    let app = ovc_api::router(ovc_api::AppState::new(
        h.store.clone(),
        Arc::new(ovc_workflows::registry()),
        ovc_api::auth::AuthMode::None,
    ));
    let (s, op) = call(&app, "POST", "/v1/vclusters", json!({"name": "vc"})).await;
    assert_eq!(s, StatusCode::ACCEPTED, "{op}");
    let id = op["id"].as_str().expect("id").parse().expect("uuid");
    assert_eq!(h.wait(id).await.state, OperationState::Succeeded);
    let head = h.store.head_position().await.expect("head");
    let version = h.vcluster("vc").await.expect("vc").version;
    let cases = [
        (
            "/v1/vclusters",
            json!({"name": "big", "spec": {"quota": {"cpu": "4000"}}}),
            "spec.quota.cpu",
            "64",
        ),
        (
            "/v1/vclusters",
            json!({"name": "big", "spec": {"quota": {"memory": "2Ti"}}}),
            "spec.quota.memory",
            "512Gi",
        ),
        (
            "/v1/vclusters",
            json!({"name": "big", "spec": {"quota": {"storage": "1Pi"}}}),
            "spec.quota.storage",
            "10Ti",
        ),
        (
            "/v1/vclusters",
            json!({"name": "big", "spec": {"control_plane": {"cpu": "100"}}}),
            "spec.control_plane.cpu",
            "8",
        ),
        (
            "/v1/vclusters",
            json!({"name": "big", "spec": {"control_plane": {"memory": "1Ti"}}}),
            "spec.control_plane.memory",
            "32Gi",
        ),
        (
            "/v1/vclusters",
            json!({"name": "big", "spec": {"quota": {"pods": 20000}}}),
            "spec.quota.pods",
            "10000",
        ),
        (
            "/v1/vclusters/vc/scale",
            json!({"quota": {"cpu": "65"}}),
            "spec.quota.cpu",
            "64",
        ),
        (
            "/v1/vclusters/vc/scale",
            json!({"control_plane": {"memory": "64Gi"}}),
            "spec.control_plane.memory",
            "32Gi",
        ),
    ];
    for (uri, body, field, bound) in cases {
        let (s, err) = call(&app, "POST", uri, body.clone()).await;
        assert_eq!(s, StatusCode::BAD_REQUEST, "{body}: {err}");
        assert_eq!(err["error"]["status"], "INVALID_ARGUMENT", "{err}");
        let message = err["error"]["message"].as_str().expect("message");
        assert!(
            message.contains(field) && message.contains(bound),
            "{body}: {message:?} should name {field} and {bound}"
        );
    }
    assert_eq!(
        h.store.head_position().await.expect("head"),
        head,
        "a refusal wrote"
    );
    assert!(h.vcluster("big").await.is_none());
    assert_eq!(h.vcluster("vc").await.expect("vc").version, version);
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversize_specs_are_refused_over_rest_sqlite() {
    oversize_specs_are_refused_over_rest(Backend::Sqlite).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversize_specs_are_refused_over_rest_postgres() {
    oversize_specs_are_refused_over_rest(Backend::Postgres).await;
}
