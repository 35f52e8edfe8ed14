"""Process-group helpers: one code path for a single process, torchrun, submitit and srun (NCCL or gloo)."""

from __future__ import annotations

import atexit
import os
import re
import zlib
from collections.abc import Iterator
from contextlib import contextmanager

import torch
import torch.distributed as dist

from rcca.errors import UserError


def cluster_environment() -> dict[str, str]:
    """torchrun's variables (RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR/PORT) for a process that
    torchrun did not start: a task of an `srun` step with several tasks (which is how Hydra's
    submitit launcher runs SLURM jobs) or of submitit's local executor. Empty when there is
    nothing to add (torchrun, a single process).

    A SLURM batch script's own process is not a step (no SLURM_STEP_NUM_TASKS): it stays one process.
    """
    env = os.environ
    if "WORLD_SIZE" in env:
        return {}
    if int(env.get("SLURM_STEP_NUM_TASKS", "1")) > 1:
        one_node = int(env.get("SLURM_STEP_NUM_NODES", "1")) == 1
        return {
            "RANK": env["SLURM_PROCID"],
            "WORLD_SIZE": env["SLURM_STEP_NUM_TASKS"],
            "LOCAL_RANK": env["SLURM_LOCALID"],
            "MASTER_ADDR": "127.0.0.1" if one_node else first_host(env["SLURM_STEP_NODELIST"]),
            "MASTER_PORT": rendezvous_port(f"{env['SLURM_JOB_ID']}.{env.get('SLURM_STEP_ID', '0')}"),
        }
    if env.get("SUBMITIT_EXECUTOR") == "local":
        import submitit  # only under submitit's local executor, which installed it

        job = submitit.JobEnvironment()
        if job.num_tasks > 1:
            return {
                "RANK": str(job.global_rank),
                "WORLD_SIZE": str(job.num_tasks),
                "LOCAL_RANK": str(job.local_rank),
                "MASTER_ADDR": "127.0.0.1",
                "MASTER_PORT": rendezvous_port(job.job_id),
            }
    return {}


def first_host(nodelist: str) -> str:
    """The first host of a SLURM node list: "gpu[07-08,11],cpu1" -> "gpu07", "r[1-2]-n[01-04]-ib" -> "r1-n01-ib"."""
    depth, end = 0, len(nodelist)
    for i, char in enumerate(nodelist):
        depth += (char == "[") - (char == "]")
        if char == "," and depth == 0:
            end = i
            break
    return re.sub(r"\[([^\]]*)\]", lambda ranges: re.split("[,-]", ranges.group(1))[0], nodelist[:end])


def rendezvous_port(key: str) -> str:
    """A port in 10000-29999 derived from `key`: the same on every task of a step, below Linux's ephemeral range."""
    return str(10000 + zlib.crc32(key.encode()) % 20000)


def init_distributed(device_type: str) -> tuple[int, int, int]:
    """Join the process group when launched by torchrun, submitit or srun.

    Returns (rank, world_size, GPU index of this process). NCCL on GPUs, gloo on CPUs; a plain
    `python train.py` is rank 0 of 1. The GPU index is the local rank among the visible GPUs,
    which is 0 where the cluster shows each process only its own GPU.
    """
    for key, value in cluster_environment().items():
        os.environ.setdefault(key, value)  # MASTER_ADDR/PORT set by the user win
    if "WORLD_SIZE" not in os.environ or int(os.environ["WORLD_SIZE"]) == 1:
        return 0, 1, 0
    gpu = 0
    if device_type == "cuda":
        gpu = int(os.environ.get("LOCAL_RANK", 0)) % torch.cuda.device_count()
        torch.cuda.set_device(gpu)
    backend = "nccl" if device_type == "cuda" else "gloo"
    if not dist.is_initialized():  # once per process: the jobs of a Hydra sweep share the group
        dist.init_process_group(backend)
        atexit.register(dist.destroy_process_group)
    elif dist.get_backend() != backend:
        raise UserError(
            f"trainer.device changed within a multi-process sweep ({dist.get_backend()} -> {backend}): "
            "sweep it in separate runs"
        )
    return dist.get_rank(), dist.get_world_size(), gpu


def is_distributed() -> bool:
    return dist.is_available() and dist.is_initialized()


def is_main_process() -> bool:
    return not is_distributed() or dist.get_rank() == 0


def gather_concat(tensor: torch.Tensor) -> torch.Tensor:
    """Concatenate a tensor (sizes may differ along dim 0) from every process, in rank order."""
    if not is_distributed():
        return tensor
    sizes = [torch.zeros(1, dtype=torch.long, device=tensor.device) for _ in range(dist.get_world_size())]
    dist.all_gather(sizes, torch.tensor([len(tensor)], device=tensor.device))
    largest = int(max(s.item() for s in sizes))
    padded = torch.zeros((largest, *tensor.shape[1:]), dtype=tensor.dtype, device=tensor.device)
    padded[: len(tensor)] = tensor
    gathered = [torch.empty_like(padded) for _ in sizes]
    dist.all_gather(gathered, padded)
    return torch.cat([g[: int(s.item())] for g, s in zip(gathered, sizes)])


def gather_lists(items: list) -> list:
    """Concatenate a picklable list from every process, in rank order."""
    if not is_distributed():
        return items
    gathered: list[list] = [[] for _ in range(dist.get_world_size())]
    dist.all_gather_object(gathered, items)
    return [item for part in gathered for item in part]


def any_process(flag: bool | torch.Tensor, device: torch.device) -> bool:
    """True on every process when `flag` is true on at least one (e.g. a stop signal reached one rank).

    A tensor flag (one boolean, e.g. computed on the GPU) is combined on `device` before it is read: one wait for
    the device per call.
    """
    if not is_distributed():
        return bool(flag)
    if isinstance(flag, torch.Tensor):
        tensor = flag.reshape(1).to(device=device, dtype=torch.int32)
    else:
        tensor = torch.tensor([int(flag)], device=device)
    dist.all_reduce(tensor, op=dist.ReduceOp.MAX)
    return bool(tensor.item())


def reduce_mean(value: float, device: torch.device) -> float:
    """Average a Python number over processes."""
    if not is_distributed():
        return value
    tensor = torch.tensor([value], dtype=torch.float64, device=device)
    dist.all_reduce(tensor)
    return tensor.item() / dist.get_world_size()


def broadcast_object(value):
    """Rank 0's value of a picklable object, on every process."""
    if not is_distributed():
        return value
    holder = [value]
    dist.broadcast_object_list(holder, src=0)
    return holder[0]


@contextmanager
def main_process_first() -> Iterator[None]:
    """Rank 0 runs the block first (e.g. generating a dataset), the other ranks after it."""
    if is_distributed() and not is_main_process():
        dist.barrier()
    yield
    if is_distributed() and is_main_process():
        dist.barrier()
