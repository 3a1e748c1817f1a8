#!/usr/bin/env python3
"""Reference fixtures for the Rust Kontext engine, made with diffusers 0.42.1 in float32 on CPU.

Run by hand (never in CI) from the repository root with the project-local venv
(see tests/parity/README.md for the install):

    .venv-parity/bin/python tests/parity/make_fixtures.py \
        --seed 0 --width 256 --height 192 --steps 3 --out tests/parity/fixtures/default

What it does, in order:
  1. Writes the tiny model with the RUST writer:
       cargo run --release -p kontext-worker --bin kontext-worker -- tiny --seed S --layout diffusers --out OUT/model
     (--model-dir DIR reuses an existing diffusers folder instead; --python-tiny builds the
     Python stand-in from tiny_py.py, for development only). OUT/model is git-ignored and never
     committed: the Rust tests regenerate it from the seed and compare the sha256 in meta.json.
  2. Loads it offline with FluxKontextPipeline.from_pretrained and FluxPipeline.from_pretrained
     (HF_HUB_OFFLINE=1, TRANSFORMERS_OFFLINE=1, dtype=float32).
  3. Synthesises a deterministic input PNG of (W+13)x(H+9) so the PIL LANCZOS resize to WxH runs.
  4. Edit: FluxKontextPipeline(_auto_resize=False, height=H, width=W, max_area=W*H,
     max_sequence_length=512, guidance, explicit packed latents drawn with
     torch.Generator().manual_seed(seed), output_type="latent") + a manual VAE decode.
     Generate: FluxPipeline with the same sizes/steps and latents from manual_seed(seed + 1).
     Every stage is captured from inside the pipeline (wrappers/hooks, not re-computed), and
     written as OUT/edit.safetensors and OUT/generate.safetensors (fp32 / int64 only).
  5. Sanity checks (the script fails if one fails): a manual re-run of the Euler loop from the
     captured pieces reproduces the pipeline's final latents; the manual decode equals the
     pipeline's own "pt" output; PIL resize, pooling, the unmasked T5 pass, BFL's schedule
     formula and BFL's pack rule agree with what was captured. Results go in meta.json.
  6. OUT/meta.json: arguments, sizes, library versions, sha256 + size of every model file,
     every tensor (file, shape, dtype, meaning) and the check results.

`--bench` instead times one forward of the mid-size transformer (tests/parity/README.md, "PyTorch CPU
bench") and prints `pytorch_mid_forward_median_s=<x> ...` (the candle side is `kontext-worker` bench,
engine-model).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

# Must be set before diffusers/transformers are imported: no hub access, ever.
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")

import numpy as np  # noqa: E402
import torch  # noqa: E402
from PIL import Image  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
from fixture_checks import bfl_sigmas, sanity_checks  # noqa: E402

REPO_ROOT = Path(__file__).resolve().parents[2]
# BFL pads T5 to 512 and runs it without a mask (BFL `cli_kontext.py`, max_length=512); a model
# directory's kontext_model.json may set a shorter `max_sequence_length` (the shapes model: 32).
T5_LEN = 512
CLIP_LEN = 77


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--seed", type=int, default=0, help="tiny-model seed and noise seed")
    ap.add_argument("--width", type=int, default=256, help="target and context width (multiple of 16)")
    ap.add_argument("--height", type=int, default=192, help="target and context height (multiple of 16)")
    ap.add_argument("--steps", type=int, default=3, help="denoising steps")
    ap.add_argument("--out", type=Path, help="fixture directory to write")
    ap.add_argument("--prompt", default="make the cat red")
    ap.add_argument("--guidance", type=float, default=2.5)
    ap.add_argument("--model-dir", type=Path, help="reuse this diffusers folder instead of running cargo")
    ap.add_argument(
        "--python-tiny",
        action="store_true",
        help="development only: build the model with tiny_py.py instead of the Rust writer",
    )
    ap.add_argument("--threads", type=int, default=2, help="torch CPU threads")
    ap.add_argument("--bench", action="store_true", help="time the mid-size transformer forward and exit")
    ap.add_argument("--bench-runs", type=int, default=5, help="timed runs after one warm-up")
    args = ap.parse_args(argv)
    if args.bench:
        return args
    if args.out is None:
        ap.error("--out is required (except with --bench)")
    for name in ("width", "height"):
        v = getattr(args, name)
        if v <= 0 or v % 16:
            ap.error(f"--{name} must be a positive multiple of 16, got {v}")
    if args.steps < 1:
        ap.error(f"--steps must be ≥ 1, got {args.steps}")
    if args.model_dir and args.python_tiny:
        ap.error("--model-dir and --python-tiny exclude each other")
    return args


# ---------------------------------------------------------------------------------------------
# Model folder


def write_model(args: argparse.Namespace) -> tuple[Path, str]:
    """Returns (diffusers folder, how it was made)."""
    if args.model_dir:
        if not (args.model_dir / "model_index.json").is_file():
            sys.exit(f"--model-dir {args.model_dir}: no model_index.json there")
        return args.model_dir, f"existing folder {args.model_dir}"
    model = args.out / "model"
    if model.exists():
        if not (model / "model_index.json").is_file():
            sys.exit(f"{model} exists and is not a model folder this script wrote; remove it by hand")
        shutil.rmtree(model)
    if args.python_tiny:
        import tiny_py

        tiny_py.build(model, args.seed)
        return model, "python stand-in tests/parity/tiny_py.py (development only)"
    cmd = ["cargo", "run", "--release", "-p", "kontext-worker", "--bin", "kontext-worker", "--", "tiny",
           "--seed", str(args.seed), "--layout", "diffusers", "--out", str(model.resolve())]
    print("+", " ".join(cmd), flush=True)
    if subprocess.run(cmd, cwd=REPO_ROOT).returncode != 0:
        sys.exit(f"the Rust tiny writer failed (see cargo's output above): {' '.join(cmd)}")
    shown = cmd[:-1] + [os.path.relpath(model.resolve(), REPO_ROOT)]  # no machine-specific path in meta
    return model, " ".join(shown)


def git_provenance() -> dict:
    """Which writer source made the model: HEAD plus any uncommitted changes under worker/."""

    def git(*a: str) -> str:
        r = subprocess.run(["git", *a], cwd=REPO_ROOT, capture_output=True, text=True)
        return r.stdout.strip() if r.returncode == 0 else f"<git failed: {r.stderr.strip()}>"

    return {"commit": git("rev-parse", "HEAD"),
            "uncommitted_under_worker": git("status", "--porcelain", "--", "worker").splitlines()}


def model_hashes(model: Path) -> dict[str, dict]:
    out = {}
    for p in sorted(model.rglob("*")):
        if p.is_file():
            out[p.relative_to(model).as_posix()] = {
                "sha256": hashlib.sha256(p.read_bytes()).hexdigest(),
                "bytes": p.stat().st_size,
            }
    return out


def quiet_libraries() -> None:
    """Progress bars and info chatter off; warnings (e.g. "height adjusted") stay visible."""
    import diffusers
    import transformers

    diffusers.utils.logging.set_verbosity_warning()
    diffusers.utils.logging.disable_progress_bar()
    transformers.utils.logging.set_verbosity_warning()
    transformers.utils.logging.disable_progress_bar()


def load_pipelines(model: Path):
    from diffusers import FluxKontextPipeline, FluxPipeline

    edit = FluxKontextPipeline.from_pretrained(model, dtype=torch.float32, low_cpu_mem_usage=False)
    gen = FluxPipeline.from_pretrained(model, dtype=torch.float32, low_cpu_mem_usage=False)
    for pipe in (edit, gen):
        pipe.set_progress_bar_config(disable=True)
    return edit, gen


# ---------------------------------------------------------------------------------------------
# Input image


def synth_input(width: int, height: int) -> Image.Image:
    """(W+13)x(H+9) RGB: R/G gradients, an 8-px checkerboard in B and a disc with swapped R/G
    (so the picture is not separable), all integer arithmetic."""
    w, h = width + 13, height + 9
    y, x = np.mgrid[0:h, 0:w]
    r = (255 * x) // (w - 1)
    g = (255 * y) // (h - 1)
    b = np.where(((x // 8) + (y // 8)) % 2 == 1, 230, 25)
    disc = (x - w // 3) ** 2 + (y - h // 2) ** 2 < (min(w, h) // 4) ** 2
    r, g = np.where(disc, g, r), np.where(disc, r, g)
    rgb = np.stack([r, g, b], axis=-1).astype(np.uint8)
    return Image.fromarray(rgb, mode="RGB")


# ---------------------------------------------------------------------------------------------
# Capture


class Recorder:
    """Wraps pipeline methods and hooks modules so the tensors the pipeline really used are kept."""

    def __init__(self) -> None:
        self.t: dict[str, torch.Tensor] = {}
        self.transformer_calls: list[tuple[dict, torch.Tensor]] = []
        self.step_latents: list[torch.Tensor] = []
        self._handles = []
        self._patched = []

    def put(self, name: str, value: torch.Tensor) -> None:
        if name in self.t:
            raise RuntimeError(f"{name} captured twice; the pipeline ran a stage more than once")
        self.t[name] = value.detach().clone()

    def patch(self, obj, attr: str, wrapper) -> None:
        orig = getattr(obj, attr)
        self._patched.append((obj, attr))
        setattr(obj, attr, wrapper(orig))

    def hook_text_encoders(self, pipe) -> None:
        def ids_hook(name):
            def fn(_module, args, kwargs):
                ids = args[0] if args else kwargs["input_ids"]
                self.put(name, ids.to(torch.int64))

            return fn

        def clip_out(_module, _args, _kwargs, output):
            self.put("clip_last_hidden_state", output.last_hidden_state)

        self._handles += [
            pipe.text_encoder.register_forward_pre_hook(ids_hook("clip_input_ids"), with_kwargs=True),
            pipe.text_encoder_2.register_forward_pre_hook(ids_hook("t5_input_ids"), with_kwargs=True),
            pipe.text_encoder.register_forward_hook(clip_out, with_kwargs=True),
        ]

        def encode_prompt(orig):
            def fn(*a, **kw):
                t5, pooled, text_ids = orig(*a, **kw)
                self.put("t5_embeds", t5)
                self.put("clip_pooled", pooled)
                self.put("text_ids", text_ids)
                return t5, pooled, text_ids

            return fn

        self.patch(pipe, "encode_prompt", encode_prompt)

    def hook_transformer(self, pipe) -> None:
        def fn(_module, _args, kwargs, output):
            kept = {k: v.detach().clone() for k, v in kwargs.items() if isinstance(v, torch.Tensor)}
            self.transformer_calls.append((kept, output[0].detach().clone()))

        self._handles.append(pipe.transformer.register_forward_hook(fn, with_kwargs=True))

    def on_step_end(self, _pipe, _i, _t, kw):
        self.step_latents.append(kw["latents"].detach().clone())
        return kw

    def close(self) -> None:
        for h in self._handles:
            h.remove()
        for obj, attr in self._patched:
            delattr(obj, attr)  # drops the instance attribute; the class method shows again


def decode(pipe, final_packed: torch.Tensor, height: int, width: int, rec: Recorder) -> None:
    """The pipeline's own decode path (pipeline_flux_kontext.py:1099-1103), step by step."""
    unpacked = pipe._unpack_latents(final_packed, height, width, pipe.vae_scale_factor)
    rec.put("final_latents_unpacked", unpacked)
    vae_in = unpacked / pipe.vae.config.scaling_factor + pipe.vae.config.shift_factor
    rec.put("vae_decoder_input", vae_in)
    rec.put("decoded_image", pipe.vae.decode(vae_in, return_dict=False)[0])


def add_transformer_capture(rec: Recorder, n_target: int, steps: int) -> None:
    if len(rec.transformer_calls) != steps:
        raise RuntimeError(f"expected {steps} transformer calls, saw {len(rec.transformer_calls)}")
    kw, vel = rec.transformer_calls[0]
    for k in ("hidden_states", "encoder_hidden_states", "pooled_projections", "timestep",
              "guidance", "img_ids", "txt_ids"):
        rec.put(f"step0_{k}", kw[k])
    rec.put("step0_velocity_full", vel)
    rec.put("step0_velocity", vel[:, :n_target])
    for i, lat in enumerate(rec.step_latents):
        rec.put(f"latents_step{i}", lat)


def run_edit(pipe, image: Image.Image, args) -> tuple[dict, dict]:
    H, W = args.height, args.width
    gen = torch.Generator("cpu").manual_seed(args.seed)
    # Packed noise exactly as the pipeline would draw it itself: `latents=` must already be packed,
    # and `prepare_latents` with this generator is the draw `__call__` makes when `latents` is None.
    noise_packed = pipe.prepare_latents(None, 1, 16, H, W, torch.float32, "cpu", gen, None)[0]
    rec = Recorder()
    rec.put("initial_latents_packed", noise_packed)
    rec.put("initial_latents_unpacked", pipe._unpack_latents(noise_packed, H, W, pipe.vae_scale_factor))
    rec.hook_text_encoders(pipe)
    rec.hook_transformer(pipe)

    def encode_vae(orig):
        def fn(image, generator):
            rec.put("image_preprocessed", image)
            z = orig(image=image, generator=generator)
            rec.put("context_latents_unpacked", z)
            return z

        return fn

    def prepare_latents(orig):
        def fn(*a, **kw):
            latents, image_latents, latent_ids, image_ids = orig(*a, **kw)
            rec.put("context_latents_packed", image_latents)
            rec.put("target_ids", latent_ids)
            rec.put("context_ids", image_ids)
            return latents, image_latents, latent_ids, image_ids

        return fn

    rec.patch(pipe, "_encode_vae_image", encode_vae)
    rec.patch(pipe, "prepare_latents", prepare_latents)
    try:
        with torch.inference_mode():
            t0 = time.perf_counter()
            final = pipe(
                image=image,
                prompt=args.prompt,
                height=H,
                width=W,
                max_area=H * W,
                _auto_resize=False,
                num_inference_steps=args.steps,
                guidance_scale=args.guidance,
                max_sequence_length=T5_LEN,
                latents=noise_packed,
                output_type="latent",
                callback_on_step_end=rec.on_step_end,
            ).images
            denoise_s = time.perf_counter() - t0
            rec.put("final_latents_packed", final)
            rec.put("sigmas", pipe.scheduler.sigmas)
            rec.put("timesteps", pipe.scheduler.timesteps)
            add_transformer_capture(rec, noise_packed.shape[1], args.steps)
            decode(pipe, final, H, W, rec)
    finally:
        rec.close()
    return rec.t, {"denoise_s": round(denoise_s, 4)}


def run_generate(pipe, args) -> tuple[dict, dict]:
    H, W = args.height, args.width
    gen = torch.Generator("cpu").manual_seed(args.seed + 1)
    noise_packed = pipe.prepare_latents(1, 16, H, W, torch.float32, "cpu", gen, None)[0]
    rec = Recorder()
    rec.put("initial_latents_packed", noise_packed)
    rec.put("initial_latents_unpacked", pipe._unpack_latents(noise_packed, H, W, pipe.vae_scale_factor))
    rec.hook_text_encoders(pipe)
    rec.hook_transformer(pipe)

    def prepare_latents(orig):
        def fn(*a, **kw):
            latents, latent_ids = orig(*a, **kw)
            rec.put("target_ids", latent_ids)
            return latents, latent_ids

        return fn

    rec.patch(pipe, "prepare_latents", prepare_latents)
    try:
        with torch.inference_mode():
            t0 = time.perf_counter()
            final = pipe(
                prompt=args.prompt,
                height=H,
                width=W,
                num_inference_steps=args.steps,
                guidance_scale=args.guidance,
                max_sequence_length=T5_LEN,
                latents=noise_packed,
                output_type="latent",
                callback_on_step_end=rec.on_step_end,
            ).images
            denoise_s = time.perf_counter() - t0
            rec.put("final_latents_packed", final)
            rec.put("sigmas", pipe.scheduler.sigmas)
            rec.put("timesteps", pipe.scheduler.timesteps)
            add_transformer_capture(rec, noise_packed.shape[1], args.steps)
            decode(pipe, final, H, W, rec)
    finally:
        rec.close()
    return rec.t, {"denoise_s": round(denoise_s, 4)}


# ---------------------------------------------------------------------------------------------
# Output


TENSOR_DOCS = {
    "image_preprocessed": "context image after PIL LANCZOS resize to (W,H), (x/255)*2-1, (1,3,H,W)",
    "context_latents_unpacked": "scale*(posterior mean - shift) of the VAE encoder (FLUX: 0.3611, 0.1159), (1,16,H/8,W/8)",
    "context_latents_packed": "2x2-patchified context latents, (1,(H/16)*(W/16),64), feature = c*4+ph*2+pw",
    "context_ids": "context position ids (1,row,col), f32, (N_ctx,3)",
    "target_ids": "target position ids (0,row,col), f32, (N_t,3)",
    "t5_input_ids": "T5 token ids, padded with 0 to L (512, or the model's max_sequence_length), </s>=1 after the prompt, (1,L)",
    "t5_embeds": "T5 encoder last_hidden_state over all L tokens, no mask, (1,L,d_t5)",
    "clip_input_ids": "CLIP token ids, BOS..EOS then EOS padding to 77, (1,77)",
    "clip_last_hidden_state": "CLIP final-LayerNorm hidden states, (1,77,d_clip)",
    "clip_pooled": "CLIP pooler_output = clip_last_hidden_state at the first EOS, no projection, (1,d_clip)",
    "text_ids": "text position ids, all zero, (L,3)",
    "initial_latents_unpacked": "initial noise as drawn, (1,16,H/8,W/8)",
    "initial_latents_packed": "initial noise packed; passed to the pipeline as latents=, (1,N_t,64)",
    "sigmas": "schedule incl. terminal 0, (steps+1,)",
    "timesteps": "sigmas[:-1]*1000, (steps,); the transformer gets timesteps/1000",
    "step0_hidden_states": "first transformer call: [target ‖ context] packed tokens, (1,N_t[+N_ctx],64)",
    "step0_encoder_hidden_states": "first transformer call: T5 embeds (== t5_embeds), (1,L,d_t5)",
    "step0_pooled_projections": "first transformer call: CLIP pooled (== clip_pooled), (1,d_clip)",
    "step0_timestep": "first transformer call: timestep (sigma, multiplied by 1000 inside), (1,)",
    "step0_guidance": "first transformer call: guidance (raw, multiplied by 1000 inside), (1,)",
    "step0_img_ids": "first transformer call: [target_ids ‖ context_ids], (N_t[+N_ctx],3)",
    "step0_txt_ids": "first transformer call: text ids (== text_ids), (L,3)",
    "step0_velocity_full": "first transformer output for all image tokens, (1,N_t[+N_ctx],64)",
    "step0_velocity": "step0_velocity_full[:, :N_t] (what the Euler step uses), (1,N_t,64)",
    "latents_step{i}": "packed latents after Euler step i, (1,N_t,64)",
    "final_latents_packed": "pipeline output with output_type='latent', (1,N_t,64)",
    "final_latents_unpacked": "final latents unpacked, (1,16,H/8,W/8)",
    "vae_decoder_input": "final_latents_unpacked/scale + shift, (1,16,H/8,W/8)",
    "decoded_image": "VAE decoder output before any clamp, in ~[-1,1], (1,3,H,W)",
}


def save_tensors(path: Path, tensors: dict[str, torch.Tensor]) -> dict:
    from safetensors.torch import save_file

    clean = {}
    for k, v in tensors.items():
        if v.dtype.is_floating_point:
            v = v.to(torch.float32)
        elif v.dtype != torch.int64:
            raise TypeError(f"{k}: unexpected dtype {v.dtype}")
        clean[k] = v.contiguous()
    save_file(clean, str(path))
    listing = {}
    for k, v in sorted(clean.items()):
        doc_key = "latents_step{i}" if k.startswith("latents_step") else k
        listing[k] = {"shape": list(v.shape), "dtype": str(v.dtype).removeprefix("torch."),
                      "meaning": TENSOR_DOCS[doc_key]}
    return listing


def versions() -> dict:
    import diffusers
    import PIL
    import safetensors
    import tokenizers
    import transformers

    return {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "diffusers": diffusers.__version__,
        "transformers": transformers.__version__,
        "tokenizers": tokenizers.__version__,
        "safetensors": safetensors.__version__,
        "numpy": np.__version__,
        "pillow": PIL.__version__,
    }


def make_fixtures(args: argparse.Namespace) -> None:
    torch.set_num_threads(args.threads)
    quiet_libraries()
    args.out.mkdir(parents=True, exist_ok=True)
    model, source = write_model(args)
    global T5_LEN
    settings = model / "kontext_model.json"
    if settings.is_file():
        T5_LEN = json.loads(settings.read_text()).get("max_sequence_length", T5_LEN)
    hashes = model_hashes(model)
    edit_pipe, gen_pipe = load_pipelines(model)

    image = synth_input(args.width, args.height)
    image.save(args.out / "input.png", optimize=True)
    image = Image.open(args.out / "input.png").convert("RGB")  # what a reader of the PNG sees

    e, e_info = run_edit(edit_pipe, image, args)
    g, g_info = run_generate(gen_pipe, args)
    checks = sanity_checks(edit_pipe, gen_pipe, image, e, g, args)

    for name, t, pipe in (("edit", e, edit_pipe), ("generate", g, gen_pipe)):
        pipe.image_processor.postprocess(t["decoded_image"], output_type="pil")[0].save(
            args.out / f"{name}_output.png", optimize=True)

    meta = {
        "about": "diffusers float32 CPU reference for the Rust Kontext engine; see tests/parity/README.md",
        "command": " ".join([Path(sys.argv[0]).name] + sys.argv[1:]),
        "seed": args.seed,
        "width": args.width,
        "height": args.height,
        "steps": args.steps,
        "guidance": args.guidance,
        "prompt": args.prompt,
        "t5_max_length": T5_LEN,
        "clip_max_length": CLIP_LEN,
        "input_image": {"file": "input.png", "width": image.width, "height": image.height,
                        "resized_to": [args.width, args.height], "resample": "PIL LANCZOS"},
        "edit": {"pipeline": "FluxKontextPipeline", "file": "edit.safetensors", "output_png": "edit_output.png",
                 "noise": f"torch.Generator('cpu').manual_seed({args.seed}) via pipe.prepare_latents",
                 "call": {"_auto_resize": False, "height": args.height, "width": args.width,
                          "max_area": args.height * args.width, "max_sequence_length": T5_LEN,
                          "output_type": "latent"}, **e_info},
        "generate": {"pipeline": "FluxPipeline", "file": "generate.safetensors",
                     "output_png": "generate_output.png",
                     "noise": f"torch.Generator('cpu').manual_seed({args.seed + 1}) via pipe.prepare_latents",
                     **g_info},
        "target_tokens": (args.height // 16) * (args.width // 16),
        "mu": bfl_sigmas(args.steps, (args.height // 16) * (args.width // 16))[1],
        "output_png_rule": "((x/2+0.5).clamp(0,1)*255).round() as u8 (diffusers postprocess)",
        "torch_threads": args.threads,
        "versions": versions(),
        "model": {"source": source, "layout": "diffusers", "writer_git": git_provenance(), "files": hashes,
                  # A committed model directory (repo-relative) the Rust tests load instead of
                  # regenerating the tiny model from the seed.
                  **({"dir": os.path.relpath(args.model_dir.resolve(), REPO_ROOT)} if args.model_dir else {})},
        "tensors": {
            "edit.safetensors": save_tensors(args.out / "edit.safetensors", e),
            "generate.safetensors": save_tensors(args.out / "generate.safetensors", g),
        },
        "sanity_checks": checks,
    }
    (args.out / "meta.json").write_text(json.dumps(meta, indent=2, ensure_ascii=False) + "\n")
    total = sum(p.stat().st_size for p in args.out.iterdir() if p.is_file())
    print(f"wrote {args.out}: {total / 1e6:.2f} MB in fixture files (model folder excluded)")


# ---------------------------------------------------------------------------------------------
# Bench (tests/parity/README.md, "PyTorch CPU bench")


def bench(args: argparse.Namespace) -> None:
    from diffusers import FluxTransformer2DModel

    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    model = FluxTransformer2DModel(
        patch_size=1, in_channels=64, num_layers=4, num_single_layers=8, attention_head_dim=64,
        num_attention_heads=16, joint_attention_dim=1024, pooled_projection_dim=768,
        guidance_embeds=True, axes_dims_rope=[8, 28, 28],
    ).eval()
    params = sum(p.numel() for p in model.parameters())
    g = torch.Generator().manual_seed(1)
    n_side, n_txt = 32, 128
    r, c = torch.meshgrid(torch.arange(n_side), torch.arange(n_side), indexing="ij")
    grid = torch.stack([torch.zeros_like(r), r, c], -1).reshape(-1, 3).float()  # (1024, 3)
    img_ids = torch.cat([grid, grid + torch.tensor([1.0, 0, 0])])  # target (0,r,c) ‖ context (1,r,c)
    inputs = dict(
        hidden_states=torch.randn(1, 2 * n_side * n_side, 64, generator=g),
        encoder_hidden_states=torch.randn(1, n_txt, 1024, generator=g),
        pooled_projections=torch.randn(1, 768, generator=g),
        timestep=torch.tensor([0.75]),
        guidance=torch.tensor([2.5]),
        img_ids=img_ids,
        txt_ids=torch.zeros(n_txt, 3),
        return_dict=False,
    )
    times, cpu_times = [], []
    load_before = os.getloadavg()[0]
    with torch.inference_mode():
        t0 = time.perf_counter()
        model(**inputs)
        warmup = time.perf_counter() - t0
        for _ in range(args.bench_runs):
            t0, c0 = time.perf_counter(), time.process_time()
            out = model(**inputs)[0]
            times.append(time.perf_counter() - t0)
            cpu_times.append(time.process_time() - c0)
    assert out.shape == (1, 2048, 64) and torch.isfinite(out).all()
    med = statistics.median(times)
    # CPU seconds / threads approximates the wall time on an idle machine; the load average says
    # how far the wall numbers are from that (parallel builds on a 2-core VM inflate them).
    print(f"pytorch_mid_forward_median_s={med:.4f} min_s={min(times):.4f} max_s={max(times):.4f} "
          f"warmup_s={warmup:.4f} runs={args.bench_runs} threads={torch.get_num_threads()} dtype=float32 "
          f"params={params} tokens=1024+1024+128 torch={torch.__version__}")
    print(f"pytorch_mid_forward_median_cpu_s={statistics.median(cpu_times):.4f} "
          f"loadavg_1m_before={load_before:.2f} loadavg_1m_after={os.getloadavg()[0]:.2f} cpus={os.cpu_count()}")
    print("times_s=" + ",".join(f"{t:.4f}" for t in times))


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    if args.bench:
        bench(args)
    else:
        make_fixtures(args)


if __name__ == "__main__":
    main()
