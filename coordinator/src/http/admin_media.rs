//! The admin API's views of any tenant's images and chains (docs/security.md §Admin API): a
//! job's result and input images, and a chain with its turns. The operator console
//! (`crate::console`) shows them as thumbnails and filmstrips.

use axum::Json;
use axum::extract::{Path, RawQuery, State};
use axum::response::Response;
use kontext_proto::{ChainId, JobId, JobQueue, JobRecord, JobStatus};

use super::admin::Admin;
use super::chain_views::ChainView;
use super::error::{ApiError, ErrorBody};
use super::request::{query_pairs, query_param};
use super::results::object_response;
use crate::state::AppState;

/// Input images a job can have: the input and up to three more references.
pub const MAX_INPUT_INDEX: usize = 3;

async fn any_job(state: &AppState, raw: &str) -> Result<JobRecord, ApiError> {
    let id: JobId = raw.parse().map_err(|_| ApiError::not_found("id", "job"))?;
    state
        .queue
        .get(id)
        .await?
        .ok_or_else(|| ApiError::not_found("id", "job"))
}

/// The result image of any tenant's succeeded job.
#[utoipa::path(
    get, path = "/v1/admin/jobs/{id}/result", tag = "admin",
    params(("id" = String, Path, description = "Job id")),
    responses(
        (status = 302, description = "Redirect to a presigned URL (S3 storage)",
            headers(("Location" = String, description = "Presigned GET URL"))),
        (status = 200, description = "The image bytes (local storage)", content_type = "image/png"),
        (status = 404, description = "No such job, or its result is gone", body = ErrorBody),
        (status = 409, description = "The job has not succeeded", body = ErrorBody),
    ),
    security(("bearer" = []))
)]
pub async fn job_result(
    State(state): State<AppState>,
    _: Admin,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    let job = any_job(&state, &id).await?;
    match (&job.result, job.status) {
        (Some(result), JobStatus::Succeeded) => object_response(&state, &result.key).await,
        _ => Err(ApiError::not_ready(format!(
            "job is {}; a result exists only once it succeeded",
            job.status
        ))),
    }
}

/// One input image of any tenant's job: `index` 0 is the edited image, 1..=3 the further
/// references of a multi-reference edit.
#[utoipa::path(
    get, path = "/v1/admin/jobs/{id}/input", tag = "admin",
    params(
        ("id" = String, Path, description = "Job id"),
        ("index" = Option<u32>, Query, description = "0 (default): the input image; 1..=3: \
            further references", minimum = 0, maximum = 3),
    ),
    responses(
        (status = 302, description = "Redirect to a presigned URL (S3 storage)",
            headers(("Location" = String, description = "Presigned GET URL"))),
        (status = 200, description = "The image bytes (local storage)", content_type = "image/png"),
        (status = 400, description = "Bad index", body = ErrorBody),
        (status = 404, description = "No such job, or it has no input image at `index`",
            body = ErrorBody),
    ),
    security(("bearer" = []))
)]
pub async fn job_input(
    State(state): State<AppState>,
    _: Admin,
    Path(id): Path<String>,
    RawQuery(query): RawQuery,
) -> Result<Response, ApiError> {
    let pairs = query_pairs(query.as_deref());
    let index = match query_param(&pairs, "index") {
        None => 0,
        Some(raw) => raw
            .parse::<usize>()
            .ok()
            .filter(|i| *i <= MAX_INPUT_INDEX)
            .ok_or_else(|| {
                ApiError::bad_request(
                    "index",
                    format!("index must be between 0 and {MAX_INPUT_INDEX} (got {raw:?})"),
                )
                .with_limit(format!("0..={MAX_INPUT_INDEX}"))
            })?,
    };
    let job = any_job(&state, &id).await?;
    let key = match index {
        0 => job.spec.input.as_ref().map(|i| &i.key),
        i => job.spec.more_references.get(i - 1).map(|r| &r.image.key),
    };
    match key {
        Some(key) => object_response(&state, key).await,
        None => Err(ApiError::not_found("index", "input image")),
    }
}

/// Any tenant's chain with its turns (the same view as `GET /v1/chains/{id}`).
#[utoipa::path(
    get, path = "/v1/admin/chains/{id}", tag = "admin",
    params(("id" = String, Path, description = "Chain id")),
    responses(
        (status = 200, description = "The chain", body = ChainView),
        (status = 404, description = "No such chain", body = ErrorBody),
    ),
    security(("bearer" = []))
)]
pub async fn chain(
    State(state): State<AppState>,
    _: Admin,
    Path(id): Path<String>,
) -> Result<Json<ChainView>, ApiError> {
    let id: ChainId = id.parse().map_err(|_| ApiError::not_found("id", "chain"))?;
    let chain = state
        .queue
        .get_chain(id)
        .await?
        .ok_or_else(|| ApiError::not_found("id", "chain"))?;
    Ok(Json(super::chains::render(&state, &chain).await?))
}
