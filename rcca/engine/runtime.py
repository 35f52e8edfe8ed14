"""Run set-up shared by training and testing: checked config, device, process group, seed, run folder.

`start_run` turns a composed config into a `Runtime`, the few facts every later step needs, and
decides once whether progress bars are drawn (rank 0, a terminal, `trainer.progress`).
"""

from __future__ import annotations

import logging
import os
import random
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from omegaconf import DictConfig, OmegaConf

from rcca.config import Config, validate_config
from rcca.engine.distributed import broadcast_object, init_distributed, is_main_process
from rcca.engine.files import LOCK_NAME, RunFolderLock, held_by_this_process
from rcca.errors import UserError

log = logging.getLogger(__name__)

HYDRA_RECORDS = frozenset({".hydra", "train.log", "test.log"})  # what Hydra writes into a run folder by itself


@dataclass(frozen=True)
class Runtime:
    """Where and how this process runs.

    Attributes:
        device: the device of this process (`cuda:<gpu>` or `cpu`).
        rank: this process's rank; 0 writes checkpoints, metrics and logs.
        world_size: processes in the run (1 without torchrun / SLURM tasks).
        run_dir: the run folder (rank 0's, on every process).
        progress_bars: draw progress bars (else plain log lines).
    """

    device: torch.device
    rank: int
    world_size: int
    run_dir: Path
    progress_bars: bool

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def check_required(cfg: DictConfig) -> None:
    """Fail before any work with the key's name: mandatory values (???), then every value's rule."""
    missing = sorted(OmegaConf.missing_keys(cfg))
    if missing:
        raise UserError(f"{', '.join(missing)} must be set (e.g. {missing[0]}=...) for this dataset or experiment")
    validate_config(cfg)


def resolve_device(name: str) -> torch.device:
    """`trainer.device` as a device: `auto` is CUDA when a GPU is visible."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise UserError("trainer.device=cuda but no GPU is visible; use trainer.device=cpu")
    return torch.device(name)


def seed_everything(seed: int) -> None:
    """Seed Python's, NumPy's and PyTorch's global generators."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def start_run(cfg: Config, run_dir: Path) -> Runtime:
    """Check the config, pick the device, join the process group and seed: the start of both pipelines.

    On ranks other than 0, logging drops to warnings and the folder Hydra made for this process goes
    (rank 0's folder is the run's: Hydra clocks may differ between processes).
    """
    check_required(cfg)
    device = resolve_device(cfg.trainer.device)
    rank, world_size, gpu = init_distributed(device.type)
    if device.type == "cuda":
        device = torch.device("cuda", gpu)
        torch.backends.cudnn.benchmark = cfg.trainer.cudnn_benchmark
    shared_dir = Path(broadcast_object(str(run_dir)))
    seed_everything(cfg.seed)
    if rank != 0:
        logging.getLogger().setLevel(logging.WARNING)  # rank 0 reports progress for all
        leave_outputs_to_rank_zero(run_dir, shared_dir)
    bars = cfg.trainer.progress and sys.stderr.isatty() and rank == 0
    return Runtime(device=device, rank=rank, world_size=world_size, run_dir=shared_dir, progress_bars=bars)


def holds_only_hydra_records(folder: Path, also: frozenset[str] = frozenset()) -> bool:
    """Whether `folder` holds nothing but what Hydra wrote into it (and the names in `also`)."""
    return folder.is_dir() and {entry.name for entry in folder.iterdir()} <= HYDRA_RECORDS | also


def stop_log_files() -> None:
    """Close and detach the root logger's file handlers (Hydra's `train.log`); the terminal keeps its messages."""
    root = logging.getLogger()
    for handler in [h for h in root.handlers if isinstance(h, logging.FileHandler)]:
        root.removeHandler(handler)
        handler.close()


def leave_outputs_to_rank_zero(own_dir: Path, run_dir: Path) -> None:
    """On ranks other than 0: stop writing the log file and remove the folder Hydra made for this process.

    The folder is removed only when it is not rank 0's and holds nothing but Hydra's files.
    Warnings still reach the terminal.
    """
    stop_log_files()
    if own_dir.resolve() != run_dir.resolve() and holds_only_hydra_records(own_dir):
        shutil.rmtree(own_dir)


def discard_unused_run_folder(run_dir: Path) -> bool:
    """After a failure before any result was written: remove a run folder that holds only Hydra's records.

    Only for folders Hydra or test.py named themselves (`outputs/<date>/<time>`, sweep job folders): the
    caller does not call this for a folder the user named. Only rank 0 removes (decided from the launcher's
    RANK when the failure came before the process group existed), and only a folder whose lock, if any, is
    this process's and free: a folder another run uses or has used is never touched. Returns whether the
    folder was removed.
    """
    if os.environ.get("RANK", "0") != "0" or not is_main_process():
        return False
    if not holds_only_hydra_records(run_dir, also=frozenset({LOCK_NAME})):
        return False
    if (run_dir / LOCK_NAME).exists() and not held_by_this_process(run_dir):
        return False
    lock = RunFolderLock(run_dir, fresh=False, overwrite=False)
    try:
        lock.acquire()  # no other live process can be using the folder while it goes
    except (UserError, OSError):  # in use, or not writable: left as it is
        return False
    stop_log_files()  # the log file is closed before its folder goes
    shutil.rmtree(run_dir, ignore_errors=True)
    lock.release()
    return True


def claim_run_folder(cfg: Config, run_dir: Path) -> RunFolderLock | None:
    """On rank 0: lock the run folder for this run (see `RunFolderLock`); every rank raises the same
    UserError when it is refused. `resume=auto` without a last.pt is a fresh run."""
    fresh = not cfg.resume or (cfg.resume == "auto" and not (run_dir / "last.pt").exists())
    lock = RunFolderLock(run_dir, fresh=fresh, overwrite=cfg.overwrite) if is_main_process() else None
    refusal = None
    if lock is not None:
        try:
            lock.acquire()
        except UserError as error:
            refusal = str(error)
        except OSError as error:  # e.g. a folder that cannot be written: the other ranks must not wait
            refusal = f"run folder {run_dir}: {error}"
    refusal = broadcast_object(refusal)
    if refusal is not None:
        raise UserError(refusal)
    return lock
