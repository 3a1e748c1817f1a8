//! FP8 linears (flux/linear.rs) through the real pipeline on the CPU, where FP8 is the
//! quantize → dequantize emulation: the same edit with native (f32) and FP8 E4M3 block linears on
//! the tiny model (random weights) and on the trained shapes model. The final latents must differ
//! (the rounding is real) but stay within a bounded relative error, the decoded images within a
//! bounded PSNR, and the block weights must take a quarter of f32's bytes (plus one f32 scale per
//! output channel). The figures are printed (`--nocapture`); docs/engine.md §FP8 linears quotes them.

use std::path::Path;

use anyhow::Result;
use kontext_engine::flux::{LinearPrecision, StepCaching};
use kontext_engine::pipeline::{EngineOptions, KontextEngine};
use kontext_engine::weights::{Layout, ModelDir};
use kontext_engine::{Context, Engine, EngineOutput, EngineRequest, References, StepControl};

fn edit(e: &mut KontextEngine, side: u32, prompt: &str, steps: u32) -> Result<EngineOutput> {
    let req = EngineRequest {
        prompt: prompt.into(),
        references: References::one(Context::Image {
            image: image::RgbImage::from_fn(side, side, |x, y| {
                let inside = (x as i64 - i64::from(side) / 2).pow(2)
                    + (y as i64 - i64::from(side) / 2).pow(2)
                    < i64::from(side * side / 9);
                if inside {
                    image::Rgb([220, 40, 40])
                } else {
                    image::Rgb([240, 240, 240])
                }
            }),
            width: side,
            height: side,
            cache_key: None,
        }),
        width: side,
        height: side,
        steps,
        guidance: 2.5,
        seed: 7,
        initial_latents: None,
        want_latent: true,
        caching: StepCaching::Off,
        loras: Vec::new(),
    };
    Ok(e.generate(&req, &mut |_, _| StepControl::Continue)?)
}

/// ‖a − b‖ / ‖b‖ over the packed final latents.
fn rel_l2(a: &EngineOutput, b: &EngineOutput) -> f32 {
    let (a, b) = (
        a.packed_latent.as_ref().expect("latent"),
        b.packed_latent.as_ref().expect("latent"),
    );
    let num: f32 = a.iter().zip(b).map(|(x, y)| (x - y) * (x - y)).sum();
    let den: f32 = b.iter().map(|y| y * y).sum();
    (num / den).sqrt()
}

fn psnr(a: &image::RgbImage, b: &image::RgbImage) -> f64 {
    let mse = a
        .as_raw()
        .iter()
        .zip(b.as_raw())
        .map(|(x, y)| (f64::from(*x) - f64::from(*y)).powi(2))
        .sum::<f64>()
        / a.as_raw().len() as f64;
    if mse == 0.0 {
        f64::INFINITY
    } else {
        10.0 * (255.0f64 * 255.0 / mse).log10()
    }
}

struct Comparison {
    rel_latent: f32,
    psnr_db: f64,
    bytes_ratio: f64,
}

fn compare(dir: &Path, side: u32, prompt: &str, steps: u32) -> Result<Comparison> {
    let dir = ModelDir::open(dir)?;
    let mut native = KontextEngine::load(&dir, "native", EngineOptions::cpu())?;
    let mut fp8 = KontextEngine::load(
        &dir,
        "fp8",
        EngineOptions {
            linear_precision: LinearPrecision::Fp8,
            ..EngineOptions::cpu()
        },
    )?;
    assert_eq!(fp8.info().linear_precision, "fp8");
    assert_eq!(native.info().linear_precision, "native");
    let reference = edit(&mut native, side, prompt, steps)?;
    let quantized = edit(&mut fp8, side, prompt, steps)?;
    Ok(Comparison {
        rel_latent: rel_l2(&quantized, &reference),
        psnr_db: psnr(&quantized.image, &reference.image),
        bytes_ratio: fp8.flux().block_linear_bytes() as f64
            / native.flux().block_linear_bytes() as f64,
    })
}

#[test]
fn fp8_linears_on_the_tiny_model_stay_within_bounds() -> Result<()> {
    let dir = tempfile::tempdir()?;
    kontext_engine::tiny::write(dir.path(), 0, Layout::Diffusers)?;
    let c = compare(dir.path(), 64, "make the circle blue", 12)?;
    println!(
        "tiny, 64x64 edit, 12 steps: FP8 vs f32 final latents rel L2 {:.4}, image PSNR {:.1} dB, \
         block linear bytes {:.3}x",
        c.rel_latent, c.psnr_db, c.bytes_ratio
    );
    assert!(
        c.rel_latent > 1e-4,
        "FP8 rounding must show: {}",
        c.rel_latent
    );
    assert!(c.rel_latent < 0.05, "relative error {}", c.rel_latent);
    // One byte per weight instead of four, plus one f32 scale per output row: the tiny model's
    // rows are 32–128 wide, so the scales and biases weigh a few percent.
    assert!(
        c.bytes_ratio > 0.25 && c.bytes_ratio < 0.32,
        "{}",
        c.bytes_ratio
    );
    Ok(())
}

#[test]
fn fp8_linears_on_the_shapes_model_stay_within_bounds() -> Result<()> {
    let dir = kontext_engine::loader::shapes_dir();
    let c = compare(&dir, 96, "make the red circle blue", 12)?;
    println!(
        "shapes, 96x96 edit, 12 steps: FP8 vs f32 final latents rel L2 {:.4}, image PSNR {:.1} \
         dB, block linear bytes {:.3}x",
        c.rel_latent, c.psnr_db, c.bytes_ratio
    );
    assert!(
        c.rel_latent > 1e-4,
        "FP8 rounding must show: {}",
        c.rel_latent
    );
    // Measured 0.053 (PSNR 42.5 dB): E4M3 keeps 3 mantissa bits, ~3 % per rounded operand.
    assert!(c.rel_latent < 0.1, "relative error {}", c.rel_latent);
    assert!(c.psnr_db > 35.0, "PSNR {} dB", c.psnr_db);
    assert!(
        c.bytes_ratio > 0.25 && c.bytes_ratio < 0.27,
        "{}",
        c.bytes_ratio
    );
    Ok(())
}
