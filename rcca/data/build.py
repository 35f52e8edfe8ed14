"""From a dataset config to checked annotations, datasets and data loaders."""

from __future__ import annotations

import logging
import os
import signal
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader

from rcca.config import DatasetConfig
from rcca.data.annotations import Annotations, AnnotationError, VideoRecord, load_annotations
from rcca.data.datasets import VideoDataset
from rcca.data.samplers import EpochSampler
from rcca.data.sampling import sample_test_clips, sample_train_clip
from rcca.data.synthetic import SyntheticSpec, ensure_synthetic_dataset
from rcca.data.transforms import build_test_transform, build_train_transform
from rcca.errors import UserError

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ClipSampling:
    """How clips are cut from a video: `sampling` (segment|dense), frames per clip, dense step."""

    sampling: str
    num_frames: int
    interval: int = 1

    def train_indices(self, num_video_frames: int, rng: np.random.Generator) -> list[int]:
        return sample_train_clip(num_video_frames, self.sampling, self.num_frames, self.interval, rng)

    def test_indices(self, num_video_frames: int, rng: np.random.Generator, num_clips: int) -> list[int]:
        """All test clips' indices, concatenated; deterministic (`rng` is part of the sampler signature only)."""
        clips = sample_test_clips(num_video_frames, num_clips, self.sampling, self.num_frames, self.interval)
        return [i for clip in clips for i in clip]


def read_annotations(cfg: DatasetConfig, progress: bool = True) -> tuple[Path, Annotations]:
    """Parse (or, for the synthetic set, generate) the annotations; check the root and class count.

    Returns the video root and the annotations, missing videos included. Raises UserError
    with one line for a missing root, unreadable annotations or a class-count mismatch.
    """
    root = Path(cfg.root)
    if cfg.name == "synthetic":
        spec = SyntheticSpec(**{k: getattr(cfg.synthetic, k) for k in SyntheticSpec.__dataclass_fields__})
        root = ensure_synthetic_dataset(root, spec, progress=progress)
        kwargs = {"train_list": root / "train.txt", "test_list": root / "test.txt",
                  "class_names": (root / "classes.txt").read_text().split()}
        name = "video_list"
    elif not root.is_dir():
        problem = " is a file, not a folder" if root.exists() else ": folder not found"
        raise UserError(f"dataset.root={root}{problem}; set dataset.root to the folder holding the videos")
    else:
        name, kwargs = cfg.name, _annotation_arguments(cfg)
    try:
        annotations = load_annotations(name, **kwargs)
    except AnnotationError as error:
        raise UserError(str(error)) from None
    if len(annotations.classes) != cfg.num_classes:
        raise UserError(
            f"dataset.num_classes={cfg.num_classes} but the annotations define {len(annotations.classes)} classes; "
            "fix dataset.num_classes"
        )
    return root, annotations


def missing_videos(root: Path, records: list[VideoRecord]) -> list[str]:
    """Paths of the listed videos (files, or frame folders) that do not exist under `root`."""
    return [r.path for r in records if not (root / r.path).exists()]


def load_dataset(cfg: DatasetConfig, progress: bool = True) -> tuple[Path, Annotations]:
    """`read_annotations`, less the videos of `dataset.exclude`; then stop on missing videos
    (or drop them with `dataset.allow_missing`, recording them in `annotations.missing`)."""
    root, annotations = read_annotations(cfg, progress)
    if cfg.exclude:
        exclude_videos(annotations, Path(cfg.exclude))
    annotations.train, missing_train = _drop_missing(root, annotations.train, cfg.allow_missing, "train")
    annotations.test, missing_test = _drop_missing(root, annotations.test, cfg.allow_missing, "test")
    annotations.missing = sorted(set(missing_train + missing_test))
    return root, annotations


def exclude_videos(annotations: Annotations, exclude_file: Path) -> None:
    """Drop the videos listed in `exclude_file` from both splits, in place, recording them in `annotations.excluded`."""
    listed = read_exclude_list(exclude_file)
    before = {"train": annotations.train, "test": annotations.test}
    annotations.train = [r for r in annotations.train if r.path not in listed]
    annotations.test = [r for r in annotations.test if r.path not in listed]
    annotations.excluded = sorted({r.path for records in before.values() for r in records if r.path in listed})
    log.info(
        "dataset.exclude=%s: left out %d train and %d test videos", exclude_file,
        len(before["train"]) - len(annotations.train), len(before["test"]) - len(annotations.test),
    )
    unknown = sorted(set(listed) - set(annotations.excluded))
    if unknown:
        log.warning("dataset.exclude=%s: %d paths match no listed video (first: %s)", exclude_file, len(unknown), unknown[0])


EXCLUDE_HEADER = "# dataset.exclude list (scripts/inspect_dataset.py): video path, tab, reason\n"


def read_exclude_list(path: Path) -> dict[str, str]:
    """{video path: note} of an exclude file.

    One path per line, as the annotations list it; a tab ends the path and starts an optional
    note (inspect_dataset writes the reason there). Lines starting with `#` are comments.
    """
    if not path.is_file():
        raise UserError(
            f"dataset.exclude={path}: file not found; write it with scripts/inspect_dataset.py --decode --write-exclude"
        )
    entries: dict[str, str] = {}
    for line in path.read_text().splitlines():
        if line.strip() and not line.lstrip().startswith("#"):
            video, _, note = line.partition("\t")
            entries[video.strip()] = note.strip()
    return entries


def write_exclude_list(path: Path, entries: dict[str, str]) -> None:
    """Write {video path: note} in the format `read_exclude_list` reads, under the line `EXCLUDE_HEADER`.

    The file is replaced whole (a temporary file in the same folder, then renamed): a write
    that fails leaves the previous list.
    """
    text = EXCLUDE_HEADER + "".join(f"{video}\t{note}\n" if note else f"{video}\n" for video, note in sorted(entries.items()))
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with open(tmp, "w") as handle:
            handle.write(text)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def _annotation_arguments(cfg: DatasetConfig) -> dict:
    """The keyword arguments of the dataset's annotation loader, from the config."""
    if cfg.name == "video_list":
        if not cfg.train_list or not cfg.test_list:
            raise UserError("dataset.train_list and dataset.test_list must both be set for dataset=video_list")
        return {"train_list": Path(cfg.train_list), "test_list": Path(cfg.test_list), "num_classes": cfg.num_classes}
    if not cfg.annotations:
        raise UserError(f"dataset.annotations is not set: point it at the {cfg.name} split/annotation folder")
    kwargs: dict = {"annotations_dir": Path(cfg.annotations)}
    if cfg.name in ("ucf101", "hmdb51"):
        kwargs["split"] = cfg.split
    if cfg.name in ("kinetics400", "mini_kinetics200"):
        kwargs["layout"] = cfg.layout
    return kwargs


def _drop_missing(
    root: Path, records: list[VideoRecord], allow_missing: bool, split: str
) -> tuple[list[VideoRecord], list[str]]:
    """Check every listed video exists; stop, or with allow_missing drop the missing ones.

    Returns the records kept and the paths dropped.
    """
    missing = missing_videos(root, records)
    if not missing:
        return records, []
    if not allow_missing:
        raise UserError(
            f"{len(missing)} of {len(records)} {split} videos are missing under dataset.root={root} "
            f"(first: {', '.join(missing[:3])}); fix the root or set dataset.allow_missing=true"
        )
    log.warning("dropping %d missing %s videos (dataset.allow_missing=true), first: %s", len(missing), split, missing[:3])
    absent = set(missing)
    return [r for r in records if r.path not in absent], missing


def build_datasets(
    root: Path,
    annotations: Annotations,
    backend: str,
    clip: ClipSampling,
    crop_size: int,
    scales: list[float],
    flip: bool,
    resize_short: int,
    num_clips: int,
    num_crops: int,
    seed: int,
) -> tuple[VideoDataset, VideoDataset]:
    """The training dataset (one random clip, augmented) and the test dataset (all views)."""
    train_transform = build_train_transform(crop_size, scales, flip)
    train = VideoDataset(root, annotations.train, backend, clip.train_indices, train_transform, seed=seed)
    test = VideoDataset(
        root,
        annotations.test,
        backend,
        partial(clip.test_indices, num_clips=num_clips),
        build_test_transform(resize_short, crop_size, num_crops),
        clips_per_video=num_clips,
        replace_failed=False,
        seed=seed,
    )
    return train, test


def leave_stop_signals_to_main(worker_id: int) -> None:
    """DataLoader worker start-up: Ctrl-C and SLURM's warning signals are for the main process.

    A terminal's Ctrl-C and SLURM's `--signal` / submitit warnings reach every process of a job at
    once; workers ignore SIGINT, SIGUSR1 and SIGUSR2, and the main process stops after its current
    update. SIGTERM keeps PyTorch's worker handler, so workers always end when told to; a job-wide
    SIGTERM ends them, and the trainer then saves the state of its last complete update.
    """
    for stop in (signal.SIGINT, signal.SIGUSR1, signal.SIGUSR2):
        signal.signal(stop, signal.SIG_IGN)


def build_loader(
    dataset: VideoDataset,
    batch_size: int,
    train: bool,
    num_workers: int,
    seed: int,
    rank: int = 0,
    world_size: int = 1,
    timeout: float = 0.0,
) -> DataLoader:
    """A DataLoader over this process's share of the dataset (see `EpochSampler`).

    Training shuffles per epoch and drops the last incomplete batch; testing keeps every
    video (padding repeats, which evaluation counts once). Call
    `loader.sampler.set_epoch(epoch, start)` before each epoch. With workers, `timeout` (seconds,
    0 = none) turns a worker stuck on one batch (a hung decoder) into an error instead of a hang.
    """
    sampler = EpochSampler(len(dataset), shuffle=train, seed=seed, rank=rank, world_size=world_size)
    return DataLoader(
        dataset,
        batch_size=batch_size,
        sampler=sampler,
        num_workers=num_workers,
        pin_memory=torch.cuda.is_available(),
        persistent_workers=num_workers > 0,
        drop_last=train,
        generator=torch.Generator().manual_seed(seed),
        timeout=timeout if num_workers > 0 else 0.0,
        worker_init_fn=leave_stop_signals_to_main,
    )
