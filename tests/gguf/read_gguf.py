"""Reads a GGUF file with the `gguf` package (llama.cpp's own Python reader, from PyPI) and writes
every tensor, dequantized to float32 by `gguf.quants.dequantize`, to an .npz file, so
engine/tests/gguf_checkpoints.rs can check that an independent reader gets the same tensors from
our writer as candle does. Also prints each tensor's name, type and shape.

Usage: python read_gguf.py FILE.gguf OUT.npz
"""

import sys

import numpy as np
from gguf import GGUFReader
from gguf.quants import dequantize


def main(path: str, out: str) -> None:
    reader = GGUFReader(path)
    arch = reader.get_field("general.architecture")
    if arch is None:
        raise SystemExit(f"{path}: no general.architecture")
    arrays = {}
    for t in reader.tensors:
        values = dequantize(t.data, t.tensor_type).astype(np.float32)
        # t.shape is ggml's order (innermost first); numpy's is the reverse.
        shape = tuple(int(d) for d in reversed(t.shape.tolist()))
        arrays[t.name] = values.reshape(shape)
        print(f"{t.name} {t.tensor_type.name} {list(shape)}")
    np.savez(out, **arrays)


if __name__ == "__main__":
    if len(sys.argv) != 3:
        raise SystemExit(__doc__)
    main(sys.argv[1], sys.argv[2])
