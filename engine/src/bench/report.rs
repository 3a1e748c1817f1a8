//! The benchmark's report (every number it measured, saved as JSON), the device statistics and
//! the final table.

use super::checks::CheckOutcome;
use candle_core::Device;
use serde::Serialize;

/// One check in the report.
#[derive(Debug, Clone, Serialize)]
pub struct CheckRow {
    pub name: String,
    pub rel_l2: f32,
    pub tolerance: f32,
    pub passed: bool,
}

impl From<&CheckOutcome> for CheckRow {
    fn from(o: &CheckOutcome) -> Self {
        Self {
            name: o.name.clone(),
            rel_l2: o.rel_l2,
            tolerance: o.tolerance,
            passed: o.passed(),
        }
    }
}

/// One timed edit.
#[derive(Debug, Clone, Serialize)]
pub struct SizeRun {
    pub size: u32,
    pub steps: u32,
    pub tokens: usize,
    /// Full transformer evaluations (the steps, fewer under step caching).
    pub full_evaluations: u32,
    /// Which kernels ran: "flash+fused", "no flash-attn", "no fused", ...
    pub variant: String,
    /// Text encoders + context VAE encode (until the first step starts, synchronised).
    pub pre_denoise_s: f64,
    pub step_s: Vec<f64>,
    pub step_median_s: f64,
    pub denoise_s: f64,
    /// Unpack + VAE decode + RGB conversion.
    pub decode_s: f64,
    pub total_s: f64,
    /// Allocation-pool high-water mark during the edit (weights included), bytes.
    pub peak_pool_bytes: Option<u64>,
    /// Device memory in use by everything (cuMemGetInfo) at the end, bytes.
    pub device_used_bytes: Option<u64>,
    pub tflop_per_step: f64,
    pub floor_step_s: f64,
    pub mfu: f64,
    pub output_finite: bool,
}

/// Everything the command measured.
#[derive(Debug, Default, Serialize)]
pub struct Report {
    pub device: String,
    pub device_name: Option<String>,
    pub device_total_bytes: Option<u64>,
    pub flash_attn_compiled: bool,
    pub fused_compiled: bool,
    pub model_size: Option<super::gpu_run::ModelSize>,
    pub parameters: Option<(usize, usize, usize, usize)>,
    pub build_s: Option<f64>,
    pub resident_pool_bytes: Option<u64>,
    pub checks: Vec<CheckRow>,
    pub check_errors: Vec<String>,
    pub runs: Vec<SizeRun>,
    /// The A/B runs (a kernel switched off).
    pub ab: Vec<SizeRun>,
    /// The speed modes against the reference runs.
    pub modes: Vec<super::speed_modes::ModeRun>,
    /// Per size: where a step's time goes (`flux::profile` with device synchronisation).
    pub profile: Vec<StepProfile>,
    pub errors: Vec<String>,
    pub peak_tflops: f64,
}

/// One step's time by op class, each class timed with the device synchronised around its ops.
#[derive(Debug, Clone, Serialize)]
pub struct StepProfile {
    pub size: u32,
    /// Median synchronised step of the profiled run (the syncs slow it a little).
    pub step_s: f64,
    pub attention_s: f64,
    pub linears_s: f64,
    pub elementwise_s: f64,
}

pub fn gib(bytes: Option<u64>) -> String {
    bytes.map_or_else(
        || "n/a".into(),
        |b| format!("{:.2} GiB", b as f64 / (1u64 << 30) as f64),
    )
}

#[cfg(feature = "cuda")]
mod device_stats {
    use candle_core::Device;
    use kontext_cuda::memory;

    pub fn describe(dev: &Device, rep: &mut super::Report) {
        if let Device::Cuda(d) = dev {
            match memory::summary(d) {
                Ok(s) => {
                    rep.device_name = Some(format!(
                        "{} (sm_{}{}, {} SMs, pooled allocations: {})",
                        s.name,
                        s.compute_capability.0,
                        s.compute_capability.1,
                        s.multiprocessors,
                        s.pooled
                    ));
                    rep.device_total_bytes = Some(s.total_bytes as u64);
                }
                Err(e) => rep.errors.push(format!("device summary: {e}")),
            }
        }
    }

    pub fn pool_used(dev: &Device) -> Option<u64> {
        match dev {
            Device::Cuda(d) => memory::pool_used_bytes(d).ok(),
            _ => None,
        }
    }

    pub fn pool_peak(dev: &Device) -> Option<u64> {
        match dev {
            Device::Cuda(d) => memory::pool_peak_bytes(d).ok(),
            _ => None,
        }
    }

    pub fn reset_pool_peak(dev: &Device) {
        if let Device::Cuda(d) = dev {
            let _ = memory::reset_pool_peak(d);
        }
    }

    pub fn device_used(dev: &Device) -> Option<u64> {
        match dev {
            Device::Cuda(d) => memory::free_and_total(d)
                .ok()
                .map(|(free, total)| (total - free) as u64),
            _ => None,
        }
    }
}

#[cfg(not(feature = "cuda"))]
mod device_stats {
    use candle_core::Device;

    pub fn describe(_: &Device, _: &mut super::Report) {}
    pub fn pool_used(_: &Device) -> Option<u64> {
        None
    }
    pub fn pool_peak(_: &Device) -> Option<u64> {
        None
    }
    pub fn reset_pool_peak(_: &Device) {}
    pub fn device_used(_: &Device) -> Option<u64> {
        None
    }
}

pub fn describe_device(dev: &Device, rep: &mut Report) {
    device_stats::describe(dev, rep);
}
pub use device_stats::{device_used, pool_peak, pool_used, reset_pool_peak};

/// The table printed last (the device tool returns the end of the output).
pub fn table(rep: &Report) -> String {
    let mut s = String::new();
    let line = |s: &mut String, t: String| {
        s.push_str(&t);
        s.push('\n');
    };
    line(
        &mut s,
        "==================== bench-gpu ====================".into(),
    );
    line(
        &mut s,
        format!(
            "device {} | {} | compiled: flash-attn {}, fused kernels {}",
            rep.device,
            rep.device_name.as_deref().unwrap_or("-"),
            rep.flash_attn_compiled,
            rep.fused_compiled
        ),
    );
    if let Some((flux, t5, clip, vae)) = rep.parameters {
        line(
            &mut s,
            format!(
                "model: random weights, params transformer {:.2}B, T5 {:.2}B, CLIP {:.0}M, VAE {:.0}M; built in {:.1}s; resident {}",
                flux as f64 / 1e9,
                t5 as f64 / 1e9,
                clip as f64 / 1e6,
                vae as f64 / 1e6,
                rep.build_s.unwrap_or(0.0),
                gib(rep.resident_pool_bytes)
            ),
        );
    }
    if !rep.checks.is_empty() || !rep.check_errors.is_empty() {
        line(
            &mut s,
            format!("{:<52} {:>10} {:>8} {:>6}", "check", "rel L2", "bound", ""),
        );
        for c in &rep.checks {
            line(
                &mut s,
                format!(
                    "{:<52} {:>10.3e} {:>8.0e} {:>6}",
                    c.name,
                    c.rel_l2,
                    c.tolerance,
                    if c.passed { "ok" } else { "FAIL" }
                ),
            );
        }
        for e in &rep.check_errors {
            line(&mut s, format!("check ERROR: {e}"));
        }
    }
    if !rep.runs.is_empty() {
        line(
            &mut s,
            format!(
                "{:<11} {:>5} {:>6} {:>9} {:>8} {:>8} {:>9} {:>9} {:>10} {:>7}  {}",
                "edit",
                "steps",
                "tokens",
                "s/step",
                "floor",
                "pre s",
                "decode s",
                "s/image",
                "peak mem",
                "MFU",
                "kernels"
            ),
        );
        for r in rep.runs.iter().chain(rep.ab.iter()) {
            line(
                &mut s,
                format!(
                    "{:<11} {:>5} {:>6} {:>9.4} {:>8.4} {:>8.3} {:>9.3} {:>9.3} {:>10} {:>6.1}%  {}{}",
                    format!("{0}x{0}", r.size),
                    r.steps,
                    r.tokens,
                    r.step_median_s,
                    r.floor_step_s,
                    r.pre_denoise_s,
                    r.decode_s,
                    r.total_s,
                    gib(r.peak_pool_bytes),
                    100.0 * r.mfu,
                    r.variant,
                    if r.output_finite {
                        ""
                    } else {
                        "  NON-FINITE OUTPUT"
                    }
                ),
            );
        }
        line(
            &mut s,
            format!(
                "(s/step = median synchronised step; floor = FLOPs at {} TF/s; MFU = floor / s/step; s/image = text + encode + denoise + decode)",
                rep.peak_tflops
            ),
        );
    }
    for l in super::speed_modes::table_lines(&rep.modes, gib) {
        line(&mut s, l);
    }
    for e in &rep.errors {
        line(&mut s, format!("ERROR: {e}"));
    }
    s
}
