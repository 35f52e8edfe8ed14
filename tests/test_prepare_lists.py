"""Tests of rcca.data.preparation.lists (make-list): the written lists read back with the project's own
`video_list` reader, the stratified and grouped split, determinism, and the one-line errors."""

from __future__ import annotations

import os
import re
from collections import Counter
from pathlib import Path

import pytest

from rcca.data.annotations import VideoRecord, load_video_list
from rcca.data.preparation import lists
from rcca.data.preparation.lists import ListSummary, make_lists
from rcca.errors import UserError

# Real UCF101 clip names (trainlist01.txt and testlist01.txt): 3 groups of Archery, 4 of
# HandstandPushups, whose files are spelled HandStand.
UCF_CLIPS = """
Archery/v_Archery_g01_c01.avi Archery/v_Archery_g01_c02.avi Archery/v_Archery_g01_c03.avi
Archery/v_Archery_g01_c04.avi Archery/v_Archery_g01_c05.avi Archery/v_Archery_g01_c06.avi
Archery/v_Archery_g01_c07.avi Archery/v_Archery_g02_c01.avi Archery/v_Archery_g02_c02.avi
Archery/v_Archery_g02_c03.avi Archery/v_Archery_g02_c04.avi Archery/v_Archery_g02_c05.avi
Archery/v_Archery_g02_c06.avi Archery/v_Archery_g02_c07.avi Archery/v_Archery_g03_c01.avi
Archery/v_Archery_g03_c02.avi Archery/v_Archery_g03_c03.avi Archery/v_Archery_g03_c04.avi
Archery/v_Archery_g03_c05.avi
HandstandPushups/v_HandStandPushups_g01_c01.avi HandstandPushups/v_HandStandPushups_g01_c02.avi
HandstandPushups/v_HandStandPushups_g01_c03.avi HandstandPushups/v_HandStandPushups_g01_c04.avi
HandstandPushups/v_HandStandPushups_g02_c01.avi HandstandPushups/v_HandStandPushups_g02_c02.avi
HandstandPushups/v_HandStandPushups_g02_c03.avi HandstandPushups/v_HandStandPushups_g02_c04.avi
HandstandPushups/v_HandStandPushups_g03_c01.avi HandstandPushups/v_HandStandPushups_g03_c02.avi
HandstandPushups/v_HandStandPushups_g03_c03.avi HandstandPushups/v_HandStandPushups_g03_c04.avi
HandstandPushups/v_HandStandPushups_g04_c01.avi HandstandPushups/v_HandStandPushups_g04_c02.avi
HandstandPushups/v_HandStandPushups_g04_c03.avi HandstandPushups/v_HandStandPushups_g04_c04.avi
""".split()
UCF_PATTERN = r"_g(\d+)_"


def _tree(root: Path, files: list[str]) -> Path:
    """Create `files` (paths relative to `root`) as one-byte dummies, in the order given."""
    for name in files:
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"x")
    return root


def _sized(sizes: dict[str, int]) -> list[str]:
    """`<class>/clip<i>.mp4` names: `sizes[class]` clips per class."""
    return [f"{name}/clip{i:02d}.mp4" for name, size in sizes.items() for i in range(size)]


def _read(output: Path):
    """The lists in `output` as the trainer reads them (dataset=video_list)."""
    return load_video_list(output / "train.txt", output / "test.txt", class_names_file=output / "classes.txt")


def _one_line_error(call, *fragments: str) -> str:
    """Run `call`, expecting a UserError of one line holding every fragment."""
    with pytest.raises(UserError) as caught:
        call()
    message = str(caught.value)
    assert "\n" not in message and "\r" not in message, message
    for fragment in fragments:
        assert fragment in message, message
    return message


# --- lists as the trainer reads them -------------------------------------------------------------------------------


def test_lists_read_back_as_the_same_records(tmp_path: Path) -> None:
    root = _tree(
        tmp_path / "videos",
        [
            "walk/b.mp4",
            "walk/deeper/still/c.MKV",  # nested and upper-case suffix
            "walk/a with space.avi",
            "walk/notes.txt",  # not a video
            "walk/._a.avi",  # macOS metadata file
            "walk/.hidden/d.mp4",
            "Run/r1.webm",
            "Run/r2.mov",
            "Run/r3.mp4",
            "jump/j1.mp4",
            "jump/j2.mp4",
        ],
    )
    (root / ".git").mkdir()
    summary = make_lists(root, tmp_path / "lists", 0.3, 0, None)

    read = _read(tmp_path / "lists")
    assert read.classes == ["Run", "jump", "walk"]  # sorted by code point; line = label
    expected = {
        VideoRecord("Run/r1.webm", 0),
        VideoRecord("Run/r2.mov", 0),
        VideoRecord("Run/r3.mp4", 0),
        VideoRecord("jump/j1.mp4", 1),
        VideoRecord("jump/j2.mp4", 1),
        VideoRecord("walk/a with space.avi", 2),
        VideoRecord("walk/b.mp4", 2),
        VideoRecord("walk/deeper/still/c.MKV", 2),
    }
    assert set(read.train) | set(read.test) == expected
    assert not set(read.train) & set(read.test)
    assert len(read.train) + len(read.test) == len(expected)
    # Lines sorted by label, then path; LF endings.
    text = (tmp_path / "lists" / "train.txt").read_text()
    assert text.endswith("\n") and "\r" not in text
    assert read.train == sorted(read.train, key=lambda r: (r.label, r.path))
    assert (tmp_path / "lists" / "classes.txt").read_text() == "Run\njump\nwalk\n"

    assert isinstance(summary, ListSummary)
    assert (summary.num_classes, summary.train_clips, summary.test_clips) == (3, len(read.train), len(read.test))
    assert summary.groups is None
    assert [(c.name, c.label, c.train + c.test) for c in summary.per_class] == [
        ("Run", 0, 3),
        ("jump", 1, 2),
        ("walk", 2, 3),
    ]
    line = summary.summary_line()
    assert "\n" not in line
    assert line.startswith(f"make-list: 3 classes, {summary.train_clips} train / {summary.test_clips} test clips")
    assert line.endswith(f"wrote train.txt, test.txt, classes.txt in {tmp_path / 'lists'}")
    assert not list((tmp_path / "lists").glob(".*tmp"))  # no temporary file left


def test_each_class_is_split_by_its_rounded_fraction(tmp_path: Path) -> None:
    sizes = {"c1": 1, "c2": 2, "c3": 3, "c5": 5, "c10": 10, "c11": 11}
    root = _tree(tmp_path / "v", _sized(sizes))
    summary = make_lists(root, tmp_path / "out", 0.3, 7, None)

    # round half up of 0.3 n, kept in [1, n - 1]; one clip goes to train only.
    expected_test = {"c1": 0, "c2": 1, "c3": 1, "c5": 2, "c10": 3, "c11": 3}
    read = _read(tmp_path / "out")
    test_per_class = Counter(read.classes[r.label] for r in read.test)
    train_per_class = Counter(read.classes[r.label] for r in read.train)
    for name, size in sizes.items():
        assert test_per_class[name] == expected_test[name], name
        assert train_per_class[name] == size - expected_test[name], name
    counts = {c.name: (c.train, c.test) for c in summary.per_class}
    assert counts == {name: (sizes[name] - expected_test[name], expected_test[name]) for name in sizes}
    assert summary.train_only == ["c1"]
    assert "class 'c1' has a single clip: train.txt only" in summary.summary_line()


def test_fraction_is_read_as_the_decimal_written(tmp_path: Path) -> None:
    # 0.15 * 10 is 1.5 as a decimal (rounds up to 2), though the float 0.15 lies just below 0.15.
    root = _tree(tmp_path / "v", _sized({"a": 10}))
    assert make_lists(root, tmp_path / "out", 0.15, 0, None).test_clips == 2


# --- determinism ----------------------------------------------------------------------------------------------------


def _reverse_listing(monkeypatch: pytest.MonkeyPatch) -> None:
    """Make the file system seem to list every folder in reverse order."""
    walk, iterdir = os.walk, Path.iterdir

    def reversed_walk(top, *args, **kwargs):
        for current, dirs, files in walk(top, *args, **kwargs):
            dirs.reverse()  # in place: the caller's pruning must still reach os.walk
            files.reverse()
            yield current, dirs, files

    monkeypatch.setattr(lists.os, "walk", reversed_walk)
    monkeypatch.setattr(Path, "iterdir", lambda self: iter(sorted(iterdir(self), reverse=True)))


def test_same_seed_same_lists_whatever_the_listing_order(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    names = _sized({"a": 12, "b": 9, "c": 5}) + ["a/sub/x.mp4", "a/sub/y.mp4"]
    first = _tree(tmp_path / "one", names)
    second = _tree(tmp_path / "two", names[::-1])  # created in the other order
    make_lists(first, tmp_path / "out1", 0.3, 3, None)
    _reverse_listing(monkeypatch)
    make_lists(second, tmp_path / "out2", 0.3, 3, None)
    for name in ("train.txt", "test.txt", "classes.txt"):
        assert (tmp_path / "out1" / name).read_bytes() == (tmp_path / "out2" / name).read_bytes(), name


def test_seed_changes_the_split_and_other_classes_do_not(tmp_path: Path) -> None:
    root = _tree(tmp_path / "v", _sized({"b": 40}))
    tests = set()
    for seed in (0, 1):
        make_lists(root, tmp_path / f"seed{seed}", 0.25, seed, None)
        tests.add(frozenset(r.path for r in _read(tmp_path / f"seed{seed}").test))
    assert len(tests) == 2  # two seeds, two test sets (of 10 clips in 40: equal only by a 1e-9 chance)

    # A new class (which shifts b's label) leaves b's test clips alone.
    _tree(root, _sized({"a": 6}))
    make_lists(root, tmp_path / "more", 0.25, 0, None)
    read = _read(tmp_path / "more")
    assert read.classes == ["a", "b"]
    assert {r.path for r in read.test if r.label == 1} == {r.path for r in _read(tmp_path / "seed0").test}


# --- grouped split --------------------------------------------------------------------------------------------------


def _group_of(path: str) -> tuple[str, str]:
    """(class, UCF101 group) of a listed path."""
    match = re.search(UCF_PATTERN, path)
    assert match, path
    return path.split("/", 1)[0], match.group(1)


@pytest.mark.parametrize("seed", range(8))
def test_ucf101_groups_never_straddle_the_split(tmp_path: Path, seed: int) -> None:
    root = _tree(tmp_path / "UCF-101", UCF_CLIPS)
    summary = make_lists(root, root, 0.3, seed, UCF_PATTERN)  # the lists beside the videos

    read = _read(root)
    assert read.classes == ["Archery", "HandstandPushups"]
    assert sorted(r.path for r in read.train + read.test) == sorted(UCF_CLIPS)
    train_groups = {_group_of(r.path) for r in read.train}
    test_groups = {_group_of(r.path) for r in read.test}
    assert not train_groups & test_groups
    assert summary.groups == len(train_groups | test_groups) == 3 + 4
    for counts in summary.per_class:
        assert counts.train_groups >= 1 and counts.test_groups >= 1, counts
        size = counts.train + counts.test
        # Whole groups: the test share is near 0.3 n, within half of the largest group (7 clips).
        assert abs(counts.test - 0.3 * size) <= 3.5, counts
    assert "groups by '_g(\\d+)_', no group on both sides" in summary.summary_line()


def test_group_names_are_matched_below_the_class_folder(tmp_path: Path) -> None:
    # The pattern sees `v_HandStandPushups_g01_c01.avi`, not the class folder: a folder-only pattern
    # matches nothing.
    root = _tree(tmp_path / "v", UCF_CLIPS)
    _one_line_error(
        lambda: make_lists(root, tmp_path / "out", 0.3, 0, r"^Archery"),
        "'^Archery' does not match clip 'Archery/v_Archery_g01_c01.avi'",
        "19 of the 19 clips of class 'Archery' unmatched",
    )
    # Without a capture group the whole match names the group: one group per clip here.
    summary = make_lists(root, tmp_path / "out", 0.3, 0, r"g\d+_c\d+")
    assert summary.groups == len(UCF_CLIPS)


def test_a_class_of_one_group_stays_in_training(tmp_path: Path) -> None:
    root = _tree(tmp_path / "v", UCF_CLIPS[:7])  # Archery group 01 only
    summary = make_lists(root, tmp_path / "out", 0.3, 0, UCF_PATTERN)
    assert (summary.train_clips, summary.test_clips, summary.train_only) == (7, 0, ["Archery"])
    assert "class 'Archery' has a single group: train.txt only" in summary.summary_line()


# --- output folder --------------------------------------------------------------------------------------------------


def test_existing_lists_are_kept_unless_overwrite(tmp_path: Path) -> None:
    root = _tree(tmp_path / "v", _sized({"a": 4, "b": 4}))
    output = root / "lists"  # inside the root: not a class folder
    make_lists(root, output, 0.5, 0, None)
    before = {name: (output / name).read_bytes() for name in ("train.txt", "test.txt", "classes.txt")}
    _one_line_error(
        lambda: make_lists(root, output, 0.25, 1, None),
        str(output),
        "already holds train.txt, test.txt, classes.txt",
        "--overwrite",
    )
    assert {name: (output / name).read_bytes() for name in before} == before
    (output / "train.txt").unlink()
    (output / "test.txt").unlink()
    _one_line_error(lambda: make_lists(root, output, 0.25, 1, None), "already holds classes.txt")

    summary = make_lists(root, output, 0.25, 1, None, overwrite=True)
    assert summary.num_classes == 2 and summary.test_clips == 2
    assert _read(output).classes == ["a", "b"]


def test_videos_directly_in_root_are_left_out_and_said(tmp_path: Path) -> None:
    root = _tree(tmp_path / "v", [*_sized({"a": 3}), "stray.mp4", "readme.txt"])
    summary = make_lists(root, tmp_path / "out", 0.3, 0, None)
    assert summary.unsorted_videos == 1 and summary.train_clips + summary.test_clips == 3
    assert f"1 video directly in {root} left out (no class folder)" in summary.summary_line()


def test_a_link_loop_is_walked_once(tmp_path: Path) -> None:
    root = _tree(tmp_path / "v", _sized({"a": 3}))
    (root / "a" / "loop").symlink_to(root / "a", target_is_directory=True)
    summary = make_lists(root, tmp_path / "out", 0.3, 0, None)
    assert summary.train_clips + summary.test_clips == 3


# --- one-line errors ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("fraction", [0, 1, 1.5, -0.2, float("nan"), True])
def test_test_fraction_outside_zero_one(tmp_path: Path, fraction) -> None:
    root = _tree(tmp_path / "v", _sized({"a": 3}))
    _one_line_error(lambda: make_lists(root, tmp_path / "out", fraction, 0, None), "strictly between 0 and 1")
    assert not (tmp_path / "out").exists()


def test_root_errors(tmp_path: Path) -> None:
    out = tmp_path / "out"
    _one_line_error(lambda: make_lists(tmp_path / "nope", out, 0.3, 0, None), f"{tmp_path / 'nope'} does not exist")
    (tmp_path / "file").write_bytes(b"x")
    _one_line_error(lambda: make_lists(tmp_path / "file", out, 0.3, 0, None), "is not a folder")
    empty = _tree(tmp_path / "empty", ["loose.mp4"])
    _one_line_error(lambda: make_lists(empty, out, 0.3, 0, None), f"{empty} holds no class folder")
    no_video = _tree(tmp_path / "v", [*_sized({"a": 3}), "b/notes.txt", "b/frames/img_00001.jpg"])
    _one_line_error(
        lambda: make_lists(no_video, out, 0.3, 0, None), f"class folder {no_video / 'b'} holds no video file"
    )
    assert not out.exists()


def test_group_pattern_errors(tmp_path: Path) -> None:
    root = _tree(tmp_path / "v", [*UCF_CLIPS, "Archery/extra_clip.mp4"])
    out = tmp_path / "out"
    _one_line_error(lambda: make_lists(root, out, 0.3, 0, r"_g(\d+_"), r"'_g(\d+_' is not a valid regular expression")
    _one_line_error(
        lambda: make_lists(root, out, 0.3, 0, UCF_PATTERN),
        "does not match clip 'Archery/extra_clip.mp4'",
        "1 of the 20 clips of class 'Archery' unmatched",
    )
    # A first group that takes no part in the match names no group either.
    _one_line_error(
        lambda: make_lists(root, out, 0.3, 0, r"(_x)?_c\d+"),
        "does not match clip 'Archery/extra_clip.mp4' (20 of the 20 clips",
    )
    assert not out.exists()


@pytest.mark.parametrize(
    ("name", "fragment"),
    [
        ("new\nline/a.mp4", "class name of 'SLASH/new\\nline' holds a line break"),
        ("#tag/a.mp4", "starts with '#'"),
        (" padded/a.mp4", "starts or ends with a space"),
        ("ok/back\\slash.mp4", "holds a backslash"),
        ("ok/carriage\rreturn.mp4", "clip path of 'SLASH/ok/carriage\\rreturn.mp4' holds a line break"),
    ],
)
def test_names_the_lists_cannot_hold(tmp_path: Path, name: str, fragment: str) -> None:
    root = _tree(tmp_path / "v", [*_sized({"fine": 2}), name])
    message = _one_line_error(lambda: make_lists(root, tmp_path / "out", 0.3, 0, None), "rename it")
    assert fragment.replace("SLASH", str(root)) in message
    assert not (tmp_path / "out").exists()
