"""The shapes transformer: diffusers' FluxTransformer2DModel at small size, trained with the
FLUX.1 Kontext objective (Labs et al. 2025, "FLUX.1 Kontext", arXiv:2506.15742, §3): rectified
flow with a velocity target, logit-normal timesteps moved by the resolution-dependent shift, edit
samples with the context image's tokens after the target tokens (ids (1, r, c)), and
text-to-image samples with no context, in one model.

Latents and text embeddings are computed once (`cache_latents`, `encode_prompts`), so a training
step is the transformer alone."""

import math
import time

import numpy as np
import torch
import torch.nn.functional as F
from diffusers import FluxTransformer2DModel

from checkpoint import load_checkpoint, save_checkpoint

HIDDEN_HEADS = 4
HEAD_DIM = 48
AXES = (8, 20, 20)
DOUBLE_BLOCKS = 4
SINGLE_BLOCKS = 4
EMA_DECAY = 0.999


def new_transformer(text_dim: int, pooled_dim: int) -> FluxTransformer2DModel:
    return FluxTransformer2DModel(
        patch_size=1, in_channels=64, out_channels=None, num_layers=DOUBLE_BLOCKS,
        num_single_layers=SINGLE_BLOCKS, attention_head_dim=HEAD_DIM,
        num_attention_heads=HIDDEN_HEADS, joint_attention_dim=text_dim,
        pooled_projection_dim=pooled_dim, guidance_embeds=True, axes_dims_rope=AXES,
    )


def pack(z: torch.Tensor) -> torch.Tensor:
    """diffusers FluxPipeline._pack_latents: (B, C, H, W) -> (B, H/2*W/2, C*4)."""
    b, c, h, w = z.shape
    z = z.view(b, c, h // 2, 2, w // 2, 2)  # (b, c, h/2, ph, w/2, pw)
    z = z.permute(0, 2, 4, 1, 3, 5)  # (b, h/2, w/2, c, ph, pw)
    return z.reshape(b, (h // 2) * (w // 2), c * 4)


def unpack(x: torch.Tensor, h: int, w: int) -> torch.Tensor:
    """diffusers FluxPipeline._unpack_latents for latent size (h, w): (B, N, 64) -> (B, 16, h, w)."""
    b, _, d = x.shape
    x = x.view(b, h // 2, w // 2, d // 4, 2, 2)  # (b, h/2, w/2, c, ph, pw)
    x = x.permute(0, 3, 1, 4, 2, 5)  # (b, c, h/2, ph, w/2, pw)
    return x.reshape(b, d // 4, h, w)


def image_ids(rows: int, cols: int, index: float) -> torch.Tensor:
    """(rows*cols, 3) position ids (index, r, c), row-major (FluxKontextPipeline
    `_prepare_latent_image_ids`, context ids with index 1)."""
    r = torch.arange(rows).repeat_interleave(cols).float()
    c = torch.arange(cols).repeat(rows).float()
    return torch.stack([torch.full_like(r, index), r, c], dim=1)


def mu_for(tokens: int) -> float:
    """diffusers `calculate_shift` with FLUX's scheduler config (256 -> 0.5, 4096 -> 1.15)."""
    m = (1.15 - 0.5) / (4096 - 256)
    return tokens * m + (0.5 - m * 256)


def shifted(t: torch.Tensor, mu: float) -> torch.Tensor:
    """FLUX `time_shift(mu, 1, t)`."""
    return math.exp(mu) / (math.exp(mu) + (1 / t - 1))


@torch.no_grad()
def cache_latents(vae, images_u8: np.ndarray, shift: float, scale: float, batch: int = 256):
    """Packed, normalised posterior means `(mean - shift) * scale` of uint8 images."""
    from data import to_pixels

    out = []
    for i in range(0, len(images_u8), batch):
        mean = vae.encode(to_pixels(images_u8[i : i + batch])).latent_dist.mean
        out.append(pack((mean - shift) * scale))
    return torch.cat(out)


class Ema:
    def __init__(self, model):
        self.params = {k: v.detach().clone() for k, v in model.state_dict().items()}

    @torch.no_grad()
    def update(self, model, decay: float):
        for k, v in model.state_dict().items():
            if v.dtype.is_floating_point:
                self.params[k].mul_(decay).add_(v.detach(), alpha=1 - decay)
            else:
                self.params[k].copy_(v)

    def state_dict(self):
        return self.params

    def load_state_dict(self, state):
        self.params = {k: v.clone() for k, v in state.items()}


class Batches:
    """Draws training batches: ~30 % text-to-image, the rest edits, as the dataset mixes them."""

    def __init__(self, data, targets, contexts, t5, pooled, seed: int):
        self.targets, self.contexts, self.t5, self.pooled = targets, contexts, t5, pooled
        self.t2i = np.flatnonzero(~data.has_input)
        self.edit = np.flatnonzero(data.has_input)
        self.rng = np.random.default_rng(seed)
        side = int(round(math.sqrt(targets.shape[1])))
        self.target_ids = image_ids(side, side, 0.0)
        self.context_ids = image_ids(side, side, 1.0)
        self.mu = mu_for(targets.shape[1])

    def draw(self, batch: int):
        n_t2i = int(round(batch * len(self.t2i) / (len(self.t2i) + len(self.edit))))
        parts = []
        for pool, with_ctx, n in [(self.t2i, False, n_t2i), (self.edit, True, batch - n_t2i)]:
            if n == 0:
                continue
            idx = np.sort(self.rng.choice(pool, n, replace=False))
            parts.append((idx, with_ctx))
        return parts


def flux_loss(model, b: Batches, idx, with_ctx: bool, gen: torch.Generator):
    x0 = b.targets[idx]
    n = len(idx)
    eps = torch.randn(x0.shape, generator=gen)
    t = shifted(torch.sigmoid(torch.randn(n, generator=gen)), b.mu)
    xt = (1 - t[:, None, None]) * x0 + t[:, None, None] * eps
    hidden, ids = xt, b.target_ids
    if with_ctx:
        hidden = torch.cat([xt, b.contexts[idx]], dim=1)  # (n, N_t + N_ctx, 64)
        ids = torch.cat([b.target_ids, b.context_ids], dim=0)
    txt = b.t5[idx].float()
    guidance = 1.0 + 4.0 * torch.rand(n, generator=gen)
    out = model(
        hidden_states=hidden, encoder_hidden_states=txt, pooled_projections=b.pooled[idx].float(),
        timestep=t, img_ids=ids, txt_ids=torch.zeros(txt.shape[1], 3), guidance=guidance,
        return_dict=False,
    )[0]
    pred = out[:, : x0.shape[1]]  # the prediction is cut back to the target tokens
    return F.mse_loss(pred, eps - x0, reduction="sum") / pred[0].numel()


def train_flux(model, b: Batches, work: str, steps: int, batch: int, lr: float, seed: int, log,
               on_checkpoint=None):
    ckpt_path = f"{work}/flux.ckpt"
    opt = torch.optim.AdamW(model.parameters(), lr=lr, betas=(0.9, 0.99), weight_decay=0.0)
    ema = Ema(model)
    state = load_checkpoint(ckpt_path, model, opt, ema)
    step, losses, elapsed = state.get("step", 0), state.get("losses", []), state.get("elapsed", 0.0)
    gen = torch.Generator().manual_seed(seed + step)
    b.rng = np.random.default_rng(seed + step)
    if step:
        log(f"flux: resuming at step {step}/{steps}")
    started = time.time() - elapsed
    last_save = time.time()
    model.train()
    warmup = max(1, min(300, steps // 10))
    while step < steps:
        frac = step / steps
        for g in opt.param_groups:
            g["lr"] = lr * min(1.0, (step + 1) / warmup) * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * frac)))
        total = 0.0
        opt.zero_grad(set_to_none=True)
        for idx, with_ctx in b.draw(batch):
            loss = flux_loss(model, b, idx, with_ctx, gen) / batch
            loss.backward()
            total += float(loss)
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        step += 1
        ema.update(model, min(EMA_DECAY, (1 + step) / (10 + step)))
        losses.append((step, total))
        if step % 25 == 0:
            recent = np.mean([l for _, l in losses[-25:]])
            log(f"flux step {step}/{steps} loss {recent:.4f} {(time.time() - started) / 60:.1f} min")
        if time.time() - last_save > 300 or step == steps:
            save_checkpoint(ckpt_path, model, opt, ema, step=step, losses=losses,
                            elapsed=time.time() - started)
            last_save = time.time()
            if on_checkpoint is not None:
                on_checkpoint(ema, step)
    return ema, losses, time.time() - started


@torch.no_grad()
def sample(model, vae, b: Batches, t5, pooled, contexts, steps: int, seed: int, shift: float,
           scale: float):
    """Euler sampling on the shifted schedule (FluxKontextPipeline with `latents=` noise), then
    the VAE decode; returns (B, 3, H, W) pixels in [-1, 1]."""
    n, tokens = t5.shape[0], b.targets.shape[1]
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn((n, tokens, 64), generator=gen)
    sig = torch.linspace(1, 0, steps + 1)
    sig = torch.where(sig > 0, shifted(sig.clamp(min=1e-9), b.mu), sig)
    ids = b.target_ids
    if contexts is not None:
        ids = torch.cat([b.target_ids, b.context_ids], dim=0)
    for i in range(steps):
        hidden = x if contexts is None else torch.cat([x, contexts], dim=1)
        v = model(
            hidden_states=hidden, encoder_hidden_states=t5.float(), pooled_projections=pooled.float(),
            timestep=sig[i].expand(n), img_ids=ids, txt_ids=torch.zeros(t5.shape[1], 3),
            guidance=torch.full((n,), 2.5), return_dict=False,
        )[0][:, :tokens]
        x = x + (sig[i + 1] - sig[i]) * v
    side = int(round(math.sqrt(tokens))) * 2
    z = unpack(x, side, side) / scale + shift
    return vae.decode(z).sample
