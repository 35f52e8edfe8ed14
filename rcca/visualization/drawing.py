"""Figures as RGB images (H x W x 3 uint8 numpy arrays), and PNG / GIF files of them.

Figures are grids of small panels, one row per map or model and one column per frame, drawn with
matplotlib's Agg canvas at a fixed pixel layout (`grid_size` gives an image's size from its rows and
columns), so nothing depends on a display or on pyplot's global state. The arrays go to files
(`write_png`, `write_gif`) or to TensorBoard (`writer.add_image(tag, image, step, dataformats="HWC")`):
`confusion_matrix_image` and `cam_grid_image` take plain tensors and arrays, no checkpoint.

matplotlib is the optional `plot` extra: without it every drawing function raises a one-line UserError.
"""

from __future__ import annotations

import io
import textwrap
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch import Tensor
from torch.nn import functional as F

from rcca.engine.files import write_atomically
from rcca.errors import UserError
from rcca.visualization.maps import ContextMaps, frame_slices

CELL = 96  # pixels of one panel's side
ROW_TITLE = 18  # pixels above each row for its title
LINE = 12  # pixels of each further line of a wrapped row title
CHAR = 6  # pixels of a row title's character, for wrapping
ANIMATION_CELL = 224  # pixels of a panel's side in the GIF, one frame at a time
TOP = 30  # pixels above the first row for the figure's title
MARGIN = 6  # pixels around the grid and between panels
DPI = 100
FONT_SIZE = 8
QUERY_COLOUR = (255, 0, 0)

ArrayLike = np.ndarray | Tensor


@dataclass
class Row:
    """One row of a grid figure.

    Attributes:
        title: drawn above the row, left-aligned.
        panels: RGB uint8 images (any size: each is scaled into a CELL x CELL square), left to right.
    """

    title: str
    panels: list[np.ndarray]


def matplotlib_parts() -> tuple[Any, Any]:
    """matplotlib's `Figure` class and Agg canvas, without pyplot (no backend is chosen globally).

    Raises:
        UserError: one line, when matplotlib is not installed.
    """
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError:
        raise UserError('figures need matplotlib, which is not installed: pip install "rcca[plot]"') from None
    return Figure, FigureCanvasAgg


def colormap(name: str) -> Any:
    """The matplotlib colormap `name` (e.g. "jet", "viridis")."""
    matplotlib_parts()
    from matplotlib import colormaps

    return colormaps[name]


def as_numpy(values: ArrayLike) -> np.ndarray:
    """A tensor (any device) or array as a float64 numpy array."""
    if isinstance(values, Tensor):
        values = values.detach().float().cpu().numpy()
    return np.asarray(values, dtype=np.float64)


def normalised(values: ArrayLike, low: float | None = None, high: float | None = None) -> np.ndarray:
    """`values` scaled to [0, 1] between `low` and `high` (their min and max when not given); a flat map is 0."""
    values = as_numpy(values)
    low = float(values.min()) if low is None else low
    high = float(values.max()) if high is None else high
    if high <= low:
        return np.zeros_like(values)
    return np.clip((values - low) / (high - low), 0.0, 1.0)


def coloured(values: np.ndarray, cmap: str) -> np.ndarray:
    """A 2-D map of values in [0, 1] as an RGB uint8 image through colormap `cmap`."""
    return (colormap(cmap)(values)[..., :3] * 255).round().astype(np.uint8)


def resized(values: np.ndarray, height: int, width: int, smooth: bool) -> np.ndarray:
    """A 2-D map resized to height x width: bilinear when `smooth`, otherwise each cell a block of pixels."""
    if not smooth:
        rows = np.arange(height) * values.shape[0] // height
        columns = np.arange(width) * values.shape[1] // width
        return values[rows][:, columns]
    tensor = torch.from_numpy(np.ascontiguousarray(values, dtype=np.float32))[None, None]
    return F.interpolate(tensor, size=(height, width), mode="bilinear", align_corners=False)[0, 0].double().numpy()


def overlay(frame: np.ndarray, heat: np.ndarray, cmap: str, alpha: np.ndarray | float, smooth: bool) -> np.ndarray:
    """A frame with a heat map over it.

    Args:
        frame: H x W x 3 uint8.
        heat: h x w values in [0, 1], stretched over the frame.
        cmap: the colormap of the heat.
        alpha: opacity of the heat, a number or an h x w map (stretched the same way).
        smooth: bilinear stretching (class activations) or one block per cell (attention over map cells).

    Returns:
        H x W x 3 uint8.
    """
    height, width = frame.shape[:2]
    opacity = resized(alpha, height, width, smooth)[..., None] if isinstance(alpha, np.ndarray) else alpha
    heat = resized(heat, height, width, smooth)
    blended = frame.astype(np.float64) * (1 - opacity) + coloured(heat, cmap).astype(np.float64) * opacity
    return blended.round().clip(0, 255).astype(np.uint8)


def grid_size(rows: int, columns: int, cell: int = CELL, title_lines: int = 1) -> tuple[int, int]:
    """(height, width) in pixels of a grid figure of `rows` x `columns` panels of `cell` pixels, whose longest
    row title wraps onto `title_lines` lines."""
    row_title = ROW_TITLE + LINE * (title_lines - 1)
    height = TOP + rows * (row_title + cell + MARGIN) + MARGIN
    width = MARGIN + columns * (cell + MARGIN)
    return height, width


def canvas_image(figure: Any, canvas: Any) -> np.ndarray:
    """What `figure` draws on its Agg `canvas`, as H x W x 3 uint8."""
    canvas.draw()
    return np.asarray(canvas.buffer_rgba())[..., :3].copy()


def grid_image(rows: Sequence[Row], title: str, column_titles: Sequence[str] = (), cell: int = CELL) -> np.ndarray:
    """Draw rows of panels with their titles: the layout of every figure here.

    Args:
        rows: the rows, top to bottom; a row may have fewer panels than the widest.
        title: the figure's title, at the top.
        column_titles: drawn under the figure's title over each column (e.g. frame numbers).
        cell: pixels of a panel's side.

    Returns:
        The figure, H x W x 3 uint8: `grid_size(len(rows), widest row, cell, lines)` pixels, where row titles
        too long for the width wrap onto `lines` lines.
    """
    figure_class, canvas_class = matplotlib_parts()
    columns = max((len(row.panels) for row in rows), default=1)
    width = grid_size(len(rows), columns, cell)[1]
    wrapped = [textwrap.wrap(row.title, max(1, (width - 2 * MARGIN) // CHAR)) or [""] for row in rows]
    lines = max((len(title_lines) for title_lines in wrapped), default=1)
    height, width = grid_size(len(rows), columns, cell, lines)
    row_title = ROW_TITLE + LINE * (lines - 1)
    figure = figure_class(figsize=(width / DPI, height / DPI), dpi=DPI, facecolor="white")
    canvas = canvas_class(figure)
    figure.text(MARGIN / width, 1 - 4 / height, title, va="top", ha="left", fontsize=FONT_SIZE + 1, weight="bold")
    for index, name in enumerate(column_titles):
        x = (MARGIN + index * (cell + MARGIN) + cell / 2) / width
        figure.text(x, 1 - (TOP - 2) / height, name, va="bottom", ha="center", fontsize=FONT_SIZE - 1, color="dimgray")
    for row_index, (row, title_lines) in enumerate(zip(rows, wrapped)):
        top = TOP + row_index * (row_title + cell + MARGIN)
        text = "\n".join(title_lines)
        figure.text(MARGIN / width, 1 - (top + 3) / height, text, va="top", fontsize=FONT_SIZE, linespacing=1.1)
        for column, panel in enumerate(row.panels):
            left = MARGIN + column * (cell + MARGIN)
            axes = figure.add_axes((left / width, 1 - (top + row_title + cell) / height, cell / width, cell / height))
            axes.imshow(panel, interpolation="nearest", aspect="auto")
            axes.set_axis_off()
    return canvas_image(figure, canvas)


def write_png(image: np.ndarray, path: Path) -> Path:
    """Write an H x W x 3 uint8 image as a PNG file (its folder is created).

    Args:
        image: the figure.
        path: the file.

    Returns:
        `path`.
    """
    data = io.BytesIO()
    Image.fromarray(image).save(data, format="PNG")
    return write_image_file(data, path)


def write_gif(images: Sequence[np.ndarray], path: Path, frame_ms: int = 400) -> Path:
    """Write images of one size as an endlessly looping animated GIF (its folder is created).

    Args:
        images: the frames, H x W x 3 uint8.
        path: the file.
        frame_ms: how long each frame shows.

    Returns:
        `path`.
    """
    data = io.BytesIO()
    first, *rest = (Image.fromarray(image) for image in images)
    first.save(data, format="GIF", save_all=True, append_images=rest, duration=frame_ms, loop=0)
    return write_image_file(data, path)


def write_image_file(data: io.BytesIO, path: Path) -> Path:
    """Write an encoded image to `path` atomically (its folder is created): a reader never sees half a file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    write_atomically(path, data.getbuffer())
    return path


def evenly_spaced(count: int, shown: int) -> list[int]:
    """`shown` frame indices spread evenly over `count` frames, the first and the last included (all when fewer),
    e.g. evenly_spaced(20, 8) -> [0, 3, 5, 8, 11, 14, 16, 19]."""
    return sorted({round(i) for i in np.linspace(0, count - 1, min(shown, count))})


def samples_image(videos: Sequence[tuple[str, np.ndarray]], title: str) -> np.ndarray:
    """A figure of sample videos, one row each: its title, then its frames left to right.

    Args:
        videos: (row title, frames T x H x W x 3 uint8) per row.
        title: the figure's title.

    Returns:
        The figure, H x W x 3 uint8.
    """
    return grid_image([Row(name, list(frames)) for name, frames in videos], title)


def feature_rows(frames: np.ndarray, maps: Sequence[ContextMaps], channels: dict[str, list[int]]) -> list[Row]:
    """The rows of the feature figure (Fig. 6): the frames, then per module and per shown map its input and output.

    Each module's maps are its channel mean and its `channels`; a map's input and output rows share one
    colour scale, so brighter output cells mean larger values, as in the paper's figure.

    Args:
        frames: T x H x W x 3 uint8, the clip the maps come from.
        maps: the captured modules (`rcca.visualization.maps.context_features`).
        channels: position -> the channels to show besides the mean.

    Returns:
        1 + 2 x sum over modules of (1 + its channels) rows, each with one panel per time step of the map.
    """
    steps = maps[0].input.shape[1] if maps else len(frames)
    shown = [frames[index] for index in sorted(set(frame_slices(len(frames), steps)))][:steps]
    rows = [Row("input frames", shown)]
    for entry in maps:
        selections = [("mean over channels", entry.input.mean(dim=0), entry.output.mean(dim=0))]
        selections += [(f"channel {c}", entry.input[c], entry.output[c]) for c in channels[entry.position]]
        for label, before, after in selections:
            low = float(min(before.min(), after.min()))
            high = float(max(before.max(), after.max()))
            for side, values in (("input", before), ("output", after)):
                panels = [coloured(normalised(step, low, high), "viridis") for step in values]
                rows.append(Row(f"{entry.position} {side}, {label}", panels))
    return rows


def features_image(
    frames: np.ndarray, maps: Sequence[ContextMaps], channels: dict[str, list[int]], title: str
) -> np.ndarray:
    """The feature figure: `feature_rows` drawn with one column per time step.

    Args:
        frames: T x H x W x 3 uint8.
        maps: the captured modules.
        channels: position -> the channels to show besides the mean.
        title: the figure's title.

    Returns:
        H x W x 3 uint8.
    """
    rows = feature_rows(frames, maps, channels)
    steps = max(len(row.panels) for row in rows)
    return grid_image(rows, title, [f"t={t}" for t in range(steps)])


def cam_rows(frames: np.ndarray | Sequence[np.ndarray], cams: Sequence[ArrayLike], titles: Sequence[str]) -> list[Row]:
    """One row per model: its class activation map over each frame, normalised per row (jet, half opaque).

    Args:
        frames: T x H x W x 3 uint8 shared by all rows, or one such array per row.
        cams: one T' x h x w map per row (T' <= T: each slice covers the frames `frame_slices` gives).
        titles: one per row.

    Returns:
        The rows.
    """
    per_row = [frames] * len(cams) if isinstance(frames, np.ndarray) else list(frames)
    rows = []
    for clip, cam, title in zip(per_row, cams, titles):
        heat = normalised(cam)
        slices = frame_slices(len(heat), len(clip))
        rows.append(Row(title, [overlay(frame, heat[s], "jet", 0.5, True) for frame, s in zip(clip, slices)]))
    return rows


def cam_grid_image(
    frames: np.ndarray | Sequence[np.ndarray], cams: Sequence[ArrayLike], titles: Sequence[str], title: str = ""
) -> np.ndarray:
    """Class activation maps over the frames (Fig. 7): one row per model, frames left to right.

    Args:
        frames: T x H x W x 3 uint8 shared by all rows (`rcca.visualization.maps.display_frames`),
            or one such array per row.
        cams: one T' x h x w map per row, a tensor or array (`ClassMaps.maps[k]`).
        titles: one per row, e.g. the model and its class and score.
        title: the figure's title.

    Returns:
        H x W x 3 uint8, for `write_png` or `SummaryWriter.add_image(..., dataformats="HWC")`.
    """
    rows = cam_rows(frames, cams, titles)
    return grid_image(rows, title, [f"frame {t}" for t in range(max(len(row.panels) for row in rows))])


def cam_animation(
    frames: np.ndarray | Sequence[np.ndarray], cams: Sequence[ArrayLike], titles: Sequence[str], title: str = ""
) -> list[np.ndarray]:
    """The class activation figure one frame at a time (the models stacked, larger panels), for `write_gif`.

    Args:
        frames: as for `cam_grid_image`.
        cams: as for `cam_grid_image`.
        titles: as for `cam_grid_image`.
        title: the figure's title.

    Returns:
        One H x W x 3 uint8 image per frame of the longest clip.
    """
    rows = cam_rows(frames, cams, titles)
    steps = max(len(row.panels) for row in rows)
    return [
        grid_image(
            [Row(row.title, [row.panels[min(t, len(row.panels) - 1)]]) for row in rows],
            f"{title}, frame {t}",
            cell=ANIMATION_CELL,
        )
        for t in range(steps)
    ]


def attention_rows(
    frames: np.ndarray, passes: Sequence[Tensor], contexts: Sequence[Tensor], point: tuple[int, int, int]
) -> list[Row]:
    """The rows of the attention figure: each pass's weights of the query, then its context after 1..R passes.

    Map cells are stretched over the frames as blocks; a cell's colour and opacity grow with the square root
    of its weight (scaled to the row's largest, so that small weights stay visible), the query's cell is
    outlined in red on its own frame, and cells with no weight leave the frame as it is.

    Args:
        frames: T x H x W x 3 uint8.
        passes: R volumes T' x h x w (`rcca.visualization.maps.attention_at_point`).
        contexts: R volumes T' x h x w (`rcca.visualization.maps.effective_context`).
        point: the query (t, h, w) in the map.

    Returns:
        2 R rows, one panel per frame.
    """
    rows = []
    labels = [f"pass {r}: attention weights of the query" for r in range(1, len(passes) + 1)]
    labels += [f"context after {r} pass{'es' if r > 1 else ''}" for r in range(1, len(contexts) + 1)]
    for label, volume in zip(labels, [*passes, *contexts]):
        values = as_numpy(volume)
        heat = np.sqrt(normalised(values, 0.0))
        alpha = np.where(values > 0, 0.35 + 0.6 * heat, 0.0)
        slices = frame_slices(len(values), len(frames))
        panels = [
            marked(overlay(frame, heat[s], "plasma", alpha[s], False), point, values.shape, s)
            for frame, s in zip(frames, slices)
        ]
        rows.append(Row(f"{label} ({int((values > 0).sum())} of {values.size} positions)", panels))
    return rows


def marked(image: np.ndarray, point: tuple[int, int, int], shape: tuple[int, ...], step: int) -> np.ndarray:
    """`image` with the query's cell outlined when `step` is the query's time step.

    Args:
        image: H x W x 3 uint8, a frame with a map of `shape` (T' x h x w) stretched over it.
        point: the query (t, h, w).
        shape: the map's shape.
        step: the map time step the frame shows.

    Returns:
        A copy of `image`, outlined or not.
    """
    if step != point[0]:
        return image
    height, width = image.shape[:2]
    top, bottom = point[1] * height // shape[1], (point[1] + 1) * height // shape[1] - 1
    left, right = point[2] * width // shape[2], (point[2] + 1) * width // shape[2] - 1
    out = image.copy()
    out[top, left : right + 1] = out[bottom, left : right + 1] = QUERY_COLOUR
    out[top : bottom + 1, left] = out[top : bottom + 1, right] = QUERY_COLOUR
    return out


def attention_image(
    frames: np.ndarray, passes: Sequence[Tensor], contexts: Sequence[Tensor], point: tuple[int, int, int], title: str
) -> np.ndarray:
    """The attention figure (Fig. 1 and 4): `attention_rows` drawn with one column per frame.

    Args:
        frames: T x H x W x 3 uint8.
        passes: R volumes T' x h x w, each pass's weights of the query.
        contexts: R volumes T' x h x w, the context after 1..R passes.
        point: the query (t, h, w).
        title: the figure's title.

    Returns:
        H x W x 3 uint8.
    """
    rows = attention_rows(frames, passes, contexts, point)
    return grid_image(rows, title, [f"frame {t}" for t in range(len(frames))])


def confusion_matrix_image(matrix: ArrayLike, class_names: Sequence[str]) -> np.ndarray:
    """A confusion matrix as an image: rows the true classes, each normalised to its videos, columns predicted.

    Class names label the axes up to 60 classes and counts are written in the cells up to 20; beyond,
    the matrix alone is drawn.

    Args:
        matrix: K x K counts (`rcca.engine.metrics`' "confusion_matrix"), a list, array or tensor.
        class_names: the K names, in label order.

    Returns:
        H x W x 3 uint8, for `write_png` or `SummaryWriter.add_image(..., dataformats="HWC")`.
    """
    counts = as_numpy(matrix)
    classes = len(counts)
    totals = counts.sum(axis=1, keepdims=True)
    rates = np.divide(counts, totals, out=np.zeros_like(counts), where=totals > 0)
    cell = int(np.clip(480 // max(classes, 1), 4, 40))
    labelled = classes <= 60
    margin = 120 if labelled else 40
    side = margin + classes * cell + 20
    figure_class, canvas_class = matplotlib_parts()
    figure = figure_class(figsize=(side / DPI, side / DPI), dpi=DPI, facecolor="white")
    canvas = canvas_class(figure)
    axes = figure.add_axes((margin / side, 20 / side, classes * cell / side, classes * cell / side))
    axes.imshow(rates, cmap="Blues", vmin=0, vmax=1, interpolation="nearest", aspect="auto")
    axes.xaxis.tick_top()
    axes.xaxis.set_label_position("top")
    axes.set_xlabel("predicted", fontsize=FONT_SIZE)
    axes.set_ylabel("true", fontsize=FONT_SIZE)
    if labelled:
        names = [name[:18] for name in class_names]
        axes.set_xticks(range(classes), names, rotation=90, fontsize=FONT_SIZE - 2)
        axes.set_yticks(range(classes), names, fontsize=FONT_SIZE - 2)
    else:
        axes.set_xticks([])
        axes.set_yticks([])
    if classes <= 20:
        for (i, j), count in np.ndenumerate(counts):
            colour = "white" if rates[i, j] > 0.5 else "black"
            axes.text(j, i, f"{count:.0f}", ha="center", va="center", fontsize=FONT_SIZE - 2, color=colour)
    return canvas_image(figure, canvas)
