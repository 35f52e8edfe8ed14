"""Predicting the classes of videos with a trained model: video-level scores averaged over the test views
exactly as `test.py` averages them (the mean of the softmax of every clip x crop view), and each clip's
own scores (the mean over its crops), in time order.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from torch import Tensor

from rcca.data.build import build_loader, loading_failure
from rcca.engine.evaluation import view_probabilities
from rcca.engine.inference import TrainedModel, video_dataset
from rcca.engine.trainer import autocast_dtype
from rcca.errors import UserError
from rcca.progress import track


@dataclass
class VideoPrediction:
    """The scores of one video.

    Attributes:
        video: the file.
        scores: K video-level class probabilities (the mean over all views).
        clip_scores: clips x K, each clip's mean over its crops, clips in time order.
    """

    video: Path
    scores: Tensor
    clip_scores: Tensor


def predict_files(
    trained: TrainedModel, videos: list[Path], workers: int = 0, progress_bars: bool = False
) -> tuple[list[VideoPrediction], dict[str, str]]:
    """Score every video with the test views of `trained.config.test` (clips x crops).

    Args:
        trained: the model (`rcca.engine.inference.load_trained_model`).
        videos: the files.
        workers: data-loading processes (0: decode in this process).
        progress_bars: draw a bar (else plain log lines now and then).

    Returns:
        (the predictions of the videos that decoded, in the order given; {undecodable video: reason}).

    Raises:
        UserError: one line, when a decoding worker crashed or hung.
    """
    cfg = trained.config
    dataset = video_dataset(trained, videos)
    loader = build_loader(dataset, 1, False, workers, cfg.seed, timeout=cfg.trainer.data_timeout)
    loader.sampler.set_epoch(0)
    dtype = autocast_dtype(cfg.trainer.amp)
    predictions, failed = [], {}
    try:
        for batch in track(loader, total=len(loader), desc="predicting", bars=progress_bars, unit="video"):
            video = videos[int(batch["index"][0])]
            if not bool(batch["ok"][0]):
                failed[str(video)] = batch["reason"][0]
                continue
            probabilities = view_probabilities(trained.model, batch["clip"][0], trained.device, autocast_dtype=dtype)
            clip_scores = probabilities.view(cfg.test.num_clips, cfg.test.num_crops, -1).mean(dim=1)
            predictions.append(VideoPrediction(video, probabilities.mean(dim=0).cpu(), clip_scores.cpu()))
    except RuntimeError as error:
        failure = loading_failure(error)
        if failure is None:
            raise
        raise UserError(str(failure)) from None
    return predictions, failed


def top_classes(scores: Tensor, classes: list[str], k: int) -> list[tuple[int, str, float]]:
    """The k best classes of a score vector, best first: (label, name, score).

    Example: scores [0.1, 0.7, 0.2], classes ["a", "b", "c"], k = 2 -> [(1, "b", 0.7), (2, "c", 0.2)].
    """
    values, labels = scores.topk(min(k, len(classes)))
    return [(label, classes[label], value) for label, value in zip(labels.tolist(), values.tolist())]
