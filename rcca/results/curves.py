"""Training curves of runs, read from their TensorBoard event files and drawn as one PNG figure.

A run is a folder whose `tensorboard/` sub-folder holds event files (`events.out.tfevents.*`): a run folder of
train.py, single or one job of a Hydra multirun. The trainer writes its scalars there against the update step:
`train/loss`, `train/top1`, `train/lr`, one `gamma/<parameter name>` per RCCA-3D module at each log point, and
`val/top1` at each validation. A resumed run writes a second event file into the same folder and logs some
steps again; the later write of a step (by wall time, then file and position in it) wins.

The figure has one panel per curve (`PANELS`: loss, top-1 train and validation, learning rate, gamma), two
panels a row, each `PANEL_WIDTH` x `PANEL_HEIGHT` pixels (`figure_size` gives the whole). With one run, each
line of a panel has its own colour; with several (the jobs of a sweep), each run has one colour throughout,
named in a legend below the panels by its label (the job folder's override dirname), and the lines of a panel
differ by their dash. It is drawn on matplotlib's Agg canvas, no display or pyplot state needed; matplotlib is
the optional `plot` extra (a one-line UserError without it).
"""

from __future__ import annotations

import io
import math
import os
import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tensorboard.backend.event_processing.event_accumulator import SCALARS, EventAccumulator

from rcca.engine.files import write_atomically
from rcca.errors import UserError
from rcca.results.collect import NOT_SEARCHED, natural_key
from rcca.visualization.drawing import matplotlib_parts

TENSORBOARD_FOLDER = "tensorboard"  # <run>/tensorboard/: the trainer's SummaryWriter folder
EVENT_FILE_MARK = "tfevents"  # in every event file's name: events.out.tfevents.<time>.<host>.<pid>.<n>
CURVES_NAME = "curves.png"  # the figure's default name, in the folder it shows
VAL_TOP1 = "val/top1"
GAMMA_PREFIX = "gamma/"
# Panel name: its title and its tags; a tag ending in "/" stands for every tag with that prefix.
PANELS = {
    "loss": ("training loss", ("train/loss",)),
    "top1": ("top-1 accuracy (%)", ("train/top1", VAL_TOP1)),
    "lr": ("learning rate", ("train/lr",)),
    "gamma": ("RCCA-3D gamma", (GAMMA_PREFIX,)),
}
LINE_NAMES = {"train/top1": "train", VAL_TOP1: "validation"}  # names in a panel's legend (others: see line_name)
DASHES = ("-", "--", ":", "-.")  # the lines of a panel, in order
COLOURS = "tab10"  # matplotlib's colour cycle: runs (several) or lines (one run)
PANEL_WIDTH = 480  # pixels of one panel, its axes, ticks and title included
PANEL_HEIGHT = 300
COLUMNS = 2  # panels a row
TITLE_HEIGHT = 30  # pixels above the panels for the figure's title
LEGEND_ROW = 18  # pixels of one run's entry in the legend below the panels (several runs only)
LEGEND_PAD = 12  # pixels between the panels and that legend
AXES_MARGINS = (70, 20, 30, 45)  # pixels of a panel outside its axes: left, right, top, bottom
DPI = 100
FONT_SIZE = 9


@dataclass(frozen=True)
class Series:
    """One scalar of a run: its values by update step.

    Attributes:
        steps: the update steps, increasing, each once.
        values: the value at each step.
    """

    steps: tuple[int, ...]
    values: tuple[float, ...]


@dataclass(frozen=True)
class RunCurves:
    """The scalars of one run.

    Attributes:
        folder: the run folder.
        label: its name in the figure and the summary (see `run_label`).
        scalars: {TensorBoard tag: its series}, every scalar tag of its event files.
    """

    folder: Path
    label: str
    scalars: dict[str, Series]

    @property
    def logged(self) -> bool:
        """Whether the run has logged any scalar that a panel draws (not yet before its first log point)."""
        return any(panel_tags(panel, self.scalars) for panel in PANELS)

    @property
    def last_step(self) -> int:
        """The last update step of any of its scalars, 0 when none is logged."""
        return max((series.steps[-1] for series in self.scalars.values() if series.steps), default=0)


def read_runs(root: Path) -> tuple[RunCurves, ...]:
    """The scalars of every run under `root` (a run folder, a multirun folder or a folder of them).

    Args:
        root: the folder to search.

    Returns:
        The runs, in natural folder order; some may have no scalars yet (`RunCurves.logged`), not all.

    Raises:
        UserError: one line, when `root` does not exist or is a file, holds no run, or no run under it has
            logged a scalar yet.
    """
    runs = tuple(
        RunCurves(folder, run_label(folder, root), read_scalars(event_files(folder))) for folder in find_runs(root)
    )
    if not any(run.logged for run in runs):
        where = (
            f"{runs[0].folder}: no scalars" if len(runs) == 1 else f"{root}: none of its {len(runs)} runs has scalars"
        )
        raise UserError(
            f"{where} logged yet (the first come trainer.log_every updates in); "
            "plot again later, or see train.log in the run folder"
        )
    return runs


def find_runs(root: Path) -> list[Path]:
    """The run folders under `root`, itself included: folders whose `tensorboard/` holds an event file.

    Hydra's and submitit's records are not searched, nor the sub-folders of a run.

    Args:
        root: the folder to search.

    Returns:
        The run folders, in natural order (`2_...` before `10_...`).

    Raises:
        UserError: one line, when `root` does not exist or is a file, or holds no run.
    """
    if not root.is_dir():
        raise UserError(f"{root}: {'not a folder' if root.exists() else 'no such folder'}")
    runs = list(_run_folders(root))
    if not runs:
        raise UserError(
            f"{root}: no run under it (no {TENSORBOARD_FOLDER}/events.out.tfevents.* file); "
            "pass a run folder of train.py or a multirun folder"
        )
    return runs


def _run_folders(root: Path) -> Iterator[Path]:
    """The run folders under `root` (see `find_runs`), parents before their sub-folders."""
    for current, subfolders, _ in os.walk(root):
        here = Path(current)
        if event_files(here):
            subfolders[:] = []
            yield here
        else:
            subfolders[:] = sorted((name for name in subfolders if name not in NOT_SEARCHED), key=natural_key)


def event_files(run: Path) -> list[Path]:
    """The TensorBoard event files of a run folder, in natural name order (none when it is no run)."""
    folder = run / TENSORBOARD_FOLDER
    if not folder.is_dir():
        return []
    files = [path for path in folder.iterdir() if EVENT_FILE_MARK in path.name and path.is_file()]
    return sorted(files, key=lambda path: natural_key(path.name))


def run_label(run: Path, root: Path) -> str:
    """A run's name: its path under `root`, the Hydra job number dropped from its folder name.

    A multirun job `3_module=nl,dataset.split=2` is `module=nl,dataset.split=2`; a folder of a preset that
    names its jobs by their overrides alone keeps its name, as does a single run's (`12-30-05`).

    Args:
        run: the run folder.
        root: the folder searched.

    Returns:
        The label, e.g. "module=nl,dataset.split=2" or "table4_recurrence/module.recurrence=3".
    """
    parent = run.relative_to(root).parent
    match = re.fullmatch(r"\d+_(.+)", run.resolve().name)
    name = match.group(1) if match else run.resolve().name
    return name if parent == Path() else f"{parent.as_posix()}/{name}"


def read_scalars(files: Sequence[Path]) -> dict[str, Series]:
    """Every scalar of some event files, merged: of the writes of one tag at one step, the later wins.

    Later means a later wall time; at equal wall times, a later file of `files`, then a later event in it.
    A file that is not an event file (or is empty) adds nothing.

    Args:
        files: the event files, in the order they were written.

    Returns:
        {tag: its series}, tags in sorted order.
    """
    events: dict[str, list[tuple[float, int, float]]] = {}
    for path in files:
        accumulator = EventAccumulator(str(path), size_guidance={SCALARS: 0}, purge_orphaned_data=False)
        accumulator.Reload()
        for tag in accumulator.Tags()[SCALARS]:
            events.setdefault(tag, []).extend(
                (event.wall_time, event.step, event.value) for event in accumulator.Scalars(tag)
            )
    scalars = {}
    for tag in sorted(events):
        by_step = {step: value for _, step, value in sorted(events[tag], key=lambda event: event[0])}  # stable
        steps = sorted(by_step)
        scalars[tag] = Series(tuple(steps), tuple(by_step[step] for step in steps))
    return scalars


def panel_tags(panel: str, scalars: dict[str, Series]) -> list[str]:
    """The tags of a run that a panel draws, in order.

    Args:
        panel: a key of `PANELS`.
        scalars: the run's scalars.

    Returns:
        Its tags (a prefix's in natural order); empty when the run logged none of them.

    Raises:
        ValueError: `panel` is not one of `PANELS`.
    """
    if panel not in PANELS:
        raise ValueError(f"unknown panel {panel!r}; the panels are {', '.join(PANELS)}")
    tags = []
    for entry in PANELS[panel][1]:
        if entry.endswith("/"):
            tags += sorted((tag for tag in scalars if tag.startswith(entry)), key=natural_key)
        elif entry in scalars:
            tags.append(entry)
    return tags


def line_name(tag: str) -> str:
    """A tag's name in its panel's legend: "train", "validation", or a gamma's module ("backbone.layer2.3.context")."""
    return LINE_NAMES.get(tag, tag.removeprefix(GAMMA_PREFIX).removesuffix(".gamma"))


def panels_with_data(runs: Sequence[RunCurves]) -> tuple[str, ...]:
    """The panels that some run has scalars for (the default panels: gamma only with RCCA-3D runs).

    Args:
        runs: the runs.

    Returns:
        Keys of `PANELS`, in its order.
    """
    return tuple(panel for panel in PANELS if any(panel_tags(panel, run.scalars) for run in runs))


def figure_size(num_panels: int, num_runs: int) -> tuple[int, int]:
    """The pixel size of `draw_curves`' figure.

    Args:
        num_panels: its panels.
        num_runs: the runs drawn (several get a legend below the panels, one row each).

    Returns:
        (height, width).
    """
    rows = math.ceil(num_panels / COLUMNS)
    legend = LEGEND_PAD + num_runs * LEGEND_ROW if num_runs > 1 else 0
    return TITLE_HEIGHT + rows * PANEL_HEIGHT + legend, min(num_panels, COLUMNS) * PANEL_WIDTH


def draw_curves(runs: Sequence[RunCurves], panels: Sequence[str], title: str) -> bytes:
    """The figure of the runs' curves, as PNG data.

    Args:
        runs: the runs to draw; those without scalars yet are left out.
        panels: keys of `PANELS`, in the figure's order (left to right, then down); a panel no run has
            scalars for says so.
        title: the figure's title (the folder shown, say).

    Returns:
        The PNG file's bytes, `figure_size(len(panels), runs drawn)` pixels.

    Raises:
        ValueError: no panel, or a panel is not one of `PANELS`.
        UserError: one line, when matplotlib is not installed.
    """
    if not panels:
        raise ValueError("no panel to draw")
    for panel in panels:
        panel_tags(panel, {})  # ValueError for an unknown panel
    figure_class, canvas_class = matplotlib_parts()
    drawn = [run for run in runs if run.logged]
    height, width = figure_size(len(panels), len(drawn))
    figure = figure_class(figsize=(width / DPI, height / DPI), dpi=DPI, facecolor="white")
    canvas = canvas_class(figure)
    colours = _colours()
    figure.text(8 / width, 1 - 6 / height, title, va="top", ha="left", fontsize=FONT_SIZE + 1, weight="bold")
    left, right, top, bottom = AXES_MARGINS
    axes_width, axes_height = PANEL_WIDTH - left - right, PANEL_HEIGHT - top - bottom
    for index, panel in enumerate(panels):
        x = (index % COLUMNS) * PANEL_WIDTH + left
        y = TITLE_HEIGHT + (index // COLUMNS + 1) * PANEL_HEIGHT - bottom  # the axes' lower edge, from the top
        axes = figure.add_axes((x / width, 1 - y / height, axes_width / width, axes_height / height))
        _draw_panel(axes, panel, drawn, colours)
    if len(drawn) > 1:
        handles = [_line(colours[index % len(colours)], "-", run.label) for index, run in enumerate(drawn)]
        legend_top = TITLE_HEIGHT + math.ceil(len(panels) / COLUMNS) * PANEL_HEIGHT + LEGEND_PAD
        figure.legend(
            handles=handles,
            loc="upper left",
            bbox_to_anchor=(left / width, 1 - legend_top / height),
            frameon=False,
            fontsize=FONT_SIZE,
            borderaxespad=0,
            borderpad=0,
            labelspacing=(LEGEND_ROW - FONT_SIZE * DPI / 72) / (FONT_SIZE * DPI / 72),
        )
    canvas.draw()
    buffer = io.BytesIO()
    canvas.print_png(buffer)
    return buffer.getvalue()


def _draw_panel(axes: Any, panel: str, runs: Sequence[RunCurves], colours: Sequence[Any]) -> None:
    """One panel: each run's lines of it; a legend of its lines when it has several; a note when empty."""
    names = list(dict.fromkeys(line_name(tag) for run in runs for tag in panel_tags(panel, run.scalars)))
    for run_index, run in enumerate(runs):
        for tag in panel_tags(panel, run.scalars):
            series = run.scalars[tag]
            line = names.index(line_name(tag))
            colour = colours[(run_index if len(runs) > 1 else line) % len(colours)]
            sparse = tag == VAL_TOP1 or len(series.steps) == 1  # one point a validation: marked
            axes.plot(
                series.steps,
                series.values,
                color=colour,
                linestyle=DASHES[line % len(DASHES)],
                marker="o" if sparse else None,
                markersize=3,
                linewidth=1.2,
            )
    axes.set_title(PANELS[panel][0], fontsize=FONT_SIZE + 1)
    axes.set_xlabel("update", fontsize=FONT_SIZE)
    axes.tick_params(labelsize=FONT_SIZE - 1)
    axes.grid(alpha=0.3)
    if not names:
        axes.text(0.5, 0.5, "not logged", transform=axes.transAxes, ha="center", va="center", color="gray")
    elif len(names) > 1:
        handles = [
            _line(colours[index % len(colours)] if len(runs) == 1 else "dimgray", DASHES[index % len(DASHES)], name)
            for index, name in enumerate(names)
        ]
        axes.legend(handles=handles, fontsize=FONT_SIZE - 1, loc="best")


def _colours() -> list[Any]:
    """The colours of `COLOURS`, in order: one per run, or per line of a panel when there is one run."""
    from matplotlib import colormaps

    return list(colormaps[COLOURS].colors)


def _line(colour: Any, dash: str, label: str) -> Any:
    """A legend entry: a short line of that colour and dash."""
    from matplotlib.lines import Line2D

    return Line2D([], [], color=colour, linestyle=dash, linewidth=1.5, label=label)


def save_png(data: bytes, path: Path, overwrite: bool) -> Path:
    """Write PNG data to `path` atomically (its folder is created); an existing file only with `overwrite`.

    Args:
        data: the PNG file's bytes.
        path: the file.
        overwrite: replace an existing file.

    Returns:
        `path`.

    Raises:
        UserError: one line, when `path` exists and `overwrite` is false, or is a folder.
    """
    if path.is_dir():
        raise UserError(f"{path}: a folder; name the PNG file to write")
    if path.exists() and not overwrite:
        raise UserError(f"{path}: exists; replace it with --overwrite, or write elsewhere with --output")
    path.parent.mkdir(parents=True, exist_ok=True)
    write_atomically(path, data)
    return path


def run_summary(run: RunCurves) -> str:
    """One line on a run: its label, how far it logged, its last and best validation top-1.

    Args:
        run: the run.

    Returns:
        E.g. "module=nl: logged up to update 80; val top-1 last 41.25% (update 80), best 43.50% (update 40)".
    """
    if not run.logged:
        return f"{run.label}: no scalars yet (see {run.folder / 'train.log'})"
    line = f"{run.label}: logged up to update {run.last_step}"
    validation = run.scalars.get(VAL_TOP1)
    if validation is None or not validation.steps:
        return f"{line}; no validation yet"
    best = max(range(len(validation.values)), key=lambda index: validation.values[index])
    return (
        f"{line}; val top-1 last {validation.values[-1]:.2f}% (update {validation.steps[-1]}), "
        f"best {validation.values[best]:.2f}% (update {validation.steps[best]})"
    )
