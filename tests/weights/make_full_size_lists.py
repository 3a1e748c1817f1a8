#!/usr/bin/env python3
"""Tensor lists (names, dtypes, shapes) of the full-size FLUX.1-Kontext-dev checkpoint files, from the reference code.

Purpose
    The Rust tests need the exact layout of the real FLUX.1-Kontext-dev files (12B transformer, T5-XXL, CLIP-L, VAE)
    without downloading ~57 GB. This script rebuilds those tensor lists from an independent source: the reference
    model classes (diffusers `FluxTransformer2DModel` and `AutoencoderKL`, transformers `T5EncoderModel` and
    `CLIPTextModel`) instantiated at the real configurations on PyTorch's `meta` device (shapes only, no memory),
    then serialised the way `save_pretrained` would lay them out. The Rust tests rebuild sparse safetensors files
    from the JSON it writes.

Inputs
    --canonical PATH   The Rust code's canonical BFL tensor list (`transformer` and `vae`, BFL names, no prefix):
                           target/debug/kontext-worker check-weights --print-canonical > /tmp/canonical.json
                       It is NOT trusted: both lists are fed through diffusers' own single-file converters
                       (`single_file_utils.convert_flux_transformer_checkpoint_to_diffusers` and
                       `single_file_utils.convert_ldm_vae_checkpoint`, on meta tensors) and the result must equal the
                       diffusers models' state_dict keys and shapes exactly, or the script prints the difference and
                       exits with status 1 without writing anything.
    Nothing is downloaded; every config is built in code (HF_HUB_OFFLINE=1).

Output
    --out PATH (default tests/weights/full_size/kontext-dev.json, relative to the repository root):
        generated_by   script and library versions
        configs        the four config.json files as save_pretrained writes them with these library versions
        layouts        diffusers: file -> [[name, dtype, shape], ...] for transformer/ (10 GB shards), vae/,
                       text_encoder/ and text_encoder_2/ (5 GB shards);
                       bfl: flux1-kontext-dev.safetensors (BF16) and ae.safetensors (F32). The BFL layout reuses the
                       diffusers text_encoder/ and text_encoder_2/ folders, so they are not repeated there.
        Within a file, tensors are in the order safetensors writes them in the header (checked by serialising
        1-element stand-ins of every file's names with `safetensors.torch.save` and reading the header back).

How the `save_pretrained` behaviour is reproduced (on meta tensors, nothing written but config.json in a temp dir)
    diffusers   `ModelMixin.save_pretrained`: `model.state_dict()` split by huggingface_hub
                `split_torch_state_dict_into_shards(..., max_shard_size="10GB",
                filename_pattern="diffusion_pytorch_model{suffix}.safetensors")`; config via `ModelMixin.save_config`.
                The split sizes meta tensors by `untyped_storage().nbytes()`; the script asserts that equals
                numel * element_size for every tensor.
    transformers `PreTrainedModel.save_pretrained`: `state_dict()`, then `modeling_utils.remove_tied_weights_from_state_dict`
                (drops `encoder.embed_tokens.weight`, tied to `shared.weight`, via the model's `_tied_weights_keys`;
                it handles meta tensors by parameter identity), then `core_model_loading.revert_weight_conversion`,
                then the same huggingface_hub split (T5: "5GB", the max_shard_size the published files were written
                with; transformers 5 defaults to 50GB). `position_ids` of CLIP is a non-persistent buffer: not saved.
                CLIP: the published text_encoder/ was written by transformers 4.x, whose `CLIPTextModel` wrapped a
                `text_model` submodule. transformers 5 flattened it and loads such files through the PrefixChange
                `^text_model\\.` of `conversion_mapping.get_model_conversion_mapping`; `revert_weight_conversion`
                re-adds the prefix only for a model that was loaded that way (it drops PrefixChange for a model built
                from scratch). We attach that default mapping as `_weight_conversions`, i.e. emulate re-saving the
                published checkpoint, so names carry `text_model.` as in the real file.
                Config: `config.dtype` and `config.architectures` set as save_pretrained does, then
                `PretrainedConfig.save_pretrained`. So the configs are what THIS transformers version writes, not the
                published (transformers 4.x) files: "dtype" rather than "torch_dtype"; T5Config.__post_init__ forces
                "tie_word_embeddings": true and records the v1.1 no-rescale as "scale_decoder_outputs": false; and
                T5EncoderModel.__init__ sets "is_encoder_decoder" and "use_cache" to false on its config.

Run (from the repository root, with the venv of tests/parity/README.md; about 5 s, < 1 GB RAM):
    .venv-parity/bin/python tests/weights/make_full_size_lists.py --canonical /tmp/canonical.json
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from pathlib import Path

# Must be set before diffusers/transformers are imported: no hub access, ever.
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")

import diffusers  # noqa: E402
import safetensors.torch  # noqa: E402
import torch  # noqa: E402
import transformers  # noqa: E402
from diffusers import AutoencoderKL, FluxTransformer2DModel  # noqa: E402
from diffusers.loaders.single_file_utils import (  # noqa: E402
    convert_flux_transformer_checkpoint_to_diffusers,
    convert_ldm_vae_checkpoint,
)
from huggingface_hub import split_torch_state_dict_into_shards  # noqa: E402
from huggingface_hub.serialization._torch import get_torch_storage_size  # noqa: E402
from transformers import CLIPTextConfig, CLIPTextModel, T5Config, T5EncoderModel  # noqa: E402
from transformers.conversion_mapping import get_model_conversion_mapping  # noqa: E402
from transformers.core_model_loading import revert_weight_conversion  # noqa: E402
from transformers.modeling_utils import remove_tied_weights_from_state_dict  # noqa: E402

REPO_ROOT = Path(__file__).resolve().parents[2]
DEFAULT_OUT = REPO_ROOT / "tests" / "weights" / "full_size" / "kontext-dev.json"

# dtype strings as safetensors writes them in headers.
ST_DTYPE = {torch.bfloat16: "BF16", torch.float16: "F16", torch.float32: "F32", torch.int64: "I64"}

# --- configurations (black-forest-labs/FLUX.1-Kontext-dev) ----------------------------------------------------------

TRANSFORMER_CONFIG = dict(
    patch_size=1,
    in_channels=64,
    out_channels=None,
    num_layers=19,
    num_single_layers=38,
    attention_head_dim=128,
    num_attention_heads=24,
    joint_attention_dim=4096,
    pooled_projection_dim=768,
    guidance_embeds=True,
    axes_dims_rope=(16, 56, 56),
)

VAE_CONFIG = dict(
    in_channels=3,
    out_channels=3,
    down_block_types=("DownEncoderBlock2D",) * 4,
    up_block_types=("UpDecoderBlock2D",) * 4,
    block_out_channels=(128, 256, 512, 512),
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

T5_CONFIG = dict(  # google/t5-v1_1-xxl
    vocab_size=32128,
    d_model=4096,
    d_kv=64,
    d_ff=10240,
    num_layers=24,
    num_decoder_layers=24,
    num_heads=64,
    relative_attention_num_buckets=32,
    relative_attention_max_distance=128,
    dropout_rate=0.1,
    layer_norm_epsilon=1e-6,
    initializer_factor=1.0,
    feed_forward_proj="gated-gelu",
    is_encoder_decoder=True,
    tie_word_embeddings=False,
    use_cache=True,
    pad_token_id=0,
    eos_token_id=1,
    decoder_start_token_id=0,
)

CLIP_CONFIG = dict(  # openai/clip-vit-large-patch14, text tower
    vocab_size=49408,
    hidden_size=768,
    intermediate_size=3072,
    projection_dim=768,
    num_hidden_layers=12,
    num_attention_heads=12,
    max_position_embeddings=77,
    hidden_act="quick_gelu",
    layer_norm_eps=1e-5,
    bos_token_id=0,
    eos_token_id=2,
    pad_token_id=1,
)


# --- helpers --------------------------------------------------------------------------------------------------------


def nbytes(t: torch.Tensor) -> int:
    return t.numel() * t.element_size()


def check_meta_sizes(state_dict: dict[str, torch.Tensor]) -> None:
    """huggingface_hub sizes tensors by storage; make sure that is the tensor's own size on meta too."""
    for name, t in state_dict.items():
        assert t.device.type == "meta", name
        size = get_torch_storage_size(t)
        if size != nbytes(t):
            sys.exit(f"error: storage size of meta tensor {name} is {size}, expected {nbytes(t)}")


def shard(state_dict: dict[str, torch.Tensor], max_shard_size: str, pattern: str, folder: str) -> dict[str, list]:
    """Split like save_pretrained (huggingface_hub `split_torch_state_dict_into_shards`); {path: [(name, tensor)]}."""
    check_meta_sizes(state_dict)
    split = split_torch_state_dict_into_shards(state_dict, max_shard_size=max_shard_size, filename_pattern=pattern)
    out = {f"{folder}/{fname}": [(n, state_dict[n]) for n in names] for fname, names in split.filename_to_tensors.items()}
    assert sum(len(v) for v in out.values()) == len(state_dict)
    return out


def safetensors_order(entries: list[tuple[str, torch.dtype]]) -> list[str]:
    """The order safetensors writes these names in the header, read back from a real (tiny) serialisation.

    The order depends only on names and dtypes (safetensors sorts by dtype, then name), so 1-element tensors of the
    same dtypes give the header order of the full-size file.
    """
    blob = safetensors.torch.save({n: torch.zeros(1, dtype=dt) for n, dt in entries}, metadata={"format": "pt"})
    header_len = int.from_bytes(blob[:8], "little")
    header = json.loads(blob[8 : 8 + header_len])
    return [k for k in header if k != "__metadata__"]


def listing(entries: list[tuple[str, torch.Tensor]] | list[tuple[str, torch.dtype, list[int]]]) -> list:
    """[[name, dtype, shape]] in safetensors header order."""
    rows = {}
    for e in entries:
        if len(e) == 2:
            name, t = e
            rows[name] = (t.dtype, list(t.shape))
        else:
            name, dt, shape = e
            rows[name] = (dt, list(shape))
    order = safetensors_order([(n, dt) for n, (dt, _) in rows.items()])
    assert sorted(order) == sorted(rows)
    return [[n, ST_DTYPE[rows[n][0]], rows[n][1]] for n in order]


def diffusers_config(model) -> dict:
    """config.json exactly as `ModelMixin.save_config` writes it."""
    with tempfile.TemporaryDirectory() as tmp:
        model.save_config(tmp)
        return json.loads((Path(tmp) / "config.json").read_text())


def transformers_config(model) -> dict:
    """config.json as `PreTrainedModel.save_pretrained` writes it (it sets dtype and architectures first)."""
    model.config.dtype = str(model.dtype).split(".")[1]
    model.config.architectures = [model.__class__.__name__]
    with tempfile.TemporaryDirectory() as tmp:
        model.config.save_pretrained(tmp)
        return json.loads((Path(tmp) / "config.json").read_text())


def transformers_saved_state_dict(model, legacy_names: bool) -> tuple[dict[str, torch.Tensor], list[str]]:
    """The tensors `PreTrainedModel.save_pretrained` would write, in its order (see the module docstring)."""
    state_dict = model.state_dict()
    for key in model._keys_to_ignore_on_save or ():
        state_dict.pop(key, None)
    before = set(state_dict)
    state_dict = remove_tied_weights_from_state_dict(state_dict, model)
    dropped = sorted(before - set(state_dict))
    if legacy_names:
        model._weight_conversions = get_model_conversion_mapping(model, add_legacy=False)
    state_dict = revert_weight_conversion(model, state_dict)
    return state_dict, dropped


# --- BFL cross-check -----------------------------------------------------------------------------------------------


def compare(what: str, converted: dict[str, torch.Tensor], reference: dict[str, torch.Tensor]) -> list[str]:
    errors = []
    for k in sorted(set(reference) - set(converted)):
        errors.append(f"{what}: missing after conversion: {k} {list(reference[k].shape)}")
    for k in sorted(set(converted) - set(reference)):
        errors.append(f"{what}: not in the diffusers model: {k} {list(converted[k].shape)}")
    for k in sorted(set(converted) & set(reference)):
        if converted[k] is None:
            errors.append(f"{what}: converted {k} is None (its source is missing from the canonical list)")
        elif tuple(converted[k].shape) != tuple(reference[k].shape):
            errors.append(
                f"{what}: shape of {k}: converted {list(converted[k].shape)}, diffusers {list(reference[k].shape)}"
            )
    return errors


def meta_dict(pairs: list, dtype: torch.dtype, what: str) -> dict[str, torch.Tensor]:
    out = {}
    for name, shape in pairs:
        if name in out:
            sys.exit(f"error: canonical {what} list has {name} twice")
        out[name] = torch.empty(shape, dtype=dtype, device="meta")
    return out


def cross_check(canonical: dict, tr_sd: dict, vae_sd: dict, vae_cfg: dict) -> tuple[list[str], str]:
    errors = []

    # Transformer: diffusers `single_file_utils.convert_flux_transformer_checkpoint_to_diffusers` pops every key it
    # uses from its argument, so whatever is left afterwards was ignored by the conversion.
    bfl_tr = meta_dict(canonical["transformer"], torch.bfloat16, "transformer")
    remaining = dict(bfl_tr)
    try:
        conv_tr = convert_flux_transformer_checkpoint_to_diffusers(remaining)
    except KeyError as e:
        # The converter stops at the first missing key, so nothing after it (leftovers, shapes) is meaningful.
        errors.append(f"transformer: the conversion stopped: it needs {e}, which the canonical list lacks")
        conv_tr = {}
    else:
        errors += [f"transformer: not used by the conversion: {k}" for k in sorted(remaining)]
        errors += compare("transformer", conv_tr, tr_sd)

    # VAE: diffusers `single_file_utils.convert_ldm_vae_checkpoint(checkpoint, config)` reads with .get and never
    # pops, so track use by identity: every converted tensor is a source tensor or a view of one (1x1 conv -> linear).
    bfl_vae = meta_dict(canonical["vae"], torch.float32, "vae")
    try:
        conv_vae = convert_ldm_vae_checkpoint(bfl_vae, vae_cfg)
    except Exception as e:  # a missing key surfaces as None.shape inside the converter
        errors.append(f"vae: the conversion failed: {type(e).__name__}: {e}")
        conv_vae = {}
    by_id = {id(t): n for n, t in bfl_vae.items()}
    used = set()
    for k, t in conv_vae.items():
        if t is None:
            continue
        base = t if t._base is None else t._base
        if id(base) in by_id:
            used.add(by_id[id(base)])
        else:
            errors.append(f"vae: converted {k} does not come from a canonical tensor")
    errors += [f"vae: not used by the conversion: {k}" for k in sorted(set(bfl_vae) - used)]
    if conv_vae:
        errors += compare("vae", conv_vae, vae_sd)

    summary = (
        f"BFL cross-check: OK ({len(bfl_tr)} transformer tensors -> {len(conv_tr)} diffusers tensors, "
        f"{len(bfl_vae)} vae tensors)"
    )
    return errors, summary


# --- JSON writing --------------------------------------------------------------------------------------------------


def write_json(path: Path, doc: dict) -> None:
    """Configs indented, one tensor per line: diffable and compact."""
    lines = ["{", f'  "generated_by": {json.dumps(doc["generated_by"])},', '  "configs": {']
    cfgs = list(doc["configs"].items())
    for i, (name, cfg) in enumerate(cfgs):
        body = json.dumps(cfg, indent=2).replace("\n", "\n    ")
        lines.append(f"    {json.dumps(name)}: {body}{',' if i < len(cfgs) - 1 else ''}")
    lines += ["  },", '  "layouts": {']
    layouts = list(doc["layouts"].items())
    for li, (layout, files) in enumerate(layouts):
        lines.append(f"    {json.dumps(layout)}: {{")
        flist = list(files.items())
        for fi, (fname, rows) in enumerate(flist):
            lines.append(f"      {json.dumps(fname)}: [")
            for ri, row in enumerate(rows):
                lines.append(f"        {json.dumps(row)}{',' if ri < len(rows) - 1 else ''}")
            lines.append(f"      ]{',' if fi < len(flist) - 1 else ''}")
        lines.append(f"    }}{',' if li < len(layouts) - 1 else ''}")
    lines += ["  }", "}"]
    text = "\n".join(lines) + "\n"
    assert json.loads(text) == doc
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)


# --- main ------------------------------------------------------------------------------------------------------------


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument(
        "--canonical",
        required=True,
        type=Path,
        help="Rust canonical BFL list (kontext-worker check-weights --print-canonical)",
    )
    ap.add_argument("--out", type=Path, default=DEFAULT_OUT, help=f"output JSON (default {DEFAULT_OUT.relative_to(REPO_ROOT)})")
    args = ap.parse_args()

    canonical = json.loads(args.canonical.read_text())
    for key in ("transformer", "vae"):
        if key not in canonical:
            sys.exit(f"error: {args.canonical} has no {key!r} list")

    # Everything is stored bf16 in the diffusers folders. A plain `.to(bf16)` is what those files hold unless a class
    # asks to keep modules in f32 at bf16: diffusers `_keep_in_fp32_modules`, transformers
    # `_keep_in_fp32_modules_strict` (transformers' plain `_keep_in_fp32_modules`, T5's ["wo"], applies to fp16 only).
    for cls in (FluxTransformer2DModel, AutoencoderKL):
        assert not cls._keep_in_fp32_modules, (cls.__name__, cls._keep_in_fp32_modules)
    for cls in (T5EncoderModel, CLIPTextModel):
        assert not cls._keep_in_fp32_modules_strict, (cls.__name__, cls._keep_in_fp32_modules_strict)
    diffusers.utils.logging.set_verbosity_error()  # silences "should be kept in float32: []" on .to(bf16)

    bf16 = torch.bfloat16
    with torch.device("meta"):
        transformer = FluxTransformer2DModel(**TRANSFORMER_CONFIG).to(bf16)
        vae = AutoencoderKL(**VAE_CONFIG).to(bf16)
        t5 = T5EncoderModel(T5Config(**T5_CONFIG)).to(bf16)
        clip = CLIPTextModel(CLIPTextConfig(**CLIP_CONFIG)).to(bf16)

    tr_sd = transformer.state_dict()
    vae_sd = vae.state_dict()
    t5_sd, t5_dropped = transformers_saved_state_dict(t5, legacy_names=False)
    clip_sd, clip_dropped = transformers_saved_state_dict(clip, legacy_names=True)

    configs = {
        "transformer/config.json": diffusers_config(transformer),
        "vae/config.json": diffusers_config(vae),
        "text_encoder/config.json": transformers_config(clip),
        "text_encoder_2/config.json": transformers_config(t5),
    }

    # 1. BFL cross-check (fails before anything is written).
    errors, check_line = cross_check(canonical, tr_sd, vae_sd, dict(vae.config))
    if errors:
        print(f"BFL cross-check FAILED ({len(errors)} differences):", file=sys.stderr)
        for e in errors:
            print(f"  {e}", file=sys.stderr)
        return 1

    # 2. Shard like save_pretrained.
    diffusers_files = {}
    diffusers_files.update(shard(tr_sd, "10GB", "diffusion_pytorch_model{suffix}.safetensors", "transformer"))
    diffusers_files.update(shard(vae_sd, "10GB", "diffusion_pytorch_model{suffix}.safetensors", "vae"))
    diffusers_files.update(shard(clip_sd, "5GB", "model{suffix}.safetensors", "text_encoder"))
    diffusers_files.update(shard(t5_sd, "5GB", "model{suffix}.safetensors", "text_encoder_2"))
    bfl_files = {
        "flux1-kontext-dev.safetensors": [(n, bf16, s) for n, s in canonical["transformer"]],
        "ae.safetensors": [(n, torch.float32, s) for n, s in canonical["vae"]],
    }

    doc = {
        "generated_by": (
            f"tests/weights/make_full_size_lists.py with torch {torch.__version__}, "
            f"diffusers {diffusers.__version__}, transformers {transformers.__version__}"
        ),
        "configs": configs,
        "layouts": {
            "diffusers": {f: listing(entries) for f, entries in diffusers_files.items()},
            "bfl": {f: listing(entries) for f, entries in bfl_files.items()},
        },
    }
    write_json(args.out, doc)

    # 3. Summary.
    def numel(shape):
        n = 1
        for d in shape:
            n *= d
        return n

    elem = {"BF16": 2, "F16": 2, "F32": 4, "I64": 8}
    print(doc["generated_by"])
    for layout, files in doc["layouts"].items():
        print(f"\n{layout} layout")
        totals: dict[str, list[int]] = {}
        for fname, rows in files.items():
            params = sum(numel(s) for _, _, s in rows)
            size = sum(numel(s) * elem[dt] for _, dt, s in rows)
            dts = ",".join(sorted({dt for _, dt, _ in rows}))
            print(f"  {fname:<70} {len(rows):>4} tensors {params:>14,} params {size:>15,} bytes  {dts}")
            comp = fname.split("/")[0] if "/" in fname else fname
            t = totals.setdefault(comp, [0, 0, 0])
            t[0] += len(rows)
            t[1] += params
            t[2] += size
        for comp, (n, params, size) in totals.items():
            print(f"  total {comp:<64} {n:>4} tensors {params:>14,} params {size:>15,} bytes  ({params / 1e9:.3f} B)")
    print(f"\ntied weights dropped as save_pretrained does: text_encoder_2 {t5_dropped}, text_encoder {clip_dropped}")
    print(check_line)
    print(f"wrote {args.out} ({args.out.stat().st_size:,} bytes)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
