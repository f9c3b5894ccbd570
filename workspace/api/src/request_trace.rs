//! A span per API request, REST and gRPC alike, so that one trace shows the call and,
//! through the `traceparent` stored with the command event, the worker's operation and
//! every step attempt (see `ovc_engine::trace_context`).
//!
//! The span continues the caller's trace when the request carries a valid W3C
//! `traceparent` (HTTP header, or gRPC metadata, which is the same HTTP/2 header), and
//! starts a new trace otherwise. The middleware then **replaces** the request's
//! `traceparent` with the request span's own context before the handler runs: the
//! handlers store what they find there (`routes::traceparent`, `grpc::traceparent`), so
//! the stored value always names the request span, and the worker's spans become its
//! children. Without an OpenTelemetry layer (library use, in-process tests) the span has
//! no context; the caller's valid traceparent is stored as is, or a new one is made, so a
//! worker always has a parent to continue.

use axum::extract::{MatchedPath, Request};
use axum::http::{HeaderMap, HeaderValue};
use axum::middleware::Next;
use axum::response::Response;
use ovc_engine::trace_context;
use tracing::Instrument;
use tracing::field::Empty;

/// The header (and gRPC metadata key) of the W3C trace context.
pub const TRACEPARENT: &str = "traceparent";

/// REST: a `request` span named `METHOD ROUTE`.
pub(crate) async fn trace_rest(req: Request, next: Next) -> Response {
    let method = req.method().clone();
    let route = req
        .extensions()
        .get::<MatchedPath>()
        .map(|p| p.as_str().to_owned())
        .unwrap_or_else(|| "unmatched".to_owned());
    let span = tracing::info_span!(
        "request",
        otel.name = %format_args!("{method} {route}"),
        otel.kind = "server",
        http.request.method = %method,
        http.route = %route,
        url.path = %req.uri().path(),
        http.response.status_code = Empty,
        project = Empty,
        vcluster = Empty,
        operation_id = Empty,
        operation_kind = Empty,
        otel.status_code = Empty,
    );
    let response = traced(&span, req, next).await;
    let status = response.status();
    span.record("http.response.status_code", status.as_u16());
    if status.is_server_error() {
        span.record("otel.status_code", "ERROR");
    }
    response
}

/// gRPC: a `request` span named after the method's path (`ovc.v1.Service/Method`).
pub(crate) async fn trace_grpc(req: Request, next: Next) -> Response {
    let path = req.uri().path().trim_start_matches('/').to_owned();
    let (service, method) = path.split_once('/').unwrap_or((path.as_str(), ""));
    let span = tracing::info_span!(
        "request",
        otel.name = %path,
        otel.kind = "server",
        rpc.system = "grpc",
        rpc.service = service,
        rpc.method = method,
        rpc.grpc.status_code = Empty,
        project = Empty,
        vcluster = Empty,
        operation_id = Empty,
        operation_kind = Empty,
        otel.status_code = Empty,
    );
    let response = traced(&span, req, next).await;
    // An error answers "trailers only": its status is in the headers. A success's status
    // (0) comes in the trailers, after the span has ended.
    if let Some(code) = response
        .headers()
        .get("grpc-status")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<i64>().ok())
    {
        span.record("rpc.grpc.status_code", code);
        // UNKNOWN, DEADLINE_EXCEEDED, UNIMPLEMENTED, INTERNAL, UNAVAILABLE, DATA_LOSS.
        if matches!(code, 2 | 4 | 12 | 13 | 14 | 15) {
            span.record("otel.status_code", "ERROR");
        }
    }
    response
}

/// Continues the caller's trace in `span`, puts the span's own traceparent in the
/// request for the handler to store, and runs the rest of the stack inside the span.
async fn traced(span: &tracing::Span, mut req: Request, next: Next) -> Response {
    let stored = adopt(span, req.headers());
    if let Ok(value) = HeaderValue::from_str(&stored) {
        req.headers_mut().insert(TRACEPARENT, value);
    }
    next.run(req).instrument(span.clone()).await
}

/// Makes `span` a child of the caller's valid `traceparent` in `headers` (if any) and
/// returns the traceparent to store with the command: the span's own; without an
/// OpenTelemetry layer, the caller's valid one or a new one.
fn adopt(span: &tracing::Span, headers: &HeaderMap) -> String {
    let incoming = headers
        .get(TRACEPARENT)
        .and_then(|v| v.to_str().ok())
        .filter(|t| trace_context::parse(t).is_some())
        .map(str::to_owned);
    trace_context::continue_trace(span, incoming.as_deref());
    trace_context::traceparent_of(span)
        .or(incoming)
        .unwrap_or_else(trace_context::new_traceparent)
}

/// Records what a mutation asked for and what it started on the current span (the
/// request span, inside these middlewares).
pub(crate) fn record_operation(project: &str, vcluster: &str, kind: &str, operation_id: &str) {
    let span = tracing::Span::current();
    span.record("project", project);
    span.record("vcluster", vcluster);
    span.record("operation_kind", kind);
    span.record("operation_id", operation_id);
}

#[cfg(test)]
mod tests {
    use super::*;

    const CALLER: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

    #[test]
    fn without_a_layer_the_callers_traceparent_or_a_new_one_is_stored() {
        let span = tracing::info_span!("request");
        let mut headers = HeaderMap::new();
        headers.insert(TRACEPARENT, HeaderValue::from_static(CALLER));
        assert_eq!(adopt(&span, &headers), CALLER);
        // Invalid or absent: a new, valid traceparent of a new trace.
        headers.insert(TRACEPARENT, HeaderValue::from_static("00-zz-yy-01"));
        let new = adopt(&span, &headers);
        let parsed = trace_context::parse(&new).expect("a valid traceparent");
        assert_ne!(
            parsed.trace_id(),
            trace_context::parse(CALLER).unwrap().trace_id()
        );
        let other = adopt(&span, &HeaderMap::new());
        assert!(trace_context::parse(&other).is_some());
        assert_ne!(other, new);
    }
}
