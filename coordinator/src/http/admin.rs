//! The admin API (`/v1/admin/*`, docs/security.md §Admin API): operators' views across tenants,
//! behind admin keys of their own (`crate::admin_auth`). For now: the worker registry.

use axum::Json;
use axum::extract::{FromRequestParts, State};
use axum::http::request::Parts;
use kontext_proto::JobQueue;
use kontext_proto::clock::now_ms;
use kontext_proto::workers::WorkerInfo;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use super::error::{ApiError, ErrorBody};
use super::request::api_key;
use crate::admin_auth::AdminDecision;
use crate::auth_failures::ClientKey;
use crate::http_server::PeerAddr;
use crate::state::AppState;

/// A request made with an admin key (or to an open coordinator).
#[derive(Debug, Clone, Copy)]
pub struct Admin;

impl FromRequestParts<AppState> for Admin {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        let client = parts
            .extensions
            .get::<PeerAddr>()
            .map(|p| ClientKey::of(p.0.ip()));
        if let Some(c) = client
            && let Some(wait) = state.auth_failures.blocked_for(c)
        {
            state.metrics.auth_throttled.inc();
            return Err(ApiError::auth_throttled(wait));
        }
        match state.config.admin.decide(api_key(&parts.headers)) {
            AdminDecision::Allowed => Ok(Admin),
            AdminDecision::Disabled => Err(ApiError::forbidden(
                "Authorization",
                "the admin API is off: start the coordinator with --admin-keys",
            )),
            AdminDecision::Unauthorized => {
                state.metrics.auth_failed.inc();
                match client.and_then(|c| state.auth_failures.failed(c)) {
                    Some(wait) => Err(ApiError::auth_throttled(wait)),
                    None => Err(ApiError::admin_unauthorized()),
                }
            }
        }
    }
}

/// The live workers.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct WorkerList {
    /// Every worker whose registry record has not expired, by id.
    pub workers: Vec<WorkerInfo>,
}

/// The workers heartbeating into the registry: identity, device, model, current job and
/// progress, counts, cache hit ratios, LoRA set, draining. A worker that stops heartbeating
/// drops out after its lease TTL.
#[utoipa::path(
    get, path = "/v1/admin/workers", tag = "admin",
    responses(
        (status = 200, description = "The live workers", body = WorkerList),
        (status = 401, description = "Missing or unknown admin key", body = ErrorBody),
        (status = 403, description = "The admin API is off (no --admin-keys)", body = ErrorBody),
        (status = 429, description = "Too many failed authentications from this client",
            body = ErrorBody),
    ),
    security(("bearer" = []))
)]
pub async fn list_workers(
    State(state): State<AppState>,
    _: Admin,
) -> Result<Json<WorkerList>, ApiError> {
    let workers = state.queue.workers(now_ms()).await?;
    Ok(Json(WorkerList { workers }))
}
