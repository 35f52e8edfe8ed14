"""Predict the classes of videos with a trained checkpoint, without any dataset:

    python scripts/predict.py ckpt=outputs/<date>/<time>/best.pt video=clip.mp4
    python scripts/predict.py ckpt=outputs/<date>/<time>/best.pt video=my_videos/ test.num_clips=10 test.num_crops=3

For one video it prints the top-5 class names with their video-level scores (with `per_clip=true`, each
clip's best class too, in time order). For a folder it scores every video in it and writes scores.csv and
scores.json (format: `rcca.engine.metrics`) into `output=` (default `outputs/predict/<folder>-<date>_<time>/`).
Scores are averaged over the test views exactly as `test.py` does, with its options (`test.num_clips`,
`test.num_crops`, `test.resize_short`); the model and class names come from the checkpoint. An official
TSM / TSN / MF-Net release is read with `ckpt_format=tsm|tsn|mfnet` and the model named by config overrides
(`experiment=paper_tsm dataset=kinetics400`, optionally `dataset.class_names=<file>`).
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import torch

from rcca.engine.cli import (
    ScriptKey,
    exit_codes,
    log_to_terminal,
    script_arguments,
    script_bool,
    script_int,
)
from rcca.engine.inference import load_trained_model, video_paths
from rcca.engine.metrics import write_video_scores
from rcca.engine.prediction import VideoPrediction, predict_files, top_classes
from rcca.errors import UserError
from rcca.progress import count_of

USAGE = "usage: python scripts/predict.py ckpt=<checkpoint> video=<file or folder> [key=value ...]"
KEYS = {
    "ckpt": ScriptKey(
        "the checkpoint: a run's last.pt / best.pt, or an official release (see ckpt_format)", required=True
    ),
    "video": ScriptKey("a video file, or a folder of videos", required=True),
    "top_k": ScriptKey("classes shown per video", "5"),
    "per_clip": ScriptKey("also show each clip's best class, in time order (true/false)", "false"),
    "output": ScriptKey("folder for scores.csv and scores.json (a folder of videos: outputs/predict/...)"),
    "overwrite": ScriptKey("replace scores.csv / scores.json already in the output folder (true/false)", "false"),
    "ckpt_format": ScriptKey("rcca, or an official release's format: tsm, tsn, mfnet", "rcca"),
}


def output_folder(value: str | None, video: Path, overwrite: bool) -> Path:
    """The folder for scores.csv / scores.json (made when they are written); refuses one that holds them
    unless `overwrite`."""
    stamp = time.strftime("%Y-%m-%d_%H-%M-%S")
    folder = Path(value) if value else Path("outputs") / "predict" / f"{video.resolve().name}-{stamp}"
    existing = [name for name in ("scores.csv", "scores.json") if (folder / name).exists()]
    if existing and not overwrite:
        raise UserError(f"output={folder}: it holds {existing[0]} already; choose another folder or add overwrite=true")
    return folder


def make_folder(folder: Path) -> None:
    """Create the output folder (and its parents)."""
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise UserError(f"output={folder}: cannot create it ({error.strerror}); choose another folder") from None


def print_video(prediction: VideoPrediction, classes: list[str], top_k: int, per_clip: bool) -> None:
    """The top classes of one video, and with `per_clip` each clip's best class."""
    print(f"{prediction.video}:")
    for rank, (_, name, score) in enumerate(top_classes(prediction.scores, classes, top_k), start=1):
        print(f"  {rank}. {name}  {100 * score:.1f}%")
    if per_clip:
        clips = len(prediction.clip_scores)
        for index, row in enumerate(prediction.clip_scores, start=1):
            ((_, name, score),) = top_classes(row, classes, 1)
            print(f"  clip {index}/{clips}: {name}  {100 * score:.1f}%")


def main(argv: list[str] | None = None) -> None:
    log_to_terminal()
    with exit_codes():
        values, overrides = script_arguments(sys.argv[1:] if argv is None else argv, KEYS, USAGE)
        top_k = script_int("top_k", values["top_k"], 1)
        per_clip = script_bool("per_clip", values["per_clip"])
        overwrite = script_bool("overwrite", values["overwrite"])
        video = Path(values["video"])
        videos = video_paths(video)
        folder = output_folder(values["output"], video, overwrite) if video.is_dir() or values["output"] else None
        trained = load_trained_model(values["ckpt"], overrides, values["ckpt_format"], max_workers=len(videos) - 1)
        predictions, failed = predict_files(trained, videos, trained.workers, sys.stderr.isatty())
        if len(videos) == 1 and failed:
            reason = failed[str(videos[0])]
            raise UserError(f"video={videos[0]}: cannot be decoded ({reason}); check the file, or dataset.backend")
        if len(videos) == 1 and not failed:
            print_video(predictions[0], trained.classes, top_k, per_clip)
        test = trained.config.test
        views = f"{count_of(test.num_clips, 'clip')} x {count_of(test.num_crops, 'crop')}"
        undecodable = f", {count_of(len(failed), 'undecodable video')} (listed in scores.json)" if failed else ""
        written = ""
        if folder is not None:
            make_folder(folder)
            settings = {"checkpoint": values["ckpt"], "num_clips": test.num_clips, "num_crops": test.num_crops}
            scores = [p.scores for p in predictions]
            write_video_scores(
                folder,
                [str(p.video) for p in predictions],
                torch.stack(scores) if scores else torch.zeros(0, len(trained.classes)),
                [p.clip_scores for p in predictions],
                trained.classes,
                top_k,
                settings,
                failed,
            )
            written = f"; scores in {folder / 'scores.csv'} and scores.json"
        print(f"predict: {count_of(len(predictions), 'video')} scored ({views}){undecodable}{written}")


if __name__ == "__main__":
    main()
