//! Resolution of `input_image` into a stored, measured image (`InputImage`), and the storing of
//! uploads. Accepted forms, tried in this order:
//!
//! 1. an `http://` / `https://` URL: fetched through the SSRF guard (`fetch`), size-limited;
//! 2. a `data:<type>;base64,<data>` URL;
//! 3. an upload id `<sha256>.<ext>` from `POST /v1/uploads` (this tenant's);
//! 4. an object key `in/<tenant>/...` or `out/<tenant>/...` (earlier results can be edited);
//!    another tenant's key gets the same answer as a missing one;
//! 5. bare base64 (BFL's form).
//!
//! Bytes from 1, 2 and 5 go through the same checks as uploads (`image_limits`) and are stored
//! content-addressed under `in/<tenant>/<sha256>.<ext>`, so the queue only ever carries keys.

use base64::Engine as _;
use base64::engine::general_purpose::{STANDARD, STANDARD_NO_PAD, URL_SAFE, URL_SAFE_NO_PAD};
use bytes::Bytes;
use kontext_proto::InputImage;
use kontext_storage::keys::{UploadId, input_key, parse_tenant_key};
use kontext_storage::{BlobStore, ObjectKey};

use crate::auth::Tenant;
use crate::fetch;
use crate::http::error::ApiError;
use crate::image_limits::{CheckedImage, ImageError, ImageLimits, check_image, header_dimensions};
use crate::state::AppState;

/// An image that was checked and stored.
#[derive(Debug, Clone)]
pub struct StoredImage {
    pub upload_id: UploadId,
    pub key: ObjectKey,
    pub image: CheckedImage,
}

fn limits(state: &AppState) -> ImageLimits {
    let l = &state.config.limits;
    ImageLimits {
        max_bytes: l.max_image_bytes,
        max_pixels: l.job.max_input_pixels,
        max_side: l.job.max_input_side,
    }
}

/// Turns an `ImageError` into the answer for `field`.
fn image_error(field: &str, e: &ImageError) -> ApiError {
    if let ImageError::TooManyBytes { limit, .. } = e {
        return ApiError::too_large(field, *limit, field);
    }
    let mut err = ApiError::invalid(field, format!("{field} {e}"));
    err.detail.limit = e.limit();
    err
}

/// Checks `bytes` as an image (header limits first, then a bounded decode) and stores it
/// content-addressed for `tenant`. Nothing is stored when a check fails.
pub async fn store_image(
    state: &AppState,
    tenant: &Tenant,
    bytes: Bytes,
    field: &str,
) -> Result<StoredImage, ApiError> {
    let limits = limits(state);
    let _permit = state
        .decode_permits
        .acquire()
        .await
        .map_err(|e| ApiError::internal(&e))?;
    let image = tokio::task::spawn_blocking(move || check_image(bytes, &limits))
        .await
        .map_err(|e| ApiError::internal(&e))?
        .map_err(|e| image_error(field, &e))?;
    let upload_id =
        UploadId::for_content(&image.bytes, image.extension).map_err(|e| ApiError::internal(&e))?;
    let key = input_key(&tenant.id, &upload_id).map_err(|e| ApiError::internal(&e))?;
    state
        .store
        .put_if_absent(&key, image.bytes.clone(), image.content_type)
        .await?;
    Ok(StoredImage {
        upload_id,
        key,
        image,
    })
}

/// Resolves a request's `input_image` (see the module docs for the forms).
pub async fn resolve_input(
    state: &AppState,
    tenant: &Tenant,
    raw: &str,
) -> Result<InputImage, ApiError> {
    const FIELD: &str = "input_image";
    let raw = raw.trim();
    let max_bytes = state.config.limits.max_image_bytes;

    if raw.starts_with("http://") || raw.starts_with("https://") {
        let bytes = fetch::fetch(
            raw,
            max_bytes,
            state.config.url_fetch_timeout,
            state.config.allow_private_urls,
        )
        .await
        .map_err(|e| match e {
            fetch::FetchError::TooLarge(limit) => ApiError::too_large(FIELD, limit, FIELD),
            other => ApiError::invalid(FIELD, format!("input_image URL {other}")),
        })?;
        return stored(store_image(state, tenant, bytes, FIELD).await?);
    }
    if let Some(rest) = raw.strip_prefix("data:") {
        let (_, data) = rest.split_once(";base64,").ok_or_else(|| {
            ApiError::invalid(
                FIELD,
                "input_image data URL must be data:<type>;base64,<data>",
            )
        })?;
        let bytes = decode_base64(data, max_bytes)?
            .ok_or_else(|| ApiError::invalid(FIELD, "input_image data URL is not valid base64"))?;
        return stored(store_image(state, tenant, bytes, FIELD).await?);
    }
    if let Ok(upload) = UploadId::parse(raw) {
        let key = input_key(&tenant.id, &upload).map_err(|e| ApiError::internal(&e))?;
        return stored_key(state, key, raw).await;
    }
    if raw.starts_with("in/") || raw.starts_with("out/") {
        let Ok(key) = parse_tenant_key(raw, &tenant.id) else {
            return Err(missing_key(raw));
        };
        return stored_key(state, key, raw).await;
    }
    match decode_base64(raw, max_bytes)? {
        Some(bytes) => stored(store_image(state, tenant, bytes, FIELD).await?),
        None => Err(ApiError::invalid(
            FIELD,
            "input_image must be an upload id, one of your object keys (in/... or out/...), an \
             http(s) URL, a data: URL or base64 image bytes",
        )
        .with_limit("upload id | object key | URL | base64")),
    }
}

fn stored(s: StoredImage) -> Result<InputImage, ApiError> {
    Ok(InputImage {
        key: s.key,
        width: s.image.width,
        height: s.image.height,
    })
}

fn missing_key(raw: &str) -> ApiError {
    ApiError::invalid(
        "input_image",
        format!("input_image {raw:?} names no stored image of yours"),
    )
}

/// An object already stored under this tenant's prefix: read it and measure it from its header.
async fn stored_key(state: &AppState, key: ObjectKey, raw: &str) -> Result<InputImage, ApiError> {
    let blob = match state.store.get(&key).await {
        Ok(blob) => blob,
        Err(e) if e.is_not_found() => return Err(missing_key(raw)),
        Err(e) => return Err(e.into()),
    };
    let (width, height) = header_dimensions(&blob.bytes)
        .map_err(|e| ApiError::invalid("input_image", format!("input_image {raw:?} {e}")))?;
    Ok(InputImage { key, width, height })
}

/// Decodes base64 (standard or URL-safe, padded or not). `Ok(None)` when it is not base64;
/// 413 when the decoded size would exceed `max_bytes` (checked before decoding).
fn decode_base64(data: &str, max_bytes: u64) -> Result<Option<Bytes>, ApiError> {
    let data = data.trim();
    if data.is_empty() {
        return Ok(None);
    }
    if (data.len() as u64 / 4).saturating_mul(3) > max_bytes.saturating_add(3) {
        return Err(ApiError::too_large("input_image", max_bytes, "input_image"));
    }
    for engine in [&STANDARD, &STANDARD_NO_PAD, &URL_SAFE, &URL_SAFE_NO_PAD] {
        if let Ok(bytes) = engine.decode(data) {
            return Ok(Some(Bytes::from(bytes)));
        }
    }
    Ok(None)
}
