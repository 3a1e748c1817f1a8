//! LoRAs per job: the request field (`loras: [{"path", "scale"}]`), its checks, and the resolved
//! form the queue stores (object keys). The coordinator resolves each `path` (an upload id from
//! `POST /v1/loras`, an object key of the tenant, or an https URL it fetches and stores) and
//! checks the file's safetensors header; the worker's engine reads the tensors and fails the job
//! as invalid input when they do not fit the model (docs/loras.md).

use serde::{Deserialize, Serialize};

use crate::object_key::ObjectKey;
use crate::validate_fields::Report;

/// Most LoRAs one job may apply (the engine's limit too).
pub const MAX_LORAS: usize = 4;
/// Largest |scale|.
pub const MAX_LORA_SCALE: f64 = 8.0;
/// Longest `path`.
pub const MAX_LORA_PATH_CHARS: usize = 2_048;

/// One LoRA as a request names it.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
// No example: a path is valid only once its file is stored, which an example cannot be.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema), schema(as = LoraRef))]
#[serde(default, deny_unknown_fields)]
pub struct LoraRequest {
    /// The LoRA file (safetensors; PEFT/diffusers, kohya or XLabs keys): an id from
    /// `POST /v1/loras`, an object key of this tenant (`in/<tenant>/...`), or an https URL the
    /// coordinator fetches once and stores. At most 2,048 characters.
    #[cfg_attr(
        feature = "openapi",
        schema(
            required = true,
            format = "kontext-lora",
            min_length = 1,
            max_length = 2048
        )
    )]
    pub path: String,
    /// Strength, -8 to 8 (default 1).
    #[cfg_attr(feature = "openapi", schema(minimum = -8.0, maximum = 8.0))]
    pub scale: Option<f64>,
}

/// A LoRA of a job as the queue stores it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct LoraSpec {
    /// Content-addressed object key of the file.
    #[cfg_attr(feature = "openapi", schema(value_type = String))]
    pub key: ObjectKey,
    pub scale: f64,
}

/// Identity of a job's LoRA set for routing (LoRA affinity, docs/queue-protocol.md): the hex
/// SHA-256 (first 32 characters) of its `(key, scale)` list in order; `None` without LoRAs. Two
/// jobs with the same id need the same adapters, so a worker holding one serves the other without
/// rebuilding them.
pub fn lora_set_id(loras: &[LoraSpec]) -> Option<String> {
    use sha2::{Digest, Sha256};
    if loras.is_empty() {
        return None;
    }
    let mut h = Sha256::new();
    for l in loras {
        h.update(l.key.as_str().as_bytes());
        h.update(b"\n");
        h.update(l.scale.to_bits().to_le_bytes());
    }
    Some(hex::encode(&h.finalize()[..16]))
}

/// What the engine applied for one LoRA of a job (its result).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct AppliedLora {
    #[cfg_attr(feature = "openapi", schema(value_type = String))]
    pub key: ObjectKey,
    pub scale: f64,
    /// Key layout the file was written in: `peft`, `kohya`, `xlabs` or `diffusers-legacy`.
    pub format: String,
    /// Linear layers of the transformer it changes.
    pub layers: usize,
    /// Text-encoder modules in the file, not applied (this engine applies LoRAs to the
    /// transformer only).
    #[serde(default)]
    pub skipped_text_encoder_modules: usize,
}

/// A request's LoRAs after the field checks: `(path, scale)` in order.
pub(crate) fn check(r: &mut Report, loras: Option<&Vec<LoraRequest>>) -> Vec<(String, f64)> {
    let Some(loras) = loras else {
        return Vec::new();
    };
    if loras.is_empty() || loras.len() > MAX_LORAS {
        r.push(
            "loras",
            format!(
                "loras must have 1 to {MAX_LORAS} entries (got {})",
                loras.len()
            ),
            Some(format!("1..={MAX_LORAS}")),
        );
        return Vec::new();
    }
    let mut out = Vec::with_capacity(loras.len());
    for (i, l) in loras.iter().enumerate() {
        let path = l.path.trim();
        let chars = path.chars().count();
        if path.is_empty() || chars > MAX_LORA_PATH_CHARS {
            r.push(
                &format!("loras[{i}].path"),
                format!(
                    "loras[{i}].path must be 1 to {MAX_LORA_PATH_CHARS} characters (got {chars})"
                ),
                Some(format!("1..={MAX_LORA_PATH_CHARS} characters")),
            );
        }
        let scale = l.scale.unwrap_or(1.0);
        if !scale.is_finite() || scale.abs() > MAX_LORA_SCALE {
            r.push(
                &format!("loras[{i}].scale"),
                format!(
                    "loras[{i}].scale must be between -{MAX_LORA_SCALE} and {MAX_LORA_SCALE} (got {scale})"
                ),
                Some(format!("-{MAX_LORA_SCALE}..={MAX_LORA_SCALE}")),
            );
        }
        out.push((path.to_owned(), scale));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lora(path: &str, scale: Option<f64>) -> LoraRequest {
        LoraRequest {
            path: path.into(),
            scale,
        }
    }

    fn errors(loras: Vec<LoraRequest>) -> Vec<(String, Option<String>)> {
        let mut r = Report::default();
        check(&mut r, Some(&loras));
        match r.finish(()) {
            Ok(()) => Vec::new(),
            Err(e) => e.errors.into_iter().map(|e| (e.field, e.limit)).collect(),
        }
    }

    #[test]
    fn fields_and_limits_are_named() {
        assert!(errors(vec![lora("in/t/a.safetensors", Some(0.8))]).is_empty());
        assert!(errors(vec![lora("https://x/a.safetensors", Some(-8.0))]).is_empty());
        assert_eq!(errors(vec![])[0].0, "loras");
        assert_eq!(
            errors(vec![lora("a", None); 5])[0].1.as_deref(),
            Some("1..=4")
        );
        assert_eq!(
            errors(vec![lora("a", None), lora(" ", None)])[0].0,
            "loras[1].path"
        );
        assert_eq!(errors(vec![lora("a", Some(8.5))])[0].0, "loras[0].scale");
        assert_eq!(
            errors(vec![lora("a", Some(f64::NAN))])[0].0,
            "loras[0].scale"
        );
        assert_eq!(
            errors(vec![lora(&"x".repeat(2_049), None)])[0].0,
            "loras[0].path"
        );
        let mut r = Report::default();
        assert_eq!(
            check(&mut r, Some(&vec![lora(" in/t/a ", None)])),
            vec![("in/t/a".to_string(), 1.0)]
        );
    }
}
