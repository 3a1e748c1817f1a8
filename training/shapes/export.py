"""Writing the trained model directory (diffusers layout, f16 weights), its settings file, the
loss curve, and preview sheets during training."""

import copy
import json
import os

import numpy as np
import torch
from PIL import Image, ImageDraw

import encoders
import flux
from data import to_u8

# What differs from FLUX.1-Kontext-dev, read by the engine (engine/src/model_settings.rs).
SETTINGS_FILE = "kontext_model.json"


class Preview:
    """A sheet of a few training prompts sampled with the current EMA weights, at every
    checkpoint: text-to-image rows (correct | output), edit rows (input | output | correct)."""

    def __init__(self, args, data, vae, vae_info, batches, text, rows: int = 4):
        self.args, self.data, self.vae, self.vae_info, self.b = args, data, vae, vae_info, batches
        t2i = np.flatnonzero(~data.has_input)[-rows:]
        edit = np.flatnonzero(data.has_input)[-rows:]
        self.t2i, self.edit = t2i, edit

    def write(self, ema, step, log):
        model = flux.new_transformer(encoders.T5_D_MODEL, encoders.CLIP_HIDDEN)
        model.load_state_dict(ema.state_dict())
        model.eval()
        b, s, sc = self.b, self.vae_info["shift"], self.vae_info["scale"]
        out_t2i = to_u8(flux.sample(model, self.vae, b, b.t5[self.t2i], b.pooled[self.t2i], None,
                                    20, 0, s, sc))
        out_edit = to_u8(flux.sample(model, self.vae, b, b.t5[self.edit], b.pooled[self.edit],
                                     b.contexts[self.edit], 20, 0, s, sc))
        size = self.data.size
        sheet = Image.new("RGB", (3 * size, (len(self.t2i) + len(self.edit)) * size), "white")
        for r, i in enumerate(self.t2i):
            sheet.paste(Image.fromarray(np.asarray(self.data.targets[i])), (0, r * size))
            sheet.paste(Image.fromarray(out_t2i[r]), (size, r * size))
        for r, i in enumerate(self.edit):
            y = (len(self.t2i) + r) * size
            sheet.paste(Image.fromarray(np.asarray(self.data.inputs[i])), (0, y))
            sheet.paste(Image.fromarray(out_edit[r]), (size, y))
            sheet.paste(Image.fromarray(np.asarray(self.data.targets[i])), (2 * size, y))
        path = f"{self.args.work}/preview-{step:06d}.png"
        sheet.resize((sheet.width * 2, sheet.height * 2), Image.NEAREST).save(path)
        log(f"preview: {path}")


def loss_curve(vae_losses, flux_losses, path: str):
    """Two panels (VAE reconstruction MSE, transformer flow loss), log-scale y, smoothed."""
    w, h, pad = 900, 340, 50
    img = Image.new("RGB", (w, h), "white")
    d = ImageDraw.Draw(img)
    panels = [("VAE reconstruction MSE", vae_losses), ("transformer flow-matching loss", flux_losses)]
    pw = (w - 3 * pad) // 2
    for k, (title, series) in enumerate(panels):
        x0, y0, x1, y1 = pad + k * (pw + pad), pad, pad + k * (pw + pad) + pw, h - pad
        d.rectangle([x0, y0, x1, y1], outline="black")
        d.text((x0, 15), title, fill="black")
        if not series:
            continue
        steps = np.array([s for s, _ in series], dtype=float)
        vals = np.log10(np.maximum(np.array([v for _, v in series], dtype=float), 1e-8))
        win = max(1, len(vals) // 100)
        smooth = np.convolve(vals, np.ones(win) / win, mode="valid")
        steps = steps[win - 1 :]
        lo, hi = float(smooth.min()), float(smooth.max())
        hi = hi if hi > lo else lo + 1
        pts = [(x0 + (s - steps[0]) / max(1, steps[-1] - steps[0]) * pw,
                y1 - (v - lo) / (hi - lo) * (y1 - y0)) for s, v in zip(steps, smooth)]
        d.line(pts, fill=(200, 40, 40), width=2)
        d.text((x0 + 4, y0 + 4), f"{10 ** hi:.4g}", fill="black")
        d.text((x0 + 4, y1 - 14), f"{10 ** lo:.4g}", fill="black")
        d.text((x1 - 90, y1 + 6), f"step {int(steps[-1])}", fill="black")
    img.save(path)


def write_model(args, data, model, vae_info, losses, seconds, max_seq, log):
    out = args.out
    half = copy.deepcopy(model).to(torch.float16)
    half.save_pretrained(f"{out}/transformer", safe_serialization=True)
    vae_state = torch.load(f"{args.work}/vae.ckpt", weights_only=False)
    settings = {
        "name": "shapes",
        "max_sequence_length": max_seq,
        "native_resolution": [data.size, data.size],
        "preferred_resolutions": [[data.size, data.size]],
        "default_steps": 28,
        "trained_on": "the shapes world (shapes/ crate), seed %d" % args.seed,
    }
    with open(f"{out}/{SETTINGS_FILE}", "w") as f:
        json.dump(settings, f, indent=2)
    with open(f"{out}/model_index.json", "w") as f:
        json.dump({
            "_class_name": "FluxKontextPipeline",
            "_diffusers_version": "0.42.1",
            "feature_extractor": [None, None],
            "image_encoder": [None, None],
            "scheduler": ["diffusers", "FlowMatchEulerDiscreteScheduler"],
            "text_encoder": ["transformers", "CLIPTextModel"],
            "text_encoder_2": ["transformers", "T5EncoderModel"],
            "tokenizer": ["transformers", "PreTrainedTokenizerFast"],
            "tokenizer_2": ["transformers", "PreTrainedTokenizerFast"],
            "transformer": ["diffusers", "FluxTransformer2DModel"],
            "vae": ["diffusers", "AutoencoderKL"],
        }, f, indent=2, sort_keys=True)
    os.makedirs(f"{out}/scheduler", exist_ok=True)
    with open(f"{out}/scheduler/scheduler_config.json", "w") as f:
        json.dump({
            "_class_name": "FlowMatchEulerDiscreteScheduler", "_diffusers_version": "0.42.1",
            "base_image_seq_len": 256, "base_shift": 0.5, "max_image_seq_len": 4096,
            "max_shift": 1.15, "num_train_timesteps": 1000, "shift": 3.0,
            "use_dynamic_shifting": True,
        }, f, indent=2, sort_keys=True)
    report = {
        "seed": args.seed, "dataset_cases": data.count, "size": data.size,
        "vae": vae_info, "flux_steps": args.flux_steps, "flux_batch": args.flux_batch,
        "flux_seconds": seconds,
        "flux_final_loss": float(np.mean([l for _, l in losses[-100:]])),
        "flux_params": sum(p.numel() for p in model.parameters()),
        "torch": torch.__version__, "threads": torch.get_num_threads(),
    }
    with open(f"{args.work}/training.json", "w") as f:
        json.dump(report, f, indent=2)
    loss_curve(vae_state.get("losses", []), losses, f"{args.work}/loss-curve.png")
    log(f"export: {out} (flux final loss {report['flux_final_loss']:.4f}); "
        f"report {args.work}/training.json")
