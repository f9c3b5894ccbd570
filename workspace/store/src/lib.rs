//! The durable store of ovc (DESIGN.md §4–5): the append-only event log, idempotency
//! keys, the inline projections (`vclusters`, `operations`, `operation_steps`,
//! `snapshots`) and the run queue with leases and fencing epochs.
//!
//! One trait, [`Store`], two implementations: [`sqlite::SqliteStore`] (one file, the
//! embedded default) and [`postgres::PgStore`] (production, many workers). Both run the
//! same write algorithm ([`commit`]), and one conformance suite (`tests/conformance.rs`)
//! runs against both.
//!
//! Every write is a [`Commit`]: an optional idempotency claim, appends with expected
//! versions, runs to enqueue, and an optional lease-fenced update of the caller's run,
//! all in one transaction that also updates the projections.

mod batch;
mod commit;
pub mod error;
pub mod housekeeping;
pub mod model;
pub mod page_token;
pub mod postgres;
pub mod sqlite;
pub mod submissions;
mod traffic;
mod wake;

pub use error::{Error, Result};
pub use model::*;
pub use submissions::{RuleTables, Submission, SubmissionOutcome};
pub use traffic::TrafficCounts;

use async_trait::async_trait;
use chrono::{DateTime, Duration, Utc};
use ovc_types::event::StreamName;
use ovc_types::resource::{Operation, Snapshot, VCluster};
use ovc_types::time::{Clock, SystemClock};
use ovc_types::{OperationId, ProjectName, RunId, SnapshotId, VClusterId, VClusterName};
use std::sync::Arc;
use tokio::sync::watch;

/// The store: event log, idempotency keys, projections and run queue.
#[async_trait]
pub trait Store: Send + Sync + std::fmt::Debug {
    /// Which database this is.
    fn backend(&self) -> Backend;

    /// The limits in force.
    fn config(&self) -> &StoreConfig;

    /// The clock the store stamps events and leases with.
    fn clock(&self) -> &dyn Clock;

    /// Applies pending migrations (in the store's own `ovc_migrations` table).
    async fn migrate(&self) -> Result<()>;

    /// Rewrites the state-machine tables `ovc_submit` answers from (PostgreSQL) with
    /// `tables`, the registry's ([`submissions::RuleTables::of`]); stores without SQL
    /// enqueue ignore them.
    async fn sync_call_rules(&self, tables: &submissions::RuleTables) -> Result<()> {
        let _ = tables;
        Ok(())
    }

    /// The versions of the migrations this build has that the database has not applied
    /// (all of them when it was never migrated); empty when the schema is current.
    async fn pending_migrations(&self) -> Result<Vec<i64>>;

    /// Performs one atomic commit (see [`Commit`]).
    async fn commit(&self, commit: Commit) -> Result<CommitOutcome>;

    /// Events of `stream` with version > `after_version`, oldest first, at most `limit`.
    async fn read_stream(
        &self,
        stream: &StreamName,
        after_version: u64,
        limit: u32,
    ) -> Result<Vec<RecordedEvent>>;

    /// The current version of `stream` (`None`: no such stream).
    async fn stream_version(&self, stream: &StreamName) -> Result<Option<u64>>;

    /// All events with position > `after_position`, in position order, at most `limit`.
    /// Positions are gapless and become visible in order: a reader that asks again
    /// with its last position never skips an event.
    async fn read_all(&self, after_position: u64, limit: u32) -> Result<Vec<RecordedEvent>>;

    /// The position of the last committed event (0 when the log is empty).
    async fn head_position(&self) -> Result<u64>;

    /// Changes when new events may be readable (a hint; always re-read to be sure).
    fn watch_events(&self) -> watch::Receiver<u64>;

    /// Changes when runs may have become claimable (a hint).
    fn watch_runs(&self) -> watch::Receiver<u64>;

    /// Changes when an `ovc_submit` call may have committed (a hint; its own NOTIFY
    /// channel, so step commits do not wake the acceptor); `None` on stores without SQL
    /// enqueue.
    fn watch_submissions(&self) -> Option<watch::Receiver<u64>> {
        None
    }

    /// The idempotency key `(project, request_id)`, if stored and not expired: a key
    /// expires `idempotency_ttl` after its operation ended (never while it runs).
    async fn find_idempotency_key(
        &self,
        project: &ProjectName,
        request_id: &str,
    ) -> Result<Option<IdempotencyRecord>>;

    /// Deletes the keys whose operation ended more than `idempotency_ttl` ago; returns
    /// how many.
    async fn purge_idempotency_keys(&self) -> Result<u64>;

    /// The vcluster `project/name`: the live one, else the most recently deleted.
    async fn get_vcluster(
        &self,
        project: &ProjectName,
        name: &VClusterName,
    ) -> Result<Option<VCluster>>;

    /// The vcluster with this uid.
    async fn get_vcluster_by_uid(&self, uid: VClusterId) -> Result<Option<VCluster>>;

    /// Vclusters ordered by (project, name, uid).
    async fn list_vclusters(
        &self,
        filter: &VClusterFilter,
        page: &PageRequest,
    ) -> Result<Page<VCluster>>;

    /// The operation with this id, with its steps.
    async fn get_operation(&self, id: OperationId) -> Result<Option<Operation>>;

    /// Operations ordered by (created_at, id).
    async fn list_operations(
        &self,
        filter: &OperationFilter,
        page: &PageRequest,
    ) -> Result<Page<Operation>>;

    /// The snapshot with this id.
    async fn get_snapshot(&self, id: SnapshotId) -> Result<Option<Snapshot>>;

    /// Snapshots ordered by (created_at, id).
    async fn list_snapshots(
        &self,
        filter: &SnapshotFilter,
        page: &PageRequest,
    ) -> Result<Page<Snapshot>>;

    /// Empties the projection tables and refolds every event into them, in one
    /// transaction.
    async fn rebuild_projections(&self) -> Result<RebuildReport>;

    /// Every projection row in canonical form (for comparing tables).
    async fn dump_projections(&self) -> Result<ProjectionDump>;

    /// Claims up to `max` due runs for `owner` with a lease of `lease_for`: the oldest
    /// due run of each vcluster whose earlier runs are all done, or a leased run whose
    /// lease expired (stolen). Each claim bumps the run's epoch. "Due", "expired" and the
    /// new lease's end are all reckoned by the database's clock, never the caller's.
    async fn claim_runs(&self, owner: &str, lease_for: Duration, max: u32) -> Result<Vec<Run>>;

    /// Every claim of runs of `vcluster_uid` (all vclusters when `None`), oldest first.
    async fn lease_history(&self, vcluster_uid: Option<VClusterId>) -> Result<Vec<LeaseRecord>>;

    /// Stores a token (all of `token`'s fields): only `token_sha256` (hex) is kept of its
    /// secret.
    async fn create_token(&self, token: &TokenRecord, token_sha256: &str) -> Result<()>;

    /// The token whose SHA-256 is `token_sha256`, revoked and expired ones included
    /// (the caller refuses those: [`TokenRecord::refusal`]).
    async fn find_token(&self, token_sha256: &str) -> Result<Option<TokenRecord>>;

    /// Every token (of `project`, when given), oldest first; never their hashes.
    async fn list_tokens(&self, project: Option<&ProjectName>) -> Result<Vec<TokenRecord>>;

    /// Revokes the token `id` now (a revoked token keeps its first `revoked_at`);
    /// `None`: no such token.
    async fn revoke_token(&self, id: uuid::Uuid) -> Result<Option<TokenRecord>>;

    /// Queue depth, lease steals, operations by kind and state, head position.
    async fn stats(&self) -> Result<StoreStats>;

    /// A run by id.
    async fn get_run(&self, id: RunId) -> Result<Option<Run>>;

    /// The runs of an operation, oldest first.
    async fn runs_of_operation(&self, operation_id: OperationId) -> Result<Vec<Run>>;

    /// How long, by the database's clock, until the next queued run becomes due or the
    /// next lease expires (zero when one already is; `None`: idle). A duration, not a
    /// time, so a caller whose clock is off still sleeps the right amount.
    async fn next_run_due_in(&self) -> Result<Option<std::time::Duration>>;

    /// The database's clock now (PostgreSQL `clock_timestamp()`, SQLite
    /// `unixepoch('subsec')`): the clock of run times and leases, for callers that
    /// compare those with event times (`ovc bench workflows`).
    async fn database_now(&self) -> Result<DateTime<Utc>>;

    /// This process's traffic to the database so far (write transactions, statements);
    /// zeros for stores that do not count.
    fn traffic(&self) -> TrafficCounts {
        TrafficCounts::default()
    }

    /// Claims up to `max` committed `ovc_submit` calls (enqueue from SQL, see
    /// [`submissions`]) not yet accepted, oldest first, each held for `hold` so that one
    /// worker accepts it at a time. Empty on stores without SQL enqueue (SQLite).
    async fn claim_submissions(&self, hold: Duration, max: u32) -> Result<Vec<Submission>> {
        let _ = (hold, max);
        Ok(Vec::new())
    }

    /// Records how the submission `id` ended; a settled one is left as it is.
    async fn settle_submission(&self, id: OperationId, outcome: &SubmissionOutcome) -> Result<()> {
        let _ = (id, outcome);
        Ok(())
    }

    /// Extends `lease` to the database's now + `lease_for`; `LeaseLost` if the epoch moved.
    async fn renew_lease(&self, lease: Lease, lease_for: Duration) -> Result<()> {
        self.commit(Commit {
            fence: Some(lease),
            run_update: Some(RunUpdate::Renew { lease_for }),
            ..Commit::default()
        })
        .await?;
        Ok(())
    }
}

/// Opens the store at `url` (`sqlite://PATH` or `postgres://...`) with the system clock.
/// Does not migrate; call [`Store::migrate`].
pub async fn open(url: &str, config: StoreConfig) -> Result<Arc<dyn Store>> {
    open_with_clock(url, config, Arc::new(SystemClock)).await
}

/// Like [`open`], with an injected clock.
pub async fn open_with_clock(
    url: &str,
    config: StoreConfig,
    clock: Arc<dyn Clock>,
) -> Result<Arc<dyn Store>> {
    if url.starts_with("sqlite:") {
        Ok(Arc::new(
            sqlite::SqliteStore::connect(url, config, clock).await?,
        ))
    } else if url.starts_with("postgres:") || url.starts_with("postgresql:") {
        Ok(Arc::new(
            postgres::PgStore::connect(url, config, clock).await?,
        ))
    } else {
        Err(Error::UnsupportedUrl(redact_url(url)))
    }
}

/// `url` with its password replaced by `***`, for printing: the userinfo's password
/// (`postgres://user:PASSWORD@host/db`, also when it holds a raw `@`) and any query
/// parameter whose name contains `password` (`?password=`, `?sslpassword=`).
pub fn redact_url(url: &str) -> String {
    let (head, query) = match url.split_once('?') {
        Some((h, q)) => (h, Some(q)),
        None => (url, None),
    };
    let mut out = match (head.find("://"), head.rfind('@')) {
        (Some(scheme), Some(at)) if at > scheme => {
            let userinfo = &head[scheme + 3..at];
            match userinfo.split_once(':') {
                Some((user, _password)) => {
                    format!("{}{user}:***{}", &head[..scheme + 3], &head[at..])
                }
                None => head.to_string(),
            }
        }
        _ => head.to_string(),
    };
    if let Some(query) = query {
        out.push('?');
        let params: Vec<String> = query
            .split('&')
            .map(|p| match p.split_once('=') {
                Some((k, _)) if k.to_ascii_lowercase().contains("password") => format!("{k}=***"),
                _ => p.to_string(),
            })
            .collect();
        out.push_str(&params.join("&"));
    }
    out
}

/// Truncates to microseconds, the precision both databases keep, so what is written
/// equals what is read back.
pub(crate) fn micros(t: DateTime<Utc>) -> DateTime<Utc> {
    DateTime::from_timestamp_micros(t.timestamp_micros()).unwrap_or(t)
}

/// A stored JSON document → `T`, as a typed corruption error on failure.
pub(crate) fn from_doc<T: serde::de::DeserializeOwned>(
    table: &'static str,
    doc: serde_json::Value,
) -> Result<T> {
    serde_json::from_value(doc).map_err(|e| Error::Corrupt {
        table,
        message: e.to_string(),
    })
}

/// `T` → JSON document (our own types always serialize).
pub(crate) fn to_doc<T: serde::Serialize>(value: &T) -> serde_json::Value {
    serde_json::to_value(value).unwrap_or(serde_json::Value::Null)
}

/// The page token after vcluster `v`.
pub(crate) fn vcluster_token(v: &VCluster) -> String {
    page_token::VClusterKey {
        project: v.project.clone(),
        name: v.name.clone(),
        uid: v.uid.as_uuid(),
    }
    .print()
}

/// The columns of a token row, as read by both backends.
pub(crate) struct TokenRow<'a> {
    pub id: uuid::Uuid,
    pub name: String,
    pub project: &'a str,
    pub role: &'a str,
    pub created_at: DateTime<Utc>,
    pub expires_at: Option<DateTime<Utc>>,
    pub revoked_at: Option<DateTime<Utc>>,
}

/// A token row → [`TokenRecord`], as a typed corruption error on bad data.
pub(crate) fn token_from(row: TokenRow<'_>) -> Result<TokenRecord> {
    let TokenRow {
        id,
        name,
        project,
        role,
        created_at,
        expires_at,
        revoked_at,
    } = row;
    Ok(TokenRecord {
        id,
        name,
        created_at,
        expires_at,
        revoked_at,
        project: project
            .parse()
            .map_err(|e: ovc_types::name::NameError| Error::Corrupt {
                table: "api_tokens",
                message: e.to_string(),
            })?,
        role: Role::parse(role).ok_or_else(|| Error::Corrupt {
            table: "api_tokens",
            message: format!("role {role:?}"),
        })?,
    })
}

/// The migrations of `migrator` not among `applied` (the versions read from
/// `ovc_migrations`; a database error there means the table does not exist yet).
fn pending_of(
    migrator: &sqlx::migrate::Migrator,
    applied: std::result::Result<Vec<i64>, sqlx::Error>,
) -> Result<Vec<i64>> {
    let applied = match applied {
        Ok(v) => v,
        Err(sqlx::Error::Database(_)) => Vec::new(),
        Err(e) => return Err(e.into()),
    };
    Ok(migrator
        .iter()
        .map(|m| m.version)
        .filter(|v| !applied.contains(v))
        .collect())
}
