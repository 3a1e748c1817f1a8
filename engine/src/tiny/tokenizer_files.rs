//! The tiny model's tokenizers, built locally and deterministically (no trainers, nothing
//! downloaded), in the file layout of the real FLUX repo (Hugging Face
//! `black-forest-labs/FLUX.1-Kontext-dev`: `tokenizer/` has no `tokenizer.json`):
//! - `tokenizer/`: a CLIP byte-level BPE as `vocab.json` + `merges.txt` (no `tokenizer.json`).
//!   The vocab mirrors OpenAI's order: the 256 `bytes_to_unicode` characters, the same with
//!   `</w>`, the merged tokens, then `<|startoftext|>` and `<|endoftext|>` as the two highest ids.
//!   The merges come from greedy pair counting over a fixed English corpus (ties broken by the
//!   lexicographically smallest pair), so they are a pure function of this file.
//! - `tokenizer_2/`: a T5 Unigram `tokenizer.json` (`<pad>`=0, `</s>`=1, `<unk>`=2, fixed pieces
//!   and scores, WhitespaceSplit + Metaspace, post-processor `$A </s>`), which is what
//!   transformers 5's `T5Tokenizer` rebuilds from the file.

use std::collections::BTreeMap;
use std::path::Path;

use serde_json::{Value, json};
use tokenizers::decoders::metaspace::Metaspace as MetaspaceDecoder;
use tokenizers::models::unigram::Unigram;
use tokenizers::pre_tokenizers::metaspace::{Metaspace, PrependScheme};
use tokenizers::pre_tokenizers::sequence::Sequence;
use tokenizers::pre_tokenizers::whitespace::WhitespaceSplit;
use tokenizers::processors::template::TemplateProcessing;
use tokenizers::{AddedToken, Tokenizer};

use super::TinyError;

pub const CLIP_VOCAB_SIZE: usize = 626;
pub const CLIP_BOS_ID: usize = 624;
pub const CLIP_EOS_ID: usize = 625;
/// Embedding rows of the tiny T5 (≥ the tokenizer's pieces, like real T5's 32128 > 32100).
pub const T5_VOCAB_SIZE: usize = 128;

const CLIP_BOS: &str = "<|startoftext|>";
const CLIP_EOS: &str = "<|endoftext|>";

/// Sentences the CLIP merges are counted on.
const CLIP_CORPUS: &[&str] = &[
    "make the cat red",
    "turn the dog into a painting of the sea",
    "change the background to a white wall",
    "add a hat to the man and make the woman smile",
    "remove the car from the street in the photo",
    "make the sky green and the trees blue",
    "a photo of a red cat sitting on a chair",
    "replace the text on the sign with the word hello",
    "make it look like a watercolor painting",
    "put the house in the middle of a snowy forest",
    "change the color of the shirt to yellow",
    "a portrait of a woman with long black hair",
    "turn the picture into a pencil sketch",
    "make the lighting warmer and the shadows softer",
    "the cat is sleeping under the window",
    "there is a small boat on the river at sunset",
    "make the flowers in the garden brighter",
    "give the dog a blue collar and a bone",
    "the old man is reading a newspaper in the morning",
    "convert the scene to night with stars in the sky",
];

/// OpenAI CLIP's `bytes_to_unicode`: printable bytes map to themselves, the rest to 256 + n,
/// in the order the vocab lists them.
fn bytes_to_unicode() -> Vec<char> {
    let mut bytes: Vec<u32> = (u32::from(b'!')..=u32::from(b'~'))
        .chain(0xA1..=0xAC)
        .chain(0xAE..=0xFF)
        .collect();
    let mut chars = bytes.clone();
    let mut n = 0;
    for b in 0..256 {
        if !bytes.contains(&b) {
            bytes.push(b);
            chars.push(256 + n);
            n += 1;
        }
    }
    chars
        .into_iter()
        .map(|c| char::from_u32(c).expect("bytes_to_unicode yields valid chars; this is a bug"))
        .collect()
}

/// The CLIP vocab (index = id) and merges.
pub fn clip_vocab_and_merges() -> (Vec<String>, Vec<(String, String)>) {
    let base = bytes_to_unicode();
    let mut vocab: Vec<String> = base.iter().map(|c| c.to_string()).collect();
    vocab.extend(base.iter().map(|c| format!("{c}</w>")));
    let wanted = CLIP_VOCAB_SIZE - vocab.len() - 2;

    let mut words: BTreeMap<Vec<String>, u64> = BTreeMap::new();
    for word in CLIP_CORPUS.iter().flat_map(|s| s.split_whitespace()) {
        let chars: Vec<char> = word.chars().collect();
        let mut symbols: Vec<String> = chars.iter().map(char::to_string).collect();
        if let Some(last) = symbols.last_mut() {
            last.push_str("</w>");
        }
        *words.entry(symbols).or_default() += 1;
    }

    let mut merges = Vec::new();
    let mut created = 0;
    while created < wanted {
        let mut pairs: BTreeMap<(String, String), u64> = BTreeMap::new();
        for (symbols, count) in &words {
            for w in symbols.windows(2) {
                *pairs.entry((w[0].clone(), w[1].clone())).or_default() += count;
            }
        }
        // Highest count; BTreeMap order makes the first maximum the smallest pair.
        let Some((best, _)) =
            pairs
                .iter()
                .fold(None::<(&(String, String), u64)>, |acc, (p, &c)| match acc {
                    Some((_, best)) if best >= c => acc,
                    _ => Some((p, c)),
                })
        else {
            panic!("the CLIP corpus yields only {created} merges, {wanted} wanted; this is a bug");
        };
        let best = best.clone();
        let merged = format!("{}{}", best.0, best.1);
        words = words
            .into_iter()
            .map(|(symbols, count)| (merge_pair(&symbols, &best, &merged), count))
            .fold(BTreeMap::new(), |mut acc, (s, c)| {
                *acc.entry(s).or_default() += c;
                acc
            });
        if !vocab.contains(&merged) {
            vocab.push(merged);
            created += 1;
        }
        merges.push(best);
    }
    vocab.push(CLIP_BOS.into());
    vocab.push(CLIP_EOS.into());
    (vocab, merges)
}

fn merge_pair(symbols: &[String], pair: &(String, String), merged: &str) -> Vec<String> {
    let mut out = Vec::with_capacity(symbols.len());
    let mut i = 0;
    while i < symbols.len() {
        if i + 1 < symbols.len() && symbols[i] == pair.0 && symbols[i + 1] == pair.1 {
            out.push(merged.to_string());
            i += 2;
        } else {
            out.push(symbols[i].clone());
            i += 1;
        }
    }
    out
}

fn added_token_entry(content: &str) -> Value {
    json!({
        "content": content,
        "lstrip": false,
        "normalized": false,
        "rstrip": false,
        "single_word": false,
        "special": true,
    })
}

/// Writes `tokenizer/`: vocab.json, merges.txt, tokenizer_config.json, special_tokens_map.json.
pub fn write_clip(dir: &Path) -> Result<(), TinyError> {
    let (vocab, merges) = clip_vocab_and_merges();
    let vocab_json: serde_json::Map<String, Value> = vocab
        .iter()
        .enumerate()
        .map(|(id, tok)| (tok.clone(), json!(id)))
        .collect();
    super::write_json(&dir.join("vocab.json"), &Value::Object(vocab_json))?;
    let mut text = String::from("#version: 0.2\n");
    for (a, b) in &merges {
        text.push_str(&format!("{a} {b}\n"));
    }
    super::write_bytes(&dir.join("merges.txt"), text.as_bytes())?;
    let config = json!({
        "add_prefix_space": false,
        "added_tokens_decoder": {
            CLIP_BOS_ID.to_string(): added_token_entry(CLIP_BOS),
            CLIP_EOS_ID.to_string(): added_token_entry(CLIP_EOS),
        },
        "bos_token": CLIP_BOS,
        "clean_up_tokenization_spaces": true,
        "do_lower_case": true,
        "eos_token": CLIP_EOS,
        "errors": "replace",
        "model_max_length": 77,
        "pad_token": CLIP_EOS,
        "tokenizer_class": "CLIPTokenizer",
        "unk_token": CLIP_EOS,
    });
    super::write_json(&dir.join("tokenizer_config.json"), &config)?;
    let special = json!({
        "bos_token": added_token_entry(CLIP_BOS),
        "eos_token": added_token_entry(CLIP_EOS),
        "pad_token": CLIP_EOS,
        "unk_token": added_token_entry(CLIP_EOS),
    });
    super::write_json(&dir.join("special_tokens_map.json"), &special)
}

/// The T5 pieces after the three specials, with their Unigram log-probabilities.
fn t5_pieces() -> Vec<(String, f64)> {
    const WORDS: &[&str] = &[
        "the",
        "a",
        "make",
        "cat",
        "red",
        "dog",
        "blue",
        "green",
        "of",
        "in",
        "and",
        "with",
        "to",
        "photo",
        "image",
        "is",
        "on",
        "at",
        "white",
        "black",
        "yellow",
        "turn",
        "into",
        "add",
        "remove",
        "change",
        "background",
        "sky",
        "hat",
        "man",
        "woman",
        "style",
        "painting",
        "sun",
        "tree",
        "house",
        "car",
        "big",
        "small",
    ];
    const SUFFIXES: &[&str] = &["s", "ing", "ed", "er", "ly"];
    let mut pieces = vec![("▁".to_string(), -2.0)];
    for (i, w) in WORDS.iter().enumerate() {
        pieces.push((format!("▁{w}"), -4.0 - 0.01 * i as f64));
    }
    for (i, s) in SUFFIXES.iter().enumerate() {
        pieces.push((s.to_string(), -6.0 - 0.01 * i as f64));
    }
    let singles = ('a'..='z')
        .chain('A'..='Z')
        .chain('0'..='9')
        .chain(".,!?'-".chars());
    for (i, c) in singles.enumerate() {
        if c.is_ascii_alphabetic() && SUFFIXES.contains(&c.to_string().as_str()) {
            continue;
        }
        pieces.push((c.to_string(), -9.0 - 0.01 * i as f64));
    }
    pieces
}

/// The T5 tokenizer as `tokenizer_2/tokenizer.json` describes it.
pub fn t5_tokenizer() -> Result<Tokenizer, TinyError> {
    let mut vocab: Vec<(String, f64)> = ["<pad>", "</s>", "<unk>"]
        .iter()
        .map(|s| (s.to_string(), 0.0))
        .collect();
    vocab.extend(t5_pieces());
    assert!(
        vocab.len() <= T5_VOCAB_SIZE,
        "T5 pieces exceed the embedding rows; this is a bug"
    );
    let model = Unigram::from(vocab, Some(2), false).map_err(TinyError::Tokenizer)?;
    let mut tok = Tokenizer::new(model);
    tok.with_pre_tokenizer(Some(Sequence::new(vec![
        WhitespaceSplit.into(),
        Metaspace::new('▁', PrependScheme::Always, true).into(),
    ])));
    tok.with_decoder(Some(MetaspaceDecoder::new(
        '▁',
        PrependScheme::Always,
        true,
    )));
    let post = TemplateProcessing::builder()
        .try_single("$A </s>")
        .and_then(|b| b.try_pair("$A </s> $B </s>"))
        .map_err(|e| TinyError::Tokenizer(e.into()))?
        .special_tokens(vec![("</s>", 1)])
        .build()
        .map_err(|e| TinyError::Tokenizer(e.into()))?;
    tok.with_post_processor(Some(post));
    tok.add_special_tokens([
        AddedToken::from("<pad>", true),
        AddedToken::from("</s>", true),
        AddedToken::from("<unk>", true),
    ])
    .map_err(TinyError::Tokenizer)?;
    Ok(tok)
}

/// Writes `tokenizer_2/`: tokenizer.json, tokenizer_config.json, special_tokens_map.json.
pub fn write_t5(dir: &Path) -> Result<(), TinyError> {
    let tok = t5_tokenizer()?;
    let json_text = tok.to_string(true).map_err(TinyError::Tokenizer)?;
    super::write_bytes(&dir.join("tokenizer.json"), json_text.as_bytes())?;
    let config = json!({
        "added_tokens_decoder": {
            "0": added_token_entry("<pad>"),
            "1": added_token_entry("</s>"),
            "2": added_token_entry("<unk>"),
        },
        "clean_up_tokenization_spaces": true,
        "eos_token": "</s>",
        "extra_ids": 0,
        "model_max_length": 512,
        "pad_token": "<pad>",
        "tokenizer_class": "T5Tokenizer",
        "unk_token": "<unk>",
    });
    super::write_json(&dir.join("tokenizer_config.json"), &config)?;
    let special = json!({
        "eos_token": added_token_entry("</s>"),
        "pad_token": added_token_entry("<pad>"),
        "unk_token": added_token_entry("<unk>"),
    });
    super::write_json(&dir.join("special_tokens_map.json"), &special)
}
