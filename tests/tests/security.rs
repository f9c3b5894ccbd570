//! The security rules of docs/architecture.md "Security model", tried as an attacker and
//! as a careless client would, in process over a real store (both backends) with a worker
//! on the simulated host: roles (kubeconfigs need operator, deletes need admin), the
//! kubeconfig audit trail, revoked and expired tokens, the `Bearer` scheme in any case,
//! JSON bodies only as `application/json` (415), the loopback-only rule of the no-auth
//! mode (Host, Origin) on REST and gRPC, and `/metrics` labels from closed sets only.

use axum::body::Body;
use axum::http::{Request, StatusCode};
use http_body_util::BodyExt;
use ovc_api::auth::AuthMode;
use ovc_driver::sim::SimConfig;
use ovc_store::{Backend, Role, TokenRecord};
use ovc_tests::{Harness, HarnessOptions};
use serde_json::{Value, json};
use std::sync::Arc;
use tower::ServiceExt;

ovc_testkit::both_backends!(
    kubeconfigs_need_operator_and_every_read_is_audited,
    kubeconfig_reads_without_auth_are_audited_as_anonymous,
    deletes_need_admin,
    revoked_and_expired_tokens_are_unauthenticated,
    json_bodies_need_application_json,
);

struct Api {
    h: Harness,
    state: ovc_api::AppState,
    app: axum::Router,
}

impl Api {
    async fn start(backend: Backend, auth: AuthMode, sim: SimConfig) -> Api {
        let h = Harness::start(
            backend,
            HarnessOptions {
                sim,
                ..HarnessOptions::default()
            },
        )
        .await;
        let state =
            ovc_api::AppState::new(h.store.clone(), Arc::new(ovc_workflows::registry()), auth)
                .with_host(h.sim.clone());
        let app = ovc_api::router(state.clone());
        Api { h, state, app }
    }

    /// A token of `project` with `role`, expiring at `expires_at`: (secret, id).
    async fn token_until(
        &self,
        project: &str,
        role: Role,
        expires_at: Option<chrono::DateTime<chrono::Utc>>,
    ) -> (String, uuid::Uuid) {
        let secret = ovc_api::auth::new_token();
        let id = uuid::Uuid::now_v7();
        self.h
            .store
            .create_token(
                &TokenRecord {
                    id,
                    name: format!("{project}-{}", role.as_str()),
                    project: project.parse().expect("project"),
                    role,
                    created_at: chrono::Utc::now(),
                    expires_at,
                    revoked_at: None,
                },
                &ovc_api::auth::token_sha256(&secret),
            )
            .await
            .expect("token");
        (secret, id)
    }

    async fn token(&self, project: &str, role: Role) -> (String, uuid::Uuid) {
        self.token_until(project, role, None).await
    }

    /// Sends `req` as it is; the status and the body (JSON, or the text as a string).
    async fn send(&self, req: Request<Body>) -> (StatusCode, Value) {
        let res = self.app.clone().oneshot(req).await.expect("call");
        let status = res.status();
        let bytes = res.into_body().collect().await.expect("body").to_bytes();
        let v = serde_json::from_slice(&bytes)
            .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&bytes).into()));
        (status, v)
    }

    /// `method uri` with `Authorization: Bearer <token>` (when given) and a JSON body.
    async fn call(
        &self,
        token: Option<&str>,
        method: &str,
        uri: &str,
        body: Option<Value>,
    ) -> (StatusCode, Value) {
        let mut req = Request::builder().method(method).uri(uri);
        if let Some(t) = token {
            req = req.header("authorization", format!("Bearer {t}"));
        }
        let body = match body {
            Some(b) => {
                req = req.header("content-type", "application/json");
                Body::from(b.to_string())
            }
            None => Body::empty(),
        };
        self.send(req.body(body).expect("request")).await
    }

    /// Waits until the operation `op` is done; the final operation.
    async fn wait(&self, token: Option<&str>, op: &Value) -> Value {
        let id = op["id"].as_str().unwrap_or_else(|| panic!("no id in {op}"));
        let (s, done) = self
            .call(
                token,
                "GET",
                &format!("/v1/operations/{id}/wait?timeout=20s"),
                None,
            )
            .await;
        assert_eq!(s, StatusCode::OK, "{done}");
        assert_eq!(done["done"], true, "{done}");
        done
    }

    /// Creates vcluster `name` as `token` and waits until it is RUNNING.
    async fn create(&self, token: Option<&str>, name: &str) {
        let (s, op) = self
            .call(token, "POST", "/v1/vclusters", Some(json!({"name": name})))
            .await;
        assert_eq!(s, StatusCode::ACCEPTED, "{op}");
        assert_eq!(self.wait(token, &op).await["state"], "SUCCEEDED");
    }

    /// Every event the store holds on `audit-<project>`.
    async fn audit(&self, project: &str) -> Vec<ovc_store::RecordedEvent> {
        let stream = ovc_types::event::StreamName::audit(&project.parse().expect("project"));
        self.h
            .store
            .read_stream(&stream, 0, 1000)
            .await
            .expect("read audit stream")
    }
}

fn assert_error(status: StatusCode, body: &Value, want: StatusCode, name: &str, reason: &str) {
    assert_eq!(status, want, "{body}");
    assert_eq!(body["error"]["status"], name, "{body}");
    assert_eq!(body["error"]["code"], want.as_u16(), "{body}");
    assert_eq!(body["error"]["details"][0]["reason"], reason, "{body}");
}

async fn kubeconfigs_need_operator_and_every_read_is_audited(backend: Backend) {
    let api = Api::start(backend, AuthMode::Token, SimConfig::default()).await;
    let (viewer, _) = api.token("alpha", Role::Viewer).await;
    let (operator, operator_id) = api.token("alpha", Role::Operator).await;
    let (beta, _) = api.token("beta", Role::Admin).await;
    api.create(Some(&operator), "k").await;
    let uri = "/v1/vclusters/k/kubeconfig";

    // A viewer reads the vcluster but not its kubeconfig (a full-control credential).
    let (s, vc) = api
        .call(Some(&viewer), "GET", "/v1/vclusters/k", None)
        .await;
    assert_eq!(s, StatusCode::OK, "{vc}");
    let (s, b) = api.call(Some(&viewer), "GET", uri, None).await;
    assert_error(
        s,
        &b,
        StatusCode::FORBIDDEN,
        "PERMISSION_DENIED",
        "ROLE_VIEWER",
    );
    // Another project's token sees nothing at all.
    let (s, b) = api.call(Some(&beta), "GET", uri, None).await;
    assert_eq!(s, StatusCode::NOT_FOUND, "{b}");
    assert!(
        api.audit("alpha").await.is_empty(),
        "refused reads are not reads"
    );

    // An operator reads it, twice: two audit events, who and which, never the content.
    let mut kubeconfig = String::new();
    for _ in 0..2 {
        let (s, b) = api.call(Some(&operator), "GET", uri, None).await;
        assert_eq!(s, StatusCode::OK, "{b}");
        kubeconfig = b["kubeconfig"].as_str().expect("kubeconfig").to_string();
    }
    assert!(!kubeconfig.is_empty());
    let audit = api.audit("alpha").await;
    assert_eq!(audit.len(), 2, "{audit:?}");
    for e in &audit {
        assert_eq!(e.event_type, "KubeconfigRead");
        assert_eq!(e.data["vcluster"], "k");
        assert_eq!(e.data["project"], "alpha");
        assert_eq!(e.data["vcluster_uid"], vc["uid"]);
        assert_eq!(e.data["token_id"], operator_id.to_string());
        assert_eq!(e.data["role"], "operator");
        assert_eq!(e.metadata["actor"], "alpha-operator");
        let stored = format!("{} {:?}", e.data, e.metadata);
        for line in kubeconfig.lines().filter(|l| l.trim().len() > 12) {
            assert!(
                !stored.contains(line.trim()),
                "kubeconfig content in {stored}"
            );
        }
    }
    // The project's own tokens see the trail in the event feed; other projects do not.
    let seen = |token: String| {
        let api = &api;
        async move {
            let (s, page) = api
                .call(Some(&token), "GET", "/v1/events?limit=1000", None)
                .await;
            assert_eq!(s, StatusCode::OK, "{page}");
            page["events"]
                .as_array()
                .expect("events")
                .iter()
                .filter(|e| e["type"] == "KubeconfigRead")
                .count()
        }
    };
    assert_eq!(seen(viewer.clone()).await, 2);
    assert_eq!(seen(beta.clone()).await, 0);
    // The audit stream has no projection and breaks no rebuild.
    let before = api.h.store.dump_projections().await.expect("dump");
    api.h.store.rebuild_projections().await.expect("rebuild");
    assert_eq!(api.h.store.dump_projections().await.expect("dump"), before);
    api.h.stop().await;
}

async fn kubeconfig_reads_without_auth_are_audited_as_anonymous(backend: Backend) {
    let api = Api::start(backend, AuthMode::None, SimConfig::default()).await;
    api.create(None, "k").await;
    let (s, b) = api
        .call(None, "GET", "/v1/vclusters/k/kubeconfig", None)
        .await;
    assert_eq!(s, StatusCode::OK, "{b}");
    let audit = api.audit("default").await;
    assert_eq!(audit.len(), 1, "{audit:?}");
    assert_eq!(audit[0].event_type, "KubeconfigRead");
    assert_eq!(audit[0].data["role"], "anonymous");
    assert_eq!(audit[0].data.get("token_id"), None);
    assert_eq!(audit[0].metadata["actor"], "anonymous");
    api.h.stop().await;
}

async fn deletes_need_admin(backend: Backend) {
    // Deletes fail at their first step, so there is a failed delete to retry too.
    let sim = SimConfig {
        faults: ovc_driver::sim::FaultRule::parse_list("delete/uninstall_release:permanent")
            .expect("faults"),
        ..SimConfig::default()
    };
    let api = Api::start(backend, AuthMode::Token, sim).await;
    let (operator, _) = api.token("alpha", Role::Operator).await;
    let (admin, _) = api.token("alpha", Role::Admin).await;
    api.create(Some(&operator), "d").await;
    let (s, op) = api
        .call(Some(&operator), "POST", "/v1/vclusters/d/snapshots", None)
        .await;
    assert_eq!(s, StatusCode::ACCEPTED, "{op}");
    let snap = api.wait(Some(&operator), &op).await;
    assert_eq!(snap["state"], "SUCCEEDED", "{snap}");
    let snapshot_id = snap["id"].as_str().expect("id").to_string();

    // An operator may not delete a vcluster or a snapshot; nothing is written.
    let head = api.h.store.head_position().await.expect("head");
    let (s, b) = api
        .call(Some(&operator), "DELETE", "/v1/vclusters/d", None)
        .await;
    assert_error(
        s,
        &b,
        StatusCode::FORBIDDEN,
        "PERMISSION_DENIED",
        "ROLE_NOT_ADMIN",
    );
    let (s, b) = api
        .call(
            Some(&operator),
            "DELETE",
            &format!("/v1/snapshots/{snapshot_id}"),
            None,
        )
        .await;
    assert_error(
        s,
        &b,
        StatusCode::FORBIDDEN,
        "PERMISSION_DENIED",
        "ROLE_NOT_ADMIN",
    );
    assert_eq!(api.h.store.head_position().await.expect("head"), head);

    // An admin may; the first delete fails (injected), and retrying it is a delete too.
    let (s, del) = api
        .call(Some(&admin), "DELETE", "/v1/vclusters/d", None)
        .await;
    assert_eq!(s, StatusCode::ACCEPTED, "{del}");
    let failed = api.wait(Some(&admin), &del).await;
    assert_eq!(failed["state"], "FAILED", "{failed}");
    let retry = format!(
        "/v1/operations/{}/retry",
        failed["id"].as_str().expect("id")
    );
    let (s, b) = api.call(Some(&operator), "POST", &retry, None).await;
    assert_error(
        s,
        &b,
        StatusCode::FORBIDDEN,
        "PERMISSION_DENIED",
        "ROLE_NOT_ADMIN",
    );
    let (s, op) = api.call(Some(&admin), "POST", &retry, None).await;
    assert_eq!(s, StatusCode::ACCEPTED, "{op}");
    // (The fault fires in every delete operation, so the retry fails again.)
    api.wait(Some(&admin), &op).await;
    let (s, op) = api
        .call(
            Some(&admin),
            "DELETE",
            &format!("/v1/snapshots/{snapshot_id}"),
            None,
        )
        .await;
    assert_eq!(s, StatusCode::ACCEPTED, "{op}");
    assert_eq!(api.wait(Some(&admin), &op).await["state"], "SUCCEEDED");
    api.h.stop().await;
}

async fn revoked_and_expired_tokens_are_unauthenticated(backend: Backend) {
    let api = Api::start(backend, AuthMode::Token, SimConfig::default()).await;
    let (live, live_id) = api.token("alpha", Role::Viewer).await;
    let (expired, _) = api
        .token_until(
            "alpha",
            Role::Viewer,
            Some(chrono::Utc::now() - chrono::Duration::seconds(1)),
        )
        .await;
    let (later, _) = api
        .token_until(
            "alpha",
            Role::Viewer,
            Some(chrono::Utc::now() + chrono::Duration::days(1)),
        )
        .await;
    let get = |header: String| {
        Request::builder()
            .uri("/v1/vclusters")
            .header("authorization", header)
            .body(Body::empty())
            .expect("request")
    };
    // RFC 7235: the scheme is case-insensitive.
    for scheme in ["Bearer", "bearer", "BEARER", "bEaReR"] {
        let (s, b) = api.send(get(format!("{scheme} {live}"))).await;
        assert_eq!(s, StatusCode::OK, "{scheme}: {b}");
    }
    let (s, b) = api.send(get(format!("Basic {live}"))).await;
    assert_error(
        s,
        &b,
        StatusCode::UNAUTHORIZED,
        "UNAUTHENTICATED",
        "UNAUTHENTICATED",
    );
    let (s, b) = api.call(Some(&later), "GET", "/v1/vclusters", None).await;
    assert_eq!(s, StatusCode::OK, "not yet expired: {b}");
    let (s, b) = api.call(Some(&expired), "GET", "/v1/vclusters", None).await;
    assert_error(
        s,
        &b,
        StatusCode::UNAUTHORIZED,
        "UNAUTHENTICATED",
        "UNAUTHENTICATED",
    );
    assert!(
        b["error"]["message"]
            .as_str()
            .is_some_and(|m| m.contains("expired")),
        "{b}"
    );
    api.h.store.revoke_token(live_id).await.expect("revoke");
    let (s, b) = api.call(Some(&live), "GET", "/v1/vclusters", None).await;
    assert_error(
        s,
        &b,
        StatusCode::UNAUTHORIZED,
        "UNAUTHENTICATED",
        "UNAUTHENTICATED",
    );
    assert!(
        b["error"]["message"]
            .as_str()
            .is_some_and(|m| m.contains("revoked")),
        "{b}"
    );
    api.h.stop().await;
}

async fn json_bodies_need_application_json(backend: Backend) {
    for auth in [AuthMode::None, AuthMode::Token] {
        let api = Api::start(backend, auth, SimConfig::default()).await;
        let token = match auth {
            AuthMode::Token => Some(api.token("default", Role::Admin).await.0),
            AuthMode::None => None,
        };
        let post = |uri: &str, content_type: Option<&str>, body: &'static str| {
            let mut req = Request::builder().method("POST").uri(uri);
            if let Some(t) = &token {
                req = req.header("authorization", format!("Bearer {t}"));
            }
            if let Some(ct) = content_type {
                req = req.header("content-type", ct);
            }
            req.body(Body::from(body)).expect("request")
        };
        let head = api.h.store.head_position().await.expect("head");
        // What a web page may send anywhere without asking: text/plain, forms, no type.
        for ct in [
            Some("text/plain"),
            Some("text/plain;charset=UTF-8"),
            Some("application/x-www-form-urlencoded"),
            Some("multipart/form-data; boundary=x"),
            None,
        ] {
            let (s, b) = api
                .send(post("/v1/vclusters", ct, r#"{"name":"csrf"}"#))
                .await;
            assert_error(
                s,
                &b,
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                "INVALID_ARGUMENT",
                "UNSUPPORTED_MEDIA_TYPE",
            );
        }
        // An empty body declared as something else is refused as well.
        let (s, b) = api
            .send(post("/v1/vclusters/x/suspend", Some("text/plain"), ""))
            .await;
        assert_eq!(s, StatusCode::UNSUPPORTED_MEDIA_TYPE, "{b}");
        assert_eq!(
            api.h.store.head_position().await.expect("head"),
            head,
            "a refused body writes nothing"
        );
        // JSON, in any case and with parameters, is accepted; an empty body needs no type.
        let (s, b) = api
            .send(post(
                "/v1/vclusters",
                Some("Application/JSON; charset=utf-8"),
                r#"{"name":"ok"}"#,
            ))
            .await;
        assert_eq!(s, StatusCode::ACCEPTED, "{b}");
        api.wait(token.as_deref(), &b).await;
        let (s, b) = api.send(post("/v1/vclusters/ok/snapshots", None, "")).await;
        assert_eq!(
            s,
            StatusCode::ACCEPTED,
            "an empty body is the defaults: {b}"
        );
        api.h.stop().await;
    }
}

/// A request to the no-auth REST API with these headers.
fn with_headers(uri: &str, headers: &[(&str, &str)]) -> Request<Body> {
    let mut req = Request::builder().uri(uri);
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    req.body(Body::empty()).expect("request")
}

#[tokio::test]
async fn without_auth_only_loopback_hosts_and_origins_are_answered() {
    let api = Api::start(Backend::Sqlite, AuthMode::None, SimConfig::default()).await;
    for host in [
        "127.0.0.1:8080",
        "localhost:8080",
        "[::1]:8080",
        "127.0.0.2",
    ] {
        let (s, b) = api
            .send(with_headers("/v1/vclusters", &[("host", host)]))
            .await;
        assert_eq!(s, StatusCode::OK, "{host}: {b}");
    }
    // DNS rebinding: the attacker's name resolves to 127.0.0.1.
    for host in [
        "evil.example",
        "evil.example:8080",
        "127.0.0.1.evil.example:8080",
    ] {
        for uri in ["/v1/vclusters", "/healthz", "/v1/nope"] {
            let (s, b) = api.send(with_headers(uri, &[("host", host)])).await;
            assert_error(
                s,
                &b,
                StatusCode::FORBIDDEN,
                "PERMISSION_DENIED",
                "FOREIGN_HOST",
            );
        }
    }
    let (s, b) = api
        .send(with_headers(
            "http://evil.example/v1/vclusters",
            &[("host", "127.0.0.1")],
        ))
        .await;
    assert_error(
        s,
        &b,
        StatusCode::FORBIDDEN,
        "PERMISSION_DENIED",
        "FOREIGN_HOST",
    );
    // A page of another site, or an opaque origin.
    for origin in [
        "https://evil.example",
        "null",
        "http://127.0.0.1.evil.example",
    ] {
        let mut req = with_headers(
            "/v1/vclusters",
            &[("host", "127.0.0.1:8080"), ("origin", origin)],
        );
        *req.method_mut() = axum::http::Method::POST;
        let (s, b) = api.send(req).await;
        assert_error(
            s,
            &b,
            StatusCode::FORBIDDEN,
            "PERMISSION_DENIED",
            "FOREIGN_ORIGIN",
        );
    }
    let (s, b) = api
        .send(with_headers(
            "/v1/vclusters",
            &[
                ("host", "localhost:8080"),
                ("origin", "http://localhost:3000"),
            ],
        ))
        .await;
    assert_eq!(s, StatusCode::OK, "a local page: {b}");

    // gRPC: the same rule on the authority.
    let grpc = ovc_api::grpc::grpc_router(api.state.clone())
        .expect("grpc")
        .into_axum_router();
    let call = |uri: &str| {
        Request::builder()
            .method("POST")
            .uri(uri)
            .header("content-type", "application/grpc")
            .header("te", "trailers")
            .body(Body::from(vec![0u8, 0, 0, 0, 0]))
            .expect("request")
    };
    let res = grpc
        .clone()
        .oneshot(call(
            "http://evil.example:9090/ovc.v1.VClusterService/ListVClusters",
        ))
        .await
        .expect("call");
    assert_eq!(
        res.headers().get("grpc-status").map(|v| v.as_bytes()),
        Some(&b"7"[..]),
        "PERMISSION_DENIED: {res:?}"
    );
    let res = grpc
        .oneshot(call(
            "http://127.0.0.1:9090/ovc.v1.VClusterService/ListVClusters",
        ))
        .await
        .expect("call");
    assert_ne!(
        res.headers().get("grpc-status").map(|v| v.as_bytes()),
        Some(&b"7"[..]),
        "{res:?}"
    );
    api.h.stop().await;

    // With tokens the Host is not checked (a server is reached by its own names).
    let api = Api::start(Backend::Sqlite, AuthMode::Token, SimConfig::default()).await;
    let (t, _) = api.token("default", Role::Viewer).await;
    let auth = format!("Bearer {t}");
    let (s, b) = api
        .send(with_headers(
            "/v1/vclusters",
            &[("host", "ovc.example.com"), ("authorization", &auth)],
        ))
        .await;
    assert_eq!(s, StatusCode::OK, "{b}");
    api.h.stop().await;
}

/// The `name{labels}` part of every series line of `/metrics`.
async fn series(api: &Api) -> std::collections::BTreeSet<String> {
    let (s, text) = api.call(None, "GET", "/metrics", None).await;
    assert_eq!(s, StatusCode::OK);
    text.as_str()
        .expect("text")
        .lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| l.rsplit_once(' ').map(|(k, _)| k.to_string()))
        .collect()
}

#[tokio::test]
async fn metrics_labels_come_from_closed_sets() {
    let api = Api::start(Backend::Sqlite, AuthMode::None, SimConfig::default()).await;
    let grpc = ovc_api::grpc::grpc_router(api.state.clone())
        .expect("grpc")
        .into_axum_router();
    let bogus = |i: usize| {
        (
            axum::http::Method::from_bytes(format!("FOO{i}").as_bytes()).expect("method"),
            format!("/nope{i}"),
        )
    };
    let grpc_call = |path: String| {
        Request::builder()
            .method("POST")
            .uri(path)
            .header("content-type", "application/grpc")
            .body(Body::from(vec![0u8, 0, 0, 0, 0]))
            .expect("request")
    };
    // One of each kind first, so the series they fall into exist.
    let warm_up = |i: usize| {
        let (method, path) = bogus(i);
        let app = api.app.clone();
        let grpc = grpc.clone();
        async move {
            for (m, p) in [
                (method.clone(), path.clone()),
                (method, "/v1/vclusters".to_string()),
                (axum::http::Method::GET, path),
            ] {
                let req = Request::builder().method(m).uri(p).body(Body::empty());
                app.clone()
                    .oneshot(req.expect("request"))
                    .await
                    .expect("call");
            }
            grpc.clone()
                .oneshot(grpc_call(format!("/ovc.v1.Bogus{i}/Method{i}")))
                .await
                .expect("grpc call");
            grpc.oneshot(grpc_call(format!("/ovc.v1.VClusterService/Nope{i}")))
                .await
                .expect("grpc call");
        }
    };
    warm_up(0).await;
    series(&api).await; // (so the count of /metrics itself exists too)
    let before = series(&api).await;
    for i in 1..=1000 {
        warm_up(i).await;
    }
    let after = series(&api).await;
    let added: Vec<_> = after.difference(&before).collect();
    assert!(added.is_empty(), "new series: {added:?}");
    for expected in [
        "ovc_http_requests_total{method=\"other\",route=\"other\",status=\"404\"}",
        "ovc_http_requests_total{method=\"GET\",route=\"other\",status=\"404\"}",
        "ovc_http_requests_total{method=\"other\",route=\"/v1/vclusters\",status=\"405\"}",
        "ovc_grpc_requests_total{method=\"other\",code=\"12\"}",
    ] {
        assert!(after.contains(expected), "missing {expected} in {after:#?}");
    }
    // Real calls keep their names.
    let res = grpc
        .oneshot(grpc_call(
            "/ovc.v1.VClusterService/ListVClusters".to_string(),
        ))
        .await
        .expect("grpc call");
    assert!(res.status().is_success());
    let after = series(&api).await;
    assert!(
        after.iter().any(|s| s.starts_with(
            "ovc_grpc_requests_total{method=\"/ovc.v1.VClusterService/ListVClusters\""
        )),
        "{after:#?}"
    );
    api.h.stop().await;
}
