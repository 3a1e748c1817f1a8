//! `kontext-worker bench-gpu`: the GPU benchmark and correctness check (docs/gpu.md),
//! one command that needs no downloads and fits one device call (scripts/gpu-bench.sh).
//!
//! 1. Correctness (`gpu::checks`): attention and a head-dim-128 transformer (the flash path),
//!    the tiny model's whole edit, and the committed diffusers parity fixture, each in the
//!    device's bf16 against f32 on the CPU; bound 1e-2 relative L2.
//! 2. Speed: the real 12B transformer, T5-XXL, CLIP-L and VAE with random weights generated on
//!    the device, one edit per size (context = target size, 28 steps by default) after a short
//!    warm-up: seconds per step (synchronised after every step), the stages around the loop,
//!    seconds per image end to end, peak GPU memory (the allocation pool's high-water mark, text
//!    encoders resident), MFU against the compute floor (`bench::flops`). Then a few steps
//!    with flash-attention off, and with the fused kernels off, for comparison (`--ab-steps`).
//! 3. Speed modes (`speed_modes`, `--modes`): the same edits with step caching `regular` and
//!    `high`, then, on an engine rebuilt with FP8 linears, `fp8` alone and with each caching
//!    level; per mode the seconds per image, images per hour, peak memory, utilisation against
//!    the bf16 and FP8 floors and the final latents' relative error against the reference run.
//!
//! Prints one table at the end and writes every number to `<out-dir>/bench-gpu.json`.
//! `--device cpu --model-size tiny` runs the same code on the CPU (how it is tested without a GPU).

use std::path::PathBuf;
use std::time::{Duration, Instant};

use candle_core::{DType, Device};
use serde::Serialize;

use super::check_run;
use super::flops::H100_BF16_PEAK_TFLOPS;
use super::random_weights::{self, RandomEngineSpec};
use super::report::{self, Report};
use super::speed_modes;
use super::timed_edit::timed_edit;
use crate::flux::{LinearPrecision, StepCaching, attention, ops, profile};
use crate::loader::parse_device;
use crate::pipeline::{EngineOptions, KontextEngine};
use crate::text::tokenize::PromptTokenizers;
use crate::weights::ModelDir;
use crate::{EngineError, tiny};

/// Why the benchmark stopped or failed.
#[derive(Debug, thiserror::Error)]
pub enum BenchError {
    #[error("--sizes entry {0} must be a positive multiple of 16")]
    Size(u32),
    #[error("--steps must be at least 1")]
    NoSteps,
    #[error("{}: {source}", path.display())]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(transparent)]
    Json(#[from] serde_json::Error),
    #[error(transparent)]
    Engine(#[from] EngineError),
    #[error(transparent)]
    Candle(#[from] candle_core::Error),
    #[error("{what}: {source}")]
    During {
        what: String,
        source: Box<BenchError>,
    },
    #[error("{0}")]
    Modes(String),
    #[error("the engine never reported a step")]
    NoStepReported,
    #[error(
        "{checks} check(s) out of tolerance, {check_errors} check error(s), {speed_errors} speed error(s)"
    )]
    Failed {
        checks: usize,
        check_errors: usize,
        speed_errors: usize,
    },
}

impl From<crate::WeightsError> for BenchError {
    fn from(e: crate::WeightsError) -> Self {
        Self::Engine(e.into())
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum ModelSize {
    /// FLUX.1 Kontext \[dev\]: 12B transformer, T5-XXL, CLIP-L, VAE (random weights on the device).
    Real,
    /// The tiny test model (the code path, in seconds, also on a CPU).
    Tiny,
}

/// Arguments of `kontext-worker bench-gpu`.
#[derive(Debug, clap::Args)]
pub struct BenchGpuArgs {
    /// `cuda`, `cuda:N` or `cpu`.
    #[arg(long, env = "KONTEXT_BENCH_DEVICE", default_value = "cuda")]
    pub device: String,
    /// Model whose speed is measured.
    #[arg(long, env = "KONTEXT_BENCH_MODEL_SIZE", value_enum, default_value_t = ModelSize::Real)]
    model_size: ModelSize,
    /// Square edit sizes in pixels (multiples of 16), each run once after a warm-up.
    #[arg(long, env = "KONTEXT_BENCH_SIZES", value_delimiter = ',', default_values_t = [1024u32, 512])]
    sizes: Vec<u32>,
    /// Denoising steps of each timed edit.
    #[arg(long, env = "KONTEXT_BENCH_STEPS", default_value_t = 28)]
    steps: u32,
    /// Steps of the untimed warm-up edit at each size (kernel loading, cuBLAS heuristics).
    #[arg(long, env = "KONTEXT_BENCH_WARMUP_STEPS", default_value_t = 2)]
    warmup_steps: u32,
    /// Steps timed at each size with flash-attention off, and again with the fused kernels off
    /// (A/B against candle's compositions; 0 = skip).
    #[arg(long, env = "KONTEXT_BENCH_AB_STEPS", default_value_t = 2)]
    ab_steps: u32,
    /// Dense bf16 peak the MFU is computed against, TFLOP/s (H100 SXM / H200: 989).
    #[arg(long, env = "KONTEXT_BENCH_PEAK_TFLOPS", default_value_t = H100_BF16_PEAK_TFLOPS)]
    peak_tflops: f64,
    /// Compute dtype of the measured engine (transformer and text encoders).
    #[arg(long, env = "KONTEXT_BENCH_DTYPE", value_enum, default_value_t = BenchDtype::Bf16)]
    pub(super) dtype: BenchDtype,
    /// dtype of the VAE (the worker's default is f32, like BFL's encode).
    #[arg(long, env = "KONTEXT_BENCH_VAE_DTYPE", value_enum, default_value_t = BenchDtype::F32)]
    vae_dtype: BenchDtype,
    /// Speed modes run after the reference at every size: `all`, `none`, or a list of
    /// regular, high, fp8, fp8+regular, fp8+high.
    #[arg(
        long,
        env = "KONTEXT_BENCH_MODES",
        value_delimiter = ',',
        default_value = "all"
    )]
    modes: Vec<String>,
    /// Skip the correctness checks.
    #[arg(long, env = "KONTEXT_BENCH_SKIP_CHECKS")]
    skip_checks: bool,
    /// Skip the speed measurements (checks only).
    #[arg(long, env = "KONTEXT_BENCH_SKIP_SPEED")]
    skip_speed: bool,
    /// The diffusers parity fixture used by the checks.
    #[arg(
        long,
        env = "KONTEXT_PARITY_DIR",
        default_value = "tests/parity/fixtures/default"
    )]
    pub(super) parity_dir: PathBuf,
    /// Where bench-gpu.json and the generated tiny models go (default: $OUT, else ./bench-gpu-out).
    #[arg(long, env = "KONTEXT_BENCH_OUT")]
    out_dir: Option<PathBuf>,
    /// Run bf16 token linears through cuBLASLt (experimental, `fp8-gemm` builds; its outputs were
    /// not finite on an H200: docs/gpu.md §5). The checks show whether it is fixed.
    #[arg(long, env = "KONTEXT_BENCH_LT_BF16")]
    lt_bf16: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum BenchDtype {
    F32,
    Bf16,
}

impl BenchDtype {
    pub(super) fn dtype(self) -> DType {
        match self {
            Self::F32 => DType::F32,
            Self::Bf16 => DType::BF16,
        }
    }
}

/// Runs the benchmark; `Err(Failed)` when a check is out of tolerance or a phase failed.
pub fn run(args: BenchGpuArgs) -> Result<(), BenchError> {
    if let Some(&s) = args.sizes.iter().find(|s| **s == 0 || **s % 16 != 0) {
        return Err(BenchError::Size(s));
    }
    if args.steps == 0 {
        return Err(BenchError::NoSteps);
    }
    speed_modes::select(&args.modes).map_err(BenchError::Modes)?;
    ops::cuda::set_lt_gemm(args.lt_bf16);
    let out_dir = args
        .out_dir
        .clone()
        .or_else(|| std::env::var_os("OUT").map(PathBuf::from))
        .unwrap_or_else(|| PathBuf::from("bench-gpu-out"));
    std::fs::create_dir_all(&out_dir).map_err(|source| BenchError::Io {
        path: out_dir.clone(),
        source,
    })?;
    let dev = parse_device(&args.device)?;
    let mut rep = Report {
        device: args.device.clone(),
        flash_attn_compiled: kontext_cuda::HAS_FLASH_ATTN,
        fused_compiled: kontext_cuda::HAS_FUSED,
        peak_tflops: args.peak_tflops,
        ..Report::default()
    };
    report::describe_device(&dev, &mut rep);
    eprintln!(
        "bench-gpu: {} ({}), flash-attn compiled: {}, fused kernels compiled: {}",
        rep.device,
        rep.device_name.as_deref().unwrap_or("-"),
        rep.flash_attn_compiled,
        rep.fused_compiled
    );

    let json = out_dir.join("bench-gpu.json");
    if !args.skip_checks {
        check_run::run_checks(&args, &dev, &out_dir, &mut rep);
        save(&json, &rep)?;
    }
    if !args.skip_speed
        && let Err(e) = run_speed(&args, &dev, &out_dir, &json, &mut rep)
    {
        eprintln!("speed: {e}");
        rep.errors.push(e.to_string());
    }
    save(&json, &rep)?;
    println!("{}", report::table(&rep));
    println!("details: {}", json.display());
    let failed = rep.checks.iter().filter(|c| !c.passed).count();
    if failed > 0 || !rep.check_errors.is_empty() || !rep.errors.is_empty() {
        return Err(BenchError::Failed {
            checks: failed,
            check_errors: rep.check_errors.len(),
            speed_errors: rep.errors.len(),
        });
    }
    Ok(())
}

/// Writes the report so far (also after every phase: a run stopped by a timeout keeps its numbers).
fn save(json: &std::path::Path, rep: &Report) -> Result<(), BenchError> {
    std::fs::write(json, serde_json::to_string_pretty(rep)?).map_err(|source| BenchError::Io {
        path: json.to_path_buf(),
        source,
    })
}

/// The engine whose speed is measured.
fn build_engine(
    args: &BenchGpuArgs,
    dev: &Device,
    out_dir: &std::path::Path,
    rep: &mut Report,
    linear_precision: LinearPrecision,
) -> Result<KontextEngine, BenchError> {
    let opts = EngineOptions {
        dtype: args.dtype.dtype(),
        vae_dtype: args.vae_dtype.dtype(),
        device: dev.clone(),
        linear_precision,
        ..EngineOptions::cpu()
    };
    let tiny_dir = tiny::ensure_cached_in(out_dir, 0)?;
    rep.model_size = Some(args.model_size);
    let started = Instant::now();
    let engine = match args.model_size {
        ModelSize::Tiny => KontextEngine::load(&ModelDir::open(&tiny_dir)?, "tiny", opts)?,
        ModelSize::Real => {
            let spec = RandomEngineSpec::kontext_dev();
            rep.parameters = Some(spec.parameter_counts()?);
            // Token values do not change the cost (T5 always runs 512 positions, CLIP 77), so
            // the tiny model's tokenizers stand in for the real vocabularies.
            let tokenizers =
                PromptTokenizers::load(&tiny_dir.join("tokenizer"), &tiny_dir.join("tokenizer_2"))?;
            random_weights::build_engine(&spec, tokenizers, opts)?
        }
    };
    dev.synchronize()?;
    rep.build_s = Some(started.elapsed().as_secs_f64());
    rep.resident_pool_bytes = report::pool_used(dev);
    eprintln!(
        "engine {:?} ({} linears) built in {:.1}s, resident {}",
        args.model_size,
        linear_precision.as_str(),
        started.elapsed().as_secs_f64(),
        report::gib(rep.resident_pool_bytes)
    );
    Ok(engine)
}

/// A kernel family the A/B runs switch off: compiled in?, its switch, its name.
type KernelSwitch = (bool, fn(bool), &'static str);

fn run_speed(
    args: &BenchGpuArgs,
    dev: &Device,
    out_dir: &std::path::Path,
    json: &std::path::Path,
    rep: &mut Report,
) -> Result<(), BenchError> {
    let modes = speed_modes::select(&args.modes).map_err(BenchError::Modes)?;
    let mut engine = build_engine(args, dev, out_dir, rep, LinearPrecision::Native)?;
    let cfg = engine.flux_config().clone();
    // The reference latents per size, for the modes' error.
    let mut reference: Vec<(u32, Vec<f32>)> = Vec::new();
    for &size in &args.sizes {
        if args.warmup_steps > 0 {
            timed_edit(
                &mut engine,
                dev,
                size,
                args.warmup_steps,
                &cfg,
                args.peak_tflops,
                StepCaching::Off,
            )
            .map_err(|e| during(format!("warm-up at {size}x{size}"), e))?;
        }
        let (run, latents) = timed_edit(
            &mut engine,
            dev,
            size,
            args.steps,
            &cfg,
            args.peak_tflops,
            StepCaching::Off,
        )
        .map_err(|e| during(format!("edit at {size}x{size}"), e))?;
        rep.modes.push(speed_modes::mode_run(
            "none",
            &run,
            &latents,
            &latents,
            &cfg,
            args.peak_tflops,
        ));
        reference.push((size, latents));
        eprintln!(
            "  {size}x{size}: {:.3} s/step (median of {}), {:.2} s/image, peak {}, MFU {:.1}%",
            run.step_median_s,
            run.steps,
            run.total_s,
            report::gib(run.peak_pool_bytes),
            100.0 * run.mfu
        );
        rep.runs.push(run);
        save(json, rep)?;
        if args.ab_steps > 0 && dev.is_cuda() {
            run_ab(args, &mut engine, dev, size, &cfg, json, rep)?;
        }
    }
    let run_modes = |engine: &mut KontextEngine, precision: LinearPrecision, rep: &mut Report| {
        for (size, latents) in &reference {
            for mode in modes.iter().filter(|m| m.linear_precision == precision) {
                let r = speed_modes::run_mode(
                    engine,
                    dev,
                    *size,
                    (args.steps, args.peak_tflops),
                    *mode,
                    latents,
                    &cfg,
                );
                match r {
                    Ok(r) => {
                        eprintln!(
                            "  {size}x{size} {}: {} evals, {:.2} s/image, err vs none {:.3e}",
                            r.mode, r.full_evaluations, r.total_s, r.rel_err_vs_none
                        );
                        rep.modes.push(r);
                    }
                    Err(e) => rep
                        .errors
                        .push(format!("{size}x{size} mode {}: {e}", mode.name)),
                }
                save(json, rep)?;
            }
        }
        Ok::<(), BenchError>(())
    };
    run_modes(&mut engine, LinearPrecision::Native, rep)?;
    if modes
        .iter()
        .any(|m| m.linear_precision == LinearPrecision::Fp8)
    {
        // Never two engines resident at once: the FP8 one is built after the native one is gone.
        drop(engine);
        let mut fp8 = build_engine(args, dev, out_dir, rep, LinearPrecision::Fp8)?;
        for &size in &args.sizes {
            if args.warmup_steps > 0 {
                timed_edit(
                    &mut fp8,
                    dev,
                    size,
                    args.warmup_steps,
                    &cfg,
                    args.peak_tflops,
                    StepCaching::Off,
                )
                .map_err(|e| during(format!("FP8 warm-up at {size}x{size}"), e))?;
            }
        }
        run_modes(&mut fp8, LinearPrecision::Fp8, rep)?;
    }
    Ok(())
}

/// A few steps at `size` with each of our kernel families switched off in turn.
fn run_ab(
    args: &BenchGpuArgs,
    engine: &mut KontextEngine,
    dev: &Device,
    size: u32,
    cfg: &crate::config::FluxConfig,
    json: &std::path::Path,
    rep: &mut Report,
) -> Result<(), BenchError> {
    let switches: [KernelSwitch; 3] = [
        (
            kontext_cuda::HAS_FLASH_ATTN3,
            attention::set_flash_attn3,
            "FlashAttention-3 (FA2 instead)",
        ),
        (
            kontext_cuda::HAS_FLASH_ATTN,
            attention::set_flash_attn,
            "flash-attn",
        ),
        (
            kontext_cuda::HAS_FUSED,
            ops::cuda::set_enabled,
            "fused kernels",
        ),
    ];
    for (compiled, switch, name) in switches {
        if !compiled {
            continue;
        }
        switch(false);
        let ab = timed_edit(
            engine,
            dev,
            size,
            args.ab_steps,
            cfg,
            args.peak_tflops,
            StepCaching::Off,
        );
        switch(true);
        match ab {
            Ok((r, _)) => {
                eprintln!(
                    "  {size}x{size} without {name}: {:.3} s/step, peak {}",
                    r.step_median_s,
                    report::gib(r.peak_pool_bytes)
                );
                rep.ab.push(r);
            }
            Err(e) => rep
                .errors
                .push(format!("{size}x{size} without {name}: {e}")),
        }
        save(json, rep)?;
    }
    // Where a step's time goes: the same steps with the device synchronised around every op
    // scope (flux::profile), so each class's time is its kernels' time.
    profile::set_sync_device(Some(dev.clone()));
    profile::reset();
    profile::set_enabled(true);
    let run = timed_edit(
        engine,
        dev,
        size,
        args.ab_steps,
        cfg,
        args.peak_tflops,
        StepCaching::Off,
    );
    profile::set_enabled(false);
    profile::set_sync_device(None);
    let (attention_t, matmul_t, elementwise_t) = profile::snapshot();
    match run {
        Ok((r, _)) => {
            let per_step = |d: Duration| d.as_secs_f64() / f64::from(args.ab_steps.max(1));
            let row = report::StepProfile {
                size,
                step_s: r.step_median_s,
                attention_s: per_step(attention_t),
                linears_s: per_step(matmul_t),
                elementwise_s: per_step(elementwise_t),
            };
            eprintln!(
                "  {size}x{size} per step, synchronised around each op: attention {:.3} s, \
                 linears {:.3} s, elementwise {:.3} s, rest {:.3} s (step {:.3} s)",
                row.attention_s,
                row.linears_s,
                row.elementwise_s,
                row.step_s - row.attention_s - row.linears_s - row.elementwise_s,
                row.step_s
            );
            rep.profile.push(row);
        }
        Err(e) => rep.errors.push(format!("{size}x{size} profile: {e}")),
    }
    save(json, rep)?;
    Ok(())
}

fn during(what: String, e: BenchError) -> BenchError {
    BenchError::During {
        what,
        source: Box::new(e),
    }
}
