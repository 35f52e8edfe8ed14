"""Checkpoint files: atomic writes and the layout every part of rcca reads.

A checkpoint is a dict with `model` (state dict), `config` (the resolved run config as a
plain dict), `classes`, `epoch`, `step`, and, for resuming, `optimizer`, `scheduler`,
`rng` and `best_top1`.
"""

from __future__ import annotations

import os
import random
from pathlib import Path

import numpy as np
import torch


def save_checkpoint(state: dict, path: Path) -> None:
    """Write to a temporary file in the same folder, then rename: a kill never leaves a broken file."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp")
    torch.save(state, tmp)
    os.replace(tmp, path)


def load_checkpoint(path: str | Path) -> dict:
    """Read a checkpoint onto the CPU. Raises FileNotFoundError naming the path."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint {path} not found")
    return torch.load(path, map_location="cpu", weights_only=False)


def rng_state() -> dict:
    """The Python, NumPy, torch (and CUDA) RNG states."""
    state = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
