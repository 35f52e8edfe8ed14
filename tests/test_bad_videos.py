"""Undecodable videos, made for real: what the readers, the datasets and the loaders do with them.

The bad files: an empty .mp4, a good video cut to its first 30% of bytes and a text file
named .mp4. `write_video` (PyAV's mp4 muxer) puts the index (moov atom) at the end of the
file, so the truncated copy has no index and neither decoder can open it. A truncated
"fast start" mp4 (index first) is different: it decodes partially, and that is accepted.
"""

from __future__ import annotations

import json
import logging
import re
import threading
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import TypeVar

import av
import numpy as np
import pytest
import torch
from conftest import run_entry

from rcca.config import DatasetConfig
from rcca.data.annotations import VideoRecord
from rcca.data.build import ClipSampling, build_loader, load_dataset
from rcca.data.datasets import VideoDataset
from rcca.data.decoding import DecodeError, read_frames
from rcca.data.synthetic import SyntheticSpec, render_video, write_video
from rcca.data.transforms import build_test_transform, build_train_transform
from rcca.engine.evaluation import predict_videos
from rcca.errors import UserError
from rcca.models.tsm import TSMResNet

T = TypeVar("T")

NUM_FRAMES = 16
SIZE = 64
CROP = 56
SEGMENTS = 4
GOOD = [f"good_{i}.mp4" for i in range(4)]
BAD = ["empty.mp4", "truncated.mp4", "text.mp4"]
BACKENDS = ["decord", "pyav"]


def within(seconds: float, function: Callable[[], T]) -> T:
    """Run `function` in a daemon thread; fail instead of hanging if it is not done after `seconds`."""
    outcome: dict = {}

    def target() -> None:
        try:
            outcome["value"] = function()
        except BaseException as error:  # handed to the calling thread below
            outcome["error"] = error

    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    thread.join(seconds)
    assert not thread.is_alive(), f"still running after {seconds} s"
    if "error" in outcome:
        raise outcome["error"]
    return outcome["value"]


def write_faststart_video(path: Path, frames: np.ndarray) -> None:
    """Encode frames (T x H x W x 3 uint8) to MPEG-4 in an mp4 whose index comes first."""
    with av.open(str(path), mode="w", options={"movflags": "faststart"}) as container:
        stream = container.add_stream("mpeg4", rate=12)
        stream.width, stream.height = frames.shape[2], frames.shape[1]
        stream.pix_fmt = "yuv420p"
        for frame in frames:
            container.mux(stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")))
        container.mux(stream.encode())


@pytest.fixture(scope="module")
def root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A folder with the good videos (64 x 64, 16 frames) and the bad files."""
    folder = tmp_path_factory.mktemp("bad_videos")
    spec = SyntheticSpec(frames=NUM_FRAMES, size=SIZE)
    rng = np.random.default_rng(0)
    for label, name in enumerate(GOOD):
        write_video(folder / name, render_video(label, spec, rng))
    whole = (folder / GOOD[0]).read_bytes()
    (folder / "empty.mp4").write_bytes(b"")
    (folder / "truncated.mp4").write_bytes(whole[: int(0.3 * len(whole))])
    (folder / "text.mp4").write_text("this is a text file, not a video\n" * 50)
    return folder


def mixed_records() -> list[VideoRecord]:
    """Good and bad videos interleaved, a bad one first; labels alternate 0, 1."""
    names = [BAD[0], GOOD[0], GOOD[1], BAD[1], GOOD[2], BAD[2], GOOD[3]]
    return [VideoRecord(name, i % 2) for i, name in enumerate(names)]


def training_dataset(root: Path, backend: str) -> VideoDataset:
    """The mixed list as training reads it: one random 4-frame clip, augmented; bad videos replaced."""
    clip = ClipSampling("segment", SEGMENTS)
    transform = build_train_transform(CROP, [1.0, 0.875], flip=True)
    return VideoDataset(root, mixed_records(), backend, clip.train_indices, transform, replace_failed=True)


def evaluation_dataset(root: Path) -> VideoDataset:
    """The mixed list as testing reads it: 2 clips x 1 centre crop per video; bad videos marked."""
    clip = ClipSampling("segment", SEGMENTS)
    return VideoDataset(
        root,
        mixed_records(),
        "pyav",
        partial(clip.test_indices, num_clips=2),
        build_test_transform(SIZE, CROP, 1),
        clips_per_video=2,
        replace_failed=False,
    )


# --------------------------------------------------------------------------- readers


@pytest.mark.parametrize("name", BAD)
@pytest.mark.parametrize("backend", BACKENDS)
def test_read_frames_raises_decode_error(root: Path, name: str, backend: str) -> None:
    with pytest.raises(DecodeError, match=name):
        within(30, lambda: read_frames(root / name, lambda n: [0, n - 1], backend))


@pytest.mark.parametrize("backend", ["decord", "pyav"])
def test_truncated_faststart_mp4_decodes_partially(tmp_path: Path, backend: str) -> None:
    """With its index first, an mp4 cut in half still yields the frames it holds.

    PyAV decodes the frames present (4 of 16 here): all but the last are exact, the last is
    cut short and comes back with damaged pixels, which no reader reports. decord 0.6 fails
    to index the cut file, so backend decord falls back to PyAV and returns the same.
    Noise frames are used because they are large: the cut then falls after a few frames.
    """
    frames = np.random.default_rng(0).integers(0, 256, (NUM_FRAMES, SIZE, SIZE, 3), dtype=np.uint8)
    whole_path, cut_path = tmp_path / "whole.mp4", tmp_path / "cut.mp4"
    write_faststart_video(whole_path, frames)
    whole = whole_path.read_bytes()
    cut_path.write_bytes(whole[: len(whole) // 2])

    def every_frame(num_frames: int) -> list[int]:
        return list(range(num_frames))

    clip = within(30, lambda: read_frames(cut_path, every_frame, backend))
    assert 0 < len(clip) < NUM_FRAMES
    assert clip.shape[1:] == (3, SIZE, SIZE) and clip.dtype == torch.uint8
    assert torch.equal(clip, read_frames(cut_path, every_frame, "pyav"))
    assert torch.equal(clip[:-1], read_frames(whole_path, every_frame, "pyav")[: len(clip) - 1])


# --------------------------------------------------------------------------- datasets


def check_training_item(item: dict, records: list[VideoRecord]) -> None:
    """A training item is a finite float C x T x H x W clip of a good video, with its label."""
    assert item["ok"] is True
    assert item["clip"].shape == (3, SEGMENTS, CROP, CROP) and item["clip"].dtype == torch.float32
    assert torch.isfinite(item["clip"]).all()
    assert records[item["index"]].path in GOOD
    assert item["label"] == records[item["index"]].label


@pytest.mark.parametrize("backend", BACKENDS)
def test_training_replaces_bad_videos_and_leaves_reporting_to_the_trainer(
    root: Path, backend: str, caplog: pytest.LogCaptureFixture
) -> None:
    """The dataset logs nothing (each DataLoader worker would log again): the trainer reports `failed`."""
    dataset = training_dataset(root, backend)
    records = dataset.records
    caplog.set_level(logging.DEBUG, logger="rcca.data")
    for epoch in range(3):
        for index, record in enumerate(records):
            item = dataset[epoch, index]
            check_training_item(item, records)
            if record.path in BAD:
                assert item["failed"] == record.path and item["index"] != index
                assert item["reason"].startswith(f"{root / record.path}: ") and "failed" in item["reason"]
            else:
                assert item["failed"] == item["reason"] == "" and item["index"] == index
    assert not [r for r in caplog.records if r.levelno >= logging.INFO], caplog.text


def test_testing_marks_bad_videos_with_zero_clips(root: Path) -> None:
    dataset = evaluation_dataset(root)
    items = [dataset[0, index] for index in range(len(dataset))]
    good_shape = (2, 3, SEGMENTS, CROP, CROP)  # clips x crops, C, T, H, W
    for item, record in zip(items, dataset.records):
        assert item["clip"].shape == good_shape
        assert item["label"] == record.label
        if record.path in BAD:
            assert item["ok"] is False and item["failed"] == record.path
            assert item["reason"].startswith(f"{root / record.path}: PyAV failed: ")
            assert not item["clip"].any()
        else:
            assert item["ok"] is True and item["failed"] == item["reason"] == ""
            assert item["clip"].any()


def test_evaluation_excludes_and_lists_bad_videos(root: Path) -> None:
    dataset = evaluation_dataset(root)
    loader = build_loader(dataset, batch_size=3, num_workers=0, train=False, seed=0)
    loader.sampler.set_epoch(0)
    torch.manual_seed(0)
    model = TSMResNet(depth=18, width=8, num_classes=2, num_segments=SEGMENTS)
    scores, labels, indices, failed = predict_videos(model, loader, torch.device("cpu"))
    good = [i for i, record in enumerate(dataset.records) if record.path in GOOD]
    assert indices == good
    assert labels.tolist() == [dataset.records[i].label for i in good]
    assert scores.shape == (len(good), 2)
    assert torch.allclose(scores.sum(dim=1), torch.ones(len(good)))
    assert sorted(failed) == sorted(BAD)
    assert all(failed[path].startswith(f"{root / path}: ") for path in BAD)  # each with its reason


def test_training_loader_with_workers_completes(root: Path) -> None:
    dataset = training_dataset(root, "pyav")
    loader = build_loader(dataset, batch_size=1, num_workers=2, train=True, seed=0)
    loader.timeout = 60  # a worker stuck on a bad file fails the test instead of hanging it
    loader.sampler.set_epoch(0)
    batches = list(loader)
    assert len(batches) == len(dataset)
    for batch in batches:
        assert batch["clip"].shape == (1, 3, SEGMENTS, CROP, CROP)
        assert torch.isfinite(batch["clip"]).all() and batch["ok"].all()
    assert sorted(path for batch in batches for path in batch["failed"] if path) == sorted(BAD)


# --------------------------------------------------------------------------- missing files


def write_lists(root: Path, train: list[str], test: list[str]) -> DatasetConfig:
    """Write video_list files for `train` / `test` (labels alternate 0, 1) and return their config."""
    for split, names in (("train", train), ("test", test)):
        (root / f"{split}.txt").write_text("".join(f"{name} {i % 2}\n" for i, name in enumerate(names)))
    return DatasetConfig(
        name="video_list",
        root=str(root),
        train_list=str(root / "train.txt"),
        test_list=str(root / "test.txt"),
        num_classes=2,
    )


def test_load_dataset_reports_missing_videos(root: Path) -> None:
    missing = [f"absent/{i}.mp4" for i in range(4)]
    cfg = write_lists(root, [GOOD[0], missing[0], GOOD[1], *missing[1:]], [GOOD[2], GOOD[3]])
    with pytest.raises(UserError) as caught:
        load_dataset(cfg)
    message = str(caught.value)
    assert "\n" not in message
    assert re.search(r"\b4 of 6 train videos\b.*missing", message)
    assert all(path in message for path in missing[:3])
    assert "dataset.allow_missing" in message


def test_load_dataset_drops_missing_videos_when_allowed(root: Path) -> None:
    cfg = write_lists(root, [GOOD[0], "absent/a.mp4", GOOD[1]], ["absent/b.mp4", GOOD[2], GOOD[3]])
    cfg.allow_missing = True
    found_root, annotations = load_dataset(cfg)
    assert found_root == root
    assert [r.path for r in annotations.train] == [GOOD[0], GOOD[1]]
    assert [r.path for r in annotations.test] == [GOOD[2], GOOD[3]]
    assert [r.label for r in annotations.train] == [0, 0] and [r.label for r in annotations.test] == [1, 0]
    assert annotations.missing == ["absent/a.mp4", "absent/b.mp4"]  # for metrics.json
    assert load_dataset(write_lists(root, [GOOD[0]], [GOOD[1]]))[1].missing == []


def test_root_that_is_a_file_is_a_one_line_error(root: Path) -> None:
    cfg = write_lists(root, [GOOD[0]], [GOOD[1]])
    cfg.root = str(root / GOOD[0])
    with pytest.raises(
        UserError, match=rf"^dataset.root={re.escape(cfg.root)} is a file, not a folder; set dataset.root to "
    ):
        load_dataset(cfg)


# --------------------------------------------------------------------------- how failures are reported


def test_training_on_undecodable_videos_is_a_one_line_error(tmp_path: Path) -> None:
    root = tmp_path / "videos"
    root.mkdir()
    for i in range(4):
        (root / f"broken{i}.mp4").write_bytes(b"\x00\x00\x00\x18ftypmp42" + bytes(range(256)) * 4)
    (tmp_path / "list.txt").write_text("".join(f"broken{i}.mp4 {i % 2}\n" for i in range(4)))
    result = run_entry(
        "train.py",
        "experiment=quickstart",
        "dataset=video_list",
        f"dataset.root={root}",
        "dataset.num_classes=2",
        f"dataset.train_list={tmp_path / 'list.txt'}",
        f"dataset.test_list={tmp_path / 'list.txt'}",
        "trainer.batch_size=2",
        "trainer.effective_batch_size=2",
        "trainer.num_workers=2",
        f"hydra.run.dir={tmp_path / 'run'}",
        check=False,
    )
    assert result.returncode == 2, result.stderr[-2000:]
    errors = [line for line in result.stderr.splitlines() if line.startswith("error: ")]  # decord's own lines aside
    assert len(errors) == 1 and "10 videos in a row failed to decode" in errors[0]
    assert "Traceback" not in result.stderr


def test_training_reports_each_bad_video_once_and_decoders_stay_quiet(root: Path, tmp_path: Path) -> None:
    """Two DataLoader workers, two epochs: each bad training video is one log line (the trainer's),
    and nothing the decoders print about it reaches the terminal."""
    train = [*GOOD, "truncated.mp4", "text.mp4"]  # 3 batches of 2 per epoch: every video is read each epoch
    for split, names in (("train", train), ("test", GOOD[:2])):
        (tmp_path / f"{split}.txt").write_text("".join(f"{name} {i % 2}\n" for i, name in enumerate(names)))
    result = run_entry(
        "train.py",
        "experiment=quickstart",
        "dataset=video_list",
        f"dataset.root={root}",
        "dataset.num_classes=2",
        f"dataset.train_list={tmp_path / 'train.txt'}",
        f"dataset.test_list={tmp_path / 'test.txt'}",
        "trainer.epochs=2",
        "trainer.batch_size=2",
        "trainer.effective_batch_size=2",
        "trainer.num_workers=2",
        "test.batch_size=2",
        f"hydra.run.dir={tmp_path / 'run'}",
    )
    output = (result.stdout + result.stderr).splitlines()
    for name in ("truncated.mp4", "text.mp4"):
        mentions = [line for line in output if name in line]
        assert len(mentions) == 1 and "undecodable" in mentions[0] and "failed" in mentions[0], "\n".join(mentions)
    assert not [line for line in result.stderr.splitlines() if "moov atom" in line or "ERROR opening" in line]
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert sorted(metrics["train_failed_videos"]) == ["text.mp4", "truncated.mp4"]
    assert all(reason.startswith(str(root)) for reason in metrics["train_failed_videos"].values())
    assert metrics["missing_videos"] == [] and metrics["failed_videos"] == {}
