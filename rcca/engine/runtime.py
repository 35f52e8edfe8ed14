"""Run set-up shared by training and testing: checked config, device, process group, threads, seed, run folder.

`start_run` turns a composed config into a `Runtime`, the few facts every later step needs, and
decides once whether progress bars are drawn (rank 0, a terminal, `trainer.progress`) and how many
CPU threads this process computes with (`apply_thread_policy`).
"""

from __future__ import annotations

import logging
import os
import random
import shutil
import socket
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from rcca.config import Config, check_required
from rcca.engine.distributed import broadcast_object, gather_lists, init_distributed, is_main_process
from rcca.engine.files import RunFolderLock, holds_only_hydra_records, stop_log_files
from rcca.errors import UserError
from rcca.progress import count_of

log = logging.getLogger(__name__)


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


def available_cores() -> frozenset[int]:
    """The CPU cores this process may run on: its affinity (taskset, a container's or SLURM's binding) where the
    system tells it, else all of the machine's."""
    if hasattr(os, "sched_getaffinity"):
        return frozenset(os.sched_getaffinity(0))
    return frozenset(range(os.cpu_count() or 1))


def quota_cores(cpu_max: str) -> int | None:
    """Whole cores of a cgroup v2 CPU quota (`docker --cpus`, Kubernetes limits), from its `cpu.max` text.

    "200000 100000" (quota and period in microseconds) -> 2; "150000 100000" -> 1 (at least 1);
    "max 100000" (no quota) -> None.
    """
    quota, period = cpu_max.split()[:2]
    return None if quota == "max" else max(1, int(quota) // int(period))


def usable_cores(cores: frozenset[int], cgroup: Path = Path("/sys/fs/cgroup/cpu.max")) -> int:
    """How many of `cores` this process may keep busy: their count, capped by the cgroup's CPU quota if any."""
    try:
        quota = quota_cores(cgroup.read_text())
    except (OSError, ValueError):
        quota = None
    return len(cores) if quota is None else min(len(cores), quota)


def processes_sharing(cores: frozenset[int]) -> int:
    """How many processes of the run, this one included, run on this machine and may use one of `cores`.

    torchrun's processes share the machine's cores (the local world size); SLURM tasks bound to cores
    of their own share none. Collective: every process of the run calls it.

    Args:
        cores: this process's cores (`available_cores`).

    Returns:
        1 for a single process.
    """
    host = socket.gethostname()
    everyone = gather_lists([(host, sorted(cores))])
    return sum(1 for other_host, theirs in everyone if other_host == host and not cores.isdisjoint(theirs))


def intra_op_threads(requested: int | None, *, cores: int, workers: int, processes: int = 1) -> int:
    """The intra-op CPU threads of one process: `trainer.threads` when set, else its share of the cores
    less its data workers, at least 1.

    The automatic count keeps a process's threads and data workers within its share of the cores: on a
    machine with any other load, more threads than cores leave each GEMM waiting at OpenMP barriers for a
    thread that is not running (training many times slower). A data worker decodes with one thread and
    computes with one (see `apply_thread_policy`), so it counts as one core.

    Args:
        requested: `trainer.threads`, or None for automatic.
        cores: the cores this process may run on (`available_cores`).
        workers: this process's data worker processes (`trainer.num_workers`).
        processes: the run's processes that share those cores, this one included (`processes_sharing`).

    Returns:
        E.g. 1 for 2 cores and 2 workers; 4 for 16 cores shared by 2 processes of 4 workers each.
    """
    if requested is not None:
        return requested
    return max(1, cores // processes - workers)


def apply_thread_policy(requested: int | None, workers: int) -> int:
    """Set this process's intra-op threads (`intra_op_threads`) and return them; collective, logged on rank 0.

    Logs one line, and a warning when an explicit `trainer.threads` with the data workers oversubscribes
    the cores. `OMP_NUM_THREADS` (and torchrun's default of 1) is overridden: `trainer.threads` says it.

    The rest of the process tree needs nothing set here: torch's DataLoader sets one intra-op thread in
    each worker it starts (`torch.set_num_threads(1)` in torch/utils/data/_utils/worker.py), and
    `rcca.data.decoding` decodes with one thread (decord's `num_threads=1`, PyAV's `thread_count = 1`).
    Inter-op threads are left as torch starts them: eager training and evaluation give that pool no work
    (`torch.jit.fork` and the like do; its idle threads sleep, they do not spin), and
    `torch.set_num_interop_threads` raises once parallel work has started or on a second call (a sweep's
    second job in the same process).

    Args:
        requested: `trainer.threads` (None: automatic).
        workers: `trainer.num_workers`.

    Returns:
        The intra-op threads now set.
    """
    available = available_cores()
    processes = processes_sharing(available)
    cores = usable_cores(available)
    threads = intra_op_threads(requested, cores=cores, workers=workers, processes=processes)
    torch.set_num_threads(threads)
    if not is_main_process():
        return threads
    each = f" in each of {count_of(processes, 'process')}" if processes > 1 else ""
    setting = "null: automatic" if requested is None else str(requested)
    log.info(
        "threads: %d intra-op + %s%s on %s (trainer.threads=%s)",
        threads,
        count_of(workers, "data worker"),
        each,
        count_of(cores, "core"),
        setting,
    )
    automatic = intra_op_threads(None, cores=cores, workers=workers, processes=processes)
    if threads > automatic:  # only an explicit trainer.threads gives more
        log.warning(
            "trainer.threads=%d + trainer.num_workers=%d exceed the %s of this process%s: on a busy machine its "
            "threads wait for each other; set trainer.threads=null (%d here) or lower trainer.num_workers",
            threads,
            workers,
            count_of(cores // processes, "core"),
            f" ({cores} shared by {processes} processes)" if processes > 1 else "",
            automatic,
        )
    return threads


def start_run(cfg: Config, run_dir: Path) -> Runtime:
    """Check the config, pick the device, join the process group, set the threads and seed: the start of both
    pipelines.

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
    apply_thread_policy(cfg.trainer.threads, cfg.trainer.num_workers)
    seed_everything(cfg.seed)
    if rank != 0:
        logging.getLogger().setLevel(logging.WARNING)  # rank 0 reports progress for all
        leave_outputs_to_rank_zero(run_dir, shared_dir)
    bars = cfg.trainer.progress and sys.stderr.isatty() and rank == 0
    return Runtime(device=device, rank=rank, world_size=world_size, run_dir=shared_dir, progress_bars=bars)


def leave_outputs_to_rank_zero(own_dir: Path, run_dir: Path) -> None:
    """On ranks other than 0: stop writing the log file and remove the folder Hydra made for this process.

    The folder is removed only when it is not rank 0's and holds nothing but Hydra's files.
    Warnings still reach the terminal.
    """
    stop_log_files()
    if own_dir.resolve() != run_dir.resolve() and holds_only_hydra_records(own_dir):
        shutil.rmtree(own_dir)


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
