//! `kontext-worker write-gguf`: convert a model directory's transformer to a GGUF file in the
//! community layout (BFL names, linear weights in a ggml block format), next to links to the
//! directory's other components. For trying a GGUF checkpoint without downloading one, and for
//! the GPU benchmark's Q8_0 run on the random 12B weights.

use std::path::PathBuf;

use anyhow::Context;
use candle_core::quantized::GgmlDType;
use kontext_engine::weights::ModelDir;
use kontext_engine::weights::gguf::convert_dir;

/// Block format of the linear weights.
#[derive(Debug, Clone, Copy, clap::ValueEnum)]
pub enum QuantArg {
    Q8_0,
    Q6K,
    Q5K,
    Q5_1,
    Q5_0,
    Q4K,
    Q4_1,
    Q4_0,
}

impl QuantArg {
    fn ggml(self) -> GgmlDType {
        match self {
            Self::Q8_0 => GgmlDType::Q8_0,
            Self::Q6K => GgmlDType::Q6K,
            Self::Q5K => GgmlDType::Q5K,
            Self::Q5_1 => GgmlDType::Q5_1,
            Self::Q5_0 => GgmlDType::Q5_0,
            Self::Q4K => GgmlDType::Q4K,
            Self::Q4_1 => GgmlDType::Q4_1,
            Self::Q4_0 => GgmlDType::Q4_0,
        }
    }
}

/// Arguments of `kontext-worker write-gguf`.
#[derive(Debug, clap::Args)]
pub struct WriteGgufArgs {
    /// The model directory to convert (any layout `check-weights` accepts).
    #[arg(long, env = "KONTEXT_MODEL")]
    model: PathBuf,
    /// Block format of the linear weights (rows that do not fit its block size stay F32).
    #[arg(long, env = "KONTEXT_GGUF_QUANT", value_enum, default_value = "q8-0")]
    quant: QuantArg,
    /// Output directory (created if missing): the GGUF file, flux_config.json and links to the
    /// other components.
    #[arg(long, env = "KONTEXT_GGUF_OUT")]
    out: PathBuf,
}

pub fn run(args: WriteGgufArgs) -> anyhow::Result<()> {
    let src =
        ModelDir::open(&args.model).with_context(|| format!("opening {}", args.model.display()))?;
    let file = convert_dir(&src, &args.out, args.quant.ggml())
        .with_context(|| format!("writing the GGUF model to {}", args.out.display()))?;
    let bytes = std::fs::metadata(&file).map(|m| m.len()).unwrap_or(0);
    tracing::info!(file = %file.display(), bytes, quant = ?args.quant, "GGUF transformer written");
    Ok(())
}
