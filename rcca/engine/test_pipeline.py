"""What `test.py` does once Hydra has composed the config: evaluate a checkpoint at video level, report."""

from __future__ import annotations

import logging
from pathlib import Path

import torch
from hydra.core.override_parser.overrides_parser import OverridesParser
from omegaconf import DictConfig, OmegaConf
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
from rcca.engine.checkpoints import RunCheckpoint, read_run_checkpoint
from rcca.engine.evaluation import predict_videos
from rcca.engine.metrics import test_metrics, write_metrics, write_predictions
from rcca.engine.runtime import Runtime, start_run
from rcca.engine.trainer import autocast_dtype
from rcca.errors import UserError
from rcca.models.build import build_model, to_channels_last
from rcca.progress import count_of

log = logging.getLogger("rcca")

MODEL_SECTIONS = ("backbone", "module")  # taken from the checkpoint, never from the command line


def test(cfg: DictConfig, run_dir: Path, overrides: list[str]) -> dict:
    """Evaluate `cfg.ckpt` on its dataset's test split; writes metrics.json and predictions.csv into `run_dir`."""
    if not cfg.ckpt:
        raise UserError("ckpt is not set: python test.py ckpt=outputs/<date>/<time>/best.pt")
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


def checkpoint_model(run_cfg: Config, checkpoint: RunCheckpoint, device: torch.device) -> nn.Module:
    """The checkpoint's model with its weights, on `device`, channels-last as the run config says."""
    model = build_model(run_cfg.backbone, run_cfg.module, run_cfg.dataset.num_classes)
    try:
        model.load_state_dict(checkpoint.model)
    except RuntimeError:
        raise UserError(
            f"ckpt={run_cfg.ckpt}: its weights do not fit dataset.num_classes={run_cfg.dataset.num_classes}; "
            "evaluate on a dataset with the checkpoint's classes"
        ) from None
    model.to(device)
    if run_cfg.trainer.channels_last:
        to_channels_last(model)
    precision = run_cfg.trainer.amp if run_cfg.trainer.amp != "off" else "float32"
    layout = ", channels-last" if run_cfg.trainer.channels_last else ""
    log.info("evaluating on %s, precision %s%s", device, precision, layout)
    return model


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


def checkpoint_config(cfg: DictConfig, saved: dict, overrides: list[str]) -> DictConfig:
    """The checkpoint's run config, with what the command line changed taken from `cfg`.

    The model sections (`backbone`, `module`) come from the checkpoint: an override that would
    build another model is a UserError naming it (one that repeats the checkpoint's values is fine).
    """
    merged = OmegaConf.merge(OmegaConf.structured(Config), saved)
    for override in OverridesParser.create().parse_overrides(overrides):
        key = override.key_or_group
        section = key.split(".")[0]
        if section in MODEL_SECTIONS:
            differences = model_differences(OmegaConf.select(cfg, key), OmegaConf.select(merged, key), key)
            if differences:
                raise UserError(
                    f"{override.input_line}: test.py evaluates the checkpoint's own model, and this asks for another "
                    f"({'; '.join(differences[:3])}); drop it"
                )
            continue
        if section not in merged or override.is_delete():  # hydra.*, experiment=...
            continue
        OmegaConf.update(merged, key, OmegaConf.select(cfg, key), merge=False)
    return merged


def model_differences(requested: object, saved: object, key: str) -> list[str]:
    """ "key=requested (checkpoint: saved)" for each value under `key` that differs."""
    if not isinstance(requested, DictConfig):
        return [] if requested == saved else [f"{key}={requested} (checkpoint: {saved})"]
    old = OmegaConf.to_container(saved, resolve=True) if isinstance(saved, DictConfig) else {}
    new = OmegaConf.to_container(requested, resolve=True)
    return [
        f"{key}.{name}={value} (checkpoint: {old.get(name)})" for name, value in new.items() if old.get(name) != value
    ]
