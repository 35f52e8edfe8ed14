"""Command-line handling without subprocesses: exit codes, the data loader's failures, the quick-start's
group options, test.py's output folder."""

from __future__ import annotations

import os
import signal
import subprocess
import sys

import pytest
import torch
from torch.utils.data import Dataset

from rcca.config import check_quickstart_choices, compose_config, validate_config
from rcca.data.build import build_loader
from rcca.engine.cli import TRACEBACK_VARIABLE, evaluation_dir_override, exit_codes
from rcca.errors import DataLoadingFailed, TrainingStopped, UserError


def test_user_errors_exit_2_with_one_line_and_other_errors_keep_their_traceback(capsys, monkeypatch):
    monkeypatch.delenv(TRACEBACK_VARIABLE, raising=False)
    with pytest.raises(SystemExit) as stop, exit_codes():
        raise UserError("dataset.root=/x: folder not found\nsecond line")
    assert stop.value.code == 2
    err = capsys.readouterr().err
    assert err == "error: dataset.root=/x: folder not found\n"
    # A ValueError or FileNotFoundError is a bug, not the user's: it keeps its type and traceback.
    for error in (ValueError("bad"), FileNotFoundError("gone"), RuntimeError("boom")):
        with pytest.raises(type(error)), exit_codes():
            raise error


def test_traceback_variable_shows_user_error_tracebacks(capsys, monkeypatch):
    monkeypatch.setenv(TRACEBACK_VARIABLE, "1")
    with pytest.raises(SystemExit) as stop, exit_codes():
        raise UserError("bad value")
    err = capsys.readouterr().err
    assert stop.value.code == 2 and "Traceback (most recent call last)" in err and err.endswith("error: bad value\n")


@pytest.mark.parametrize("code", [130, 143])
def test_stops_exit_with_their_signal_code(code):
    with pytest.raises(SystemExit) as stop, exit_codes():
        raise TrainingStopped("saved last.pt", code)
    assert stop.value.code == code
    with pytest.raises(SystemExit) as stop, exit_codes():
        raise KeyboardInterrupt
    assert stop.value.code == 130


class _Videos(Dataset):
    """Item 1 kills its worker (a decoder crash) or raises RuntimeError (a bug in a worker), as asked."""

    def __init__(self, crash: bool) -> None:
        self.crash = crash

    def __len__(self) -> int:
        return 4

    def __getitem__(self, key: tuple[int, int]) -> dict:
        _, index = key  # EpochSampler yields (epoch, index)
        if index == 1:
            if self.crash:
                os.kill(os.getpid(), signal.SIGKILL)
            raise RuntimeError("a bug inside the dataset")
        return {"clip": torch.zeros(1)}


def test_loader_reports_a_dead_worker_as_data_loading_failed_and_keeps_worker_errors():
    loader = build_loader(_Videos(crash=True), batch_size=1, train=False, num_workers=1, seed=0)
    loader.sampler.set_epoch(0)
    with pytest.raises(DataLoadingFailed, match="inspect_dataset.py --decode"):
        list(loader)
    loader = build_loader(_Videos(crash=False), batch_size=1, train=False, num_workers=1, seed=0)
    loader.sampler.set_epoch(0)
    with pytest.raises(RuntimeError, match="a bug inside the dataset") as error:
        list(loader)
    assert not isinstance(error.value, UserError)


def test_choosing_a_group_replaces_the_quick_starts_option_whole():
    quick = compose_config([])
    assert (quick.backbone.depth, quick.module.positions, quick.data.crop_size) == (18, ["conv3_1"], 64)
    nonlocal_cfg = compose_config(["module=nl"])
    assert nonlocal_cfg.module.name == "nl" and list(nonlocal_cfg.module.positions) == ["conv4_5"]
    with pytest.raises(UserError, match="conv4_5 is not a block of tsm18; valid: conv2_1"):
        validate_config(nonlocal_cfg)  # the quick-start's ResNet-18 has 2 blocks in conv4: said, not hidden
    paper_optimizer = compose_config(["optimizer=tsm"]).optimizer
    assert (paper_optimizer.lr, paper_optimizer.weight_decay, paper_optimizer.clip_grad_norm) == (0.02, 5e-4, 20.0)
    # With a preset named, the paper's model, positions and input size.
    for preset in ("experiment=none", "experiment=paper_tsm"):
        paper = compose_config([preset, "backbone=tsm_r50", "dataset=ucf101"])
        model = (paper.backbone.depth, paper.backbone.width, list(paper.module.positions), paper.data.crop_size)
        assert model == (50, 64, ["conv3_3"], 224) and paper.test.resize_short == 256
    assert list(compose_config(["experiment=paper_tsm", "module=nl"]).module.positions) == ["conv4_5"]


def test_another_backbone_or_a_real_dataset_under_the_default_quick_start_is_refused():
    refused = {
        "dataset=ucf101": "dataset=ucf101",
        "dataset.name=hmdb51": "dataset.name=hmdb51",
        "backbone=tsm_r50": "backbone=tsm_r50",
        "backbone=mfnet": "backbone=mfnet",
        "backbone.depth=50": "backbone.depth=50",
    }
    for override, named in refused.items():
        with pytest.raises(UserError, match=f"^{named}: the default experiment is the CPU quick-start"):
            check_quickstart_choices([override, "dataset.root=/x"])
    with pytest.raises(UserError, match="keep the quick-start with dataset=hmdb51"):
        check_quickstart_choices(["-m", "dataset=synthetic,hmdb51"])
    fine = [
        ["dataset=synthetic"],
        ["backbone=tsm_r18", "module=none"],
        ["experiment=paper_tsm", "dataset=ucf101"],
        ["experiment=quickstart", "dataset=video_list", "backbone=tsm_r50"],
        ["trainer.epochs=2"],
    ]
    for overrides in fine:
        check_quickstart_choices(overrides)


def test_test_results_go_to_a_new_folder_beside_the_checkpoint(tmp_path):
    checkpoint = tmp_path / "run" / "best.pt"
    checkpoint.parent.mkdir()
    checkpoint.write_bytes(b"")
    (line,) = evaluation_dir_override([f"ckpt={checkpoint}", "test.num_clips=10"])
    folder = line.split("=", 1)[1].strip("'")
    assert folder.startswith(f"{tmp_path / 'run' / 'test' / 'best-'}") and folder.endswith(f"-{os.getpid()}")
    assert not os.path.exists(folder)  # Hydra makes it when the evaluation starts: a refused command leaves nothing
    assert evaluation_dir_override([f"ckpt={checkpoint}", f"hydra.run.dir={tmp_path / 'mine'}"]) == []
    assert evaluation_dir_override(["-m", f"ckpt={checkpoint}", "test.num_clips=1,10"]) == []
    assert evaluation_dir_override([f"ckpt={tmp_path / 'missing.pt'}"]) == []


def _hydra_folder(folder):
    (folder / ".hydra").mkdir(parents=True)
    (folder / ".hydra" / "config.yaml").write_text("seed: 0\n")
    (folder / "train.log").write_text("")
    return folder


def test_a_failed_run_never_removes_a_folder_another_run_holds(tmp_path):
    """Two runs in one outputs/<date>/<time> folder: the refused one must leave the other's records alone."""
    from rcca.engine.files import LOCK_NAME, RunFolderLock, discard_unused_run_folder

    shared = _hydra_folder(tmp_path / "shared")
    hold = (
        "import sys, time; from pathlib import Path; from rcca.engine.files import RunFolderLock; "
        "lock = RunFolderLock(Path(sys.argv[1]), fresh=True, overwrite=False); lock.acquire(); "
        "print('held', flush=True); "
        "time.sleep(60)"
    )
    holder = subprocess.Popen([sys.executable, "-c", hold, str(shared)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(UserError):  # the other run really holds the folder
            RunFolderLock(shared, fresh=False, overwrite=False).acquire()
        assert not discard_unused_run_folder(shared)
        assert (shared / ".hydra" / "config.yaml").is_file() and (shared / LOCK_NAME).is_file()
    finally:
        holder.kill()
        holder.wait()
    assert not discard_unused_run_folder(shared)  # its holder is gone, but the folder was another run's
    own = _hydra_folder(tmp_path / "own")
    lock = RunFolderLock(own, fresh=True, overwrite=False)
    lock.acquire()
    lock.release()  # as train() does before the error reaches the entry point
    assert discard_unused_run_folder(own) and not own.exists()
    assert discard_unused_run_folder(_hydra_folder(tmp_path / "unlocked"))  # failed before claiming its folder
    kept = _hydra_folder(tmp_path / "kept")
    (kept / "last.pt").write_bytes(b"")
    assert not discard_unused_run_folder(kept) and (kept / "last.pt").is_file()
