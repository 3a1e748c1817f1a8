//! FP8 (E4M3) single-file checkpoints, the layouts ComfyUI users download: the tiny transformer
//! written plain-cast and per-tensor scaled (`scale_weight`, the `scaled_fp8` marker), with and
//! without the `model.diffusion_model.` prefix (tiny/fp8_files.rs). Each passes `check-weights`
//! with nothing unexpected, loads through the same `ModelDir` path, and gives an edit within a
//! bounded relative error of the f32 model with the same seed; the figures are printed
//! (`--nocapture`) and quoted in the README.

use anyhow::Result;
use kontext_engine::flux::{LinearPrecision, StepCaching};
use kontext_engine::pipeline::{EngineOptions, KontextEngine};
use kontext_engine::tiny::fp8_files::{Fp8Style, write_fp8};
use kontext_engine::weights::check::check_dir;
use kontext_engine::weights::{Layout, ModelDir};
use kontext_engine::{Context, Engine, EngineRequest, References, StepControl, tiny};

fn edit(dir: &std::path::Path, precision: LinearPrecision) -> Result<Vec<f32>> {
    let opts = EngineOptions {
        linear_precision: precision,
        ..EngineOptions::cpu()
    };
    let mut e = KontextEngine::load(&ModelDir::open(dir)?, "tiny", opts)?;
    let req = EngineRequest {
        prompt: "make the cat red".into(),
        references: References::one(Context::Image {
            image: image::RgbImage::from_fn(64, 48, |x, y| {
                image::Rgb([(x * 4) as u8, (y * 5) as u8, ((x + y) % 2 * 255) as u8])
            }),
            width: 64,
            height: 48,
            cache_key: None,
        }),
        width: 64,
        height: 48,
        steps: 8,
        guidance: 2.5,
        seed: 3,
        initial_latents: None,
        want_latent: true,
        caching: StepCaching::Off,
        loras: Vec::new(),
    };
    let out = e.generate(&req, &mut |_, _| StepControl::Continue)?;
    Ok(out.packed_latent.unwrap_or_default())
}

fn rel_l2(a: &[f32], b: &[f32]) -> f32 {
    let num: f32 = a.iter().zip(b).map(|(x, y)| (x - y) * (x - y)).sum();
    let den: f32 = b.iter().map(|y| y * y).sum();
    (num / den).sqrt()
}

#[test]
fn fp8_single_files_check_load_and_stay_close_to_f32() -> Result<()> {
    let reference_dir = tempfile::tempdir()?;
    tiny::write(reference_dir.path(), 0, Layout::Bfl)?;
    let reference = edit(reference_dir.path(), LinearPrecision::Native)?;
    let mut errors = Vec::new();
    for (style, prefix) in [
        (Fp8Style::Plain, ""),
        (Fp8Style::Plain, "model.diffusion_model."),
        (Fp8Style::Scaled, ""),
        (Fp8Style::Scaled, "model.diffusion_model."),
    ] {
        let dir = tempfile::tempdir()?;
        write_fp8(dir.path(), 0, style, prefix)?;
        let report = check_dir(dir.path());
        assert!(report.is_ok(), "{style:?} {prefix:?}\n{report}");
        let t = report.component("transformer").expect("transformer");
        assert!(t.unexpected.is_empty(), "{style:?}: {:?}", t.unexpected);
        assert!(t.dtypes.contains_key("F8_E4M3"), "{report}");
        let upcast = rel_l2(&edit(dir.path(), LinearPrecision::Native)?, &reference);
        let requantized = rel_l2(&edit(dir.path(), LinearPrecision::Fp8)?, &reference);
        println!(
            "{style:?} prefix {prefix:?}: final latents rel L2 vs f32 {upcast:.4} upcast, \
             {requantized:.4} with --linear-precision fp8"
        );
        assert!(upcast > 1e-4, "{style:?}: the FP8 rounding must show");
        errors.push((style, upcast, requantized));
    }
    for (style, upcast, requantized) in errors {
        // Measured 0.015 (scaled) and 0.019 (plain: the weights below 2^-6 fall into E4M3's
        // subnormals); requantizing for --linear-precision fp8 rounds twice: 0.023 / 0.028.
        assert!(upcast < 0.05, "{style:?}: {upcast}");
        assert!(requantized < 0.08, "{style:?}: {requantized}");
    }
    Ok(())
}

#[test]
fn a_scale_of_the_wrong_size_is_refused_by_name() -> Result<()> {
    let dir = tempfile::tempdir()?;
    write_fp8(dir.path(), 0, Fp8Style::Scaled, "")?;
    // Rewrite one scale with three values (neither per tensor nor per row).
    let path = dir
        .path()
        .join(kontext_engine::weights::BFL_TRANSFORMER_FILE);
    let mut tensors = candle_core::safetensors::load(&path, &candle_core::Device::Cpu)?;
    let key = "double_blocks.0.img_attn.qkv.scale_weight";
    assert!(tensors.contains_key(key));
    tensors.insert(
        key.into(),
        candle_core::Tensor::new(&[1f32, 1.0, 1.0], &candle_core::Device::Cpu)?,
    );
    candle_core::safetensors::save(&tensors, &path)?;
    let report = check_dir(dir.path());
    let text = report.to_string();
    assert!(
        !report.is_ok() && text.contains(key) && text.contains("[3]"),
        "{text}"
    );
    Ok(())
}
