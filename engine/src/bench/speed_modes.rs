//! The speed modes of `bench-gpu`, side by side in the same call: step caching (`regular`,
//! `high`; flux/step_cache.rs) and FP8 linears (flux/linear.rs), alone and combined, each as the
//! same edit as the reference run (`none`: compute dtype, every step in full) at every size.
//! Per mode: seconds per image and per full evaluation, images per hour, peak memory, the
//! utilisation of the full evaluations it ran against the bf16 and FP8 floors, and the relative
//! error of its final latents against `none`'s.

use candle_core::Device;
use serde::Serialize;

use super::flops::ForwardFlops;
use super::gpu_run::BenchError;
use super::report::SizeRun;
use crate::flux::{Acceleration, LinearPrecision, StepCaching};
use crate::pipeline::KontextEngine;

/// A speed mode.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Mode {
    pub name: &'static str,
    pub acceleration: Acceleration,
    pub linear_precision: LinearPrecision,
}

/// Every mode after the reference, in the order they run: the native engine's first, then the
/// FP8 engine's (built once the native one is dropped, so the two are never resident together).
pub const MODES: [Mode; 5] = [
    Mode {
        name: "regular",
        acceleration: Acceleration::Regular,
        linear_precision: LinearPrecision::Native,
    },
    Mode {
        name: "high",
        acceleration: Acceleration::High,
        linear_precision: LinearPrecision::Native,
    },
    Mode {
        name: "fp8",
        acceleration: Acceleration::None,
        linear_precision: LinearPrecision::Fp8,
    },
    Mode {
        name: "fp8+regular",
        acceleration: Acceleration::Regular,
        linear_precision: LinearPrecision::Fp8,
    },
    Mode {
        name: "fp8+high",
        acceleration: Acceleration::High,
        linear_precision: LinearPrecision::Fp8,
    },
];

/// `--modes`: names from `MODES`, or `all`.
pub fn select(names: &[String]) -> Result<Vec<Mode>, String> {
    if names.iter().any(|n| n == "all") {
        return Ok(MODES.to_vec());
    }
    names
        .iter()
        .filter(|n| n.as_str() != "none")
        .map(|n| {
            MODES.iter().copied().find(|m| m.name == n).ok_or_else(|| {
                let known: Vec<&str> = MODES.iter().map(|m| m.name).collect();
                format!(
                    "--modes: unknown mode {n:?}; use none, all or {}",
                    known.join(", ")
                )
            })
        })
        .collect()
}

impl Mode {
    pub fn caching(self) -> StepCaching {
        self.acceleration.caching()
    }
}

/// One mode at one size.
#[derive(Debug, Clone, Serialize)]
pub struct ModeRun {
    pub mode: String,
    pub size: u32,
    pub steps: u32,
    pub full_evaluations: u32,
    /// Text + encode + denoise + decode.
    pub total_s: f64,
    /// Denoising loop time divided by the full evaluations.
    pub s_per_full_evaluation: f64,
    pub images_per_hour: f64,
    pub peak_pool_bytes: Option<u64>,
    /// FLOPs of the full evaluations run / denoise time / the bf16 peak.
    pub mfu_bf16: f64,
    /// The same against the FP8 peak (twice the bf16 peak on Hopper).
    pub mfu_fp8: f64,
    /// ‖latents − none's‖ / ‖none's‖ at the same size and seed.
    pub rel_err_vs_none: f64,
    pub output_finite: bool,
}

/// One speed mode at one size, compared with the reference latents.
pub(super) fn run_mode(
    engine: &mut KontextEngine,
    dev: &Device,
    size: u32,
    (steps, peak_tflops): (u32, f64),
    mode: Mode,
    reference: &[f32],
    cfg: &crate::config::FluxConfig,
) -> Result<ModeRun, BenchError> {
    let (r, latents) =
        super::timed_edit::timed_edit(engine, dev, size, steps, cfg, peak_tflops, mode.caching())?;
    Ok(mode_run(
        mode.name,
        &r,
        &latents,
        reference,
        cfg,
        peak_tflops,
    ))
}

/// The row of `name` from a timed edit. The step marks start at the end of the first step
/// (always a full evaluation), so the denoise time covers the other steps and their
/// `full_evaluations − 1` full evaluations.
pub(super) fn mode_run(
    name: &str,
    r: &SizeRun,
    latents: &[f32],
    reference: &[f32],
    cfg: &crate::config::FluxConfig,
    peak_tflops: f64,
) -> ModeRun {
    let flops = ForwardFlops::new(cfg, r.tokens);
    let evals = f64::from(r.full_evaluations.saturating_sub(1).max(1));
    let work = |peak: f64| evals * flops.floor_seconds(peak) / r.denoise_s.max(1e-12);
    ModeRun {
        mode: name.into(),
        size: r.size,
        steps: r.steps,
        full_evaluations: r.full_evaluations,
        total_s: r.total_s,
        s_per_full_evaluation: r.denoise_s / evals,
        images_per_hour: 3600.0 / r.total_s.max(1e-12),
        peak_pool_bytes: r.peak_pool_bytes,
        mfu_bf16: work(peak_tflops),
        mfu_fp8: work(2.0 * peak_tflops),
        rel_err_vs_none: rel_l2(latents, reference),
        output_finite: r.output_finite,
    }
}

/// ‖a − b‖ / ‖b‖ in f64.
pub fn rel_l2(a: &[f32], b: &[f32]) -> f64 {
    let num: f64 = a
        .iter()
        .zip(b)
        .map(|(x, y)| (f64::from(*x) - f64::from(*y)).powi(2))
        .sum();
    let den: f64 = b.iter().map(|y| f64::from(*y).powi(2)).sum();
    (num / den.max(f64::MIN_POSITIVE)).sqrt()
}

/// The table's lines for the modes (after the reference runs).
pub fn table_lines(runs: &[ModeRun], gib: impl Fn(Option<u64>) -> String) -> Vec<String> {
    if runs.is_empty() {
        return Vec::new();
    }
    let mut lines = vec![format!(
        "{:<13} {:>9} {:>5} {:>9} {:>9} {:>8} {:>10} {:>9} {:>8} {:>11}",
        "mode",
        "edit",
        "evals",
        "s/eval",
        "s/image",
        "img/h",
        "peak mem",
        "MFU bf16",
        "MFU fp8",
        "err vs none"
    )];
    for r in runs {
        lines.push(format!(
            "{:<13} {:>9} {:>5} {:>9.4} {:>9.3} {:>8.0} {:>10} {:>8.1}% {:>7.1}% {:>11.3e}{}",
            r.mode,
            format!("{0}x{0}", r.size),
            r.full_evaluations,
            r.s_per_full_evaluation,
            r.total_s,
            r.images_per_hour,
            gib(r.peak_pool_bytes),
            100.0 * r.mfu_bf16,
            100.0 * r.mfu_fp8,
            r.rel_err_vs_none,
            if r.output_finite {
                ""
            } else {
                "  NON-FINITE OUTPUT"
            }
        ));
    }
    lines.push(
        "(evals = full transformer evaluations of the steps; MFU counts only those; err = final \
         latents' relative L2 against `none` at the same size and seed)"
            .into(),
    );
    lines
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn modes_are_selected_by_name_and_unknown_ones_are_named() {
        assert_eq!(select(&["all".into()]).map(|m| m.len()), Ok(MODES.len()));
        assert_eq!(select(&["none".into()]).map(|m| m.len()), Ok(0));
        let picked = select(&["fp8".into(), "high".into()]).expect("known");
        assert_eq!(
            picked.iter().map(|m| m.name).collect::<Vec<_>>(),
            ["fp8", "high"]
        );
        let err = select(&["turbo".into()]).expect_err("unknown");
        assert!(
            err.contains("\"turbo\"") && err.contains("fp8+high"),
            "{err}"
        );
    }

    #[test]
    fn relative_error_is_zero_for_equal_latents() {
        assert_eq!(rel_l2(&[1.0, 2.0], &[1.0, 2.0]), 0.0);
        assert!((rel_l2(&[1.1, 2.0], &[1.0, 2.0]) - 0.1 / 5f64.sqrt()).abs() < 1e-6);
    }
}
