"""The README's first command: `python train.py` learns the synthetic task on the CPU."""

from __future__ import annotations

import json

from conftest import run_entry


def test_quickstart_learns_beyond_three_times_chance(tmp_path):
    run_dir = tmp_path / "run"
    result = run_entry("train.py", f"hydra.run.dir={run_dir}", f"data.cache_dir={tmp_path / 'data'}", timeout=600)
    metrics = json.loads((run_dir / "metrics.json").read_text())
    chance = 100.0 / len(metrics["classes"])
    assert len(metrics["classes"]) == 8 and metrics["num_videos"] == 160
    assert metrics["top1"] >= 3 * chance, result.stdout[-2000:]
    assert result.stdout.strip().splitlines()[-1].startswith("done: 8 epochs")
