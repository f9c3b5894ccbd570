//! Enqueue from SQL (`ovc_submit`, PostgreSQL): a caller's transaction decides whether
//! the operation exists; a committed submission runs through the API's own rules; the
//! refusals SQL raises at once are the API's, code for code.

use ovc_engine::submissions::SubmissionAcceptor;
use ovc_store::submissions::sqlstate;
use ovc_store::{Backend, OperationFilter, PageRequest, SubmissionOutcome};
use ovc_testkit::TestDb;
use ovc_tests::{Harness, HarnessOptions, project};
use ovc_types::command::Command;
use ovc_types::command::CreateParams;
use ovc_types::error::{Code, Status};
use ovc_types::spec::VClusterSpec;
use ovc_types::state::{OperationState, VClusterState};
use ovc_types::time::RandomIds;
use ovc_types::{OperationId, ProjectName};
use ovc_workflows::resume::ResumeParams;
use ovc_workflows::suspend::SuspendParams;
use sqlx::postgres::{PgConnectOptions, PgDatabaseError, PgPool, PgPoolOptions};
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;
use uuid::Uuid;

/// A connection pool of "another service" on the harness's database and schema.
async fn caller_pool(db: &TestDb) -> PgPool {
    let schema = db.config().pg_schema.expect("a PostgreSQL test schema");
    let opts = PgConnectOptions::from_str(db.url())
        .expect("url")
        .options([("search_path", schema.as_str())]);
    let pool = PgPoolOptions::new()
        .max_connections(2)
        .connect_with(opts)
        .await
        .expect("connect");
    sqlx::raw_sql("CREATE TABLE orders (id INT PRIMARY KEY, note TEXT)")
        .execute(&pool)
        .await
        .expect("caller's own table");
    pool
}

async fn submit(
    conn: &mut sqlx::PgConnection,
    kind: &str,
    vcluster: &str,
    params: serde_json::Value,
    request_id: Option<&str>,
) -> Result<OperationId, sqlx::Error> {
    let id: Uuid = sqlx::query_scalar("SELECT ovc_submit($1, 'default', $2, $3, $4)")
        .bind(kind)
        .bind(vcluster)
        .bind(params)
        .bind(request_id)
        .fetch_one(conn)
        .await?;
    Ok(OperationId(id))
}

/// (SQLSTATE, message, detail) of a database error.
fn pg_error(e: sqlx::Error) -> (String, String, String) {
    let e = e
        .as_database_error()
        .unwrap_or_else(|| panic!("not a database error: {e}"))
        .downcast_ref::<PgDatabaseError>();
    (
        e.code().to_string(),
        e.message().to_string(),
        e.detail().unwrap_or_default().to_string(),
    )
}

/// Asserts that SQL refused with exactly the API's answer `api`.
fn assert_same_refusal(sql: sqlx::Error, api: &Status) {
    let (state, message, detail) = pg_error(sql);
    assert_eq!(state, sqlstate(api.code), "SQLSTATE for {api:?}");
    assert_eq!(message, format!("{}: {}", api.code, api.message));
    assert_eq!(detail, api.reason().unwrap_or_default());
}

async fn submission_rows(pool: &PgPool) -> Vec<(Uuid, String, Option<Uuid>, Option<String>)> {
    sqlx::query_as(
        "SELECT operation_id, state, answered_by, code FROM ovc_submissions ORDER BY submitted_at",
    )
    .fetch_all(pool)
    .await
    .expect("submissions")
}

/// Waits until the submission `id` is settled; its (state, code, reason, message).
async fn settled(pool: &PgPool, id: OperationId) -> (String, Option<String>, Option<String>) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        let row: (String, Option<String>, Option<String>) = sqlx::query_as(
            "SELECT state, code, reason FROM ovc_submissions WHERE operation_id = $1",
        )
        .bind(id.as_uuid())
        .fetch_one(pool)
        .await
        .expect("submission");
        if row.0 != "pending" {
            return row;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "submission {id} still pending"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn a_committed_submission_runs_and_a_rolled_back_one_leaves_nothing() {
    let h = Harness::start(Backend::Postgres, HarnessOptions::default()).await;
    let pool = caller_pool(&h.db).await;

    let mut tx = pool.begin().await.expect("begin");
    sqlx::query("INSERT INTO orders VALUES (1, 'cancelled order')")
        .execute(&mut *tx)
        .await
        .expect("insert");
    let ghost = submit(
        &mut tx,
        "CREATE",
        "ghost",
        serde_json::json!({"spec": {}}),
        None,
    )
    .await
    .expect("submit in the caller's transaction");
    tx.rollback().await.expect("rollback");

    let mut tx = pool.begin().await.expect("begin");
    sqlx::query("INSERT INTO orders VALUES (2, 'paid order')")
        .execute(&mut *tx)
        .await
        .expect("insert");
    let id = submit(
        &mut tx,
        "create",
        "vc-a",
        serde_json::json!({"spec": {}}),
        None,
    )
    .await
    .expect("submit");
    tx.commit().await.expect("commit");

    assert_eq!(settled(&pool, id).await.0, "accepted");
    let op = h.wait(id).await;
    assert_eq!(op.state, OperationState::Succeeded, "{op:#?}");
    let vc = h.vcluster("vc-a").await.expect("vcluster");
    assert_eq!(vc.state, VClusterState::Running);
    // The worker that accepted it ran it; nothing of the rolled-back call exists.
    assert!(h.store.get_operation(ghost).await.expect("get").is_none());
    assert!(h.vcluster("ghost").await.is_none());
    let ops = h
        .store
        .list_operations(&OperationFilter::default(), &PageRequest::default())
        .await
        .expect("list");
    assert_eq!(
        ops.items.iter().map(|o| o.id).collect::<Vec<_>>(),
        vec![id],
        "only the committed submission became an operation"
    );
    let rows = submission_rows(&pool).await;
    assert_eq!(
        rows,
        vec![(id.as_uuid(), "accepted".into(), Some(id.as_uuid()), None)]
    );
    // The command records who submitted it.
    let events = h
        .store
        .read_stream(&ovc_types::event::StreamName::vcluster(vc.uid), 0, 10)
        .await
        .expect("stream");
    assert_eq!(
        events[0].metadata["actor"], "sql:postgres",
        "the database role is the actor"
    );
}

#[tokio::test]
async fn a_repeated_request_id_returns_the_first_operation() {
    let h = Harness::start(Backend::Postgres, HarnessOptions::default()).await;
    let pool = caller_pool(&h.db).await;
    let mut conn = pool.acquire().await.expect("conn");
    let spec = serde_json::json!({"spec": {}});

    let first = submit(&mut conn, "CREATE", "vc-r", spec.clone(), Some("req-1"))
        .await
        .expect("first");
    // Before and after it was accepted, the same request answers with the same id.
    let again = submit(&mut conn, "CREATE", "vc-r", spec.clone(), Some("req-1"))
        .await
        .expect("repeat");
    assert_eq!(again, first);
    assert_eq!(settled(&pool, first).await.0, "accepted");
    assert_eq!(h.wait(first).await.state, OperationState::Succeeded);
    let later = submit(&mut conn, "CREATE", "vc-r", spec.clone(), Some("req-1"))
        .await
        .expect("repeat after it ran");
    assert_eq!(later, first);

    // The same id for another request is the API's REQUEST_ID_REUSED.
    let reused = submit(
        &mut conn,
        "SUSPEND",
        "vc-r",
        serde_json::json!({}),
        Some("req-1"),
    )
    .await
    .expect_err("reused request id");
    let (state, message, detail) = pg_error(reused);
    assert_eq!(state, sqlstate(Code::InvalidArgument));
    assert_eq!(detail, "REQUEST_ID_REUSED");
    assert!(message.contains(&first.to_string()), "{message}");

    // A key first used over the API answers SQL with the API's operation.
    let api = h
        .submit_with(
            "vc-r",
            Command::new(SuspendParams {
                snapshot: false,
                evict_workloads: false,
            }),
            Some("req-2"),
        )
        .await
        .expect("API suspend");
    let from_sql = submit(
        &mut conn,
        "SUSPEND",
        "vc-r",
        serde_json::json!({}),
        Some("req-2"),
    )
    .await
    .expect("SQL repeat of the API request");
    assert_eq!(from_sql, api.operation_id);
    assert_eq!(
        h.wait(api.operation_id).await.state,
        OperationState::Succeeded
    );
    let ops = h
        .store
        .list_operations(&OperationFilter::default(), &PageRequest::default())
        .await
        .expect("list");
    assert_eq!(
        ops.items.len(),
        2,
        "one CREATE and one SUSPEND ran: {ops:#?}"
    );
}

#[tokio::test]
async fn sql_refuses_invalid_transitions_with_the_api_s_code() {
    let h = Harness::start(Backend::Postgres, HarnessOptions::default()).await;
    let pool = caller_pool(&h.db).await;
    let mut conn = pool.acquire().await.expect("conn");
    assert_eq!(
        h.run(
            "vc-t",
            Command::new(CreateParams {
                spec: VClusterSpec::default()
            })
        )
        .await
        .state,
        OperationState::Succeeded
    );

    let cases: Vec<(&str, &str, serde_json::Value, Command)> = vec![
        // RUNNING cannot resume.
        (
            "RESUME",
            "vc-t",
            serde_json::json!({}),
            Command::new(ResumeParams {
                reconcile_workloads: false,
            }),
        ),
        // No such vcluster.
        (
            "SUSPEND",
            "nope",
            serde_json::json!({}),
            Command::new(SuspendParams {
                snapshot: false,
                evict_workloads: false,
            }),
        ),
        // The name is taken.
        (
            "CREATE",
            "vc-t",
            serde_json::json!({"spec": {}}),
            Command::new(CreateParams {
                spec: VClusterSpec::default(),
            }),
        ),
    ];
    for (kind, vc, params, command) in cases {
        let api = h.submit(vc, command).await.expect_err("the API refuses it");
        let sql = submit(&mut conn, kind, vc, params, None)
            .await
            .expect_err("SQL refuses it");
        assert_same_refusal(sql, &api);
    }

    // A submission not yet accepted holds its vcluster as its operation will: in one
    // transaction, SUSPEND then SNAPSHOT is refused as the API refuses a snapshot of a
    // SUSPENDING vcluster.
    let mut tx = pool.begin().await.expect("begin");
    submit(&mut tx, "SUSPEND", "vc-t", serde_json::json!({}), None)
        .await
        .expect("suspend");
    let busy = submit(&mut tx, "SNAPSHOT", "vc-t", serde_json::json!({}), None)
        .await
        .expect_err("busy");
    let api: Status = ovc_types::state::transition(
        Some(VClusterState::Suspending),
        ovc_types::state::Call::On(ovc_types::state::OperationKind::SNAPSHOT),
        &ovc_workflows::registry(),
    )
    .expect_err("the state machine refuses it")
    .into();
    assert_eq!(api.reason(), Some("OPERATION_IN_PROGRESS"));
    let (state, _, detail) = pg_error(busy);
    assert_eq!(state, sqlstate(api.code));
    assert_eq!(detail, "OPERATION_IN_PROGRESS");
    tx.rollback().await.expect("rollback");

    // Not a kind at all.
    let unknown = submit(&mut conn, "REBOOT", "vc-t", serde_json::json!({}), None)
        .await
        .expect_err("unknown kind");
    assert_eq!(pg_error(unknown).0, sqlstate(Code::InvalidArgument));
}

#[tokio::test]
async fn what_only_rust_can_check_is_rejected_visibly() {
    let h = Harness::start(Backend::Postgres, HarnessOptions::default()).await;
    let pool = caller_pool(&h.db).await;
    let mut conn = pool.acquire().await.expect("conn");

    // An unknown spec field (REST answers 400 INVALID_ARGUMENT too), a bad name, and an
    // unknown host.
    let bad_field = submit(
        &mut conn,
        "CREATE",
        "vc-x",
        serde_json::json!({"spec": {"cpu": 2}}),
        None,
    )
    .await
    .expect("SQL cannot check fields");
    let bad_name = submit(
        &mut conn,
        "CREATE",
        "Bad_Name",
        serde_json::json!({"spec": {}}),
        None,
    )
    .await
    .expect("SQL cannot check names");
    let bad_host = submit(
        &mut conn,
        "CREATE",
        "vc-y",
        serde_json::json!({"spec": {"host": "mars"}}),
        None,
    )
    .await
    .expect("SQL cannot check hosts");
    let api_host = h
        .submit(
            "vc-y2",
            Command::new(CreateParams {
                spec: VClusterSpec {
                    host: "mars".into(),
                    ..VClusterSpec::default()
                },
            }),
        )
        .await
        .expect_err("the API refuses the host");
    for (id, reason) in [
        (bad_field, None),
        (bad_name, None),
        (bad_host, api_host.reason()),
    ] {
        let (state, code, got_reason) = settled(&pool, id).await;
        assert_eq!(state, "rejected");
        assert_eq!(code.as_deref(), Some("INVALID_ARGUMENT"));
        if reason.is_some() {
            assert_eq!(got_reason.as_deref(), reason);
        }
        assert!(h.store.get_operation(id).await.expect("get").is_none());
    }
    // A rejected request id is decided afresh when repeated, as over the API.
    let first = submit(
        &mut conn,
        "CREATE",
        "vc-z",
        serde_json::json!({"spec": {"cpu": 2}}),
        Some("k"),
    )
    .await
    .expect("submit");
    assert_eq!(settled(&pool, first).await.0, "rejected");
    let fixed = submit(
        &mut conn,
        "CREATE",
        "vc-z",
        serde_json::json!({"spec": {}}),
        Some("k"),
    )
    .await
    .expect("resubmit with the same key");
    assert_ne!(fixed, first);
    assert_eq!(settled(&pool, fixed).await.0, "accepted");
    assert_eq!(h.wait(fixed).await.state, OperationState::Succeeded);
}

#[tokio::test]
async fn deciding_a_submission_twice_starts_one_operation() {
    // No worker: this test is the acceptor, and "crashes" between accepting and recording.
    let db = TestDb::new(Backend::Postgres).await;
    let store = db.open().await;
    let registry = ovc_workflows::registry();
    store
        .sync_call_rules(&ovc_store::RuleTables::of(&registry, registry.kinds()))
        .await
        .expect("call rules");
    let pool = caller_pool(&db).await;
    let mut conn = pool.acquire().await.expect("conn");
    for request_id in [None, Some("once")] {
        let vc = format!("vc-{}", request_id.unwrap_or("none"));
        let id = submit(
            &mut conn,
            "CREATE",
            &vc,
            serde_json::json!({"spec": {}}),
            request_id,
        )
        .await
        .expect("submit");
        let claimed = store
            .claim_submissions(chrono::Duration::seconds(30), 10)
            .await
            .expect("claim");
        assert_eq!(claimed.len(), 1);
        // Held by this claim: a second claim gets nothing.
        assert!(
            store
                .claim_submissions(chrono::Duration::seconds(30), 10)
                .await
                .expect("claim")
                .is_empty()
        );
        let acceptor = SubmissionAcceptor {
            store: store.clone(),
            registry: Arc::new(ovc_workflows::registry()),
            ids: Arc::new(RandomIds),
        };
        let once = acceptor.decide(claimed[0].clone()).await;
        let twice = acceptor.decide(claimed[0].clone()).await;
        let expected = Some(SubmissionOutcome::Accepted { answered_by: id });
        assert_eq!(once, expected);
        assert_eq!(twice, expected);
        let project: ProjectName = project();
        let ops = store
            .list_operations(
                &OperationFilter {
                    project: Some(project.clone()),
                    vcluster: Some(vc.clone()),
                    ..OperationFilter::default()
                },
                &PageRequest::default(),
            )
            .await
            .expect("list");
        assert_eq!(ops.items.len(), 1, "one operation for {vc}");
        assert_eq!(store.runs_of_operation(id).await.expect("runs").len(), 1);
    }
}

/// A new operation kind needs nothing of its own in SQL: UPGRADE is enqueued like the
/// others, its state-machine rule comes from `ovc migrate`, and what only its workflow
/// can check (a skipped minor version, in `admit`) is rejected visibly with the API's
/// reason.
#[tokio::test]
async fn an_upgrade_is_enqueued_from_sql_and_its_own_check_rejects_a_skip() {
    let h = Harness::start(Backend::Postgres, HarnessOptions::default()).await;
    let op = h
        .run(
            "vc",
            Command::new(CreateParams {
                spec: VClusterSpec::default(),
            }),
        )
        .await;
    assert_eq!(op.state, OperationState::Succeeded);
    let pool = caller_pool(&h.db).await;
    let mut conn = pool.acquire().await.expect("conn");
    let skip = submit(
        &mut conn,
        "upgrade",
        "vc",
        serde_json::json!({"kubernetes_version": "1.33"}),
        None,
    )
    .await
    .expect("the state machine allows an upgrade of a RUNNING vcluster");
    let (state, code, reason) = settled(&pool, skip).await;
    assert_eq!(state, "rejected");
    assert_eq!(code.as_deref(), Some("FAILED_PRECONDITION"));
    assert_eq!(reason.as_deref(), Some("UPGRADE_SKIPS_MINOR"));
    let next = submit(
        &mut conn,
        "UPGRADE",
        "vc",
        serde_json::json!({"kubernetes_version": "1.32"}),
        None,
    )
    .await
    .expect("submit");
    assert_eq!(settled(&pool, next).await.0, "accepted");
    let done = h.wait(next).await;
    assert_eq!(done.state, OperationState::Succeeded, "{done:#?}");
    let vc = h.vcluster("vc").await.expect("vc");
    assert_eq!(vc.spec.kubernetes_version, "1.32");
}
