//! How a failure of the Kubernetes API server, of `helm` or of the driver's own checks
//! becomes a [`DriverError`]: the engine retries transient errors and compensates on
//! permanent ones, so this mapping decides what ovc does when the host says no.

use crate::DriverError;
use ovc_types::error::{Code, Status};
use std::time::Duration;

/// A failure of the kube driver.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum KubeError {
    /// The API server answered with an error status.
    #[error("host API server answered {code} {reason} to {what}: {message}")]
    Api {
        /// What the driver was doing (`GET namespaces/ovc-a`).
        what: String,
        /// HTTP status.
        code: u16,
        /// The Status reason (`AlreadyExists`, `NotFound`, ...).
        reason: String,
        /// The server's message.
        message: String,
        /// `Retry-After` (`details.retryAfterSeconds`), when the server gave one.
        retry_after: Option<Duration>,
    },
    /// The API server could not be reached (connection refused, TLS, DNS, broken body).
    #[error("host API server unreachable during {what}: {message}")]
    Connection {
        /// What the driver was doing.
        what: String,
        /// The client's error.
        message: String,
    },
    /// A call took longer than the configured call timeout.
    #[error("host API call {what} timed out after {after:?}")]
    Timeout {
        /// What the driver was doing.
        what: String,
        /// The timeout.
        after: Duration,
    },
    /// The host is not in a state this step can work with; retrying will not help.
    #[error("{message}")]
    Refused {
        /// The status code for the API caller.
        code: Code,
        /// Reason (machine-readable, e.g. `CONTROL_PLANE_PAUSED`).
        reason: &'static str,
        /// What is wrong and what to do.
        message: String,
    },
    /// The host is moving towards a state the step needs (a Terminating namespace);
    /// retry later.
    #[error("{message}")]
    NotYet {
        /// What is being waited for.
        message: String,
        /// When to look again.
        retry_after: Duration,
    },
    /// `helm` is missing, too old, or failed.
    #[error("{message}")]
    Helm {
        /// Worth retrying (`another operation is in progress`, an unreachable cluster).
        transient: bool,
        /// What helm said (its stderr, trimmed).
        message: String,
    },
    /// The driver's configuration cannot be honoured.
    #[error("kube driver configuration: {0}")]
    Config(String),
}

impl KubeError {
    /// Maps a kube-rs error of the call `what`.
    pub fn from_kube(what: impl Into<String>, e: kube::Error) -> Self {
        let what = what.into();
        match e {
            kube::Error::Api(status) => KubeError::Api {
                what,
                code: status.code,
                reason: status.reason.clone(),
                message: status.message.clone(),
                retry_after: status
                    .details
                    .as_ref()
                    .map(|d| d.retry_after_seconds)
                    .filter(|s| *s > 0)
                    .map(|s| Duration::from_secs(u64::from(s))),
            },
            kube::Error::SerdeError(e) => KubeError::Api {
                what,
                code: 500,
                reason: "BadResponse".into(),
                message: format!("the response does not decode: {e}"),
                retry_after: None,
            },
            other => KubeError::Connection {
                what,
                message: other.to_string(),
            },
        }
    }

    /// The HTTP status of an API error (`None` for other errors).
    pub fn http_code(&self) -> Option<u16> {
        match self {
            KubeError::Api { code, .. } => Some(*code),
            _ => None,
        }
    }

    /// True for a 404.
    pub fn is_not_found(&self) -> bool {
        self.http_code() == Some(404)
    }

    /// True for a 409 `AlreadyExists`.
    pub fn is_already_exists(&self) -> bool {
        matches!(self, KubeError::Api { code: 409, reason, .. } if reason == "AlreadyExists")
    }

    /// A refusal with `code` and `reason`.
    pub fn refused(code: Code, reason: &'static str, message: impl Into<String>) -> Self {
        KubeError::Refused {
            code,
            reason,
            message: message.into(),
        }
    }
}

impl From<KubeError> for DriverError {
    fn from(e: KubeError) -> Self {
        let text = e.to_string();
        match e {
            KubeError::Api {
                code, retry_after, ..
            } if code == 429 || code >= 500 || code == 408 => DriverError::Transient {
                message: text,
                retry_after,
            },
            // An optimistic-concurrency conflict (not AlreadyExists): the next attempt
            // reads the new version.
            KubeError::Api {
                code: 409,
                ref reason,
                ..
            } if reason == "Conflict" => DriverError::transient(text),
            KubeError::Api { code, .. } => {
                let status_code = match code {
                    400 | 422 => Code::InvalidArgument,
                    _ => Code::FailedPrecondition,
                };
                DriverError::Permanent(Status::new(status_code, text).with_reason("HOST_REJECTED"))
            }
            KubeError::Connection { .. } | KubeError::Timeout { .. } => {
                DriverError::transient(text)
            }
            KubeError::NotYet { retry_after, .. } => DriverError::Transient {
                message: text,
                retry_after: Some(retry_after),
            },
            KubeError::Refused { code, reason, .. } => {
                DriverError::Permanent(Status::new(code, text).with_reason(reason))
            }
            KubeError::Helm {
                transient: true, ..
            } => DriverError::transient(text),
            KubeError::Helm { .. } => DriverError::Permanent(
                Status::new(Code::FailedPrecondition, text).with_reason("HELM_FAILED"),
            ),
            KubeError::Config(_) => DriverError::Permanent(
                Status::new(Code::FailedPrecondition, text).with_reason("HOST_MISCONFIGURED"),
            ),
        }
    }
}

/// Shorthand for kube driver results.
pub type KubeResult<T> = Result<T, KubeError>;
