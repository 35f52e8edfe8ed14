"""scripts/prepare.py's video verbs on tiny videos: resize, trim-kinetics, extract-frames, and the shared runner
(resume, temporaries, failures, refused folders)."""

from __future__ import annotations

import functools
import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import av
import numpy as np
import pytest
from conftest import REPO

from rcca.data.annotations import load_kinetics
from rcca.data.decoding import read_frames
from rcca.data.preparation.media import KEYFRAME_INTERVAL, kinetics_jobs, resize_jobs, scaled_size
from rcca.data.preparation.runner import WORKER_DIED, Job, JobFailed, run_jobs
from rcca.data.synthetic import write_video
from rcca.errors import UserError

KINETICS_CSV = """label,youtube_id,time_start,time_end,split,is_cc
abseiling,0wR5jVB-WPk,1,3,train,0
air drumming,-3B32lodo2M,0,2,train,0
abseiling,3caPS4FHFF8,36,46,train,0
"""


def load_script():
    """scripts/prepare.py as a module (its `main` runs in this process)."""
    spec = importlib.util.spec_from_file_location("prepare_script", REPO / "scripts" / "prepare.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def make_video(path: Path, frames: int = 24, width: int = 64, height: int = 48, fps: int = 12) -> None:
    """A video of a white square moving right over black."""
    video = np.zeros((frames, height, width, 3), dtype=np.uint8)
    for index in range(frames):
        left = index % (width - 8)
        video[index, 8:16, left : left + 8] = 255
    write_video(path, video, fps=fps)


def probe(path: Path) -> tuple[int, int, float, int]:
    """(width, height, frame rate, frames decoded) of a video."""
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        frames = sum(1 for _ in container.decode(stream))
        return stream.width, stream.height, float(stream.average_rate), frames


def run(argv: list[str], capsys) -> tuple[int, str, str]:
    """Run prepare.py's main in this process: (exit status, stdout, stderr)."""
    with pytest.raises(SystemExit) as stop:
        load_script().main([str(arg) for arg in argv])
    out, err = capsys.readouterr()
    return stop.value.code, out, err


def write_partly_then_raise(error: Exception, output: Path) -> None:
    """A job interrupted mid-way: half its output written, then `error`."""
    output.write_bytes(b"half a video")
    raise error


def write_or_die(die: bool, output: Path) -> None:
    """A job whose worker process dies (a decoder crash) when `die`, else one that writes its output."""
    if die:
        os._exit(1)
    output.write_bytes(b"done")


def dead_pid() -> int:
    """The id of a process that has ended."""
    process = subprocess.Popen(["true"])
    process.wait()
    return process.pid


def test_scaled_size_keeps_the_aspect_ratio_with_even_sides():
    assert scaled_size(1280, 720, 256, even=True) == (456, 256)
    assert scaled_size(720, 1280, 256, even=True) == (256, 456)
    assert scaled_size(64, 48, 32, even=True) == (42, 32)
    assert scaled_size(641, 361, None, even=True) == (640, 360)
    assert scaled_size(64, 48, 24, even=False) == (32, 24)


def test_resize_gives_the_short_side_aspect_rate_and_frames_that_the_reader_reads(tmp_path, capsys):
    source, destination = tmp_path / "src", tmp_path / "dst"
    make_video(source / "a" / "wide.mp4")
    make_video(source / "b" / "tall.avi", width=48, height=64)
    status, out, _ = run(["resize", source, destination, "--short-side", 32, "--workers", 2], capsys)
    assert status == 0 and "resize: 2 videos done, 0 skipped (already done), 0 failed" in out
    for path, size in ((destination / "a" / "wide.mp4", (42, 32)), (destination / "b" / "tall.avi", (32, 42))):
        width, height, rate, frames = probe(path)
        assert (width, height) == size and rate == 12 and abs(frames - 24) <= 1
        clip = read_frames(path, lambda n: [0, n - 1], backend="pyav")
        assert clip.shape == (2, 3, size[1], size[0])
        with av.open(str(path)) as container:  # MPEG-4 part 2 (fast to decode), a key frame every 12 frames
            stream = container.streams.video[0]
            assert stream.codec_context.name == "mpeg4"
            keys = [i for i, packet in enumerate(container.demux(stream)) if packet.size and packet.is_keyframe]
        assert keys[0] == 0 and max(b - a for a, b in zip(keys, keys[1:] + [frames])) <= KEYFRAME_INTERVAL
    assert sorted(p.name for p in destination.rglob("*")) == ["a", "b", "tall.avi", "wide.mp4"]


def resize_all(source: Path, destination: Path):
    """`prepare.py resize` of every video under `source` to short side 32, 2 workers, without a bar."""
    return run_jobs(
        resize_jobs(source, destination, 32),
        verb="resize",
        destination=destination,
        workers=2,
        bars=False,
        unit="video",
    )


def test_resume_skips_done_videos_and_removes_only_dead_runs_temporaries(tmp_path):
    source, destination = tmp_path / "src", tmp_path / "dst"
    for name in ("one.mp4", "two.mp4"):
        make_video(source / name, frames=6)
    summary = resize_all(source, destination)
    assert (summary.done, summary.skipped, summary.failed) == (2, 0, {})
    done_before = (destination / "one.mp4").stat().st_mtime_ns
    (destination / "two.mp4").unlink()
    dead, alive = dead_pid(), os.getppid()
    leftover = destination / f".two.mp4.tmp-{dead}"  # a dead run's half-written output: not taken as done
    leftover.write_bytes(b"half")
    running = destination / f".one.mp4.tmp-{alive}"  # another run's, still going: kept
    running.write_bytes(b"half")
    others = [destination / f".notes.txt.tmp-{dead}", destination / "notes.txt"]  # not the temporary of an output
    for path in others:
        path.write_text("mine")
    summary = resize_all(source, destination)
    assert (summary.done, summary.skipped, summary.failed) == (1, 1, {})
    assert (destination / "one.mp4").stat().st_mtime_ns == done_before
    assert probe(destination / "two.mp4")[:2] == (42, 32)
    assert not leftover.exists() and running.exists() and all(path.read_text() == "mine" for path in others)


def test_an_interrupted_job_leaves_no_final_file_and_a_failed_one_is_listed(tmp_path):
    destination = tmp_path / "dst"
    output = destination / "clip.mp4"
    interrupted = Job("clip.mp4", output, functools.partial(write_partly_then_raise, RuntimeError("interrupted")))
    with pytest.raises(RuntimeError, match="interrupted"):
        run_jobs([interrupted], verb="resize", destination=destination, workers=1, bars=False, unit="video")
    assert list(destination.iterdir()) == []
    failing = Job("clip.mp4", output, functools.partial(write_partly_then_raise, JobFailed("PyAV: bad")))
    summary = run_jobs([failing], verb="resize", destination=destination, workers=1, bars=False, unit="video")
    assert summary.failed == {"clip.mp4": "PyAV: bad"}
    assert [p.name for p in destination.iterdir()] == ["failed_resize.txt"]
    assert (destination / "failed_resize.txt").read_text() == "clip.mp4\tPyAV: bad\n"


def test_a_dead_worker_fails_its_job_and_the_run_goes_on(tmp_path):
    destination = tmp_path / "dst"
    names = ("a", "crash", "b", "c")
    jobs = [Job(name, destination / name, functools.partial(write_or_die, name == "crash")) for name in names]
    summary = run_jobs(jobs, verb="resize", destination=destination, workers=1, bars=False, unit="video")
    assert summary.failed == {"crash": WORKER_DIED} and summary.done == 3
    assert sorted(p.name for p in destination.iterdir()) == ["a", "b", "c", "failed_resize.txt"]
    # Once nothing fails, the failure list of the earlier run goes.
    (destination / "crash").write_bytes(b"fixed")
    summary = run_jobs(jobs, verb="resize", destination=destination, workers=1, bars=False, unit="video")
    assert (summary.done, summary.skipped) == (0, 4) and not (destination / "failed_resize.txt").exists()


@pytest.mark.parametrize("layout", ["flat", "per_label"])
def test_trim_kinetics_cuts_the_span_into_load_kinetics_names_and_reports_missing_ids(tmp_path, capsys, layout):
    source, destination, annotations = tmp_path / "downloads", tmp_path / "clips", tmp_path / "annotations"
    make_video(source / "0wR5jVB-WPk.mp4", frames=100, fps=25)  # 4 s
    make_video(source / "more" / "-3B32lodo2M.mkv", frames=75, fps=25)  # 3 s
    annotations.mkdir()
    for name in ("kinetics-400_train.csv", "kinetics-400_val.csv"):
        (annotations / name).write_text(KINETICS_CSV)
    csv_path = annotations / "kinetics-400_train.csv"
    argv = ["trim-kinetics", source, destination, "--csv", csv_path, "--layout", layout, "--workers", 2]
    status, out, _ = run(argv, capsys)
    assert status == 0 and "trim-kinetics: 2 clips done" in out
    assert "missing downloads: 1 ids of kinetics-400_train.csv (3caPS4FHFF8)" in out
    assert (destination / "missing_kinetics-400_train.txt").read_text() == "3caPS4FHFF8\n"
    folders = {"flat": ("", ""), "per_label": ("abseiling/", "air drumming/")}[layout]
    first = destination / f"{folders[0]}0wR5jVB-WPk_000001_000003.mp4"
    second = destination / f"{folders[1]}-3B32lodo2M_000000_000002.mp4"
    for clip in (first, second):
        width, height, rate, frames = probe(clip)
        assert (width, height, rate) == (64, 48, 25) and abs(frames - 50) <= 1
    # The first frame of the cut is the source's frame at 1 s: the square has moved 25 pixels.
    column = read_frames(first, lambda n: [0], backend="pyav")[0, 0, 12].float()
    assert abs(int(column.argmax()) - 25) <= 2
    records = load_kinetics(annotations, layout=layout, label_map=None).train
    assert [(destination / r.path).is_file() for r in records] == [True, True, False]


def test_extract_frames_writes_frames_that_the_frames_backend_reads(tmp_path, capsys):
    source, destination = tmp_path / "src", tmp_path / "dst"
    make_video(source / "a" / "v1.mp4")
    make_video(source / "v2.avi", frames=10)
    status, out, _ = run(["extract-frames", source, destination, "--short-side", 24, "--workers", 1], capsys)
    assert status == 0 and "extract-frames: 2 videos done" in out
    for folder, frames in ((destination / "a" / "v1", 24), (destination / "v2", 10)):
        assert sorted(p.name for p in folder.iterdir()) == [f"img_{i:05d}.jpg" for i in range(1, frames + 1)]
        assert read_frames(folder, lambda n: [0, n - 1], backend="frames").shape == (2, 3, 24, 32)
    status, out, _ = run(["extract-frames", source, destination], capsys)
    assert status == 0 and "0 videos done, 2 skipped (already done), 0 failed" in out


def test_a_broken_video_is_reported_and_skipped(tmp_path, capsys):
    source, destination = tmp_path / "src", tmp_path / "dst"
    make_video(source / "good.mp4", frames=6)
    (source / "broken.mp4").write_bytes(b"not a video" * 100)
    (source / "empty.avi").write_bytes(b"")
    status, out, _ = run(["resize", source, destination, "--short-side", 32], capsys)
    assert status == 1
    assert "1 video done, 0 skipped (already done), 2 failed" in out and "broken.mp4: PyAV: " in out
    assert f"all failures: {destination / 'failed_resize.txt'}" in out
    listed = (destination / "failed_resize.txt").read_text().splitlines()
    assert sorted(line.split("\t")[0] for line in listed) == ["broken.mp4", "empty.avi"]
    assert sorted(p.name for p in destination.iterdir()) == ["failed_resize.txt", "good.mp4"]


def test_overlapping_folders_and_bad_options_are_refused_before_any_work(tmp_path, capsys):
    source = tmp_path / "src"
    make_video(source / "v.mp4", frames=6)
    for destination, where in ((source / "out", "is inside"), (source, "is"), (tmp_path, "holds")):
        status, out, err = run(["resize", source, destination, "--short-side", 32], capsys)
        assert status == 2 and err == f"error: destination {destination} {where} the source {source}; " + (
            "write to a folder outside it\n"
        )
    for argv, message in (
        (["resize", source, tmp_path / "dst", "--short-side", 33], "--short-side 33: must be an even number"),
        (["extract-frames", source, tmp_path / "dst", "--quality", 0], "--quality 0: must be 1 to 100"),
        (["resize", tmp_path / "nowhere", tmp_path / "dst", "--short-side", 32], "no such folder"),
        (["resize", source, tmp_path / "dst", "--short-side", 32, "--workers", 0], "--workers 0: must be >= 1"),
    ):
        status, _, err = run(argv, capsys)
        assert status == 2 and err.startswith("error: ") and message in err
    assert sorted(p.name for p in tmp_path.rglob("*")) == ["src", "v.mp4"]


def test_kinetics_jobs_refuse_labels_that_are_not_file_names(tmp_path):
    csv_path = tmp_path / "k.csv"
    csv_path.write_text("label,youtube_id,time_start,time_end\n../up,abc,1,3\n")
    (tmp_path / "src").mkdir()
    with pytest.raises(UserError, match="label '../up' cannot be a file name"):
        kinetics_jobs(tmp_path / "src", tmp_path / "dst", csv_path, "per_label", None)
    jobs, missing = kinetics_jobs(tmp_path / "src", tmp_path / "dst", csv_path, "flat", None)
    assert (jobs, missing) == ([], ["abc"])


def test_the_script_runs_end_to_end_in_a_subprocess(tmp_path):
    source, destination = tmp_path / "src", tmp_path / "dst"
    make_video(source / "v.mp4", frames=6)
    command = [sys.executable, str(REPO / "scripts" / "prepare.py"), "resize", str(source), str(destination)]
    result = subprocess.run([*command, "--short-side", "32"], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("resize: 1 video done, 0 skipped (already done), 0 failed")
    assert probe(destination / "v.mp4")[:2] == (42, 32)
