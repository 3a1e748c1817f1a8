//! Loading an engine by model name on a device: `tiny` (written from its seed into a cache
//! directory on first use, then loaded like any checkpoint), `shapes` (the small model trained on
//! the shapes world, committed under `models/shapes`), or a weights directory. Never downloads
//! anything.

use std::path::{Path, PathBuf};

use candle_core::{DType, Device};

use crate::flux::LinearPrecision;
use crate::pipeline::{EngineOptions, KontextEngine};
use crate::weights::ModelDir;
use crate::weights::check::check_dir;
use crate::{DeviceError, Engine, EngineError, WeightsError, tiny};

/// What to load and where.
#[derive(Debug, Clone, PartialEq)]
pub struct LoadOptions {
    /// `tiny`, `shapes` or a weights directory.
    pub model: String,
    /// `cpu`, `cuda` or `cuda:N`.
    pub device: String,
    /// Compute dtype; `None` picks f32 on the CPU and bf16 on CUDA.
    pub dtype: Option<DType>,
    /// Weights seed of `tiny`.
    pub tiny_seed: u64,
    /// Largest target or context area accepted, in pixels.
    pub max_pixels: u64,
    /// `Fp8` stores the transformer blocks' linear weights in E4M3 (half of bf16's memory).
    pub linear_precision: LinearPrecision,
}

/// `cpu`, `cuda` or `cuda:N`.
pub fn parse_device(s: &str) -> Result<Device, EngineError> {
    let err = |source| EngineError::Device {
        spec: s.to_string(),
        source,
    };
    let cuda = |n: usize| Device::new_cuda(n).map_err(|e| err(DeviceError::Open(e)));
    match s {
        "cpu" => Ok(Device::Cpu),
        "cuda" => cuda(0),
        _ => match s.strip_prefix("cuda:").map(str::parse::<usize>) {
            Some(Ok(n)) => cuda(n),
            _ => Err(err(DeviceError::Unknown)),
        },
    }
}

/// Where `--model shapes` is read from: `$KONTEXT_SHAPES_DIR` when set, else `models/shapes` of
/// the source tree this binary was built from (the committed weights).
pub fn shapes_dir() -> PathBuf {
    match std::env::var_os("KONTEXT_SHAPES_DIR").filter(|v| !v.is_empty()) {
        Some(dir) => PathBuf::from(dir),
        None => Path::new(env!("CARGO_MANIFEST_DIR")).join("../models/shapes"),
    }
}

/// The directory a model name stands for (writing `tiny` on first use).
pub fn model_dir(opts: &LoadOptions) -> Result<PathBuf, EngineError> {
    match opts.model.as_str() {
        "tiny" => tiny::ensure_cached(opts.tiny_seed),
        "shapes" => {
            let dir = shapes_dir();
            if dir.join("model_index.json").is_file() {
                Ok(dir)
            } else {
                Err(WeightsError::MissingFile {
                    file: "model_index.json (the shapes model; set KONTEXT_SHAPES_DIR to the \
                           directory holding models/shapes)"
                        .into(),
                    dir,
                }
                .into())
            }
        }
        path => Ok(PathBuf::from(path)),
    }
}

/// Loads the model `opts` names (slow for real weights: call on a blocking thread).
pub fn load_engine(opts: &LoadOptions) -> Result<Box<dyn Engine>, EngineError> {
    let device = parse_device(&opts.device)?;
    let dtype = opts.dtype.unwrap_or(if device.is_cpu() {
        DType::F32
    } else {
        DType::BF16
    });
    let dir = model_dir(opts)?;
    // Headers only, in well under a second even for the 24 GB files: a bad directory fails here
    // with every problem named, not minutes into loading.
    let started = std::time::Instant::now();
    let report = check_dir(&dir);
    if !report.is_ok() {
        return Err(EngineError::WeightsCheck(Box::new(report)));
    }
    tracing::info!(dir = %dir.display(), elapsed = ?started.elapsed(), "model directory checked");
    let model_dir = ModelDir::open(&dir)?;
    let engine_opts = EngineOptions {
        dtype,
        vae_dtype: DType::F32,
        device,
        max_pixels: opts.max_pixels,
        linear_precision: opts.linear_precision,
    };
    let engine = KontextEngine::load(&model_dir, &opts.model, engine_opts)?;
    tracing::info!(model = %opts.model, dir = %dir.display(), elapsed = ?started.elapsed(), "model loaded");
    Ok(Box::new(engine))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_bad_device_is_a_device_error_naming_the_flag_value() {
        let err = parse_device("tpu").expect_err("tpu is not a device");
        assert!(
            matches!(&err, EngineError::Device { spec, source: DeviceError::Unknown } if spec == "tpu"),
            "{err:?}"
        );
        assert_eq!(
            err.to_string(),
            "--device tpu: not one of cpu, cuda, cuda:N"
        );
    }
}
