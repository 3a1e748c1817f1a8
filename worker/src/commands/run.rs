//! `kontext-worker run`: one generation or edit without a queue, with a progress bar and per-stage
//! timings.
//!
//! Sizes follow `kontext_proto::resolution`: an input image is snapped to the nearest preferred
//! Kontext resolution by default (`--resize keep` keeps its aspect ratio, floored to multiples of
//! 16 under `--max-pixels`), and the target defaults to the context size. Without an image the
//! target defaults to 1024×1024. For `--model tiny` the defaults are small so a CPU run takes
//! seconds: the context is kept at its aspect ratio under 256×256 pixels (unless `--resize` is
//! given) and text-to-image defaults to 256×256.

use std::io::Write;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use candle_core::{DType, Device};
use kontext_engine::pipeline::{DEFAULT_MAX_PIXELS, EngineOptions, KontextEngine, MAX_STEPS};
use kontext_engine::weights::ModelDir;
use kontext_engine::{Context, Engine, EngineRequest, References, StageTimings, StepControl, tiny};
use kontext_proto::resolution::{self, SIDE_MULTIPLE};

use kontext_worker::config::LinearPrecisionArg;

/// Area cap of the tiny model's default sizes.
const TINY_DEFAULT_PIXELS: u64 = 256 * 256;

#[derive(Debug, Clone, Copy, clap::ValueEnum)]
pub enum ResizeArg {
    /// Nearest of the 17 preferred Kontext resolutions (BFL).
    Snap,
    /// The input's own aspect ratio, floored to multiples of 16 under --max-pixels.
    Keep,
}

#[derive(Debug, Clone, Copy, clap::ValueEnum)]
pub enum DtypeArg {
    F32,
    Bf16,
}

/// Arguments of `kontext-worker run`.
#[derive(Debug, clap::Args)]
pub struct RunArgs {
    /// `tiny` (the deterministic toy model, written to a cache dir on first use) or a model
    /// directory (BFL single files or diffusers folders).
    #[arg(long, env = "KONTEXT_MODEL")]
    model: String,
    /// The instruction (edit) or description (text-to-image).
    #[arg(long, env = "KONTEXT_PROMPT")]
    prompt: String,
    /// Image to edit; omit for text-to-image.
    #[arg(long, env = "KONTEXT_IMAGE")]
    image: Option<PathBuf>,
    /// Target width in pixels (multiple of 16); defaults to the context width (or 1024, tiny 256).
    #[arg(long, env = "KONTEXT_WIDTH")]
    width: Option<u32>,
    /// Target height in pixels (multiple of 16); defaults to the context height (or 1024, tiny 256).
    #[arg(long, env = "KONTEXT_HEIGHT")]
    height: Option<u32>,
    /// How the input image is sized (default: snap; tiny: keep under 256×256 pixels).
    #[arg(long, env = "KONTEXT_RESIZE", value_enum)]
    resize: Option<ResizeArg>,
    /// Denoising steps.
    #[arg(long, env = "KONTEXT_STEPS", default_value_t = 30)]
    steps: u32,
    /// Guidance strength fed to the guidance embedding (BFL default 2.5).
    #[arg(long, env = "KONTEXT_GUIDANCE", default_value_t = 2.5)]
    guidance: f32,
    /// Noise seed; a random one is drawn (and printed) when omitted.
    #[arg(long, env = "KONTEXT_SEED")]
    seed: Option<u64>,
    /// `cpu`, `cuda` or `cuda:N` (CUDA needs a build with `--features cuda`).
    #[arg(long, env = "KONTEXT_DEVICE", default_value = "cpu")]
    device: String,
    /// Compute dtype; default f32 on CPU, bf16 on CUDA.
    #[arg(long, env = "KONTEXT_DTYPE", value_enum)]
    dtype: Option<DtypeArg>,
    /// `fp8`: the transformer blocks' linear weights in FP8 E4M3 (docs/engine.md §FP8 linears).
    #[arg(long, env = "KONTEXT_LINEAR_PRECISION", value_enum, default_value_t)]
    linear_precision: LinearPrecisionArg,
    /// Largest target/context area in pixels.
    #[arg(long, env = "KONTEXT_MAX_PIXELS", default_value_t = DEFAULT_MAX_PIXELS)]
    max_pixels: u64,
    /// Weights seed of `--model tiny`.
    #[arg(long, env = "KONTEXT_TINY_SEED", default_value_t = 0)]
    tiny_seed: u64,
    /// Output PNG.
    #[arg(long, env = "KONTEXT_OUT")]
    out: PathBuf,
}

fn parse_device(s: &str) -> anyhow::Result<Device> {
    match s {
        "cpu" => Ok(Device::Cpu),
        "cuda" => Device::new_cuda(0).context("--device cuda"),
        _ => match s.strip_prefix("cuda:").map(str::parse::<usize>) {
            Some(Ok(n)) => Device::new_cuda(n).with_context(|| format!("--device {s}")),
            _ => bail!("--device {s:?} is not one of cpu, cuda, cuda:N"),
        },
    }
}

fn check_side(flag: &str, v: u32, max_pixels: u64) -> anyhow::Result<()> {
    if v == 0 || !v.is_multiple_of(SIDE_MULTIPLE) {
        bail!("{flag} {v} must be a positive multiple of {SIDE_MULTIPLE}");
    }
    if u64::from(v) * u64::from(SIDE_MULTIPLE) > max_pixels {
        bail!("{flag} {v} cannot fit under --max-pixels {max_pixels}");
    }
    Ok(())
}

/// Prints `[#####.....] 3/10` on stderr, redrawn in place.
fn draw_progress(done: u32, total: u32, started: Instant) {
    const WIDTH: u32 = 30;
    let filled = (done * WIDTH).checked_div(total).unwrap_or(WIDTH);
    let bar: String = (0..WIDTH)
        .map(|i| if i < filled { '#' } else { '.' })
        .collect();
    let mut err = std::io::stderr().lock();
    let _ = write!(
        err,
        "\r  denoise [{bar}] {done}/{total} {:.1}s",
        started.elapsed().as_secs_f64()
    );
    if done == total {
        let _ = writeln!(err);
    }
    let _ = err.flush();
}

fn print_timings(t: &StageTimings, load: Duration, total: Duration) {
    let per_step = if t.steps.is_empty() {
        Duration::ZERO
    } else {
        t.denoise / u32::try_from(t.steps.len()).unwrap_or(u32::MAX)
    };
    eprintln!("timings:");
    eprintln!("  load            {:>9.3} s", load.as_secs_f64());
    eprintln!("  text encode     {:>9.3} s", t.text.as_secs_f64());
    eprintln!(
        "  context encode  {:>9.3} s",
        t.context_encode.as_secs_f64()
    );
    eprintln!(
        "  denoise         {:>9.3} s ({} steps, {:.3} s/step)",
        t.denoise.as_secs_f64(),
        t.steps.len(),
        per_step.as_secs_f64()
    );
    eprintln!("  decode          {:>9.3} s", t.decode.as_secs_f64());
    eprintln!("  total           {:>9.3} s", total.as_secs_f64());
}

pub fn run(args: RunArgs) -> anyhow::Result<()> {
    let started = Instant::now();
    let is_tiny = args.model == "tiny";
    if args.steps == 0 || args.steps > MAX_STEPS {
        bail!("--steps {} must be between 1 and {MAX_STEPS}", args.steps);
    }
    if !args.guidance.is_finite() || !(0.0..=100.0).contains(&args.guidance) {
        bail!("--guidance {} must be between 0 and 100", args.guidance);
    }
    if args.width.is_some() != args.height.is_some() {
        bail!("--width and --height must be given together");
    }
    if let (Some(w), Some(h)) = (args.width, args.height) {
        check_side("--width", w, args.max_pixels)?;
        check_side("--height", h, args.max_pixels)?;
        let area = u64::from(w) * u64::from(h);
        if area > args.max_pixels {
            bail!(
                "--width {w} × --height {h} = {area} pixels exceeds --max-pixels {}",
                args.max_pixels
            );
        }
    }
    let device = parse_device(&args.device)?;
    let dtype = match (args.dtype, &device) {
        (Some(DtypeArg::F32), _) | (None, Device::Cpu) => DType::F32,
        (Some(DtypeArg::Bf16), _) | (None, _) => DType::BF16,
    };

    // The input image is read before the (slow) model load so a bad path fails fast.
    let context_image = match &args.image {
        Some(path) => Some(
            image::open(path)
                .with_context(|| format!("--image {}: cannot read the image", path.display()))?
                .to_rgb8(),
        ),
        None => None,
    };
    let context = context_image.map(|img| {
        let (iw, ih) = img.dimensions();
        let (w, h) = match (args.resize, is_tiny) {
            (Some(ResizeArg::Snap), _) | (None, false) => resolution::snap_to_preferred(iw, ih),
            (Some(ResizeArg::Keep), false) => resolution::keep_aspect(iw, ih, args.max_pixels),
            (Some(ResizeArg::Keep), true) | (None, true) => {
                resolution::keep_aspect(iw, ih, TINY_DEFAULT_PIXELS.min(args.max_pixels))
            }
        };
        eprintln!("context: {iw}x{ih} → {w}x{h}");
        Context::Image {
            image: img,
            width: w,
            height: h,
            cache_key: None,
        }
    });
    let (width, height) = match (args.width, args.height, &context) {
        (Some(w), Some(h), _) => (w, h),
        (_, _, Some(Context::Image { width, height, .. })) => (*width, *height),
        _ if is_tiny => (256, 256),
        _ => (1024, 1024),
    };
    let seed = args.seed.unwrap_or_else(rand::random);

    let model_dir = if is_tiny {
        tiny::ensure_cached(args.tiny_seed).context("--model tiny: writing the tiny model cache")?
    } else {
        PathBuf::from(&args.model)
    };
    let dir =
        ModelDir::open(&model_dir).with_context(|| format!("--model {}", model_dir.display()))?;
    let opts = EngineOptions {
        dtype,
        vae_dtype: DType::F32,
        device,
        max_pixels: args.max_pixels,
        linear_precision: args.linear_precision.into(),
    };
    let mut engine = KontextEngine::load(&dir, &args.model, opts).context("loading the model")?;
    let load = started.elapsed();
    let info = engine.info();
    eprintln!(
        "model {} on {} ({}); target {width}x{height}, {} steps, guidance {}, seed {seed}",
        info.model, info.device, info.dtype, args.steps, args.guidance
    );

    let req = EngineRequest {
        prompt: args.prompt.clone(),
        references: References::from_option(context),
        width,
        height,
        steps: args.steps,
        guidance: args.guidance,
        seed,
        initial_latents: None,
        want_latent: false,
        caching: kontext_engine::flux::StepCaching::Off,
        loras: Vec::new(),
    };
    let mut denoise_started: Option<Instant> = None;
    let out = engine
        .generate(&req, &mut |done, total| {
            draw_progress(
                done,
                total,
                *denoise_started.get_or_insert_with(Instant::now),
            );
            StepControl::Continue
        })
        .context("generation failed")?;
    out.image
        .save(&args.out)
        .with_context(|| format!("--out {}: cannot write the PNG", args.out.display()))?;
    print_timings(&out.timings, load, started.elapsed());
    println!("seed {} → {}", out.seed, args.out.display());
    Ok(())
}
