//! Jobs for operators (docs/security.md §Admin API): any tenant's jobs, filtered by status,
//! tenant and creation time, one bounded page at a time (`kontext_proto::admin_jobs`: each call
//! examines at most five index entries per job it may return, so a page may come back short
//! with a cursor); and one job with its full history (`admin_history`).

use axum::Json;
use axum::extract::{RawQuery, State};
use kontext_proto::admin_jobs::{JobFilter, MAX_ADMIN_PAGE};
use kontext_proto::{JobQueue, JobRecord, JobStatus, Millis};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use super::admin::Admin;
use super::error::{ApiError, ErrorBody};
use super::request::{query_pairs, query_param};
use super::views::JobView;
use crate::state::AppState;

/// Page size of `GET /v1/admin/jobs` without `limit`.
pub const DEFAULT_ADMIN_PAGE: usize = 50;
/// Largest time a `from`/`to`-like parameter takes: JSON's largest exact integer.
pub const MAX_MILLIS: Millis = (1 << 53) - 1;
/// Longest tenant name a filter takes.
pub const MAX_TENANT_CHARS: usize = 256;

/// A job as operators see it: the tenant's view plus what only the queue knows.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct AdminJobView {
    #[serde(flatten)]
    pub job: JobView,
    pub tenant: String,
    /// `created_at` in ms since the epoch (what `from`/`to` compare).
    pub created_at_ms: Millis,
    /// Times a worker lost the lease (presumed crashed).
    pub crashes: u32,
    /// Fencing token: bumped on every claim and re-queue.
    pub epoch: u64,
    pub cancel_requested: bool,
    /// The worker running it, or the one that ran it last.
    pub worker: Option<String>,
    /// The chain and turn, for a chain's turn.
    pub chain_id: Option<String>,
    pub turn: Option<u32>,
}

impl AdminJobView {
    pub async fn of(state: &AppState, job: &JobRecord) -> Result<Self, ApiError> {
        Ok(Self {
            job: state.view(job).await?,
            tenant: job.tenant.clone(),
            created_at_ms: job.created_at,
            crashes: job.crashes,
            epoch: job.epoch,
            cancel_requested: job.cancel_requested,
            worker: job.worker.clone(),
            chain_id: job.chain.as_ref().map(|c| c.chain_id.clone()),
            turn: job.chain.as_ref().map(|c| c.turn),
        })
    }
}

/// One page of jobs across tenants.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct AdminJobList {
    /// Matching jobs, newest first; fewer than `limit` when the scan budget ran out first.
    pub jobs: Vec<AdminJobView>,
    /// Pass as `cursor` to continue; absent once nothing older is left.
    pub next_cursor: Option<String>,
}

/// A time parameter in ms since the epoch, at most `MAX_MILLIS`.
pub(super) fn millis_param(
    pairs: &[(String, String)],
    name: &str,
) -> Result<Option<Millis>, ApiError> {
    let Some(raw) = query_param(pairs, name) else {
        return Ok(None);
    };
    raw.parse::<Millis>()
        .ok()
        .filter(|ms| *ms <= MAX_MILLIS)
        .map(Some)
        .ok_or_else(|| {
            ApiError::bad_request(
                name,
                format!("{name} must be a time in ms since the Unix epoch (got {raw:?})"),
            )
            .with_limit(format!("0..={MAX_MILLIS}"))
        })
}

/// A tenant parameter: 1 to `MAX_TENANT_CHARS` characters.
pub(super) fn tenant_param(pairs: &[(String, String)]) -> Result<Option<String>, ApiError> {
    match query_param(pairs, "tenant") {
        None => Ok(None),
        Some(t) if !t.is_empty() && t.chars().count() <= MAX_TENANT_CHARS => Ok(Some(t.into())),
        Some(_) => Err(ApiError::bad_request(
            "tenant",
            format!("tenant must be 1 to {MAX_TENANT_CHARS} characters"),
        )
        .with_limit(format!("1..={MAX_TENANT_CHARS} characters"))),
    }
}

fn filter_of(pairs: &[(String, String)]) -> Result<JobFilter, ApiError> {
    let status = match query_param(pairs, "status") {
        None => None,
        Some(raw) => Some(raw.parse::<JobStatus>().map_err(|_| {
            ApiError::bad_request("status", format!("unknown status {raw:?}"))
                .with_limit("queued|running|succeeded|failed|canceled|dead")
        })?),
    };
    let (from, to) = (millis_param(pairs, "from")?, millis_param(pairs, "to")?);
    if let (Some(f), Some(t)) = (from, to)
        && f > t
    {
        return Err(
            ApiError::bad_request("from", format!("from ({f}) is after to ({t})"))
                .with_limit("from <= to"),
        );
    }
    Ok(JobFilter {
        status,
        tenant: tenant_param(pairs)?,
        from,
        to,
    })
}

fn limit_of(pairs: &[(String, String)]) -> Result<usize, ApiError> {
    match query_param(pairs, "limit") {
        None => Ok(DEFAULT_ADMIN_PAGE),
        Some(raw) => raw
            .parse::<usize>()
            .ok()
            .filter(|n| (1..=MAX_ADMIN_PAGE).contains(n))
            .ok_or_else(|| {
                ApiError::bad_request(
                    "limit",
                    format!("limit must be between 1 and {MAX_ADMIN_PAGE} (got {raw:?})"),
                )
                .with_limit(format!("1..={MAX_ADMIN_PAGE}"))
            }),
    }
}

/// Jobs of every tenant (or one), newest first, filtered by status and creation time. Each
/// call examines at most 5 × `limit` index entries, so a rare status can come back on a short
/// (even empty) page with a `next_cursor`: follow it until it is absent.
#[utoipa::path(
    get, path = "/v1/admin/jobs", tag = "admin",
    params(
        ("status" = Option<JobStatus>, Query, description = "Only jobs in this state"),
        ("tenant" = Option<String>, Query, description = "Only this tenant's jobs",
            min_length = 1, max_length = 256),
        ("from" = Option<u64>, Query, description = "Created at or after, ms since the Unix \
            epoch", minimum = 0, maximum = 9_007_199_254_740_991_u64),
        ("to" = Option<u64>, Query, description = "Created at or before, ms since the Unix \
            epoch (not before `from`)", minimum = 0, maximum = 9_007_199_254_740_991_u64),
        ("cursor" = Option<String>, Query, description = "next_cursor of the previous page",
            pattern = "^[0-9]{20}:[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$"),
        ("limit" = Option<u32>, Query, description = "Page size, 1..=200 (default 50)",
            minimum = 1, maximum = 200),
    ),
    responses(
        (status = 200, description = "One page, newest first", body = AdminJobList),
        (status = 400, description = "A bad filter, cursor or limit (named, with its limit)",
            body = ErrorBody, example = json!({"error": {"type": "bad_request", "field": "from",
                "message": "from must be a time in ms since the Unix epoch (got \"yesterday\")",
                "limit": "0..=9007199254740991"}})),
    ),
    security(("bearer" = []))
)]
pub async fn list_jobs(
    State(state): State<AppState>,
    _: Admin,
    RawQuery(query): RawQuery,
) -> Result<Json<AdminJobList>, ApiError> {
    let pairs = query_pairs(query.as_deref());
    let filter = filter_of(&pairs)?;
    let limit = limit_of(&pairs)?;
    let page = state
        .queue
        .admin_jobs(&filter, query_param(&pairs, "cursor"), limit)
        .await?;
    let mut jobs = Vec::with_capacity(page.jobs.len());
    for job in &page.jobs {
        jobs.push(AdminJobView::of(&state, job).await?);
    }
    Ok(Json(AdminJobList {
        jobs,
        next_cursor: page.next_cursor,
    }))
}
