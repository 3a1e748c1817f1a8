//! The chain API (docs/chains.md): create a storyboard (`POST /v1/chains`), read it, append a turn,
//! fork it from a committed turn, cancel it. The queue does the orchestration (the next turn is
//! created inside the commit of the one before); these handlers validate, resolve the input
//! image, plan job ids and seeds, and keep tenants apart (another tenant's chain is a 404).

use axum::Json;
use axum::body::Body;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use kontext_proto::validate_chain::{
    ChainRequest, TurnRequest, TurnSettings, check_chain, check_turn,
};
use kontext_proto::{
    CancelOutcome, ChainFork, ChainId, ChainRecord, ChainSubmission, JobId, JobQueue, PlannedTurn,
    QueueError, TurnAppend, ValidJobSpec,
};

use super::chain_views::{
    ChainAccepted, ChainCancelReply, ChainView, ForkChain, TurnAccepted, chain_view,
};
use super::error::{ApiError, ErrorBody};
use super::jobs::check_webhook;
use super::request::{Caller, read_json};
use super::request_spans;
use super::views::JobView;
use crate::auth::Tenant;
use crate::input::resolve_input;
use crate::state::{AppState, now_ms};
use tracing::Instrument;

pub use kontext_proto::MAX_CHAIN_TURNS;

/// The chain `raw_id` if it exists and belongs to `tenant`; 404 otherwise.
async fn chain_for(
    state: &AppState,
    raw_id: &str,
    tenant: &Tenant,
) -> Result<ChainRecord, ApiError> {
    let id: ChainId = raw_id
        .parse()
        .map_err(|_| ApiError::not_found("id", "chain"))?;
    match state.queue.get_chain(id).await? {
        Some(c) if c.tenant == tenant.id => Ok(c),
        _ => Err(ApiError::not_found("id", "chain")),
    }
}

/// A queue refusal, answered for `field`.
fn refused(e: QueueError, field: &str) -> ApiError {
    match e {
        QueueError::ChainConflict(msg) => ApiError::conflict(field, msg),
        other => other.into(),
    }
}

fn chain_url(state: &AppState, id: ChainId) -> String {
    format!("{}/v1/chains/{id}", state.public_url)
}

fn accepted(state: &AppState, id: ChainId, chain: &ChainRecord) -> Response {
    let status_url = chain_url(state, id);
    let body = ChainAccepted {
        id: id.to_string(),
        status: chain.status,
        turns_url: format!("{status_url}/turns"),
        cancel_url: format!("{status_url}/cancel"),
        job_ids: chain.turns.iter().map(|t| t.job_id.to_string()).collect(),
        status_url: status_url.clone(),
    };
    let mut response = (StatusCode::ACCEPTED, Json(body)).into_response();
    if let Ok(location) = HeaderValue::from_str(&status_url) {
        response.headers_mut().insert(header::LOCATION, location);
    }
    response
}

pub(crate) async fn render(state: &AppState, chain: &ChainRecord) -> Result<ChainView, ApiError> {
    let mut jobs: Vec<Option<JobView>> = Vec::with_capacity(chain.turns.len());
    for t in &chain.turns {
        jobs.push(match &t.job {
            Some(job) => Some(state.view(job).await?),
            None => None,
        });
    }
    Ok(chain_view(chain, jobs))
}

/// Create a chain: a storyboard of edit turns, each editing the previous turn's output.
#[utoipa::path(
    post, path = "/v1/chains", tag = "chains",
    request_body(content = ChainRequest, description = "The chain. Unknown fields are ignored."),
    responses(
        (status = 202, description = "Accepted: turn 1 is queued; each later turn is created when \
            the one before it ends", body = ChainAccepted,
            headers(("Location" = String, description = "The chain's status URL"))),
        (status = 400, description = "Malformed JSON", body = ErrorBody),
        (status = 401, description = "Missing or unknown API key", body = ErrorBody),
        (status = 413, description = "Body or image too large", body = ErrorBody),
        (status = 422, description = "A field's value is not acceptable", body = ErrorBody,
            example = json!({"error": {"type": "invalid_request", "field": "turns[2].steps",
                "message": "turns[2].steps must be between 1 and 100 (got 500)", "limit": "1..=100"}})),
        (status = 429, description = "The tenant's in-flight limit, or its retained chains or \
            turns limit, is reached", body = ErrorBody),
        (status = 503, description = "Queue or storage unavailable", body = ErrorBody),
    ),
    security(("bearer" = []), ("x_key" = []))
)]
pub async fn create_chain(
    State(state): State<AppState>,
    Caller(tenant): Caller,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    let (req, _) = read_json::<ChainRequest>(&state, &headers, body).await?;
    let limits = &state.config.limits.job;
    // Every field of every turn is checked before the input image is fetched or stored, as for
    // jobs.
    let mut fields = check_chain(&req, limits)?;
    super::jobs::check_priority(&tenant, fields.priority())?;
    check_webhook(&state, fields.webhook_url())?;
    let input = match fields.input_image() {
        Some(raw) => Some(resolve_input(&state, &tenant, raw).await?),
        None => None,
    };
    let loras = crate::lora_input::resolve_loras(&state, &tenant, fields.requested_loras()).await?;
    fields.set_resolved_loras(loras);
    // Server-picked seeds stay below 2^53 so JavaScript clients read them exactly.
    let valid = fields.resolve(input, limits, || rand::random::<u64>() >> 11)?;
    let id = ChainId::new();
    let (enqueue, traceparent) = request_spans::enqueue_span();
    enqueue.record("chain_id", id.to_string().as_str());
    let sub = ChainSubmission {
        id,
        tenant: tenant.id.clone(),
        carry: valid.carry,
        on_failure: valid.on_failure,
        seed: valid.seed,
        input: valid.input,
        webhook_url: valid.webhook_url,
        turns: valid
            .turns
            .into_iter()
            .map(|spec| PlannedTurn {
                job_id: JobId::new(),
                spec: ValidJobSpec {
                    traceparent: traceparent.clone(),
                    ..spec
                },
            })
            .collect(),
        max_in_flight: tenant.max_in_flight,
        retained: state.config.limits.retained,
    };
    let priority = sub.turns[0].spec.priority;
    state
        .queue
        .create_chain(sub, now_ms())
        .instrument(enqueue)
        .await
        .map_err(|e| refused(e, "body"))?;
    state.metrics.submitted(priority);
    tracing::info!(chain_id = %id, tenant = %tenant.id, "chain created");
    let chain = chain_for(&state, &id.to_string(), &tenant).await?;
    Ok(accepted(&state, id, &chain))
}

/// A chain of the caller's tenant, with its turns (states, seeds, object keys, result URLs).
#[utoipa::path(
    get, path = "/v1/chains/{id}", tag = "chains",
    params(("id" = String, Path, description = "Chain id")),
    responses(
        (status = 200, description = "The chain", body = ChainView),
        (status = 401, description = "Missing or unknown API key", body = ErrorBody),
        (status = 404, description = "No such chain for this tenant", body = ErrorBody),
    ),
    security(("bearer" = []), ("x_key" = []))
)]
pub async fn get_chain(
    State(state): State<AppState>,
    Caller(tenant): Caller,
    Path(id): Path<String>,
) -> Result<Json<ChainView>, ApiError> {
    let chain = chain_for(&state, &id, &tenant).await?;
    Ok(Json(render(&state, &chain).await?))
}

/// Appends `turn` to `chain`: steps and guidance default to the chain's last turn's.
async fn append(
    state: &AppState,
    chain: &ChainRecord,
    turn: &TurnRequest,
    field_prefix: &str,
) -> Result<TurnAccepted, ApiError> {
    if chain.turns.len() >= MAX_CHAIN_TURNS {
        return Err(ApiError::invalid(
            "turns",
            format!("a chain has at most {MAX_CHAIN_TURNS} turns; fork it to go on"),
        )
        .with_limit(format!("..={MAX_CHAIN_TURNS}")));
    }
    let first = &chain.turns[0].spec;
    let last = &chain.turns[chain.turns.len() - 1].spec;
    let template = check_turn(
        turn,
        field_prefix,
        (last.steps, last.guidance),
        &state.config.limits.job,
    )?;
    let settings = TurnSettings {
        frame: (first.width, first.height),
        ..TurnSettings::of(last, chain.carry)
    };
    // The queue sets the final seed (explicit, or derived from the new turn's number).
    let (enqueue, traceparent) = request_spans::enqueue_span();
    let spec = ValidJobSpec {
        traceparent,
        ..template.spec(&settings, template.seed.unwrap_or(0))
    };
    let job_id = JobId::new();
    request_spans::record_job(&enqueue, &job_id);
    let out = state
        .queue
        .append_turn(
            chain.id,
            TurnAppend {
                job_id,
                spec,
                seed: template.seed,
                retained: state.config.limits.retained,
            },
            now_ms(),
        )
        .instrument(enqueue)
        .await
        .map_err(|e| refused(e, "id"))?;
    Ok(TurnAccepted {
        chain_id: chain.id.to_string(),
        turn: out.turn,
        job_id: job_id.to_string(),
        started: out.started,
        status_url: chain_url(state, chain.id),
    })
}

/// Append a turn (interactive editing). A finished chain runs again from its last good frame.
#[utoipa::path(
    post, path = "/v1/chains/{id}/turns", tag = "chains",
    params(("id" = String, Path, description = "Chain id")),
    request_body(content = TurnRequest),
    responses(
        (status = 202, description = "Appended", body = TurnAccepted),
        (status = 401, description = "Missing or unknown API key", body = ErrorBody),
        (status = 404, description = "No such chain for this tenant", body = ErrorBody),
        (status = 409, description = "The chain was canceled, or has no frame to continue from",
            body = ErrorBody),
        (status = 422, description = "A field's value is not acceptable", body = ErrorBody),
        (status = 429, description = "The tenant's retained turns limit is reached",
            body = ErrorBody),
    ),
    security(("bearer" = []), ("x_key" = []))
)]
pub async fn append_turn(
    State(state): State<AppState>,
    Caller(tenant): Caller,
    Path(id): Path<String>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    let chain = chain_for(&state, &id, &tenant).await?;
    let (turn, _) = read_json::<TurnRequest>(&state, &headers, body).await?;
    let accepted = append(&state, &chain, &turn, "").await?;
    Ok((StatusCode::ACCEPTED, Json(accepted)).into_response())
}

/// Fork a chain from a succeeded turn: a new chain sharing turns 1..=from_turn.
#[utoipa::path(
    post, path = "/v1/chains/{id}/fork", tag = "chains",
    params(("id" = String, Path, description = "Chain id")),
    request_body(content = ForkChain),
    responses(
        (status = 202, description = "The new chain", body = ChainAccepted),
        (status = 401, description = "Missing or unknown API key", body = ErrorBody),
        (status = 404, description = "No such chain for this tenant", body = ErrorBody),
        (status = 409, description = "from_turn did not succeed or is out of range",
            body = ErrorBody,
            example = json!({"error": {"type": "conflict", "field": "from_turn",
                "message": "turn 3 is failed; fork from a succeeded turn"}})),
        (status = 422, description = "A field's value is not acceptable", body = ErrorBody),
        (status = 429, description = "The tenant's retained chains or turns limit is reached",
            body = ErrorBody),
        (status = 503, description = "Queue unavailable", body = ErrorBody),
    ),
    security(("bearer" = []), ("x_key" = []))
)]
pub async fn fork_chain(
    State(state): State<AppState>,
    Caller(tenant): Caller,
    Path(id): Path<String>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    let source = chain_for(&state, &id, &tenant).await?;
    let (fork, _) = read_json::<ForkChain>(&state, &headers, body).await?;
    let from = fork.from_turn as usize;
    let Some(base) = from.checked_sub(1).and_then(|i| source.turns.get(i)) else {
        return Err(ApiError::conflict(
            "from_turn",
            format!(
                "from_turn must be between 1 and {} (got {from})",
                source.turns.len()
            ),
        ));
    };
    if from + fork.turns.len() > MAX_CHAIN_TURNS {
        return Err(ApiError::invalid(
            "turns",
            format!(
                "a chain has at most {MAX_CHAIN_TURNS} turns; forking at turn {from} leaves room \
                 for {} more (got {})",
                MAX_CHAIN_TURNS - from,
                fork.turns.len()
            ),
        )
        .with_limit(format!("..={}", MAX_CHAIN_TURNS - from)));
    }
    // Every appended turn is checked before anything is stored; the queue then creates the
    // fork and its turns in one step, so a refusal leaves nothing behind.
    let first = &source.turns[0].spec;
    let (enqueue, traceparent) = request_spans::enqueue_span();
    let mut last = base.spec.clone();
    let mut turns = Vec::with_capacity(fork.turns.len());
    for (i, turn) in fork.turns.iter().enumerate() {
        let template = check_turn(
            turn,
            &format!("turns[{i}]"),
            (last.steps, last.guidance),
            &state.config.limits.job,
        )?;
        let settings = TurnSettings {
            frame: (first.width, first.height),
            ..TurnSettings::of(&last, source.carry)
        };
        let spec = ValidJobSpec {
            traceparent: traceparent.clone(),
            ..template.spec(&settings, template.seed.unwrap_or(0))
        };
        last = spec.clone();
        turns.push(TurnAppend {
            job_id: JobId::new(),
            spec,
            seed: template.seed,
            retained: state.config.limits.retained,
        });
    }
    let new_id = ChainId::new();
    let appended = turns.len();
    state
        .queue
        .fork_chain(
            source.id,
            ChainFork {
                new_id,
                from_turn: fork.from_turn,
                turns,
                retained: state.config.limits.retained,
            },
            now_ms(),
        )
        .instrument(enqueue)
        .await
        .map_err(|e| refused(e, "from_turn"))?;
    if appended > 0 {
        state.metrics.submitted(last.priority);
    }
    let chain = chain_for(&state, &new_id.to_string(), &tenant).await?;
    tracing::info!(chain_id = %new_id, from = %source.id, turn = fork.from_turn, appended, "chain forked");
    Ok(accepted(&state, new_id, &chain))
}

/// Cancel a chain: no further turn is created; its live turn is canceled.
#[utoipa::path(
    post, path = "/v1/chains/{id}/cancel", tag = "chains",
    params(("id" = String, Path, description = "Chain id")),
    responses(
        (status = 200, description = "What the cancel did", body = ChainCancelReply),
        (status = 401, description = "Missing or unknown API key", body = ErrorBody),
        (status = 404, description = "No such chain for this tenant", body = ErrorBody),
    ),
    security(("bearer" = []), ("x_key" = []))
)]
pub async fn cancel_chain(
    State(state): State<AppState>,
    Caller(tenant): Caller,
    Path(id): Path<String>,
) -> Result<Json<ChainCancelReply>, ApiError> {
    let chain = chain_for(&state, &id, &tenant).await?;
    let status = match state.queue.cancel_chain(chain.id, now_ms()).await? {
        CancelOutcome::NotFound => return Err(ApiError::not_found("id", "chain")),
        status => status,
    };
    Ok(Json(ChainCancelReply {
        id: chain.id.to_string(),
        status,
    }))
}
