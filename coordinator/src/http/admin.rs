//! The admin API (`/v1/admin/*`, docs/security.md §Admin API): operators' views across tenants,
//! behind admin keys of their own (`crate::admin_auth`): the queue at a glance, the worker
//! registry and draining a worker, dead letters (list, re-queue, dismiss), usage per tenant, and
//! the audit log of admin actions.

use axum::Json;
use axum::extract::{FromRequestParts, Path, RawQuery, State};
use axum::http::StatusCode;
use axum::http::request::Parts;
use kontext_proto::clock::now_ms;
use kontext_proto::dead_letters::{DeadLetter, DismissOutcome, RequeueOutcome};
use kontext_proto::throughput::{ThroughputSummary, summarize};
use kontext_proto::usage::{MAX_USAGE_DAYS, UsageRow, day_name, day_of, parse_day};
use kontext_proto::workers::{AuditEntry, DrainOutcome, WorkerInfo};
use kontext_proto::{JobId, JobQueue, Priority};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use super::error::{ApiError, ErrorBody};
use super::request::{api_key, auth_failed, query_pairs, query_param, unthrottled_client};
use crate::admin_auth::AdminDecision;
use crate::state::AppState;

/// A request made with an admin key (or to an open coordinator).
#[derive(Debug, Clone)]
pub struct Admin {
    /// Who it is, as the audit log names them (`AdminAuth::actor`).
    pub actor: String,
}

impl FromRequestParts<AppState> for Admin {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        // The console's session cookie reads (its pages' images and live chart); it never
        // authorises an action here, so no cross-site form can use it against this API.
        if parts.method == axum::http::Method::GET
            && let Some(actor) = crate::console::session_actor(state, &parts.headers)
        {
            return Ok(Admin { actor });
        }
        let client = unthrottled_client(parts, state)?;
        // The admin routes take `Authorization: Bearer` only (their documented scheme): without
        // it a request is unauthenticated (401) whether or not the admin API is on.
        let bearer = parts
            .headers
            .contains_key(axum::http::header::AUTHORIZATION);
        let key = api_key(&parts.headers);
        match state.config.admin.decide(key) {
            AdminDecision::Allowed => Ok(Admin {
                actor: state.config.admin.actor(key),
            }),
            AdminDecision::Disabled if !bearer => {
                Err(auth_failed(state, client, ApiError::admin_unauthorized()))
            }
            AdminDecision::Disabled => Err(ApiError::forbidden(
                "Authorization",
                "the admin API is off: start the coordinator with --admin-keys",
            )),
            AdminDecision::Unauthorized => {
                Err(auth_failed(state, client, ApiError::admin_unauthorized()))
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

/// Days `GET /v1/admin/usage` covers without `from`.
pub const DEFAULT_USAGE_DAYS: u32 = 30;

/// Usage per tenant and day.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct UsageReport {
    /// First and last UTC day covered, `YYYY-MM-DD`.
    pub from: String,
    pub to: String,
    /// One row per day and tenant with a succeeded job, by day then tenant.
    pub usage: Vec<UsageRow>,
}

fn day_param(pairs: &[(String, String)], name: &str, default: u32) -> Result<u32, ApiError> {
    match query_param(pairs, name) {
        None => Ok(default),
        Some(raw) => parse_day(raw).ok_or_else(|| {
            ApiError::bad_request(
                name,
                format!("{name} must be a date YYYY-MM-DD (got {raw:?})"),
            )
            .with_limit("YYYY-MM-DD")
        }),
    }
}

/// Engine time (GPU-seconds on GPU workers), images and steps per tenant per UTC day, counted
/// in the commit of each succeeded job (never twice under redelivery).
#[utoipa::path(
    get, path = "/v1/admin/usage", tag = "admin",
    params(
        ("from" = Option<String>, Query, description = "First UTC day, YYYY-MM-DD (default: 29 \
            days before `to`)", pattern = "^[0-9]{4}-[0-9]{2}-[0-9]{2}$"),
        ("to" = Option<String>, Query, description = "Last UTC day, YYYY-MM-DD (default: today)",
            pattern = "^[0-9]{4}-[0-9]{2}-[0-9]{2}$"),
        ("tenant" = Option<String>, Query, description = "Only this tenant"),
    ),
    responses(
        (status = 200, description = "Usage per tenant and day", body = UsageReport),
        (status = 400, description = "A date that is not YYYY-MM-DD", body = ErrorBody),
        (status = 422, description = "`from` after `to`, or more than 400 days", body = ErrorBody,
            example = json!({"error": {"type": "invalid_request", "field": "from",
                "message": "from..to covers 500 days; at most 400", "limit": "..=400 days"}})),
    ),
    security(("bearer" = []))
)]
pub async fn usage(
    State(state): State<AppState>,
    _: Admin,
    RawQuery(query): RawQuery,
) -> Result<Json<UsageReport>, ApiError> {
    let pairs = query_pairs(query.as_deref());
    let to = day_param(&pairs, "to", day_of(now_ms()))?;
    let from = day_param(&pairs, "from", to.saturating_sub(DEFAULT_USAGE_DAYS - 1))?;
    if from > to {
        return Err(ApiError::invalid("from", "from is after to"));
    }
    let days = to - from + 1;
    if days > MAX_USAGE_DAYS {
        return Err(ApiError::invalid(
            "from",
            format!("from..to covers {days} days; at most {MAX_USAGE_DAYS}"),
        )
        .with_limit(format!("..={MAX_USAGE_DAYS} days")));
    }
    let mut rows = state.queue.usage(from, to).await?;
    if let Some(tenant) = query_param(&pairs, "tenant") {
        rows.retain(|r| r.tenant == tenant);
    }
    Ok(Json(UsageReport {
        from: day_name(from),
        to: day_name(to),
        usage: rows,
    }))
}

/// What a drain request did.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct DrainReply {
    pub worker: String,
    /// `drain_requested`: the worker drains at its next heartbeat (within a third of its lease
    /// TTL): it finishes or releases its job, claims no more, and exits.
    pub status: String,
}

/// Ask a worker to drain, as SIGTERM would (audited).
#[utoipa::path(
    post, path = "/v1/admin/workers/{id}/drain", tag = "admin",
    params(("id" = String, Path, description = "Worker id, as GET /v1/admin/workers lists it")),
    responses(
        (status = 202, description = "Requested", body = DrainReply),
        (status = 404, description = "No live worker has this id", body = ErrorBody),
    ),
    security(("bearer" = []))
)]
pub async fn drain_worker(
    State(state): State<AppState>,
    admin: Admin,
    Path(id): Path<String>,
) -> Result<(StatusCode, Json<DrainReply>), ApiError> {
    match state
        .queue
        .request_drain(&id, &admin.actor, now_ms())
        .await?
    {
        DrainOutcome::Requested => Ok((
            StatusCode::ACCEPTED,
            Json(DrainReply {
                worker: id,
                status: "drain_requested".into(),
            }),
        )),
        DrainOutcome::NotFound => Err(ApiError::not_found("id", "worker")),
    }
}

/// `limit` of a list: 1..=1000, 100 when absent.
fn limit_param(query: Option<&str>) -> Result<usize, ApiError> {
    let pairs = query_pairs(query);
    match query_param(&pairs, "limit") {
        None => Ok(100),
        Some(raw) => raw
            .parse::<usize>()
            .ok()
            .filter(|n| (1..=1000).contains(n))
            .ok_or_else(|| {
                ApiError::bad_request(
                    "limit",
                    format!("limit must be between 1 and 1000 (got {raw:?})"),
                )
                .with_limit("1..=1000")
            }),
    }
}

/// The newest admin actions.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct AuditLog {
    /// Newest first.
    pub entries: Vec<AuditEntry>,
}

/// Admin actions, newest first (the audit stream keeps the last 10,000).
#[utoipa::path(
    get, path = "/v1/admin/audit", tag = "admin",
    params(("limit" = Option<u32>, Query, description = "Entries, 1..=1000 (default 100)",
        minimum = 1, maximum = 1000)),
    responses(
        (status = 200, description = "The newest admin actions", body = AuditLog),
        (status = 400, description = "Bad limit", body = ErrorBody),
    ),
    security(("bearer" = []))
)]
pub async fn audit(
    State(state): State<AppState>,
    _: Admin,
    RawQuery(query): RawQuery,
) -> Result<Json<AuditLog>, ApiError> {
    let limit = limit_param(query.as_deref())?;
    Ok(Json(AuditLog {
        entries: state.queue.audit_log(limit).await?,
    }))
}

/// The queue at a glance.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct QueueOverview {
    /// Claimable now, per class.
    pub ready_high: u64,
    pub ready_standard: u64,
    pub ready_bulk: u64,
    /// Waiting for a retry time or an affinity offer.
    pub delayed: u64,
    pub running: u64,
    /// Age of the oldest claimable job (ms; 0 when none).
    pub oldest_ready_age_ms: u64,
    pub dead_letters: u64,
    /// Live workers in the registry.
    pub workers: u64,
    /// Jobs finished per minute over the last hour (succeeded; failed or dead) and the
    /// succeeded jobs' latency percentiles (submit → commit, upper bounds of log-spaced
    /// buckets), per minute and for the hour.
    pub throughput: ThroughputSummary,
}

/// Depth per class, running, delayed, dead letters, live workers, and throughput and latency
/// per minute over the last hour (kept in the queue per UTC minute, for three hours).
#[utoipa::path(
    get, path = "/v1/admin/queue", tag = "admin",
    responses(
        (status = 200, description = "The queue now", body = QueueOverview),
    ),
    security(("bearer" = []))
)]
pub async fn queue_overview(
    State(state): State<AppState>,
    _: Admin,
) -> Result<Json<QueueOverview>, ApiError> {
    let now = now_ms();
    let stats = state.queue.stats(now).await?;
    let workers = state.queue.workers(now).await?.len() as u64;
    let throughput = summarize(&state.queue.throughput(now).await?);
    let ready = |p: Priority| {
        stats
            .ready
            .iter()
            .find(|(q, _)| *q == p)
            .map_or(0, |(_, n)| *n)
    };
    Ok(Json(QueueOverview {
        ready_high: ready(Priority::High),
        ready_standard: ready(Priority::Standard),
        ready_bulk: ready(Priority::Bulk),
        delayed: stats.delayed,
        running: stats.running,
        oldest_ready_age_ms: stats.oldest_ready_age_ms,
        dead_letters: stats.dead_letters,
        workers,
        throughput,
    }))
}

/// The dead letters, newest first.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct DeadLetterList {
    pub dead_letters: Vec<DeadLetter>,
}

/// What a re-queue or dismissal did.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct DeadLetterReply {
    /// The dead job.
    pub id: String,
    /// `requeued` or `dismissed`.
    pub status: String,
    /// The new job, after a re-queue.
    pub new_id: Option<String>,
}

fn dead_id(raw: &str) -> Result<JobId, ApiError> {
    raw.parse()
        .map_err(|_| ApiError::not_found("id", "dead letter"))
}

/// Jobs the reaper gave up on (crashed `MAX_CRASHES` times), newest first.
#[utoipa::path(
    get, path = "/v1/admin/dead", tag = "admin",
    params(("limit" = Option<u32>, Query, description = "Entries, 1..=1000 (default 100)",
        minimum = 1, maximum = 1000)),
    responses(
        (status = 200, description = "The dead letters", body = DeadLetterList),
        (status = 400, description = "Bad limit", body = ErrorBody),
    ),
    security(("bearer" = []))
)]
pub async fn dead_letters(
    State(state): State<AppState>,
    _: Admin,
    RawQuery(query): RawQuery,
) -> Result<Json<DeadLetterList>, ApiError> {
    let limit = limit_param(query.as_deref())?;
    Ok(Json(DeadLetterList {
        dead_letters: state.queue.dead_letters(limit).await?,
    }))
}

/// Re-queue a dead letter as a new job with the same tenant, spec and priority (the dead job
/// stays dead and records the new id); audited. A chain turn is refused: append a turn to its
/// chain instead.
#[utoipa::path(
    post, path = "/v1/admin/dead/{id}/requeue", tag = "admin",
    params(("id" = String, Path, description = "The dead job's id")),
    responses(
        (status = 201, description = "Re-queued as `new_id`", body = DeadLetterReply),
        (status = 404, description = "No dead letter has this id", body = ErrorBody),
        (status = 409, description = "A chain turn", body = ErrorBody),
    ),
    security(("bearer" = []))
)]
pub async fn requeue_dead(
    State(state): State<AppState>,
    admin: Admin,
    Path(id): Path<String>,
) -> Result<(StatusCode, Json<DeadLetterReply>), ApiError> {
    let dead = dead_id(&id)?;
    match state
        .queue
        .requeue_dead(dead, JobId::new(), &admin.actor, now_ms())
        .await?
    {
        RequeueOutcome::Requeued(new) => Ok((
            StatusCode::CREATED,
            Json(DeadLetterReply {
                id,
                status: "requeued".into(),
                new_id: Some(new.to_string()),
            }),
        )),
        RequeueOutcome::ChainTurn => Err(ApiError::conflict(
            "id",
            "a chain turn cannot be re-queued alone: append a turn to its chain",
        )),
        RequeueOutcome::NotFound => Err(ApiError::not_found("id", "dead letter")),
    }
}

/// Remove a dead letter from the list (the job's record stays until its retention ends);
/// audited.
#[utoipa::path(
    delete, path = "/v1/admin/dead/{id}", tag = "admin",
    params(("id" = String, Path, description = "The dead job's id")),
    responses(
        (status = 200, description = "Dismissed", body = DeadLetterReply),
        (status = 404, description = "No dead letter has this id", body = ErrorBody),
    ),
    security(("bearer" = []))
)]
pub async fn dismiss_dead(
    State(state): State<AppState>,
    admin: Admin,
    Path(id): Path<String>,
) -> Result<Json<DeadLetterReply>, ApiError> {
    let dead = dead_id(&id)?;
    match state
        .queue
        .dismiss_dead(dead, &admin.actor, now_ms())
        .await?
    {
        DismissOutcome::Dismissed => Ok(Json(DeadLetterReply {
            id,
            status: "dismissed".into(),
            new_id: None,
        })),
        DismissOutcome::NotFound => Err(ApiError::not_found("id", "dead letter")),
    }
}
