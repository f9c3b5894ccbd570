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

/// The raw bytes of a JSON request body, at most [`MAX_BODY_BYTES`]; a larger one is
/// INVALID_ARGUMENT (reason `BODY_TOO_LARGE`). The body must be declared
/// `Content-Type: application/json` (parameters such as `charset` allowed), else it is
/// refused with HTTP 415 (reason [`UNSUPPORTED_MEDIA_TYPE`]): a web page can send
/// `text/plain` or form bodies to any address without asking (a "simple" request), but
/// not JSON. An empty body needs no Content-Type (it means the defaults); an empty
/// body declared as something else than JSON is refused all the same.
#[derive(Debug)]
pub struct ApiBody(pub Bytes);

/// The reason of a body refused for its Content-Type; answered with HTTP 415.
pub const UNSUPPORTED_MEDIA_TYPE: &str = "UNSUPPORTED_MEDIA_TYPE";

/// Whether a Content-Type value is JSON: `application/json`, any case, any parameters.
fn is_json(content_type: &str) -> bool {
    content_type
        .split(';')
        .next()
        .is_some_and(|m| m.trim().eq_ignore_ascii_case("application/json"))
}

fn unsupported(message: String) -> ApiError {
    ApiError::invalid(message, UNSUPPORTED_MEDIA_TYPE)
}

impl<S: Send + Sync> FromRequest<S> for ApiBody {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, ApiError> {
        let content_type = match req.headers().get(axum::http::header::CONTENT_TYPE) {
            None => None,
            Some(v) => Some(
                v.to_str()
                    .map_err(|_| unsupported("Content-Type is not ASCII".into()))?
                    .to_string(),
            ),
        };
        if let Some(ct) = content_type.as_deref().filter(|ct| !is_json(ct)) {
            return Err(unsupported(format!(
                "Content-Type {ct:?} is not supported: send JSON as application/json"
            )));
        }
        let bytes = Bytes::from_request(req, state)
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
            })?;
        if content_type.is_none() && !bytes.0.iter().all(u8::is_ascii_whitespace) {
            return Err(unsupported(
                "a request body needs Content-Type: application/json".into(),
            ));
        }
        Ok(bytes)
    }
}
