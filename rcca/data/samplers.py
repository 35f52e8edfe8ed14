"""A resumable, distributed-aware sampler that tells each sample which epoch it belongs to."""

from __future__ import annotations

from collections.abc import Iterator

import torch
from torch.utils.data import Sampler

# Shuffle seed of an epoch: seed * SEED_STRIDE + epoch. Above any epoch count, so distinct (seed, epoch)
# pairs get distinct orders (with seed + epoch, seed 1 epoch 0 would replay seed 0 epoch 1).
SEED_STRIDE = 100_003


class EpochSampler(Sampler[tuple[int, int]]):
    """Yields (epoch, index) pairs: this process's share of one epoch's order.

    The order is a permutation seeded by (seed, epoch) when shuffling, else 0..n-1. With
    several processes the order is padded with its first items to a multiple of
    `world_size` and process r takes items r, r + world_size, ... (like DistributedSampler).
    `start` skips this process's first items, to resume in the middle of an epoch.
    Passing the epoch along lets the dataset seed each sample from (seed, epoch, index),
    so a resumed run sees exactly the clips and augmentations of an uninterrupted one.
    """

    def __init__(self, size: int, shuffle: bool, seed: int = 0, rank: int = 0, world_size: int = 1) -> None:
        self.size = size
        self.shuffle = shuffle
        self.seed = seed
        self.rank = rank
        self.world_size = world_size
        self.epoch = 0
        self.start = 0

    def set_epoch(self, epoch: int, start: int = 0) -> None:
        self.epoch, self.start = epoch, start

    def _order(self) -> list[int]:
        if self.shuffle:
            generator = torch.Generator().manual_seed(self.seed * SEED_STRIDE + self.epoch)
            order = torch.randperm(self.size, generator=generator).tolist()
        else:
            order = list(range(self.size))
        padding = (-len(order)) % self.world_size
        return (order + order[:padding])[self.rank :: self.world_size]

    def __iter__(self) -> Iterator[tuple[int, int]]:
        for index in self._order()[self.start :]:
            yield self.epoch, index

    def __len__(self) -> int:
        return -(-self.size // self.world_size) - self.start
