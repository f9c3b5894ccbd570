//! The error status of API.md: a canonical code, a message for people, and details with
//! a machine-readable reason.
//!
//! Each module keeps its own `thiserror` enum; they all convert into [`Status`], which is
//! what the API puts on the wire (HTTP status + Google-style JSON body, or a gRPC status)
//! and what failed operations and steps record in their events.

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::fmt;

/// A canonical error code (google.rpc.Code), with the HTTP mapping of API.md.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum Code {
    /// The operation was cancelled by its caller.
    Cancelled,
    /// Bad name, quantity, body, unknown field, or a reused request id.
    InvalidArgument,
    /// A deadline passed before the work finished.
    DeadlineExceeded,
    /// No such vcluster, snapshot or operation (or not visible to the caller).
    NotFound,
    /// The name is taken in the project.
    AlreadyExists,
    /// The caller's token does not allow this.
    PermissionDenied,
    /// A project quota or rate limit was hit.
    ResourceExhausted,
    /// The call is not allowed in the current state.
    FailedPrecondition,
    /// A concurrent modification won a race; retry.
    Aborted,
    /// A bug. Never used for bad input.
    Internal,
    /// The store or host cluster cannot be reached; safe to retry.
    Unavailable,
    /// No or bad credentials.
    Unauthenticated,
}

impl Code {
    /// Every code, for exhaustive tests.
    pub const ALL: [Code; 12] = [
        Code::Cancelled,
        Code::InvalidArgument,
        Code::DeadlineExceeded,
        Code::NotFound,
        Code::AlreadyExists,
        Code::PermissionDenied,
        Code::ResourceExhausted,
        Code::FailedPrecondition,
        Code::Aborted,
        Code::Internal,
        Code::Unavailable,
        Code::Unauthenticated,
    ];

    /// The HTTP status of API.md's error table.
    pub fn http_status(self) -> u16 {
        match self {
            Code::Cancelled => 499,
            Code::InvalidArgument => 400,
            Code::DeadlineExceeded => 504,
            Code::NotFound => 404,
            Code::AlreadyExists => 409,
            Code::PermissionDenied => 403,
            Code::ResourceExhausted => 429,
            Code::FailedPrecondition => 400,
            Code::Aborted => 409,
            Code::Internal => 500,
            Code::Unavailable => 503,
            Code::Unauthenticated => 401,
        }
    }

    /// The numeric gRPC status code.
    pub fn grpc_code(self) -> i32 {
        match self {
            Code::Cancelled => 1,
            Code::InvalidArgument => 3,
            Code::DeadlineExceeded => 4,
            Code::NotFound => 5,
            Code::AlreadyExists => 6,
            Code::PermissionDenied => 7,
            Code::ResourceExhausted => 8,
            Code::FailedPrecondition => 9,
            Code::Aborted => 10,
            Code::Internal => 13,
            Code::Unavailable => 14,
            Code::Unauthenticated => 16,
        }
    }

    /// The name as written on the wire, e.g. `FAILED_PRECONDITION`.
    pub fn as_str(self) -> &'static str {
        match self {
            Code::Cancelled => "CANCELLED",
            Code::InvalidArgument => "INVALID_ARGUMENT",
            Code::DeadlineExceeded => "DEADLINE_EXCEEDED",
            Code::NotFound => "NOT_FOUND",
            Code::AlreadyExists => "ALREADY_EXISTS",
            Code::PermissionDenied => "PERMISSION_DENIED",
            Code::ResourceExhausted => "RESOURCE_EXHAUSTED",
            Code::FailedPrecondition => "FAILED_PRECONDITION",
            Code::Aborted => "ABORTED",
            Code::Internal => "INTERNAL",
            Code::Unavailable => "UNAVAILABLE",
            Code::Unauthenticated => "UNAUTHENTICATED",
        }
    }
}

impl fmt::Display for Code {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One entry of `error.details`: a stable machine-readable reason plus context.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct ErrorDetail {
    /// A stable UPPER_SNAKE reason, e.g. `REQUEST_ID_REUSED`.
    pub reason: String,
    /// Extra context, e.g. the field that was wrong.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub metadata: BTreeMap<String, String>,
}

/// An error as API.md and AIP-193 define it; also what failed steps record.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Status {
    /// The canonical code.
    pub code: Code,
    /// A message for people; never contains secrets.
    pub message: String,
    /// Machine-readable details.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub details: Vec<ErrorDetail>,
}

impl Status {
    /// A status with `code` and `message` and no details.
    pub fn new(code: Code, message: impl Into<String>) -> Self {
        Self {
            code,
            message: message.into(),
            details: Vec::new(),
        }
    }

    /// Adds a detail with `reason` (and no metadata).
    pub fn with_reason(mut self, reason: impl Into<String>) -> Self {
        self.details.push(ErrorDetail {
            reason: reason.into(),
            metadata: BTreeMap::new(),
        });
        self
    }

    /// Adds `key=value` to the metadata of the last detail (creating one with an empty
    /// reason if there is none).
    pub fn with_metadata(mut self, key: impl Into<String>, value: impl Into<String>) -> Self {
        if self.details.is_empty() {
            self.details.push(ErrorDetail {
                reason: String::new(),
                metadata: BTreeMap::new(),
            });
        }
        if let Some(last) = self.details.last_mut() {
            last.metadata.insert(key.into(), value.into());
        }
        self
    }

    /// The first detail's reason, if any.
    pub fn reason(&self) -> Option<&str> {
        self.details.first().map(|d| d.reason.as_str())
    }

    /// Shorthand for `Status::new(Code::InvalidArgument, message)`.
    pub fn invalid_argument(message: impl Into<String>) -> Self {
        Self::new(Code::InvalidArgument, message)
    }

    /// Shorthand for `Status::new(Code::NotFound, message)`.
    pub fn not_found(message: impl Into<String>) -> Self {
        Self::new(Code::NotFound, message)
    }

    /// Shorthand for `Status::new(Code::FailedPrecondition, message)`.
    pub fn failed_precondition(message: impl Into<String>) -> Self {
        Self::new(Code::FailedPrecondition, message)
    }

    /// Shorthand for `Status::new(Code::Internal, message)`.
    pub fn internal(message: impl Into<String>) -> Self {
        Self::new(Code::Internal, message)
    }
}

impl fmt::Display for Status {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.code, self.message)
    }
}

impl std::error::Error for Status {}

impl From<crate::name::NameError> for Status {
    fn from(e: crate::name::NameError) -> Self {
        Status::invalid_argument(e.to_string()).with_reason("INVALID_NAME")
    }
}

impl From<crate::quantity::QuantityError> for Status {
    fn from(e: crate::quantity::QuantityError) -> Self {
        Status::invalid_argument(e.to_string()).with_reason("INVALID_QUANTITY")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn http_mapping_follows_api_md() {
        let expected = [
            ("NOT_FOUND", 404),
            ("ALREADY_EXISTS", 409),
            ("INVALID_ARGUMENT", 400),
            ("FAILED_PRECONDITION", 400),
            ("RESOURCE_EXHAUSTED", 429),
            ("UNAUTHENTICATED", 401),
            ("PERMISSION_DENIED", 403),
            ("ABORTED", 409),
            ("INTERNAL", 500),
            ("UNAVAILABLE", 503),
        ];
        for (name, http) in expected {
            let code = Code::ALL
                .into_iter()
                .find(|c| c.as_str() == name)
                .expect("code listed in API.md exists");
            assert_eq!(code.http_status(), http, "{name}");
        }
    }

    #[test]
    fn codes_serialize_as_their_wire_names() {
        for code in Code::ALL {
            let json = serde_json::to_value(code).expect("serialize");
            assert_eq!(json, serde_json::Value::String(code.as_str().to_string()));
            let back: Code = serde_json::from_value(json).expect("deserialize");
            assert_eq!(back, code);
        }
    }

    #[test]
    fn only_internal_and_unavailable_are_5xx_among_api_codes() {
        for code in Code::ALL {
            let five = code.http_status() >= 500;
            let expected = matches!(
                code,
                Code::Internal | Code::Unavailable | Code::DeadlineExceeded
            );
            assert_eq!(five, expected, "{code}");
        }
    }

    #[test]
    fn status_body_shape() {
        let s = Status::invalid_argument("request_id reused")
            .with_reason("REQUEST_ID_REUSED")
            .with_metadata("request_id", "abc");
        let json = serde_json::to_value(&s).expect("serialize");
        assert_eq!(json["code"], "INVALID_ARGUMENT");
        assert_eq!(json["details"][0]["reason"], "REQUEST_ID_REUSED");
        assert_eq!(json["details"][0]["metadata"]["request_id"], "abc");
        assert_eq!(s.reason(), Some("REQUEST_ID_REUSED"));
    }
}
