//! GPU correctness (docs/gpu.md §3, docs/engine.md §Parity), run on a machine with an NVIDIA GPU:
//!
//! ```sh
//! scripts/build-cuda.sh --flash-attn --tools-only   # prints the CUDA environment to export
//! cargo test --release -p kontext-engine --features flash-attn --test gpu -- --ignored
//! ```
//!
//! bf16 on CUDA against f32 on the CPU, relative L2 within 1e-2: attention (the flash kernel at a
//! tile-aligned and a ragged length), a head-dim-128 transformer, the tiny model's whole edit and
//! the committed diffusers parity fixture. The same checks run in `kontext-worker bench-gpu`
//! (scripts/gpu-bench.sh), which is how they are run from a carried binary. Ignored by default
//! because CI has no GPU; they fail (never skip) when no CUDA device opens.
#![cfg(feature = "cuda")]

use std::path::Path;

use anyhow::{Context, Result, bail};
use candle_core::{DType, Device};
use kontext_engine::bench::checks::{self, CheckOutcome};
use kontext_engine::tiny;

fn cuda() -> Result<Device> {
    Device::new_cuda(0).context("these tests need a CUDA device (they are #[ignore]d for CI)")
}

fn require(outcomes: Vec<CheckOutcome>) -> Result<()> {
    for o in &outcomes {
        println!(
            "{}: rel L2 {:.3e} (≤ {:.0e})",
            o.name, o.rel_l2, o.tolerance
        );
    }
    if outcomes.is_empty() {
        bail!("no check ran");
    }
    if let Some(bad) = outcomes.iter().find(|o| !o.passed()) {
        bail!(
            "{}: relative L2 {:.3e} exceeds {:.0e}",
            bad.name,
            bad.rel_l2,
            bad.tolerance
        );
    }
    Ok(())
}

#[test]
#[ignore = "needs a CUDA GPU"]
fn attention_bf16_matches_cpu_f32() -> Result<()> {
    let dev = cuda()?;
    #[cfg(feature = "flash-attn")]
    {
        let probe = candle_core::Tensor::zeros((1, 1, 1, 128), DType::BF16, &dev)?;
        assert!(
            kontext_engine::flux::attention::uses_flash_attn(&probe),
            "a flash-attn build must route CUDA bf16 head-dim-128 attention to the kernel"
        );
    }
    require(checks::attention_kernel(&dev, DType::BF16, 3)?)
}

#[test]
#[ignore = "needs a CUDA GPU"]
fn head_dim_128_transformer_bf16_matches_cpu_f32() -> Result<()> {
    require(checks::head_dim_128_model(&cuda()?, DType::BF16)?)
}

#[test]
#[ignore = "needs a CUDA GPU"]
fn tiny_pipeline_bf16_matches_cpu_f32() -> Result<()> {
    let tmp = tempfile::tempdir()?;
    let dir = tiny::ensure_cached_in(tmp.path(), 0)?;
    require(checks::tiny_pipeline(&dir, &cuda()?, DType::BF16)?)
}

#[test]
#[ignore = "needs a CUDA GPU"]
fn parity_fixture_bf16_within_tolerance() -> Result<()> {
    let fixture = Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/parity/fixtures/default");
    let tmp = tempfile::tempdir()?;
    require(checks::parity_fixture(
        &fixture,
        tmp.path(),
        &cuda()?,
        DType::BF16,
    )?)
}
