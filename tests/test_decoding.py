"""The frame readers of rcca.data.decoding on videos and frame folders written by the tests.

Every frame of the test videos has its own brightness (steps of 14 grey levels), so a
frame read at the wrong index is far from the frame written there, while lossy coding
moves pixel values by only a few levels on average.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import Tensor
from torchvision.io import write_jpeg

from rcca.data.decoding import FRAME_TEMPLATE, DecodeError, read_frames, read_frames_decord, read_frames_pyav
from rcca.data.synthetic import write_video

NUM_FRAMES = 16
TOLERANCE = 4.0  # mean absolute difference (grey levels) allowed between decoded and written frames


def make_frames(num_frames: int, height: int, width: int) -> np.ndarray:
    """T x H x W x 3 uint8: frame t is grey level 20 + 14 t, with a red block top left and a blue one bottom right."""
    frames = np.empty((num_frames, height, width, 3), dtype=np.uint8)
    for t in range(num_frames):
        frames[t] = 20 + 14 * t
        frames[t, : height // 2, : width // 2] = (220, 30, 30)
        frames[t, height // 2 :, width // 2 :] = (30, 30, 220)
    return frames


def as_tchw(frames: np.ndarray) -> Tensor:
    """T x H x W x C numpy frames -> T x C x H x W tensor, the layout the readers return."""
    return torch.from_numpy(frames).permute(0, 3, 1, 2)


def mean_abs_diff(a: Tensor, b: Tensor) -> float:
    """Mean absolute difference of two uint8 tensors of the same shape."""
    assert a.shape == b.shape, (a.shape, b.shape)
    return (a.float() - b.float()).abs().mean().item()


class Chooser:
    """An index chooser that returns fixed indices and records the frame counts it was asked about."""

    def __init__(self, indices: list[int] | None = None) -> None:
        self.indices = indices
        self.seen: list[int] = []

    def __call__(self, num_frames: int) -> list[int]:
        self.seen.append(num_frames)
        return list(range(num_frames)) if self.indices is None else self.indices


@pytest.fixture(scope="module")
def written(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, np.ndarray]:
    """A 16-frame 64 x 64 MPEG-4 video and the frames it was made from."""
    frames = make_frames(NUM_FRAMES, 64, 64)
    path = tmp_path_factory.mktemp("decoding") / "video.mp4"
    write_video(path, frames)
    return path, frames


def test_decord_and_pyav_agree(written: tuple[Path, np.ndarray]) -> None:
    path, frames = written
    indices = [0, 5, 10, 15]
    by_decord, by_pyav = Chooser(indices), Chooser(indices)
    decord_frames = read_frames_decord(path, by_decord)
    pyav_frames = read_frames_pyav(path, by_pyav)
    assert by_decord.seen == by_pyav.seen == [NUM_FRAMES]
    for clip in (decord_frames, pyav_frames):
        assert clip.shape == (4, 3, 64, 64) and clip.dtype == torch.uint8
        assert mean_abs_diff(clip, as_tchw(frames[indices])) < TOLERANCE
    assert mean_abs_diff(decord_frames, pyav_frames) < 1.0


@pytest.mark.parametrize("reader", [read_frames_decord, read_frames_pyav], ids=["decord", "pyav"])
def test_index_order_and_repeats_are_honoured(written: tuple[Path, np.ndarray], reader: Callable[..., Tensor]) -> None:
    path, frames = written
    indices = [7, 0, 7, 3, 15, 15, 1]
    clip = reader(path, Chooser(indices))
    assert clip.shape == (len(indices), 3, 64, 64)
    for got, index in zip(clip, indices):
        assert mean_abs_diff(got, as_tchw(frames[[index]])[0]) < TOLERANCE, f"frame {index}"
    assert torch.equal(clip[0], clip[2]) and torch.equal(clip[4], clip[5])


def test_frames_backend_reads_the_chosen_jpegs(tmp_path: Path) -> None:
    frames = make_frames(6, 32, 48)  # not square: height and width must not be swapped
    for number, frame in enumerate(as_tchw(frames), start=1):
        write_jpeg(frame.contiguous(), str(tmp_path / FRAME_TEMPLATE.format(number)), quality=95)
    chooser = Chooser([5, 0, 2, 2])
    clip = read_frames(tmp_path, chooser, backend="frames")
    assert chooser.seen == [6]
    assert clip.shape == (4, 3, 32, 48) and clip.dtype == torch.uint8
    assert mean_abs_diff(clip, as_tchw(frames[[5, 0, 2, 2]])) < TOLERANCE


def test_frames_backend_without_frames_raises_decode_error(tmp_path: Path) -> None:
    with pytest.raises(DecodeError, match="no img_"):
        read_frames(tmp_path, Chooser(), backend="frames")


def test_unknown_backend_names_the_config_key(written: tuple[Path, np.ndarray]) -> None:
    with pytest.raises(ValueError, match="dataset.backend"):
        read_frames(written[0], Chooser([0]), backend="opencv")


def test_decord_falls_back_to_pyav_on_a_width_it_misreads(tmp_path: Path) -> None:
    frames = make_frames(8, 72, 72)
    path = tmp_path / "width72.mp4"
    write_video(path, frames)
    with pytest.raises(DecodeError):  # decord 0.6 itself fails on widths that are not a multiple of 16
        read_frames_decord(path, Chooser([0]))
    clip = read_frames(path, Chooser([6, 1]), backend="decord")
    assert clip.shape == (2, 3, 72, 72) and clip.dtype == torch.uint8
    assert mean_abs_diff(clip, as_tchw(frames[[6, 1]])) < TOLERANCE


BROKEN = {
    "empty.mp4": b"",
    "text.mp4": b"this is a text file, not a video\n" * 50,
    "headless.mp4": b"\x00\x00\x00\x18ftypmp42" + bytes(range(256)) * 8,  # an mp4 box, then no index
}


def write_broken_videos(folder: Path) -> list[Path]:
    """Files named .mp4 that neither decoder can open."""
    for name, data in BROKEN.items():
        (folder / name).write_bytes(data)
    return [folder / name for name in BROKEN]


def test_decord_failure_names_both_backends_tried(tmp_path: Path) -> None:
    """decord falls back to PyAV: when both fail, the reason says so, with each one's error."""
    for path in write_broken_videos(tmp_path):
        with pytest.raises(
            DecodeError, match=rf"^{re.escape(str(path))}: decord failed: .+; then PyAV failed: "
        ) as caught:
            read_frames(path, Chooser([0]), backend="decord")
        assert "\n" not in str(caught.value)
        with pytest.raises(DecodeError, match=rf"^{re.escape(str(path))}: PyAV failed: "):
            read_frames(path, Chooser([0]), backend="pyav")


def test_broken_videos_leave_stderr_clean(tmp_path: Path) -> None:
    """What the decoders' native code prints about a bad file (ffmpeg, decord's own log) stays off the terminal.

    Run in a fresh process: the noise is written to file descriptor 2 by C code, which capsys cannot see.
    """
    write_broken_videos(tmp_path)
    good = tmp_path / "good.mp4"
    write_video(good, make_frames(8, 64, 64))
    cut = tmp_path / "cut.mp4"
    cut.write_bytes(good.read_bytes()[: len(good.read_bytes()) // 2])  # index at the end: unreadable
    script = (
        "import sys\n"
        "from pathlib import Path\n"
        "from rcca.data.decoding import DecodeError, read_frames\n"
        "for backend in ('decord', 'pyav'):\n"
        "    for path in sorted(Path(sys.argv[1]).glob('*.mp4')):\n"
        "        try:\n"
        "            read_frames(path, lambda n: [0, n - 1], backend)\n"
        "        except DecodeError as error:\n"
        "            print(error)\n"
    )
    env = dict(os.environ)
    result = subprocess.run(
        [sys.executable, "-c", script, str(tmp_path)], capture_output=True, text=True, timeout=120, env=env
    )
    assert result.returncode == 0, result.stderr
    assert len(result.stdout.splitlines()) == 2 * (len(BROKEN) + 1)  # every bad file failed, with both backends
    assert result.stderr == ""
