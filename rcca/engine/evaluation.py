"""Video-level evaluation: the mean of clip softmax scores over all views of a video."""

from __future__ import annotations

from collections.abc import Iterable, Sized

import torch
from torch import Tensor, nn

from rcca.engine.distributed import gather_concat, gather_lists
from rcca.progress import track

# Device memory: views per forward pass. (Host memory is bounded separately, by the videos per batch:
# rcca.data.build.MAX_VIEWS_PER_BATCH.) 16 views of 8 x 224 x 224 fit any GPU rcca runs on.
VIEWS_PER_FORWARD = 16


@torch.no_grad()
def predict_videos(
    model: nn.Module,
    batches: Iterable[dict],
    device: torch.device,
    view_chunk: int = VIEWS_PER_FORWARD,
    progress_bars: bool = False,
    autocast_dtype: torch.dtype | None = None,
) -> tuple[Tensor, Tensor, list[int], dict[str, str]]:
    """Score every video of the loader, on every process, and gather the results.

    Each video's score is the mean of its views' softmax probabilities. A data loader that fails
    (`rcca.errors.DataLoadingFailed`) stops the evaluation with that error.

    Args:
        model: what runs the forward pass (the model, or its DDP / torch.compile wrapper).
        batches: this process's share of the videos. Each batch holds `clip` N x V x C x T x H x W
            (V views), `label`, `index`, `ok`, and for undecodable videos `failed` (path) and `reason`.
        device: where the model is.
        view_chunk: views pushed through the model at a time, so that 10 clips x 10 crops fit.
        progress_bars: draw a progress bar (else a plain log line now and then, see `rcca.progress.track`).
        autocast_dtype: the mixed-precision dtype (None: float32).

    Returns:
        (scores M x K, labels M, dataset indices M in increasing order, {undecodable video: reason}), over all
        processes; each video is counted once even when a distributed sampler padded the dataset with repeats.
    """
    model.eval()
    all_scores, all_labels, all_indices, failed = [], [], [], []
    total = len(batches) if isinstance(batches, Sized) else None
    for batch in track(batches, total=total, desc="evaluating", bars=progress_bars):
        ok = batch["ok"]
        failed += [(p, why) for p, why, good in zip(batch["failed"], batch["reason"], ok.tolist()) if not good]
        clips = batch["clip"][ok]
        if len(clips) == 0:
            continue
        n, v = clips.shape[:2]
        probabilities = view_probabilities(model, clips.flatten(0, 1), device, view_chunk, autocast_dtype)
        all_scores.append(probabilities.view(n, v, -1).mean(dim=1))
        all_labels.append(batch["label"][ok].to(device))
        all_indices.append(batch["index"][ok].to(device))
    num_outputs = _num_outputs(model)
    scores = gather_concat(torch.cat(all_scores) if all_scores else torch.zeros(0, num_outputs, device=device))
    labels = gather_concat(torch.cat(all_labels) if all_labels else torch.zeros(0, dtype=torch.long, device=device))
    indices = gather_concat(torch.cat(all_indices) if all_indices else torch.zeros(0, dtype=torch.long, device=device))
    unique, first = _first_occurrence(indices)
    failed = dict(sorted(gather_lists(failed)))  # sampler padding can repeat a video
    return scores[first].cpu(), labels[first].cpu(), unique.tolist(), failed


@torch.no_grad()
def view_probabilities(
    model: nn.Module,
    views: Tensor,
    device: torch.device,
    view_chunk: int = VIEWS_PER_FORWARD,
    autocast_dtype: torch.dtype | None = None,
) -> Tensor:
    """Softmax class probabilities of each view, `view_chunk` views per forward pass.

    Args:
        model: the model, in eval mode.
        views: V x C x T x H x W clips.
        device: where the model is.
        view_chunk: views per forward pass.
        autocast_dtype: the mixed-precision dtype (None: float32).

    Returns:
        V x K float32 probabilities, on `device`.
    """
    probabilities = []
    for chunk in views.split(view_chunk):
        with torch.autocast(device.type, dtype=autocast_dtype, enabled=autocast_dtype is not None):
            logits = model(chunk.to(device, non_blocking=True))
        probabilities.append(torch.softmax(logits.float(), dim=1))
    return torch.cat(probabilities)


def _first_occurrence(indices: Tensor) -> tuple[Tensor, Tensor]:
    """Sorted unique values of `indices` and the position of each one's first occurrence.

    Args:
        indices: a 1-D integer tensor.

    Returns:
        (unique values in increasing order, the position in `indices` where each first occurs).
    """
    unique, inverse = torch.unique(indices, sorted=True, return_inverse=True)
    positions = torch.arange(len(indices), device=indices.device)
    first = torch.full((len(unique),), len(indices), dtype=torch.long, device=indices.device)
    first = first.scatter_reduce(0, inverse, positions, reduce="amin")
    return unique, first


def _num_outputs(model: nn.Module) -> int:
    """Class count of a model, from its classifier layer.

    Args:
        model: the model, or its DDP wrapper (a torch.compile wrapper forwards `get_classifier` itself).

    Returns:
        The classifier's output features.
    """
    module = model.module if isinstance(model, nn.parallel.DistributedDataParallel) else model
    return module.get_classifier().out_features
