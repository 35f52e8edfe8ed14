"""metrics.json and predictions.csv: the keys runs report, accuracies against hand-computed values, file formats."""

from __future__ import annotations

import csv
import json
import math

import pytest
import torch

from rcca.engine import metrics

CLASSES = ["run", "jump", "swim"]
# 4 videos: true labels 0, 1, 1, 2; predictions (argmax) 0, 2, 1, 2.
SCORES = torch.tensor([[0.7, 0.2, 0.1], [0.1, 0.3, 0.6], [0.2, 0.5, 0.3], [0.3, 0.3, 0.4]])
LABELS = torch.tensor([0, 1, 1, 2])
VIDEO_KEYS = ["top1", "top5", "mean_class_accuracy", "num_videos", "per_class_accuracy", "confusion_matrix"]


def test_video_metrics_match_a_hand_count():
    result = metrics.video_metrics(SCORES, LABELS, CLASSES)
    assert list(result) == VIDEO_KEYS
    assert result["top1"] == pytest.approx(75.0) and result["top5"] == pytest.approx(100.0)  # 3 classes: top-5 is all
    assert result["per_class_accuracy"] == {"run": 100.0, "jump": 50.0, "swim": 100.0}
    assert result["mean_class_accuracy"] == pytest.approx(250 / 3)
    assert result["confusion_matrix"] == [[1, 0, 0], [0, 1, 1], [0, 0, 1]]
    assert result["num_videos"] == 4
    absent = metrics.video_metrics(SCORES[:1], LABELS[:1], CLASSES)["per_class_accuracy"]
    assert absent == {"run": 100.0, "jump": None, "swim": None}  # classes without test videos


def test_topk_correct_counts_labels_among_the_k_best():
    assert metrics.topk_correct(SCORES, LABELS, 1).tolist() == [True, False, True, True]
    assert metrics.topk_correct(SCORES, LABELS, 2).tolist() == [True, True, True, True]


def test_a_training_run_reports_its_validation_and_how_it_was_run():
    validation = metrics.validation_metrics(
        SCORES, LABELS, CLASSES, failed_videos={"bad.mp4": "bad.mp4: broken"}, train_failed_videos={}
    )
    result = metrics.training_metrics(
        validation,
        best_top1=80.0,
        classes=CLASSES,
        excluded_videos=["crash.mp4"],
        missing_videos=[],
        config_history=[{"step": 4, "epoch": 1, "changes": {"optimizer.lr": [0.01, 0.5]}}],
    )
    assert list(result) == [
        *VIDEO_KEYS,
        "failed_videos",
        "train_failed_videos",
        "best_top1",
        "classes",
        "excluded_videos",
        "missing_videos",
        "config_history",
    ]
    assert result["failed_videos"] == {"bad.mp4": "bad.mp4: broken"} and result["best_top1"] == 80.0
    assert result["top1"] == pytest.approx(75.0) and result["excluded_videos"] == ["crash.mp4"]


def test_a_test_run_reports_its_checkpoint_and_views():
    result = metrics.test_metrics(
        SCORES,
        LABELS,
        CLASSES,
        checkpoint="run/best.pt",
        failed_videos={},
        excluded_videos=[],
        missing_videos=["gone.mp4"],
        num_clips=10,
        num_crops=3,
    )
    assert list(result) == [
        *VIDEO_KEYS,
        "checkpoint",
        "failed_videos",
        "excluded_videos",
        "missing_videos",
        "num_clips",
        "num_crops",
    ]
    assert (result["checkpoint"], result["num_clips"], result["num_crops"]) == ("run/best.pt", 10, 3)
    assert result["missing_videos"] == ["gone.mp4"] and result["top1"] == pytest.approx(75.0)


def test_metrics_json_writes_non_finite_numbers_as_null(tmp_path):
    path = tmp_path / "metrics.json"
    metrics.write_metrics(path, {"top1": math.nan, "per_class": {"a": math.inf, "b": 50.0}, "list": [1.0, -math.inf]})
    assert json.loads(path.read_text()) == {"top1": None, "per_class": {"a": None, "b": 50.0}, "list": [1.0, None]}


def test_predictions_csv_lists_each_videos_label_prediction_and_score(tmp_path):
    path = tmp_path / "predictions.csv"
    metrics.write_predictions(path, ["a.mp4", "b.mp4", "c.mp4", "d.mp4"], LABELS, SCORES, CLASSES)
    with open(path, newline="") as handle:
        rows = list(csv.reader(handle))
    assert rows == [
        ["video", "label", "prediction", "score"],
        ["a.mp4", "run", "run", "0.7000"],
        ["b.mp4", "jump", "swim", "0.6000"],
        ["c.mp4", "jump", "jump", "0.5000"],
        ["d.mp4", "swim", "swim", "0.4000"],
    ]
