"""The shapes model's frozen text side: word-level tokenizers over the world's closed vocabulary,
and small T5 / CLIP text encoders with seeded random weights (frozen, as FLUX keeps its encoders
frozen).

One deliberate difference from a random T5: FLUX gives text tokens no position ids (txt_ids are
zeros), so word order reaches the transformer only through what T5 encodes. A randomly
initialised T5 is close to a bag of words, which would make "a red circle at the top left and a
blue square in the center" ambiguous. So the T5's relative attention bias (the only place T5
encodes order) is set, not drawn: head h attends almost only to the token at a fixed offset, so
the output at "circle" carries its colour, size and position words in separate subspaces. The
weights are still those of an ordinary `T5EncoderModel`; any loader reads them unchanged.
"""

import json
import os

import torch
from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors
from transformers import CLIPTextConfig, CLIPTextModel, T5Config, T5EncoderModel
from transformers.models.t5.modeling_t5 import T5Attention

T5_SPECIALS = ["<pad>", "</s>", "<unk>"]
CLIP_BOS, CLIP_EOS = "<|startoftext|>", "<|endoftext|>"

T5_D_MODEL = 64
T5_HEADS = 8
T5_D_KV = 16
T5_D_FF = 128
T5_BUCKETS = 32
# Key offset each T5 head looks at (key position − query position).
T5_HEAD_OFFSETS = [0, -1, -2, -3, 1, 2, 3, 4]
T5_OFFSET_BIAS = 8.0

CLIP_HIDDEN = 64
CLIP_HEADS = 4
CLIP_LAYERS = 2
CLIP_INTERMEDIATE = 128
CLIP_POSITIONS = 77


def _word_level(vocab: dict, template: str, specials: list) -> Tokenizer:
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.normalizer = normalizers.Lowercase()
    # \w+|[^\w\s]+ : "circle," -> "circle", "," (the world's grammar writes " , ").
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.post_processor = processors.TemplateProcessing(
        single=template, special_tokens=[(t, vocab[t]) for t in specials]
    )
    return tok


def t5_vocab(words):
    return {t: i for i, t in enumerate(T5_SPECIALS + list(words))}


def clip_vocab(words):
    # EOS gets the highest id, as in CLIP-L, so pooling at argmax(ids) and at the first EOS agree.
    return {t: i for i, t in enumerate(["<unk>"] + list(words) + [CLIP_BOS, CLIP_EOS])}


def write_tokenizers(out: str, words, t5_max_length: int):
    """`tokenizer/` (CLIP) and `tokenizer_2/` (T5) as tokenizer.json + tokenizer_config.json.

    The configs name `PreTrainedTokenizerFast`, which loads tokenizer.json as written (transformers'
    CLIPTokenizer would rebuild a byte-level BPE from vocab.json instead)."""
    t5 = _word_level(t5_vocab(words), "$A </s>", ["</s>"])
    clip_v = clip_vocab(words)
    clip = _word_level(clip_v, f"{CLIP_BOS} $A {CLIP_EOS}", [CLIP_BOS, CLIP_EOS])
    for sub, tok, cfg in [
        ("tokenizer_2", t5, {"eos_token": "</s>", "pad_token": "<pad>", "unk_token": "<unk>",
                             "model_max_length": t5_max_length}),
        ("tokenizer", clip, {"bos_token": CLIP_BOS, "eos_token": CLIP_EOS, "pad_token": CLIP_EOS,
                             "unk_token": "<unk>", "model_max_length": CLIP_POSITIONS}),
    ]:
        os.makedirs(f"{out}/{sub}", exist_ok=True)
        tok.save(f"{out}/{sub}/tokenizer.json")
        cfg = dict(cfg, tokenizer_class="PreTrainedTokenizerFast")
        with open(f"{out}/{sub}/tokenizer_config.json", "w") as f:
            json.dump(cfg, f, indent=2, sort_keys=True)
    return t5, clip


def t5_config(vocab_size: int) -> T5Config:
    return T5Config(
        vocab_size=vocab_size, d_model=T5_D_MODEL, d_kv=T5_D_KV, d_ff=T5_D_FF, num_layers=1,
        num_decoder_layers=1, num_heads=T5_HEADS, relative_attention_num_buckets=T5_BUCKETS,
        relative_attention_max_distance=128, dropout_rate=0.0, layer_norm_epsilon=1e-6,
        feed_forward_proj="gated-gelu", tie_word_embeddings=False, pad_token_id=0, eos_token_id=1,
        decoder_start_token_id=0,
    )


def clip_config(vocab_size: int, bos: int, eos: int) -> CLIPTextConfig:
    return CLIPTextConfig(
        vocab_size=vocab_size, hidden_size=CLIP_HIDDEN, intermediate_size=CLIP_INTERMEDIATE,
        num_hidden_layers=CLIP_LAYERS, num_attention_heads=CLIP_HEADS,
        max_position_embeddings=CLIP_POSITIONS, hidden_act="quick_gelu", layer_norm_eps=1e-5,
        projection_dim=CLIP_HIDDEN, bos_token_id=bos, eos_token_id=eos, pad_token_id=eos,
        attention_dropout=0.0, dropout=0.0,
    )


def build_text_encoders(words, seed: int):
    """Seeded random T5 and CLIP text encoders, T5's relative bias set per the module docs."""
    torch.manual_seed(seed)
    t5 = T5EncoderModel(t5_config(len(T5_SPECIALS) + len(words))).eval()
    cv = clip_vocab(words)
    clip = CLIPTextModel(clip_config(len(cv), cv[CLIP_BOS], cv[CLIP_EOS])).eval()
    attn = t5.encoder.block[0].layer[0].SelfAttention
    with torch.no_grad():
        offsets = torch.tensor(T5_HEAD_OFFSETS)
        buckets = T5Attention._relative_position_bucket(
            offsets, bidirectional=True, num_buckets=T5_BUCKETS, max_distance=128
        )
        bias = torch.zeros(T5_BUCKETS, T5_HEADS)
        for head, bucket in enumerate(buckets.tolist()):
            bias[bucket, head] = T5_OFFSET_BIAS
        attn.relative_attention_bias.weight.copy_(bias)
    for p in list(t5.parameters()) + list(clip.parameters()):
        p.requires_grad_(False)
    return t5, clip


def write_text_encoders(out: str, t5, clip):
    t5.save_pretrained(f"{out}/text_encoder_2", safe_serialization=True)
    clip.save_pretrained(f"{out}/text_encoder", safe_serialization=True)


def pad_ids(tok: Tokenizer, prompt: str, length: int, eos: int, pad: int):
    """Token ids the way the engine and diffusers build them: truncate keeping EOS last, pad."""
    ids = tok.encode(prompt).ids
    if len(ids) > length:
        ids = ids[: length - 1] + [eos]
    return ids + [pad] * (length - len(ids))


@torch.no_grad()
def encode_prompts(prompts, t5_tok, clip_tok, t5, clip, t5_length: int, batch: int = 512):
    """T5 last_hidden_state over all `t5_length` positions (no mask) and CLIP's pooled output at
    the first EOS, as FluxKontextPipeline.encode_prompt computes them."""
    t5v, cv = t5_tok.get_vocab(), clip_tok.get_vocab()
    t5_out, pooled = [], []
    for i in range(0, len(prompts), batch):
        chunk = prompts[i : i + batch]
        ids = torch.tensor([pad_ids(t5_tok, p, t5_length, t5v["</s>"], t5v["<pad>"]) for p in chunk])
        t5_out.append(t5(ids).last_hidden_state)
        cids = torch.tensor([pad_ids(clip_tok, p, CLIP_POSITIONS, cv[CLIP_EOS], cv[CLIP_EOS]) for p in chunk])
        pooled.append(clip(cids).pooler_output)
    return torch.cat(t5_out), torch.cat(pooled)
