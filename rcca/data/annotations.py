"""Parsers for the official split and annotation files of the supported datasets.

Every parser returns the same structure, :class:`Annotations`: the class names
(index = label) and the train and test lists of :class:`VideoRecord`, whose
``path`` is relative to the dataset's video root and always uses ``/``.

Supported formats:

* ``video_list``: generic mmaction2-style lists, one ``relative/path label``
  per line with a 0-based label, optionally with a class-names file (one name
  per line in label order, see :func:`read_class_names`).
* ``ucf101``: the official ``ucfTrainTestlist`` folder (``classInd.txt``,
  ``trainlist0N.txt``, ``testlist0N.txt``), LF or CRLF line endings.
* ``hmdb51``: the official ``testTrainMulti_7030_splits`` folder.
* ``kinetics400``: the ActivityNet Kinetics CSV files, optionally with a label
  map (one class name per line).
* ``mini_kinetics200``: the S3D subset of Kinetics-400 given by two lists of
  YouTube ids.

Every problem with the files raises :class:`AnnotationError` with a one-line
message naming the file and what is wrong.
"""

from __future__ import annotations

import csv
import inspect
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

__all__ = [
    "VIDEO_SUFFIXES",
    "AnnotationError",
    "Annotations",
    "VideoRecord",
    "load_annotations",
    "load_hmdb51",
    "load_kinetics",
    "load_mini_kinetics200",
    "load_ucf101",
    "load_video_list",
    "read_class_names",
]

_SPLITS = (1, 2, 3)
_KINETICS_LAYOUTS = ("flat", "per_label")
# File suffixes taken for videos where a folder is searched for them (prediction, data preparation).
VIDEO_SUFFIXES = frozenset({".mp4", ".avi", ".mkv", ".webm", ".mov", ".m4v", ".mpg", ".mpeg", ".flv", ".wmv"})
_CONFIG_HINT = "set `dataset.annotations` to the folder holding the split files"


@dataclass(frozen=True)
class VideoRecord:
    """One video of a split.

    Attributes:
        path: Video path relative to the dataset root, with ``/`` separators.
        label: 0-based class index; ``-1`` when the label is unknown (e.g. the
            unlabelled Kinetics test CSV).
    """

    path: str
    label: int


@dataclass
class Annotations:
    """Class names and train/test video lists of one dataset split.

    Attributes:
        classes: Class names; the position of a name is its label.
        train: Training videos.
        test: Test (or validation) videos.
        excluded: Videos of either split left out by `dataset.exclude`.
        missing: Videos of either split left out by `dataset.allow_missing` because
            their files are absent.
    """

    classes: list[str]
    train: list[VideoRecord]
    test: list[VideoRecord]
    excluded: list[str] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)


class AnnotationError(ValueError):
    """An annotation file is missing or malformed (the message is one line)."""


# --------------------------------------------------------------------------- helpers


def _require_dir(path: Path) -> None:
    """Raise :class:`AnnotationError` unless ``path`` is an existing folder."""
    if not path.is_dir():
        raise AnnotationError(f"{path}: annotations folder not found; {_CONFIG_HINT}")


def _require_file(path: Path) -> None:
    """Raise :class:`AnnotationError` unless ``path`` is an existing file."""
    if not path.is_file():
        raise AnnotationError(f"{path}: annotation file not found; {_CONFIG_HINT}")


def _check_split(dataset: str, split: int) -> None:
    """Raise :class:`AnnotationError` unless ``split`` is one of the official splits."""
    if isinstance(split, bool) or split not in _SPLITS:
        valid = ", ".join(str(s) for s in _SPLITS)
        raise AnnotationError(f"{dataset}: split must be one of {valid}, got {split!r}")


def _lines(path: Path) -> Iterator[tuple[int, str]]:
    """Yield ``(line_number, line)`` for each non-blank line of a text file, stripped.

    Stripping removes ``\\r`` too, so LF and CRLF files parse the same; a UTF-8
    byte-order mark is ignored. A line that is not UTF-8 raises
    :class:`AnnotationError` with its number.
    """
    _require_file(path)
    data = path.read_bytes().removeprefix(b"\xef\xbb\xbf")
    for number, raw in enumerate(data.splitlines(), start=1):
        try:
            line = raw.decode("utf-8").strip()
        except UnicodeDecodeError as error:
            raise AnnotationError(
                f"{path}:{number}: not UTF-8 text ({error.reason} at byte {error.start}"
                " of the line); save the file as UTF-8"
            ) from None
        if line:
            yield number, line


def _norm_path(path: str) -> str:
    """Return ``path`` with ``/`` separators (lists written on Windows use ``\\``)."""
    return path.replace("\\", "/")


def _parse_int(token: str, path: Path, number: int, what: str) -> int:
    """Parse an integer field, raising :class:`AnnotationError` with the file and line."""
    try:
        return int(token)
    except ValueError:
        raise AnnotationError(f"{path}:{number}: {what} {token!r} is not an integer") from None


def _non_empty(records: list[VideoRecord], path: Path) -> list[VideoRecord]:
    """Return ``records``, raising :class:`AnnotationError` if ``path`` gave no video."""
    if not records:
        raise AnnotationError(f"{path}: no videos listed in this file")
    return records


# --------------------------------------------------------------------------- generic lists


def _read_video_list(
    path: Path, num_classes: int | None, names: tuple[Path, int] | None = None
) -> list[VideoRecord]:
    """Read a ``relative/path label`` list; labels must lie in ``[0, num_classes)`` when given.

    ``names`` is the class-names file and the line of its last name, when the
    class count comes from that file: a label beyond the names then says so.
    """
    records = []
    for number, line in _lines(path):
        # Paths may contain spaces: the label is the last token.
        parts = line.rsplit(maxsplit=1)
        if len(parts) != 2:
            raise AnnotationError(
                f"{path}:{number}: expected '<relative/path> <label>', got {line!r}"
            )
        label = _parse_int(parts[1], path, number, "label")
        if label >= 0 and names is not None and num_classes is not None and label >= num_classes:
            names_file, last_line = names
            raise AnnotationError(
                f"{path}:{number}: label {label} has no class name: {names_file} names labels"
                f" 0-{num_classes - 1} only ({num_classes} names, the last on line {last_line})"
            )
        if label < 0 or (num_classes is not None and label >= num_classes):
            upper = "" if num_classes is None else f" and below {num_classes}"
            raise AnnotationError(
                f"{path}:{number}: label {label} is out of range (labels are 0-based{upper})"
            )
        records.append(VideoRecord(_norm_path(parts[0].rstrip()), label))
    return _non_empty(records, path)


def _read_class_name_lines(path: Path, num_classes: int | None) -> list[tuple[int, str]]:
    """``(line_number, name)`` of every name of a class-names file, checked as :func:`read_class_names` says."""
    if not path.is_file():
        raise AnnotationError(
            f"{path}: class-names file not found; set `dataset.class_names` to a file"
            " of class names, one per line in label order"
        )
    lines = [(number, line) for number, line in _lines(path) if not line.startswith("#")]
    if not lines:
        raise AnnotationError(
            f"{path}:1: no class names in this file (blank or # comment lines only);"
            " write one name per line, in label order"
        )
    seen: dict[str, tuple[int, int]] = {}  # name -> (line, label)
    for label, (number, name) in enumerate(lines):
        if name in seen:
            first, first_label = seen[name]
            raise AnnotationError(
                f"{path}:{number}: class name {name!r} repeats line {first}"
                f" (label {first_label}); every class needs its own name"
            )
        seen[name] = (number, label)
    if num_classes is not None and len(lines) > num_classes:
        number, name = lines[num_classes]
        raise AnnotationError(
            f"{path}:{number}: {len(lines)} class names but num_classes={num_classes};"
            f" the names from this line on ({name!r} = label {num_classes}) have no class"
        )
    if num_classes is not None and len(lines) < num_classes:
        number, name = lines[-1]
        first_unnamed, last = len(lines), num_classes - 1
        unnamed = f"label {last} has" if first_unnamed == last else f"labels {first_unnamed}-{last} have"
        raise AnnotationError(
            f"{path}:{number}: {len(lines)} class names but num_classes={num_classes};"
            f" the file ends at label {len(lines) - 1} ({name!r}), {unnamed} no name"
        )
    return lines


def read_class_names(path: Path | str, num_classes: int | None = None) -> list[str]:
    """Read a class-names file: one name per line, in label order.

    Format:

    * Each name is one line; the first name is label 0, the next label 1, and so on.
      Surrounding whitespace is stripped, inner spaces are kept (``playing guitar``).
    * Blank lines and comment lines (first non-blank character ``#``) are skipped
      wherever they are and take no label, so a name's label is its rank among
      the names, not its line number (with neither, line 1 is label 0). A name
      cannot start with ``#``; there are no end-of-line comments (``#`` inside
      a name is kept).
    * UTF-8, with or without a byte-order mark; LF or CRLF line endings.

    Args:
        path: The class-names file.
        num_classes: Expected number of names; ``None`` accepts any number.

    Returns:
        The names, index = label.

    Raises:
        AnnotationError: The file is missing, or, with ``file:line``, holds no
            name (line 1), repeats a name (exact comparison; the message gives
            both lines), or holds more names than ``num_classes`` (the first
            extra name's line) or fewer (the last name's line).
    """
    return [name for _, name in _read_class_name_lines(Path(path), num_classes)]


def load_video_list(
    train_list: Path | str,
    test_list: Path | str,
    num_classes: int | None = None,
    class_names: list[str] | None = None,
    class_names_file: Path | str | None = None,
) -> Annotations:
    """Load generic mmaction2-style video lists.

    Each non-blank line is ``relative/path.mp4 label`` with a 0-based integer
    label; the label is the last whitespace-separated token, so paths may
    contain spaces.

    Args:
        train_list: Training list file.
        test_list: Test list file.
        num_classes: Number of classes; defaults to the number of class names or,
            without names, to the largest label found plus one.
        class_names: Class names (index = label).
        class_names_file: A file of class names, one per line in label order
            (format: :func:`read_class_names`); exclusive with ``class_names``.
            Without either, classes are named ``"0"``, ``"1"``...

    Returns:
        The parsed annotations.

    Raises:
        AnnotationError: A file is missing or malformed, a label is out of
            range or has no name, ``num_classes`` disagrees with the class
            names, or both ``class_names`` and ``class_names_file`` are given.
    """
    train_list, test_list = Path(train_list), Path(test_list)
    names_at: tuple[Path, int] | None = None  # the names file and the line of its last name
    if class_names is not None and class_names_file is not None:
        raise AnnotationError("video_list: give class_names or class_names_file, not both")
    if class_names_file is not None:
        lines = _read_class_name_lines(Path(class_names_file), num_classes)
        class_names = [name for _, name in lines]
        names_at = (Path(class_names_file), lines[-1][0])
    if class_names is not None:
        if num_classes is not None and num_classes != len(class_names):
            raise AnnotationError(
                f"video_list: num_classes={num_classes} but {len(class_names)} class_names given"
            )
        num_classes = len(class_names)
    train = _read_video_list(train_list, num_classes, names_at)
    test = _read_video_list(test_list, num_classes, names_at)
    if class_names is None:
        count = num_classes if num_classes is not None else 1 + max(r.label for r in train + test)
        class_names = [str(i) for i in range(count)]
    return Annotations(classes=list(class_names), train=train, test=test)


# --------------------------------------------------------------------------- UCF101


def _read_ucf_classes(path: Path) -> list[str]:
    """Read ``classInd.txt`` (``"1 ApplyEyeMakeup"``), checking the indices are 1..N in order."""
    classes = []
    for number, line in _lines(path):
        tokens = line.split()
        if len(tokens) != 2:
            raise AnnotationError(f"{path}:{number}: expected '<index> <ClassName>'")
        index = _parse_int(tokens[0], path, number, "class index")
        if index != len(classes) + 1:
            raise AnnotationError(
                f"{path}:{number}: class index {index} found where {len(classes) + 1} was expected"
            )
        classes.append(tokens[1])
    if not classes:
        raise AnnotationError(f"{path}: no classes listed in this file")
    return classes


def _read_ucf_list(path: Path, class_index: dict[str, int]) -> list[VideoRecord]:
    """Read a UCF101 train or test list.

    The label is taken from the folder part of each path (``Class/v_Class_gXX_cYY.avi``),
    never from the file name, because the folder ``HandstandPushups`` holds files
    named ``v_HandStandPushups_*``. A train list's explicit 1-based label must agree.
    """
    records = []
    for number, line in _lines(path):
        tokens = line.split()
        if len(tokens) > 2:
            raise AnnotationError(f"{path}:{number}: expected '<Class/video.avi> [label]'")
        video = _norm_path(tokens[0])
        folder = video.split("/", 1)[0] if "/" in video else ""
        if folder not in class_index:
            raise AnnotationError(
                f"{path}:{number}: folder {folder!r} of {video!r} is not a class of classInd.txt"
            )
        label = class_index[folder]
        if len(tokens) == 2:
            listed = _parse_int(tokens[1], path, number, "label")
            if listed != label + 1:
                raise AnnotationError(
                    f"{path}:{number}: label {listed} disagrees with folder {folder!r}"
                    f" (class {label + 1} in classInd.txt)"
                )
        records.append(VideoRecord(video, label))
    return _non_empty(records, path)


def load_ucf101(annotations_dir: Path | str, split: int) -> Annotations:
    """Load one official UCF101 split.

    Args:
        annotations_dir: The ``ucfTrainTestlist`` folder, holding ``classInd.txt``,
            ``trainlist0N.txt`` and ``testlist0N.txt``.
        split: 1, 2 or 3.

    Returns:
        The 101 classes and the split's train/test videos, paths as in the
        lists (``ApplyEyeMakeup/v_ApplyEyeMakeup_g08_c01.avi``).

    Raises:
        AnnotationError: Bad split, missing folder or file, or malformed line.
    """
    _check_split("ucf101", split)
    root = Path(annotations_dir)
    _require_dir(root)
    classes = _read_ucf_classes(root / "classInd.txt")
    class_index = {name: i for i, name in enumerate(classes)}
    return Annotations(
        classes=classes,
        train=_read_ucf_list(root / f"trainlist0{split}.txt", class_index),
        test=_read_ucf_list(root / f"testlist0{split}.txt", class_index),
    )


# --------------------------------------------------------------------------- HMDB51

_HMDB_TRAIN, _HMDB_TEST, _HMDB_UNUSED = 1, 2, 0


def load_hmdb51(annotations_dir: Path | str, split: int) -> Annotations:
    """Load one official HMDB51 split.

    The folder holds one ``<class>_test_split<N>.txt`` per class and split, each
    line ``<video>.avi <code>`` with 1 = train, 2 = test, 0 = unused.

    Args:
        annotations_dir: The ``testTrainMulti_7030_splits`` folder.
        split: 1, 2 or 3.

    Returns:
        Classes sorted by name; record paths ``<class>/<video>.avi``.

    Raises:
        AnnotationError: Bad split, missing folder, no split file, or malformed line.
    """
    _check_split("hmdb51", split)
    root = Path(annotations_dir)
    _require_dir(root)
    suffix = f"_test_split{split}.txt"
    files = {p.name[: -len(suffix)]: p for p in root.glob(f"*{suffix}")}
    if not files:
        raise AnnotationError(f"{root}: no '*{suffix}' files found; {_CONFIG_HINT}")
    classes = sorted(files)
    train: list[VideoRecord] = []
    test: list[VideoRecord] = []
    for label, name in enumerate(classes):
        path = files[name]
        for number, line in _lines(path):
            tokens = line.split()
            if len(tokens) != 2:
                raise AnnotationError(f"{path}:{number}: expected '<video>.avi <0|1|2>'")
            code = _parse_int(tokens[1], path, number, "split code")
            record = VideoRecord(f"{name}/{tokens[0]}", label)
            if code == _HMDB_TRAIN:
                train.append(record)
            elif code == _HMDB_TEST:
                test.append(record)
            elif code != _HMDB_UNUSED:
                raise AnnotationError(
                    f"{path}:{number}: split code {code} is not 0 (unused), 1 (train) or 2 (test)"
                )
    return Annotations(classes=classes, train=train, test=test)


# --------------------------------------------------------------------------- Kinetics


@dataclass(frozen=True)
class _Clip:
    """One Kinetics CSV row: its line number, label name (``None`` if unlabelled) and path."""

    line: int
    label: str | None
    path: str


def _read_kinetics_csv(
    path: Path, layout: str, keep: set[str] | None, require_label: bool
) -> list[_Clip]:
    """Read a Kinetics CSV by header name, keeping rows whose ``youtube_id`` is in ``keep``.

    The clip file is ``<youtube_id>_<start:06d>_<end:06d>.mp4``; with the
    ``per_label`` layout it lies in a folder named exactly as the CSV label
    (spaces kept). Unlabelled rows have no label folder and stay flat.
    """
    _require_file(path)
    with path.open(encoding="utf-8-sig", newline="") as f:
        reader = csv.DictReader(f)
        header = [name.strip() for name in reader.fieldnames or []]
        reader.fieldnames = header
        needed = ["youtube_id", "time_start", "time_end"] + (["label"] if require_label else [])
        missing = [name for name in needed if name not in header]
        if missing:
            raise AnnotationError(
                f"{path}: CSV header lacks column(s) {', '.join(missing)}"
                f" (header: {','.join(header) or 'empty'})"
            )
        has_label = "label" in header
        clips = []
        for row in reader:
            number = reader.line_num
            youtube_id = (row["youtube_id"] or "").strip()
            if keep is not None and youtube_id not in keep:
                continue
            start, end = (_parse_time(row[k], path, number, k) for k in ("time_start", "time_end"))
            label = (row["label"] or "").strip() if has_label else ""
            if not youtube_id or (require_label and not label):
                raise AnnotationError(f"{path}:{number}: empty youtube_id or label")
            name = f"{youtube_id}_{start:06d}_{end:06d}.mp4"
            if layout == "per_label" and label:
                name = f"{label}/{name}"
            clips.append(_Clip(number, label or None, name))
    if not clips:
        reason = " matching the id list" if keep is not None else ""
        raise AnnotationError(f"{path}: no clips{reason} in this file")
    return clips


def _parse_time(value: str | None, path: Path, number: int, column: str) -> int:
    """Parse a ``time_start``/``time_end`` cell (seconds, written ``17`` or ``17.0``)."""
    try:
        return int(float(value or ""))
    except ValueError:
        raise AnnotationError(f"{path}:{number}: {column} {value!r} is not a number") from None


def _index_clips(clips: list[_Clip], classes: list[str], path: Path) -> list[VideoRecord]:
    """Turn clips into records, mapping label names to indices in ``classes`` (``None`` -> -1)."""
    class_index = {name: i for i, name in enumerate(classes)}
    records = []
    for clip in clips:
        if clip.label is not None and clip.label not in class_index:
            raise AnnotationError(
                f"{path}:{clip.line}: label {clip.label!r} is not one of the {len(classes)} classes"
            )
        label = -1 if clip.label is None else class_index[clip.label]
        records.append(VideoRecord(clip.path, label))
    return records


def _check_layout(layout: str) -> None:
    """Raise :class:`AnnotationError` unless ``layout`` is a known Kinetics layout."""
    if layout not in _KINETICS_LAYOUTS:
        raise AnnotationError(
            f"kinetics: layout must be one of {', '.join(_KINETICS_LAYOUTS)}, got {layout!r}"
        )


def _read_names(path: Path) -> list[str]:
    """Read one name per non-blank line (a label map), keeping inner spaces."""
    names = [line for _, line in _lines(path)]
    if not names:
        raise AnnotationError(f"{path}: no names listed in this file")
    return names


def load_kinetics(
    annotations_dir: Path | str,
    layout: str = "flat",
    train_csv: str = "kinetics-400_train.csv",
    test_csv: str = "kinetics-400_val.csv",
    label_map: str | None = "label_map_k400.txt",
    keep_ids: tuple[set[str] | None, set[str] | None] = (None, None),
) -> Annotations:
    """Load Kinetics CSV annotations (ActivityNet format).

    Columns are found by header name: ``label,youtube_id,time_start,time_end,split``
    (``is_cc`` and other columns are ignored, any order). The test CSV may lack
    ``label``; its records then have label -1.

    Args:
        annotations_dir: Folder holding the CSV files and the label map.
        layout: ``"flat"``: path is the clip file name; ``"per_label"``: path is
            ``<label>/<file>`` with the label exactly as in the CSV (spaces kept;
            unlabelled test clips stay flat).
        train_csv: Training CSV file name, inside ``annotations_dir``.
        test_csv: Test (validation) CSV file name, inside ``annotations_dir``.
        label_map: Class-name file (one per line, index = label) inside
            ``annotations_dir``; when ``None`` or absent, the classes are the
            sorted unique labels of the training CSV.
        keep_ids: YouTube ids to keep in the train and test CSV; ``None`` keeps all.

    Returns:
        The parsed annotations.

    Raises:
        AnnotationError: Missing folder or file, bad layout, missing column,
            malformed row, or a label that is not a class.
    """
    _check_layout(layout)
    root = Path(annotations_dir)
    _require_dir(root)
    train_path, test_path = root / train_csv, root / test_csv
    train_clips = _read_kinetics_csv(train_path, layout, keep_ids[0], require_label=True)
    test_clips = _read_kinetics_csv(test_path, layout, keep_ids[1], require_label=False)
    if label_map is not None and (root / label_map).is_file():
        classes = _read_names(root / label_map)
    else:
        classes = sorted({clip.label for clip in train_clips if clip.label is not None})
    return Annotations(
        classes=classes,
        train=_index_clips(train_clips, classes, train_path),
        test=_index_clips(test_clips, classes, test_path),
    )


def _read_ids(path: Path) -> set[str]:
    """Read a list of YouTube ids, one per line."""
    return {line for _, line in _lines(path)}


def load_mini_kinetics200(annotations_dir: Path | str, layout: str = "flat") -> Annotations:
    """Load Mini-Kinetics-200, the Kinetics-400 subset of the S3D paper.

    ``annotations_dir`` must hold ``kinetics-400_train.csv``,
    ``kinetics-400_val.csv``, ``train_ytid_list.txt`` and ``val_ytid_list.txt``.
    The CSVs are filtered by the id lists. The 200 classes are the sorted
    labels that occur among the kept validation rows (the subset publishes ids,
    not class names); labels are indexed into these 200 classes, and a kept
    training row whose label is not among them is an error.

    Args:
        annotations_dir: Folder holding the four files above.
        layout: ``"flat"`` or ``"per_label"``, as in :func:`load_kinetics`.

    Returns:
        The parsed annotations.

    Raises:
        AnnotationError: Missing folder or file, malformed row, or a kept
            training label outside the validation classes.
    """
    _check_layout(layout)
    root = Path(annotations_dir)
    _require_dir(root)
    train_path, val_path = root / "kinetics-400_train.csv", root / "kinetics-400_val.csv"
    train_ids = _read_ids(root / "train_ytid_list.txt")
    val_ids = _read_ids(root / "val_ytid_list.txt")
    val_clips = _read_kinetics_csv(val_path, layout, val_ids, require_label=True)
    train_clips = _read_kinetics_csv(train_path, layout, train_ids, require_label=True)
    classes = sorted({clip.label for clip in val_clips if clip.label is not None})
    return Annotations(
        classes=classes,
        train=_index_clips(train_clips, classes, train_path),
        test=_index_clips(val_clips, classes, val_path),
    )


# --------------------------------------------------------------------------- dispatch

_LOADERS: dict[str, Callable[..., Annotations]] = {
    "video_list": load_video_list,
    "ucf101": load_ucf101,
    "hmdb51": load_hmdb51,
    "kinetics400": load_kinetics,
    "mini_kinetics200": load_mini_kinetics200,
}


def load_annotations(name: str, **kwargs: object) -> Annotations:
    """Load the annotations of dataset ``name``, passing ``kwargs`` to its parser.

    Args:
        name: One of ``video_list``, ``ucf101``, ``hmdb51``, ``kinetics400``,
            ``mini_kinetics200``.
        **kwargs: Arguments of the matching ``load_*`` function.

    Returns:
        The parsed annotations.

    Raises:
        AnnotationError: Unknown dataset name, arguments that the parser does
            not take, or any error of the parser.
    """
    if name not in _LOADERS:
        raise AnnotationError(
            f"unknown dataset {name!r}; valid names: {', '.join(sorted(_LOADERS))}"
        )
    loader = _LOADERS[name]
    signature = inspect.signature(loader)
    try:
        signature.bind(**kwargs)
    except TypeError as error:
        raise AnnotationError(
            f"{name}: {error}; parameters: {', '.join(signature.parameters)}"
        ) from None
    return loader(**kwargs)
