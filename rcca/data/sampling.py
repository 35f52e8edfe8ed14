"""Frame-index sampling: which frames of a video to decode.

Every function returns 0-based frame indices that are always within
``[0, num_video_frames - 1]``, whatever the video length.

Two schemes are supported:

* ``"segment"`` (TSN/TSM): the video is split into ``num_segments`` equal
  segments and one frame is taken from each.
* ``"dense"`` (MF-Net): ``clip_len`` frames ``interval`` frames apart. A clip
  is taken to span ``clip_len * interval`` frames; a video shorter than that
  is looped (indices wrap around modulo the video length).

Segment boundaries and centres are computed with integer arithmetic, so the
results do not depend on floating-point rounding.

Randomness comes only from the ``numpy.random.Generator`` passed in; training
samplers require one so that runs are reproducible when the caller seeds it.
"""

from __future__ import annotations

import numpy as np

SAMPLING_MODES = ("segment", "dense")


def _check_positive(**values: int) -> None:
    """Raise ``ValueError`` if any of the named integers is smaller than 1."""
    for name, value in values.items():
        if value < 1:
            raise ValueError(f"{name} must be >= 1, got {value}")


def _require_rng(rng: np.random.Generator | None) -> np.random.Generator:
    """Return ``rng``, or raise ``ValueError`` when training sampling gets none."""
    if rng is None:
        raise ValueError("training sampling needs a numpy.random.Generator (rng)")
    return rng


def _segment_offset_indices(
    num_video_frames: int, num_segments: int, numerator: int, denominator: int
) -> list[int]:
    """One index per segment at fraction ``numerator / denominator`` of its length.

    Segment ``j`` covers ``[j * n / S, (j + 1) * n / S)``; the returned index is
    ``floor(n * (j + numerator / denominator) / S)``. With a fraction in
    ``[0, 1)`` the result lies in ``[0, n - 1]`` and is non-decreasing in ``j``.
    """
    return [
        num_video_frames * (j * denominator + numerator) // (num_segments * denominator)
        for j in range(num_segments)
    ]


def sample_segment_indices(
    num_video_frames: int,
    num_segments: int,
    train: bool,
    rng: np.random.Generator | None = None,
) -> list[int]:
    """TSN/TSM segment sampling: one frame per equal-length segment.

    Training draws one frame uniformly inside each segment (``rng`` required);
    testing takes the centre frame of each segment (deterministic, ``rng``
    unused). With fewer frames than segments the indices repeat but stay
    sorted and valid, e.g. 3 frames and 8 segments give
    ``[0, 0, 0, 1, 1, 2, 2, 2]`` at test time.

    Returns a list of ``num_segments`` indices.
    """
    _check_positive(num_video_frames=num_video_frames, num_segments=num_segments)
    if not train:
        return _segment_offset_indices(num_video_frames, num_segments, 1, 2)
    generator = _require_rng(rng)
    indices = []
    for j in range(num_segments):
        start = j * num_video_frames // num_segments
        end = (j + 1) * num_video_frames // num_segments
        # A segment shorter than one frame (short video) holds only its start.
        indices.append(int(generator.integers(start, end)) if end > start else start)
    return indices


def _dense_max_start(num_video_frames: int, clip_len: int, interval: int) -> int:
    """Largest start at which a ``clip_len * interval`` span fits (0 if none does)."""
    return max(num_video_frames - clip_len * interval, 0)


def sample_dense_indices(
    num_video_frames: int,
    clip_len: int,
    interval: int,
    train: bool,
    rng: np.random.Generator | None = None,
    start: int | None = None,
) -> list[int]:
    """MF-Net dense sampling: ``clip_len`` frames ``interval`` frames apart.

    Training draws the start uniformly in ``[0, n - clip_len * interval]``
    (``rng`` required); a video shorter than the span draws it over all its
    frames instead. Testing uses ``start`` when given, else the centred clip.
    Indices past the end of the video wrap around to its beginning.

    Returns a list of ``clip_len`` indices.
    """
    _check_positive(num_video_frames=num_video_frames, clip_len=clip_len, interval=interval)
    max_start = _dense_max_start(num_video_frames, clip_len, interval)
    if train:
        generator = _require_rng(rng)
        high = max_start + 1 if num_video_frames >= clip_len * interval else num_video_frames
        first = int(generator.integers(0, high))
    elif start is None:
        first = max_start // 2
    elif start < 0:
        raise ValueError(f"start must be >= 0, got {start}")
    else:
        first = start
    return [(first + i * interval) % num_video_frames for i in range(clip_len)]


def sample_test_clips(
    num_video_frames: int,
    num_clips: int,
    sampling: str,
    clip_len: int,
    interval: int = 1,
) -> list[list[int]]:
    """Multi-view testing: ``num_clips`` deterministic clips spread over the video.

    ``sampling="segment"``: ``clip_len`` is the number of segments; clip ``k``
    takes, in every segment, the frame at fraction ``(k + 0.5) / num_clips`` of
    the segment length (one clip = the segment centres). ``interval`` is unused.

    ``sampling="dense"``: clip ``k`` starts at ``floor(max_start * (k + 0.5) /
    num_clips)`` with ``max_start = n - clip_len * interval`` (0 for short
    videos), i.e. starts are spread uniformly over ``[0, max_start]`` and one
    clip is the centred clip.

    Returns ``num_clips`` lists of ``clip_len`` indices each.
    """
    _check_positive(num_clips=num_clips)
    if sampling == "segment":
        _check_positive(num_video_frames=num_video_frames, num_segments=clip_len)
        return [
            _segment_offset_indices(num_video_frames, clip_len, 2 * k + 1, 2 * num_clips)
            for k in range(num_clips)
        ]
    if sampling == "dense":
        _check_positive(num_video_frames=num_video_frames, clip_len=clip_len, interval=interval)
        max_start = _dense_max_start(num_video_frames, clip_len, interval)
        return [
            sample_dense_indices(
                num_video_frames,
                clip_len,
                interval,
                train=False,
                start=max_start * (2 * k + 1) // (2 * num_clips),
            )
            for k in range(num_clips)
        ]
    raise ValueError(f"unknown sampling {sampling!r}; valid values: {SAMPLING_MODES}")


def sample_train_clip(
    num_video_frames: int,
    sampling: str,
    clip_len: int,
    interval: int,
    rng: np.random.Generator,
) -> list[int]:
    """Training clip for either scheme (``clip_len`` = segments for "segment").

    ``interval`` is used by ``"dense"`` only. Returns ``clip_len`` indices.
    """
    if sampling == "segment":
        return sample_segment_indices(num_video_frames, clip_len, train=True, rng=rng)
    if sampling == "dense":
        return sample_dense_indices(num_video_frames, clip_len, interval, train=True, rng=rng)
    raise ValueError(f"unknown sampling {sampling!r}; valid values: {SAMPLING_MODES}")
