"""Trains the `shapes` model from a seed: text side (frozen), VAE, cached latents, transformer,
export to a diffusers-layout model directory. Every stage is resumable: rerunning the same
command continues where a killed run stopped. Run through scripts/train-shapes.sh, which also
writes the dataset.

    python training/shapes/train.py --data WORK/data --work WORK --out models/shapes
"""

import argparse
import json
import os
import sys
import time

import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import encoders  # noqa: E402
import export  # noqa: E402
import flux  # noqa: E402
import vae as vae_mod  # noqa: E402
from data import ShapesData, to_pixels  # noqa: E402

# The text length of the shapes model (the 12B model uses 512): every prompt of the world fits.
MAX_SEQUENCE_LENGTH = 32


def log_to(path):
    def log(msg):
        line = f"[{time.strftime('%H:%M:%S')}] {msg}"
        print(line, flush=True)
        with open(path, "a") as f:
            f.write(line + "\n")

    return log


def stage_text(args, data, log):
    t5_tok, clip_tok = encoders.write_tokenizers(args.out, data.vocabulary, MAX_SEQUENCE_LENGTH)
    t5, clip = encoders.build_text_encoders(data.vocabulary, args.seed)
    encoders.write_text_encoders(args.out, t5, clip)
    log(f"text: vocabulary {len(data.vocabulary)} words; T5 d_model {encoders.T5_D_MODEL}, "
        f"CLIP hidden {encoders.CLIP_HIDDEN}")
    return t5_tok, clip_tok, t5, clip


def stage_vae(args, data, log):
    done = f"{args.work}/vae.json"
    vae = vae_mod.new_vae()
    if os.path.exists(done):
        with open(done) as f:
            info = json.load(f)
        state = torch.load(f"{args.work}/vae.ckpt", weights_only=False)
        vae.load_state_dict(state["model"])
        vae.eval()
        log(f"vae: done before ({info})")
        return vae, info
    vae, losses, seconds = vae_mod.train_vae(
        data, args.work, args.vae_steps, args.vae_batch, args.vae_lr, args.seed, log
    )
    shift, scale, psnr = vae_mod.calibrate(vae, data, args.seed)
    info = {"shift": shift, "scale": scale, "psnr_db": psnr, "seconds": seconds,
            "steps": args.vae_steps, "final_mse": float(np.mean([l for _, l in losses[-50:]]))}
    with open(done, "w") as f:
        json.dump(info, f, indent=2)
    log(f"vae: trained in {seconds / 60:.1f} min, reconstruction {psnr:.2f} dB, "
        f"shift {shift:.4f} scale {scale:.4f}")
    return vae, info


def stage_cache(args, data, vae, vae_info, text, log):
    path = f"{args.work}/cache.pt"
    if os.path.exists(path):
        return torch.load(path, weights_only=False)
    started = time.time()
    t5_tok, clip_tok, t5, clip = text
    targets = flux.cache_latents(vae, data.targets, vae_info["shift"], vae_info["scale"])
    contexts = torch.zeros_like(targets)
    idx = np.flatnonzero(data.has_input)
    contexts[idx] = flux.cache_latents(vae, data.inputs[idx], vae_info["shift"], vae_info["scale"])
    t5_emb, pooled = encoders.encode_prompts(
        data.prompts, t5_tok, clip_tok, t5, clip, MAX_SEQUENCE_LENGTH
    )
    cache = {"targets": targets, "contexts": contexts, "t5": t5_emb.half(), "pooled": pooled}
    torch.save(cache, f"{path}.tmp")
    os.replace(f"{path}.tmp", path)
    log(f"cache: {len(targets)} cases encoded in {(time.time() - started) / 60:.1f} min "
        f"(latent std {float(targets.std()):.3f})")
    return cache


def stage_flux(args, data, vae, vae_info, text, cache, log):
    t5_tok, clip_tok, t5, clip = text
    torch.manual_seed(args.seed + 1)
    model = flux.new_transformer(encoders.T5_D_MODEL, encoders.CLIP_HIDDEN)
    log(f"flux: {sum(p.numel() for p in model.parameters()) / 1e6:.2f} M parameters")
    b = flux.Batches(data, cache["targets"], cache["contexts"], cache["t5"], cache["pooled"],
                     args.seed)
    preview = export.Preview(args, data, vae, vae_info, b, (t5_tok, clip_tok, t5, clip))

    def on_checkpoint(ema, step):
        preview.write(ema, step, log)

    ema, losses, seconds = flux.train_flux(
        model, b, args.work, args.flux_steps, args.flux_batch, args.flux_lr, args.seed, log,
        on_checkpoint,
    )
    model.load_state_dict(ema.state_dict())
    model.eval()
    return model, losses, seconds


def snapshot(args, data, log):
    stage_text(args, data, log)
    vae, vae_info = stage_vae(args, data, log)
    vae_mod.export_vae(vae, args.out, vae_info["shift"], vae_info["scale"], data.size)
    state = torch.load(f"{args.work}/flux.ckpt", weights_only=False)
    model = flux.new_transformer(encoders.T5_D_MODEL, encoders.CLIP_HIDDEN)
    model.load_state_dict(state["ema"])
    export.write_model(args, data, model, vae_info, state["losses"], state["elapsed"],
                       MAX_SEQUENCE_LENGTH, log)
    log(f"snapshot of step {state['step']} written to {args.out}")


def bench(args, data, log):
    """Seconds per step of the VAE and the transformer at the configured sizes (a few steps)."""
    vae = vae_mod.new_vae()
    opt = torch.optim.AdamW(vae.parameters(), lr=1e-4)
    rng = np.random.default_rng(0)
    times = []
    for _ in range(4):
        x = to_pixels(vae_mod.sample_crops(data, rng, args.vae_batch))
        t0 = time.time()
        post = vae.encode(x).latent_dist
        loss = torch.nn.functional.mse_loss(vae.decode(post.sample()).sample, x)
        opt.zero_grad()
        loss.backward()
        opt.step()
        times.append(time.time() - t0)
    log(f"bench vae: {np.median(times[1:]):.3f} s/step at batch {args.vae_batch} "
        f"({sum(p.numel() for p in vae.parameters()) / 1e6:.2f} M params)")
    side = data.size // 16
    n = side * side
    fake = torch.randn(data.count, n, 64)
    b = flux.Batches(data, fake, fake, torch.randn(data.count, MAX_SEQUENCE_LENGTH,
                     encoders.T5_D_MODEL).half(), torch.randn(data.count, encoders.CLIP_HIDDEN),
                     0)
    model = flux.new_transformer(encoders.T5_D_MODEL, encoders.CLIP_HIDDEN)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    gen = torch.Generator().manual_seed(0)
    times = []
    for _ in range(4):
        t0 = time.time()
        opt.zero_grad()
        for idx, with_ctx in b.draw(args.flux_batch):
            (flux.flux_loss(model, b, idx, with_ctx, gen) / args.flux_batch).backward()
        opt.step()
        times.append(time.time() - t0)
    log(f"bench flux: {np.median(times[1:]):.3f} s/step at batch {args.flux_batch}, {n} target "
        f"tokens ({sum(p.numel() for p in model.parameters()) / 1e6:.2f} M params)")


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--data", required=True, help="dataset directory (kontext-shapes dataset --out)")
    p.add_argument("--work", required=True, help="checkpoints, caches, logs, previews")
    p.add_argument("--out", required=True, help="the model directory to write")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--vae-steps", type=int, default=1500)
    p.add_argument("--vae-batch", type=int, default=32)
    p.add_argument("--vae-lr", type=float, default=1e-3)
    p.add_argument("--flux-steps", type=int, default=4000)
    p.add_argument("--flux-batch", type=int, default=32)
    p.add_argument("--flux-lr", type=float, default=5e-4)
    p.add_argument("--bench", action="store_true", help="only print seconds per training step")
    p.add_argument("--snapshot", action="store_true",
                   help="export the transformer's current EMA checkpoint to --out and stop "
                        "(to look at a run in progress; the text side and VAE must be done)")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    os.makedirs(args.work, exist_ok=True)
    os.makedirs(args.out, exist_ok=True)
    log = log_to(f"{args.work}/train.log")
    data = ShapesData(args.data)
    if args.bench:
        bench(args, data, log)
        return
    if args.snapshot:
        snapshot(args, data, log)
        return
    started = time.time()
    text = stage_text(args, data, log)
    vae, vae_info = stage_vae(args, data, log)
    vae_mod.export_vae(vae, args.out, vae_info["shift"], vae_info["scale"], data.size)
    cache = stage_cache(args, data, vae, vae_info, text, log)
    model, losses, seconds = stage_flux(args, data, vae, vae_info, text, cache, log)
    export.write_model(args, data, model, vae_info, losses, seconds, MAX_SEQUENCE_LENGTH, log)
    log(f"all stages done; this run {(time.time() - started) / 60:.1f} min")


if __name__ == "__main__":
    main()
