//! W3C trace context (<https://www.w3.org/TR/trace-context/>) between a tracing span and the
//! `traceparent` text that travels with a job: the coordinator stores the submitting request's
//! context in the job, the worker continues it, so one trace holds the request, the queue wait
//! and every stage of the attempt that ran it.

use std::collections::HashMap;
use std::time::SystemTime;

use opentelemetry::propagation::TextMapPropagator;
use opentelemetry::trace::{Span as _, TraceContextExt, Tracer as _};
use opentelemetry::{Context, KeyValue, global};
use opentelemetry_sdk::propagation::TraceContextPropagator;
use tracing_opentelemetry::OpenTelemetrySpanExt;

/// The header (and job field) name.
pub const TRACEPARENT: &str = "traceparent";
/// Vendor data that goes with it; kept when a request carries it.
pub const TRACESTATE: &str = "tracestate";

/// Makes `span` a child of the remote span named by `traceparent` (and `tracestate`). A missing
/// or malformed value leaves `span` where it is: the root of a new trace, as the W3C
/// recommendation asks of a receiver that cannot parse the header. Call before the span is
/// first entered.
pub fn continue_trace(span: &tracing::Span, traceparent: Option<&str>, tracestate: Option<&str>) {
    if let Some(parent) = remote_parent(traceparent, tracestate) {
        // Errors only when no OpenTelemetry layer is installed (then there is nothing to
        // continue) or the span already started (a caller's bug the trace shows).
        let _ = span.set_parent(parent);
    }
}

/// The remote span `traceparent` names, as a parent context; `None` when absent or malformed.
fn remote_parent(traceparent: Option<&str>, tracestate: Option<&str>) -> Option<Context> {
    let mut carrier = HashMap::with_capacity(2);
    carrier.insert(TRACEPARENT.to_owned(), traceparent?.to_owned());
    if let Some(state) = tracestate {
        carrier.insert(TRACESTATE.to_owned(), state.to_owned());
    }
    let parent = TraceContextPropagator::new().extract(&carrier);
    parent.span().span_context().is_valid().then_some(parent)
}

/// The `traceparent` naming `span`, for the job record; `None` when no OpenTelemetry layer is
/// installed.
pub fn traceparent_of(span: &tracing::Span) -> Option<String> {
    let mut carrier = HashMap::with_capacity(2);
    TraceContextPropagator::new().inject_context(&span.context(), &mut carrier);
    carrier.remove(TRACEPARENT)
}

/// `span`'s trace id in lower-case hex (what log lines carry), `None` without a trace.
pub fn trace_id_of(span: &tracing::Span) -> Option<String> {
    let context = span.context();
    let span_context = context.span().span_context().clone();
    span_context
        .is_valid()
        .then(|| span_context.trace_id().to_string())
}

/// Records `span`'s trace id in its `trace_id` field (declared `tracing::field::Empty`), so
/// every log line inside it carries the id.
pub fn record_trace_id(span: &tracing::Span) {
    if let Some(id) = trace_id_of(span) {
        span.record("trace_id", id.as_str());
    }
}

/// A span that already ended, from `start` to `end`, as a child of the remote span named by
/// `traceparent`: the time a job waited in the queue, which no process spent inside a tracing
/// span. Exported like any other span; nothing happens without a valid parent or exporter.
pub fn record_past_span(
    name: &'static str,
    traceparent: Option<&str>,
    start: SystemTime,
    end: SystemTime,
    attributes: Vec<KeyValue>,
) {
    let Some(parent) = remote_parent(traceparent, None) else {
        return;
    };
    let tracer = global::tracer(crate::TRACER_NAME);
    let mut span = tracer
        .span_builder(name)
        .with_start_time(start)
        .with_attributes(attributes)
        .start_with_context(&tracer, &parent);
    span.end_with_timestamp(end.max(start));
}
