//! The values that go in and out of a [`crate::Store`]: what one atomic commit contains,
//! recorded events, runs and leases, filters and pages.

use chrono::{DateTime, Duration, Utc};
use ovc_types::event::{Event, EventMetadata, StreamName};
use ovc_types::{OperationId, ProjectName, RunId, VClusterId};
use serde::Serialize;

/// Limits the store enforces on its input.
#[derive(Debug, Clone)]
pub struct StoreConfig {
    /// The largest encoded event (`data` + `metadata`), in bytes.
    pub max_event_bytes: usize,
    /// The most events one commit may append.
    pub max_events_per_commit: usize,
    /// How long an idempotency key answers repeats after its operation ended (API.md: at
    /// least 24 h).
    pub idempotency_ttl: Duration,
    /// The longest request id accepted.
    pub max_request_id_len: usize,
    /// PostgreSQL only: the schema to keep every table in (created if missing).
    pub pg_schema: Option<String>,
    /// PostgreSQL only: connections in the pool.
    pub pg_max_connections: u32,
    /// SQLite only: `synchronous=FULL` (default; a 202 survives power loss) or `NORMAL`
    /// (survives process crashes only, faster).
    pub sqlite_synchronous_full: bool,
}

impl Default for StoreConfig {
    fn default() -> Self {
        Self {
            max_event_bytes: 256 * 1024,
            max_events_per_commit: 1000,
            idempotency_ttl: Duration::hours(24),
            max_request_id_len: 256,
            pg_schema: None,
            pg_max_connections: 16,
            sqlite_synchronous_full: true,
        }
    }
}

/// Which database a store runs on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Backend {
    /// One SQLite file (embedded default).
    Sqlite,
    /// PostgreSQL (production).
    Postgres,
}

/// What the caller expects a stream's version to be before its append.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExpectedVersion {
    /// No check.
    Any,
    /// The stream must not exist yet.
    NoStream,
    /// The stream must be at exactly this version (≥ 1).
    Exact(u64),
}

impl std::fmt::Display for ExpectedVersion {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ExpectedVersion::Any => f.write_str("any"),
            ExpectedVersion::NoStream => f.write_str("no stream"),
            ExpectedVersion::Exact(v) => write!(f, "{v}"),
        }
    }
}

/// An event to append, with its metadata.
#[derive(Debug, Clone, PartialEq)]
pub struct NewEvent {
    /// The event.
    pub event: Event,
    /// Its metadata.
    pub metadata: EventMetadata,
}

impl NewEvent {
    /// An event with empty metadata.
    pub fn new(event: Event) -> Self {
        Self {
            event,
            metadata: EventMetadata::default(),
        }
    }

    /// An event with `metadata`.
    pub fn with_metadata(event: Event, metadata: EventMetadata) -> Self {
        Self { event, metadata }
    }
}

/// Events to append to one stream, checked against an expected version.
#[derive(Debug, Clone)]
pub struct StreamAppend {
    /// The stream.
    pub stream: StreamName,
    /// The optimistic-concurrency check.
    pub expected: ExpectedVersion,
    /// One or more events, in order.
    pub events: Vec<NewEvent>,
}

/// Claims `(project, request_id)` for an operation, in the same transaction.
#[derive(Debug, Clone)]
pub struct IdempotencyClaim {
    /// The project.
    pub project: ProjectName,
    /// The client's key.
    pub request_id: String,
    /// `ovc_types::command::request_hash` of the request.
    pub request_hash: String,
    /// The operation this request creates.
    pub operation_id: OperationId,
}

/// A run to put on the queue.
#[derive(Debug, Clone)]
pub struct NewRun {
    /// Its id.
    pub id: RunId,
    /// The operation it runs.
    pub operation_id: OperationId,
    /// The vcluster it serializes on (one leased run per vcluster).
    pub vcluster_uid: VClusterId,
    /// Not before this long after the commit, by the database's clock (`None`: at once).
    pub delay: Option<Duration>,
    /// Higher runs first among due runs.
    pub priority: i32,
}

/// A lease a worker holds on a run: the run and the fencing epoch of its claim.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Lease {
    /// The run.
    pub run_id: RunId,
    /// The epoch of the claim; any later claim bumps it and fences this one off.
    pub epoch: i64,
}

/// What happens to the fenced run in a commit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RunUpdate {
    /// The run is finished.
    Complete,
    /// Release the lease; run again `after` this long (durable retry, durable timer).
    /// The due time is the database's `now` plus `after`, never a process's clock.
    Reschedule {
        /// How long from the commit until it becomes due.
        after: Duration,
    },
    /// Keep the lease and extend it to the database's `now` plus `lease_for`.
    Renew {
        /// The new lease length, from the commit.
        lease_for: Duration,
    },
}

/// Everything one atomic commit does. Either all of it happens, or none of it.
#[derive(Debug, Clone, Default)]
pub struct Commit {
    /// Claim an idempotency key first; a repeat of the same request makes the commit a
    /// no-op that returns [`CommitOutcome::Duplicate`].
    pub idempotency: Option<IdempotencyClaim>,
    /// Appends, in order (events get positions in this order).
    pub appends: Vec<StreamAppend>,
    /// Runs to enqueue.
    pub enqueue: Vec<NewRun>,
    /// The caller's lease; the commit fails with `LeaseLost` unless it is current.
    pub fence: Option<Lease>,
    /// What to do with the fenced run (requires `fence`).
    pub run_update: Option<RunUpdate>,
}

/// The result of a commit that wrote.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CommitReceipt {
    /// Position of the first appended event (0 when nothing was appended).
    pub first_position: u64,
    /// Position of the last appended event (0 when nothing was appended).
    pub last_position: u64,
    /// Each appended stream's version after the commit, in append order.
    pub stream_versions: Vec<(StreamName, u64)>,
}

/// What a commit did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CommitOutcome {
    /// Written.
    Committed(CommitReceipt),
    /// The idempotency key answered: the same request already created this operation.
    /// Nothing was written.
    Duplicate {
        /// The first request's operation.
        operation_id: OperationId,
    },
}

/// An event as stored (API.md `Event`). `data` is the raw JSON, with `"v"`.
#[derive(Debug, Clone, PartialEq, Serialize, utoipa::ToSchema)]
pub struct RecordedEvent {
    /// Global position, strictly increasing, gapless.
    pub position: u64,
    /// The stream.
    pub stream: String,
    /// Version within the stream, from 1, gapless.
    pub version: u64,
    /// The event type.
    #[serde(rename = "type")]
    pub event_type: String,
    /// The payload.
    pub data: serde_json::Value,
    /// The metadata.
    pub metadata: serde_json::Value,
    /// When it was committed (microsecond precision).
    pub recorded_at: DateTime<Utc>,
}

impl RecordedEvent {
    /// The typed event.
    pub fn decode(&self) -> Result<Event, ovc_types::event::DecodeError> {
        Event::decode(&self.event_type, &self.data)
    }
}

/// A stored idempotency key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IdempotencyRecord {
    /// The request hash of the first request.
    pub request_hash: String,
    /// The operation it created.
    pub operation_id: OperationId,
    /// When it was written.
    pub created_at: DateTime<Utc>,
}

/// The status of a run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum RunStatus {
    /// Waiting for `run_at`.
    Queued,
    /// Claimed by a worker (possibly with an expired lease).
    Leased,
    /// Finished.
    Done,
}

impl RunStatus {
    pub(crate) fn parse(s: &str) -> Option<Self> {
        match s {
            "queued" => Some(RunStatus::Queued),
            "leased" => Some(RunStatus::Leased),
            "done" => Some(RunStatus::Done),
            _ => None,
        }
    }
}

/// A row of the run queue.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Run {
    /// Its id.
    pub id: RunId,
    /// The operation.
    pub operation_id: OperationId,
    /// The vcluster it serializes on.
    pub vcluster_uid: VClusterId,
    /// Its status.
    pub status: RunStatus,
    /// When it is (was) due.
    pub run_at: DateTime<Utc>,
    /// How many times it was claimed.
    pub attempts: i32,
    /// The worker holding the lease.
    pub lease_owner: Option<String>,
    /// When the lease expires.
    pub lease_until: Option<DateTime<Utc>>,
    /// The fencing epoch (bumped by every claim).
    pub epoch: i64,
    /// Priority.
    pub priority: i32,
}

impl Run {
    /// The lease this run is held under (meaningful while leased).
    pub fn lease(&self) -> Lease {
        Lease {
            run_id: self.id,
            epoch: self.epoch,
        }
    }
}

/// A page request: items after `after` (an opaque cursor from a previous page).
#[derive(Debug, Clone, Default)]
pub struct PageRequest {
    /// The cursor of the previous page's last item.
    pub after: Option<String>,
    /// At most this many items (clamped to 1..=1000; default 100).
    pub limit: Option<u32>,
}

impl PageRequest {
    pub(crate) fn limit(&self) -> i64 {
        i64::from(self.limit.unwrap_or(100).clamp(1, 1000))
    }
}

/// A page of results.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Page<T> {
    /// The items.
    pub items: Vec<T>,
    /// Pass as `after` to get the next page; `None` on the last page.
    pub next: Option<String>,
}

/// Filters for listing vclusters.
#[derive(Debug, Clone, Default)]
pub struct VClusterFilter {
    /// Only this project.
    pub project: Option<ProjectName>,
    /// Only this state.
    pub state: Option<ovc_types::VClusterState>,
    /// Include DELETED vclusters (off by default).
    pub include_deleted: bool,
    /// Only vclusters whose `spec.labels` has this key with this value.
    pub label: Option<(String, String)>,
}

/// Filters for listing operations.
#[derive(Debug, Clone, Default)]
pub struct OperationFilter {
    /// Only this project.
    pub project: Option<ProjectName>,
    /// Only operations on vclusters of this name.
    pub vcluster: Option<String>,
    /// Only this state.
    pub state: Option<ovc_types::OperationState>,
    /// Only this kind.
    pub kind: Option<ovc_types::OperationKind>,
    /// Only operations created at or after this time.
    pub since: Option<DateTime<Utc>>,
}

/// Filters for listing snapshots.
#[derive(Debug, Clone, Default)]
pub struct SnapshotFilter {
    /// Only this project.
    pub project: Option<ProjectName>,
    /// Only snapshots of vclusters of this name.
    pub vcluster: Option<String>,
    /// Only snapshots in this state.
    pub state: Option<ovc_types::SnapshotState>,
}

/// Every projection row, in a canonical order, as JSON text; two equal dumps mean two
/// equal sets of tables. Used to prove that a rebuild equals the live tables.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ProjectionDump {
    /// `vclusters` rows.
    pub vclusters: Vec<String>,
    /// `operations` rows.
    pub operations: Vec<String>,
    /// `operation_steps` rows.
    pub operation_steps: Vec<String>,
    /// `snapshots` rows.
    pub snapshots: Vec<String>,
}

/// What a projection rebuild did.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct RebuildReport {
    /// Events replayed.
    pub events: u64,
    /// vclusters written.
    pub vclusters: u64,
    /// operations written.
    pub operations: u64,
    /// snapshots written.
    pub snapshots: u64,
}

/// One claim of a run, from the `run_leases` audit table.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct LeaseRecord {
    /// The run.
    pub run_id: RunId,
    /// The claim's fencing epoch.
    pub epoch: i64,
    /// The vcluster the run serializes on.
    pub vcluster_uid: VClusterId,
    /// The worker that claimed it.
    pub owner: String,
    /// When it was claimed.
    pub claimed_at: DateTime<Utc>,
    /// When the lease expires (moved by renewals).
    pub lease_until: DateTime<Utc>,
    /// When the holder completed or released the run (`None`: it never did, e.g. it
    /// crashed, or it still holds it).
    pub released_at: Option<DateTime<Utc>>,
}

impl LeaseRecord {
    /// The end of the time this claim could act: its release, else its lease expiry.
    pub fn held_until(&self) -> DateTime<Utc> {
        match self.released_at {
            Some(r) if r < self.lease_until => r,
            _ => self.lease_until,
        }
    }
}

/// What a bearer token may do (API.md: viewer, operator, admin).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// Read only.
    Viewer,
    /// Read and run operations.
    Operator,
    /// Everything, including deletes.
    Admin,
}

impl Role {
    /// The stored name.
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Viewer => "viewer",
            Role::Operator => "operator",
            Role::Admin => "admin",
        }
    }

    /// Parses a stored name.
    pub fn parse(s: &str) -> Option<Role> {
        match s {
            "viewer" => Some(Role::Viewer),
            "operator" => Some(Role::Operator),
            "admin" => Some(Role::Admin),
            _ => None,
        }
    }
}

/// A stored API token (without the secret, which is never stored).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct TokenRecord {
    /// Its id.
    pub id: uuid::Uuid,
    /// A name for people (who or what uses it).
    pub name: String,
    /// The one project it may see and touch.
    pub project: ProjectName,
    /// What it may do there.
    pub role: Role,
    /// When it was created.
    pub created_at: DateTime<Utc>,
    /// From when on it is refused (`None`: never expires).
    pub expires_at: Option<DateTime<Utc>>,
    /// When it was revoked (`None`: it was not).
    pub revoked_at: Option<DateTime<Utc>>,
}

impl TokenRecord {
    /// Why the token may not be used at `now` (`None`: it may).
    pub fn refusal(&self, now: DateTime<Utc>) -> Option<&'static str> {
        if self.revoked_at.is_some() {
            Some("revoked")
        } else if self.expires_at.is_some_and(|e| e <= now) {
            Some("expired")
        } else {
            None
        }
    }
}

/// Figures for `/metrics`, read from the tables in one go.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct StoreStats {
    /// Runs waiting for their `run_at`.
    pub runs_queued: u64,
    /// Runs held by a worker.
    pub runs_leased: u64,
    /// Claims taken over after their lease expired (the holder died or stalled).
    pub lease_steals: u64,
    /// Operations by (kind, state).
    pub operations: Vec<(String, String, u64)>,
    /// Snapshots by state (MISSING ones: their artifact vanished from the storage).
    pub snapshots: Vec<(String, u64)>,
    /// The event log's head position.
    pub head_position: u64,
    /// How long the oldest queued run that is due has waited for a worker, by the
    /// database's clock (the claim's); zero when none waits (queue age).
    pub oldest_due_run_age: std::time::Duration,
    /// Idempotency keys past their TTL still stored (the purge deletes them).
    pub idempotency_keys_expired: u64,
    /// How long the oldest of those has been past its TTL; zero when there is none (how
    /// far the purge is behind).
    pub idempotency_purge_lag: std::time::Duration,
}
