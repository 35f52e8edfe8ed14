"""From a dataset config to checked annotations, datasets and data loaders."""

from __future__ import annotations

import logging
import os
import signal
from collections.abc import Iterator
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader
from torch.utils.data import dataloader as dataloader_module
from torch.utils.data._utils import signal_handling

from rcca.config import BackboneConfig, DataConfig, DatasetConfig, SyntheticConfig, TestConfig
from rcca.data.annotations import Annotations, AnnotationError, VideoRecord, load_annotations
from rcca.data.datasets import VideoDataset
from rcca.data.samplers import EpochSampler
from rcca.data.sampling import sample_test_clips, sample_train_clip
from rcca.data.synthetic import TASKS, SyntheticSpec, ensure_synthetic_dataset
from rcca.data.transforms import build_test_transform, build_train_transform
from rcca.errors import DataLoadingFailed, UserError

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


def clip_sampling(backbone: BackboneConfig) -> ClipSampling:
    """The clips the configured model takes: the one place where the model config decides which frames the
    data code reads (`backbone.num_frames`, `backbone.sampling`, `backbone.frame_interval`: TSM's 8 uniform
    segments, MF-Net's 16 dense frames)."""
    return ClipSampling(backbone.sampling, backbone.num_frames, backbone.frame_interval)


def read_annotations(cfg: DatasetConfig, progress: bool = True) -> tuple[Path, Annotations]:
    """Parse (or, for a generated set, generate) the annotations; check the root and class count.

    Returns the video root and the annotations, missing videos included. Raises UserError
    with one line for a missing root, unreadable annotations or a class-count mismatch.
    """
    root = Path(cfg.root)
    if cfg.name in TASKS:
        spec = SyntheticSpec(cfg.name, **{k: getattr(cfg.synthetic, k) for k in SyntheticConfig.__dataclass_fields__})
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


SPLITS = ("train", "test")


def load_dataset(
    cfg: DatasetConfig, splits: tuple[str, ...] = SPLITS, progress: bool = True
) -> tuple[Path, Annotations]:
    """`read_annotations`, less the videos of `dataset.exclude`; then stop on missing videos of `splits`
    (or drop them with `dataset.allow_missing`, recording them in `annotations.missing`).

    Only the videos of `splits` need to exist: `test.py` passes `("test",)`, so a machine that holds
    just the test videos can evaluate (the other split's records are kept, unchecked).
    """
    root, annotations = read_annotations(cfg, progress)
    if cfg.exclude:
        exclude_videos(annotations, Path(cfg.exclude))
    missing: list[str] = []
    for split in splits:
        kept, dropped = _drop_missing(root, getattr(annotations, split), cfg.allow_missing, split)
        setattr(annotations, split, kept)
        missing += dropped
    annotations.missing = sorted(set(missing))
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
        return {"train_list": Path(cfg.train_list), "test_list": Path(cfg.test_list), "num_classes": cfg.num_classes,
                "class_names_file": cfg.class_names}
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


def build_train_dataset(
    root: Path, records: list[VideoRecord], clip: ClipSampling, dataset: DatasetConfig, data: DataConfig, seed: int
) -> VideoDataset:
    """The training dataset: one random clip per video, multi-scale cropped to `data.crop_size`, flipped
    when `dataset.flip`, read with `dataset.backend`."""
    transform = build_train_transform(data.crop_size, list(data.scales), dataset.flip)
    return VideoDataset(root, records, dataset.backend, clip.train_indices, transform, seed=seed)


def build_test_dataset(
    root: Path, records: list[VideoRecord], clip: ClipSampling, dataset: DatasetConfig, views: TestConfig,
    crop_size: int, seed: int, view_shape: tuple[int, ...] | None = None,
) -> VideoDataset:
    """The test dataset: `views.num_clips` clips x `views.num_crops` crops of `crop_size` per video, after a
    short-side resize to `views.resize_short`; undecodable videos are reported, not replaced (with zero views
    of `view_shape`, by default that of the first video that decodes)."""
    return VideoDataset(
        root,
        records,
        dataset.backend,
        partial(clip.test_indices, num_clips=views.num_clips),
        build_test_transform(views.resize_short, crop_size, views.num_crops),
        clips_per_video=views.num_clips,
        replace_failed=False,
        seed=seed,
        view_shape=view_shape,
    )


# Host memory of one evaluation batch: 64 views of 8 x 224 x 224 float32 clips, about 300 MB. (Device memory is
# bounded separately, by the views per forward pass: rcca.engine.evaluation.VIEWS_PER_FORWARD.)
MAX_VIEWS_PER_BATCH = 64


def evaluation_batch_size(views: TestConfig) -> int:
    """Videos per evaluation batch: `test.batch_size`, lowered so that a batch holds at most 64 views."""
    per_video = views.num_clips * views.num_crops
    size = max(1, min(views.batch_size, MAX_VIEWS_PER_BATCH // per_video))
    if size < views.batch_size:
        log.info("evaluating %d videos per batch (%d views each) to bound host memory", size, per_video)
    return size


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
) -> VideoLoader:
    """A `VideoLoader` over this process's share of the dataset (see `EpochSampler`).

    Training shuffles per epoch and drops the last incomplete batch; testing keeps every
    video (padding repeats, which evaluation counts once). Call
    `loader.sampler.set_epoch(epoch, start)` before each epoch. With workers, `timeout` (seconds,
    0 = none) turns a worker stuck on one batch (a hung decoder) into an error instead of a hang.
    """
    sampler = EpochSampler(len(dataset), shuffle=train, seed=seed, rank=rank, world_size=world_size)
    return VideoLoader(
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


# Where PyTorch raises a worker's death or a timeout (not an error raised inside a worker, which it re-raises
# from torch/_utils.py as the worker's own exception type).
_LOADER_MACHINERY = frozenset(Path(module.__file__).resolve() for module in (dataloader_module, signal_handling))


class VideoLoader(DataLoader):
    """A DataLoader whose iteration reports a worker that died (a decoder crash) or timed out (a hung decoder)
    as `DataLoadingFailed`, a one-line user error; every other error keeps its type and traceback.

    A worker's death can also surface outside the iteration (PyTorch's SIGCHLD handler raises wherever the
    main process is, e.g. in a forward pass): callers that run other work between batches check such
    errors with `loading_failure`.
    """

    def __iter__(self) -> Iterator:
        batches = super().__iter__()
        while True:
            try:
                batch = next(batches)
            except StopIteration:
                return
            except RuntimeError as error:
                failure = loading_failure(error)
                if failure is None:
                    raise
                raise failure from error
            yield batch


def loading_failure(error: BaseException) -> DataLoadingFailed | None:
    """The `DataLoadingFailed` for an error PyTorch's DataLoader raised about its workers (one died or timed
    out), or None for any other error, including one raised inside a worker (re-raised as its own type).

    Told apart by where the error was raised, not by its message: the innermost frame is PyTorch's
    DataLoader iterator or its worker-failure signal handler.
    """
    if isinstance(error, DataLoadingFailed):
        return error
    frame = error.__traceback__
    if not isinstance(error, RuntimeError) or frame is None:
        return None
    while frame.tb_next is not None:
        frame = frame.tb_next
    if Path(frame.tb_frame.f_code.co_filename).resolve() not in _LOADER_MACHINERY:
        return None
    return DataLoadingFailed(
        f"data loading failed ({str(error).splitlines()[0]}). A video that crashes or hangs the decoder does it "
        "on every run: find such videos with scripts/inspect_dataset.py --decode --write-exclude <file> <overrides>"
    )
