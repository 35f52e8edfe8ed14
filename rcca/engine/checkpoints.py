"""Checkpoint files: the one reader (weights-only, never runs pickled code), the one atomic writer, and the
layout of the checkpoints that rcca's trainer writes (`RunCheckpoint`, the one place that knows their keys).

A run checkpoint is a dict of plain values and tensors:
`model` (state dict), `config` (the resolved run config as a plain dict), `classes`, and, for
resuming, `optimizer`, `scheduler`, `scaler`, `rng`, the position `epoch`, `batches_in_epoch`,
`step`, `best_top1`, `validated` (whether epoch `epoch`'s validation is done), `config_history`
and `failed_train`. The RNG states are stored as ints, tuples and tensors, so reading one needs
nothing but `torch.load(weights_only=True)`.

Released checkpoints (official TSM, MF-Net) and files of earlier rcca versions may also hold
NumPy arrays and scalars; those few data-only NumPy types are the only globals allowed. A file
that needs any other global (a class, a function) could run code while it is unpickled: it is
refused with a one-line error, and nothing in rcca ever reads it with `weights_only=False`.
"""

from __future__ import annotations

import io
import pickle
import random
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from rcca.engine.files import checkpoint_file, write_atomically
from rcca.errors import UserError

# Data-only NumPy types (arrays, dtypes, scalars): enough for NumPy RNG states and numeric fields, under
# NumPy 2's module names and NumPy 1's (`numpy.core`, what released checkpoints were pickled with).
NUMPY_DATA_GLOBALS = [
    np._core.multiarray._reconstruct,
    np._core.multiarray.scalar,
    (np._core.multiarray._reconstruct, "numpy.core.multiarray._reconstruct"),
    (np._core.multiarray.scalar, "numpy.core.multiarray.scalar"),
    np.ndarray,
    np.dtype,
    *(
        type(np.dtype(code))
        for code in (
            "bool",
            "int8",
            "int16",
            "int32",
            "int64",
            "uint8",
            "uint32",
            "uint64",
            "float16",
            "float32",
            "float64",
        )
    ),
]
_UNSUPPORTED_GLOBAL = re.compile(r"Unsupported global: GLOBAL ([\w.]+)")


def read_checkpoint(path: str | Path | None, key: str) -> dict:
    """Read a checkpoint file onto the CPU without executing anything it contains.

    Args:
        path: the file (None or empty: the key is not set, an error).
        key: the config key that named it (`resume`, `init_from`, `ckpt`), used in errors.

    Returns the checkpoint's top-level dict. Raises UserError with one line naming `key`, the
    path and what to do for a folder, a missing file, a file that is not a complete PyTorch
    checkpoint (text, truncated), one whose unpickling would need code, or one that is not a dict
    (`checkpoint_file` checks the path).
    """
    path = checkpoint_file(path, key)
    try:
        with torch.serialization.safe_globals(NUMPY_DATA_GLOBALS):
            checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as error:
        unsafe = _UNSUPPORTED_GLOBAL.search(str(error))
        if unsafe is None:
            raise UserError(f"{key}={path} is not a PyTorch checkpoint ({_first_line(error)})") from error
        raise UserError(
            f"{key}={path}: refused, reading it would need {unsafe.group(1)}, which can run code; rcca reads only "
            "weights-only files (if you trust it, re-save its tensors with torch.save(state_dict) and use that file)"
        ) from error
    except Exception as error:  # torch.load reports a truncated or foreign file in many ways
        raise UserError(
            f"{key}={path} is not a complete PyTorch checkpoint (truncated or another format: {_first_line(error)})"
        ) from error
    if not isinstance(checkpoint, Mapping):
        raise UserError(f"{key}={path}: expected a dict checkpoint, found a {type(checkpoint).__name__}")
    return dict(checkpoint)


def save_checkpoint(state: dict, path: Path) -> None:
    """Write `state` to `path` atomically (see `rcca.engine.files.write_atomically`).

    A kill or a full disk never leaves a partial file and never touches the previous `path`;
    running out of space raises UserError naming the folder and the bytes needed.

    Args:
        state: a dict of plain values and tensors.
        path: the file.
    """
    buffer = io.BytesIO()
    torch.save(state, buffer)
    write_atomically(Path(path), buffer.getbuffer())


@dataclass
class TrainingPosition:
    """Where training stands.

    Attributes:
        epoch: epochs done.
        batches_in_epoch: micro-batches done in the current epoch.
        step: optimizer updates done.
        best_top1: the best validation top-1 so far (-1 before any validation).
        validated: whether the end-of-epoch work of epoch `epoch` (validation when due, best.pt) is done.
    """

    epoch: int = 0
    batches_in_epoch: int = 0
    step: int = 0
    best_top1: float = -1.0
    validated: bool = True


@dataclass
class TrainingState:
    """What continuing a run needs besides its weights.

    Attributes:
        optimizer: the optimizer's state dict.
        scheduler: the LR scheduler's state dict.
        scaler: the gradient scaler's state dict (empty when the run was not fp16).
        position: where training stands.
        rng: the RNG states (`rng_state`).
        config_history: settings changed on resume: [{"step", "epoch", "changes": {key: [old, new]}}].
        failed_train: undecodable training videos seen so far: {path: reason}.
    """

    optimizer: dict
    scheduler: dict
    scaler: dict
    position: TrainingPosition
    rng: dict
    config_history: list[dict] = field(default_factory=list)
    failed_train: dict[str, str] = field(default_factory=dict)


# On-disk keys of a run checkpoint without which it cannot be continued (the others have defaults).
_TRAINING_KEYS = ("optimizer", "scheduler", "scaler", "rng", "epoch", "batches_in_epoch", "step", "best_top1")


@dataclass
class RunCheckpoint:
    """A checkpoint written by rcca's trainer (last.pt, best.pt).

    Attributes:
        model: the bare model's state dict.
        config: the resolved run config, as a plain dict.
        classes: the class names in label order (None in files of early rcca versions).
        training: what continuing the run needs (None in a file that holds only weights and config).
    """

    model: dict
    config: dict
    classes: list[str] | None
    training: TrainingState | None = None

    def to_dict(self) -> dict:
        """The on-disk form: one flat dict of plain values and tensors (see the module's docstring)."""
        data = {"model": self.model, "config": self.config, "classes": self.classes}
        state = self.training
        if state is not None:
            data.update(
                optimizer=state.optimizer,
                scheduler=state.scheduler,
                scaler=state.scaler,
                rng=state.rng,
                epoch=state.position.epoch,
                batches_in_epoch=state.position.batches_in_epoch,
                step=state.position.step,
                best_top1=state.position.best_top1,
                validated=state.position.validated,
                config_history=state.config_history,
                failed_train=state.failed_train,
            )
        return data

    @classmethod
    def from_dict(cls, data: Mapping, where: str) -> RunCheckpoint:
        """Read the on-disk form, of this or an earlier rcca version.

        Args:
            data: a checkpoint file's top-level dict (`read_checkpoint`).
            where: how the user named the file (`resume=<path>`), for the error.

        Returns:
            The checkpoint; `training` is None when the file holds no training state.

        Raises:
            UserError: one line, when the file has no run config or no weights (not an rcca run checkpoint).
        """
        if not isinstance(data.get("config"), Mapping) or "model" not in data:
            raise UserError(
                f"{where} was not written by rcca's trainer (no run config or weights inside); "
                "evaluate a last.pt or best.pt of a training run"
            )
        training = None
        if all(key in data for key in _TRAINING_KEYS):
            position = TrainingPosition(
                data["epoch"], data["batches_in_epoch"], data["step"], data["best_top1"], data.get("validated", True)
            )
            training = TrainingState(
                data["optimizer"],
                data["scheduler"],
                data["scaler"],
                position,
                data["rng"],
                list(data.get("config_history", [])),
                dict(data.get("failed_train", {})),
            )
        return cls(data["model"], dict(data["config"]), data.get("classes"), training)

    def save(self, path: Path) -> None:
        """Write the checkpoint to `path` atomically (`save_checkpoint`).

        Args:
            path: the file (last.pt, best.pt).
        """
        save_checkpoint(self.to_dict(), path)


def read_run_checkpoint(path: str | Path | None, key: str) -> RunCheckpoint:
    """Read a checkpoint written by rcca's trainer, without executing anything it contains.

    Args:
        path: the file (None or empty: the key is not set, an error).
        key: the config key that named it (`resume`, `ckpt`), used in errors.

    Returns:
        The checkpoint.

    Raises:
        UserError: one line, for a file that cannot be read safely (`read_checkpoint`) or is not a run checkpoint.
    """
    return RunCheckpoint.from_dict(read_checkpoint(path, key), f"{key}={path}")


def _first_line(error: BaseException) -> str:
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    return lines[0][:200] if lines else type(error).__name__


def rng_state() -> dict:
    """The Python, NumPy, torch (and CUDA) RNG states, as plain values and tensors."""
    numpy_state = np.random.get_state(legacy=False)
    numpy_state["state"]["key"] = torch.from_numpy(numpy_state["state"]["key"].astype(np.int64))
    state = {"python": random.getstate(), "numpy": numpy_state, "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    """Restore what `rng_state` returned (also NumPy's legacy tuple form of older checkpoints)."""
    random.setstate(state["python"])
    numpy_state = state["numpy"]
    if isinstance(numpy_state, Mapping):
        numpy_state = {**numpy_state, "state": dict(numpy_state["state"])}
        numpy_state["state"]["key"] = np.asarray(numpy_state["state"]["key"], dtype=np.uint32)
    np.random.set_state(numpy_state)
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
