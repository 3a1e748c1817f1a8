//! The native job API: submit (`POST /v1/jobs`), status, list, cancel. `submit_job` is shared with
//! the BFL routes, so both take exactly the same path into the queue.
//!
//! The submit path is kept lean for throughput: parse, validate, one queue call (one Lua script
//! on Redis), no reads. Only an idempotent replay or `Prefer: wait` reads the job back.

use std::time::{Duration, Instant};

use axum::Json;
use axum::body::Body;
use axum::extract::{Path, RawQuery, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use kontext_proto::validate::{JobRequest, WebhookUrl, check_job};
use kontext_proto::{
    CancelOutcome, JobEvent, JobId, JobQueue, JobRecord, JobStatus, Priority, Submission,
};
use tracing::Instrument;

use super::error::{ApiError, ErrorBody};
use super::request::{Caller, query_pairs, query_param, read_json};
use super::request_spans;
use super::views::{CancelReply, JobAccepted, JobList, JobView};
use crate::auth::Tenant;
use crate::fetch::check_address;
use crate::input::resolve_input;
use crate::lora_input::resolve_loras;
use crate::state::{AppState, now_ms};

/// Longest `Prefer: wait=N` honoured, in seconds (Replicate's default and cap).
pub const MAX_PREFER_WAIT_S: u64 = 60;
/// Longest `Idempotency-Key`.
pub const MAX_IDEMPOTENCY_KEY_CHARS: usize = 255;
/// Default and largest page of `GET /v1/jobs`.
const DEFAULT_PAGE: usize = 20;
const MAX_PAGE: usize = 100;

/// Validates and enqueues a request for `tenant`. Returns the job id and whether it was created
/// (false: an idempotent replay returned an earlier job).
pub async fn submit_job(
    state: &AppState,
    tenant: &Tenant,
    req: JobRequest,
    body_hash: String,
    idempotency_key: Option<String>,
) -> Result<(JobId, bool), ApiError> {
    let limits = &state.config.limits.job;
    // Every field is checked before the input image is fetched or stored, so a bad request
    // stores nothing.
    let mut fields = check_job(&req, limits)?;
    check_priority(tenant, fields.priority())?;
    check_webhook(state, fields.webhook_url())?;
    let input = match fields.input_image() {
        Some(raw) => Some(
            resolve_input(state, tenant, raw)
                .await
                .map_err(|e| reference_error(e, 0, !fields.more_input_images().is_empty()))?,
        ),
        None => None,
    };
    let mut more = Vec::with_capacity(fields.more_input_images().len());
    for (i, raw) in fields.more_input_images().iter().enumerate() {
        more.push(
            resolve_input(state, tenant, raw)
                .await
                .map_err(|e| reference_error(e, i + 1, true))?,
        );
    }
    let loras = resolve_loras(state, tenant, fields.requested_loras()).await?;
    fields.set_resolved_loras(loras);
    // Server-picked seeds stay below 2^53 so JavaScript clients read them exactly.
    let mut spec =
        fields.resolve_references(input, more, limits, || rand::random::<u64>() >> 11)?;
    let priority = spec.priority;
    let (enqueue, traceparent) = request_spans::enqueue_span();
    spec.traceparent = traceparent;
    let outcome = state
        .queue
        .submit(
            Submission {
                tenant: tenant.id.clone(),
                spec,
                idempotency_key,
                body_hash,
                max_in_flight: tenant.max_in_flight,
                retained: state.config.limits.retained,
                chain: None,
            },
            now_ms(),
        )
        .instrument(enqueue.clone())
        .await?;
    request_spans::record_job(&enqueue, &outcome.id);
    if outcome.created {
        state.metrics.submitted(priority);
    }
    tracing::debug!(job_id = %outcome.id, tenant = %tenant.id, created = outcome.created, "job submitted");
    Ok((outcome.id, outcome.created))
}

/// An error about reference `index` of `input_images` names that entry (`input_images[1]`)
/// instead of `input_image`.
fn reference_error(mut e: ApiError, index: usize, from_list: bool) -> ApiError {
    if from_list && e.detail.field.as_deref() == Some("input_image") {
        let field = format!("input_images[{index}]");
        e.detail.message = format!("{field}: {}", e.detail.message);
        e.detail.field = Some(field);
    }
    e
}

/// Refuses a priority class the caller's key may not use (422 naming the allowed ones).
pub fn check_priority(tenant: &Tenant, priority: Priority) -> Result<(), ApiError> {
    if tenant.may_use(priority) {
        return Ok(());
    }
    let allowed = crate::auth::priority_list(&tenant.priorities);
    Err(ApiError::invalid(
        "priority",
        format!("this API key may use the priority classes {allowed} only"),
    )
    .with_limit(allowed.replace(", ", "|")))
}

/// Refuses a webhook this coordinator cannot sign, or whose host is an address it may not call
/// (the URL itself was checked with the other fields). Jobs and chains both answer through it.
pub fn check_webhook(state: &AppState, url: Option<&WebhookUrl>) -> Result<(), ApiError> {
    let Some(url) = url else { return Ok(()) };
    if state.config.webhooks.secret.is_none() {
        return Err(ApiError::invalid(
            "webhook_url",
            "webhook_url needs a signing secret: this coordinator was started without \
             --webhook-secret",
        ));
    }
    match url.ip() {
        Some(ip) => check_address(ip, state.config.allow_private_urls)
            .map_err(|e| ApiError::invalid("webhook_url", format!("webhook_url {e}"))),
        None => Ok(()),
    }
}

/// The `Idempotency-Key` header, checked.
pub fn idempotency_key(headers: &HeaderMap) -> Result<Option<String>, ApiError> {
    let Some(value) = headers.get("idempotency-key") else {
        return Ok(None);
    };
    let key = value
        .to_str()
        .ok()
        .map(str::trim)
        .filter(|k| {
            !k.is_empty()
                && k.len() <= MAX_IDEMPOTENCY_KEY_CHARS
                && k.bytes().all(|b| b.is_ascii_graphic())
        })
        .ok_or_else(|| {
            ApiError::bad_request(
                "Idempotency-Key",
                format!(
                    "Idempotency-Key must be 1 to {MAX_IDEMPOTENCY_KEY_CHARS} printable ASCII \
                     characters without spaces"
                ),
            )
            .with_limit(format!("1..={MAX_IDEMPOTENCY_KEY_CHARS} characters"))
        })?;
    Ok(Some(key.to_owned()))
}

/// `wait=N` from the `Prefer` header (RFC 7240), capped at `MAX_PREFER_WAIT_S`. Malformed
/// preferences are ignored, as the RFC asks.
pub fn prefer_wait(headers: &HeaderMap) -> Option<Duration> {
    headers
        .get_all("prefer")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split([',', ';']))
        .filter_map(|pref| {
            let (name, value) = pref.trim().split_once('=')?;
            if !name.trim().eq_ignore_ascii_case("wait") {
                return None;
            }
            value.trim().trim_matches('"').parse::<u64>().ok()
        })
        .next()
        .map(|n| Duration::from_secs(n.min(MAX_PREFER_WAIT_S)))
}

/// Follows the job's events until it is terminal or `wait` passed (or shutdown began); returns
/// the job when it finished in time.
pub async fn wait_for_terminal(
    state: &AppState,
    id: JobId,
    wait: Duration,
) -> Result<Option<JobRecord>, ApiError> {
    let deadline = Instant::now() + wait;
    let mut shutdown = state.shutdown_signal();
    let mut cursor: Option<String> = None;
    loop {
        let remaining = deadline.saturating_duration_since(Instant::now());
        if remaining.is_zero() || *shutdown.borrow() {
            break;
        }
        let events = tokio::select! {
            events = state.queue.events(id, cursor.as_deref(), remaining) => events?,
            _ = shutdown.changed() => break,
        };
        let mut terminal = false;
        for (c, event) in events {
            cursor = Some(c);
            terminal |= matches!(event, JobEvent::State { status, .. } if status.is_terminal());
        }
        if terminal {
            break;
        }
    }
    let job = state.queue.get(id).await?;
    Ok(job.filter(|j| j.status.is_terminal()))
}

/// Submit a job (generate without `input_image`, edit with one).
#[utoipa::path(
    post, path = "/v1/jobs", tag = "jobs",
    request_body(content = JobRequest, description = "The job. Unknown fields are ignored."),
    params(
        ("Idempotency-Key" = Option<String>, Header, description = "Repeat a submit safely: the \
            same key with the same body returns the original job; with a different body, 422. \
            Remembered for --idempotency-ttl (24 h). 1 to 255 printable ASCII characters.",
            pattern = "^[!-~]{1,255}$"),
        ("Prefer" = Option<String>, Header, description = "`wait=N` (N ≤ 60): hold the request \
            until the job finishes, up to N seconds; 200 with the job if it did, else 202. \
            Other preferences are ignored."),
    ),
    responses(
        (status = 202, description = "Accepted (durable in the queue)", body = JobAccepted,
            headers(("Location" = String, description = "The job's status URL"))),
        (status = 200, description = "Finished within `Prefer: wait`", body = JobView),
        (status = 400, description = "Malformed JSON or header", body = ErrorBody,
            example = json!({"error": {"type": "bad_request", "field": "body",
                "message": "body is not valid JSON: EOF while parsing an object at line 1 column 1"}})),
        (status = 401, description = "Missing or unknown API key", body = ErrorBody,
            example = json!({"error": {"type": "unauthorized", "field": "Authorization",
                "message": "missing or unknown API key: send \"Authorization: Bearer <key>\" or \"x-key: <key>\""}})),
        (status = 413, description = "Body or image too large", body = ErrorBody,
            example = json!({"error": {"type": "payload_too_large", "field": "body",
                "message": "request body is larger than the limit of 33554432 bytes",
                "limit": "..=33554432 bytes"}})),
        (status = 422, description = "A field's value is not acceptable", body = ErrorBody,
            example = json!({"error": {"type": "invalid_request", "field": "input_image",
                "message": "input_image is 50000x50000 = 2500000000 pixels; the limit is 16777216 pixels",
                "limit": "..=16777216 pixels"}})),
        (status = 429, description = "The tenant's in-flight or retained-jobs limit is reached",
            body = ErrorBody,
            example = json!({"error": {"type": "too_many_requests", "field": "max_in_flight",
                "message": "this tenant has 24 jobs queued or running; the limit is 24: wait for some to finish",
                "limit": "..=24 jobs in flight"}})),
        (status = 503, description = "Queue or storage unavailable", body = ErrorBody),
    ),
    security(("bearer" = []), ("x_key" = []))
)]
pub async fn create_job(
    State(state): State<AppState>,
    Caller(tenant): Caller,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    let (req, body_hash) = read_json::<JobRequest>(&state, &headers, body).await?;
    let idem = idempotency_key(&headers)?;
    let (id, created) = submit_job(&state, &tenant, req, body_hash, idem).await?;
    let status_url = state.job_url(&id.to_string());
    let location = HeaderValue::from_str(&status_url).map_err(|e| ApiError::internal(&e))?;

    if let Some(wait) = prefer_wait(&headers)
        && let Some(job) = wait_for_terminal(&state, id, wait).await?
    {
        let view = state.view(&job).await?;
        let applied = HeaderValue::from_str(&format!("wait={}", wait.as_secs()))
            .map_err(|e| ApiError::internal(&e))?;
        let headers = [
            (header::LOCATION, location),
            (
                header::HeaderName::from_static("preference-applied"),
                applied,
            ),
        ];
        return Ok((StatusCode::OK, headers, Json(view)).into_response());
    }
    let status = if created {
        JobStatus::Queued
    } else {
        match state.queue.get(id).await? {
            Some(job) => job.status,
            None => JobStatus::Queued,
        }
    };
    let accepted = JobAccepted {
        id: id.to_string(),
        status,
        events_url: format!("{status_url}/events"),
        cancel_url: format!("{status_url}/cancel"),
        result_url: format!("{status_url}/result"),
        status_url,
    };
    Ok((
        StatusCode::ACCEPTED,
        [(header::LOCATION, location)],
        Json(accepted),
    )
        .into_response())
}

/// A job of the caller's tenant.
#[utoipa::path(
    get, path = "/v1/jobs/{id}", tag = "jobs",
    params(("id" = String, Path, description = "Job id")),
    responses(
        (status = 200, description = "The job", body = JobView),
        (status = 401, description = "Missing or unknown API key", body = ErrorBody),
        (status = 404, description = "No such job for this tenant", body = ErrorBody,
            example = json!({"error": {"type": "not_found", "field": "id", "message": "job not found"}})),
    ),
    security(("bearer" = []), ("x_key" = []))
)]
pub async fn get_job(
    State(state): State<AppState>,
    Caller(tenant): Caller,
    Path(id): Path<String>,
) -> Result<Json<JobView>, ApiError> {
    let job = state.job_for(&id, &tenant).await?;
    Ok(Json(state.view(&job).await?))
}

/// The caller's jobs, newest first, one page at a time.
#[utoipa::path(
    get, path = "/v1/jobs", tag = "jobs",
    params(
        ("cursor" = Option<String>, Query, description = "next_cursor of the previous page",
            pattern = "^[0-9]{20}:[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$"),
        ("limit" = Option<u32>, Query, description = "Page size, 1..=100 (default 20)",
            minimum = 1, maximum = 100),
    ),
    responses(
        (status = 200, description = "The caller's jobs, newest first", body = JobList),
        (status = 400, description = "Bad cursor or limit", body = ErrorBody,
            example = json!({"error": {"type": "bad_request", "field": "limit",
                "message": "limit must be between 1 and 100 (got 500)", "limit": "1..=100"}})),
        (status = 401, description = "Missing or unknown API key", body = ErrorBody),
    ),
    security(("bearer" = []), ("x_key" = []))
)]
pub async fn list_jobs(
    State(state): State<AppState>,
    Caller(tenant): Caller,
    RawQuery(query): RawQuery,
) -> Result<Json<JobList>, ApiError> {
    let pairs = query_pairs(query.as_deref());
    let limit = match query_param(&pairs, "limit") {
        None => DEFAULT_PAGE,
        Some(raw) => raw
            .parse::<usize>()
            .ok()
            .filter(|n| (1..=MAX_PAGE).contains(n))
            .ok_or_else(|| {
                ApiError::bad_request(
                    "limit",
                    format!("limit must be between 1 and {MAX_PAGE} (got {raw:?})"),
                )
                .with_limit(format!("1..={MAX_PAGE}"))
            })?,
    };
    let cursor = query_param(&pairs, "cursor");
    let page = state.queue.list(&tenant.id, cursor, limit).await?;
    let mut jobs = Vec::with_capacity(page.jobs.len());
    for job in &page.jobs {
        jobs.push(state.view(job).await?);
    }
    Ok(Json(JobList {
        jobs,
        next_cursor: page.next_cursor,
    }))
}

/// Cancel a job: a queued job never runs; a running one stops at its next step.
#[utoipa::path(
    post, path = "/v1/jobs/{id}/cancel", tag = "jobs",
    params(("id" = String, Path, description = "Job id")),
    responses(
        (status = 200, description = "What the cancel did", body = CancelReply),
        (status = 401, description = "Missing or unknown API key", body = ErrorBody),
        (status = 404, description = "No such job for this tenant", body = ErrorBody),
    ),
    security(("bearer" = []), ("x_key" = []))
)]
pub async fn cancel_job(
    State(state): State<AppState>,
    Caller(tenant): Caller,
    Path(id): Path<String>,
) -> Result<Json<CancelReply>, ApiError> {
    let job = state.job_for(&id, &tenant).await?;
    let status = match state.queue.cancel(job.id, now_ms()).await? {
        CancelOutcome::NotFound => return Err(ApiError::not_found("id", "job")),
        status => status,
    };
    Ok(Json(CancelReply {
        id: job.id.to_string(),
        status,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&'static str, &'static str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(*k, HeaderValue::from_static(v));
        }
        h
    }

    #[test]
    fn prefer_wait_is_parsed_and_capped() {
        assert_eq!(
            prefer_wait(&headers(&[("prefer", "wait=5")])),
            Some(Duration::from_secs(5))
        );
        assert_eq!(
            prefer_wait(&headers(&[("prefer", "respond-async, wait=600")])),
            Some(Duration::from_secs(60))
        );
        assert_eq!(prefer_wait(&headers(&[("prefer", "wait=soon")])), None);
        assert_eq!(prefer_wait(&headers(&[("prefer", "return=minimal")])), None);
        assert_eq!(prefer_wait(&HeaderMap::new()), None);
    }

    #[test]
    fn idempotency_keys_are_checked() {
        assert_eq!(
            idempotency_key(&headers(&[("idempotency-key", "order-42")])).expect("valid"),
            Some("order-42".to_owned())
        );
        let err =
            idempotency_key(&headers(&[("idempotency-key", "two words")])).expect_err("space");
        assert_eq!(err.detail.field.as_deref(), Some("Idempotency-Key"));
    }
}
