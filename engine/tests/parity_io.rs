//! Parity of the engine-io stages against the diffusers fixtures (tests/parity/README.md):
//! resized input, context latents, T5 ids + embeddings, CLIP ids + hidden states + pooled
//! output, decoded image, output PNG (diffusers postprocess). Each stage runs on the fixture's
//! own inputs, so a failure points at one stage; every stage is checked with the model written
//! in BOTH layouts.
//!
//! Fixtures: `KONTEXT_PARITY_DIR`, or both committed ones: tests/parity/fixtures/default/ (the
//! tiny weights, regenerated from the fixture's seed in a temp dir in both layouts) and
//! tests/parity/fixtures/shapes/ (the trained models/shapes, diffusers layout). The weights'
//! sha256 are checked against meta.json, so a fixture made from other weights fails loudly.
//! Tolerance: relative L2 error ≤ 1e-4 in f32.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use anyhow::{Context, Result, bail, ensure};
use candle_core::{DType, Device, Tensor};
use kontext_engine::image_ops::{image_to_tensor, resize_lanczos, tensor_to_image};
use kontext_engine::text::TextEncoders;
use kontext_engine::tiny;
use kontext_engine::vae::AutoEncoder;
use kontext_engine::weights::{Layout, ModelDir};
use sha2::{Digest, Sha256};

const REL_L2_MAX: f64 = 1e-4;

struct Fixture {
    dir: PathBuf,
    /// The fixture directory's name (`default`, `shapes`), in error messages.
    name: String,
    meta: serde_json::Value,
    edit: HashMap<String, Tensor>,
    generate: HashMap<String, Tensor>,
    /// Model dirs by layout: the committed `meta.model.dir` (diffusers layout), or the tiny
    /// model regenerated in both layouts into `_tmp`.
    models: Vec<(Layout, PathBuf)>,
    _tmp: Option<tempfile::TempDir>,
}

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

fn load_fixture(dir: PathBuf) -> Result<Fixture> {
    ensure!(
        dir.join("meta.json").is_file(),
        "no parity fixture at {} (set KONTEXT_PARITY_DIR or generate it: tests/parity/README.md)",
        dir.display()
    );
    let meta: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("meta.json"))?)?;
    let load = |name: &str| {
        candle_core::safetensors::load(dir.join(name), &Device::Cpu)
            .with_context(|| format!("reading {name}"))
    };
    let (models, tmp) = match meta["model"]["dir"].as_str() {
        Some(rel) => (vec![(Layout::Diffusers, repo_root().join(rel))], None),
        None => {
            let seed = meta["seed"].as_u64().context("meta.json: seed")?;
            let tmp = tempfile::tempdir()?;
            let mut models = Vec::new();
            for (layout, sub) in [(Layout::Diffusers, "diffusers"), (Layout::Bfl, "bfl")] {
                let d = tmp.path().join(sub);
                tiny::write(&d, seed, layout)?;
                models.push((layout, d));
            }
            (models, Some(tmp))
        }
    };
    Ok(Fixture {
        name: dir
            .file_name()
            .map_or_else(|| "fixture".into(), |n| n.to_string_lossy().into_owned()),
        edit: load("edit.safetensors")?,
        generate: load("generate.safetensors")?,
        dir,
        meta,
        models,
        _tmp: tmp,
    })
}

fn fixtures() -> &'static [Fixture] {
    static F: OnceLock<Vec<Fixture>> = OnceLock::new();
    F.get_or_init(|| {
        fixture_dirs()
            .into_iter()
            .map(|d| load_fixture(d).expect("loading a parity fixture"))
            .collect()
    })
}

/// Runs `check` on every fixture; an error names the fixture.
fn each_fixture(check: impl Fn(&Fixture) -> Result<()>) -> Result<()> {
    for f in fixtures() {
        check(f).with_context(|| format!("parity fixture {}", f.name))?;
    }
    Ok(())
}

fn rel_l2(got: &Tensor, want: &Tensor) -> Result<f64> {
    ensure!(
        got.dims() == want.dims(),
        "shape {:?} vs fixture {:?}",
        got.dims(),
        want.dims()
    );
    let g = got.to_dtype(DType::F64)?.flatten_all()?;
    let w = want.to_dtype(DType::F64)?.flatten_all()?;
    let num = (&g - &w)?.sqr()?.sum_all()?.to_scalar::<f64>()?.sqrt();
    let den = w.sqr()?.sum_all()?.to_scalar::<f64>()?.sqrt();
    Ok(if den == 0.0 { num } else { num / den })
}

fn check(stage: &str, got: &Tensor, want: &Tensor) -> Result<()> {
    let e = rel_l2(got, want).with_context(|| stage.to_string())?;
    println!("{stage}: rel L2 {e:.3e}");
    if e > REL_L2_MAX {
        bail!("{stage}: relative L2 error {e:.3e} > {REL_L2_MAX:e}");
    }
    Ok(())
}

fn ids(t: &Tensor) -> Result<Vec<u32>> {
    Ok(t.flatten_all()?
        .to_dtype(DType::I64)?
        .to_vec1::<i64>()?
        .into_iter()
        .map(|v| v as u32)
        .collect())
}

fn sha256_tree(dir: &Path) -> Result<BTreeMap<String, String>> {
    let mut out = BTreeMap::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for entry in std::fs::read_dir(&d)? {
            let p = entry?.path();
            if p.is_dir() {
                stack.push(p);
            } else {
                let rel = p.strip_prefix(dir)?.to_string_lossy().replace('\\', "/");
                out.insert(rel, hex::encode(Sha256::digest(std::fs::read(&p)?)));
            }
        }
    }
    Ok(out)
}

fn models(f: &Fixture) -> impl Iterator<Item = (Layout, ModelDir)> + '_ {
    f.models
        .iter()
        .map(|(l, d)| (*l, ModelDir::open(d).expect("opening the fixture's model")))
}

#[test]
fn regenerated_weights_match_the_fixture_hashes() -> Result<()> {
    each_fixture(regenerated_weights_match_the_fixture_hashes_in)
}

fn regenerated_weights_match_the_fixture_hashes_in(f: &Fixture) -> Result<()> {
    let (_, diffusers) = f
        .models
        .iter()
        .find(|(l, _)| *l == Layout::Diffusers)
        .context("diffusers model")?;
    let got = sha256_tree(diffusers)?;
    let want: BTreeMap<String, String> = f.meta["model"]["files"]
        .as_object()
        .context("meta.json: model.files")?
        .iter()
        .map(|(k, v)| {
            (
                k.clone(),
                v["sha256"].as_str().unwrap_or_default().to_string(),
            )
        })
        .collect();
    ensure!(
        got == want,
        "the model files differ from the ones the fixture was made from:\n got {got:#?}\nwant {want:#?}"
    );
    Ok(())
}

#[test]
fn resized_input_matches_pil() -> Result<()> {
    each_fixture(resized_input_matches_pil_in)
}

fn resized_input_matches_pil_in(f: &Fixture) -> Result<()> {
    let input = f.meta["input_image"]["file"]
        .as_str()
        .context("meta.json: input_image.file")?;
    let img = image::open(f.dir.join(input))?.to_rgb8();
    let (w, h) = (
        f.meta["width"].as_u64().context("width")? as u32,
        f.meta["height"].as_u64().context("height")? as u32,
    );
    let resized = resize_lanczos(&img, w, h);
    let got = image_to_tensor(&resized, &Device::Cpu)?;
    let want = &f.edit["image_preprocessed"];
    check("resized input", &got, want)?;
    // PIL's resize is integer arithmetic: the bytes must agree exactly.
    let max = (&got - want)?
        .abs()?
        .flatten_all()?
        .max(0)?
        .to_scalar::<f32>()?;
    ensure!(max <= 1e-6, "resized input differs from PIL by {max}");
    Ok(())
}

#[test]
fn context_latents_match() -> Result<()> {
    each_fixture(context_latents_match_in)
}

fn context_latents_match_in(f: &Fixture) -> Result<()> {
    for (layout, m) in models(f) {
        let ae = AutoEncoder::new(m.vae_config(), m.vae_vb(DType::F32, &Device::Cpu))?;
        let z = ae.encode(&f.edit["image_preprocessed"])?;
        check(
            &format!("context latents ({layout:?})"),
            &z,
            &f.edit["context_latents_unpacked"],
        )?;
    }
    Ok(())
}

#[test]
fn text_embeddings_match() -> Result<()> {
    each_fixture(text_embeddings_match_in)
}

fn text_embeddings_match_in(f: &Fixture) -> Result<()> {
    let prompt = f.meta["prompt"].as_str().context("meta.json: prompt")?;
    for (layout, m) in models(f) {
        let mut enc = TextEncoders::load(&m, DType::F32, &Device::Cpu)?;
        for (name, tensors) in [("edit", &f.edit), ("generate", &f.generate)] {
            let t5_ids = enc.t5_ids(prompt)?;
            ensure!(
                t5_ids == ids(&tensors["t5_input_ids"])?,
                "{name}: T5 ids differ"
            );
            let clip_ids = enc.clip_ids(prompt)?;
            ensure!(
                clip_ids == ids(&tensors["clip_input_ids"])?,
                "{name}: CLIP ids differ"
            );
            check(
                &format!("{name} T5 embeddings ({layout:?})"),
                &enc.t5_embed(&t5_ids)?,
                &tensors["t5_embeds"],
            )?;
            let hidden = enc.clip_hidden(&clip_ids)?;
            check(
                &format!("{name} CLIP hidden ({layout:?})"),
                &hidden,
                &tensors["clip_last_hidden_state"],
            )?;
            check(
                &format!("{name} CLIP pooled ({layout:?})"),
                &enc.clip_pooled(&clip_ids)?,
                &tensors["clip_pooled"],
            )?;
            let (t5, pooled) = enc.encode(prompt)?;
            check(
                &format!("{name} encode() T5 ({layout:?})"),
                &t5,
                &tensors["t5_embeds"],
            )?;
            check(
                &format!("{name} encode() pooled ({layout:?})"),
                &pooled,
                &tensors["clip_pooled"],
            )?;
        }
    }
    Ok(())
}

#[test]
fn decoded_images_match() -> Result<()> {
    each_fixture(decoded_images_match_in)
}

fn decoded_images_match_in(f: &Fixture) -> Result<()> {
    for (layout, m) in models(f) {
        let ae = AutoEncoder::new(m.vae_config(), m.vae_vb(DType::F32, &Device::Cpu))?;
        for (name, tensors) in [("edit", &f.edit), ("generate", &f.generate)] {
            // decode() applies z/scale + shift itself to the final latents.
            let got = ae.decode(&tensors["final_latents_unpacked"])?;
            check(
                &format!("{name} decode ({layout:?})"),
                &got,
                &tensors["decoded_image"],
            )?;
        }
        if layout == Layout::Diffusers {
            // The decoder alone, on the fixture's own decoder input.
            let got = ae.decoder_forward(&f.edit["vae_decoder_input"])?;
            check(
                &format!("edit decoder ({layout:?})"),
                &got,
                &f.edit["decoded_image"],
            )?;
        }
    }
    Ok(())
}

#[test]
fn output_png_matches_diffusers_postprocess() -> Result<()> {
    each_fixture(output_png_matches_diffusers_postprocess_in)
}

fn output_png_matches_diffusers_postprocess_in(f: &Fixture) -> Result<()> {
    for (name, tensors) in [("edit", &f.edit), ("generate", &f.generate)] {
        let png = f.meta[name]["output_png"]
            .as_str()
            .with_context(|| format!("meta.json: {name}.output_png"))?;
        let want = image::open(f.dir.join(png))?.to_rgb8();
        let got = tensor_to_image(&tensors["decoded_image"])?;
        let differing = got
            .as_raw()
            .iter()
            .zip(want.as_raw())
            .filter(|(a, b)| a != b)
            .count();
        ensure!(
            got.dimensions() == want.dimensions(),
            "{name}: size differs"
        );
        ensure!(
            differing == 0,
            "{name}: {differing} bytes differ from diffusers' postprocess"
        );
    }
    Ok(())
}
