//! `POST /v1/uploads`: the raw image bytes as the body. The image is checked (header limits, then
//! a bounded decode) and stored content-addressed; the reply's `id` is usable as `input_image`.

use axum::Json;
use axum::body::Body;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, header};

use super::error::{ApiError, ErrorBody};
use super::request::{Caller, read_body};
use super::views::UploadReply;
use crate::input::store_image;
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
