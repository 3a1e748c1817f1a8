//! The whole Kontext pipeline on the tiny model, loaded through `ModelDir` like real weights:
//! determinism per seed, text-to-image and edit paths, initial latents, cancellation between
//! steps, validation messages, and the engine thread driving the real engine.

use std::sync::Arc;
use std::sync::OnceLock;
use std::sync::atomic::{AtomicBool, Ordering};

use anyhow::Result;
use kontext_engine::noise::packed_noise;
use kontext_engine::pipeline::{EngineOptions, KontextEngine};
use kontext_engine::thread::{EngineThread, Health};
use kontext_engine::weights::{Layout, ModelDir};
use kontext_engine::{Context, Engine, EngineError, EngineRequest, References, StepControl, tiny};

/// One tiny model directory for the whole test binary.
fn model_dir() -> &'static std::path::Path {
    static DIR: OnceLock<tempfile::TempDir> = OnceLock::new();
    DIR.get_or_init(|| {
        let dir = tempfile::tempdir().expect("tempdir");
        tiny::write(dir.path(), 0, Layout::Diffusers).expect("writing the tiny model");
        dir
    })
    .path()
}

fn engine() -> Result<KontextEngine> {
    let dir = ModelDir::open(model_dir())?;
    Ok(KontextEngine::load(&dir, "tiny", EngineOptions::cpu())?)
}

fn context_image() -> image::RgbImage {
    image::RgbImage::from_fn(75, 53, |x, y| {
        image::Rgb([
            (x * 3) as u8,
            (y * 4) as u8,
            ((x / 8 + y / 8) % 2 * 255) as u8,
        ])
    })
}

fn request(seed: u64, with_context: bool) -> EngineRequest {
    EngineRequest {
        prompt: "make the cat red".into(),
        references: References::from_option(with_context.then(|| Context::Image {
            image: context_image(),
            width: 64,
            height: 48,
            cache_key: None,
        })),
        width: 64,
        height: 48,
        steps: 3,
        guidance: 2.5,
        seed,
        initial_latents: None,
        want_latent: true,
        caching: kontext_engine::flux::StepCaching::Off,
        loras: Vec::new(),
    }
}

fn go(
    e: &mut KontextEngine,
    req: &EngineRequest,
) -> Result<kontext_engine::EngineOutput, EngineError> {
    e.generate(req, &mut |_, _| StepControl::Continue)
}

#[test]
fn same_seed_same_image_and_different_seed_different_image() -> Result<()> {
    let mut e = engine()?;
    let a = go(&mut e, &request(7, true))?;
    let b = go(&mut e, &request(7, true))?;
    let c = go(&mut e, &request(8, true))?;
    assert_eq!(a.image.dimensions(), (64, 48));
    assert_eq!(a.seed, 7);
    assert_eq!(a.image, b.image, "same seed must give the same image");
    assert_eq!(a.packed_latent, b.packed_latent);
    assert_ne!(
        a.image, c.image,
        "a different seed must give a different image"
    );
    // Stage timings are filled: one duration per step.
    assert_eq!(a.timings.steps.len(), 3);
    assert!(a.timings.denoise >= a.timings.steps.iter().sum::<std::time::Duration>());
    Ok(())
}

#[test]
fn text_to_image_runs_and_differs_from_the_edit() -> Result<()> {
    let mut e = engine()?;
    let t2i = go(&mut e, &request(3, false))?;
    let edit = go(&mut e, &request(3, true))?;
    assert_eq!(t2i.image.dimensions(), (64, 48));
    let lat = t2i.packed_latent.as_ref().expect("want_latent");
    assert_eq!(lat.len(), 12 * 64);
    assert_ne!(
        t2i.packed_latent, edit.packed_latent,
        "the context must change the result"
    );
    Ok(())
}

#[test]
fn initial_latents_reproduce_the_seeded_run() -> Result<()> {
    let mut e = engine()?;
    let seeded = go(&mut e, &request(11, true))?;
    let noise = packed_noise(
        11,
        64,
        48,
        16,
        candle_core::DType::F32,
        &candle_core::Device::Cpu,
    )?;
    let mut req = request(999, true);
    req.initial_latents = Some(noise.flatten_all()?.to_vec1::<f32>()?);
    let given = go(&mut e, &req)?;
    assert_eq!(seeded.packed_latent, given.packed_latent);
    Ok(())
}

#[test]
fn packed_context_latent_equals_the_encoded_image() -> Result<()> {
    let mut e = engine()?;
    let tokens = e.encode_context(&context_image(), 64, 48)?;
    let mut req = request(5, true);
    let from_image = go(&mut e, &req)?;
    req.references = References::one(Context::PackedLatent {
        data: tokens.flatten_all()?.to_vec1::<f32>()?,
        width: 64,
        height: 48,
    });
    let from_latent = go(&mut e, &req)?;
    assert_eq!(from_image.packed_latent, from_latent.packed_latent);
    Ok(())
}

#[test]
fn cancellation_stops_between_steps() -> Result<()> {
    let mut e = engine()?;
    let mut req = request(1, true);
    req.steps = 10;
    let mut calls = Vec::new();
    let res = e.generate(&req, &mut |done, total| {
        calls.push((done, total));
        if done == 2 {
            StepControl::Cancel
        } else {
            StepControl::Continue
        }
    });
    assert!(matches!(res, Err(EngineError::Canceled)), "{:?}", res.err());
    assert_eq!(calls, vec![(0, 10), (1, 10), (2, 10)]);
    Ok(())
}

#[test]
fn bad_requests_name_the_field_and_the_limit() -> Result<()> {
    let mut e = engine()?;
    let mut req = request(1, false);
    req.width = 70;
    let err = go(&mut e, &req).expect_err("width 70");
    assert!(
        err.to_string().contains("width 70") && err.to_string().contains("multiple of 16"),
        "{err}"
    );
    let mut req = request(1, false);
    req.steps = 0;
    let err = go(&mut e, &req).expect_err("steps 0");
    assert!(err.to_string().contains("steps 0"), "{err}");
    let mut req = request(1, false);
    req.initial_latents = Some(vec![0.0; 5]);
    let err = go(&mut e, &req).expect_err("short latents");
    assert!(
        err.to_string().contains("initial_latents has 5 values"),
        "{err}"
    );
    let mut req = request(1, false);
    req.width = 4096;
    req.height = 4096;
    let err = go(&mut e, &req).expect_err("too large");
    assert!(err.to_string().contains("exceeds the limit"), "{err}");
    assert!(matches!(err, EngineError::InvalidInput(_)));
    Ok(())
}

#[tokio::test]
async fn engine_thread_runs_the_real_engine_with_progress_and_cancel() -> Result<()> {
    let thread = EngineThread::spawn(Box::new(engine()?), true)?;
    let h = thread.handle();
    let mut health = h.health();
    tokio::time::timeout(
        std::time::Duration::from_secs(120),
        health.wait_for(|s| *s == Health::Ready),
    )
    .await
    .expect("warm-up within 120 s")?;
    let (ptx, mut prx) = tokio::sync::mpsc::unbounded_channel();
    let out = h
        .generate(request(4, true), Some(ptx), Arc::default())
        .await?;
    assert_eq!(out.seed, 4);
    let mut dones = Vec::new();
    while let Ok(p) = prx.try_recv() {
        dones.push(p.done);
    }
    assert_eq!(dones, vec![0, 1, 2, 3]);

    // Cancel from the progress stream: stop as soon as step 1 is reported.
    let cancel = Arc::new(AtomicBool::new(false));
    let (ptx, mut prx) = tokio::sync::mpsc::unbounded_channel();
    let mut req = request(4, true);
    req.steps = 50;
    let job = tokio::spawn({
        let (h, cancel) = (h.clone(), Arc::clone(&cancel));
        async move { h.generate(req, Some(ptx), cancel).await }
    });
    while let Some(p) = tokio::time::timeout(std::time::Duration::from_secs(60), prx.recv()).await?
    {
        if p.done >= 1 {
            cancel.store(true, Ordering::SeqCst);
            break;
        }
    }
    let res = job.await?;
    assert!(matches!(res, Err(EngineError::Canceled)), "{:?}", res.err());
    let mut last = 1;
    while let Ok(p) = prx.try_recv() {
        last = last.max(p.done);
    }
    assert!(
        last < 50,
        "cancellation must stop before the end (last step {last})"
    );
    drop(h);
    thread.join();
    Ok(())
}

/// A LoRA per request (the committed kohya parity file, made for this seed-0 tiny model):
/// it changes the image, the output records it, a request without it gets the plain model's
/// image bit for bit, and a bad file is an input error naming the LoRA's index.
#[test]
fn loras_apply_per_request_and_leave_the_next_request_plain() -> Result<()> {
    let mut e = engine()?;
    let plain = go(&mut e, &request(7, true))?;
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../tests/parity/fixtures/lora/kohya.safetensors");
    let lora = kontext_engine::lora::LoraInput {
        id: "in/t/lora-kohya".into(),
        bytes: Arc::from(std::fs::read(path)?),
        scale: 0.8,
    };
    let mut req = request(7, true);
    req.loras = vec![lora.clone()];
    let styled = go(&mut e, &req)?;
    assert_ne!(styled.image, plain.image, "the LoRA must change the image");
    assert_eq!(styled.loras.len(), 1);
    assert_eq!(styled.loras[0].id, "in/t/lora-kohya");
    assert_eq!(styled.loras[0].format.as_str(), "kohya");
    assert_eq!(
        go(&mut e, &req)?.image,
        styled.image,
        "deterministic with a LoRA"
    );
    assert_eq!(go(&mut e, &request(7, true))?.image, plain.image);
    req.loras = vec![
        lora,
        kontext_engine::lora::LoraInput {
            id: "in/t/garbage".into(),
            bytes: Arc::from(&b"garbage"[..]),
            scale: 1.0,
        },
    ];
    match go(&mut e, &req) {
        Err(EngineError::Lora { index: 1, .. }) => {}
        other => panic!("a bad second LoRA must be EngineError::Lora at index 1, got {other:?}"),
    }
    assert_eq!(go(&mut e, &request(7, true))?.image, plain.image);
    Ok(())
}
