#![allow(clippy::unwrap_used)]

use candle_core::{DType, Device, IndexOp, Tensor};

use super::tokenize::{CLIP_MAX_TOKENS, PromptTokenizers, T5_MAX_TOKENS};
use super::*;
use crate::tiny;
use crate::weights::{Layout, ModelDir};

fn tiny_dir() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    tiny::write(dir.path(), 0, Layout::Diffusers).unwrap();
    dir
}

fn max_abs_diff(a: &Tensor, b: &Tensor) -> f32 {
    (a - b)
        .unwrap()
        .abs()
        .unwrap()
        .flatten_all()
        .unwrap()
        .max(0)
        .unwrap()
        .to_scalar::<f32>()
        .unwrap()
}

#[test]
fn tiny_tokenizers_match_transformers() {
    // Reference ids from transformers 5.24 CLIPTokenizer / T5Tokenizer on the same folders.
    let dir = tiny_dir();
    let tok = PromptTokenizers::load(
        &dir.path().join("tokenizer"),
        &dir.path().join("tokenizer_2"),
    )
    .unwrap();
    let clip = tok.clip_ids("make the cat red").unwrap();
    assert_eq!(clip.len(), CLIP_MAX_TOKENS);
    assert_eq!(&clip[..6], &[624, 524, 513, 539, 579, 625]);
    assert!(
        clip[6..].iter().all(|&t| t == 625),
        "padded with <|endoftext|>"
    );
    let t5 = tok.t5_ids("make the cat red").unwrap();
    assert_eq!(t5.len(), T5_MAX_TOKENS);
    assert_eq!(&t5[..5], &[6, 4, 7, 8, 1]);
    assert!(t5[5..].iter().all(|&t| t == 0), "padded with <pad>");
}

#[test]
fn long_prompts_keep_their_end_token() {
    let dir = tiny_dir();
    let tok = PromptTokenizers::load(
        &dir.path().join("tokenizer"),
        &dir.path().join("tokenizer_2"),
    )
    .unwrap();
    let long = "make the cat red and the dog blue ".repeat(80);
    let clip = tok.clip_ids(&long).unwrap();
    assert_eq!((clip.len(), clip[0], clip[76]), (77, 624, 625));
    assert!(
        clip[1..76].iter().all(|&t| t != 625),
        "no padding inside a truncated prompt"
    );
    let t5 = tok.t5_ids(&long).unwrap();
    assert_eq!((t5.len(), t5[511]), (512, 1));
    assert!(!t5[..511].contains(&0) && !t5[..511].contains(&1));
}

#[test]
fn clip_tokenizer_json_gives_the_same_ids_as_vocab_and_merges() {
    let dir = tiny_dir();
    let (clip_dir, t5_dir) = (dir.path().join("tokenizer"), dir.path().join("tokenizer_2"));
    let from_vocab = PromptTokenizers::load(&clip_dir, &t5_dir).unwrap();
    // Save the assembled tokenizer as tokenizer.json and drop vocab/merges.
    let json_dir = dir.path().join("tokenizer_json");
    std::fs::create_dir_all(&json_dir).unwrap();
    let prompt = "A Photo of Fish & Chips, 42 times!";
    let ids = from_vocab.clip_ids(prompt).unwrap();
    let built = super::tokenize::tests_support::clip_tokenizer(&clip_dir);
    built.save(json_dir.join("tokenizer.json"), false).unwrap();
    std::fs::copy(
        clip_dir.join("tokenizer_config.json"),
        json_dir.join("tokenizer_config.json"),
    )
    .unwrap();
    let from_json = PromptTokenizers::load(&json_dir, &t5_dir).unwrap();
    assert_eq!(from_json.clip_ids(prompt).unwrap(), ids);
}

#[test]
fn missing_tokenizer_files_are_named() {
    let dir = tiny_dir();
    std::fs::remove_file(dir.path().join("tokenizer/merges.txt")).unwrap();
    let err = PromptTokenizers::load(
        &dir.path().join("tokenizer"),
        &dir.path().join("tokenizer_2"),
    )
    .unwrap_err();
    assert!(err.to_string().contains("merges.txt"), "{err}");
    let dir = tiny_dir();
    std::fs::remove_file(dir.path().join("tokenizer_2/tokenizer.json")).unwrap();
    let err = PromptTokenizers::load(
        &dir.path().join("tokenizer"),
        &dir.path().join("tokenizer_2"),
    )
    .unwrap_err();
    assert!(
        err.to_string().contains("tokenizer.json") && err.to_string().contains("tokenizer_2"),
        "{err}"
    );
}

#[test]
fn encoders_have_the_pipeline_shapes_and_semantics() {
    let dir = tiny_dir();
    let m = ModelDir::open(dir.path()).unwrap();
    let mut enc = TextEncoders::load(&m, DType::F32, &Device::Cpu).unwrap();
    let (t5, pooled) = enc.encode("make the cat red").unwrap();
    assert_eq!(t5.dims(), &[1, 512, 32]);
    assert_eq!(pooled.dims(), &[1, 32]);

    // Pooled = hidden state at the first EOS (position 5 for this prompt).
    let clip_ids = enc.clip_ids("make the cat red").unwrap();
    let hidden = enc.clip_hidden(&clip_ids).unwrap();
    assert_eq!(max_abs_diff(&pooled, &hidden.i((.., 5, ..)).unwrap()), 0.0);
    assert!(max_abs_diff(&pooled, &hidden.i((.., 6, ..)).unwrap()) > 0.0);

    // CLIP is causal: earlier positions ignore later tokens.
    let mut other = clip_ids.clone();
    other[4] = 600;
    let hidden2 = enc.clip_hidden(&other).unwrap();
    assert_eq!(
        max_abs_diff(
            &hidden.i((.., ..4, ..)).unwrap(),
            &hidden2.i((.., ..4, ..)).unwrap()
        ),
        0.0
    );
    assert!(
        max_abs_diff(
            &hidden.i((.., 4.., ..)).unwrap(),
            &hidden2.i((.., 4.., ..)).unwrap()
        ) > 0.0
    );

    // T5 has no mask: the pad length changes the real tokens' states.
    let t5_ids = enc.t5_ids("make the cat red").unwrap();
    let short = enc.t5_embed(&t5_ids[..16]).unwrap();
    assert_eq!(short.dims(), &[1, 16, 32]);
    assert!(
        max_abs_diff(
            &short.i((.., ..5, ..)).unwrap(),
            &t5.i((.., ..5, ..)).unwrap()
        ) > 1e-6
    );
}

#[test]
fn unsupported_clip_configs_are_rejected_by_key() {
    let mut v: serde_json::Value = tiny::text_models::clip_config();
    v["hidden_act"] = "gelu".into();
    let err = clip_config(&v.to_string(), "text_encoder/config.json")
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("hidden_act") && err.contains("text_encoder/config.json"),
        "{err}"
    );
    let mut v: serde_json::Value = tiny::text_models::clip_config();
    v["max_position_embeddings"] = 16.into();
    let err = clip_config(&v.to_string(), "c.json")
        .unwrap_err()
        .to_string();
    assert!(err.contains("max_position_embeddings"), "{err}");
}
