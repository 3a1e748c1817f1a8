//! `kontext-worker check-weights DIR`: validate a model directory from its safetensors headers
//! (every tensor the engine reads: name, shape, dtype, shard), without reading tensor data, and
//! print what is missing, mis-shaped or unexpected with the resident memory per device and dtype.
//! `serve` runs the same check before it loads anything (kontext_engine::loader).

use std::path::PathBuf;
use std::process::ExitCode;

use kontext_engine::loader::{LoadOptions, model_dir};
use kontext_engine::weights::check::{canonical_kontext_dev, check_dir};

/// Arguments of `kontext-worker check-weights`.
#[derive(Debug, clap::Args)]
pub struct CheckWeightsArgs {
    /// The model directory (BFL single files or diffusers folders), or `shapes` / `tiny`.
    #[arg(env = "KONTEXT_MODEL", required_unless_present = "print_canonical")]
    dir: Option<String>,
    /// Instead of checking, print the canonical (BFL) transformer and autoencoder tensor names
    /// and shapes of FLUX.1-Kontext-dev as JSON (input of tests/weights/make_full_size_lists.py).
    #[arg(long, env = "KONTEXT_PRINT_CANONICAL")]
    print_canonical: bool,
}

pub fn run(args: CheckWeightsArgs) -> anyhow::Result<ExitCode> {
    if args.print_canonical {
        println!("{}", serde_json::to_string(&canonical_kontext_dev())?);
        return Ok(ExitCode::SUCCESS);
    }
    let Some(name) = args.dir else {
        anyhow::bail!("give the model directory: kontext-worker check-weights DIR");
    };
    let dir: PathBuf = model_dir(&LoadOptions {
        model: name,
        device: "cpu".into(),
        dtype: None,
        tiny_seed: 0,
        max_pixels: 0,
        linear_precision: Default::default(),
    })?;
    let started = std::time::Instant::now();
    let report = check_dir(&dir);
    print!("{report}");
    println!("checked in {:.2} s", started.elapsed().as_secs_f64());
    Ok(if report.is_ok() {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}
