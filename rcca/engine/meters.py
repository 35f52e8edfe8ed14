"""Running sums of training micro-batches between two log points, and the averages the training log reports."""

from __future__ import annotations

from time import perf_counter


class TrainingMeter:
    """Loss, top-1/top-5 hits, clips and time spent waiting for data, summed since the last `reset`.

    Attributes:
        loss_sum: the sum over clips of the loss (each micro-batch's mean loss x its clips).
        correct1: clips whose label was the top-scoring class.
        correct5: clips whose label was among the 5 top-scoring classes.
        clips: clips seen.
        data_wait: seconds spent waiting for the data loader.
        start: when the sums started (`time.perf_counter`).
    """

    def __init__(self) -> None:
        """Start with empty sums, timed from now."""
        self.reset()

    def reset(self) -> None:
        """Empty the sums and restart the clock."""
        self.loss_sum = 0.0
        self.correct1 = 0
        self.correct5 = 0
        self.clips = 0
        self.data_wait = 0.0
        self.start = perf_counter()

    def update(self, *, loss: float, correct1: int, correct5: int, clips: int, data_wait: float) -> None:
        """Add one micro-batch.

        Args:
            loss: its mean loss per clip.
            correct1: its clips with the label as top-scoring class.
            correct5: its clips with the label among the 5 top-scoring classes.
            clips: its size.
            data_wait: seconds spent waiting for it.
        """
        self.loss_sum += loss * clips
        self.correct1 += correct1
        self.correct5 += correct5
        self.clips += clips
        self.data_wait += data_wait

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
