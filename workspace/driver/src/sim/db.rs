//! The simulated host's tables (migrations `0002_sim_host.sql`) on SQLite or PostgreSQL.
//!
//! `sim_objects(kind, namespace, name, doc)` holds namespaces (`kind = 'namespace'`,
//! `name = ''`) and releases (`kind = 'release'`) as JSON documents; `sim_effects` counts
//! state changes; `sim_fault_hits` counts calls that matched a fault rule; `sim_calls`
//! (migration `0010_sim_calls.sql`) logs calls when the config asks for it.
//!
//! Writes go through [`Tx`]: SQLite starts it with `BEGIN IMMEDIATE` (the write lock is
//! taken up front, so two processes never deadlock upgrading a read lock); PostgreSQL
//! locks the namespace row with `SELECT ... FOR UPDATE` ([`Tx::lock`]), which serializes
//! every change inside one namespace across processes.

use super::{CallRecord, SimError};
use ovc_types::OperationId;
use serde_json::Value;
use sqlx::postgres::{PgConnectOptions, PgPool, PgPoolOptions};
use sqlx::sqlite::SqliteSynchronous;
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions};
use sqlx::{Postgres, Sqlite, Transaction};
use std::str::FromStr;
use std::time::Duration;

/// `kind` of namespace rows.
pub(crate) const NAMESPACE: &str = "namespace";
/// `kind` of release rows.
pub(crate) const RELEASE: &str = "release";

/// A connection pool on either backend.
#[derive(Debug, Clone)]
pub(crate) enum Pool {
    Sqlite(SqlitePool),
    Postgres(PgPool),
}

/// An open write transaction.
pub(crate) enum Tx {
    Sqlite(Transaction<'static, Sqlite>),
    Postgres(Transaction<'static, Postgres>),
}

/// A stored document with its address.
pub(crate) struct Row {
    pub namespace: String,
    pub name: String,
    pub doc: Value,
}

fn parse_text(kind: &str, namespace: &str, name: &str, text: &str) -> Result<Value, SimError> {
    serde_json::from_str(text).map_err(|e| SimError::Corrupt {
        what: format!("{kind} {namespace}/{name}"),
        message: e.to_string(),
    })
}

fn checked_schema(schema: &str) -> Result<&str, SimError> {
    let ok = !schema.is_empty()
        && schema.len() <= 63
        && schema
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
        && !schema.starts_with(|c: char| c.is_ascii_digit());
    if ok {
        Ok(schema)
    } else {
        Err(SimError::InvalidSchema(schema.to_string()))
    }
}

fn count(v: i64) -> u64 {
    u64::try_from(v).unwrap_or(0)
}

impl Pool {
    /// Opens a pool on `url` (`sqlite://PATH` of an existing file, or `postgres://...`
    /// with every table in `pg_schema` if given).
    pub(crate) async fn connect(url: &str, pg_schema: Option<&str>) -> Result<Self, SimError> {
        if url.starts_with("sqlite:") {
            let opts = SqliteConnectOptions::from_str(url)?
                .create_if_missing(false)
                .journal_mode(SqliteJournalMode::Wal)
                .synchronous(SqliteSynchronous::Full)
                .busy_timeout(Duration::from_secs(10));
            let pool = SqlitePoolOptions::new()
                .max_connections(4)
                .connect_with(opts)
                .await?;
            Ok(Pool::Sqlite(pool))
        } else if url.starts_with("postgres:") || url.starts_with("postgresql:") {
            let mut opts = PgConnectOptions::from_str(url)?.application_name("ovc-sim");
            if let Some(schema) = pg_schema {
                opts = opts.options([("search_path", checked_schema(schema)?)]);
            }
            let pool = PgPoolOptions::new()
                .max_connections(8)
                .acquire_timeout(Duration::from_secs(10))
                .connect_with(opts)
                .await?;
            Ok(Pool::Postgres(pool))
        } else {
            Err(SimError::UnsupportedUrl(url.to_string()))
        }
    }

    /// Closes every connection.
    pub(crate) async fn close(&self) {
        match self {
            Pool::Sqlite(p) => p.close().await,
            Pool::Postgres(p) => p.close().await,
        }
    }

    /// Starts a write transaction.
    pub(crate) async fn begin(&self) -> Result<Tx, SimError> {
        Ok(match self {
            Pool::Sqlite(p) => Tx::Sqlite(p.begin_with("BEGIN IMMEDIATE").await?),
            Pool::Postgres(p) => Tx::Postgres(p.begin().await?),
        })
    }

    /// One document (committed state, no lock).
    pub(crate) async fn get(
        &self,
        kind: &str,
        namespace: &str,
        name: &str,
    ) -> Result<Option<Value>, SimError> {
        match self {
            Pool::Sqlite(p) => {
                let row: Option<(String,)> = sqlx::query_as(
                    "SELECT doc FROM sim_objects WHERE kind = ? AND namespace = ? AND name = ?",
                )
                .bind(kind)
                .bind(namespace)
                .bind(name)
                .fetch_optional(p)
                .await?;
                row.map(|(text,)| parse_text(kind, namespace, name, &text))
                    .transpose()
            }
            Pool::Postgres(p) => {
                let row: Option<(Value,)> = sqlx::query_as(
                    "SELECT doc FROM sim_objects WHERE kind = $1 AND namespace = $2 AND name = $3",
                )
                .bind(kind)
                .bind(namespace)
                .bind(name)
                .fetch_optional(p)
                .await?;
                Ok(row.map(|(doc,)| doc))
            }
        }
    }

    /// Every document of `kind`, ordered by (namespace, name).
    pub(crate) async fn list(&self, kind: &str) -> Result<Vec<Row>, SimError> {
        match self {
            Pool::Sqlite(p) => {
                let rows: Vec<(String, String, String)> = sqlx::query_as(
                    "SELECT namespace, name, doc FROM sim_objects WHERE kind = ?
                     ORDER BY namespace, name",
                )
                .bind(kind)
                .fetch_all(p)
                .await?;
                rows.into_iter()
                    .map(|(namespace, name, text)| {
                        let doc = parse_text(kind, &namespace, &name, &text)?;
                        Ok(Row {
                            namespace,
                            name,
                            doc,
                        })
                    })
                    .collect()
            }
            Pool::Postgres(p) => {
                let rows: Vec<(String, String, Value)> = sqlx::query_as(
                    "SELECT namespace, name, doc FROM sim_objects WHERE kind = $1
                     ORDER BY namespace, name",
                )
                .bind(kind)
                .fetch_all(p)
                .await?;
                Ok(rows
                    .into_iter()
                    .map(|(namespace, name, doc)| Row {
                        namespace,
                        name,
                        doc,
                    })
                    .collect())
            }
        }
    }

    /// Every effect counter.
    pub(crate) async fn effects(&self) -> Result<Vec<(String, u64)>, SimError> {
        let rows: Vec<(String, i64)> = match self {
            Pool::Sqlite(p) => {
                sqlx::query_as("SELECT effect, count FROM sim_effects ORDER BY effect")
                    .fetch_all(p)
                    .await?
            }
            Pool::Postgres(p) => {
                sqlx::query_as("SELECT effect, count FROM sim_effects ORDER BY effect")
                    .fetch_all(p)
                    .await?
            }
        };
        Ok(rows.into_iter().map(|(e, n)| (e, count(n))).collect())
    }

    /// Appends one call to `sim_calls`.
    pub(crate) async fn record_call(&self, call: &CallRecord) -> Result<(), SimError> {
        match self {
            Pool::Sqlite(p) => {
                sqlx::query(
                    "INSERT INTO sim_calls (method, namespace, operation_id, workflow, step,
                       epoch, owner) VALUES (?, ?, ?, ?, ?, ?, ?)",
                )
                .bind(&call.method)
                .bind(&call.namespace)
                .bind(call.operation_id.map(|o| o.to_string()))
                .bind(&call.workflow)
                .bind(&call.step)
                .bind(call.epoch)
                .bind(&call.owner)
                .execute(p)
                .await?;
            }
            Pool::Postgres(p) => {
                sqlx::query(
                    "INSERT INTO sim_calls (method, namespace, operation_id, workflow, step,
                       epoch, owner) VALUES ($1, $2, $3, $4, $5, $6, $7)",
                )
                .bind(&call.method)
                .bind(&call.namespace)
                .bind(call.operation_id.map(|o| o.0))
                .bind(&call.workflow)
                .bind(&call.step)
                .bind(call.epoch)
                .bind(&call.owner)
                .execute(p)
                .await?;
            }
        }
        Ok(())
    }

    /// Every recorded call, oldest first.
    pub(crate) async fn calls(&self) -> Result<Vec<CallRecord>, SimError> {
        type R = (
            i64,
            String,
            String,
            Option<String>,
            String,
            String,
            Option<i64>,
            Option<String>,
        );
        let rows: Vec<R> = match self {
            Pool::Sqlite(p) => {
                sqlx::query_as(
                    "SELECT seq, method, namespace, operation_id, workflow, step, epoch, owner
                     FROM sim_calls ORDER BY seq",
                )
                .fetch_all(p)
                .await?
            }
            Pool::Postgres(p) => {
                sqlx::query_as(
                    "SELECT seq, method, namespace, operation_id::text, workflow, step, epoch,
                       owner FROM sim_calls ORDER BY seq",
                )
                .fetch_all(p)
                .await?
            }
        };
        rows.into_iter()
            .map(
                |(seq, method, namespace, op, workflow, step, epoch, owner)| {
                    let operation_id = op
                        .map(|o| {
                            uuid::Uuid::parse_str(&o).map(OperationId).map_err(|e| {
                                SimError::Corrupt {
                                    what: format!("sim_calls {seq}"),
                                    message: e.to_string(),
                                }
                            })
                        })
                        .transpose()?;
                    Ok(CallRecord {
                        seq: count(seq),
                        method,
                        namespace,
                        operation_id,
                        workflow,
                        step,
                        epoch,
                        owner,
                    })
                },
            )
            .collect()
    }

    /// Counts one more call of (operation, workflow, step) that matched a fault rule;
    /// returns the count including this call. One atomic statement.
    pub(crate) async fn hit_fault(
        &self,
        operation_id: OperationId,
        workflow: &str,
        step: &str,
    ) -> Result<u64, SimError> {
        let hits: i64 = match self {
            Pool::Sqlite(p) => {
                sqlx::query_scalar(
                    "INSERT INTO sim_fault_hits (operation_id, workflow, step, hits)
                     VALUES (?, ?, ?, 1)
                     ON CONFLICT (operation_id, workflow, step)
                     DO UPDATE SET hits = sim_fault_hits.hits + 1
                     RETURNING hits",
                )
                .bind(operation_id.to_string())
                .bind(workflow)
                .bind(step)
                .fetch_one(p)
                .await?
            }
            Pool::Postgres(p) => {
                sqlx::query_scalar(
                    "INSERT INTO sim_fault_hits (operation_id, workflow, step, hits)
                     VALUES ($1, $2, $3, 1)
                     ON CONFLICT (operation_id, workflow, step)
                     DO UPDATE SET hits = sim_fault_hits.hits + 1
                     RETURNING hits",
                )
                .bind(operation_id.as_uuid())
                .bind(workflow)
                .bind(step)
                .fetch_one(p)
                .await?
            }
        };
        Ok(count(hits))
    }
}

impl Tx {
    /// One document, locked until the end of the transaction (PostgreSQL `FOR UPDATE`;
    /// SQLite already holds the database's write lock).
    pub(crate) async fn lock(
        &mut self,
        kind: &str,
        namespace: &str,
        name: &str,
    ) -> Result<Option<Value>, SimError> {
        match self {
            Tx::Sqlite(tx) => {
                let row: Option<(String,)> = sqlx::query_as(
                    "SELECT doc FROM sim_objects WHERE kind = ? AND namespace = ? AND name = ?",
                )
                .bind(kind)
                .bind(namespace)
                .bind(name)
                .fetch_optional(&mut **tx)
                .await?;
                row.map(|(text,)| parse_text(kind, namespace, name, &text))
                    .transpose()
            }
            Tx::Postgres(tx) => {
                let row: Option<(Value,)> = sqlx::query_as(
                    "SELECT doc FROM sim_objects WHERE kind = $1 AND namespace = $2 AND name = $3
                     FOR UPDATE",
                )
                .bind(kind)
                .bind(namespace)
                .bind(name)
                .fetch_optional(&mut **tx)
                .await?;
                Ok(row.map(|(doc,)| doc))
            }
        }
    }

    /// The documents of `kind` in `namespace`, ordered by name (read after [`Tx::lock`]
    /// of the namespace, so they are current).
    pub(crate) async fn list_in(
        &mut self,
        kind: &str,
        namespace: &str,
    ) -> Result<Vec<Row>, SimError> {
        match self {
            Tx::Sqlite(tx) => {
                let rows: Vec<(String, String)> = sqlx::query_as(
                    "SELECT name, doc FROM sim_objects WHERE kind = ? AND namespace = ?
                     ORDER BY name",
                )
                .bind(kind)
                .bind(namespace)
                .fetch_all(&mut **tx)
                .await?;
                rows.into_iter()
                    .map(|(name, text)| {
                        let doc = parse_text(kind, namespace, &name, &text)?;
                        Ok(Row {
                            namespace: namespace.to_string(),
                            name,
                            doc,
                        })
                    })
                    .collect()
            }
            Tx::Postgres(tx) => {
                let rows: Vec<(String, Value)> = sqlx::query_as(
                    "SELECT name, doc FROM sim_objects WHERE kind = $1 AND namespace = $2
                     ORDER BY name FOR UPDATE",
                )
                .bind(kind)
                .bind(namespace)
                .fetch_all(&mut **tx)
                .await?;
                Ok(rows
                    .into_iter()
                    .map(|(name, doc)| Row {
                        namespace: namespace.to_string(),
                        name,
                        doc,
                    })
                    .collect())
            }
        }
    }

    /// Inserts the document unless the row exists; true when it was inserted.
    pub(crate) async fn insert_if_absent(
        &mut self,
        kind: &str,
        namespace: &str,
        name: &str,
        doc: &Value,
    ) -> Result<bool, SimError> {
        let n = match self {
            Tx::Sqlite(tx) => sqlx::query(
                "INSERT INTO sim_objects (kind, namespace, name, doc) VALUES (?, ?, ?, ?)
                 ON CONFLICT (kind, namespace, name) DO NOTHING",
            )
            .bind(kind)
            .bind(namespace)
            .bind(name)
            .bind(doc.to_string())
            .execute(&mut **tx)
            .await?
            .rows_affected(),
            Tx::Postgres(tx) => sqlx::query(
                "INSERT INTO sim_objects (kind, namespace, name, doc) VALUES ($1, $2, $3, $4)
                 ON CONFLICT (kind, namespace, name) DO NOTHING",
            )
            .bind(kind)
            .bind(namespace)
            .bind(name)
            .bind(doc)
            .execute(&mut **tx)
            .await?
            .rows_affected(),
        };
        Ok(n == 1)
    }

    /// Inserts or replaces the document.
    pub(crate) async fn put(
        &mut self,
        kind: &str,
        namespace: &str,
        name: &str,
        doc: &Value,
    ) -> Result<(), SimError> {
        match self {
            Tx::Sqlite(tx) => {
                sqlx::query(
                    "INSERT INTO sim_objects (kind, namespace, name, doc) VALUES (?, ?, ?, ?)
                     ON CONFLICT (kind, namespace, name) DO UPDATE SET doc = excluded.doc",
                )
                .bind(kind)
                .bind(namespace)
                .bind(name)
                .bind(doc.to_string())
                .execute(&mut **tx)
                .await?;
            }
            Tx::Postgres(tx) => {
                sqlx::query(
                    "INSERT INTO sim_objects (kind, namespace, name, doc) VALUES ($1, $2, $3, $4)
                     ON CONFLICT (kind, namespace, name) DO UPDATE SET doc = excluded.doc",
                )
                .bind(kind)
                .bind(namespace)
                .bind(name)
                .bind(doc)
                .execute(&mut **tx)
                .await?;
            }
        }
        Ok(())
    }

    /// Deletes the row; true when it existed.
    pub(crate) async fn delete(
        &mut self,
        kind: &str,
        namespace: &str,
        name: &str,
    ) -> Result<bool, SimError> {
        let n = match self {
            Tx::Sqlite(tx) => {
                sqlx::query("DELETE FROM sim_objects WHERE kind = ? AND namespace = ? AND name = ?")
                    .bind(kind)
                    .bind(namespace)
                    .bind(name)
                    .execute(&mut **tx)
                    .await?
                    .rows_affected()
            }
            Tx::Postgres(tx) => sqlx::query(
                "DELETE FROM sim_objects WHERE kind = $1 AND namespace = $2 AND name = $3",
            )
            .bind(kind)
            .bind(namespace)
            .bind(name)
            .execute(&mut **tx)
            .await?
            .rows_affected(),
        };
        Ok(n > 0)
    }

    /// Deletes every object in `namespace` (the namespace row included); how many.
    pub(crate) async fn delete_namespace(&mut self, namespace: &str) -> Result<u64, SimError> {
        Ok(match self {
            Tx::Sqlite(tx) => sqlx::query("DELETE FROM sim_objects WHERE namespace = ?")
                .bind(namespace)
                .execute(&mut **tx)
                .await?
                .rows_affected(),
            Tx::Postgres(tx) => sqlx::query("DELETE FROM sim_objects WHERE namespace = $1")
                .bind(namespace)
                .execute(&mut **tx)
                .await?
                .rows_affected(),
        })
    }

    /// Counts one effect.
    pub(crate) async fn bump_effect(&mut self, effect: &str) -> Result<(), SimError> {
        match self {
            Tx::Sqlite(tx) => {
                sqlx::query(
                    "INSERT INTO sim_effects (effect, count) VALUES (?, 1)
                     ON CONFLICT (effect) DO UPDATE SET count = sim_effects.count + 1",
                )
                .bind(effect)
                .execute(&mut **tx)
                .await?;
            }
            Tx::Postgres(tx) => {
                sqlx::query(
                    "INSERT INTO sim_effects (effect, count) VALUES ($1, 1)
                     ON CONFLICT (effect) DO UPDATE SET count = sim_effects.count + 1",
                )
                .bind(effect)
                .execute(&mut **tx)
                .await?;
            }
        }
        Ok(())
    }

    /// Rolls back; a failure only means the connection is discarded, so it is logged.
    pub(crate) async fn rollback_quietly(self) {
        let result = match self {
            Tx::Sqlite(tx) => tx.rollback().await,
            Tx::Postgres(tx) => tx.rollback().await,
        };
        if let Err(e) = result {
            tracing::debug!(error = %e, "sim host: rollback failed");
        }
    }

    /// Commits.
    pub(crate) async fn commit(self) -> Result<(), SimError> {
        match self {
            Tx::Sqlite(tx) => tx.commit().await?,
            Tx::Postgres(tx) => tx.commit().await?,
        }
        Ok(())
    }
}
