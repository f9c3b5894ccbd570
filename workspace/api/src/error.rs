//! `ApiError`: a [`Status`] rendered as API.md's error body,
//! `{"error": {"code": 409, "status": "ALREADY_EXISTS", "message": "...", "details": [...]}}`,
//! with the HTTP status of API.md's table (and 415 for a body that is not JSON).

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use ovc_types::error::{Code, Status};

/// An error answered to an API client.
#[derive(Debug, Clone, PartialEq)]
pub struct ApiError(pub Status);

impl From<Status> for ApiError {
    fn from(s: Status) -> Self {
        ApiError(s)
    }
}

impl From<ovc_store::Error> for ApiError {
    fn from(e: ovc_store::Error) -> Self {
        if matches!(e.code(), Code::Internal) {
            tracing::error!(error = %e, "store error");
        }
        ApiError(e.into())
    }
}

impl ApiError {
    /// INVALID_ARGUMENT with `reason`.
    pub fn invalid(message: impl Into<String>, reason: &str) -> Self {
        ApiError(Status::invalid_argument(message).with_reason(reason))
    }

    /// NOT_FOUND.
    pub fn not_found(message: impl Into<String>) -> Self {
        ApiError(Status::not_found(message))
    }

    /// UNAVAILABLE (503, safe to retry) with `reason`.
    pub fn unavailable(message: impl Into<String>, reason: &str) -> Self {
        ApiError(Status::new(Code::Unavailable, message).with_reason(reason))
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let s = self.0;
        // A body of the wrong media type is INVALID_ARGUMENT answered as 415 (API.md).
        let code = if s.reason() == Some(crate::extract::UNSUPPORTED_MEDIA_TYPE) {
            StatusCode::UNSUPPORTED_MEDIA_TYPE.as_u16()
        } else {
            s.code.http_status()
        };
        let http = StatusCode::from_u16(code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        let body = serde_json::json!({
            "error": {
                "code": code,
                "status": s.code.as_str(),
                "message": s.message,
                "details": s.details,
            }
        });
        let mut res = (http, axum::Json(body)).into_response();
        let retry_after = s
            .details
            .iter()
            .find_map(|d| d.metadata.get(crate::limits::RETRY_AFTER_KEY));
        if let Some(v) = retry_after.and_then(|v| axum::http::HeaderValue::from_str(v).ok()) {
            res.headers_mut().insert(axum::http::header::RETRY_AFTER, v);
        }
        res
    }
}
