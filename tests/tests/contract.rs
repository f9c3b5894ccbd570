//! API-contract hardening (issue 8): cancel racing the end of an operation, the
//! operation's `result` as the resource, live feeds (cursors, one-operation feeds, store
//! errors, limits) and idempotency keys kept after their operation ended.

use ovc_engine::accept::{CommandRequest, accept, cancel};
use ovc_store::{Backend, Commit, ExpectedVersion, NewEvent, StreamAppend};
use ovc_testkit::TestDb;
use ovc_types::command::Command;
use ovc_types::command::CreateParams;
use ovc_types::error::{Code, Status};
use ovc_types::event::{Event, StreamName};
use ovc_types::spec::VClusterSpec;
use ovc_types::time::RandomIds;
use std::sync::Arc;

fn create_request(name: &str, request_id: Option<&str>) -> CommandRequest {
    CommandRequest {
        project: ovc_tests::project(),
        vcluster: ovc_tests::name(name),
        command: Command::new(CreateParams {
            spec: VClusterSpec::default(),
        }),
        request_id: request_id.map(str::to_string),
        actor: Some("test".into()),
        traceparent: None,
    }
}

/// Item 8: 30 clients cancel, again and again, while the operation ends. Each answer is
/// either accepted or FAILED_PRECONDITION naming the final state; never INTERNAL.
async fn cancels_racing_the_end_are_accepted_or_failed_precondition(backend: Backend) {
    let db = TestDb::new(backend).await;
    let store = db.open().await;
    let registry = ovc_workflows::registry();
    for round in 0..5 {
        let op = accept(
            store.as_ref(),
            &registry,
            &RandomIds,
            create_request(&format!("race-{round}"), None),
        )
        .await
        .expect("accept")
        .operation_id;
        let start = Arc::new(tokio::sync::Barrier::new(31));
        let mut cancels = Vec::new();
        for _ in 0..30 {
            let (store, start) = (store.clone(), start.clone());
            cancels.push(tokio::spawn(async move {
                start.wait().await;
                let mut answers: Vec<Result<(), Status>> = Vec::new();
                loop {
                    let r = cancel(store.as_ref(), op, Some("racer".into())).await;
                    let ended = r.is_err();
                    answers.push(r);
                    if ended {
                        return answers;
                    }
                }
            }));
        }
        start.wait().await;
        tokio::time::sleep(std::time::Duration::from_millis(5)).await;
        store
            .commit(Commit {
                appends: vec![StreamAppend {
                    stream: StreamName::operation(op),
                    expected: ExpectedVersion::Any,
                    events: vec![NewEvent::new(Event::OperationFailed {
                        error: Status::new(Code::Internal, "the host went away"),
                    })],
                }],
                ..Commit::default()
            })
            .await
            .expect("end the operation");
        for c in cancels {
            for answer in c.await.expect("cancel task") {
                if let Err(s) = answer {
                    assert_eq!(s.code, Code::FailedPrecondition, "{s:?}");
                    assert!(s.message.contains("FAILED"), "{s:?}");
                }
            }
        }
    }
}

ovc_testkit::both_backends!(cancels_racing_the_end_are_accepted_or_failed_precondition);

// ---- item 5: live feeds ---------------------------------------------------------------

mod feeds {
    use super::*;
    use async_trait::async_trait;
    use axum::body::Body;
    use axum::http::{Request, StatusCode};
    use futures::StreamExt;
    use http_body_util::BodyExt;
    use ovc_api::grpc::proto;
    use ovc_api::grpc::proto::event_service_client::EventServiceClient;
    use ovc_api::service::Scope;
    use ovc_store::*;
    use ovc_types::resource::{Operation, Snapshot, VCluster};
    use ovc_types::time::Clock;
    use ovc_types::{OperationId, ProjectName, RunId, SnapshotId, VClusterId, VClusterName};
    use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
    use std::time::Duration;
    use tower::ServiceExt;

    /// A store that counts global-log reads and, on demand, fails the vcluster lookups a
    /// feed makes to decide what a project may see.
    #[derive(Debug)]
    pub struct Probe {
        pub inner: Arc<dyn Store>,
        pub read_all_calls: AtomicU64,
        pub fail_lookups: AtomicBool,
    }

    impl Probe {
        pub fn new(inner: Arc<dyn Store>) -> Arc<Probe> {
            Arc::new(Probe {
                inner,
                read_all_calls: AtomicU64::new(0),
                fail_lookups: AtomicBool::new(false),
            })
        }
    }

    #[async_trait]
    impl Store for Probe {
        fn backend(&self) -> Backend {
            self.inner.backend()
        }
        fn config(&self) -> &StoreConfig {
            self.inner.config()
        }
        fn clock(&self) -> &dyn Clock {
            self.inner.clock()
        }
        async fn database_now(&self) -> Result<chrono::DateTime<chrono::Utc>> {
            self.inner.database_now().await
        }
        async fn migrate(&self) -> Result<()> {
            self.inner.migrate().await
        }
        async fn pending_migrations(&self) -> Result<Vec<i64>> {
            self.inner.pending_migrations().await
        }
        async fn commit(&self, commit: Commit) -> Result<CommitOutcome> {
            self.inner.commit(commit).await
        }
        async fn read_stream(
            &self,
            stream: &StreamName,
            after_version: u64,
            limit: u32,
        ) -> Result<Vec<RecordedEvent>> {
            self.inner.read_stream(stream, after_version, limit).await
        }
        async fn stream_version(&self, stream: &StreamName) -> Result<Option<u64>> {
            self.inner.stream_version(stream).await
        }
        async fn read_all(&self, after_position: u64, limit: u32) -> Result<Vec<RecordedEvent>> {
            self.read_all_calls.fetch_add(1, Ordering::SeqCst);
            self.inner.read_all(after_position, limit).await
        }
        async fn head_position(&self) -> Result<u64> {
            self.inner.head_position().await
        }
        fn watch_events(&self) -> tokio::sync::watch::Receiver<u64> {
            self.inner.watch_events()
        }
        fn watch_runs(&self) -> tokio::sync::watch::Receiver<u64> {
            self.inner.watch_runs()
        }
        async fn find_idempotency_key(
            &self,
            project: &ProjectName,
            request_id: &str,
        ) -> Result<Option<IdempotencyRecord>> {
            self.inner.find_idempotency_key(project, request_id).await
        }
        async fn purge_idempotency_keys(&self) -> Result<u64> {
            self.inner.purge_idempotency_keys().await
        }
        async fn get_vcluster(
            &self,
            project: &ProjectName,
            name: &VClusterName,
        ) -> Result<Option<VCluster>> {
            self.inner.get_vcluster(project, name).await
        }
        async fn get_vcluster_by_uid(&self, uid: VClusterId) -> Result<Option<VCluster>> {
            if self.fail_lookups.load(Ordering::SeqCst) {
                return Err(Error::Unavailable(sqlx::Error::PoolTimedOut));
            }
            self.inner.get_vcluster_by_uid(uid).await
        }
        async fn list_vclusters(
            &self,
            filter: &VClusterFilter,
            page: &PageRequest,
        ) -> Result<Page<VCluster>> {
            self.inner.list_vclusters(filter, page).await
        }
        async fn get_operation(&self, id: OperationId) -> Result<Option<Operation>> {
            self.inner.get_operation(id).await
        }
        async fn list_operations(
            &self,
            filter: &OperationFilter,
            page: &PageRequest,
        ) -> Result<Page<Operation>> {
            self.inner.list_operations(filter, page).await
        }
        async fn get_snapshot(&self, id: SnapshotId) -> Result<Option<Snapshot>> {
            self.inner.get_snapshot(id).await
        }
        async fn list_snapshots(
            &self,
            filter: &SnapshotFilter,
            page: &PageRequest,
        ) -> Result<Page<Snapshot>> {
            self.inner.list_snapshots(filter, page).await
        }
        async fn rebuild_projections(&self) -> Result<RebuildReport> {
            self.inner.rebuild_projections().await
        }
        async fn dump_projections(&self) -> Result<ProjectionDump> {
            self.inner.dump_projections().await
        }
        async fn claim_runs(
            &self,
            owner: &str,
            lease_for: chrono::Duration,
            max: u32,
        ) -> Result<Vec<Run>> {
            self.inner.claim_runs(owner, lease_for, max).await
        }
        async fn lease_history(
            &self,
            vcluster_uid: Option<VClusterId>,
        ) -> Result<Vec<LeaseRecord>> {
            self.inner.lease_history(vcluster_uid).await
        }
        async fn create_token(&self, token: &TokenRecord, token_sha256: &str) -> Result<()> {
            self.inner.create_token(token, token_sha256).await
        }
        async fn find_token(&self, token_sha256: &str) -> Result<Option<TokenRecord>> {
            self.inner.find_token(token_sha256).await
        }
        async fn stats(&self) -> Result<StoreStats> {
            self.inner.stats().await
        }
        async fn get_run(&self, id: RunId) -> Result<Option<Run>> {
            self.inner.get_run(id).await
        }
        async fn runs_of_operation(&self, operation_id: OperationId) -> Result<Vec<Run>> {
            self.inner.runs_of_operation(operation_id).await
        }
        async fn next_run_due_in(&self) -> Result<Option<std::time::Duration>> {
            self.inner.next_run_due_in().await
        }
        async fn list_tokens(&self, project: Option<&ProjectName>) -> Result<Vec<TokenRecord>> {
            self.inner.list_tokens(project).await
        }
        async fn revoke_token(&self, id: uuid::Uuid) -> Result<Option<TokenRecord>> {
            self.inner.revoke_token(id).await
        }
    }

    fn state(store: Arc<dyn Store>) -> ovc_api::AppState {
        ovc_api::AppState::new(
            store,
            Arc::new(ovc_workflows::registry()),
            ovc_api::auth::AuthMode::None,
        )
    }

    async fn accept_create(store: &dyn Store, name: &str) -> OperationId {
        accept(
            store,
            &ovc_workflows::registry(),
            &RandomIds,
            create_request(name, None),
        )
        .await
        .expect("accept")
        .operation_id
    }

    async fn sse_status(
        app: &axum::Router,
        uri: &str,
        last_event_id: Option<&str>,
    ) -> (StatusCode, String, Option<String>) {
        let mut req = Request::builder()
            .uri(uri)
            .header("accept", "text/event-stream");
        if let Some(id) = last_event_id {
            req = req.header("last-event-id", id);
        }
        let res = app
            .clone()
            .oneshot(req.body(Body::empty()).expect("request"))
            .await
            .expect("call");
        let status = res.status();
        let retry_after = res
            .headers()
            .get("retry-after")
            .and_then(|v| v.to_str().ok())
            .map(str::to_string);
        if status == StatusCode::OK {
            return (status, String::new(), retry_after);
        }
        let body = tokio::time::timeout(Duration::from_secs(5), res.into_body().collect())
            .await
            .expect("an error answers at once")
            .expect("body")
            .to_bytes();
        (status, String::from_utf8_lossy(&body).into(), retry_after)
    }

    /// An in-process gRPC server over `state` on a free port.
    async fn grpc(state: ovc_api::AppState) -> EventServiceClient<tonic::transport::Channel> {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("addr");
        let routes = ovc_api::grpc::grpc_router(state).expect("routes");
        tokio::spawn(ovc_api::grpc::serve(
            listener,
            routes,
            std::future::pending(),
        ));
        let ch = tonic::transport::Channel::from_shared(format!("http://{addr}"))
            .expect("uri")
            .connect()
            .await
            .expect("connect");
        EventServiceClient::new(ch)
    }

    /// (a) A cursor above i64::MAX is INVALID_ARGUMENT at once, over SSE (header and
    /// query) and gRPC, instead of a 200 feed that retries forever.
    async fn out_of_range_cursors_are_invalid_argument(backend: Backend) {
        let db = TestDb::new(backend).await;
        let store = db.open().await;
        let op = accept_create(store.as_ref(), "cursor").await;
        let app = ovc_api::router(state(store.clone()));
        let too_big = (i64::MAX as u64 + 1).to_string();
        for (uri, header) in [
            ("/v1/events".to_string(), Some(too_big.as_str())),
            (format!("/v1/events?after={too_big}"), None),
            (
                format!("/v1/operations/{op}/events"),
                Some(too_big.as_str()),
            ),
            (
                format!("/v1/operations/{op}/events?after={}", u64::MAX),
                None,
            ),
        ] {
            let (status, body, _) = sse_status(&app, &uri, header).await;
            assert_eq!(status, StatusCode::BAD_REQUEST, "{uri}: {body}");
            assert!(body.contains("INVALID_ARGUMENT"), "{uri}: {body}");
        }
        let mut client = grpc(state(store.clone())).await;
        for operation_id in [String::new(), op.to_string()] {
            let r = tokio::time::timeout(
                Duration::from_secs(5),
                client.stream_events(proto::StreamEventsRequest {
                    after: i64::MAX as u64 + 1,
                    operation_id,
                }),
            )
            .await
            .expect("answers at once");
            let e = r.expect_err("refused");
            assert_eq!(e.code(), tonic::Code::InvalidArgument, "{e:?}");
        }
    }

    /// (b) A one-operation feed reads that operation's stream, not the global log.
    async fn a_one_operation_feed_never_reads_the_global_log(backend: Backend) {
        let db = TestDb::new(backend).await;
        let probe = Probe::new(db.open().await);
        for i in 0..20 {
            accept_create(probe.as_ref(), &format!("before-{i}")).await;
        }
        let op = accept_create(probe.as_ref(), "watched").await;
        let st = state(probe.clone());
        let who = ovc_api::auth::Principal::authenticate(&st, None)
            .await
            .expect("auth off");
        let scope = st
            .operation_scope(&who, &op.to_string())
            .await
            .expect("scope");
        let feed = st.follow(0, scope).expect("feed");
        futures::pin_mut!(feed);
        let first = tokio::time::timeout(Duration::from_secs(5), feed.next())
            .await
            .expect("an event in time")
            .expect("open")
            .expect("no error");
        assert_eq!(first.event_type, "OperationRequested");
        assert_eq!(first.stream, StreamName::operation(op).as_str());
        assert_eq!(
            probe.read_all_calls.load(Ordering::SeqCst),
            0,
            "the one-operation feed scanned the global log"
        );
    }

    /// (c) A store error while deciding whether the caller may see an event ends the
    /// feed with that error; resuming from the last position delivers the event.
    async fn a_visibility_error_ends_the_feed_instead_of_skipping(backend: Backend) {
        let db = TestDb::new(backend).await;
        let probe = Probe::new(db.open().await);
        accept_create(probe.as_ref(), "first").await;
        let st = state(probe.clone());
        let scope = Scope::Project(Some(ovc_tests::project()));
        let feed = st.follow(0, scope.clone()).expect("feed");
        futures::pin_mut!(feed);
        let mut last = 0;
        // The first operation's command event and operation event.
        for _ in 0..2 {
            let e = tokio::time::timeout(Duration::from_secs(5), feed.next())
                .await
                .expect("in time")
                .expect("open")
                .expect("no error");
            last = e.position;
        }
        probe.fail_lookups.store(true, Ordering::SeqCst);
        accept_create(probe.as_ref(), "second").await;
        let ended = tokio::time::timeout(Duration::from_secs(5), feed.next())
            .await
            .expect("the feed reports the failure instead of waiting past the event")
            .expect("an item before the end");
        assert!(ended.is_err(), "{ended:?}");
        assert!(
            tokio::time::timeout(Duration::from_secs(5), feed.next())
                .await
                .expect("ends")
                .is_none()
        );
        probe.fail_lookups.store(false, Ordering::SeqCst);
        let resumed = st.follow(last, scope).expect("feed");
        futures::pin_mut!(resumed);
        let e = tokio::time::timeout(Duration::from_secs(5), resumed.next())
            .await
            .expect("in time")
            .expect("open")
            .expect("no error");
        assert_eq!(e.position, last + 1, "the event was skipped");
        assert_eq!(e.event_type, "CreateRequested");
    }

    /// (d) At most `--max-live-feeds` feeds at once: the next is 429 / RESOURCE_EXHAUSTED
    /// with Retry-After; a closed feed frees its place.
    async fn live_feeds_past_the_limit_are_resource_exhausted(backend: Backend) {
        let db = TestDb::new(backend).await;
        let store = db.open().await;
        let op = accept_create(store.as_ref(), "limited").await;
        let st = state(store.clone()).with_max_live_feeds(2);
        let app = ovc_api::router(st.clone());
        let open = |uri: String| {
            let app = app.clone();
            async move {
                app.oneshot(
                    Request::builder()
                        .uri(uri)
                        .header("accept", "text/event-stream")
                        .body(Body::empty())
                        .expect("request"),
                )
                .await
                .expect("call")
            }
        };
        let a = open("/v1/events".into()).await;
        assert_eq!(a.status(), StatusCode::OK);
        let b = open(format!("/v1/operations/{op}/events")).await;
        assert_eq!(b.status(), StatusCode::OK);
        let (status, body, retry_after) = sse_status(&app, "/v1/events", None).await;
        assert_eq!(status, StatusCode::TOO_MANY_REQUESTS, "{body}");
        assert!(body.contains("RESOURCE_EXHAUSTED"), "{body}");
        assert!(retry_after.is_some_and(|s| s.parse::<u64>().is_ok_and(|n| n > 0)));
        let mut client = grpc(st.clone()).await;
        let e = client
            .stream_events(proto::StreamEventsRequest::default())
            .await
            .expect_err("over the limit");
        assert_eq!(e.code(), tonic::Code::ResourceExhausted, "{e:?}");
        drop(a);
        let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
        while st.feeds.open() > 1 {
            assert!(
                tokio::time::Instant::now() < deadline,
                "a dropped feed kept its place"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let c = open("/v1/events".into()).await;
        assert_eq!(c.status(), StatusCode::OK);
        drop((b, c));
    }

    ovc_testkit::both_backends!(
        out_of_range_cursors_are_invalid_argument,
        a_one_operation_feed_never_reads_the_global_log,
        a_visibility_error_ends_the_feed_instead_of_skipping,
        live_feeds_past_the_limit_are_resource_exhausted,
    );
}

// ---- item 9: Operation.result is the resource ----------------------------------------

mod results {
    use axum::body::Body;
    use axum::http::{Request, StatusCode};
    use http_body_util::BodyExt;
    use ovc_api::grpc::proto;
    use ovc_api::grpc::proto::operation_service_client::OperationServiceClient;
    use ovc_store::Backend;
    use ovc_tests::{Harness, HarnessOptions};
    use serde_json::{Value, json};
    use std::sync::Arc;
    use tower::ServiceExt;

    struct Api {
        h: Harness,
        app: axum::Router,
        grpc: OperationServiceClient<tonic::transport::Channel>,
    }

    impl Api {
        async fn start(backend: Backend) -> Api {
            let h = Harness::start(backend, HarnessOptions::default()).await;
            let state = ovc_api::AppState::new(
                h.store.clone(),
                Arc::new(ovc_workflows::registry()),
                ovc_api::auth::AuthMode::None,
            );
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
                .await
                .expect("bind");
            let addr = listener.local_addr().expect("addr");
            let routes = ovc_api::grpc::grpc_router(state.clone()).expect("routes");
            tokio::spawn(ovc_api::grpc::serve(
                listener,
                routes,
                std::future::pending(),
            ));
            let ch = tonic::transport::Channel::from_shared(format!("http://{addr}"))
                .expect("uri")
                .connect()
                .await
                .expect("connect");
            Api {
                h,
                app: ovc_api::router(state),
                grpc: OperationServiceClient::new(ch),
            }
        }

        async fn call(&self, method: &str, uri: &str, body: Option<Value>) -> (StatusCode, Value) {
            let mut req = Request::builder().method(method).uri(uri);
            if body.is_some() {
                req = req.header("content-type", "application/json");
            }
            let body = body.map_or_else(Body::empty, |b| Body::from(b.to_string()));
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
                serde_json::from_slice(&bytes).expect("json")
            };
            (status, v)
        }

        /// Runs a mutation to its end; checks the result over REST and gRPC against the
        /// GET of the resource, and returns it.
        async fn run(
            &self,
            method: &str,
            uri: &str,
            body: Option<Value>,
            get: &dyn Fn(&Value) -> String,
        ) -> Value {
            let (s, op) = self.call(method, uri, body).await;
            assert_eq!(s, StatusCode::ACCEPTED, "{uri}: {op}");
            let id = op["id"].as_str().expect("id").to_string();
            let (s, done) = self
                .call(
                    "GET",
                    &format!("/v1/operations/{id}/wait?timeout=30s"),
                    None,
                )
                .await;
            assert_eq!(s, StatusCode::OK, "{done}");
            assert_eq!(done["state"], "SUCCEEDED", "{uri}: {done}");
            let result = done["result"].clone();
            let (s, resource) = self.call("GET", &get(&result), None).await;
            assert_eq!(s, StatusCode::OK, "{resource}");
            assert_eq!(
                result, resource,
                "{} {uri}: result is not the resource as GET shows it",
                done["kind"]
            );
            let over_grpc = self
                .grpc
                .clone()
                .get_operation(proto::GetOperationRequest { id: id.clone() })
                .await
                .expect("GetOperation")
                .into_inner();
            let grpc_result = ovc_api::grpc::struct_to_map(
                over_grpc.result.as_ref().expect("a result over gRPC"),
            )
            .expect("result json");
            assert_eq!(Value::Object(grpc_result), result, "gRPC result of {id}");
            result
        }
    }

    fn vcluster(name: &'static str) -> impl Fn(&Value) -> String {
        move |r: &Value| {
            assert_eq!(r["name"], name, "{r}");
            format!("/v1/vclusters/{name}")
        }
    }

    fn snapshot(r: &Value) -> String {
        let id = r["id"].as_str().unwrap_or_else(|| panic!("no id in {r}"));
        format!("/v1/snapshots/{id}")
    }

    /// Every kind's result is the resource it left: CREATE, SUSPEND, RESUME, SCALE,
    /// RESTORE (new and existing), DELETE → the VCluster; SNAPSHOT, DELETE_SNAPSHOT →
    /// the Snapshot; over REST and gRPC.
    async fn every_kind_results_in_its_resource(backend: Backend) {
        let api = Api::start(backend).await;
        let vc = api
            .run(
                "POST",
                "/v1/vclusters",
                Some(json!({"name": "res"})),
                &vcluster("res"),
            )
            .await;
        assert_eq!(vc["state"], "RUNNING");
        let snap = api
            .run(
                "POST",
                "/v1/vclusters/res/snapshots",
                Some(json!({})),
                &snapshot,
            )
            .await;
        assert_eq!(snap["state"], "READY", "{snap}");
        let sid = snap["id"].as_str().expect("id").to_string();
        let vc = api
            .run(
                "POST",
                "/v1/vclusters/res/suspend",
                Some(json!({})),
                &vcluster("res"),
            )
            .await;
        assert_eq!(vc["state"], "SUSPENDED");
        let vc = api
            .run(
                "POST",
                "/v1/vclusters/res/resume",
                Some(json!({})),
                &vcluster("res"),
            )
            .await;
        assert_eq!(vc["state"], "RUNNING");
        let vc = api
            .run(
                "POST",
                "/v1/vclusters/res/scale",
                Some(json!({"control_plane": {"replicas": 3}})),
                &vcluster("res"),
            )
            .await;
        assert_eq!(vc["spec"]["control_plane"]["replicas"], 3);
        let vc = api
            .run(
                "POST",
                &format!("/v1/snapshots/{sid}/restore"),
                Some(json!({"target": {"new_name": "res-copy"}})),
                &vcluster("res-copy"),
            )
            .await;
        assert_eq!(vc["state"], "RUNNING");
        api.run(
            "POST",
            &format!("/v1/snapshots/{sid}/restore"),
            Some(json!({"target": {"existing": "res"}})),
            &vcluster("res"),
        )
        .await;
        let snap = api
            .run("DELETE", &format!("/v1/snapshots/{sid}"), None, &snapshot)
            .await;
        assert_eq!(snap["state"], "DELETED", "{snap}");
        let vc = api
            .run(
                "DELETE",
                "/v1/vclusters/res-copy",
                None,
                &vcluster("res-copy"),
            )
            .await;
        assert_eq!(vc["state"], "DELETED");
        // A rebuild of the projections computes the same results.
        let before = api.h.store.dump_projections().await.expect("dump");
        api.h.store.rebuild_projections().await.expect("rebuild");
        let after = api.h.store.dump_projections().await.expect("dump");
        assert_eq!(before.operations, after.operations);
        api.h.stop().await;
    }

    ovc_testkit::both_backends!(every_kind_results_in_its_resource);
}
