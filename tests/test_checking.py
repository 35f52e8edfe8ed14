"""Finding unusable videos: decoder errors, crashes and hangs (scan_videos), and dataset.exclude."""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import pytest

from rcca.config import DatasetConfig
from rcca.data.build import load_dataset, read_exclude_list, write_exclude_list
from rcca.data.checking import scan_videos
from rcca.data.decoding import DecodeError
from rcca.errors import UserError


def misbehaving_reader(path: Path, choose_indices, backend: str) -> None:
    """Stands in for read_frames in the scanning process: crashes, hangs or fails by file name."""
    if path.name == "crash.mp4":
        os.kill(os.getpid(), signal.SIGSEGV)
    if path.name == "hang.mp4":
        time.sleep(600)
    if path.name == "bad.mp4":
        raise DecodeError(f"{path}: no frames")
    assert choose_indices(10) == [0, 9]


def test_scan_survives_crashing_and_hanging_videos(tmp_path):
    paths = ["a.mp4", "crash.mp4", "b.mp4", "hang.mp4", "bad.mp4", "c.mp4"]
    started = time.perf_counter()
    failures = scan_videos(tmp_path, paths, "decord", timeout=3, reader=misbehaving_reader, progress=False)
    assert time.perf_counter() - started < 90
    assert failures == {
        "crash.mp4": f"decoder crashed (exit code {-signal.SIGSEGV})",
        "hang.mp4": "decoder hung for more than 3 s",
        "bad.mp4": f"{tmp_path / 'bad.mp4'}: no frames",
    }


def test_scan_blames_a_crash_on_the_last_video(tmp_path):
    failures = scan_videos(
        tmp_path, ["a.mp4", "crash.mp4"], "decord", timeout=3, reader=misbehaving_reader, progress=False
    )
    assert failures == {"crash.mp4": f"decoder crashed (exit code {-signal.SIGSEGV})"}


def test_scan_of_good_videos_reports_nothing(tmp_path):
    assert scan_videos(tmp_path, ["a.mp4", "b.mp4"], "decord", reader=misbehaving_reader, progress=False) == {}
    assert scan_videos(tmp_path, [], "decord", progress=False) == {}


def _video_list(tmp_path: Path, exclude: str | None) -> DatasetConfig:
    root = tmp_path / "videos"
    for name in ("a.mp4", "b.mp4", "c_#_2.mp4", "d.mp4"):
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_bytes(b"")
    (tmp_path / "train.txt").write_text("a.mp4 0\nb.mp4 1\nc_#_2.mp4 0\n")
    (tmp_path / "test.txt").write_text("d.mp4 1\nb.mp4 1\n")
    return DatasetConfig(
        name="video_list",
        root=str(root),
        train_list=str(tmp_path / "train.txt"),
        test_list=str(tmp_path / "test.txt"),
        num_classes=2,
        exclude=exclude,
    )


def test_exclude_list_leaves_videos_out_of_both_splits(tmp_path):
    exclude = tmp_path / "bad.txt"
    # The format inspect_dataset writes: path, tab, note. A '#' inside a path is part of it
    # (HMDB51 has such files); only a line that starts with '#' is a comment.
    write_exclude_list(exclude, {"b.mp4": "# decoder crashed (exit code -11)", "c_#_2.mp4": "", "not-listed.mp4": ""})
    exclude.write_text("# found by inspect_dataset\n\n" + exclude.read_text())
    assert read_exclude_list(exclude) == {
        "b.mp4": "# decoder crashed (exit code -11)",
        "c_#_2.mp4": "",
        "not-listed.mp4": "",
    }
    _, annotations = load_dataset(_video_list(tmp_path, str(exclude)), progress=False)
    assert [r.path for r in annotations.train] == ["a.mp4"]
    assert [r.path for r in annotations.test] == ["d.mp4"]
    assert annotations.excluded == ["b.mp4", "c_#_2.mp4"]
    _, everything = load_dataset(_video_list(tmp_path, None), progress=False)
    assert len(everything.train) == 3 and len(everything.test) == 2


def test_missing_exclude_file_names_the_key(tmp_path):
    with pytest.raises(UserError, match=r"dataset.exclude=.*nothing.txt: file not found"):
        load_dataset(_video_list(tmp_path, str(tmp_path / "nothing.txt")), progress=False)


def test_exclude_list_is_written_whole_or_not_at_all(tmp_path, monkeypatch):
    """write_exclude_list heads the file with a comment naming it an exclude list and replaces it atomically:
    a write that fails leaves the previous list, and no temporary file."""
    exclude = tmp_path / "bad.txt"
    write_exclude_list(exclude, {"a.mp4": "# decoder crashed (exit code -11)"})
    before = exclude.read_text()
    assert before.splitlines()[0].startswith("# ") and read_exclude_list(exclude) == {
        "a.mp4": "# decoder crashed (exit code -11)"
    }

    def interrupted(source, target):
        raise OSError("disk full")

    monkeypatch.setattr(os, "replace", interrupted)
    with pytest.raises(OSError, match="disk full"):
        write_exclude_list(exclude, {"b.mp4": ""})
    assert exclude.read_text() == before
    assert [p.name for p in tmp_path.iterdir()] == ["bad.txt"]
