//! `kontext speed`: the speed modes side by side, in one run: every `acceleration` level, and FP8
//! linears alone and with `high`. Every mode renders the same cases of the shapes world (held-out
//! split) with the same seeds; the table gives, per mode, the wall time of generation (the engine's
//! `generate` calls, without the benchmark's own rendering and judging) and its ratio to `none`,
//! full transformer evaluations per image, the judge's object accuracy, and the PSNR of its
//! outputs against `none`'s (how far the mode moves the image, whether or not the answer was
//! right). On the CPU, FP8 is the emulation (flux/linear.rs): its numbers are its quality, and its
//! wall time is the cost of dequantizing weights on every call, not an FP8 GEMM's speed.

use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use clap::Args;
use image::RgbImage;
use kontext_engine::Engine;
use kontext_engine::StepControl;
use kontext_engine::flux::Acceleration;
use kontext_shapes::scorecard::Scorecard;
use kontext_shapes::{Split, Task, case, judge, render};
use kontext_worker::config::{LinearPrecisionArg, ModelArgs, load_engine};

use super::eval::request;

#[derive(Debug, Args)]
pub struct SpeedArgs {
    /// Cases per task (every task of the shapes world).
    #[arg(long, env = "KONTEXT_SPEED_CASES", default_value_t = 5)]
    pub cases: u64,
    /// Denoising steps (default: the model's own, else 28).
    #[arg(long, env = "KONTEXT_SPEED_STEPS")]
    pub steps: Option<u32>,
    /// Seed of the case generator.
    #[arg(long, env = "KONTEXT_SPEED_SEED", default_value_t = 1000)]
    pub seed: u64,
    #[command(flatten)]
    pub model: ModelArgs,
}

/// (name, step caching, FP8 linears); the first is the reference.
const MODES: [(&str, Acceleration, bool); 5] = [
    ("none", Acceleration::None, false),
    ("regular", Acceleration::Regular, false),
    ("high", Acceleration::High, false),
    ("fp8", Acceleration::None, true),
    ("fp8+high", Acceleration::High, true),
];

/// One mode's totals over the cases.
#[derive(Default)]
struct ModeRun {
    wall: Duration,
    /// The sampler's share of `wall`; the rest is text, context encoding and VAE decode.
    denoise: Duration,
    full: u64,
    card: Scorecard,
    outputs: Vec<RgbImage>,
}

pub async fn run(args: SpeedArgs) -> anyhow::Result<ExitCode> {
    tokio::task::spawn_blocking(move || run_blocking(&args))
        .await
        .context("the benchmark thread panicked")?
}

fn run_blocking(args: &SpeedArgs) -> anyhow::Result<ExitCode> {
    if args.cases == 0 {
        bail!("--cases must be at least 1");
    }
    let mut native = load_engine(&args.model).context("loading the model")?;
    let mut fp8 = load_engine(&ModelArgs {
        linear_precision: LinearPrecisionArg::Fp8,
        ..args.model.clone()
    })
    .context("loading the model with FP8 linears")?;
    let info = native.info();
    let Some((size, _)) = info.settings.native_resolution else {
        bail!(
            "--model {}: no native resolution (kontext_model.json); `kontext speed` judges the \
             shapes world and needs the shapes model (--model shapes)",
            args.model.model
        );
    };
    let steps = args.steps.or(info.settings.default_steps).unwrap_or(28);
    let cases: Vec<_> = Task::ALL
        .iter()
        .flat_map(|&t| (0..args.cases).map(move |i| (t, i)))
        .map(|(t, i)| {
            (
                case(args.seed, Split::HeldOut, t, i),
                args.seed.wrapping_add(i),
            )
        })
        .collect();
    eprintln!(
        "kontext speed: model {} ({size}x{size}, {steps} steps) on {}, {} cases per level",
        info.model,
        info.device,
        cases.len()
    );
    // Warm the caches (text encoder, context latents) so that no level pays for them alone.
    for engine in [&mut native, &mut fp8] {
        for (c, seed) in &cases {
            let mut req = request(c, size, 1, *seed);
            req.caching = Acceleration::None.caching();
            engine.generate(&req, &mut |_, _| StepControl::Continue)?;
        }
    }
    // Modes take turns case by case, so a machine that slows down or speeds up during the run
    // (other tenants, clocks) weighs on every mode alike.
    let mut runs: Vec<ModeRun> = MODES.iter().map(|_| ModeRun::default()).collect();
    for (c, seed) in &cases {
        let input = c.input.as_ref().map(|s| render(s, size, size));
        for ((name, level, with_fp8), run) in MODES.iter().zip(&mut runs) {
            let engine: &mut Box<dyn Engine> = if *with_fp8 { &mut fp8 } else { &mut native };
            let mut req = request(c, size, steps, *seed);
            req.caching = level.caching();
            // Generation only: rendering the inputs and judging the outputs are the
            // benchmark's own work, not the mode's.
            let started = Instant::now();
            let out = engine
                .generate(&req, &mut |_, _| StepControl::Continue)
                .with_context(|| format!("{name}: {:?}", c.prompt))?;
            run.wall += started.elapsed();
            run.denoise += out.timings.denoise;
            run.full += u64::from(out.full_evaluations);
            run.card.add(&judge(c, &out.image, input.as_ref()));
            run.outputs.push(out.image);
        }
    }
    println!(
        "{:<8} {:<34} {:>8} {:>10} {:>9} {:>11} {:>9} {:>13}",
        "mode",
        "step caching",
        "wall s",
        "denoise s",
        "vs none",
        "full evals",
        "objects",
        "PSNR vs none"
    );
    let (baseline, none_time) = (&runs[0].outputs, runs[0].wall);
    for ((name, level, _), run) in MODES.iter().zip(&runs) {
        let psnr_sum: f64 = run
            .outputs
            .iter()
            .zip(baseline)
            .map(|(out, reference)| kontext_shapes::judge::psnr(out, reference, None).min(99.0))
            .sum();
        let (objects, total) = run.card.tasks.values().fold((0, 0), |(c, t), s| {
            (c + s.objects_correct, t + s.objects_total)
        });
        println!(
            "{:<8} {:<34} {:>8.1} {:>10.1} {:>8.2}x {:>11.1} {:>8.1}% {:>10.1} dB",
            name,
            format!("{:?}", level.caching()),
            run.wall.as_secs_f64(),
            run.denoise.as_secs_f64(),
            none_time.as_secs_f64() / run.wall.as_secs_f64().max(1e-9),
            run.full as f64 / cases.len() as f64,
            100.0 * objects as f64 / total.max(1) as f64,
            psnr_sum / cases.len() as f64,
        );
    }
    println!("(PSNR vs none is capped at 99 dB for identical images; `none` is the reference.)");
    Ok(ExitCode::SUCCESS)
}
