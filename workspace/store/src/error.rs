//! `store::Error`: every way a store call can fail, typed, so callers (API, engine) can
//! branch on it and bad input never turns into a panic or a 500.

use ovc_types::error::{Code, Status};
use ovc_types::event::DecodeError;
use ovc_types::resource::ProjectionError;
use ovc_types::{OperationId, RunId};

/// A store error.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The caller passed something the store refuses (empty stream, oversize payload,
    /// too many events, empty request id, ...). Nothing was written.
    #[error("invalid input: {0}")]
    InvalidInput(String),
    /// Optimistic concurrency: the stream is not at the expected version. Nothing was
    /// written.
    #[error("stream {stream} is at version {actual:?}, expected {expected}")]
    WrongExpectedVersion {
        /// The stream.
        stream: String,
        /// What the caller expected, as text (`no stream`, `any`, or a number).
        expected: String,
        /// The actual version (`None`: the stream does not exist).
        actual: Option<u64>,
    },
    /// The request id was used before with different parameters.
    #[error(
        "request_id {request_id:?} was already used in project {project} with different parameters"
    )]
    RequestIdReused {
        /// The project.
        project: String,
        /// The request id.
        request_id: String,
        /// The operation the first request created.
        operation_id: OperationId,
    },
    /// The run's lease moved to another worker (the fencing epoch changed), or the run is
    /// no longer leased. Nothing was written.
    #[error("lease on run {run_id} at epoch {epoch} was lost")]
    LeaseLost {
        /// The run.
        run_id: RunId,
        /// The epoch the caller held.
        epoch: i64,
    },
    /// A live vcluster with that name exists in the project.
    #[error("vcluster {project}/{name} already exists")]
    NameTaken {
        /// The project.
        project: String,
        /// The name.
        name: String,
    },
    /// The events do not fold into the read models (a grammar error in the log).
    #[error("events rejected by projection: {0}")]
    Projection(#[from] ProjectionError),
    /// A stored event could not be decoded.
    #[error("stored event could not be decoded: {0}")]
    Decode(#[from] DecodeError),
    /// A stored row is not what this build expects.
    #[error("corrupt row in {table}: {message}")]
    Corrupt {
        /// The table.
        table: &'static str,
        /// What is wrong.
        message: String,
    },
    /// The database cannot be reached (connection, pool, I/O). Safe to retry.
    #[error("store unavailable: {0}")]
    Unavailable(#[source] sqlx::Error),
    /// Any other database error.
    #[error("database error: {0}")]
    Database(#[source] sqlx::Error),
    /// Applying migrations failed.
    #[error("migration failed: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
    /// The database URL is not one we can open.
    #[error("unsupported database url {0:?}: use sqlite://PATH or postgres://...")]
    UnsupportedUrl(String),

    /// The shared transaction of a group commit failed on another commit's account (its
    /// connection broke, or COMMIT failed): this commit was not made by this call.
    #[error("the group commit this commit was part of failed: {0}")]
    GroupCommitFailed(String),
}

/// Shorthand for results of store calls.
pub type Result<T, E = Error> = std::result::Result<T, E>;

impl From<sqlx::Error> for Error {
    fn from(e: sqlx::Error) -> Self {
        match &e {
            sqlx::Error::Io(_)
            | sqlx::Error::Tls(_)
            | sqlx::Error::PoolTimedOut
            | sqlx::Error::PoolClosed
            | sqlx::Error::WorkerCrashed => Error::Unavailable(e),
            sqlx::Error::Database(db) if is_busy(db.as_ref()) => Error::Unavailable(e),
            _ => Error::Database(e),
        }
    }
}

fn is_busy(db: &dyn sqlx::error::DatabaseError) -> bool {
    // SQLite: SQLITE_BUSY (5) / SQLITE_LOCKED (6); PostgreSQL: admin shutdown, cannot
    // connect now, serialization/deadlock failures are retryable too.
    matches!(
        db.code().as_deref(),
        Some("5" | "6" | "517" | "57P01" | "57P03" | "40001" | "40P01")
    )
}

impl Error {
    /// True when retrying the same call may succeed.
    pub fn is_retryable(&self) -> bool {
        matches!(
            self,
            Error::Unavailable(_)
                | Error::WrongExpectedVersion { .. }
                | Error::GroupCommitFailed(_)
        )
    }

    /// The canonical code of API.md for this error.
    pub fn code(&self) -> Code {
        match self {
            Error::InvalidInput(_) | Error::RequestIdReused { .. } => Code::InvalidArgument,
            Error::WrongExpectedVersion { .. } | Error::LeaseLost { .. } => Code::Aborted,
            Error::NameTaken { .. } => Code::AlreadyExists,
            Error::Unavailable(_) | Error::GroupCommitFailed(_) => Code::Unavailable,
            Error::UnsupportedUrl(_) => Code::InvalidArgument,
            Error::Projection(_)
            | Error::Decode(_)
            | Error::Corrupt { .. }
            | Error::Database(_)
            | Error::Migrate(_) => Code::Internal,
        }
    }
}

impl From<Error> for Status {
    fn from(e: Error) -> Self {
        let status = Status::new(e.code(), e.to_string());
        match e {
            Error::RequestIdReused {
                request_id,
                operation_id,
                ..
            } => status
                .with_reason("REQUEST_ID_REUSED")
                .with_metadata("request_id", request_id)
                .with_metadata("operation_id", operation_id.to_string()),
            Error::WrongExpectedVersion { .. } => status.with_reason("CONCURRENT_MODIFICATION"),
            Error::NameTaken { .. } => status.with_reason("VCLUSTER_EXISTS"),
            Error::LeaseLost { .. } => status.with_reason("LEASE_LOST"),
            _ => status,
        }
    }
}
