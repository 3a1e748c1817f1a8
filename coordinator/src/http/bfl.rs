//! BFL-compatible routes, so existing Black Forest Labs API clients work by changing the base URL
//! (BFL API reference, <https://docs.bfl.ml>: the Kontext endpoints and `get_result`):
//! `POST /v1/flux-kontext-dev` (also `-pro` and `-max`, which run the same model here) with
//! BFL's field names → `{id, polling_url}`, and `GET /v1/get_result?id=` →
//! `{id, status, result: {sample, ...}, progress}` with BFL's status words. Auth: `x-key` (or
//! Bearer). Jobs made here are ordinary jobs: the native routes see them too.

use axum::Json;
use axum::body::Body;
use axum::extract::{RawQuery, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use kontext_proto::JobStatus;
use kontext_proto::validate::JobRequest;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use super::error::{ApiError, ErrorBody, ErrorDetail, ErrorType};
use super::jobs::submit_job;
use super::request::{Caller, query_pairs, query_param, read_json};
use crate::state::AppState;

/// BFL's Kontext request body. `prompt_upsampling` and `safety_tolerance` are accepted and
/// ignored (no upsampler or safety model runs here).
#[derive(Debug, Clone, Default, Deserialize, Serialize, ToSchema)]
#[serde(default)]
#[schema(example = json!({"prompt": "make the jacket red", "input_image": "iVBORw0KGgoAAAANSUhEUgAAABAAAAAQCAIAAACQkWg2AAAAFklEQVR42mM4Yd5AEmIY1TCqYfhqAADlZn8QYh/mJgAAAABJRU5ErkJggg==",
    "seed": 42, "aspect_ratio": "1:1", "output_format": "png"}))]
pub struct BflRequest {
    /// Not blank, at most 2,000 characters.
    #[schema(
        required = true,
        min_length = 1,
        max_length = 2000,
        pattern = "[^\\t\\n\\u000b\\f\\r \\u0085\\u00a0\\u1680\\u2000-\\u200a\\u2028\\u2029\\u202f\\u205f\\u3000]"
    )]
    pub prompt: String,
    /// Base64 image or http(s) URL (our upload ids and object keys work too); empty or blank:
    /// no image, as BFL's clients send it.
    #[schema(format = "kontext-image")]
    pub input_image: Option<String>,
    /// BFL's multi-reference inputs: more reference images, given as `input_image` is (empty:
    /// none); they need `input_image`. With any of them the edit uses all of them in order
    /// (docs/engine.md §Multi-reference edits).
    #[schema(format = "kontext-image")]
    pub input_image_2: Option<String>,
    #[schema(format = "kontext-image")]
    pub input_image_3: Option<String>,
    #[schema(format = "kontext-image")]
    pub input_image_4: Option<String>,
    #[serde(deserialize_with = "kontext_proto::json_int::opt_u64")]
    #[schema(maximum = 9007199254740991_u64)]
    pub seed: Option<u64>,
    /// e.g. "16:9", between 21:9 and 9:21.
    #[schema(pattern = "^ *[0-9]+(\\.[0-9]+)? *: *[0-9]+(\\.[0-9]+)? *$")]
    pub aspect_ratio: Option<String>,
    /// "png" (default) or "jpeg".
    #[schema(pattern = "^(png|jpeg|jpg)$")]
    pub output_format: Option<String>,
    #[schema(format = "uri", pattern = "^https?://[!-~]+$", max_length = 2048)]
    pub webhook_url: Option<String>,
    /// Not supported: deliveries are signed with your tenant's Standard Webhooks secret
    /// (`GET /v1/webhook_secret`); 422 unless absent, null or empty.
    #[schema(max_length = 0)]
    pub webhook_secret: Option<String>,
    pub prompt_upsampling: Option<bool>,
    /// BFL's moderation level, 0 to 6: accepted and ignored (no safety model runs here).
    #[serde(deserialize_with = "kontext_proto::json_int::opt_u32")]
    #[schema(minimum = 0, maximum = 6)]
    pub safety_tolerance: Option<u32>,
    /// Extension: denoising steps, 1 to 100 (default 28).
    #[schema(minimum = 1, maximum = 100)]
    #[serde(deserialize_with = "kontext_proto::json_int::opt_u32")]
    pub steps: Option<u32>,
    /// Extension: distilled guidance, 0 to 20 (default 2.5).
    #[schema(minimum = 0.0, maximum = 20.0)]
    pub guidance: Option<f32>,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[schema(example = json!({"id": "0b6a4f52-6f9e-4c55-9d0a-6f2f1b1e2c3d",
    "polling_url": "http://127.0.0.1:8080/v1/get_result?id=0b6a4f52-6f9e-4c55-9d0a-6f2f1b1e2c3d"}))]
pub struct BflSubmitted {
    pub id: String,
    pub polling_url: String,
}

/// BFL's `get_result` reply.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[schema(example = json!({"id": "0b6a4f52-6f9e-4c55-9d0a-6f2f1b1e2c3d", "status": "Ready",
    "result": {"sample": "http://127.0.0.1:8080/v1/blobs/out/default/0b6a.../1.png?expires=1795701600&signature=...",
        "prompt": "make the jacket red", "seed": 42, "start_time": 1795698000.12,
        "end_time": 1795698004.87, "duration": 4.75},
    "progress": 1.0, "details": null}))]
pub struct BflResult {
    pub id: String,
    /// Pending, Ready, Error or Task not found.
    pub status: String,
    pub result: Option<BflSample>,
    /// 0..1 while Pending.
    pub progress: Option<f32>,
    /// Why, when the status is Error.
    pub details: Option<serde_json::Value>,
    /// Present on 404 replies (our error shape, besides BFL's status word).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<ErrorDetail>,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct BflSample {
    /// Signed URL of the image; GET it without credentials (valid for --presign-ttl).
    pub sample: String,
    pub prompt: String,
    pub seed: u64,
    /// Unix seconds.
    pub start_time: Option<f64>,
    pub end_time: Option<f64>,
    /// Seconds from start to end.
    pub duration: Option<f64>,
}

/// Create a task, BFL-style. Also served at `/v1/flux-kontext-pro` and `/v1/flux-kontext-max`
/// (the same FLUX.1 Kontext dev model runs behind all three).
#[utoipa::path(
    post, path = "/v1/flux-kontext-dev", tag = "bfl",
    request_body = BflRequest,
    responses(
        (status = 200, description = "Task created", body = BflSubmitted),
        (status = 401, description = "Missing or unknown x-key", body = ErrorBody),
        (status = 413, description = "Body or image too large", body = ErrorBody),
        (status = 422, description = "A field's value is not acceptable", body = ErrorBody,
            example = json!({"error": {"type": "invalid_request", "field": "aspect_ratio",
                "message": "aspect_ratio must be between 9:21 and 21:9 (got 32:9)",
                "limit": "9:21..=21:9"}})),
        (status = 429, description = "Too many tasks in flight or retained", body = ErrorBody),
    ),
    security(("x_key" = []), ("bearer" = []))
)]
pub async fn create_task(
    State(state): State<AppState>,
    Caller(tenant): Caller,
    headers: HeaderMap,
    body: Body,
) -> Result<Json<BflSubmitted>, ApiError> {
    let (req, body_hash) = read_json::<BflRequest>(&state, &headers, body).await?;
    // An empty string is "no image", as BFL's clients send it.
    let given = |v: &Option<String>| v.clone().filter(|s| !s.trim().is_empty());
    let more: Vec<String> = [&req.input_image_2, &req.input_image_3, &req.input_image_4]
        .into_iter()
        .filter_map(given)
        .collect();
    let first = given(&req.input_image);
    if first.is_none() && !more.is_empty() {
        return Err(ApiError::invalid(
            "input_image",
            "input_image_2..4 are further references: give input_image too",
        ));
    }
    if let Some(t) = req.safety_tolerance.filter(|t| *t > 6) {
        return Err(ApiError::invalid(
            "safety_tolerance",
            format!("safety_tolerance must be between 0 and 6 (got {t})"),
        )
        .with_limit("0..=6"));
    }
    if req.webhook_secret.as_deref().is_some_and(|v| !v.is_empty()) {
        return Err(ApiError::invalid(
            "webhook_secret",
            "webhook_secret is not supported: webhooks are signed with your tenant's Standard \
             Webhooks secret (GET /v1/webhook_secret; headers webhook-id, webhook-timestamp, \
             webhook-signature)",
        ));
    }
    let (input_image, input_images) = match first {
        Some(first) if !more.is_empty() => (None, Some([vec![first], more].concat())),
        first => (first, None),
    };
    let job = JobRequest {
        prompt: req.prompt,
        input_image,
        input_images,
        aspect_ratio: req.aspect_ratio,
        steps: req.steps,
        guidance: req.guidance,
        seed: req.seed,
        output_format: req.output_format,
        webhook_url: req.webhook_url,
        ..JobRequest::default()
    };
    let idem = super::jobs::idempotency_key(&headers)?;
    let (id, _) = submit_job(&state, &tenant, job, body_hash, idem).await?;
    Ok(Json(BflSubmitted {
        polling_url: format!("{}/v1/get_result?id={id}", state.public_url),
        id: id.to_string(),
    }))
}

/// Poll a task, BFL-style.
#[utoipa::path(
    get, path = "/v1/get_result", tag = "bfl",
    params(("id" = String, Query, description = "Task id from the create reply", min_length = 1)),
    responses(
        (status = 200, description = "The task", body = BflResult),
        (status = 401, description = "Missing or unknown x-key", body = ErrorBody),
        (status = 404, description = "Unknown id (or another tenant's): status \"Task not found\"",
            body = BflResult, example = json!({"id": "0b6a4f52-6f9e-4c55-9d0a-6f2f1b1e2c3d",
                "status": "Task not found", "result": null, "progress": null, "details": null,
                "error": {"type": "not_found", "field": "id", "message": "task not found"}})),
        (status = 422, description = "No id given", body = ErrorBody),
    ),
    security(("x_key" = []), ("bearer" = []))
)]
pub async fn get_result(
    State(state): State<AppState>,
    Caller(tenant): Caller,
    RawQuery(query): RawQuery,
) -> Result<Response, ApiError> {
    let pairs = query_pairs(query.as_deref());
    let id = query_param(&pairs, "id")
        .filter(|v| !v.is_empty())
        .ok_or_else(|| ApiError::invalid("id", "the id query parameter is required"))?
        .to_owned();
    let job = match state.job_for(&id, &tenant).await {
        Ok(job) => job,
        Err(e) if e.detail.kind == ErrorType::NotFound => {
            let body = BflResult {
                id,
                status: "Task not found".into(),
                result: None,
                progress: None,
                details: None,
                error: Some(ErrorDetail {
                    message: "task not found".into(),
                    ..*e.detail
                }),
            };
            return Ok((StatusCode::NOT_FOUND, Json(body)).into_response());
        }
        Err(e) => return Err(e),
    };
    let secs = |ms: u64| ms as f64 / 1000.0;
    let (status, result, details) = match job.status {
        JobStatus::Queued | JobStatus::Running => ("Pending", None, None),
        JobStatus::Succeeded => {
            let sample = state.result_url(&job).await?;
            let result = sample.map(|sample| BflSample {
                sample,
                prompt: job.spec.prompt.clone(),
                seed: job.result.as_ref().map_or(job.spec.seed, |r| r.seed),
                start_time: job.started_at.map(secs),
                end_time: job.finished_at.map(secs),
                duration: job
                    .started_at
                    .zip(job.finished_at)
                    .map(|(s, e)| secs(e.saturating_sub(s))),
            });
            ("Ready", result, None)
        }
        JobStatus::Failed | JobStatus::Canceled | JobStatus::Dead => {
            let details = serde_json::json!({
                "status": job.status.as_str(),
                "kind": job.error.as_ref().map(|e| e.kind.as_str()),
                "message": job.error.as_ref().map(|e| e.message.clone()),
            });
            ("Error", None, Some(details))
        }
    };
    Ok(Json(BflResult {
        id: job.id.to_string(),
        status: status.into(),
        result,
        progress: Some(job.progress),
        details,
        error: None,
    })
    .into_response())
}
