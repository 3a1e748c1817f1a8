//! `POST /v1/uploads`: the raw image bytes as the body. The image is checked (header limits, then
//! a bounded decode) and stored content-addressed; the reply's `id` is usable as `input_image`.
//! `POST /v1/loras`: a LoRA file, its safetensors header checked (`lora_input`); the `id` is
//! usable as `loras[].path`.

use axum::Json;
use axum::body::Body;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, header};

use super::error::{ApiError, ErrorBody};
use super::request::{Caller, read_body};
use super::views::{LoraUploadReply, UploadReply};
use crate::input::store_image;
use crate::lora_input::store_lora;
use crate::state::AppState;

/// Content types an upload may declare; the format itself is read from the bytes.
const ACCEPTED_TYPES: [&str; 5] = [
    "image/png",
    "image/jpeg",
    "image/jpg",
    "image/webp",
    "application/octet-stream",
];

/// Upload an input image (the raw file as the body).
#[utoipa::path(
    post, path = "/v1/uploads", tag = "uploads",
    request_body(content = Vec<u8>, description = "The image file (PNG, JPEG or WebP)",
        content_type = "image/png"),
    responses(
        (status = 201, description = "Stored (or already stored: uploads are content-addressed)",
            body = UploadReply),
        (status = 401, description = "Missing or unknown API key", body = ErrorBody),
        (status = 413, description = "Larger than --max-image-bytes", body = ErrorBody,
            example = json!({"error": {"type": "payload_too_large", "field": "image",
                "message": "image is larger than the limit of 20971520 bytes",
                "limit": "..=20971520 bytes"}})),
        (status = 415, description = "Content-Type is not an accepted image type", body = ErrorBody,
            example = json!({"error": {"type": "unsupported_media_type", "field": "Content-Type",
                "message": "Content-Type must be image/png, image/jpeg or image/webp (got \"text/plain\")",
                "limit": "image/png|image/jpeg|image/webp"}})),
        (status = 422, description = "Not a decodable image, or over the pixel limits", body = ErrorBody,
            example = json!({"error": {"type": "invalid_request", "field": "image",
                "message": "image is 50000x50000 = 2500000000 pixels; the limit is 16777216 pixels",
                "limit": "..=16777216 pixels"}})),
    ),
    security(("bearer" = []), ("x_key" = []))
)]
pub async fn upload(
    State(state): State<AppState>,
    Caller(tenant): Caller,
    headers: HeaderMap,
    body: Body,
) -> Result<(StatusCode, Json<UploadReply>), ApiError> {
    let content_type = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .map(|v| {
            v.split(';')
                .next()
                .unwrap_or("")
                .trim()
                .to_ascii_lowercase()
        });
    match content_type.as_deref() {
        Some(ct) if ACCEPTED_TYPES.contains(&ct) => {}
        other => {
            return Err(ApiError::unsupported_media(
                "Content-Type",
                format!(
                    "Content-Type must be image/png, image/jpeg or image/webp (got {:?})",
                    other.unwrap_or("")
                ),
            )
            .with_limit("image/png|image/jpeg|image/webp"));
        }
    }
    let max = state.config.limits.max_image_bytes;
    let bytes = read_body(
        &headers,
        body,
        max,
        state.config.limits.body_read_timeout,
        "image",
        "image",
    )
    .await?;
    let stored = store_image(&state, &tenant, bytes, "image").await?;
    Ok((
        StatusCode::CREATED,
        Json(UploadReply {
            id: stored.upload_id.to_string(),
            key: stored.key.into_string(),
            width: stored.image.width,
            height: stored.image.height,
            content_type: stored.image.content_type.to_owned(),
        }),
    ))
}

/// Upload a LoRA file (safetensors, the raw file as the body); the reply's `id` is usable as
/// `loras[].path` of jobs and chains.
#[utoipa::path(
    post, path = "/v1/loras", tag = "uploads",
    request_body(content = Vec<u8>, description = "The LoRA file (safetensors: PEFT/diffusers, \
        kohya or XLabs keys). Any Content-Type is accepted: the bytes are checked.",
        content_type = "application/x-safetensors"),
    responses(
        (status = 201, description = "Stored (or already stored: content-addressed)",
            body = LoraUploadReply),
        (status = 401, description = "Missing or unknown API key", body = ErrorBody),
        (status = 413, description = "Larger than --max-lora-bytes", body = ErrorBody,
            example = json!({"error": {"type": "payload_too_large", "field": "lora",
                "message": "lora is larger than the limit of 536870912 bytes",
                "limit": "..=536870912 bytes"}})),
        (status = 422, description = "Not a safetensors file, or no LoRA tensors in it",
            body = ErrorBody,
            example = json!({"error": {"type": "invalid_request", "field": "lora",
                "message": "lora holds no LoRA tensors (lora_A/lora_B, lora_down/lora_up or down/up) among its 780 tensors; is it a full checkpoint?"}})),
    ),
    security(("bearer" = []), ("x_key" = []))
)]
pub async fn upload_lora(
    State(state): State<AppState>,
    Caller(tenant): Caller,
    headers: HeaderMap,
    body: Body,
) -> Result<(StatusCode, Json<LoraUploadReply>), ApiError> {
    // Bounded memory: at most LORA_FETCH_PERMITS files are held at once.
    let _permit = state
        .lora_permits
        .acquire()
        .await
        .map_err(|e| ApiError::internal(&e))?;
    let bytes = read_body(
        &headers,
        body,
        state.config.limits.max_lora_bytes,
        state.config.limits.body_read_timeout,
        "lora",
        "lora",
    )
    .await?;
    let size = bytes.len() as u64;
    let (id, key, header) = store_lora(&state, &tenant, bytes, "lora").await?;
    Ok((
        StatusCode::CREATED,
        Json(LoraUploadReply {
            id: id.to_string(),
            key: key.into_string(),
            bytes: size,
            tensors: header.tensors,
        }),
    ))
}
