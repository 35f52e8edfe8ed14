"""Training results laid out as the paper's tables, its values beside ours: `python scripts/collect.py <dir> ...`.

    python scripts/collect.py outputs/paper                      # a folder of sweeps: table1_structures/, ...
    python scripts/collect.py outputs/multirun/<date>/<time>     # one multirun sweep
    python scripts/collect.py outputs/<date>/<time> --no-complexity
    python scripts/collect.py outputs/paper --format csv > results.csv
    python scripts/collect.py outputs/paper --format json > results.json

Each folder is a Hydra multirun folder, a folder of them, or one run folder. Every train.py job under them
(with its test.py results in `<job>/test/`) goes to the paper table of its preset (rcca/results/paper.yaml),
in the row whose settings it has, beside the paper's top-1, parameters and FLOPs; jobs of other presets make
one table per preset. Running, stopped and failed jobs are listed with their table. Parameters and FLOPs
(the paper's convention: backbone MACs + 2 x module MACs, 400 classes, 224 x 224) are counted once per model
setting, a few seconds each on a CPU; `--no-complexity` skips them. See `rcca.results.tables` for the layout
rules (averages over seeds and splits, duplicate settings). The Markdown report ends with a one-line summary.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from rcca.engine.cli import exit_codes
from rcca.results.collect import collect
from rcca.results.costs import CostCounter
from rcca.results.paper import paper_tables
from rcca.results.report import csv_text, json_text, markdown
from rcca.results.tables import build_tables

FORMATS = ("markdown", "csv", "json")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("dirs", nargs="+", type=Path, help="multirun folders, folders of them, or run folders")
    parser.add_argument("--format", choices=FORMATS, default="markdown", help="output format (default markdown)")
    parser.add_argument("--no-complexity", action="store_true", help="do not count parameters and FLOPs")
    args = parser.parse_args(argv)
    with exit_codes():
        collection = collect(args.dirs)
        tables = build_tables(collection.jobs, paper_tables(), None if args.no_complexity else CostCounter())
    if args.format == "csv":
        print(csv_text(tables), end="")
    elif args.format == "json":
        print(json_text(collection, tables), end="")
    else:
        print(markdown(collection, tables), end="")


if __name__ == "__main__":
    main()
