//! The one error type of the client: what went wrong, with the API's own status (code,
//! message, reason) when the server answered with an error.
//!
//! Callers branch on [`Error::code`] and [`Error::reason`] (e.g. `REQUEST_ID_REUSED`),
//! as they would on a gRPC status; [`Error::is_retryable`] is what the client's own
//! retries use.

use ovc_types::error::{Code, Status};
use ovc_types::resource::Operation;
use std::time::Duration;

/// Why a call of [`crate::Client`] failed.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The client cannot be built as asked (bad server URL, unreadable CA file, ...).
    #[error("{0}")]
    Config(String),
    /// No answer: the server could not be reached, or the connection broke before the
    /// answer was complete. Treated as UNAVAILABLE (retryable).
    #[error("cannot reach {server}: {message}")]
    Unreachable {
        /// The server's base URL.
        server: String,
        /// What the network said.
        message: String,
    },
    /// The TLS handshake failed (e.g. a certificate signed by a CA the client does not
    /// trust). Not retried: it does not get better by itself.
    #[error("TLS handshake with {server} failed: {message}")]
    Tls {
        /// The server's base URL.
        server: String,
        /// What rustls said.
        message: String,
    },
    /// The API answered with an error (API.md "Errors").
    #[error("{status}")]
    Api {
        /// The HTTP status it came with.
        http_status: u16,
        /// The API's status: code, message, details with the reason.
        status: Status,
    },
    /// The answer was not what API.md promises (not JSON, another shape).
    #[error("unexpected answer from {server} (HTTP {http_status}): {message}")]
    Protocol {
        /// The server's base URL.
        server: String,
        /// The HTTP status.
        http_status: u16,
        /// What did not fit.
        message: String,
    },
    /// [`crate::Client::wait`] gave up before the operation was done.
    #[error("operation {} not done after {waited:?} (state {})", operation.id, operation.state.as_str())]
    WaitTimedOut {
        /// The operation as it was last seen.
        operation: Box<Operation>,
        /// How long it waited.
        waited: Duration,
    },
}

impl Error {
    /// The API's status, when the server answered with an error.
    pub fn status(&self) -> Option<&Status> {
        match self {
            Error::Api { status, .. } => Some(status),
            _ => None,
        }
    }

    /// The canonical code: the API's, UNAVAILABLE when the server was unreachable,
    /// DEADLINE_EXCEEDED for a wait that gave up; `None` for configuration, TLS and
    /// protocol errors.
    pub fn code(&self) -> Option<Code> {
        match self {
            Error::Api { status, .. } => Some(status.code),
            Error::Unreachable { .. } => Some(Code::Unavailable),
            Error::WaitTimedOut { .. } => Some(Code::DeadlineExceeded),
            Error::Config(_) | Error::Tls { .. } | Error::Protocol { .. } => None,
        }
    }

    /// The API's machine-readable reason (e.g. `REQUEST_ID_REUSED`), if any.
    pub fn reason(&self) -> Option<&str> {
        self.status()
            .and_then(Status::reason)
            .filter(|r| !r.is_empty())
    }

    /// True when the API refused the request (an HTTP 4xx answer): asking again the
    /// same way gets the same answer, unless the state changes.
    pub fn is_refused(&self) -> bool {
        matches!(self, Error::Api { http_status, .. } if (400..500).contains(http_status))
    }

    /// True for UNAVAILABLE (also an unreachable server) and ABORTED: safe to retry,
    /// mutations included, since they carry the same `request_id`.
    pub fn is_retryable(&self) -> bool {
        matches!(self.code(), Some(Code::Unavailable | Code::Aborted))
            && !matches!(self, Error::WaitTimedOut { .. })
    }
}
