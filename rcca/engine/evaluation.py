"""Video-level evaluation: the mean of clip softmax scores over all views of a video."""

from __future__ import annotations

from collections.abc import Iterable

import torch
from torch import Tensor, nn
from tqdm import tqdm

from rcca.engine.distributed import gather_concat, gather_lists


def topk_correct(scores: Tensor, labels: Tensor, k: int) -> Tensor:
    """Boolean N: is the label among the k highest scores (N x K scores, N labels)."""
    k = min(k, scores.shape[1])
    return (scores.topk(k, dim=1).indices == labels[:, None]).any(dim=1)


def video_metrics(scores: Tensor, labels: Tensor, class_names: list[str]) -> dict:
    """Top-1, top-5, mean class accuracy, per-class accuracy and confusion matrix.

    Args:
        scores: N x K video scores (mean of clip probabilities).
        labels: N true labels.
        class_names: K names, for the per-class table.
    Accuracies are percentages; a class with no test video gets None.
    """
    num_classes = len(class_names)
    predictions = scores.argmax(dim=1)
    confusion = torch.bincount(labels * num_classes + predictions, minlength=num_classes**2).view(num_classes, num_classes)
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


@torch.no_grad()
def predict_videos(
    model: nn.Module,
    batches: Iterable[dict],
    device: torch.device,
    view_chunk: int = 16,
    progress: bool = False,
    autocast_dtype: torch.dtype | None = None,
) -> tuple[Tensor, Tensor, list[int], dict[str, str]]:
    """Score every video of the loader, on every process, and gather the results.

    Each batch holds `clip` N x V x C x T x H x W (V views), `label`, `index`, `ok`, and for
    undecodable videos `failed` (path) and `reason`. Views are pushed through the model
    `view_chunk` at a time, so 10 clips x 10 crops fit.
    Returns (scores M x K, labels M, dataset indices M, {undecodable video: reason}); each video is
    counted once even when a distributed sampler padded the dataset with repeats.
    """
    model.eval()
    all_scores, all_labels, all_indices, failed = [], [], [], []
    for batch in tqdm(batches, desc="evaluating", disable=not progress, leave=False, unit="batch"):
        ok = batch["ok"]
        failed += [(p, why) for p, why, good in zip(batch["failed"], batch["reason"], ok.tolist()) if not good]
        clips = batch["clip"][ok]
        if len(clips) == 0:
            continue
        n, v = clips.shape[:2]
        views = clips.flatten(0, 1)
        probabilities = []
        for chunk in views.split(view_chunk):
            with torch.autocast(device.type, dtype=autocast_dtype, enabled=autocast_dtype is not None):
                logits = model(chunk.to(device, non_blocking=True))
            probabilities.append(torch.softmax(logits.float(), dim=1))
        all_scores.append(torch.cat(probabilities).view(n, v, -1).mean(dim=1))
        all_labels.append(batch["label"][ok].to(device))
        all_indices.append(batch["index"][ok].to(device))
    num_outputs = _num_outputs(model)
    scores = gather_concat(torch.cat(all_scores) if all_scores else torch.zeros(0, num_outputs, device=device))
    labels = gather_concat(torch.cat(all_labels) if all_labels else torch.zeros(0, dtype=torch.long, device=device))
    indices = gather_concat(torch.cat(all_indices) if all_indices else torch.zeros(0, dtype=torch.long, device=device))
    unique, first = _first_occurrence(indices)
    failed = dict(sorted(gather_lists(failed)))  # sampler padding can repeat a video
    return scores[first].cpu(), labels[first].cpu(), unique.tolist(), failed


def _first_occurrence(indices: Tensor) -> tuple[Tensor, Tensor]:
    """Sorted unique values of `indices` and the position of each one's first occurrence."""
    unique, inverse = torch.unique(indices, sorted=True, return_inverse=True)
    positions = torch.arange(len(indices), device=indices.device)
    first = torch.full((len(unique),), len(indices), dtype=torch.long, device=indices.device)
    first = first.scatter_reduce(0, inverse, positions, reduce="amin")
    return unique, first


def _num_outputs(model: nn.Module) -> int:
    """Class count of a model, from its classifier layer."""
    module = model.module if hasattr(model, "module") else model
    return getattr(module, module.classifier_name).out_features
