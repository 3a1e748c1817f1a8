"""The shapes VAE: diffusers' AutoencoderKL with FLUX's structure (16 latent channels, 8x
downsampling, no quant convs, mid-block attention) at small width, trained on the world's
images; its scale and shift are computed from its own latents, as FLUX's 0.3611 / 0.1159 were."""

import os
import time

import numpy as np
import torch
import torch.nn.functional as F
from diffusers import AutoencoderKL

from checkpoint import load_checkpoint, save_checkpoint

VAE_CHANNELS = (32, 64, 64, 64)
VAE_GROUPS = 16
KL_WEIGHT = 1e-6


def new_vae() -> AutoencoderKL:
    return AutoencoderKL(
        in_channels=3, out_channels=3, latent_channels=16,
        down_block_types=("DownEncoderBlock2D",) * len(VAE_CHANNELS),
        up_block_types=("UpDecoderBlock2D",) * len(VAE_CHANNELS),
        block_out_channels=VAE_CHANNELS, layers_per_block=1, norm_num_groups=VAE_GROUPS,
        act_fn="silu", use_quant_conv=False, use_post_quant_conv=False,
        mid_block_add_attention=True, scaling_factor=1.0, shift_factor=0.0, force_upcast=True,
    )


# The VAE trains on 64x64 crops (it is convolutional; the mid-block attention does not care
# about size), which costs a third of full 96x96 images per step.
VAE_CROP = 64


def sample_images(data, rng: np.random.Generator, batch: int) -> np.ndarray:
    """Half targets, half edit inputs: every scene the transformer will see through the VAE."""
    idx = np.sort(rng.choice(data.count, batch, replace=False))
    inputs_idx = idx[data.has_input[idx]][: batch // 2]
    imgs = np.concatenate([data.targets[idx[: batch - len(inputs_idx)]], data.inputs[inputs_idx]])
    return imgs


def sample_crops(data, rng: np.random.Generator, batch: int) -> np.ndarray:
    imgs = sample_images(data, rng, batch)
    if data.size <= VAE_CROP:
        return imgs
    # Offsets on the 8-pixel latent grid, so crops see cells the way full images do.
    out = np.empty((batch, VAE_CROP, VAE_CROP, 3), dtype=np.uint8)
    for k in range(batch):
        y, x = 8 * rng.integers(0, (data.size - VAE_CROP) // 8 + 1, size=2)
        out[k] = imgs[k, y : y + VAE_CROP, x : x + VAE_CROP]
    return out


def psnr(a: torch.Tensor, b: torch.Tensor) -> float:
    """PSNR in dB of two (B,3,H,W) batches in [-1,1], after the uint8 rounding of the outputs."""
    from data import to_u8

    x = to_u8(a).astype(np.float64)
    y = to_u8(b).astype(np.float64)
    mse = ((x - y) ** 2).mean()
    return 99.0 if mse == 0 else float(10 * np.log10(255.0**2 / mse))


def train_vae(data, work: str, steps: int, batch: int, lr: float, seed: int, log):
    from data import to_pixels

    ckpt_path = f"{work}/vae.ckpt"
    torch.manual_seed(seed)
    vae = new_vae()
    opt = torch.optim.AdamW(vae.parameters(), lr=lr, weight_decay=0.0)
    state = load_checkpoint(ckpt_path, vae, opt)
    step, losses, elapsed = state.get("step", 0), state.get("losses", []), state.get("elapsed", 0.0)
    rng = np.random.default_rng(seed + step)
    if step:
        log(f"vae: resuming at step {step}/{steps}")
    last_save = time.time()
    started = time.time() - elapsed
    vae.train()
    while step < steps:
        frac = step / steps
        for g in opt.param_groups:
            g["lr"] = lr * min(1.0, (step + 1) / 100) * (0.5 * (1 + np.cos(np.pi * frac)) * 0.9 + 0.1)
        x = to_pixels(sample_crops(data, rng, batch))
        posterior = vae.encode(x).latent_dist
        recon = vae.decode(posterior.sample()).sample
        rec = F.mse_loss(recon, x)
        kl = posterior.kl().mean() / x[0].numel()
        loss = rec + KL_WEIGHT * kl * x[0].numel()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(vae.parameters(), 1.0)
        opt.step()
        step += 1
        losses.append((step, float(rec.detach())))
        if step % 50 == 0:
            log(f"vae step {step}/{steps} mse {float(rec):.5f} "
                f"psnr~{10 * np.log10(4.0 / max(float(rec), 1e-12)):.1f} dB "
                f"{(time.time() - started) / 60:.1f} min")
        if time.time() - last_save > 300 or step == steps:
            save_checkpoint(ckpt_path, vae, opt, step=step, losses=losses,
                            elapsed=time.time() - started)
            last_save = time.time()
    vae.eval()
    return vae, losses, time.time() - started


@torch.no_grad()
def calibrate(vae, data, seed: int, n: int = 512):
    """Shift = mean and scale = 1/std of the posterior means over `n` training images; also the
    reconstruction PSNR on them."""
    from data import to_pixels

    rng = np.random.default_rng(seed + 99)
    means, psnrs = [], []
    for i in range(0, n, 256):
        x = to_pixels(sample_images(data, rng, 256))
        mean = vae.encode(x).latent_dist.mean
        means.append(mean)
        psnrs.append(psnr(vae.decode(mean).sample, x))
    z = torch.cat(means)
    return float(z.mean()), float(1.0 / z.std()), float(np.mean(psnrs))


def export_vae(vae, out: str, shift: float, scale: float, size: int):
    vae.register_to_config(shift_factor=shift, scaling_factor=scale, sample_size=size)
    os.makedirs(f"{out}/vae", exist_ok=True)
    vae.save_pretrained(f"{out}/vae", safe_serialization=True)
