//! The SQLite store: one file, WAL mode, the embedded default of `ovc dev`.
//!
//! Durability: `synchronous=FULL` by default. In WAL mode NORMAL survives a process crash
//! (`kill -9`) but may lose the last commits on power loss; since a 202 tells the caller
//! "accepted, it will run", we pay the fsync per commit by default and let benchmarks
//! and throwaway dev setups opt into NORMAL (`StoreConfig::sqlite_synchronous_full`).
//!
//! Concurrency: all writes of this process go through a one-connection writer pool and
//! start with `BEGIN IMMEDIATE`, so they never deadlock on lock upgrades; several
//! processes on one file wait on SQLite's busy timeout. Reads use a separate pool and
//! see committed snapshots (WAL). Wake-ups are in-process only; other processes'
//! commits are seen by polling.

use crate::commit::{self, EventRow, Projector, TxOps};
use crate::error::{Error, Result};
use crate::model::*;
use crate::page_token::{TimeKey, VClusterKey};
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
use sqlx::sqlite::{
    SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions, SqliteRow,
    SqliteSynchronous,
};
use sqlx::{Row, Sqlite, Transaction};
use std::str::FromStr;
use std::sync::Arc;
use tokio::sync::watch;
use uuid::Uuid;

/// The SQLite implementation of [`Store`].
#[derive(Debug)]
pub struct SqliteStore {
    writer: SqlitePool,
    reader: SqlitePool,
    config: StoreConfig,
    clock: Arc<dyn Clock>,
    wake: Arc<Wakeups>,
    traffic: Arc<Traffic>,
    /// The group committers (`commit.rs`): one writer task makes every pending commit
    /// of this process in one transaction (lease renewals have a second one; both share
    /// the one write connection).
    committers: commit::Committers,
}

/// Opens the group committer's transactions.
#[derive(Debug, Clone)]
struct SqliteTxSource {
    writer: SqlitePool,
    traffic: Arc<Traffic>,
    clock: Arc<dyn Clock>,
}

impl commit::TxSource for SqliteTxSource {
    type Tx = SqliteTx;

    async fn begin(&self) -> Result<SqliteTx> {
        self.traffic.write_transaction();
        Ok(SqliteTx {
            traffic: self.traffic.clone(),
            tx: self.writer.begin_with("BEGIN IMMEDIATE").await?,
            db_now: None,
        })
    }

    fn now(&self) -> DateTime<Utc> {
        micros(self.clock.now())
    }
}

fn ts(t: DateTime<Utc>) -> i64 {
    t.timestamp_micros()
}

fn from_ts(table: &'static str, v: i64) -> Result<DateTime<Utc>> {
    DateTime::from_timestamp_micros(v).ok_or(Error::Corrupt {
        table,
        message: format!("timestamp {v} out of range"),
    })
}

/// The columns of `api_tokens` that make a [`TokenRecord`] (never the hash).
const TOKEN_COLUMNS: &str = "id, name, project, role, created_at, expires_at, revoked_at";

fn sqlite_token(r: &sqlx::sqlite::SqliteRow) -> Result<TokenRecord> {
    let at = |v: Option<i64>| v.map(|v| from_ts("api_tokens", v)).transpose();
    token_from(TokenRow {
        id: parse_uuid("api_tokens", r.try_get::<&str, _>("id")?)?,
        name: r.try_get("name")?,
        project: r.try_get::<&str, _>("project")?,
        role: r.try_get::<&str, _>("role")?,
        created_at: from_ts("api_tokens", r.try_get("created_at")?)?,
        expires_at: at(r.try_get("expires_at")?)?,
        revoked_at: at(r.try_get("revoked_at")?)?,
    })
}

fn parse_uuid(table: &'static str, s: &str) -> Result<Uuid> {
    Uuid::parse_str(s).map_err(|e| Error::Corrupt {
        table,
        message: format!("uuid {s:?}: {e}"),
    })
}

fn parse_json(table: &'static str, s: &str) -> Result<serde_json::Value> {
    serde_json::from_str(s).map_err(|e| Error::Corrupt {
        table,
        message: e.to_string(),
    })
}

fn to_u64(v: i64) -> u64 {
    u64::try_from(v).unwrap_or(0)
}

fn to_i64(v: u64) -> Result<i64> {
    i64::try_from(v).map_err(|_| Error::InvalidInput(format!("{v} is out of range")))
}

fn event_from_row(row: &SqliteRow) -> Result<RecordedEvent> {
    Ok(RecordedEvent {
        position: to_u64(row.try_get("position")?),
        stream: row.try_get("stream")?,
        version: to_u64(row.try_get("version")?),
        event_type: row.try_get("type")?,
        data: parse_json("events", row.try_get::<&str, _>("data")?)?,
        metadata: parse_json("events", row.try_get::<&str, _>("metadata")?)?,
        recorded_at: from_ts("events", row.try_get("recorded_at")?)?,
    })
}

fn run_from_row(row: &SqliteRow) -> Result<Run> {
    let status: String = row.try_get("status")?;
    let lease_until: Option<i64> = row.try_get("lease_until")?;
    Ok(Run {
        id: RunId(parse_uuid("runs", row.try_get::<&str, _>("id")?)?),
        operation_id: OperationId(parse_uuid("runs", row.try_get::<&str, _>("operation_id")?)?),
        vcluster_uid: VClusterId(parse_uuid("runs", row.try_get::<&str, _>("vcluster_uid")?)?),
        status: RunStatus::parse(&status).ok_or(Error::Corrupt {
            table: "runs",
            message: format!("status {status:?}"),
        })?,
        run_at: from_ts("runs", row.try_get("run_at")?)?,
        attempts: row.try_get::<i64, _>("attempts")? as i32,
        lease_owner: row.try_get("lease_owner")?,
        lease_until: lease_until.map(|v| from_ts("runs", v)).transpose()?,
        epoch: row.try_get("epoch")?,
        priority: row.try_get::<i64, _>("priority")? as i32,
    })
}

/// The `(created_at micros, id)` cursor of a time-ordered page.
fn time_cursor(page: &PageRequest) -> Result<(Option<i64>, Option<String>)> {
    let Some(c) = page.after.as_deref() else {
        return Ok((None, None));
    };
    let key = TimeKey::parse(c)?;
    Ok((Some(key.at_micros), Some(key.id.to_string())))
}

const RUN_COLUMNS: &str = "id, operation_id, vcluster_uid, status, run_at, attempts, lease_owner, lease_until, epoch, priority";

/// The database engine's clock in INTEGER microseconds (SQLite's own time, read from
/// the host's clock by the engine: the same for every process on this file, and
/// independent of any process's injected [`Clock`]). Leases and durable timers use it.
const DB_NOW_MICROS: &str = "SELECT CAST(unixepoch('subsec') * 1000000 AS INTEGER)";

/// Microseconds of a duration (saturating).
fn duration_micros(d: Duration) -> i64 {
    d.num_microseconds().unwrap_or(i64::MAX)
}

/// The database's now, in microseconds.
async fn db_now<'e, E: sqlx::SqliteExecutor<'e>>(executor: E) -> Result<i64> {
    Ok(sqlx::query_scalar(DB_NOW_MICROS)
        .fetch_one(executor)
        .await?)
}

/// An open write transaction.
struct SqliteTx {
    tx: Transaction<'static, Sqlite>,
    traffic: Arc<Traffic>,
    /// The database's now, read once per transaction (after the write lock is held).
    db_now: Option<i64>,
}

impl SqliteTx {
    /// The transaction's connection, for one more statement.
    fn conn(&mut self) -> &mut sqlx::SqliteConnection {
        self.traffic.write_statement();
        &mut self.tx
    }

    /// The database's clock for this transaction's queue writes.
    async fn db_now(&mut self) -> Result<i64> {
        if let Some(now) = self.db_now {
            return Ok(now);
        }
        let now = db_now(self.conn()).await?;
        self.db_now = Some(now);
        Ok(now)
    }

    async fn load_steps(&mut self, id: OperationId) -> Result<Vec<OperationStep>> {
        let rows = sqlx::query(
            "SELECT name, state, attempts, started_at, finished_at, error
             FROM operation_steps WHERE operation_id = ? ORDER BY idx",
        )
        .bind(id.to_string())
        .fetch_all(self.conn())
        .await?;
        rows.iter().map(step_from_row).collect()
    }
}

fn step_from_row(row: &SqliteRow) -> Result<OperationStep> {
    let state: String = row.try_get("state")?;
    let started: Option<i64> = row.try_get("started_at")?;
    let finished: Option<i64> = row.try_get("finished_at")?;
    let error: Option<String> = row.try_get("error")?;
    Ok(OperationStep {
        name: row.try_get("name")?,
        state: StepState::parse(&state).ok_or(Error::Corrupt {
            table: "operation_steps",
            message: format!("state {state:?}"),
        })?,
        attempts: row.try_get::<i64, _>("attempts")? as u32,
        started_at: started.map(|v| from_ts("operation_steps", v)).transpose()?,
        finished_at: finished
            .map(|v| from_ts("operation_steps", v))
            .transpose()?,
        error: error
            .map(|e| from_doc("operation_steps", parse_json("operation_steps", &e)?))
            .transpose()?,
    })
}

/// The operation's document without its steps (they live in `operation_steps`).
pub(crate) fn operation_doc(op: &Operation) -> serde_json::Value {
    let mut doc = to_doc(op);
    if let Some(obj) = doc.as_object_mut() {
        obj.insert("steps".into(), serde_json::Value::Array(vec![]));
    }
    doc
}

fn is_live_name_violation(e: &sqlx::Error) -> bool {
    match e {
        sqlx::Error::Database(db) => {
            db.is_unique_violation() && db.message().contains("vclusters.project")
        }
        _ => false,
    }
}

impl TxOps for SqliteTx {
    async fn claim_idempotency(
        &mut self,
        claim: &IdempotencyClaim,
        now: DateTime<Utc>,
        ttl: Duration,
    ) -> Result<Option<OperationId>> {
        let inserted = sqlx::query(
            "INSERT INTO idempotency_keys (project, request_id, request_hash, operation_id, created_at)
             VALUES (?, ?, ?, ?, ?) ON CONFLICT (project, request_id) DO NOTHING",
        )
        .bind(claim.project.as_str())
        .bind(&claim.request_id)
        .bind(&claim.request_hash)
        .bind(claim.operation_id.to_string())
        .bind(ts(now))
        .execute(self.conn())
        .await?
        .rows_affected();
        if inserted == 1 {
            return Ok(None);
        }
        let row = sqlx::query(
            "SELECT request_hash, operation_id, created_at, ended_at FROM idempotency_keys
             WHERE project = ? AND request_id = ?",
        )
        .bind(claim.project.as_str())
        .bind(&claim.request_id)
        .fetch_one(self.conn())
        .await?;
        let hash: String = row.try_get("request_hash")?;
        let op = OperationId(parse_uuid(
            "idempotency_keys",
            row.try_get::<&str, _>("operation_id")?,
        )?);
        let ended = row
            .try_get::<Option<i64>, _>("ended_at")?
            .map(|e| from_ts("idempotency_keys", e))
            .transpose()?;
        // Kept until `ttl` after its operation ended (a running one's key never expires).
        if ended.is_some_and(|e| e < now - ttl) {
            sqlx::query(
                "UPDATE idempotency_keys SET request_hash = ?, operation_id = ?, created_at = ?,
                   ended_at = NULL
                 WHERE project = ? AND request_id = ?",
            )
            .bind(&claim.request_hash)
            .bind(claim.operation_id.to_string())
            .bind(ts(now))
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
        let now = self.db_now().await?;
        let n = sqlx::query(
            "UPDATE runs SET updated_at = ? WHERE id = ? AND epoch = ? AND status = 'leased'",
        )
        .bind(now)
        .bind(lease.run_id.to_string())
        .bind(lease.epoch)
        .execute(self.conn())
        .await?
        .rows_affected();
        if n == 1 {
            Ok(())
        } else {
            Err(Error::LeaseLost {
                run_id: lease.run_id,
                epoch: lease.epoch,
            })
        }
    }

    async fn restore_stream_versions(&mut self, versions: &[(String, u64)]) -> Result<()> {
        for (stream, version) in versions {
            let q = if *version == 0 {
                sqlx::query("DELETE FROM streams WHERE stream = ?").bind(stream.as_str())
            } else {
                sqlx::query("UPDATE streams SET version = ? WHERE stream = ?")
                    .bind(to_i64(*version)?)
                    .bind(stream.as_str())
            };
            q.execute(self.conn()).await?;
        }
        Ok(())
    }

    async fn bump_stream(
        &mut self,
        stream: &str,
        expected: ExpectedVersion,
        count: u64,
    ) -> Result<u64> {
        let count_i = to_i64(count)?;
        let new_version: Option<i64> = match expected {
            ExpectedVersion::Any => Some(
                sqlx::query_scalar(
                    "INSERT INTO streams (stream, version) VALUES (?, ?)
                     ON CONFLICT (stream) DO UPDATE SET version = streams.version + excluded.version
                     RETURNING version",
                )
                .bind(stream)
                .bind(count_i)
                .fetch_one(self.conn())
                .await?,
            ),
            ExpectedVersion::NoStream => {
                sqlx::query_scalar(
                    "INSERT INTO streams (stream, version) VALUES (?, ?)
                     ON CONFLICT (stream) DO NOTHING RETURNING version",
                )
                .bind(stream)
                .bind(count_i)
                .fetch_optional(self.conn())
                .await?
            }
            ExpectedVersion::Exact(v) => {
                sqlx::query_scalar(
                    "UPDATE streams SET version = version + ? WHERE stream = ? AND version = ?
                     RETURNING version",
                )
                .bind(count_i)
                .bind(stream)
                .bind(to_i64(v)?)
                .fetch_optional(self.conn())
                .await?
            }
        };
        match new_version {
            Some(v) => Ok(to_u64(v)),
            None => {
                let actual: Option<i64> =
                    sqlx::query_scalar("SELECT version FROM streams WHERE stream = ?")
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
        let doc: Option<String> = sqlx::query_scalar("SELECT doc FROM vclusters WHERE uid = ?")
            .bind(uid.to_string())
            .fetch_optional(self.conn())
            .await?;
        doc.map(|d| from_doc("vclusters", parse_json("vclusters", &d)?))
            .transpose()
    }

    async fn save_vcluster(&mut self, vc: &VCluster) -> Result<()> {
        let res = sqlx::query(
            "INSERT INTO vclusters (uid, project, name, state, version, doc, created_at, updated_at)
             VALUES (?, ?, ?, ?, ?, ?, ?, ?)
             ON CONFLICT (uid) DO UPDATE SET project = excluded.project, name = excluded.name,
               state = excluded.state, version = excluded.version, doc = excluded.doc,
               updated_at = excluded.updated_at",
        )
        .bind(vc.uid.to_string())
        .bind(vc.project.as_str())
        .bind(vc.name.as_str())
        .bind(vc.state.as_str())
        .bind(to_i64(vc.version)?)
        .bind(to_doc(vc).to_string())
        .bind(ts(vc.created_at))
        .bind(ts(vc.updated_at))
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
        let doc: Option<String> = sqlx::query_scalar("SELECT doc FROM operations WHERE id = ?")
            .bind(id.to_string())
            .fetch_optional(self.conn())
            .await?;
        let Some(doc) = doc else { return Ok(None) };
        let mut op: Operation = from_doc("operations", parse_json("operations", &doc)?)?;
        op.steps = self.load_steps(id).await?;
        Ok(Some(op))
    }

    async fn save_operation(&mut self, op: &Operation) -> Result<()> {
        sqlx::query(
            "INSERT INTO operations (id, project, vcluster_uid, vcluster, kind, state, request_id,
               retry_of, version, doc, created_at, updated_at)
             VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)
             ON CONFLICT (id) DO UPDATE SET state = excluded.state, version = excluded.version,
               doc = excluded.doc, updated_at = excluded.updated_at",
        )
        .bind(op.id.to_string())
        .bind(op.project.as_str())
        .bind(op.vcluster_uid.to_string())
        .bind(op.vcluster.as_str())
        .bind(op.kind.as_str())
        .bind(op.state.as_str())
        .bind(op.request_id.as_deref())
        .bind(op.retry_of.map(|r| r.to_string()))
        .bind(to_i64(op.version)?)
        .bind(operation_doc(op).to_string())
        .bind(ts(op.created_at))
        .bind(ts(op.updated_at))
        .execute(self.conn())
        .await?;
        // The key of an operation that ended starts its 24 h from the end.
        if let (true, Some(request_id)) = (op.done, op.request_id.as_deref()) {
            sqlx::query(
                "UPDATE idempotency_keys SET ended_at = ?
                 WHERE project = ? AND request_id = ? AND operation_id = ? AND ended_at IS NULL",
            )
            .bind(ts(op.updated_at))
            .bind(op.project.as_str())
            .bind(request_id)
            .bind(op.id.to_string())
            .execute(self.conn())
            .await?;
        }
        if op.steps.is_empty() {
            return Ok(());
        }
        // Every step in one statement: the rows as a JSON array, unpacked by json_each
        // (one statement per step was most of a step commit's statements).
        let steps: Vec<serde_json::Value> = op
            .steps
            .iter()
            .map(|step| {
                serde_json::json!([
                    step.name,
                    step.state.as_str(),
                    step.attempts,
                    step.started_at.map(ts),
                    step.finished_at.map(ts),
                    step.error.as_ref().map(|e| to_doc(e).to_string()),
                ])
            })
            .collect();
        sqlx::query(
            "INSERT INTO operation_steps (operation_id, idx, name, state, attempts, started_at,
               finished_at, error)
             SELECT ?, CAST(key AS INTEGER), value ->> 0, value ->> 1, value ->> 2,
               value ->> 3, value ->> 4, value ->> 5
             FROM json_each(?) WHERE true
             ON CONFLICT (operation_id, idx) DO UPDATE SET name = excluded.name,
               state = excluded.state, attempts = excluded.attempts,
               started_at = excluded.started_at, finished_at = excluded.finished_at,
               error = excluded.error",
        )
        .bind(op.id.to_string())
        .bind(serde_json::Value::Array(steps).to_string())
        .execute(self.conn())
        .await?;
        Ok(())
    }

    async fn load_snapshot(&mut self, id: SnapshotId) -> Result<Option<Snapshot>> {
        let doc: Option<String> = sqlx::query_scalar("SELECT doc FROM snapshots WHERE id = ?")
            .bind(id.to_string())
            .fetch_optional(self.conn())
            .await?;
        doc.map(|d| from_doc("snapshots", parse_json("snapshots", &d)?))
            .transpose()
    }

    async fn save_snapshot(&mut self, s: &Snapshot) -> Result<()> {
        sqlx::query(
            "INSERT INTO snapshots (id, project, vcluster, vcluster_uid, state, version, doc,
               created_at, updated_at)
             VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)
             ON CONFLICT (id) DO UPDATE SET state = excluded.state, version = excluded.version,
               doc = excluded.doc, updated_at = excluded.updated_at",
        )
        .bind(s.id.to_string())
        .bind(s.project.as_str())
        .bind(s.vcluster.as_str())
        .bind(s.vcluster_uid.to_string())
        .bind(s.state.as_str())
        .bind(to_i64(s.version)?)
        .bind(to_doc(s).to_string())
        .bind(ts(s.created_at))
        .bind(ts(s.updated_at))
        .execute(self.conn())
        .await?;
        Ok(())
    }

    async fn enqueue_run(&mut self, run: &NewRun) -> Result<()> {
        let now = self.db_now().await?;
        let due = now.saturating_add(run.delay.map(duration_micros).unwrap_or(0).max(0));
        sqlx::query(
            "INSERT INTO runs (id, operation_id, vcluster_uid, status, run_at, priority,
               created_at, updated_at)
             VALUES (?, ?, ?, 'queued', ?, ?, ?, ?)",
        )
        .bind(run.id.to_string())
        .bind(run.operation_id.to_string())
        .bind(run.vcluster_uid.to_string())
        .bind(due)
        .bind(i64::from(run.priority))
        .bind(now)
        .bind(now)
        .execute(self.conn())
        .await?;
        Ok(())
    }

    async fn update_run(&mut self, lease: Lease, update: RunUpdate) -> Result<()> {
        let now = self.db_now().await?;
        let q = match update {
            RunUpdate::Complete => sqlx::query(
                "UPDATE runs SET status = 'done', lease_owner = NULL, lease_until = NULL,
                   updated_at = ? WHERE id = ? AND epoch = ?",
            )
            .bind(now),
            RunUpdate::Reschedule { after } => sqlx::query(
                "UPDATE runs SET status = 'queued', run_at = ?, lease_owner = NULL,
                   lease_until = NULL, updated_at = ? WHERE id = ? AND epoch = ?",
            )
            .bind(now.saturating_add(duration_micros(after).max(0)))
            .bind(now),
            RunUpdate::Renew { lease_for } => sqlx::query(
                "UPDATE runs SET lease_until = ?, updated_at = ? WHERE id = ? AND epoch = ?",
            )
            .bind(now.saturating_add(duration_micros(lease_for).max(0)))
            .bind(now),
        };
        let n = q
            .bind(lease.run_id.to_string())
            .bind(lease.epoch)
            .execute(self.conn())
            .await?
            .rows_affected();
        if n == 1 {
            let history = match update {
                RunUpdate::Renew { lease_for } => sqlx::query(
                    "UPDATE run_leases SET lease_until = ? WHERE run_id = ? AND epoch = ?",
                )
                .bind(now.saturating_add(duration_micros(lease_for).max(0))),
                RunUpdate::Complete | RunUpdate::Reschedule { .. } => sqlx::query(
                    "UPDATE run_leases SET released_at = ? WHERE run_id = ? AND epoch = ?",
                )
                .bind(now),
            };
            history
                .bind(lease.run_id.to_string())
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
        // Wake-ups are in-process, sent after COMMIT by the group committer.
        _runs_changed: bool,
    ) -> Result<u64> {
        let last: i64 = sqlx::query_scalar(
            "UPDATE event_log_head SET last_position = last_position + ? WHERE id = 1
             RETURNING last_position",
        )
        .bind(to_i64(rows.len() as u64)?)
        .fetch_one(self.conn())
        .await?;
        let last = to_u64(last);
        let first = last + 1 - rows.len() as u64;
        for (i, row) in rows.iter_mut().enumerate() {
            row.position = first + i as u64;
        }
        // 7 parameters per row; SQLite allows 32766 per statement.
        for chunk in rows.chunks(1000) {
            let mut qb = sqlx::QueryBuilder::<Sqlite>::new(
                "INSERT INTO events (position, stream, version, type, data, metadata, recorded_at) ",
            );
            qb.push_values(chunk, |mut b, row| {
                b.push_bind(row.position as i64)
                    .push_bind(row.stream.clone())
                    .push_bind(row.version as i64)
                    .push_bind(row.event_type)
                    .push_bind(row.data.to_string())
                    .push_bind(row.metadata.to_string())
                    .push_bind(ts(recorded_at));
            });
            qb.build().execute(self.conn()).await?;
        }
        Ok(last)
    }

    async fn notify_runs(&mut self) -> Result<()> {
        // Wake-ups are in-process, sent after COMMIT by `SqliteStore::commit`.
        Ok(())
    }

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
}

impl SqliteStore {
    /// Opens (creating if missing) the SQLite file of `url` (`sqlite://PATH`).
    pub async fn connect(url: &str, config: StoreConfig, clock: Arc<dyn Clock>) -> Result<Self> {
        let opts = SqliteConnectOptions::from_str(url)?
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            .synchronous(if config.sqlite_synchronous_full {
                SqliteSynchronous::Full
            } else {
                SqliteSynchronous::Normal
            })
            .busy_timeout(std::time::Duration::from_secs(10))
            .foreign_keys(true);
        let in_memory = url.contains(":memory:") || url.contains("mode=memory");
        let writer = SqlitePoolOptions::new()
            .max_connections(1)
            .connect_with(opts.clone())
            .await?;
        let reader = if in_memory {
            writer.clone()
        } else {
            SqlitePoolOptions::new()
                .max_connections(4)
                .connect_with(opts.read_only(false))
                .await?
        };
        let wake = Arc::new(Wakeups::new());
        let traffic: Arc<Traffic> = Arc::default();
        let committers = commit::Committers::spawn(
            SqliteTxSource {
                writer: writer.clone(),
                traffic: traffic.clone(),
                clock: clock.clone(),
            },
            &config,
            &wake,
        );
        Ok(Self {
            committers,
            writer,
            reader,
            config,
            clock,
            wake,
            traffic,
        })
    }

    fn now(&self) -> DateTime<Utc> {
        micros(self.clock.now())
    }

    async fn begin(&self) -> Result<SqliteTx> {
        self.traffic.write_transaction();
        Ok(SqliteTx {
            traffic: self.traffic.clone(),
            tx: self.writer.begin_with("BEGIN IMMEDIATE").await?,
            db_now: None,
        })
    }

    /// The reader pool, for one statement outside a write transaction.
    fn read(&self) -> &SqlitePool {
        self.traffic.read_statement();
        &self.reader
    }

    /// The writer pool, for one statement that is a write transaction by itself.
    fn autocommit_write(&self) -> &SqlitePool {
        self.traffic.write_transaction();
        &self.writer
    }

    async fn operation_with_steps(&self, doc: &str) -> Result<Operation> {
        let mut op: Operation = from_doc("operations", parse_json("operations", doc)?)?;
        let rows = sqlx::query(
            "SELECT name, state, attempts, started_at, finished_at, error
             FROM operation_steps WHERE operation_id = ? ORDER BY idx",
        )
        .bind(op.id.to_string())
        .fetch_all(self.read())
        .await?;
        op.steps = rows.iter().map(step_from_row).collect::<Result<_>>()?;
        Ok(op)
    }
}

#[async_trait]
impl Store for SqliteStore {
    fn backend(&self) -> Backend {
        Backend::Sqlite
    }

    fn config(&self) -> &StoreConfig {
        &self.config
    }

    fn clock(&self) -> &dyn Clock {
        self.clock.as_ref()
    }

    async fn migrate(&self) -> Result<()> {
        let mut migrator = sqlx::migrate!("../../migrations/sqlite");
        migrator.dangerous_set_table_name("ovc_migrations");
        migrator.run(&self.writer).await?;
        Ok(())
    }

    async fn pending_migrations(&self) -> Result<Vec<i64>> {
        let applied = sqlx::query_scalar("SELECT version FROM ovc_migrations WHERE success")
            .fetch_all(self.read())
            .await;
        crate::pending_of(&sqlx::migrate!("../../migrations/sqlite"), applied)
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
             WHERE stream = ? AND version > ? ORDER BY version LIMIT ?",
        )
        .bind(stream.as_str())
        .bind(to_i64(after_version)?)
        .bind(i64::from(limit))
        .fetch_all(self.read())
        .await?;
        rows.iter().map(event_from_row).collect()
    }

    async fn stream_version(&self, stream: &StreamName) -> Result<Option<u64>> {
        let v: Option<i64> = sqlx::query_scalar("SELECT version FROM streams WHERE stream = ?")
            .bind(stream.as_str())
            .fetch_optional(self.read())
            .await?;
        Ok(v.map(to_u64))
    }

    async fn read_all(&self, after_position: u64, limit: u32) -> Result<Vec<RecordedEvent>> {
        let rows = sqlx::query(
            "SELECT position, stream, version, type, data, metadata, recorded_at FROM events
             WHERE position > ? ORDER BY position LIMIT ?",
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

    async fn find_idempotency_key(
        &self,
        project: &ProjectName,
        request_id: &str,
    ) -> Result<Option<IdempotencyRecord>> {
        let cutoff = self.now() - self.config.idempotency_ttl;
        let row = sqlx::query(
            "SELECT request_hash, operation_id, created_at FROM idempotency_keys
             WHERE project = ? AND request_id = ? AND (ended_at IS NULL OR ended_at >= ?)",
        )
        .bind(project.as_str())
        .bind(request_id)
        .bind(ts(cutoff))
        .fetch_optional(self.read())
        .await?;
        row.map(|r| {
            Ok(IdempotencyRecord {
                request_hash: r.try_get("request_hash")?,
                operation_id: OperationId(parse_uuid(
                    "idempotency_keys",
                    r.try_get::<&str, _>("operation_id")?,
                )?),
                created_at: from_ts("idempotency_keys", r.try_get("created_at")?)?,
            })
        })
        .transpose()
    }

    async fn purge_idempotency_keys(&self) -> Result<u64> {
        let cutoff = self.now() - self.config.idempotency_ttl;
        let n = sqlx::query("DELETE FROM idempotency_keys WHERE ended_at < ?")
            .bind(ts(cutoff))
            .execute(self.autocommit_write())
            .await?
            .rows_affected();
        Ok(n)
    }

    async fn get_vcluster(
        &self,
        project: &ProjectName,
        name: &VClusterName,
    ) -> Result<Option<VCluster>> {
        let doc: Option<String> = sqlx::query_scalar(
            "SELECT doc FROM vclusters WHERE project = ? AND name = ?
             ORDER BY state = 'DELETED', created_at DESC LIMIT 1",
        )
        .bind(project.as_str())
        .bind(name.as_str())
        .fetch_optional(self.read())
        .await?;
        doc.map(|d| from_doc("vclusters", parse_json("vclusters", &d)?))
            .transpose()
    }

    async fn get_vcluster_by_uid(&self, uid: VClusterId) -> Result<Option<VCluster>> {
        let doc: Option<String> = sqlx::query_scalar("SELECT doc FROM vclusters WHERE uid = ?")
            .bind(uid.to_string())
            .fetch_optional(self.read())
            .await?;
        doc.map(|d| from_doc("vclusters", parse_json("vclusters", &d)?))
            .transpose()
    }

    async fn list_vclusters(
        &self,
        filter: &VClusterFilter,
        page: &PageRequest,
    ) -> Result<Page<VCluster>> {
        let after = page.after.as_deref().map(VClusterKey::parse).transpose()?;
        let (ap, an, au) = match &after {
            Some(k) => (
                Some(k.project.as_str().to_string()),
                Some(k.name.as_str().to_string()),
                Some(k.uid.to_string()),
            ),
            None => (None, None, None),
        };
        let limit = page.limit();
        let rows: Vec<String> = sqlx::query_scalar(
            "SELECT doc FROM vclusters
             WHERE (?1 IS NULL OR project = ?1) AND (?2 IS NULL OR state = ?2)
               AND (?3 = 1 OR state <> 'DELETED')
               AND (?4 IS NULL OR (project, name, uid) > (?4, ?5, ?6))
               AND (?8 IS NULL OR EXISTS (SELECT 1 FROM json_each(doc, '$.spec.labels')
                                          WHERE key = ?8 AND value = ?9))
             ORDER BY project, name, uid LIMIT ?7",
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
            .iter()
            .map(|d| from_doc::<VCluster>("vclusters", parse_json("vclusters", d)?))
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
        let doc: Option<String> = sqlx::query_scalar("SELECT doc FROM operations WHERE id = ?")
            .bind(id.to_string())
            .fetch_optional(self.read())
            .await?;
        match doc {
            Some(d) => Ok(Some(self.operation_with_steps(&d).await?)),
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
        let rows: Vec<String> = sqlx::query_scalar(
            "SELECT doc FROM operations
             WHERE (?1 IS NULL OR project = ?1) AND (?2 IS NULL OR vcluster = ?2)
               AND (?3 IS NULL OR state = ?3) AND (?4 IS NULL OR kind = ?4)
               AND (?5 IS NULL OR created_at >= ?5)
               AND (?6 IS NULL OR (created_at, id) < (?6, ?7))
             ORDER BY created_at DESC, id DESC LIMIT ?8",
        )
        .bind(filter.project.as_ref().map(|p| p.as_str().to_string()))
        .bind(filter.vcluster.clone())
        .bind(filter.state.map(|s| s.as_str()))
        .bind(filter.kind.map(|k| k.as_str()))
        .bind(filter.since.map(ts))
        .bind(at)
        .bind(aid)
        .bind(limit + 1)
        .fetch_all(self.read())
        .await?;
        let mut items = Vec::with_capacity(rows.len());
        for d in rows.iter().take(limit as usize) {
            items.push(self.operation_with_steps(d).await?);
        }
        let next = if rows.len() as i64 > limit {
            items
                .last()
                .map(|o| TimeKey::new(o.created_at, o.id.as_uuid()).print())
        } else {
            None
        };
        Ok(Page { items, next })
    }

    async fn get_snapshot(&self, id: SnapshotId) -> Result<Option<Snapshot>> {
        let doc: Option<String> = sqlx::query_scalar("SELECT doc FROM snapshots WHERE id = ?")
            .bind(id.to_string())
            .fetch_optional(self.read())
            .await?;
        doc.map(|d| from_doc("snapshots", parse_json("snapshots", &d)?))
            .transpose()
    }

    async fn list_snapshots(
        &self,
        filter: &SnapshotFilter,
        page: &PageRequest,
    ) -> Result<Page<Snapshot>> {
        let (at, aid) = time_cursor(page)?;
        let limit = page.limit();
        let rows: Vec<String> = sqlx::query_scalar(
            "SELECT doc FROM snapshots
             WHERE (?1 IS NULL OR project = ?1) AND (?2 IS NULL OR vcluster = ?2)
               AND (?3 IS NULL OR (created_at, id) > (?3, ?4))
               AND (?6 IS NULL OR state = ?6)
             ORDER BY created_at, id LIMIT ?5",
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
            .iter()
            .map(|d| from_doc::<Snapshot>("snapshots", parse_json("snapshots", d)?))
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
        for table in ["vclusters", "operations", "operation_steps", "snapshots"] {
            let sql = match table {
                "vclusters" => "DELETE FROM vclusters",
                "operations" => "DELETE FROM operations",
                "operation_steps" => "DELETE FROM operation_steps",
                _ => "DELETE FROM snapshots",
            };
            sqlx::query(sql).execute(&mut *tx.tx).await?;
        }
        let mut projector = Projector::default();
        let mut after = 0i64;
        let mut events = 0u64;
        loop {
            let rows = sqlx::query(
                "SELECT position, stream, version, type, data, metadata, recorded_at FROM events
                 WHERE position > ? ORDER BY position LIMIT 1000",
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
                "SELECT json_array(uid, project, name, state, version, doc, created_at,
                            updated_at) FROM vclusters ORDER BY uid",
            )
            .await?,
            operations: q(
                "SELECT json_array(id, project, vcluster_uid, vcluster, kind, state,
                             request_id, retry_of, version, doc, created_at, updated_at)
                           FROM operations ORDER BY id",
            )
            .await?,
            operation_steps: q("SELECT json_array(operation_id, idx, name, state, attempts,
                                  started_at, finished_at, error)
                                FROM operation_steps ORDER BY operation_id, idx")
            .await?,
            snapshots: q(
                "SELECT json_array(id, project, vcluster, vcluster_uid, state, version,
                            doc, created_at, updated_at) FROM snapshots ORDER BY id",
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
        let mut tx = self.begin().await?;
        let now = tx.db_now().await?;
        let until = now.saturating_add(duration_micros(lease_for));
        let sql = "UPDATE runs SET status = 'leased', lease_owner = ?1, lease_until = ?2,
               epoch = epoch + 1, attempts = attempts + 1, updated_at = ?3
             WHERE id IN (
               SELECT r.id FROM runs r
               WHERE r.status <> 'done'
                 AND ((r.status = 'queued' AND r.run_at <= ?3)
                      OR (r.status = 'leased' AND r.lease_until < ?3))
                 AND NOT EXISTS (SELECT 1 FROM runs o WHERE o.vcluster_uid = r.vcluster_uid
                                 AND o.status <> 'done' AND o.seq < r.seq)
               ORDER BY r.priority DESC, r.run_at, r.seq LIMIT ?4)
             RETURNING id, operation_id, vcluster_uid, status, run_at, attempts, lease_owner,
               lease_until, epoch, priority";
        let rows = sqlx::query(sql)
            .bind(owner)
            .bind(until)
            .bind(now)
            .bind(i64::from(max))
            .fetch_all(&mut *tx.tx)
            .await?;
        let runs = rows.iter().map(run_from_row).collect::<Result<Vec<_>>>()?;
        for run in &runs {
            sqlx::query(
                "INSERT INTO run_leases (run_id, epoch, vcluster_uid, owner, claimed_at, lease_until)
                 VALUES (?, ?, ?, ?, ?, ?)",
            )
            .bind(run.id.to_string())
            .bind(run.epoch)
            .bind(run.vcluster_uid.to_string())
            .bind(owner)
            .bind(now)
            .bind(until)
            .execute(&mut *tx.tx)
            .await?;
        }
        tx.commit().await?;
        Ok(runs)
    }

    async fn lease_history(&self, vcluster_uid: Option<VClusterId>) -> Result<Vec<LeaseRecord>> {
        let rows = sqlx::query(
            "SELECT run_id, epoch, vcluster_uid, owner, claimed_at, lease_until, released_at
             FROM run_leases WHERE (?1 IS NULL OR vcluster_uid = ?1)
             ORDER BY claimed_at, run_id, epoch",
        )
        .bind(vcluster_uid.map(|v| v.to_string()))
        .fetch_all(self.read())
        .await?;
        rows.iter()
            .map(|r| {
                let released: Option<i64> = r.try_get("released_at")?;
                Ok(LeaseRecord {
                    run_id: RunId(parse_uuid("run_leases", r.try_get::<&str, _>("run_id")?)?),
                    epoch: r.try_get("epoch")?,
                    vcluster_uid: VClusterId(parse_uuid(
                        "run_leases",
                        r.try_get::<&str, _>("vcluster_uid")?,
                    )?),
                    owner: r.try_get("owner")?,
                    claimed_at: from_ts("run_leases", r.try_get("claimed_at")?)?,
                    lease_until: from_ts("run_leases", r.try_get("lease_until")?)?,
                    released_at: released.map(|v| from_ts("run_leases", v)).transpose()?,
                })
            })
            .collect()
    }

    async fn create_token(&self, token: &TokenRecord, token_sha256: &str) -> Result<()> {
        sqlx::query(
            "INSERT INTO api_tokens
                 (id, name, project, role, token_sha256, created_at, expires_at, revoked_at)
             VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
        )
        .bind(token.id.to_string())
        .bind(&token.name)
        .bind(token.project.as_str())
        .bind(token.role.as_str())
        .bind(token_sha256)
        .bind(ts(token.created_at))
        .bind(token.expires_at.map(ts))
        .bind(token.revoked_at.map(ts))
        .execute(self.autocommit_write())
        .await?;
        Ok(())
    }

    async fn find_token(&self, token_sha256: &str) -> Result<Option<TokenRecord>> {
        let row = sqlx::query(sqlx::AssertSqlSafe(format!(
            "SELECT {TOKEN_COLUMNS} FROM api_tokens WHERE token_sha256 = ?"
        )))
        .bind(token_sha256)
        .fetch_optional(self.read())
        .await?;
        row.as_ref().map(sqlite_token).transpose()
    }

    async fn list_tokens(&self, project: Option<&ProjectName>) -> Result<Vec<TokenRecord>> {
        let rows = sqlx::query(sqlx::AssertSqlSafe(format!(
            "SELECT {TOKEN_COLUMNS} FROM api_tokens
             WHERE (? IS NULL OR project = ?) ORDER BY created_at, id"
        )))
        .bind(project.map(ProjectName::as_str))
        .bind(project.map(ProjectName::as_str))
        .fetch_all(self.read())
        .await?;
        rows.iter().map(sqlite_token).collect()
    }

    async fn revoke_token(&self, id: Uuid) -> Result<Option<TokenRecord>> {
        let row = sqlx::query(sqlx::AssertSqlSafe(format!(
            "UPDATE api_tokens SET revoked_at = COALESCE(revoked_at, ?) WHERE id = ?
             RETURNING {TOKEN_COLUMNS}"
        )))
        .bind(ts(self.now()))
        .bind(id.to_string())
        .fetch_optional(self.autocommit_write())
        .await?;
        row.as_ref().map(sqlite_token).transpose()
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
                .fetch_all(&self.reader)
                .await?;
        // By the database's clock, as the claim compares `run_at` (runs_pending index).
        let oldest_due: Option<i64> = sqlx::query_scalar(
            "SELECT t.n - MIN(r.run_at)
             FROM runs r, (SELECT CAST(unixepoch('subsec') * 1000000 AS INTEGER) AS n) t
             WHERE r.status = 'queued' AND r.run_at <= t.n",
        )
        .fetch_one(self.read())
        .await?;
        // By the store's clock, as the purge computes its cutoff (ended_at index).
        let cutoff = self.now() - self.config.idempotency_ttl;
        let (expired, oldest_ended): (i64, Option<i64>) = sqlx::query_as(
            "SELECT COUNT(*), MIN(ended_at) FROM idempotency_keys WHERE ended_at < ?",
        )
        .bind(ts(cutoff))
        .fetch_one(self.read())
        .await?;
        Ok(StoreStats {
            oldest_due_run_age: oldest_due
                .map(|us| std::time::Duration::from_micros(u64::try_from(us).unwrap_or(0)))
                .unwrap_or_default(),
            idempotency_keys_expired: to_u64(expired),
            idempotency_purge_lag: oldest_ended
                .map(|t| {
                    std::time::Duration::from_micros(u64::try_from(ts(cutoff) - t).unwrap_or(0))
                })
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
            "SELECT {RUN_COLUMNS} FROM runs WHERE id = ?"
        )))
        .bind(id.to_string())
        .fetch_optional(self.read())
        .await?;
        row.as_ref().map(run_from_row).transpose()
    }

    async fn runs_of_operation(&self, operation_id: OperationId) -> Result<Vec<Run>> {
        let rows = sqlx::query(sqlx::AssertSqlSafe(format!(
            "SELECT {RUN_COLUMNS} FROM runs WHERE operation_id = ? ORDER BY seq"
        )))
        .bind(operation_id.to_string())
        .fetch_all(self.read())
        .await?;
        rows.iter().map(run_from_row).collect()
    }

    async fn database_now(&self) -> Result<DateTime<Utc>> {
        from_ts("clock", db_now(self.read()).await?)
    }

    fn traffic(&self) -> crate::TrafficCounts {
        self.traffic.snapshot()
    }

    async fn next_run_due_in(&self) -> Result<Option<std::time::Duration>> {
        let v: Option<i64> = sqlx::query_scalar(
            "SELECT MIN(t) - CAST(unixepoch('subsec') * 1000000 AS INTEGER) FROM (
               SELECT MIN(run_at) AS t FROM runs WHERE status = 'queued'
               UNION ALL SELECT MIN(lease_until) FROM runs WHERE status = 'leased')",
        )
        .fetch_one(self.read())
        .await?;
        Ok(v.map(|us| std::time::Duration::from_micros(u64::try_from(us).unwrap_or(0))))
    }
}
