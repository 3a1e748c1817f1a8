//! Step caching on the tiny model through the real pipeline: `Off` and the first-block cache
//! with threshold 0 are the plain sampler bit for bit; the fixed schedule runs exactly the steps
//! it names; a first-block cache that always reuses runs one full step; every cached mode stays
//! within a bounded distance of the full run. The figures are printed.

use std::sync::OnceLock;

use anyhow::Result;
use kontext_engine::flux::{Acceleration, StepCaching};
use kontext_engine::pipeline::{EngineOptions, KontextEngine};
use kontext_engine::weights::{Layout, ModelDir};
use kontext_engine::{Context, Engine, EngineOutput, EngineRequest, References, StepControl, tiny};

fn model_dir() -> &'static std::path::Path {
    static DIR: OnceLock<tempfile::TempDir> = OnceLock::new();
    DIR.get_or_init(|| {
        let dir = tempfile::tempdir().expect("tempdir");
        tiny::write(dir.path(), 0, Layout::Diffusers).expect("writing the tiny model");
        dir
    })
    .path()
}

const STEPS: u32 = 12;

fn run(e: &mut KontextEngine, caching: StepCaching) -> Result<EngineOutput> {
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
        steps: STEPS,
        guidance: 2.5,
        seed: 5,
        initial_latents: None,
        want_latent: true,
        caching,
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

#[test]
fn cached_modes_skip_what_they_say_and_stay_close() -> Result<()> {
    let dir = ModelDir::open(model_dir())?;
    let mut e = KontextEngine::load(&dir, "tiny", EngineOptions::cpu())?;
    let full = run(&mut e, StepCaching::Off)?;
    assert_eq!(full.full_evaluations, STEPS);

    let fb0 = run(&mut e, StepCaching::FirstBlock { threshold: 0.0 })?;
    assert_eq!(fb0.full_evaluations, STEPS);
    assert_eq!(
        fb0.packed_latent, full.packed_latent,
        "threshold 0 never skips"
    );
    let fb_all = run(
        &mut e,
        StepCaching::FirstBlock {
            threshold: f32::INFINITY,
        },
    )?;
    assert_eq!(
        fb_all.full_evaluations, 1,
        "only the first step runs in full"
    );

    let fixed = run(&mut e, StepCaching::Fixed { every: 2 })?;
    // Steps 0, 2, 4, 6, 8, 10 and the last, 11: 7 of 12 (step 1 reuses step 0's velocity).
    assert_eq!(fixed.full_evaluations, 7);

    for (name, caching) in [
        ("regular", Acceleration::Regular.caching()),
        ("high", Acceleration::High.caching()),
    ] {
        let out = run(&mut e, caching)?;
        let err = rel_l2(&out, &full);
        println!(
            "acceleration {name}: {} of {STEPS} full evaluations, relative L2 to none {err:.4}",
            out.full_evaluations
        );
        assert!(out.full_evaluations <= STEPS);
        assert!(err.is_finite() && err < 0.5, "{name}: {err}");
    }
    let err = rel_l2(&fixed, &full);
    assert!(err > 0.0, "extrapolated steps change the result");
    assert_eq!(
        Acceleration::None.caching(),
        StepCaching::Off,
        "none is the plain sampler"
    );
    Ok(())
}
