//! `kontext-worker tiny`: write the deterministic tiny model to a directory.

use std::path::PathBuf;

use anyhow::Context;
use kontext_engine::tiny;
use kontext_engine::weights::Layout;

/// Which directory layout to write.
#[derive(Debug, Clone, Copy, clap::ValueEnum)]
pub enum LayoutArg {
    /// BFL single files: flux1-kontext-dev.safetensors + ae.safetensors (+ flux_config.json).
    Bfl,
    /// diffusers folders: transformer/ (2 shards + index), vae/, model_index.json.
    Diffusers,
}

/// Arguments of `kontext-worker tiny`.
#[derive(Debug, clap::Args)]
pub struct TinyArgs {
    /// Seed of the weights; the same seed writes byte-identical files.
    #[arg(long, env = "KONTEXT_TINY_SEED", default_value_t = 0)]
    seed: u64,
    /// Directory layout of the transformer and autoencoder (text encoders and tokenizers are
    /// the HF folders in both).
    #[arg(
        long,
        env = "KONTEXT_TINY_LAYOUT",
        value_enum,
        default_value = "diffusers"
    )]
    layout: LayoutArg,
    /// Output directory (created if missing; existing files of the model are overwritten).
    #[arg(long, env = "KONTEXT_TINY_OUT")]
    out: PathBuf,
}

pub fn run(args: TinyArgs) -> anyhow::Result<()> {
    let layout = match args.layout {
        LayoutArg::Bfl => Layout::Bfl,
        LayoutArg::Diffusers => Layout::Diffusers,
    };
    tiny::write(&args.out, args.seed, layout)
        .with_context(|| format!("writing the tiny model to {}", args.out.display()))?;
    tracing::info!(seed = args.seed, layout = ?layout, out = %args.out.display(), "tiny model written");
    Ok(())
}
