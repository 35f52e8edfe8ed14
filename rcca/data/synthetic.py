"""The built-in generated datasets, cached: `synthetic` (the quick-start's) and `context` (rcca.data.context).

The `synthetic` set: real encoded videos whose classes need time and long-range space.

Each video shows two small squares far apart, on a horizontal or a vertical axis, over a
static noise background. The class is the axis (2) times the relative motion along it (4):
approach, separate, both forward (right/down), both backward (left/up). So:
  * reversing time swaps approach <-> separate and forward <-> backward;
  * one square alone moving right could be "approach" or "both forward": telling them
    apart needs the other square, some 40 pixels away (long-range spatial context).
Videos are written with PyAV (MPEG-4) plus `train.txt` / `test.txt` lists in the generic
"relative/path.mp4 label" format, and read back like any real dataset.

Generated sets are cached one folder per spec under a cache root (`dataset.root`, by
default data/synthetic and data/context):

    data/synthetic/
        .rcca-synthetic                 root marker (JSON, role "cache"), also the lock file
        synthetic_train480_test160_frames24_size80_seed0_<hash>/     a complete set, never modified again
            .rcca-synthetic             set marker (JSON, role "set"): spec and files written
            train.txt  test.txt  classes.txt  videos/<class>/<split>_<n>.mp4
        .synthetic_train480_..._<hash>.tmp-<pid>-<random>/   a set being generated (marker first)

Guarantees:
  * nothing is deleted except the temporary folder of a generation that died: one with the
    temporary name pattern whose marker (the first file written) says "in progress";
  * a set appears by one `os.rename` once complete, so runs sharing the cache (a sweep,
    a run still training while another starts) never see another spec's videos;
  * generation holds `fcntl.flock` on the root marker, released when the process ends or
    dies: processes asking for the same spec generate it once, the others wait and reuse it;
  * the generator writes only into a missing or empty folder or a cache root it marked;
    any other folder, or a set folder whose marker is missing or foreign, is a `UserError`.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import logging
import os
import re
import secrets
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import av
import numpy as np

from rcca.data import context
from rcca.errors import UserError
from rcca.progress import track

log = logging.getLogger(__name__)

AXES = ("horizontal", "vertical")
MOTIONS = ("approach", "separate", "forward", "backward")
CLASSES = [f"{axis}_{motion}" for axis in AXES for motion in MOTIONS]
# Direction (+1 towards larger coordinates) of the first and second square for each motion.
DIRECTIONS = {"approach": (1, -1), "separate": (-1, 1), "forward": (1, 1), "backward": (-1, -1)}
SQUARE = 8  # side of a square in pixels
MARGIN = 3  # least pixels between a square and the frame's edge or the middle of the frame
BACKGROUND_LEVELS = 60  # background noise takes grey levels 0 .. BACKGROUND_LEVELS - 1, darker than any square
TRAVEL = (0.45, 0.65)  # a square moves a uniform draw in this range times the room it has in its half
# RGB colours the two squares of a video are drawn from (without replacement): red, green, blue, yellow
COLOURS = np.array([[230, 60, 60], [60, 230, 60], [80, 120, 255], [240, 220, 60]])
FPS = 12  # frame rate written into the videos
BIT_RATE = 2_000_000  # MPEG-4 bits per second: high enough that coding barely moves the squares' edges
PROGRESS_EVERY_S = 5.0  # without a progress bar: the least seconds between two progress lines in the log
MARKER = ".rcca-synthetic"  # JSON naming GENERATOR and FORMAT: in the cache root and in every set folder
GENERATOR = "rcca.data.synthetic"
FORMAT = 2  # version of the cache layout, part of every set's name (1: one unkeyed folder, empty marker)
TEMPORARY = re.compile(r"\..+\.tmp-\d+-[0-9a-f]+")  # name of a set folder being generated


@dataclass(frozen=True)
class SyntheticSpec:
    """What to generate; a cached set is reused only when all fields match. `dataset`: a key of TASKS."""

    dataset: str = "synthetic"
    num_train: int = 480
    num_test: int = 160
    frames: int = 24
    size: int = 80
    seed: int = 0


def render_video(label: int, spec: SyntheticSpec, rng: np.random.Generator) -> np.ndarray:
    """Draw one video of class `label`. Returns frames x size x size x 3 uint8 (RGB)."""
    axis, motion = divmod(label, len(MOTIONS))
    size, frames = spec.size, spec.frames
    half = size // 2
    background = rng.integers(0, BACKGROUND_LEVELS, size=(size, size, 3), dtype=np.uint8)
    travel = rng.uniform(*TRAVEL) * (half - SQUARE - 2 * MARGIN)  # pixels moved over the whole clip
    colours = rng.permutation(COLOURS)[:2]
    starts, across = [], []
    for square, direction in enumerate(DIRECTIONS[MOTIONS[motion]]):
        low = square * half + MARGIN + (travel if direction < 0 else 0)
        high = square * half + half - SQUARE - MARGIN - (travel if direction > 0 else 0)
        starts.append(rng.uniform(low, high))
        across.append(rng.integers(MARGIN, size - SQUARE - MARGIN))
    video = np.repeat(background[None], frames, axis=0)
    for f in range(frames):
        progress = f / max(1, frames - 1)
        for square, direction in enumerate(DIRECTIONS[MOTIONS[motion]]):
            along = int(round(starts[square] + direction * travel * progress))
            row, col = (across[square], along) if axis == 0 else (along, across[square])
            video[f, row : row + SQUARE, col : col + SQUARE] = colours[square]
    return video


# The generated datasets: {dataset.name: (class names in label order, renderer of one video of a label)}
TASKS = {
    "synthetic": (CLASSES, render_video),
    "context": (context.CLASSES, context.render_video),
}


def write_video(path: Path, frames: np.ndarray, fps: int = FPS) -> None:
    """Encode frames (T x H x W x 3 uint8) to an MPEG-4 file with PyAV."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with av.open(str(path), mode="w") as container:
        stream = container.add_stream("mpeg4", rate=fps)
        stream.width, stream.height = frames.shape[2], frames.shape[1]
        stream.pix_fmt = "yuv420p"
        stream.bit_rate = BIT_RATE
        for frame in frames:
            container.mux(stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")))
        container.mux(stream.encode())


def set_folder_name(spec: SyntheticSpec) -> str:
    """The name of the folder, under the cache root, holding the set made from `spec`.

    The spec's fields for people, then a hash of the spec and FORMAT for uniqueness, e.g.
    SyntheticSpec(num_train=8, num_test=8, frames=8, size=32) ->
    "synthetic_train8_test8_frames8_size32_seed0_<10 hex digits>".
    """
    key = json.dumps({"format": FORMAT, "spec": asdict(spec)}, sort_keys=True)
    digest = hashlib.sha256(key.encode()).hexdigest()[:10]
    return (f"{spec.dataset}_train{spec.num_train}_test{spec.num_test}_frames{spec.frames}_size{spec.size}"
            f"_seed{spec.seed}_{digest}")


def read_marker(folder: Path) -> dict[str, Any] | None:
    """The JSON of folder/MARKER if this generator (this FORMAT) wrote it, else None (no such
    file, not JSON, or another writer's: e.g. the empty marker of FORMAT 1).

    A set's marker: {"generator": GENERATOR, "format": FORMAT, "role": "set",
    "state": "in progress" | "complete", "spec": {...}, "files": ["videos/.../train_00000.mp4", ...,
    "train.txt", "test.txt", "classes.txt"]}; the cache root's: {..., "role": "cache"}.
    """
    try:
        content = json.loads((folder / MARKER).read_text())
    except (OSError, UnicodeDecodeError, ValueError):
        return None
    ours = isinstance(content, dict) and content.get("generator") == GENERATOR and content.get("format") == FORMAT
    return content if ours else None


def _set_marker(spec: SyntheticSpec, state: str, files: list[str]) -> dict[str, Any]:
    """A set folder's marker: `state` is "in progress" or "complete", `files` relative paths."""
    return {"generator": GENERATOR, "format": FORMAT, "role": "set", "state": state, "spec": asdict(spec),
            "files": files}


def _write_set_marker(folder: Path, content: dict[str, Any]) -> None:
    """Write folder/MARKER whole or not at all (written aside, then renamed over)."""
    aside = folder / f"{MARKER}.new"
    aside.write_text(json.dumps(content, indent=1) + "\n")
    os.replace(aside, folder / MARKER)


def _is_complete_set(folder: Path, spec: SyntheticSpec) -> bool:
    """False if `folder` does not exist, True if it holds the complete set of `spec`; UserError else."""
    if not folder.exists():
        return False
    marker = read_marker(folder) or {}
    if (marker.get("role"), marker.get("state"), marker.get("spec")) != ("set", "complete", asdict(spec)):
        raise UserError(
            f"{folder} is not a complete synthetic set of this spec made by rcca (its {MARKER} file is missing, "
            "foreign or different), so the generator leaves it alone: move it away, and the set is generated again"
        )
    return True


def _not_a_cache(root: Path) -> UserError:
    """The one-line error for a `root` that is neither missing, empty, nor a cache root of ours."""
    return UserError(
        f"dataset.root={root} holds files that the synthetic generator did not make (no {MARKER} file of this "
        "rcca version; an older cache must be deleted by hand); it writes only into an empty folder or its own "
        "cache: set another dataset.root or data.cache_dir (did you forget dataset=<name>?)"
    )


@contextmanager
def _locked_cache_root(root: Path) -> Iterator[None]:
    """Hold the cache root's lock (an exclusive flock on root/MARKER), claiming `root` if it is
    missing or empty. UserError, with nothing written, for any other folder that is not a cache root."""
    marker = root / MARKER
    # List first, then look for the marker: a generator writes the marker before anything else
    # and never removes it, so a root another process is claiming right now is never refused.
    if root.is_dir() and any(entry.name != MARKER for entry in root.iterdir()) and not marker.is_file():
        raise _not_a_cache(root)
    try:
        root.mkdir(parents=True, exist_ok=True)
        descriptor = os.open(marker, os.O_RDWR | os.O_CREAT, 0o666)
    except OSError as error:
        raise UserError(f"dataset.root={root}: cannot create the synthetic cache there ({error}); set another "
                        "dataset.root or data.cache_dir") from None
    try:
        try:
            fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            log.info("waiting for another process generating a synthetic set in %s", root)
            fcntl.flock(descriptor, fcntl.LOCK_EX)
        if os.fstat(descriptor).st_size == 0:  # just created here, or by a process that died before writing
            if any(entry.name != MARKER for entry in root.iterdir()):
                raise _not_a_cache(root)
            root_marker = {"generator": GENERATOR, "format": FORMAT, "role": "cache"}
            os.write(descriptor, (json.dumps(root_marker) + "\n").encode())
        elif (read_marker(root) or {}).get("role") != "cache":
            raise _not_a_cache(root)
        yield
    finally:
        os.close(descriptor)  # releases the lock (as does the death of the process)


def _remove_unfinished_sets(root: Path) -> None:
    """Delete the temporary folders of generations that died. Call with the lock held: a living
    generator holds it, so every temporary folder then left is stale. Only a folder with the
    temporary name pattern and a marker of ours saying "in progress" is ever removed."""
    for entry in root.iterdir():
        marker = read_marker(entry) if TEMPORARY.fullmatch(entry.name) else None
        if marker is not None and (marker.get("role"), marker.get("state")) == ("set", "in progress"):
            log.info("removing %s, left by a synthetic set generation that did not finish", entry)
            shutil.rmtree(entry)


def _generate(folder: Path, spec: SyntheticSpec, progress: bool) -> list[str]:
    """Write the videos and the train/test/classes lists of `spec` into `folder`, with a progress
    bar when `progress`, else plain progress lines in the log (see `rcca.progress.track`).

    Returns the paths written, relative to `folder`: videos/<class>/<split>_<n>.mp4 (train
    then test, labels cycling through the classes of `spec.dataset` so classes are balanced), then the lists.
    """
    classes, render = TASKS[spec.dataset]
    rng = np.random.default_rng(spec.seed)
    lists: dict[str, list[str]] = {"train": [], "test": []}
    written = []
    jobs = [("train", i) for i in range(spec.num_train)] + [("test", i) for i in range(spec.num_test)]
    videos = track(jobs, total=len(jobs), desc=f"generating {spec.dataset} videos", bars=progress, unit="video",
                   log_every_s=PROGRESS_EVERY_S)
    for split, i in videos:
        label = i % len(classes)
        relative = f"videos/{classes[label]}/{split}_{i:05d}.mp4"
        write_video(folder / relative, render(label, spec, rng))
        lists[split].append(f"{relative} {label}")
        written.append(relative)
    for split, lines in lists.items():
        (folder / f"{split}.txt").write_text("".join(f"{line}\n" for line in lines))
    (folder / "classes.txt").write_text("".join(f"{name}\n" for name in classes))
    return [*written, "train.txt", "test.txt", "classes.txt"]


def ensure_synthetic_dataset(root: Path, spec: SyntheticSpec, progress: bool = True) -> Path:
    """The folder holding the synthetic set of `spec` under the cache root `root`, generated
    unless already there. Returns root / set_folder_name(spec), which holds train.txt, test.txt,
    classes.txt and videos/<class>/<split>_<n>.mp4 (the lists' paths are relative to it).

    A complete set is returned without locking or writing anything, so a read-only cache
    works. Otherwise, holding the root's lock: return the set if the process we waited for
    made it; else remove the leftovers of generations that died, write the set into
    root/.<name>.tmp-<pid>-<random>/ (its marker first, saying "in progress"), mark it
    complete and rename it to root/<name>/. See the module docstring for the layout.
    `progress`: draw a progress bar while generating (the caller decides, e.g. on a terminal);
    otherwise the progress goes to the log as a plain line every PROGRESS_EVERY_S seconds,
    with the count and the time left, and a final line.

    Raises UserError (one line, nothing written or deleted) if `root` is neither missing, nor
    empty, nor a cache root this generator marked, or if root/<name>/ exists without a
    complete marker of ours for this spec. A set folder is never created inside a folder of
    other files: sets of other specs would then sit among the user's files, and a missing or
    empty root is the only one we can tell is safe to claim.
    """
    folder = root / set_folder_name(spec)
    if _is_complete_set(folder, spec):
        return folder
    with _locked_cache_root(root):
        if _is_complete_set(folder, spec):
            return folder
        _remove_unfinished_sets(root)
        temporary = root / f".{folder.name}.tmp-{os.getpid()}-{secrets.token_hex(4)}"
        temporary.mkdir()
        _write_set_marker(temporary, _set_marker(spec, "in progress", []))
        log.info("generating the %s set (%d videos) in %s", spec.dataset, spec.num_train + spec.num_test, folder)
        files = _generate(temporary, spec, progress)
        _write_set_marker(temporary, _set_marker(spec, "complete", files))
        os.rename(temporary, folder)  # atomic: readers see no set or all of it
    return folder
