"""The built-in synthetic dataset: real encoded videos whose classes need time and long-range space.

Each video shows two small squares far apart, on a horizontal or a vertical axis, over a
static noise background. The class is the axis (2) times the relative motion along it (4):
approach, separate, both forward (right/down), both backward (left/up). So:
  * reversing time swaps approach <-> separate and forward <-> backward;
  * one square alone moving right could be "approach" or "both forward": telling them
    apart needs the other square, some 40 pixels away (long-range spatial context).
Videos are written with PyAV (MPEG-4) plus `train.txt` / `test.txt` lists in the generic
"relative/path.mp4 label" format, and read back like any real dataset.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import asdict, dataclass
from pathlib import Path

import av
import numpy as np
from tqdm import tqdm

from rcca.errors import UserError

AXES = ("horizontal", "vertical")
MOTIONS = ("approach", "separate", "forward", "backward")
CLASSES = [f"{axis}_{motion}" for axis in AXES for motion in MOTIONS]
# Direction (+1 towards larger coordinates) of the first and second square for each motion.
DIRECTIONS = {"approach": (1, -1), "separate": (-1, 1), "forward": (1, 1), "backward": (-1, -1)}
SQUARE = 8  # side of a square in pixels
MARKER = ".rcca-synthetic"  # marks a folder as this generator's cache (only such folders are ever replaced)


@dataclass(frozen=True)
class SyntheticSpec:
    """What to generate; the cache is reused only when all fields match."""

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
    background = rng.integers(0, 60, size=(size, size, 3), dtype=np.uint8)
    travel = rng.uniform(0.45, 0.65) * (half - SQUARE - 6)  # pixels moved over the whole clip
    colours = rng.permutation(np.array([[230, 60, 60], [60, 230, 60], [80, 120, 255], [240, 220, 60]]))[:2]
    starts, across = [], []
    for square, direction in enumerate(DIRECTIONS[MOTIONS[motion]]):
        low = square * half + 3 + (travel if direction < 0 else 0)
        high = square * half + half - SQUARE - 3 - (travel if direction > 0 else 0)
        starts.append(rng.uniform(low, high))
        across.append(rng.integers(3, size - SQUARE - 3))
    video = np.repeat(background[None], frames, axis=0)
    for f in range(frames):
        progress = f / max(1, frames - 1)
        for square, direction in enumerate(DIRECTIONS[MOTIONS[motion]]):
            along = int(round(starts[square] + direction * travel * progress))
            row, col = (across[square], along) if axis == 0 else (along, across[square])
            video[f, row : row + SQUARE, col : col + SQUARE] = colours[square]
    return video


def write_video(path: Path, frames: np.ndarray, fps: int = 12) -> None:
    """Encode frames (T x H x W x 3 uint8) to an MPEG-4 file with PyAV."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with av.open(str(path), mode="w") as container:
        stream = container.add_stream("mpeg4", rate=fps)
        stream.width, stream.height = frames.shape[2], frames.shape[1]
        stream.pix_fmt = "yuv420p"
        stream.bit_rate = 2_000_000
        for frame in frames:
            container.mux(stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")))
        container.mux(stream.encode())


def ensure_synthetic_dataset(root: Path, spec: SyntheticSpec, progress: bool = True) -> Path:
    """Generate the dataset under `root` unless a cache made from the same spec is there.

    Writes root/videos/<class>/<split>_<n>.mp4, root/train.txt, root/test.txt,
    root/classes.txt and root/spec.json. Returns root.
    """
    spec_file = root / "spec.json"
    if spec_file.is_file() and json.loads(spec_file.read_text()) == asdict(spec):
        return root
    marker = root / MARKER
    if root.exists() and any(root.iterdir()) and not (marker.exists() or spec_file.exists()):
        raise UserError(
            f"dataset.root={root} holds files that the synthetic generator did not make; it only writes into an "
            "empty folder or its own cache (did you forget dataset=<name>?)"
        )
    if root.exists():
        shutil.rmtree(root)  # our own cache, made from another spec or interrupted
    root.mkdir(parents=True)
    marker.touch()
    rng = np.random.default_rng(spec.seed)
    lists: dict[str, list[str]] = {"train": [], "test": []}
    jobs = [("train", i) for i in range(spec.num_train)] + [("test", i) for i in range(spec.num_test)]
    for split, i in tqdm(jobs, desc="generating synthetic videos", disable=not progress, unit="video"):
        label = i % len(CLASSES)  # balanced classes
        relative = f"videos/{CLASSES[label]}/{split}_{i:05d}.mp4"
        write_video(root / relative, render_video(label, spec, rng))
        lists[split].append(f"{relative} {label}")
    for split, lines in lists.items():
        (root / f"{split}.txt").write_text("\n".join(lines) + "\n")
    (root / "classes.txt").write_text("\n".join(CLASSES) + "\n")
    spec_file.write_text(json.dumps(asdict(spec)))  # written last: marks the cache complete
    return root
