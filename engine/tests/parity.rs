//! Parity of the Rust engine with the diffusers float32 reference (docs/engine.md §Parity): every
//! stage within relative L2 error 1e-4 on the same weights and inputs.
//!
//! The fixtures are `KONTEXT_PARITY_DIR`, or both committed ones (written by
//! `tests/parity/make_fixtures.py`): `tests/parity/fixtures/default/` (the tiny model, regenerated
//! from the fixture's seed in a temp dir in BOTH layouts) and `tests/parity/fixtures/shapes/` (the
//! trained weights in `models/shapes`, diffusers layout). Either way the model files must hash to
//! what the fixture was made with. This file covers the sampler and the transformer (engine-model); the text encoders,
//! resize and VAE stages are in `parity_io.rs` (engine-io). A missing fixture dir fails loudly.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use candle_core::{DType, Device, Tensor};
use kontext_engine::flux::sampling::{
    self, Conditioning, ContextTokens, denoise_flux, pack, position_ids, relative_l2, unpack,
};
use kontext_engine::flux::{Flux, FluxInputs};
use kontext_engine::weights::{Layout, ModelDir};
use kontext_engine::{References, StepControl, tiny};
use sha2::{Digest, Sha256};

const TOL: f32 = 1e-4;

fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn fixture_dirs() -> Vec<PathBuf> {
    match std::env::var_os("KONTEXT_PARITY_DIR") {
        Some(d) => vec![PathBuf::from(d)],
        None => ["default", "shapes"]
            .iter()
            .map(|name| repo_root().join("tests/parity/fixtures").join(name))
            .collect(),
    }
}

struct Fixture {
    dir: PathBuf,
    /// The fixture directory's name, prefixed to every stage printed.
    name: String,
    meta: serde_json::Value,
    edit: HashMap<String, Tensor>,
    generate: HashMap<String, Tensor>,
}

impl Fixture {
    /// Every fixture (a missing one fails loudly).
    fn all() -> Result<Vec<Self>> {
        fixture_dirs().into_iter().map(Self::load).collect()
    }

    fn load(dir: PathBuf) -> Result<Self> {
        let meta_path = dir.join("meta.json");
        let text = std::fs::read_to_string(&meta_path).with_context(|| {
            format!(
                "parity fixture {} is missing: generate it with tests/parity/make_fixtures.py \
                 or point KONTEXT_PARITY_DIR at one",
                meta_path.display()
            )
        })?;
        let load = |name: &str| {
            candle_core::safetensors::load(dir.join(name), &Device::Cpu)
                .with_context(|| format!("reading {}", dir.join(name).display()))
        };
        Ok(Self {
            name: dir
                .file_name()
                .map_or_else(|| "fixture".into(), |n| n.to_string_lossy().into_owned()),
            meta: serde_json::from_str(&text)?,
            edit: load("edit.safetensors")?,
            generate: load("generate.safetensors")?,
            dir,
        })
    }

    fn u64(&self, key: &str) -> Result<u64> {
        self.meta[key]
            .as_u64()
            .with_context(|| format!("meta.json {key}"))
    }

    fn f32(&self, key: &str) -> Result<f32> {
        Ok(self.meta[key]
            .as_f64()
            .with_context(|| format!("meta.json {key}"))? as f32)
    }

    fn steps(&self) -> Result<usize> {
        Ok(usize::try_from(self.u64("steps")?)?)
    }

    /// (width, height) in pixels.
    fn size(&self) -> Result<(usize, usize)> {
        Ok((
            usize::try_from(self.u64("width")?)?,
            usize::try_from(self.u64("height")?)?,
        ))
    }
}

fn get<'a>(t: &'a HashMap<String, Tensor>, name: &str) -> Result<&'a Tensor> {
    t.get(name)
        .with_context(|| format!("fixture tensor {name} missing"))
}

fn check(stage: &str, got: &Tensor, want: &Tensor) -> Result<f32> {
    if got.dims() != want.dims() {
        bail!("{stage}: shape {:?}, fixture {:?}", got.dims(), want.dims());
    }
    let err = relative_l2(got, want)?;
    println!("parity {stage}: rel L2 {err:.3e}");
    if err.is_nan() || err > TOL {
        bail!("{stage}: relative L2 error {err:.3e} exceeds {TOL:.0e}");
    }
    Ok(err)
}

/// A guard keeping temporary model dirs alive, and (name, dir) per layout.
type FixtureModels = (Option<tempfile::TempDir>, Vec<(String, PathBuf)>);

/// The model directories of a fixture, by layout name, with a guard keeping temp dirs alive:
/// the committed directory `meta.model.dir` names (the shapes model), or else the tiny model
/// regenerated from the fixture's seed in both layouts. The diffusers files must match
/// meta.json's hashes.
fn fixture_models(fx: &Fixture) -> Result<FixtureModels> {
    if let Some(rel) = fx.meta["model"]["dir"].as_str() {
        let dir = repo_root().join(rel);
        check_hashes(fx, &dir)?;
        return Ok((None, vec![(format!("{} diffusers", fx.name), dir)]));
    }
    let seed = fx.meta["seed"].as_u64().context("meta.json seed")?;
    let tmp = tempfile::tempdir()?;
    let diffusers = tmp.path().join("diffusers");
    let bfl = tmp.path().join("bfl");
    tiny::write(&diffusers, seed, Layout::Diffusers)?;
    tiny::write(&bfl, seed, Layout::Bfl)?;
    check_hashes(fx, &diffusers)?;
    Ok((
        Some(tmp),
        vec![
            (format!("{} diffusers", fx.name), diffusers),
            (format!("{} bfl", fx.name), bfl),
        ],
    ))
}

fn check_hashes(fx: &Fixture, diffusers: &Path) -> Result<()> {
    let files = fx.meta["model"]["files"]
        .as_object()
        .context("meta.json model.files")?;
    if files.is_empty() {
        bail!("meta.json model.files is empty");
    }
    for (rel, info) in files {
        let want = info["sha256"].as_str().context("sha256")?;
        let bytes = std::fs::read(diffusers.join(rel))
            .with_context(|| format!("regenerated model lacks {rel}"))?;
        let got = hex::encode(Sha256::digest(&bytes));
        if got != want {
            bail!(
                "model file {rel} has sha256 {got}, the fixture {} was made with {want}",
                fx.name
            );
        }
    }
    Ok(())
}

fn load_flux(dir: &Path) -> Result<Flux> {
    let md = ModelDir::open(dir)?;
    Ok(Flux::new(
        md.flux_config(),
        md.transformer_vb(DType::F32, &Device::Cpu),
    )?)
}

/// Fixture ids are `(N, 3)` (diffusers); the model takes `(1, N, 3)`.
fn batched(t: &Tensor) -> Result<Tensor> {
    Ok(if t.rank() == 2 {
        t.unsqueeze(0)?
    } else {
        t.clone()
    })
}

#[test]
fn schedule_ids_and_packing_match() -> Result<()> {
    for fx in Fixture::all()? {
        schedule_ids_and_packing_match_in(&fx)?;
    }
    Ok(())
}

fn schedule_ids_and_packing_match_in(fx: &Fixture) -> Result<()> {
    let (w, h) = fx.size()?;
    let (rows, cols) = (h / 16, w / 16);
    for (name, set) in [("edit", &fx.edit), ("generate", &fx.generate)] {
        let sigmas = get(set, "sigmas")?;
        let ours = Tensor::new(sampling::schedule(fx.steps()?, rows * cols), &Device::Cpu)?;
        check(&format!("{} {name} schedule", fx.name), &ours, sigmas)?;
        let ids = position_ids(1, rows, cols, 0.0, &Device::Cpu)?;
        check(
            &format!("{} {name} target ids", fx.name),
            &ids,
            &batched(get(set, "target_ids")?)?,
        )?;
        let noise = get(set, "initial_latents_unpacked")?;
        check(
            &format!("{} {name} pack noise", fx.name),
            &pack(noise)?,
            get(set, "initial_latents_packed")?,
        )?;
        let fin = get(set, "final_latents_packed")?;
        check(
            &format!("{} {name} unpack final", fx.name),
            &unpack(fin, h / 8, w / 8)?,
            get(set, "final_latents_unpacked")?,
        )?;
    }
    let ctx = get(&fx.edit, "context_latents_unpacked")?;
    check(
        &format!("{} context pack", fx.name),
        &pack(ctx)?,
        get(&fx.edit, "context_latents_packed")?,
    )?;
    let ids = position_ids(1, rows, cols, 1.0, &Device::Cpu)?;
    check(
        &format!("{} context ids", fx.name),
        &ids,
        &batched(get(&fx.edit, "context_ids")?)?,
    )?;
    Ok(())
}

#[test]
fn transformer_first_step_matches_in_both_layouts() -> Result<()> {
    for fx in Fixture::all()? {
        transformer_first_step_matches_in(&fx)?;
    }
    Ok(())
}

fn transformer_first_step_matches_in(fx: &Fixture) -> Result<()> {
    let (_tmp, models) = fixture_models(fx)?;
    for (layout, dir) in &models {
        let model = load_flux(dir)?;
        for (name, set) in [("edit", &fx.edit), ("generate", &fx.generate)] {
            let img_ids = batched(get(set, "step0_img_ids")?)?;
            let txt_ids = batched(get(set, "step0_txt_ids")?)?;
            let inp = FluxInputs {
                img: get(set, "step0_hidden_states")?,
                img_ids: &img_ids,
                txt: get(set, "step0_encoder_hidden_states")?,
                txt_ids: &txt_ids,
                timesteps: get(set, "step0_timestep")?,
                y: get(set, "step0_pooled_projections")?,
                guidance: Some(get(set, "step0_guidance")?),
            };
            let v = model.forward(&inp)?;
            check(
                &format!("{layout} {name} step-0 velocity"),
                &v,
                get(set, "step0_velocity_full")?,
            )?;
        }
    }
    Ok(())
}

/// The whole Euler loop from the fixture's text embeddings, context latents and initial noise:
/// every intermediate latent and the final one.
#[test]
fn denoising_loop_matches_every_step() -> Result<()> {
    for fx in Fixture::all()? {
        denoising_loop_matches_in(&fx)?;
    }
    Ok(())
}

fn denoising_loop_matches_in(fx: &Fixture) -> Result<()> {
    let (_tmp, models) = fixture_models(fx)?;
    let model = load_flux(&models[0].1)?;
    let (w, h) = fx.size()?;
    let (rows, cols) = (h / 16, w / 16);
    let steps = fx.steps()?;
    for (name, set) in [("edit", &fx.edit), ("generate", &fx.generate)] {
        let context = match set.get("context_latents_packed") {
            Some(tokens) => Some(ContextTokens {
                tokens: tokens.clone(),
                ids: position_ids(1, rows, cols, 1.0, &Device::Cpu)?,
            }),
            None => None,
        };
        if name == "edit" && context.is_none() {
            bail!("edit fixture has no context_latents_packed");
        }
        let cond = Conditioning {
            txt: get(set, "t5_embeds")?.clone(),
            y: get(set, "clip_pooled")?.clone(),
            target_ids: position_ids(1, rows, cols, 0.0, &Device::Cpu)?,
            context,
            guidance: fx.f32("guidance")?,
        };
        let timesteps = sampling::schedule(steps, rows * cols);
        // Run step by step so every intermediate latent is checked.
        let mut x = get(set, "initial_latents_packed")?.clone();
        for i in 0..steps {
            x = denoise_flux(&model, &cond, x, &timesteps[i..i + 2], &mut |_, _| {
                StepControl::Continue
            })?;
            check(
                &format!("{} {name} latents after step {i}", fx.name),
                &x,
                get(set, &format!("latents_step{i}"))?,
            )?;
        }
        check(
            &format!("{} {name} final latents", fx.name),
            &x,
            get(set, "final_latents_packed")?,
        )?;
        // And in one call, as the engine runs it.
        let whole = denoise_flux(
            &model,
            &cond,
            get(set, "initial_latents_packed")?.clone(),
            &timesteps,
            &mut |_, _| StepControl::Continue,
        )?;
        check(
            &format!("{} {name} final latents (one loop)", fx.name),
            &whole,
            get(set, "final_latents_packed")?,
        )?;
    }
    Ok(())
}

/// The same forward through the plain candle compositions (the path CUDA and bf16 take).
#[test]
fn transformer_first_step_matches_without_cpu_kernels() -> Result<()> {
    use kontext_engine::flux::ops::cpu;
    for fx in Fixture::all()? {
        let (_tmp, models) = fixture_models(&fx)?;
        let model = load_flux(&models[0].1)?;
        let set = &fx.edit;
        let img_ids = batched(get(set, "step0_img_ids")?)?;
        let txt_ids = batched(get(set, "step0_txt_ids")?)?;
        let inp = FluxInputs {
            img: get(set, "step0_hidden_states")?,
            img_ids: &img_ids,
            txt: get(set, "step0_encoder_hidden_states")?,
            txt_ids: &txt_ids,
            timesteps: get(set, "step0_timestep")?,
            y: get(set, "step0_pooled_projections")?,
            guidance: Some(get(set, "step0_guidance")?),
        };
        // Other tests in this binary may run meanwhile; they are correct on either path.
        cpu::set_enabled(false);
        let v = model.forward(&inp);
        cpu::set_enabled(true);
        check(
            &format!("{} generic-ops edit step-0 velocity", fx.name),
            &v?,
            get(set, "step0_velocity_full")?,
        )?;
    }
    Ok(())
}

/// End to end through `KontextEngine` (text encoders, Lanczos resize, VAE encode, denoise, VAE
/// decode) with the fixture's initial latents: the final packed latent within 1e-4 and the PNG
/// bytes equal to diffusers' output up to rounding at the .5 boundary (at most 1 off, in at most
/// 1 % of the bytes).
#[test]
fn engine_end_to_end_matches_in_both_layouts() -> Result<()> {
    for fx in Fixture::all()? {
        engine_end_to_end_matches_in(&fx)?;
    }
    Ok(())
}

fn engine_end_to_end_matches_in(fx: &Fixture) -> Result<()> {
    use kontext_engine::pipeline::{EngineOptions, KontextEngine};
    use kontext_engine::{Context, Engine, EngineRequest};
    let (_tmp, models) = fixture_models(fx)?;
    let (w, h) = fx.size()?;
    let input = image::open(fx.dir.join("input.png"))?.to_rgb8();
    for (layout, dir) in &models {
        let mut engine =
            KontextEngine::load(&ModelDir::open(dir)?, &fx.name, EngineOptions::cpu())?;
        for (name, set) in [("edit", &fx.edit), ("generate", &fx.generate)] {
            let context = (name == "edit").then(|| Context::Image {
                image: input.clone(),
                width: w as u32,
                height: h as u32,
                cache_key: None,
            });
            let req = EngineRequest {
                prompt: fx.meta["prompt"]
                    .as_str()
                    .context("meta.json prompt")?
                    .to_string(),
                references: References::from_option(context),
                width: w as u32,
                height: h as u32,
                steps: u32::try_from(fx.steps()?)?,
                guidance: fx.f32("guidance")?,
                seed: 0,
                initial_latents: Some(
                    get(set, "initial_latents_packed")?
                        .flatten_all()?
                        .to_vec1::<f32>()?,
                ),
                want_latent: true,
                caching: kontext_engine::flux::StepCaching::Off,
                loras: Vec::new(),
            };
            let out = engine.generate(&req, &mut |_, _| StepControl::Continue)?;
            let lat = out.packed_latent.context("want_latent")?;
            let want = get(set, "final_latents_packed")?;
            let got = Tensor::from_vec(lat, want.dims(), &Device::Cpu)?;
            check(&format!("{layout} {name} engine final latent"), &got, want)?;
            let png = image::open(fx.dir.join(format!("{name}_output.png")))?.to_rgb8();
            assert_eq!(png.dimensions(), out.image.dimensions());
            let (mut differ, mut worst) = (0usize, 0u8);
            for (a, b) in out.image.as_raw().iter().zip(png.as_raw()) {
                if a != b {
                    differ += 1;
                    worst = worst.max(a.abs_diff(*b));
                }
            }
            println!(
                "parity {layout} {name} output PNG: {differ} of {} bytes differ, max by {worst}",
                png.as_raw().len()
            );
            // Off-by-one bytes are rounding at the .5 boundary. Noise images (tiny) put them on
            // a handful of bytes; the shapes model paints flat colours, so one value near a
            // boundary repeats over many pixels: allow 1 % of the bytes, never more than 1 off.
            if worst > 1 || differ * 100 > png.as_raw().len() {
                bail!("{layout} {name}: output PNG differs in {differ} bytes (max {worst})");
            }
        }
    }
    Ok(())
}
