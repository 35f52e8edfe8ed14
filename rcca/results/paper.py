"""The paper's reported numbers (`paper.yaml`, package data), typed and checked, and the rule that matches runs to them.

`paper_tables()` reads the file once into frozen `PaperTable`s: per table its preset, the config keys that tell
its rows apart, its top-1 columns (each selecting evaluations by config keys, or averaging other columns) and
its rows in the paper's order (each selecting jobs by config keys, with the paper's FLOPs, parameters and top-1).
A file of the wrong shape fails with a ValueError naming the table, row or column. `matches` is the selection
rule of rows and columns (see the header comment of paper.yaml).
"""

from __future__ import annotations

import functools
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from omegaconf import OmegaConf

from rcca.results.settings import canonical

PAPER_FILE = Path(__file__).resolve().with_name("paper.yaml")
_TABLE_KEYS = {"id", "title", "experiment", "fields", "columns", "rows"}
_COLUMN_KEYS = {"label", "match", "mean_of"}
_ROW_KEYS = {"model", "match", "experiment", "flops", "params", "top1"}


@dataclass(frozen=True)
class PaperColumn:
    """A top-1 column of a paper table.

    Attributes:
        label: the column's heading (unique in its table).
        match: the config values of the evaluations that fill it (None for an average).
        mean_of: the labels of the columns it averages (empty unless it is an average).
    """

    label: str
    match: dict[str, Any] | None = None
    mean_of: tuple[str, ...] = ()


@dataclass(frozen=True)
class PaperRow:
    """A row of a paper table.

    Attributes:
        model: the paper's label of the model.
        match: the config values of the jobs that fill it.
        top1: the paper's top-1 (%) per column, None where the paper has "-".
        experiment: the preset of its jobs, when not the table's.
        flops: the paper's FLOPs (G, backbone MACs + 2 x module MACs), if it reports them.
        params: the paper's parameters (M, 400-class classifier), if it reports them.
    """

    model: str
    match: dict[str, Any]
    top1: tuple[float | None, ...]
    experiment: str | None = None
    flops: float | None = None
    params: float | None = None


@dataclass(frozen=True)
class PaperTable:
    """A table of the paper.

    Attributes:
        id: its number, e.g. "IV".
        title: what it compares.
        experiment: the preset whose jobs fill it.
        fields: the config keys that tell its rows apart.
        columns: its top-1 columns.
        rows: its rows, in the paper's order.
    """

    id: str
    title: str
    experiment: str
    fields: tuple[str, ...]
    columns: tuple[PaperColumn, ...]
    rows: tuple[PaperRow, ...]

    def row_experiment(self, row: PaperRow) -> str:
        """The preset of the jobs that fill `row`."""
        return row.experiment or self.experiment


def matches(match: Mapping[str, Any], config: Mapping[str, Any]) -> bool:
    """Whether a flat config has every value that `match` asks for.

    Args:
        match: {dotted key: value}, as a row or column of paper.yaml gives it.
        config: a flat config ({dotted key: value}).

    Returns:
        True when each key is in `config` with an equal value: numbers compare as numbers (0 == 0.0), lists
        item by item, booleans only with booleans.
    """
    return all(key in config and canonical(config[key]) == canonical(value) for key, value in match.items())


@functools.cache
def paper_tables(path: Path = PAPER_FILE) -> tuple[PaperTable, ...]:
    """The paper's tables, read from `path` (by default the packaged paper.yaml) and checked.

    Args:
        path: a file in paper.yaml's format.

    Returns:
        The tables in the file's order.

    Raises:
        ValueError: the file does not have paper.yaml's shape; the message names the table, row or column.
    """
    data = OmegaConf.to_container(OmegaConf.load(path))
    _require(isinstance(data, dict) and isinstance(data.get("tables"), list), f"{path}: expected a list `tables:`")
    tables = tuple(_table(entry, f"{path}: table {index + 1}") for index, entry in enumerate(data["tables"]))
    ids = [table.id for table in tables]
    duplicated = sorted({name for name in ids if ids.count(name) > 1})
    _require(not duplicated, f"{path}: table ids {', '.join(duplicated)} appear twice")
    return tables


def _table(entry: Any, where: str) -> PaperTable:
    """One table of the file, checked."""
    _require(isinstance(entry, dict), f"{where}: expected a mapping")
    where = f"{where} ({entry.get('id')})"
    _check_keys(entry, _TABLE_KEYS, where, required=_TABLE_KEYS)
    for key in ("title", "experiment"):
        _require(isinstance(entry[key], str) and entry[key], f"{where}: `{key}` must be a non-empty string")
    fields = entry["fields"]
    _require(_is_list_of(fields, str), f"{where}: `fields` must be a list of config keys")
    _require(_is_list_of(entry["columns"], dict) and entry["columns"], f"{where}: `columns` must be a non-empty list")
    columns = tuple(_column(column, f"{where}, column {index + 1}") for index, column in enumerate(entry["columns"]))
    labels = [column.label for column in columns]
    _require(len(set(labels)) == len(labels), f"{where}: column labels must be unique, found {labels}")
    measured = [column.label for column in columns if column.match is not None]
    for column in columns:
        unknown = [name for name in column.mean_of if name not in measured]
        _require(not unknown, f"{where}, column {column.label}: mean_of names {unknown}, not one of {measured}")
    _require(_is_list_of(entry["rows"], dict) and entry["rows"], f"{where}: `rows` must be a non-empty list")
    rows = tuple(_row(row, f"{where}, row {index + 1}", len(columns)) for index, row in enumerate(entry["rows"]))
    return PaperTable(str(entry["id"]), entry["title"], entry["experiment"], tuple(fields), columns, rows)


def _column(entry: dict, where: str) -> PaperColumn:
    """One column of a table, checked: a label and either `match` or `mean_of`."""
    _check_keys(entry, _COLUMN_KEYS, where, required={"label"})
    _require(isinstance(entry["label"], str) and entry["label"], f"{where}: `label` must be a non-empty string")
    where = f"{where} ({entry['label']})"
    _require(("match" in entry) != ("mean_of" in entry), f"{where}: give either `match` or `mean_of`")
    if "match" in entry:
        _require(isinstance(entry["match"], dict) and entry["match"], f"{where}: `match` must be a non-empty mapping")
        return PaperColumn(entry["label"], match=dict(entry["match"]))
    _require(_is_list_of(entry["mean_of"], str) and entry["mean_of"], f"{where}: `mean_of` must list column labels")
    return PaperColumn(entry["label"], mean_of=tuple(entry["mean_of"]))


def _row(entry: dict, where: str, num_columns: int) -> PaperRow:
    """One row of a table, checked: its model, match, and one top-1 (or null) per column."""
    _check_keys(entry, _ROW_KEYS, where, required={"model", "match", "top1"})
    _require(isinstance(entry["model"], str) and entry["model"], f"{where}: `model` must be a non-empty string")
    where = f"{where} ({entry['model']})"
    _require(isinstance(entry["match"], dict) and entry["match"], f"{where}: `match` must be a non-empty mapping")
    top1 = entry["top1"]
    _require(isinstance(top1, list), f"{where}: `top1` must be a list, one value (or null) per column")
    _require(len(top1) == num_columns, f"{where}: `top1` has {len(top1)} values for {num_columns} columns")
    _require(all(value is None or _is_number(value) for value in top1), f"{where}: `top1` values must be numbers")
    for key in ("flops", "params"):
        _require(entry.get(key) is None or _is_number(entry[key]), f"{where}: `{key}` must be a number")
    experiment = entry.get("experiment")
    _require(experiment is None or isinstance(experiment, str), f"{where}: `experiment` must be a preset name")
    return PaperRow(
        entry["model"], dict(entry["match"]), tuple(top1), experiment, entry.get("flops"), entry.get("params")
    )


def _check_keys(entry: dict, allowed: set[str], where: str, required: set[str]) -> None:
    """Refuse keys outside `allowed` (a misspelling would be ignored) and missing `required` ones."""
    unknown = sorted(set(entry) - allowed)
    _require(not unknown, f"{where}: unknown keys {unknown}; the keys are {sorted(allowed)}")
    missing = sorted(required - set(entry))
    _require(not missing, f"{where}: missing {', '.join(missing)}")


def _is_list_of(value: Any, kind: type) -> bool:
    """Whether `value` is a list of `kind` items."""
    return isinstance(value, list) and all(isinstance(item, kind) for item in value)


def _is_number(value: Any) -> bool:
    """An int or float, not a bool."""
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _require(condition: bool, message: str) -> None:
    """Raise ValueError(message) unless `condition`."""
    if not condition:
        raise ValueError(message)
