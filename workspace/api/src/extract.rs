//! Extractors whose rejections are API.md errors: axum's own `Query`, `Path` and `Bytes`
//! answer bad input with plain-text bodies (and 413/422 statuses) that a client of
//! API.md cannot parse, so these wrap them and answer INVALID_ARGUMENT with the
//! Google-style body instead.

use crate::{ApiError, MAX_BODY_BYTES};
use axum::body::Bytes;
use axum::extract::{FromRequest, FromRequestParts, Path, Query, Request};
use axum::http::request::Parts;
use axum::response::IntoResponse;
use serde::de::DeserializeOwned;

/// A query string, refused with INVALID_ARGUMENT (reason `INVALID_QUERY`).
#[derive(Debug)]
pub struct ApiQuery<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned> FromRequestParts<S> for ApiQuery<T> {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, ApiError> {
        Query::<T>::from_request_parts(parts, state)
            .await
            .map(|Query(v)| ApiQuery(v))
            .map_err(|e| {
                ApiError::invalid(format!("query string: {}", e.body_text()), "INVALID_QUERY")
            })
    }
}

/// A path parameter, refused with INVALID_ARGUMENT (reason `INVALID_PATH`).
#[derive(Debug)]
pub struct ApiPath<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned + Send> FromRequestParts<S> for ApiPath<T> {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, ApiError> {
        Path::<T>::from_request_parts(parts, state)
            .await
            .map(|Path(v)| ApiPath(v))
            .map_err(|e| ApiError::invalid(format!("path: {}", e.body_text()), "INVALID_PATH"))
    }
}

/// The raw request body, at most [`MAX_BODY_BYTES`]; a larger one is INVALID_ARGUMENT
/// (reason `BODY_TOO_LARGE`).
#[derive(Debug)]
pub struct ApiBody(pub Bytes);

impl<S: Send + Sync> FromRequest<S> for ApiBody {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, ApiError> {
        Bytes::from_request(req, state)
            .await
            .map(ApiBody)
            .map_err(|e| {
                let status = e.into_response().status();
                if status == axum::http::StatusCode::PAYLOAD_TOO_LARGE {
                    ApiError::invalid(
                        format!("request body is larger than {MAX_BODY_BYTES} bytes"),
                        "BODY_TOO_LARGE",
                    )
                } else {
                    ApiError::invalid("the request body could not be read", "INVALID_BODY")
                }
            })
    }
}
