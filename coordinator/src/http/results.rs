//! Result bytes. `GET /v1/jobs/{id}/result` redirects to a presigned URL (S3) or, with local
//! storage, answers the bytes itself. `GET /v1/blobs/{key}` is the local stand-in for presigned
//! URLs: no API key, but an HMAC signature over key and expiry (`signing`), so result URLs in job
//! views, webhooks and BFL's `result.sample` work for plain HTTP clients.

use axum::extract::{Path, RawQuery, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use kontext_proto::JobStatus;
use kontext_storage::{BlobStore, ObjectKey};

use super::error::{ApiError, ErrorBody};
use super::request::{Caller, query_pairs, query_param};
use crate::signing::{BlobUrlError, verify_blob};
use crate::state::{AppState, now_ms};

/// The result image of a succeeded job.
#[utoipa::path(
    get, path = "/v1/jobs/{id}/result", tag = "jobs",
    params(("id" = String, Path, description = "Job id")),
    responses(
        (status = 302, description = "Redirect to a presigned URL (S3 storage)",
            headers(("Location" = String, description = "Presigned GET URL"))),
        (status = 200, description = "The image bytes (local storage)", content_type = "image/png"),
        (status = 401, description = "Missing or unknown API key", body = ErrorBody),
        (status = 404, description = "No such job for this tenant", body = ErrorBody),
        (status = 409, description = "The job has not succeeded (yet)", body = ErrorBody,
            example = json!({"error": {"type": "not_ready", "field": "id",
                "message": "job is running; a result exists only once it succeeded"}})),
    ),
    security(("bearer" = []), ("x_key" = []))
)]
pub async fn job_result(
    State(state): State<AppState>,
    Caller(tenant): Caller,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    let job = state.job_for(&id, &tenant).await?;
    let (Some(result), JobStatus::Succeeded) = (&job.result, job.status) else {
        return Err(ApiError::not_ready(format!(
            "job is {}; a result exists only once it succeeded",
            job.status
        )));
    };
    object_response(&state, &result.key).await
}

/// The object at `key`: a redirect to a presigned URL (S3 storage) or its bytes.
pub(super) async fn object_response(
    state: &AppState,
    key: &ObjectKey,
) -> Result<Response, ApiError> {
    if let Some(url) = state.store.presigned_get(key).await? {
        let location = HeaderValue::from_str(&url).map_err(|e| ApiError::internal(&e))?;
        return Ok((StatusCode::FOUND, [(header::LOCATION, location)]).into_response());
    }
    blob_response(state, key).await
}

/// An object behind a signed URL (local storage's stand-in for presigned S3 URLs).
#[utoipa::path(
    get, path = "/v1/blobs/{key}", tag = "jobs",
    params(
        ("key" = String, Path, description = "Object key"),
        ("expires" = u64, Query, description = "Unix time (s) the URL expires at"),
        ("signature" = String, Query, description = "HMAC-SHA256 (hex) over key and expiry"),
    ),
    responses(
        (status = 200, description = "The object's bytes", content_type = "image/png"),
        (status = 403, description = "Missing, wrong or expired signature", body = ErrorBody,
            example = json!({"error": {"type": "forbidden", "field": "expires",
                "message": "this signed URL has expired; fetch the job again for a fresh one"}})),
        (status = 404, description = "No such object (or the store is S3: use its presigned URLs)",
            body = ErrorBody),
    )
)]
pub async fn signed_blob(
    State(state): State<AppState>,
    Path(key): Path<String>,
    RawQuery(query): RawQuery,
) -> Result<Response, ApiError> {
    if state.store.serves_presigned_urls() {
        return Err(ApiError::not_found("key", "object"));
    }
    let pairs = query_pairs(query.as_deref());
    let expires = query_param(&pairs, "expires").and_then(|v| v.parse::<u64>().ok());
    let signature = query_param(&pairs, "signature");
    let (Some(expires), Some(signature)) = (expires, signature) else {
        return Err(ApiError::forbidden(
            "signature",
            "a signed URL needs expires and signature query parameters",
        ));
    };
    match verify_blob(
        &state.config.url_signing_secret,
        &key,
        expires,
        signature,
        now_ms() / 1000,
    ) {
        Ok(()) => {}
        Err(BlobUrlError::Expired) => {
            return Err(ApiError::forbidden(
                "expires",
                "this signed URL has expired; fetch the job again for a fresh one",
            ));
        }
        Err(BlobUrlError::BadSignature) => {
            return Err(ApiError::forbidden(
                "signature",
                "the signature does not match this URL",
            ));
        }
    }
    let key = ObjectKey::parse(&key).map_err(|_| ApiError::not_found("key", "object"))?;
    blob_response(&state, &key).await
}

async fn blob_response(state: &AppState, key: &ObjectKey) -> Result<Response, ApiError> {
    let blob = match state.store.get(key).await {
        Ok(blob) => blob,
        Err(e) if e.is_not_found() => return Err(ApiError::not_found("key", "object")),
        Err(e) => return Err(e.into()),
    };
    let content_type = HeaderValue::from_str(&blob.content_type)
        .unwrap_or_else(|_| HeaderValue::from_static("application/octet-stream"));
    Ok((
        StatusCode::OK,
        [
            (header::CONTENT_TYPE, content_type),
            // Results are immutable (attempt-scoped keys) but private to whoever holds the URL.
            (
                header::CACHE_CONTROL,
                HeaderValue::from_static("private, max-age=3600, immutable"),
            ),
        ],
        blob.bytes,
    )
        .into_response())
}
