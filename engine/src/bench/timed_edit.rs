//! One timed edit for the GPU benchmark: a `size`² edit with the device synchronised after every
//! step, its FLOPs against the compute floor, and the name of the kernel set it ran on.

use std::time::{Duration, Instant};

use candle_core::{DType, Device};

use super::flops::{ForwardFlops, edit_tokens};
use super::gpu_run::BenchError;
use super::report::{self, SizeRun};
use crate::flux::{StepCaching, attention, ops};
use crate::pipeline::KontextEngine;
use crate::{Context, Engine, EngineRequest, References, StepControl};

/// One edit of a `size`² image (context of the same size) with per-step synchronisation.
pub(super) fn timed_edit(
    engine: &mut KontextEngine,
    dev: &Device,
    size: u32,
    steps: u32,
    cfg: &crate::config::FluxConfig,
    peak_tflops: f64,
    caching: StepCaching,
) -> Result<(SizeRun, Vec<f32>), BenchError> {
    let image = image::RgbImage::from_fn(size, size, |x, y| {
        image::Rgb([(x % 251) as u8, (y % 241) as u8, ((x ^ y) % 256) as u8])
    });
    let req = EngineRequest {
        prompt: "make the sky purple and add a small red boat".into(),
        references: References::one(Context::Image {
            image,
            width: size,
            height: size,
            cache_key: None,
        }),
        width: size,
        height: size,
        steps,
        guidance: 2.5,
        seed: 42,
        initial_latents: None,
        want_latent: true,
        caching,
        loras: Vec::new(),
    };
    // Target and context tokens (the text adds more): decides FA3 versus FA2 only past 64.
    let variant = variant(dev, engine, 2 * (size as usize / 16).pow(2));
    report::reset_pool_peak(dev);
    dev.synchronize()?;
    let started = Instant::now();
    let mut marks: Vec<Instant> = Vec::with_capacity(steps as usize + 1);
    let mut sync_err = None;
    let out = engine.generate(&req, &mut |_, _| {
        // Wait for the device so each mark is the true end of a step (CUDA runs asynchronously).
        if let Err(e) = dev.synchronize() {
            sync_err = Some(e);
            return StepControl::Cancel;
        }
        marks.push(Instant::now());
        StepControl::Continue
    });
    if let Some(e) = sync_err {
        return Err(e.into());
    }
    let out = out?;
    dev.synchronize()?;
    let total = started.elapsed();
    let secs = |d: Duration| d.as_secs_f64();
    let first = marks.first().copied().ok_or(BenchError::NoStepReported)?;
    let last = marks.last().copied().unwrap_or(first);
    let step_s: Vec<f64> = marks.windows(2).map(|w| secs(w[1] - w[0])).collect();
    let mut sorted = step_s.clone();
    sorted.sort_by(f64::total_cmp);
    let step_median_s = sorted.get(sorted.len() / 2).copied().unwrap_or(0.0);
    let tokens = edit_tokens(512, size, size, Some((size, size)));
    let flops = ForwardFlops::new(cfg, tokens);
    let latents = out.packed_latent.unwrap_or_default();
    let output_finite = !latents.is_empty() && latents.iter().all(|v| v.is_finite());
    let run = SizeRun {
        size,
        steps,
        tokens,
        full_evaluations: out.full_evaluations,
        variant,
        pre_denoise_s: secs(first - started),
        step_median_s,
        denoise_s: secs(last - first),
        decode_s: (secs(total) - secs(last - started)).max(0.0),
        total_s: secs(total),
        step_s,
        peak_pool_bytes: report::pool_peak(dev),
        device_used_bytes: report::device_used(dev),
        tflop_per_step: flops.total() / 1e12,
        floor_step_s: flops.floor_seconds(peak_tflops),
        mfu: flops.mfu(step_median_s, peak_tflops),
        output_finite,
    };
    Ok((run, latents))
}

/// Which of our kernels the transformer uses now at `seq_len` tokens: "flash3+fused",
/// "flash2+fused", "flash2", "fused", "candle" and so on.
fn variant(dev: &Device, engine: &KontextEngine, seq_len: usize) -> String {
    let cfg = engine.flux_config();
    let probe = (1, 1, seq_len.max(1), cfg.head_dim());
    let flash = candle_core::Tensor::zeros(probe, engine.options().dtype, dev)
        .ok()
        .and_then(|probe| attention::flash_attn_generation(&probe));
    let fused = dev.is_cuda() && engine.options().dtype == DType::BF16 && ops::cuda::enabled();
    match (flash, fused) {
        (Some(g), true) => format!("flash{g}+fused"),
        (Some(g), false) => format!("flash{g}"),
        (None, true) => "fused".to_string(),
        (None, false) => "candle".to_string(),
    }
}
