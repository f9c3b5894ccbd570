//! The store conformance suite: every test runs against SQLite and PostgreSQL, each on a
//! fresh database (a new file, or a new schema in `DATABASE_URL`).

use chrono::{Duration, Utc};
use ovc_store::*;
use ovc_testkit::TestDb;
use ovc_types::command::CreateParams;
use ovc_types::command::{Command, request_hash};
use ovc_types::event::{Event, EventMetadata, StreamName};
use ovc_types::spec::VClusterSpec;
use ovc_types::time::ManualClock;
use ovc_types::*;
use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;
use uuid::Uuid;

ovc_testkit::both_backends!(
    append_read_and_expected_versions,
    read_all_pages_in_position_order,
    bad_input_is_a_typed_error_and_writes_nothing,
    concurrent_appenders_and_a_tailer_see_every_position_once,
    concurrent_exact_appends_have_one_winner,
    group_commits_fail_alone,
    batched_worker_commits_fail_alone,
    idempotency_same_request_returns_first_operation,
    idempotency_fifty_concurrent_requests_make_one_operation,
    idempotency_keys_expire_and_are_purged,
    idempotency_keys_live_24h_after_their_operation_ended,
    the_purger_runs_periodically_and_counts,
    projections_follow_the_events,
    live_names_are_unique_and_freed_by_delete,
    projection_grammar_errors_roll_back,
    rebuild_projections_equals_live_tables,
    list_pages_through_everything,
    queue_claims_head_run_per_vcluster,
    queue_lease_steal_and_fencing,
    queue_reschedule_is_a_durable_timer,
    queue_leases_and_timers_ignore_the_process_clock,
    concurrent_workers_complete_each_run_once_in_order,
    wakeups_fire_on_commit,
    migrate_is_idempotent,
    tokens_are_found_by_hash_only,
    operations_list_newest_first_and_pages_stay_stable_under_commits,
    page_tokens_are_refused_alike_on_both_backends,
    tokens_are_listed_expire_and_are_revoked,
    stats_report_the_queue_age_and_the_purge_lag,
);

fn project() -> ProjectName {
    "default".parse().expect("project")
}

fn name(s: &str) -> VClusterName {
    s.parse().expect("name")
}

fn uid() -> VClusterId {
    VClusterId(Uuid::now_v7())
}

fn opid() -> OperationId {
    OperationId(Uuid::now_v7())
}

fn stream(s: &str) -> StreamName {
    StreamName::new(s).expect("stream")
}

fn step(name: &str, attempt: u32) -> NewEvent {
    NewEvent::new(Event::StepStarted {
        step: name.into(),
        attempt,
    })
}

/// The commit the API makes for CreateVCluster: command event, operation, run, key.
fn create_commit(
    vc: VClusterId,
    op: OperationId,
    vc_name: &str,
    request_id: Option<&str>,
) -> Commit {
    let command = Command::new(CreateParams {
        spec: VClusterSpec::default(),
    });
    let hash = request_hash(
        &project(),
        &name(vc_name),
        command.kind(),
        command.params_json(),
    );
    Commit {
        idempotency: request_id.map(|r| IdempotencyClaim {
            project: project(),
            request_id: r.to_string(),
            request_hash: hash,
            operation_id: op,
        }),
        appends: vec![
            StreamAppend {
                stream: StreamName::vcluster(vc),
                expected: ExpectedVersion::NoStream,
                events: vec![NewEvent::with_metadata(
                    Event::CreateRequested {
                        operation_id: op,
                        name: name(vc_name),
                        project: project(),
                        spec: VClusterSpec::default(),
                        host_namespace: format!("ovc-default-{vc_name}"),
                    },
                    EventMetadata {
                        request_id: request_id.map(str::to_string),
                        actor: Some("test".into()),
                        ..EventMetadata::default()
                    },
                )],
            },
            StreamAppend {
                stream: StreamName::operation(op),
                expected: ExpectedVersion::NoStream,
                events: vec![NewEvent::new(Event::OperationRequested {
                    vcluster_uid: vc,
                    vcluster: name(vc_name),
                    project: project(),
                    command,
                    request_id: request_id.map(str::to_string),
                    retry_of: None,
                    prior_state: None,
                    steps: vec!["create_namespace".into(), "install_release".into()],
                })],
            },
        ],
        enqueue: vec![NewRun {
            id: RunId(Uuid::now_v7()),
            operation_id: op,
            vcluster_uid: vc,
            delay: None,
            priority: 0,
        }],
        ..Commit::default()
    }
}

fn committed(outcome: CommitOutcome) -> CommitReceipt {
    match outcome {
        CommitOutcome::Committed(r) => r,
        other => panic!("expected a commit, got {other:?}"),
    }
}

fn append(s: &StreamName, expected: ExpectedVersion, events: Vec<NewEvent>) -> Commit {
    Commit {
        appends: vec![StreamAppend {
            stream: s.clone(),
            expected,
            events,
        }],
        ..Commit::default()
    }
}

fn free_run(vc: VClusterId) -> Commit {
    Commit {
        enqueue: vec![NewRun {
            id: RunId(Uuid::now_v7()),
            operation_id: opid(),
            vcluster_uid: vc,
            delay: None,
            priority: 0,
        }],
        ..Commit::default()
    }
}

async fn append_read_and_expected_versions(backend: Backend) {
    let db = TestDb::new(backend).await;
    let store = db.open().await;
    let s = stream("test-1");
    let r = committed(
        store
            .commit(append(
                &s,
                ExpectedVersion::NoStream,
                vec![step("a", 1), step("b", 1), step("c", 1)],
            ))
            .await
            .expect("first append"),
    );
    assert_eq!((r.first_position, r.last_position), (1, 3));
    assert_eq!(r.stream_versions, vec![(s.clone(), 3)]);
    assert_eq!(store.stream_version(&s).await.expect("version"), Some(3));

    let events = store.read_stream(&s, 0, 100).await.expect("read");
    assert_eq!(
        events.iter().map(|e| e.version).collect::<Vec<_>>(),
        vec![1, 2, 3]
    );
    assert_eq!(events[1].event_type, "StepStarted");
    assert_eq!(events[1].data["step"], "b");
    assert_eq!(events[1].data["v"], 1);
    assert_eq!(
        events[2].decode().expect("decode"),
        Event::StepStarted {
            step: "c".into(),
            attempt: 1
        }
    );
    assert_eq!(store.read_stream(&s, 2, 100).await.expect("read").len(), 1);

    // Exact(3) succeeds, a stale Exact(3) then fails with the actual version.
    committed(
        store
            .commit(append(&s, ExpectedVersion::Exact(3), vec![step("d", 1)]))
            .await
            .expect("exact"),
    );
    match store
        .commit(append(&s, ExpectedVersion::Exact(3), vec![step("e", 1)]))
        .await
    {
        Err(Error::WrongExpectedVersion { actual, .. }) => assert_eq!(actual, Some(4)),
        other => panic!("stale append: {other:?}"),
    }
    match store
        .commit(append(&s, ExpectedVersion::NoStream, vec![step("e", 1)]))
        .await
    {
        Err(Error::WrongExpectedVersion { actual, .. }) => assert_eq!(actual, Some(4)),
        other => panic!("NoStream on existing: {other:?}"),
    }
    let missing = stream("test-missing");
    match store
        .commit(append(
            &missing,
            ExpectedVersion::Exact(1),
            vec![step("e", 1)],
        ))
        .await
    {
        Err(Error::WrongExpectedVersion { actual, .. }) => assert_eq!(actual, None),
        other => panic!("Exact on missing: {other:?}"),
    }
    // Failed appends wrote nothing; Any appends anywhere.
    assert_eq!(store.head_position().await.expect("head"), 4);
    let r = committed(
        store
            .commit(append(&s, ExpectedVersion::Any, vec![step("f", 1)]))
            .await
            .expect("any"),
    );
    assert_eq!(r.stream_versions[0].1, 5);
    assert_eq!(r.last_position, 5);
    assert_eq!(store.stream_version(&missing).await.expect("v"), None);
}

async fn read_all_pages_in_position_order(backend: Backend) {
    let db = TestDb::new(backend).await;
    let store = db.open().await;
    for i in 0..25 {
        let s = stream(&format!("test-{}", i % 3));
        committed(
            store
                .commit(append(&s, ExpectedVersion::Any, vec![step("x", i + 1)]))
                .await
                .expect("append"),
        );
    }
    let mut after = 0;
    let mut seen = Vec::new();
    loop {
        let page = store.read_all(after, 7).await.expect("read_all");
        if page.is_empty() {
            break;
        }
        after = page.last().expect("nonempty").position;
        seen.extend(page.into_iter().map(|e| e.position));
    }
    assert_eq!(seen, (1..=25).collect::<Vec<_>>());
    assert_eq!(store.head_position().await.expect("head"), 25);
}

async fn bad_input_is_a_typed_error_and_writes_nothing(backend: Backend) {
    let db = TestDb::new(backend).await;
    let store = db.open().await;
    let s = stream("test-1");
    let invalid = |r: Result<CommitOutcome>| match r {
        Err(Error::InvalidInput(msg)) => msg,
        other => panic!("expected InvalidInput, got {other:?}"),
    };
    let msg = invalid(store.commit(Commit::default()).await);
    assert!(msg.contains("empty commit"), "{msg}");
    invalid(store.commit(append(&s, ExpectedVersion::Any, vec![])).await);
    invalid(
        store
            .commit(append(&s, ExpectedVersion::Exact(0), vec![step("a", 1)]))
            .await,
    );
    let big = "x".repeat(store.config().max_event_bytes + 1);
    let msg = invalid(
        store
            .commit(append(&s, ExpectedVersion::Any, vec![step(&big, 1)]))
            .await,
    );
    assert!(msg.contains("bytes"), "{msg}");
    let many = (0..store.config().max_events_per_commit + 1)
        .map(|_| step("a", 1))
        .collect();
    invalid(store.commit(append(&s, ExpectedVersion::Any, many)).await);
    let mut twice = append(&s, ExpectedVersion::Any, vec![step("a", 1)]);
    twice.appends.push(twice.appends[0].clone());
    invalid(store.commit(twice).await);
    invalid(
        store
            .commit(Commit {
                run_update: Some(RunUpdate::Complete),
                ..Commit::default()
            })
            .await,
    );
    for bad_id in ["", "a\u{0}b", &"r".repeat(300)] {
        let mut c = create_commit(uid(), opid(), "team-a", Some("x"));
        if let Some(k) = c.idempotency.as_mut() {
            k.request_id = bad_id.to_string();
        }
        invalid(store.commit(c).await);
    }
    // A vcluster stream whose id is not a UUID cannot be projected.
    invalid(
        store
            .commit(append(
                &stream("vcluster-not-a-uuid"),
                ExpectedVersion::Any,
                vec![NewEvent::new(Event::SuspendRequested {
                    operation_id: opid(),
                })],
            ))
            .await,
    );
    assert!(StreamName::new("").is_err());
    assert!(matches!(
        store
            .list_operations(
                &OperationFilter::default(),
                &PageRequest {
                    after: Some("garbage".into()),
                    limit: None
                }
            )
            .await,
        Err(Error::InvalidInput(_))
    ));
    assert!(matches!(
        store.claim_runs("", Duration::seconds(5), 1).await,
        Err(Error::InvalidInput(_))
    ));
    assert!(matches!(
        store.claim_runs("w", Duration::zero(), 1).await,
        Err(Error::InvalidInput(_))
    ));
    assert_eq!(store.head_position().await.expect("head"), 0);
    assert_eq!(store.stream_version(&s).await.expect("v"), None);
    assert!(
        store
            .claim_runs("w", Duration::seconds(5), 10)
            .await
            .expect("claim")
            .is_empty()
    );
}

async fn concurrent_appenders_and_a_tailer_see_every_position_once(backend: Backend) {
    let db = TestDb::new(backend).await;
    let store = db.open().await;
    const WRITERS: usize = 8;
    const COMMITS: usize = 60;
    let tailer = {
        let store = store.clone();
        tokio::spawn(async move {
            let mut seen = Vec::new();
            let mut after = 0;
            let expected_total = (WRITERS * COMMITS * 2) as u64;
            let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(120);
            while after < expected_total {
                assert!(
                    tokio::time::Instant::now() < deadline,
                    "tailer timed out at {after}"
                );
                let batch = store.read_all(after, 50).await.expect("read_all");
                for e in &batch {
                    seen.push(e.position);
                    after = e.position;
                }
                if batch.is_empty() {
                    tokio::task::yield_now().await;
                }
            }
            seen
        })
    };
    let mut writers = Vec::new();
    for w in 0..WRITERS {
        let store = store.clone();
        writers.push(tokio::spawn(async move {
            for i in 0..COMMITS {
                // Half the writers share streams, so some commits contend on stream rows.
                let s = stream(&format!("test-{}", if w % 2 == 0 { w } else { i % 3 }));
                store
                    .commit(append(
                        &s,
                        ExpectedVersion::Any,
                        vec![step("a", i as u32), step("b", i as u32)],
                    ))
                    .await
                    .expect("append");
            }
        }));
    }
    for w in writers {
        w.await.expect("writer");
    }
    let seen = tailer.await.expect("tailer");
    let expected: Vec<u64> = (1..=(WRITERS * COMMITS * 2) as u64).collect();
    assert_eq!(seen, expected, "the tail skipped or repeated a position");
    // Per-stream versions are gapless too.
    for sname in ["test-0", "test-1", "test-2", "test-4", "test-6"] {
        let events = store
            .read_stream(&stream(sname), 0, 10_000)
            .await
            .expect("read");
        let versions: Vec<u64> = events.iter().map(|e| e.version).collect();
        assert_eq!(
            versions,
            (1..=versions.len() as u64).collect::<Vec<_>>(),
            "{sname}"
        );
    }
}

async fn concurrent_exact_appends_have_one_winner(backend: Backend) {
    let db = TestDb::new(backend).await;
    let store = db.open().await;
    let s = stream("test-race");
    committed(
        store
            .commit(append(&s, ExpectedVersion::NoStream, vec![step("a", 1)]))
            .await
            .expect("seed"),
    );
    let mut tasks = Vec::new();
    for i in 0..10 {
        let store = store.clone();
        let s = s.clone();
        tasks.push(tokio::spawn(async move {
            store
                .commit(append(&s, ExpectedVersion::Exact(1), vec![step("b", i)]))
                .await
        }));
    }
    let mut wins = 0;
    for t in tasks {
        match t.await.expect("task") {
            Ok(CommitOutcome::Committed(_)) => wins += 1,
            Err(Error::WrongExpectedVersion { .. }) => {}
            other => panic!("unexpected {other:?}"),
        }
    }
    assert_eq!(wins, 1);
    assert_eq!(store.stream_version(&s).await.expect("v"), Some(2));
    assert_eq!(store.head_position().await.expect("head"), 2);
}

async fn idempotency_same_request_returns_first_operation(backend: Backend) {
    let db = TestDb::new(backend).await;
    let store = db.open().await;
    let (vc, op) = (uid(), opid());
    committed(
        store
            .commit(create_commit(vc, op, "team-a", Some("req-1")))
            .await
            .expect("first"),
    );
    let head = store.head_position().await.expect("head");
    // The same request again (new ids minted by the API) answers with the first op.
    match store
        .commit(create_commit(uid(), opid(), "team-a", Some("req-1")))
        .await
        .expect("repeat")
    {
        CommitOutcome::Duplicate { operation_id } => assert_eq!(operation_id, op),
        other => panic!("{other:?}"),
    }
    // Same key, other parameters.
    match store
        .commit(create_commit(uid(), opid(), "team-b", Some("req-1")))
        .await
    {
        Err(e @ Error::RequestIdReused { .. }) => {
            let status: Status = e.into();
            assert_eq!(status.code, Code::InvalidArgument);
            assert_eq!(status.reason(), Some("REQUEST_ID_REUSED"));
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(store.head_position().await.expect("head"), head);
    let rec = store
        .find_idempotency_key(&project(), "req-1")
        .await
        .expect("find")
        .expect("stored");
    assert_eq!(rec.operation_id, op);
    assert!(
        store
            .find_idempotency_key(&"other".parse().expect("p"), "req-1")
            .await
            .expect("find")
            .is_none()
    );
}

async fn idempotency_fifty_concurrent_requests_make_one_operation(backend: Backend) {
    let db = TestDb::new(backend).await;
    let store = db.open().await;
    let mut tasks = Vec::new();
    for _ in 0..50 {
        let store = store.clone();
        tasks.push(tokio::spawn(async move {
            let (vc, op) = (uid(), opid());
            (
                op,
                store
                    .commit(create_commit(vc, op, "team-a", Some("same-key")))
                    .await,
            )
        }));
    }
    let mut winners = Vec::new();
    let mut answers = Vec::new();
    for t in tasks {
        match t.await.expect("task") {
            (op, Ok(CommitOutcome::Committed(_))) => winners.push(op),
            (_, Ok(CommitOutcome::Duplicate { operation_id })) => answers.push(operation_id),
            (_, other) => panic!("unexpected {other:?}"),
        }
    }
    assert_eq!(winners.len(), 1, "exactly one request must win");
    assert_eq!(answers.len(), 49);
    assert!(answers.iter().all(|a| *a == winners[0]));
    let ops = store
        .list_operations(&OperationFilter::default(), &PageRequest::default())
        .await
        .expect("list");
    assert_eq!(ops.items.len(), 1);
    assert_eq!(ops.items[0].id, winners[0]);
}

/// Ends operation `op` (FAILED) now.
async fn end_operation(store: &dyn Store, op: OperationId) {
    committed(
        store
            .commit(Commit {
                appends: vec![StreamAppend {
                    stream: StreamName::operation(op),
                    expected: ExpectedVersion::Any,
                    events: vec![NewEvent::new(Event::OperationFailed {
                        error: Status::internal("ended by the test"),
                    })],
                }],
                ..Commit::default()
            })
            .await
            .expect("end the operation"),
    );
}

async fn idempotency_keys_expire_and_are_purged(backend: Backend) {
    let db = TestDb::new(backend).await;
    let clock = ManualClock::new(Utc::now());
    let store = db.open_with(db.config(), Arc::new(clock.clone())).await;
    let op = opid();
    committed(
        store
            .commit(create_commit(uid(), op, "team-a", Some("k")))
            .await
            .expect("first"),
    );
    end_operation(store.as_ref(), op).await;
    clock.advance(Duration::hours(23));
    assert!(
        store
            .find_idempotency_key(&project(), "k")
            .await
            .expect("f")
            .is_some()
    );
    assert_eq!(store.purge_idempotency_keys().await.expect("purge"), 0);
    clock.advance(Duration::hours(2));
    assert!(
        store
            .find_idempotency_key(&project(), "k")
            .await
            .expect("f")
            .is_none()
    );
    // An expired key no longer answers: the same key starts a new operation.
    let (vc2, op2) = (uid(), opid());
    let mut c = create_commit(vc2, op2, "team-b", Some("k"));
    c.idempotency.as_mut().expect("claim").request_hash = "different".into();
    committed(store.commit(c).await.expect("reuse after expiry"));
    let rec = store
        .find_idempotency_key(&project(), "k")
        .await
        .expect("f")
        .expect("k");
    assert_eq!(rec.operation_id, op2);
    let op3 = opid();
    committed(
        store
            .commit(create_commit(uid(), op3, "team-c", Some("k2")))
            .await
            .expect("k2"),
    );
    end_operation(store.as_ref(), op2).await;
    end_operation(store.as_ref(), op3).await;
    clock.advance(Duration::hours(25));
    assert_eq!(store.purge_idempotency_keys().await.expect("purge"), 2);
}

/// A key answers until 24 h after its operation *ended*: an operation that runs 30 h
/// still answers its request id, and for 24 h after it ends.
async fn idempotency_keys_live_24h_after_their_operation_ended(backend: Backend) {
    let db = TestDb::new(backend).await;
    let clock = ManualClock::new(Utc::now());
    let store = db.open_with(db.config(), Arc::new(clock.clone())).await;
    let op = opid();
    committed(
        store
            .commit(create_commit(uid(), op, "long", Some("long-running")))
            .await
            .expect("create"),
    );
    let p = project();
    let find = || store.find_idempotency_key(&p, "long-running");
    clock.advance(Duration::hours(30));
    assert_eq!(store.purge_idempotency_keys().await.expect("purge"), 0);
    let rec = find()
        .await
        .expect("find")
        .expect("kept while the operation runs");
    assert_eq!(rec.operation_id, op);
    // A repeat of the request 30 h later still answers the first operation.
    let again = store
        .commit(create_commit(uid(), opid(), "long", Some("long-running")))
        .await
        .expect("repeat");
    assert!(
        matches!(again, CommitOutcome::Duplicate { operation_id } if operation_id == op),
        "{again:?}"
    );
    end_operation(store.as_ref(), op).await;
    clock.advance(Duration::hours(23));
    assert_eq!(store.purge_idempotency_keys().await.expect("purge"), 0);
    assert!(
        find().await.expect("find").is_some(),
        "gone 23 h after the end"
    );
    clock.advance(Duration::hours(2));
    assert!(
        find().await.expect("find").is_none(),
        "kept 25 h after the end"
    );
    assert_eq!(store.purge_idempotency_keys().await.expect("purge"), 1);
}

async fn projections_follow_the_events(backend: Backend) {
    let db = TestDb::new(backend).await;
    let store = db.open().await;
    let (vc, op) = (uid(), opid());
    committed(
        store
            .commit(create_commit(vc, op, "team-a", Some("r")))
            .await
            .expect("create"),
    );
    let v = store
        .get_vcluster(&project(), &name("team-a"))
        .await
        .expect("get")
        .expect("exists");
    assert_eq!(v.state, VClusterState::Creating);
    assert_eq!(v.uid, vc);
    assert_eq!(v.active_operation, Some(op));
    assert_eq!(v.version, 1);
    assert_eq!(
        store.get_vcluster_by_uid(vc).await.expect("get"),
        Some(v.clone())
    );

    let o = store.get_operation(op).await.expect("get").expect("exists");
    assert_eq!(o.state, OperationState::Pending);
    assert_eq!(o.kind, OperationKind::CREATE);
    assert_eq!(o.request_id.as_deref(), Some("r"));
    assert_eq!(o.steps.len(), 2);
    assert!(o.steps.iter().all(|s| s.state == StepState::Pending));

    let os = StreamName::operation(op);
    committed(
        store
            .commit(append(
                &os,
                ExpectedVersion::Exact(1),
                vec![
                    step("create_namespace", 1),
                    NewEvent::new(Event::StepSucceeded {
                        step: "create_namespace".into(),
                        output: serde_json::json!({"namespace": "ovc-default-team-a"}),
                    }),
                    step("install_release", 1),
                    NewEvent::new(Event::StepFailed {
                        step: "install_release".into(),
                        attempt: 1,
                        error: Status::new(Code::Unavailable, "helm timed out"),
                        will_retry: true,
                    }),
                ],
            ))
            .await
            .expect("steps"),
    );
    let o = store.get_operation(op).await.expect("get").expect("exists");
    assert_eq!(o.state, OperationState::Running);
    assert_eq!(o.steps[0].state, StepState::Succeeded);
    assert_eq!(o.steps[1].state, StepState::Running);
    assert_eq!(
        o.steps[1].error.as_ref().map(|e| e.message.as_str()),
        Some("helm timed out")
    );
    assert_eq!(o.version, 5);

    // The last step and the outcome, on both streams in one commit.
    let mut done = append(
        &os,
        ExpectedVersion::Exact(5),
        vec![
            NewEvent::new(Event::StepSucceeded {
                step: "install_release".into(),
                output: serde_json::Value::Null,
            }),
            NewEvent::new(Event::OperationSucceeded {
                result: serde_json::json!({"name": "team-a"}),
            }),
        ],
    );
    done.appends.push(StreamAppend {
        stream: StreamName::vcluster(vc),
        expected: ExpectedVersion::Exact(1),
        events: vec![NewEvent::new(Event::VClusterSettled {
            operation_id: op,
            state: VClusterState::Running,
            spec: None,
        })],
    });
    committed(store.commit(done).await.expect("done"));
    let o = store.get_operation(op).await.expect("get").expect("exists");
    assert!(o.done);
    assert_eq!(o.state, OperationState::Succeeded);
    assert_eq!(o.result["name"], "team-a");
    let v = store
        .get_vcluster_by_uid(vc)
        .await
        .expect("get")
        .expect("exists");
    assert_eq!(v.state, VClusterState::Running);
    assert_eq!(v.active_operation, None);
    assert_eq!(v.last_operation, Some(op));
    assert_eq!(v.version, 2);

    // Snapshots.
    let sid = SnapshotId(Uuid::now_v7());
    committed(
        store
            .commit(append(
                &StreamName::snapshot(sid),
                ExpectedVersion::NoStream,
                vec![
                    NewEvent::new(Event::SnapshotStarted {
                        operation_id: op,
                        vcluster_uid: vc,
                        vcluster: name("team-a"),
                        project: project(),
                        description: Some("nightly".into()),
                    }),
                    NewEvent::new(Event::SnapshotCompleted {
                        size_bytes: 1234,
                        sha256: "ab".repeat(32),
                        location: "file:///tmp/x".into(),
                        metadata: serde_json::json!({"spec": {}}),
                    }),
                ],
            ))
            .await
            .expect("snapshot"),
    );
    let snap = store.get_snapshot(sid).await.expect("get").expect("exists");
    assert_eq!(snap.state, SnapshotState::Ready);
    assert_eq!(snap.size_bytes, Some(1234));
    assert_eq!(snap.description.as_deref(), Some("nightly"));
    let list = store
        .list_snapshots(
            &SnapshotFilter {
                vcluster: Some("team-a".into()),
                ..SnapshotFilter::default()
            },
            &PageRequest::default(),
        )
        .await
        .expect("list");
    assert_eq!(list.items, vec![snap.clone()]);
    for (state, expected) in [
        (SnapshotState::Ready, vec![snap]),
        (SnapshotState::Failed, vec![]),
    ] {
        let list = store
            .list_snapshots(
                &SnapshotFilter {
                    state: Some(state),
                    ..SnapshotFilter::default()
                },
                &PageRequest::default(),
            )
            .await
            .expect("list by state");
        assert_eq!(list.items, expected, "snapshots in state {state:?}");
    }
}

async fn live_names_are_unique_and_freed_by_delete(backend: Backend) {
    let db = TestDb::new(backend).await;
    let store = db.open().await;
    let (vc, op) = (uid(), opid());
    committed(
        store
            .commit(create_commit(vc, op, "team-a", None))
            .await
            .expect("create"),
    );
    let head = store.head_position().await.expect("head");
    match store
        .commit(create_commit(uid(), opid(), "team-a", None))
        .await
    {
        Err(e @ Error::NameTaken { .. }) => {
            assert_eq!(Status::from(e).code, Code::AlreadyExists);
        }
        other => panic!("second live team-a: {other:?}"),
    }
    assert_eq!(
        store.head_position().await.expect("head"),
        head,
        "partial write"
    );
    // Delete settles to DELETED; the name is free again, GET shows the live one.
    committed(
        store
            .commit(append(
                &StreamName::vcluster(vc),
                ExpectedVersion::Exact(1),
                vec![NewEvent::new(Event::VClusterSettled {
                    operation_id: op,
                    state: VClusterState::Deleted,
                    spec: None,
                })],
            ))
            .await
            .expect("delete"),
    );
    let deleted = store
        .get_vcluster(&project(), &name("team-a"))
        .await
        .expect("get")
        .expect("deleted one still visible");
    assert_eq!(deleted.state, VClusterState::Deleted);
    let vc2 = uid();
    committed(
        store
            .commit(create_commit(vc2, opid(), "team-a", None))
            .await
            .expect("reuse"),
    );
    let live = store
        .get_vcluster(&project(), &name("team-a"))
        .await
        .expect("get")
        .expect("live");
    assert_eq!(live.uid, vc2);
    let listed = store
        .list_vclusters(&VClusterFilter::default(), &PageRequest::default())
        .await
        .expect("list");
    assert_eq!(listed.items.len(), 1);
    let all = store
        .list_vclusters(
            &VClusterFilter {
                include_deleted: true,
                ..VClusterFilter::default()
            },
            &PageRequest::default(),
        )
        .await
        .expect("list");
    assert_eq!(all.items.len(), 2);
}

async fn projection_grammar_errors_roll_back(backend: Backend) {
    let db = TestDb::new(backend).await;
    let store = db.open().await;
    // A step event for an operation that was never requested.
    let r = store
        .commit(append(
            &StreamName::operation(opid()),
            ExpectedVersion::Any,
            vec![step("x", 1)],
        ))
        .await;
    assert!(matches!(r, Err(Error::Projection(_))), "{r:?}");
    // A valid create followed, in the same commit, by an event after the end.
    let (vc, op) = (uid(), opid());
    let mut c = create_commit(vc, op, "team-a", Some("k"));
    c.appends[1]
        .events
        .push(NewEvent::new(Event::OperationFailed {
            error: Status::internal("x"),
        }));
    c.appends[1].events.push(step("late", 1));
    let r = store.commit(c).await;
    assert!(matches!(r, Err(Error::Projection(_))), "{r:?}");
    assert_eq!(store.head_position().await.expect("head"), 0);
    assert!(store.get_vcluster_by_uid(vc).await.expect("get").is_none());
    assert!(
        store
            .find_idempotency_key(&project(), "k")
            .await
            .expect("f")
            .is_none()
    );
    assert!(
        store
            .claim_runs("w", Duration::seconds(5), 10)
            .await
            .expect("c")
            .is_empty()
    );
}

async fn rebuild_projections_equals_live_tables(backend: Backend) {
    let db = TestDb::new(backend).await;
    let store = db.open().await;
    for i in 0..12 {
        let (vc, op) = (uid(), opid());
        committed(
            store
                .commit(create_commit(
                    vc,
                    op,
                    &format!("vc-{i}"),
                    Some(&format!("r{i}")),
                ))
                .await
                .expect("create"),
        );
        let os = StreamName::operation(op);
        let mut events = vec![step("create_namespace", 1)];
        if i % 2 == 0 {
            events.push(NewEvent::new(Event::StepSucceeded {
                step: "create_namespace".into(),
                output: serde_json::json!({"i": i}),
            }));
        }
        if i % 3 == 0 {
            events.push(NewEvent::new(Event::CompensationStarted {
                error: Status::new(Code::FailedPrecondition, "quota"),
            }));
            events.push(NewEvent::new(Event::OperationFailed {
                error: Status::new(Code::FailedPrecondition, "quota"),
            }));
        }
        committed(
            store
                .commit(append(&os, ExpectedVersion::Exact(1), events))
                .await
                .expect("steps"),
        );
        if i == 0 {
            // Push vc-0's deletion into the next rebuild batch of 1000 events.
            committed(
                store
                    .commit(append(
                        &stream("test-filler"),
                        ExpectedVersion::Any,
                        (0..1000).map(|i| step("filler", i)).collect(),
                    ))
                    .await
                    .expect("filler"),
            );
        }
        if i % 3 == 0 {
            committed(
                store
                    .commit(append(
                        &StreamName::vcluster(vc),
                        ExpectedVersion::Exact(1),
                        vec![NewEvent::new(Event::VClusterSettled {
                            operation_id: op,
                            state: VClusterState::Deleted,
                            spec: None,
                        })],
                    ))
                    .await
                    .expect("settle"),
            );
        }
    }
    // vc-0 was deleted (in a later rebuild batch than its creation) and is created again.
    committed(
        store
            .commit(create_commit(uid(), opid(), "vc-0", None))
            .await
            .expect("re-create vc-0"),
    );
    let before = store.dump_projections().await.expect("dump");
    assert_eq!(before.vclusters.len(), 13);
    assert_eq!(before.operations.len(), 13);
    assert_eq!(before.operation_steps.len(), 26);
    let report = store.rebuild_projections().await.expect("rebuild");
    assert_eq!(report.events, store.head_position().await.expect("head"));
    let after = store.dump_projections().await.expect("dump");
    assert_eq!(before, after);
}

async fn list_pages_through_everything(backend: Backend) {
    let db = TestDb::new(backend).await;
    let store = db.open().await;
    for i in 0..23 {
        committed(
            store
                .commit(create_commit(uid(), opid(), &format!("vc-{i:02}"), None))
                .await
                .expect("create"),
        );
    }
    let mut names = Vec::new();
    let mut page = PageRequest {
        after: None,
        limit: Some(5),
    };
    loop {
        let p = store
            .list_vclusters(&VClusterFilter::default(), &page)
            .await
            .expect("list");
        names.extend(p.items.iter().map(|v| v.name.to_string()));
        match p.next {
            Some(n) => page.after = Some(n),
            None => break,
        }
    }
    let expected: Vec<String> = (0..23).map(|i| format!("vc-{i:02}")).collect();
    assert_eq!(names, expected);

    let mut ids = BTreeSet::new();
    let mut page = PageRequest {
        after: None,
        limit: Some(4),
    };
    loop {
        let p = store
            .list_operations(
                &OperationFilter {
                    kind: Some(OperationKind::CREATE),
                    state: Some(OperationState::Pending),
                    ..OperationFilter::default()
                },
                &page,
            )
            .await
            .expect("list");
        for o in &p.items {
            assert!(ids.insert(o.id), "operation listed twice");
        }
        match p.next {
            Some(n) => page.after = Some(n),
            None => break,
        }
    }
    assert_eq!(ids.len(), 23);
    let none = store
        .list_operations(
            &OperationFilter {
                kind: Some(OperationKind::DELETE),
                ..OperationFilter::default()
            },
            &PageRequest::default(),
        )
        .await
        .expect("list");
    assert!(none.items.is_empty());
}

async fn queue_claims_head_run_per_vcluster(backend: Backend) {
    let db = TestDb::new(backend).await;
    let store = db.open().await;
    let (a, b) = (uid(), uid());
    committed(store.commit(free_run(a)).await.expect("a1"));
    committed(store.commit(free_run(a)).await.expect("a2"));
    committed(store.commit(free_run(b)).await.expect("b1"));
    let claimed = store
        .claim_runs("w1", Duration::seconds(30), 10)
        .await
        .expect("claim");
    assert_eq!(claimed.len(), 2, "one run per vcluster: {claimed:?}");
    let vcs: BTreeSet<_> = claimed.iter().map(|r| r.vcluster_uid).collect();
    assert_eq!(vcs, BTreeSet::from([a, b]));
    assert!(claimed.iter().all(|r| r.epoch == 1 && r.attempts == 1));
    assert!(claimed.iter().all(|r| r.status == RunStatus::Leased));
    assert!(
        store
            .claim_runs("w2", Duration::seconds(30), 10)
            .await
            .expect("claim")
            .is_empty()
    );
    let first_a = claimed.iter().find(|r| r.vcluster_uid == a).expect("a");
    committed(
        store
            .commit(Commit {
                fence: Some(first_a.lease()),
                run_update: Some(RunUpdate::Complete),
                ..Commit::default()
            })
            .await
            .expect("complete"),
    );
    let next = store
        .claim_runs("w2", Duration::seconds(30), 10)
        .await
        .expect("claim");
    assert_eq!(next.len(), 1);
    assert_eq!(next[0].vcluster_uid, a);
    assert_ne!(next[0].id, first_a.id);
    assert_eq!(
        store
            .get_run(first_a.id)
            .await
            .expect("get")
            .map(|r| r.status),
        Some(RunStatus::Done)
    );
}

/// Sleeps `ms` milliseconds of real time: leases and timers follow the database's clock,
/// which tests cannot advance.
async fn sleep_ms(ms: u64) {
    tokio::time::sleep(std::time::Duration::from_millis(ms)).await;
}

async fn queue_lease_steal_and_fencing(backend: Backend) {
    let db = TestDb::new(backend).await;
    let store = db.open().await;
    let (vc, op) = (uid(), opid());
    committed(
        store
            .commit(create_commit(vc, op, "team-a", None))
            .await
            .expect("create"),
    );
    // Wide margins: the machine running the suite may be busy, and a late call must not
    // turn "still held" into "expired".
    let lease = Duration::milliseconds(3000);
    let mine = store
        .claim_runs("w1", lease, 1)
        .await
        .expect("claim")
        .remove(0);
    // Renewal keeps it: 3.5 s after the claim (past the first lease) it is still held.
    sleep_ms(2000).await;
    store.renew_lease(mine.lease(), lease).await.expect("renew");
    let renewed = std::time::Instant::now();
    sleep_ms(1500).await;
    assert!(
        store
            .claim_runs("w2", lease, 1)
            .await
            .expect("claim")
            .is_empty()
    );
    // w1 stops renewing (crashed or paused); the lease expires and w2 steals it.
    let expired = renewed + lease.to_std().expect("lease") + std::time::Duration::from_millis(300);
    tokio::time::sleep_until(expired.into()).await;
    let stolen = store.claim_runs("w2", lease, 1).await.expect("claim");
    assert_eq!(stolen.len(), 1);
    assert_eq!(stolen[0].id, mine.id);
    assert_eq!(stolen[0].epoch, mine.epoch + 1);
    assert_eq!(stolen[0].attempts, 2);
    assert_eq!(stolen[0].lease_owner.as_deref(), Some("w2"));
    let due = store
        .next_run_due_in()
        .await
        .expect("due")
        .expect("a lease");
    assert!(
        due > std::time::Duration::ZERO && due <= lease.to_std().expect("lease"),
        "the next due time is the new lease's end: {due:?}"
    );
    // w1 wakes up and tries to journal a step: fenced off, nothing written.
    let head = store.head_position().await.expect("head");
    let mut late = append(
        &StreamName::operation(op),
        ExpectedVersion::Exact(1),
        vec![step("create_namespace", 1)],
    );
    late.fence = Some(mine.lease());
    assert!(matches!(
        store.commit(late.clone()).await,
        Err(Error::LeaseLost { .. })
    ));
    assert!(matches!(
        store.renew_lease(mine.lease(), lease).await,
        Err(Error::LeaseLost { .. })
    ));
    assert_eq!(store.head_position().await.expect("head"), head);
    // w2 journals the same step under its lease.
    late.fence = Some(stolen[0].lease());
    late.run_update = Some(RunUpdate::Complete);
    committed(store.commit(late).await.expect("w2 commit"));
    let op_view = store.get_operation(op).await.expect("get").expect("op");
    assert_eq!(op_view.steps[0].state, StepState::Running);
    // A completed run cannot be completed again.
    assert!(matches!(
        store
            .commit(Commit {
                fence: Some(stolen[0].lease()),
                run_update: Some(RunUpdate::Complete),
                ..Commit::default()
            })
            .await,
        Err(Error::LeaseLost { .. })
    ));
    assert_eq!(store.next_run_due_in().await.expect("due"), None);
    // The audit trail: w1's claim (renewed, never released: it "crashed"), then w2's.
    let history = store.lease_history(Some(vc)).await.expect("history");
    assert_eq!(history.len(), 2, "{history:?}");
    assert_eq!((history[0].owner.as_str(), history[0].epoch), ("w1", 1));
    assert_eq!(history[0].released_at, None);
    assert_eq!((history[1].owner.as_str(), history[1].epoch), ("w2", 2));
    assert!(history[1].released_at.is_some());
    assert!(
        history[0].held_until() <= history[1].claimed_at,
        "the steal overlapped the first lease: {history:?}"
    );
    assert!(
        history[0].lease_until >= history[0].claimed_at + Duration::milliseconds(4500),
        "renewal: {history:?}"
    );
}

async fn queue_reschedule_is_a_durable_timer(backend: Backend) {
    let db = TestDb::new(backend).await;
    let store = db.open().await;
    let vc = uid();
    committed(store.commit(free_run(vc)).await.expect("enqueue"));
    let run = store
        .claim_runs("w1", Duration::seconds(5), 1)
        .await
        .expect("claim")
        .remove(0);
    let after = Duration::milliseconds(3000);
    committed(
        store
            .commit(Commit {
                fence: Some(run.lease()),
                run_update: Some(RunUpdate::Reschedule { after }),
                ..Commit::default()
            })
            .await
            .expect("reschedule"),
    );
    let stored = store.get_run(run.id).await.expect("get").expect("run");
    assert_eq!(stored.status, RunStatus::Queued);
    assert_eq!(stored.lease_owner, None);
    let due = store
        .next_run_due_in()
        .await
        .expect("due")
        .expect("a timer");
    assert!(
        due > std::time::Duration::from_millis(1500) && due <= after.to_std().expect("after"),
        "due in {due:?}"
    );
    // A later run of the same vcluster waits behind it (one operation at a time).
    committed(store.commit(free_run(vc)).await.expect("enqueue 2"));
    assert!(
        store
            .claim_runs("w2", Duration::seconds(5), 5)
            .await
            .expect("c")
            .is_empty()
    );
    sleep_ms(3100).await;
    let again = store
        .claim_runs("w2", Duration::seconds(5), 5)
        .await
        .expect("c");
    assert_eq!(again.len(), 1);
    assert_eq!(again[0].id, run.id);
    assert_eq!(again[0].epoch, 2);
}

/// Leases and timers follow the database's clock: stores whose injected clocks are 10 s
/// ahead or behind (workers with a wrong clock) neither steal a healthy lease nor lose
/// their own, and their timers fire when the database says.
async fn queue_leases_and_timers_ignore_the_process_clock(backend: Backend) {
    let db = TestDb::new(backend).await;
    let ahead = db
        .open_with(
            db.config(),
            Arc::new(ManualClock::new(Utc::now() + Duration::seconds(10))),
        )
        .await;
    let behind = db
        .open_with(
            db.config(),
            Arc::new(ManualClock::new(Utc::now() - Duration::seconds(10))),
        )
        .await;
    let exact = db.open().await;
    let lease = Duration::seconds(5);
    let (a, b) = (uid(), uid());
    committed(exact.commit(free_run(a)).await.expect("enqueue a"));
    // The slow clock's lease is not expired for anyone.
    let held = behind.claim_runs("behind", lease, 1).await.expect("claim");
    assert_eq!(held.len(), 1);
    for (who, store) in [("exact", &exact), ("ahead", &ahead), ("behind", &behind)] {
        assert!(
            store
                .claim_runs(who, lease, 5)
                .await
                .expect("claim")
                .is_empty(),
            "{who} stole the healthy lease of the slow-clock worker"
        );
    }
    // The fast clock's lease is not longer than asked: due within the lease.
    committed(exact.commit(free_run(b)).await.expect("enqueue b"));
    let fast = ahead.claim_runs("ahead", lease, 1).await.expect("claim");
    assert_eq!(fast.len(), 1);
    for (who, store) in [("exact", &exact), ("ahead", &ahead), ("behind", &behind)] {
        assert!(
            store
                .claim_runs(who, lease, 5)
                .await
                .expect("claim")
                .is_empty(),
            "{who} stole the healthy lease of the fast-clock worker"
        );
        let due = store.next_run_due_in().await.expect("due").expect("leases");
        assert!(
            due <= lease.to_std().expect("lease"),
            "{who}: a lease ends later than asked ({due:?})"
        );
    }
    // Renewals by either keep the lease; a durable timer of 2 s set by the fast
    // clock fires after 2 s for everybody (not 10 s later), and not before.
    behind
        .renew_lease(held[0].lease(), lease)
        .await
        .expect("renew");
    committed(
        ahead
            .commit(Commit {
                fence: Some(fast[0].lease()),
                run_update: Some(RunUpdate::Reschedule {
                    after: Duration::milliseconds(2000),
                }),
                ..Commit::default()
            })
            .await
            .expect("reschedule"),
    );
    assert!(
        ahead
            .claim_runs("ahead", lease, 5)
            .await
            .expect("claim")
            .is_empty(),
        "the timer fired early for the fast clock"
    );
    sleep_ms(2200).await;
    let fired = behind.claim_runs("behind", lease, 5).await.expect("claim");
    assert_eq!(fired.len(), 1, "the timer did not fire for the slow clock");
    assert_eq!(fired[0].id, fast[0].id);
    // No claim on a vcluster overlapped the previous one.
    let history = exact.lease_history(None).await.expect("history");
    assert_eq!(history.len(), 3, "{history:?}");
    for pair in history.windows(2) {
        if pair[0].vcluster_uid == pair[1].vcluster_uid {
            assert!(pair[0].held_until() <= pair[1].claimed_at, "{history:?}");
        }
    }
}

async fn concurrent_workers_complete_each_run_once_in_order(backend: Backend) {
    let db = TestDb::new(backend).await;
    let store = db.open().await;
    const VCLUSTERS: usize = 12;
    const PER_VC: usize = 8;
    let vcs: Vec<VClusterId> = (0..VCLUSTERS).map(|_| uid()).collect();
    let mut order: HashMap<VClusterId, Vec<RunId>> = HashMap::new();
    for round in 0..PER_VC {
        let mut c = Commit::default();
        for vc in &vcs {
            let id = RunId(Uuid::now_v7());
            order.entry(*vc).or_default().push(id);
            c.enqueue.push(NewRun {
                id,
                operation_id: opid(),
                vcluster_uid: *vc,
                delay: None,
                priority: 0,
            });
        }
        let _ = round;
        committed(store.commit(c).await.expect("enqueue"));
    }
    let log = Arc::new(tokio::sync::Mutex::new(Vec::<(VClusterId, RunId)>::new()));
    let mut workers = Vec::new();
    for w in 0..4 {
        let store = store.clone();
        let log = log.clone();
        workers.push(tokio::spawn(async move {
            let owner = format!("w{w}");
            let mut idle = 0;
            while idle < 50 {
                let runs = store
                    .claim_runs(&owner, Duration::seconds(30), 3)
                    .await
                    .expect("claim");
                if runs.is_empty() {
                    idle += 1;
                    tokio::time::sleep(std::time::Duration::from_millis(5)).await;
                    continue;
                }
                idle = 0;
                for r in runs {
                    log.lock().await.push((r.vcluster_uid, r.id));
                    store
                        .commit(Commit {
                            fence: Some(r.lease()),
                            run_update: Some(RunUpdate::Complete),
                            ..Commit::default()
                        })
                        .await
                        .expect("complete");
                }
            }
        }));
    }
    for w in workers {
        w.await.expect("worker");
    }
    let log = log.lock().await.clone();
    assert_eq!(log.len(), VCLUSTERS * PER_VC, "every run exactly once");
    let unique: BTreeSet<_> = log.iter().map(|(_, r)| *r).collect();
    assert_eq!(unique.len(), log.len(), "a run was claimed twice");
    for vc in &vcs {
        let seen: Vec<RunId> = log
            .iter()
            .filter(|(v, _)| v == vc)
            .map(|(_, r)| *r)
            .collect();
        assert_eq!(&seen, &order[vc], "runs of one vcluster ran out of order");
    }
}

async fn wakeups_fire_on_commit(backend: Backend) {
    let db = TestDb::new(backend).await;
    let store = db.open().await;
    let mut events = store.watch_events();
    let mut runs = store.watch_runs();
    events.borrow_and_update();
    runs.borrow_and_update();
    committed(
        store
            .commit(create_commit(uid(), opid(), "team-a", None))
            .await
            .expect("c"),
    );
    tokio::time::timeout(std::time::Duration::from_secs(5), events.changed())
        .await
        .expect("events wake-up")
        .expect("open");
    assert_eq!(*events.borrow(), 2);
    tokio::time::timeout(std::time::Duration::from_secs(5), runs.changed())
        .await
        .expect("runs wake-up")
        .expect("open");
    if backend == Backend::Postgres {
        // Another process (here: another store on the same schema) hears it via NOTIFY.
        let other = db.open().await;
        let mut remote = other.watch_events();
        remote.borrow_and_update();
        // Give LISTEN time to be established.
        tokio::time::sleep(std::time::Duration::from_millis(300)).await;
        committed(store.commit(free_run(uid())).await.expect("run"));
        committed(
            store
                .commit(append(
                    &stream("test-x"),
                    ExpectedVersion::Any,
                    vec![step("a", 1)],
                ))
                .await
                .expect("append"),
        );
        tokio::time::timeout(std::time::Duration::from_secs(5), remote.changed())
            .await
            .expect("NOTIFY wake-up")
            .expect("open");
        assert_eq!(*remote.borrow(), 3);
    }
}

async fn migrate_is_idempotent(backend: Backend) {
    let db = TestDb::new(backend).await;
    let store = db.open().await;
    store.migrate().await.expect("second migrate");
    let again = db.open().await;
    again.migrate().await.expect("third migrate");
    committed(store.commit(free_run(uid())).await.expect("works"));
}

async fn tokens_are_found_by_hash_only(backend: Backend) {
    let db = TestDb::new(backend).await;
    let store = db.open().await;
    let record = TokenRecord {
        id: Uuid::now_v7(),
        name: "ci".into(),
        project: project(),
        role: Role::Viewer,
        created_at: whole_micros(store.clock().now()),
        expires_at: None,
        revoked_at: None,
    };
    store.create_token(&record, "ab12").await.expect("create");
    assert_eq!(
        store.find_token("ab12").await.expect("find"),
        Some(record.clone())
    );
    assert_eq!(store.find_token("ab13").await.expect("find"), None);
    // The hash is unique: a second token with it is refused.
    let mut other = record;
    other.id = Uuid::now_v7();
    assert!(store.create_token(&other, "ab12").await.is_err());
}

/// `GET /v1/operations` is newest first, and its keyset page tokens (created_at, id) do
/// not move when operations are committed between two pages.
async fn operations_list_newest_first_and_pages_stay_stable_under_commits(backend: Backend) {
    let db = TestDb::new(backend).await;
    let store = db.open().await;
    let mut original = Vec::new();
    for i in 0..10 {
        let op = opid();
        committed(
            store
                .commit(create_commit(uid(), op, &format!("old-{i}"), None))
                .await
                .expect("create"),
        );
        original.push(op);
    }
    let list = |after: Option<String>| {
        let store = store.clone();
        async move {
            store
                .list_operations(
                    &OperationFilter::default(),
                    &PageRequest {
                        after,
                        limit: Some(4),
                    },
                )
                .await
                .expect("list")
        }
    };
    let first = list(None).await;
    let newest: Vec<OperationId> = original.iter().rev().take(4).copied().collect();
    assert_eq!(
        first.items.iter().map(|o| o.id).collect::<Vec<_>>(),
        newest,
        "the first page holds the four newest operations, newest first"
    );
    // Operations committed while the client pages.
    let mut added = Vec::new();
    for i in 0..5 {
        let op = opid();
        committed(
            store
                .commit(create_commit(uid(), op, &format!("new-{i}"), None))
                .await
                .expect("create"),
        );
        added.push(op);
    }
    let mut seen: Vec<OperationId> = first.items.iter().map(|o| o.id).collect();
    let mut times: Vec<_> = first.items.iter().map(|o| (o.created_at, o.id)).collect();
    let mut next = first.next;
    while let Some(token) = next {
        let page = list(Some(token)).await;
        seen.extend(page.items.iter().map(|o| o.id));
        times.extend(page.items.iter().map(|o| (o.created_at, o.id)));
        next = page.next;
    }
    let expected: Vec<OperationId> = original.iter().rev().copied().collect();
    assert_eq!(
        seen, expected,
        "paging on sees the original set once each, in order, none of the new ones"
    );
    assert!(
        times.windows(2).all(|w| w[0] > w[1]),
        "strictly newest first: {times:?}"
    );
    let fresh = list(None).await;
    let newest: Vec<OperationId> = added.iter().rev().take(4).copied().collect();
    assert_eq!(fresh.items.iter().map(|o| o.id).collect::<Vec<_>>(), newest);
}

/// A page token is parsed strictly and alike on both backends: only what the server
/// printed is accepted.
async fn page_tokens_are_refused_alike_on_both_backends(backend: Backend) {
    let db = TestDb::new(backend).await;
    let store = db.open().await;
    for i in 0..3 {
        committed(
            store
                .commit(create_commit(uid(), opid(), &format!("vc-{i}"), None))
                .await
                .expect("create"),
        );
    }
    let page = |after: &str| PageRequest {
        after: Some(after.to_string()),
        limit: Some(1),
    };
    let first = store
        .list_operations(
            &OperationFilter::default(),
            &PageRequest {
                after: None,
                limit: Some(1),
            },
        )
        .await
        .expect("list");
    let token = first.next.expect("a next page");
    assert!(
        store
            .list_operations(&OperationFilter::default(), &page(&token))
            .await
            .is_ok()
    );
    let (at, id) = token.split_once('|').expect("two parts");
    let bad = [
        format!("{at}|{}", id.to_uppercase()),
        format!("+{at}|{id}"),
        format!("{at}|not-a-uuid"),
        format!("{at}|{id}|extra"),
        format!("{}|{id}", i64::MAX),
        String::from("|"),
    ];
    for t in &bad {
        assert!(
            matches!(
                store
                    .list_operations(&OperationFilter::default(), &page(t))
                    .await,
                Err(Error::InvalidInput(_))
            ),
            "operation token {t:?}"
        );
        assert!(
            matches!(
                store
                    .list_snapshots(&SnapshotFilter::default(), &page(t))
                    .await,
                Err(Error::InvalidInput(_))
            ),
            "snapshot token {t:?}"
        );
    }
    let vcs = store
        .list_vclusters(
            &VClusterFilter::default(),
            &PageRequest {
                after: None,
                limit: Some(1),
            },
        )
        .await
        .expect("list");
    let token = vcs.next.expect("a next page");
    assert!(
        store
            .list_vclusters(&VClusterFilter::default(), &page(&token))
            .await
            .is_ok()
    );
    let parts: Vec<&str> = token.split('|').collect();
    for t in [
        format!("Default|{}|{}", parts[1], parts[2]),
        format!("{}|-bad-|{}", parts[0], parts[2]),
        format!("{}|{}|{}", parts[0], parts[1], parts[2].to_uppercase()),
        format!("{}|{}", parts[0], parts[1]),
    ] {
        assert!(
            matches!(
                store
                    .list_vclusters(&VClusterFilter::default(), &page(&t))
                    .await,
                Err(Error::InvalidInput(_))
            ),
            "vcluster token {t:?}"
        );
    }
}

async fn tokens_are_listed_expire_and_are_revoked(backend: Backend) {
    let db = TestDb::new(backend).await;
    let store = db.open().await;
    let now = whole_micros(store.clock().now());
    let token = |name: &str, project: &str, expires_at| TokenRecord {
        id: Uuid::now_v7(),
        name: name.into(),
        project: project.parse().expect("project"),
        role: Role::Operator,
        created_at: now,
        expires_at,
        revoked_at: None,
    };
    let soon = token("soon", "alpha", Some(now + Duration::days(30)));
    let forever = token("forever", "alpha", None);
    let other = token("other", "beta", Some(now - Duration::seconds(1)));
    for (t, h) in [(&soon, "h1"), (&forever, "h2"), (&other, "h3")] {
        store.create_token(t, h).await.expect("create");
    }
    // Every field round-trips; expiry is the caller's to judge.
    let found = store.find_token("h1").await.expect("find").expect("exists");
    assert_eq!(found, soon);
    assert_eq!(found.refusal(now), None);
    assert_eq!(found.refusal(now + Duration::days(30)), Some("expired"));
    let expired = store.find_token("h3").await.expect("find").expect("exists");
    assert_eq!(expired.refusal(now), Some("expired"));

    let alpha: ProjectName = "alpha".parse().expect("project");
    let listed = store.list_tokens(Some(&alpha)).await.expect("list");
    let ids: BTreeSet<Uuid> = listed.iter().map(|t| t.id).collect();
    assert_eq!(ids, BTreeSet::from([soon.id, forever.id]));
    assert_eq!(store.list_tokens(None).await.expect("list all").len(), 3);

    // Revoking stamps revoked_at once; a second revoke keeps the first time.
    let revoked = store
        .revoke_token(forever.id)
        .await
        .expect("revoke")
        .expect("exists");
    let at = revoked.revoked_at.expect("revoked_at set");
    assert_eq!(revoked.refusal(now), Some("revoked"));
    let again = store
        .revoke_token(forever.id)
        .await
        .expect("revoke again")
        .expect("exists");
    assert_eq!(again.revoked_at, Some(at));
    assert_eq!(
        store
            .find_token("h2")
            .await
            .expect("find")
            .expect("exists")
            .revoked_at,
        Some(at)
    );
    assert_eq!(
        store.revoke_token(Uuid::now_v7()).await.expect("revoke"),
        None
    );
    // The others are untouched.
    assert_eq!(
        store
            .find_token("h1")
            .await
            .expect("find")
            .expect("exists")
            .revoked_at,
        None
    );
}

/// `t` at the precision the stores keep (microseconds).
fn whole_micros(t: chrono::DateTime<Utc>) -> chrono::DateTime<Utc> {
    chrono::DateTime::from_timestamp_micros(t.timestamp_micros()).expect("in range")
}

/// The purge every long-lived process runs: periodic, counted, stamped.
async fn the_purger_runs_periodically_and_counts(backend: Backend) {
    use ovc_store::housekeeping::IdempotencyPurger;
    let db = TestDb::new(backend).await;
    let clock = ManualClock::new(Utc::now());
    let store = db.open_with(db.config(), Arc::new(clock.clone())).await;
    let purger = Arc::new(IdempotencyPurger::default());
    let (stop, stopped) = tokio::sync::watch::channel(false);
    let task = tokio::spawn(purger.clone().run(
        store.clone(),
        std::time::Duration::from_millis(20),
        stopped,
    ));
    for (n, key) in [(1, "p"), (2, "q")] {
        let op = opid();
        committed(
            store
                .commit(create_commit(uid(), op, &format!("vc-{key}"), Some(key)))
                .await
                .expect("create"),
        );
        end_operation(store.as_ref(), op).await;
        clock.advance(Duration::hours(25));
        let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(10);
        while purger.purged_total() < n {
            assert!(
                tokio::time::Instant::now() < deadline,
                "key {key} not purged by the periodic run"
            );
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
        assert!(
            store
                .find_idempotency_key(&project(), key)
                .await
                .expect("find")
                .is_none()
        );
    }
    assert_eq!(purger.purged_total(), 2);
    assert!(
        purger
            .last_run_unix()
            .is_some_and(|t| t >= clock.now().timestamp() - 1)
    );
    let mut text = String::new();
    purger.render_prometheus(&mut text);
    assert!(
        text.contains("ovc_idempotency_keys_purged_total 2"),
        "{text}"
    );
    stop.send(true).expect("stop");
    task.await.expect("purger task");
}

/// Commits made at the same moment share one transaction (group commit), yet each is
/// fenced and version-checked alone: the ones that fail write nothing, the others all
/// land, at gapless positions in one order, each receipt naming its own positions.
async fn group_commits_fail_alone(backend: Backend) {
    let db = TestDb::new(backend).await;
    let store = db.open().await;
    // A run whose lease moved on: commits fenced by its first epoch are refused.
    let vc = uid();
    committed(store.commit(free_run(vc)).await.expect("enqueue"));
    let stale = store
        .claim_runs("w1", Duration::milliseconds(1), 1)
        .await
        .expect("claim")
        .remove(0);
    sleep_ms(20).await;
    let current = store
        .claim_runs("w2", Duration::seconds(30), 1)
        .await
        .expect("steal")
        .remove(0);
    assert_eq!(current.epoch, stale.epoch + 1);
    let seeded = stream("test-seeded");
    committed(
        store
            .commit(append(
                &seeded,
                ExpectedVersion::NoStream,
                vec![step("a", 1)],
            ))
            .await
            .expect("seed"),
    );
    let before = store.traffic();
    const N: usize = 60;
    let mut tasks = Vec::new();
    for i in 0..N {
        let store = store.clone();
        let seeded = seeded.clone();
        let lease = if i % 6 == 1 {
            stale.lease()
        } else {
            current.lease()
        };
        tasks.push(tokio::spawn(async move {
            let mut commit = match i % 3 {
                // A wrong expected version.
                0 => append(&seeded, ExpectedVersion::Exact(7), vec![step("x", 1)]),
                _ => append(
                    &stream(&format!("test-g{i}")),
                    ExpectedVersion::NoStream,
                    vec![step("a", i as u32), step("b", i as u32)],
                ),
            };
            if i % 6 == 1 || i % 6 == 4 {
                commit.fence = Some(lease);
            }
            (i, store.commit(commit).await)
        }));
    }
    let mut positions = Vec::new();
    for t in tasks {
        let (i, outcome) = t.await.expect("task");
        match (i % 3, i % 6, outcome) {
            (0, _, Err(Error::WrongExpectedVersion { .. })) => {}
            (_, 1, Err(Error::LeaseLost { epoch, .. })) => assert_eq!(epoch, stale.epoch),
            (_, _, Ok(CommitOutcome::Committed(r))) if i % 3 != 0 && i % 6 != 1 => {
                assert_eq!(r.last_position, r.first_position + 1, "commit {i}");
                let events = store
                    .read_stream(&stream(&format!("test-g{i}")), 0, 10)
                    .await
                    .expect("read");
                let mine: Vec<u64> = events.iter().map(|e| e.position).collect();
                assert_eq!(mine, vec![r.first_position, r.last_position], "commit {i}");
                positions.extend(mine);
            }
            (_, _, other) => panic!("commit {i}: unexpected {other:?}"),
        }
    }
    // The refused ones wrote nothing.
    assert_eq!(store.stream_version(&seeded).await.expect("v"), Some(1));
    for i in (0..N).filter(|i| i % 6 == 1) {
        let s = stream(&format!("test-g{i}"));
        assert_eq!(store.stream_version(&s).await.expect("v"), None, "{s}");
    }
    // The written ones are the whole log after the seed, gapless.
    positions.sort_unstable();
    let head = store.head_position().await.expect("head");
    assert_eq!(positions, (2..=head).collect::<Vec<_>>());
    let all = store.read_all(1, 1000).await.expect("read_all");
    assert_eq!(all.len() as u64, head - 1);
    // And they shared transactions.
    let spent = store.traffic() - before;
    assert_eq!(spent.commits, N as u64);
    assert!(
        spent.write_transactions < N as u64,
        "{N} concurrent commits took {} transactions",
        spent.write_transactions
    );
}

/// Workers' commits (fenced, appending with `Any`) made at the same moment are staged
/// together (`batch.rs`): a few statements for the whole group. Each still stands alone:
/// a lost lease or a fold the projections refuse writes nothing (not even its stream
/// bump), the rest land gapless, and each run update reaches only its own run.
async fn batched_worker_commits_fail_alone(backend: Backend) {
    let db = TestDb::new(backend).await;
    let store = db.open().await;
    const N: usize = 40;
    // One run per commit, all claimed by w2; run 0's first lease moved on first.
    for _ in 0..N {
        committed(store.commit(free_run(uid())).await.expect("enqueue"));
    }
    let stale = store
        .claim_runs("w1", Duration::milliseconds(1), 1)
        .await
        .expect("claim")
        .remove(0);
    sleep_ms(20).await;
    let mut runs = store
        .claim_runs("w2", Duration::seconds(30), N as u32)
        .await
        .expect("claim all");
    assert_eq!(runs.len(), N, "{runs:?}");
    runs.sort_by_key(|r| r.id != stale.id);
    assert_eq!(runs[0].epoch, stale.epoch + 1);
    let before = store.traffic();
    let mut tasks = Vec::new();
    for (i, run) in runs.iter().enumerate() {
        let store = store.clone();
        let lease = if i % 5 == 0 {
            stale.lease()
        } else {
            run.lease()
        };
        let target = if i % 5 == 1 {
            // A step of an operation that was never requested: the fold refuses it.
            StreamName::operation(opid())
        } else {
            stream(&format!("test-b{i}"))
        };
        tasks.push(tokio::spawn(async move {
            let mut commit = append(
                &target,
                ExpectedVersion::Any,
                vec![step("a", i as u32), step("b", i as u32)],
            );
            commit.fence = Some(lease);
            if i % 5 == 2 {
                commit.run_update = Some(RunUpdate::Complete);
            }
            (i, target, store.commit(commit).await)
        }));
    }
    let mut positions = Vec::new();
    for t in tasks {
        let (i, target, outcome) = t.await.expect("task");
        match (i % 5, outcome) {
            (0, Err(Error::LeaseLost { epoch, .. })) => assert_eq!(epoch, stale.epoch),
            (1, Err(Error::Projection(_))) => {}
            (_, Ok(CommitOutcome::Committed(r))) if i % 5 > 1 => {
                let events = store.read_stream(&target, 0, 10).await.expect("read");
                let mine: Vec<u64> = events.iter().map(|e| e.position).collect();
                assert_eq!(mine, vec![r.first_position, r.last_position], "commit {i}");
                assert_eq!(r.stream_versions, vec![(target.clone(), 2)], "commit {i}");
                positions.extend(mine);
            }
            (_, other) => panic!("commit {i}: unexpected {other:?}"),
        }
        if i % 5 < 2 {
            assert_eq!(
                store.stream_version(&target).await.expect("v"),
                None,
                "{target}: a refused commit bumped its stream"
            );
        }
    }
    positions.sort_unstable();
    let head = store.head_position().await.expect("head");
    assert_eq!(positions, (1..=head).collect::<Vec<_>>());
    // Only the completed runs are done; the others are still leased by w2.
    for (i, run) in runs.iter().enumerate() {
        let now = store.get_run(run.id).await.expect("get").expect("run");
        let want = if i % 5 == 2 {
            RunStatus::Done
        } else {
            RunStatus::Leased
        };
        assert_eq!(now.status, want, "run {i}");
    }
    let spent = store.traffic() - before;
    assert_eq!(spent.commits, N as u64);
    assert!(
        spent.write_statements < 4 * N as u64,
        "{N} concurrent worker commits took {} statements",
        spent.write_statements
    );
}

/// `stats()` reports how long the oldest *due* queued run has waited (a delayed run does
/// not count until it is due; a claimed one no longer does), and the expired idempotency
/// keys the purge has not deleted yet with how long the oldest has been expired.
async fn stats_report_the_queue_age_and_the_purge_lag(backend: Backend) {
    let db = TestDb::new(backend).await;
    let store = db.open().await;
    let empty = store.stats().await.expect("stats");
    assert_eq!(empty.oldest_due_run_age, std::time::Duration::ZERO);
    let (a, b) = (uid(), uid());
    let mut later = free_run(b);
    later.enqueue[0].delay = Some(Duration::hours(1));
    committed(store.commit(later).await.expect("delayed run"));
    sleep_ms(50).await;
    assert_eq!(
        store.stats().await.expect("stats").oldest_due_run_age,
        std::time::Duration::ZERO,
        "a run due in an hour is not waiting"
    );
    committed(store.commit(free_run(a)).await.expect("due run"));
    sleep_ms(400).await;
    let age = store.stats().await.expect("stats").oldest_due_run_age;
    assert!(
        age >= std::time::Duration::from_millis(350) && age < std::time::Duration::from_secs(60),
        "{age:?}"
    );
    let claimed = store
        .claim_runs("w1", Duration::seconds(30), 10)
        .await
        .expect("claim");
    assert_eq!(claimed.len(), 1, "{claimed:?}");
    assert_eq!(
        store.stats().await.expect("stats").oldest_due_run_age,
        std::time::Duration::ZERO,
        "the claimed run waits no more"
    );

    let db = TestDb::new(backend).await;
    let clock = ManualClock::new(Utc::now());
    let store = db.open_with(db.config(), Arc::new(clock.clone())).await;
    let (op1, op2) = (opid(), opid());
    committed(
        store
            .commit(create_commit(uid(), op1, "team-a", Some("k1")))
            .await
            .expect("k1"),
    );
    committed(
        store
            .commit(create_commit(uid(), op2, "team-b", Some("k2")))
            .await
            .expect("k2"),
    );
    end_operation(store.as_ref(), op1).await;
    clock.advance(Duration::hours(2));
    end_operation(store.as_ref(), op2).await;
    clock.advance(Duration::hours(23));
    let stats = store.stats().await.expect("stats");
    assert_eq!(stats.idempotency_keys_expired, 1, "{stats:?}");
    let lag = stats.idempotency_purge_lag.as_secs();
    assert!((3599..=3601).contains(&lag), "k1 ended 25 h ago: {lag} s");
    clock.advance(Duration::hours(2));
    let stats = store.stats().await.expect("stats");
    assert_eq!(stats.idempotency_keys_expired, 2, "{stats:?}");
    assert_eq!(store.purge_idempotency_keys().await.expect("purge"), 2);
    let stats = store.stats().await.expect("stats");
    assert_eq!(
        (stats.idempotency_keys_expired, stats.idempotency_purge_lag),
        (0, std::time::Duration::ZERO)
    );
}
