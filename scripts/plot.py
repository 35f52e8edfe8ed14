"""Training curves of a run, or of the jobs of a sweep overlaid, as one PNG: `python scripts/plot.py <dir>`.

    python scripts/plot.py outputs/<date>/<time>                        # one run
    python scripts/plot.py outputs/multirun/<date>/<time>               # a sweep: one line per job
    python scripts/plot.py outputs/multirun/<date>/<time> --panels top1 gamma --output nl_vs_rcca.png

Reads the TensorBoard event files the trainer writes (`<run>/tensorboard/`, all of them for a resumed run,
whose later write of a step wins); no TensorBoard server needed. Panels: training loss, top-1 accuracy
(train and validation), learning rate and RCCA-3D gamma (by default those some run has logged). A sweep's
jobs are named by their folders' override dirnames (`module=nl,dataset.split=2`). The PNG goes to
`--output`, by default `<dir>/curves.png`; an existing file is kept unless `--overwrite`. Prints a line per
run (its last logged update, last and best validation top-1) and, last, a summary line. Needs matplotlib
(pip install "rcca[plot]"). Exit status 2 with one line `error: ...` for bad input.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from rcca.engine.cli import exit_codes
from rcca.progress import count_of
from rcca.results.curves import CURVES_NAME, PANELS, draw_curves, panels_with_data, read_runs, run_summary, save_png


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("dir", type=Path, help="a run folder of train.py, a multirun folder, or a folder of them")
    parser.add_argument("--output", type=Path, help=f"the PNG to write (default <dir>/{CURVES_NAME})")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing output file")
    parser.add_argument(
        "--panels", nargs="+", choices=list(PANELS), help="the panels, in order (default: those with data)"
    )
    args = parser.parse_args(argv)
    with exit_codes():
        runs = read_runs(args.dir)
        panels = args.panels or panels_with_data(runs)
        output = save_png(
            draw_curves(runs, panels, str(args.dir)), args.output or args.dir / CURVES_NAME, args.overwrite
        )
    for run in runs:
        print(run_summary(run))
    drawn = sum(run.logged for run in runs)
    waiting = f" ({len(runs) - drawn} without scalars yet)" if drawn < len(runs) else ""
    last = max(run.last_step for run in runs)
    print(f"plotted {count_of(drawn, 'run')}{waiting} up to update {last}, {', '.join(panels)}: {output}")


if __name__ == "__main__":
    main()
