"""The training meter: averages weighted by clips, rates over its own clock, and a reset that empties it."""

from __future__ import annotations

import pytest
import torch

from rcca.engine import meters
from rcca.engine.meters import TrainingMeter


def test_averages_weight_each_micro_batch_by_its_clips(monkeypatch):
    clock = iter([100.0, 110.0, 110.0])
    monkeypatch.setattr(meters, "perf_counter", lambda: next(clock))
    meter = TrainingMeter()  # started at 100 s
    meter.update(loss=2.0, correct1=1, correct5=3, clips=4, data_wait=1.0)
    meter.update(loss=0.5, correct1=2, correct5=2, clips=2, data_wait=1.5)
    # The reference: the same numbers per clip, 6 clips in all.
    per_clip_losses = [2.0] * 4 + [0.5] * 2
    assert meter.clips == 6
    assert meter.loss == pytest.approx(sum(per_clip_losses) / 6)
    assert meter.top1 == pytest.approx(100 * 3 / 6) and meter.top5 == pytest.approx(100 * 5 / 6)
    assert meter.clips_per_s(world_size=2) == pytest.approx(12 / 10)  # read at 110 s
    assert meter.data_wait_fraction() == pytest.approx(2.5 / 10)


def test_reset_empties_the_sums_and_restarts_the_clock(monkeypatch):
    clock = iter([0.0, 50.0, 54.0])
    monkeypatch.setattr(meters, "perf_counter", lambda: next(clock))
    meter = TrainingMeter()
    meter.update(loss=1.0, correct1=1, correct5=1, clips=1, data_wait=0.5)
    meter.reset()  # at 50 s
    assert (meter.clips, meter.loss, meter.top1, meter.top5, meter.data_wait) == (0, 0.0, 0.0, 0.0, 0.0)
    assert meter.elapsed() == pytest.approx(4.0)


def test_tensor_updates_give_the_sums_of_their_values_as_numbers():
    # What the trainer passes: float32 losses and integer hit counts, as tensors left where they were computed.
    batches = [(torch.tensor(2.3, dtype=torch.float32), 1, 3, 4), (torch.tensor(0.7, dtype=torch.float32), 2, 2, 3)]
    by_number, by_tensor = TrainingMeter(), TrainingMeter()
    for loss, correct1, correct5, clips in batches:
        by_number.update(loss=loss.item(), correct1=correct1, correct5=correct5, clips=clips, data_wait=0.0)
        by_tensor.update(
            loss=loss, correct1=torch.tensor(correct1), correct5=torch.tensor(correct5), clips=clips, data_wait=0.0
        )
        # Read after each update: a value read once is not kept past the next update.
        assert (by_tensor.loss, by_tensor.correct1, by_tensor.correct5) == (
            by_number.loss,
            by_number.correct1,
            by_number.correct5,
        )
    assert (by_tensor.clips, by_tensor.top1, by_tensor.top5) == (7, pytest.approx(300 / 7), pytest.approx(500 / 7))
