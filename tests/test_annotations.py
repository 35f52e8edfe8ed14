"""Tests of rcca.data.annotations against copies of the real split files (tests/fixtures)."""

from __future__ import annotations

import csv
import re
import shutil
from collections import Counter
from pathlib import Path

import pytest

from rcca.data.annotations import (
    AnnotationError,
    Annotations,
    VideoRecord,
    load_annotations,
    load_hmdb51,
    load_kinetics,
    load_mini_kinetics200,
    load_ucf101,
    load_video_list,
    read_class_names,
)

FIXTURES = Path(__file__).parent / "fixtures"
UCF = FIXTURES / "ucf101"
HMDB = FIXTURES / "hmdb51" / "testTrainMulti_7030_splits"
K400 = FIXTURES / "kinetics400"
K400_VAL = K400 / "kinetics-400_val.csv"
MINI = FIXTURES / "mini_kinetics200"


def _group(path: str) -> int:
    """Group number of a UCF101 video path (``..._g08_c01.avi`` -> 8)."""
    match = re.search(r"_g(\d\d)_c\d\d\.avi$", path)
    assert match, path
    return int(match.group(1))


def _val_rows() -> list[dict[str, str]]:
    """Rows of the real Kinetics-400 val CSV, read independently of the code under test."""
    with K400_VAL.open(newline="") as f:
        return list(csv.DictReader(f))


def _write_csv(path: Path, rows: list[dict[str, str]], columns: list[str]) -> None:
    """Write ``rows`` (only ``columns``, in that order) as a CSV with quoted labels."""
    with path.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=columns, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)


# --------------------------------------------------------------------------- UCF101


def test_ucf101_split1_counts_and_groups() -> None:
    ann = load_ucf101(UCF, 1)
    assert len(ann.classes) == 101
    assert ann.classes[0] == "ApplyEyeMakeup" and ann.classes[100] == "YoYo"
    assert (len(ann.train), len(ann.test)) == (9537, 3783)
    assert {_group(r.path) for r in ann.test} == set(range(1, 8))
    assert {_group(r.path) for r in ann.train} == set(range(8, 26))
    assert len(set(ann.classes[r.label] for r in ann.test)) == 101


def test_ucf101_labels_match_trainlist_and_folders() -> None:
    ann = load_ucf101(UCF, 1)
    listed = [line.split() for line in (UCF / "trainlist01.txt").read_text().splitlines() if line]
    assert [(r.path, r.label + 1) for r in ann.train] == [(p, int(lab)) for p, lab in listed]
    for record in ann.train + ann.test:
        assert ann.classes[record.label] == record.path.split("/")[0]


def test_ucf101_handstand_quirk() -> None:
    ann = load_ucf101(UCF, 1)
    quirky = [r for r in ann.train + ann.test if "/v_HandStandPushups_" in r.path]
    assert quirky and all(r.path.startswith("HandstandPushups/") for r in quirky)
    # classInd.txt line "37 HandstandPushups" -> 0-based label 36.
    assert {r.label for r in quirky} == {36}
    assert ann.classes[36] == "HandstandPushups"


def test_ucf101_crlf_parses_like_lf(tmp_path: Path) -> None:
    for name in ("classInd.txt", "trainlist01.txt", "testlist01.txt"):
        text = (UCF / name).read_text()
        assert "\r" not in text
        (tmp_path / name).write_bytes(text.replace("\n", "\r\n").encode())
    assert load_ucf101(tmp_path, 1) == load_ucf101(UCF, 1)


@pytest.mark.parametrize(
    ("split", "train_count", "test_count", "groups"),
    [(2, 9586, 3734, range(8, 15)), (3, 9624, 3696, range(15, 22))],
)
def test_ucf101_splits_2_and_3(split: int, train_count: int, test_count: int, groups: range) -> None:
    ann = load_ucf101(UCF, split)
    assert (len(ann.train), len(ann.test)) == (train_count, test_count)
    assert {_group(r.path) for r in ann.test} == set(groups)
    assert {_group(r.path) for r in ann.train} == set(range(1, 26)) - set(groups)
    assert len(ann.classes) == 101


def test_ucf101_bad_split_names_valid_values() -> None:
    for split in (0, 4):
        with pytest.raises(AnnotationError, match="1, 2, 3"):
            load_ucf101(UCF, split)


def test_ucf101_missing_folder_and_file(tmp_path: Path) -> None:
    missing = tmp_path / "nowhere"
    with pytest.raises(AnnotationError) as info:
        load_ucf101(missing, 1)
    assert str(missing) in str(info.value) and "dataset.annotations" in str(info.value)
    shutil.copy(UCF / "classInd.txt", tmp_path)
    with pytest.raises(AnnotationError) as info:
        load_ucf101(tmp_path, 1)
    assert str(tmp_path / "trainlist01.txt") in str(info.value)
    assert "dataset.annotations" in str(info.value)
    assert "\n" not in str(info.value)


def test_ucf101_label_disagreeing_with_folder(tmp_path: Path) -> None:
    shutil.copy(UCF / "classInd.txt", tmp_path)
    shutil.copy(UCF / "testlist01.txt", tmp_path)
    (tmp_path / "trainlist01.txt").write_text("YoYo/v_YoYo_g08_c01.avi 101\nYoYo/v_YoYo_g08_c02.avi 5\n")
    with pytest.raises(AnnotationError, match=r"trainlist01\.txt:2: label 5"):
        load_ucf101(tmp_path, 1)


# --------------------------------------------------------------------------- HMDB51


@pytest.mark.parametrize("split", [1, 2, 3])
def test_hmdb51_70_30_per_class(split: int) -> None:
    ann = load_hmdb51(HMDB, split)
    assert len(ann.classes) == 51
    assert ann.classes == sorted(ann.classes)
    assert ann.classes[0] == "brush_hair" and ann.classes[-1] == "wave"
    assert (len(ann.train), len(ann.test)) == (3570, 1530)
    assert Counter(r.label for r in ann.train) == {i: 70 for i in range(51)}
    assert Counter(r.label for r in ann.test) == {i: 30 for i in range(51)}
    assert not {r.path for r in ann.train} & {r.path for r in ann.test}
    for record in ann.train + ann.test:
        folder, video = record.path.split("/")
        assert folder == ann.classes[record.label] and video.endswith(".avi")


def test_hmdb51_record_paths() -> None:
    ann = load_hmdb51(HMDB, 1)
    first = (HMDB / "brush_hair_test_split1.txt").read_text().split()
    expected = VideoRecord(f"brush_hair/{first[0]}", 0)
    assert expected in (ann.train if first[1] == "1" else ann.test)


def test_hmdb51_errors(tmp_path: Path) -> None:
    with pytest.raises(AnnotationError, match="1, 2, 3"):
        load_hmdb51(HMDB, 4)
    with pytest.raises(AnnotationError, match="dataset.annotations") as info:
        load_hmdb51(tmp_path / "missing", 1)
    assert str(tmp_path / "missing") in str(info.value)
    with pytest.raises(AnnotationError, match="_test_split1.txt"):
        load_hmdb51(tmp_path, 1)
    (tmp_path / "wave_test_split1.txt").write_text("a.avi 1 \nb.avi 3 \n")
    with pytest.raises(AnnotationError, match=r"wave_test_split1\.txt:2: split code 3"):
        load_hmdb51(tmp_path, 1)


# --------------------------------------------------------------------------- Kinetics


@pytest.fixture
def kinetics_dir(tmp_path: Path) -> Path:
    """Annotations folder: real val CSV and label map, plus a small train CSV of val rows."""
    shutil.copy(K400_VAL, tmp_path)
    shutil.copy(K400 / "label_map_k400.txt", tmp_path)
    rows = _val_rows()
    _write_csv(tmp_path / "kinetics-400_train.csv", rows[::40], list(rows[0]))
    return tmp_path


def test_kinetics_val_counts_and_classes(kinetics_dir: Path) -> None:
    ann = load_kinetics(kinetics_dir)
    label_map = (K400 / "label_map_k400.txt").read_text().splitlines()
    assert len(ann.test) == 19906
    assert len(ann.classes) == 400 and ann.classes == label_map
    assert len({r.label for r in ann.test}) == 400
    assert ann.test[0] == VideoRecord("0wR5jVB-WPk_000417_000427.mp4", 0)
    assert len(ann.train) == len(range(0, 19906, 40))


def test_kinetics_quoted_labels(kinetics_dir: Path) -> None:
    assert '"air drumming",--nQbRBEz2s,104,114,val,0' in K400_VAL.read_text()
    ann = load_kinetics(kinetics_dir)
    record = next(r for r in ann.test if r.path.startswith("--nQbRBEz2s_"))
    assert record.path == "--nQbRBEz2s_000104_000114.mp4"
    assert ann.classes[record.label] == "air drumming"
    expected = [(row["label"], row["youtube_id"]) for row in _val_rows()]
    assert [(ann.classes[r.label], r.path[:11]) for r in ann.test] == expected


def test_kinetics_column_order_does_not_matter(kinetics_dir: Path) -> None:
    rows = _val_rows()
    _write_csv(kinetics_dir / "reordered.csv", rows, list(reversed(rows[0])))
    assert (kinetics_dir / "reordered.csv").read_text().startswith("is_cc,split,time_end,")
    assert load_kinetics(kinetics_dir, test_csv="reordered.csv") == load_kinetics(kinetics_dir)


def test_kinetics_unlabelled_test_csv(kinetics_dir: Path) -> None:
    rows = _val_rows()[:100]
    _write_csv(kinetics_dir / "test.csv", rows, ["youtube_id", "time_start", "time_end", "split"])
    for layout in ("flat", "per_label"):
        ann = load_kinetics(kinetics_dir, layout=layout, test_csv="test.csv")
        assert {r.label for r in ann.test} == {-1}
        assert ann.test[0] == VideoRecord("0wR5jVB-WPk_000417_000427.mp4", -1)


def test_kinetics_per_label_layout(kinetics_dir: Path) -> None:
    ann = load_kinetics(kinetics_dir, layout="per_label")
    assert VideoRecord("air drumming/--nQbRBEz2s_000104_000114.mp4", 1) in ann.test
    for record in ann.train + ann.test:
        assert record.path.split("/")[0] == ann.classes[record.label]


def test_kinetics_classes_without_label_map(kinetics_dir: Path) -> None:
    train_labels = sorted({row["label"] for row in _val_rows()[::40]})
    for label_map in (None, "absent.txt"):
        ann = load_kinetics(kinetics_dir, label_map=label_map, test_csv="kinetics-400_train.csv")
        assert ann.classes == train_labels


def test_kinetics_keep_ids(kinetics_dir: Path) -> None:
    keep = {"0wR5jVB-WPk", "--nQbRBEz2s"}
    ann = load_kinetics(kinetics_dir, keep_ids=(None, keep))
    assert [r.path[:11] for r in ann.test] == ["0wR5jVB-WPk", "--nQbRBEz2s"]


def test_kinetics_errors(kinetics_dir: Path) -> None:
    with pytest.raises(AnnotationError, match="dataset.annotations") as info:
        load_kinetics(kinetics_dir, train_csv="missing.csv")
    assert str(kinetics_dir / "missing.csv") in str(info.value)
    with pytest.raises(AnnotationError, match="flat, per_label"):
        load_kinetics(kinetics_dir, layout="nested")
    (kinetics_dir / "no_id.csv").write_text("label,time_start,time_end\nabseiling,1,11\n")
    with pytest.raises(AnnotationError, match=r"no_id\.csv: CSV header lacks column\(s\) youtube"):
        load_kinetics(kinetics_dir, test_csv="no_id.csv")
    (kinetics_dir / "bad.csv").write_text(
        "label,youtube_id,time_start,time_end\nabseiling,aaaaaaaaaaa,1,11\nflying,bbbbbbbbbbb,1,11\n"
    )
    with pytest.raises(AnnotationError, match=r"bad\.csv:3: label 'flying' is not one of the 400"):
        load_kinetics(kinetics_dir, test_csv="bad.csv")


# --------------------------------------------------------------------------- Mini-Kinetics-200


@pytest.fixture
def mini_dir(tmp_path: Path) -> Path:
    """Annotations folder: real val CSV (as train and val CSV), real val id list, 10 train ids."""
    shutil.copy(K400_VAL, tmp_path / "kinetics-400_val.csv")
    shutil.copy(K400_VAL, tmp_path / "kinetics-400_train.csv")
    shutil.copy(MINI / "val_ytid_list.txt", tmp_path)
    val_ids = (MINI / "val_ytid_list.txt").read_text().split()
    (tmp_path / "train_ytid_list.txt").write_text("\n".join(val_ids[:10]) + "\n")
    return tmp_path


def test_mini_kinetics200_val(mini_dir: Path) -> None:
    ann = load_mini_kinetics200(mini_dir)
    derived = (MINI / "mini_kinetics200_classes_derived.txt").read_text().splitlines()
    assert ann.classes == derived
    assert len(ann.classes) == 200
    assert len(ann.test) == 5000
    assert Counter(r.label for r in ann.test) == {i: 25 for i in range(200)}
    val_ids = set((MINI / "val_ytid_list.txt").read_text().split())
    assert {r.path[:11] for r in ann.test} == val_ids
    assert len(ann.train) == 10
    labels = {row["youtube_id"]: row["label"] for row in _val_rows()}
    for record in ann.train + ann.test:
        assert ann.classes[record.label] == labels[record.path[:11]]


def test_mini_kinetics200_per_label(mini_dir: Path) -> None:
    ann = load_mini_kinetics200(mini_dir, layout="per_label")
    assert all(r.path.split("/")[0] == ann.classes[r.label] for r in ann.test)


def test_mini_kinetics200_train_label_outside_classes(mini_dir: Path) -> None:
    derived = set((MINI / "mini_kinetics200_classes_derived.txt").read_text().splitlines())
    outside = next(row for row in _val_rows() if row["label"] not in derived)
    (mini_dir / "train_ytid_list.txt").write_text(outside["youtube_id"] + "\n")
    pattern = r"kinetics-400_train\.csv:\d+: label .* not one of the 200"
    with pytest.raises(AnnotationError, match=pattern):
        load_mini_kinetics200(mini_dir)


def test_mini_kinetics200_missing_id_list(mini_dir: Path) -> None:
    (mini_dir / "train_ytid_list.txt").unlink()
    with pytest.raises(AnnotationError, match="dataset.annotations") as info:
        load_mini_kinetics200(mini_dir)
    assert str(mini_dir / "train_ytid_list.txt") in str(info.value)


# --------------------------------------------------------------------------- video lists


def test_video_list(tmp_path: Path) -> None:
    (tmp_path / "train.txt").write_text("a/x 1.mp4 0\r\n\r\nb/y.mp4 2\r\n")
    (tmp_path / "test.txt").write_text("\nc/z.mp4   1\n")
    ann = load_video_list(tmp_path / "train.txt", tmp_path / "test.txt")
    assert ann == Annotations(
        classes=["0", "1", "2"],
        train=[VideoRecord("a/x 1.mp4", 0), VideoRecord("b/y.mp4", 2)],
        test=[VideoRecord("c/z.mp4", 1)],
    )
    lists = (tmp_path / "train.txt", tmp_path / "test.txt")
    assert load_video_list(*lists, num_classes=5).classes == ["0", "1", "2", "3", "4"]
    names = ["run", "jump", "swim"]
    assert load_video_list(*lists, class_names=names).classes == names


def test_video_list_errors(tmp_path: Path) -> None:
    (tmp_path / "train.txt").write_text("a.mp4 0\nb.mp4 1\nc.mp4 7\n")
    (tmp_path / "test.txt").write_text("d.mp4 x\n")
    (tmp_path / "ok.txt").write_text("d.mp4 0\n")
    with pytest.raises(AnnotationError, match=r"train\.txt:3: label 7 is out of range.*below 3"):
        load_video_list(tmp_path / "train.txt", tmp_path / "ok.txt", num_classes=3)
    with pytest.raises(AnnotationError, match=r"test\.txt:1: label 'x' is not an integer"):
        load_video_list(tmp_path / "ok.txt", tmp_path / "test.txt")
    (tmp_path / "neg.txt").write_text("a.mp4 -1\n")
    with pytest.raises(AnnotationError, match=r"neg\.txt:1: label -1 is out of range"):
        load_video_list(tmp_path / "neg.txt", tmp_path / "ok.txt")
    (tmp_path / "nolabel.txt").write_text("a.mp4\n")
    with pytest.raises(AnnotationError, match=r"nolabel\.txt:1: expected"):
        load_video_list(tmp_path / "nolabel.txt", tmp_path / "ok.txt")
    with pytest.raises(AnnotationError, match="num_classes=2 but 3 class_names"):
        load_video_list(tmp_path / "ok.txt", tmp_path / "ok.txt", num_classes=2, class_names=["a", "b", "c"])
    with pytest.raises(AnnotationError, match="dataset.annotations") as info:
        load_video_list(tmp_path / "gone.txt", tmp_path / "ok.txt")
    assert str(tmp_path / "gone.txt") in str(info.value)


# --------------------------------------------------------------------------- class names


@pytest.fixture
def named_lists(tmp_path: Path) -> tuple[Path, Path]:
    """A train and a test list using labels 0-2."""
    (tmp_path / "train.txt").write_text("a.mp4 0\nb.mp4 2\n")
    (tmp_path / "test.txt").write_text("c.mp4 1\n")
    return tmp_path / "train.txt", tmp_path / "test.txt"


def test_class_names_file(tmp_path: Path, named_lists: tuple[Path, Path]) -> None:
    names = tmp_path / "classes.txt"
    # BOM, CRLF, comments and blank lines anywhere (they take no label), inner spaces and '#' kept.
    lines = ["\ufeff# label map of my dataset", "playing guitar", "", "  # group 2", "  C# practice ", "j\u00fcmp", ""]
    names.write_bytes("\r\n".join(lines).encode())
    assert read_class_names(names) == ["playing guitar", "C# practice", "j\u00fcmp"]
    assert read_class_names(str(names), num_classes=3) == ["playing guitar", "C# practice", "j\u00fcmp"]
    (tmp_path / "plain.txt").write_text("run\njump\nswim")  # no final newline
    assert read_class_names(tmp_path / "plain.txt") == ["run", "jump", "swim"]


def test_video_list_classes_are_the_file_names(tmp_path: Path, named_lists: tuple[Path, Path]) -> None:
    (tmp_path / "classes.txt").write_text("run\njump\nswim\n")
    ann = load_video_list(*named_lists, num_classes=3, class_names_file=tmp_path / "classes.txt")
    assert ann.classes == ["run", "jump", "swim"]
    assert [ann.classes[r.label] for r in ann.train + ann.test] == ["run", "swim", "jump"]
    # Without num_classes the file gives the count; through the dispatcher, with a str path.
    kwargs = dict(train_list=named_lists[0], test_list=named_lists[1], class_names_file=str(tmp_path / "classes.txt"))
    assert load_annotations("video_list", **kwargs) == ann
    # Names for classes no video uses are fine: they are classes of the model all the same.
    (tmp_path / "five.txt").write_text("run\njump\nswim\nclimb\nfall\n")
    assert load_video_list(*named_lists, class_names_file=tmp_path / "five.txt").classes[3:] == ["climb", "fall"]


@pytest.mark.parametrize(
    ("content", "num_classes", "pattern"),
    [
        # A duplicate names both lines (and the label taken first); comments and blanks count as lines.
        ("run\n# c\njump\n\nrun\n", None, r"classes\.txt:5: class name 'run' repeats line 1 \(label 0\)"),
        ("", None, r"classes\.txt:1: no class names in this file"),
        ("# only a comment\n\n   \n", None, r"classes\.txt:1: no class names in this file"),
        # More names than num_classes: the first extra name's line; fewer: the last name's line.
        ("run\njump\n\nswim\nclimb\n", 3, r"classes\.txt:5: 4 class names but num_classes=3; .*'climb' = label 3"),
        ("run\n\njump\n# end\n", 3, r"classes\.txt:3: 2 class names but num_classes=3; .*\), label 2 has no name"),
        ("run\n", 4, r"classes\.txt:1: 1 class names but num_classes=4; .*'run'\), labels 1-3 have no name"),
        (b"run\nsk\xe9\n", None, r"classes\.txt:2: not UTF-8 text"),
    ],
    ids=["duplicate", "empty", "comments-only", "too-many", "one-too-few", "too-few", "not-utf8"],
)
def test_class_names_errors(tmp_path: Path, content: str | bytes, num_classes: int | None, pattern: str) -> None:
    path = tmp_path / "classes.txt"
    path.write_bytes(content if isinstance(content, bytes) else content.encode())
    with pytest.raises(AnnotationError, match=pattern) as info:
        read_class_names(path, num_classes)
    assert str(info.value).startswith(f"{path}:")  # the full path, then the line
    assert "\n" not in str(info.value)


def test_video_list_class_names_errors(tmp_path: Path, named_lists: tuple[Path, Path]) -> None:
    names = tmp_path / "classes.txt"
    names.write_text("# two names\nrun\njump\n\n")
    # A label beyond the names: the list's file and line, and where the names end.
    pattern = r"train\.txt:2: label 2 has no class name: .*classes\.txt names labels 0-1 only"
    pattern += r" \(2 names, the last on line 3\)"
    with pytest.raises(AnnotationError, match=pattern):
        load_video_list(*named_lists, class_names_file=names)
    # num_classes disagreeing with the file is reported by the names file.
    with pytest.raises(AnnotationError, match=r"classes\.txt:3: 2 class names but num_classes=3"):
        load_video_list(*named_lists, num_classes=3, class_names_file=names)
    (tmp_path / "empty.txt").write_text("")
    with pytest.raises(AnnotationError, match=r"empty\.txt:1: no class names"):
        load_video_list(*named_lists, class_names_file=tmp_path / "empty.txt")
    with pytest.raises(AnnotationError, match="not both"):
        load_video_list(*named_lists, class_names=["a", "b", "c"], class_names_file=names)
    with pytest.raises(AnnotationError, match=r"gone\.txt: class-names file not found; set `dataset.class_names`"):
        load_video_list(*named_lists, class_names_file=tmp_path / "gone.txt")


# --------------------------------------------------------------------------- dispatch


def test_load_annotations_dispatch() -> None:
    assert load_annotations("ucf101", annotations_dir=str(UCF), split=1) == load_ucf101(UCF, 1)
    assert load_annotations("hmdb51", annotations_dir=HMDB, split=2) == load_hmdb51(HMDB, 2)


def test_load_annotations_errors() -> None:
    message = "hmdb51, kinetics400, mini_kinetics200, ucf101, video_list"
    with pytest.raises(AnnotationError, match=message):
        load_annotations("ucf-101")
    pattern = "ucf101: .*unexpected keyword.*annotations_dir, split"
    with pytest.raises(AnnotationError, match=pattern):
        load_annotations("ucf101", annotations_dir=UCF, split=1, fold=2)
