"""Tests for rcca.data.sampling (expected indices are worked out by hand)."""

import numpy as np
import pytest

from rcca.data.sampling import (
    sample_dense_indices,
    sample_segment_indices,
    sample_test_clips,
    sample_train_clip,
)


def _rng(seed: int = 0) -> np.random.Generator:
    return np.random.default_rng(seed)


# --- segment sampling -------------------------------------------------------


@pytest.mark.parametrize(
    ("num_frames", "num_segments", "expected"),
    [
        (80, 8, [5, 15, 25, 35, 45, 55, 65, 75]),  # segments of 10, centres at 10j + 5
        (10, 3, [1, 5, 8]),  # centres 1.67, 5.0, 8.33
        (7, 8, [0, 1, 2, 3, 3, 4, 5, 6]),  # floor(7 (2j + 1) / 16)
        (3, 8, [0, 0, 0, 1, 1, 2, 2, 2]),  # floor(3 (2j + 1) / 16)
        (1, 8, [0] * 8),
        (1, 1, [0]),
    ],
)
def test_segment_test_indices_exact(num_frames: int, num_segments: int, expected: list[int]) -> None:
    assert sample_segment_indices(num_frames, num_segments, train=False) == expected


@pytest.mark.parametrize(
    ("num_frames", "num_segments", "ranges"),
    [
        (80, 8, [(10 * j, 10 * j + 9) for j in range(8)]),
        (10, 3, [(0, 2), (3, 5), (6, 9)]),  # boundaries floor(10 j / 3) = 0, 3, 6, 10
    ],
)
def test_segment_train_indices_inside_their_segment(
    num_frames: int, num_segments: int, ranges: list[tuple[int, int]]
) -> None:
    rng = _rng()
    seen = set()
    for _ in range(300):
        indices = sample_segment_indices(num_frames, num_segments, train=True, rng=rng)
        assert len(indices) == num_segments
        for index, (low, high) in zip(indices, ranges):
            assert low <= index <= high
        seen.update(indices)
    assert seen == set(range(num_frames))  # every frame can be drawn


@pytest.mark.parametrize("num_frames", [1, 3, 7])
@pytest.mark.parametrize("train", [True, False])
def test_segment_short_videos_stay_in_range(num_frames: int, train: bool) -> None:
    rng = _rng()
    for _ in range(50):
        indices = sample_segment_indices(num_frames, 8, train=train, rng=rng)
        assert len(indices) == 8
        assert all(0 <= i < num_frames for i in indices)
        assert indices == sorted(indices)


def test_segment_train_is_reproducible_with_seed() -> None:
    first = [sample_segment_indices(300, 8, True, _rng(42)) for _ in range(3)]
    second = [sample_segment_indices(300, 8, True, _rng(42)) for _ in range(3)]
    assert first == second
    assert sample_segment_indices(300, 8, True, _rng(1)) != sample_segment_indices(300, 8, True, _rng(2))


def test_training_without_rng_is_an_error() -> None:
    with pytest.raises(ValueError, match="rng"):
        sample_segment_indices(80, 8, train=True)
    with pytest.raises(ValueError, match="rng"):
        sample_dense_indices(80, 8, 2, train=True)


@pytest.mark.parametrize(
    "call",
    [
        lambda: sample_segment_indices(0, 8, train=False),
        lambda: sample_segment_indices(10, 0, train=False),
        lambda: sample_dense_indices(10, 8, 0, train=False),
        lambda: sample_dense_indices(10, 8, 2, train=False, start=-1),
    ],
)
def test_invalid_arguments(call) -> None:
    with pytest.raises(ValueError):
        call()


# --- dense sampling ---------------------------------------------------------


def test_dense_test_centred_clip() -> None:
    # span 8 * 4 = 32, valid starts 0..68, centre start 34
    assert sample_dense_indices(100, 8, 4, train=False) == list(range(34, 63, 4))


def test_dense_test_explicit_start() -> None:
    assert sample_dense_indices(100, 8, 4, train=False, start=10) == list(range(10, 39, 4))


def test_dense_wraps_around_short_video() -> None:
    # span 8 * 2 = 16 > 10 frames: start 0, indices loop modulo 10
    assert sample_dense_indices(10, 8, 2, train=False) == [0, 2, 4, 6, 8, 0, 2, 4]
    assert sample_dense_indices(1, 4, 3, train=False) == [0, 0, 0, 0]


def test_dense_train_start_among_valid_starts() -> None:
    rng = _rng()
    starts = set()
    for _ in range(500):
        indices = sample_dense_indices(100, 8, 4, train=True, rng=rng)
        assert np.all(np.diff(indices) == 4)
        assert 0 <= indices[0] <= 68 and indices[-1] <= 99
        starts.add(indices[0])
    assert starts == set(range(69))


@pytest.mark.parametrize("num_frames", [1, 3, 7, 15])
def test_dense_train_short_videos_stay_in_range(num_frames: int) -> None:
    rng = _rng()
    for _ in range(50):
        indices = sample_dense_indices(num_frames, 8, 2, train=True, rng=rng)
        assert len(indices) == 8
        assert all(0 <= i < num_frames for i in indices)


def test_dense_train_is_reproducible_with_seed() -> None:
    assert sample_dense_indices(500, 16, 2, True, _rng(7)) == sample_dense_indices(500, 16, 2, True, _rng(7))


# --- multi-clip testing -----------------------------------------------------


def test_segment_test_clips_offsets() -> None:
    # offsets 0.25 and 0.75 of a 10-frame segment
    clips = sample_test_clips(80, 2, "segment", clip_len=8)
    assert clips == [[10 * j + 2 for j in range(8)], [10 * j + 7 for j in range(8)]]


def test_segment_test_clips_spread_uniformly() -> None:
    # 10 clips over 10-frame segments: clip k takes frame 10 j + k, every frame once
    clips = sample_test_clips(80, 10, "segment", clip_len=8)
    assert clips == [[10 * j + k for j in range(8)] for k in range(10)]


def test_one_test_clip_equals_centre_sampling() -> None:
    assert sample_test_clips(93, 1, "segment", clip_len=8) == [sample_segment_indices(93, 8, train=False)]
    assert sample_test_clips(93, 1, "dense", clip_len=8, interval=3) == [sample_dense_indices(93, 8, 3, train=False)]


def test_dense_test_clips_starts() -> None:
    # valid starts 0..68; clip k starts at floor(68 (2k + 1) / 6) = 11, 34, 56
    clips = sample_test_clips(100, 3, "dense", clip_len=8, interval=4)
    assert clips == [list(range(start, start + 32, 4)) for start in (11, 34, 56)]


@pytest.mark.parametrize("sampling", ["segment", "dense"])
@pytest.mark.parametrize("num_frames", [1, 3, 7, 64, 301])
@pytest.mark.parametrize("num_clips", [1, 2, 5, 10])
def test_test_clips_counts_and_range(sampling: str, num_frames: int, num_clips: int) -> None:
    clips = sample_test_clips(num_frames, num_clips, sampling, clip_len=8, interval=2)
    assert len(clips) == num_clips
    for clip in clips:
        assert len(clip) == 8
        assert all(0 <= i < num_frames for i in clip)
    firsts = [clip[0] for clip in clips]
    assert firsts == sorted(firsts)


def test_unknown_sampling_names_valid_values() -> None:
    with pytest.raises(ValueError, match="segment.*dense"):
        sample_test_clips(80, 2, "uniform", clip_len=8)
    with pytest.raises(ValueError, match="segment.*dense"):
        sample_train_clip(80, "uniform", 8, 1, _rng())


# --- training dispatch ------------------------------------------------------


def test_train_clip_dispatch() -> None:
    assert sample_train_clip(120, "segment", 8, 1, _rng(3)) == sample_segment_indices(120, 8, True, _rng(3))
    assert sample_train_clip(120, "dense", 8, 4, _rng(3)) == sample_dense_indices(120, 8, 4, True, _rng(3))
