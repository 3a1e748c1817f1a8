//! LoRA parity with diffusers (docs/loras.md): the committed files in
//! `tests/parity/fixtures/lora/` (PEFT with `lora_adapter_metadata`, kohya with `.alpha`, XLabs;
//! written by `tests/parity/make_lora_fixtures.py`) applied to the default fixture's tiny model
//! must give diffusers' transformer output (`load_lora_weights` + `set_adapters`) within relative
//! L2 1e-4 in f32, for each file alone and for all three at once with mixed scales — in both
//! checkpoint layouts. The same files applied to FP8 block linears stay close to the f32 result.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{Context, Result, bail};
use candle_core::{DType, Device, Tensor};
use kontext_engine::flux::sampling::relative_l2;
use kontext_engine::flux::{Flux, FluxInputs, LinearPrecision};
use kontext_engine::lora::{LORA_CACHE_BYTES, LoraFormat, LoraInput, LoraState};
use kontext_engine::tiny;
use kontext_engine::weights::{Layout, ModelDir};

const TOL: f32 = 1e-4;

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/parity/fixtures")
}

struct Setup {
    _tmp: tempfile::TempDir,
    models: Vec<(Layout, PathBuf)>,
    inputs: HashMap<String, Tensor>,
    outputs: HashMap<String, Tensor>,
    meta: serde_json::Value,
}

fn setup() -> Result<Setup> {
    let meta: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(fixtures().join("lora/meta.json")).context(
            "tests/parity/fixtures/lora/meta.json is missing: run tests/parity/make_lora_fixtures.py",
        )?)?;
    let seed = meta["model_seed"]
        .as_u64()
        .context("meta.json model_seed")?;
    let tmp = tempfile::tempdir()?;
    let mut models = Vec::new();
    for layout in [Layout::Diffusers, Layout::Bfl] {
        let dir = tmp.path().join(format!("{layout:?}"));
        tiny::write(&dir, seed, layout)?;
        models.push((layout, dir));
    }
    Ok(Setup {
        _tmp: tmp,
        models,
        inputs: candle_core::safetensors::load(
            fixtures().join("default/edit.safetensors"),
            &Device::Cpu,
        )?,
        outputs: candle_core::safetensors::load(
            fixtures().join("lora/outputs.safetensors"),
            &Device::Cpu,
        )?,
        meta,
    })
}

fn load(dir: &Path, precision: LinearPrecision) -> Result<Flux> {
    let md = ModelDir::open(dir)?;
    Ok(Flux::with_linear_precision(
        md.flux_config(),
        md.transformer_vb(DType::F32, &Device::Cpu),
        precision,
    )?)
}

fn lora(name: &str, scale: f64) -> Result<LoraInput> {
    let path = fixtures().join(format!("lora/{name}.safetensors"));
    let bytes = std::fs::read(&path).with_context(|| format!("reading {}", path.display()))?;
    Ok(LoraInput {
        id: name.to_string(),
        bytes: Arc::from(bytes),
        scale,
    })
}

fn velocity(flux: &Flux, t: &HashMap<String, Tensor>) -> Result<Tensor> {
    let get = |k: &str| t.get(k).with_context(|| format!("fixture tensor {k}"));
    let img_ids = get("step0_img_ids")?.unsqueeze(0)?; // (N, 3) -> (1, N, 3)
    let txt_ids = get("step0_txt_ids")?.unsqueeze(0)?; // (L, 3) -> (1, L, 3)
    Ok(flux.forward(&FluxInputs {
        img: get("step0_hidden_states")?,
        img_ids: &img_ids,
        txt: get("step0_encoder_hidden_states")?,
        txt_ids: &txt_ids,
        timesteps: get("step0_timestep")?,
        y: get("step0_pooled_projections")?,
        guidance: Some(get("step0_guidance")?),
    })?)
}

/// `(file name, scale)` of the LoRAs of one case.
type Case = Vec<(String, f64)>;

/// `(case, LoRAs)` of every recorded output.
fn cases(meta: &serde_json::Value) -> Result<Vec<(String, Case)>> {
    let weights = meta["weights"].as_object().context("meta.json weights")?;
    let mut cases = vec![("base".to_string(), Vec::new())];
    for name in weights.keys() {
        cases.push((name.clone(), vec![(name.clone(), 1.0)]));
    }
    let all = weights
        .iter()
        .map(|(k, v)| Ok((k.clone(), v.as_f64().context("weight")?)))
        .collect::<Result<Vec<_>>>()?;
    cases.push(("all".to_string(), all));
    Ok(cases)
}

#[test]
fn every_format_alone_and_together_matches_diffusers() -> Result<()> {
    let s = setup()?;
    for (layout, dir) in &s.models {
        let mut flux = load(dir, LinearPrecision::Native)?;
        let mut state = LoraState::new(flux.config(), Device::Cpu, LORA_CACHE_BYTES);
        // "base" last again: removing every LoRA must restore the plain model exactly.
        let mut all = cases(&s.meta)?;
        all.push(all[0].clone());
        for (case, loras) in all {
            let inputs = loras
                .iter()
                .map(|(n, w)| lora(n, *w))
                .collect::<Result<Vec<_>>>()?;
            let applied = state
                .apply(&mut flux, &inputs)
                .map_err(|(i, e)| anyhow::anyhow!("LoRA {i}: {e}"))?;
            let formats: Vec<LoraFormat> = applied.iter().map(|a| a.format).collect();
            let v = velocity(&flux, &s.inputs)?;
            let want = s
                .outputs
                .get(&format!("velocity_{case}"))
                .with_context(|| format!("velocity_{case} missing"))?;
            let err = relative_l2(&v, want)?;
            println!("lora parity {layout:?} {case} {formats:?}: rel L2 {err:.3e}");
            if err.is_nan() || err > TOL {
                bail!("{layout:?} {case}: relative L2 {err:.3e} exceeds {TOL:.0e}");
            }
        }
    }
    Ok(())
}

#[test]
fn formats_are_recognised_and_alpha_read() -> Result<()> {
    let s = setup()?;
    let (_, dir) = &s.models[0];
    let mut flux = load(dir, LinearPrecision::Native)?;
    let mut state = LoraState::new(flux.config(), Device::Cpu, LORA_CACHE_BYTES);
    let modules = &s.meta["modules"];
    for (name, format) in [
        ("peft", LoraFormat::Peft),
        ("kohya", LoraFormat::Kohya),
        ("xlabs", LoraFormat::XLabs),
    ] {
        let applied = state
            .apply(&mut flux, &[lora(name, 1.0)?])
            .map_err(|(_, e)| anyhow::anyhow!("{name}: {e}"))?;
        assert_eq!(applied[0].format, format, "{name}");
        assert_eq!(
            applied[0].layers as u64,
            modules[name].as_u64().context("modules")?,
            "{name}: one part per module in the file"
        );
    }
    Ok(())
}

/// FP8 block linears keep their quantized weights; the LoRA adds in the activation dtype. The
/// result must follow diffusers' f32 LoRA output about as closely as plain FP8 follows f32.
#[test]
fn loras_apply_to_fp8_linears() -> Result<()> {
    let s = setup()?;
    let (_, dir) = &s.models[0];
    let mut flux = load(dir, LinearPrecision::Fp8)?;
    let mut state = LoraState::new(flux.config(), Device::Cpu, LORA_CACHE_BYTES);
    let base_err = relative_l2(&velocity(&flux, &s.inputs)?, &s.outputs["velocity_base"])?;
    state
        .apply(&mut flux, &[lora("kohya", 1.0)?, lora("xlabs", 1.0)?])
        .map_err(|(i, e)| anyhow::anyhow!("LoRA {i}: {e}"))?;
    let with = velocity(&flux, &s.inputs)?;
    // The f32 reference of the same pair: diffusers' single outputs are each one LoRA, so
    // compare against the native engine instead, whose parity the test above checks.
    let (_, dir) = &s.models[0];
    let mut native = load(dir, LinearPrecision::Native)?;
    let mut native_state = LoraState::new(native.config(), Device::Cpu, LORA_CACHE_BYTES);
    native_state
        .apply(&mut native, &[lora("kohya", 1.0)?, lora("xlabs", 1.0)?])
        .map_err(|(i, e)| anyhow::anyhow!("LoRA {i}: {e}"))?;
    let err = relative_l2(&with, &velocity(&native, &s.inputs)?)?;
    println!("fp8 blocks: plain rel L2 {base_err:.3e}, with two LoRAs {err:.3e}");
    assert!(
        err < 1.5 * base_err,
        "FP8 + LoRA drifts {err:.3e} from f32 + LoRA, plain FP8 {base_err:.3e} from f32"
    );
    assert!(
        err > 0.0,
        "FP8 rounding is real, the outputs cannot be identical"
    );
    Ok(())
}
