//! The typed client crate `ovc-client`: its calls against a spawned `ovc dev` (the
//! server a service would talk to), and its retries and feed resumption against a small
//! HTTP server that fails on purpose (the only way to make UNAVAILABLE happen on cue).

use axum::http::HeaderMap;
use ovc_client::{
    Client, Code, CreateVCluster, Error, ListOperations, ListSnapshots, ListVClusters,
    RestoreSnapshot, RestoreTarget, ResumeVCluster, RetryPolicy, ScaleVCluster, SnapshotVCluster,
    SuspendVCluster,
};
use ovc_tests::dev::DevServer;
use ovc_types::spec::{ControlPlanePatch, ScalePatch};
use ovc_types::state::{OperationKind, OperationState, SnapshotState, VClusterState};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

fn dev(data: &std::path::Path, env: &[(&str, &str)]) -> (DevServer, Client) {
    let server = DevServer::start(data, &[], env);
    let client = Client::new(server.http.clone()).expect("client");
    (server, client)
}

fn create(name: &str) -> CreateVCluster {
    CreateVCluster {
        name: name.into(),
        ..CreateVCluster::default()
    }
}

#[tokio::test]
async fn typed_calls_cover_a_vclusters_life() {
    let dir = tempfile::tempdir().expect("tmp");
    let (_server, c) = dev(dir.path(), &[]);
    c.ready().await.expect("ready");

    let accepted = c.create_vcluster(&create("demo")).await.expect("create");
    assert!(!accepted.duplicate);
    assert_eq!(accepted.operation.kind, OperationKind::CREATE);
    let done = c
        .wait(accepted.operation.id, Some(Duration::from_secs(30)))
        .await
        .expect("wait");
    assert_eq!(done.state, OperationState::Succeeded, "{done:?}");
    let vc = c.get_vcluster("demo").await.expect("get");
    assert_eq!(vc.state, VClusterState::Running);
    assert_eq!(vc.last_operation, Some(done.id));
    // The result of a CREATE is the vcluster as it left it.
    assert_eq!(done.result["uid"], vc.uid.to_string());

    let snap = c
        .snapshot_vcluster(
            "demo",
            &SnapshotVCluster {
                description: Some("before scale".into()),
                ..SnapshotVCluster::default()
            },
        )
        .await
        .expect("snapshot");
    let snap = c
        .wait(snap.operation.id, Some(Duration::from_secs(30)))
        .await
        .expect("wait");
    assert_eq!(snap.state, OperationState::Succeeded, "{snap:?}");
    let snapshot_id = snap.result["id"].as_str().expect("snapshot id").to_string();
    let s = c.get_snapshot(&snapshot_id).await.expect("get snapshot");
    assert_eq!(s.state, SnapshotState::Ready);
    assert_eq!(s.description.as_deref(), Some("before scale"));
    let listed = c
        .list_snapshots(&ListSnapshots {
            vcluster: Some("demo".into()),
            ..ListSnapshots::default()
        })
        .await
        .expect("list snapshots");
    assert_eq!(listed.snapshots.len(), 1);
    assert_eq!(listed.snapshots[0].id, s.id);

    let scale = ScaleVCluster {
        patch: ScalePatch {
            control_plane: Some(ControlPlanePatch {
                replicas: Some(3),
                ..ControlPlanePatch::default()
            }),
            quota: None,
        },
        request_id: None,
    };
    let scaled = c.scale_vcluster("demo", &scale).await.expect("scale");
    c.wait(scaled.operation.id, None).await.expect("wait");
    assert_eq!(
        c.get_vcluster("demo")
            .await
            .expect("get")
            .spec
            .control_plane
            .replicas,
        3
    );

    let suspended = c
        .suspend_vcluster("demo", &SuspendVCluster::default())
        .await
        .expect("suspend");
    c.wait(suspended.operation.id, None).await.expect("wait");
    assert_eq!(
        c.get_vcluster("demo").await.expect("get").state,
        VClusterState::Suspended
    );
    let resumed = c
        .resume_vcluster("demo", &ResumeVCluster::default())
        .await
        .expect("resume");
    c.wait(resumed.operation.id, None).await.expect("wait");
    // Any registered operation by its route, with any serializable body (here the
    // workflow's own typed parameters), and the request id given.
    let snap = c
        .start_operation(
            "demo",
            "snapshots",
            &ovc_workflows::snapshot::SnapshotParams {
                description: Some("generic".into()),
            },
            Some("generic-1"),
        )
        .await
        .expect("start operation");
    assert!(!snap.duplicate);
    let done = c.wait(snap.operation.id, None).await.expect("wait");
    assert_eq!(done.kind, OperationKind::SNAPSHOT);
    assert_eq!(done.command.params_json()["description"], "generic");
    let e = c
        .start_operation("demo", "explode", &serde_json::json!({}), None)
        .await
        .expect_err("no such operation");
    assert_eq!(e.code(), Some(Code::NotFound), "{e}");
    assert!(
        c.kubeconfig("demo")
            .await
            .expect("kubeconfig")
            .contains("kind: Config")
    );

    let restore = RestoreSnapshot {
        target: RestoreTarget::NewName("copy".into()),
        request_id: None,
    };
    let restored = c
        .restore_snapshot(&snapshot_id, &restore)
        .await
        .expect("restore");
    let restored = c.wait(restored.operation.id, None).await.expect("wait");
    assert_eq!(restored.state, OperationState::Succeeded, "{restored:?}");
    let page = c
        .list_vclusters(&ListVClusters {
            page_size: Some(1),
            ..ListVClusters::default()
        })
        .await
        .expect("list");
    assert_eq!(page.vclusters.len(), 1);
    let next = c
        .list_vclusters(&ListVClusters {
            page_token: page.next_page_token.clone(),
            ..ListVClusters::default()
        })
        .await
        .expect("next page");
    let mut names: Vec<String> = page
        .vclusters
        .iter()
        .chain(&next.vclusters)
        .map(|v| v.name.to_string())
        .collect();
    names.sort();
    assert_eq!(names, ["copy", "demo"]);

    let deleted = c.delete_vcluster("copy", None).await.expect("delete");
    c.wait(deleted.operation.id, None).await.expect("wait");
    let ops = c
        .list_operations(&ListOperations {
            vcluster: Some("demo".into()),
            kind: Some("SUSPEND".into()),
            ..ListOperations::default()
        })
        .await
        .expect("list operations");
    assert_eq!(ops.operations.len(), 1);
    assert_eq!(ops.operations[0].id, suspended.operation.id);

    // The event pages: the operation's own and the whole log agree.
    let own = c
        .list_operation_events(done.id, 0, None)
        .await
        .expect("operation events");
    assert_eq!(own.events[0].event_type, "OperationRequested");
    assert!(
        own.events
            .iter()
            .all(|e| e.stream == format!("operation-{}", done.id))
    );
    let all = c.list_events(0, Some(1000)).await.expect("events");
    for e in &own.events {
        assert!(all.events.contains(e), "{e:?} missing from the log");
    }
    assert!(all.events.windows(2).all(|w| w[0].position < w[1].position));
}

#[tokio::test]
async fn request_ids_are_generated_and_make_mutations_idempotent() {
    let dir = tempfile::tempdir().expect("tmp");
    let (_server, c) = dev(dir.path(), &[]);
    // Generated: every mutation gets a fresh one.
    let a = c.create_vcluster(&create("a")).await.expect("create a");
    let b = c.create_vcluster(&create("b")).await.expect("create b");
    let (ra, rb) = (a.operation.request_id, b.operation.request_id);
    assert!(ra.is_some() && rb.is_some() && ra != rb, "{ra:?} {rb:?}");

    // Given: a repeat answers the first operation and says it is one.
    let mut req = create("c");
    req.request_id = Some("create-c-1".into());
    let first = c.create_vcluster(&req).await.expect("create c");
    let again = c.create_vcluster(&req).await.expect("create c again");
    assert!(!first.duplicate);
    assert!(again.duplicate);
    assert_eq!(first.operation.id, again.operation.id);
    // The same id with other parameters is refused, with the API's reason.
    let mut other = create("d");
    other.request_id = Some("create-c-1".into());
    let e = c.create_vcluster(&other).await.expect_err("reused id");
    assert_eq!(e.code(), Some(Code::InvalidArgument), "{e}");
    assert_eq!(e.reason(), Some("REQUEST_ID_REUSED"), "{e}");
    assert!(e.is_refused() && !e.is_retryable());

    // Turned off: no request id is sent.
    let plain = Client::builder(c.server())
        .generate_request_ids(false)
        .build()
        .expect("client");
    let e = plain.create_vcluster(&create("e")).await.expect("create e");
    assert_eq!(e.operation.request_id, None);
}

#[tokio::test]
async fn errors_carry_the_api_status() {
    let dir = tempfile::tempdir().expect("tmp");
    let (_server, c) = dev(dir.path(), &[]);
    let e = c.get_vcluster("nope").await.expect_err("missing");
    assert_eq!(e.code(), Some(Code::NotFound), "{e}");
    assert!(
        matches!(
            e,
            Error::Api {
                http_status: 404,
                ..
            }
        ),
        "{e:?}"
    );
    let e = c
        .suspend_vcluster("Not_A_Name", &SuspendVCluster::default())
        .await
        .expect_err("bad name");
    assert_eq!(e.code(), Some(Code::InvalidArgument), "{e}");
    let a = c.create_vcluster(&create("dup")).await.expect("create");
    c.wait(a.operation.id, None).await.expect("wait");
    let e = c.create_vcluster(&create("dup")).await.expect_err("taken");
    assert_eq!(e.code(), Some(Code::AlreadyExists), "{e}");
    // Another project's operation is not found, never forbidden.
    let e = c
        .get_operation(uuid::Uuid::new_v4())
        .await
        .expect_err("no such operation");
    assert_eq!(e.code(), Some(Code::NotFound), "{e}");
    // An unreachable server is UNAVAILABLE, after the retries.
    let gone = Client::builder("http://127.0.0.1:1")
        .retry(RetryPolicy {
            max_retries: 2,
            min_delay: Duration::from_millis(1),
            max_delay: Duration::from_millis(5),
        })
        .build()
        .expect("client");
    let e = gone.get_vcluster("x").await.expect_err("unreachable");
    assert!(matches!(e, Error::Unreachable { .. }), "{e:?}");
    assert_eq!(e.code(), Some(Code::Unavailable));
    // A CA for an http:// server cannot be honoured: an error, not ignored.
    let e = Client::builder("http://127.0.0.1:1")
        .ca_cert("/nonexistent.pem")
        .build()
        .expect_err("ca over http");
    assert!(matches!(e, Error::Config(_)), "{e:?}");
}

#[tokio::test]
async fn watch_follows_an_operation_until_it_ends_and_wait_can_give_up() {
    let dir = tempfile::tempdir().expect("tmp");
    // Control planes take 1.5 s to become ready: the create is seen running.
    let (_server, c) = dev(dir.path(), &[("OVC_SIM_READY_MS", "1500")]);
    let accepted = c.create_vcluster(&create("slow")).await.expect("create");
    let id = accepted.operation.id;
    let e = c
        .wait(id, Some(Duration::from_millis(300)))
        .await
        .expect_err("not done in 300 ms");
    match &e {
        Error::WaitTimedOut { operation, waited } => {
            assert_eq!(operation.id, id);
            assert!(!operation.done);
            assert!(*waited >= Duration::from_millis(300), "{waited:?}");
        }
        other => panic!("expected WaitTimedOut, got {other:?}"),
    }
    assert_eq!(e.code(), Some(Code::DeadlineExceeded));

    let mut feed = c.watch(id);
    let mut events = Vec::new();
    while let Some(e) = feed.next().await {
        events.push(e.expect("event"));
    }
    let types: Vec<&str> = events.iter().map(|e| e.event_type.as_str()).collect();
    assert_eq!(types.first(), Some(&"OperationRequested"), "{types:?}");
    assert_eq!(types.last(), Some(&"OperationSucceeded"), "{types:?}");
    assert!(types.contains(&"StepSucceeded"), "{types:?}");
    assert!(events.windows(2).all(|w| w[0].position < w[1].position));
    assert!(
        events
            .iter()
            .all(|e| e.stream == format!("operation-{id}") && e.decode().is_ok())
    );
    assert_eq!(feed.position(), events.last().expect("events").position);
    let done = c.get_operation(id).await.expect("get");
    assert!(done.done);
    // Watching an operation that ended replays its events and ends.
    let replay: Vec<_> = futures::StreamExt::collect::<Vec<_>>(c.watch(id).into_stream()).await;
    let replay: Vec<_> = replay.into_iter().map(|e| e.expect("event")).collect();
    assert_eq!(replay, events);
}

/// What the failing server saw: each request's path, `Idempotency-Key` and
/// `Last-Event-ID`.
type Seen = Arc<Mutex<Vec<(String, Option<String>, Option<String>)>>>;

/// A server that answers the first `failures` requests with `status` and the API's
/// error body of `code`, then `ok`; it records what it was sent.
async fn failing_server(
    failures: usize,
    status: u16,
    code: &'static str,
    ok: &'static str,
) -> (String, Seen) {
    let seen: Seen = Arc::default();
    let log = seen.clone();
    let app = axum::Router::new().fallback(move |uri: axum::http::Uri, headers: HeaderMap| {
        let log = log.clone();
        async move {
            let header = |k: &str| {
                headers
                    .get(k)
                    .and_then(|v| v.to_str().ok())
                    .map(str::to_string)
            };
            let n = {
                let mut l = log.lock().expect("log");
                l.push((
                    uri.to_string(),
                    header("idempotency-key"),
                    header("last-event-id"),
                ));
                l.len()
            };
            let (status, body) = if n <= failures {
                (
                    status,
                    format!(
                        r#"{{"error":{{"code":{status},"status":"{code}","message":"try again"}}}}"#
                    ),
                )
            } else {
                (200, ok.to_string())
            };
            axum::response::Response::builder()
                .status(status)
                .header("content-type", "application/json")
                .body(axum::body::Body::from(body))
                .expect("response")
        }
    });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(async move { axum::serve(listener, app).await });
    (format!("http://{addr}"), seen)
}

fn quick_retries(n: usize) -> RetryPolicy {
    RetryPolicy {
        max_retries: n,
        min_delay: Duration::from_millis(5),
        max_delay: Duration::from_millis(20),
    }
}

#[tokio::test]
async fn unavailable_and_aborted_are_retried_with_the_same_request_id() {
    const EMPTY: &str = r#"{"vclusters":[],"next_page_token":null}"#;
    // Two 503s, then the answer: a read succeeds on the third attempt.
    let (url, seen) = failing_server(2, 503, "UNAVAILABLE", EMPTY).await;
    let c = Client::builder(url)
        .retry(quick_retries(3))
        .build()
        .expect("client");
    let page = c
        .list_vclusters(&ListVClusters::default())
        .await
        .expect("list");
    assert!(page.vclusters.is_empty());
    assert_eq!(seen.lock().expect("seen").len(), 3);

    // More failures than retries: the API's status comes back.
    let (url, seen) = failing_server(10, 503, "UNAVAILABLE", EMPTY).await;
    let c = Client::builder(url)
        .retry(quick_retries(2))
        .build()
        .expect("client");
    let e = c
        .list_vclusters(&ListVClusters::default())
        .await
        .expect_err("gives up");
    assert_eq!(e.code(), Some(Code::Unavailable), "{e}");
    assert_eq!(e.status().expect("status").message, "try again");
    assert_eq!(seen.lock().expect("seen").len(), 3);

    // ABORTED on a mutation: retried, every attempt with the same request id. (The
    // answer is not an operation, so the last attempt fails to decode; what matters is
    // what was sent.)
    let (url, seen) = failing_server(2, 409, "ABORTED", "{}").await;
    let c = Client::builder(url)
        .retry(quick_retries(3))
        .build()
        .expect("client");
    let e = c
        .suspend_vcluster("x", &SuspendVCluster::default())
        .await
        .expect_err("not an operation");
    assert!(matches!(e, Error::Protocol { .. }), "{e:?}");
    let seen = seen.lock().expect("seen").clone();
    assert_eq!(seen.len(), 3);
    let key = seen[0].1.clone().expect("a request id");
    assert!(seen.iter().all(|s| s.1.as_deref() == Some(key.as_str())));

    // ALREADY_EXISTS (also 409) and other refusals are not retried.
    let (url, seen) = failing_server(10, 409, "ALREADY_EXISTS", "{}").await;
    let c = Client::builder(url)
        .retry(quick_retries(3))
        .build()
        .expect("client");
    let e = c.create_vcluster(&create("x")).await.expect_err("taken");
    assert_eq!(e.code(), Some(Code::AlreadyExists));
    assert_eq!(seen.lock().expect("seen").len(), 1);

    // Without a request id a mutation is not retried.
    let (url, seen) = failing_server(10, 503, "UNAVAILABLE", "{}").await;
    let c = Client::builder(url)
        .retry(quick_retries(3))
        .generate_request_ids(false)
        .build()
        .expect("client");
    let e = c.create_vcluster(&create("x")).await.expect_err("503");
    assert_eq!(e.code(), Some(Code::Unavailable));
    assert_eq!(seen.lock().expect("seen").len(), 1);
}

#[tokio::test]
async fn a_live_feed_resumes_after_its_last_position() {
    // Each connection gets one event, then the server ends the feed: the client must
    // reconnect with Last-Event-ID = the last position, and the server sends the next.
    let seen: Seen = Arc::default();
    let log = seen.clone();
    let app = axum::Router::new().route(
        "/v1/events",
        axum::routing::get(move |headers: HeaderMap| {
            let log = log.clone();
            async move {
                let last = headers
                    .get("last-event-id")
                    .and_then(|v| v.to_str().ok())
                    .map(str::to_string);
                log.lock()
                    .expect("log")
                    .push(("/v1/events".into(), None, last.clone()));
                let after: u64 = last.and_then(|l| l.parse().ok()).unwrap_or(0);
                let p = after + 1;
                let event = format!(
                    r#"{{"position":{p},"stream":"audit-default","version":{p},"type":"KubeconfigRead","data":{{}},"metadata":{{}},"recorded_at":"2026-01-01T00:00:00Z"}}"#
                );
                axum::response::Response::builder()
                    .header("content-type", "text/event-stream")
                    .body(axum::body::Body::from(format!(
                        ": keep-alive\n\nid: {p}\nevent: KubeconfigRead\ndata: {event}\n\n"
                    )))
                    .expect("response")
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(async move { axum::serve(listener, app).await });
    let c = Client::builder(format!("http://{addr}"))
        .retry(quick_retries(3))
        .build()
        .expect("client");
    let mut feed = c.follow_events(10);
    let start = Instant::now();
    let mut positions = Vec::new();
    for _ in 0..3 {
        positions.push(
            feed.next()
                .await
                .expect("an event")
                .expect("event")
                .position,
        );
    }
    assert_eq!(positions, [11, 12, 13]);
    assert!(feed.reconnects() >= 2, "{}", feed.reconnects());
    let asked: Vec<Option<String>> = seen
        .lock()
        .expect("seen")
        .iter()
        .map(|s| s.2.clone())
        .collect();
    assert_eq!(
        asked[..3],
        [Some("10".into()), Some("11".into()), Some("12".into())]
    );
    assert!(start.elapsed() < Duration::from_secs(5));
}
