//! The two text encoders of FLUX.1 (docs/engine.md §Text encoders), from the HF folders of the
//! model directory (`text_encoder/`, `text_encoder_2/`, `tokenizer/`, `tokenizer_2/`):
//! - T5 v1.1 encoder (`candle_transformers::models::t5::T5EncoderModel`, which matches HF T5 for
//!   the encoder: gated tanh-GELU ("gelu_new") FFN, relative attention bias computed in block 0
//!   and shared, no attention scaling, final RMS layer norm): `last_hidden_state` over all 512
//!   padded positions with **no attention mask**, (1, 512, d_t5).
//! - CLIP text model (`candle_transformers::models::clip::text_model::ClipTextTransformer`,
//!   causal mask, final LayerNorm): the pooled output is the final-LN hidden state at the
//!   **first** EOS token, no projection, (1, d_clip). We pool explicitly instead of candle's
//!   `argmax(ids)`, because padding repeats EOS and the tie order of argmax is not guaranteed.
//!
//! candle's CLIP supports only `quick_gelu` with LayerNorm eps 1e-5 (what CLIP-L uses); other
//! configs are rejected with the key named rather than run wrong.

pub mod tokenize;

use candle_core::{DType, Device, IndexOp, Tensor};
use candle_nn::VarBuilder;
use candle_transformers::models::clip::text_model::{
    Activation, ClipTextConfig, ClipTextTransformer,
};
use candle_transformers::models::t5;
use serde::Deserialize;

use self::tokenize::PromptTokenizers;
use crate::EngineError;
use crate::weights::backend::{CanonicalBackend, Mapping};
use crate::weights::{ModelDir, WeightsError};

/// The fields of a `CLIPTextConfig` `config.json` we read.
#[derive(Debug, Deserialize)]
struct HfClipConfig {
    vocab_size: usize,
    hidden_size: usize,
    intermediate_size: usize,
    num_hidden_layers: usize,
    num_attention_heads: usize,
    max_position_embeddings: usize,
    #[serde(default = "quick_gelu")]
    hidden_act: String,
    #[serde(default = "clip_eps")]
    layer_norm_eps: f64,
    #[serde(default)]
    projection_dim: Option<usize>,
}

fn quick_gelu() -> String {
    "quick_gelu".into()
}
fn clip_eps() -> f64 {
    1e-5
}

/// `text_encoder_2/config.json` (HF `T5Config`).
pub(crate) fn t5_config(text: &str, file: &str) -> Result<t5::Config, WeightsError> {
    serde_json::from_str(text).map_err(|e| WeightsError::Config {
        file: file.into(),
        reason: e.to_string(),
    })
}

/// The CLIP text model from HF names, with or without the `text_model.` prefix.
pub(crate) fn clip_model(
    vb: VarBuilder<'_>,
    cfg: &ClipTextConfig,
) -> candle_core::Result<ClipTextTransformer> {
    ClipTextTransformer::new(clip_root(vb), cfg)
}

/// `text_encoder/config.json` (HF `CLIPTextConfig`; CLIP-L only).
pub(crate) fn clip_config(text: &str, file: &str) -> Result<ClipTextConfig, WeightsError> {
    let bad = |reason: String| WeightsError::Config {
        file: file.into(),
        reason,
    };
    let raw: HfClipConfig = serde_json::from_str(text).map_err(|e| bad(e.to_string()))?;
    if raw.hidden_act != "quick_gelu" {
        return Err(bad(format!(
            "hidden_act is {:?}; only \"quick_gelu\" (CLIP-L) is supported",
            raw.hidden_act
        )));
    }
    if (raw.layer_norm_eps - 1e-5).abs() > 1e-12 {
        return Err(bad(format!(
            "layer_norm_eps is {}; only 1e-5 (CLIP-L) is supported",
            raw.layer_norm_eps
        )));
    }
    if raw.max_position_embeddings < tokenize::CLIP_MAX_TOKENS {
        return Err(bad(format!(
            "max_position_embeddings {} is below the {} tokens the pipeline pads to",
            raw.max_position_embeddings,
            tokenize::CLIP_MAX_TOKENS
        )));
    }
    Ok(ClipTextConfig {
        vocab_size: raw.vocab_size,
        embed_dim: raw.hidden_size,
        activation: Activation::QuickGelu,
        intermediate_size: raw.intermediate_size,
        max_position_embeddings: raw.max_position_embeddings,
        pad_with: None,
        num_hidden_layers: raw.num_hidden_layers,
        num_attention_heads: raw.num_attention_heads,
        projection_dim: raw.projection_dim.unwrap_or(raw.hidden_size),
    })
}

/// Tokenizers and both encoders, loaded once.
pub struct TextEncoders {
    tokenizers: PromptTokenizers,
    t5: t5::T5EncoderModel,
    clip: ClipTextTransformer,
    device: Device,
}

impl TextEncoders {
    /// Loads tokenizers and encoders from `dir` in `dtype` on `device`.
    pub fn load(dir: &ModelDir, dtype: DType, device: &Device) -> Result<Self, EngineError> {
        let tokenizers =
            PromptTokenizers::load(&dir.subdir("tokenizer")?, &dir.subdir("tokenizer_2")?)?
                .with_t5_length(dir.settings().max_sequence_length);

        let (t5_files, t5_text) = dir.hf_model("text_encoder_2")?;
        let t5_file = dir
            .root()
            .join("text_encoder_2/config.json")
            .display()
            .to_string();
        let t5_cfg = t5_config(&t5_text, &t5_file)?;
        let t5_vb = VarBuilder::from_backend(
            Box::new(CanonicalBackend::new(
                t5_files,
                Mapping::Canonical {
                    prefix: String::new(),
                },
            )),
            dtype,
            device.clone(),
        );
        let t5 = t5::T5EncoderModel::load(t5_vb, &t5_cfg)?;

        let (clip_files, clip_text) = dir.hf_model("text_encoder")?;
        let clip_file = dir
            .root()
            .join("text_encoder/config.json")
            .display()
            .to_string();
        let clip_cfg = clip_config(&clip_text, &clip_file)?;
        let clip_vb = VarBuilder::from_backend(
            Box::new(CanonicalBackend::new(
                clip_files,
                Mapping::Canonical {
                    prefix: String::new(),
                },
            )),
            dtype,
            device.clone(),
        );
        let clip = clip_model(clip_vb, &clip_cfg)?;
        Ok(Self {
            tokenizers,
            t5,
            clip,
            device: device.clone(),
        })
    }

    /// Encoders from any weight source: `t5_vb` holds the T5 encoder (HF names, `shared.weight`
    /// or `encoder.embed_tokens.weight`), `clip_vb` the CLIP text model (with or without the
    /// `text_model.` prefix).
    /// The GPU benchmark builds them from random weights generated on the device.
    pub fn from_parts(
        tokenizers: PromptTokenizers,
        t5_vb: VarBuilder<'_>,
        t5_cfg: &t5::Config,
        clip_vb: VarBuilder<'_>,
        clip_cfg: &ClipTextConfig,
        device: &Device,
    ) -> Result<Self, EngineError> {
        Ok(Self {
            tokenizers,
            t5: t5::T5EncoderModel::load(t5_vb, t5_cfg)?,
            clip: ClipTextTransformer::new(clip_root(clip_vb), clip_cfg)?,
            device: device.clone(),
        })
    }

    pub fn tokenizers(&self) -> &PromptTokenizers {
        &self.tokenizers
    }

    /// The 512 padded T5 ids of `prompt`.
    pub fn t5_ids(&self, prompt: &str) -> Result<Vec<u32>, EngineError> {
        self.tokenizers.t5_ids(prompt)
    }

    /// The 77 padded CLIP ids of `prompt`.
    pub fn clip_ids(&self, prompt: &str) -> Result<Vec<u32>, EngineError> {
        self.tokenizers.clip_ids(prompt)
    }

    /// T5 `last_hidden_state` of `ids`, no mask: (1, len, d_t5).
    pub fn t5_embed(&mut self, ids: &[u32]) -> Result<Tensor, EngineError> {
        let ids = Tensor::new(ids, &self.device)?.unsqueeze(0)?; // (1, len)
        Ok(self.t5.forward(&ids)?)
    }

    /// CLIP final-LN hidden states of `ids`: (1, len, d_clip).
    pub fn clip_hidden(&self, ids: &[u32]) -> Result<Tensor, EngineError> {
        let ids = Tensor::new(ids, &self.device)?.unsqueeze(0)?; // (1, len)
        Ok(self.clip.forward_with_mask(&ids, usize::MAX)?)
    }

    /// CLIP pooled output of `ids`: the hidden state at the first EOS, (1, d_clip).
    pub fn clip_pooled(&self, ids: &[u32]) -> Result<Tensor, EngineError> {
        let eos = self.tokenizers.clip_eos();
        let pos = ids.iter().position(|&t| t == eos).ok_or_else(|| {
            EngineError::InvalidInput(format!("CLIP ids have no end-of-text token ({eos})"))
        })?;
        let hidden = self.clip_hidden(ids)?;
        Ok(hidden.i((.., pos, ..))?) // (1, d_clip)
    }

    /// `prompt` → (T5 embeddings (1, 512, d_t5), CLIP pooled (1, d_clip)).
    pub fn encode(&mut self, prompt: &str) -> Result<(Tensor, Tensor), EngineError> {
        let t5_ids = self.t5_ids(prompt)?;
        let clip_ids = self.clip_ids(prompt)?;
        Ok((self.t5_embed(&t5_ids)?, self.clip_pooled(&clip_ids)?))
    }
}

#[cfg(test)]
mod tests;

/// Where the CLIP text model's tensors start. transformers 4 saves `CLIPTextModel` under
/// `text_model.` (FLUX.1-Kontext-dev's `text_encoder/`); transformers 5 saves the same module
/// without the prefix (`embeddings.token_embedding.weight`, as in models/shapes).
fn clip_root(clip_vb: VarBuilder<'_>) -> VarBuilder<'_> {
    if clip_vb.contains_tensor("embeddings.token_embedding.weight")
        && !clip_vb.contains_tensor("text_model.embeddings.token_embedding.weight")
    {
        clip_vb
    } else {
        clip_vb.pp("text_model")
    }
}
