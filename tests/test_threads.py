"""The thread policy: a process's intra-op threads and its data workers share its cores, in training and testing."""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from conftest import TINY

from rcca.config import compose_config
from rcca.engine.runtime import (
    apply_thread_policy,
    available_cores,
    intra_op_threads,
    processes_sharing,
    quota_cores,
    usable_cores,
)
from rcca.engine.test_pipeline import test as evaluate_checkpoint
from rcca.engine.train_pipeline import train


@pytest.fixture
def threads_restored() -> Iterator[None]:
    """The test process's intra-op threads as they were before the test."""
    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)


@pytest.mark.parametrize(
    "cores, workers, processes, expected",
    [
        (1, 0, 1, 1),
        (1, 2, 1, 1),  # never fewer than 1
        (2, 0, 1, 2),  # no workers: decoding runs in the process itself, between its computations
        (2, 1, 1, 1),
        (2, 2, 1, 1),  # the quick-start on 2 cores
        (16, 4, 2, 4),  # 8 cores per process, 4 of them for its workers
        (16, 0, 4, 4),
        (7, 1, 2, 2),  # 3 whole cores per process
        (64, 8, 8, 1),
    ],
)
def test_automatic_threads_are_the_share_of_the_cores_left_by_the_workers(cores, workers, processes, expected):
    assert intra_op_threads(None, cores=cores, workers=workers, processes=processes) == expected


def test_an_explicit_thread_count_is_honoured():
    assert intra_op_threads(3, cores=2, workers=2, processes=1) == 3
    assert intra_op_threads(1, cores=64, workers=0, processes=1) == 1


def test_the_policy_sets_the_automatic_threads_and_says_so(caplog, threads_restored):
    caplog.set_level(logging.INFO, logger="rcca.engine.runtime")
    cores = usable_cores(available_cores())
    expected = intra_op_threads(None, cores=cores, workers=1)
    torch.set_num_threads(expected + 1)
    assert apply_thread_policy(None, workers=1) == expected == torch.get_num_threads()
    line = f"threads: {expected} intra-op + 1 data worker on {cores} core{'s' if cores != 1 else ''} "
    assert [r.getMessage() for r in caplog.records] == [line + "(trainer.threads=null: automatic)"]
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]


def test_more_threads_than_the_cores_left_by_the_workers_is_honoured_with_a_warning(caplog, threads_restored):
    caplog.set_level(logging.INFO, logger="rcca.engine.runtime")
    cores = usable_cores(available_cores())
    requested = cores + 1  # oversubscribed on any machine
    assert apply_thread_policy(requested, workers=2) == requested == torch.get_num_threads()
    (warning,) = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert warning.startswith(f"trainer.threads={requested} + trainer.num_workers=2 exceed the ")
    automatic = intra_op_threads(None, cores=cores, workers=2)
    assert f"set trainer.threads=null ({automatic} here) or lower trainer.num_workers" in warning
    caplog.clear()
    apply_thread_policy(automatic, workers=2)  # as many as automatic gives: nothing to warn about
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]


def _sharing_worker(rank: int, port: int, disjoint: bool, out: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    cores = sorted(os.sched_getaffinity(0))
    if disjoint:  # as SLURM tasks bound to cores of their own
        os.sched_setaffinity(0, {cores[rank]})
    dist.init_process_group("gloo", rank=rank, world_size=2, timeout=timedelta(seconds=60))
    try:
        Path(out, f"rank{rank}").write_text(str(processes_sharing(available_cores())))
    finally:
        dist.destroy_process_group()


@pytest.mark.skipif(
    not hasattr(os, "sched_setaffinity") or len(available_cores()) < 2, reason="needs 2 cores and CPU affinity"
)
@pytest.mark.parametrize("disjoint, expected", [(False, "2"), (True, "1")])
def test_processes_divide_the_cores_they_share(tmp_path, disjoint, expected):
    port = 29500 + (os.getpid() + 29 + disjoint) % 1000
    mp.spawn(_sharing_worker, args=(port, disjoint, str(tmp_path)), nprocs=2, join=True)
    assert [(tmp_path / f"rank{rank}").read_text() for rank in range(2)] == [expected, expected]


def test_training_and_testing_run_with_the_policys_threads(tmp_path, synthetic_cache, caplog, threads_restored):
    caplog.set_level(logging.INFO)
    cores = usable_cores(available_cores())
    automatic = intra_op_threads(None, cores=cores, workers=1)
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    overrides = [*TINY, f"data.cache_dir={synthetic_cache}", "trainer.epochs=1", "trainer.num_workers=1"]
    torch.set_num_threads(automatic + 1)  # what a process without the policy would keep
    train(compose_config(overrides), run_dir, overrides)
    assert torch.get_num_threads() == automatic
    lines = [r.getMessage() for r in caplog.records if r.getMessage().startswith("threads: ")]
    assert len(lines) == 1 and re.fullmatch(
        rf"threads: {automatic} intra-op \+ 1 data worker on {cores} cores? \(trainer.threads=null: automatic\)",
        lines[0],
    )

    # test.py takes the checkpoint's config, with what its command line changes: here trainer.threads.
    caplog.clear()
    test_dir = tmp_path / "test"
    test_dir.mkdir()
    overrides = [f"ckpt={run_dir / 'last.pt'}", "experiment=none", "trainer.threads=2", "trainer.num_workers=0"]
    torch.set_num_threads(3)
    evaluate_checkpoint(compose_config(overrides), test_dir, overrides)
    assert torch.get_num_threads() == 2
    assert [r.getMessage() for r in caplog.records if r.getMessage().startswith("threads: ")] == [
        f"threads: 2 intra-op + 0 data workers on {cores} core{'s' if cores != 1 else ''} (trainer.threads=2)"
    ]


@pytest.mark.parametrize(
    "cpu_max, expected", [("200000 100000\n", 2), ("150000 100000", 1), ("50000 100000", 1), ("max 100000\n", None)]
)
def test_a_cgroup_cpu_quota_counts_its_whole_cores(cpu_max: str, expected: int | None) -> None:
    assert quota_cores(cpu_max) == expected


def test_a_container_quota_caps_the_cores_of_the_affinity(tmp_path) -> None:
    cpu_max = tmp_path / "cpu.max"
    cpu_max.write_text("200000 100000\n")  # docker --cpus=2 on a machine with more cores
    assert usable_cores(frozenset(range(16)), cpu_max) == 2
    cpu_max.write_text("max 100000\n")
    assert usable_cores(frozenset(range(16)), cpu_max) == 16
    assert usable_cores(frozenset(range(4)), tmp_path / "absent") == 4  # cgroup v1 or no cgroup file: affinity only
