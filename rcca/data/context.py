"""The context set: a generated task that a TSM backbone cannot solve without a context module.

Each video shows two coloured squares over a static noise background: the first only in the first
SHOWN frames, the second only in the last SHOWN frames, at random places that share no row and no
column. The class is whether the two squares have the same colour (out of len(COLOURS)):
`different` (0) or `same` (1), half the videos each. Everything else (places, colours of a
`different` pair, background) is random, so the label depends on the relation between the two
squares only.

Why a plain TSM ResNet cannot compute it (the generator's invariants, tested):
  * TSM's convolutions are 2D: the only mixing across time is the temporal shift, which moves
    features by one frame per residual block. A TSM ResNet-18 has 8 blocks, so a feature of frame
    t before the global pooling depends on frames t-8 .. t+8 only (17 frames). The squares are
    shown in the first and last SHOWN frames of a clip of `frames` >= min_frames(8) = 2 x SHOWN + 16
    = 20 frames, and the backbone takes every frame (config validation requires
    backbone.num_frames == dataset.synthetic.frames, so that segment sampling keeps each frame):
    the last frame with the first square and the first frame with the second are more than 16
    frames apart, and no feature sees both. Deeper TSM ResNets reach further and need more frames.
  * At test time (BatchNorm with its running statistics, no dropout) the head is global average
    pooling and one linear layer, so a logit is a sum of per-position terms, each of which sees at
    most one square: logit = a(first square) + b(second square) + (background terms). A rule
    `same` when a(first) + b(second) > theta cannot be right on all pairs: for colours i != j it
    would need a(i) + b(i) > theta >= a(i) + b(j) and a(j) + b(j) > theta >= a(j) + b(i), and the
    two sums of the left sides and of the right sides are equal. Of all such rules, those that
    rank the colours (`same` when the second square's colour is ranked no lower than the first's)
    are right on every equal pair and half the unequal ones: 75% of the set's distribution at
    most (a rule fitted to a finite test set can score a little more), and they need features
    that tell the first square from the second by their place in the clip. In practice the plain
    backbone memorises its training set and tests near chance.
  * A context module relates any two positions. Non-local does it in one step. Each CCA-3D step of
    RCCA-3D attends along a position's temporal, vertical and horizontal lines at once, so one step
    links a position of the first frames only to the same place in the last ones, through what the
    convolutions before the module have spread of each square; two steps reach the places of the
    last frames that share its row or its column, three steps every place. Both make the squares interact
    (tested); in the mini Table IV (experiment=context_recurrence, seed 0) R=1 stayed at chance
    while R=2 and R=3 learned the task.
Sizes: 64 x 64 frames with 12-pixel squares at least 8 pixels (MARGIN_FRACTION) inside the frame, so that the
quick-start's multi-scale crops (scales 1 and 0.875 of the short side) never cut a square off
whole; six saturated colours far apart in RGB, so that MPEG-4 coding cannot make two of them alike.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from rcca.models.positions import TSM_STAGE_BLOCKS

if TYPE_CHECKING:
    from rcca.data.synthetic import SyntheticSpec

CLASSES = ["different", "same"]
SHOWN = 2  # frames each square is shown: the first square in frames 0 .. SHOWN-1, the second in the last SHOWN
SQUARE_FRACTION = 0.1875  # side of a square as a fraction of the frame (12 pixels at 64)
MARGIN_FRACTION = 0.125  # least distance between a square and the frame's edge, as a fraction (8 pixels at 64)
BACKGROUND_LEVELS = 60  # background noise takes grey levels 0 .. BACKGROUND_LEVELS - 1, darker than any square
# RGB colours: red, green, blue, yellow, magenta, cyan
COLOURS = np.array([[230, 40, 40], [40, 220, 40], [60, 90, 255], [240, 230, 40], [230, 40, 230], [40, 230, 230]])


def tsm_reach(depth: int) -> int:
    """Frames a TSM ResNet feature reaches on either side before the pooling: one shift per residual block,
    e.g. tsm_reach(18) -> 8."""
    return sum(TSM_STAGE_BLOCKS[depth])


def min_frames(depth: int) -> int:
    """The least frame count for which no feature of a TSM ResNet of `depth` sees both squares: the squares'
    nearest frames are then 2 x reach + 1 apart, e.g. min_frames(18) -> 20, min_frames(50) -> 36."""
    return 2 * SHOWN + 2 * tsm_reach(depth)


def square_places(size: int, rng: np.random.Generator) -> list[tuple[int, int]]:
    """The (row, column) of the top-left corners of the two squares: inside the margins, sharing no row
    and no column of pixels (their rows, and their columns, differ by a square's side or more).

    Args:
        size: frame height and width.
        rng: the generator's random state.
    """
    side = round(SQUARE_FRACTION * size)
    low, high = round(MARGIN_FRACTION * size), size - round(MARGIN_FRACTION * size) - side + 1
    first = (int(rng.integers(low, high)), int(rng.integers(low, high)))
    while True:
        second = (int(rng.integers(low, high)), int(rng.integers(low, high)))
        if abs(second[0] - first[0]) >= side and abs(second[1] - first[1]) >= side:
            return [first, second]


def square_colours(label: int, rng: np.random.Generator) -> tuple[int, int]:
    """Indices into COLOURS of the first and second square: equal for `same` (1), different for `different` (0),
    each pair of its kind equally likely."""
    first = int(rng.integers(len(COLOURS)))
    second = first if label == 1 else (first + int(rng.integers(1, len(COLOURS)))) % len(COLOURS)
    return first, second


def render_video(label: int, spec: SyntheticSpec, rng: np.random.Generator) -> np.ndarray:
    """Draw one video of class `label`, e.g. spec.frames=20: the first square in frames 0-1, the second in
    frames 18-19, frames 2-17 background only.

    Args:
        label: 0 (different) or 1 (same).
        spec: its `frames` (at least min_frames(18)) and `size` are used.
        rng: the generator's random state.

    Returns:
        frames x size x size x 3 uint8 (RGB).
    """
    if spec.frames < min_frames(18):
        raise ValueError(f"the context set needs {min_frames(18)} frames or more (got {spec.frames})")
    size, side = spec.size, round(SQUARE_FRACTION * spec.size)
    background = rng.integers(0, BACKGROUND_LEVELS, size=(size, size, 3), dtype=np.uint8)
    video = np.repeat(background[None], spec.frames, axis=0)
    shown = (range(SHOWN), range(spec.frames - SHOWN, spec.frames))
    for frames, (row, col), colour in zip(shown, square_places(size, rng), square_colours(label, rng)):
        video[frames.start : frames.stop, row : row + side, col : col + side] = COLOURS[colour]
    return video
