//! The tiny text encoders: HF `config.json` contents and the tensor names/shapes that
//! `CLIPTextModel` and `T5EncoderModel` save (transformers 5), at the sizes of the shared plan
//! (docs/engine.md §Parity: CLIP hidden 32 / 2 layers / 4 heads; T5 d_model 32 / 2 layers /
//! 4 heads).

use serde_json::{Value, json};

use super::tokenizer_files::{CLIP_BOS_ID, CLIP_EOS_ID, CLIP_VOCAB_SIZE, T5_VOCAB_SIZE};

pub const CLIP_HIDDEN: usize = 32;
const CLIP_INTERMEDIATE: usize = 64;
const CLIP_LAYERS: usize = 2;
const CLIP_HEADS: usize = 4;
pub const CLIP_MAX_POSITIONS: usize = 77;

pub const T5_D_MODEL: usize = 32;
const T5_D_KV: usize = 8;
const T5_D_FF: usize = 64;
const T5_LAYERS: usize = 2;
const T5_HEADS: usize = 4;
const T5_BUCKETS: usize = 32;

/// `text_encoder/config.json` (CLIPTextConfig).
pub fn clip_config() -> Value {
    json!({
        "architectures": ["CLIPTextModel"],
        "attention_dropout": 0.0,
        "bos_token_id": CLIP_BOS_ID,
        "dropout": 0.0,
        "dtype": "float32",
        "eos_token_id": CLIP_EOS_ID,
        "hidden_act": "quick_gelu",
        "hidden_size": CLIP_HIDDEN,
        "initializer_factor": 1.0,
        "initializer_range": 0.02,
        "intermediate_size": CLIP_INTERMEDIATE,
        "layer_norm_eps": 1e-5,
        "max_position_embeddings": CLIP_MAX_POSITIONS,
        "model_type": "clip_text_model",
        "num_attention_heads": CLIP_HEADS,
        "num_hidden_layers": CLIP_LAYERS,
        "pad_token_id": CLIP_EOS_ID,
        "projection_dim": CLIP_HIDDEN,
        "transformers_version": "5.24.0",
        "vocab_size": CLIP_VOCAB_SIZE,
    })
}

/// `text_encoder_2/config.json` (T5Config of a v1.1 encoder: gated-gelu, untied embeddings).
pub fn t5_config() -> Value {
    json!({
        "architectures": ["T5EncoderModel"],
        "classifier_dropout": 0.0,
        "d_ff": T5_D_FF,
        "d_kv": T5_D_KV,
        "d_model": T5_D_MODEL,
        "decoder_start_token_id": 0,
        "dense_act_fn": "gelu_new",
        "dropout_rate": 0.1,
        "dtype": "float32",
        "eos_token_id": 1,
        "feed_forward_proj": "gated-gelu",
        "initializer_factor": 1.0,
        "is_encoder_decoder": true,
        "is_gated_act": true,
        "layer_norm_epsilon": 1e-6,
        "model_type": "t5",
        "num_decoder_layers": T5_LAYERS,
        "num_heads": T5_HEADS,
        "num_layers": T5_LAYERS,
        "pad_token_id": 0,
        "relative_attention_max_distance": 128,
        "relative_attention_num_buckets": T5_BUCKETS,
        "tie_word_embeddings": false,
        "transformers_version": "5.24.0",
        "use_cache": true,
        "vocab_size": T5_VOCAB_SIZE,
    })
}

/// Tensors of `CLIPTextModel` (no `position_ids`: a non-persistent buffer, not saved).
pub fn clip_tensors() -> Vec<(String, Vec<usize>)> {
    let h = CLIP_HIDDEN;
    let mut out = vec![
        (
            "text_model.embeddings.token_embedding.weight".to_string(),
            vec![CLIP_VOCAB_SIZE, h],
        ),
        (
            "text_model.embeddings.position_embedding.weight".to_string(),
            vec![CLIP_MAX_POSITIONS, h],
        ),
    ];
    let mut linear = |name: String, rows: usize, cols: usize| {
        out.push((format!("{name}.weight"), vec![rows, cols]));
        out.push((format!("{name}.bias"), vec![rows]));
    };
    for i in 0..CLIP_LAYERS {
        let p = format!("text_model.encoder.layers.{i}");
        for proj in ["q_proj", "k_proj", "v_proj", "out_proj"] {
            linear(format!("{p}.self_attn.{proj}"), h, h);
        }
        linear(format!("{p}.mlp.fc1"), CLIP_INTERMEDIATE, h);
        linear(format!("{p}.mlp.fc2"), h, CLIP_INTERMEDIATE);
    }
    for i in 0..CLIP_LAYERS {
        for norm in ["layer_norm1", "layer_norm2"] {
            out.push((
                format!("text_model.encoder.layers.{i}.{norm}.weight"),
                vec![h],
            ));
            out.push((
                format!("text_model.encoder.layers.{i}.{norm}.bias"),
                vec![h],
            ));
        }
    }
    out.push(("text_model.final_layer_norm.weight".into(), vec![h]));
    out.push(("text_model.final_layer_norm.bias".into(), vec![h]));
    out
}

/// Tensors of `T5EncoderModel` (the embedding once, as `shared.weight`; the relative attention
/// bias only in block 0, as in HF T5).
pub fn t5_tensors() -> Vec<(String, Vec<usize>)> {
    let d = T5_D_MODEL;
    let inner = T5_HEADS * T5_D_KV;
    let mut out = vec![("shared.weight".to_string(), vec![T5_VOCAB_SIZE, d])];
    for i in 0..T5_LAYERS {
        let p = format!("encoder.block.{i}.layer");
        for proj in ["q", "k", "v"] {
            out.push((format!("{p}.0.SelfAttention.{proj}.weight"), vec![inner, d]));
        }
        out.push((format!("{p}.0.SelfAttention.o.weight"), vec![d, inner]));
        if i == 0 {
            out.push((
                format!("{p}.0.SelfAttention.relative_attention_bias.weight"),
                vec![T5_BUCKETS, T5_HEADS],
            ));
        }
        out.push((format!("{p}.0.layer_norm.weight"), vec![d]));
        out.push((
            format!("{p}.1.DenseReluDense.wi_0.weight"),
            vec![T5_D_FF, d],
        ));
        out.push((
            format!("{p}.1.DenseReluDense.wi_1.weight"),
            vec![T5_D_FF, d],
        ));
        out.push((format!("{p}.1.DenseReluDense.wo.weight"), vec![d, T5_D_FF]));
        out.push((format!("{p}.1.layer_norm.weight"), vec![d]));
    }
    out.push(("encoder.final_layer_norm.weight".into(), vec![d]));
    out
}
