"""Runs that cannot lose or corrupt each other's results: run-folder locks, divergence, resume records,
interrupted validation, full disks, bad checkpoint files and test.py's model overrides."""

from __future__ import annotations

import json
import multiprocessing
import os
import re
import shlex
import shutil
import signal
import subprocess
import time
from pathlib import Path

import pytest
import torch
from conftest import REPO, TINY, run_entry, save_malicious_checkpoint, start_training

from rcca.engine.checkpoints import save_checkpoint
from rcca.engine.files import RunFolderLock
from rcca.engine.resuming import resume_checkpoint
from rcca.errors import UserError


def tiny(cache: Path, run_dir: Path, *extra: str, check: bool = True) -> subprocess.CompletedProcess:
    return run_entry("train.py", *TINY, f"data.cache_dir={cache}", f"hydra.run.dir={run_dir}", *extra, check=check)


def load(path: Path) -> dict:
    return torch.load(path, weights_only=True)


@pytest.fixture(scope="module")
def trained(tmp_path_factory, synthetic_cache) -> Path:
    """The folder of a finished one-epoch tiny run, shared by the tests of this module (copy it to change it)."""
    run_dir = tmp_path_factory.mktemp("trained") / "run"
    tiny(synthetic_cache, run_dir, "trainer.epochs=1")
    return run_dir


def copy_run(trained: Path, destination: Path) -> Path:
    """A copy of a run's checkpoints and records, as if that run had been made in `destination`."""
    shutil.copytree(trained, destination, ignore=shutil.ignore_patterns(".rcca.lock"))
    return destination


def one_line_error(result: subprocess.CompletedProcess) -> str:
    assert result.returncode == 2, result.stderr[-3000:]
    assert "Traceback" not in result.stderr
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("error: ")
    return last


# ---------------------------------------------------------------- one run per folder


def test_fresh_run_refuses_a_folder_that_holds_checkpoints(tmp_path, synthetic_cache, trained):
    run_dir = copy_run(trained, tmp_path / "run")
    records = {path: path.read_bytes() for path in run_dir.rglob("*") if path.is_file() and path.name != ".rcca.lock"}
    message = one_line_error(tiny(synthetic_cache, run_dir, "trainer.epochs=1", "seed=1", check=False))
    assert "already holds last.pt and best.pt" in message and "overwrite=true" in message and "resume=auto" in message
    # resume=auto without a last.pt is a new run too: it may not train over the other run's best.pt.
    (run_dir / "last.pt").rename(tmp_path / "last.pt")
    message = one_line_error(tiny(synthetic_cache, run_dir, "trainer.epochs=1", "resume=auto", check=False))
    assert "already holds best.pt" in message
    (tmp_path / "last.pt").rename(run_dir / "last.pt")
    # The refused runs left the folder as it was: checkpoints, Hydra's records and the log.
    assert {path: path.read_bytes() for path in records} == records
    assert {p for p in run_dir.rglob("*") if p.is_file() and p.name != ".rcca.lock"} == set(records)
    tiny(synthetic_cache, run_dir, "trainer.epochs=1", "seed=1", "overwrite=true")
    assert load(run_dir / "last.pt")["config"]["seed"] == 1
    assert json.loads((run_dir / "metrics.json").read_text())["config_history"] == []


def _hold_lock(folder: str, ready, release) -> None:
    lock = RunFolderLock(Path(folder), fresh=True, overwrite=False)
    lock.acquire()
    ready.set()
    release.wait(60)


def _hold_lock_with_a_forked_child(folder: str, child_pid, ready) -> None:
    """Lock the folder, then fork a child that outlives this process (as DataLoader workers do after a SIGKILL)."""
    lock = RunFolderLock(Path(folder), fresh=True, overwrite=False)
    lock.acquire()
    child = os.fork()
    if child == 0:
        time.sleep(60)
        os._exit(0)
    child_pid.value = child
    ready.set()
    time.sleep(60)


def test_a_killed_runs_forked_children_do_not_keep_its_folder_locked(tmp_path):
    context = multiprocessing.get_context("spawn")
    ready, child_pid = context.Event(), context.Value("i", 0)
    holder = context.Process(target=_hold_lock_with_a_forked_child, args=(str(tmp_path / "run"), child_pid, ready))
    holder.start()
    try:
        assert ready.wait(60)
        os.kill(holder.pid, signal.SIGKILL)
        holder.join()
        os.kill(child_pid.value, 0)  # the child still lives
        with RunFolderLock(tmp_path / "run", fresh=True, overwrite=False):
            pass
    finally:
        os.kill(child_pid.value, signal.SIGKILL)


def test_a_folder_in_use_is_refused_and_a_dead_holder_is_not_in_the_way(tmp_path, synthetic_cache):
    context = multiprocessing.get_context("spawn")
    ready, release = context.Event(), context.Event()
    holder = context.Process(target=_hold_lock, args=(str(tmp_path / "run"), ready, release))
    holder.start()
    try:
        assert ready.wait(60)
        with pytest.raises(UserError, match=f"in use by process {holder.pid} on"):
            RunFolderLock(tmp_path / "run", fresh=True, overwrite=False).acquire()
        # A second training run in the same folder stops at once, before any data or model work.
        message = one_line_error(tiny(synthetic_cache, tmp_path / "run", "resume=auto", check=False))
        assert "is in use by process" in message and "hydra.run.dir" in message
        assert [p.name for p in (tmp_path / "run").iterdir()] == [".rcca.lock"]  # no records of the refused run
    finally:
        os.kill(holder.pid, signal.SIGKILL)  # dies holding the lock, as a killed run does
        holder.join()
    assert (tmp_path / "run" / ".rcca.lock").exists()
    with RunFolderLock(tmp_path / "run", fresh=True, overwrite=False):
        pass


# ---------------------------------------------------------------- divergence


def test_divergence_names_a_checkpoint_that_trains_on_with_a_lower_lr(tmp_path, synthetic_cache):
    run_dir = tmp_path / "run"
    result = tiny(
        synthetic_cache, run_dir, "trainer.epochs=2", "optimizer.lr=1e6", "trainer.checkpoint_every=0", check=False
    )
    message = one_line_error(result)
    assert "loss is nan" in message or "loss is inf" in message
    saved = load(run_dir / "last.pt")
    assert all(torch.isfinite(v).all() for v in saved["model"].values() if v.is_floating_point())
    # The message's own command, with a lower LR, trains on to the end with finite losses.
    command = shlex.split(message.split("with a lower LR: ", 1)[1])
    assert (
        command[0] == "python"
        and Path(command[1]).name == "train.py"
        and f"hydra.run.dir={run_dir}" in command
        and "resume=auto" in command
    )
    assert "optimizer.lr=1e6" not in command
    overrides = [arg.replace("<lower>", "0.01") for arg in command[2:]]
    resumed = run_entry("train.py", *overrides)
    assert "done: 2 epochs" in resumed.stdout
    final = load(run_dir / "last.pt")
    assert final["step"] == 8 and final["config"]["optimizer"]["lr"] == 0.01
    assert final["config_history"][0]["changes"]["optimizer.lr"] == [1e6, 0.01]


# ---------------------------------------------------------------- resume records


def test_resume_applies_run_settings_refuses_model_changes_and_records_both(tmp_path, synthetic_cache, trained):
    run_dir = copy_run(trained, tmp_path / "run")
    first = (run_dir / "last.pt").read_bytes()

    message = one_line_error(
        tiny(
            synthetic_cache,
            run_dir,
            "trainer.epochs=2",
            "resume=auto",
            "module.recurrence=2",
            "trainer.batch_size=8",
            check=False,
        )
    )
    assert "module.recurrence=2 (checkpoint: 3)" in message and "trainer.batch_size=8 (checkpoint: 4)" in message
    assert (run_dir / "last.pt").read_bytes() == first

    other = copy_run(trained, tmp_path / "other_classes")
    state = load(other / "last.pt")
    state["classes"] = state["classes"][::-1]  # a checkpoint of another dataset with the same class count
    torch.save(state, other / "last.pt")
    message = one_line_error(tiny(synthetic_cache, other, "resume=auto", check=False))
    assert "resume: the dataset's classes differ from the checkpoint's" in message

    result = tiny(synthetic_cache, run_dir, "trainer.epochs=2", "resume=auto", "optimizer.lr=0.5")
    assert "optimizer.lr changed from 0.01 to 0.5" in result.stdout + result.stderr
    saved = load(run_dir / "last.pt")
    assert saved["step"] == 8 and saved["config"]["optimizer"]["lr"] == 0.5
    # The schedule (warm-up over epoch 1, then flat until epoch 6) now runs from the new LR.
    assert saved["scheduler"]["base_lrs"] == [0.5] * len(saved["scheduler"]["base_lrs"])
    assert all(group["lr"] == 0.5 for group in saved["optimizer"]["param_groups"])
    history = [{"step": 4, "epoch": 1, "changes": {"optimizer.lr": [0.01, 0.5], "trainer.epochs": [1, 2]}}]
    assert saved["config_history"] == history
    assert json.loads((run_dir / "metrics.json").read_text())["config_history"] == history


def test_resume_auto_without_checkpoint_warns_where_it_cannot_be_missed(tmp_path, synthetic_cache):
    result = tiny(synthetic_cache, tmp_path / "new", "trainer.epochs=1", "resume=auto")
    output = result.stdout + result.stderr
    assert "resume=auto: NO CHECKPOINT in" in output and "hydra.run.dir=<that folder>" in output
    assert "resume=auto found no checkpoint, so this was a new run" in result.stdout


def _poll(path: Path, condition, timeout: float) -> dict:
    deadline = time.time() + timeout
    while time.time() < deadline:
        try:
            state = load(path)
            if condition(state):
                return state
        except Exception:  # not there yet, or being replaced
            pass
        time.sleep(0.02)
    raise AssertionError(f"timed out waiting for {path}")


def test_kill_during_validation_gives_the_uninterrupted_best_and_metrics(tmp_path, synthetic_cache):
    # Slow validation (12 views per video) and a tiny LR (the same top-1 after both epochs, so the
    # uninterrupted best.pt is epoch 1's): a resumed run that skipped epoch 1's validation would differ.
    common = ("trainer.epochs=2", "optimizer.lr=1e-7", "test.num_clips=4", "test.num_crops=3")
    full = tmp_path / "full"
    tiny(synthetic_cache, full, *common)

    killed = tmp_path / "killed"
    process = start_training(
        *TINY, f"data.cache_dir={synthetic_cache}", f"hydra.run.dir={killed}", "trainer.num_workers=0", *common
    )
    try:
        _poll(killed / "last.pt", lambda state: state["epoch"] == 1 and not state["validated"], timeout=120)
    finally:
        process.kill()
        process.wait()
    assert not (killed / "best.pt").exists(), "killed too late: epoch 1's validation had finished"

    tiny(synthetic_cache, killed, *common, "resume=auto")
    expected, resumed = load(full / "best.pt"), load(killed / "best.pt")
    assert resumed["epoch"] == expected["epoch"] and resumed["best_top1"] == expected["best_top1"]
    for key, value in expected["model"].items():
        assert torch.equal(resumed["model"][key], value), key
    assert json.loads((killed / "metrics.json").read_text()) == json.loads((full / "metrics.json").read_text())
    assert load(killed / "last.pt")["best_top1"] == load(full / "last.pt")["best_top1"]


# ---------------------------------------------------------------- full disks


@pytest.fixture
def small_disk(tmp_path):
    """A 1 MiB tmpfs (needs root and permission to mount; skipped elsewhere)."""
    mount = tmp_path / "disk"
    mount.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(mount)], capture_output=True).returncode:
        pytest.skip("cannot mount a tmpfs here")
    yield mount
    subprocess.run(["umount", str(mount)], check=True)


def big_state() -> dict:
    return {"model": {"w": torch.zeros(512, 1024)}}  # 2 MiB


def test_full_disk_is_one_line_and_keeps_the_previous_checkpoint(small_disk):
    path = small_disk / "last.pt"
    save_checkpoint({"model": {"w": torch.ones(10)}}, path)
    before = path.read_bytes()
    with pytest.raises(UserError) as info:
        save_checkpoint(big_state(), path)
    message = str(info.value)
    assert f"no space to write last.pt in {small_disk}" in message and "bytes" in message and "\n" not in message
    assert path.read_bytes() == before
    assert sorted(p.name for p in small_disk.iterdir()) == ["last.pt"]


def test_disk_filling_up_during_the_write_removes_the_partial_file(small_disk, monkeypatch):
    # Free space looks sufficient when checked (another process fills the disk meanwhile): the write itself fails.
    import shutil

    real = shutil.disk_usage
    monkeypatch.setattr(shutil, "disk_usage", lambda p: real(p)._replace(free=1 << 40))
    path = small_disk / "best.pt"
    with pytest.raises(UserError, match="no space to write best.pt"):
        save_checkpoint(big_state(), path)
    assert list(small_disk.iterdir()) == []


def test_full_disk_during_training_is_one_line(tmp_path, synthetic_cache, small_disk):
    message = one_line_error(tiny(synthetic_cache, small_disk / "run", "trainer.epochs=1", check=False))
    assert "no space to write last.pt in" in message
    assert not [p for p in (small_disk / "run").iterdir() if p.name.endswith(".tmp")]


# ---------------------------------------------------------------- bad checkpoint files


def test_bad_checkpoint_files_are_one_line_errors(tmp_path, synthetic_cache, trained):
    # Every kind of bad file is checked on `read_checkpoint` in test_convert.py; here the entry points' paths.
    text = tmp_path / "notes.txt"
    text.write_text("not a checkpoint\n")
    truncated = tmp_path / "truncated.pt"
    truncated.write_bytes((trained / "last.pt").read_bytes()[:100_000])
    weights_only = tmp_path / "weights.pt"
    torch.save(load(trained / "last.pt")["model"], weights_only)
    with pytest.raises(UserError, match=f"resume={truncated} is not a complete PyTorch checkpoint"):
        resume_checkpoint(str(truncated), tmp_path)
    with pytest.raises(UserError, match="was not written by rcca's trainer"):
        resume_checkpoint(str(weights_only), tmp_path)
    cases = [
        ("train.py", [*TINY, f"data.cache_dir={synthetic_cache}", f"init_from={text}"], f"init_from={text} is not a"),
        ("test.py", [f"ckpt={weights_only}"], "was not written by rcca's trainer"),
    ]
    for script, overrides, expected in cases:
        result = run_entry(script, *overrides, f"hydra.run.dir={tmp_path / 'out'}", check=False)
        assert expected in one_line_error(result), (script, overrides)


def test_no_entry_point_runs_code_from_a_checkpoint(tmp_path, synthetic_cache, trained):
    """A file whose unpickling would write a marker: train.py (init_from, resume=<file>,
    resume=auto) and test.py refuse it, and the marker never appears."""
    marker = tmp_path / "marker.txt"
    evil = tmp_path / "evil.pt"
    save_malicious_checkpoint(evil, marker, **load(trained / "last.pt"))
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    shutil.copy(evil, run_dir / "last.pt")
    # rcca files and released files took different paths before (the latter fell back to a full read).
    train_cases = [[f"init_from={evil}", f"init_from_format={kind}"] for kind in ("rcca", "tsm")]
    train_cases += [[f"resume={evil}"], ["resume=auto"]]
    for overrides in train_cases:
        result = tiny(
            synthetic_cache, run_dir if overrides == ["resume=auto"] else tmp_path / "out", *overrides, check=False
        )
        assert "refused, reading it would need" in one_line_error(result), overrides
    result = run_entry("test.py", f"ckpt={evil}", f"hydra.run.dir={tmp_path / 'test'}", check=False)
    assert "refused, reading it would need" in one_line_error(result)
    assert not marker.exists()


def torch_load_calls(path: Path) -> list[bool]:
    """For each `torch.load(...)` call in a Python file: whether it passes weights_only=True."""
    import ast

    calls = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Call) and ast.unparse(node.func) == "torch.load":
            calls.append(any(k.arg == "weights_only" and ast.unparse(k.value) == "True" for k in node.keywords))
    return calls


def test_project_code_reads_checkpoints_weights_only():
    """torch.load only in the one reader (rcca/engine/checkpoints.py), weights-only."""
    files = [*(REPO / "rcca").rglob("*.py"), *(REPO / "scripts").rglob("*.py"), REPO / "train.py", REPO / "test.py"]
    calls = {path.relative_to(REPO).as_posix(): torch_load_calls(path) for path in files}
    assert {path: found for path, found in calls.items() if found} == {
        "rcca/engine/checkpoints.py": [True],
    }


def test_test_py_refuses_overrides_that_build_another_model(tmp_path, synthetic_cache, trained):
    from omegaconf import OmegaConf

    from rcca.config import compose_config
    from rcca.engine.inference import checkpoint_config

    saved = load(trained / "last.pt")["config"]
    for overrides, expected in [
        (["backbone=mfnet"], "backbone.name=mfnet (checkpoint: tsm)"),
        (["module.recurrence=2"], "module.recurrence=2 (checkpoint: 3)"),
        (["module=nl"], "module.name=nl (checkpoint: rcca)"),
    ]:
        with pytest.raises(UserError, match=re.escape(expected)) as info:
            checkpoint_config(compose_config(overrides), saved, overrides)
        assert str(info.value).startswith(f"{overrides[0]}: the checkpoint's own model is used")
    # Repeating the checkpoint's own value is fine, and other sections still apply.
    merged = checkpoint_config(
        compose_config(["module.recurrence=3", "test.num_clips=2"]), saved, ["module.recurrence=3", "test.num_clips=2"]
    )
    assert merged.module == OmegaConf.create(saved["module"]) and merged.test.num_clips == 2
    result = run_entry(
        "test.py", f"ckpt={trained / 'last.pt'}", "backbone=mfnet", f"hydra.run.dir={tmp_path / 't'}", check=False
    )
    assert "backbone=mfnet: the checkpoint's own model is used" in one_line_error(result)
