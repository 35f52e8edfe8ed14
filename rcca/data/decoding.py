"""Reading the sampled frames of one video: decord, PyAV or a folder of JPEG frames.

Every backend answers the same call, `read_frames(path, choose_indices)`: it finds the
video's frame count, asks `choose_indices(num_frames)` which frames to read, and returns
them as a uint8 tensor T x C x H x W (RGB), in the order asked (indices may repeat).
A file that cannot be read raises `DecodeError`, whose one-line message names the readers
tried and why each failed; what the decoders' native code prints about it goes to the log
at DEBUG level, not to the terminal.

decord is optional: it has no wheels for ARM or the newest Pythons. Backend "decord" reads
with PyAV where `import decord` fails (`resolve_backend`), and says so in one warning per
process; backends "pyav" and "frames" never import it.
"""

from __future__ import annotations

import functools
import logging
import os
import sys
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

log = logging.getLogger(__name__)

# backend: the readers it tries, in order
READERS = {"decord": "decord, then PyAV", "pyav": "PyAV", "frames": "torchvision (JPEG frames)"}
BACKENDS = tuple(READERS)
FRAME_TEMPLATE = "img_{:05d}.jpg"  # TSM's extracted-frame naming, 1-based

IndexChooser = Callable[[int], list[int]]


class DecodeError(RuntimeError):
    """A video that cannot be read: empty, truncated, not a video, or without frames."""


@contextmanager
def _native_stderr_to_log(path: Path) -> Iterator[None]:
    """Send what native code writes to stderr (file descriptor 2) inside the block to the log at DEBUG.

    decord prints ffmpeg's messages and its own errors ("ERROR opening: ...") there, which no
    setting silences; the failure reaches the caller as a `DecodeError` anyway.
    """
    sys.stderr.flush()
    with tempfile.TemporaryFile() as capture:
        saved = os.dup(2)
        os.dup2(capture.fileno(), 2)
        try:
            yield
        finally:
            os.dup2(saved, 2)
            os.close(saved)
            capture.seek(0)
            printed = capture.read().decode(errors="replace").strip()
    if printed:
        log.debug("%s: the decoder printed: %s", path, printed)


def read_frames_decord(path: Path, choose_indices: IndexChooser) -> Tensor:
    """Seek and decode only the chosen frames with decord (one thread: parallelism comes from workers)."""
    import decord

    try:
        with _native_stderr_to_log(path):
            reader = decord.VideoReader(str(path), num_threads=1)
            num_frames = len(reader)
            if num_frames == 0:
                raise DecodeError(f"{path}: decord failed: no frames")
            frames = reader.get_batch(choose_indices(num_frames)).asnumpy()
    except DecodeError:
        raise
    except (decord.DECORDError, RuntimeError, AssertionError) as error:  # decord raises all three on bad files
        reason = str(error).splitlines()[0] if str(error) else type(error).__name__
        raise DecodeError(f"{path}: decord failed: {reason}") from None
    return torch.from_numpy(frames).permute(0, 3, 1, 2).contiguous()


def read_frames_pyav(path: Path, choose_indices: IndexChooser) -> Tensor:
    """Decode the video sequentially with PyAV (one thread: parallelism comes from workers), keeping the chosen
    frames."""
    import av

    try:
        with av.open(str(path)) as container:
            stream = container.streams.video[0]
            stream.thread_count = 1  # PyAV's default (0) lets FFmpeg start a thread per core in every worker
            decoded = [frame.to_ndarray(format="rgb24") for frame in container.decode(stream)]
    except (av.error.FFmpegError, ValueError, IndexError) as error:
        raise DecodeError(f"{path}: PyAV failed: {error}") from None
    if not decoded:
        raise DecodeError(f"{path}: PyAV failed: no frames")
    frames = np.stack([decoded[i] for i in choose_indices(len(decoded))])
    return torch.from_numpy(frames).permute(0, 3, 1, 2).contiguous()


def read_frames_folder(path: Path, choose_indices: IndexChooser) -> Tensor:
    """Read chosen JPEG frames from a folder of img_00001.jpg, img_00002.jpg, ..."""
    from torchvision.io import ImageReadMode, decode_jpeg, read_file

    num_frames = len(list(path.glob("img_*.jpg"))) if path.is_dir() else 0
    if num_frames == 0:
        raise DecodeError(f"{path}: no img_*.jpg frames in this folder")
    try:
        images = [
            decode_jpeg(read_file(str(path / FRAME_TEMPLATE.format(i + 1))), mode=ImageReadMode.RGB)
            for i in choose_indices(num_frames)
        ]
    except RuntimeError as error:
        raise DecodeError(f"{path}: {error}") from None
    return torch.stack(images)


@functools.cache
def decord_available() -> bool:
    """Whether `import decord` works in this process; the first time it does not, log one warning.

    Cached, so the warning appears once per process whatever the number of videos read; a
    DataLoader worker forked after the first call inherits the answer and does not warn again.
    """
    try:
        import decord  # noqa: F401
    except (ImportError, OSError) as error:  # OSError: the package is there but its native library does not load
        log.warning("decord cannot be imported (%s): dataset.backend=decord reads the videos with PyAV instead; "
                    "set dataset.backend=pyav to silence this", error)
        return False
    return True


def resolve_backend(backend: str) -> str:
    """The backend that will read the videos: `backend`, but "pyav" for "decord" when decord
    cannot be imported (see `decord_available`). ValueError for an unknown backend.

    E.g. "frames" -> "frames"; "decord" -> "decord", or "pyav" on a machine without decord.
    Resolve it once in the main process (as `VideoDataset` does), so that worker processes,
    forked or spawned, never try decord.
    """
    if backend not in BACKENDS:
        raise ValueError(f"dataset.backend={backend!r}: choose one of {', '.join(BACKENDS)}")
    return "pyav" if backend == "decord" and not decord_available() else backend


def read_frames(path: Path, choose_indices: IndexChooser, backend: str = "decord") -> Tensor:
    """Read the chosen frames with `backend`; decord falls back to PyAV on a file it cannot read,
    and is replaced by PyAV where it cannot be imported (`resolve_backend`).

    Returns T x C x H x W uint8. Raises DecodeError when no backend can read the file, with
    each reader's error: "<path>: decord failed: ...; then PyAV failed: ...".
    """
    backend = resolve_backend(backend)
    if backend == "frames":
        return read_frames_folder(path, choose_indices)
    if backend == "pyav":
        return read_frames_pyav(path, choose_indices)
    try:
        return read_frames_decord(path, choose_indices)
    except DecodeError as decord_error:  # decord misreads some files PyAV reads (e.g. widths not a multiple of 16)
        try:
            return read_frames_pyav(path, choose_indices)
        except DecodeError as pyav_error:
            raise DecodeError(f"{decord_error}; then {str(pyav_error).removeprefix(f'{path}: ')}") from None
