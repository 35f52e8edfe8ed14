"""Prepare a dataset's files before training: `python scripts/prepare.py <verb> ...` (PyAV only, no ffmpeg program).

    python scripts/prepare.py resize SRC DST --short-side 320 [--workers N]
    python scripts/prepare.py trim-kinetics SRC DST --csv kinetics-400_train.csv [--layout flat|per_label]
        [--short-side N] [--workers N]
    python scripts/prepare.py extract-frames SRC DST [--short-side N] [--quality 95] [--workers N]
    python scripts/prepare.py make-list ROOT --output DIR [--test-fraction 0.3] [--seed 0] [--group-pattern REGEX]
        [--overwrite]

resize encodes every video under SRC again at a short side, into the same relative path under DST; trim-kinetics
cuts the clips of a Kinetics CSV out of full downloads `<youtube_id>.<ext>` in SRC, into the names dataset=kinetics400
reads (DST/<id>_<start:06d>_<end:06d>.mp4, or DST/<label>/... with --layout per_label), and lists the ids without
a download in DST/missing_<csv name>.txt; extract-frames writes each video's frames as DST/<relative path without
suffix>/img_00001.jpg, ... for dataset.backend=frames (details: `rcca.data.preparation.media`). These three run
in --workers processes (default: the usable cores) and can be stopped and started again: an output under its final
name is complete and skipped, one being written has a temporary name (.<name>.tmp-<pid>) until it is done. A video
that cannot be read is reported and skipped; DST/failed_<verb>.txt lists them all. make-list writes train/test
lists of the videos under ROOT (`rcca.data.preparation.lists`).

Exit status: 0 when every job was done or skipped; 1 when some video failed; 2 on a user error (a missing SRC,
DST inside SRC or the reverse, a bad option), reported as one line `error: ...` on stderr before any work.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from rcca.data.preparation.lists import make_lists
from rcca.data.preparation.media import extract_jobs, kinetics_jobs, resize_jobs
from rcca.data.preparation.runner import Job, RunSummary, check_folders, run_jobs
from rcca.engine.cli import exit_codes, log_to_terminal
from rcca.engine.files import write_atomically
from rcca.engine.runtime import available_cores, usable_cores
from rcca.errors import UserError

SHOWN = 5  # missing Kinetics ids named in the summary


def run_verb(args: argparse.Namespace, jobs: list[Job], unit: str) -> RunSummary:
    """Run a verb's jobs in `args.workers` processes and print its summary.

    Args:
        args: the parsed arguments (verb, destination, workers).
        jobs: the verb's jobs.
        unit: what one job makes ("video", "clip").

    Returns:
        The summary.

    Raises:
        UserError: two jobs would write the same path.
    """
    summary = run_jobs(
        jobs, verb=args.verb, destination=args.destination, workers=args.workers, bars=sys.stderr.isatty(), unit=unit
    )
    print("\n".join(summary.lines()))
    return summary


def report_missing(destination: Path, csv_path: Path, missing: list[str]) -> None:
    """Print how many Kinetics ids have no download, the first ones, and write them all to
    DST/missing_<csv stem>.txt (removed when none is missing).

    Args:
        destination: the output folder (DST).
        csv_path: the CSV read.
        missing: the ids without a download.
    """
    listing = destination / f"missing_{csv_path.stem}.txt"
    if not missing:
        listing.unlink(missing_ok=True)
        return
    first = ", ".join(missing[:SHOWN]) + (", ..." if len(missing) > SHOWN else "")
    write_atomically(listing, "".join(f"{youtube_id}\n" for youtube_id in missing).encode())
    print(f"missing downloads: {len(missing)} ids of {csv_path.name} ({first}); all in {listing}")


def prepare(args: argparse.Namespace) -> int:
    """Do what the verb asks.

    Args:
        args: the parsed arguments.

    Returns:
        The exit status: 1 when some job failed, else 0.

    Raises:
        UserError: a bad folder or option (see the module docstring).
    """
    if args.verb == "make-list":
        summary = make_lists(args.root, args.output, args.test_fraction, args.seed, args.group_pattern, args.overwrite)
        print(summary.summary_line())
        return 0
    check_folders(args.source, args.destination)
    if args.workers < 1:
        raise UserError(f"--workers {args.workers}: must be >= 1")
    if args.verb == "resize":
        jobs, unit = resize_jobs(args.source, args.destination, args.short_side), "video"
    elif args.verb == "extract-frames":
        jobs, unit = extract_jobs(args.source, args.destination, args.short_side, args.quality), "video"
    else:
        jobs, missing = kinetics_jobs(args.source, args.destination, args.csv, args.layout, args.short_side)
        unit = "clip"
    args.destination.mkdir(parents=True, exist_ok=True)
    if args.verb == "trim-kinetics":
        report_missing(args.destination, args.csv, missing)
    return 1 if run_verb(args, jobs, unit).failed else 0


def parser() -> argparse.ArgumentParser:
    """The command line: one sub-command per verb.

    Returns:
        The parser.
    """
    main_parser = argparse.ArgumentParser(
        description=__doc__[: __doc__.index("Exit status")],
        epilog=__doc__[__doc__.index("Exit status") :],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    verbs = main_parser.add_subparsers(dest="verb", required=True, metavar="verb")
    workers = usable_cores(available_cores())
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("source", type=Path, metavar="SRC", help="the folder of videos (searched recursively)")
    common.add_argument("destination", type=Path, metavar="DST", help="the output folder, outside SRC")
    common.add_argument("--workers", type=int, default=workers, help=f"worker processes (default: {workers})")
    resize = verbs.add_parser("resize", parents=[common], help="encode videos again at a short side")
    resize.add_argument("--short-side", type=int, required=True, help="short side in pixels (even)")
    trim = verbs.add_parser("trim-kinetics", parents=[common], help="cut Kinetics clips out of full downloads")
    trim.add_argument("--csv", type=Path, required=True, help="the Kinetics CSV (label,youtube_id,time_start,...)")
    trim.add_argument(
        "--layout", choices=("flat", "per_label"), default="flat", help="clips in one folder or per label"
    )
    trim.add_argument("--short-side", type=int, help="short side in pixels (even); default: the downloads' size")
    extract = verbs.add_parser("extract-frames", parents=[common], help="write each video's frames as JPEGs")
    extract.add_argument("--short-side", type=int, help="short side in pixels; default: the videos' size")
    extract.add_argument("--quality", type=int, default=95, help="JPEG quality, 1 to 100 (default: 95)")
    lists = verbs.add_parser("make-list", help="write train/test lists of a folder of videos")
    lists.add_argument("root", type=Path, metavar="ROOT", help="the folder of videos")
    lists.add_argument("--output", type=Path, required=True, help="the folder for the lists")
    lists.add_argument("--test-fraction", type=float, default=0.3, help="share of each class's clips in the test list")
    lists.add_argument("--seed", type=int, default=0, help="seed of the random split")
    lists.add_argument("--group-pattern", help="regular expression naming a clip's source video, kept in one split")
    lists.add_argument("--overwrite", action="store_true", help="replace the lists the output folder holds")
    return main_parser


def main(argv: list[str] | None = None) -> None:
    """Parse the command line, do the verb, exit with its status.

    Args:
        argv: the arguments after the script's name; None reads `sys.argv`.
    """
    args = parser().parse_args(argv)
    log_to_terminal()
    with exit_codes():
        status = prepare(args)
    sys.exit(status)


if __name__ == "__main__":
    main()
