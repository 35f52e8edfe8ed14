"""Laying collected jobs out as the paper's tables, our values beside the paper's.

A paper table (`rcca.results.paper`) takes the jobs of its preset, and, for a row with its own `experiment`,
that preset's jobs. Its rows come in the paper's order, each filled by the jobs whose settings match it (a job
fills the first row it matches); the jobs of its preset that match no row follow as extra rows, one per value
of the table's `fields`. Each evaluation of a row's jobs goes to the first column whose `match` it satisfies, or
to an extra column named by its `dataset.name` (with no paper value): a smoke run on the synthetic set still
shows the table's layout. An average column (`mean_of`) is the mean of its columns when all are there.

Several evaluations in one cell:
  * those that differ only in `seed`, or in `dataset.split` where the column does not fix it, are averaged;
    the cell keeps their number and top-1 range (min-max);
  * those that differ in other settings split the row: one row per value of those keys, which are shown as
    extra field columns (a test.py run with 10 crops beside the 1-crop final validation, say);
  * evaluations with the same settings are never averaged: the first stays in the row, each other one gets a
    row of its own marked as a duplicate, and the notes list their folders.
A table is shown when it has a job of its own preset, or when other presets' jobs fill at least two columns of
one of its averages (Table IX's ImageNet row from Table VI's jobs on several splits). Jobs of a preset that no
paper table names make one table per preset, whose field columns are the keys that differ between its jobs.
Unfinished jobs are listed with the row they would fill.
"""

from __future__ import annotations

import os
import statistics
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rcca.errors import UserError
from rcca.results.collect import FINISHED, Evaluation, Job
from rcca.results.costs import Cost
from rcca.results.paper import PaperColumn, PaperRow, PaperTable, matches
from rcca.results.settings import SEED_KEY, SPLIT_KEY, canonical, differing_keys, settings_key, show

CostOf = Callable[[dict[str, Any]], Cost]  # a job's flat config -> the cost of its model


@dataclass(frozen=True)
class Cell:
    """Our top-1 of one row in one column, beside the paper's.

    Attributes:
        column: the column's label.
        paper: the paper's top-1 (%), None where it has none.
        top1: ours (%): the mean over `n` evaluations (or columns, in an average), None when there are none.
        top5: our top-5 (%), averaged likewise.
        mean_class_accuracy: our mean class accuracy (%), averaged likewise.
        n: how many evaluations (or columns) the values average.
        low: the lowest top-1 among them.
        high: the highest top-1 among them.
        varied: what the averaged evaluations differ in (e.g. "seed=0,1,2"), or the averaged columns.
        folders: the folders of the evaluations.
    """

    column: str
    paper: float | None
    top1: float | None = None
    top5: float | None = None
    mean_class_accuracy: float | None = None
    n: int = 0
    low: float | None = None
    high: float | None = None
    varied: tuple[str, ...] = ()
    folders: tuple[Path, ...] = ()

    @property
    def difference(self) -> float | None:
        """Ours minus the paper's top-1, in points (None unless both are there)."""
        return None if self.top1 is None or self.paper is None else self.top1 - self.paper


@dataclass(frozen=True)
class Row:
    """A row of a table.

    Attributes:
        model: the paper's model label, or, for a row the paper lacks, its settings.
        experiment: the preset of its jobs.
        in_paper: whether it is one of the paper's rows.
        fields: the shown value of each field column ("a / b" when its jobs differ there, on other datasets).
        paper_params: the paper's parameters (M), if given.
        paper_flops: the paper's FLOPs (G), if given.
        cost: our model's cost (None when not counted or without jobs).
        cells: one per column of the table, in its order.
        duplicate: whether it holds evaluations whose settings equal those of another row's.
        unfinished: its jobs that have not finished.
    """

    model: str
    experiment: str
    in_paper: bool
    fields: dict[str, str]
    paper_params: float | None
    paper_flops: float | None
    cost: Cost | None
    cells: tuple[Cell, ...]
    duplicate: bool = False
    unfinished: tuple[Job, ...] = ()

    @property
    def folders(self) -> tuple[Path, ...]:
        """The folders of its evaluations and unfinished jobs."""
        found = [folder for cell in self.cells for folder in cell.folders]
        return tuple(dict.fromkeys([*found, *(job.folder for job in self.unfinished)]))


@dataclass(frozen=True)
class Table:
    """A table of results.

    Attributes:
        id: the paper's table number, None for a preset the paper has no table for.
        title: what it compares.
        experiment: its preset.
        fields: the config keys of its field columns.
        columns: the labels of its top-1 columns: the paper's, then extra ones (a dataset name).
        rows: its rows.
        jobs: the folders of the jobs it shows.
        parent: the folder that holds them all (the notes name folders relative to it).
        notes: what to know about it: rows from other presets, averages, duplicates, unfinished jobs.
    """

    id: str | None
    title: str
    experiment: str
    fields: tuple[str, ...]
    columns: tuple[str, ...]
    rows: tuple[Row, ...]
    jobs: tuple[Path, ...]
    parent: Path | None
    notes: tuple[str, ...]


@dataclass
class _Group:
    """The jobs of one paper row, or of one extra row before it is split by settings."""

    model: str | None  # None: named by its model (`describe_model`), in the table of a preset the paper lacks
    paper: PaperRow | None
    experiment: str
    jobs: list[Job] = field(default_factory=list)


@dataclass
class _Draft:
    """A row before its field values are known (those depend on the whole table)."""

    group: _Group
    cells: list[Cell]
    configs: list[dict[str, Any]]
    duplicates: list[tuple[str, list[Path]]]  # (column, folders of the evaluations with the same settings)
    unfinished: list[Job]
    copy: bool  # the row of evaluations whose settings another row has


def build_tables(jobs: Sequence[Job], papers: Sequence[PaperTable], cost_of: CostOf | None) -> list[Table]:
    """The paper's tables that the jobs fill, then one table per other preset.

    Args:
        jobs: the collected jobs.
        papers: the paper's tables (`paper_tables()`).
        cost_of: counts a job's model (`CostCounter`); None leaves the cost columns empty.

    Returns:
        The tables, the paper's in its order, then the others in the order of their first job.
    """
    tables = [table for paper in papers if (table := paper_table(paper, jobs, cost_of)) is not None]
    covered = {paper.experiment for paper in papers}
    others = dict.fromkeys(job.experiment for job in jobs if job.experiment not in covered)
    tables += [preset_table(name, [job for job in jobs if job.experiment == name], cost_of) for name in others]
    return tables


def paper_table(paper: PaperTable, jobs: Sequence[Job], cost_of: CostOf | None) -> Table | None:
    """One of the paper's tables filled with the jobs (see the module docstring).

    Args:
        paper: the table.
        jobs: all collected jobs.
        cost_of: counts a job's model, or None.

    Returns:
        The table, or None when it is not to be shown.
    """
    groups: list[_Group] = []
    claimed: set[Path] = set()
    for row in paper.rows:
        experiment = paper.row_experiment(row)
        members = [
            job
            for job in jobs
            if job.experiment == experiment and job.folder not in claimed and matches(row.match, job.config)
        ]
        claimed.update(job.folder for job in members)
        groups.append(_Group(row.model, row, experiment, members))
    own = [job for job in jobs if job.experiment == paper.experiment]
    extra: dict[tuple, _Group] = {}
    for job in own:
        if job.folder not in claimed:
            key = tuple(canonical(job.config.get(name)) for name in paper.fields)
            label = ", ".join(f"{name}={show(job.config.get(name))}" for name in paper.fields) or paper.experiment
            extra.setdefault(key, _Group(label, None, paper.experiment)).jobs.append(job)
    groups += extra.values()
    borrowed = [job for group in groups if group.experiment != paper.experiment for job in group.jobs]
    if not own and not _fills_an_average(paper.columns, borrowed):
        return None
    notes = [
        f"row {group.model} from the jobs of preset {group.experiment}"
        for group in groups
        if group.experiment != paper.experiment
    ]
    return _table(paper.id, paper.title, paper.experiment, paper.fields, paper.columns, groups, cost_of, notes)


def preset_table(experiment: str, jobs: Sequence[Job], cost_of: CostOf | None) -> Table:
    """The table of a preset the paper has no table for: a row per setting, a column per dataset.

    Args:
        experiment: the preset.
        jobs: its jobs.
        cost_of: counts a job's model, or None.

    Returns:
        The table; its field columns are the keys that differ between its jobs on the same dataset (seed and
        split are averaged).
    """
    title = f"Preset {experiment} (no table in the paper)"
    return _table(None, title, experiment, (), (), [_Group(None, None, experiment, list(jobs))], cost_of, [])


def _table(
    table_id: str | None,
    title: str,
    experiment: str,
    fields: Sequence[str],
    paper_columns: Sequence[PaperColumn],
    groups: list[_Group],
    cost_of: CostOf | None,
    notes: list[str],
) -> Table:
    """Lay the groups out as rows under the paper's columns and extra dataset columns."""
    evaluations = [evaluation for group in groups for job in group.jobs for evaluation in job.evaluations]
    columns: dict[str, PaperColumn | None] = {column.label: column for column in paper_columns}
    for evaluation in evaluations:
        columns.setdefault(column_of(evaluation, paper_columns), None)
    drafts: list[_Draft] = []
    splitting: list[str] = []
    for group in groups:
        keys = _splitting_keys(group, columns, paper_columns)
        splitting += [key for key in keys if key not in splitting]
        drafts += _drafts(group, keys, columns, paper_columns)
    shown = (*fields, *(key for key in splitting if key not in fields))
    folders = tuple(dict.fromkeys(job.folder for group in groups for job in group.jobs))
    parent = Path(os.path.commonpath([folder.absolute().parent for folder in folders])) if folders else None
    rows = []
    for draft in drafts:
        row, row_notes = _row(draft, shown, cost_of, parent)
        rows.append(row)
        notes += row_notes
    return Table(table_id, title, experiment, shown, tuple(columns), tuple(rows), folders, parent, tuple(notes))


def column_of(evaluation: Evaluation, paper_columns: Sequence[PaperColumn]) -> str:
    """The label of the column an evaluation fills: the first paper column it matches, else its dataset's name.

    Args:
        evaluation: the evaluation.
        paper_columns: the table's paper columns.

    Returns:
        The column label.
    """
    for column in paper_columns:
        if column.match is not None and matches(column.match, evaluation.config):
            return column.label
    return str(evaluation.config.get("dataset.name", "unknown dataset"))


def averaged_keys(column: PaperColumn | None) -> tuple[str, ...]:
    """The keys over which a column averages evaluations: the seed, and the split unless the column fixes it.

    Args:
        column: a paper column, or None for an extra (dataset) column.

    Returns:
        The keys.
    """
    if column is not None and column.match is not None and SPLIT_KEY in column.match:
        return (SEED_KEY,)
    return (SEED_KEY, SPLIT_KEY)


def _fills_an_average(paper_columns: Sequence[PaperColumn], jobs: Sequence[Job]) -> bool:
    """Whether the jobs' evaluations fill at least two columns of one of the average columns."""
    filled = {column_of(evaluation, paper_columns) for job in jobs for evaluation in job.evaluations}
    return any(len(filled.intersection(column.mean_of)) >= 2 for column in paper_columns)


def _splitting_keys(
    group: _Group, columns: dict[str, PaperColumn | None], paper_columns: Sequence[PaperColumn]
) -> list[str]:
    """The keys that differ between a group's evaluations in one column, other than those averaged there."""
    keys: list[str] = []
    for label, column in columns.items():
        configs = [
            evaluation.config
            for job in group.jobs
            for evaluation in job.evaluations
            if column_of(evaluation, paper_columns) == label
        ]
        keys += [key for key in differing_keys(configs, averaged_keys(column)) if key not in keys]
    return keys


def _drafts(
    group: _Group, keys: list[str], columns: dict[str, PaperColumn | None], paper_columns: Sequence[PaperColumn]
) -> list[_Draft]:
    """A group's rows: one per value of the splitting `keys`, each followed by its duplicates' rows."""

    def variant(config: dict[str, Any]) -> tuple:
        return tuple(canonical(config.get(key)) for key in keys)

    placed = [
        (evaluation, column_of(evaluation, paper_columns)) for job in group.jobs for evaluation in job.evaluations
    ]
    unfinished = [job for job in group.jobs if job.state != FINISHED]
    variants = list(dict.fromkeys([variant(e.config) for e, _ in placed] + [variant(j.config) for j in unfinished]))
    drafts = []
    for value in variants or [()]:
        main: dict[str, list[Evaluation]] = {}
        copies: dict[str, list[Evaluation]] = {}
        duplicates: list[tuple[str, list[Path]]] = []  # (column, folders of evaluations with the same settings)
        for label in columns:
            same: dict[tuple, list[Evaluation]] = {}
            for evaluation, column in placed:
                if column == label and variant(evaluation.config) == value:
                    same.setdefault(settings_key(evaluation.config), []).append(evaluation)
            main[label] = [evaluations[0] for evaluations in same.values()]
            copies[label] = [evaluation for evaluations in same.values() for evaluation in evaluations[1:]]
            duplicates += [
                (label, [e.folder for e in evaluations]) for evaluations in same.values() if len(evaluations) > 1
            ]
        waiting = [job for job in unfinished if variant(job.config) == value]
        drafts.append(_draft(group, main, columns, duplicates, waiting))
        for index in range(max(map(len, copies.values()), default=0)):
            taken = {label: evaluations[index : index + 1] for label, evaluations in copies.items()}
            drafts.append(_draft(group, taken, columns, [], [], copy=True))
    return drafts


def _draft(
    group: _Group,
    placed: dict[str, list[Evaluation]],
    columns: dict[str, PaperColumn | None],
    duplicates: list[tuple[str, list[Path]]],
    unfinished: list[Job],
    copy: bool = False,
) -> _Draft:
    """A row of `placed` evaluations (per column label): its cells, averages included; `copy`: the row of
    evaluations whose settings another row has."""
    paper = dict(zip((column.label for column in columns.values() if column), group.paper.top1)) if group.paper else {}
    cells = {
        label: _cell(label, paper.get(label), placed.get(label, []), averaged_keys(column))
        for label, column in columns.items()
        if column is None or column.match is not None
    }
    for label, column in columns.items():
        if column is not None and column.mean_of:
            cells[label] = _mean_cell(label, paper.get(label), [cells[name] for name in column.mean_of])
    configs = [evaluation.config for evaluations in placed.values() for evaluation in evaluations]
    return _Draft(group, [cells[label] for label in columns], configs, duplicates, unfinished, copy)


def _cell(label: str, paper: float | None, evaluations: list[Evaluation], averaged: Sequence[str]) -> Cell:
    """A cell averaging `evaluations` (which differ only in the `averaged` keys)."""
    top1 = [evaluation.top1 for evaluation in evaluations if evaluation.top1 is not None]
    if not top1:
        return Cell(label, paper, folders=tuple(evaluation.folder for evaluation in evaluations))
    varied = []
    for key in averaged:
        values = list(dict.fromkeys(show(evaluation.config.get(key)) for evaluation in evaluations))
        if len(values) > 1:
            varied.append(f"{key}={','.join(values)}")
    return _averaged_cell(
        label,
        paper,
        top1,
        [evaluation.top5 for evaluation in evaluations],
        [evaluation.mean_class_accuracy for evaluation in evaluations],
        varied,
        [evaluation.folder for evaluation in evaluations],
    )


def _mean_cell(label: str, paper: float | None, parts: list[Cell]) -> Cell:
    """An average column's cell: the mean of `parts` when each has a top-1."""
    if not parts or any(part.top1 is None for part in parts):
        return Cell(label, paper)
    return _averaged_cell(
        label,
        paper,
        [part.top1 for part in parts],
        [part.top5 for part in parts],
        [part.mean_class_accuracy for part in parts],
        [part.column for part in parts],
        [folder for part in parts for folder in part.folders],
    )


def _averaged_cell(
    label: str,
    paper: float | None,
    top1: list[float],
    top5: list[float | None],
    mean_class: list[float | None],
    varied: list[str],
    folders: list[Path],
) -> Cell:
    """A cell holding the mean of `top1` (with its count and range), `top5` and `mean_class`.

    Args:
        label: the column's label.
        paper: the paper's top-1 for the cell.
        top1, top5, mean_class: the averaged evaluations' accuracies (top-1: one per evaluation, none missing).
        varied: what differs between them (`dataset.split=1,2,3`, or the averaged columns' labels).
        folders: their folders.
    """
    return Cell(
        label,
        paper,
        _mean(top1),
        _mean(top5),
        _mean(mean_class),
        len(top1),
        min(top1),
        max(top1),
        tuple(varied),
        tuple(folders),
    )


def _row(draft: _Draft, fields: Sequence[str], cost_of: CostOf | None, parent: Path | None) -> tuple[Row, list[str]]:
    """The finished row, with the notes on it (averaged cells, duplicates, unfinished jobs, a cost not counted) that
    name folders relative to `parent`."""
    group = draft.group
    configs = draft.configs + [job.config for job in draft.unfinished]
    values = {}
    for key in fields:
        shown = list(dict.fromkeys(show(config[key]) for config in configs if _applies(key, config)))
        if not shown and group.paper is not None and key in group.paper.match:
            shown = [show(group.paper.match[key])]
        values[key] = " / ".join(shown)
    model = group.model or (describe_model(configs[0]) if configs else group.experiment)
    notes = []
    cost = None
    if cost_of is not None and configs:
        try:
            cost = cost_of(configs[0])
        except UserError as error:
            notes.append(f"{model}: params and FLOPs not counted: {error}")
    for cell in draft.cells:
        if cell.n > 1:
            notes.append(
                f"{model}, {cell.column}: mean of {cell.n} ({'; '.join(cell.varied)}), "
                f"top-1 range {cell.low:.2f}-{cell.high:.2f}"
            )
    for column, folders in draft.duplicates:
        notes.append(
            f"{model}, {column}: {len(folders)} evaluations with the same settings, each in its own row (not "
            f"averaged): {', '.join(relative(folder, parent) for folder in folders)}"
        )
    notes += [f"{job.state}: {model}: {relative(job.folder, parent)}: {job.detail}" for job in draft.unfinished]
    paper = group.paper
    row = Row(
        model,
        group.experiment,
        paper is not None,
        values,
        paper.params if paper else None,
        paper.flops if paper else None,
        cost,
        tuple(draft.cells),
        draft.copy or bool(draft.duplicates),
        tuple(draft.unfinished),
    )
    return row, notes


def _applies(key: str, config: dict[str, Any]) -> bool:
    """Whether a config has `key` and it means something: the settings of a context module do not when the model
    has none (a TSM baseline's `module.recurrence` is left blank)."""
    if key.startswith("module.") and key != "module.name" and config.get("module.name") == "none":
        return False
    return key in config


def relative(folder: Path, parent: Path | None) -> str:
    """`folder` as a path relative to `parent` (as given when there is no parent)."""
    return str(folder) if parent is None else os.path.relpath(folder.absolute(), parent)


def describe_model(config: dict[str, Any]) -> str:
    """A short name of a job's model, e.g. "TSM-R18 + RCCA (conv3_1)".

    Args:
        config: a job's flat config.

    Returns:
        The backbone, and the context module with its positions unless it is none.
    """
    backbone = config.get("backbone.name")
    name = f"TSM-R{config.get('backbone.depth')}" if backbone == "tsm" else str(backbone)
    module = config.get("module.name", "none")
    if module == "none":
        return name
    positions = config.get("module.positions") or []
    return f"{name} + {str(module).upper()} ({', '.join(map(str, positions))})"


def _mean(values: Sequence[float | None]) -> float | None:
    """The mean of the values, None if any is missing or there are none."""
    if not values or any(value is None for value in values):
        return None
    return statistics.fmean(values)
