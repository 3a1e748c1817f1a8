//! What a LoRA costs per job, both ways the engine could apply it (docs/loras.md §Merge or
//! runtime addition): on `FluxConfig::bench_mid()` (or `--config tiny`) with random weights in f32, a LoRA of rank R
//! on every linear layer, and one transformer forward over 1024 target + 1024 context + 128 text
//! tokens (as `bench-transformer`).
//!
//! - merge (what the engine does with weights in the compute dtype, `LoraState::apply`):
//!   `W' = W + s·up·down` into every weight when the job's set differs from the one applied,
//!   the originals put back exactly before the next set; no cost per step;
//! - runtime addition (what it does with FP8 weights): the adapters built once per set, then
//!   two thin GEMMs per layer and step.
//!
//! Per job of S steps that changes the set: runtime = build + S·(forward with − forward
//! without); merge = restore + merge. Prints the figures and the break-even number of steps.
//!
//! Run: `RAYON_NUM_THREADS=2 cargo run --release -p kontext-engine --bin bench-lora`

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use candle_core::{DType, Device, Tensor};
use clap::Parser;
use kontext_engine::bench::random_weights::{random_vb, seeded_tensor};
use kontext_engine::config::FluxConfig;
use kontext_engine::flux::sampling::{position_ids, text_ids};
use kontext_engine::flux::{Flux, FluxInputs};
use kontext_engine::lora::{LORA_CACHE_BYTES, LoraInput, LoraState, adapters};
use kontext_engine::weights::keys::transformer_tensors;

#[derive(Parser)]
#[command(about = "Per-job cost of a LoRA: runtime low-rank addition against merging")]
struct Args {
    /// Transformer sizes, with random weights.
    #[arg(
        long,
        env = "KONTEXT_BENCH_CONFIG",
        value_enum,
        default_value = "bench-mid"
    )]
    config: BenchConfig,
    /// LoRA rank.
    #[arg(long, env = "KONTEXT_BENCH_LORA_RANK", default_value_t = 32)]
    rank: usize,
    /// Steps of the job the per-job totals are for.
    #[arg(long, env = "KONTEXT_BENCH_STEPS", default_value_t = 28)]
    steps: u32,
    /// Rounds of the three forwards (plain, runtime addition, merged) after a warm-up; the
    /// fastest of each is reported.
    #[arg(long, env = "KONTEXT_BENCH_RUNS", default_value_t = 3)]
    runs: usize,
    /// Target (and context) grid side in tokens.
    #[arg(long, env = "KONTEXT_BENCH_GRID", default_value_t = 32)]
    grid: usize,
}

/// A PEFT-style LoRA file touching every linear layer of `cfg` under its canonical name.
fn lora_file(cfg: &FluxConfig, rank: usize) -> Result<Vec<u8>> {
    let mut tensors = Vec::new();
    for (name, shape) in transformer_tensors(cfg) {
        let (Some(module), &[out_dim, in_dim]) = (name.strip_suffix(".weight"), shape.as_slice())
        else {
            continue;
        };
        let down = (seeded_tensor(&name, &(rank, in_dim).into(), 1)? * 0.1)?;
        let up = (seeded_tensor(&name, &(out_dim, rank).into(), 2)? * 0.1)?;
        tensors.push((format!("{module}.lora_A.weight"), down));
        tensors.push((format!("{module}.lora_B.weight"), up));
    }
    Ok(safetensors::serialize(
        tensors.iter().map(|(k, v)| (k.clone(), v)),
        None,
    )?)
}

#[derive(Clone, Copy, clap::ValueEnum)]
enum BenchConfig {
    /// `FluxConfig::bench_mid()`: 12 blocks of width 1024.
    BenchMid,
    /// `FluxConfig::tiny()`: the test model.
    Tiny,
}

fn main() -> Result<()> {
    let args = Args::parse();
    let (cfg, name) = match args.config {
        BenchConfig::BenchMid => (FluxConfig::bench_mid(), "bench_mid"),
        BenchConfig::Tiny => (FluxConfig::tiny(), "tiny"),
    };
    let dev = Device::Cpu;
    let mut model = Flux::new(&cfg, random_vb(DType::F32, &dev))?;
    let g = args.grid;
    let img = seeded_tensor("img", &(1, 2 * g * g, cfg.in_channels).into(), 3)?;
    let txt = seeded_tensor("txt", &(1, 128, cfg.context_in_dim).into(), 4)?;
    let y = seeded_tensor("y", &(1, cfg.vec_in_dim).into(), 5)?;
    let img_ids = Tensor::cat(
        &[
            position_ids(1, g, g, 0.0, &dev)?,
            position_ids(1, g, g, 1.0, &dev)?,
        ],
        1,
    )?;
    let txt_ids = text_ids(1, 128, &dev)?;
    let t = Tensor::new(&[0.75f32], &dev)?;
    let guidance = Tensor::new(&[2.5f32], &dev)?;
    let forward = |m: &Flux| -> Result<()> {
        m.forward(&FluxInputs {
            img: &img,
            img_ids: &img_ids,
            txt: &txt,
            txt_ids: &txt_ids,
            timesteps: &t,
            y: &y,
            guidance: Some(&guidance),
        })?;
        Ok(())
    };
    let bytes: Arc<[u8]> = Arc::from(lora_file(&cfg, args.rank)?);
    println!(
        "{name}, LoRA rank {} on every linear ({:.1} MB file), {} + {} + 128 tokens, f32, {} threads",
        args.rank,
        bytes.len() as f64 / 1e6,
        g * g,
        g * g,
        candle_core::utils::get_num_threads()
    );

    // The engine's way (merge): the first apply parses the file and merges; switching the scale
    // restores and merges again from the parsed file (a worker moving between cached sets).
    let mut state = LoraState::new(&cfg, dev.clone(), LORA_CACHE_BYTES);
    let input = |scale: f64| LoraInput {
        id: "bench".into(),
        bytes: bytes.clone(),
        scale,
    };
    let mut apply = |model: &mut Flux, scale: f64| -> Result<Duration> {
        let started = Instant::now();
        state
            .apply(model, &[input(scale)])
            .map_err(|(_, e)| e)
            .context("applying the LoRA")?;
        Ok(started.elapsed())
    };
    let first_apply = apply(&mut model, 0.8)?;
    let switch = apply(&mut model, 0.7)?;
    let started = Instant::now();
    apply(&mut model, 0.7)?;
    let same_set = started.elapsed();
    let started = Instant::now();
    state.clear(&mut model).context("restoring the weights")?;
    let restore = started.elapsed();
    let file = state
        .file(&input(0.7))
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    let started = Instant::now();
    let runtime_layers = adapters(&[(file.as_ref(), 0.7)], DType::F32)?;
    let build = started.elapsed();

    // The three states' forwards interleaved, round by round, and the fastest of each kept: a
    // noisy neighbour slows one round, not one state.
    forward(&model)?; // warm-up
    let (mut plain, mut with_adapter, mut merged_forward) = (Vec::new(), Vec::new(), Vec::new());
    let timed_forward = |model: &Flux| -> Result<Duration> {
        let started = Instant::now();
        forward(model)?;
        Ok(started.elapsed())
    };
    for _ in 0..args.runs {
        plain.push(timed_forward(&model)?);
        for (name, linear) in model.named_linears_mut() {
            linear.set_adapter(runtime_layers.get(&name).cloned());
        }
        with_adapter.push(timed_forward(&model)?);
        for (_, linear) in model.named_linears_mut() {
            linear.set_adapter(None);
        }
        state
            .apply(&mut model, &[input(0.7)])
            .map_err(|(_, e)| e)
            .context("merging")?;
        merged_forward.push(timed_forward(&model)?);
        state.clear(&mut model).context("restoring the weights")?;
    }
    let list = |v: &[Duration]| {
        v.iter()
            .map(|d| format!("{:.0}", d.as_secs_f64() * 1e3))
            .collect::<Vec<_>>()
            .join(" ")
    };
    println!(
        "rounds (ms): plain [{}], runtime [{}], merged [{}]",
        list(&plain),
        list(&with_adapter),
        list(&merged_forward)
    );
    let fastest = |v: &[Duration]| v.iter().min().copied().unwrap_or_default();
    let (plain, with_adapter, merged_forward) = (
        fastest(&plain),
        fastest(&with_adapter),
        fastest(&merged_forward),
    );

    let steps = f64::from(args.steps);
    let per_step = with_adapter.as_secs_f64() - plain.as_secs_f64();
    let runtime_job = build.as_secs_f64() + steps * per_step;
    // A job that changes the set pays a restore and a merge; one that keeps it pays nothing.
    let merge_job = switch.as_secs_f64();
    let ms = |d: f64| d * 1e3;
    println!(
        "forward without LoRA            {:>9.1} ms",
        ms(plain.as_secs_f64())
    );
    println!(
        "forward with runtime LoRA       {:>9.1} ms  (+{:.1} ms, {:+.1}%)",
        ms(with_adapter.as_secs_f64()),
        ms(per_step),
        100.0 * per_step / plain.as_secs_f64()
    );
    println!(
        "forward with merged weights     {:>9.1} ms",
        ms(merged_forward.as_secs_f64())
    );
    println!(
        "merge, first (parse + merge)    {:>9.1} ms",
        ms(first_apply.as_secs_f64())
    );
    println!(
        "switch set (restore + merge)    {:>9.1} ms",
        ms(switch.as_secs_f64())
    );
    println!(
        "restore the originals           {:>9.1} ms",
        ms(restore.as_secs_f64())
    );
    println!(
        "apply the set already merged    {:>9.3} ms",
        ms(same_set.as_secs_f64())
    );
    println!(
        "runtime addition, build         {:>9.1} ms",
        ms(build.as_secs_f64())
    );
    println!(
        "per job of {} steps that changes the set: runtime {:.1} ms, merge {:.1} ms \
         (0 when the set stays: LoRA affinity); break-even at {:.1} steps",
        args.steps,
        ms(runtime_job),
        ms(merge_job),
        if per_step > 0.0 {
            (merge_job - build.as_secs_f64()) / per_step
        } else {
            f64::INFINITY
        }
    );
    Ok(())
}
