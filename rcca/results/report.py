"""Writing collected tables out: Markdown for people, CSV and JSON for programs.

Markdown: a section per table (its paper number and title, preset, jobs and the folder holding them), the
table, then its notes; a section on folders that could not be read; and, as the last line, a one-line summary.
CSV: one line per row and column of every table, with every value and the folders behind it. JSON: the same
data, with the jobs, their states and evaluations.
"""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Callable, Sequence
from typing import Any

from rcca.progress import count_of
from rcca.results.collect import STATES, Collection, Job
from rcca.results.costs import CONVENTION
from rcca.results.tables import Cell, Row, Table

AVERAGING = (
    "a top-1 with (low-high, n=N): the mean of N evaluations that differ only in seed, or in split where the column "
    "does not fix it (low-high: their top-1 range; top-5 and mean class accuracy are their means too); in an "
    "average column, the mean of its columns"
)
# The CSV columns: the table, the row's values (`_row_data`), the cell's (`_cell_data`).
CSV_FIELDS = (
    *("table", "title", "row", "model", "experiment", "in_paper", "duplicate", "fields"),
    *("params_m", "paper_params_m", "flops_g", "paper_flops_g", "gmacs", "unfinished"),
    *("column", "top1", "paper_top1", "difference", "n", "top1_low", "top1_high", "averaged_over"),
    *("top5", "mean_class_accuracy", "folders"),
)


def summary(collection: Collection, tables: Sequence[Table]) -> str:
    """The one-line summary, e.g. "collected 23 jobs in 5 tables: 21 finished, 1 running, 1 stopped".

    Args:
        collection: what was collected.
        tables: the tables shown.

    Returns:
        The line (with the number of unreadable folders, if any).
    """
    states = [job.state for job in collection.jobs]
    counts = ", ".join(f"{states.count(state)} {state}" for state in STATES if state in states)
    line = f"collected {count_of(len(collection.jobs), 'job')} in {count_of(len(tables), 'table')}"
    line += f": {counts}" if counts else ""
    if collection.skipped:
        line += f"; {count_of(len(collection.skipped), 'folder')} not readable"
    return line


def markdown(collection: Collection, tables: Sequence[Table]) -> str:
    """The Markdown report (see the module docstring).

    Args:
        collection: what was collected.
        tables: the tables to show.

    Returns:
        The text; its last line is `summary`.
    """
    parts = [_markdown_table(table) for table in tables]
    if collection.skipped:
        lines = ["## Not collected", ""] + [f"- {skipped.folder}: {skipped.reason}" for skipped in collection.skipped]
        parts.append("\n".join(lines))
    parts.append(summary(collection, tables))
    return "\n\n".join(parts) + "\n"


def _markdown_table(table: Table) -> str:
    """One table's section: heading, what it holds, the table, its notes."""
    heading = f"## Table {table.id}: {table.title}" if table.id else f"## {table.title}"
    where = f" under `{table.parent}`" if table.parent else ""
    about = f"Preset `{table.experiment}`: {count_of(len(table.jobs), 'job')}{where}."
    columns = _markdown_columns(table)
    header = [name for name, _ in columns]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for row in table.rows:
        lines.append("| " + " | ".join(_escape(value(row)) for _, value in columns) + " |")
    notes = [CONVENTION] if any(row.cost or row.paper_flops for row in table.rows) else []
    notes += [AVERAGING] if any(cell.n > 1 for row in table.rows for cell in row.cells) else []
    notes += table.notes
    return "\n".join([heading, "", about, "", *lines, "", *(f"- {note}" for note in notes)])


def _markdown_columns(table: Table) -> list[tuple[str, Callable[[Row], str]]]:
    """The table's Markdown columns as (heading, value of a row); columns empty in every row are left out,
    except our top-1 columns."""
    columns: list[tuple[str, Callable[[Row], str]]] = [("model", lambda row: row.model)]
    columns += [(key, lambda row, key=key: row.fields.get(key, "")) for key in table.fields]
    columns += [
        ("params (M)", lambda row: _number(row.cost and row.cost.params, 2)),
        ("paper params (M)", lambda row: _number(row.paper_params, 2)),
        ("FLOPs (G)", lambda row: _number(row.cost and row.cost.flops, 1)),
        ("paper FLOPs (G)", lambda row: _number(row.paper_flops, 1)),
        ("GMACs", lambda row: _number(row.cost and row.cost.gmacs, 2)),
    ]
    for index, label in enumerate(table.columns):

        def cell(row: Row, index: int = index) -> Cell:
            return row.cells[index]

        columns += [
            (f"{label} top-1", lambda row, cell=cell: _top1(cell(row))),
            (f"{label} paper", lambda row, cell=cell: _number(cell(row).paper, 2)),
            (f"{label} Δ", lambda row, cell=cell: _number(cell(row).difference, 2, signed=True)),
            (f"{label} top-5", lambda row, cell=cell: _number(cell(row).top5, 2)),
            (f"{label} mean class", lambda row, cell=cell: _number(cell(row).mean_class_accuracy, 2)),
        ]
    columns.append(("notes", lambda row: _row_notes(row, in_paper_table=table.id is not None)))
    kept = {f"{label} top-1" for label in table.columns}
    return [(name, value) for name, value in columns if name in kept or any(value(row) for row in table.rows)]


def _top1(cell: Cell) -> str:
    """Our top-1 in a cell: the value, with its range and count when it averages several."""
    if cell.top1 is None:
        return ""
    if cell.n > 1:
        return f"{cell.top1:.2f} ({cell.low:.2f}-{cell.high:.2f}, n={cell.n})"
    return f"{cell.top1:.2f}"


def _row_notes(row: Row, in_paper_table: bool) -> str:
    """The notes column: a row the paper's table lacks, duplicate settings, unfinished jobs, no jobs."""
    notes = ["not in the paper"] if in_paper_table and not row.in_paper else []
    if row.duplicate:
        notes.append("duplicate settings")
    states = [job.state for job in row.unfinished]
    notes += [f"{states.count(state)} {state}" for state in STATES if state in states]
    if not row.folders:
        notes.append(f"no jobs (preset {row.experiment})")
    return "; ".join(notes)


def _number(value: float | None, digits: int, signed: bool = False) -> str:
    """A number with `digits` decimals (and its sign, if `signed`), or "" for None."""
    if value is None:
        return ""
    return f"{value:+.{digits}f}" if signed else f"{value:.{digits}f}"


def _escape(text: str) -> str:
    """Text for a Markdown table cell."""
    return text.replace("|", "\\|")


def csv_text(tables: Sequence[Table]) -> str:
    """The CSV report: a header, then one line per row and column of each table (`CSV_FIELDS`); lists are
    joined with "; ".

    Args:
        tables: the tables.

    Returns:
        The text.
    """
    out = io.StringIO()
    writer = csv.DictWriter(out, CSV_FIELDS, lineterminator="\n")
    writer.writeheader()
    for table in tables:
        for index, row in enumerate(table.rows):
            for cell in row.cells:
                line = {"table": table.id or "", "title": table.title, "row": index + 1}
                line |= _row_data(row) | _cell_data(cell)
                line["fields"] = [f"{key}={value}" for key, value in row.fields.items()]
                line["unfinished"] = [f"{job['state']}: {job['folder']}" for job in line["unfinished"]]
                writer.writerow(
                    {key: "; ".join(value) if isinstance(value, list) else value for key, value in line.items()}
                )
    return out.getvalue()


def json_text(collection: Collection, tables: Sequence[Table]) -> str:
    """The JSON report: {"tables", "jobs", "not_collected", "summary"}.

    Args:
        collection: what was collected.
        tables: the tables.

    Returns:
        The text (one JSON object).
    """
    data = {
        "tables": [_table_data(table) for table in tables],
        "jobs": [_job_data(job) for job in collection.jobs],
        "not_collected": [{"folder": str(item.folder), "reason": item.reason} for item in collection.skipped],
        "summary": summary(collection, tables),
    }
    return json.dumps(data, indent=2) + "\n"


def _table_data(table: Table) -> dict[str, Any]:
    """A table as JSON data."""
    return {
        "id": table.id,
        "title": table.title,
        "experiment": table.experiment,
        "parent": str(table.parent) if table.parent else None,
        "fields": list(table.fields),
        "columns": list(table.columns),
        "rows": [_row_data(row) | {"cells": [_cell_data(cell) for cell in row.cells]} for row in table.rows],
        "jobs": [str(folder) for folder in table.jobs],
        "notes": list(table.notes),
    }


def _row_data(row: Row) -> dict[str, Any]:
    """A row's own values (not its cells) as JSON data."""
    cost = row.cost
    values = {
        "model": row.model,
        "experiment": row.experiment,
        "in_paper": row.in_paper,
        "duplicate": row.duplicate,
        "fields": row.fields,
        "params_m": cost and cost.params,
        "paper_params_m": row.paper_params,
        "flops_g": cost and cost.flops,
        "paper_flops_g": row.paper_flops,
        "gmacs": cost and cost.gmacs,
        "unfinished": [{"folder": str(job.folder), "state": job.state, "detail": job.detail} for job in row.unfinished],
    }
    return {key: _rounded(value) for key, value in values.items()}


def _cell_data(cell: Cell) -> dict[str, Any]:
    """A cell as JSON data."""
    values = {
        "column": cell.column,
        "top1": cell.top1,
        "paper_top1": cell.paper,
        "difference": cell.difference,
        "n": cell.n,
        "top1_low": cell.low,
        "top1_high": cell.high,
        "averaged_over": list(cell.varied),
        "top5": cell.top5,
        "mean_class_accuracy": cell.mean_class_accuracy,
        "folders": [str(folder) for folder in cell.folders],
    }
    return {key: _rounded(value) for key, value in values.items()}


def _rounded(value: Any) -> Any:
    """A float to 4 decimals (a difference of two percentages carries no more), anything else as it is."""
    return round(value, 4) if isinstance(value, float) else value


def _job_data(job: Job) -> dict[str, Any]:
    """A job as JSON data: where, which preset, its state and its evaluations."""
    return {
        "folder": str(job.folder),
        "experiment": job.experiment,
        "model_choice": job.choice,
        "state": job.state,
        "detail": job.detail,
        "evaluations": [
            {
                "folder": str(evaluation.folder),
                "source": evaluation.source,
                "top1": evaluation.top1,
                "top5": evaluation.top5,
                "mean_class_accuracy": evaluation.mean_class_accuracy,
            }
            for evaluation in job.evaluations
        ],
    }
