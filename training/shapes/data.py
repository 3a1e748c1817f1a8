"""The training set written by `kontext-shapes dataset` (shapes/src/dataset.rs): cases.jsonl plus raw RGB
arrays, memory-mapped."""

import json

import numpy as np
import torch


class ShapesData:
    def __init__(self, root: str):
        with open(f"{root}/meta.json") as f:
            self.meta = json.load(f)
        self.count = self.meta["count"]
        self.size = self.meta["width"]
        shape = (self.count, self.size, self.size, 3)
        self.targets = np.memmap(f"{root}/targets.u8", dtype=np.uint8, mode="r", shape=shape)
        self.inputs = np.memmap(f"{root}/inputs.u8", dtype=np.uint8, mode="r", shape=shape)
        self.prompts, self.tasks, self.has_input = [], [], []
        with open(f"{root}/cases.jsonl") as f:
            for line in f:
                c = json.loads(line)
                self.prompts.append(c["prompt"])
                self.tasks.append(c["task"])
                self.has_input.append(c["has_input"])
        assert len(self.prompts) == self.count, "cases.jsonl and meta.json disagree"
        self.has_input = np.array(self.has_input)

    @property
    def vocabulary(self):
        return self.meta["vocabulary"]


def to_pixels(batch_u8: np.ndarray) -> torch.Tensor:
    """(B, H, W, 3) uint8 -> (B, 3, H, W) float in [-1, 1] (diffusers' `(x/255)*2-1`)."""
    x = torch.from_numpy(np.array(batch_u8, copy=True)).permute(0, 3, 1, 2).float()
    return x / 255.0 * 2.0 - 1.0


def to_u8(pixels: torch.Tensor) -> np.ndarray:
    """(B, 3, H, W) in [-1, 1] -> (B, H, W, 3) uint8, rounded like diffusers."""
    x = ((pixels / 2 + 0.5).clamp(0, 1) * 255).round().to(torch.uint8)
    return x.permute(0, 2, 3, 1).numpy()
