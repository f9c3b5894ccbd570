//! The REST API over a real store with an in-process worker on the simulated host:
//! status codes and error bodies of API.md, idempotency, the lifecycle.

use axum::body::Body;
use axum::http::{Request, StatusCode};
use http_body_util::BodyExt;
use ovc_store::Backend;
use ovc_tests::{Harness, HarnessOptions};
use serde_json::{Value, json};
use std::sync::Arc;
use tower::ServiceExt;

struct Api {
    h: Harness,
    app: axum::Router,
}

impl Api {
    async fn start() -> Api {
        Self::start_with(ovc_api::auth::AuthMode::None).await
    }

    async fn start_with(auth: ovc_api::auth::AuthMode) -> Api {
        Self::start_state(auth, |s| s).await
    }

    async fn start_state(
        auth: ovc_api::auth::AuthMode,
        tune: impl FnOnce(ovc_api::AppState) -> ovc_api::AppState,
    ) -> Api {
        Self::start_on(Backend::Sqlite, auth, tune).await
    }

    async fn start_on(
        backend: Backend,
        auth: ovc_api::auth::AuthMode,
        tune: impl FnOnce(ovc_api::AppState) -> ovc_api::AppState,
    ) -> Api {
        let h = Harness::start(backend, HarnessOptions::default()).await;
        let app = ovc_api::router(tune(ovc_api::AppState::new(
            h.store.clone(),
            Arc::new(ovc_workflows::registry()),
            auth,
        )));
        Api { h, app }
    }

    async fn call(
        &self,
        method: &str,
        uri: &str,
        body: Option<Value>,
        key: Option<&str>,
    ) -> (StatusCode, Value) {
        self.call_as(None, method, uri, body, key).await
    }

    async fn call_as(
        &self,
        token: Option<&str>,
        method: &str,
        uri: &str,
        body: Option<Value>,
        key: Option<&str>,
    ) -> (StatusCode, Value) {
        let mut req = Request::builder().method(method).uri(uri);
        if let Some(t) = token {
            req = req.header("authorization", format!("Bearer {t}"));
        }
        if let Some(k) = key {
            req = req.header("idempotency-key", k);
        }
        let body = match body {
            Some(b) => {
                req = req.header("content-type", "application/json");
                Body::from(b.to_string())
            }
            None => Body::empty(),
        };
        let res = self
            .app
            .clone()
            .oneshot(req.body(body).expect("request"))
            .await
            .expect("call");
        let status = res.status();
        let bytes = res.into_body().collect().await.expect("body").to_bytes();
        let v = if bytes.is_empty() {
            Value::Null
        } else {
            serde_json::from_slice(&bytes)
                .unwrap_or(Value::String(String::from_utf8_lossy(&bytes).into()))
        };
        (status, v)
    }

    async fn wait(&self, op: &Value) -> Value {
        let id = op["id"].as_str().expect("operation id");
        let (s, done) = self
            .call(
                "GET",
                &format!("/v1/operations/{id}/wait?timeout=20s"),
                None,
                None,
            )
            .await;
        assert_eq!(s, StatusCode::OK, "{done}");
        assert_eq!(done["done"], true, "{done}");
        done
    }
}

/// method, path, body, expected HTTP status, expected status name, text the message names.
type ErrorCase = (
    &'static str,
    String,
    Option<Value>,
    StatusCode,
    &'static str,
    Option<&'static str>,
);

fn assert_error(status: StatusCode, body: &Value, want: StatusCode, name: &str) {
    assert_eq!(status, want, "{body}");
    assert_eq!(body["error"]["status"], name, "{body}");
    assert_eq!(body["error"]["code"], want.as_u16(), "{body}");
    assert!(
        body["error"]["message"]
            .as_str()
            .is_some_and(|m| !m.is_empty()),
        "{body}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lifecycle_over_rest() {
    let api = Api::start().await;
    let (s, op) = api
        .call(
            "POST",
            "/v1/vclusters",
            Some(json!({"name": "team-a", "spec": {"labels": {"env": "dev"}}})),
            None,
        )
        .await;
    assert_eq!(s, StatusCode::ACCEPTED, "{op}");
    assert_eq!(op["kind"], "CREATE");
    assert_eq!(
        op["name"],
        format!("operations/{}", op["id"].as_str().expect("id"))
    );
    assert_eq!(api.wait(&op).await["state"], "SUCCEEDED");
    let (s, vc) = api.call("GET", "/v1/vclusters/team-a", None, None).await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(vc["state"], "RUNNING");
    let uid = vc["uid"].as_str().expect("uid").replace('-', "");
    assert_eq!(vc["host_namespace"], format!("ovc-team-a-{uid}"));

    let (s, op) = api
        .call(
            "POST",
            "/v1/vclusters/team-a/suspend",
            Some(json!({"snapshot": true})),
            None,
        )
        .await;
    assert_eq!(s, StatusCode::ACCEPTED, "{op}");
    assert_eq!(api.wait(&op).await["state"], "SUCCEEDED");
    let (s, op) = api
        .call("POST", "/v1/vclusters/team-a/resume", None, None)
        .await;
    assert_eq!(s, StatusCode::ACCEPTED, "{op}");
    assert_eq!(api.wait(&op).await["state"], "SUCCEEDED");
    let (s, op) = api
        .call(
            "POST",
            "/v1/vclusters/team-a/snapshots",
            Some(json!({"description": "nightly"})),
            None,
        )
        .await;
    assert_eq!(s, StatusCode::ACCEPTED, "{op}");
    let snap = api.wait(&op).await;
    let snapshot_id = snap["result"]["id"]
        .as_str()
        .expect("snapshot id")
        .to_string();
    let (s, got) = api
        .call("GET", &format!("/v1/snapshots/{snapshot_id}"), None, None)
        .await;
    assert_eq!(
        (s, got["state"].clone()),
        (StatusCode::OK, json!("READY")),
        "{got}"
    );
    let (s, op) = api
        .call(
            "POST",
            "/v1/vclusters/team-a/scale",
            Some(json!({"control_plane": {"replicas": 3}})),
            None,
        )
        .await;
    assert_eq!(s, StatusCode::ACCEPTED, "{op}");
    api.wait(&op).await;
    let (_, vc) = api.call("GET", "/v1/vclusters/team-a", None, None).await;
    assert_eq!(vc["spec"]["control_plane"]["replicas"], 3);
    assert_eq!(vc["spec"]["vcluster_version"], "0.29.1");
    // Upgrade: a skipped minor version is refused naming the next one; one step is fine.
    let (s, err) = api
        .call(
            "POST",
            "/v1/vclusters/team-a/upgrade",
            Some(json!({"kubernetes_version": "1.33"})),
            None,
        )
        .await;
    assert_error(s, &err, StatusCode::BAD_REQUEST, "FAILED_PRECONDITION");
    assert_eq!(err["error"]["details"][0]["reason"], "UPGRADE_SKIPS_MINOR");
    assert_eq!(
        err["error"]["details"][0]["metadata"]["next_allowed"],
        "1.32"
    );
    let (s, err) = api
        .call(
            "POST",
            "/v1/vclusters/team-a/upgrade",
            Some(json!({"version": "0.30.0"})),
            None,
        )
        .await;
    assert_error(s, &err, StatusCode::BAD_REQUEST, "INVALID_ARGUMENT");
    let (s, op) = api
        .call(
            "POST",
            "/v1/vclusters/team-a/upgrade",
            Some(json!({"vcluster_version": "0.30.0"})),
            None,
        )
        .await;
    assert_eq!(s, StatusCode::ACCEPTED, "{op}");
    assert_eq!(op["kind"], "UPGRADE");
    let done = api.wait(&op).await;
    assert_eq!(done["state"], "SUCCEEDED", "{done}");
    assert_eq!(done["result"]["spec"]["vcluster_version"], "0.30.0");
    assert_eq!(done["result"]["state"], "RUNNING");
    let (s, op) = api
        .call(
            "POST",
            &format!("/v1/snapshots/{snapshot_id}/restore"),
            Some(json!({"target": {"new_name": "copy"}})),
            None,
        )
        .await;
    assert_eq!(s, StatusCode::ACCEPTED, "{op}");
    assert_eq!(api.wait(&op).await["state"], "SUCCEEDED");
    let (s, op) = api
        .call(
            "POST",
            &format!("/v1/snapshots/{snapshot_id}/restore"),
            Some(json!({"target": {"existing": "team-a"}})),
            None,
        )
        .await;
    assert_eq!(s, StatusCode::ACCEPTED, "{op}");
    assert_eq!(api.wait(&op).await["state"], "SUCCEEDED");
    for name in ["copy", "team-a"] {
        let (s, op) = api
            .call("DELETE", &format!("/v1/vclusters/{name}"), None, None)
            .await;
        assert_eq!(s, StatusCode::ACCEPTED, "{op}");
        assert_eq!(api.wait(&op).await["state"], "SUCCEEDED");
    }
    let (s, list) = api.call("GET", "/v1/vclusters", None, None).await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(list["vclusters"], json!([]));
    let (s, page) = api
        .call("GET", "/v1/events?after=0&limit=5", None, None)
        .await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(page["events"].as_array().map(Vec::len), Some(5));
    assert_eq!(page["next_after"], 5);
    let (s, ops) = api
        .call("GET", "/v1/operations?kind=DELETE", None, None)
        .await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(ops["operations"].as_array().map(Vec::len), Some(2));
    let (s, metrics) = api.call("GET", "/metrics", None, None).await;
    assert_eq!(s, StatusCode::OK);
    let text = metrics.as_str().expect("text");
    for line in [
        "ovc_operations{kind=\"CREATE\",state=\"SUCCEEDED\"} 1",
        "ovc_operations{kind=\"RESTORE\",state=\"SUCCEEDED\"} 2",
        "ovc_operations{kind=\"DELETE\",state=\"SUCCEEDED\"} 2",
        "ovc_runs{status=\"queued\"} 0",
        "ovc_http_requests_total{method=\"DELETE\",route=\"/v1/vclusters/{name}\",status=\"202\"} 2",
    ] {
        assert!(
            text.lines().any(|l| l == line),
            "missing {line:?} in:\n{text}"
        );
    }
    api.h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idempotency_over_rest() {
    let api = Api::start().await;
    let body = json!({"name": "team-a"});
    let (s1, first) = api
        .call("POST", "/v1/vclusters", Some(body.clone()), Some("k-1"))
        .await;
    assert_eq!(s1, StatusCode::ACCEPTED);
    let (s2, again) = api
        .call("POST", "/v1/vclusters", Some(body.clone()), Some("k-1"))
        .await;
    assert_eq!(s2, StatusCode::OK, "a repeat answers 200");
    assert_eq!(again["id"], first["id"]);
    let (s3, reused) = api
        .call(
            "POST",
            "/v1/vclusters",
            Some(json!({"name": "team-b"})),
            Some("k-1"),
        )
        .await;
    assert_error(s3, &reused, StatusCode::BAD_REQUEST, "INVALID_ARGUMENT");
    assert_eq!(reused["error"]["details"][0]["reason"], "REQUEST_ID_REUSED");
    let (s4, differ) = api
        .call(
            "POST",
            "/v1/vclusters",
            Some(json!({"name": "team-c", "request_id": "x"})),
            Some("y"),
        )
        .await;
    assert_error(s4, &differ, StatusCode::BAD_REQUEST, "INVALID_ARGUMENT");
    // 50 concurrent identical requests: one operation.
    let mut tasks = Vec::new();
    for _ in 0..50 {
        let app = api.app.clone();
        tasks.push(tokio::spawn(async move {
            let req = Request::builder()
                .method("POST")
                .uri("/v1/vclusters")
                .header("idempotency-key", "race")
                .header("content-type", "application/json")
                .body(Body::from(json!({"name": "raced"}).to_string()))
                .expect("req");
            let res = app.oneshot(req).await.expect("call");
            let status = res.status();
            let bytes = res.into_body().collect().await.expect("body").to_bytes();
            (
                status,
                serde_json::from_slice::<Value>(&bytes).expect("json")["id"].clone(),
            )
        }));
    }
    let mut ids = std::collections::BTreeSet::new();
    let mut accepted = 0;
    for t in tasks {
        let (s, id) = t.await.expect("task");
        assert!(s == StatusCode::ACCEPTED || s == StatusCode::OK, "{s}");
        if s == StatusCode::ACCEPTED {
            accepted += 1;
        }
        ids.insert(id.to_string());
    }
    assert_eq!((ids.len(), accepted), (1, 1), "{ids:?}");
    api.h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn errors_have_the_status_of_api_md() {
    let api = Api::start().await;
    let (_, op) = api
        .call(
            "POST",
            "/v1/vclusters",
            Some(json!({"name": "team-a"})),
            None,
        )
        .await;
    api.wait(&op).await;
    let head = api.h.store.head_position().await.expect("head");
    let cases: Vec<ErrorCase> = vec![
        (
            "GET",
            "/v1/vclusters/nope".into(),
            None,
            StatusCode::NOT_FOUND,
            "NOT_FOUND",
            None,
        ),
        (
            "POST",
            "/v1/vclusters".into(),
            Some(json!({"name": "team-a"})),
            StatusCode::CONFLICT,
            "ALREADY_EXISTS",
            None,
        ),
        (
            "POST",
            "/v1/vclusters".into(),
            Some(json!({"name": "Team_A"})),
            StatusCode::BAD_REQUEST,
            "INVALID_ARGUMENT",
            Some("Team_A"),
        ),
        (
            "POST",
            "/v1/vclusters".into(),
            Some(json!({"name": "x", "replicas": 3})),
            StatusCode::BAD_REQUEST,
            "INVALID_ARGUMENT",
            Some("replicas"),
        ),
        (
            "POST",
            "/v1/vclusters".into(),
            Some(json!({"name": "x", "spec": {"quota": {"memory": "8GB"}}})),
            StatusCode::BAD_REQUEST,
            "INVALID_ARGUMENT",
            Some("8GB"),
        ),
        (
            "POST",
            "/v1/vclusters".into(),
            Some(json!({"name": "x", "spec": {"control_plane": {"replicas": 2}}})),
            StatusCode::BAD_REQUEST,
            "INVALID_ARGUMENT",
            Some("replicas"),
        ),
        (
            "POST",
            "/v1/vclusters/team-a/resume".into(),
            None,
            StatusCode::BAD_REQUEST,
            "FAILED_PRECONDITION",
            Some("RUNNING"),
        ),
        (
            "POST",
            "/v1/vclusters/team-a/scale".into(),
            Some(json!({})),
            StatusCode::BAD_REQUEST,
            "INVALID_ARGUMENT",
            Some("changes nothing"),
        ),
        (
            "POST",
            "/v1/vclusters/nope/suspend".into(),
            None,
            StatusCode::NOT_FOUND,
            "NOT_FOUND",
            None,
        ),
        (
            "GET",
            "/v1/operations/not-a-uuid".into(),
            None,
            StatusCode::BAD_REQUEST,
            "INVALID_ARGUMENT",
            None,
        ),
        (
            "GET",
            format!("/v1/operations/{}", uuid::Uuid::nil()),
            None,
            StatusCode::NOT_FOUND,
            "NOT_FOUND",
            None,
        ),
        (
            "GET",
            "/v1/vclusters?page_size=0".into(),
            None,
            StatusCode::BAD_REQUEST,
            "INVALID_ARGUMENT",
            Some("page_size"),
        ),
        (
            "GET",
            "/v1/vclusters?page_token=garbage".into(),
            None,
            StatusCode::BAD_REQUEST,
            "INVALID_ARGUMENT",
            Some("page token"),
        ),
        (
            "GET",
            "/v1/operations?state=WEIRD".into(),
            None,
            StatusCode::BAD_REQUEST,
            "INVALID_ARGUMENT",
            Some("WEIRD"),
        ),
        (
            "GET",
            format!("/v1/operations/{}/wait?timeout=forever", uuid::Uuid::nil()),
            None,
            StatusCode::BAD_REQUEST,
            "INVALID_ARGUMENT",
            Some("timeout"),
        ),
        (
            "GET",
            "/v1/nothing-here".into(),
            None,
            StatusCode::NOT_FOUND,
            "NOT_FOUND",
            None,
        ),
        (
            "POST",
            format!("/v1/operations/{}/retry", op["id"].as_str().expect("id")),
            None,
            StatusCode::BAD_REQUEST,
            "FAILED_PRECONDITION",
            Some("SUCCEEDED"),
        ),
        (
            "POST",
            format!("/v1/operations/{}/cancel", op["id"].as_str().expect("id")),
            None,
            StatusCode::BAD_REQUEST,
            "FAILED_PRECONDITION",
            None,
        ),
    ];
    for (method, uri, body, want, name, mentions) in cases {
        let (s, b) = api.call(method, &uri, body.clone(), None).await;
        assert_error(s, &b, want, name);
        if let Some(m) = mentions {
            assert!(
                b["error"]["message"]
                    .as_str()
                    .is_some_and(|msg| msg.contains(m)),
                "{method} {uri}: {b}"
            );
        }
    }
    // A malformed body is INVALID_ARGUMENT, not a 5xx.
    let req = Request::builder()
        .method("POST")
        .uri("/v1/vclusters")
        .header("content-type", "application/json")
        .body(Body::from("{not json"))
        .expect("req");
    let res = api.app.clone().oneshot(req).await.expect("call");
    assert_eq!(res.status(), StatusCode::BAD_REQUEST);
    // An oversized body is refused too.
    let big = json!({"name": "big", "spec": {"helm_values": {"x": "y".repeat(300 * 1024)}}});
    let (s, _) = api.call("POST", "/v1/vclusters", Some(big), None).await;
    assert!(s.is_client_error(), "{s}");
    assert_eq!(
        api.h.store.head_position().await.expect("head"),
        head,
        "a refused request wrote"
    );
    api.h.stop().await;
}

/// Reads SSE frames from `uri` until `until` says stop (or 10 s pass); returns (id, type).
async fn read_sse(
    api: &Api,
    uri: &str,
    last_event_id: Option<u64>,
    until: impl Fn(&[(u64, String)]) -> bool,
) -> Vec<(u64, String)> {
    let mut req = Request::builder()
        .method("GET")
        .uri(uri)
        .header("accept", "text/event-stream");
    if let Some(id) = last_event_id {
        req = req.header("last-event-id", id.to_string());
    }
    let res = api
        .app
        .clone()
        .oneshot(req.body(Body::empty()).expect("req"))
        .await
        .expect("call");
    assert_eq!(res.status(), StatusCode::OK);
    let mut body = res.into_body();
    let mut text = String::new();
    let mut seen = Vec::new();
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(10);
    while !until(&seen) {
        let frame = tokio::time::timeout_at(deadline, body.frame())
            .await
            .expect("SSE frames in time")
            .expect("stream open")
            .expect("frame");
        if let Ok(data) = frame.into_data() {
            text.push_str(&String::from_utf8_lossy(&data));
        }
        while let Some(end) = text.find("\n\n") {
            let block: String = text.drain(..end + 2).collect();
            let mut id = None;
            let mut ty = String::new();
            for line in block.lines() {
                if let Some(v) = line.strip_prefix("id:") {
                    id = v.trim().parse::<u64>().ok();
                } else if let Some(v) = line.strip_prefix("event:") {
                    ty = v.trim().to_string();
                }
            }
            if let Some(id) = id {
                seen.push((id, ty));
            }
        }
    }
    seen
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sse_resumes_with_last_event_id_without_gaps_or_repeats() {
    let api = Api::start().await;
    let (_, op) = api
        .call("POST", "/v1/vclusters", Some(json!({"name": "a"})), None)
        .await;
    api.wait(&op).await;
    // First connection: take 4 events and disconnect.
    let first = read_sse(&api, "/v1/events", None, |s| s.len() >= 4).await;
    let last = first.last().expect("events").0;
    // More happens while the client is away.
    let (_, op2) = api
        .call("POST", "/v1/vclusters", Some(json!({"name": "b"})), None)
        .await;
    api.wait(&op2).await;
    let head = api.h.store.head_position().await.expect("head");
    let second = read_sse(&api, "/v1/events", Some(last), |s| {
        s.last().is_some_and(|e| e.0 >= head)
    })
    .await;
    let ids: Vec<u64> = first.iter().chain(second.iter()).map(|e| e.0).collect();
    assert_eq!(
        ids,
        (1..=head).collect::<Vec<_>>(),
        "skipped or repeated across a reconnect"
    );
    assert_eq!(first[0].1, "CreateRequested");
    // The per-operation feed carries only that operation's events.
    let id = op2["id"].as_str().expect("id");
    let own = read_sse(&api, &format!("/v1/operations/{id}/events"), None, |s| {
        s.iter().any(|e| e.1 == "OperationSucceeded")
    })
    .await;
    assert_eq!(own[0].1, "OperationRequested");
    assert!(own.iter().all(|e| e.1 != "CreateRequested"), "{own:?}");
    api.h.stop().await;
}

async fn token(api: &Api, project: &str, role: ovc_store::Role) -> String {
    let t = ovc_api::auth::new_token();
    api.h
        .store
        .create_token(
            &ovc_store::TokenRecord {
                id: uuid::Uuid::now_v7(),
                name: format!("{project}-{}", role.as_str()),
                project: project.parse().expect("project"),
                role,
                created_at: chrono::Utc::now(),
                expires_at: None,
                revoked_at: None,
            },
            &ovc_api::auth::token_sha256(&t),
        )
        .await
        .expect("token");
    t
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tokens_never_see_or_touch_another_project() {
    use ovc_store::Role;
    let api = Api::start_with(ovc_api::auth::AuthMode::Token).await;
    let alpha = token(&api, "alpha", Role::Operator).await;
    let beta = token(&api, "beta", Role::Operator).await;
    let viewer = token(&api, "beta", Role::Viewer).await;

    let (s, b) = api.call("GET", "/v1/vclusters", None, None).await;
    assert_error(s, &b, StatusCode::UNAUTHORIZED, "UNAUTHENTICATED");
    let (s, b) = api
        .call_as(Some("ovc_not-a-token"), "GET", "/v1/vclusters", None, None)
        .await;
    assert_error(s, &b, StatusCode::UNAUTHORIZED, "UNAUTHENTICATED");

    let (s, op) = api
        .call_as(
            Some(&alpha),
            "POST",
            "/v1/vclusters",
            Some(json!({"name": "x"})),
            None,
        )
        .await;
    assert_eq!(s, StatusCode::ACCEPTED, "{op}");
    assert_eq!(op["project"], "alpha", "a token acts in its own project");
    let id = op["id"].as_str().expect("id").to_string();
    let (s, done) = api
        .call_as(
            Some(&alpha),
            "GET",
            &format!("/v1/operations/{id}/wait?timeout=20s"),
            None,
            None,
        )
        .await;
    assert_eq!(
        (s, done["state"].clone()),
        (StatusCode::OK, json!("SUCCEEDED"))
    );

    // Across the boundary every route answers 404, never 403 or the resource.
    let hidden: Vec<(&str, String, Option<Value>)> = vec![
        ("GET", "/v1/vclusters/x".into(), None),
        ("GET", "/v1/vclusters/x?project=alpha".into(), None),
        ("POST", "/v1/vclusters/x/suspend".into(), None),
        ("POST", "/v1/vclusters/x/suspend?project=alpha".into(), None),
        ("POST", "/v1/vclusters/x/snapshots".into(), None),
        (
            "POST",
            "/v1/vclusters/x/scale".into(),
            Some(json!({"quota": {"pods": 60}})),
        ),
        ("DELETE", "/v1/vclusters/x?project=alpha".into(), None),
        ("GET", format!("/v1/operations/{id}"), None),
        ("GET", format!("/v1/operations/{id}/wait?timeout=1s"), None),
        ("GET", format!("/v1/operations/{id}/events"), None),
        ("POST", format!("/v1/operations/{id}/cancel"), None),
        ("POST", format!("/v1/operations/{id}/retry"), None),
        (
            "POST",
            "/v1/vclusters".into(),
            Some(json!({"name": "y", "project": "alpha"})),
        ),
    ];
    for (method, uri, body) in hidden {
        let (s, b) = api.call_as(Some(&beta), method, &uri, body, None).await;
        assert_error(s, &b, StatusCode::NOT_FOUND, "NOT_FOUND");
    }
    for uri in ["/v1/vclusters", "/v1/operations", "/v1/snapshots"] {
        let (s, b) = api.call_as(Some(&beta), "GET", uri, None, None).await;
        assert_eq!(s, StatusCode::OK);
        let items = b
            .as_object()
            .and_then(|o| o.values().find_map(|v| v.as_array().cloned()));
        assert_eq!(items, Some(vec![]), "{uri}: {b}");
    }
    let (_, feed) = api
        .call_as(Some(&beta), "GET", "/v1/events", None, None)
        .await;
    assert_eq!(
        feed["events"],
        json!([]),
        "beta sees alpha's events: {feed}"
    );
    let (_, feed) = api
        .call_as(Some(&alpha), "GET", "/v1/events", None, None)
        .await;
    assert!(
        feed["events"].as_array().is_some_and(|e| e.len() > 5),
        "{feed}"
    );

    // The same name in another project is another vcluster.
    let (s, op) = api
        .call_as(
            Some(&beta),
            "POST",
            "/v1/vclusters",
            Some(json!({"name": "x"})),
            None,
        )
        .await;
    assert_eq!(s, StatusCode::ACCEPTED, "{op}");
    // A viewer reads but does not change.
    let (s, b) = api
        .call_as(
            Some(&viewer),
            "POST",
            "/v1/vclusters",
            Some(json!({"name": "z"})),
            None,
        )
        .await;
    assert_error(s, &b, StatusCode::FORBIDDEN, "PERMISSION_DENIED");
    let (s, _) = api
        .call_as(Some(&viewer), "GET", "/v1/vclusters/x", None, None)
        .await;
    assert_eq!(s, StatusCode::OK);
    api.h.stop().await;
}

/// `/openapi.json` documents every route of API.md's table, each with the error body of
/// API.md on its 4xx answers, and an oversized or malformed query is the JSON error too.
#[tokio::test]
async fn openapi_documents_every_route_and_errors_are_json() {
    let api = Api::start().await;
    let (s, doc) = api.call("GET", "/openapi.json", None, None).await;
    assert_eq!(s, StatusCode::OK);
    let routes = [
        ("post", "/v1/vclusters"),
        ("get", "/v1/vclusters"),
        ("get", "/v1/vclusters/{name}"),
        ("delete", "/v1/vclusters/{name}"),
        ("post", "/v1/vclusters/{name}/suspend"),
        ("post", "/v1/vclusters/{name}/resume"),
        ("post", "/v1/vclusters/{name}/snapshots"),
        ("post", "/v1/vclusters/{name}/scale"),
        ("post", "/v1/vclusters/{name}/upgrade"),
        ("get", "/v1/snapshots"),
        ("get", "/v1/snapshots/{id}"),
        ("delete", "/v1/snapshots/{id}"),
        ("get", "/v1/vclusters/{name}/kubeconfig"),
        ("post", "/v1/snapshots/{id}/restore"),
        ("get", "/v1/operations"),
        ("get", "/v1/operations/{id}"),
        ("get", "/v1/operations/{id}/wait"),
        ("post", "/v1/operations/{id}/cancel"),
        ("post", "/v1/operations/{id}/retry"),
        ("get", "/v1/events"),
        ("get", "/v1/operations/{id}/events"),
    ];
    for (method, path) in routes {
        let op = &doc["paths"][path][method];
        assert!(op.is_object(), "{method} {path} is not documented");
        assert_eq!(
            op["responses"]["400"]["content"]["application/json"]["schema"]["$ref"],
            "#/components/schemas/ErrorBody",
            "{method} {path}"
        );
    }
    // The registered operations' routes come from the registry, each with its body
    // schema: the workflow's parameters and request_id.
    for (route, body, field) in [
        ("suspend", "SuspendBody", "evict_workloads"),
        ("resume", "ResumeBody", "reconcile_workloads"),
        ("snapshots", "SnapshotBody", "description"),
        ("scale", "ScaleBody", "control_plane"),
        ("upgrade", "UpgradeBody", "kubernetes_version"),
    ] {
        let op = &doc["paths"][format!("/v1/vclusters/{{name}}/{route}")]["post"];
        assert_eq!(
            op["requestBody"]["content"]["application/json"]["schema"]["$ref"],
            format!("#/components/schemas/{body}"),
            "{route}: {op}"
        );
        let schema = &doc["components"]["schemas"][body]["properties"];
        assert!(schema[field].is_object(), "{body}: {schema}");
        assert!(schema["request_id"].is_object(), "{body}: {schema}");
        assert!(op["responses"]["415"].is_object(), "{route}");
        assert_eq!(
            op["parameters"].as_array().map(Vec::len),
            Some(4),
            "{route}"
        );
    }
    let kinds = &doc["components"]["schemas"]["OperationKind"]["enum"];
    assert!(
        kinds
            .as_array()
            .is_some_and(|k| k.len() >= 9 && k.contains(&json!("UPGRADE"))),
        "{kinds}"
    );
    // An operation the registry does not have is NOT_FOUND with API.md's error body.
    let (s, body) = api
        .call("POST", "/v1/vclusters/vc/explode", Some(json!({})), None)
        .await;
    assert_eq!(s, StatusCode::NOT_FOUND, "{body}");
    assert_eq!(body["error"]["status"], "NOT_FOUND", "{body}");
    // Query and path rejections use API.md's error body, not axum's plain text.
    for uri in [
        "/v1/events?after=-1",
        "/v1/vclusters?page_size=banana",
        "/v1/operations?unknown=1",
    ] {
        let (s, body) = api.call("GET", uri, None, None).await;
        assert_eq!(s, StatusCode::BAD_REQUEST, "{uri}");
        assert_eq!(body["error"]["status"], "INVALID_ARGUMENT", "{uri}: {body}");
    }
    api.h.stop().await;
}

/// A token over its rate limit gets 429 RESOURCE_EXHAUSTED with `Retry-After`; another
/// token is not affected, and the refused request wrote nothing.
#[tokio::test]
async fn rate_limit_is_per_token_with_retry_after() {
    use ovc_store::Role;
    let api = Api::start_state(ovc_api::auth::AuthMode::Token, |s| {
        s.with_rate_limit(0.2, 2)
    })
    .await;
    let a = token(&api, "alpha", Role::Operator).await;
    let b = token(&api, "alpha", Role::Operator).await;
    for _ in 0..2 {
        let (s, _) = api
            .call_as(Some(&a), "GET", "/v1/vclusters", None, None)
            .await;
        assert_eq!(s, StatusCode::OK);
    }
    let head = api.h.store.head_position().await.expect("head");
    let req = Request::builder()
        .method("POST")
        .uri("/v1/vclusters")
        .header("authorization", format!("Bearer {a}"))
        .header("content-type", "application/json")
        .body(Body::from(json!({"name": "limited"}).to_string()))
        .expect("req");
    let res = api.app.clone().oneshot(req).await.expect("call");
    assert_eq!(res.status(), StatusCode::TOO_MANY_REQUESTS);
    let retry_after: u64 = res.headers()["retry-after"]
        .to_str()
        .expect("ascii")
        .parse()
        .expect("seconds");
    assert!((1..=5).contains(&retry_after), "{retry_after}");
    let bytes = res.into_body().collect().await.expect("body").to_bytes();
    let body: Value = serde_json::from_slice(&bytes).expect("json");
    assert_eq!(body["error"]["status"], "RESOURCE_EXHAUSTED");
    assert_eq!(body["error"]["details"][0]["reason"], "RATE_LIMITED");
    assert_eq!(api.h.store.head_position().await.expect("head"), head);
    // Another token of the same project has its own bucket.
    let (s, _) = api
        .call_as(Some(&b), "GET", "/v1/vclusters", None, None)
        .await;
    assert_eq!(s, StatusCode::OK);
    api.h.stop().await;
}

/// `/metrics` has a step-duration histogram per (kind, step, outcome), fed by the event
/// log: after one create, every step of the create has one observation.
#[tokio::test]
async fn metrics_histogram_step_durations_from_the_log() {
    let api = Api::start().await;
    let (_, op) = api
        .call("POST", "/v1/vclusters", Some(json!({"name": "m"})), None)
        .await;
    let done = api.wait(&op).await;
    assert_eq!(done["state"], "SUCCEEDED");
    let steps: Vec<String> = done["steps"]
        .as_array()
        .expect("steps")
        .iter()
        .map(|s| s["name"].as_str().expect("name").to_string())
        .collect();
    assert!(!steps.is_empty());
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        let req = Request::builder()
            .uri("/metrics")
            .body(Body::empty())
            .expect("req");
        let res = api.app.clone().oneshot(req).await.expect("call");
        assert_eq!(res.status(), StatusCode::OK);
        let text = String::from_utf8(
            res.into_body()
                .collect()
                .await
                .expect("body")
                .to_bytes()
                .to_vec(),
        )
        .expect("utf-8");
        let all = steps.iter().all(|s| {
            text.contains(&format!(
                "ovc_step_duration_seconds_count{{kind=\"CREATE\",step=\"{s}\",outcome=\"succeeded\"}} 1"
            ))
        });
        if all {
            assert!(text.contains("# TYPE ovc_step_duration_seconds histogram"));
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "steps {steps:?} not all in /metrics:\n{text}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    api.h.stop().await;
}

/// Different commands racing on one vcluster: exactly one is accepted; each loser gets
/// FAILED_PRECONDITION (it read the state after the winner committed) or ABORTED (it
/// read the same version as the winner and lost the commit), never a 5xx or a second
/// operation. ABORTED must show up within the rounds (PostgreSQL runs accepts in
/// parallel).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn racing_commands_one_wins_others_failed_precondition_or_aborted() {
    let api = Api::start_on(Backend::Postgres, ovc_api::auth::AuthMode::None, |s| s).await;
    let (_, op) = api
        .call("POST", "/v1/vclusters", Some(json!({"name": "race"})), None)
        .await;
    assert_eq!(api.wait(&op).await["state"], "SUCCEEDED");
    let mut aborted = 0;
    for round in 0..40 {
        let mut tasks = Vec::new();
        for i in 0..12 {
            let app = api.app.clone();
            let (uri, body) = if i % 2 == 0 {
                (
                    "/v1/vclusters/race/suspend",
                    json!({"request_id": format!("s-{round}-{i}")}),
                )
            } else {
                (
                    "/v1/vclusters/race/scale",
                    json!({"quota": {"pods": 100 + round * 20 + i}, "request_id": format!("c-{round}-{i}")}),
                )
            };
            tasks.push(tokio::spawn(async move {
                let req = Request::builder()
                    .method("POST")
                    .uri(uri)
                    .header("content-type", "application/json")
                    .body(Body::from(body.to_string()))
                    .expect("req");
                let res = app.oneshot(req).await.expect("call");
                let status = res.status();
                let bytes = res.into_body().collect().await.expect("body").to_bytes();
                (
                    status,
                    serde_json::from_slice::<Value>(&bytes).expect("json"),
                )
            }));
        }
        let mut winners = Vec::new();
        for t in tasks {
            let (status, body) = t.await.expect("task");
            match status {
                StatusCode::ACCEPTED => winners.push(body),
                StatusCode::BAD_REQUEST => {
                    assert_eq!(body["error"]["status"], "FAILED_PRECONDITION", "{body}")
                }
                StatusCode::CONFLICT => {
                    assert_eq!(body["error"]["status"], "ABORTED", "{body}");
                    aborted += 1;
                }
                other => panic!("unexpected {other}: {body}"),
            }
        }
        // Usually one wins; on a loaded machine a winner may already have ended before a
        // late request arrived, which may then win too. What must hold: accepted
        // operations never overlap (each starts after the previous one ended).
        assert!(!winners.is_empty(), "round {round}: no request won");
        winners.sort_by(|a, b| {
            a["created_at"]
                .as_str()
                .unwrap_or_default()
                .cmp(b["created_at"].as_str().unwrap_or_default())
        });
        let mut done = Value::Null;
        for (k, w) in winners.iter().enumerate() {
            done = api.wait(w).await;
            assert_eq!(done["state"], "SUCCEEDED", "{done}");
            if let Some(next) = winners.get(k + 1) {
                let ended: chrono::DateTime<chrono::Utc> = done["updated_at"]
                    .as_str()
                    .expect("ended")
                    .parse()
                    .expect("time");
                let started: chrono::DateTime<chrono::Utc> = next["created_at"]
                    .as_str()
                    .expect("created")
                    .parse()
                    .expect("time");
                assert!(
                    ended <= started,
                    "round {round}: two accepted operations overlap: {winners:?}"
                );
            }
        }
        if done["kind"] == "SUSPEND" {
            let (_, op) = api
                .call("POST", "/v1/vclusters/race/resume", None, None)
                .await;
            assert_eq!(api.wait(&op).await["state"], "SUCCEEDED");
        }
        if aborted > 0 && round >= 4 {
            break;
        }
    }
    assert!(aborted > 0, "no request lost a commit race in 40 rounds");
    // One operation per round plus the create and the resumes: nothing ran twice.
    let (_, list) = api
        .call(
            "GET",
            "/v1/operations?vcluster=race&page_size=1000",
            None,
            None,
        )
        .await;
    for op in list["operations"].as_array().expect("ops") {
        assert_eq!(op["state"], "SUCCEEDED", "{op}");
    }
    api.h.stop().await;
}

/// The kubeconfig is read live from the host: an API without a host driver answers 503
/// UNAVAILABLE (safe to retry), never a 500.
#[tokio::test]
async fn kubeconfig_without_a_host_is_unavailable() {
    let api = Api::start().await;
    let (_, op) = api
        .call("POST", "/v1/vclusters", Some(json!({"name": "k"})), None)
        .await;
    assert_eq!(api.wait(&op).await["state"], "SUCCEEDED");
    let (s, body) = api
        .call("GET", "/v1/vclusters/k/kubeconfig", None, None)
        .await;
    assert_eq!(s, StatusCode::SERVICE_UNAVAILABLE, "{body}");
    assert_eq!(body["error"]["status"], "UNAVAILABLE");
    let (s, body) = api
        .call("GET", "/v1/vclusters/nope/kubeconfig", None, None)
        .await;
    assert_eq!(s, StatusCode::NOT_FOUND, "{body}");
    api.h.stop().await;
}

/// `GET /v1/vclusters?label=k=v` filters on the spec's labels, on both backends.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn list_filters_by_label_on_both_backends() {
    for backend in [Backend::Sqlite, Backend::Postgres] {
        let api = Api::start_on(backend, ovc_api::auth::AuthMode::None, |s| s).await;
        for (name, env) in [("a", "dev"), ("b", "prod"), ("c", "dev")] {
            let (s, op) = api
                .call(
                    "POST",
                    "/v1/vclusters",
                    Some(json!({"name": name, "spec": {"labels": {"env": env, "team": name}}})),
                    None,
                )
                .await;
            assert_eq!(s, StatusCode::ACCEPTED, "{op}");
        }
        let names = |v: &Value| -> Vec<String> {
            v["vclusters"]
                .as_array()
                .expect("list")
                .iter()
                .map(|x| x["name"].as_str().expect("name").to_string())
                .collect()
        };
        let (s, v) = api
            .call("GET", "/v1/vclusters?label=env=dev", None, None)
            .await;
        assert_eq!(s, StatusCode::OK, "{v}");
        assert_eq!(names(&v), ["a", "c"], "{backend:?}");
        // Paging keeps the filter.
        let (_, p1) = api
            .call("GET", "/v1/vclusters?label=env=dev&page_size=1", None, None)
            .await;
        assert_eq!(names(&p1), ["a"]);
        let token = p1["next_page_token"].as_str().expect("token");
        let (_, p2) = api
            .call(
                "GET",
                &format!("/v1/vclusters?label=env=dev&page_size=1&page_token={token}"),
                None,
                None,
            )
            .await;
        assert_eq!(names(&p2), ["c"]);
        let (_, v) = api
            .call("GET", "/v1/vclusters?label=team=b", None, None)
            .await;
        assert_eq!(names(&v), ["b"]);
        let (_, v) = api
            .call("GET", "/v1/vclusters?label=env=qa", None, None)
            .await;
        assert!(names(&v).is_empty());
        let (s, v) = api.call("GET", "/v1/vclusters?label=env", None, None).await;
        assert_eq!(s, StatusCode::BAD_REQUEST, "{v}");
        assert_eq!(v["error"]["details"][0]["reason"], "INVALID_LABEL");
        api.h.stop().await;
    }
}

/// `/readyz` is 503 UNAVAILABLE until every migration of this build is applied, then 200.
#[tokio::test]
async fn readyz_waits_for_migrations() {
    let dir = tempfile::tempdir().expect("tmp");
    let url = format!("sqlite://{}", dir.path().join("fresh.db").display());
    let store = ovc_store::open(&url, ovc_store::StoreConfig::default())
        .await
        .expect("open");
    let app = ovc_api::router(ovc_api::AppState::new(
        store.clone(),
        Arc::new(ovc_workflows::registry()),
        ovc_api::auth::AuthMode::None,
    ));
    let get = |app: axum::Router| async move {
        let req = Request::builder()
            .uri("/readyz")
            .body(Body::empty())
            .expect("req");
        let res = app.oneshot(req).await.expect("call");
        let status = res.status();
        let bytes = res.into_body().collect().await.expect("body").to_bytes();
        (status, String::from_utf8_lossy(&bytes).into_owned())
    };
    let (s, body) = get(app.clone()).await;
    assert_eq!(s, StatusCode::SERVICE_UNAVAILABLE, "{body}");
    assert!(body.contains("ovc migrate"), "{body}");
    assert!(
        !store
            .pending_migrations()
            .await
            .expect("pending")
            .is_empty()
    );
    store.migrate().await.expect("migrate");
    assert!(
        store
            .pending_migrations()
            .await
            .expect("pending")
            .is_empty()
    );
    let (s, body) = get(app).await;
    assert_eq!(s, StatusCode::OK, "{body}");
}

/// Every list route takes its own filters only: another list's filter or an unknown
/// parameter is INVALID_ARGUMENT naming it (never silently ignored);
/// `/v1/snapshots?state=` filters; `/v1/operations` is newest first and its pages stay
/// put while new operations are committed. Both backends.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn list_routes_refuse_filters_they_do_not_support_on_both_backends() {
    for backend in [Backend::Sqlite, Backend::Postgres] {
        let api = Api::start_on(backend, ovc_api::auth::AuthMode::None, |s| s).await;
        let mut created = Vec::new();
        for name in ["a", "b", "c"] {
            let (s, op) = api
                .call("POST", "/v1/vclusters", Some(json!({"name": name})), None)
                .await;
            assert_eq!(s, StatusCode::ACCEPTED, "{op}");
            api.wait(&op).await;
            created.push(op["id"].as_str().expect("id").to_string());
        }
        let (s, op) = api
            .call("POST", "/v1/vclusters/a/snapshots", Some(json!({})), None)
            .await;
        assert_eq!(s, StatusCode::ACCEPTED, "{op}");
        api.wait(&op).await;
        for (uri, param) in [
            ("/v1/snapshots?kind=CREATE", "kind"),
            ("/v1/snapshots?label=env=dev", "label"),
            ("/v1/snapshots?since=2020-01-01T00:00:00Z", "since"),
            ("/v1/vclusters?kind=CREATE", "kind"),
            ("/v1/vclusters?vcluster=a", "vcluster"),
            ("/v1/operations?label=env=dev", "label"),
            ("/v1/operations?bogus=1", "bogus"),
            ("/v1/vclusters?bogus=1", "bogus"),
            ("/v1/snapshots?bogus=1", "bogus"),
        ] {
            let (s, v) = api.call("GET", uri, None, None).await;
            assert_eq!(s, StatusCode::BAD_REQUEST, "{uri}: {v}");
            assert_eq!(v["error"]["status"], "INVALID_ARGUMENT", "{uri}: {v}");
            let msg = v["error"]["message"].as_str().unwrap_or_default();
            assert!(
                msg.contains(param),
                "{uri}: the message names {param}: {msg}"
            );
        }
        let count = |v: &Value| v["snapshots"].as_array().map(Vec::len);
        let (s, v) = api
            .call("GET", "/v1/snapshots?state=READY", None, None)
            .await;
        assert_eq!((s, count(&v)), (StatusCode::OK, Some(1)), "{v}");
        let (_, v) = api
            .call("GET", "/v1/snapshots?state=FAILED", None, None)
            .await;
        assert_eq!(count(&v), Some(0), "{v}");
        let (s, v) = api
            .call("GET", "/v1/snapshots?state=WEIRD", None, None)
            .await;
        assert_eq!(s, StatusCode::BAD_REQUEST, "{v}");

        // Newest first, and page 2 does not move when operations land in between.
        let ids = |v: &Value| -> Vec<String> {
            v["operations"]
                .as_array()
                .expect("operations")
                .iter()
                .map(|o| o["id"].as_str().expect("id").to_string())
                .collect()
        };
        let (_, all) = api.call("GET", "/v1/operations", None, None).await;
        let all = ids(&all);
        assert_eq!(all.len(), 4, "{all:?}");
        let created_newest_first: Vec<String> = created.iter().rev().cloned().collect();
        assert_eq!(all[1..], created_newest_first[..], "newest first");
        let (_, p1) = api
            .call("GET", "/v1/operations?page_size=2", None, None)
            .await;
        let token = p1["next_page_token"].as_str().expect("token").to_string();
        let (s, op) = api
            .call("POST", "/v1/vclusters", Some(json!({"name": "d"})), None)
            .await;
        assert_eq!(s, StatusCode::ACCEPTED, "{op}");
        let (_, p2) = api
            .call(
                "GET",
                &format!("/v1/operations?page_size=2&page_token={token}"),
                None,
                None,
            )
            .await;
        let seen: Vec<String> = ids(&p1).into_iter().chain(ids(&p2)).collect();
        assert_eq!(seen, all, "{backend:?}");
        api.h.stop().await;
    }
}
