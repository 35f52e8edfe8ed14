"""The entry points as a user runs them: outputs, test.py, errors, resume, signals, fine-tuning."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from conftest import REPO, TINY, run_entry, start_training
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from rcca.data.synthetic import SyntheticSpec, set_folder_name


def tiny_run(tmp_path: Path, cache: Path, name: str, *extra: str, check: bool = True):
    run_dir = tmp_path / name
    result = run_entry("train.py", *TINY, f"data.cache_dir={cache}", f"hydra.run.dir={run_dir}", *extra, check=check)
    return run_dir, result


def test_train_writes_outputs_and_test_reads_them(tmp_path, synthetic_cache):
    run_dir, result = tiny_run(tmp_path, synthetic_cache, "run", "trainer.epochs=2", "trainer.cam_every=2")
    assert "done: 2 epochs" in result.stdout and "video top-1" in result.stdout
    for name in ("last.pt", "best.pt", "metrics.json", "train.log", ".hydra/config.yaml"):
        assert (run_dir / name).is_file(), name
    events = EventAccumulator(str(run_dir / "tensorboard"), size_guidance={"images": 0})
    events.Reload()
    # Two validations: a confusion matrix with each, the CAM image with every second one (the first).
    assert len(events.Images("val/confusion_matrix")) == 2
    (cam,) = events.Images("val/class_activation_maps")
    assert cam.step == events.Images("val/confusion_matrix")[0].step and cam.width > cam.height > 0
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert metrics["num_videos"] == 16 and 0 <= metrics["top1"] <= 100
    assert len(metrics["confusion_matrix"]) == 8
    checkpoint = torch.load(run_dir / "last.pt", weights_only=False)
    assert checkpoint["epoch"] == 2 and checkpoint["config"]["module"]["name"] == "rcca"
    assert any(".context.gamma" in key for key in checkpoint["model"])

    # test.py needs only the checkpoint: the model config comes from it.
    test_dir = tmp_path / "test"
    result = run_entry(
        "test.py", f"ckpt={run_dir / 'last.pt'}", f"hydra.run.dir={test_dir}", "test.num_crops=3", "experiment=none"
    )
    assert "1 clip x 3 crops" in result.stdout
    tested = json.loads((test_dir / "metrics.json").read_text())
    assert tested["num_videos"] == 16 and tested["num_crops"] == 3
    rows = (test_dir / "predictions.csv").read_text().splitlines()
    assert rows[0] == "video,label,prediction,score" and len(rows) == 17

    # A machine that holds only the test videos evaluates; results go beside the checkpoint's run.
    videos = next(path for path in synthetic_cache.glob("synthetic/*") if (path / "test.txt").is_file())
    test_only = tmp_path / "test_only"
    test_only.mkdir()
    for name in ("train.txt", "test.txt"):
        (test_only / name).write_text((videos / name).read_text())
    for line in (videos / "test.txt").read_text().splitlines():
        video = line.split()[0]
        (test_only / video).parent.mkdir(parents=True, exist_ok=True)
        (test_only / video).symlink_to(videos / video)
    assert not (test_only / (videos / "train.txt").read_text().split()[0]).exists()
    result = run_entry(
        "test.py",
        f"ckpt={run_dir / 'best.pt'}",
        "dataset=video_list",
        f"dataset.root={test_only}",
        f"dataset.train_list={test_only / 'train.txt'}",
        f"dataset.test_list={test_only / 'test.txt'}",
        "dataset.num_classes=8",
    )
    (folder,) = (run_dir / "test").iterdir()
    assert folder.name.startswith("best-") and f"results in {folder}" in result.stdout
    assert json.loads((folder / "metrics.json").read_text())["num_videos"] == 16
    assert (folder / "predictions.csv").is_file() and (folder / "test.log").is_file()


def test_a_run_that_fails_before_training_leaves_no_folder(tmp_path):
    """Hydra's own outputs/<date>/<time> folder goes when the run stops at start; a named folder stays."""
    result = run_entry("train.py", "trainer.eval_every=0", cwd=tmp_path, check=False)
    assert result.returncode == 2 and "trainer.eval_every=0" in result.stderr
    assert not list(tmp_path.glob("outputs/*/*")), "the failed run's folder was left behind"
    named = tmp_path / "named"
    result = run_entry("train.py", "trainer.eval_every=0", f"hydra.run.dir={named}", cwd=tmp_path, check=False)
    assert result.returncode == 2 and (named / ".hydra").is_dir()


@pytest.mark.parametrize(
    "command, message",
    [
        (["train.py", "nosuch.key=1"], "error: nosuch.key=1: unknown key"),
        (["train.py", "module=foo"], "Available options in 'module'"),
        (["train.py", "trainer.eval_every=0"], "error: trainer.eval_every=0: must be an integer >= 1"),
        (["train.py", "experiment=none", "dataset=ucf101"], "error: dataset.root must be set"),
        (["test.py", "test.num_clip=2"], "error: test.num_clip=2: unknown key"),
        (["test.py"], "error: ckpt is not set"),
        (["test.py", "ckpt=nosuch.pt"], "error: ckpt=nosuch.pt: file not found"),
    ],
)
def test_command_line_and_config_errors_come_before_torch_loads(tmp_path, command, message):
    """A bad command line or config is reported before torch and torchvision load, which take seconds:
    `python -X importtime` lists every module the process imported."""
    script, *arguments = command
    result = subprocess.run(
        [sys.executable, "-X", "importtime", str(REPO / script), *arguments],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == (2 if message.startswith("error: ") else 1), result.stderr[-2000:]
    assert message in result.stderr, result.stderr[-2000:]
    imported = {line.rsplit("|", 1)[-1].strip() for line in result.stderr.splitlines() if line.startswith("import ")}
    assert "hydra" in imported  # the listing is there
    assert not {"torch", "torchvision"} & imported
    assert not list(tmp_path.glob("outputs/*/*")), "the failed run's folder was left behind"


def test_sweep_job_folders_carry_their_overrides(tmp_path, synthetic_cache):
    sweep = tmp_path / "sweep"
    result = run_entry(
        "train.py",
        "-m",
        *TINY,
        "trainer.epochs=1",
        f"data.cache_dir={synthetic_cache}",
        f"hydra.sweep.dir={sweep}",
        "seed=3",
        "trainer.num_workers=0",
    )
    assert result.returncode == 0
    (job,) = [path for path in sweep.iterdir() if path.is_dir() and not path.name.startswith(".")]
    assert job.name.startswith("0_") and "seed=3" in job.name and "trainer.epochs=1" in job.name
    assert "cache_dir" not in job.name  # paths are left out of job names
    assert (job / "metrics.json").is_file()


def test_user_errors_are_one_line(tmp_path):
    result = run_entry("train.py", "experiment=none", "dataset=ucf101", f"hydra.run.dir={tmp_path}", check=False)
    assert result.returncode == 2
    assert result.stderr.strip().splitlines()[-1].startswith("error: dataset.")
    assert "Traceback" not in result.stderr
    result = run_entry(
        "train.py",
        "experiment=none",
        "dataset=ucf101",
        "dataset.root=/no/such/folder",
        "dataset.annotations=/x",
        f"hydra.run.dir={tmp_path}",
        check=False,
    )
    assert result.returncode == 2 and "dataset.root=/no/such/folder" in result.stderr
    result = run_entry("train.py", "module=foo", check=False)
    assert result.returncode != 0 and "Available options in 'module'" in result.stderr
    result = run_entry("train.py", "module.recurence=2", check=False)
    assert result.returncode != 0 and "recurence" in result.stderr
    result = run_entry("train.py", "module.positions=[conv9_1]", f"hydra.run.dir={tmp_path}", check=False)
    assert result.returncode == 2 and "valid: conv2_1" in result.stderr
    result = run_entry("train.py", "data.crop_size=96", f"hydra.run.dir={tmp_path}", check=False)
    assert result.returncode == 2 and "data.crop_size=96 is larger than test.resize_short=64" in result.stderr


def _wait_for(condition, timeout: float) -> None:
    deadline = time.time() + timeout
    while not condition():
        if time.time() > deadline:
            raise AssertionError("timed out waiting")
        time.sleep(0.05)


def _start(run_dir: Path, cache: Path, *extra: str) -> subprocess.Popen:
    """train.py in its own process group (session), as a job under a scheduler."""
    overrides = (*TINY, f"data.cache_dir={cache}", f"hydra.run.dir={run_dir}", *extra)
    return start_training(*overrides, stderr=subprocess.PIPE, new_session=True)


def _step(path: Path) -> int:
    try:
        return torch.load(path, weights_only=False)["step"]
    except Exception:  # not written yet
        return -1


@pytest.mark.parametrize("stop", ["sigkill", "job_wide_sigterm"])
def test_resume_after_a_stop_matches_uninterrupted_run(tmp_path, synthetic_cache, stop):
    # 32 videos / batch 8 = 4 updates per epoch of 2 micro-batches; checkpoints after every update.
    # SIGKILL: resume from the last checkpoint. SIGTERM to the whole job (SLURM): the data workers
    # die with it, and the trainer saves the state of its last complete update.
    common = ("trainer.epochs=2", "trainer.checkpoint_every=1", "backbone.dropout=0.5", "trainer.num_workers=2")
    full_dir, _ = tiny_run(tmp_path, synthetic_cache, "full", *common)

    killed_dir = tmp_path / "killed"
    process = _start(killed_dir, synthetic_cache, *common)
    _wait_for(lambda: _step(killed_dir / "last.pt") >= 2, timeout=120)
    if stop == "sigkill":
        process.send_signal(signal.SIGKILL)
        process.wait()
    else:
        os.killpg(process.pid, signal.SIGTERM)
        _, stderr = process.communicate(timeout=60)
        assert process.returncode == 143, stderr[-2000:]
    interrupted = torch.load(killed_dir / "last.pt", weights_only=False)
    assert interrupted["step"] < 8 and interrupted["batches_in_epoch"] % 2 == 0

    tiny_run(tmp_path, synthetic_cache, "killed", *common, "resume=auto")
    expected = torch.load(full_dir / "last.pt", weights_only=False)
    resumed = torch.load(killed_dir / "last.pt", weights_only=False)
    assert resumed["step"] == expected["step"] == 8
    for key, value in expected["model"].items():
        assert torch.equal(resumed["model"][key], value), key


@pytest.mark.parametrize(
    "stop_signal, whole_job",
    [(signal.SIGTERM, False), (signal.SIGUSR2, False), (signal.SIGTERM, True), (signal.SIGUSR2, True)],
)
def test_stop_signal_saves_last_checkpoint(tmp_path, synthetic_cache, stop_signal, whole_job):
    # SIGTERM: kill, SLURM pre-emption; SIGUSR2: submitit's warning before the time limit. SLURM
    # signals every process of the job, DataLoader workers included (`whole_job`): they must
    # leave the stop to the main process.
    run_dir = tmp_path / "term"
    process = _start(
        run_dir, synthetic_cache, "trainer.epochs=50", "trainer.checkpoint_every=1", "trainer.num_workers=2"
    )
    _wait_for(lambda: _step(run_dir / "last.pt") >= 1, timeout=120)
    os.remove(run_dir / "last.pt")
    if whole_job:
        os.killpg(process.pid, stop_signal)
    else:
        process.send_signal(stop_signal)
    _, stderr = process.communicate(timeout=60)
    assert process.returncode == 143, stderr[-2000:]
    saved = torch.load(run_dir / "last.pt", weights_only=False)
    assert saved["step"] >= 1 and saved["epoch"] < 50
    assert (run_dir / "train.log").read_text().count("received signal") == 1  # the main process alone


def test_init_from_with_other_class_count_reinitialises_classifier(tmp_path, synthetic_cache):
    source_dir, _ = tiny_run(tmp_path, synthetic_cache, "source", "trainer.epochs=1")
    # The same videos relabelled into 2 classes (a video_list dataset), fine-tuned from the 8-class run.
    root = synthetic_cache / "synthetic" / set_folder_name(SyntheticSpec(num_train=32, num_test=16, frames=12))
    lists = {}
    for split in ("train", "test"):
        lines = [line.split() for line in (root / f"{split}.txt").read_text().splitlines()]
        lists[split] = tmp_path / f"{split}2.txt"
        lists[split].write_text("".join(f"{path} {int(label) // 4}\n" for path, label in lines))
    run_dir, _ = tiny_run(
        tmp_path,
        synthetic_cache,
        "finetune",
        "trainer.epochs=1",
        "experiment=quickstart",
        "dataset=video_list",
        f"dataset.root={root}",
        f"dataset.train_list={lists['train']}",
        f"dataset.test_list={lists['test']}",
        "dataset.num_classes=2",
        f"init_from={source_dir / 'last.pt'}",
    )
    log = (run_dir / "train.log").read_text()
    assert "skipped 2" in log and "fc.weight" in log and "fc.bias" in log
    source = torch.load(source_dir / "last.pt", weights_only=False)["model"]
    tuned = torch.load(run_dir / "last.pt", weights_only=False)["model"]
    assert tuned["fc.weight"].shape == (2, source["fc.weight"].shape[1])
    assert tuned["layer1.0.conv1.weight"].shape == source["layer1.0.conv1.weight"].shape


needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


@pytest.mark.parametrize("device", ["cpu", pytest.param("cuda", marks=needs_cuda)])
def test_channels_last_and_mixed_precision_run_resume_and_test(tmp_path, synthetic_cache, device):
    # A float32 run resumed with fp16: its checkpoint has no scaler state, so the scale starts afresh.
    common = ("trainer.channels_last=true", f"trainer.device={device}")
    run_dir, _ = tiny_run(tmp_path, synthetic_cache, "mixed", "trainer.epochs=1", *common)
    assert torch.load(run_dir / "last.pt", weights_only=False)["scaler"] == {}
    _, result = tiny_run(
        tmp_path, synthetic_cache, "mixed", "trainer.epochs=2", "trainer.amp=fp16", "resume=auto", *common
    )
    assert "done: 2 epochs" in result.stdout
    saved = torch.load(run_dir / "last.pt", weights_only=False)
    assert saved["epoch"] == 2 and saved["config"]["trainer"]["amp"] == "fp16"
    scaler = saved["scaler"]
    assert scaler["scale"] < 2.0**16 or scaler["_growth_tracker"] > 0  # it moved from its initial state: it stepped

    test_dir = tmp_path / "test_bf16"
    run_entry(
        "test.py",
        f"ckpt={run_dir / 'last.pt'}",
        f"hydra.run.dir={test_dir}",
        "trainer.amp=bf16",
        f"trainer.device={device}",
    )
    assert json.loads((test_dir / "metrics.json").read_text())["num_videos"] == 16
    assert "precision bf16, channels-last" in (test_dir / "test.log").read_text()
    result = run_entry(
        "test.py", f"ckpt={run_dir / 'last.pt'}", f"hydra.run.dir={test_dir}", "trainer.amp=fp8", check=False
    )
    assert result.returncode == 2 and "trainer.amp=fp8: must be one of off, bf16, fp16" in result.stderr


needs_two_gpus = pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs two CUDA GPUs")


@pytest.mark.parametrize(
    "device, extra",
    [("cpu", ()), pytest.param("cuda", ("trainer.amp=bf16", "trainer.channels_last=true"), marks=needs_two_gpus)],
)
def test_torchrun_two_processes(tmp_path, synthetic_cache, device, extra):
    # gloo on CPUs, NCCL on GPUs; 2 processes x batch 4 = the effective batch of 8 (no accumulation).
    # A two-job sweep: the jobs share one process group, one after the other.
    sweep = tmp_path / "sweep"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    args = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc_per_node=2",
        str(REPO / "train.py"),
        "-m",
        *TINY,
        f"data.cache_dir={synthetic_cache}",
        f"hydra.sweep.dir={sweep}",
        "trainer.epochs=1",
        "seed=0,1",
        "trainer.num_workers=0",
        f"trainer.device={device}",
        *extra,
    ]
    result = subprocess.run(args, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.count("done: 1 epoch in") == 2  # rank 0 alone reports, once per job
    for job in (0, 1):
        (folder,) = sweep.glob(f"{job}_*seed={job}*")  # job folders carry their overrides
        saved = torch.load(folder / "last.pt", weights_only=False)
        assert saved["step"] == 4 and saved["config"]["seed"] == job  # 32 videos / (2 processes x 4 clips)
        metrics = json.loads((folder / "metrics.json").read_text())
        assert metrics["num_videos"] == 16  # each test video counted once across the two processes
