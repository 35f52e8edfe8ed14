"""scripts/inspect_dataset.py on a tiny video_list dataset with a missing and a corrupt video."""

from __future__ import annotations

import importlib.util
import json
import re
from pathlib import Path
from types import ModuleType

import numpy as np
import pytest
from conftest import REPO, run_entry

from rcca.config import DatasetConfig
from rcca.data.build import write_exclude_list
from rcca.data.synthetic import SyntheticSpec, render_video, write_video
from rcca.errors import UserError

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


def option(overrides: list[str], key: str) -> Path:
    """The path an override `key=...` sets."""
    return Path(next(o for o in overrides if o.startswith(f"{key}=")).split("=", 1)[1])


def test_reports_counts_and_missing_videos(overrides: list[str]) -> None:
    result = run_entry(SCRIPT, *overrides, timeout=120, check=False)
    assert result.returncode == 1, result.stderr  # a listed video is missing: scripts can tell
    report = summary(result.stdout)
    assert report["dataset"] == "video_list"
    assert (report["num_classes"], report["train"], report["test"], report["missing"]) == (2, 4, 2, 1)
    assert "undecodable" not in report
    assert "absent.mp4" in result.stdout
    # Without dataset.class_names the classes are the label numbers, and the report says how to name them.
    assert report["classes"] == ["0", "1"]
    assert "classes: 2 (named by label; set dataset.class_names" in result.stdout
    assert "\n  0: 2 train, 1 test\n  1: 2 train, 1 test\n" in result.stdout


def test_decode_reports_undecodable_videos_and_writes_exclude_list(overrides: list[str], tmp_path: Path) -> None:
    exclude = tmp_path / "exclude.txt"
    result = run_entry(SCRIPT, "--decode", "--write-exclude", str(exclude), *overrides, timeout=120, check=False)
    assert result.returncode == 1, result.stderr
    report = summary(result.stdout)
    assert (report["num_classes"], report["train"], report["test"], report["missing"]) == (2, 4, 2, 1)
    assert report["undecodable"] == 1
    assert "undecodable with decord, then PyAV (of 5 read): 1" in result.stdout
    assert "corrupt.mp4: " in result.stdout and "decord failed" in result.stdout and "PyAV failed" in result.stdout
    header, entry = exclude.read_text().splitlines()
    assert header.startswith("# ") and entry.startswith("corrupt.mp4\t# ")
    # The written list is a valid dataset.exclude: the corrupt video is left out, nothing fails;
    # writing the list again from that run keeps the video it no longer reads.
    result = run_entry(
        SCRIPT,
        "--decode",
        "--write-exclude",
        str(exclude),
        *overrides,
        f"dataset.exclude={exclude}",
        timeout=120,
        check=False,
    )
    assert result.returncode == 1, result.stderr  # absent.mp4 is still missing
    report = summary(result.stdout)
    assert (report["train"], report["undecodable"]) == (3, 0)
    assert exclude.read_text().splitlines() == [header, entry]


def test_exit_status_is_0_when_every_video_is_present_and_decodes(overrides: list[str], tmp_path: Path) -> None:
    exclude = tmp_path / "exclude.txt"
    exclude.write_text("corrupt.mp4\nabsent.mp4\n")
    result = run_entry(SCRIPT, "--decode", *overrides, f"dataset.exclude={exclude}", timeout=120)
    report = summary(result.stdout)
    assert (report["train"], report["missing"], report["undecodable"]) == (2, 0, 0)


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
    with pytest.raises(SystemExit) as exited, script.exit_codes():
        script.report(absent, decode=False)
    assert exited.value.code == 2
    out, err = capsys.readouterr()
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and "dataset.root" in lines[0]
    assert out == ""


def never_decode(*args: object, **kwargs: object) -> None:
    raise AssertionError("decoding started although --write-exclude was refused")


@pytest.mark.parametrize("target", ["train_list", "test_list", "root", "video"])
def test_write_exclude_refuses_an_input_of_the_dataset(
    script: ModuleType,
    overrides: list[str],
    target: str,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """--write-exclude naming a list file, the videos' folder or a video: one line, exit 2, before decoding,
    the file intact."""
    monkeypatch.setattr(script, "scan_videos", never_decode)
    root = option(overrides, "dataset.root")
    path = {"root": root, "video": root / "good_0.mp4"}.get(target) or option(overrides, f"dataset.{target}")
    before = path.read_bytes() if path.is_file() else None
    with pytest.raises(SystemExit) as exited, script.exit_codes():
        script.report(overrides, decode=True, exclude_file=path)
    assert exited.value.code == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"error: --write-exclude {path}: ")
    assert path.is_dir() if target == "root" else path.read_bytes() == before


def test_write_exclude_refuses_a_file_inside_the_annotations_folder(script: ModuleType, tmp_path: Path) -> None:
    annotations = tmp_path / "ucfTrainTestlist"
    annotations.mkdir()
    (annotations / "testlist01.txt").write_text(
        "ApplyEyeMakeup/v_ApplyEyeMakeup_g01_c01.avi\n"
    )  # reads as an exclude list
    cfg = DatasetConfig(name="ucf101", root=str(tmp_path / "videos"), annotations=str(annotations), num_classes=101)
    videos = {"ApplyEyeMakeup/v_ApplyEyeMakeup_g01_c01.avi"}
    with pytest.raises(UserError, match=r"testlist01.txt: .*inside dataset.annotations="):
        script.check_exclude_target(annotations / "testlist01.txt", cfg, videos)


def test_write_exclude_overwrites_only_an_exclude_list(script: ModuleType, tmp_path: Path) -> None:
    """An existing file is rewritten only if it is empty, has the header written by write_exclude_list,
    or only names videos of the dataset; any other file (notes, a binary) is refused."""
    cfg = DatasetConfig(name="video_list", root=str(tmp_path / "videos"), num_classes=2)
    videos = {"good_0.mp4", "corrupt.mp4"}
    written = tmp_path / "written.txt"
    write_exclude_list(written, {"elsewhere.mp4": "# decoder crashed"})
    (tmp_path / "empty.txt").write_text("")
    (tmp_path / "by_hand.txt").write_text("# bad ones\ncorrupt.mp4\n\ngood_0.mp4\t# flickers\n")
    for name in ("written.txt", "empty.txt", "by_hand.txt", "new.txt"):
        script.check_exclude_target(tmp_path / name, cfg, videos)
    (tmp_path / "notes.txt").write_text("corrupt.mp4\nremember to buy milk\n")
    (tmp_path / "binary.txt").write_bytes(bytes(range(256)))
    for name in ("notes.txt", "binary.txt"):
        before = (tmp_path / name).read_bytes()
        with pytest.raises(
            UserError, match=rf"^--write-exclude {re.escape(str(tmp_path / name))}: .*not an exclude list"
        ):
            script.check_exclude_target(tmp_path / name, cfg, videos)
        assert (tmp_path / name).read_bytes() == before
    with pytest.raises(UserError, match=r"folder .* not found"):
        script.check_exclude_target(tmp_path / "nowhere" / "exclude.txt", cfg, videos)


def test_class_names_file_names_the_classes(
    script: ModuleType, overrides: list[str], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """dataset.class_names (read by rcca.data.build): the report lists label, name and videos per class."""
    names = tmp_path / "classes.txt"
    names.write_text("# my classes\nrun\njump\n")
    summary = script.report([*overrides, f"dataset.class_names={names}"], decode=False)
    out = capsys.readouterr().out
    assert summary["classes"] == ["run", "jump"]
    assert "classes: 2\n  0 run: 2 train, 1 test\n  1 jump: 2 train, 1 test\n" in out
    assert "without training videos" not in out
    # A named class that no training video uses is pointed out.
    names.write_text("run\njump\nswim\n")
    three = [o for o in overrides if not o.startswith("dataset.num_classes=")] + ["dataset.num_classes=3"]
    summary = script.report([*three, f"dataset.class_names={names}"], decode=False)
    assert summary["classes"] == ["run", "jump", "swim"]
    assert "classes without training videos: 1\n  2 swim\n" in capsys.readouterr().out


def test_bad_class_names_file_is_a_one_line_user_error(
    script: ModuleType, overrides: list[str], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    names = tmp_path / "classes.txt"
    names.write_text("run\njump\nrun\n")
    with pytest.raises(SystemExit) as exited, script.exit_codes():
        script.report([*overrides, f"dataset.class_names={names}"], decode=False)
    assert exited.value.code == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert lines == [f"error: {names}:3: class name 'run' repeats line 1 (label 0); every class needs its own name"]


def test_write_exclude_refuses_the_class_names_file(script: ModuleType, tmp_path: Path) -> None:
    names = tmp_path / "classes.txt"
    names.write_text("good_0.mp4\n")  # would read as an exclude list naming a video of the dataset
    cfg = DatasetConfig(name="video_list", root=str(tmp_path / "videos"), class_names=str(names), num_classes=2)
    with pytest.raises(UserError, match=r"classes\.txt: is dataset\.class_names=.*an input of the dataset"):
        script.check_exclude_target(names, cfg, {"good_0.mp4"})
    assert names.read_text() == "good_0.mp4\n"


def test_samples_draw_the_first_present_training_video_of_each_class(overrides: list[str], tmp_path: Path) -> None:
    from PIL import Image

    from rcca.visualization.drawing import grid_size

    png = tmp_path / "samples.png"
    result = run_entry(SCRIPT, "--samples", str(png), "--sample-frames", "3", *overrides, timeout=120, check=False)
    assert result.returncode == 1, result.stderr  # still reports the missing video
    assert "wrote 2 sample videos to" in result.stdout  # class 1's absent.mp4 is passed over for good_1.mp4
    with Image.open(png) as image:
        assert image.size[::-1] == grid_size(2, 3)  # 2 classes x 3 frames
    before = png.read_bytes()
    again = run_entry(SCRIPT, "--samples", str(png), *overrides, timeout=120, check=False)
    assert again.returncode == 2 and again.stdout == ""
    assert again.stderr.strip() == f"error: --samples {png}: exists; give a new file, or replace it with --overwrite"
    assert png.read_bytes() == before


def test_sample_frames_are_spread_over_the_video_ends_included() -> None:
    from rcca.visualization.drawing import evenly_spaced

    assert evenly_spaced(20, 8) == [0, 3, 5, 8, 11, 14, 16, 19]
    assert evenly_spaced(20, 1) == [0] and evenly_spaced(3, 8) == [0, 1, 2]


def test_sample_frames_survive_a_reader_that_hands_over_to_another(monkeypatch: pytest.MonkeyPatch) -> None:
    """decord may call the frame chooser and then fail, and PyAV calls it again: the frames are chosen once."""
    import torch
    from conftest import load_script

    script = load_script("inspect_dataset")

    def decord_then_pyav(path: Path, choose, backend: str) -> torch.Tensor:
        choose(20)  # the first reader chose, then failed
        return torch.zeros(len(choose(20)), 3, 4, 4, dtype=torch.uint8)

    monkeypatch.setattr(script, "read_frames", decord_then_pyav)
    frames, chosen = script.spread_frames(Path("clip.mp4"), "decord", 8)
    assert chosen == [0, 3, 5, 8, 11, 14, 16, 19] and frames.shape == (8, 4, 4, 3)
