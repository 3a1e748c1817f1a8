//! Weight loading from a local model directory, in either layout, behind canonical names.
//!
//! `ModelDir::open` looks for each component and detects its layout from the keys:
//! - transformer: `flux1-kontext-dev.safetensors` at the root (BFL layout, detected by
//!   `double_blocks.0.img_attn.qkv.weight`, with or without ComfyUI's `model.diffusion_model.`
//!   prefix), else `transformer/` (diffusers layout, `transformer_blocks.0.attn.to_q.weight`,
//!   single file or shards with `diffusion_pytorch_model.safetensors.index.json`), else one
//!   `*.gguf` at the root (BFL names; `gguf`);
//! - autoencoder: `ae.safetensors` at the root (BFL), else `vae/` (diffusers);
//! - text encoders and tokenizers: `text_encoder/`, `text_encoder_2/`, `tokenizer/`,
//!   `tokenizer_2/` (HF layout in both cases; opened by `text`).
//!
//! The transformer and AE are exposed as candle `VarBuilder`s over BFL names whatever the
//! layout (`backend::CanonicalBackend`). BFL files carry no config: see `infer` for the rules
//! and the `flux_config.json` sidecar. Every canonical tensor's presence and shape is checked
//! against the config at open time (headers only), so a bad directory fails before any model
//! is built, with the file, the key and the shapes named. Nothing here touches the network.

pub mod backend;
pub mod check;
pub mod check_report;
pub mod configs;
pub mod files;
pub mod gguf;
mod infer;
pub mod keys;

use std::path::{Path, PathBuf};
use std::sync::Arc;

use candle_core::{DType, Device, Tensor};
use candle_nn::VarBuilder;

use self::backend::{CanonicalBackend, Mapping};
use self::configs::{SIDECAR, Sidecar};
use self::files::TensorFiles;
use crate::EngineError;
use crate::config::{FluxConfig, VaeConfig};
use crate::flux::{Flux, LinearPrecision};
use crate::model_settings::ModelSettings;

/// BFL's single-file transformer name (in `black-forest-labs/FLUX.1-Kontext-dev`).
pub const BFL_TRANSFORMER_FILE: &str = "flux1-kontext-dev.safetensors";
/// BFL's autoencoder file.
pub const BFL_AE_FILE: &str = "ae.safetensors";
/// ComfyUI's prefix on BFL transformer keys.
pub const COMFY_PREFIX: &str = "model.diffusion_model.";
pub const DIFFUSERS_WEIGHTS: &str = "diffusion_pytorch_model.safetensors";
pub const DIFFUSERS_INDEX: &str = "diffusion_pytorch_model.safetensors.index.json";
pub const HF_WEIGHTS: &str = "model.safetensors";
pub const HF_INDEX: &str = "model.safetensors.index.json";

/// Where a component's weights came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Layout {
    /// BFL single files at the root (`flux1-kontext-dev.safetensors`, `ae.safetensors`).
    Bfl,
    /// diffusers folders (`transformer/`, `vae/`).
    Diffusers,
}

#[derive(Debug, thiserror::Error)]
pub enum WeightsError {
    #[error("missing file {file} in directory {}", dir.display())]
    MissingFile { file: String, dir: PathBuf },
    #[error("no {what} in {}: looked for {looked_for}", dir.display())]
    NoComponent {
        what: &'static str,
        dir: PathBuf,
        looked_for: String,
    },
    #[error("tensor `{key}`{} not found in {file}",
        canonical.as_ref().map(|c| format!(" (canonical `{c}`)")).unwrap_or_default())]
    MissingKey {
        key: String,
        canonical: Option<String>,
        file: String,
    },
    #[error("{0}")]
    Shape(Box<ShapeMismatch>),
    #[error("{}: {reason}", file.display())]
    UnsupportedFormat { file: PathBuf, reason: String },
    #[error("cannot tell the layout of {}: {reason}", file.display())]
    UnknownLayout { file: PathBuf, reason: String },
    #[error("config {file}: {reason}")]
    Config { file: String, reason: String },
    #[error("reading {}: {source}", path.display())]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("loading `{key}` from {}: {source}", file.display())]
    Load {
        key: String,
        file: PathBuf,
        source: Box<candle_core::Error>,
    },
    #[error("tensor `{key}` in {} is stored as {dtype}; the loader reads F32, F16, BF16 and F8_E4M3", file.display())]
    UnsupportedDtype {
        key: String,
        dtype: String,
        file: PathBuf,
    },
    #[error("assembling `{canonical}`: {source}")]
    Candle {
        canonical: String,
        source: Box<candle_core::Error>,
    },
}

/// A tensor whose shape is not what the config implies.
#[derive(Debug, thiserror::Error)]
#[error(
    "tensor `{canonical}` (stored as `{key}` in {}) has the wrong shape: expected {expected}, found {found}",
    file.display()
)]
pub struct ShapeMismatch {
    pub canonical: String,
    pub key: String,
    pub file: PathBuf,
    pub expected: String,
    pub found: String,
}

impl WeightsError {
    pub fn shape(canonical: &str, key: &str, file: &Path, expected: String, found: String) -> Self {
        Self::Shape(Box::new(ShapeMismatch {
            canonical: canonical.to_string(),
            key: key.to_string(),
            file: file.to_path_buf(),
            expected,
            found,
        }))
    }

    pub fn missing_file(path: &Path) -> Self {
        Self::MissingFile {
            file: path
                .file_name()
                .map(|f| f.to_string_lossy().into_owned())
                .unwrap_or_default(),
            dir: path.parent().map(Path::to_path_buf).unwrap_or_default(),
        }
    }
}

/// An opened model directory: configs plus lazy, canonical-name access to the weights.
#[derive(Debug, Clone)]
pub struct ModelDir {
    root: PathBuf,
    transformer: CanonicalBackend,
    transformer_layout: Layout,
    vae: CanonicalBackend,
    vae_layout: Layout,
    flux_config: FluxConfig,
    vae_config: VaeConfig,
    settings: ModelSettings,
}

impl ModelDir {
    /// Opens `path`, detects the layout of each component, reads or infers the configs and
    /// checks every canonical tensor's presence and shape.
    pub fn open(path: impl AsRef<Path>) -> Result<Self, EngineError> {
        Ok(Self::open_inner(path.as_ref())?)
    }

    fn open_inner(root: &Path) -> Result<Self, WeightsError> {
        if !root.is_dir() {
            return Err(WeightsError::NoComponent {
                what: "model directory",
                dir: root.to_path_buf(),
                looked_for: "an existing directory".into(),
            });
        }
        let sidecar = read_sidecar(root)?;
        let settings = ModelSettings::read(root)?;

        let (transformer, transformer_layout) = open_transformer(root)?;
        let flux_config = match transformer_layout {
            Layout::Bfl => infer::flux_config(&transformer, &sidecar)?,
            Layout::Diffusers => {
                let (text, file) = read_config(&root.join("transformer"))?;
                configs::flux_from_diffusers(&text, &file)?
            }
        };
        verify(&transformer, &keys::transformer_tensors(&flux_config))?;

        let (vae_files, vae_layout) = open_vae(root)?;
        let (vae, vae_config) = match vae_layout {
            Layout::Bfl => {
                let b = CanonicalBackend::new(
                    vae_files,
                    Mapping::Canonical {
                        prefix: String::new(),
                    },
                );
                let cfg = infer::vae_config(&b, &sidecar)?;
                (b, cfg)
            }
            Layout::Diffusers => {
                let (text, file) = read_config(&root.join("vae"))?;
                let cfg = configs::vae_from_diffusers(&text, &file)?;
                let levels = cfg.ch_mult.len();
                (
                    CanonicalBackend::new(vae_files, Mapping::DiffusersVae { levels }),
                    cfg,
                )
            }
        };
        verify(&vae, &keys::vae_tensors(&vae_config))?;

        Ok(Self {
            root: root.to_path_buf(),
            transformer,
            transformer_layout,
            vae,
            vae_layout,
            flux_config,
            vae_config,
            settings,
        })
    }

    /// How the model is driven (`kontext_model.json`; FLUX.1-Kontext-dev's defaults without it).
    pub fn settings(&self) -> &ModelSettings {
        &self.settings
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    pub fn transformer_layout(&self) -> Layout {
        self.transformer_layout
    }

    pub fn vae_layout(&self) -> Layout {
        self.vae_layout
    }

    pub fn flux_config(&self) -> &FluxConfig {
        &self.flux_config
    }

    pub fn vae_config(&self) -> &VaeConfig {
        &self.vae_config
    }

    /// The transformer under BFL names; tensors load lazily, converted to `dtype`.
    pub fn transformer_vb(&self, dtype: DType, device: &Device) -> VarBuilder<'static> {
        VarBuilder::from_backend(Box::new(self.transformer.clone()), dtype, device.clone())
    }

    /// Builds the transformer with its blocks' linear weights in `precision`. A GGUF
    /// checkpoint's block-format linear weights stay in their format (`GgufLinear`, candle's
    /// quantized matmul), never materialised in `dtype`; everything else loads in `dtype`.
    pub fn flux(
        &self,
        dtype: DType,
        dev: &Device,
        precision: LinearPrecision,
    ) -> Result<Flux, EngineError> {
        let cfg = &self.flux_config;
        let Some(gguf) = self.transformer.files().gguf() else {
            let vb = self.transformer_vb(dtype, dev);
            return Ok(Flux::with_linear_precision(cfg, vb, precision)?);
        };
        if precision != LinearPrecision::Native {
            return Err(WeightsError::UnsupportedFormat {
                file: gguf.path().to_path_buf(),
                reason: format!(
                    "--linear-precision {} with a GGUF transformer: a GGUF file brings its own \
                     quantization; drop the flag",
                    precision.as_str()
                ),
            }
            .into());
        }
        let backend = self.transformer.deferring_quantized();
        let vb = VarBuilder::from_backend(Box::new(backend), dtype, dev.clone());
        let mut flux = Flux::with_linear_precision(cfg, vb, LinearPrecision::Native)?;
        let mut attached = std::collections::HashSet::new();
        for (name, linear) in flux.named_linears_mut() {
            let canonical = format!("{name}.weight");
            if let Some(key) = self.transformer.quantized_key(&canonical) {
                linear.set_gguf_weight(gguf.qtensor(&key, dev)?)?;
                attached.insert(canonical);
            }
        }
        // Any other block-format tensor would still be its placeholder.
        for (canonical, _) in keys::transformer_tensors(cfg) {
            if let Some(key) = self.transformer.quantized_key(&canonical)
                && !attached.contains(&canonical)
            {
                let t = gguf.ggml_dtype(&key).map(|t| format!("{t:?}"));
                return Err(WeightsError::UnsupportedFormat {
                    file: gguf.path().to_path_buf(),
                    reason: format!(
                        "`{key}` is stored as {}; only the linear layers' weights may be in a \
                         block format (keep it in F32, F16 or BF16)",
                        t.unwrap_or_default()
                    ),
                }
                .into());
            }
        }
        Ok(flux)
    }

    /// The autoencoder under BFL names (`encoder.down.0.block.0.conv1.weight`, …).
    pub fn vae_vb(&self, dtype: DType, device: &Device) -> VarBuilder<'static> {
        VarBuilder::from_backend(Box::new(self.vae.clone()), dtype, device.clone())
    }

    /// One canonical transformer tensor (tests, parity checks).
    pub fn transformer_tensor(
        &self,
        name: &str,
        dtype: DType,
        dev: &Device,
    ) -> Result<Tensor, EngineError> {
        Ok(self.transformer.load(name, dtype, dev)?)
    }

    /// One canonical autoencoder tensor.
    pub fn vae_tensor(
        &self,
        name: &str,
        dtype: DType,
        dev: &Device,
    ) -> Result<Tensor, EngineError> {
        Ok(self.vae.load(name, dtype, dev)?)
    }

    /// An HF sub-folder (`text_encoder`, `tokenizer_2`, …), which must exist.
    pub fn subdir(&self, name: &str) -> Result<PathBuf, EngineError> {
        let dir = self.root.join(name);
        if !dir.is_dir() {
            return Err(WeightsError::MissingFile {
                file: format!("{name}/"),
                dir: self.root.clone(),
            }
            .into());
        }
        Ok(dir)
    }

    /// The weights and `config.json` text of an HF model folder (`model.safetensors` or shards).
    pub fn hf_model(&self, name: &str) -> Result<(Arc<TensorFiles>, String), EngineError> {
        let dir = self.subdir(name)?;
        let files = TensorFiles::open_dir(&dir, HF_WEIGHTS, HF_INDEX)?;
        let (text, _) = read_config(&dir)?;
        Ok((Arc::new(files), text))
    }
}

fn read_sidecar(root: &Path) -> Result<Sidecar, WeightsError> {
    let path = root.join(SIDECAR);
    if !path.is_file() {
        return Ok(Sidecar::default());
    }
    let text = std::fs::read_to_string(&path).map_err(|source| WeightsError::Io {
        path: path.clone(),
        source,
    })?;
    Sidecar::parse(&text, &path.display().to_string())
}

fn read_config(dir: &Path) -> Result<(String, String), WeightsError> {
    let path = dir.join("config.json");
    if !path.is_file() {
        return Err(WeightsError::missing_file(&path));
    }
    let text = std::fs::read_to_string(&path).map_err(|source| WeightsError::Io {
        path: path.clone(),
        source,
    })?;
    Ok((text, path.display().to_string()))
}

/// The one `*.gguf` file at the root, if any (two are ambiguous: an error naming both).
fn gguf_file(root: &Path) -> Result<Option<PathBuf>, WeightsError> {
    let Ok(entries) = std::fs::read_dir(root) else {
        return Ok(None);
    };
    let mut found: Vec<PathBuf> = entries
        .filter_map(Result::ok)
        .map(|e| e.path())
        .filter(|p| {
            p.extension()
                .is_some_and(|x| x.eq_ignore_ascii_case("gguf"))
        })
        .collect();
    found.sort();
    match found.as_slice() {
        [] => Ok(None),
        [one] => Ok(Some(one.clone())),
        [first, second, ..] => Err(WeightsError::UnknownLayout {
            file: root.to_path_buf(),
            reason: format!(
                "several GGUF transformers ({} and {}); keep one",
                first.display(),
                second.display()
            ),
        }),
    }
}

fn open_transformer(root: &Path) -> Result<(CanonicalBackend, Layout), WeightsError> {
    let single = root.join(BFL_TRANSFORMER_FILE);
    let dir = root.join("transformer");
    let files = if single.is_file() {
        TensorFiles::open_file(&single)?
    } else if dir.is_dir() {
        TensorFiles::open_dir(&dir, DIFFUSERS_WEIGHTS, DIFFUSERS_INDEX)?
    } else if let Some(gguf) = gguf_file(root)? {
        TensorFiles::open_gguf(&gguf)?
    } else {
        return Err(WeightsError::NoComponent {
            what: "transformer",
            dir: root.to_path_buf(),
            looked_for: format!(
                "{BFL_TRANSFORMER_FILE} (BFL layout) or transformer/ (diffusers layout)"
            ),
        });
    };
    let probe = "double_blocks.0.img_attn.qkv.weight";
    let (mapping, layout) = if files.contains(probe) {
        (
            Mapping::Canonical {
                prefix: String::new(),
            },
            Layout::Bfl,
        )
    } else if files.contains(&format!("{COMFY_PREFIX}{probe}")) {
        (
            Mapping::Canonical {
                prefix: COMFY_PREFIX.into(),
            },
            Layout::Bfl,
        )
    } else if files.contains("transformer_blocks.0.attn.to_q.weight") {
        (Mapping::DiffusersTransformer, Layout::Diffusers)
    } else {
        return Err(WeightsError::UnknownLayout {
            file: files.origin().to_path_buf(),
            reason: format!(
                "neither `{probe}` (BFL, optionally prefixed `{COMFY_PREFIX}`) nor \
                 `transformer_blocks.0.attn.to_q.weight` (diffusers) is present"
            ),
        });
    };
    if layout == Layout::Diffusers && files.gguf().is_some() {
        return Err(WeightsError::UnknownLayout {
            file: files.origin().to_path_buf(),
            reason: "diffusers-layout keys in a GGUF file; GGUF transformers use BFL names \
                     (`double_blocks.0.img_attn.qkv.weight`), as ComfyUI-GGUF conversions do"
                .into(),
        });
    }
    if layout == Layout::Diffusers && files.origin() == single {
        return Err(WeightsError::UnknownLayout {
            file: single,
            reason: "diffusers-layout keys in the BFL single file; put them in transformer/ \
                     with its config.json"
                .into(),
        });
    }
    Ok((CanonicalBackend::new(Arc::new(files), mapping), layout))
}

fn open_vae(root: &Path) -> Result<(Arc<TensorFiles>, Layout), WeightsError> {
    let single = root.join(BFL_AE_FILE);
    let dir = root.join("vae");
    let (files, expected) = if single.is_file() {
        (TensorFiles::open_file(&single)?, Layout::Bfl)
    } else if dir.is_dir() {
        (
            TensorFiles::open_dir(&dir, DIFFUSERS_WEIGHTS, DIFFUSERS_INDEX)?,
            Layout::Diffusers,
        )
    } else {
        return Err(WeightsError::NoComponent {
            what: "autoencoder",
            dir: root.to_path_buf(),
            looked_for: format!("{BFL_AE_FILE} (BFL layout) or vae/ (diffusers layout)"),
        });
    };
    let (bfl_probe, diffusers_probe) = (
        "encoder.down.0.block.0.conv1.weight",
        "encoder.down_blocks.0.resnets.0.conv1.weight",
    );
    let found = if files.contains(bfl_probe) {
        Layout::Bfl
    } else if files.contains(diffusers_probe) {
        Layout::Diffusers
    } else {
        return Err(WeightsError::UnknownLayout {
            file: files.origin().to_path_buf(),
            reason: format!(
                "neither `{bfl_probe}` (BFL) nor `{diffusers_probe}` (diffusers) is present"
            ),
        });
    };
    if found != expected {
        return Err(WeightsError::UnknownLayout {
            file: files.origin().to_path_buf(),
            reason: format!("{found:?}-layout keys where {expected:?} keys were expected"),
        });
    }
    Ok((Arc::new(files), found))
}

/// Checks that every canonical tensor exists with its expected shape (headers only).
fn verify(b: &CanonicalBackend, expected: &[(String, Vec<usize>)]) -> Result<(), WeightsError> {
    for (name, shape) in expected {
        let found = b.shape(name)?;
        if &found != shape {
            return Err(WeightsError::shape(
                name,
                &b.stored_as(name),
                b.files().origin(),
                format!("{shape:?}"),
                format!("{found:?}"),
            ));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests;
