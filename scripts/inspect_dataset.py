"""Check a dataset without training: `python scripts/inspect_dataset.py [--decode] [hydra overrides]`.

The overrides are those of train.py, e.g. `experiment=none dataset=ucf101 dataset.root=...
dataset.annotations=...` (`experiment=none` drops the quick-start preset; without overrides the
synthetic set is inspected, generated if needed). The script parses the annotations with the
checks train.py makes and reports the classes (count, the first names with their labels and
video counts, and any class without training videos; for dataset=video_list the names come from
`dataset.class_names`, else they are the label numbers), the train/test video counts and the listed
videos that are missing; with `--decode` it also reads every present video (its first and last
frame, with the configured `dataset.backend`, in a child process so that a video that crashes or
hangs the decoder is reported rather than fatal) and reports those that fail, with each reader's
error (backend decord falls back to PyAV). `--write-exclude FILE` writes their paths, with those of
`dataset.exclude` if set, for `dataset.exclude=FILE`; FILE must be new or an exclude list (it is
refused, before any decoding, if it is an input of the dataset or another kind of file) and is
replaced whole. `--samples FILE.png` draws the first training video of each class (of the first
SAMPLE_CLASSES classes), `--sample-frames` frames spread over it, first and last included, as one PNG
(needs matplotlib, the `plot` extra; an existing file is kept unless `--overwrite`). The last line
printed is one JSON object: {"dataset", "root", "num_classes", "classes" (the names, index = label),
"train", "test", "missing"}, plus "undecodable" with --decode.

Exit status: 0 when every listed video is present (and, with --decode, decodes); 1 when a video
is missing or undecodable; 2 on a user error (missing root, bad annotations, bad override, a
refused --write-exclude FILE), reported as one line `error: ...` on stderr.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections import Counter
from pathlib import Path

import numpy as np

from rcca.config import DatasetConfig, check_required, compose_config
from rcca.data.annotations import Annotations
from rcca.data.build import (
    EXCLUDE_HEADER,
    exclude_videos,
    missing_videos,
    read_annotations,
    read_exclude_list,
    write_exclude_list,
)
from rcca.data.checking import scan_videos
from rcca.data.decoding import BACKENDS, READERS, DecodeError, read_frames, resolve_backend
from rcca.engine.cli import exit_codes
from rcca.errors import UserError
from rcca.visualization.drawing import evenly_spaced, samples_image, write_png

SHOWN = 5  # paths listed for each kind of problem
SAMPLE_CLASSES = 12  # --samples: rows of the figure at most


def show(title: str, lines: list[str], note: str = "") -> None:
    """Print a count line (with `note` after the count) and the first few of `lines`, indented."""
    print(f"{title}: {len(lines)}{note}")
    for line in lines[:SHOWN]:
        print(f"  {line}")
    if len(lines) > SHOWN:
        print(f"  ... and {len(lines) - SHOWN} more")


def show_classes(dataset: DatasetConfig, annotations: Annotations) -> None:
    """Print the class count, the first classes as `label name: videos`, and the classes without training videos."""
    note = ""
    if dataset.name == "video_list" and not dataset.class_names:
        note = " (named by label; set dataset.class_names to a file of names, one per line in label order)"
    counts = {split: Counter(r.label for r in getattr(annotations, split)) for split in ("train", "test")}
    named = [name if name == str(label) else f"{label} {name}" for label, name in enumerate(annotations.classes)]
    videos = [f"{name}: {counts['train'][i]} train, {counts['test'][i]} test" for i, name in enumerate(named)]
    show("classes", videos, note)
    empty = [name for i, name in enumerate(named) if not counts["train"][i]]
    if empty:
        show("classes without training videos", empty)


def check_exclude_target(path: Path, dataset: DatasetConfig, videos: set[str]) -> None:
    """Raise UserError unless `path` may be (over)written as the exclude list of this dataset.

    Refused: the list files, the class-names file, anything in `dataset.annotations`, a folder (the videos'
    root included), a file in a folder that does not exist, and an existing file that is not an exclude
    list (so no video is ever overwritten; a new list may sit beside the videos). An exclude list is
    `dataset.exclude`, an empty file, a file starting with `EXCLUDE_HEADER`, or one whose entries all name
    videos of the dataset (`videos`).
    """
    target = path.resolve()
    inputs = [  # (key, value, whether it is a folder whose contents are inputs too)
        ("dataset.train_list", dataset.train_list, False),
        ("dataset.test_list", dataset.test_list, False),
        ("dataset.class_names", dataset.class_names, False),
        ("dataset.annotations", dataset.annotations, True),
    ]
    for key, value, folder in inputs:
        if not value:
            continue
        owned = Path(value).resolve()
        if target == owned or (folder and owned in target.parents):
            where = "is" if target == owned else "is inside"
            raise UserError(
                f"--write-exclude {path}: {where} {key}={value}, an input of the dataset; write the list elsewhere"
            )
    if path.is_dir():
        raise UserError(f"--write-exclude {path}: is a folder; give a file")
    if not path.parent.is_dir():
        raise UserError(f"--write-exclude {path}: folder {path.parent} not found; create it or give another file")
    if not path.exists() or (dataset.exclude and target == Path(dataset.exclude).resolve()):
        return
    try:
        listed = path.read_text().startswith(EXCLUDE_HEADER) or set(read_exclude_list(path)) <= videos
    except UnicodeDecodeError:
        listed = False
    if not listed:
        raise UserError(
            f"--write-exclude {path}: this file exists and is not an exclude list (no header line, and it names "
            "other things than this dataset's videos); give a new file or an exclude list"
        )


def check_samples_target(path: Path, overwrite: bool) -> None:
    """Raise UserError unless the PNG `path` may be written: a new file, or an existing one with `overwrite`."""
    if path.suffix.lower() != ".png":
        raise UserError(f"--samples {path}: must name a .png file")
    if path.is_dir():
        raise UserError(f"--samples {path}: a folder; name a .png file")
    if path.exists() and not overwrite:
        raise UserError(f"--samples {path}: exists; give a new file, or replace it with --overwrite")


def spread_frames(path: Path, backend: str, shown: int) -> tuple[np.ndarray, list[int]]:
    """`shown` frames of a video spread over it (T x H x W x 3 uint8), and their frame numbers."""
    chosen: list[int] = []

    def choose(count: int) -> list[int]:
        chosen[:] = evenly_spaced(count, shown)  # a reader that fails after choosing hands over to another
        return chosen

    try:
        frames = read_frames(path, choose, backend)
    except DecodeError as error:
        raise UserError(f"--samples: {error}") from None
    return frames.permute(0, 2, 3, 1).numpy(), chosen


def write_samples(root: Path, annotations: Annotations, backend: str, shown: int, path: Path) -> None:
    """Draw the first present training video of each of the first SAMPLE_CLASSES classes into the PNG `path`."""
    videos = []
    for label, name in enumerate(annotations.classes[:SAMPLE_CLASSES]):
        record = next((r for r in annotations.train if r.label == label and (root / r.path).exists()), None)
        if record is None:
            continue
        frames, chosen = spread_frames(root / record.path, backend, shown)
        videos.append((f"{name}: {record.path}, frames {', '.join(map(str, chosen))}", frames))
    write_png(samples_image(videos, "one training video per class"), path)
    print(f"wrote {len(videos)} sample videos to {path}")


def report(
    overrides: list[str],
    decode: bool,
    timeout: float = 60.0,
    exclude_file: Path | None = None,
    samples: tuple[Path, int] | None = None,
) -> dict:
    """Print the report of the configured dataset, drawing `samples` = (PNG file, frames per video) if given;
    returns its summary (the final JSON line)."""
    cfg = compose_config(overrides)
    check_required(cfg)
    backend = cfg.dataset.backend
    if decode and backend not in BACKENDS:
        raise UserError(f"dataset.backend={backend!r}: choose one of {', '.join(BACKENDS)}")
    root, annotations = read_annotations(cfg.dataset)
    if cfg.dataset.exclude:
        exclude_videos(annotations, Path(cfg.dataset.exclude))
        print(f"excluded by dataset.exclude: {len(annotations.excluded)}")
    splits = {"train": annotations.train, "test": annotations.test}
    if exclude_file is not None:
        videos = {r.path for records in splits.values() for r in records} | set(annotations.excluded)
        check_exclude_target(exclude_file, cfg.dataset, videos)
    missing = {split: missing_videos(root, records) for split, records in splits.items()}
    print(f"dataset: {cfg.dataset.name} (root {root})")
    show_classes(cfg.dataset, annotations)
    print(f"videos: {len(annotations.train)} train, {len(annotations.test)} test")
    show(f"missing (train {len(missing['train'])}, test {len(missing['test'])})", missing["train"] + missing["test"])
    if samples is not None:
        write_samples(root, annotations, backend, samples[1], samples[0])
    summary = {
        "dataset": cfg.dataset.name,
        "root": str(root),
        "num_classes": len(annotations.classes),
        "classes": list(annotations.classes),
        "train": len(annotations.train),
        "test": len(annotations.test),
        "missing": len(missing["train"]) + len(missing["test"]),
    }
    if decode:
        absent = set(missing["train"] + missing["test"])
        present = list(dict.fromkeys(r.path for records in splits.values() for r in records if r.path not in absent))
        failures = scan_videos(root, present, backend, timeout, progress=sys.stderr.isatty())
        show(
            f"undecodable with {READERS[resolve_backend(backend)]} (of {len(present)} read)",
            [f"{p}: {why}" for p, why in failures.items()],
        )
        summary["undecodable"] = len(failures)
        if exclude_file is not None:
            # Videos already excluded were not read: keep them, so a second pass never loses the first one's finds.
            entries = read_exclude_list(Path(cfg.dataset.exclude)) if cfg.dataset.exclude else {}
            entries.update({path: f"# {why}" for path, why in failures.items()})
            write_exclude_list(exclude_file, entries)
            print(f"wrote {len(entries)} paths to {exclude_file}: train with dataset.exclude={exclude_file}")
    return summary


def main() -> None:
    """Parse `--decode` and hand the other arguments to Hydra as overrides; print the report; exit 1
    if a video is missing or undecodable."""
    parser = argparse.ArgumentParser(
        description=__doc__.splitlines()[0],
        epilog=__doc__[__doc__.index("Exit status") :],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--decode", action="store_true", help="also read every present video and report failures")
    parser.add_argument(
        "--timeout", type=float, default=60.0, help="seconds one video may take before it counts as hung"
    )
    parser.add_argument(
        "--write-exclude", type=Path, metavar="FILE", help="with --decode: write the failing paths, for dataset.exclude"
    )
    parser.add_argument("--samples", type=Path, metavar="FILE", help="write a PNG of one training video per class")
    parser.add_argument("--sample-frames", type=int, default=8, help="frames drawn per sample video (default 8)")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing --samples file")
    parser.add_argument("overrides", nargs="*", help="Hydra overrides, as for train.py (e.g. dataset=ucf101)")
    args = parser.parse_intermixed_args()
    with exit_codes():
        if args.write_exclude and not args.decode:
            raise UserError("--write-exclude needs --decode")
        if args.sample_frames < 1:
            raise UserError(f"--sample-frames {args.sample_frames}: must be 1 or more")
        if args.samples is not None:
            check_samples_target(args.samples, args.overwrite)
        samples = None if args.samples is None else (args.samples, args.sample_frames)
        summary = report(args.overrides, args.decode, args.timeout, args.write_exclude, samples)
    print(json.dumps(summary))
    sys.exit(1 if summary["missing"] or summary.get("undecodable") else 0)


if __name__ == "__main__":
    main()
