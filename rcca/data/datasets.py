"""The video dataset: annotation records -> sampled frames -> transformed clips.

One class serves training and testing; what differs is passed in: which frames to read
(`choose_indices`), how many clips they make (`clips_per_video`) and the transform.
Randomness (frame offsets, crops, flips, replacements) is seeded per sample from
(seed, epoch, index), so a sample's clip does not depend on which worker loads it or on
where a resumed run starts. A video that cannot be decoded never stops a run: in training it is replaced by another
video and reported in the sample's `failed` field; in testing the sample is marked
`ok = False` so that evaluation excludes and lists it. The dataset logs nothing about such
videos (each DataLoader worker would log them again): the trainer and evaluation report `failed`.
Only a dataset that looks unreadable as a whole stops the run, with a `UserError` naming the
settings to check: MAX_ATTEMPTS videos in a row failing in training, or none decodable in testing.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import Dataset

from rcca.data.annotations import VideoRecord
from rcca.data.decoding import DecodeError, read_frames, resolve_backend
from rcca.errors import UserError

IndexSampler = Callable[[int, np.random.Generator], list[int]]

MAX_ATTEMPTS = 10  # training: videos tried in a row for one sample (the first, then replacements) before giving up
TORCH_SEED_BOUND = 2**62  # each sample seeds torch's RNG (for the transforms) with a draw from [0, TORCH_SEED_BOUND)


class VideoDataset(Dataset):
    """Clips of the videos listed in `records`, read from `root`.

    Args:
        root: folder the record paths are relative to.
        records: the videos and their labels.
        backend: decord, pyav or frames (see `rcca.data.decoding`); decord becomes pyav where
            it cannot be imported, decided here, once, before any worker process starts.
        choose_indices: (number of frames in the video, rng) -> frame indices to read;
            clips_per_video clips of equal length, concatenated.
        transform: one clip T x C x H x W uint8 -> C x T x H x W float (training) or
            V x C x T x H x W (testing, V crops).
        clips_per_video: how many clips `choose_indices` returns per video.
        replace_failed: training behaviour for undecodable videos (replace them); when
            False (testing) they come back with `ok = False` and zero pixels.
        view_shape: the shape of a good video's clip (V x C x T x H x W), for those zero pixels;
            None: taken from the first video that decodes.

    Each item is a dict: `clip` (C x T x H x W in training; V x C x T x H x W in testing with
    V = clips_per_video x crops), `label`, `index`, `ok`, `failed` (path of the video that
    could not be decoded: replaced in training, or ""), `reason` (why: the `DecodeError`, or "").
    """

    def __init__(
        self,
        root: Path,
        records: list[VideoRecord],
        backend: str,
        choose_indices: IndexSampler,
        transform: Callable[[Tensor], Tensor],
        clips_per_video: int = 1,
        replace_failed: bool = True,
        seed: int = 0,
        view_shape: tuple[int, ...] | None = None,
    ) -> None:
        self.root = Path(root)
        self.records = records
        self.backend = resolve_backend(backend)
        self.choose_indices = choose_indices
        self.transform = transform
        self.clips_per_video = clips_per_video
        self.replace_failed = replace_failed
        self.seed = seed
        self._view_shape = view_shape

    def __len__(self) -> int:
        return len(self.records)

    def _load(self, index: int, rng: np.random.Generator) -> Tensor:
        record = self.records[index]
        frames = read_frames(self.root / record.path, lambda n: self.choose_indices(n, rng), self.backend)
        with torch.random.fork_rng(devices=[]):  # the transforms draw from torch's RNG: seed it, then restore
            torch.manual_seed(int(rng.integers(TORCH_SEED_BOUND)))
            views = [self.transform(clip) for clip in frames.chunk(self.clips_per_video)]
        return views[0] if len(views) == 1 else torch.cat(views)  # testing: V x C x T x H x W each

    def __getitem__(self, key: int | tuple[int, int]) -> dict:
        """`key` is an index or an (epoch, index) pair from `EpochSampler`."""
        epoch, index = key if isinstance(key, tuple) else (0, key)
        rng = np.random.default_rng([self.seed, epoch, index])
        failed = reason = ""
        for _ in range(MAX_ATTEMPTS):
            try:
                clip = self._load(index, rng)
                return {"clip": clip, "label": self.records[index].label, "index": index, "ok": True,
                        "failed": failed, "reason": reason}
            except DecodeError as error:
                failed, reason = failed or self.records[index].path, reason or str(error)
                if not self.replace_failed:
                    break
                index = int(rng.integers(len(self.records)))
        if self.replace_failed:
            raise UserError(f"{MAX_ATTEMPTS} videos in a row failed to decode under {self.root}: "
                            "check dataset.root and dataset.backend")
        return {"clip": self._placeholder(), "label": self.records[index].label, "index": index, "ok": False,
                "failed": failed, "reason": reason}

    def _placeholder(self) -> Tensor:
        """Zero views with the shape a good video would have, so batches still collate."""
        if self._view_shape is None:
            for probe in range(len(self.records)):
                try:
                    self._view_shape = self._load(probe, np.random.default_rng(0)).shape
                    break
                except DecodeError:
                    continue
            else:
                raise UserError(f"no video under {self.root} could be decoded: "
                                "check dataset.root and dataset.backend")
        return torch.zeros(self._view_shape)
