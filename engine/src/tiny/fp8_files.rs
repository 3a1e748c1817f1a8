//! The tiny transformer written as the FP8 single files people download for ComfyUI, so the
//! loader's FP8 path is tested on files of that layout: BFL names (optionally under
//! `model.diffusion_model.`), the blocks' linear weights in E4M3, everything else in BF16, and
//! for the "scaled" variant (Comfy-Org's `*_fp8_scaled` files) one f32 `scale_weight` per weight
//! (`weight ≈ e4m3 × scale`) plus the empty `scaled_fp8` marker tensor.

use std::collections::HashMap;
use std::path::Path;

use candle_core::{DType, Device, Tensor};

use super::{TinyWeights, write};
use crate::EngineError;
use crate::weights::check::is_block_linear_weight;
use crate::weights::{BFL_TRANSFORMER_FILE, Layout};

/// How the E4M3 weights relate to the real values.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fp8Style {
    /// A plain cast (`weight.to(float8_e4m3fn)`): small values fall into E4M3's subnormals.
    Plain,
    /// Per-tensor scale `max|w| / 448`, stored as `<stem>.scale_weight`.
    Scaled,
}

/// Writes the whole tiny model for `seed` in the BFL layout with its transformer as an FP8 file
/// of `style`, keys under `prefix` (`""` or `model.diffusion_model.`).
pub fn write_fp8(dir: &Path, seed: u64, style: Fp8Style, prefix: &str) -> Result<(), EngineError> {
    write(dir, seed, Layout::Bfl)?;
    let dev = Device::Cpu;
    let mut out: HashMap<String, Tensor> = HashMap::new();
    for (name, t) in TinyWeights::generate(seed).transformer {
        let tensor = Tensor::from_vec(t.data, t.shape, &dev)?;
        if !is_block_linear_weight(&name) {
            out.insert(format!("{prefix}{name}"), tensor.to_dtype(DType::BF16)?);
            continue;
        }
        let stored = match style {
            Fp8Style::Plain => tensor.to_dtype(DType::F8E4M3)?,
            Fp8Style::Scaled => {
                let amax = tensor.abs()?.max_all()?.to_scalar::<f32>()?;
                let scale = (amax / 448.0).max(f32::MIN_POSITIVE);
                let stem = name.strip_suffix(".weight").unwrap_or(&name);
                out.insert(
                    format!("{prefix}{stem}.scale_weight"),
                    Tensor::new(&[scale], &dev)?,
                );
                (tensor / f64::from(scale))?.to_dtype(DType::F8E4M3)?
            }
        };
        out.insert(format!("{prefix}{name}"), stored);
    }
    if style == Fp8Style::Scaled {
        out.insert("scaled_fp8".into(), Tensor::zeros(0, DType::F8E4M3, &dev)?);
    }
    candle_core::safetensors::save(&out, dir.join(BFL_TRANSFORMER_FILE))?;
    Ok(())
}
