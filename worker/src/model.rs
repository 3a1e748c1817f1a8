//! Loading the engine `ModelArgs` name: `tiny` (written from its seed into a cache directory on
//! first use, then loaded like any checkpoint) or a weights directory, on the chosen device and
//! dtype. Never downloads anything.

use std::path::PathBuf;

use candle_core::{DType, Device};

use crate::config::{DtypeArg, ModelArgs};
use crate::engine::pipeline::{EngineOptions, KontextEngine};
use crate::engine::weights::ModelDir;
use crate::engine::{Engine, EngineError, tiny};

/// `cpu`, `cuda` or `cuda:N`.
pub fn parse_device(s: &str) -> Result<Device, EngineError> {
    let cuda = |n: usize| {
        Device::new_cuda(n).map_err(|e| EngineError::Weights(format!("--device {s}: {e}")))
    };
    match s {
        "cpu" => Ok(Device::Cpu),
        "cuda" => cuda(0),
        _ => match s.strip_prefix("cuda:").map(str::parse::<usize>) {
            Some(Ok(n)) => cuda(n),
            _ => Err(EngineError::Weights(format!(
                "--device {s:?} is not one of cpu, cuda, cuda:N"
            ))),
        },
    }
}

/// Loads the model `args` names (slow for real weights: call on a blocking thread).
pub fn load_engine(args: &ModelArgs) -> Result<Box<dyn Engine>, EngineError> {
    let device = parse_device(&args.device)?;
    let dtype = match (args.dtype, &device) {
        (Some(DtypeArg::F32), _) | (None, Device::Cpu) => DType::F32,
        (Some(DtypeArg::Bf16), _) | (None, _) => DType::BF16,
    };
    let dir = if args.model == "tiny" {
        tiny::ensure_cached(args.tiny_seed)?
    } else {
        PathBuf::from(&args.model)
    };
    let started = std::time::Instant::now();
    let model_dir = ModelDir::open(&dir)?;
    let opts = EngineOptions {
        dtype,
        vae_dtype: DType::F32,
        device,
        max_pixels: args.engine_max_pixels,
    };
    let engine = KontextEngine::load(&model_dir, &args.model, opts)?;
    tracing::info!(model = %args.model, dir = %dir.display(), elapsed = ?started.elapsed(), "model loaded");
    Ok(Box::new(engine))
}
