"""Running where decord cannot be imported: backend decord reads with PyAV and warns once per process.

decord is made unimportable with `sys.modules["decord"] = None` (then `import decord` raises
ImportError, as on a machine without its wheel): with monkeypatch inside this process, and
before rcca is imported in a fresh interpreter that also starts DataLoader workers.
"""

from __future__ import annotations

import logging
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import REPO
from torchvision.io import decode_jpeg, read_file, write_jpeg

from rcca.data import decoding
from rcca.data.annotations import VideoRecord
from rcca.data.datasets import VideoDataset
from rcca.data.decoding import FRAME_TEMPLATE, read_frames, read_frames_pyav
from rcca.data.synthetic import SyntheticSpec, ensure_synthetic_dataset

SPEC = SyntheticSpec(num_train=6, num_test=0, frames=8, size=32)
WARNING = "decord cannot be imported"


@pytest.fixture(scope="module")
def videos(tmp_path_factory) -> tuple[Path, list[VideoRecord]]:
    """A small synthetic set: its folder and its training records."""
    folder = ensure_synthetic_dataset(tmp_path_factory.mktemp("cache"), SPEC, progress=False)
    lines = (folder / "train.txt").read_text().splitlines()
    return folder, [VideoRecord(path, int(label)) for path, label in (line.split() for line in lines)]


@pytest.fixture
def without_decord(monkeypatch):
    """`import decord` fails for the test; the cached answer of `decord_available` is dropped before and after."""
    monkeypatch.setitem(sys.modules, "decord", None)
    decoding.decord_available.cache_clear()
    yield
    decoding.decord_available.cache_clear()


def first_and_last(num_frames: int) -> list[int]:
    """Index chooser: the first and the last frame."""
    return [0, num_frames - 1]


def warnings_about_decord(caplog) -> list[logging.LogRecord]:
    """The captured log records saying that decord cannot be imported."""
    return [record for record in caplog.records if WARNING in record.getMessage()]


def test_backend_decord_reads_every_video_with_pyav_and_warns_once(videos, without_decord, caplog) -> None:
    folder, records = videos
    caplog.set_level(logging.WARNING, logger="rcca.data.decoding")
    for record in records:
        clip = read_frames(folder / record.path, first_and_last, backend="decord")
        assert torch.equal(clip, read_frames_pyav(folder / record.path, first_and_last))
    dataset = VideoDataset(folder, records, "decord", lambda n, rng: [0, n // 2], lambda clip: clip)
    assert dataset.backend == "pyav"
    assert all(dataset[i]["ok"] and dataset[i]["clip"].shape == (2, 3, 32, 32) for i in range(len(dataset)))
    found = warnings_about_decord(caplog)
    assert len(found) == 1 and found[0].levelno == logging.WARNING, [r.getMessage() for r in caplog.records]
    assert "PyAV" in found[0].getMessage() and "dataset.backend=pyav" in found[0].getMessage()


def test_backends_pyav_and_frames_never_ask_for_decord(videos, without_decord, caplog, tmp_path) -> None:
    folder, records = videos
    caplog.set_level(logging.DEBUG)
    expected = read_frames_pyav(folder / records[0].path, lambda n: list(range(n)))
    for t, frame in enumerate(expected):
        write_jpeg(frame, str(tmp_path / FRAME_TEMPLATE.format(t + 1)), quality=100)
    by_pyav = read_frames(folder / records[0].path, first_and_last, backend="pyav")
    by_frames = read_frames(tmp_path, first_and_last, backend="frames")
    assert torch.equal(by_pyav, expected[[0, -1]])
    jpegs = [decode_jpeg(read_file(str(tmp_path / FRAME_TEMPLATE.format(t)))) for t in (1, len(expected))]
    assert torch.equal(by_frames, torch.stack(jpegs))
    for backend in ("pyav", "frames"):
        assert VideoDataset(folder, records, backend, lambda n, rng: [0], lambda clip: clip).backend == backend
    assert decoding.decord_available.cache_info().misses == 0  # decord was never tried
    assert not warnings_about_decord(caplog)


CHILD = """
import logging, sys
sys.modules["decord"] = None  # before anything imports rcca (spawned workers run this too)
from pathlib import Path
from torch.utils.data import DataLoader
from rcca.data.annotations import VideoRecord
from rcca.data.datasets import VideoDataset
from rcca.data.transforms import build_train_transform


def choose(num_frames, rng):
    return sorted(rng.integers(0, num_frames, 4).tolist())


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(processName)s %(levelname)s %(message)s")
    folder = Path(sys.argv[1])
    lines = (folder / "train.txt").read_text().splitlines()
    records = [VideoRecord(path, int(label)) for path, label in (line.split() for line in lines)]
    dataset = VideoDataset(folder, records, "decord", choose, build_train_transform(24, (1.0, 0.875), flip=True))
    loader = DataLoader(dataset, batch_size=2, num_workers=2, multiprocessing_context=sys.argv[2])
    for batch in loader:
        assert batch["ok"].all() and batch["clip"].shape == (2, 3, 4, 24, 24), batch["clip"].shape
    print("read", len(dataset), "clips")
"""


@pytest.mark.parametrize("start_method", ["fork", "spawn"])  # spawn: macOS's default, where ARM Macs lack decord
def test_a_run_without_decord_warns_once_with_workers(videos, start_method: str, tmp_path: Path) -> None:
    """A fresh process without decord: one epoch through a DataLoader with two workers, one warning."""
    folder, records = videos
    script = tmp_path / "run_without_decord.py"
    script.write_text(CHILD)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    result = subprocess.run(
        [sys.executable, str(script), str(folder), start_method],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
        cwd=REPO,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.strip() == f"read {len(records)} clips"
    warnings = [line for line in result.stderr.splitlines() if WARNING in line]
    assert len(warnings) == 1 and warnings[0].startswith("MainProcess WARNING"), result.stderr[-3000:]


def test_decord_is_used_where_it_imports(videos) -> None:
    """The fallback is only for a missing decord: where it imports, backend decord stays decord."""
    pytest.importorskip("decord")
    decoding.decord_available.cache_clear()
    folder, records = videos
    assert decoding.resolve_backend("decord") == "decord"
    assert VideoDataset(folder, records, "decord", lambda n, rng: [0], lambda clip: clip).backend == "decord"
    assert read_frames(folder / records[0].path, first_and_last, "decord").shape == (2, 3, 32, 32)
