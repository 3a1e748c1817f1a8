//! The worker's operations endpoint on `--metrics-listen`: `/healthz` (liveness: 503 once the
//! engine is dead, so the orchestrator restarts the pod), `/readyz` (readiness: 200 only when
//! the model is loaded, the warm-up step ran and the worker takes jobs; 503 while loading and
//! draining) and `/metrics` (Prometheus text format).
//!
//! It starts before the model loads, so a startup probe sees the process alive during a long load.

use std::future::Future;
use std::sync::Arc;

use axum::Router;
use axum::extract::State;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use tokio::net::TcpListener;

use crate::metrics::WorkerStatus;

/// The three routes over `status`.
pub fn router(status: Arc<WorkerStatus>) -> Router {
    Router::new()
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .with_state(status)
}

/// Serves `router(status)` on `listener` until `shutdown` resolves.
pub async fn serve(
    listener: TcpListener,
    status: Arc<WorkerStatus>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    axum::serve(listener, router(status))
        .with_graceful_shutdown(shutdown)
        .await
}

async fn healthz(State(status): State<Arc<WorkerStatus>>) -> Response {
    match status.fatal() {
        None => (StatusCode::OK, "ok").into_response(),
        Some(reason) => {
            (StatusCode::SERVICE_UNAVAILABLE, format!("dead: {reason}")).into_response()
        }
    }
}

async fn readyz(State(status): State<Arc<WorkerStatus>>) -> Response {
    if status.is_ready() {
        return (StatusCode::OK, "ready").into_response();
    }
    let why = if let Some(reason) = status.fatal() {
        format!("not ready: {reason}")
    } else if status.is_draining() {
        "not ready: draining".to_owned()
    } else {
        "not ready: loading the model or warming up".to_owned()
    };
    (StatusCode::SERVICE_UNAVAILABLE, why).into_response()
}

async fn metrics(State(status): State<Arc<WorkerStatus>>) -> Response {
    (
        [(
            header::CONTENT_TYPE,
            HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
        )],
        status.render(),
    )
        .into_response()
}
