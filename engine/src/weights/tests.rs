#![allow(clippy::unwrap_used)]

//! Both layouts of the tiny model load to the same canonical tensors; bad directories fail with
//! the file, key and shapes named.

use std::collections::HashMap;
use std::path::Path;

use candle_core::{DType, Device, Tensor};

use super::*;
use crate::tiny::{self, TinyWeights};

fn write_tiny(layout: Layout) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    tiny::write(dir.path(), 7, layout).unwrap();
    dir
}

fn bits(t: &Tensor) -> Vec<u32> {
    t.flatten_all()
        .unwrap()
        .to_vec1::<f32>()
        .unwrap()
        .into_iter()
        .map(f32::to_bits)
        .collect()
}

fn err_text(r: Result<ModelDir, EngineError>) -> String {
    match r {
        Ok(_) => panic!("expected an error"),
        Err(e) => e.to_string(),
    }
}

/// Canonical tiny tensors as candle tensors (for rewriting files in tests).
fn canonical_tensors(which: &str) -> HashMap<String, Tensor> {
    let w = TinyWeights::generate(7);
    let src = if which == "transformer" {
        w.transformer
    } else {
        w.vae
    };
    src.into_iter()
        .map(|(k, t)| (k, Tensor::from_vec(t.data, t.shape, &Device::Cpu).unwrap()))
        .collect()
}

fn save(path: &Path, tensors: &HashMap<String, Tensor>) {
    candle_core::safetensors::save(tensors, path).unwrap();
}

#[test]
fn both_layouts_give_bit_identical_canonical_tensors() {
    let bfl = write_tiny(Layout::Bfl);
    let diffusers = write_tiny(Layout::Diffusers);
    let a = ModelDir::open(bfl.path()).unwrap();
    let b = ModelDir::open(diffusers.path()).unwrap();
    assert_eq!(
        (a.transformer_layout(), a.vae_layout()),
        (Layout::Bfl, Layout::Bfl)
    );
    assert_eq!(
        (b.transformer_layout(), b.vae_layout()),
        (Layout::Diffusers, Layout::Diffusers)
    );
    assert_eq!(a.flux_config(), &FluxConfig::tiny());
    assert_eq!(b.flux_config(), &FluxConfig::tiny());
    assert_eq!(a.vae_config(), &VaeConfig::tiny());
    assert_eq!(b.vae_config(), &VaeConfig::tiny());

    let generated = TinyWeights::generate(7);
    let dev = Device::Cpu;
    for (name, shape) in keys::transformer_tensors(&FluxConfig::tiny()) {
        let x = a.transformer_tensor(&name, DType::F32, &dev).unwrap();
        let y = b.transformer_tensor(&name, DType::F32, &dev).unwrap();
        assert_eq!(x.dims(), shape.as_slice(), "{name}");
        assert_eq!(bits(&x), bits(&y), "{name} differs between layouts");
        let want: Vec<u32> = generated.transformer[&name]
            .data
            .iter()
            .map(|v| v.to_bits())
            .collect();
        assert_eq!(bits(&x), want, "{name} differs from the generated tensor");
    }
    for (name, shape) in keys::vae_tensors(&VaeConfig::tiny()) {
        let x = a.vae_tensor(&name, DType::F32, &dev).unwrap();
        let y = b.vae_tensor(&name, DType::F32, &dev).unwrap();
        assert_eq!(x.dims(), shape.as_slice(), "{name}");
        assert_eq!(bits(&x), bits(&y), "{name} differs between layouts");
    }
}

#[test]
fn var_builders_serve_canonical_names_and_check_shapes() {
    let dir = write_tiny(Layout::Diffusers);
    let m = ModelDir::open(dir.path()).unwrap();
    let vb = m.transformer_vb(DType::F32, &Device::Cpu);
    let qkv = vb
        .pp("double_blocks")
        .pp(0)
        .get((96, 32), "img_attn.qkv.weight")
        .unwrap();
    assert_eq!(qkv.dims(), &[96, 32]);
    let err = vb
        .pp("single_blocks.1")
        .get((224, 31), "linear1.weight")
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("single_blocks.1.linear1.weight")
            && err.contains("[224, 31]")
            && err.contains("[224, 32]"),
        "{err}"
    );
    assert!(vb.contains_tensor("final_layer.adaLN_modulation.1.bias"));
    assert!(!vb.contains_tensor("final_layer.adaLN_modulation.0.bias"));
    let vae = m.vae_vb(DType::F32, &Device::Cpu);
    let q = vae
        .get((64, 64, 1, 1), "decoder.mid.attn_1.q.weight")
        .unwrap();
    assert_eq!(q.dims(), &[64, 64, 1, 1]);
}

#[test]
fn norm_out_halves_are_swapped_from_diffusers() {
    let dir = write_tiny(Layout::Diffusers);
    let m = ModelDir::open(dir.path()).unwrap();
    let canonical = m
        .transformer_tensor(
            "final_layer.adaLN_modulation.1.weight",
            DType::F32,
            &Device::Cpu,
        )
        .unwrap();
    let files = TensorFiles::open_dir(
        &dir.path().join("transformer"),
        DIFFUSERS_WEIGHTS,
        DIFFUSERS_INDEX,
    )
    .unwrap();
    let stored = files
        .load("norm_out.linear.weight", "x", DType::F32, &Device::Cpu)
        .unwrap();
    // BFL row block 0 (shift) is diffusers row block 1.
    assert_eq!(
        bits(&canonical.narrow(0, 0, 32).unwrap()),
        bits(&stored.narrow(0, 32, 32).unwrap())
    );
    assert_eq!(
        bits(&canonical.narrow(0, 32, 32).unwrap()),
        bits(&stored.narrow(0, 0, 32).unwrap())
    );
}

#[test]
fn comfyui_prefix_is_stripped() {
    let dir = write_tiny(Layout::Bfl);
    let plain = canonical_tensors("transformer");
    let prefixed: HashMap<_, _> = plain
        .iter()
        .map(|(k, t)| (format!("{COMFY_PREFIX}{k}"), t.clone()))
        .collect();
    save(&dir.path().join(BFL_TRANSFORMER_FILE), &prefixed);
    let m = ModelDir::open(dir.path()).unwrap();
    assert_eq!(m.transformer_layout(), Layout::Bfl);
    assert_eq!(m.flux_config(), &FluxConfig::tiny());
    let t = m
        .transformer_tensor(
            "double_blocks.0.txt_attn.norm.key_norm.scale",
            DType::F32,
            &Device::Cpu,
        )
        .unwrap();
    assert_eq!(
        bits(&t),
        bits(&plain["double_blocks.0.txt_attn.norm.key_norm.scale"])
    );
}

#[test]
fn dtype_is_converted_on_load() {
    let dir = write_tiny(Layout::Bfl);
    let f32s = canonical_tensors("transformer");
    let bf16s: HashMap<_, _> = f32s
        .iter()
        .map(|(k, t)| (k.clone(), t.to_dtype(DType::BF16).unwrap()))
        .collect();
    save(&dir.path().join(BFL_TRANSFORMER_FILE), &bf16s);
    let m = ModelDir::open(dir.path()).unwrap();
    let name = "single_blocks.0.linear2.weight";
    let up = m
        .transformer_tensor(name, DType::F32, &Device::Cpu)
        .unwrap();
    assert_eq!(up.dtype(), DType::F32);
    assert_eq!(bits(&up), bits(&bf16s[name].to_dtype(DType::F32).unwrap()));

    // And an f32 file read as bf16.
    let dir = write_tiny(Layout::Diffusers);
    let m = ModelDir::open(dir.path()).unwrap();
    let down = m
        .transformer_tensor(name, DType::BF16, &Device::Cpu)
        .unwrap();
    assert_eq!(down.dtype(), DType::BF16);
    let want = f32s[name]
        .to_dtype(DType::BF16)
        .unwrap()
        .to_dtype(DType::F32)
        .unwrap();
    assert_eq!(bits(&down.to_dtype(DType::F32).unwrap()), bits(&want));
}

#[test]
fn missing_shard_names_the_file_and_directory() {
    let dir = write_tiny(Layout::Diffusers);
    let shard = "diffusion_pytorch_model-00002-of-00002.safetensors";
    std::fs::remove_file(dir.path().join("transformer").join(shard)).unwrap();
    let msg = err_text(ModelDir::open(dir.path()));
    let tdir = dir.path().join("transformer").display().to_string();
    assert!(msg.contains(shard) && msg.contains(&tdir), "{msg}");
}

#[test]
fn missing_key_names_the_key_the_canonical_name_and_the_file() {
    // BFL: the stored key is the canonical name.
    let dir = write_tiny(Layout::Bfl);
    let mut t = canonical_tensors("transformer");
    t.remove("double_blocks.0.txt_attn.norm.key_norm.scale");
    save(&dir.path().join(BFL_TRANSFORMER_FILE), &t);
    let msg = err_text(ModelDir::open(dir.path()));
    assert!(
        msg.contains("double_blocks.0.txt_attn.norm.key_norm.scale")
            && msg.contains(BFL_TRANSFORMER_FILE),
        "{msg}"
    );

    // diffusers: one piece of a fused tensor is missing.
    let dir = write_tiny(Layout::Diffusers);
    let tdir = dir.path().join("transformer");
    let files = TensorFiles::open_dir(&tdir, DIFFUSERS_WEIGHTS, DIFFUSERS_INDEX).unwrap();
    let mut all: HashMap<String, Tensor> = files
        .keys()
        .map(|k| {
            (
                k.to_string(),
                files.load(k, k, DType::F32, &Device::Cpu).unwrap(),
            )
        })
        .collect();
    drop(files);
    all.remove("transformer_blocks.0.attn.to_k.weight");
    for entry in std::fs::read_dir(&tdir).unwrap() {
        let p = entry.unwrap().path();
        if p.extension().is_some_and(|e| e == "safetensors")
            || p.to_string_lossy().ends_with(".index.json")
        {
            std::fs::remove_file(p).unwrap();
        }
    }
    save(&tdir.join(DIFFUSERS_WEIGHTS), &all);
    let msg = err_text(ModelDir::open(dir.path()));
    assert!(
        msg.contains("transformer_blocks.0.attn.to_k.weight")
            && msg.contains("double_blocks.0.img_attn.qkv.weight")
            && msg.contains(DIFFUSERS_WEIGHTS),
        "{msg}"
    );
}

#[test]
fn wrong_shape_names_expected_and_found() {
    let dir = write_tiny(Layout::Bfl);
    let mut t = canonical_tensors("transformer");
    t.insert(
        "double_blocks.0.img_mlp.2.weight".into(),
        Tensor::zeros((32, 127), DType::F32, &Device::Cpu).unwrap(),
    );
    save(&dir.path().join(BFL_TRANSFORMER_FILE), &t);
    let msg = err_text(ModelDir::open(dir.path()));
    assert!(
        msg.contains("double_blocks.0.img_mlp.2.weight")
            && msg.contains("expected [32, 128]")
            && msg.contains("found [32, 127]"),
        "{msg}"
    );

    let dir = write_tiny(Layout::Diffusers);
    let mut v = canonical_tensors("vae");
    v.clear();
    let vdir = dir.path().join("vae");
    let files = TensorFiles::open_dir(&vdir, DIFFUSERS_WEIGHTS, DIFFUSERS_INDEX).unwrap();
    for k in files.keys() {
        v.insert(
            k.to_string(),
            files.load(k, k, DType::F32, &Device::Cpu).unwrap(),
        );
    }
    drop(files);
    v.insert(
        "decoder.up_blocks.0.resnets.1.conv2.weight".into(),
        Tensor::zeros((64, 64, 1, 1), DType::F32, &Device::Cpu).unwrap(),
    );
    save(&vdir.join(DIFFUSERS_WEIGHTS), &v);
    let msg = err_text(ModelDir::open(dir.path()));
    assert!(
        msg.contains("decoder.up.3.block.1.conv2.weight")
            && msg.contains("decoder.up_blocks.0.resnets.1.conv2.weight")
            && msg.contains("expected [64, 64, 3, 3]")
            && msg.contains("found [64, 64, 1, 1]"),
        "{msg}"
    );
}

#[test]
fn missing_components_and_configs_are_named() {
    let empty = tempfile::tempdir().unwrap();
    let msg = err_text(ModelDir::open(empty.path()));
    assert!(
        msg.contains(BFL_TRANSFORMER_FILE) && msg.contains("transformer/"),
        "{msg}"
    );

    let dir = write_tiny(Layout::Diffusers);
    std::fs::remove_file(dir.path().join("transformer/config.json")).unwrap();
    let msg = err_text(ModelDir::open(dir.path()));
    assert!(
        msg.contains("config.json")
            && msg.contains(&dir.path().join("transformer").display().to_string()),
        "{msg}"
    );

    let dir = write_tiny(Layout::Bfl);
    std::fs::remove_file(dir.path().join(BFL_AE_FILE)).unwrap();
    let msg = err_text(ModelDir::open(dir.path()));
    assert!(msg.contains(BFL_AE_FILE) && msg.contains("vae/"), "{msg}");
}

#[test]
fn bfl_head_dim_other_than_128_needs_the_sidecar() {
    let dir = write_tiny(Layout::Bfl);
    std::fs::remove_file(dir.path().join(configs::SIDECAR)).unwrap();
    let msg = err_text(ModelDir::open(dir.path()));
    assert!(
        msg.contains(configs::SIDECAR) && msg.contains("head dim is 16"),
        "{msg}"
    );
}

#[test]
fn hf_model_folders_open_sharded_and_single() {
    let dir = write_tiny(Layout::Bfl);
    let m = ModelDir::open(dir.path()).unwrap();
    let (t5, config) = m.hf_model("text_encoder_2").unwrap();
    assert!(t5.contains("encoder.final_layer_norm.weight") && t5.contains("shared.weight"));
    assert!(config.contains("gated-gelu"));
    let (clip, _) = m.hf_model("text_encoder").unwrap();
    assert!(clip.contains("text_model.final_layer_norm.weight"));
    let msg = m.hf_model("text_encoder_3").unwrap_err().to_string();
    assert!(msg.contains("text_encoder_3/"), "{msg}");
}
