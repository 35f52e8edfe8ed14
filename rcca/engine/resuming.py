"""Continuing a run: which checkpoint, which settings may change on the way, and the command that does it.

A resumed run builds everything from the config it is given, then loads the checkpoint. Settings
that only steer the rest of the run (LR and schedule, epochs, logging, workers and threads,
checkpoint frequency, devices and precision, test views, where the data lives) may differ from the
checkpoint's: they are applied, logged and kept in the checkpoint's `config_history`. Any other
difference (architecture, dataset, its lists and split, input size, batch sizes, seed) would make
the continued run something else, and stops it before any work. (`dataset.exclude` may change: a
resumed run can leave out videos that crash the decoder, at the cost of bit-identity.)
"""

from __future__ import annotations

import logging
import os
import shlex
import sys
from collections.abc import Mapping
from pathlib import Path

from rcca.engine.checkpoints import RunCheckpoint, read_run_checkpoint
from rcca.errors import UserError

log = logging.getLogger(__name__)

# Config keys (a trailing dot: the whole section) that a resumed run may change.
RESUMABLE = (
    "optimizer.lr",
    "optimizer.momentum",
    "optimizer.weight_decay",
    "optimizer.nesterov",
    "optimizer.clip_grad_norm",
    "optimizer.classifier_lr_mult",
    "schedule.",
    "test.",
    "trainer.epochs",
    "trainer.num_workers",
    "trainer.threads",
    "trainer.data_timeout",
    "trainer.device",
    "trainer.eval_every",
    "trainer.log_every",
    "trainer.checkpoint_every",
    "trainer.progress",
    "trainer.amp",
    "trainer.channels_last",
    "trainer.compile",
    "trainer.cudnn_benchmark",
    "dataset.root",
    "dataset.backend",
    "dataset.exclude",
    "data.cache_dir",
    "backbone.pretrained",
    "module.memory_efficient",
    "imagenet.",
    "results_dir",
)
# Keys about how a run starts, not what it trains: never compared on resume.
STARTING_KEYS = ("resume", "overwrite", "init_from", "init_from_format", "ckpt")
# Overrides that say where and how to continue, left out of the command that continues a run.
_PLACEMENT_KEYS = ("hydra.run.dir", "hydra.sweep.dir", "hydra.sweep.subdir", "resume", "overwrite")


def flatten(config: Mapping, prefix: str = "") -> dict[str, object]:
    """{"a": {"b": 1}, "c": [2]} -> {"a.b": 1, "c": [2]} (lists are values)."""
    flat: dict[str, object] = {}
    for key, value in config.items():
        if isinstance(value, Mapping):
            flat.update(flatten(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def is_resumable(key: str) -> bool:
    return any(key == allowed or (allowed.endswith(".") and key.startswith(allowed)) for allowed in RESUMABLE)


def config_changes(saved: Mapping, requested: Mapping) -> dict[str, tuple]:
    """{key: (checkpoint value, requested value)} for the settings that differ (keys in both only).

    Raises UserError listing every differing setting that a resumed run may not change.
    """
    old, new = flatten(saved), flatten(requested)
    compared = sorted((old.keys() & new.keys()) - set(STARTING_KEYS))
    changes = {key: (old[key], new[key]) for key in compared if old[key] != new[key]}
    fixed = [
        f"{key}={new_value} (checkpoint: {old_value})"
        for key, (old_value, new_value) in changes.items()
        if not is_resumable(key)
    ]
    if fixed:
        raise UserError(
            f"resume: these settings differ from the checkpoint's run and cannot change mid-run: {'; '.join(fixed)}; "
            "drop them, or start a new run in another hydra.run.dir (init_from=<checkpoint> to start from its weights)"
        )
    return changes


def resume_checkpoint(resume: str | None, run_dir: Path) -> RunCheckpoint | None:
    """The checkpoint that `resume` names, read safely.

    Args:
        resume: the `resume` setting: empty (start afresh), `auto` (the run folder's last.pt) or a file.
        run_dir: the run folder.

    Returns:
        The checkpoint to continue, or None to start afresh: also for `resume=auto` without a last.pt,
        with a warning that names the folder.

    Raises:
        UserError: one line, for a file that is not a run checkpoint or holds no training state.
    """
    if not resume:
        return None
    path = run_dir / "last.pt" if resume == "auto" else Path(resume)
    if resume == "auto" and not path.exists():
        log.warning(
            "resume=auto: NO CHECKPOINT in %s, so this is a NEW run from scratch. To continue an earlier run, "
            "give its folder: hydra.run.dir=<that folder> resume=auto",
            run_dir,
        )
        return None
    checkpoint = read_run_checkpoint(path, "resume")
    if checkpoint.training is None:
        raise UserError(
            f"resume={path} holds weights but no training state to continue from; "
            f"start a new run from its weights with init_from={path}"
        )
    log.info("resuming from %s", path)
    return checkpoint


def continue_command(overrides: list[str], run_dir: Path, world_size: int, changes: Mapping[str, str] = {}) -> str:
    """The command line that continues the run in `run_dir`: its own overrides, its folder, resume=auto,
    and `changes` ({key: value}, e.g. {"optimizer.lr": "<lower>"}) in place of the overrides of those keys."""
    replaced = {*_PLACEMENT_KEYS, *changes}
    kept = [o for o in overrides if o.split("=", 1)[0].lstrip("+~") not in replaced]
    extra = [f"{key}={value}" for key, value in changes.items()]
    script = sys.argv[0] if sys.argv[0].endswith("train.py") else "train.py"  # not a launcher's own script
    return shlex.join([*launcher_command(world_size), script, *kept, f"hydra.run.dir={run_dir}", "resume=auto", *extra])


def launcher_command(world_size: int) -> list[str]:
    """How to start `world_size` processes as this run was: python, or torchrun with its node and process counts."""
    if world_size == 1:
        return ["python"]
    per_node = int(os.environ.get("LOCAL_WORLD_SIZE", world_size))
    nodes = [f"--nnodes={world_size // per_node}"] if per_node < world_size else []
    return ["torchrun", *nodes, f"--nproc_per_node={per_node}"]
