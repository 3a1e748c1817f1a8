"""Schemathesis hooks for fuzzing the coordinator's API (cli/tests/api_fuzz.rs runs them).

A JSON Schema cannot say that a string is a decodable image, nor relate two fields. This module
supplies exactly those two things and nothing else:

* values for the custom string format `kontext-image` (`input_image`): base64 PNGs of sizes the
  API accepts — also as the source of an output size derived from them — and bodies of
  `POST /v1/uploads` (image/png, image/jpeg, image/webp);
* values for the custom string format `kontext-lora` (`loras[].path`): the id of a LoRA file the
  test uploaded before fuzzing (`KONTEXT_FUZZ_LORA`), and bodies of `POST /v1/loras`
  (application/x-safetensors): small LoRA files written by hand;
* filters that drop generated bodies breaking a cross-field rule the schema states in prose
  (in the fields' descriptions): width x height above the pixel bound, width without height
  (or the reverse), `aspect_ratio` together with `width`/`height`, an aspect ratio wider than
  21:9, `resize` without an `input_image` (or `input_images`), `input_image` with `input_images`,
  BFL's `input_image_2..4` without `input_image`, and a chain's `prompt` with an `input_image` or past
  100 turns;
* a fresh Idempotency-Key per generated case.

Every other constraint lives in docs/openapi.json itself.
"""

import base64
import io
import json
import os
import struct
import uuid
import zlib

import schemathesis
from hypothesis import strategies as st

# The coordinator's default limits (proto `Limits::default()`), as docs/openapi.json states them.
MAX_PIXELS = 2_097_152
MAX_ASPECT = 21 / 9


def _png(width: int, height: int, shade: int) -> bytes:
    """A valid RGB PNG of one colour, written by hand (no imaging library needed)."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        body = kind + data
        return struct.pack(">I", len(data)) + body + struct.pack(">I", zlib.crc32(body) & 0xFFFFFFFF)

    row = b"\x00" + bytes([shade, 255 - shade, 128]) * width
    raw = zlib.compress(row * height)
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", raw) + chunk(b"IEND", b"")


# Sides of 256 to 1,024 pixels: an edit without width/height takes its output size from the
# input (`resize: keep` keeps it, rounded to multiples of 16), and that size must itself be a
# valid output size (at least 256 a side, at most 1 MP of context).
PNG_BYTES = st.builds(
    _png,
    st.integers(min_value=256, max_value=1024),
    st.integers(min_value=256, max_value=1024),
    st.integers(min_value=0, max_value=255),
)

schemathesis.openapi.format(
    "kontext-image", PNG_BYTES.map(lambda b: base64.b64encode(b).decode("ascii"))
)
for media in ("image/png", "image/jpeg", "image/webp", "application/octet-stream"):
    schemathesis.openapi.media_type(media, PNG_BYTES)


def _lora(names, rank: int) -> bytes:
    """A safetensors LoRA file of F32 zeros, written by hand: `<name>.lora_A.weight` (rank, 32)
    and `<name>.lora_B.weight` (32, rank) per module name."""
    header, offset = {}, 0
    for name in names:
        for part, shape in (("lora_A", [rank, 32]), ("lora_B", [32, rank])):
            size = shape[0] * shape[1] * 4
            header[f"{name}.{part}.weight"] = {"dtype": "F32", "shape": shape,
                                               "data_offsets": [offset, offset + size]}
            offset += size
    raw = json.dumps(header).encode()
    return struct.pack("<Q", len(raw)) + raw + b"\x00" * offset


LORA_BYTES = st.builds(
    _lora,
    st.lists(st.sampled_from(["x_embedder", "proj_out", "transformer_blocks.0.attn.to_q",
                              "double_blocks.0.img_attn.proj"]), min_size=1, max_size=3, unique=True),
    st.integers(min_value=1, max_value=8),
)
schemathesis.openapi.media_type("application/x-safetensors", LORA_BYTES)
# Set by cli/tests/api_fuzz.rs after it uploaded one LoRA for the tiny model; a missing value
# fails loudly rather than fuzzing `loras` with paths that cannot exist.
schemathesis.openapi.format("kontext-lora", st.just(os.environ["KONTEXT_FUZZ_LORA"]))


def _ratio(text):
    """w / h of an `aspect_ratio` the pattern admits; 0 when a side is zero."""
    try:
        w, h = (float(part.strip()) for part in text.split(":"))
    except (ValueError, AttributeError):
        return None
    return w / h if w > 0 and h > 0 else 0.0


def _number(v) -> bool:
    """A JSON number (an integer may arrive as 1712.0); not a bool."""
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _breaks_cross_field_rules(body) -> bool:
    if not isinstance(body, dict):
        return False
    width, height, aspect = body.get("width"), body.get("height"), body.get("aspect_ratio")
    if aspect is not None and (width is not None or height is not None):
        return True
    if _number(width) and _number(height) and width * height > MAX_PIXELS:
        return True
    if isinstance(aspect, str):
        r = _ratio(aspect)
        if r is not None and (r == 0.0 or r > MAX_ASPECT or r < 1 / MAX_ASPECT):
            return True
    if (width is None) != (height is None):
        return True
    if body.get("resize") is not None and body.get("input_image") is None and body.get("input_images") is None:
        return True
    if body.get("input_image") is not None and body.get("input_images") is not None:
        return True

    def blank(v):
        return v is None or (isinstance(v, str) and not v.strip())

    # BFL: input_image_2..4 are further references; they need an input_image.
    if blank(body.get("input_image")) and any(
        not blank(body.get(f"input_image_{k}")) for k in (2, 3, 4)
    ):
        return True
    turns = body.get("turns")
    if isinstance(turns, list):
        # A chain: `prompt` is turn 1 only without `input_image`, and counts against 100 turns.
        if body.get("prompt") is not None and body.get("input_image") is not None:
            return True
        if len(turns) + (body.get("prompt") is not None) > 100:
            return True
    return False


@schemathesis.hook
def filter_body(ctx, body):
    """Positive cases only: keep bodies that satisfy the cross-field rules of the descriptions."""
    return not _breaks_cross_field_rules(body)


@schemathesis.hook
def map_headers(ctx, headers):
    """A fresh Idempotency-Key per case: a key is bound to the first body sent with it (a second
    body under the same key is a 422 by design, which a stateless generator cannot know)."""
    if headers and "Idempotency-Key" in headers:
        headers["Idempotency-Key"] = uuid.uuid4().hex
    return headers


@schemathesis.hook
def filter_failure(ctx, failure, case, response):
    """The coverage phase does not pass through the filters above: excuse exactly the rejections
    they exist for — a body breaking a cross-field rule, or an Idempotency-Key reused for
    another body — and nothing else."""
    if type(failure).__name__ != "RejectedPositiveData":
        return True
    if _breaks_cross_field_rules(case.body):
        return False
    try:
        field = response.json()["error"]["field"]
    except Exception:  # not our error body: keep the failure
        return True
    return not (response.status_code == 422 and field == "Idempotency-Key")
