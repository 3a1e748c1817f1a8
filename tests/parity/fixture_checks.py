"""Sanity checks make_fixtures.py runs on what it captured; the script fails if one fails.

They prove the fixture is self-consistent (the Euler loop rebuilt from the captured tensors gives the
pipeline's result, the hand decode equals the pipeline's own) and measure the BFL-vs-diffusers
differences that matter in f32 (normalisation, encode order, pack rule, schedule formula, timestep
feeding). Results go into meta.json "sanity_checks".
"""

from __future__ import annotations

import math

import numpy as np
import torch
from PIL import Image



def max_abs(a: torch.Tensor, b: torch.Tensor) -> float:
    if a.shape != b.shape:
        raise AssertionError(f"shape {tuple(a.shape)} != {tuple(b.shape)}")
    return float((a.double() - b.double()).abs().max())


def rel_l2(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.double() - b.double()).norm() / b.double().norm().clamp_min(1e-30))


class Checks:
    def __init__(self) -> None:
        self.results: dict[str, dict] = {}

    def check(self, name: str, got: torch.Tensor, want: torch.Tensor, bound: float, note: str = ""):
        d = max_abs(got, want)
        self.results[name] = {"max_abs": d, "rel_l2": rel_l2(got, want), "bound": bound, "note": note}
        status = "ok " if d <= bound else "FAIL"
        print(f"  [{status}] {name}: max_abs {d:.3g} (bound {bound:g}) {note}")
        if d > bound:
            raise AssertionError(f"sanity check {name} failed: max_abs {d} > {bound}")


def bfl_sigmas(steps: int, n_target: int) -> tuple[torch.Tensor, float]:
    """BFL sampling.py:277-305: linspace(1, 0, N+1) in f32, exponential time shift with mu(seq)."""
    m = (1.15 - 0.5) / (4096 - 256)
    mu = m * n_target + (0.5 - m * 256)
    t = torch.linspace(1, 0, steps + 1)
    shifted = torch.where(t > 0, math.exp(mu) / (math.exp(mu) + (1 / t - 1)), torch.zeros_like(t))
    return shifted.float(), mu


def bfl_pack(z: torch.Tensor) -> torch.Tensor:
    """einops `b c (h ph) (w pw) -> b (h w) (c ph pw)` (BFL sampling.py), written with view/permute."""
    b, c, h, w = z.shape
    return z.view(b, c, h // 2, 2, w // 2, 2).permute(0, 2, 4, 1, 3, 5).reshape(b, (h // 2) * (w // 2), c * 4)


def manual_denoise(pipe, t: dict, n_target: int, context: torch.Tensor | None, bfl_timestep: bool):
    """The Euler loop rebuilt from captured tensors only. bfl_timestep feeds sigma itself (BFL's
    t_vec) instead of diffusers' (sigma·1000)/1000."""
    x = t["initial_latents_packed"].clone()
    ids = t["step0_img_ids"]
    sig = t["sigmas"]
    for i in range(len(t["timesteps"])):
        inp = x if context is None else torch.cat([x, context], dim=1)  # (1, n_t + n_ctx, 64)
        ts = sig[i : i + 1] if bfl_timestep else t["timesteps"][i : i + 1] / 1000
        v = pipe.transformer(
            hidden_states=inp,
            timestep=ts,
            guidance=torch.full([1], t["step0_guidance"].item(), dtype=torch.float32),
            pooled_projections=t["clip_pooled"],
            encoder_hidden_states=t["t5_embeds"],
            txt_ids=t["text_ids"],
            img_ids=ids,
            return_dict=False,
        )[0][:, :n_target]
        x = x + (sig[i + 1] - sig[i]) * v  # BFL sampling.py:351
    return x


def sanity_checks(edit_pipe, gen_pipe, image: Image.Image, e: dict, g: dict, args) -> dict:
    H, W = args.height, args.width
    c = Checks()
    print("sanity checks:")
    with torch.inference_mode():
        # Resize: PIL LANCZOS straight, and BFL's x/127.5 - 1 normalisation.
        resized = np.asarray(image.resize((W, H), Image.LANCZOS), dtype=np.float32)
        pil = torch.from_numpy(resized / 255.0 * 2 - 1).permute(2, 0, 1)[None]  # (1, 3, H, W)
        c.check("resize_pil_lanczos", e["image_preprocessed"], pil, 0.0, "PIL resize, /255*2-1")
        bfl = torch.from_numpy(resized / 127.5 - 1).permute(2, 0, 1)[None]
        c.check("normalise_bfl_vs_diffusers", e["image_preprocessed"], bfl, 2.4e-7, "x/127.5-1 vs (x/255)*2-1")

        # VAE encode = posterior MEAN, then scale·(mean - shift) (BFL autoencoder.py).
        vae = edit_pipe.vae
        mean = vae.encode(e["image_preprocessed"]).latent_dist.mean
        z = vae.config.scaling_factor * (mean - vae.config.shift_factor)
        c.check("encode_mean_bfl_order", e["context_latents_unpacked"], z, 1e-6, "scale*(mean-shift)")
        c.check("pack_bfl_rule", e["context_latents_packed"], bfl_pack(e["context_latents_unpacked"]), 0.0)
        c.check("pack_noise", e["initial_latents_packed"], bfl_pack(e["initial_latents_unpacked"]), 0.0)

        # Text: T5 over all 512 tokens with NO mask; CLIP pooled = final-LN state at first EOS.
        for name, t, pipe in (("edit", e, edit_pipe), ("generate", g, gen_pipe)):
            t5 = pipe.text_encoder_2(t["t5_input_ids"]).last_hidden_state
            c.check(f"{name}_t5_unmasked", t["t5_embeds"], t5, 0.0)
            ids = t["clip_input_ids"][0]
            eos = int((ids == pipe.tokenizer.eos_token_id).nonzero()[0])
            c.check(f"{name}_clip_pool_first_eos", t["clip_pooled"], t["clip_last_hidden_state"][:, eos], 0.0,
                    f"eos at {eos}")
            c.check(f"{name}_step0_encoder_hidden_states", t["step0_encoder_hidden_states"], t["t5_embeds"], 0.0)

        # Schedule: BFL's formula vs the scheduler's sigmas; timesteps = sigmas·1000.
        n_t = e["initial_latents_packed"].shape[1]
        sig, mu = bfl_sigmas(args.steps, n_t)
        c.check("sigmas_bfl_formula", e["sigmas"], sig, 2e-7, f"mu {mu:.6f}")
        c.check("timesteps_are_sigmas_x1000", e["timesteps"], e["sigmas"][:-1] * 1000, 0.0)
        c.check("generate_sigmas_equal_edit", g["sigmas"], e["sigmas"], 0.0, "same target token count")

        # Ids: target (0, r, c), context (1, r, c), concatenated after the target.
        r, cc = torch.meshgrid(torch.arange(H // 16), torch.arange(W // 16), indexing="ij")
        tgt = torch.stack([torch.zeros_like(r), r, cc], -1).reshape(-1, 3).float()
        c.check("target_ids_0_r_c", e["target_ids"], tgt, 0.0)
        c.check("context_ids_1_r_c", e["context_ids"], tgt + torch.tensor([1.0, 0, 0]), 0.0)
        c.check("step0_img_ids_target_then_context", e["step0_img_ids"],
                torch.cat([e["target_ids"], e["context_ids"]]), 0.0)
        c.check("step0_hidden_states_target_then_context", e["step0_hidden_states"],
                torch.cat([e["initial_latents_packed"], e["context_latents_packed"]], 1), 0.0)

        # The loop rebuilt from the captured pieces gives the pipeline's final latents.
        ctx = e["context_latents_packed"]
        c.check("edit_manual_loop", manual_denoise(edit_pipe, e, n_t, ctx, False), e["final_latents_packed"],
                1e-6, "diffusers timestep (sigma*1000)/1000")
        c.check("edit_manual_loop_bfl_timestep", manual_denoise(edit_pipe, e, n_t, ctx, True),
                e["final_latents_packed"], 1e-5, "timestep = sigma (BFL)")
        c.check("generate_manual_loop", manual_denoise(gen_pipe, g, n_t, None, False),
                g["final_latents_packed"], 1e-6)
        c.check("edit_last_step_is_final", e[f"latents_step{args.steps - 1}"], e["final_latents_packed"], 0.0)

        # Manual decode == the pipeline's own output_type="pt" run (same latents, same weights).
        pt = edit_pipe(image=image, prompt=args.prompt, height=H, width=W, max_area=H * W, _auto_resize=False,
                       num_inference_steps=args.steps, guidance_scale=args.guidance,
                       max_sequence_length=e["t5_input_ids"].shape[1], latents=e["initial_latents_packed"], output_type="pt").images
        c.check("edit_manual_decode_vs_pipeline_pt", (e["decoded_image"] / 2 + 0.5).clamp(0, 1), pt, 1e-6)
    return c.results
