"""``video_list`` files made from a folder of clips sorted by class: the library of ``make-list``.

The input is a folder ``ROOT`` with one sub-folder per class, each holding that
class's video files, possibly in deeper folders::

    ROOT/ApplyEyeMakeup/v_ApplyEyeMakeup_g08_c01.avi
    ROOT/Archery/v_Archery_g01_c01.avi
    ROOT/Archery/extra/more.mp4

:func:`make_lists` writes three files into an output folder, in the formats that
``dataset=video_list`` reads (:func:`rcca.data.annotations.load_video_list`):

* ``classes.txt``: the class names, one per line; the classes are the folder
  names sorted by code point, and a name's line (0-based) is its label.
* ``train.txt`` and ``test.txt``: one ``relative/path label`` line per clip, the
  path relative to ``ROOT`` with ``/`` separators, the label 0-based; lines are
  sorted by label, then by path.

Only video files count as clips: a file whose suffix (any case) is one of
:data:`rcca.data.annotations.VIDEO_SUFFIXES`. Frame folders are not clips. Names
starting with ``.`` (``.git``, macOS ``._clip.avi`` files) are skipped at every
level; symbolic links to folders and files are followed.

The split is seeded and stratified: each class sends ``round(test_fraction * n)``
of its ``n`` clips (rounded half up) to the test list, at least one and at most
``n - 1`` when it has two clips or more. A class of a single clip goes to the
training list only, and :meth:`ListSummary.summary_line` names it. With a
``group_pattern``, clips are split by group (see :func:`clip_groups`) so that
the clips of one source video never land on both sides; each class then sends
whole groups to the test list, as close to ``round(test_fraction * n)`` clips
as whole groups allow. Groups belong to one class: the same group name in two
classes names two groups, which may land on different sides.

Which clips go to the test list depends only on the seed, the class name and
the class's clips (or groups): never on the order in which the file system
lists them, nor on the other classes. Every problem raises
:class:`rcca.errors.UserError` with a one-line message naming the path or value
and what to do.
"""

from __future__ import annotations

import hashlib
import itertools
import os
import re
from collections.abc import Callable
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

from rcca.engine.files import write_atomically
from rcca.data.annotations import VIDEO_SUFFIXES
from rcca.errors import UserError

__all__ = [
    "CLASSES_NAME",
    "LIST_NAMES",
    "TEST_NAME",
    "TRAIN_NAME",
    "ClassCounts",
    "ListSummary",
    "clip_groups",
    "find_class_clips",
    "make_lists",
    "split_groups",
]

TRAIN_NAME = "train.txt"
TEST_NAME = "test.txt"
CLASSES_NAME = "classes.txt"
LIST_NAMES = (TRAIN_NAME, TEST_NAME, CLASSES_NAME)
# Fractions are read as the decimal the user typed (0.15 is 3/20), so halves round up exactly.
_MAX_DENOMINATOR = 10**6


@dataclass(frozen=True)
class ClassCounts:
    """How one class was split.

    Attributes:
        name: The class name (its folder's name).
        label: The 0-based label (the line of the name in ``classes.txt``).
        train: Clips in the training list.
        test: Clips in the test list.
        train_groups: Groups in the training list; ``None`` without a group pattern.
        test_groups: Groups in the test list; ``None`` without a group pattern.
    """

    name: str
    label: int
    train: int
    test: int
    train_groups: int | None = None
    test_groups: int | None = None


@dataclass(frozen=True)
class ListSummary:
    """What :func:`make_lists` found and wrote.

    Attributes:
        root: The folder of class folders.
        output: The folder the three files were written into.
        num_classes: Number of classes (lines of ``classes.txt``).
        train_clips: Lines of ``train.txt``.
        test_clips: Lines of ``test.txt``.
        group_pattern: The group pattern, ``None`` when clips were split one by one.
        groups: Number of groups over all classes (a group belongs to one class);
            ``None`` without a group pattern.
        per_class: The counts of each class, in label order.
        unsorted_videos: Video files lying directly in ``root``, outside every
            class folder: they are in no list.
    """

    root: Path
    output: Path
    num_classes: int
    train_clips: int
    test_clips: int
    group_pattern: str | None
    groups: int | None
    per_class: tuple[ClassCounts, ...]
    unsorted_videos: int = 0

    @property
    def train_only(self) -> list[str]:
        """Names of the classes with no test clip (one clip, or one group)."""
        return [counts.name for counts in self.per_class if counts.test == 0]

    def summary_line(self) -> str:
        """One line for the terminal.

        Example: ``make-list: 101 classes, 9537 train / 3783 test clips (28.4% test;
        2525 groups by '_g(\\d+)_', no group on both sides); wrote train.txt, test.txt,
        classes.txt in /data/ucf101``, followed by ``; class X has a single clip (or
        group): train.txt only`` when some class could not be split.

        Returns:
            The line, without a newline.
        """
        total = self.train_clips + self.test_clips
        share = f"{100 * self.test_clips / total:.1f}% test" if total else "no clip"
        if self.group_pattern is not None:
            share += f"; {self.groups} groups by '{self.group_pattern}', no group on both sides"
        line = (
            f"make-list: {_plural(self.num_classes, 'class', 'classes')}, {self.train_clips} train /"
            f" {self.test_clips} test clips ({share}); wrote {', '.join(LIST_NAMES)} in {self.output}"
        )
        single = "group" if self.group_pattern is not None else "clip"
        alone = self.train_only
        if len(alone) == 1:
            line += f"; class {alone[0]!r} has a single {single}: train.txt only"
        elif alone:
            shown = ", ".join(repr(name) for name in alone[:3]) + (", ..." if len(alone) > 3 else "")
            line += f"; {len(alone)} classes have a single {single} each, train.txt only: {shown}"
        if self.unsorted_videos:
            line += (
                f"; {_plural(self.unsorted_videos, 'video', 'videos')} directly in {self.root}"
                " left out (no class folder)"
            )
        return line


def _plural(count: int, one: str, many: str) -> str:
    """``"1 class"``, ``"2 classes"``."""
    return f"{count} {one if count == 1 else many}"


# --------------------------------------------------------------------------- checks


def _check_fraction(test_fraction: float) -> Fraction:
    """Return ``test_fraction`` as the decimal it was written as, checking it lies in (0, 1).

    ``0.15`` becomes ``3/20`` (not the float's binary value), so that
    :func:`split_groups` rounds ``0.15 * 10 = 1.5`` up to 2.

    Raises:
        UserError: ``test_fraction`` is not a number strictly between 0 and 1.
    """
    valid = isinstance(test_fraction, (int, float, Fraction)) and not isinstance(test_fraction, bool)
    if not valid or not 0 < test_fraction < 1:  # NaN fails the comparison too
        raise UserError(
            f"make-list: test fraction must lie strictly between 0 and 1, got {test_fraction!r};"
            " give e.g. 0.3 for 30% of each class's clips in test.txt"
        )
    return Fraction(test_fraction).limit_denominator(_MAX_DENOMINATOR)


def _compile_pattern(group_pattern: str) -> re.Pattern[str]:
    """Compile a group pattern, turning a syntax error into a one-line :class:`UserError`."""
    try:
        return re.compile(group_pattern)
    except re.error as error:
        raise UserError(
            f"make-list: group pattern '{group_pattern}' is not a valid regular expression ({error});"
            r" e.g. '_g(\d+)_' groups UCF101 clips by source video"
        ) from None


def _check_text(text: str, where: Path, what: str, class_name: bool) -> None:
    """Raise :class:`UserError` unless ``text`` survives a ``video_list`` file unchanged.

    The reader of :mod:`rcca.data.annotations` splits lines at ``\\n`` and ``\\r``,
    strips each line, reads ``\\`` as ``/``, and takes a class-name line starting
    with ``#`` for a comment; so a name holding one of these would be read back
    as another name, or not at all.

    Args:
        text: A class name or a clip path relative to the root.
        where: The file or folder the text names, for the message.
        what: ``"class name"`` or ``"clip path"``.
        class_name: Apply the class-name rules (no ``#`` first, no surrounding spaces).

    Raises:
        UserError: The text cannot be written as a line, naming ``where`` and the fix.
    """
    problem = None
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        problem = "is not valid UTF-8"
    if problem is None:
        if "\n" in text or "\r" in text:
            problem = "holds a line break"
        elif "\\" in text:
            problem = "holds a backslash (list readers take it for a folder separator)"
        elif text != text.strip() or not text:
            problem = "starts or ends with a space"
        elif class_name and text.startswith("#"):
            problem = "starts with '#' (classes.txt takes such a line for a comment)"
    if problem is not None:
        shown = ascii(str(where))
        raise UserError(f"make-list: the {what} of {shown} {problem}; rename it, then run make-list again")


# --------------------------------------------------------------------------- listing


def _is_hidden(name: str) -> bool:
    """Whether a file or folder name is skipped: it starts with ``.``."""
    return name.startswith(".")


def _walk_videos(folder: Path, suffixes: frozenset[str]) -> list[Path]:
    """Every video file under ``folder``, hidden names skipped, links followed (each folder once).

    Returns:
        The files, sorted (the order never depends on the file system).
    """
    videos = []
    seen: set[tuple[int, int]] = set()
    for current, dirs, files in os.walk(folder, followlinks=True):
        stat = os.stat(current)
        if (stat.st_dev, stat.st_ino) in seen:  # a link back to a folder already walked
            dirs[:] = []
            continue
        seen.add((stat.st_dev, stat.st_ino))
        dirs[:] = [name for name in dirs if not _is_hidden(name)]
        for name in files:
            path = Path(current, name)
            if not _is_hidden(name) and path.suffix.lower() in suffixes and path.is_file():
                videos.append(path)
    return sorted(videos)


def find_class_clips(root: Path, skip: Path | None = None) -> tuple[dict[str, list[str]], int]:
    """List the clips of every class folder of ``root``.

    Example: with ``root/b/x.mp4``, ``root/a/1/y.AVI``, ``root/a/notes.txt`` and
    ``root/loose.mp4``, the result is ``({"a": ["a/1/y.AVI"], "b": ["b/x.mp4"]}, 1)``.

    Args:
        root: The folder of class folders.
        skip: The output folder: a folder of ``root`` that is ``skip`` or holds
            it and has no video is not taken for a class (``make-list`` may write
            its files into ``root/lists``).

    Returns:
        The classes sorted by name, each with its clips' paths relative to ``root``
        (``/`` separators, sorted), and the number of video files lying directly
        in ``root`` (in no class).

    Raises:
        UserError: ``root`` is not a folder, holds no class folder, or a class
            folder holds no video, or a class name or clip path cannot be
            written into the lists (see :func:`_check_text`).
    """
    root = Path(root)
    if not root.is_dir():
        what = "is not a folder" if root.exists() else "does not exist"
        raise UserError(f"make-list: {root} {what}; give the folder that holds one folder of clips per class")
    suffixes = VIDEO_SUFFIXES
    folders = sorted(p for p in root.iterdir() if p.is_dir() and not _is_hidden(p.name))
    loose = sum(1 for p in root.iterdir() if p.is_file() and not _is_hidden(p.name) and p.suffix.lower() in suffixes)
    output = skip.resolve() if skip is not None else None
    classes: dict[str, list[str]] = {}
    for folder in folders:
        videos = _walk_videos(folder, suffixes)
        resolved = folder.resolve()
        if not videos and output is not None and (output == resolved or resolved in output.parents):
            continue
        _check_text(folder.name, folder, "class name", class_name=True)
        if not videos:
            raise UserError(
                f"make-list: class folder {folder} holds no video file ({' '.join(sorted(suffixes))});"
                " add its clips or move the folder out of the root"
            )
        clips = []
        for video in videos:
            relative = video.relative_to(root).as_posix()
            _check_text(relative, video, "clip path", class_name=False)
            clips.append(relative)
        classes[folder.name] = sorted(clips)
    if not classes:
        raise UserError(
            f"make-list: {root} holds no class folder; give the folder with one sub-folder of clips per class"
            " (ROOT/<class>/<clip>.mp4)"
        )
    return dict(sorted(classes.items())), loose


# --------------------------------------------------------------------------- splitting


def clip_groups(clips: list[str], pattern: re.Pattern[str] | None, class_name: str) -> dict[str, list[str]]:
    """Gather the clips of one class into groups by source video.

    The pattern is searched (``re.search``) in each clip's path below its class
    folder: the file name for flat classes, e.g. ``v_Archery_g08_c01.avi``. The
    first capture group names the group, or the whole match when the pattern has
    no group. Without a pattern, every clip is its own group.

    Example: with ``_g(\\d+)_``, ``["A/v_A_g01_c01.avi", "A/v_A_g01_c02.avi",
    "A/v_A_g02_c01.avi"]`` gives ``{"01": [the first two], "02": [the third]}``.

    Args:
        clips: The class's clip paths relative to the root (``<class>/...``).
        pattern: The compiled group pattern, or ``None``.
        class_name: The class, whose folder prefix is removed before matching.

    Returns:
        Group name -> its clips, in the order of ``clips``.

    Raises:
        UserError: The pattern does not match a clip (or its first group takes
            no part in the match); the message names the first such clip.
    """
    if pattern is None:
        return {clip: [clip] for clip in clips}
    groups: dict[str, list[str]] = {}
    prefix = len(class_name) + 1
    for clip in clips:
        match = pattern.search(clip[prefix:])
        key = None if match is None else match.group(1 if pattern.groups else 0)
        if key is None:
            unmatched = sum(1 for c in clips if not _names_group(pattern, c[prefix:]))
            raise UserError(
                f"make-list: group pattern '{pattern.pattern}' does not match clip {clip!r}"
                f" ({unmatched} of the {len(clips)} clips of class {class_name!r} unmatched); every clip"
                " needs a group: fix the pattern or leave it out"
            )
        groups.setdefault(key, []).append(clip)
    return groups


def _names_group(pattern: re.Pattern[str], name: str) -> bool:
    """Whether ``pattern`` gives ``name`` a group (see :func:`clip_groups`)."""
    match = pattern.search(name)
    return match is not None and match.group(1 if pattern.groups else 0) is not None


def _order_key(seed: int, class_name: str) -> Callable[[str], tuple[bytes, str]]:
    """A sort key that shuffles a class's group names by ``seed``.

    The key of a name is a SHA-256 digest of the seed, the class name and the
    group name (then the name itself), so the order depends on nothing else: not
    on the order the names come in, nor on the other classes, nor on Python's
    hash seed; and adding a clip moves few others across the split.
    """

    def key(name: str) -> tuple[bytes, str]:
        text = f"{seed}\0{class_name}\0{name}".encode()
        return hashlib.sha256(text).digest(), name

    return key


def split_groups(
    groups: dict[str, list[str]], fraction: Fraction, seed: int, class_name: str
) -> tuple[list[str], list[str]]:
    """Split the groups of one class into training and test groups.

    The groups are shuffled by ``seed`` (see :func:`_order_key`); the test list
    takes the first of them, as many as bring its clip count nearest to the
    target ``fraction * clips`` (the larger count on a tie), and at least one
    group, leaving at least one for training. A class of one group goes to
    training only.

    With one clip per group (no group pattern) the test list takes
    ``fraction * clips`` rounded half up, kept within ``[1, clips - 1]``: with
    fraction 3/10, a class of 2 clips sends 1 to test, 5 clips send 2 (1.5
    rounds up), 10 send 3, 101 send 30 (30.3). With larger groups the test share
    is approximate, off by at most about half a group.

    Example: groups of 4, 3, 5 and 4 clips (16) and fraction 3/10 (target 4.8)
    in shuffled order; running totals 4, 7, 12: the first group (4) is nearest,
    so 4 clips go to test and 12 to train.

    Args:
        groups: Group name -> clips, as from :func:`clip_groups`.
        fraction: The test fraction, in (0, 1).
        seed: The seed of the shuffle.
        class_name: The class (part of the shuffle, so classes shuffle apart).

    Returns:
        The training and test group names, each in shuffled order.
    """
    order = sorted(groups, key=_order_key(seed, class_name))
    if len(order) < 2:
        return order, []
    target = fraction * sum(len(clips) for clips in groups.values())
    # Clip counts of the test lists made of the first 1, 2, ... len(order) - 1 groups.
    totals = list(itertools.accumulate(len(groups[name]) for name in order[:-1]))
    best = min(range(len(totals)), key=lambda i: (abs(totals[i] - target), -totals[i])) + 1
    return order[best:], order[:best]


# --------------------------------------------------------------------------- writing


def _list_text(records: list[tuple[str, int]]) -> bytes:
    """A ``video_list`` file: ``path label`` lines, UTF-8, LF endings."""
    return "".join(f"{path} {label}\n" for path, label in records).encode("utf-8")


def _refuse_existing(output: Path, overwrite: bool) -> None:
    """Raise :class:`UserError` when ``output`` is a file, or holds list files and not ``overwrite``."""
    if output.exists() and not output.is_dir():
        raise UserError(f"make-list: output {output} is a file, not a folder; choose a folder for the lists")
    existing = [name for name in LIST_NAMES if (output / name).exists()]
    if existing and not overwrite:
        raise UserError(
            f"make-list: {output} already holds {', '.join(existing)}; pass --overwrite to replace them"
            " or choose another output folder"
        )


def _create_output(output: Path) -> None:
    """Create ``output`` and its parents, raising :class:`UserError` when that fails."""
    try:
        output.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise UserError(
            f"make-list: cannot create output folder {output} ({error.strerror}); choose another folder"
        ) from None


def make_lists(
    root: Path,
    output: Path,
    test_fraction: float,
    seed: int,
    group_pattern: str | None,
    overwrite: bool = False,
) -> ListSummary:
    """Write ``classes.txt``, ``train.txt`` and ``test.txt`` for the class folders of ``root``.

    Formats, clip rules and the split are described in the module docstring.
    The output folder may be ``root`` itself or lie inside it. Nothing is written
    until every check has passed; each file is then written atomically
    (:func:`rcca.engine.files.write_atomically`), ``classes.txt`` first.

    Example: ``root/a`` holding ``a1.mp4 .. a4.mp4`` and ``root/b`` holding
    ``b1.mp4 .. b3.mp4`` with ``test_fraction=0.25`` give ``classes.txt``
    ``a``, ``b``; class ``a`` sends 1 of its 4 clips to test, ``b`` 1 of 3
    (0.75 rounds to 1); ``train.txt`` holds lines like ``a/a2.mp4 0`` and
    ``b/b3.mp4 1``.

    Args:
        root: The folder holding one folder of clips per class.
        output: The folder to write the three files into (created if needed).
        test_fraction: The share of each class's clips for the test list, in (0, 1).
        seed: Chooses which clips (or groups) go to the test list.
        group_pattern: A regular expression naming each clip's source video
            (first capture group, or whole match), searched in the clip's path
            below its class folder; e.g. ``_g(\\d+)_`` for UCF101. Clips with
            the same group name in one class land on the same side. ``None`` splits
            clip by clip.
        overwrite: Replace list files that ``output`` already holds.

    Returns:
        The counts of what was written.

    Raises:
        UserError: ``test_fraction`` is not in (0, 1); ``group_pattern`` is not
            a valid regular expression or does not match a clip; ``root`` is
            missing, holds no class folder, or a class folder with no video; a
            class name or clip path cannot be written as a line (line break,
            backslash, surrounding spaces, a class name starting with ``#``, not
            UTF-8); ``output`` already holds a list file and ``overwrite`` is
            false, or cannot be created; the disk is full.
    """
    root, output = Path(root), Path(output)
    fraction = _check_fraction(test_fraction)
    pattern = _compile_pattern(group_pattern) if group_pattern is not None else None
    if not root.is_dir():  # checked before the output: a wrong root is the likelier mistake
        find_class_clips(root)
    _refuse_existing(output, overwrite)
    classes, loose = find_class_clips(root, skip=output)
    train: list[tuple[str, int]] = []
    test: list[tuple[str, int]] = []
    per_class = []
    for label, (name, clips) in enumerate(classes.items()):
        groups = clip_groups(clips, pattern, name)
        train_groups, test_groups = split_groups(groups, fraction, seed, name)
        class_train = sorted(clip for group in train_groups for clip in groups[group])
        class_test = sorted(clip for group in test_groups for clip in groups[group])
        train += [(clip, label) for clip in class_train]
        test += [(clip, label) for clip in class_test]
        grouped = pattern is not None
        per_class.append(
            ClassCounts(
                name=name,
                label=label,
                train=len(class_train),
                test=len(class_test),
                train_groups=len(train_groups) if grouped else None,
                test_groups=len(test_groups) if grouped else None,
            )
        )
    _create_output(output)
    write_atomically(output / CLASSES_NAME, "".join(f"{name}\n" for name in classes).encode("utf-8"))
    write_atomically(output / TRAIN_NAME, _list_text(train))
    write_atomically(output / TEST_NAME, _list_text(test))
    return ListSummary(
        root=root,
        output=output,
        num_classes=len(classes),
        train_clips=len(train),
        test_clips=len(test),
        group_pattern=group_pattern,
        groups=sum((c.train_groups or 0) + (c.test_groups or 0) for c in per_class) if pattern else None,
        per_class=tuple(per_class),
        unsorted_videos=loose,
    )
