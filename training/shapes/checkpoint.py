"""Resumable training: model + optimizer (+ EMA) state and progress, written atomically so a
killed run never leaves a half-written checkpoint."""

import os

import torch


def save_checkpoint(path: str, model, opt, ema=None, **extra):
    state = {"model": model.state_dict(), "opt": opt.state_dict(), **extra}
    if ema is not None:
        state["ema"] = ema.state_dict()
    tmp = f"{path}.tmp"
    torch.save(state, tmp)
    os.replace(tmp, path)


def load_checkpoint(path: str, model, opt, ema=None) -> dict:
    """Restores `model`, `opt` and `ema` from `path` if it exists; returns the extra fields."""
    if not os.path.exists(path):
        return {}
    state = torch.load(path, weights_only=False)
    model.load_state_dict(state.pop("model"))
    opt.load_state_dict(state.pop("opt"))
    ema_state = state.pop("ema", None)
    if ema is not None and ema_state is not None:
        ema.load_state_dict(ema_state)
    return state
