#![allow(clippy::unwrap_used)]

use std::collections::BTreeMap;
use std::path::Path;

use super::tokenizer_files::{
    CLIP_BOS_ID, CLIP_EOS_ID, CLIP_VOCAB_SIZE, T5_VOCAB_SIZE, clip_vocab_and_merges, t5_tokenizer,
};
use super::*;
use crate::weights::ModelDir;

/// Every file under `dir`, relative path → bytes.
fn read_tree(dir: &Path) -> BTreeMap<String, Vec<u8>> {
    let mut out = BTreeMap::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for entry in std::fs::read_dir(&d).unwrap() {
            let p = entry.unwrap().path();
            if p.is_dir() {
                stack.push(p);
            } else {
                let rel = p.strip_prefix(dir).unwrap().to_string_lossy().into_owned();
                out.insert(rel, std::fs::read(&p).unwrap());
            }
        }
    }
    out
}

#[test]
fn same_seed_writes_byte_identical_files_and_other_seeds_differ() {
    for layout in [Layout::Bfl, Layout::Diffusers] {
        let (a, b, c) = (
            tempfile::tempdir().unwrap(),
            tempfile::tempdir().unwrap(),
            tempfile::tempdir().unwrap(),
        );
        write(a.path(), 3, layout).unwrap();
        write(b.path(), 3, layout).unwrap();
        write(c.path(), 4, layout).unwrap();
        let (ta, tb, tc) = (
            read_tree(a.path()),
            read_tree(b.path()),
            read_tree(c.path()),
        );
        assert_eq!(ta.keys().collect::<Vec<_>>(), tc.keys().collect::<Vec<_>>());
        assert!(ta == tb, "{layout:?}: same seed, different bytes");
        for (name, bytes) in &ta {
            let differs = &tc[name] != bytes;
            assert_eq!(
                differs,
                name.ends_with(".safetensors"),
                "{layout:?} {name}: seed dependence"
            );
        }
    }
}

#[test]
fn layouts_have_the_expected_files() {
    let d = tempfile::tempdir().unwrap();
    write(d.path(), 0, Layout::Diffusers).unwrap();
    let files: Vec<String> = read_tree(d.path()).into_keys().collect();
    for f in [
        "model_index.json",
        "scheduler/scheduler_config.json",
        "transformer/config.json",
        "transformer/diffusion_pytorch_model-00001-of-00002.safetensors",
        "transformer/diffusion_pytorch_model-00002-of-00002.safetensors",
        "transformer/diffusion_pytorch_model.safetensors.index.json",
        "vae/config.json",
        "vae/diffusion_pytorch_model.safetensors",
        "text_encoder/config.json",
        "text_encoder/model.safetensors",
        "text_encoder_2/config.json",
        "text_encoder_2/model-00001-of-00002.safetensors",
        "text_encoder_2/model-00002-of-00002.safetensors",
        "text_encoder_2/model.safetensors.index.json",
        "tokenizer/vocab.json",
        "tokenizer/merges.txt",
        "tokenizer/tokenizer_config.json",
        "tokenizer/special_tokens_map.json",
        "tokenizer_2/tokenizer.json",
        "tokenizer_2/tokenizer_config.json",
        "tokenizer_2/special_tokens_map.json",
    ] {
        assert!(
            files.contains(&f.to_string()),
            "diffusers layout lacks {f}: {files:?}"
        );
    }
    assert!(
        !files.iter().any(|f| f == "tokenizer/tokenizer.json"),
        "the real repo has no CLIP tokenizer.json"
    );

    let b = tempfile::tempdir().unwrap();
    write(b.path(), 0, Layout::Bfl).unwrap();
    let files: Vec<String> = read_tree(b.path()).into_keys().collect();
    for f in [
        "flux1-kontext-dev.safetensors",
        "ae.safetensors",
        "flux_config.json",
        "tokenizer_2/tokenizer.json",
    ] {
        assert!(files.contains(&f.to_string()), "BFL layout lacks {f}");
    }
    assert!(
        !files
            .iter()
            .any(|f| f.starts_with("transformer/") || f.starts_with("vae/"))
    );
}

#[test]
fn init_follows_the_norm_rule() {
    let w = TinyWeights::generate(0);
    let mean = |v: &[f32]| v.iter().map(|x| f64::from(*x)).sum::<f64>() / v.len() as f64;
    let scale = &w.transformer["double_blocks.0.img_attn.norm.query_norm.scale"].data;
    assert!((mean(scale) - 1.0).abs() < 0.1 && scale.iter().any(|x| (x - 1.0).abs() > 0.01));
    assert_ne!(
        scale,
        &w.transformer["double_blocks.0.img_attn.norm.key_norm.scale"].data
    );
    let gn = &w.vae["encoder.norm_out.weight"].data;
    assert!((mean(gn) - 1.0).abs() < 0.1);
    let bias = &w.vae["encoder.norm_out.bias"].data;
    assert!(mean(bias).abs() < 0.1 && bias.iter().any(|x| x.abs() > 0.01));
    let ln = &w.t5["encoder.final_layer_norm.weight"].data;
    assert!((mean(ln) - 1.0).abs() < 0.1);
    // Matrices: std ≈ 1/sqrt(fan_in) (fan_in 128 for img_mlp.2).
    let m = &w.transformer["double_blocks.0.img_mlp.2.weight"].data;
    let std = (m.iter().map(|x| f64::from(*x).powi(2)).sum::<f64>() / m.len() as f64).sqrt();
    assert!((std * 128f64.sqrt() - 1.0).abs() < 0.1, "std {std}");
}

#[test]
fn clip_vocab_has_the_openai_structure() {
    let (vocab, merges) = clip_vocab_and_merges();
    assert_eq!(vocab.len(), CLIP_VOCAB_SIZE);
    assert_eq!(vocab[CLIP_BOS_ID], "<|startoftext|>");
    assert_eq!(vocab[CLIP_EOS_ID], "<|endoftext|>");
    assert_eq!(vocab[0], "!");
    assert_eq!(vocab[256], "!</w>");
    let unique: std::collections::HashSet<_> = vocab.iter().collect();
    assert_eq!(unique.len(), vocab.len(), "vocab entries are unique");
    for (a, b) in &merges {
        assert!(
            vocab.contains(a) && vocab.contains(b) && vocab.contains(&format!("{a}{b}")),
            "{a} {b}"
        );
    }
    assert!(vocab.contains(&"the</w>".to_string()) && vocab.contains(&"cat</w>".to_string()));
}

#[test]
fn t5_tokenizer_fits_the_embedding() {
    let tok = t5_tokenizer().unwrap();
    assert!(tok.get_vocab_size(true) <= T5_VOCAB_SIZE);
    let ids = tok
        .encode("make the cat red", true)
        .unwrap()
        .get_ids()
        .to_vec();
    assert_eq!(ids.last(), Some(&1), "ends with </s>: {ids:?}");
    assert!(!ids.contains(&2), "no <unk> for a plain prompt: {ids:?}");
}

#[test]
fn ensure_cached_writes_once_and_loads() {
    let root = tempfile::tempdir().unwrap();
    let dir = ensure_cached_in(root.path(), 5).unwrap();
    let stamp = std::fs::metadata(dir.join("model_index.json"))
        .unwrap()
        .modified()
        .unwrap();
    assert_eq!(ensure_cached_in(root.path(), 5).unwrap(), dir);
    assert_eq!(
        std::fs::metadata(dir.join("model_index.json"))
            .unwrap()
            .modified()
            .unwrap(),
        stamp
    );
    let m = ModelDir::open(&dir).unwrap();
    assert_eq!(m.flux_config(), &FluxConfig::tiny());
    let leftovers: Vec<_> = std::fs::read_dir(root.path())
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(leftovers.len(), 1, "no temp dirs left: {leftovers:?}");
}
