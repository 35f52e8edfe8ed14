"""A trained model outside its run: a checkpoint read into a ready model with its run config and class
names, and videos read into the views the model is evaluated on (`test.*`, as `test.py` makes them).

The scripts that look at single videos or ship a model (`scripts/predict.py`, `scripts/visualize.py`,
`scripts/export.py`) start here, so they need no dataset: an rcca checkpoint holds its model config and
class names. Official TSM / TSN / MF-Net releases are read through `rcca.models.convert` with the model
named on the command line (`ckpt_format=tsm experiment=paper_tsm dataset=kinetics400`).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import torch
from hydra.core.override_parser.overrides_parser import OverridesParser
from omegaconf import DictConfig, OmegaConf
from torch import Tensor, nn

from rcca.config import INIT_FORMATS, Config, compose_config, validate_config
from rcca.data.annotations import VIDEO_SUFFIXES, VideoRecord, read_class_names
from rcca.data.build import build_test_dataset, clip_sampling
from rcca.data.datasets import VideoDataset
from rcca.engine.checkpoints import RunCheckpoint, read_checkpoint, read_run_checkpoint
from rcca.engine.runtime import apply_thread_policy, resolve_device
from rcca.errors import UserError
from rcca.models.build import build_model, to_channels_last
from rcca.models.convert import load_pretrained

log = logging.getLogger("rcca")

MODEL_SECTIONS = ("backbone", "module")  # taken from the checkpoint, never from the command line


@dataclass
class TrainedModel:
    """A checkpoint's model, ready for inference.

    Attributes:
        model: the network in eval mode, on `device`, channels-last when the run was.
        config: the run config: the checkpoint's, with what the command line changed (`test.*`,
            `data.*`, `trainer.device`, ...); for an official release, the command line's.
        classes: the class names in label order.
        device: where the model is.
        workers: the data-loading processes the thread policy left cores for.
    """

    model: nn.Module
    config: DictConfig
    classes: list[str]
    device: torch.device
    workers: int = 0

    def input_shape(self, clips: int = 1) -> tuple[int, int, int, int, int]:
        """The shape of a batch of `clips` clips: N x 3 x T x crop x crop."""
        crop = self.config.data.crop_size
        return (clips, 3, self.config.backbone.num_frames, crop, crop)


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
                    f"{override.input_line}: the checkpoint's own model is used, and this asks for another "
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


def checkpoint_model(run_cfg: DictConfig, checkpoint: RunCheckpoint, device: torch.device) -> nn.Module:
    """The checkpoint's model with its weights, on `device`, channels-last as the run config says."""
    model = build_model(run_cfg.backbone, run_cfg.module, run_cfg.dataset.num_classes)
    try:
        model.load_state_dict(checkpoint.model)
    except RuntimeError:
        raise UserError(
            f"ckpt={run_cfg.ckpt}: its weights do not fit dataset.num_classes={run_cfg.dataset.num_classes}; "
            "evaluate on a dataset with the checkpoint's classes"
        ) from None
    return placed(model, run_cfg, device)


def placed(model: nn.Module, run_cfg: DictConfig, device: torch.device) -> nn.Module:
    """`model` on `device`, channels-last when `trainer.channels_last`, with a log line saying so."""
    model.to(device)
    if run_cfg.trainer.channels_last:
        to_channels_last(model)
    precision = run_cfg.trainer.amp if run_cfg.trainer.amp != "off" else "float32"
    layout = ", channels-last" if run_cfg.trainer.channels_last else ""
    log.info("evaluating on %s, precision %s%s", device, precision, layout)
    return model


def load_trained_model(
    ckpt: str, overrides: list[str], ckpt_format: str = "rcca", max_workers: int = 0
) -> TrainedModel:
    """Read a checkpoint into a model ready for inference, with the thread policy applied.

    Args:
        ckpt: the checkpoint file: a last.pt / best.pt of an rcca run, or an official release.
        overrides: Hydra overrides of the run config (`test.num_clips=10`, `trainer.device=cpu`). For an
            rcca checkpoint the model comes from the checkpoint and an override asking for another is
            refused (as in `test.py`); for an official release they name the model.
        ckpt_format: "rcca", or the release's format ("tsm", "tsn", "mfnet"; see `rcca.models.convert`).
        max_workers: the most data-loading processes the caller can use; it gets `trainer.num_workers` of
            them at most (`TrainedModel.workers`), and the thread policy leaves those their cores.

    Raises:
        UserError: one line, for a bad override, an unreadable or unfitting checkpoint, or a format
            that does not exist.
    """
    if ckpt_format not in INIT_FORMATS:
        raise UserError(f"ckpt_format={ckpt_format}: choose one of {', '.join(INIT_FORMATS)}")
    cfg = compose_config(overrides)
    if ckpt_format == "rcca":
        checkpoint = read_run_checkpoint(ckpt, "ckpt")
        run_cfg = checkpoint_config(cfg, checkpoint.config, overrides)
        run_cfg.ckpt = ckpt
        validate_config(run_cfg)
        device = resolve_device(run_cfg.trainer.device)
        model = checkpoint_model(run_cfg, checkpoint, device)
        classes = checkpoint.classes or generic_class_names(run_cfg.dataset.num_classes)
    else:
        run_cfg = cfg
        run_cfg.ckpt = ckpt
        validate_config(run_cfg)
        device = resolve_device(run_cfg.trainer.device)
        model = release_model(run_cfg, ckpt, ckpt_format, device)
        names = run_cfg.dataset.class_names
        classes = read_class_names(names, run_cfg.dataset.num_classes) if names else None
        classes = classes or generic_class_names(run_cfg.dataset.num_classes)
    workers = min(run_cfg.trainer.num_workers, max_workers)
    apply_thread_policy(run_cfg.trainer.threads, workers)
    return TrainedModel(model.eval(), run_cfg, list(classes), device, workers)


def release_model(run_cfg: DictConfig, ckpt: str, ckpt_format: str, device: torch.device) -> nn.Module:
    """The configured model filled with an official release's weights; every tensor must come from the file."""
    model = build_model(run_cfg.backbone, run_cfg.module, run_cfg.dataset.num_classes)
    where = f"ckpt={ckpt}"
    try:
        report = load_pretrained(model, read_checkpoint(ckpt, "ckpt"), ckpt_format, where)
    except ValueError as error:
        raise UserError(str(error)) from None
    if report.new or report.skipped:
        missing = (report.new or report.skipped)[0]
        raise UserError(
            f"{where}: the configured model does not match the file ({len(report.new)} of its tensors are not in it, "
            f"{len(report.skipped)} of the file's do not fit, e.g. {missing}); name the release's model "
            "(backbone, module, dataset.num_classes) on the command line"
        )
    return placed(model, run_cfg, device)


def generic_class_names(count: int) -> list[str]:
    """Names for classes whose real names are unknown: "class 0", "class 1", ..."""
    return [f"class {index}" for index in range(count)]


def video_paths(path: str | Path) -> list[Path]:
    """The video given, or the videos in the folder given and its subfolders (by file suffix, sorted by path).

    Raises:
        UserError: one line, when the path does not exist or the folder holds no video.
    """
    path = Path(path)
    if path.is_file():
        return [path]
    if not path.is_dir():
        raise UserError(f"video={path}: no such file or folder; give a video file or a folder of videos")
    videos = sorted(p for p in path.rglob("*") if p.is_file() and p.suffix.lower() in VIDEO_SUFFIXES)
    if not videos:
        suffixes = " ".join(sorted(VIDEO_SUFFIXES))
        raise UserError(f"video={path}: the folder holds no video (files ending in {suffixes}); give another folder")
    return videos


def video_dataset(trained: TrainedModel, videos: list[Path]) -> VideoDataset:
    """The test views of `videos` as `test.py` makes them: `test.num_clips` clips x `test.num_crops` crops each.

    An undecodable video comes back with `ok = False` (and zero views of the right shape), however
    many of the others decode.
    """
    cfg = trained.config
    records = [VideoRecord(str(path.resolve()), -1) for path in videos]  # absolute paths: the root is unused
    views = cfg.test.num_clips * cfg.test.num_crops
    return build_test_dataset(
        Path("/"),
        records,
        clip_sampling(cfg.backbone),
        cfg.dataset,
        cfg.test,
        cfg.data.crop_size,
        cfg.seed,
        view_shape=(views, *trained.input_shape()[1:]),
    )


def read_views(trained: TrainedModel, video: Path) -> Tensor:
    """The V = clips x crops test views of one video, V x 3 x T x crop x crop.

    Raises:
        UserError: one line, when the decoder cannot read the video.
    """
    item = video_dataset(trained, [video])[0]
    if not item["ok"]:
        raise UserError(f"video={video}: cannot be decoded ({item['reason']}); check the file, or dataset.backend")
    return item["clip"]
