"""scripts/average_splits.py on a hand-made multirun folder, and after a real per-split sweep."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from conftest import run_entry
from omegaconf import OmegaConf

from rcca.config import Config
from rcca.data.synthetic import SyntheticSpec, render_video, write_video

FIXTURES = Path(__file__).parent / "fixtures"


def test_average_splits_table(tmp_path):
    for job, (split, top1) in enumerate([(1, 80.0), (2, 70.0), (3, 90.0)]):
        cfg = OmegaConf.structured(Config)
        cfg.dataset.name, cfg.dataset.split = "ucf101", split
        cfg.module.name, cfg.module.positions = "rcca", ["conv3_3"]
        (tmp_path / str(job) / ".hydra").mkdir(parents=True)
        OmegaConf.save(cfg, tmp_path / str(job) / ".hydra" / "config.yaml")
        (tmp_path / str(job) / "metrics.json").write_text(json.dumps({"top1": top1}))
    (tmp_path / "3").mkdir()  # an unfinished job: no metrics.json, ignored
    result = run_entry("scripts/average_splits.py", str(tmp_path))
    summary = json.loads(result.stdout.strip().splitlines()[-1])
    assert summary == [
        {"model": "tsm + rcca@conv3_3", "dataset": "ucf101", "splits": {"1": 80.0, "2": 70.0, "3": 90.0}, "mean": 80.0}
    ]
    assert "80.00%" in result.stdout.splitlines()[1]


def test_ucf101_split_sweep_then_average(tmp_path):
    # The per-split workflow on the official UCF101 layout and split files: a few real file names
    # (2 classes, groups 1, 8, 15 and 22, one in each split's test set) written as tiny videos.
    root = tmp_path / "UCF-101"
    spec = SyntheticSpec(frames=12, size=64)
    rng = np.random.default_rng(0)
    for label, name in enumerate(["ApplyEyeMakeup", "ApplyLipstick"]):
        for group in (1, 8, 15, 22):
            write_video(root / name / f"v_{name}_g{group:02d}_c01.avi", render_video(label, spec, rng))
    sweep = tmp_path / "sweep"
    run_entry(
        "train.py",
        "-m",
        "experiment=quickstart",  # the tiny quick-start model, on purpose
        "dataset=ucf101",
        f"dataset.root={root}",
        f"dataset.annotations={FIXTURES / 'ucf101'}",
        "dataset.allow_missing=true",
        "dataset.split=1,2,3",
        f"hydra.sweep.dir={sweep}",
        "trainer.epochs=1",
        "trainer.batch_size=2",
        "trainer.effective_batch_size=2",
        "test.batch_size=2",
        "trainer.num_workers=0",
        timeout=600,
    )
    top1 = {}
    for job in range(3):
        (folder,) = sweep.glob(f"{job}_*dataset.split={job + 1}*")  # job folders carry their overrides
        metrics = json.loads((folder / "metrics.json").read_text())
        config = OmegaConf.load(folder / ".hydra" / "config.yaml")
        assert metrics["num_videos"] == 2 and len(metrics["classes"]) == 101  # the present test videos, all classes
        top1[str(config.dataset.split)] = metrics["top1"]
    assert sorted(top1) == ["1", "2", "3"]
    result = run_entry("scripts/average_splits.py", str(sweep))
    summary = json.loads(result.stdout.strip().splitlines()[-1])
    assert summary == [
        {
            "model": "tsm + rcca@conv3_1",
            "dataset": "ucf101",
            "splits": top1,
            "mean": pytest.approx(sum(top1.values()) / 3),
        }
    ]
