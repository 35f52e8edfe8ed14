"""Results of repeated runs, one row per setting: top-1 mean and spread over seeds, cost and time per run.

Used by the context benchmark (`scripts/context_bench.py`): jobs of one preset that differ in `module.name`
and `seed` become one row per module, e.g.

    | module | top-1 mean ± std | min - max | seeds | params (M) | GMACs | time per run (mean, max) |
    |---|---|---|---|---|---|---|
    | none | 50.3 ± 1.4 | 48.8 - 51.2 | 3 | 0.702 | 0.22 | 3.9, 4.1 min |
"""

from __future__ import annotations

import statistics
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from rcca.results.collect import FINISHED, Job
from rcca.results.costs import Cost


@dataclass(frozen=True)
class SeedRow:
    """One setting's runs.

    Attributes:
        setting: what the runs share (e.g. the module's name).
        cost: the model's parameters and MACs.
        top1: each finished run's final video top-1 (%), in seed order.
        seeds: their seeds.
        seconds: each run's wall time, where known.
    """

    setting: str
    cost: Cost
    top1: tuple[float, ...]
    seeds: tuple[int, ...]
    seconds: tuple[float, ...]

    @property
    def mean(self) -> float:
        """The mean top-1 over seeds."""
        return statistics.fmean(self.top1)

    @property
    def std(self) -> float:
        """The sample standard deviation over seeds (0 for one run)."""
        return statistics.stdev(self.top1) if len(self.top1) > 1 else 0.0


def seed_rows(
    jobs: Sequence[Job],
    key: str,
    order: Sequence[str],
    cost_of: Callable[[dict[str, Any]], Cost],
    seconds: Mapping[tuple[str, int], float],
) -> list[SeedRow]:
    """One row per value of the flat config key `key` among the finished jobs.

    Args:
        jobs: collected jobs (unfinished ones and runs without a finite final top-1 are left out).
        key: the setting that makes a row, e.g. "module.name".
        order: the rows' order by setting (e.g. the baseline first); settings not in it follow, in job order.
        cost_of: a job's flat config -> its model's cost.
        seconds: (value of `key`, seed) -> that run's wall time, where known.

    Returns:
        The rows, each with its runs in seed order.
    """
    groups: dict[str, list[Job]] = {}
    for job in jobs:
        if job.state == FINISHED and job.evaluations and job.evaluations[0].top1 is not None:
            groups.setdefault(str(job.config[key]), []).append(job)
    rows = []
    ranked = sorted(groups, key=lambda setting: list(order).index(setting) if setting in order else len(order))
    for setting in ranked:
        members = groups[setting]
        members.sort(key=lambda job: job.config["seed"])
        seeds = tuple(job.config["seed"] for job in members)
        rows.append(
            SeedRow(
                setting=setting,
                cost=cost_of(members[0].config),
                top1=tuple(job.evaluations[0].top1 for job in members),
                seeds=seeds,
                seconds=tuple(seconds[setting, seed] for seed in seeds if (setting, seed) in seconds),
            )
        )
    return rows


def markdown_table(rows: Sequence[SeedRow], header: str) -> str:
    """The rows as a Markdown table whose first column is headed `header`."""
    lines = [
        f"| {header} | top-1 mean ± std | min - max | seeds | params (M) | GMACs | time per run (mean, max) |",
        "|---|---|---|---|---|---|---|",
    ]
    for row in rows:
        time = f"{statistics.fmean(row.seconds) / 60:.1f}, {max(row.seconds) / 60:.1f} min" if row.seconds else "-"
        lines.append(
            f"| {row.setting} | {row.mean:.1f} ± {row.std:.1f} | {min(row.top1):.1f} - {max(row.top1):.1f} | "
            f"{len(row.top1)} | {row.cost.params:.3f} | {row.cost.gmacs:.2f} | {time} |"
        )
    return "\n".join(lines) + "\n"
