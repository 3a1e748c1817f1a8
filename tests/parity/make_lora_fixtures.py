#!/usr/bin/env python3
"""LoRA reference fixtures for the Rust engine, made with diffusers 0.42.1 + peft in float32 on CPU.

Run by hand (never in CI) from the repository root with the project-local venv (tests/parity/README.md):

    .venv-parity/bin/python tests/parity/make_lora_fixtures.py --out tests/parity/fixtures/lora

What it does:
  1. Takes the tiny model of the default fixture (`--model-dir`, else it runs the Rust writer like
     make_fixtures.py: `kontext-worker tiny --seed S --layout diffusers`) and checks its files against
     tests/parity/fixtures/default/meta.json, so the Rust test can regenerate it from the seed.
  2. Writes three small LoRA files, one per key layout users bring, with deterministic random
     matrices (torch.Generator().manual_seed):
       peft.safetensors   diffusers/PEFT names (lora_A/lora_B), saved by diffusers'
                          FluxKontextPipeline.save_lora_weights with its lora_adapter_metadata
                          (lora_alpha = 2 r), touching every kind of linear: fused-row parts
                          (to_q/to_k/to_v, add_v_proj, proj_mlp), norm_out.linear (half swap), the
                          embedders, the modulations;
       kohya.safetensors  sd-scripts names (lora_unet_double_blocks_0_img_attn_qkv.lora_down/up,
                          .alpha = r/2); only modules diffusers' _convert_kohya_flux_lora_to_diffusers
                          converts correctly (not single_blocks linear1, for which it hard-codes the 12B
                          dims, nor the embedders, which it drops: see KOHYA_MODULES);
       xlabs.safetensors  XLabs processor names (double_blocks.0.processor.qkv_lora1.down/up, ...).
  3. Loads each with FluxKontextPipeline.load_lora_weights(adapter_name=...) — diffusers' own
     conversion — and records the transformer's output on the default fixture's step-0 inputs
     (edit.safetensors step0_*) for: no LoRA, each alone at weight 1, and all three at once with
     set_adapters weights WEIGHTS.
  4. OUT/outputs.safetensors (velocity_<case>), OUT/meta.json (cases, weights, versions, hashes).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

REPO_ROOT = Path(__file__).resolve().parents[2]
DEFAULT = REPO_ROOT / "tests/parity/fixtures/default"
RANK = 4
WEIGHTS = {"peft": 0.7, "kohya": -1.3, "xlabs": 2.0}

PEFT_MODULES = [
    "transformer_blocks.0.attn.to_q",
    "transformer_blocks.0.attn.to_k",
    "transformer_blocks.0.attn.to_v",
    "transformer_blocks.0.attn.add_v_proj",
    "transformer_blocks.0.attn.to_out.0",
    "transformer_blocks.0.attn.to_add_out",
    "transformer_blocks.0.ff.net.0.proj",
    "transformer_blocks.0.ff_context.net.2",
    "transformer_blocks.0.norm1.linear",
    "transformer_blocks.0.norm1_context.linear",
    "single_transformer_blocks.0.attn.to_k",
    "single_transformer_blocks.1.proj_mlp",
    "single_transformer_blocks.0.proj_out",
    "single_transformer_blocks.1.norm.linear",
    "x_embedder",
    "context_embedder",
    "time_text_embed.timestep_embedder.linear_1",
    "time_text_embed.guidance_embedder.linear_2",
    "time_text_embed.text_embedder.linear_1",
    "norm_out.linear",
    "proj_out",
]

# (kohya module, canonical BFL module)
KOHYA_MODULES = [
    ("lora_unet_double_blocks_0_img_attn_qkv", "double_blocks.0.img_attn.qkv"),
    ("lora_unet_double_blocks_0_txt_attn_proj", "double_blocks.0.txt_attn.proj"),
    ("lora_unet_double_blocks_0_img_mlp_0", "double_blocks.0.img_mlp.0"),
    ("lora_unet_double_blocks_0_txt_mod_lin", "double_blocks.0.txt_mod.lin"),
    ("lora_unet_single_blocks_1_linear2", "single_blocks.1.linear2"),
    ("lora_unet_single_blocks_0_modulation_lin", "single_blocks.0.modulation.lin"),
]
# Not in the file: diffusers 0.42.1's _convert_kohya_flux_lora_to_diffusers emits kohya's
# lora_unet_img_in / txt_in / time_in / vector_in / guidance_in without the "transformer." prefix,
# so load_lora_into_transformer drops them silently; sd-scripts and ComfyUI apply them, and so does
# the Rust engine (engine/src/lora/names.rs), which a unit test there covers instead.

XLABS_MODULES = [
    ("double_blocks.0.processor.qkv_lora1", "double_blocks.0.img_attn.qkv"),
    ("double_blocks.0.processor.proj_lora2", "double_blocks.0.txt_attn.proj"),
    ("single_blocks.1.processor.qkv_lora", None),
    ("single_blocks.0.processor.proj_lora", "single_blocks.0.linear2"),
]


def sha256(p: Path) -> str:
    return hashlib.sha256(p.read_bytes()).hexdigest()


def model_dir(args, tmp: Path) -> Path:
    if args.model_dir:
        return args.model_dir
    out = tmp / "model"
    cmd = ["cargo", "run", "--release", "-p", "kontext-worker", "--bin", "kontext-worker", "--", "tiny",
           "--seed", str(args.seed), "--layout", "diffusers", "--out", str(out)]
    print("+", " ".join(cmd), flush=True)
    if subprocess.run(cmd, cwd=REPO_ROOT).returncode != 0:
        sys.exit("the Rust tiny writer failed (see cargo's output above)")
    return out


def check_model(model: Path) -> dict:
    meta = json.loads((DEFAULT / "meta.json").read_text())
    files = meta["model"]["files"]
    for rel, info in files.items():
        if sha256(model / rel) != info["sha256"]:
            sys.exit(f"{model / rel} is not the default fixture's model file (sha256 differs)")
    return meta


def lora_pair(gen: torch.Generator, rows: int, cols: int, rank: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(down (rank, cols), up (rows, rank)), large enough to move the output visibly."""
    down = torch.randn(rank, cols, generator=gen) / cols**0.5
    up = torch.randn(rows, rank, generator=gen) * 0.5 / rank**0.5
    return down.contiguous(), up.contiguous()


def linear_shape(module) -> tuple[int, int]:
    return module.weight.shape[0], module.weight.shape[1]


def write_files(pipe, bfl_shapes: dict, out: Path, seed: int) -> dict:
    from diffusers import FluxKontextPipeline

    gen = torch.Generator().manual_seed(seed + 100)
    modules = dict(pipe.transformer.named_modules())
    peft = {}
    for name in PEFT_MODULES:
        rows, cols = linear_shape(modules[name])
        down, up = lora_pair(gen, rows, cols, RANK)
        peft[f"{name}.lora_A.weight"] = down
        peft[f"{name}.lora_B.weight"] = up
    FluxKontextPipeline.save_lora_weights(
        out, transformer_lora_layers=peft, weight_name="peft.safetensors",
        transformer_lora_adapter_metadata={"r": RANK, "lora_alpha": 2 * RANK, "target_modules": PEFT_MODULES},
    )
    kohya = {}
    for name, bfl in KOHYA_MODULES:
        rows, cols = bfl_shapes[bfl]
        rank = 3 if bfl.endswith("qkv") else RANK  # not a multiple-of-3 split: the dense qkv path
        down, up = lora_pair(gen, rows, cols, rank)
        kohya[f"{name}.lora_down.weight"] = down
        kohya[f"{name}.lora_up.weight"] = up
        kohya[f"{name}.alpha"] = torch.tensor(rank / 2)
    save_file(kohya, out / "kohya.safetensors")
    xlabs = {}
    for name, bfl in XLABS_MODULES:
        if bfl is None:  # single-block qkv: the first 3·hidden rows of linear1
            rows, cols = 3 * bfl_shapes["img_in"][0], bfl_shapes["img_in"][0]
        else:
            rows, cols = bfl_shapes[bfl]
        down, up = lora_pair(gen, rows, cols, RANK)
        xlabs[f"{name}.down.weight"] = down
        xlabs[f"{name}.up.weight"] = up
    save_file(xlabs, out / "xlabs.safetensors")
    return {"peft": len(PEFT_MODULES), "kohya": len(KOHYA_MODULES), "xlabs": len(XLABS_MODULES)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--model-dir", type=Path, help="the default fixture's tiny model in diffusers layout")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    torch.manual_seed(args.seed)
    args.out.mkdir(parents=True, exist_ok=True)

    import diffusers
    import peft
    from diffusers import FluxKontextPipeline

    with tempfile.TemporaryDirectory() as tmp:
        model = model_dir(args, Path(tmp))
        default_meta = check_model(model)
        pipe = FluxKontextPipeline.from_pretrained(model, dtype=torch.float32, low_cpu_mem_usage=False)
        # Canonical (BFL) shapes of the layers the kohya / XLabs files name, from the Rust writer's
        # BFL-layout twin would need a second model; they follow from diffusers' modules instead.
        mods = dict(pipe.transformer.named_modules())
        h = mods["x_embedder"].weight.shape[0]
        bfl_shapes = {
            "double_blocks.0.img_attn.qkv": (3 * h, h),
            "double_blocks.0.txt_attn.proj": linear_shape(mods["transformer_blocks.0.attn.to_add_out"]),
            "double_blocks.0.img_mlp.0": linear_shape(mods["transformer_blocks.0.ff.net.0.proj"]),
            "double_blocks.0.txt_mod.lin": linear_shape(mods["transformer_blocks.0.norm1_context.linear"]),
            "single_blocks.1.linear2": linear_shape(mods["single_transformer_blocks.1.proj_out"]),
            "single_blocks.0.linear2": linear_shape(mods["single_transformer_blocks.0.proj_out"]),
            "single_blocks.0.modulation.lin": linear_shape(mods["single_transformer_blocks.0.norm.linear"]),
            "img_in": linear_shape(mods["x_embedder"]),
            "time_in.in_layer": linear_shape(mods["time_text_embed.timestep_embedder.linear_1"]),
        }
        counts = write_files(pipe, bfl_shapes, args.out, args.seed)

        inputs = load_file(DEFAULT / "edit.safetensors")

        def velocity() -> torch.Tensor:
            with torch.no_grad():
                return pipe.transformer(
                    hidden_states=inputs["step0_hidden_states"],
                    encoder_hidden_states=inputs["step0_encoder_hidden_states"],
                    pooled_projections=inputs["step0_pooled_projections"],
                    timestep=inputs["step0_timestep"],
                    guidance=inputs["step0_guidance"],
                    img_ids=inputs["step0_img_ids"],
                    txt_ids=inputs["step0_txt_ids"],
                    return_dict=False,
                )[0].contiguous()

        outputs = {"velocity_base": velocity()}
        base_check = (outputs["velocity_base"] - inputs["step0_velocity_full"]).norm() / inputs[
            "step0_velocity_full"].norm()
        if base_check > 1e-6:
            sys.exit(f"the transformer does not reproduce the default fixture's step-0 velocity ({base_check:.2e})")
        for name in WEIGHTS:
            pipe.load_lora_weights(args.out / f"{name}.safetensors", adapter_name=name)
        for name in WEIGHTS:
            pipe.set_adapters([name], adapter_weights=[1.0])
            outputs[f"velocity_{name}"] = velocity()
        pipe.set_adapters(list(WEIGHTS), adapter_weights=list(WEIGHTS.values()))
        outputs["velocity_all"] = velocity()
        base = outputs["velocity_base"]
        moved = {k: float((v - base).norm() / base.norm()) for k, v in outputs.items() if k != "velocity_base"}
        for k, m in moved.items():
            if m < 1e-2:
                sys.exit(f"{k} is within {m:.1e} of the base output: the LoRA does not reach the output")
        save_file(outputs, args.out / "outputs.safetensors")

    meta = {
        "about": "diffusers load_lora_weights + set_adapters on the default fixture's tiny model; "
                 "step-0 inputs of tests/parity/fixtures/default/edit.safetensors",
        "command": "tests/parity/make_lora_fixtures.py --out " + os.path.relpath(args.out, REPO_ROOT),
        "seed": args.seed,
        "rank": RANK,
        "weights": WEIGHTS,
        "modules": counts,
        "relative_change_from_base": moved,
        "model_seed": default_meta["seed"],
        "versions": {"torch": torch.__version__, "diffusers": diffusers.__version__, "peft": peft.__version__},
        "files": {p.name: sha256(p) for p in sorted(args.out.glob("*.safetensors")) if p.name != "outputs.safetensors"},
    }
    (args.out / "meta.json").write_text(json.dumps(meta, indent=2) + "\n")
    print(json.dumps(meta["relative_change_from_base"], indent=2))


if __name__ == "__main__":
    main()
