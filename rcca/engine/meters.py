"""Running sums of training micro-batches between two log points, and the averages the training log reports."""

from __future__ import annotations

from time import perf_counter

import torch
from torch import Tensor


class TrainingMeter:
    """Loss, top-1/top-5 hits, clips and time spent waiting for data, summed since the last `reset`.

    The loss and hit sums stay where the micro-batches' values are (on the GPU in GPU training): adding a
    micro-batch never waits for the device. They reach the host once per log point, when an average (or a
    sum) is first read after an update.

    Attributes:
        clips: clips seen.
        data_wait: seconds spent waiting for the data loader.
        start: when the sums started (`time.perf_counter`).
    """

    def __init__(self) -> None:
        """Start with empty sums, timed from now."""
        self.reset()

    def reset(self) -> None:
        """Empty the sums and restart the clock."""
        self._sums: Tensor | None = None  # float64 [loss x clips, top-1 hits, top-5 hits], where the updates are
        self._read: tuple[float, float, float] | None = (0.0, 0.0, 0.0)  # `_sums` on the host (None: not read yet)
        self.clips = 0
        self.data_wait = 0.0
        self.start = perf_counter()

    def update(
        self,
        *,
        loss: Tensor | float,
        correct1: Tensor | int,
        correct5: Tensor | int,
        clips: int,
        data_wait: float,
    ) -> None:
        """Add one micro-batch; tensors are added where they are, without reading them.

        Args:
            loss: its mean loss per clip (a number, or a tensor of one value on any device).
            correct1: its clips with the label as top-scoring class (likewise).
            correct5: its clips with the label among the 5 top-scoring classes (likewise).
            clips: its size.
            data_wait: seconds spent waiting for it.
        """
        # float64, as Python numbers: the sums (and so the logged averages) are those of adding them on the host.
        loss, correct1, correct5 = (torch.as_tensor(value, dtype=torch.float64) for value in (loss, correct1, correct5))
        sums = torch.stack([loss.reshape(()) * clips, correct1.reshape(()), correct5.reshape(())])
        self._sums = sums if self._sums is None else self._sums + sums
        self._read = None
        self.clips += clips
        self.data_wait += data_wait

    def _host_sums(self) -> tuple[float, float, float]:
        """The loss and hit sums as Python numbers: read from the device once after each update."""
        if self._read is None:
            loss_sum, correct1, correct5 = self._sums.tolist()
            self._read = (loss_sum, correct1, correct5)
        return self._read

    @property
    def loss_sum(self) -> float:
        """The sum over clips of the loss (each micro-batch's mean loss x its clips)."""
        return self._host_sums()[0]

    @property
    def correct1(self) -> int:
        """Clips whose label was the top-scoring class."""
        return round(self._host_sums()[1])

    @property
    def correct5(self) -> int:
        """Clips whose label was among the 5 top-scoring classes."""
        return round(self._host_sums()[2])

    @property
    def loss(self) -> float:
        """The mean loss per clip (0 before any clip)."""
        return self.loss_sum / max(1, self.clips)

    @property
    def top1(self) -> float:
        """Top-1 accuracy over the clips, in percent (0 before any clip)."""
        return 100.0 * self.correct1 / max(1, self.clips)

    @property
    def top5(self) -> float:
        """Top-5 accuracy over the clips, in percent (0 before any clip)."""
        return 100.0 * self.correct5 / max(1, self.clips)

    def elapsed(self) -> float:
        """Seconds since the sums started (never 0, so rates are defined)."""
        return max(perf_counter() - self.start, 1e-9)

    def clips_per_s(self, world_size: int = 1) -> float:
        """Training throughput since the sums started.

        Args:
            world_size: processes that each saw as many clips as this one.

        Returns:
            Clips per second over all processes.
        """
        return self.clips * world_size / self.elapsed()

    def data_wait_fraction(self) -> float:
        """The share of the time since the sums started that was spent waiting for data."""
        return self.data_wait / self.elapsed()
