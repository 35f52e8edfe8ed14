"""What `train.py` and `test.py` do once Hydra has composed the config: build, run, report."""

from __future__ import annotations

import csv
import logging
import random
import shutil
import sys
import time
from contextlib import contextmanager
from functools import partial
from pathlib import Path

import numpy as np
import torch
from hydra.core.override_parser.overrides_parser import OverridesParser
from omegaconf import DictConfig, OmegaConf
from torch.utils.tensorboard import SummaryWriter

from rcca.config import Config, validate_config
from rcca.data.build import ClipSampling, build_datasets, build_loader, load_dataset
from rcca.data.decoding import DecodeError
from rcca.engine.checkpoints import read_checkpoint, run_config_of
from rcca.engine.files import RunFolderLock
from rcca.engine.resuming import config_changes, continue_command, resume_checkpoint
from rcca.engine.distributed import (
    broadcast_object, init_distributed, is_distributed, is_main_process, main_process_first,
)
from rcca.engine.evaluation import predict_videos, video_metrics
from rcca.engine.trainer import Trainer, autocast_dtype, write_metrics
from rcca.errors import UserError, data_loading_failure
from rcca.models.build import build_model, to_channels_last
from rcca.models.convert import load_pretrained

log = logging.getLogger("rcca")


@contextmanager
def user_errors():
    """Turn user errors (UserError, missing files, bad values, a dataset that cannot be decoded) into
    one line on stderr and exit code 2."""
    try:
        yield
    except (UserError, FileNotFoundError, ValueError, DecodeError) as error:
        lines = [line for line in str(error).splitlines() if line.strip()] or [type(error).__name__]
        # An error raised in a DataLoader worker arrives wrapped: its own message is the last line.
        message = lines[-1] if lines[0].startswith("Caught ") and "DataLoader worker" in lines[0] else lines[0]
        print(f"error: {message}", file=sys.stderr)
        sys.exit(2)
    except Exception:
        if not is_distributed():
            raise
        # One process of several: a Hydra sweep would go on to its next job out of step with the others.
        log.exception("this process failed; stopping it")
        sys.exit(1)


def check_required(cfg: DictConfig) -> None:
    """Fail before any work with the key's name: mandatory values (???), then every value's rule."""
    missing = sorted(OmegaConf.missing_keys(cfg))
    if missing:
        raise UserError(f"{', '.join(missing)} must be set (e.g. {missing[0]}=...) for this dataset")
    validate_config(cfg)


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise UserError("trainer.device=cuda but no GPU is visible; use trainer.device=cpu")
    return torch.device(name)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


MAX_VIEWS_PER_BATCH = 64  # host memory: 64 views of 8 x 224 x 224 float32 clips are about 300 MB


def evaluation_batch_size(cfg: Config) -> int:
    """Videos per evaluation batch: test.batch_size, lowered so a batch holds at most 64 views."""
    views = cfg.test.num_clips * cfg.test.num_crops
    size = max(1, min(cfg.test.batch_size, MAX_VIEWS_PER_BATCH // views))
    if size < cfg.test.batch_size:
        log.info("evaluating %d videos per batch (%d views each) to bound host memory", size, views)
    return size


def make_datasets(cfg: Config, progress: bool):
    """Annotations -> (train dataset, test dataset, annotations) for a run config."""
    root, annotations = load_dataset(cfg.dataset, progress=progress)
    clip = ClipSampling(cfg.backbone.sampling, cfg.backbone.num_frames, cfg.backbone.frame_interval)
    train_set, test_set = build_datasets(
        root, annotations, backend=cfg.dataset.backend, clip=clip, crop_size=cfg.data.crop_size,
        scales=list(cfg.data.scales), flip=cfg.dataset.flip, resize_short=cfg.test.resize_short,
        num_clips=cfg.test.num_clips, num_crops=cfg.test.num_crops, seed=cfg.seed,
    )
    return train_set, test_set, annotations


def leave_outputs_to_rank_zero(own_dir: Path, run_dir: Path) -> None:
    """On ranks other than 0: stop writing the log file and remove the folder Hydra made for this process.

    The folder is removed only when it is not rank 0's and holds nothing but Hydra's files.
    Warnings still reach the terminal.
    """
    root = logging.getLogger()
    for handler in [h for h in root.handlers if isinstance(h, logging.FileHandler)]:
        root.removeHandler(handler)
        handler.close()
    if own_dir.resolve() != run_dir.resolve() and own_dir.is_dir():
        if {entry.name for entry in own_dir.iterdir()} <= {".hydra", "train.log"}:
            shutil.rmtree(own_dir)


def claim_run_folder(cfg: Config, run_dir: Path) -> RunFolderLock | None:
    """On rank 0: lock the run folder for this run (see `RunFolderLock`); every rank raises the same
    UserError when it is refused. `resume=auto` without a last.pt is a fresh run."""
    fresh = not cfg.resume or (cfg.resume == "auto" and not (run_dir / "last.pt").exists())
    lock = RunFolderLock(run_dir, fresh=fresh, overwrite=cfg.overwrite) if is_main_process() else None
    refusal = None
    if lock is not None:
        try:
            lock.acquire()
        except UserError as error:
            refusal = str(error)
        except OSError as error:  # e.g. a folder that cannot be written: the other ranks must not wait
            refusal = f"run folder {run_dir}: {error}"
    refusal = broadcast_object(refusal)
    if refusal is not None:
        raise UserError(refusal)
    return lock


def _first_difference(a: list[str], b: list[str]) -> str:
    """The first class name (as "ours / theirs") where two class lists differ."""
    for ours, theirs in zip(a, b):
        if ours != theirs:
            return f"{ours!r} / {theirs!r}"
    return f"position {min(len(a), len(b)) + 1}"


def initialise_weights(model: torch.nn.Module, checkpoint: dict, cfg: Config) -> None:
    """Fill `model` from the `init_from` checkpoint (fine-tuning); a one-line error for a mismatched file."""
    try:
        report = load_pretrained(model, checkpoint, cfg.init_from_format, f"init_from={cfg.init_from}")
    except ValueError as error:
        raise UserError(str(error)) from None
    log.info("init_from=%s: %s", cfg.init_from, report.summary())


def train(cfg: Config, run_dir: Path, overrides: list[str]) -> dict:
    """Train the configured model; returns the final validation metrics (also in metrics.json).

    `overrides` are the command line's Hydra overrides, for the command that continues the run.
    """
    started = time.perf_counter()
    check_required(cfg)
    device = resolve_device(cfg.trainer.device)
    rank, world_size, gpu = init_distributed(device.type)
    own_dir, run_dir = run_dir, Path(broadcast_object(str(run_dir)))  # Hydra clocks may differ: use rank 0's folder
    if device.type == "cuda":
        device = torch.device("cuda", gpu)
        torch.backends.cudnn.benchmark = cfg.trainer.cudnn_benchmark
    seed_everything(cfg.seed)
    if not is_main_process():
        logging.getLogger().setLevel(logging.WARNING)  # rank 0 reports progress for all
        leave_outputs_to_rank_zero(own_dir, run_dir)
    lock = claim_run_folder(cfg, run_dir)
    try:
        return _train_in(cfg, run_dir, overrides, device, rank, world_size, gpu, started)
    finally:
        if lock is not None:
            lock.release()


def _train_in(
    cfg: Config, run_dir: Path, overrides: list[str], device: torch.device, rank: int, world_size: int, gpu: int,
    started: float,
) -> dict:
    """`train` once the run folder is this process's."""
    main = is_main_process()
    config = OmegaConf.to_container(cfg, resolve=True)
    checkpoint = resume_checkpoint(cfg.resume, run_dir)
    changes = config_changes(checkpoint["config"], config) if checkpoint is not None else {}
    init = read_checkpoint(cfg.init_from, "init_from") if cfg.init_from and checkpoint is None else None
    with main_process_first():
        train_set, test_set, annotations = make_datasets(cfg, progress=main and sys.stderr.isatty())
    classes = annotations.classes
    if checkpoint is not None and checkpoint.get("classes", classes) != classes:
        raise UserError(
            f"resume: the dataset's classes differ from the checkpoint's ({len(classes)} vs "
            f"{len(checkpoint['classes'])}, first difference at {_first_difference(classes, checkpoint['classes'])}); "
            "resume on the same dataset, or start a new run with init_from=<checkpoint>"
        )
    loader_args = (cfg.trainer.num_workers, cfg.seed, rank, world_size, cfg.trainer.data_timeout)
    train_loader = build_loader(train_set, cfg.trainer.batch_size, True, *loader_args)
    test_loader = build_loader(test_set, evaluation_batch_size(cfg), False, *loader_args)
    model = build_model(cfg.backbone, cfg.module, cfg.dataset.num_classes)
    if init is not None:
        initialise_weights(model, init, cfg)
    if cfg.trainer.sync_bn and world_size > 1:
        model = torch.nn.SyncBatchNorm.convert_sync_batchnorm(model)
    model.to(device)
    if cfg.trainer.channels_last:
        to_channels_last(model)
    log.info(
        "%s + %s at %s: %.2fM parameters; %d train / %d test videos, %d classes",
        cfg.backbone.name, cfg.module.name, list(cfg.module.positions), sum(p.numel() for p in model.parameters()) / 1e6,
        len(train_set), len(test_set), len(classes),
    )
    runner = torch.compile(model) if cfg.trainer.compile else model
    if world_size > 1:
        runner = torch.nn.parallel.DistributedDataParallel(runner, device_ids=[gpu] if device.type == "cuda" else None)
    writer = SummaryWriter(str(run_dir / "tensorboard")) if main else None
    trainer = Trainer(
        model, train_loader, test_loader, classes, cfg.trainer, cfg.optimizer, cfg.schedule, run_dir, config, device,
        world_size, writer, runner, continue_command=partial(continue_command, overrides, run_dir, world_size),
    )
    if checkpoint is not None:
        trainer.load_state_dict(checkpoint)
        trainer.record_config_changes(changes)
        log.info("resumed at epoch %d, update %d", trainer.progress.epoch + 1, trainer.progress.step)
        for key, (old, new) in changes.items():
            log.info("resume: %s changed from %s to %s (applied from update %d on)", key, old, new, trainer.progress.step + 1)
    metrics = trainer.fit()
    if main:
        metrics["best_top1"] = trainer.progress.best_top1
        metrics["classes"] = classes
        metrics["excluded_videos"] = annotations.excluded  # dataset.exclude: results cover the other videos
        metrics["missing_videos"] = annotations.missing  # dropped by dataset.allow_missing
        metrics["config_history"] = trainer.config_history
        write_metrics(run_dir / "metrics.json", metrics)
        writer.add_hparams(
            {"backbone": cfg.backbone.name, "module": cfg.module.name, "positions": ",".join(cfg.module.positions),
             "lr": cfg.optimizer.lr, "epochs": cfg.trainer.epochs},
            {"hparam/top1": metrics["top1"], "hparam/top5": metrics["top5"]},
            run_name=".",
        )
        writer.close()
        minutes = (time.perf_counter() - started) / 60
        print(
            f"done: {cfg.trainer.epochs} epochs in {minutes:.1f} min; video top-1 {metrics['top1']:.2f}%, "
            f"top-5 {metrics['top5']:.2f}% (best top-1 {trainer.progress.best_top1:.2f}%); outputs in {run_dir}"
            + ("; note: resume=auto found no checkpoint, so this was a new run" if cfg.resume == "auto" and checkpoint is None else "")
        )
    return metrics


MODEL_SECTIONS = ("backbone", "module")


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
    """"key=requested (checkpoint: saved)" for each value under `key` that differs."""
    if not isinstance(requested, DictConfig):
        return [] if requested == saved else [f"{key}={requested} (checkpoint: {saved})"]
    old = OmegaConf.to_container(saved, resolve=True) if isinstance(saved, DictConfig) else {}
    new = OmegaConf.to_container(requested, resolve=True)
    return [f"{key}.{name}={value} (checkpoint: {old.get(name)})" for name, value in new.items() if old.get(name) != value]


def test(cfg: DictConfig, run_dir: Path, overrides: list[str]) -> dict:
    """Evaluate `cfg.ckpt` on its dataset's test split; writes metrics.json and predictions.csv."""
    if not cfg.ckpt:
        raise UserError("ckpt is not set: python test.py ckpt=outputs/<date>/<time>/best.pt")
    saved = read_checkpoint(cfg.ckpt, "ckpt")
    run_cfg = checkpoint_config(cfg, run_config_of(saved, cfg.ckpt, "ckpt"), overrides)
    check_required(run_cfg)
    device = resolve_device(run_cfg.trainer.device)
    _, test_set, annotations = make_datasets(run_cfg, progress=sys.stderr.isatty())
    classes = annotations.classes
    model = build_model(run_cfg.backbone, run_cfg.module, run_cfg.dataset.num_classes)
    try:
        model.load_state_dict(saved["model"])
    except RuntimeError:
        raise UserError(
            f"ckpt={cfg.ckpt}: its weights do not fit dataset.num_classes={run_cfg.dataset.num_classes}; "
            "evaluate on a dataset with the checkpoint's classes"
        ) from None
    model.to(device)
    if run_cfg.trainer.channels_last:
        to_channels_last(model)
    log.info(
        "evaluating on %s, precision %s%s", device, run_cfg.trainer.amp if run_cfg.trainer.amp != "off" else "float32",
        ", channels-last" if run_cfg.trainer.channels_last else "",
    )
    loader = build_loader(
        test_set, evaluation_batch_size(run_cfg), False, run_cfg.trainer.num_workers, run_cfg.seed, timeout=run_cfg.trainer.data_timeout
    )
    loader.sampler.set_epoch(0)
    try:
        scores, labels, indices, failed = predict_videos(
            model, loader, device, progress=sys.stderr.isatty(), autocast_dtype=autocast_dtype(run_cfg.trainer.amp)
        )
    except RuntimeError as error:
        failure = data_loading_failure(error, "while testing", "test again with dataset.exclude=<file>")
        if failure is None:
            raise
        raise failure from None
    metrics = video_metrics(scores, labels, classes)
    metrics.update(
        checkpoint=str(cfg.ckpt), failed_videos=failed, excluded_videos=annotations.excluded,
        missing_videos=annotations.missing,
        num_clips=run_cfg.test.num_clips, num_crops=run_cfg.test.num_crops,
    )
    write_metrics(run_dir / "metrics.json", metrics)
    with open(run_dir / "predictions.csv", "w", newline="") as handle:
        out = csv.writer(handle)
        out.writerow(["video", "label", "prediction", "score"])
        for row, index in enumerate(indices):
            best = int(scores[row].argmax())
            out.writerow([test_set.records[index].path, classes[labels[row]], classes[best], f"{scores[row, best]:.4f}"])
    print(
        f"test: {metrics['num_videos']} videos ({run_cfg.test.num_clips} clips x {run_cfg.test.num_crops} crops): "
        f"video top-1 {metrics['top1']:.2f}%, top-5 {metrics['top5']:.2f}%, mean class {metrics['mean_class_accuracy']:.2f}%"
        + (f"; {len(failed)} undecodable videos excluded" if failed else "")
        + f"; results in {run_dir}"
    )
    return metrics
