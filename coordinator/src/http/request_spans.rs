//! Traces of the HTTP surface (docs/tracing.md): one server span per request, continuing the
//! caller's W3C `traceparent` when it sends a valid one, and the `enqueue` span whose context a
//! job carries to the worker that runs it.

use axum::extract::{MatchedPath, Request};
use axum::middleware::Next;
use axum::response::Response;
use kontext_telemetry::{TRACEPARENT, TRACESTATE, continue_trace, record_trace_id};
use tracing::Instrument;
use tracing::field::Empty;

/// Routes probed every few seconds by load balancers and Prometheus: no spans, or they would
/// bury every trace worth reading.
const UNTRACED: &[&str] = &["/healthz", "/readyz", "/metrics"];

/// Runs the request inside an `http.request` span named `METHOD /route/{template}` (the closed
/// set of `count_requests`' labels, so no request names a span after its own path).
pub async fn trace_requests(request: Request, next: Next) -> Response {
    let route = request
        .extensions()
        .get::<MatchedPath>()
        .map_or("unmatched", |p| p.as_str())
        .to_owned();
    if UNTRACED.contains(&route.as_str()) {
        return next.run(request).await;
    }
    let method = super::method_label(request.method());
    let span = tracing::info_span!(
        "http.request",
        otel.name = %format!("{method} {route}"),
        otel.kind = "server",
        otel.status_code = Empty,
        http.request.method = method,
        http.route = %route,
        http.response.status_code = Empty,
        trace_id = Empty,
        job_id = Empty,
    );
    {
        let header = |name: &str| request.headers().get(name).and_then(|v| v.to_str().ok());
        continue_trace(&span, header(TRACEPARENT), header(TRACESTATE));
    }
    record_trace_id(&span);
    let response = next.run(request).instrument(span.clone()).await;
    let status = response.status();
    span.record("http.response.status_code", status.as_u16());
    if status.is_server_error() {
        span.record("otel.status_code", "ERROR");
    }
    response
}

/// The span around the queue call that stores a job (or a chain's turns), and the
/// `traceparent` naming it, which the stored specs carry: the worker's `job` span becomes its
/// child.
pub fn enqueue_span() -> (tracing::Span, Option<String>) {
    let span = tracing::info_span!("enqueue", job_id = Empty, chain_id = Empty);
    let traceparent = kontext_telemetry::traceparent_of(&span);
    (span, traceparent)
}

/// Names the job in the enqueue span and in the request span around it (and so in their log
/// lines).
pub fn record_job(enqueue: &tracing::Span, job_id: &dyn std::fmt::Display) {
    let id = job_id.to_string();
    enqueue.record("job_id", id.as_str());
    tracing::Span::current().record("job_id", id.as_str());
}
