//! CPU benchmark of the flow transformer (docs/engine.md §Parity): one forward of
//! `FluxConfig::bench_mid()` (hidden 1024, 16 heads, 4 double + 8 single blocks) over 1024 target +
//! 1024 context + 128 text tokens in f32 with random weights; one warm-up, then the median of N
//! runs, with a breakdown by op class. The PyTorch twin is `tests/parity/make_fixtures.py --bench`.
//!
//! Run: `RAYON_NUM_THREADS=2 cargo run --release -p kontext-engine --bin bench-transformer`

use std::time::{Duration, Instant};

use anyhow::Result;
use candle_core::{DType, Device, Tensor};
use candle_nn::{VarBuilder, VarMap};
use clap::Parser;
use kontext_engine::config::FluxConfig;
use kontext_engine::flux::ops::cpu;
use kontext_engine::flux::profile;
use kontext_engine::flux::sampling::{position_ids, text_ids};
use kontext_engine::flux::{Flux, FluxInputs};
use kontext_engine::noise::SplitMix64;

#[derive(Parser)]
#[command(about = "CPU benchmark of one FLUX transformer forward (bench_mid configuration)")]
struct Args {
    /// Timed runs after the warm-up; the median is reported.
    #[arg(long, env = "KONTEXT_BENCH_RUNS", default_value_t = 5)]
    runs: usize,
    /// Target (and context) grid side in tokens: 32 gives 1024 + 1024 image tokens.
    #[arg(long, env = "KONTEXT_BENCH_GRID", default_value_t = 32)]
    grid: usize,
    /// Text tokens.
    #[arg(long, env = "KONTEXT_BENCH_TXT", default_value_t = 128)]
    txt: usize,
    /// Skip the per-op-class accounting (it adds a timer per op).
    #[arg(long, env = "KONTEXT_BENCH_NO_BREAKDOWN")]
    no_breakdown: bool,
    /// Run the plain candle compositions instead of the fused CPU kernels (A/B comparison).
    #[arg(long, env = "KONTEXT_BENCH_NO_CPU_KERNELS")]
    no_cpu_kernels: bool,
    /// Query rows per attention tile of the CPU kernel (0 = default).
    #[arg(long, env = "KONTEXT_BENCH_ATTENTION_TILE", default_value_t = 0)]
    attention_tile: usize,
}

/// User + system CPU time of this process so far (all threads), from /proc/self/stat; the wall
/// time of a run is inflated by other load on the machine, its CPU time much less.
fn process_cpu_time() -> Option<Duration> {
    let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
    // Fields after the parenthesised command name; utime and stime are fields 14 and 15.
    let rest = stat.rsplit_once(')')?.1;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks: u64 = fields.get(11)?.parse::<u64>().ok()? + fields.get(12)?.parse::<u64>().ok()?;
    // USER_HZ is 100 on Linux.
    Some(Duration::from_millis(ticks * 10))
}

/// Uniform weights with the variance of N(0, 1/fan_in) (norm scales around 1): the timing does
/// not depend on the distribution, only on the values being ordinary finite floats.
fn randomize(varmap: &VarMap, seed: u64) -> Result<()> {
    let data = varmap
        .data()
        .lock()
        .map_err(|_| anyhow::anyhow!("varmap lock poisoned"))?;
    let mut names: Vec<_> = data.keys().cloned().collect();
    names.sort();
    let mut rng = SplitMix64::new(seed);
    for name in names {
        let var = &data[&name];
        let shape = var.shape().clone();
        let fan_in = shape.dims().last().copied().unwrap_or(1) as f64;
        let (center, half_width) = if name.ends_with(".scale") {
            (1.0, 0.1 * 3f64.sqrt())
        } else {
            (0.0, (3.0 / fan_in).sqrt())
        };
        let vals: Vec<f32> = (0..shape.elem_count())
            .map(|_| (center + half_width * (2.0 * rng.next_f64() - 1.0)) as f32)
            .collect();
        var.set(&Tensor::from_vec(vals, shape, &Device::Cpu)?)?;
    }
    Ok(())
}

fn median(v: &mut [Duration]) -> Duration {
    v.sort();
    v[v.len() / 2]
}

fn main() -> Result<()> {
    let args = Args::parse();
    let threads = candle_core::utils::get_num_threads();
    cpu::set_enabled(!args.no_cpu_kernels);
    cpu::attention::set_tile(args.attention_tile);
    let cfg = FluxConfig::bench_mid();
    let dev = Device::Cpu;
    let varmap = VarMap::new();
    let model = Flux::new(&cfg, VarBuilder::from_varmap(&varmap, DType::F32, &dev))?;
    randomize(&varmap, 0)?;
    let params: usize = varmap.all_vars().iter().map(|v| v.elem_count()).sum();

    let mut rng = SplitMix64::new(1);
    let mut randn = |shape: &[usize]| -> Result<Tensor> {
        let n: usize = shape.iter().product();
        Ok(Tensor::from_vec(
            (0..n).map(|_| rng.normal_f32()).collect::<Vec<_>>(),
            shape,
            &dev,
        )?)
    };
    let g = args.grid;
    let img = randn(&[1, 2 * g * g, cfg.in_channels])?;
    let txt = randn(&[1, args.txt, cfg.context_in_dim])?;
    let y = randn(&[1, cfg.vec_in_dim])?;
    let img_ids = Tensor::cat(
        &[
            position_ids(1, g, g, 0.0, &dev)?,
            position_ids(1, g, g, 1.0, &dev)?,
        ],
        1,
    )?;
    let txt_ids = text_ids(1, args.txt, &dev)?;
    let t = Tensor::new(&[0.75f32], &dev)?;
    let guidance = Tensor::new(&[2.5f32], &dev)?;
    let inp = FluxInputs {
        img: &img,
        img_ids: &img_ids,
        txt: &txt,
        txt_ids: &txt_ids,
        timesteps: &t,
        y: &y,
        guidance: Some(&guidance),
    };
    println!(
        "bench_mid: {:.1}M params, tokens {} target + {} context + {} text = {}, f32, {threads} threads, {}",
        params as f64 / 1e6,
        g * g,
        g * g,
        args.txt,
        2 * g * g + args.txt,
        if args.no_cpu_kernels {
            "candle ops only"
        } else {
            "fused CPU kernels"
        }
    );
    if threads != 2 {
        println!("note: the reference numbers use 2 threads; set RAYON_NUM_THREADS=2");
    }

    let started = Instant::now();
    let warm = model.forward(&inp)?;
    let checksum = warm.sqr()?.sum_all()?.to_scalar::<f32>()?;
    println!(
        "warm-up {:.3} s (output sum of squares {checksum:.4})",
        started.elapsed().as_secs_f64()
    );

    profile::set_enabled(!args.no_breakdown);
    let mut totals = Vec::with_capacity(args.runs);
    let mut parts = Vec::with_capacity(args.runs);
    let mut cpu_times = Vec::with_capacity(args.runs);
    for i in 0..args.runs {
        profile::reset();
        let cpu0 = process_cpu_time();
        let started = Instant::now();
        let out = model.forward(&inp)?;
        let elapsed = started.elapsed();
        let cpu = match (cpu0, process_cpu_time()) {
            (Some(a), Some(b)) => b.saturating_sub(a),
            _ => Duration::ZERO,
        };
        cpu_times.push(cpu);
        drop(out);
        let (a, m, e) = profile::snapshot();
        println!(
            "run {i}: {:.3} s, cpu {:.2} s (attention {:.3}, matmul {:.3}, elementwise {:.3})",
            elapsed.as_secs_f64(),
            cpu.as_secs_f64(),
            a.as_secs_f64(),
            m.as_secs_f64(),
            e.as_secs_f64()
        );
        totals.push(elapsed);
        parts.push((a, m, e, elapsed.saturating_sub(a + m + e)));
    }
    let mut sorted = totals.clone();
    let med = median(&mut sorted);
    let spread = (sorted[0], sorted[sorted.len() - 1]);
    let pick = |f: fn(&(Duration, Duration, Duration, Duration)) -> Duration| {
        let mut v: Vec<_> = parts.iter().map(f).collect();
        median(&mut v).as_secs_f64()
    };
    println!(
        "candle_mid_forward_median_s={:.3} (min {:.3}, max {:.3}, runs {})",
        med.as_secs_f64(),
        spread.0.as_secs_f64(),
        spread.1.as_secs_f64(),
        args.runs
    );
    let cpu_med = median(&mut cpu_times).as_secs_f64();
    println!(
        "cpu time per forward (median) {cpu_med:.2} s = {:.3} s per thread; wall above {:.0}% of that means other load",
        cpu_med / threads as f64,
        100.0 * med.as_secs_f64() / (cpu_med / threads as f64).max(1e-9)
    );
    if !args.no_breakdown {
        println!(
            "breakdown (median per class): attention {:.3} s, matmul {:.3} s, elementwise {:.3} s, other {:.3} s",
            pick(|p| p.0),
            pick(|p| p.1),
            pick(|p| p.2),
            pick(|p| p.3)
        );
    }
    Ok(())
}
