"""What a run reports: accuracies, and the formats of metrics.json, predictions.csv (test.py) and scores.csv /
scores.json (scripts/predict.py): the one place that knows them.

A training run's metrics.json holds its final validation (`video_metrics` keys, `failed_videos`,
`train_failed_videos`) and `best_top1`, `classes`, `excluded_videos`, `missing_videos`,
`config_history`; a test run's holds the `video_metrics` keys and `checkpoint`, `failed_videos`,
`excluded_videos`, `missing_videos`, `num_clips`, `num_crops`. Non-finite numbers are written as null.

scripts/predict.py writes, for videos without labels, scores.csv (one row per video: its k best classes and
their scores, best first) and scores.json (`checkpoint`, `num_clips`, `num_crops`, `classes`, `videos`: per
video its `top` classes, all K `scores` and each clip's best class in time order, and `failed_videos`).
"""

from __future__ import annotations

import csv
import io
import json
import math
from pathlib import Path

import torch
from torch import Tensor

from rcca.engine.files import write_atomically
from rcca.errors import UserError


def topk_correct(scores: Tensor, labels: Tensor, k: int) -> Tensor:
    """Whether each label is among the k highest scores.

    Args:
        scores: N x K scores (logits or probabilities).
        labels: N true labels.
        k: how many of the highest scores count (at most K are used).

    Returns:
        A boolean tensor of N.
    """
    k = min(k, scores.shape[1])
    return (scores.topk(k, dim=1).indices == labels[:, None]).any(dim=1)


def video_metrics(scores: Tensor, labels: Tensor, class_names: list[str]) -> dict:
    """Top-1, top-5, mean class accuracy, per-class accuracy and confusion matrix.

    Args:
        scores: N x K video scores (mean of clip probabilities).
        labels: N true labels.
        class_names: K names, for the per-class table.

    Returns:
        `top1`, `top5`, `mean_class_accuracy` (percentages), `num_videos`, `per_class_accuracy` ({class: percentage,
        None for a class without test videos}) and `confusion_matrix` (K x K counts, rows the true classes).
    """
    num_classes = len(class_names)
    predictions = scores.argmax(dim=1)
    pairs = labels * num_classes + predictions
    confusion = torch.bincount(pairs, minlength=num_classes**2).view(num_classes, num_classes)
    per_class_total = confusion.sum(dim=1)
    per_class = [
        100.0 * confusion[c, c].item() / per_class_total[c].item() if per_class_total[c] > 0 else None
        for c in range(num_classes)
    ]
    present = [a for a in per_class if a is not None]
    return {
        "top1": 100.0 * topk_correct(scores, labels, 1).float().mean().item() if len(labels) else 0.0,
        "top5": 100.0 * topk_correct(scores, labels, 5).float().mean().item() if len(labels) else 0.0,
        "mean_class_accuracy": sum(present) / len(present) if present else 0.0,
        "num_videos": len(labels),
        "per_class_accuracy": dict(zip(class_names, per_class)),
        "confusion_matrix": confusion.tolist(),
    }


def validation_metrics(
    scores: Tensor,
    labels: Tensor,
    classes: list[str],
    *,
    failed_videos: dict[str, str],
    train_failed_videos: dict[str, str],
) -> dict:
    """The metrics of one validation during training.

    Args:
        scores: N x K video scores.
        labels: N true labels.
        classes: the K class names.
        failed_videos: test videos that could not be decoded: {path: reason}.
        train_failed_videos: training videos that could not be decoded so far (all processes): {path: reason}.

    Returns:
        The `video_metrics` keys, `failed_videos` and `train_failed_videos`.
    """
    return {
        **video_metrics(scores, labels, classes),
        "failed_videos": failed_videos,
        "train_failed_videos": train_failed_videos,
    }


def training_metrics(
    validation: dict,
    *,
    best_top1: float,
    classes: list[str],
    excluded_videos: list[str],
    missing_videos: list[str],
    config_history: list[dict],
) -> dict:
    """The metrics.json of a training run.

    Args:
        validation: the final validation's `validation_metrics`.
        best_top1: the best validation top-1 of the run (that of best.pt).
        classes: the class names, in label order.
        excluded_videos: videos left out by `dataset.exclude` (the results cover the others).
        missing_videos: videos dropped because they were missing (`dataset.allow_missing`).
        config_history: settings changed on resume (`Trainer.config_history`).

    Returns:
        `validation` with those five entries added.
    """
    return {
        **validation,
        "best_top1": best_top1,
        "classes": classes,
        "excluded_videos": excluded_videos,
        "missing_videos": missing_videos,
        "config_history": config_history,
    }


def test_metrics(
    scores: Tensor,
    labels: Tensor,
    classes: list[str],
    *,
    checkpoint: str,
    failed_videos: dict[str, str],
    excluded_videos: list[str],
    missing_videos: list[str],
    num_clips: int,
    num_crops: int,
) -> dict:
    """The metrics.json of a test run.

    Args:
        scores: N x K video scores.
        labels: N true labels.
        classes: the K class names.
        checkpoint: the evaluated checkpoint file.
        failed_videos: test videos that could not be decoded: {path: reason}.
        excluded_videos: videos left out by `dataset.exclude`.
        missing_videos: videos dropped because they were missing (`dataset.allow_missing`).
        num_clips: clips per video.
        num_crops: crops per clip.

    Returns:
        The `video_metrics` keys and the arguments after `classes`, by name.
    """
    return {
        **video_metrics(scores, labels, classes),
        "checkpoint": checkpoint,
        "failed_videos": failed_videos,
        "excluded_videos": excluded_videos,
        "missing_videos": missing_videos,
        "num_clips": num_clips,
        "num_crops": num_crops,
    }


def write_metrics(path: Path, metrics: dict) -> None:
    """Write metrics.json atomically, with non-finite numbers as null.

    Args:
        path: the file.
        metrics: nested dicts and lists of JSON values.
    """
    write_atomically(path, json.dumps(_finite_or_none(metrics), indent=2).encode())


def read_metrics(path: Path) -> dict:
    """Read a metrics.json (non-finite numbers come back as None).

    Args:
        path: the file.

    Returns:
        Its JSON object.

    Raises:
        UserError: one line naming the file, when it cannot be read or is not a JSON object (half-written, edited).
    """
    try:
        data = json.loads(Path(path).read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise UserError(f"{path}: not a readable metrics.json ({error})") from None
    if not isinstance(data, dict):
        raise UserError(f"{path}: not a metrics.json (a JSON {type(data).__name__}, not an object)")
    return data


def _finite_or_none(value: object) -> object:
    """`value` with every non-finite float in it (nested dicts and lists included) replaced by None."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {key: _finite_or_none(item) for key, item in value.items()}
    if isinstance(value, list):
        return [_finite_or_none(item) for item in value]
    return value


def write_predictions(path: Path, videos: list[str], labels: Tensor, scores: Tensor, classes: list[str]) -> None:
    """Write predictions.csv atomically: per video its true class, predicted class and that prediction's score.

    Args:
        path: the file.
        videos: the N videos' paths (as in the annotation lists).
        labels: their N true labels.
        scores: their N x K scores.
        classes: the K class names.
    """
    text = io.StringIO()
    out = csv.writer(text)
    out.writerow(["video", "label", "prediction", "score"])
    for video, label, row in zip(videos, labels.tolist(), scores):
        best = int(row.argmax())
        out.writerow([video, classes[label], classes[best], f"{row[best]:.4f}"])
    write_atomically(path, text.getvalue().encode())


def write_video_scores(
    folder: Path,
    videos: list[str],
    scores: Tensor,
    clip_scores: list[Tensor],
    classes: list[str],
    top_k: int,
    settings: dict,
    failed_videos: dict[str, str],
) -> None:
    """Write scores.csv and scores.json (see the module's docstring) into `folder`, atomically.

    Args:
        folder: where the two files go (it exists).
        videos: the N videos that were scored.
        scores: their N x K video-level scores.
        clip_scores: per video, its clips x K scores in time order.
        classes: the K class names.
        top_k: classes per video in scores.csv and in the `top` lists.
        settings: what the JSON records first (checkpoint, num_clips, num_crops).
        failed_videos: {undecodable video: reason}.
    """
    k = min(top_k, len(classes))
    text = io.StringIO()
    out = csv.writer(text)
    out.writerow(["video"] + [f"{column}_{rank}" for rank in range(1, k + 1) for column in ("class", "score")])
    entries = []
    for video, row, clips in zip(videos, scores, clip_scores):
        values, labels = row.topk(k)
        top = [
            {"label": label, "class": classes[label], "score": value}
            for label, value in zip(labels.tolist(), values.tolist())
        ]
        out.writerow([video] + [field for entry in top for field in (entry["class"], f"{entry['score']:.4f}")])
        best = clips.max(dim=1)
        per_clip = [
            {"label": label, "class": classes[label], "score": value}
            for label, value in zip(best.indices.tolist(), best.values.tolist())
        ]
        entries.append({"video": video, "top": top, "scores": row.tolist(), "clips": per_clip})
    write_atomically(folder / "scores.csv", text.getvalue().encode())
    document = {**settings, "classes": classes, "videos": entries, "failed_videos": failed_videos}
    write_atomically(folder / "scores.json", (json.dumps(document, indent=1) + "\n").encode())
