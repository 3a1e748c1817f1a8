//! The HTTP surface: `router(state)` and `ApiDoc` (the OpenAPI document, generated from the
//! handlers' `#[utoipa::path]` annotations; `docs/openapi.json` is its committed output and a test
//! fails when they drift).
//!
//! Routes: native jobs API (`jobs`, `events`, `results`), chains (`chains`), uploads,
//! BFL-compatible routes (`bfl`), and operations (`health`). Every error answers through
//! `error::ApiError`.

pub mod admin;
pub mod admin_bulk;
pub mod admin_history;
pub mod admin_jobs;
pub mod admin_media;
pub mod bfl;
pub mod chain_views;
pub mod chains;
pub mod common_responses;
pub mod error;
pub mod events;
pub mod health;
pub mod jobs;
pub mod open_mode;
pub mod request;
pub mod request_spans;
pub mod results;
pub mod uploads;
pub mod views;
pub mod webhook_secret;

use axum::Router;
use axum::extract::{MatchedPath, Request, State};
use axum::middleware::{self, Next};
use axum::response::Response;
use axum::routing::{delete, get, post};
use kontext_proto::validate::JobRequest;
use kontext_proto::validate_chain::{ChainRequest, TurnRequest};
use kontext_proto::{CancelOutcome, ChainStatus, JobKind, JobStatus, TurnState};
use utoipa::openapi::security::{ApiKey, ApiKeyValue, HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::{Modify, OpenApi};

use crate::state::AppState;
use common_responses::CommonResponses;

#[derive(OpenApi)]
#[openapi(
    info(
        title = "Kontext Fleet",
        description = "Self-hosted FLUX.1 Kontext image generation and editing: asynchronous \
            jobs over a Redis queue, GPU workers, results in S3-compatible storage. \
            Authenticate with `Authorization: Bearer <key>` or BFL's `x-key: <key>` (open \
            access as tenant \"default\" when the server runs without keys on loopback). \
            Every 4xx body is `{\"error\": {type, field, message, limit?}}` naming the field.",
        license(name = "Apache-2.0")
    ),
    paths(
        jobs::create_job, jobs::list_jobs, jobs::get_job, jobs::cancel_job,
        events::job_events, results::job_result, results::signed_blob,
        uploads::upload,
        uploads::upload_lora,
        chains::create_chain, chains::get_chain, chains::append_turn, chains::fork_chain,
        chains::cancel_chain,
        webhook_secret::webhook_secret,
        admin::list_workers, admin::usage, admin::drain_worker, admin::audit,
        admin::queue_overview, admin::dead_letters, admin::requeue_dead, admin::dismiss_dead,
        admin_media::job_result, admin_media::job_input, admin_media::chain,
        admin_jobs::list_jobs, admin_history::job_detail, admin_bulk::requeue_dead_matching,
        admin_bulk::dismiss_dead_matching, admin_bulk::cancel_queued,
        bfl::create_task, bfl::get_result,
        health::healthz, health::readyz, health::metrics,
    ),
    components(schemas(
        JobRequest, views::JobAccepted, views::JobView, views::JobList, views::ResultView,
        views::JobErrorView, JobStatus, JobKind, views::CancelReply, CancelOutcome,
        views::UploadReply, views::LoraUploadReply, kontext_proto::loras::LoraRequest,
        kontext_proto::loras::LoraSpec, kontext_proto::loras::AppliedLora,
        kontext_proto::StageTimings, error::ErrorBody, error::ErrorDetail, error::ErrorType,
        bfl::BflRequest, bfl::BflSubmitted, bfl::BflResult, bfl::BflSample,
        ChainRequest, TurnRequest, chain_views::ForkChain,
        chain_views::ChainAccepted, chain_views::TurnAccepted, chain_views::ChainView,
        chain_views::TurnView, ChainStatus, TurnState,
        chain_views::ForkedFrom, chain_views::ChainCancelReply, webhook_secret::WebhookSecret,
        admin::WorkerList, kontext_proto::workers::WorkerInfo, admin::UsageReport,
        admin::DrainReply, admin::AuditLog, kontext_proto::workers::AuditEntry,
        admin::QueueOverview, admin::DeadLetterList, admin::DeadLetterReply,
        kontext_proto::dead_letters::DeadLetter,
        admin_jobs::AdminJobView, admin_jobs::AdminJobList, admin_history::AdminJobDetail,
        admin_history::AdminEventView, kontext_proto::job_history::Attempt,
        kontext_proto::job_history::AttemptEnd, kontext_proto::job_history::HistoryEntry,
        kontext_proto::JobError, kontext_proto::JobErrorKind,
        kontext_proto::throughput::ThroughputSummary, kontext_proto::throughput::MinuteSummary,
        admin_bulk::BulkDeadItem, admin_bulk::BulkDeadReply, admin_bulk::CancelQueuedReply,
        kontext_proto::usage::UsageRow,
    )),
    modifiers(&SecuritySchemes, &CommonResponses),
    tags(
        (name = "jobs", description = "Native job API"),
        (name = "uploads", description = "Input images"),
        (name = "chains", description = "Storyboards: chains of edit turns that carry state"),
        (name = "bfl", description = "BFL-compatible routes: change a BFL client's base URL"),
        (name = "operations", description = "Health and metrics (no API key)"),
        (name = "admin", description = "Operators' views across tenants, with an admin key \
            (--admin-keys; open in open loopback mode)"),
    )
)]
pub struct ApiDoc;

struct SecuritySchemes;

impl Modify for SecuritySchemes {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(HttpBuilder::new().scheme(HttpAuthScheme::Bearer).build()),
        );
        components.add_security_scheme(
            "x_key",
            SecurityScheme::ApiKey(ApiKey::Header(ApiKeyValue::new("x-key"))),
        );
    }
}

/// The OpenAPI document as pretty JSON with a trailing newline (what `print-openapi` prints and
/// docs/openapi.json holds).
pub fn openapi_json() -> String {
    let mut text = ApiDoc::openapi()
        .to_pretty_json()
        .expect("the OpenAPI document serializes; this is a bug");
    text.push('\n');
    text
}

/// Every route, with the state applied.
pub fn router(state: AppState) -> Router {
    let bfl_create = post(bfl::create_task);
    Router::new()
        .route("/v1/jobs", post(jobs::create_job).get(jobs::list_jobs))
        .route("/v1/jobs/{id}", get(jobs::get_job))
        .route("/v1/jobs/{id}/cancel", post(jobs::cancel_job))
        .route("/v1/jobs/{id}/events", get(events::job_events))
        .route("/v1/jobs/{id}/result", get(results::job_result))
        .route("/v1/blobs/{*key}", get(results::signed_blob))
        .route("/v1/uploads", post(uploads::upload))
        .route("/v1/loras", post(uploads::upload_lora))
        .route("/v1/chains", post(chains::create_chain))
        .route("/v1/chains/{id}", get(chains::get_chain))
        .route("/v1/chains/{id}/turns", post(chains::append_turn))
        .route("/v1/chains/{id}/fork", post(chains::fork_chain))
        .route("/v1/chains/{id}/cancel", post(chains::cancel_chain))
        .route("/v1/webhook_secret", get(webhook_secret::webhook_secret))
        .route("/v1/admin/workers", get(admin::list_workers))
        .route("/v1/admin/usage", get(admin::usage))
        .route("/v1/admin/workers/{id}/drain", post(admin::drain_worker))
        .route("/v1/admin/audit", get(admin::audit))
        .route("/v1/admin/queue", get(admin::queue_overview))
        .route("/v1/admin/jobs", get(admin_jobs::list_jobs))
        .route("/v1/admin/jobs/{id}", get(admin_history::job_detail))
        .route("/v1/admin/dead", get(admin::dead_letters))
        .route("/v1/admin/dead/{id}", delete(admin::dismiss_dead))
        .route("/v1/admin/dead/{id}/requeue", post(admin::requeue_dead))
        .route("/v1/admin/jobs/{id}/result", get(admin_media::job_result))
        .route("/v1/admin/jobs/{id}/input", get(admin_media::job_input))
        .route("/v1/admin/chains/{id}", get(admin_media::chain))
        .merge(crate::console::routes())
        .route(
            "/v1/admin/dead/requeue",
            post(admin_bulk::requeue_dead_matching),
        )
        .route(
            "/v1/admin/dead/dismiss",
            post(admin_bulk::dismiss_dead_matching),
        )
        .route(
            "/v1/admin/tenants/{tenant}/cancel-queued",
            post(admin_bulk::cancel_queued),
        )
        .route("/v1/flux-kontext-dev", bfl_create.clone())
        .route("/v1/flux-kontext-pro", bfl_create.clone())
        .route("/v1/flux-kontext-max", bfl_create)
        .route("/v1/get_result", get(bfl::get_result))
        .route("/healthz", get(health::healthz))
        .route("/readyz", get(health::readyz))
        .route("/metrics", get(health::metrics))
        .fallback(error::no_route)
        .layer(middleware::from_fn_with_state(
            state.clone(),
            open_mode::guard,
        ))
        .layer(middleware::from_fn_with_state(
            state.clone(),
            count_requests,
        ))
        .layer(middleware::from_fn(request_spans::trace_requests))
        .with_state(state)
}

/// Counts requests per (method, route template, status) for `kontext_http_requests_total`.
/// Every label comes from a closed set, so no request can add label values: the method is one of
/// the standard ones or `other` (any token is a valid HTTP method, unauthenticated), the route is
/// a template of the router or `unmatched`.
async fn count_requests(State(state): State<AppState>, request: Request, next: Next) -> Response {
    let method = method_label(request.method());
    let route = request
        .extensions()
        .get::<MatchedPath>()
        .map_or_else(|| "unmatched".to_owned(), |p| p.as_str().to_owned());
    let response = next.run(request).await;
    state
        .metrics
        .http_request(method, &route, response.status().as_u16());
    response
}

/// The metrics label of an HTTP method: the standard ones by name, anything else `other`.
pub(crate) fn method_label(method: &axum::http::Method) -> &'static str {
    use axum::http::Method;
    match *method {
        Method::GET => "GET",
        Method::POST => "POST",
        Method::PUT => "PUT",
        Method::DELETE => "DELETE",
        Method::HEAD => "HEAD",
        Method::OPTIONS => "OPTIONS",
        Method::PATCH => "PATCH",
        Method::TRACE => "TRACE",
        Method::CONNECT => "CONNECT",
        _ => "other",
    }
}
