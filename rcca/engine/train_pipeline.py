"""What `train.py` does once Hydra has composed the config: set up, build, train, report."""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import torch
from omegaconf import OmegaConf
from torch import nn
from torch.utils.tensorboard import SummaryWriter

from rcca.config import Config
from rcca.data.annotations import Annotations
from rcca.data.build import (
    build_loader,
    build_test_dataset,
    build_train_dataset,
    clip_sampling,
    evaluation_batch_size,
    load_dataset,
)
from rcca.engine.checkpoints import RunCheckpoint, read_checkpoint
from rcca.engine.distributed import main_process_first
from rcca.engine.metrics import training_metrics, write_metrics
from rcca.engine.resuming import config_changes, continue_command, resume_checkpoint
from rcca.engine.runtime import Runtime, claim_run_folder, start_run
from rcca.engine.trainer import Trainer
from rcca.errors import UserError
from rcca.models.build import build_model, to_channels_last
from rcca.models.convert import load_pretrained
from rcca.models.tsm import load_imagenet_weights

log = logging.getLogger("rcca")


@dataclass
class StartingPoint:
    """What a run starts from: a checkpoint to continue (`resume`), or weights to fine-tune (`init_from`)."""

    resumed: RunCheckpoint | None
    init: dict | None  # the init_from file's contents (any supported format)
    changes: dict[str, tuple]  # settings the resumed run changes: {key: (checkpoint value, new value)}


def train(cfg: Config, run_dir: Path, overrides: list[str]) -> dict:
    """Train the configured model; returns the final validation metrics (also in metrics.json).

    `overrides` are the command line's Hydra overrides, for the command that continues the run.
    """
    started = time.perf_counter()
    runtime = start_run(cfg, run_dir)
    lock = claim_run_folder(cfg, runtime.run_dir)
    try:
        return _train_in_folder(cfg, runtime, overrides, started)
    finally:
        if lock is not None:
            lock.release()


def _train_in_folder(cfg: Config, runtime: Runtime, overrides: list[str], started: float) -> dict:
    """`train` once the run folder is this process's."""
    config = OmegaConf.to_container(cfg, resolve=True)
    start = starting_point(cfg, config, runtime.run_dir)
    with main_process_first():
        root, annotations = load_dataset(cfg.dataset, progress=runtime.progress_bars)
    check_resumed_classes(start.resumed, annotations.classes)
    model = build_run_model(cfg, start, runtime)
    trainer = build_trainer(cfg, config, runtime, model, root, annotations, overrides)
    if start.resumed is not None:
        trainer.restore(start.resumed)
        trainer.record_config_changes(start.changes)
        log_resume(trainer, start.changes)
    metrics = trainer.fit()
    if runtime.is_main:
        metrics = training_metrics(
            metrics,
            best_top1=trainer.position.best_top1,
            classes=annotations.classes,
            excluded_videos=annotations.excluded,
            missing_videos=annotations.missing,
            config_history=trainer.config_history,
        )
        write_metrics(runtime.run_dir / "metrics.json", metrics)
        finish_tensorboard(trainer.writer, cfg, metrics)
        print(summary_line(cfg, metrics, runtime.run_dir, time.perf_counter() - started, start.resumed))
    return metrics


def starting_point(cfg: Config, config: dict, run_dir: Path) -> StartingPoint:
    """Read the checkpoint to resume (and what the run changes) or the weights to start from."""
    resumed = resume_checkpoint(cfg.resume, run_dir)
    changes = config_changes(resumed.config, config) if resumed is not None else {}
    init = read_checkpoint(cfg.init_from, "init_from") if cfg.init_from and resumed is None else None
    return StartingPoint(resumed, init, changes)


def check_resumed_classes(resumed: RunCheckpoint | None, classes: list[str]) -> None:
    """A resumed run must see the classes it was trained on, in the same order."""
    if resumed is None or resumed.classes is None or resumed.classes == classes:
        return
    theirs = resumed.classes
    first = next(
        (f"{a!r} / {b!r}" for a, b in zip(classes, theirs) if a != b), f"position {min(len(classes), len(theirs)) + 1}"
    )
    raise UserError(
        f"resume: the dataset's classes differ from the checkpoint's ({len(classes)} vs {len(theirs)}, first "
        f"difference at {first}); resume on the same dataset, or start a new run with init_from=<checkpoint>"
    )


def build_run_model(cfg: Config, start: StartingPoint, runtime: Runtime) -> nn.Module:
    """The configured model on the run's device, with `init_from` weights, SyncBN and channels-last as configured."""
    model = build_model(cfg.backbone, cfg.module, cfg.dataset.num_classes)
    if cfg.backbone.pretrained:
        load_imagenet_file(model, cfg.backbone.pretrained)
    if start.init is not None:
        try:
            report = load_pretrained(model, start.init, cfg.init_from_format, f"init_from={cfg.init_from}")
        except ValueError as error:  # a file of another model or format: the message names it
            raise UserError(str(error)) from None
        log.info("init_from=%s: %s", cfg.init_from, report.summary())
    if cfg.trainer.sync_bn and runtime.world_size > 1:
        model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
    model.to(runtime.device)
    if cfg.trainer.channels_last:
        to_channels_last(model)
    return model


def load_imagenet_file(model: nn.Module, path: str) -> None:
    """`backbone.pretrained`: a torchvision ImageNet state dict file, read by the one checkpoint reader."""
    try:
        new = load_imagenet_weights(model, read_checkpoint(path, "backbone.pretrained"))
    except ValueError as error:
        raise UserError(f"backbone.pretrained={path}: {error}; give torchvision's file of the same depth") from None
    log.info("loaded ImageNet weights from %s (%d tensors left at their initial values)", path, len(new))


def build_trainer(
    cfg: Config,
    config: dict,
    runtime: Runtime,
    model: nn.Module,
    root: Path,
    annotations: Annotations,
    overrides: list[str],
) -> Trainer:
    """Datasets, loaders, the model's runner (torch.compile, DDP) and TensorBoard writer, in a Trainer."""
    clip = clip_sampling(cfg.backbone)
    train_set = build_train_dataset(root, annotations.train, clip, cfg.dataset, cfg.data, cfg.seed)
    test_set = build_test_dataset(root, annotations.test, clip, cfg.dataset, cfg.test, cfg.data.crop_size, cfg.seed)
    log.info("training pipeline: %r", train_set.transform)
    log.info("test pipeline: %r", test_set.transform)
    loader = partial(
        build_loader,
        num_workers=cfg.trainer.num_workers,
        seed=cfg.seed,
        rank=runtime.rank,
        world_size=runtime.world_size,
        timeout=cfg.trainer.data_timeout,
    )
    log.info(
        "%s + %s at %s: %.2fM parameters; %d train / %d test videos, %d classes",
        cfg.backbone.name,
        cfg.module.name,
        list(cfg.module.positions),
        sum(p.numel() for p in model.parameters()) / 1e6,
        len(train_set),
        len(test_set),
        len(annotations.classes),
    )
    runner = torch.compile(model) if cfg.trainer.compile else model
    if runtime.world_size > 1:
        gpus = [runtime.device.index] if runtime.device.type == "cuda" else None
        runner = nn.parallel.DistributedDataParallel(runner, device_ids=gpus)
    trainer = Trainer(
        model=runner,
        model_without_ddp=model,
        train_loader=loader(train_set, batch_size=cfg.trainer.batch_size, train=True),
        test_loader=loader(test_set, batch_size=evaluation_batch_size(cfg.test), train=False),
        class_names=annotations.classes,
        trainer_cfg=cfg.trainer,
        optimizer_cfg=cfg.optimizer,
        schedule_cfg=cfg.schedule,
        run_dir=runtime.run_dir,
        config=config,
        device=runtime.device,
        world_size=runtime.world_size,
        progress_bars=runtime.progress_bars,
        continue_command=partial(continue_command, overrides, runtime.run_dir, runtime.world_size),
    )
    if runtime.is_main:  # once the Trainer has accepted the batch sizes: a refused run leaves no event file
        trainer.writer = SummaryWriter(str(runtime.run_dir / "tensorboard"))
    return trainer


def log_resume(trainer: Trainer, changes: dict[str, tuple]) -> None:
    """Say where the run continues and which settings it changed."""
    position = trainer.position
    log.info("resumed at epoch %d, update %d", position.epoch + 1, position.step)
    for key, (old, new) in changes.items():
        log.info("resume: %s changed from %s to %s (applied from update %d on)", key, old, new, position.step + 1)


def finish_tensorboard(writer: SummaryWriter, cfg: Config, metrics: dict) -> None:
    """Record the run's hyper-parameters with its final scores (TensorBoard's HPARAMS tab), then close."""
    writer.add_hparams(
        {
            "backbone": cfg.backbone.name,
            "module": cfg.module.name,
            "positions": ",".join(cfg.module.positions),
            "lr": cfg.optimizer.lr,
            "epochs": cfg.trainer.epochs,
        },
        {"hparam/top1": metrics["top1"], "hparam/top5": metrics["top5"]},
        run_name=".",
    )
    writer.close()


def summary_line(cfg: Config, metrics: dict, run_dir: Path, seconds: float, resumed: RunCheckpoint | None) -> str:
    """The line printed at the end of a run."""
    epochs = f"{cfg.trainer.epochs} epoch{'s' if cfg.trainer.epochs != 1 else ''}"
    line = (
        f"done: {epochs} in {seconds / 60:.1f} min; video top-1 {metrics['top1']:.2f}%, top-5 {metrics['top5']:.2f}% "
        f"(best top-1 {metrics['best_top1']:.2f}%); outputs in {run_dir}"
    )
    if cfg.resume == "auto" and resumed is None:
        line += "; note: resume=auto found no checkpoint, so this was a new run"
    return line
