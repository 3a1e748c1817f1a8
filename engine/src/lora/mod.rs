//! LoRAs per request, merged into the transformer's linear weights (or, on FP8 weights, added at
//! runtime as a low-rank term).
//!
//! Each request names its LoRA files (bytes and an id) with a scale. A file is parsed once into
//! low-rank parts of the canonical layers (`parse`, key layouts in `names`) and kept on the
//! device in an LRU by id. For a request, every layer some LoRA touches gets one [`LowRank`]:
//! the parts' `down` matrices stacked along the rank, their `up` matrices (scaled, placed at the
//! rows of a fused layer, half-swapped for `norm_out`) side by side, so the layer computes
//! `W·x + b + Σ_k s_k (alpha_k / r_k) · up_k (down_k · x)`.
//!
//! How (`BlockLinear::set_lora`, docs/loras.md §Merge or runtime addition): weights in the compute
//! dtype get `up·down` merged in, their originals kept (on the host, from a GPU) and put back
//! exactly when the set changes; the set stays merged between jobs that use it, which is what
//! LoRA-aware routing sends to the same worker. `bench-lora` measured the runtime addition at
//! +18% per step on `bench_mid` (rank 32; thin GEMMs run far below the big ones' rate), more
//! than a whole merge (restore + merge 0.77 s) within the first step. FP8 weights get the runtime addition: re-quantizing a merged
//! weight would round a LoRA's small deltas away.

pub mod names;
pub mod parse;

use std::collections::HashMap;
use std::sync::Arc;

use candle_core::{DType, Device, Tensor};

use crate::cache::{self, ByteLru};
use crate::config::FluxConfig;
use crate::flux::Flux;
use crate::flux::linear::LowRank;
pub use names::{Target, TargetMap};
pub use parse::{LoraFile, LoraFormat};

/// Most LoRAs one request may apply.
pub const MAX_LORAS: usize = 4;
/// Largest |scale| of one LoRA.
pub const MAX_LORA_SCALE: f64 = 8.0;
/// Device bytes of parsed LoRA files kept between jobs.
pub const LORA_CACHE_BYTES: usize = 2 << 30;

/// Why a LoRA file cannot be applied: the file's fault, never worth a retry — except `Weights`.
#[derive(Debug, thiserror::Error)]
pub enum LoraError {
    #[error("not a safetensors file: {source}")]
    NotSafetensors {
        #[source]
        source: safetensors::SafeTensorError,
    },
    #[error("lora_adapter_metadata is not JSON: {source}")]
    Metadata {
        #[source]
        source: serde_json::Error,
    },
    #[error("{key}: unsupported {what}")]
    Unsupported { key: String, what: &'static str },
    #[error("{key}: dtype {dtype} is not supported (F32, F16 and BF16 are)")]
    Dtype { key: String, dtype: String },
    #[error("module {module}: the transformer has no such linear layer")]
    UnknownModule { module: String },
    #[error("module {module}: {missing} is missing")]
    Incomplete {
        module: String,
        missing: &'static str,
    },
    #[error("{key}: shape {found:?}, expected {expected}")]
    Shape {
        key: String,
        expected: String,
        found: Vec<usize>,
    },
    #[error(
        "no LoRA tensors for the transformer in the file ({skipped} text-encoder modules skipped)"
    )]
    Empty { skipped: usize },
    #[error("scale {scale} is outside -{MAX_LORA_SCALE}..={MAX_LORA_SCALE}")]
    Scale { scale: f64 },
    #[error("{count} LoRAs; at most {MAX_LORAS} per request")]
    TooMany { count: usize },
    #[error(transparent)]
    Candle(#[from] candle_core::Error),
    /// Merging into or restoring the resident weights failed (a device error, not the file's).
    #[error("changing the resident weights failed: {source}")]
    Weights {
        #[source]
        source: candle_core::Error,
    },
}

/// One LoRA of a request.
#[derive(Debug, Clone)]
pub struct LoraInput {
    /// Names the bytes (the worker uses the object key, which is content-addressed): the cache
    /// key, so the same id must always carry the same bytes.
    pub id: String,
    pub bytes: Arc<[u8]>,
    pub scale: f64,
}

/// What was applied for a request, for its result.
#[derive(Debug, Clone, PartialEq)]
pub struct AppliedLora {
    pub id: String,
    pub scale: f64,
    pub format: LoraFormat,
    /// Layers it changes.
    pub layers: usize,
    /// Text-encoder modules in the file that were not applied.
    pub skipped_text_encoder_modules: usize,
}

/// Builds the per-layer low-rank additions of `loras` (`(file, scale)`), in `dtype`.
pub fn adapters(
    loras: &[(&LoraFile, f64)],
    dtype: DType,
) -> Result<HashMap<String, LowRank>, LoraError> {
    let mut by_layer: HashMap<&str, (Vec<Tensor>, Vec<Tensor>)> = HashMap::new();
    for (file, scale) in loras {
        for part in &file.parts {
            let t = &part.target;
            let r = part.down.dim(0)?;
            let up = (&part.up * *scale)?; // (rows, r)
            let mut pieces = Vec::with_capacity(3);
            if t.rows.start > 0 {
                pieces.push(Tensor::zeros((t.rows.start, r), DType::F32, up.device())?);
            }
            pieces.push(up);
            if t.rows.end < t.out_dim {
                let rest = t.out_dim - t.rows.end;
                pieces.push(Tensor::zeros((rest, r), DType::F32, part.up.device())?);
            }
            let mut up = Tensor::cat(&pieces, 0)?; // (out, r)
            if t.swap_halves {
                let half = t.out_dim / 2;
                up = Tensor::cat(&[up.narrow(0, half, half)?, up.narrow(0, 0, half)?], 0)?; // (out, r)
            }
            let entry = by_layer.entry(t.module.as_str()).or_default();
            entry.0.push(part.down.clone());
            entry.1.push(up);
        }
    }
    by_layer
        .into_iter()
        .map(|(layer, (downs, ups))| {
            let down = Tensor::cat(&downs, 0)?.to_dtype(dtype)?; // (R, in)
            let up = Tensor::cat(&ups, 1)?.to_dtype(dtype)?; // (out, R)
            Ok((layer.to_string(), LowRank::new(down, up)))
        })
        .collect()
}

/// The LoRA state of one engine: parsed files by id and what the transformer has applied now.
pub struct LoraState {
    map: TargetMap,
    device: Device,
    files: ByteLru<Arc<LoraFile>>,
    /// `(id, scale)` of the LoRAs applied to the transformer, in request order.
    applied: Vec<(String, f64)>,
}

impl LoraState {
    pub fn new(cfg: &FluxConfig, device: Device, budget: usize) -> Self {
        Self {
            map: TargetMap::new(cfg),
            device,
            files: ByteLru::new(budget, &cache::LORA),
            applied: Vec::new(),
        }
    }

    /// The ids applied now.
    pub fn applied_ids(&self) -> Vec<String> {
        self.applied.iter().map(|(id, _)| id.clone()).collect()
    }

    /// Parses (or takes from the cache) one file.
    pub fn file(&mut self, input: &LoraInput) -> Result<Arc<LoraFile>, LoraError> {
        if let Some(f) = self.files.get(&input.id) {
            return Ok(f);
        }
        let file = Arc::new(LoraFile::parse(&input.bytes, &self.map, &self.device)?);
        self.files
            .insert(input.id.clone(), file.clone(), file.bytes);
        Ok(file)
    }

    /// Makes `flux` compute with exactly `loras` (none: the plain model). Nothing changes when
    /// the same set is applied already; on an error (with the index of the LoRA at fault) the
    /// model is left without LoRAs, never with part of a set.
    pub fn apply(
        &mut self,
        flux: &mut Flux,
        loras: &[LoraInput],
    ) -> Result<Vec<AppliedLora>, (usize, LoraError)> {
        let result = self.try_apply(flux, loras);
        if result.is_err() {
            // A failed restore outranks the error that led here: the weights are not the plain
            // model's, and the engine must say so (the next request retries the restore).
            self.clear(flux).map_err(|e| (0, e))?;
        }
        result
    }

    fn try_apply(
        &mut self,
        flux: &mut Flux,
        loras: &[LoraInput],
    ) -> Result<Vec<AppliedLora>, (usize, LoraError)> {
        if loras.len() > MAX_LORAS {
            return Err((MAX_LORAS, LoraError::TooMany { count: loras.len() }));
        }
        let wanted: Vec<(String, f64)> = loras.iter().map(|l| (l.id.clone(), l.scale)).collect();
        let mut files = Vec::with_capacity(loras.len());
        for (i, l) in loras.iter().enumerate() {
            if !l.scale.is_finite() || l.scale.abs() > MAX_LORA_SCALE {
                return Err((i, LoraError::Scale { scale: l.scale }));
            }
            files.push(self.file(l).map_err(|e| (i, e))?);
        }
        let report = files
            .iter()
            .zip(loras)
            .map(|(f, l)| AppliedLora {
                id: l.id.clone(),
                scale: l.scale,
                format: f.format,
                layers: f.parts.len(),
                skipped_text_encoder_modules: f.skipped.len(),
            })
            .collect();
        if wanted == self.applied {
            return Ok(report);
        }
        self.clear(flux).map_err(|e| (0, e))?;
        let pairs: Vec<(&LoraFile, f64)> = files
            .iter()
            .map(|f| f.as_ref())
            .zip(wanted.iter().map(|w| w.1))
            .collect();
        let mut layers = adapters(&pairs, flux.dtype()).map_err(|e| (0, e))?;
        // Marked applied before the layers change, so a failure half-way is cleared.
        self.applied = wanted;
        for (name, linear) in flux.named_linears_mut() {
            if let Some(layer) = layers.remove(&name) {
                linear
                    .set_lora(Some(layer))
                    .map_err(|source| (0, LoraError::Weights { source }))?;
            }
        }
        Ok(report)
    }

    /// Removes every LoRA from `flux`, restoring its weights exactly. Fails only when a weight
    /// cannot be copied back to its device; the state then stays "applied" so the next call
    /// tries again.
    pub fn clear(&mut self, flux: &mut Flux) -> Result<(), LoraError> {
        if self.applied.is_empty() {
            return Ok(());
        }
        for (_, linear) in flux.named_linears_mut() {
            linear
                .set_lora(None)
                .map_err(|source| LoraError::Weights { source })?;
        }
        self.applied.clear();
        Ok(())
    }
}
