//! LoRA files the engine must refuse or read in a particular way (engine/src/lora): every refusal
//! is a typed error naming the key, nothing half-applied stays on the model, text-encoder parts
//! are listed as skipped, kohya's embedder modules (which diffusers 0.42.1 drops) are applied, and
//! a runtime LoRA equals merging `W + s·(alpha/r)·up·down` into the weight.

use std::collections::HashMap;
use std::sync::Arc;

use anyhow::Result;
use candle_core::{DType, Device, Tensor};
use candle_nn::VarBuilder;
use kontext_engine::config::FluxConfig;
use kontext_engine::flux::sampling::relative_l2;
use kontext_engine::flux::{Flux, FluxInputs};
use kontext_engine::lora::{
    LORA_CACHE_BYTES, LoraError, LoraInput, LoraState, MAX_LORAS, adapters,
};

fn tiny_weights(seed: u64) -> Result<HashMap<String, Tensor>> {
    let dir = tempfile::tempdir()?;
    kontext_engine::tiny::write(dir.path(), seed, kontext_engine::weights::Layout::Bfl)?;
    let md = kontext_engine::weights::ModelDir::open(dir.path())?;
    let mut out = HashMap::new();
    for (name, _) in kontext_engine::weights::keys::transformer_tensors(&FluxConfig::tiny()) {
        let t = md.transformer_tensor(&name, DType::F32, &Device::Cpu)?;
        out.insert(name, t);
    }
    Ok(out)
}

fn flux(weights: &HashMap<String, Tensor>) -> Result<Flux> {
    let vb = VarBuilder::from_tensors(weights.clone(), DType::F32, &Device::Cpu);
    Ok(Flux::new(&FluxConfig::tiny(), vb)?)
}

fn file(
    tensors: &[(&str, Tensor)],
    metadata: Option<HashMap<String, String>>,
) -> Result<Arc<[u8]>> {
    let bytes = safetensors::serialize(tensors.iter().map(|(k, v)| (k.to_string(), v)), metadata)?;
    Ok(Arc::from(bytes))
}

fn input(id: &str, bytes: Arc<[u8]>, scale: f64) -> LoraInput {
    LoraInput {
        id: id.into(),
        bytes,
        scale,
    }
}

/// Deterministic pseudo-random values (`0.3·sin(k·(seed + 0.37))`): candle's CPU RNG cannot
/// be seeded.
fn randn(shape: (usize, usize), seed: u64) -> Result<Tensor> {
    det(&[shape.0, shape.1], seed, 0.3)
}

fn det(shape: &[usize], seed: u64, amplitude: f64) -> Result<Tensor> {
    let n: usize = shape.iter().product();
    let k = Tensor::arange(1u32, n as u32 + 1, &Device::Cpu)?.to_dtype(DType::F32)?;
    Ok(((k * (seed as f64 + 0.37))?.sin()? * amplitude)?.reshape(shape)?)
}

fn forward(f: &Flux) -> Result<Tensor> {
    let dev = Device::Cpu;
    let img = det(&[1, 16, 64], 1, 1.0)?;
    let txt = det(&[1, 8, 32], 2, 1.0)?;
    let y = det(&[1, 32], 3, 1.0)?;
    let img_ids = Tensor::zeros((1, 16, 3), DType::F32, &dev)?;
    let txt_ids = Tensor::zeros((1, 8, 3), DType::F32, &dev)?;
    let t = Tensor::new(&[0.7f32], &dev)?;
    let g = Tensor::new(&[2.5f32], &dev)?;
    Ok(f.forward(&FluxInputs {
        img: &img,
        img_ids: &img_ids,
        txt: &txt,
        txt_ids: &txt_ids,
        timesteps: &t,
        y: &y,
        guidance: Some(&g),
    })?)
}

fn apply_err(state: &mut LoraState, f: &mut Flux, loras: &[LoraInput]) -> (usize, LoraError) {
    match state.apply(f, loras) {
        Ok(_) => panic!(
            "applying {:?} must fail",
            loras.iter().map(|l| &l.id).collect::<Vec<_>>()
        ),
        Err(e) => e,
    }
}

#[test]
fn merge_and_runtime_addition_equal_weights_merged_by_hand_including_kohya_embedders() -> Result<()>
{
    let weights = tiny_weights(3)?;
    let mut f = flux(&weights)?;
    let mut state = LoraState::new(f.config(), Device::Cpu, LORA_CACHE_BYTES);
    let plain = forward(&f)?;
    let (rank, alpha, scale) = (4usize, 2.0f64, 0.8f64);
    let mut tensors = Vec::new();
    let mut merged = weights.clone();
    for (i, (kohya, bfl, out_dim, in_dim)) in [
        ("lora_unet_img_in", "img_in", 32, 64),
        ("lora_unet_time_in_in_layer", "time_in.in_layer", 32, 256),
        (
            "lora_unet_double_blocks_0_img_attn_qkv",
            "double_blocks.0.img_attn.qkv",
            96,
            32,
        ),
        (
            "lora_unet_single_blocks_1_linear1",
            "single_blocks.1.linear1",
            224,
            32,
        ),
    ]
    .into_iter()
    .enumerate()
    {
        let down = randn((rank, in_dim), 10 + i as u64)?;
        let up = randn((out_dim, rank), 20 + i as u64)?;
        let delta = (up.matmul(&down)? * (scale * alpha / rank as f64))?; // (out, in)
        let key = format!("{bfl}.weight");
        merged.insert(key.clone(), (&weights[&key] + delta)?);
        tensors.push((format!("{kohya}.lora_down.weight"), down));
        tensors.push((format!("{kohya}.lora_up.weight"), up));
        tensors.push((
            format!("{kohya}.alpha"),
            Tensor::new(alpha as f32, &Device::Cpu)?,
        ));
    }
    // A text-encoder module: listed as skipped, not an error.
    tensors.push((
        "lora_te1_text_model_encoder_layers_0_mlp_fc1.lora_down.weight".into(),
        randn((rank, 8), 30)?,
    ));
    let named: Vec<(&str, Tensor)> = tensors
        .iter()
        .map(|(k, v)| (k.as_str(), v.clone()))
        .collect();
    let applied = state
        .apply(&mut f, &[input("k", file(&named, None)?, scale)])
        .map_err(|(_, e)| e)?;
    assert_eq!(applied[0].layers, 4);
    assert_eq!(applied[0].skipped_text_encoder_modules, 1);
    let merged_layers = f
        .named_linears_mut()
        .into_iter()
        .filter(|(_, l)| l.is_merged())
        .count();
    assert_eq!(merged_layers, 4, "f32 weights get the LoRA merged");
    let with_lora = forward(&f)?;
    let want = forward(&flux(&merged)?)?;
    let err = relative_l2(&with_lora, &want)?;
    assert!(
        err < 1e-5,
        "engine's merge vs weights merged by hand: {err:.3e}"
    );
    assert!(
        relative_l2(&plain, &want)? > 1e-2,
        "the LoRA must move the output"
    );
    state.clear(&mut f)?;
    assert_eq!(
        forward(&f)?.to_vec3::<f32>()?,
        plain.to_vec3::<f32>()?,
        "the restore is exact"
    );
    // The runtime addition (what FP8 weights get) computes the same.
    let file = state.file(&input("k", file(&named, None)?, scale))?;
    let mut layers = adapters(&[(file.as_ref(), scale)], DType::F32)?;
    for (name, linear) in f.named_linears_mut() {
        linear.set_adapter(layers.remove(&name));
    }
    let err = relative_l2(&forward(&f)?, &want)?;
    assert!(err < 1e-5, "runtime addition vs merged weights: {err:.3e}");
    for (_, linear) in f.named_linears_mut() {
        linear.set_adapter(None);
    }
    assert_eq!(forward(&f)?.to_vec3::<f32>()?, plain.to_vec3::<f32>()?);
    Ok(())
}

/// Whether an error is the one a case expects.
type Expected = fn(&LoraError) -> bool;

#[test]
fn bad_files_are_refused_by_name_and_leave_the_model_plain() -> Result<()> {
    let weights = tiny_weights(3)?;
    let mut f = flux(&weights)?;
    let plain = forward(&f)?;
    let mut state = LoraState::new(f.config(), Device::Cpu, LORA_CACHE_BYTES);
    let good = file(
        &[
            (
                "double_blocks.0.img_attn.proj.lora_A.weight",
                randn((2, 32), 1)?,
            ),
            (
                "double_blocks.0.img_attn.proj.lora_B.weight",
                randn((32, 2), 2)?,
            ),
        ],
        None,
    )?;
    state
        .apply(&mut f, &[input("good", good.clone(), 1.0)])
        .map_err(|(_, e)| e)?;
    assert_ne!(forward(&f)?.to_vec3::<f32>()?, plain.to_vec3::<f32>()?);

    let cases: Vec<(&str, Arc<[u8]>, Expected)> = vec![
        ("garbage", Arc::from(&b"not a safetensors file"[..]), |e| {
            matches!(e, LoraError::NotSafetensors { .. })
        }),
        (
            "unknown",
            file(
                &[
                    (
                        "double_blocks.7.img_attn.proj.lora_A.weight",
                        randn((2, 32), 1)?,
                    ),
                    (
                        "double_blocks.7.img_attn.proj.lora_B.weight",
                        randn((32, 2), 2)?,
                    ),
                ],
                None,
            )?,
            |e| matches!(e, LoraError::UnknownModule { module } if module == "double_blocks.7.img_attn.proj"),
        ),
        (
            "half",
            file(&[("img_in.lora_A.weight", randn((2, 64), 1)?)], None)?,
            |e| matches!(e, LoraError::Incomplete { module, .. } if module == "img_in"),
        ),
        (
            "shape",
            file(
                &[
                    ("img_in.lora_A.weight", randn((2, 63), 1)?),
                    ("img_in.lora_B.weight", randn((32, 2), 2)?),
                ],
                None,
            )?,
            |e| matches!(e, LoraError::Shape { key, .. } if key == "img_in.lora_A.weight"),
        ),
        (
            "dora",
            file(
                &[
                    ("img_in.lora_A.weight", randn((2, 64), 1)?),
                    ("img_in.lora_B.weight", randn((32, 2), 2)?),
                    ("img_in.lora_magnitude_vector", randn((1, 32), 3)?),
                ],
                None,
            )?,
            |e| matches!(e, LoraError::Unsupported { key, .. } if key == "img_in.lora_magnitude_vector"),
        ),
        (
            "text-only",
            file(
                &[(
                    "lora_te1_text_model_encoder_layers_0_mlp_fc1.lora_down.weight",
                    randn((2, 8), 1)?,
                )],
                None,
            )?,
            |e| matches!(e, LoraError::Empty { skipped: 1 }),
        ),
        (
            "bad-metadata",
            file(
                &[
                    ("img_in.lora_A.weight", randn((2, 64), 1)?),
                    ("img_in.lora_B.weight", randn((32, 2), 2)?),
                ],
                Some(HashMap::from([(
                    "lora_adapter_metadata".into(),
                    "{".into(),
                )])),
            )?,
            |e| matches!(e, LoraError::Metadata { .. }),
        ),
    ];
    for (id, bytes, is_expected) in cases {
        let (index, err) = apply_err(
            &mut state,
            &mut f,
            &[input("good", good.clone(), 1.0), input(id, bytes, 1.0)],
        );
        assert_eq!(index, 1, "{id}: the error names the second LoRA");
        assert!(is_expected(&err), "{id}: unexpected error {err}");
        assert_eq!(
            forward(&f)?.to_vec3::<f32>()?,
            plain.to_vec3::<f32>()?,
            "{id}: a refused request leaves no LoRA applied"
        );
        state
            .apply(&mut f, &[input("good", good.clone(), 1.0)])
            .map_err(|(_, e)| e)?;
    }
    let (_, err) = apply_err(&mut state, &mut f, &[input("good", good.clone(), 9.0)]);
    assert!(matches!(err, LoraError::Scale { .. }), "{err}");
    let many = vec![input("good", good, 1.0); MAX_LORAS + 1];
    let (_, err) = apply_err(&mut state, &mut f, &many);
    assert!(
        matches!(err, LoraError::TooMany { count } if count == MAX_LORAS + 1),
        "{err}"
    );
    Ok(())
}
