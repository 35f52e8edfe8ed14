"""scripts/benchmark.py: the training subcommand, on the CPU at a toy size."""

from __future__ import annotations

import json

import pytest
from conftest import run_entry


def test_training_reports_clips_per_second_and_epoch_hours() -> None:
    # One thread: on a shared 2-core machine a 2-thread step of the tiny model takes seconds, not ~0.5 s.
    result = run_entry(
        "scripts/benchmark.py",
        *("training", "--rows", "tsm_rcca", "--batch", "1", "--size", "32", "--steps", "1", "--warmup", "0"),
        *("--device", "cpu", "--threads", "1"),
        timeout=120,
    )
    summary = json.loads(result.stdout.strip().splitlines()[-1])
    assert summary["device"] == "cpu, 1 thread(s)"
    assert summary["torch"]
    assert (summary["amp"], summary["batch"], summary["size"], summary["steps"], summary["warmup"]) == (
        "off",
        1,
        32,
        1,
        0,
    )
    (row,) = summary["results"]
    assert (row["row"], row["backbone"], row["frames"]) == ("tsm_rcca", "tsm", 8)
    assert 24 < row["params_m"] < 26  # TSM ResNet-50 (24.3M with 400 classes) + one RCCA-3D at conv3_3
    assert row["clips_per_s"] > 0
    assert row["ms_per_step"] > 0
    assert row["peak_gib"] is None  # GPU only
    assert row["vs_plain"] is None  # the plain tsm row was not measured
    assert set(summary["train_videos"]) == {"UCF101 split 1", "HMDB51 split 1", "Mini-Kinetics-200", "Kinetics-400"}
    hours = summary["epoch_hours"]["rows"]["tsm_rcca"]
    assert hours["Kinetics-400"] == pytest.approx(summary["train_videos"]["Kinetics-400"] / row["clips_per_s"] / 3600)
    assert "lower bound" in result.stdout
