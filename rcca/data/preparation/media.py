"""The work of `scripts/prepare.py`'s video verbs, with PyAV (no ffmpeg program needed), and their job lists.

* resize: every video under SRC is decoded and encoded again with its short side at the size asked (the long side
  keeps the aspect ratio, rounded to an even number as yuv420p needs; a video already at that size is encoded
  again all the same), at the same frame rate and frame count, into the same relative path under DST. The suffix
  is kept, with the encoder `OUTPUT_FORMATS` gives it: MPEG-4 part 2 (fast to decode) in .mp4 / .m4v / .mov /
  .mkv / .avi, VP8 in .webm, MPEG-2 in .mpg / .mpeg, FLV1 in .flv, WMV2 in .wmv; where this PyAV lacks
  that encoder, the output is an .mp4 instead (MPEG-4 part 2, or H.264). Audio is dropped. A key frame every
  `KEYFRAME_INTERVAL` frames keeps seeking to sampled frames cheap.
* trim-kinetics: each row of a Kinetics CSV (label, youtube_id, time_start, time_end) cuts the frames shown in
  [time_start, time_end) seconds out of SRC's `<youtube_id>.<any video suffix>` (in any sub-folder) into
  `<youtube_id>_<start:06d>_<end:06d>.mp4` (layout "flat") or `<label>/<same name>` ("per_label", unlabelled rows
  stay flat): the names `rcca.data.annotations.load_kinetics` reads. Same encoding as resize's .mp4, at the
  source's size (made even) or at a short side asked; ids without a download are listed, not failed.
* extract-frames: every video becomes a folder DST/<relative path without suffix>/ of img_00001.jpg,
  img_00002.jpg, ... (`FRAME_TEMPLATE`, what `dataset.backend=frames` reads), at the source's size or a short
  side asked.

Every encoded video has a constant frame rate, the source's average one (a variable-rate source's frames are
kept, evenly spaced). Each worker decodes and encodes with one thread: parallelism comes from the workers.
"""

from __future__ import annotations

import csv
import functools
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

import av

from rcca.data.decoding import FRAME_TEMPLATE
from rcca.data.preparation.runner import Job, JobFailed, find_videos
from rcca.errors import UserError

# Suffix of a video: the container format to write it in, and the encoders for it in order of preference.
# MPEG-4 part 2 first: it decodes much faster on a CPU than H.264, which is what training needs (`python
# scripts/benchmark.py data --size 1280x720 --resized-short-side 256`: 720p MPEG-4 resized to H.264 loaded
# 0.7-1.1x as many clips/s as before, resized to MPEG-4 part 2 2.4-3.9x), for larger files.
OUTPUT_FORMATS = {
    ".mp4": ("mp4", ("mpeg4", "libx264")),
    ".m4v": ("mp4", ("mpeg4", "libx264")),
    ".mov": ("mov", ("mpeg4", "libx264")),
    ".mkv": ("matroska", ("mpeg4", "libx264")),
    ".avi": ("avi", ("mpeg4",)),
    ".webm": ("webm", ("libvpx",)),
    ".mpg": ("mpeg", ("mpeg2video",)),
    ".mpeg": ("mpeg", ("mpeg2video",)),
    ".flv": ("flv", ("flv",)),
    ".wmv": ("asf", ("wmv2",)),
}
FALLBACK_SUFFIX = ".mp4"  # written where no encoder of a suffix is available
# Encoder options: libx264's constant quality (CRF 18: close to lossless) at a fast preset.
ENCODER_OPTIONS = {"libx264": {"crf": "18", "preset": "veryfast"}}
BITS_PER_PIXEL = 0.5  # the bit rate of the other encoders: bits per pixel of each frame (960 kb/s at 320x240x25)
MAX_RATE_DENOMINATOR = 1001  # frame rates are written as fractions such as 30000/1001 that every container takes
# A key frame every 12 frames: training reads frames sampled all over a video, and each seek decodes from the key
# frame before it (x264's default interval of 250 made resized videos slower to sample than 720p MPEG-4 ones).
KEYFRAME_INTERVAL = 12
SCALING = "AREA"  # swscale's filter for resizing: averages the source pixels (no aliasing when shrinking)
LAYOUTS = ("flat", "per_label")


@dataclass(frozen=True)
class Clip:
    """One row of a Kinetics CSV.

    Attributes:
        youtube_id: the YouTube id, the stem of the full download.
        start: the first second of the clip.
        end: the second the clip ends at (not included).
        path: the clip's path relative to DST, e.g. "abseiling/0wR5jVB-WPk_000417_000427.mp4".
    """

    youtube_id: str
    start: int
    end: int
    path: str


@contextmanager
def _reported() -> Iterator[None]:
    """Turn what PyAV (or the disk) raises about a video or an output into `JobFailed` with a one-line reason.

    Returns:
        A context manager.

    Raises:
        JobFailed: from an `av.error.FFmpegError`, `OSError`, `ValueError` or `IndexError` (no video stream).
    """
    try:
        yield
    except IndexError:
        raise JobFailed("PyAV: no video stream") from None
    except (av.error.FFmpegError, OSError, ValueError) as error:
        reason = getattr(error, "strerror", None) or str(error) or type(error).__name__
        raise JobFailed(f"PyAV: {reason.splitlines()[0]}") from None


def encoder_for(suffix: str) -> tuple[str, str, str]:
    """How a video with this suffix is written: see `OUTPUT_FORMATS` and `FALLBACK_SUFFIX`.

    Args:
        suffix: the source's suffix (any case).

    Returns:
        (the output's suffix, its container format, its encoder), e.g. (".avi", "avi", "mpeg4").
    """
    suffix = suffix.lower()
    for output_suffix in (suffix, FALLBACK_SUFFIX):
        container_format, encoders = OUTPUT_FORMATS.get(output_suffix, ("", ()))
        for encoder in encoders:
            if encoder in av.codecs_available:
                return output_suffix, container_format, encoder
    raise RuntimeError(f"this PyAV has none of the encoders {OUTPUT_FORMATS[FALLBACK_SUFFIX][1]}")


def scaled_size(width: int, height: int, short_side: int | None, even: bool) -> tuple[int, int]:
    """The size of a frame after resizing it to `short_side`, keeping its aspect ratio.

    Args:
        width: the frame's width.
        height: the frame's height.
        short_side: the size of the short side after resizing; None keeps the size.
        even: round both sides to even numbers (yuv420p video): the long side to the nearest, a kept size down.

    Returns:
        (width, height), e.g. (1280, 720, 256, True) -> (456, 256); (641, 361, None, True) -> (640, 360).
    """
    if short_side is not None:
        short, long = sorted((width, height))
        scaled_long = long * short_side / short
        scaled_long = 2 * round(scaled_long / 2) if even else round(scaled_long)
        return (short_side, scaled_long) if width <= height else (scaled_long, short_side)
    return (width - width % 2, height - height % 2) if even else (width, height)


def _frame_rate(stream: av.video.stream.VideoStream) -> Fraction:
    """The average frame rate of a video stream, as a fraction with a small denominator.

    Args:
        stream: the stream.

    Returns:
        The rate, e.g. Fraction(30000, 1001).

    Raises:
        JobFailed: the container tells no frame rate.
    """
    rate = stream.average_rate or stream.guessed_rate
    if not rate:
        raise JobFailed("PyAV: the video has no frame rate")
    return Fraction(rate).limit_denominator(MAX_RATE_DENOMINATOR)


def _write_video(
    frames: Iterator[av.VideoFrame], output: Path, suffix: str, rate: Fraction, size: tuple[int, int]
) -> int:
    """Encode frames into a new video, resized, evenly spaced at `rate`.

    Args:
        frames: the decoded frames, in order.
        output: the file to write (a temporary name: the container format comes from `suffix`).
        suffix: the final name's suffix, which chooses the format and the encoder (`encoder_for`).
        rate: the frame rate.
        size: (width, height), both even.

    Returns:
        The number of frames written.
    """
    _, container_format, encoder = encoder_for(suffix)
    width, height = size
    count = 0
    with av.open(str(output), mode="w", format=container_format) as container:
        stream = container.add_stream(encoder, rate=rate, options=ENCODER_OPTIONS.get(encoder, {}))
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        stream.thread_count = 1
        stream.codec_context.gop_size = KEYFRAME_INTERVAL
        if encoder not in ENCODER_OPTIONS:
            stream.bit_rate = int(BITS_PER_PIXEL * width * height * rate)
        time_base = Fraction(1) / rate
        for frame in frames:
            picture = frame.reformat(width, height, format="yuv420p", interpolation=SCALING)
            picture.pts, picture.time_base = count, time_base
            container.mux(stream.encode(picture))
            count += 1
        container.mux(stream.encode())
    return count


def resize_video(source: Path, short_side: int, output: Path) -> None:
    """Encode `source` again with its short side at `short_side` pixels (see the module docstring).

    Args:
        source: the video.
        short_side: the short side of the output, even.
        output: the file to write; its format is that of `source`'s suffix (`encoder_for`).

    Raises:
        JobFailed: the video cannot be read, has no frames, or the output cannot be written.
    """
    with _reported(), av.open(str(source)) as container:
        stream = container.streams.video[0]
        stream.thread_count = 1
        size = scaled_size(stream.codec_context.width, stream.codec_context.height, short_side, even=True)
        written = _write_video(container.decode(stream), output, source.suffix, _frame_rate(stream), size)
    if not written:
        raise JobFailed("PyAV: no frames")


def _frames_between(
    container: av.container.InputContainer, stream: av.video.stream.VideoStream, start: float, end: float
) -> Iterator[av.VideoFrame]:
    """The frames of `stream` shown in [start, end) seconds from the video's beginning.

    Seeks to the key frame before `start`, then decodes from there.

    Args:
        container: the opened video.
        stream: its video stream.
        start: the first second.
        end: the second to stop at (not included).

    Returns:
        An iterator of the frames.
    """
    time_base = stream.time_base
    origin = stream.start_time or 0
    container.seek(origin + int(start / time_base), stream=stream)
    for frame in container.decode(stream):
        if frame.pts is None:
            continue
        time = (frame.pts - origin) * time_base
        if time >= end:
            return
        if time >= start:
            yield frame


def trim_clip(source: Path, start: int, end: int, short_side: int | None, output: Path) -> None:
    """Cut the frames shown in [start, end) seconds out of `source` into an .mp4 (see the module docstring).

    Args:
        source: the full video.
        start: the clip's first second.
        end: the second the clip ends at (not included).
        short_side: the short side of the clip (even); None keeps the source's size (made even).
        output: the file to write, in the .mp4 format.

    Raises:
        JobFailed: the video cannot be read, shows nothing in the span, or the output cannot be written.
    """
    with _reported(), av.open(str(source)) as container:
        stream = container.streams.video[0]
        stream.thread_count = 1
        size = scaled_size(stream.codec_context.width, stream.codec_context.height, short_side, even=True)
        frames = _frames_between(container, stream, start, end)
        written = _write_video(frames, output, FALLBACK_SUFFIX, _frame_rate(stream), size)
        length = float(stream.duration * stream.time_base) if stream.duration else None
    if not written:
        lasts = f" (the video lasts {length:.1f} s)" if length is not None else ""
        raise JobFailed(f"no frames between {start} s and {end} s{lasts}")


def extract_frames(source: Path, short_side: int | None, quality: int, output: Path) -> None:
    """Write every frame of `source` as a JPEG, img_00001.jpg, img_00002.jpg, ... in a new folder.

    Args:
        source: the video.
        short_side: the short side of the images; None keeps the video's size.
        quality: the JPEG quality, 1 to 100 (Pillow's scale).
        output: the folder to create (it must not exist).

    Raises:
        JobFailed: the video cannot be read or has no frames, or an image cannot be written.
    """
    output.mkdir()
    count = 0
    with _reported(), av.open(str(source)) as container:
        stream = container.streams.video[0]
        stream.thread_count = 1
        size = scaled_size(stream.codec_context.width, stream.codec_context.height, short_side, even=False)
        for count, frame in enumerate(container.decode(stream), start=1):
            picture = frame.reformat(*size, format="rgb24", interpolation=SCALING)
            picture.to_image().save(output / FRAME_TEMPLATE.format(count), quality=quality)
    if not count:
        raise JobFailed("PyAV: no frames")


def _check_short_side(short_side: int | None, even: bool) -> None:
    """Refuse a short side below 2 pixels (odd, for videos).

    Args:
        short_side: the short side asked, or None (the size kept).
        even: whether it must be even (yuv420p video).

    Raises:
        UserError: one line.
    """
    if short_side is not None and (short_side < 2 or (even and short_side % 2)):
        kind = "an even number of pixels >= 2 (yuv420p video)" if even else "a number of pixels >= 2"
        raise UserError(f"--short-side {short_side}: must be {kind}")


def resize_jobs(source: Path, destination: Path, short_side: int) -> list[Job]:
    """The jobs of `resize`: each video under `source` into the same relative path under `destination`.

    Args:
        source: the folder of videos (SRC).
        destination: the output folder (DST).
        short_side: the short side of the outputs.

    Returns:
        One job per video (its output's suffix: `encoder_for`).

    Raises:
        UserError: an odd or too small `short_side`.
    """
    _check_short_side(short_side, even=True)
    jobs = []
    for video in find_videos(source):
        relative = video.relative_to(source)
        output = destination / relative.with_suffix(encoder_for(video.suffix)[0])
        jobs.append(Job(str(relative), output, functools.partial(resize_video, video, short_side)))
    return jobs


def extract_jobs(source: Path, destination: Path, short_side: int | None, quality: int) -> list[Job]:
    """The jobs of `extract-frames`: each video under `source` into a folder of frames under `destination`.

    Args:
        source: the folder of videos (SRC).
        destination: the output folder (DST).
        short_side: the short side of the images, or None for the videos' size.
        quality: the JPEG quality.

    Returns:
        One job per video; its output is `destination`/<relative path without suffix>.

    Raises:
        UserError: a `short_side` below 2, or a quality outside 1 to 100.
    """
    _check_short_side(short_side, even=False)
    if not 1 <= quality <= 100:
        raise UserError(f"--quality {quality}: must be 1 to 100")
    jobs = []
    for video in find_videos(source):
        relative = video.relative_to(source)
        work = functools.partial(extract_frames, video, short_side, quality)
        jobs.append(Job(str(relative), destination / relative.with_suffix(""), work))
    return jobs


def _path_part(value: str, column: str, where: str) -> str:
    """A CSV cell used as a file or folder name, refused if it could name a path outside its folder.

    Args:
        value: the cell, stripped.
        column: its column, for the message.
        where: "<csv>:<line>", for the message.

    Returns:
        `value`.

    Raises:
        UserError: an empty cell, ".", "..", or one holding "/".
    """
    if value in ("", ".", "..") or "/" in value:
        raise UserError(f"{where}: {column} {value!r} cannot be a file name")
    return value


def read_kinetics_clips(csv_path: Path, layout: str) -> list[Clip]:
    """The clips of a Kinetics CSV, by header name: youtube_id, time_start, time_end, and label (optional).

    Args:
        csv_path: the CSV (the official kinetics-400_train.csv, ..._val.csv, ..._test.csv).
        layout: "flat" or "per_label" (see the module docstring).

    Returns:
        The clips in the file's order, a clip listed twice once.

    Raises:
        UserError: a missing file, an unknown layout, a missing column, or a malformed row.
    """
    if layout not in LAYOUTS:
        raise UserError(f"--layout {layout}: choose one of {', '.join(LAYOUTS)}")
    if not csv_path.is_file():
        raise UserError(f"--csv {csv_path}: no such file; give a Kinetics CSV (label,youtube_id,time_start,...)")
    clips: dict[str, Clip] = {}
    with csv_path.open(encoding="utf-8-sig", newline="") as handle:
        reader = csv.DictReader(handle)
        reader.fieldnames = [name.strip() for name in reader.fieldnames or []]
        missing = [name for name in ("youtube_id", "time_start", "time_end") if name not in reader.fieldnames]
        if missing:
            raise UserError(f"--csv {csv_path}: the header lacks {', '.join(missing)}")
        for row in reader:
            where = f"{csv_path}:{reader.line_num}"
            youtube_id = _path_part((row["youtube_id"] or "").strip(), "youtube_id", where)
            try:
                start, end = (int(float(row[column] or "")) for column in ("time_start", "time_end"))
            except ValueError:
                raise UserError(f"{where}: time_start and time_end must be numbers of seconds") from None
            name = f"{youtube_id}_{start:06d}_{end:06d}.mp4"
            label = (row.get("label") or "").strip()
            if layout == "per_label" and label:
                name = f"{_path_part(label, 'label', where)}/{name}"
            clips.setdefault(name, Clip(youtube_id, start, end, name))
    return list(clips.values())


def kinetics_jobs(
    source: Path, destination: Path, csv_path: Path, layout: str, short_side: int | None
) -> tuple[list[Job], list[str]]:
    """The jobs of `trim-kinetics`: one per clip of the CSV whose full download is under `source`.

    Args:
        source: the folder of full downloads, `<youtube_id>.<suffix>`, in sub-folders too (the first by path
            where an id has several).
        destination: the output folder (DST).
        csv_path: the Kinetics CSV.
        layout: "flat" or "per_label".
        short_side: the short side of the clips (even), or None for the downloads' size.

    Returns:
        (the jobs, the ids of the CSV without a download, in the CSV's order).

    Raises:
        UserError: see `read_kinetics_clips`; an odd or too small `short_side`.
    """
    _check_short_side(short_side, even=True)
    clips = read_kinetics_clips(csv_path, layout)
    downloads: dict[str, Path] = {}
    for video in find_videos(source):
        downloads.setdefault(video.stem, video)
    jobs, missing = [], {}
    for clip in clips:
        video = downloads.get(clip.youtube_id)
        if video is None:
            missing[clip.youtube_id] = None
            continue
        work = functools.partial(trim_clip, video, clip.start, clip.end, short_side)
        jobs.append(Job(clip.path, destination / clip.path, work))
    return jobs, list(missing)
