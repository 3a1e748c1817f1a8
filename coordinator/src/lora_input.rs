//! Resolution of a job's `loras[i].path` into a stored LoRA file (docs/loras.md). Accepted forms:
//!
//! 1. an `http://` / `https://` URL: fetched once through the SSRF guard (`fetch`), at most
//!    `--max-lora-bytes`, checked and stored content-addressed as `in/<tenant>/<sha256>.safetensors`;
//! 2. an id `<sha256>.safetensors` from `POST /v1/loras` (this tenant's);
//! 3. an object key `in/<tenant>/....safetensors` of this tenant.
//!
//! The coordinator reads only the safetensors header (the `safetensors` crate; it links no
//! tensor library): a file that is not safetensors, or holds no LoRA tensors, is refused here.
//! Whether the tensors fit the model is for the worker's engine to tell; a file that does not
//! fails its job as invalid input. At most [`LORA_FETCH_PERMITS`] files are fetched or received
//! at once, so LoRA traffic holds a bounded amount of memory.

use bytes::Bytes;
use kontext_proto::loras::LoraSpec;
use kontext_storage::keys::{UploadId, input_key, parse_tenant_key};
use kontext_storage::{BlobStore, ObjectKey};

use crate::auth::Tenant;
use crate::fetch;
use crate::http::error::ApiError;
use crate::state::AppState;

/// LoRA files fetched or uploaded at the same time, per coordinator.
pub const LORA_FETCH_PERMITS: usize = 2;
/// File extension of stored LoRAs.
pub const LORA_EXTENSION: &str = "safetensors";
/// Content type LoRA files are stored with.
pub const LORA_CONTENT_TYPE: &str = "application/octet-stream";

/// What the header of a LoRA file says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LoraHeader {
    pub tensors: usize,
    /// Tensors named like LoRA parts (`lora_A`, `lora_down`, `.down.weight`, `.alpha`, ...).
    pub lora_tensors: usize,
}

/// Why bytes are not a LoRA file.
#[derive(Debug, thiserror::Error)]
pub enum LoraFileError {
    #[error("is not a safetensors file: {0}")]
    NotSafetensors(#[source] safetensors::SafeTensorError),
    #[error(
        "holds no LoRA tensors (lora_A/lora_B, lora_down/lora_up or down/up) among its {0} tensors; is it a full checkpoint?"
    )]
    NoLoraTensors(usize),
}

/// Reads the safetensors header of `bytes` (nothing else is parsed).
pub fn check_lora_header(bytes: &[u8]) -> Result<LoraHeader, LoraFileError> {
    let (_, meta) =
        safetensors::SafeTensors::read_metadata(bytes).map_err(LoraFileError::NotSafetensors)?;
    let names = meta.tensors();
    let lora_tensors = names
        .keys()
        .filter(|k| {
            [
                ".lora_A.weight",
                ".lora_B.weight",
                ".lora_down.weight",
                ".lora_up.weight",
                ".lora.down.weight",
                ".lora.up.weight",
                ".down.weight",
                ".up.weight",
            ]
            .iter()
            .any(|s| k.ends_with(s))
        })
        .count();
    if lora_tensors == 0 {
        return Err(LoraFileError::NoLoraTensors(names.len()));
    }
    Ok(LoraHeader {
        tensors: names.len(),
        lora_tensors,
    })
}

/// Checks `bytes` as a LoRA file and stores it content-addressed for `tenant`; nothing is stored
/// when the check fails. Returns the upload id, the key and the header.
pub async fn store_lora(
    state: &AppState,
    tenant: &Tenant,
    bytes: Bytes,
    field: &str,
) -> Result<(UploadId, ObjectKey, LoraHeader), ApiError> {
    let header =
        check_lora_header(&bytes).map_err(|e| ApiError::invalid(field, format!("{field} {e}")))?;
    let upload =
        UploadId::for_content(&bytes, LORA_EXTENSION).map_err(|e| ApiError::internal(&e))?;
    let key = input_key(&tenant.id, &upload).map_err(|e| ApiError::internal(&e))?;
    state
        .store
        .put_if_absent(&key, bytes, LORA_CONTENT_TYPE)
        .await?;
    Ok((upload, key, header))
}

/// Resolves `loras[index]` (`raw` its path) for `tenant`.
pub async fn resolve_lora(
    state: &AppState,
    tenant: &Tenant,
    index: usize,
    (raw, scale): (&str, f64),
) -> Result<LoraSpec, ApiError> {
    let field = format!("loras[{index}].path");
    let max_bytes = state.config.limits.max_lora_bytes;
    if raw.starts_with("http://") || raw.starts_with("https://") {
        let _permit = state
            .lora_permits
            .acquire()
            .await
            .map_err(|e| ApiError::internal(&e))?;
        let bytes = fetch::fetch(
            raw,
            max_bytes,
            state.config.url_fetch_timeout,
            state.config.allow_private_urls,
        )
        .await
        .map_err(|e| match e {
            fetch::FetchError::TooLarge(limit) => ApiError::too_large(&field, limit, &field),
            other => ApiError::invalid(&field, format!("{field} URL {other}")),
        })?;
        let (_, key, _) = store_lora(state, tenant, bytes, &field).await?;
        return Ok(LoraSpec { key, scale });
    }
    let key = if let Ok(upload) = UploadId::parse(raw) {
        input_key(&tenant.id, &upload).map_err(|e| ApiError::internal(&e))?
    } else if raw.starts_with("in/") {
        parse_tenant_key(raw, &tenant.id).map_err(|_| missing(&field, raw))?
    } else {
        return Err(ApiError::invalid(
            &field,
            format!(
                "{field} must be an id from POST /v1/loras, one of your object keys \
                 (in/<tenant>/<sha256>.safetensors) or an http(s) URL"
            ),
        )
        .with_limit("lora id | object key | URL"));
    };
    if !key.as_str().ends_with(".safetensors") {
        return Err(ApiError::invalid(
            &field,
            format!("{field} {raw:?} is not a LoRA file (.safetensors)"),
        ));
    }
    match state.store.head(&key).await? {
        Some(_) => Ok(LoraSpec { key, scale }),
        None => Err(missing(&field, raw)),
    }
}

fn missing(field: &str, raw: &str) -> ApiError {
    ApiError::invalid(
        field,
        format!("{field} {raw:?} names no stored LoRA of yours"),
    )
}

/// Resolves every requested LoRA of a job or chain, in order.
pub async fn resolve_loras(
    state: &AppState,
    tenant: &Tenant,
    requested: &[(String, f64)],
) -> Result<Vec<LoraSpec>, ApiError> {
    let mut out = Vec::with_capacity(requested.len());
    for (i, (raw, scale)) in requested.iter().enumerate() {
        out.push(resolve_lora(state, tenant, i, (raw, *scale)).await?);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn file(names: &[&str]) -> Vec<u8> {
        let data = vec![0u8; 4 * 2 * 2];
        let views: Vec<(String, safetensors::tensor::TensorView<'_>)> = names
            .iter()
            .map(|n| {
                (
                    n.to_string(),
                    safetensors::tensor::TensorView::new(
                        safetensors::Dtype::F32,
                        vec![2, 2],
                        &data,
                    )
                    .expect("view"),
                )
            })
            .collect();
        safetensors::serialize(views, None).expect("serialize")
    }

    #[test]
    fn headers_are_told_apart() {
        let ok = check_lora_header(&file(&["a.lora_A.weight", "a.lora_B.weight", "a.alpha"]))
            .expect("lora");
        assert_eq!((ok.tensors, ok.lora_tensors), (3, 2));
        assert!(matches!(
            check_lora_header(&file(&["double_blocks.0.img_attn.qkv.weight"])),
            Err(LoraFileError::NoLoraTensors(1))
        ));
        assert!(matches!(
            check_lora_header(b"\x89PNG not a lora"),
            Err(LoraFileError::NotSafetensors(_))
        ));
    }
}
