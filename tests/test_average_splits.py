"""scripts/average_splits.py on a hand-made multirun folder."""

from __future__ import annotations

import json

from omegaconf import OmegaConf

from conftest import run_entry
from rcca.config import Config


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
