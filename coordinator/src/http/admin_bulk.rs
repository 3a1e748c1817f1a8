//! Operators' bulk actions (docs/security.md §Admin API): re-queue or dismiss every dead letter
//! matching a filter, and cancel all of a tenant's queued jobs. Each is one Lua script per call
//! on Redis, capped per call (500 acted on, 2,500 examined) with a cursor to continue, and
//! audited per job.

use axum::Json;
use axum::extract::{Path, RawQuery, State};
use kontext_proto::JobQueue;
use kontext_proto::clock::now_ms;
use kontext_proto::dead_letters::{BulkAction, DeadFilter};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use super::admin::Admin;
use super::admin_jobs::{MAX_TENANT_CHARS, millis_param, tenant_param};
use super::error::{ApiError, ErrorBody};
use super::request::{query_pairs, query_param};
use crate::state::AppState;

/// One dead letter a bulk action took.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct BulkDeadItem {
    /// The dead job.
    pub id: String,
    /// The new job, after a re-queue.
    pub new_id: Option<String>,
}

/// What one bulk call did to the dead letters.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct BulkDeadReply {
    /// `requeue` or `dismiss`.
    pub action: String,
    /// Dead letters acted on by this call (at most 500), oldest first.
    pub count: usize,
    pub affected: Vec<BulkDeadItem>,
    /// Matching chain turns a re-queue left alone (append a turn to their chain instead).
    pub skipped_chain_turns: Vec<String>,
    /// True when more dead letters may match: call again with `cursor` = `next_cursor`.
    pub more: bool,
    pub next_cursor: Option<String>,
}

/// What one cancel-queued call did.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct CancelQueuedReply {
    pub tenant: String,
    /// Queued jobs canceled by this call (at most 500), newest first.
    pub canceled: usize,
    pub canceled_ids: Vec<String>,
    /// Running jobs met and left alone: they are not canceled by this action (cancel each
    /// with `POST /v1/jobs/{id}/cancel` as its tenant).
    pub running_untouched: u64,
    /// True when more queued jobs may remain: call again with `cursor` = `next_cursor`.
    pub more: bool,
    pub next_cursor: Option<String>,
}

fn dead_filter(query: Option<&str>) -> Result<(DeadFilter, Option<String>), ApiError> {
    let pairs = query_pairs(query);
    let filter = DeadFilter {
        tenant: tenant_param(&pairs)?,
        older_than: millis_param(&pairs, "older_than")?,
        newer_than: millis_param(&pairs, "newer_than")?,
    };
    Ok((filter, query_param(&pairs, "cursor").map(str::to_owned)))
}

async fn bulk(
    state: &AppState,
    admin: &Admin,
    action: BulkAction,
    query: Option<&str>,
) -> Result<Json<BulkDeadReply>, ApiError> {
    let (filter, cursor) = dead_filter(query)?;
    let out = state
        .queue
        .bulk_dead(action, &filter, cursor.as_deref(), &admin.actor, now_ms())
        .await?;
    Ok(Json(BulkDeadReply {
        action: action.as_str().into(),
        count: out.affected.len(),
        affected: out
            .affected
            .iter()
            .map(|(id, new)| BulkDeadItem {
                id: id.to_string(),
                new_id: new.map(|n| n.to_string()),
            })
            .collect(),
        skipped_chain_turns: out
            .skipped_chain_turns
            .iter()
            .map(ToString::to_string)
            .collect(),
        more: out.next_cursor.is_some(),
        next_cursor: out.next_cursor,
    }))
}

/// The dead-letter filter both bulk actions take (documentation only: `bulk` parses the query
/// itself, naming a bad field and its limit).
#[derive(utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[allow(dead_code)]
struct DeadFilterParams {
    /// Only this tenant's dead letters.
    #[param(min_length = 1, max_length = 256)]
    tenant: Option<String>,
    /// Dead-lettered before this time, ms since the Unix epoch.
    #[param(minimum = 0, maximum = 9_007_199_254_740_991_u64)]
    older_than: Option<u64>,
    /// Dead-lettered after this time, ms since the Unix epoch.
    #[param(minimum = 0, maximum = 9_007_199_254_740_991_u64)]
    newer_than: Option<u64>,
    /// next_cursor of the previous call.
    #[param(pattern = "^[0-9]{1,19}(-[0-9]{1,19})?$")]
    cursor: Option<String>,
}

/// Re-queue every dead letter matching the filter (all without one), oldest first, each as a
/// new job with its tenant, spec and priority (as `POST /v1/admin/dead/{id}/requeue`, each
/// audited); chain turns are skipped. At most 500 per call: follow `next_cursor` while `more`.
#[utoipa::path(
    post, path = "/v1/admin/dead/requeue", tag = "admin",
    params(DeadFilterParams),
    responses(
        (status = 200, description = "What this call re-queued", body = BulkDeadReply),
        (status = 400, description = "A bad filter or cursor (named, with its limit)",
            body = ErrorBody),
    ),
    security(("bearer" = []))
)]
pub async fn requeue_dead_matching(
    State(state): State<AppState>,
    admin: Admin,
    RawQuery(query): RawQuery,
) -> Result<Json<BulkDeadReply>, ApiError> {
    bulk(&state, &admin, BulkAction::Requeue, query.as_deref()).await
}

/// Dismiss every dead letter matching the filter (all without one), oldest first (as
/// `DELETE /v1/admin/dead/{id}`, each audited). At most 500 per call: follow `next_cursor`
/// while `more`.
#[utoipa::path(
    post, path = "/v1/admin/dead/dismiss", tag = "admin",
    params(DeadFilterParams),
    responses(
        (status = 200, description = "What this call dismissed", body = BulkDeadReply),
        (status = 400, description = "A bad filter or cursor (named, with its limit)",
            body = ErrorBody),
    ),
    security(("bearer" = []))
)]
pub async fn dismiss_dead_matching(
    State(state): State<AppState>,
    admin: Admin,
    RawQuery(query): RawQuery,
) -> Result<Json<BulkDeadReply>, ApiError> {
    bulk(&state, &admin, BulkAction::Dismiss, query.as_deref()).await
}

/// Cancel a tenant's queued jobs (those waiting for a retry included), newest first, as
/// `POST /v1/jobs/{id}/cancel` cancels a queued job; a queued chain turn cancels its chain, so
/// no later turn replaces it. Running jobs are left alone and counted. Each canceled job is
/// audited. At most 500 per call: follow `next_cursor` while `more`.
#[utoipa::path(
    post, path = "/v1/admin/tenants/{tenant}/cancel-queued", tag = "admin",
    params(
        ("tenant" = String, Path, description = "The tenant", min_length = 1, max_length = 256),
        ("cursor" = Option<String>, Query, description = "next_cursor of the previous call",
            pattern = "^[0-9]{20}:[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$"),
    ),
    responses(
        (status = 200, description = "What this call canceled", body = CancelQueuedReply),
        (status = 400, description = "A bad tenant or cursor", body = ErrorBody),
    ),
    security(("bearer" = []))
)]
pub async fn cancel_queued(
    State(state): State<AppState>,
    admin: Admin,
    Path(tenant): Path<String>,
    RawQuery(query): RawQuery,
) -> Result<Json<CancelQueuedReply>, ApiError> {
    if tenant.is_empty() || tenant.chars().count() > MAX_TENANT_CHARS {
        return Err(ApiError::bad_request(
            "tenant",
            format!("tenant must be 1 to {MAX_TENANT_CHARS} characters"),
        )
        .with_limit(format!("1..={MAX_TENANT_CHARS} characters")));
    }
    let pairs = query_pairs(query.as_deref());
    let out = state
        .queue
        .cancel_queued(
            &tenant,
            query_param(&pairs, "cursor"),
            &admin.actor,
            now_ms(),
        )
        .await?;
    Ok(Json(CancelQueuedReply {
        tenant,
        canceled: out.canceled.len(),
        canceled_ids: out.canceled.iter().map(ToString::to_string).collect(),
        running_untouched: out.running,
        more: out.next_cursor.is_some(),
        next_cursor: out.next_cursor,
    }))
}
