//! W3C `traceparent` in and out of messages, so one trace follows an event across services.
//!
//! Written by hand (`00-<trace id>-<span id>-<flags>`) rather than through an OpenTelemetry
//! propagator so this crate does not depend on the SDK; the format is fixed by the W3C spec.

use opentelemetry::trace::{SpanContext, SpanId, TraceContextExt, TraceFlags, TraceId, TraceState};
use tracing_opentelemetry::OpenTelemetrySpanExt;

/// The current span's `traceparent`, or `None` when no OpenTelemetry layer records it.
pub fn current_traceparent() -> Option<String> {
    let context = tracing::Span::current().context();
    let span = context.span();
    let span_context = span.span_context();
    span_context.is_valid().then(|| {
        format!(
            "00-{:032x}-{:016x}-{:02x}",
            span_context.trace_id(),
            span_context.span_id(),
            span_context.trace_flags()
        )
    })
}

/// Parses a `traceparent` header value into a remote span context.
pub fn parse_traceparent(value: &str) -> Option<SpanContext> {
    let mut parts = value.trim().split('-');
    let (version, trace, span, flags) =
        (parts.next()?, parts.next()?, parts.next()?, parts.next()?);
    if version != "00" || trace.len() != 32 || span.len() != 16 || flags.len() != 2 {
        return None;
    }
    let context = SpanContext::new(
        TraceId::from_hex(trace).ok()?,
        SpanId::from_hex(span).ok()?,
        TraceFlags::new(u8::from_str_radix(flags, 16).ok()?),
        true,
        TraceState::default(),
    );
    context.is_valid().then_some(context)
}

/// Makes `span` a child of the trace in `traceparent` (no-op when absent or malformed).
pub fn set_parent_from(span: &tracing::Span, traceparent: Option<&str>) {
    if let Some(remote) = traceparent.and_then(parse_traceparent) {
        let context = opentelemetry::Context::new().with_remote_span_context(remote);
        let _ = span.set_parent(context);
    }
}

/// Links `span` to `target`'s span context (no-op when either is not recorded by OpenTelemetry).
/// A batch span serves entries of many traces, so it has no single parent; links are how
/// OpenTelemetry relates it to each of them.
pub fn link_to(span: &tracing::Span, target: &tracing::Span) {
    let context = target.context();
    let target = context.span().span_context().clone();
    if target.is_valid() {
        span.add_link(target);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn traceparent_parses_and_rejects_malformed_values() {
        let parsed = parse_traceparent("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01");
        let Some(context) = parsed else { panic!("valid traceparent rejected") };
        assert_eq!(format!("{:032x}", context.trace_id()), "4bf92f3577b34da6a3ce929d0e0e4736");
        assert!(context.is_sampled());
        assert!(
            parse_traceparent("01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01").is_none()
        );
        assert!(
            parse_traceparent("00-00000000000000000000000000000000-00f067aa0ba902b7-01").is_none()
        );
        assert!(parse_traceparent("garbage").is_none());
    }
}
