//! Prompt → token ids for the two text encoders, padded and truncated the way BFL/diffusers call
//! the HF tokenizers (diffusers `FluxKontextPipeline._get_t5_prompt_embeds` /
//! `_get_clip_prompt_embeds`, BFL `src/flux/modules/conditioner.py`; docs/engine.md §Text
//! encoders):
//! - CLIP: `<|startoftext|> … <|endoftext|>`, truncated to 77 keeping the EOS last, padded to 77
//!   with the pad token (`<|endoftext|>` for CLIP-L). From `tokenizer/tokenizer.json` when
//!   present, else built from `vocab.json` + `merges.txt` exactly as transformers 5's
//!   `CLIPTokenizer.__init__` builds it (the real FLUX `tokenizer/` folder has no tokenizer.json).
//! - T5: `… </s>`, truncated to 512 keeping `</s>` last, padded to 512 with `<pad>` (id 0), from
//!   `tokenizer_2/tokenizer.json`.

use std::path::Path;

use serde_json::Value;
use tokenizers::decoders::byte_level::ByteLevel as ByteLevelDecoder;
use tokenizers::models::bpe::BPE;
use tokenizers::normalizers::replace::ReplacePattern;
use tokenizers::normalizers::{Lowercase, NFC, Replace, Sequence as NormalizerSequence};
use tokenizers::pre_tokenizers::byte_level::ByteLevel;
use tokenizers::pre_tokenizers::sequence::Sequence as PreTokenizerSequence;
use tokenizers::pre_tokenizers::split::{Split, SplitPattern};
use tokenizers::processors::roberta::RobertaProcessing;
use tokenizers::{AddedToken, SplitDelimiterBehavior, Tokenizer};

use crate::EngineError;
use crate::weights::WeightsError;

/// CLIP's context length (`max_position_embeddings`, `model_max_length`).
pub const CLIP_MAX_TOKENS: usize = 77;
/// T5 length used by FLUX.1 Kontext (BFL `cli_kontext.py:211`, diffusers `max_sequence_length`);
/// a model directory may set a shorter one (`ModelSettings::max_sequence_length`).
pub const T5_MAX_TOKENS: usize = crate::model_settings::DEFAULT_MAX_SEQUENCE_LENGTH;

/// CLIP's pre-tokenizer pattern (transformers `tokenization_clip.py`, OpenAI `simple_tokenizer`).
const CLIP_SPLIT: &str =
    r"<\|startoftext\|>|<\|endoftext\|>|'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]|[^\s\p{L}\p{N}]+";

fn tok_err(file: &Path, e: impl std::fmt::Display) -> EngineError {
    WeightsError::Config {
        file: file.display().to_string(),
        reason: e.to_string(),
    }
    .into()
}

/// Both tokenizers plus the special ids the padding rules need.
#[derive(Clone)]
pub struct PromptTokenizers {
    clip: Tokenizer,
    clip_eos: u32,
    clip_pad: u32,
    t5: Tokenizer,
    t5_eos: u32,
    t5_pad: u32,
    /// T5 ids per prompt (512 for FLUX.1 Kontext).
    t5_length: usize,
}

impl std::fmt::Debug for PromptTokenizers {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PromptTokenizers")
            .field("clip_eos", &self.clip_eos)
            .field("clip_pad", &self.clip_pad)
            .field("t5_eos", &self.t5_eos)
            .field("t5_pad", &self.t5_pad)
            .field("t5_length", &self.t5_length)
            .finish()
    }
}

/// A special token's string from `tokenizer_config.json` (`"eos_token": "…"` or `{content}`).
fn special(config: &Value, key: &str, default: &str) -> String {
    match &config[key] {
        Value::String(s) => s.clone(),
        Value::Object(o) => o
            .get("content")
            .and_then(Value::as_str)
            .unwrap_or(default)
            .to_string(),
        _ => default.to_string(),
    }
}

fn read_json(path: &Path) -> Result<Value, EngineError> {
    if !path.is_file() {
        return Ok(Value::Null);
    }
    let text = std::fs::read_to_string(path).map_err(|source| WeightsError::Io {
        path: path.to_path_buf(),
        source,
    })?;
    serde_json::from_str(&text).map_err(|e| tok_err(path, e))
}

fn token_id(tok: &Tokenizer, token: &str, file: &Path) -> Result<u32, EngineError> {
    tok.token_to_id(token)
        .ok_or_else(|| tok_err(file, format!("token {token:?} is not in the vocabulary")))
}

/// CLIP from vocab.json + merges.txt, assembled like transformers 5 `CLIPTokenizer.__init__`.
fn clip_from_vocab(dir: &Path, config: &Value) -> Result<Tokenizer, EngineError> {
    let (vocab, merges) = (dir.join("vocab.json"), dir.join("merges.txt"));
    for f in [&vocab, &merges] {
        if !f.is_file() {
            return Err(WeightsError::MissingFile {
                file: format!(
                    "{} (a CLIP tokenizer needs tokenizer.json or vocab.json + merges.txt)",
                    f.file_name()
                        .map(|n| n.to_string_lossy().into_owned())
                        .unwrap_or_default()
                ),
                dir: dir.to_path_buf(),
            }
            .into());
        }
    }
    let (bos, eos) = (
        special(config, "bos_token", "<|startoftext|>"),
        special(config, "eos_token", "<|endoftext|>"),
    );
    let unk = special(config, "unk_token", "<|endoftext|>");
    let pad = special(config, "pad_token", "<|endoftext|>");
    let bpe = BPE::from_file(&vocab.to_string_lossy(), &merges.to_string_lossy())
        .continuing_subword_prefix(String::new())
        .end_of_word_suffix("</w>".into())
        .unk_token(unk.clone())
        .fuse_unk(false)
        .build()
        .map_err(|e| tok_err(&vocab, e))?;
    let mut tok = Tokenizer::new(bpe);
    let ws =
        Replace::new(ReplacePattern::Regex(r"\s+".into()), " ").map_err(|e| tok_err(&vocab, e))?;
    tok.with_normalizer(Some(NormalizerSequence::new(vec![
        NFC.into(),
        ws.into(),
        Lowercase.into(),
    ])))
    .map_err(|e| tok_err(&vocab, e))?;
    let split = Split::new(
        SplitPattern::Regex(CLIP_SPLIT.into()),
        SplitDelimiterBehavior::Removed,
        true,
    )
    .map_err(|e| tok_err(&vocab, e))?;
    tok.with_pre_tokenizer(Some(PreTokenizerSequence::new(vec![
        split.into(),
        ByteLevel::new(false, true, true).into(),
    ])));
    tok.with_decoder(Some(ByteLevelDecoder::default()));
    let specials: Vec<AddedToken> = [&bos, &eos, &unk, &pad]
        .iter()
        .map(|t| AddedToken::from(t.as_str(), true))
        .collect();
    tok.add_special_tokens(specials)
        .map_err(|e| tok_err(&vocab, e))?;
    let (bos_id, eos_id) = (token_id(&tok, &bos, &vocab)?, token_id(&tok, &eos, &vocab)?);
    tok.with_post_processor(Some(
        RobertaProcessing::new((eos, eos_id), (bos, bos_id))
            .trim_offsets(false)
            .add_prefix_space(false),
    ));
    Ok(tok)
}

fn from_tokenizer_json(path: &Path) -> Result<Tokenizer, EngineError> {
    let mut tok = Tokenizer::from_file(path).map_err(|e| tok_err(path, e))?;
    // Length handling is ours (`fit`), whatever the file configures.
    tok.with_truncation(None).map_err(|e| tok_err(path, e))?;
    tok.with_padding(None);
    Ok(tok)
}

/// Encodes with the post-processor's specials, then truncates to `max` keeping `eos` last and
/// pads with `pad`.
fn fit(
    tok: &Tokenizer,
    prompt: &str,
    max: usize,
    eos: u32,
    pad: u32,
) -> Result<Vec<u32>, EngineError> {
    let enc = tok
        .encode(prompt, true)
        .map_err(|e| EngineError::InvalidInput(format!("prompt: {e}")))?;
    let mut ids = enc.get_ids().to_vec();
    if ids.len() > max {
        ids.truncate(max - 1);
        ids.push(eos);
    }
    ids.resize(max, pad);
    Ok(ids)
}

impl PromptTokenizers {
    /// Loads `clip_dir` (`tokenizer/`) and `t5_dir` (`tokenizer_2/`).
    pub fn load(clip_dir: &Path, t5_dir: &Path) -> Result<Self, EngineError> {
        let clip_config = read_json(&clip_dir.join("tokenizer_config.json"))?;
        let clip_json = clip_dir.join("tokenizer.json");
        let clip = if clip_json.is_file() {
            from_tokenizer_json(&clip_json)?
        } else {
            clip_from_vocab(clip_dir, &clip_config)?
        };
        let clip_eos = token_id(
            &clip,
            &special(&clip_config, "eos_token", "<|endoftext|>"),
            clip_dir,
        )?;
        let clip_pad = token_id(
            &clip,
            &special(&clip_config, "pad_token", "<|endoftext|>"),
            clip_dir,
        )?;

        let t5_json = t5_dir.join("tokenizer.json");
        if !t5_json.is_file() {
            return Err(WeightsError::missing_file(&t5_json).into());
        }
        let t5_config = read_json(&t5_dir.join("tokenizer_config.json"))?;
        let t5 = from_tokenizer_json(&t5_json)?;
        let t5_eos = token_id(&t5, &special(&t5_config, "eos_token", "</s>"), &t5_json)?;
        let t5_pad = token_id(&t5, &special(&t5_config, "pad_token", "<pad>"), &t5_json)?;
        Ok(Self {
            clip,
            clip_eos,
            clip_pad,
            t5,
            t5_eos,
            t5_pad,
            t5_length: T5_MAX_TOKENS,
        })
    }

    /// Pads and truncates T5 ids to `length` instead of 512 (a model setting).
    pub fn with_t5_length(mut self, length: usize) -> Self {
        self.t5_length = length;
        self
    }

    /// T5 ids per prompt.
    pub fn t5_length(&self) -> usize {
        self.t5_length
    }

    /// 77 CLIP ids: BOS … EOS, then pad.
    pub fn clip_ids(&self, prompt: &str) -> Result<Vec<u32>, EngineError> {
        fit(
            &self.clip,
            prompt,
            CLIP_MAX_TOKENS,
            self.clip_eos,
            self.clip_pad,
        )
    }

    /// `t5_length` (512) T5 ids: … `</s>`, then `<pad>`.
    pub fn t5_ids(&self, prompt: &str) -> Result<Vec<u32>, EngineError> {
        fit(&self.t5, prompt, self.t5_length, self.t5_eos, self.t5_pad)
    }

    /// The CLIP EOS id; the pooled output is taken at its first occurrence.
    pub fn clip_eos(&self) -> u32 {
        self.clip_eos
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
pub(crate) mod tests_support {
    use super::*;

    /// The CLIP tokenizer assembled from a vocab.json + merges.txt folder.
    pub(crate) fn clip_tokenizer(dir: &Path) -> Tokenizer {
        let config = read_json(&dir.join("tokenizer_config.json")).unwrap();
        clip_from_vocab(dir, &config).unwrap()
    }
}
