"""scripts/inspect_dataset.py on a tiny video_list dataset with a missing and a corrupt video."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path
from types import ModuleType

import numpy as np
import pytest

from conftest import REPO, run_entry
from rcca.data.synthetic import SyntheticSpec, render_video, write_video

SCRIPT = "scripts/inspect_dataset.py"
TRAIN = {"good_0.mp4": 0, "good_1.mp4": 1, "corrupt.mp4": 0, "absent.mp4": 1}
TEST = {"good_2.mp4": 0, "good_3.mp4": 1}


@pytest.fixture(scope="module")
def overrides(tmp_path_factory: pytest.TempPathFactory) -> list[str]:
    """Overrides selecting a video_list dataset: 4 good videos, a corrupt one and a listed but absent one."""
    folder = tmp_path_factory.mktemp("inspect")
    root = folder / "videos"
    spec = SyntheticSpec(frames=8, size=64)
    rng = np.random.default_rng(0)
    for name, label in {**TRAIN, **TEST}.items():
        if name.startswith("good"):
            write_video(root / name, render_video(label, spec, rng))
    (root / "corrupt.mp4").write_bytes(b"\x00\x00\x00\x18ftypmp42" + bytes(range(256)) * 8)
    for split, videos in (("train", TRAIN), ("test", TEST)):
        (folder / f"{split}.txt").write_text("".join(f"{name} {label}\n" for name, label in videos.items()))
    return [
        "experiment=none",
        "dataset=video_list",
        f"dataset.root={root}",
        f"dataset.train_list={folder / 'train.txt'}",
        f"dataset.test_list={folder / 'test.txt'}",
        "dataset.num_classes=2",
    ]


def summary(stdout: str) -> dict:
    """The JSON object on the script's last output line."""
    return json.loads(stdout.strip().splitlines()[-1])


def test_reports_counts_and_missing_videos(overrides: list[str]) -> None:
    result = run_entry(SCRIPT, *overrides, timeout=120)
    report = summary(result.stdout)
    assert report["dataset"] == "video_list"
    assert (report["num_classes"], report["train"], report["test"], report["missing"]) == (2, 4, 2, 1)
    assert "undecodable" not in report
    assert "absent.mp4" in result.stdout


def test_decode_reports_undecodable_videos_and_writes_exclude_list(overrides: list[str], tmp_path: Path) -> None:
    exclude = tmp_path / "exclude.txt"
    result = run_entry(SCRIPT, "--decode", "--write-exclude", str(exclude), *overrides, timeout=120)
    report = summary(result.stdout)
    assert (report["num_classes"], report["train"], report["test"], report["missing"]) == (2, 4, 2, 1)
    assert report["undecodable"] == 1
    assert "corrupt.mp4" in result.stdout
    assert exclude.read_text().startswith("corrupt.mp4\t# ")
    # The written list is a valid dataset.exclude: the corrupt video is left out, nothing fails;
    # writing the list again from that run keeps the video it no longer reads.
    result = run_entry(SCRIPT, "--decode", "--write-exclude", str(exclude), *overrides, f"dataset.exclude={exclude}", timeout=120)
    report = summary(result.stdout)
    assert (report["train"], report["undecodable"]) == (3, 0)
    assert exclude.read_text().startswith("corrupt.mp4\t# ")


@pytest.fixture(scope="module")
def script() -> ModuleType:
    """The script imported as a module, to call its functions in this process."""
    spec = importlib.util.spec_from_file_location("inspect_dataset", REPO / SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_missing_root_is_a_one_line_user_error(
    script: ModuleType, overrides: list[str], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Run in this process (the subprocess runs above cover the command line): exit 2, one line."""
    absent = [f"dataset.root={tmp_path / 'nowhere'}" if o.startswith("dataset.root=") else o for o in overrides]
    with pytest.raises(SystemExit) as exited, script.user_errors():
        script.report(absent, decode=False)
    assert exited.value.code == 2
    out, err = capsys.readouterr()
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and "dataset.root" in lines[0]
    assert out == ""
