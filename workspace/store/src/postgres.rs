//! The PostgreSQL store: production, many workers on many machines.
//!
//! Tail safety: sequence-allocated positions can commit out of order (tx A takes 5,
//! tx B takes 6 and commits first; a reader at 6 then skips 5 forever). We avoid that by
//! allocating positions from the single `event_log_head` row as the *last* write of each
//! commit: its row lock is held until COMMIT, so positions become visible strictly in
//! order, gapless. The cost is that event-appending commits serialize on that lock from
//! the allocation to the end of COMMIT (one WAL flush); the engine batches many
//! workflows' step results into one commit to keep throughput (docs/architecture.md).
//!
//! Claims use `FOR UPDATE SKIP LOCKED`; wake-ups use LISTEN/NOTIFY (the NOTIFY is sent in
//! the committing transaction, so it is delivered only if the commit happened).

use crate::commit::{self, EventRow, Projector, TxOps};
use crate::error::{Error, Result};
use crate::model::*;
use crate::page_token::{TimeKey, VClusterKey};
use crate::sqlite::operation_doc;
use crate::traffic::Traffic;
use crate::wake::Wakeups;
use crate::{Store, TokenRow, from_doc, micros, to_doc, token_from, vcluster_token};
use async_trait::async_trait;
use chrono::{DateTime, Duration, Utc};
use ovc_types::event::StreamName;
use ovc_types::resource::{Operation, OperationStep, Snapshot, VCluster};
use ovc_types::state::StepState;
use ovc_types::time::Clock;
use ovc_types::{OperationId, ProjectName, RunId, SnapshotId, VClusterId, VClusterName};
use sqlx::postgres::{PgConnectOptions, PgListener, PgPool, PgPoolOptions, PgRow};
use sqlx::{Postgres, Row, Transaction};
use std::str::FromStr;
use std::sync::Arc;
use tokio::sync::watch;
use uuid::Uuid;

/// The PostgreSQL implementation of [`Store`].
#[derive(Debug)]
pub struct PgStore {
    pool: PgPool,
    config: StoreConfig,
    clock: Arc<dyn Clock>,
    wake: Arc<Wakeups>,
    /// (events channel, runs channel) for LISTEN/NOTIFY, scoped by schema.
    channels: Arc<(String, String)>,
    /// The channel `ovc_submit` notifies (SQL enqueue), scoped by schema.
    submissions_channel: String,
    listener: tokio::task::JoinHandle<()>,
    traffic: Arc<Traffic>,
    /// The group committers (`commit.rs`): every commit of this process goes through
    /// them.
    committers: commit::Committers,
}

/// Opens the group committer's transactions.
#[derive(Debug, Clone)]
struct PgTxSource {
    pool: PgPool,
    channels: Arc<(String, String)>,
    traffic: Arc<Traffic>,
    clock: Arc<dyn Clock>,
}

impl commit::TxSource for PgTxSource {
    type Tx = PgTx;

    async fn begin(&self) -> Result<PgTx> {
        self.traffic.write_transaction();
        Ok(PgTx {
            traffic: self.traffic.clone(),
            tx: self.pool.begin().await?,
            channels: self.channels.clone(),
        })
    }

    fn now(&self) -> DateTime<Utc> {
        micros(self.clock.now())
    }
}

impl Drop for PgStore {
    fn drop(&mut self) {
        self.listener.abort();
    }
}

fn to_u64(v: i64) -> u64 {
    u64::try_from(v).unwrap_or(0)
}

fn to_i64(v: u64) -> Result<i64> {
    i64::try_from(v).map_err(|_| Error::InvalidInput(format!("{v} is out of range")))
}

fn event_from_row(row: &PgRow) -> Result<RecordedEvent> {
    Ok(RecordedEvent {
        position: to_u64(row.try_get("position")?),
        stream: row.try_get("stream")?,
        version: to_u64(row.try_get("version")?),
        event_type: row.try_get("type")?,
        data: row.try_get("data")?,
        metadata: row.try_get("metadata")?,
        recorded_at: row.try_get("recorded_at")?,
    })
}

fn run_from_row(row: &PgRow) -> Result<Run> {
    let status: String = row.try_get("status")?;
    Ok(Run {
        id: RunId(row.try_get("id")?),
        operation_id: OperationId(row.try_get("operation_id")?),
        vcluster_uid: VClusterId(row.try_get("vcluster_uid")?),
        status: RunStatus::parse(&status).ok_or(Error::Corrupt {
            table: "runs",
            message: format!("status {status:?}"),
        })?,
        run_at: row.try_get("run_at")?,
        attempts: row.try_get("attempts")?,
        lease_owner: row.try_get("lease_owner")?,
        lease_until: row.try_get("lease_until")?,
        epoch: row.try_get("epoch")?,
        priority: row.try_get("priority")?,
    })
}

fn step_from_row(row: &PgRow) -> Result<OperationStep> {
    let state: String = row.try_get("state")?;
    let error: Option<serde_json::Value> = row.try_get("error")?;
    Ok(OperationStep {
        name: row.try_get("name")?,
        state: StepState::parse(&state).ok_or(Error::Corrupt {
            table: "operation_steps",
            message: format!("state {state:?}"),
        })?,
        attempts: row.try_get::<i32, _>("attempts")? as u32,
        started_at: row.try_get("started_at")?,
        finished_at: row.try_get("finished_at")?,
        error: error.map(|e| from_doc("operation_steps", e)).transpose()?,
    })
}

/// The columns of `api_tokens` that make a [`TokenRecord`] (never the hash).
const TOKEN_COLUMNS: &str = "id, name, project, role, created_at, expires_at, revoked_at";

fn pg_token(r: &PgRow) -> Result<TokenRecord> {
    token_from(TokenRow {
        id: r.try_get("id")?,
        name: r.try_get("name")?,
        project: r.try_get::<&str, _>("project")?,
        role: r.try_get::<&str, _>("role")?,
        created_at: r.try_get("created_at")?,
        expires_at: r.try_get("expires_at")?,
        revoked_at: r.try_get("revoked_at")?,
    })
}

fn is_live_name_violation(e: &sqlx::Error) -> bool {
    match e {
        sqlx::Error::Database(db) => {
            db.is_unique_violation() && db.constraint() == Some("vclusters_live_name")
        }
        _ => false,
    }
}

const STEP_COLUMNS: &str = "name, state, attempts, started_at, finished_at, error";
/// Microseconds of a duration (saturating).
fn duration_micros(d: Duration) -> i64 {
    d.num_microseconds().unwrap_or(i64::MAX)
}

const RUN_COLUMNS: &str = "id, operation_id, vcluster_uid, status, run_at, attempts, lease_owner, lease_until, epoch, priority";

/// An open write transaction.
struct PgTx {
    tx: Transaction<'static, Postgres>,
    traffic: Arc<Traffic>,
    /// (events channel, runs channel) for NOTIFY.
    channels: Arc<(String, String)>,
}

impl PgTx {
    /// The transaction's connection, for one more statement.
    fn conn(&mut self) -> &mut sqlx::PgConnection {
        self.traffic.write_statement();
        &mut self.tx
    }
}

impl TxOps for PgTx {
    async fn execute_sql(&mut self, sql: &'static str) -> Result<()> {
        sqlx::raw_sql(sql).execute(self.conn()).await?;
        Ok(())
    }

    async fn commit(self) -> Result<()> {
        self.traffic.write_statement();
        Ok(self.tx.commit().await?)
    }

    async fn rollback(self) -> Result<()> {
        self.traffic.write_statement();
        Ok(self.tx.rollback().await?)
    }

    async fn claim_idempotency(
        &mut self,
        claim: &IdempotencyClaim,
        now: DateTime<Utc>,
        ttl: Duration,
    ) -> Result<Option<OperationId>> {
        // A concurrent twin blocks here on the key until the first commits or aborts.
        let inserted = sqlx::query(
            "INSERT INTO idempotency_keys (project, request_id, request_hash, operation_id, created_at)
             VALUES ($1, $2, $3, $4, $5) ON CONFLICT (project, request_id) DO NOTHING",
        )
        .bind(claim.project.as_str())
        .bind(&claim.request_id)
        .bind(&claim.request_hash)
        .bind(claim.operation_id.as_uuid())
        .bind(now)
        .execute(self.conn())
        .await?
        .rows_affected();
        if inserted == 1 {
            return Ok(None);
        }
        let row = sqlx::query(
            "SELECT request_hash, operation_id, created_at, ended_at FROM idempotency_keys
             WHERE project = $1 AND request_id = $2 FOR UPDATE",
        )
        .bind(claim.project.as_str())
        .bind(&claim.request_id)
        .fetch_one(self.conn())
        .await?;
        let hash: String = row.try_get("request_hash")?;
        let op = OperationId(row.try_get("operation_id")?);
        let ended: Option<DateTime<Utc>> = row.try_get("ended_at")?;
        // Kept until `ttl` after its operation ended (a running one's key never expires).
        if ended.is_some_and(|e| e < now - ttl) {
            sqlx::query(
                "UPDATE idempotency_keys SET request_hash = $1, operation_id = $2, created_at = $3,
                   ended_at = NULL
                 WHERE project = $4 AND request_id = $5",
            )
            .bind(&claim.request_hash)
            .bind(claim.operation_id.as_uuid())
            .bind(now)
            .bind(claim.project.as_str())
            .bind(&claim.request_id)
            .execute(self.conn())
            .await?;
            return Ok(None);
        }
        if hash == claim.request_hash {
            Ok(Some(op))
        } else {
            Err(Error::RequestIdReused {
                project: claim.project.to_string(),
                request_id: claim.request_id.clone(),
                operation_id: op,
            })
        }
    }

    async fn check_fence(&mut self, lease: Lease) -> Result<()> {
        // FOR KEY SHARE: a claim (FOR UPDATE ... SKIP LOCKED) cannot take the run over
        // until this transaction ends, while the holder's own lease renewals (an UPDATE
        // of non-key columns) do not wait for it.
        let n = sqlx::query(
            "SELECT 1 FROM runs WHERE id = $1 AND epoch = $2 AND status = 'leased'
             FOR KEY SHARE",
        )
        .bind(lease.run_id.as_uuid())
        .bind(lease.epoch)
        .fetch_optional(self.conn())
        .await?
        .map_or(0, |_| 1);
        if n == 1 {
            Ok(())
        } else {
            Err(Error::LeaseLost {
                run_id: lease.run_id,
                epoch: lease.epoch,
            })
        }
    }

    async fn bump_stream(
        &mut self,
        stream: &str,
        expected: ExpectedVersion,
        count: u64,
    ) -> Result<u64> {
        let count_i = to_i64(count)?;
        let new_version: Option<i64> =
            match expected {
                ExpectedVersion::Any => Some(
                    sqlx::query_scalar(
                        "INSERT INTO streams (stream, version) VALUES ($1, $2)
                     ON CONFLICT (stream) DO UPDATE SET version = streams.version + EXCLUDED.version
                     RETURNING version",
                    )
                    .bind(stream)
                    .bind(count_i)
                    .fetch_one(self.conn())
                    .await?,
                ),
                ExpectedVersion::NoStream => {
                    sqlx::query_scalar(
                        "INSERT INTO streams (stream, version) VALUES ($1, $2)
                     ON CONFLICT (stream) DO NOTHING RETURNING version",
                    )
                    .bind(stream)
                    .bind(count_i)
                    .fetch_optional(self.conn())
                    .await?
                }
                ExpectedVersion::Exact(v) => sqlx::query_scalar(
                    "UPDATE streams SET version = version + $1 WHERE stream = $2 AND version = $3
                     RETURNING version",
                )
                .bind(count_i)
                .bind(stream)
                .bind(to_i64(v)?)
                .fetch_optional(self.conn())
                .await?,
            };
        match new_version {
            Some(v) => Ok(to_u64(v)),
            None => {
                let actual: Option<i64> =
                    sqlx::query_scalar("SELECT version FROM streams WHERE stream = $1")
                        .bind(stream)
                        .fetch_optional(self.conn())
                        .await?;
                Err(Error::WrongExpectedVersion {
                    stream: stream.to_string(),
                    expected: expected.to_string(),
                    actual: actual.map(to_u64),
                })
            }
        }
    }

    async fn load_vcluster(&mut self, uid: VClusterId) -> Result<Option<VCluster>> {
        let doc: Option<serde_json::Value> =
            sqlx::query_scalar("SELECT doc FROM vclusters WHERE uid = $1")
                .bind(uid.as_uuid())
                .fetch_optional(self.conn())
                .await?;
        doc.map(|d| from_doc("vclusters", d)).transpose()
    }

    async fn save_vcluster(&mut self, vc: &VCluster) -> Result<()> {
        let res = sqlx::query(
            "INSERT INTO vclusters (uid, project, name, state, version, doc, created_at, updated_at)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8)
             ON CONFLICT (uid) DO UPDATE SET project = EXCLUDED.project, name = EXCLUDED.name,
               state = EXCLUDED.state, version = EXCLUDED.version, doc = EXCLUDED.doc,
               updated_at = EXCLUDED.updated_at",
        )
        .bind(vc.uid.as_uuid())
        .bind(vc.project.as_str())
        .bind(vc.name.as_str())
        .bind(vc.state.as_str())
        .bind(to_i64(vc.version)?)
        .bind(to_doc(vc))
        .bind(vc.created_at)
        .bind(vc.updated_at)
        .execute(self.conn())
        .await;
        match res {
            Ok(_) => Ok(()),
            Err(e) if is_live_name_violation(&e) => Err(Error::NameTaken {
                project: vc.project.to_string(),
                name: vc.name.to_string(),
            }),
            Err(e) => Err(e.into()),
        }
    }

    async fn load_operation(&mut self, id: OperationId) -> Result<Option<Operation>> {
        // The document and its steps in one round trip (one row per step, or one row
        // with NULL step columns for an operation without steps).
        let rows = sqlx::query(
            "SELECT o.doc, s.name, s.state, s.attempts, s.started_at, s.finished_at, s.error
             FROM operations o LEFT JOIN operation_steps s ON s.operation_id = o.id
             WHERE o.id = $1 ORDER BY s.idx",
        )
        .bind(id.as_uuid())
        .fetch_all(self.conn())
        .await?;
        let Some(first) = rows.first() else {
            return Ok(None);
        };
        let mut op: Operation = from_doc("operations", first.try_get("doc")?)?;
        op.steps = Vec::with_capacity(rows.len());
        for row in &rows {
            if row.try_get::<Option<String>, _>("name")?.is_some() {
                op.steps.push(step_from_row(row)?);
            }
        }
        Ok(Some(op))
    }

    async fn save_operation(&mut self, op: &Operation) -> Result<()> {
        // The operation row, its steps (UNNEST of parallel arrays) and, once it ended, its
        // idempotency key's `ended_at` (the key's 24 h start from the end), in one
        // statement: data-modifying CTEs all run to completion.
        let n = op.steps.len();
        let mut idx = Vec::with_capacity(n);
        let mut names = Vec::with_capacity(n);
        let mut states = Vec::with_capacity(n);
        let mut attempts = Vec::with_capacity(n);
        let mut started = Vec::with_capacity(n);
        let mut finished = Vec::with_capacity(n);
        let mut errors = Vec::with_capacity(n);
        for (i, s) in op.steps.iter().enumerate() {
            idx.push(i as i32);
            names.push(s.name.clone());
            states.push(s.state.as_str().to_string());
            attempts.push(s.attempts as i32);
            started.push(s.started_at);
            finished.push(s.finished_at);
            errors.push(s.error.as_ref().map(to_doc));
        }
        let ended_key = if op.done {
            op.request_id.as_deref()
        } else {
            None
        };
        sqlx::query(
            "WITH op AS (
               INSERT INTO operations (id, project, vcluster_uid, vcluster, kind, state,
                 request_id, retry_of, version, doc, created_at, updated_at)
               VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12)
               ON CONFLICT (id) DO UPDATE SET state = EXCLUDED.state, version = EXCLUDED.version,
                 doc = EXCLUDED.doc, updated_at = EXCLUDED.updated_at
             ), key AS (
               UPDATE idempotency_keys SET ended_at = $12
               WHERE $13::text IS NOT NULL AND project = $2 AND request_id = $13
                 AND operation_id = $1 AND ended_at IS NULL
             )
             INSERT INTO operation_steps (operation_id, idx, name, state, attempts, started_at,
               finished_at, error)
             SELECT $1, * FROM UNNEST($14::int4[], $15::text[], $16::text[], $17::int4[],
               $18::timestamptz[], $19::timestamptz[], $20::jsonb[])
             ON CONFLICT (operation_id, idx) DO UPDATE SET name = EXCLUDED.name,
               state = EXCLUDED.state, attempts = EXCLUDED.attempts,
               started_at = EXCLUDED.started_at, finished_at = EXCLUDED.finished_at,
               error = EXCLUDED.error",
        )
        .bind(op.id.as_uuid())
        .bind(op.project.as_str())
        .bind(op.vcluster_uid.as_uuid())
        .bind(op.vcluster.as_str())
        .bind(op.kind.as_str())
        .bind(op.state.as_str())
        .bind(op.request_id.as_deref())
        .bind(op.retry_of.map(|r| r.as_uuid()))
        .bind(to_i64(op.version)?)
        .bind(operation_doc(op))
        .bind(op.created_at)
        .bind(op.updated_at)
        .bind(ended_key)
        .bind(idx)
        .bind(names)
        .bind(states)
        .bind(attempts)
        .bind(started)
        .bind(finished)
        .bind(errors)
        .execute(self.conn())
        .await?;
        Ok(())
    }

    async fn load_snapshot(&mut self, id: SnapshotId) -> Result<Option<Snapshot>> {
        let doc: Option<serde_json::Value> =
            sqlx::query_scalar("SELECT doc FROM snapshots WHERE id = $1")
                .bind(id.as_uuid())
                .fetch_optional(self.conn())
                .await?;
        doc.map(|d| from_doc("snapshots", d)).transpose()
    }

    async fn save_snapshot(&mut self, s: &Snapshot) -> Result<()> {
        sqlx::query(
            "INSERT INTO snapshots (id, project, vcluster, vcluster_uid, state, version, doc,
               created_at, updated_at)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)
             ON CONFLICT (id) DO UPDATE SET state = EXCLUDED.state, version = EXCLUDED.version,
               doc = EXCLUDED.doc, updated_at = EXCLUDED.updated_at",
        )
        .bind(s.id.as_uuid())
        .bind(s.project.as_str())
        .bind(s.vcluster.as_str())
        .bind(s.vcluster_uid.as_uuid())
        .bind(s.state.as_str())
        .bind(to_i64(s.version)?)
        .bind(to_doc(s))
        .bind(s.created_at)
        .bind(s.updated_at)
        .execute(self.conn())
        .await?;
        Ok(())
    }

    async fn enqueue_run(&mut self, run: &NewRun) -> Result<()> {
        sqlx::query(
            "INSERT INTO runs (id, operation_id, vcluster_uid, status, run_at, priority,
               created_at, updated_at)
             VALUES ($1, $2, $3, 'queued', now() + $4 * interval '1 microsecond', $5,
               now(), now())",
        )
        .bind(run.id.as_uuid())
        .bind(run.operation_id.as_uuid())
        .bind(run.vcluster_uid.as_uuid())
        .bind(run.delay.map(duration_micros).unwrap_or(0).max(0))
        .bind(run.priority)
        .execute(self.conn())
        .await?;
        Ok(())
    }

    async fn update_run(&mut self, lease: Lease, update: RunUpdate) -> Result<()> {
        // `now()` is the transaction's start by the database's clock: every time
        // written below is it plus a duration, never this process's clock.
        let q = match update {
            RunUpdate::Complete => sqlx::query(
                "UPDATE runs SET status = 'done', lease_owner = NULL, lease_until = NULL,
                   updated_at = now() WHERE id = $1 AND epoch = $2",
            )
            .bind(lease.run_id.as_uuid())
            .bind(lease.epoch),
            RunUpdate::Reschedule { after } => sqlx::query(
                "UPDATE runs SET status = 'queued', run_at = now() + $3 * interval '1 microsecond',
                   lease_owner = NULL, lease_until = NULL, updated_at = now()
                 WHERE id = $1 AND epoch = $2",
            )
            .bind(lease.run_id.as_uuid())
            .bind(lease.epoch)
            .bind(duration_micros(after).max(0)),
            RunUpdate::Renew { lease_for } => sqlx::query(
                "UPDATE runs SET lease_until = now() + $3 * interval '1 microsecond',
                   updated_at = now() WHERE id = $1 AND epoch = $2",
            )
            .bind(lease.run_id.as_uuid())
            .bind(lease.epoch)
            .bind(duration_micros(lease_for).max(0)),
        };
        let n = q.execute(self.conn()).await?.rows_affected();
        if n == 1 {
            let history = match update {
                RunUpdate::Renew { .. } => sqlx::query(
                    "UPDATE run_leases SET lease_until =
                       (SELECT lease_until FROM runs WHERE id = $1)
                     WHERE run_id = $1 AND epoch = $2",
                ),
                RunUpdate::Complete | RunUpdate::Reschedule { .. } => sqlx::query(
                    "UPDATE run_leases SET released_at = now() WHERE run_id = $1 AND epoch = $2",
                ),
            };
            history
                .bind(lease.run_id.as_uuid())
                .bind(lease.epoch)
                .execute(self.conn())
                .await?;
            Ok(())
        } else {
            Err(Error::LeaseLost {
                run_id: lease.run_id,
                epoch: lease.epoch,
            })
        }
    }

    async fn append_events(
        &mut self,
        rows: &mut [EventRow],
        recorded_at: DateTime<Utc>,
        runs_changed: bool,
    ) -> Result<u64> {
        // One round trip inside the critical section: take the head row lock, insert the
        // events at the reserved positions, queue the NOTIFY. Only COMMIT follows.
        let count = to_i64(rows.len() as u64)?;
        let streams: Vec<&str> = rows.iter().map(|r| r.stream.as_str()).collect();
        let versions: Vec<i64> = rows.iter().map(|r| r.version as i64).collect();
        let types: Vec<&str> = rows.iter().map(|r| r.event_type).collect();
        let data: Vec<&serde_json::Value> = rows.iter().map(|r| &r.data).collect();
        let metadata: Vec<&serde_json::Value> = rows.iter().map(|r| &r.metadata).collect();
        let last: i64 = sqlx::query_scalar(
            "WITH head AS (
               UPDATE event_log_head SET last_position = last_position + $1 WHERE id = 1
               RETURNING last_position
             ), ins AS (
               INSERT INTO events (position, stream, version, type, data, metadata, recorded_at)
               SELECT head.last_position - $1 + x.ord, x.s, x.v, x.t, x.d, x.m, $7
               FROM head, UNNEST($2::text[], $3::int8[], $4::text[], $5::jsonb[], $6::jsonb[])
                 WITH ORDINALITY AS x(s, v, t, d, m, ord)
             )
             SELECT head.last_position FROM head
               CROSS JOIN LATERAL (SELECT pg_notify($8, head.last_position::text)) AS n
               LEFT JOIN LATERAL (SELECT pg_notify($9, '') WHERE $10) AS r ON true",
        )
        .bind(count)
        .bind(streams)
        .bind(versions)
        .bind(types)
        .bind(data)
        .bind(metadata)
        .bind(recorded_at)
        .bind(self.channels.0.clone())
        .bind(self.channels.1.clone())
        .bind(runs_changed)
        .fetch_one(self.conn())
        .await?;
        let last = to_u64(last);
        let first = last + 1 - rows.len() as u64;
        for (i, row) in rows.iter_mut().enumerate() {
            row.position = first + i as u64;
        }
        Ok(last)
    }

    async fn restore_stream_versions(&mut self, versions: &[(String, u64)]) -> Result<()> {
        let streams: Vec<&str> = versions.iter().map(|(s, _)| s.as_str()).collect();
        let values: Vec<i64> = versions
            .iter()
            .map(|(_, v)| to_i64(*v))
            .collect::<Result<_>>()?;
        sqlx::query(
            "WITH v AS (SELECT * FROM UNNEST($1::text[], $2::int8[]) AS v(stream, version)),
             gone AS (DELETE FROM streams s USING v WHERE s.stream = v.stream AND v.version = 0)
             UPDATE streams s SET version = v.version FROM v
             WHERE s.stream = v.stream AND v.version > 0",
        )
        .bind(streams)
        .bind(values)
        .execute(self.conn())
        .await?;
        Ok(())
    }

    async fn open_batch(
        &mut self,
        leases: &[Lease],
        bumps: &[(String, u64)],
        want: &crate::batch::Wanted,
    ) -> Result<crate::batch::Opened> {
        let run_ids: Vec<Uuid> = leases.iter().map(|l| l.run_id.as_uuid()).collect();
        let epochs: Vec<i64> = leases.iter().map(|l| l.epoch).collect();
        let streams: Vec<&str> = bumps.iter().map(|(s, _)| s.as_str()).collect();
        let counts: Vec<i64> = bumps
            .iter()
            .map(|(_, c)| to_i64(*c))
            .collect::<Result<_>>()?;
        // The fences (FOR KEY SHARE, as `check_fence`), every stream bump, and the
        // projections the events fold into, in one round trip. A bump of a commit whose
        // fence turns out lost is taken back by `restore_stream_versions`.
        let row = sqlx::query(
            "WITH f AS (
               SELECT r.id, r.epoch FROM runs r
               JOIN UNNEST($1::uuid[], $2::int8[]) AS f(id, epoch)
                 ON r.id = f.id AND r.epoch = f.epoch
               WHERE r.status = 'leased'
               ORDER BY r.id
               FOR KEY SHARE OF r
             ), b AS (
               INSERT INTO streams (stream, version)
               SELECT * FROM UNNEST($3::text[], $4::int8[])
               ON CONFLICT (stream) DO UPDATE SET version = streams.version + EXCLUDED.version
               RETURNING stream, version
             )
             SELECT
               (SELECT coalesce(jsonb_agg(jsonb_build_array(id, epoch)), '[]') FROM f) AS held,
               (SELECT coalesce(jsonb_agg(jsonb_build_array(stream, version)), '[]') FROM b)
                 AS versions,
               (SELECT coalesce(jsonb_agg(doc), '[]') FROM vclusters WHERE uid = ANY($5::uuid[]))
                 AS vclusters,
               (SELECT coalesce(jsonb_agg(jsonb_build_array(o.doc,
                  (SELECT coalesce(jsonb_agg(jsonb_build_object('name', s.name,
                     'state', s.state, 'attempts', s.attempts, 'started_at', s.started_at,
                     'finished_at', s.finished_at, 'error', s.error) ORDER BY s.idx), '[]')
                   FROM operation_steps s WHERE s.operation_id = o.id))), '[]')
                FROM operations o WHERE o.id = ANY($6::uuid[])) AS operations,
               (SELECT coalesce(jsonb_agg(doc), '[]') FROM snapshots WHERE id = ANY($7::uuid[]))
                 AS snapshots",
        )
        .bind(run_ids)
        .bind(epochs)
        .bind(streams)
        .bind(counts)
        .bind(
            want.vclusters
                .iter()
                .map(|v| v.as_uuid())
                .collect::<Vec<_>>(),
        )
        .bind(
            want.operations
                .iter()
                .map(|o| o.as_uuid())
                .collect::<Vec<_>>(),
        )
        .bind(
            want.snapshots
                .iter()
                .map(|s| s.as_uuid())
                .collect::<Vec<_>>(),
        )
        .fetch_one(self.conn())
        .await?;
        let held: Vec<(Uuid, i64)> = from_doc("runs", row.try_get("held")?)?;
        let versions: Vec<(String, i64)> = from_doc("streams", row.try_get("versions")?)?;
        let vclusters: Vec<VCluster> = from_doc("vclusters", row.try_get("vclusters")?)?;
        let operations: Vec<(serde_json::Value, Vec<OperationStep>)> =
            from_doc("operations", row.try_get("operations")?)?;
        let snapshots: Vec<Snapshot> = from_doc("snapshots", row.try_get("snapshots")?)?;
        let loaded = crate::batch::Loaded {
            vclusters: vclusters.into_iter().map(|v| (v.uid, v)).collect(),
            operations: operations
                .into_iter()
                .map(|(doc, steps)| {
                    let mut op: Operation = from_doc("operations", doc)?;
                    op.steps = steps;
                    Ok((op.id, op))
                })
                .collect::<Result<_>>()?,
            snapshots: snapshots.into_iter().map(|s| (s.id, s)).collect(),
        };
        Ok(crate::batch::Opened {
            held: held.into_iter().map(|(id, e)| (RunId(id), e)).collect(),
            versions: versions.into_iter().map(|(s, v)| (s, to_u64(v))).collect(),
            loaded,
        })
    }

    async fn write_batch(&mut self, w: crate::batch::Writes<'_>) -> Result<()> {
        if !w.restore.is_empty() {
            self.restore_stream_versions(w.restore).await?;
        }
        for s in w.snapshots {
            self.save_snapshot(s).await?;
        }
        let vcs = w.vclusters;
        let n = vcs.len();
        let (mut v_uid, mut v_project, mut v_name, mut v_state) = (
            Vec::with_capacity(n),
            Vec::with_capacity(n),
            Vec::with_capacity(n),
            Vec::with_capacity(n),
        );
        let (mut v_version, mut v_doc, mut v_created, mut v_updated) = (
            Vec::with_capacity(n),
            Vec::with_capacity(n),
            Vec::with_capacity(n),
            Vec::with_capacity(n),
        );
        for vc in vcs {
            v_uid.push(vc.uid.as_uuid());
            v_project.push(vc.project.as_str());
            v_name.push(vc.name.as_str());
            v_state.push(vc.state.as_str());
            v_version.push(to_i64(vc.version)?);
            v_doc.push(to_doc(vc));
            v_created.push(vc.created_at);
            v_updated.push(vc.updated_at);
        }
        let ops = w.operations;
        let n = ops.len();
        let mut id = Vec::with_capacity(n);
        let mut project = Vec::with_capacity(n);
        let mut vcluster_uid = Vec::with_capacity(n);
        let mut vcluster = Vec::with_capacity(n);
        let mut kind = Vec::with_capacity(n);
        let mut state = Vec::with_capacity(n);
        let mut request_id = Vec::with_capacity(n);
        let mut retry_of = Vec::with_capacity(n);
        let mut version = Vec::with_capacity(n);
        let mut doc = Vec::with_capacity(n);
        let mut created = Vec::with_capacity(n);
        let mut updated = Vec::with_capacity(n);
        let mut ended_key = Vec::with_capacity(n);
        let (mut s_op, mut s_idx, mut s_name, mut s_state, mut s_attempts) =
            (Vec::new(), Vec::new(), Vec::new(), Vec::new(), Vec::new());
        let (mut s_started, mut s_finished, mut s_error) = (Vec::new(), Vec::new(), Vec::new());
        for op in ops {
            id.push(op.id.as_uuid());
            project.push(op.project.as_str());
            vcluster_uid.push(op.vcluster_uid.as_uuid());
            vcluster.push(op.vcluster.as_str());
            kind.push(op.kind.as_str());
            state.push(op.state.as_str());
            request_id.push(op.request_id.as_deref());
            retry_of.push(op.retry_of.map(|r| r.as_uuid()));
            version.push(to_i64(op.version)?);
            doc.push(operation_doc(op));
            created.push(op.created_at);
            updated.push(op.updated_at);
            ended_key.push(if op.done {
                op.request_id.as_deref()
            } else {
                None
            });
            for (i, s) in op.steps.iter().enumerate() {
                s_op.push(op.id.as_uuid());
                s_idx.push(i as i32);
                s_name.push(s.name.as_str());
                s_state.push(s.state.as_str());
                s_attempts.push(s.attempts as i32);
                s_started.push(s.started_at);
                s_finished.push(s.finished_at);
                s_error.push(s.error.as_ref().map(to_doc));
            }
        }
        let runs = w.runs;
        let mut r_id = Vec::with_capacity(runs.len());
        let mut r_epoch = Vec::with_capacity(runs.len());
        let mut r_action = Vec::with_capacity(runs.len());
        let mut r_us = Vec::with_capacity(runs.len());
        for (lease, update) in runs {
            r_id.push(lease.run_id.as_uuid());
            r_epoch.push(lease.epoch);
            let (action, d) = match update {
                RunUpdate::Complete => ("complete", Duration::zero()),
                RunUpdate::Reschedule { after } => ("reschedule", *after),
                RunUpdate::Renew { lease_for } => ("renew", *lease_for),
            };
            r_action.push(action);
            r_us.push(duration_micros(d).max(0));
        }
        // Everything the batch's folds and run updates write, in one statement (the same
        // writes as `save_vcluster`, `save_operation` and `update_run`, for many rows;
        // `now()` is the database's clock). The vcluster rows go in the order given
        // (deleted incarnations first), which is the order the live-name index sees.
        let res = sqlx::query_scalar::<_, i64>(
            "WITH vc AS (
               INSERT INTO vclusters (uid, project, name, state, version, doc, created_at,
                 updated_at)
               SELECT * FROM UNNEST($1::uuid[], $2::text[], $3::text[], $4::text[], $5::int8[],
                 $6::jsonb[], $7::timestamptz[], $8::timestamptz[])
               ON CONFLICT (uid) DO UPDATE SET project = EXCLUDED.project, name = EXCLUDED.name,
                 state = EXCLUDED.state, version = EXCLUDED.version, doc = EXCLUDED.doc,
                 updated_at = EXCLUDED.updated_at
             ), o AS (
               SELECT * FROM UNNEST($9::uuid[], $10::text[], $11::uuid[], $12::text[],
                 $13::text[], $14::text[], $15::text[], $16::uuid[], $17::int8[], $18::jsonb[],
                 $19::timestamptz[], $20::timestamptz[], $21::text[])
                 AS o(id, project, vcluster_uid, vcluster, kind, state, request_id, retry_of,
                      version, doc, created_at, updated_at, ended_key)
             ), op AS (
               INSERT INTO operations (id, project, vcluster_uid, vcluster, kind, state,
                 request_id, retry_of, version, doc, created_at, updated_at)
               SELECT id, project, vcluster_uid, vcluster, kind, state, request_id, retry_of,
                 version, doc, created_at, updated_at FROM o
               ON CONFLICT (id) DO UPDATE SET state = EXCLUDED.state, version = EXCLUDED.version,
                 doc = EXCLUDED.doc, updated_at = EXCLUDED.updated_at
             ), key AS (
               UPDATE idempotency_keys k SET ended_at = o.updated_at FROM o
               WHERE o.ended_key IS NOT NULL AND k.project = o.project
                 AND k.request_id = o.ended_key AND k.operation_id = o.id AND k.ended_at IS NULL
             ), st AS (
               INSERT INTO operation_steps (operation_id, idx, name, state, attempts, started_at,
                 finished_at, error)
               SELECT * FROM UNNEST($22::uuid[], $23::int4[], $24::text[], $25::text[],
                 $26::int4[], $27::timestamptz[], $28::timestamptz[], $29::jsonb[])
               ON CONFLICT (operation_id, idx) DO UPDATE SET name = EXCLUDED.name,
                 state = EXCLUDED.state, attempts = EXCLUDED.attempts,
                 started_at = EXCLUDED.started_at, finished_at = EXCLUDED.finished_at,
                 error = EXCLUDED.error
             ), u AS (
               SELECT * FROM UNNEST($30::uuid[], $31::int8[], $32::text[], $33::int8[])
                 AS u(id, epoch, action, us)
             ), r AS (
               UPDATE runs SET
                 status = CASE u.action WHEN 'complete' THEN 'done'
                          WHEN 'reschedule' THEN 'queued' ELSE runs.status END,
                 run_at = CASE u.action WHEN 'reschedule'
                          THEN now() + u.us * interval '1 microsecond' ELSE runs.run_at END,
                 lease_owner = CASE u.action WHEN 'renew' THEN runs.lease_owner END,
                 lease_until = CASE u.action WHEN 'renew'
                               THEN now() + u.us * interval '1 microsecond' END,
                 updated_at = now()
               FROM u WHERE runs.id = u.id AND runs.epoch = u.epoch
               RETURNING runs.id, runs.epoch, runs.lease_until, u.action
             ), h AS (
               UPDATE run_leases l SET
                 released_at = CASE r.action WHEN 'renew' THEN l.released_at ELSE now() END,
                 lease_until = CASE r.action WHEN 'renew' THEN r.lease_until
                               ELSE l.lease_until END
               FROM r WHERE l.run_id = r.id AND l.epoch = r.epoch
             )
             SELECT count(*) FROM r",
        )
        .bind(v_uid)
        .bind(v_project)
        .bind(v_name)
        .bind(v_state)
        .bind(v_version)
        .bind(v_doc)
        .bind(v_created)
        .bind(v_updated)
        .bind(id)
        .bind(project)
        .bind(vcluster_uid)
        .bind(vcluster)
        .bind(kind)
        .bind(state)
        .bind(request_id)
        .bind(retry_of)
        .bind(version)
        .bind(doc)
        .bind(created)
        .bind(updated)
        .bind(ended_key)
        .bind(s_op)
        .bind(s_idx)
        .bind(s_name)
        .bind(s_state)
        .bind(s_attempts)
        .bind(s_started)
        .bind(s_finished)
        .bind(s_error)
        .bind(r_id)
        .bind(r_epoch)
        .bind(r_action)
        .bind(r_us)
        .fetch_one(self.conn())
        .await;
        let changed = match res {
            Ok(n) => n,
            Err(e) if is_live_name_violation(&e) => {
                return Err(Error::NameTaken {
                    project: vcs
                        .first()
                        .map(|v| v.project.to_string())
                        .unwrap_or_default(),
                    name: vcs.first().map(|v| v.name.to_string()).unwrap_or_default(),
                });
            }
            Err(e) => return Err(e.into()),
        };
        if changed as usize == runs.len() {
            Ok(())
        } else {
            Err(Error::Corrupt {
                table: "runs",
                message: format!("{changed} of {} fenced runs were updated", runs.len()),
            })
        }
    }

    async fn notify_runs(&mut self) -> Result<()> {
        sqlx::query("SELECT pg_notify($1, '')")
            .bind(self.channels.1.clone())
            .execute(self.conn())
            .await?;
        Ok(())
    }
}

/// The URL of database `name` on the server of `url`, created first when it does not
/// exist (the scratch database `ovc bench workflows` runs pgbench in).
pub async fn ensure_database(url: &str, name: &str) -> Result<String> {
    use sqlx::Connection;
    let name = checked_schema(name)?;
    let mut conn = sqlx::PgConnection::connect(url).await?;
    let exists: bool =
        sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM pg_database WHERE datname = $1)")
            .bind(name)
            .fetch_one(&mut conn)
            .await?;
    if !exists {
        sqlx::query(sqlx::AssertSqlSafe(format!("CREATE DATABASE {name}")))
            .execute(&mut conn)
            .await?;
    }
    let (base, query) = match url.split_once('?') {
        Some((b, q)) => (b, Some(q)),
        None => (url, None),
    };
    let scheme_end = base.find("://").map_or(0, |i| i + 3);
    let server = match base[scheme_end..].find('/') {
        Some(i) => &base[..scheme_end + i],
        None => base,
    };
    Ok(match query {
        Some(q) => format!("{server}/{name}?{q}"),
        None => format!("{server}/{name}"),
    })
}

/// Transactions committed in the current database so far (`pg_stat_database`; the
/// server publishes a backend's counts within about a second of its last commit).
pub async fn committed_transactions(url: &str) -> Result<i64> {
    use sqlx::Connection;
    let mut conn = sqlx::PgConnection::connect(url).await?;
    Ok(sqlx::query_scalar(
        "SELECT xact_commit FROM pg_stat_database WHERE datname = current_database()",
    )
    .fetch_one(&mut conn)
    .await?)
}

/// The name of the database `url` connects to.
pub async fn database_name(url: &str) -> Result<String> {
    use sqlx::Connection;
    let mut conn = sqlx::PgConnection::connect(url).await?;
    Ok(sqlx::query_scalar("SELECT current_database()::text")
        .fetch_one(&mut conn)
        .await?)
}

/// Drops `schema` and everything in it (throwaway schemas of tests and benchmarks).
/// Best effort: errors are logged, not returned.
pub async fn drop_schema(url: &str, schema: &str) {
    use sqlx::Connection;
    let Ok(schema) = checked_schema(schema) else {
        tracing::warn!(schema, "not dropping a schema with an unexpected name");
        return;
    };
    match sqlx::PgConnection::connect(url).await {
        Ok(mut conn) => {
            let sql = format!("DROP SCHEMA IF EXISTS {schema} CASCADE");
            if let Err(e) = sqlx::query(sqlx::AssertSqlSafe(sql))
                .execute(&mut conn)
                .await
            {
                tracing::warn!(schema, error = %e, "could not drop schema");
            }
        }
        Err(e) => tracing::warn!(schema, error = %e, "could not connect to drop schema"),
    }
}

/// A schema name we are willing to put into SQL: lowercase letters, digits, '_'.
fn checked_schema(schema: &str) -> Result<&str> {
    let ok = !schema.is_empty()
        && schema.len() <= 63
        && schema
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
        && !schema.as_bytes()[0].is_ascii_digit();
    if ok {
        Ok(schema)
    } else {
        Err(Error::InvalidInput(format!(
            "schema {schema:?}: use lowercase letters, digits and '_' (not starting with a digit)"
        )))
    }
}

async fn listen(
    pool: PgPool,
    wake: Arc<Wakeups>,
    channels: Arc<(String, String)>,
    submissions_channel: String,
) {
    loop {
        let mut listener = match PgListener::connect_with(&pool).await {
            Ok(l) => l,
            Err(e) => {
                tracing::warn!(error = %e, "LISTEN connection failed; retrying in 1s");
                tokio::time::sleep(std::time::Duration::from_secs(1)).await;
                continue;
            }
        };
        if let Err(e) = listener
            .listen_all([
                channels.0.as_str(),
                channels.1.as_str(),
                submissions_channel.as_str(),
            ])
            .await
        {
            tracing::warn!(error = %e, "LISTEN failed; retrying in 1s");
            tokio::time::sleep(std::time::Duration::from_secs(1)).await;
            continue;
        }
        // Anything may have happened while we were not listening.
        wake.runs_changed();
        wake.submissions_changed();
        loop {
            match listener.recv().await {
                Ok(n) if n.channel() == channels.0 => {
                    wake.events_appended(n.payload().parse().unwrap_or(0));
                }
                Ok(n) if n.channel() == submissions_channel => wake.submissions_changed(),
                Ok(_) => wake.runs_changed(),
                Err(e) => {
                    tracing::warn!(error = %e, "LISTEN connection lost; reconnecting");
                    wake.runs_changed();
                    break;
                }
            }
        }
    }
}

impl PgStore {
    /// Connects to `url` (`postgres://...`). With `config.pg_schema`, every table lives in
    /// that schema (created by [`Store::migrate`]).
    pub async fn connect(url: &str, config: StoreConfig, clock: Arc<dyn Clock>) -> Result<Self> {
        let mut opts = PgConnectOptions::from_str(url)?.application_name("ovc");
        let suffix = match &config.pg_schema {
            Some(schema) => {
                let schema = checked_schema(schema)?;
                opts = opts.options([("search_path", schema)]);
                format!("_{schema}")
            }
            None => String::new(),
        };
        let pool = PgPoolOptions::new()
            .max_connections(config.pg_max_connections.max(2))
            .acquire_timeout(std::time::Duration::from_secs(10))
            .connect_with(opts)
            .await?;
        let wake = Arc::new(Wakeups::new());
        let channels = Arc::new((format!("ovc_events{suffix}"), format!("ovc_runs{suffix}")));
        let submissions_channel = format!("ovc_submissions{suffix}");
        let listener = tokio::spawn(listen(
            pool.clone(),
            wake.clone(),
            channels.clone(),
            submissions_channel.clone(),
        ));
        let traffic: Arc<Traffic> = Arc::default();
        let committers = commit::Committers::spawn(
            PgTxSource {
                pool: pool.clone(),
                channels: channels.clone(),
                traffic: traffic.clone(),
                clock: clock.clone(),
            },
            &config,
            &wake,
        );
        Ok(Self {
            committers,
            pool,
            config,
            clock,
            wake,
            channels,
            submissions_channel,
            listener,
            traffic,
        })
    }

    fn now(&self) -> DateTime<Utc> {
        micros(self.clock.now())
    }

    async fn begin(&self) -> Result<PgTx> {
        self.traffic.write_transaction();
        Ok(PgTx {
            traffic: self.traffic.clone(),
            tx: self.pool.begin().await?,
            channels: self.channels.clone(),
        })
    }

    /// The pool, for one statement outside a write transaction.
    fn read(&self) -> &PgPool {
        self.traffic.read_statement();
        &self.pool
    }

    /// The pool, for one statement that is a write transaction by itself.
    fn autocommit_write(&self) -> &PgPool {
        self.traffic.write_transaction();
        &self.pool
    }

    async fn with_steps(&self, doc: serde_json::Value) -> Result<Operation> {
        let mut op: Operation = from_doc("operations", doc)?;
        let rows = sqlx::query(sqlx::AssertSqlSafe(format!(
            "SELECT {STEP_COLUMNS} FROM operation_steps WHERE operation_id = $1 ORDER BY idx"
        )))
        .bind(op.id.as_uuid())
        .fetch_all(self.read())
        .await?;
        op.steps = rows.iter().map(step_from_row).collect::<Result<_>>()?;
        Ok(op)
    }

    /// The connection pool (for tests and admin tooling).
    pub fn pool(&self) -> &PgPool {
        &self.pool
    }
}

fn time_cursor(page: &PageRequest) -> Result<(Option<DateTime<Utc>>, Option<Uuid>)> {
    let Some(c) = page.after.as_deref() else {
        return Ok((None, None));
    };
    let key = TimeKey::parse(c)?;
    Ok((Some(key.at()), Some(key.id)))
}

#[async_trait]
impl Store for PgStore {
    fn backend(&self) -> Backend {
        Backend::Postgres
    }

    fn config(&self) -> &StoreConfig {
        &self.config
    }

    fn clock(&self) -> &dyn Clock {
        self.clock.as_ref()
    }

    async fn migrate(&self) -> Result<()> {
        if let Some(schema) = &self.config.pg_schema {
            let schema = checked_schema(schema)?;
            sqlx::query(sqlx::AssertSqlSafe(format!(
                "CREATE SCHEMA IF NOT EXISTS {schema}"
            )))
            .execute(self.read())
            .await?;
        }
        let mut migrator = sqlx::migrate!("../../migrations/postgres");
        migrator.dangerous_set_table_name("ovc_migrations");
        migrator.run(&self.pool).await?;
        crate::submissions::sync_rules(&self.pool, &self.submissions_channel).await
    }

    async fn sync_call_rules(&self, tables: &crate::submissions::RuleTables) -> Result<()> {
        crate::submissions::sync_call_rules(&self.pool, tables).await
    }

    async fn pending_migrations(&self) -> Result<Vec<i64>> {
        let applied = sqlx::query_scalar("SELECT version FROM ovc_migrations WHERE success")
            .fetch_all(self.read())
            .await;
        crate::pending_of(&sqlx::migrate!("../../migrations/postgres"), applied)
    }

    async fn commit(&self, commit: Commit) -> Result<CommitOutcome> {
        let prepared = commit::prepare(&commit, &self.config)?;
        self.traffic.commits(1);
        self.committers.submit(commit, prepared).await
    }

    async fn read_stream(
        &self,
        stream: &StreamName,
        after_version: u64,
        limit: u32,
    ) -> Result<Vec<RecordedEvent>> {
        let rows = sqlx::query(
            "SELECT position, stream, version, type, data, metadata, recorded_at FROM events
             WHERE stream = $1 AND version > $2 ORDER BY version LIMIT $3",
        )
        .bind(stream.as_str())
        .bind(to_i64(after_version)?)
        .bind(i64::from(limit))
        .fetch_all(self.read())
        .await?;
        rows.iter().map(event_from_row).collect()
    }

    async fn stream_version(&self, stream: &StreamName) -> Result<Option<u64>> {
        let v: Option<i64> = sqlx::query_scalar("SELECT version FROM streams WHERE stream = $1")
            .bind(stream.as_str())
            .fetch_optional(self.read())
            .await?;
        Ok(v.map(to_u64))
    }

    async fn read_all(&self, after_position: u64, limit: u32) -> Result<Vec<RecordedEvent>> {
        let rows = sqlx::query(
            "SELECT position, stream, version, type, data, metadata, recorded_at FROM events
             WHERE position > $1 ORDER BY position LIMIT $2",
        )
        .bind(to_i64(after_position)?)
        .bind(i64::from(limit))
        .fetch_all(self.read())
        .await?;
        rows.iter().map(event_from_row).collect()
    }

    async fn head_position(&self) -> Result<u64> {
        let v: i64 = sqlx::query_scalar("SELECT last_position FROM event_log_head WHERE id = 1")
            .fetch_one(self.read())
            .await?;
        Ok(to_u64(v))
    }

    fn watch_events(&self) -> watch::Receiver<u64> {
        self.wake.watch_events()
    }

    fn watch_runs(&self) -> watch::Receiver<u64> {
        self.wake.watch_runs()
    }

    fn watch_submissions(&self) -> Option<watch::Receiver<u64>> {
        Some(self.wake.watch_submissions())
    }

    async fn find_idempotency_key(
        &self,
        project: &ProjectName,
        request_id: &str,
    ) -> Result<Option<IdempotencyRecord>> {
        let cutoff = self.now() - self.config.idempotency_ttl;
        let row = sqlx::query(
            "SELECT request_hash, operation_id, created_at FROM idempotency_keys
             WHERE project = $1 AND request_id = $2 AND (ended_at IS NULL OR ended_at >= $3)",
        )
        .bind(project.as_str())
        .bind(request_id)
        .bind(cutoff)
        .fetch_optional(self.read())
        .await?;
        row.map(|r| {
            Ok(IdempotencyRecord {
                request_hash: r.try_get("request_hash")?,
                operation_id: OperationId(r.try_get("operation_id")?),
                created_at: r.try_get("created_at")?,
            })
        })
        .transpose()
    }

    async fn purge_idempotency_keys(&self) -> Result<u64> {
        let cutoff = self.now() - self.config.idempotency_ttl;
        // A settled SQL submission answers its request id as long as a key would. (A
        // data-modifying WITH runs whether or not the outer query reads it.)
        let (n,): (i64,) = sqlx::query_as(
            "WITH keys AS (DELETE FROM idempotency_keys WHERE ended_at < $1 RETURNING 1),
                  settled AS (DELETE FROM ovc_submissions
                              WHERE state <> 'pending' AND settled_at < $1)
             SELECT count(*) FROM keys",
        )
        .bind(cutoff)
        .fetch_one(self.read())
        .await?;
        Ok(u64::try_from(n).unwrap_or(0))
    }

    async fn claim_submissions(&self, hold: Duration, max: u32) -> Result<Vec<crate::Submission>> {
        crate::submissions::claim(&self.pool, hold, max).await
    }

    async fn settle_submission(
        &self,
        id: OperationId,
        outcome: &crate::SubmissionOutcome,
    ) -> Result<()> {
        crate::submissions::settle(&self.pool, id, outcome).await
    }

    async fn get_vcluster(
        &self,
        project: &ProjectName,
        name: &VClusterName,
    ) -> Result<Option<VCluster>> {
        let doc: Option<serde_json::Value> = sqlx::query_scalar(
            "SELECT doc FROM vclusters WHERE project = $1 AND name = $2
             ORDER BY state = 'DELETED', created_at DESC LIMIT 1",
        )
        .bind(project.as_str())
        .bind(name.as_str())
        .fetch_optional(self.read())
        .await?;
        doc.map(|d| from_doc("vclusters", d)).transpose()
    }

    async fn get_vcluster_by_uid(&self, uid: VClusterId) -> Result<Option<VCluster>> {
        let doc: Option<serde_json::Value> =
            sqlx::query_scalar("SELECT doc FROM vclusters WHERE uid = $1")
                .bind(uid.as_uuid())
                .fetch_optional(self.read())
                .await?;
        doc.map(|d| from_doc("vclusters", d)).transpose()
    }

    async fn list_vclusters(
        &self,
        filter: &VClusterFilter,
        page: &PageRequest,
    ) -> Result<Page<VCluster>> {
        let (ap, an, au) = match page.after.as_deref() {
            Some(c) => {
                let k = VClusterKey::parse(c)?;
                (
                    Some(k.project.as_str().to_string()),
                    Some(k.name.as_str().to_string()),
                    Some(k.uid),
                )
            }
            None => (None, None, None),
        };
        let limit = page.limit();
        let rows: Vec<serde_json::Value> = sqlx::query_scalar(
            "SELECT doc FROM vclusters
             WHERE ($1::text IS NULL OR project = $1) AND ($2::text IS NULL OR state = $2)
               AND ($3 OR state <> 'DELETED')
               AND ($4::text IS NULL OR (project, name, uid) > ($4, $5::text, $6::uuid))
               AND ($8::text IS NULL OR doc -> 'spec' -> 'labels' ->> $8 = $9::text)
             ORDER BY project, name, uid LIMIT $7",
        )
        .bind(filter.project.as_ref().map(|p| p.as_str().to_string()))
        .bind(filter.state.map(|s| s.as_str()))
        .bind(filter.include_deleted)
        .bind(ap)
        .bind(an)
        .bind(au)
        .bind(limit + 1)
        .bind(filter.label.as_ref().map(|l| l.0.clone()))
        .bind(filter.label.as_ref().map(|l| l.1.clone()))
        .fetch_all(self.read())
        .await?;
        let mut items = rows
            .into_iter()
            .map(|d| from_doc::<VCluster>("vclusters", d))
            .collect::<Result<Vec<_>>>()?;
        let next = if items.len() as i64 > limit {
            items.truncate(limit as usize);
            items.last().map(vcluster_token)
        } else {
            None
        };
        Ok(Page { items, next })
    }

    async fn get_operation(&self, id: OperationId) -> Result<Option<Operation>> {
        let doc: Option<serde_json::Value> =
            sqlx::query_scalar("SELECT doc FROM operations WHERE id = $1")
                .bind(id.as_uuid())
                .fetch_optional(self.read())
                .await?;
        match doc {
            Some(d) => Ok(Some(self.with_steps(d).await?)),
            None => Ok(None),
        }
    }

    async fn list_operations(
        &self,
        filter: &OperationFilter,
        page: &PageRequest,
    ) -> Result<Page<Operation>> {
        let (at, aid) = time_cursor(page)?;
        let limit = page.limit();
        let rows: Vec<serde_json::Value> = sqlx::query_scalar(
            "SELECT doc FROM operations
             WHERE ($1::text IS NULL OR project = $1) AND ($2::text IS NULL OR vcluster = $2)
               AND ($3::text IS NULL OR state = $3) AND ($4::text IS NULL OR kind = $4)
               AND ($5::timestamptz IS NULL OR created_at >= $5)
               AND ($6::timestamptz IS NULL OR (created_at, id) < ($6, $7::uuid))
             ORDER BY created_at DESC, id DESC LIMIT $8",
        )
        .bind(filter.project.as_ref().map(|p| p.as_str().to_string()))
        .bind(filter.vcluster.clone())
        .bind(filter.state.map(|s| s.as_str()))
        .bind(filter.kind.map(|k| k.as_str()))
        .bind(filter.since)
        .bind(at)
        .bind(aid)
        .bind(limit + 1)
        .fetch_all(self.read())
        .await?;
        let more = rows.len() as i64 > limit;
        let mut items = Vec::with_capacity(rows.len());
        for d in rows.into_iter().take(limit as usize) {
            items.push(self.with_steps(d).await?);
        }
        let next = if more {
            items
                .last()
                .map(|o| TimeKey::new(o.created_at, o.id.as_uuid()).print())
        } else {
            None
        };
        Ok(Page { items, next })
    }

    async fn get_snapshot(&self, id: SnapshotId) -> Result<Option<Snapshot>> {
        let doc: Option<serde_json::Value> =
            sqlx::query_scalar("SELECT doc FROM snapshots WHERE id = $1")
                .bind(id.as_uuid())
                .fetch_optional(self.read())
                .await?;
        doc.map(|d| from_doc("snapshots", d)).transpose()
    }

    async fn list_snapshots(
        &self,
        filter: &SnapshotFilter,
        page: &PageRequest,
    ) -> Result<Page<Snapshot>> {
        let (at, aid) = time_cursor(page)?;
        let limit = page.limit();
        let rows: Vec<serde_json::Value> = sqlx::query_scalar(
            "SELECT doc FROM snapshots
             WHERE ($1::text IS NULL OR project = $1) AND ($2::text IS NULL OR vcluster = $2)
               AND ($3::timestamptz IS NULL OR (created_at, id) > ($3, $4::uuid))
               AND ($6::text IS NULL OR state = $6)
             ORDER BY created_at, id LIMIT $5",
        )
        .bind(filter.project.as_ref().map(|p| p.as_str().to_string()))
        .bind(filter.vcluster.clone())
        .bind(at)
        .bind(aid)
        .bind(limit + 1)
        .bind(filter.state.map(|s| s.as_str()))
        .fetch_all(self.read())
        .await?;
        let mut items = rows
            .into_iter()
            .map(|d| from_doc::<Snapshot>("snapshots", d))
            .collect::<Result<Vec<_>>>()?;
        let next = if items.len() as i64 > limit {
            items.truncate(limit as usize);
            items
                .last()
                .map(|s| TimeKey::new(s.created_at, s.id.as_uuid()).print())
        } else {
            None
        };
        Ok(Page { items, next })
    }

    async fn rebuild_projections(&self) -> Result<RebuildReport> {
        let mut tx = self.begin().await?;
        // Keep writers out while the tables are rebuilt: every appending commit takes
        // this row lock before it finishes.
        sqlx::query("SELECT last_position FROM event_log_head WHERE id = 1 FOR UPDATE")
            .execute(&mut *tx.tx)
            .await?;
        sqlx::query("TRUNCATE vclusters, operations, operation_steps, snapshots")
            .execute(&mut *tx.tx)
            .await?;
        let mut projector = Projector::default();
        let mut after = 0i64;
        let mut events = 0u64;
        loop {
            let rows = sqlx::query(
                "SELECT position, stream, version, type, data, metadata, recorded_at FROM events
                 WHERE position > $1 ORDER BY position LIMIT 1000",
            )
            .bind(after)
            .fetch_all(&mut *tx.tx)
            .await?;
            if rows.is_empty() {
                break;
            }
            for row in &rows {
                let rec = event_from_row(row)?;
                let event = rec.decode()?;
                projector
                    .apply(&mut tx, &rec.stream, rec.version, rec.recorded_at, &event)
                    .await?;
                after = rec.position as i64;
                events += 1;
            }
            // Save each batch, so memory stays bounded however long the log is.
            projector.flush(&mut tx).await?;
        }
        projector.flush(&mut tx).await?;
        tx.commit().await?;
        let (vclusters, operations, snapshots) = projector.written();
        Ok(RebuildReport {
            events,
            vclusters,
            operations,
            snapshots,
        })
    }

    async fn dump_projections(&self) -> Result<ProjectionDump> {
        let q = |sql: &'static str| sqlx::query_scalar::<_, String>(sql).fetch_all(self.read());
        Ok(ProjectionDump {
            vclusters: q(
                "SELECT json_build_array(uid, project, name, state, version, doc,
                            created_at, updated_at)::text FROM vclusters ORDER BY uid",
            )
            .await?,
            operations: q(
                "SELECT json_build_array(id, project, vcluster_uid, vcluster, kind,
                             state, request_id, retry_of, version, doc, created_at,
                             updated_at)::text FROM operations ORDER BY id",
            )
            .await?,
            operation_steps: q("SELECT json_build_array(operation_id, idx, name, state,
                                  attempts, started_at, finished_at, error)::text
                                FROM operation_steps ORDER BY operation_id, idx")
            .await?,
            snapshots: q(
                "SELECT json_build_array(id, project, vcluster, vcluster_uid, state,
                            version, doc, created_at, updated_at)::text
                          FROM snapshots ORDER BY id",
            )
            .await?,
        })
    }

    async fn claim_runs(&self, owner: &str, lease_for: Duration, max: u32) -> Result<Vec<Run>> {
        if owner.is_empty() {
            return Err(Error::InvalidInput("lease owner must not be empty".into()));
        }
        if lease_for <= Duration::zero() {
            return Err(Error::InvalidInput(
                "lease duration must be positive".into(),
            ));
        }
        if max == 0 {
            return Ok(Vec::new());
        }
        // The database's clock decides what is due or expired and when the lease ends.
        let res = sqlx::query(
            "WITH candidates AS (
               SELECT r.id FROM runs r
               WHERE r.status <> 'done'
                 AND ((r.status = 'queued' AND r.run_at <= now())
                      OR (r.status = 'leased' AND r.lease_until < now()))
                 AND NOT EXISTS (SELECT 1 FROM runs o WHERE o.vcluster_uid = r.vcluster_uid
                                 AND o.status <> 'done' AND o.seq < r.seq)
               ORDER BY r.priority DESC, r.run_at, r.seq
               LIMIT $3
               FOR UPDATE OF r SKIP LOCKED)
             , claimed AS (
               UPDATE runs SET status = 'leased', lease_owner = $1,
                 lease_until = now() + $2 * interval '1 microsecond',
                 epoch = runs.epoch + 1, attempts = runs.attempts + 1, updated_at = now()
               FROM candidates WHERE runs.id = candidates.id
               RETURNING runs.id, runs.operation_id, runs.vcluster_uid, runs.status, runs.run_at,
                 runs.attempts, runs.lease_owner, runs.lease_until, runs.epoch, runs.priority)
             , history AS (
               INSERT INTO run_leases (run_id, epoch, vcluster_uid, owner, claimed_at, lease_until)
               SELECT id, epoch, vcluster_uid, lease_owner, now(), lease_until FROM claimed)
             SELECT * FROM claimed",
        )
        .bind(owner)
        .bind(duration_micros(lease_for))
        .bind(i64::from(max))
        .fetch_all(self.autocommit_write())
        .await;
        match res {
            Ok(rows) => rows.iter().map(run_from_row).collect(),
            // Two runs of one vcluster enqueued by concurrent transactions whose seq
            // order differs from their commit order: the one-leased-run index refuses
            // the second claim. Nothing was claimed; the next round sorts it out.
            Err(sqlx::Error::Database(db)) if db.is_unique_violation() => {
                tracing::debug!("claim raced on runs_one_leased_per_vcluster; retrying later");
                Ok(Vec::new())
            }
            Err(e) => Err(e.into()),
        }
    }

    async fn lease_history(&self, vcluster_uid: Option<VClusterId>) -> Result<Vec<LeaseRecord>> {
        let rows = sqlx::query(
            "SELECT run_id, epoch, vcluster_uid, owner, claimed_at, lease_until, released_at
             FROM run_leases WHERE ($1::uuid IS NULL OR vcluster_uid = $1)
             ORDER BY claimed_at, run_id, epoch",
        )
        .bind(vcluster_uid.map(|v| v.as_uuid()))
        .fetch_all(self.read())
        .await?;
        rows.iter()
            .map(|r| {
                Ok(LeaseRecord {
                    run_id: RunId(r.try_get("run_id")?),
                    epoch: r.try_get("epoch")?,
                    vcluster_uid: VClusterId(r.try_get("vcluster_uid")?),
                    owner: r.try_get("owner")?,
                    claimed_at: r.try_get("claimed_at")?,
                    lease_until: r.try_get("lease_until")?,
                    released_at: r.try_get("released_at")?,
                })
            })
            .collect()
    }

    async fn create_token(&self, token: &TokenRecord, token_sha256: &str) -> Result<()> {
        sqlx::query(
            "INSERT INTO api_tokens
                 (id, name, project, role, token_sha256, created_at, expires_at, revoked_at)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
        )
        .bind(token.id)
        .bind(&token.name)
        .bind(token.project.as_str())
        .bind(token.role.as_str())
        .bind(token_sha256)
        .bind(micros(token.created_at))
        .bind(token.expires_at.map(micros))
        .bind(token.revoked_at.map(micros))
        .execute(self.read())
        .await?;
        Ok(())
    }

    async fn find_token(&self, token_sha256: &str) -> Result<Option<TokenRecord>> {
        let row = sqlx::query(sqlx::AssertSqlSafe(format!(
            "SELECT {TOKEN_COLUMNS} FROM api_tokens WHERE token_sha256 = $1"
        )))
        .bind(token_sha256)
        .fetch_optional(self.read())
        .await?;
        row.as_ref().map(pg_token).transpose()
    }

    async fn list_tokens(&self, project: Option<&ProjectName>) -> Result<Vec<TokenRecord>> {
        let rows = sqlx::query(sqlx::AssertSqlSafe(format!(
            "SELECT {TOKEN_COLUMNS} FROM api_tokens
             WHERE ($1::text IS NULL OR project = $1) ORDER BY created_at, id"
        )))
        .bind(project.map(ProjectName::as_str))
        .fetch_all(self.read())
        .await?;
        rows.iter().map(pg_token).collect()
    }

    async fn revoke_token(&self, id: Uuid) -> Result<Option<TokenRecord>> {
        let row = sqlx::query(sqlx::AssertSqlSafe(format!(
            "UPDATE api_tokens SET revoked_at = COALESCE(revoked_at, $1) WHERE id = $2
             RETURNING {TOKEN_COLUMNS}"
        )))
        .bind(self.now())
        .bind(id)
        .fetch_optional(self.read())
        .await?;
        row.as_ref().map(pg_token).transpose()
    }

    async fn stats(&self) -> Result<StoreStats> {
        let (queued, leased): (i64, i64) = sqlx::query_as(
            "SELECT COALESCE(SUM(CASE WHEN status = 'queued' THEN 1 ELSE 0 END), 0),
                    COALESCE(SUM(CASE WHEN status = 'leased' THEN 1 ELSE 0 END), 0)
             FROM runs WHERE status <> 'done'",
        )
        .fetch_one(self.read())
        .await?;
        let steals: i64 = sqlx::query_scalar(
            "SELECT COUNT(*) FROM run_leases a WHERE a.released_at IS NULL AND EXISTS
               (SELECT 1 FROM run_leases b WHERE b.run_id = a.run_id AND b.epoch > a.epoch)",
        )
        .fetch_one(self.read())
        .await?;
        let rows: Vec<(String, String, i64)> = sqlx::query_as(
            "SELECT kind, state, COUNT(*) FROM operations GROUP BY kind, state ORDER BY kind, state",
        )
        .fetch_all(self.read())
        .await?;
        let snapshots: Vec<(String, i64)> =
            sqlx::query_as("SELECT state, COUNT(*) FROM snapshots GROUP BY state ORDER BY state")
                .fetch_all(&self.pool)
                .await?;
        // By the database's clock, as the claim compares `run_at` (runs_pending index).
        let oldest_due: Option<f64> = sqlx::query_scalar(
            "SELECT CAST(EXTRACT(EPOCH FROM now() - MIN(run_at)) AS DOUBLE PRECISION)
             FROM runs WHERE status = 'queued' AND run_at <= now()",
        )
        .fetch_one(self.read())
        .await?;
        // By the store's clock, as the purge computes its cutoff (ended_at index).
        let cutoff = self.now() - self.config.idempotency_ttl;
        let (expired, oldest_ended): (i64, Option<DateTime<Utc>>) = sqlx::query_as(
            "SELECT COUNT(*), MIN(ended_at) FROM idempotency_keys WHERE ended_at < $1",
        )
        .bind(cutoff)
        .fetch_one(self.read())
        .await?;
        Ok(StoreStats {
            oldest_due_run_age: oldest_due
                .filter(|s| s.is_finite() && *s > 0.0)
                .map(std::time::Duration::from_secs_f64)
                .unwrap_or_default(),
            idempotency_keys_expired: to_u64(expired),
            idempotency_purge_lag: oldest_ended
                .and_then(|t| (cutoff - t).to_std().ok())
                .unwrap_or_default(),
            snapshots: snapshots.into_iter().map(|(s, n)| (s, to_u64(n))).collect(),
            runs_queued: to_u64(queued),
            runs_leased: to_u64(leased),
            lease_steals: to_u64(steals),
            operations: rows
                .into_iter()
                .map(|(k, s, n)| (k, s, to_u64(n)))
                .collect(),
            head_position: self.head_position().await?,
        })
    }

    async fn get_run(&self, id: RunId) -> Result<Option<Run>> {
        let row = sqlx::query(sqlx::AssertSqlSafe(format!(
            "SELECT {RUN_COLUMNS} FROM runs WHERE id = $1"
        )))
        .bind(id.as_uuid())
        .fetch_optional(self.read())
        .await?;
        row.as_ref().map(run_from_row).transpose()
    }

    async fn runs_of_operation(&self, operation_id: OperationId) -> Result<Vec<Run>> {
        let rows = sqlx::query(sqlx::AssertSqlSafe(format!(
            "SELECT {RUN_COLUMNS} FROM runs WHERE operation_id = $1 ORDER BY seq"
        )))
        .bind(operation_id.as_uuid())
        .fetch_all(self.read())
        .await?;
        rows.iter().map(run_from_row).collect()
    }

    async fn database_now(&self) -> Result<DateTime<Utc>> {
        Ok(sqlx::query_scalar("SELECT clock_timestamp()")
            .fetch_one(self.read())
            .await?)
    }

    fn traffic(&self) -> crate::TrafficCounts {
        self.traffic.snapshot()
    }

    async fn next_run_due_in(&self) -> Result<Option<std::time::Duration>> {
        let v: Option<i64> = sqlx::query_scalar(
            "SELECT CAST(EXTRACT(EPOCH FROM LEAST(
               (SELECT MIN(run_at) FROM runs WHERE status = 'queued'),
               (SELECT MIN(lease_until) FROM runs WHERE status = 'leased')) - now())
               * 1000000 AS BIGINT)",
        )
        .fetch_one(self.read())
        .await?;
        Ok(v.map(|us| std::time::Duration::from_micros(u64::try_from(us).unwrap_or(0))))
    }
}
