"""Python stand-in for `kontext-worker tiny --layout diffusers` (development and diagnosis only).

The committed fixtures are made from the folder the RUST writer produces (make_fixtures.py runs
`cargo run --release -p kontext-worker -- tiny ...`). This module builds a diffusers folder with the
same architecture and configs in Python, so that

  * make_fixtures.py could be developed before the Rust writer existed, and
  * when diffusers refuses the Rust folder, the two folders can be diffed file by file
    (`python tests/parity/tiny_py.py --out /tmp/tiny-py` then `diff -r`), which narrows the
    problem to a config key or a tensor name.

The weights here come from torch's RNG and the tokenizers are built differently from the Rust
writer's, so the *numbers* differ from the Rust folder; only the structure is meant to match.

Configs: the tiny model of docs/engine.md §Parity: FluxConfig::tiny()/VaeConfig::tiny() in
engine/src/config.rs and the tiny text encoder configs in engine/src/tiny/text_models.rs.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
from collections import Counter
from pathlib import Path

# Transformer: FluxConfig::tiny().
TRANSFORMER_CONFIG = dict(
    patch_size=1,
    in_channels=64,
    out_channels=None,
    num_layers=1,
    num_single_layers=2,
    attention_head_dim=16,
    num_attention_heads=2,
    joint_attention_dim=32,
    pooled_projection_dim=32,
    guidance_embeds=True,
    axes_dims_rope=[4, 6, 6],
)

# AE: VaeConfig::tiny() (BFL ch 32, ch_mult [1,1,2,2], num_res_blocks 2, z 16, GroupNorm 32).
VAE_CONFIG = dict(
    in_channels=3,
    out_channels=3,
    down_block_types=["DownEncoderBlock2D"] * 4,
    up_block_types=["UpDecoderBlock2D"] * 4,
    block_out_channels=[32, 32, 64, 64],
    layers_per_block=2,
    act_fn="silu",
    latent_channels=16,
    norm_num_groups=32,
    sample_size=1024,
    scaling_factor=0.3611,
    shift_factor=0.1159,
    use_quant_conv=False,
    use_post_quant_conv=False,
    mid_block_add_attention=True,
    force_upcast=True,
)

CLIP_CONFIG = dict(
    vocab_size=626,
    hidden_size=32,
    intermediate_size=64,
    num_hidden_layers=2,
    num_attention_heads=4,
    max_position_embeddings=77,
    hidden_act="quick_gelu",
    projection_dim=32,
    bos_token_id=624,
    eos_token_id=625,
    pad_token_id=625,
)

T5_CONFIG = dict(
    vocab_size=98,
    d_model=32,
    d_kv=8,
    d_ff=64,
    num_layers=2,
    num_heads=4,
    relative_attention_num_buckets=32,
    relative_attention_max_distance=128,
    feed_forward_proj="gated-gelu",
    tie_word_embeddings=False,
    pad_token_id=0,
    eos_token_id=1,
    decoder_start_token_id=0,
)

SCHEDULER_CONFIG = dict(
    num_train_timesteps=1000,
    shift=3.0,
    use_dynamic_shifting=True,
    base_shift=0.5,
    max_shift=1.15,
    base_image_seq_len=256,
    max_image_seq_len=4096,
)

# A small English corpus the CLIP merges and T5 pieces are derived from (deterministically).
CORPUS = (
    "make the cat red . a photo of a cat sitting on the sofa . turn the sky into a sunset . "
    "add a hat to the dog . the cat is red and the dog is blue . make it a painting of the sea . "
    "remove the text from the image . change the background to a forest at night"
)


def bytes_to_unicode() -> dict[int, str]:
    """OpenAI CLIP's byte -> printable character table (the order of vocab.json's first 256 ids)."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1))
    bs += list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, (chr(c) for c in cs)))


def clip_vocab_and_merges(num_merges: int = 112) -> tuple[dict[str, int], list[tuple[str, str]]]:
    """Byte-level BPE with OpenAI's vocab layout; merges by pair count, ties by the smaller pair."""
    byte_chars = list(bytes_to_unicode().values())
    vocab = {c: i for i, c in enumerate(byte_chars)}
    for c in byte_chars:
        vocab[c + "</w>"] = len(vocab)
    words = Counter(w for w in CORPUS.split(" ") if w)
    seqs = {w: list(w[:-1]) + [w[-1] + "</w>"] for w in words}
    merges: list[tuple[str, str]] = []
    while len(merges) < num_merges:
        pairs: Counter = Counter()
        for w, seq in seqs.items():
            for a, b in zip(seq, seq[1:]):
                pairs[(a, b)] += words[w]
        if not pairs:
            break
        best = min(pairs, key=lambda p: (-pairs[p], p))
        merges.append(best)
        vocab.setdefault(best[0] + best[1], len(vocab))
        for w, seq in seqs.items():
            out, i = [], 0
            while i < len(seq):
                if i + 1 < len(seq) and (seq[i], seq[i + 1]) == best:
                    out.append(seq[i] + seq[i + 1])
                    i += 2
                else:
                    out.append(seq[i])
                    i += 1
            seqs[w] = out
    # Pad with merges of single letters so the vocab has exactly 624 regular entries.
    letters = "abcdefghijklmnopqrstuvwxyz"
    extra = ((a, b + "</w>") for a in letters for b in letters)
    while len(vocab) < 624:
        a, b = next(extra)
        if a + b not in vocab:
            merges.append((a, b))
            vocab[a + b] = len(vocab)
    vocab["<|startoftext|>"] = 624
    vocab["<|endoftext|>"] = 625
    return vocab, merges


def t5_pieces(vocab_size: int = 98) -> list[tuple[str, float]]:
    """Unigram pieces: specials, then the corpus's words (▁-prefixed), then single characters."""
    pieces: list[tuple[str, float]] = [("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0), ("▁", -2.0)]
    seen = {p for p, _ in pieces}
    for ch in "abcdefghijklmnopqrstuvwxyz.,":
        pieces.append((ch, -5.0 - 0.01 * len(pieces)))
        seen.add(ch)
    for w, n in sorted(Counter(CORPUS.split()).items(), key=lambda x: (-x[1], x[0])):
        piece = "▁" + w
        if piece not in seen and len(pieces) < vocab_size:
            pieces.append((piece, -3.0 + 0.1 * n - 0.001 * len(pieces)))
            seen.add(piece)
    return pieces


def build(out: Path, seed: int) -> None:
    import torch
    from diffusers import AutoencoderKL, FlowMatchEulerDiscreteScheduler, FluxKontextPipeline
    from diffusers import FluxTransformer2DModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer, T5Config
    from transformers import T5EncoderModel, T5TokenizerFast

    out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(seed)
    transformer = FluxTransformer2DModel(**TRANSFORMER_CONFIG)
    vae = AutoencoderKL(**VAE_CONFIG)
    text_encoder = CLIPTextModel(CLIPTextConfig(**CLIP_CONFIG))
    text_encoder_2 = T5EncoderModel(T5Config(**T5_CONFIG))
    # Default init leaves norms at 1/0, which would hide swapped or ignored norm tensors.
    with torch.no_grad():
        for module in (transformer, vae, text_encoder, text_encoder_2):
            for name, p in module.named_parameters():
                if "norm" in name:
                    if name.endswith("bias"):
                        p.copy_(0.1 * torch.randn_like(p))
                    else:
                        p.copy_(1 + 0.1 * torch.randn_like(p))

    src = out / "_tok_src"
    src.mkdir(exist_ok=True)
    vocab, merges = clip_vocab_and_merges()
    (src / "vocab.json").write_text(json.dumps(vocab, ensure_ascii=False))
    (src / "merges.txt").write_text(
        "#version: 0.2\n" + "".join(f"{a} {b}\n" for a, b in merges), encoding="utf-8"
    )
    tokenizer = CLIPTokenizer(
        vocab=str(src / "vocab.json"), merges=str(src / "merges.txt"), model_max_length=77
    )
    tokenizer_2 = T5TokenizerFast(vocab=t5_pieces(), extra_ids=0, model_max_length=512)

    pipe = FluxKontextPipeline(
        scheduler=FlowMatchEulerDiscreteScheduler(**SCHEDULER_CONFIG),
        vae=vae,
        text_encoder=text_encoder,
        tokenizer=tokenizer,
        text_encoder_2=text_encoder_2,
        tokenizer_2=tokenizer_2,
        transformer=transformer,
    )
    pipe.save_pretrained(out)
    # Shard the two sharded components like the real repo (the loader's index path).
    transformer.save_pretrained(out / "transformer", max_shard_size="250KB")
    for stale in (out / "transformer").glob("diffusion_pytorch_model.safetensors"):
        stale.unlink()
    text_encoder_2.save_pretrained(out / "text_encoder_2", max_shard_size="60KB")
    for stale in (out / "text_encoder_2").glob("model.safetensors"):
        stale.unlink()
    # Real FLUX tokenizer/ has vocab.json + merges.txt and no tokenizer.json.
    shutil.copy(src / "vocab.json", out / "tokenizer" / "vocab.json")
    shutil.copy(src / "merges.txt", out / "tokenizer" / "merges.txt")
    (out / "tokenizer" / "tokenizer.json").unlink(missing_ok=True)
    shutil.rmtree(src)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", type=Path, required=True)
    args = ap.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    build(args.out, args.seed)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
