//! Canonical-name views of weight files, as candle `SimpleBackend`s: a model asks for a BFL
//! name (`double_blocks.0.img_attn.qkv.weight`) and the backend finds it in whatever layout the
//! files use. Diffusers tensors are fused/renamed/reshaped lazily, when the model asks.

use std::sync::Arc;

use candle_core::{DType, Device, Shape, Tensor};
use candle_nn::var_builder::SimpleBackend;

use super::WeightsError;
use super::files::TensorFiles;
use super::keys::{Source, transformer_source, vae_source};

/// How canonical names map to keys in the files.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Mapping {
    /// The files use canonical names, possibly under a prefix (ComfyUI's
    /// `model.diffusion_model.`).
    Canonical { prefix: String },
    /// A diffusers `transformer/` (names per `weights::keys`).
    DiffusersTransformer,
    /// A diffusers `vae/` with `levels` resolution levels.
    DiffusersVae { levels: usize },
}

/// Weight files seen through a [`Mapping`]. Cheap to clone.
#[derive(Debug, Clone)]
pub struct CanonicalBackend {
    files: Arc<TensorFiles>,
    mapping: Mapping,
    /// GGUF block-format tensors load as a placeholder of their shape (one NaN, broadcast: no
    /// memory), for `ModelDir::flux` to replace with the quantized weight itself.
    defer_quantized: bool,
}

impl CanonicalBackend {
    pub fn new(files: Arc<TensorFiles>, mapping: Mapping) -> Self {
        Self {
            files,
            mapping,
            defer_quantized: false,
        }
    }

    /// This backend with block-format GGUF tensors deferred (see `defer_quantized`).
    pub fn deferring_quantized(&self) -> Self {
        Self {
            defer_quantized: true,
            ..self.clone()
        }
    }

    /// The stored key of a canonical tensor that is held in a GGUF block format, if it is.
    pub fn quantized_key(&self, canonical: &str) -> Option<String> {
        let gguf = self.files.gguf()?;
        match self.source(canonical).ok()? {
            Source::Renamed(k) if gguf.is_quantized(&k) => Some(k),
            _ => None,
        }
    }

    pub fn files(&self) -> &TensorFiles {
        &self.files
    }

    fn source(&self, canonical: &str) -> Result<Source, WeightsError> {
        let found = match &self.mapping {
            Mapping::Canonical { prefix } => Some(Source::Renamed(format!("{prefix}{canonical}"))),
            Mapping::DiffusersTransformer => transformer_source(canonical),
            Mapping::DiffusersVae { levels } => vae_source(canonical, *levels),
        };
        found.ok_or_else(|| WeightsError::MissingKey {
            key: canonical.to_string(),
            canonical: None,
            file: format!(
                "{} (no diffusers equivalent is known)",
                self.files.origin().display()
            ),
        })
    }

    fn missing(&self, key: &str, canonical: &str) -> WeightsError {
        WeightsError::MissingKey {
            key: key.to_string(),
            canonical: (key != canonical).then(|| canonical.to_string()),
            file: self.files.origin().display().to_string(),
        }
    }

    /// The shape the canonical tensor will have, from the file headers alone.
    pub fn shape(&self, canonical: &str) -> Result<Vec<usize>, WeightsError> {
        let source = self.source(canonical)?;
        let shape_of = |k: &str| {
            self.files
                .shape(k)
                .ok_or_else(|| self.missing(k, canonical))
        };
        Ok(match &source {
            Source::Renamed(k) | Source::SwapHalves(k) => shape_of(k)?,
            Source::Conv1x1(k) => {
                let s = shape_of(k)?;
                match s.as_slice() {
                    [o, i] => vec![*o, *i, 1, 1],
                    _ => s,
                }
            }
            Source::Rows(keys) => {
                let mut total: Option<Vec<usize>> = None;
                for k in keys {
                    let s = shape_of(k)?;
                    match &mut total {
                        None => total = Some(s),
                        Some(t) => {
                            if t.len() != s.len() || t[1..] != s[1..] || t.is_empty() {
                                return Err(WeightsError::shape(
                                    canonical,
                                    k,
                                    self.files.origin(),
                                    format!("(_, {:?}) like {}", &t[1..], keys[0]),
                                    format!("{s:?}"),
                                ));
                            }
                            t[0] += s[0];
                        }
                    }
                }
                total.expect("Rows sources have at least one key; this is a bug")
            }
        })
    }

    pub fn mapping(&self) -> &Mapping {
        &self.mapping
    }

    /// The stored key(s) a canonical tensor is read from.
    pub fn stored_keys(&self, canonical: &str) -> Result<Vec<String>, WeightsError> {
        Ok(self
            .source(canonical)?
            .keys()
            .into_iter()
            .map(str::to_owned)
            .collect())
    }

    /// The stored key(s) of a canonical tensor, for messages.
    pub fn stored_as(&self, canonical: &str) -> String {
        self.source(canonical)
            .map(|s| s.keys().join(" + "))
            .unwrap_or_else(|_| canonical.into())
    }

    pub fn contains(&self, canonical: &str) -> bool {
        self.source(canonical)
            .map(|s| s.keys().iter().all(|k| self.files.contains(k)))
            .unwrap_or(false)
    }

    /// Loads a canonical tensor in `dtype` on `dev`.
    pub fn load(
        &self,
        canonical: &str,
        dtype: DType,
        dev: &Device,
    ) -> Result<Tensor, WeightsError> {
        if self.defer_quantized
            && let Some(key) = self.quantized_key(canonical)
        {
            let shape = self.files.shape(&key).unwrap_or_default();
            // A stand-in that costs no memory and poisons any output it reaches.
            return Tensor::new(f32::NAN, dev)
                .and_then(|t| t.to_dtype(dtype))
                .and_then(|t| t.broadcast_as(shape))
                .map_err(|source| WeightsError::Candle {
                    canonical: canonical.to_string(),
                    source: Box::new(source),
                });
        }
        let source = self.source(canonical)?;
        let load = |k: &str| self.load_stored(k, canonical, dtype, dev);
        let candle = |source| WeightsError::Candle {
            canonical: canonical.to_string(),
            source: Box::new(source),
        };
        match &source {
            Source::Renamed(k) => load(k),
            Source::Rows(keys) => {
                let parts = keys
                    .iter()
                    .map(|k| load(k))
                    .collect::<Result<Vec<_>, _>>()?;
                // (Σ rows, cols) ← [(rows_i, cols)]: the fused qkv / linear1 layout "(K H D)".
                Tensor::cat(&parts, 0).map_err(candle)
            }
            Source::SwapHalves(k) => {
                let t = load(k)?;
                let n = t.dim(0).map_err(candle)?;
                if !n.is_multiple_of(2) {
                    return Err(WeightsError::shape(
                        canonical,
                        k,
                        self.files.origin(),
                        "an even number of rows".to_string(),
                        format!("{:?}", t.dims()),
                    ));
                }
                // diffusers [scale; shift] → BFL [shift; scale] (halves along dim 0).
                let (scale, shift) = (t.narrow(0, 0, n / 2), t.narrow(0, n / 2, n / 2));
                Tensor::cat(&[shift.map_err(candle)?, scale.map_err(candle)?], 0).map_err(candle)
            }
            Source::Conv1x1(k) => {
                let t = load(k)?;
                match *t.dims() {
                    // (c_out, c_in) → (c_out, c_in, 1, 1)
                    [o, i] => t.reshape((o, i, 1, 1)).map_err(candle),
                    _ => Ok(t),
                }
            }
        }
    }

    /// Loads one stored tensor in `dtype`. A weight with a `<stem>.scale_weight` beside it (the
    /// "scaled FP8" single files ComfyUI publishes: E4M3 weights, one f32 scale per tensor or
    /// per output row) is dequantized `weight × scale` in f32 first; plain E4M3 files (no scale)
    /// are upcast as they are.
    fn load_stored(
        &self,
        key: &str,
        canonical: &str,
        dtype: DType,
        dev: &Device,
    ) -> Result<Tensor, WeightsError> {
        let Some(scale_key) = scale_key_of(key).filter(|s| self.files.contains(s)) else {
            return self.files.load(key, canonical, dtype, dev);
        };
        let candle = |source| WeightsError::Candle {
            canonical: canonical.to_string(),
            source: Box::new(source),
        };
        let weight = self.files.load(key, canonical, DType::F32, dev)?;
        let scale = self.files.load(&scale_key, canonical, DType::F32, dev)?;
        let rows = weight.dims().first().copied().unwrap_or(1);
        let scale = match scale.elem_count() {
            1 => scale.reshape(()).map_err(candle)?,
            // (rows) or (rows, 1) → (rows, 1, …) to broadcast over the rest of the weight.
            n if n == rows => {
                let mut shape = vec![1; weight.rank().max(1)];
                shape[0] = rows;
                scale.reshape(shape).map_err(candle)?
            }
            _ => {
                return Err(WeightsError::shape(
                    canonical,
                    &scale_key,
                    self.files
                        .path_of(&scale_key)
                        .unwrap_or(self.files.origin()),
                    format!("one scale, or one per row of `{key}` ({rows})"),
                    format!("{:?}", scale.dims()),
                ));
            }
        };
        weight
            .broadcast_mul(&scale)
            .and_then(|t| t.to_dtype(dtype))
            .map_err(candle)
    }

    /// Loads a canonical tensor and checks its shape.
    pub fn load_checked(
        &self,
        canonical: &str,
        expected: &[usize],
        dtype: DType,
        dev: &Device,
    ) -> Result<Tensor, WeightsError> {
        let t = self.load(canonical, dtype, dev)?;
        if t.dims() != expected {
            return Err(WeightsError::shape(
                canonical,
                &self.stored_as(canonical),
                self.files.origin(),
                format!("{expected:?}"),
                format!("{:?}", t.dims()),
            ));
        }
        Ok(t)
    }
}

/// `<stem>.scale_weight` for `<stem>.weight` (ComfyUI's scaled-FP8 layout).
pub fn scale_key_of(key: &str) -> Option<String> {
    key.strip_suffix(".weight")
        .map(|stem| format!("{stem}.scale_weight"))
}

impl SimpleBackend for CanonicalBackend {
    fn get(
        &self,
        s: Shape,
        name: &str,
        _: candle_nn::Init,
        dtype: DType,
        dev: &Device,
    ) -> candle_core::Result<Tensor> {
        self.load_checked(name, s.dims(), dtype, dev)
            .map_err(candle_core::Error::wrap)
    }

    fn get_unchecked(&self, name: &str, dtype: DType, dev: &Device) -> candle_core::Result<Tensor> {
        self.load(name, dtype, dev)
            .map_err(candle_core::Error::wrap)
    }

    fn contains_tensor(&self, name: &str) -> bool {
        self.contains(name)
    }
}
