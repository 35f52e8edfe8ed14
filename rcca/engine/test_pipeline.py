"""What `test.py` does once Hydra has composed the config: evaluate a checkpoint at video level, report."""

from __future__ import annotations

import logging
from pathlib import Path

from omegaconf import DictConfig
from torch import Tensor, nn

from rcca.config import Config
from rcca.data.build import (
    VideoLoader,
    build_loader,
    build_test_dataset,
    clip_sampling,
    evaluation_batch_size,
    load_dataset,
    loading_failure,
)
from rcca.engine.checkpoints import read_run_checkpoint
from rcca.engine.evaluation import predict_videos
from rcca.engine.inference import checkpoint_config, checkpoint_model
from rcca.engine.metrics import test_metrics, write_metrics, write_predictions
from rcca.engine.runtime import Runtime, start_run
from rcca.engine.trainer import autocast_dtype
from rcca.errors import UserError
from rcca.progress import count_of

log = logging.getLogger("rcca")


def test(cfg: DictConfig, run_dir: Path, overrides: list[str]) -> dict:
    """Evaluate `cfg.ckpt` on its dataset's test split; writes metrics.json and predictions.csv into `run_dir`."""
    checkpoint = read_run_checkpoint(cfg.ckpt, "ckpt")
    run_cfg = checkpoint_config(cfg, checkpoint.config, overrides)
    runtime = start_run(run_cfg, run_dir)
    root, annotations = load_dataset(run_cfg.dataset, splits=("test",), progress=runtime.progress_bars)
    test_set = build_test_dataset(
        root,
        annotations.test,
        clip_sampling(run_cfg.backbone),
        run_cfg.dataset,
        run_cfg.test,
        run_cfg.data.crop_size,
        run_cfg.seed,
    )
    log.info("test pipeline: %r", test_set.transform)
    model = checkpoint_model(run_cfg, checkpoint, runtime.device)
    loader = build_loader(
        test_set,
        evaluation_batch_size(run_cfg.test),
        False,
        run_cfg.trainer.num_workers,
        run_cfg.seed,
        rank=runtime.rank,
        world_size=runtime.world_size,
        timeout=run_cfg.trainer.data_timeout,
    )
    scores, labels, indices, failed = evaluate(model, loader, run_cfg, runtime)
    metrics = test_metrics(
        scores,
        labels,
        annotations.classes,
        checkpoint=str(cfg.ckpt),
        failed_videos=failed,
        excluded_videos=annotations.excluded,
        missing_videos=annotations.missing,
        num_clips=run_cfg.test.num_clips,
        num_crops=run_cfg.test.num_crops,
    )
    if runtime.is_main:
        videos = [test_set.records[index].path for index in indices]
        write_metrics(run_dir / "metrics.json", metrics)
        write_predictions(run_dir / "predictions.csv", videos, labels, scores, annotations.classes)
        print(summary_line(metrics, run_cfg, run_dir, failed))
    return metrics


def evaluate(
    model: nn.Module, loader: VideoLoader, run_cfg: Config, runtime: Runtime
) -> tuple[Tensor, Tensor, list[int], dict[str, str]]:
    """`predict_videos` over the test loader; a crashed or hung decoder becomes a one-line error saying what to do."""
    loader.sampler.set_epoch(0)
    try:
        return predict_videos(
            model,
            loader,
            runtime.device,
            progress_bars=runtime.progress_bars,
            autocast_dtype=autocast_dtype(run_cfg.trainer.amp),
        )
    except RuntimeError as error:  # DataLoadingFailed, or a worker's death raised outside the iteration
        failure = loading_failure(error)
        if failure is None:
            raise
        raise UserError(f"{failure}, then test again with dataset.exclude=<file>") from None


def summary_line(metrics: dict, run_cfg: Config, run_dir: Path, failed: dict[str, str]) -> str:
    """The line printed at the end of an evaluation."""
    views = f"{count_of(run_cfg.test.num_clips, 'clip')} x {count_of(run_cfg.test.num_crops, 'crop')}"
    undecodable = f"; {count_of(len(failed), 'undecodable video')} excluded" if failed else ""
    return (
        f"test: {count_of(metrics['num_videos'], 'video')} ({views}): video top-1 {metrics['top1']:.2f}%, "
        f"top-5 {metrics['top5']:.2f}%, mean class {metrics['mean_class_accuracy']:.2f}%{undecodable}; "
        f"results in {run_dir}"
    )
