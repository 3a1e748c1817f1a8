//! `/healthz` (liveness: the process answers), `/readyz` (readiness: the queue answers within a
//! second) and `/metrics` (Prometheus). None of them needs an API key.

use std::time::Duration;

use axum::extract::State;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use kontext_proto::JobQueue;

use crate::state::{AppState, now_ms};

/// Longest wait for the queue in readiness and metrics checks.
const QUEUE_CHECK: Duration = Duration::from_secs(1);

/// Liveness.
#[utoipa::path(get, path = "/healthz", tag = "operations",
    responses((status = 200, description = "The process is alive", body = String, example = "ok")))]
pub async fn healthz() -> &'static str {
    "ok"
}

/// Readiness: the queue answers within a second.
#[utoipa::path(get, path = "/readyz", tag = "operations",
    responses(
        (status = 200, description = "The queue answers", body = String, example = "ready"),
        (status = 503, description = "The queue does not answer", body = String,
            example = "not ready: queue: timed out"),
    ))]
pub async fn readyz(State(state): State<AppState>) -> Response {
    match tokio::time::timeout(QUEUE_CHECK, state.queue.stats(now_ms())).await {
        Ok(Ok(_)) => (StatusCode::OK, "ready").into_response(),
        Ok(Err(e)) => {
            // The error names backend hosts and addresses: the log gets it, the (unauthenticated)
            // probe answer does not.
            tracing::warn!(error = %e, "readiness: the queue failed");
            (
                StatusCode::SERVICE_UNAVAILABLE,
                "not ready: queue: unavailable",
            )
                .into_response()
        }
        Err(_) => (
            StatusCode::SERVICE_UNAVAILABLE,
            "not ready: queue: timed out",
        )
            .into_response(),
    }
}

/// Prometheus metrics.
#[utoipa::path(get, path = "/metrics", tag = "operations",
    responses((status = 200, description = "Prometheus text format 0.0.4", body = String,
        content_type = "text/plain")))]
pub async fn metrics(State(state): State<AppState>) -> Response {
    let stats = match tokio::time::timeout(QUEUE_CHECK, state.queue.stats(now_ms())).await {
        Ok(Ok(stats)) => Some(stats),
        Ok(Err(e)) => {
            tracing::warn!(error = %e, "metrics: queue stats failed");
            None
        }
        Err(_) => None,
    };
    let mut body = state.metrics.render(stats.as_ref());
    if let Some(extra) = state.extra_metrics() {
        body.push_str(&extra);
    }
    (
        [(
            header::CONTENT_TYPE,
            HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
        )],
        body,
    )
        .into_response()
}
