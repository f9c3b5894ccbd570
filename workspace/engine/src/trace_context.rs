//! W3C trace context between processes: the `traceparent` an API request stores in its
//! command event's metadata, and the worker that runs the operation (another process,
//! possibly after a crash and a lease steal) continues, so one trace shows the call and
//! every step and retry.
//!
//! It parses and formats `traceparent` itself (W3C Trace Context level 1) so that the API
//! and the engine need only the `opentelemetry` API crate, not the SDK: the binary decides
//! whether spans are exported (see `ovc-cli`'s `telemetry`). Spans get their OpenTelemetry
//! context through `tracing-opentelemetry`; without its layer (library use, in-process
//! tests) a span has no context and [`traceparent_of`] answers `None`.

use opentelemetry::trace::{SpanContext, SpanId, TraceContextExt, TraceFlags, TraceId, TraceState};
use tracing_opentelemetry::OpenTelemetrySpanExt;

/// The remote span context a `traceparent` header names, or `None` when the value is not
/// a valid W3C traceparent (which W3C says to treat as absent: a new trace starts).
pub fn parse(traceparent: &str) -> Option<SpanContext> {
    let mut parts = traceparent.trim().split('-');
    let (version, trace, span, flags) =
        (parts.next()?, parts.next()?, parts.next()?, parts.next()?);
    let rest = parts.next();
    let lower_hex = |s: &str, len: usize| {
        s.len() == len
            && s.bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
    };
    if !lower_hex(version, 2) || version == "ff" || !lower_hex(flags, 2) {
        return None;
    }
    // Version 00 has exactly four fields; later versions may append more.
    if version == "00" && rest.is_some() {
        return None;
    }
    if !lower_hex(trace, 32) || !lower_hex(span, 16) {
        return None;
    }
    let trace_id = TraceId::from_hex(trace).ok()?;
    let span_id = SpanId::from_hex(span).ok()?;
    let flags = u8::from_str_radix(flags, 16).ok()?;
    let cx = SpanContext::new(
        trace_id,
        span_id,
        TraceFlags::new(flags) & TraceFlags::SAMPLED,
        true,
        TraceState::default(),
    );
    cx.is_valid().then_some(cx)
}

/// `cx` as a version-00 `traceparent`.
pub fn format(cx: &SpanContext) -> String {
    format!(
        "00-{}-{}-{:02x}",
        cx.trace_id(),
        cx.span_id(),
        cx.trace_flags().to_u8() & TraceFlags::SAMPLED.to_u8()
    )
}

/// A `traceparent` of a new trace (random trace and span ids, sampled): what the API
/// stores when neither the caller nor an OpenTelemetry layer gave the request a context,
/// so the worker still has a parent to continue.
pub fn new_traceparent() -> String {
    let trace = uuid::Uuid::new_v4().as_u128();
    let span = (uuid::Uuid::new_v4().as_u128() as u64).max(1);
    format(&SpanContext::new(
        TraceId::from(trace),
        SpanId::from(span),
        TraceFlags::SAMPLED,
        false,
        TraceState::default(),
    ))
}

/// Makes `span` a child of the remote span `traceparent` names (a no-op for an absent or
/// invalid value, or without the OpenTelemetry layer). Call it before the span is first
/// entered.
pub fn continue_trace(span: &tracing::Span, traceparent: Option<&str>) {
    if let Some(remote) = traceparent.and_then(parse) {
        let parent = opentelemetry::Context::new().with_remote_span_context(remote);
        if let Err(e) = span.set_parent(parent) {
            tracing::debug!(error = %e, "cannot continue the trace");
        }
    }
}

/// The `traceparent` of `span` itself (its trace id and its own span id), or `None` when
/// it has no valid OpenTelemetry context (no layer, or the span is disabled).
pub fn traceparent_of(span: &tracing::Span) -> Option<String> {
    let cx = span.context();
    let sc = cx.span().span_context().clone();
    sc.is_valid().then(|| format(&sc))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn traceparents_parse_and_format_back() {
        let tp = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
        let cx = parse(tp).expect("valid");
        assert_eq!(
            cx.trace_id(),
            TraceId::from_hex("4bf92f3577b34da6a3ce929d0e0e4736").unwrap()
        );
        assert!(cx.is_sampled());
        assert!(cx.is_remote());
        assert_eq!(format(&cx), tp);
        let unsampled = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-00";
        assert_eq!(format(&parse(unsampled).unwrap()), unsampled);
        // A future version may carry more fields; its known prefix is used.
        assert!(parse("01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-xyz").is_some());
    }

    #[test]
    fn invalid_traceparents_are_absent() {
        for bad in [
            "",
            "garbage",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-extra",
            "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
            "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e473-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-0g",
        ] {
            assert!(parse(bad).is_none(), "{bad:?}");
        }
    }

    #[test]
    fn new_traceparents_are_valid_and_distinct() {
        let a = new_traceparent();
        let b = new_traceparent();
        assert!(parse(&a).is_some(), "{a}");
        assert_ne!(parse(&a).unwrap().trace_id(), parse(&b).unwrap().trace_id());
    }

    #[test]
    fn without_the_layer_a_span_has_no_traceparent() {
        let span = tracing::info_span!("request");
        continue_trace(
            &span,
            Some("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"),
        );
        assert_eq!(traceparent_of(&span), None);
    }
}
