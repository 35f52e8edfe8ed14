"""scripts/predict.py and rcca.engine.prediction: video-level scores averaged over the test views as test.py
averages them, per-clip scores, the CSV / JSON of a folder, official releases, and one-line errors."""

from __future__ import annotations

import csv
import json

import pytest
import torch
from conftest import TINY_CLASSES, TINY_MODEL, load_script, run_entry, save_tiny_checkpoint, write_square_video

from rcca.engine.checkpoints import save_checkpoint
from rcca.engine.inference import load_trained_model, read_views
from rcca.engine.prediction import predict_files, top_classes
from rcca.errors import UserError


def predict_script():
    return load_script("predict")


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    return save_tiny_checkpoint(tmp_path_factory.mktemp("run") / "best.pt")


def test_video_scores_are_the_mean_of_the_view_softmaxes(tmp_path, checkpoint):
    video = write_square_video(tmp_path / "a.mp4", frames=24)
    trained = load_trained_model(str(checkpoint), ["test.num_clips=3", "test.num_crops=3"])
    (prediction,), failed = predict_files(trained, [video])
    assert failed == {}
    views = read_views(trained, video)
    assert views.shape == (9, 3, 8, 64, 64)
    with torch.no_grad():
        probabilities = torch.softmax(trained.model(views), dim=1)  # 9 views, clip-major
    assert torch.allclose(prediction.scores, probabilities.mean(0), atol=1e-6)
    assert torch.allclose(prediction.clip_scores, probabilities.view(3, 3, -1).mean(1), atol=1e-6)
    assert torch.allclose(prediction.clip_scores.mean(0), prediction.scores, atol=1e-6)


def test_top_classes_are_ranked_best_first():
    scores = torch.tensor([0.1, 0.6, 0.3])
    assert top_classes(scores, ["a", "b", "c"], 2) == [(1, "b", pytest.approx(0.6)), (2, "c", pytest.approx(0.3))]
    assert len(top_classes(scores, ["a", "b", "c"], 5)) == 3


def test_one_video_prints_its_top_classes_and_clips(tmp_path, checkpoint, capsys):
    video = write_square_video(tmp_path / "a.mp4")
    predict_script().main([f"ckpt={checkpoint}", f"video={video}", "top_k=3", "per_clip=true", "test.num_clips=2"])
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == f"{video}:"
    ranked = [line.split(". ", 1)[1].rsplit("  ", 1) for line in lines[1:4]]
    assert all(name in TINY_CLASSES for name, _ in ranked)
    scores = [float(score.rstrip("%")) for _, score in ranked]
    assert scores == sorted(scores, reverse=True)
    assert [line.split(":")[0].strip() for line in lines[4:6]] == ["clip 1/2", "clip 2/2"]
    assert lines[-1] == "predict: 1 video scored (2 clips x 1 crop)"


def test_a_folder_gives_csv_and_json_with_undecodable_videos_listed(tmp_path, checkpoint, capsys):
    folder = tmp_path / "videos"
    good = [write_square_video(folder / name) for name in ("b.mp4", "sub/a.avi")]
    (folder / "broken.mp4").write_bytes(b"not a video")
    (folder / "notes.txt").write_text("not a video either")
    output = tmp_path / "out"
    predict_script().main([f"ckpt={checkpoint}", f"video={folder}", f"output={output}", "top_k=2"])
    assert "predict: 2 videos scored (1 clip x 1 crop), 1 undecodable video" in capsys.readouterr().out
    rows = list(csv.DictReader((output / "scores.csv").open()))
    document = json.loads((output / "scores.json").read_text())
    assert [row["video"] for row in rows] == [str(path) for path in sorted(good)]
    assert list(rows[0]) == ["video", "class_1", "score_1", "class_2", "score_2"]
    assert list(document["failed_videos"]) == [str(folder / "broken.mp4")]
    assert document["classes"] == TINY_CLASSES and document["num_clips"] == 1
    for row, entry in zip(rows, document["videos"]):
        assert (
            row["class_1"] == entry["top"][0]["class"] == TINY_CLASSES[max(range(8), key=entry["scores"].__getitem__)]
        )
        assert float(row["score_1"]) == pytest.approx(max(entry["scores"]), abs=1e-4)
        assert sum(entry["scores"]) == pytest.approx(1.0, abs=1e-5)
    with pytest.raises(SystemExit) as stop:  # the same output again: refused, the files kept
        predict_script().main([f"ckpt={checkpoint}", f"video={folder}", f"output={output}"])
    assert stop.value.code == 2 and "overwrite=true" in capsys.readouterr().err


def test_an_official_tsm_release_is_read_through_the_converter(tmp_path):
    rcca_checkpoint = save_tiny_checkpoint(tmp_path / "run" / "best.pt", "module=none")
    state = torch.load(rcca_checkpoint, weights_only=True)["model"]
    official = {"module.base_model." + name: value for name, value in state.items()}  # a plain 2-D TSN-style file
    save_checkpoint({"state_dict": official, "epoch": 1}, tmp_path / "release.pth")
    ours = load_trained_model(str(rcca_checkpoint), [])
    release = load_trained_model(str(tmp_path / "release.pth"), [*TINY_MODEL, "module=none"], "tsn")
    clip = torch.randn(1, 3, 8, 64, 64)
    with torch.no_grad():
        assert torch.equal(ours.model(clip), release.model(clip))
    assert release.classes[:2] == ["class 0", "class 1"]  # no class names in a release
    with pytest.raises(UserError, match="does not match the file"):  # a model with a context module it lacks
        load_trained_model(str(tmp_path / "release.pth"), TINY_MODEL, "tsn")


@pytest.mark.parametrize(
    "arguments, message",
    [
        (["video={video}"], "ckpt= is required"),
        (["ckpt={ckpt}", "video={tmp}/missing.mp4"], "no such file or folder"),
        (["ckpt={ckpt}", "video={empty}"], "the folder holds no video"),
        (["ckpt={ckpt}", "video={tmp}/broken.mp4"], "broken.mp4: cannot be decoded"),
        (["ckpt={ckpt}", "vidoe={video}"], "vidoe={video}: not an argument of this script"),
        (["ckpt={ckpt}", "video={video}", "top_k=0"], "top_k=0: must be an integer >= 1"),
        (["ckpt={ckpt}", "video={video}", "test.num_clip=2"], "unknown key test.num_clip"),
        (["ckpt={ckpt}", "video={video}", "backbone.depth=50"], "the checkpoint's own model is used"),
        (["ckpt={ckpt}", "video={video}", "ckpt_format=caffe"], "ckpt_format=caffe: choose one of"),
    ],
)
def test_bad_input_is_one_line(tmp_path, checkpoint, capsys, arguments, message):
    (tmp_path / "empty").mkdir()
    (tmp_path / "broken.mp4").write_bytes(b"not a video")
    video = write_square_video(tmp_path / "v.mp4")
    names = {"ckpt": checkpoint, "tmp": tmp_path, "empty": tmp_path / "empty", "video": video}
    arguments = [argument.format(**names) for argument in arguments]
    with pytest.raises(SystemExit) as stop:
        predict_script().main(arguments)
    error = capsys.readouterr().err.strip().splitlines()[-1]
    assert stop.value.code == 2 and error.startswith("error: ")
    assert message.format(video=video) in error


def test_the_script_runs_as_the_readme_says(tmp_path, checkpoint):
    video = write_square_video(tmp_path / "clip.mp4")
    result = run_entry("scripts/predict.py", f"ckpt={checkpoint}", f"video={video}")
    assert result.stdout.splitlines()[0] == f"{video}:" and "predict: 1 video scored" in result.stdout
