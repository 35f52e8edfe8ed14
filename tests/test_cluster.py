"""Launching on clusters: process-group variables from SLURM / submitit, and Hydra's submitit launcher."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import zlib

import pytest
import torch
from conftest import REPO, TINY

from rcca.engine.distributed import cluster_environment, first_host


@pytest.fixture
def clean_environment(monkeypatch: pytest.MonkeyPatch) -> pytest.MonkeyPatch:
    for name in list(os.environ):
        if name.startswith(("SLURM_", "SUBMITIT_")) or name in ("WORLD_SIZE", "RANK", "LOCAL_RANK"):
            monkeypatch.delenv(name)
    return monkeypatch


def test_srun_step_gives_rank_world_size_and_first_host(clean_environment):
    # A 2-node step inside a larger allocation: the step's own variables, not the job's, decide.
    for name, value in {
        "SLURM_STEP_NUM_TASKS": "4",
        "SLURM_NTASKS": "8",
        "SLURM_PROCID": "3",
        "SLURM_LOCALID": "1",
        "SLURM_STEP_NUM_NODES": "2",
        "SLURM_STEP_NODELIST": "gpu[08-09]",
        "SLURM_JOB_NODELIST": "gpu[07-10]",
        "SLURM_JOB_ID": "4242",
        "SLURM_STEP_ID": "3",
    }.items():
        clean_environment.setenv(name, value)
    environment = cluster_environment()
    assert environment == {
        "RANK": "3",
        "WORLD_SIZE": "4",
        "LOCAL_RANK": "1",
        "MASTER_ADDR": "gpu08",
        "MASTER_PORT": str(10000 + zlib.crc32(b"4242.3") % 20000),
    }
    clean_environment.setenv("SLURM_STEP_ID", "4")  # another step of the same job, maybe on the same node
    assert cluster_environment()["MASTER_PORT"] != environment["MASTER_PORT"]
    clean_environment.setenv("SLURM_STEP_NUM_NODES", "1")
    assert cluster_environment()["MASTER_ADDR"] == "127.0.0.1"


@pytest.mark.parametrize(
    "nodelist, host",
    [
        ("node1", "node1"),
        ("node1,node2", "node1"),
        ("gpu[07-08]", "gpu07"),
        ("a[3,5-6],b[1-2]", "a3"),
        ("x[012]", "x012"),
        ("n[1-2]-ib", "n1-ib"),
        ("rack[1-2]-node[01-04],c7", "rack1-node01"),
    ],
)
def test_first_host_of_a_slurm_node_list(nodelist, host):
    assert first_host(nodelist) == host


def test_single_process_cases_add_nothing(clean_environment):
    assert cluster_environment() == {}  # a plain `python train.py`
    # A batch script's own process: the job has 2 tasks but this process is not an srun step.
    clean_environment.setenv("SLURM_NTASKS", "2")
    clean_environment.setenv("SLURM_JOB_ID", "7")
    assert cluster_environment() == {}
    # torchrun already set everything.
    clean_environment.setenv("SLURM_STEP_NUM_TASKS", "2")
    clean_environment.setenv("WORLD_SIZE", "2")
    assert cluster_environment() == {}


def test_slurm_launcher_preset_composes():
    result = subprocess.run(
        [
            sys.executable,
            str(REPO / "train.py"),
            "hydra/launcher=slurm",
            "hydra.launcher.partition=gpu",
            "--cfg",
            "hydra",
            "-p",
            "hydra.launcher",
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
        env=dict(os.environ),
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert "hydra_submitit_launcher.submitit_launcher.SlurmLauncher" in result.stdout
    for line in ("gpus_per_node: 2", "tasks_per_node: 2", "partition: gpu"):
        assert line in result.stdout.splitlines()


def test_submitit_launcher_runs_a_two_process_job(tmp_path, synthetic_cache):
    # Hydra's submitit launcher, local flavour: the same code path as SLURM, with 2 tasks on this machine.
    sweep = tmp_path / "sweep"
    env = {name: value for name, value in os.environ.items() if not name.startswith(("SLURM_", "SUBMITIT_"))}
    result = subprocess.run(
        [
            sys.executable,
            str(REPO / "train.py"),
            "-m",
            "hydra/launcher=submitit_local",
            "hydra.launcher.tasks_per_node=2",
            "hydra.launcher.timeout_min=5",
            f"hydra.sweep.dir={sweep}",
            *TINY,
            f"data.cache_dir={synthetic_cache}",
            "trainer.epochs=1",
            "trainer.num_workers=0",
            "trainer.device=cpu",
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
        env={**env, "OMP_NUM_THREADS": "1"},
    )
    assert result.returncode == 0, (result.stdout + result.stderr)[-3000:]
    (job,) = sweep.glob("0_*")  # the job folder carries its overrides
    log = (job / "train.log").read_text()
    assert "(4 per step x 1 accumulated step x 2 processes)" in log
    assert torch.load(job / "last.pt", weights_only=False)["step"] == 4
    assert json.loads((job / "metrics.json").read_text())["num_videos"] == 16
