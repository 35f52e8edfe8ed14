"""Launching on clusters: process-group variables from SLURM / submitit, Hydra's submitit launcher, and the
requeueing of a job that submitit's pre-emption / time-limit signal stopped."""

from __future__ import annotations

import json
import logging
import os
import re
import signal
import subprocess
import sys
import time
import zlib
from pathlib import Path

import pytest
import torch
from conftest import REPO, TINY

from rcca.engine.cli import exit_codes
from rcca.engine.distributed import cluster_environment, first_host
from rcca.engine.requeue import requeue_stopped_job, submitit_requeue_handler
from rcca.engine.runtime import available_cores, usable_cores
from rcca.errors import TrainingStopped


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
    cores = usable_cores(available_cores())  # the tasks' too: the local executor binds them to no cores of their own
    assert f"threads: {max(1, cores // 2)} intra-op + 0 data workers in each of 2 processes on {cores} core" in log
    assert torch.load(job / "last.pt", weights_only=False)["step"] == 4
    assert json.loads((job / "metrics.json").read_text())["num_videos"] == 16


# ---------------------------------------------------------------- requeueing after submitit's signal


class Resubmittable:
    """A job function that submitit can checkpoint, as Hydra's submitit launcher is."""

    def __call__(self) -> None:
        pass

    def checkpoint(self):
        from submitit.helpers import DelayedSubmission

        return DelayedSubmission(self)


@pytest.fixture
def submitit_signal_handler(tmp_path, clean_environment):
    """submitit's handler of its pre-emption signal in a local job, as `submitit.core._submit` installs it."""
    from submitit.core.job_environment import SignalHandler
    from submitit.core.utils import DelayedSubmission, JobPaths
    from submitit.local.local import LocalJobEnvironment

    clean_environment.setenv("SUBMITIT_EXECUTOR", "local")
    clean_environment.setenv("SUBMITIT_LOCAL_JOB_ID", "7")
    delayed = DelayedSubmission(Resubmittable())
    delayed.set_timeout(60, 3)  # 60 minutes, 3 requeues after time-outs
    return SignalHandler(LocalJobEnvironment(), JobPaths(tmp_path, job_id="7", task_id=0), delayed)


def stop_by(handler, resume: str | None) -> TrainingStopped:
    """A stop by SIGUSR2 as the trainer raises it, having replaced `handler`."""
    return TrainingStopped("stopped by SIGUSR2", 143, signum=signal.SIGUSR2, previous_handler=handler, resume=resume)


def warnings_of(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == "rcca" and r.levelno == logging.WARNING]


def test_only_submitits_requeue_handler_requeues(submitit_signal_handler):
    handler = submitit_signal_handler
    assert submitit_requeue_handler(handler.checkpoint_and_try_requeue) == handler.checkpoint_and_try_requeue
    for other in (signal.SIG_DFL, signal.SIG_IGN, None, print, handler.bypass, handler.checkpoint_and_exit):
        assert submitit_requeue_handler(other) is None
        requeue_stopped_job(stop_by(other, "auto"))  # nothing happens: the caller exits as before
    assert not handler._job_paths.submitted_pickle.exists()


def test_a_resume_auto_job_is_requeued_with_submitits_exit_code(submitit_signal_handler, caplog):
    from submitit.local.local import LOCAL_REQUEUE_RETURN_CODE

    caplog.set_level(logging.INFO)
    with pytest.raises(SystemExit) as exited, exit_codes():
        raise stop_by(submitit_signal_handler.checkpoint_and_try_requeue, "auto")
    assert exited.value.code == LOCAL_REQUEUE_RETURN_CODE  # the local executor starts the job again
    assert submitit_signal_handler._job_paths.submitted_pickle.exists()  # what the requeued job runs
    assert warnings_of(caplog) == [
        "stopped by SIGUSR2",
        "job requeued by submitit: it will start again and continue from last.pt (resume=auto)",
    ]


@pytest.mark.parametrize(
    "resume, reason", [(None, "resume is not set"), ("/runs/a/last.pt", "resume=/runs/a/last.pt, not auto")]
)
def test_a_job_without_resume_auto_is_not_requeued_and_says_why(submitit_signal_handler, caplog, resume, reason):
    with pytest.raises(SystemExit) as exited, exit_codes():
        raise stop_by(submitit_signal_handler.checkpoint_and_try_requeue, resume)
    assert exited.value.code == 143  # as without submitit
    assert not submitit_signal_handler._job_paths.submitted_pickle.exists()
    assert warnings_of(caplog) == [
        "stopped by SIGUSR2",
        f"job not requeued: {reason}, so a requeued job would not continue from this last.pt; run the sweep with "
        "resume=auto to have pre-empted and timed-out jobs requeued",
    ]


def test_submitits_refusal_and_other_ranks_exit_as_before(submitit_signal_handler, clean_environment, caplog):
    submitit_signal_handler._delayed.set_timeout(1, 0)  # timed out (a 1-minute job), and no requeue left
    with pytest.raises(SystemExit) as exited, exit_codes():
        raise stop_by(submitit_signal_handler.checkpoint_and_try_requeue, "auto")
    assert exited.value.code == 143
    assert warnings_of(caplog)[-1] == "Job not requeued because: timed-out too many times."
    caplog.clear()
    clean_environment.setenv("SUBMITIT_LOCAL_GLOBALID", "1")  # submitit requeues from global rank 0 only
    with pytest.raises(SystemExit) as exited, exit_codes():
        raise stop_by(submitit_signal_handler.checkpoint_and_try_requeue, "auto")
    assert exited.value.code == 143
    assert warnings_of(caplog) == ["stopped by SIGUSR2"]


def _step(checkpoint: Path) -> int:
    try:
        return torch.load(checkpoint, weights_only=True)["step"]
    except Exception:  # not written yet
        return -1


def test_a_preempted_sweep_job_is_requeued_and_ends_as_an_uninterrupted_run(tmp_path, synthetic_cache):
    # One job of Hydra's submitit launcher (local flavour) gets submitit's signal (SIGUSR2) after its first
    # update: it saves last.pt, is requeued, continues with resume=auto, and ends with the weights and metrics
    # of the same run left alone (trained alongside, as a plain run).
    common = (
        *TINY,
        f"data.cache_dir={synthetic_cache}",
        "trainer.epochs=1",
        "trainer.checkpoint_every=1",
        "trainer.num_workers=0",
        "resume=auto",
        "trainer.threads=1",  # the job and the reference train side by side: one thread each on 2 cores
    )
    env = {name: value for name, value in os.environ.items() if not name.startswith(("SLURM_", "SUBMITIT_"))}
    env["OMP_NUM_THREADS"] = "1"
    train = [sys.executable, str(REPO / "train.py")]
    output = (tmp_path / "sweep.out").open("w")
    sweep_dir = tmp_path / "sweep"
    sweep = subprocess.Popen(
        [*train, "-m", "hydra/launcher=submitit_local", "hydra.launcher.timeout_min=10", f"hydra.sweep.dir={sweep_dir}"]
        + list(common),
        cwd=REPO,
        env=env,
        stdout=output,
        stderr=subprocess.STDOUT,
        start_new_session=True,  # its own process group, with submitit's controller and the job's task
    )
    reference = subprocess.Popen(
        [*train, *common, f"hydra.run.dir={tmp_path / 'reference'}"], cwd=REPO, env=env, stdout=subprocess.DEVNULL
    )
    try:
        deadline = time.time() + 240
        while not any(_step(path) >= 1 for path in sweep_dir.glob("0_*/last.pt")):
            assert sweep.poll() is None and time.time() < deadline, (tmp_path / "sweep.out").read_text()[-3000:]
            time.sleep(0.05)
        (job,) = sweep_dir.glob("0_*")
        holder = (job / ".rcca.lock").read_text().split()  # "process <pid> on <host>": the job's training task
        os.kill(int(holder[1]), signal.SIGUSR2)
        assert sweep.wait(timeout=300) == 0, (tmp_path / "sweep.out").read_text()[-3000:]
        assert reference.wait(timeout=300) == 0
    finally:
        if sweep.poll() is None:
            os.killpg(sweep.pid, signal.SIGKILL)  # with submitit's controller and the job's task
        if reference.poll() is None:
            reference.kill()
        sweep.wait()
        reference.wait()
        output.close()

    log = (job / "train.log").read_text()
    assert log.count("stopped by SIGUSR2") == 1 and log.count("job requeued by submitit") == 1
    resumed_at = re.search(r"resumed at epoch 1, update (\d+)", log)
    assert resumed_at and 1 <= int(resumed_at[1]) < 4, log[-3000:]  # it continued the interrupted epoch
    expected_metrics = json.loads((tmp_path / "reference" / "metrics.json").read_text())
    assert json.loads((job / "metrics.json").read_text()) == expected_metrics
    for name in ("last.pt", "best.pt"):
        expected = torch.load(tmp_path / "reference" / name, weights_only=True)
        resumed = torch.load(job / name, weights_only=True)
        assert resumed["step"] == expected["step"] == 4
        for key, value in expected["model"].items():
            assert torch.equal(resumed["model"][key], value), (name, key)
