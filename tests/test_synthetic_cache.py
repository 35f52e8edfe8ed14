"""The synthetic set's cache: one folder per spec, generated once, and never a user's folder touched.

Every test uses specs of a few 32x32 videos (32 is the smallest size a square pair fits in,
and a multiple of 16). Concurrency is tested with real processes: `python -c` subprocesses
that start together on a signal file, and one killed with SIGKILL in the middle of writing.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import signal
import subprocess
import sys
import time
from dataclasses import asdict
from pathlib import Path

import av
import pytest

from rcca.config import DatasetConfig, SyntheticConfig
from rcca.data import synthetic
from rcca.data.build import read_annotations
from rcca.data.synthetic import (
    MARKER,
    SyntheticSpec,
    ensure_synthetic_dataset,
    read_marker,
    set_folder_name,
)
from rcca.errors import UserError

SMALL = SyntheticSpec(num_train=8, num_test=8, frames=8, size=32)
OTHER = SyntheticSpec(num_train=8, num_test=8, frames=8, size=32, seed=1)


def without_dataset(spec: SyntheticSpec) -> dict:
    """A spec's fields less `dataset`: the keys of `dataset.synthetic` (the dataset is `dataset.name`)."""
    return {key: value for key, value in asdict(spec).items() if key != "dataset"}


def snapshot(folder: Path) -> dict[str, tuple[str, int, int]]:
    """Every file and folder under `folder` (hidden ones included): relative path ->
    (sha256 of the bytes or "dir", mtime in ns, inode)."""
    state = {}
    for path in sorted(folder.rglob("*")):
        stat = path.stat()
        digest = "dir" if path.is_dir() else hashlib.sha256(path.read_bytes()).hexdigest()
        state[path.relative_to(folder).as_posix()] = (digest, stat.st_mtime_ns, stat.st_ino)
    return state


def assert_complete(folder: Path, spec: SyntheticSpec) -> None:
    """`folder` holds the whole set of `spec`: marker, lists and decodable videos."""
    marker = read_marker(folder)
    assert marker is not None and marker["state"] == "complete" and marker["spec"] == asdict(spec)
    assert sorted(marker["files"]) == sorted(
        p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file() and p.name != MARKER
    )
    train = (folder / "train.txt").read_text().split("\n")[:-1]
    test = (folder / "test.txt").read_text().split("\n")[:-1]
    assert (len(train), len(test)) == (spec.num_train, spec.num_test)
    with av.open(str(folder / train[-1].split()[0])) as container:
        assert sum(1 for _ in container.decode(video=0)) == spec.frames


def python_child(code: str) -> subprocess.Popen:
    """A `python -c code` subprocess importing rcca from this checkout, logging INFO to stderr."""
    prelude = "import logging; from pathlib import Path; logging.basicConfig(level=logging.INFO); "
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.Popen(
        [sys.executable, "-c", prelude + code], env=env, text=True, stdout=subprocess.PIPE, stderr=subprocess.PIPE
    )


def ensure_code(root: Path, spec: SyntheticSpec) -> str:
    return (
        "from rcca.data.synthetic import SyntheticSpec, ensure_synthetic_dataset; "
        f"print(ensure_synthetic_dataset(Path({str(root)!r}), SyntheticSpec(**{asdict(spec)!r}), progress=False))"
    )


# --------------------------------------------------------------------------- folders that are not ours


@pytest.mark.parametrize(
    "files",
    [
        {"spec.json": json.dumps(asdict(OTHER)), "Basketball/v_1.avi": "precious"},  # FORMAT 1 replaced these
        {"spec.json": json.dumps(asdict(SMALL)), "train.txt": "mine.mp4 0\n"},  # and returned these as the cache
        {MARKER: "", "spec.json": "{}", "videos/a.mp4": "an older rcca's cache"},
        {MARKER: '{"generator": "someone else"}', "notes.txt": "mine"},
    ],
    ids=["spec-json", "spec-json-same-spec", "format-1-cache", "foreign-marker"],
)
def test_a_folder_that_is_not_ours_is_refused_and_left_untouched(tmp_path, files):
    folder = tmp_path / "my_videos"
    for name, text in files.items():
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        (folder / name).write_text(text)
    before = snapshot(folder)
    with pytest.raises(UserError, match="did you forget dataset=") as error:
        ensure_synthetic_dataset(folder, SMALL, progress=False)
    message = str(error.value)
    assert "\n" not in message and f"dataset.root={folder} " in message and "another dataset.root" in message
    assert snapshot(folder) == before  # nothing deleted, changed or added (not even a lock file)


def test_a_set_folder_without_our_marker_is_refused_and_left_untouched(tmp_path):
    root = tmp_path / "cache"
    ensure_synthetic_dataset(root, SMALL, progress=False)
    for marker in (
        None,
        "not json",
        json.dumps(
            {
                "generator": "rcca.data.synthetic",
                "format": 2,
                "role": "set",
                "state": "in progress",
                "spec": asdict(OTHER),
                "files": [],
            }
        ),
    ):
        squatter = root / set_folder_name(OTHER)
        squatter.mkdir()
        (squatter / "train.txt").write_text("mine.mp4 0\n")
        if marker is not None:
            (squatter / MARKER).write_text(marker)
        before = snapshot(root)
        with pytest.raises(UserError, match="is not a complete synthetic set") as error:
            ensure_synthetic_dataset(root, OTHER, progress=False)
        assert "\n" not in str(error.value) and str(squatter) in str(error.value)
        assert snapshot(root) == before
        for path in sorted(squatter.rglob("*"), reverse=True):  # the test's own files
            path.unlink()
        squatter.rmdir()


# --------------------------------------------------------------------------- several specs, several processes


def test_two_specs_get_two_folders_and_the_first_is_never_touched(tmp_path):
    root = tmp_path / "cache"
    first = ensure_synthetic_dataset(root, SMALL, progress=False)
    before = snapshot(first)
    second = ensure_synthetic_dataset(root, OTHER, progress=False)
    assert first.parent == second.parent == root and first != second
    assert snapshot(first) == before
    assert_complete(first, SMALL)
    assert_complete(second, OTHER)
    assert ensure_synthetic_dataset(root, SMALL, progress=False) == first and snapshot(first) == before
    # The training pipeline reads the folder it gets back.
    config = DatasetConfig(root=str(root), num_classes=8, synthetic=SyntheticConfig(**without_dataset(OTHER)))
    found, annotations = read_annotations(config, progress=False)
    assert found == second and len(annotations.train) == 8 and (found / annotations.test[0].path).is_file()


def test_concurrent_processes_generate_a_spec_once_and_share_it(tmp_path):
    root, go = tmp_path / "cache", tmp_path / "go"
    spec = SyntheticSpec(num_train=48, num_test=16, frames=8, size=32)  # about half a second to write
    children = []
    for n in range(2):  # each imports rcca, says it is ready, then waits for the signal
        ready = tmp_path / f"ready{n}"
        wait = f"import time\nPath({str(ready)!r}).touch()\nwhile not Path({str(go)!r}).exists(): time.sleep(0.002)\n"
        children.append(python_child("import rcca.data.synthetic\n" + wait + ensure_code(root, spec)))
    while not all((tmp_path / f"ready{n}").exists() for n in range(2)):
        assert all(child.poll() is None for child in children), [child.communicate() for child in children]
        time.sleep(0.01)
    go.touch()
    outputs = [child.communicate(timeout=120) for child in children]
    assert [child.returncode for child in children] == [0, 0], outputs
    logs = "".join(stderr for _, stderr in outputs)
    assert logs.count("generating the synthetic set") == 1, logs
    assert outputs[0][0] == outputs[1][0] == f"{root / set_folder_name(spec)}\n"
    assert_complete(root / set_folder_name(spec), spec)
    assert sorted(p.name for p in root.iterdir()) == sorted([MARKER, set_folder_name(spec)])  # no leftovers


def test_a_root_claimed_by_another_process_while_we_look_is_not_taken_for_a_foreign_folder(tmp_path, monkeypatch):
    # The other process creates the root, its marker and then its temporary set folder while
    # this one looks at the (then empty) root: the window in which CI saw a sweep job refused.
    root = tmp_path / "cache"
    root.mkdir()
    listing = Path.iterdir

    def listing_after_the_other_process_claimed(folder: Path):
        if folder == root and not (root / MARKER).exists():
            (root / MARKER).write_text(
                json.dumps({"generator": synthetic.GENERATOR, "format": synthetic.FORMAT, "role": "cache"}) + "\n"
            )
            (root / f".{set_folder_name(OTHER)}.tmp-1-00000000").mkdir()
        return listing(folder)

    monkeypatch.setattr(Path, "iterdir", listing_after_the_other_process_claimed)
    folder = ensure_synthetic_dataset(root, SMALL, progress=False)
    assert_complete(folder, SMALL)


def test_a_killed_generation_leaves_no_set_and_only_its_own_leftovers_are_removed(tmp_path):
    root = tmp_path / "cache"
    spec = SyntheticSpec(num_train=400, num_test=0, frames=4, size=32)  # a few seconds to write
    child = python_child(ensure_code(root, spec))
    started = None
    while child.poll() is None and started is None:  # kill it once its first video is on disk
        started = next((d for d in root.glob(".*.tmp-*") if any(d.rglob("*.mp4"))), None) if root.is_dir() else None
        time.sleep(0.01)
    child.send_signal(signal.SIGKILL)  # nothing if it already ended
    child.communicate()
    assert started is not None, "no temporary folder was ever seen"
    assert not (root / set_folder_name(spec)).exists()
    assert read_marker(started)["state"] == "in progress"
    # Folders resembling leftovers, that this generator did not leave: one named like a temporary
    # folder without our marker, one with our "in progress" marker but not a temporary name.
    lookalike = root / f".{set_folder_name(spec)}.tmp-999-deadbeef"
    lookalike.mkdir()
    (lookalike / "keep.txt").write_text("mine")
    misnamed = root / "backup"
    misnamed.mkdir()
    (misnamed / MARKER).write_bytes((started / MARKER).read_bytes())
    kept = {folder: snapshot(folder) for folder in (lookalike, misnamed)}

    folder = ensure_synthetic_dataset(root, spec, progress=False)
    assert folder == root / set_folder_name(spec)
    assert_complete(folder, spec)
    assert not started.exists()
    assert {folder: snapshot(folder) for folder in (lookalike, misnamed)} == kept
    assert sorted(p.name for p in root.iterdir()) == sorted([MARKER, folder.name, lookalike.name, misnamed.name])


# --------------------------------------------------------------------------- progress without a terminal


def test_without_a_bar_generation_logs_plain_progress_lines(tmp_path, monkeypatch, caplog):
    monkeypatch.setattr(synthetic, "PROGRESS_EVERY_S", 0.0)  # a line after every video
    caplog.set_level(logging.INFO)
    ensure_synthetic_dataset(tmp_path / "cache", SMALL, progress=False)
    prefix = "generating synthetic videos: "
    lines = [record.getMessage() for record in caplog.records if record.getMessage().startswith(prefix)]
    total = SMALL.num_train + SMALL.num_test
    counts = [line.removeprefix(prefix).split("/")[0] for line in lines]
    assert counts == [str(done) for done in range(1, total + 1)] + [str(total)], lines  # one per video, then the end
    assert all(f"/{total} videos (" in line for line in lines)
    assert all(", ETA " in line for line in lines[:-1]) and ", in " in lines[-1], lines
