"""Shared test helpers: running the entry points on a tiny synthetic set."""

from __future__ import annotations

import itertools
import os
import subprocess
import sys
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

if TYPE_CHECKING:
    from torch import Tensor

REPO = Path(__file__).resolve().parents[1]

TINY = [
    "dataset.synthetic.num_train=32",
    "dataset.synthetic.num_test=16",
    "dataset.synthetic.frames=12",
    "trainer.batch_size=4",
    "trainer.effective_batch_size=8",
    "test.batch_size=4",
]


def run_entry(
    script: str, *overrides: str, timeout: float = 300, check: bool = True, cwd: Path = REPO, env: dict | None = None
) -> subprocess.CompletedProcess:
    """Run train.py / test.py / a script in a subprocess, from the repository root unless `cwd` is given
    (rcca itself is imported as installed: requirements.txt installs it editable).

    Runs with no DataLoader workers unless the overrides set trainer.num_workers.
    """
    if not any(o.startswith("trainer.num_workers=") for o in overrides) and script == "train.py":
        overrides = (*overrides, "trainer.num_workers=0")
    env = {**os.environ, "OMP_NUM_THREADS": "2", **(env or {})}
    result = subprocess.run(
        [sys.executable, str(REPO / script), *overrides],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=timeout,
        env=env,
    )
    if check and result.returncode != 0:
        raise AssertionError(
            f"{script} failed ({result.returncode}):\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}"
        )
    return result


def start_training(*overrides: str, stderr: int = subprocess.DEVNULL, new_session: bool = False) -> subprocess.Popen:
    """Start train.py in the background from the repository root (stdout discarded), for tests that signal
    or kill it; `new_session` puts it in its own process group, as a job under a scheduler."""
    return subprocess.Popen(
        [sys.executable, str(REPO / "train.py"), *overrides],
        cwd=REPO,
        env={**os.environ, "OMP_NUM_THREADS": "2"},
        stdout=subprocess.DEVNULL,
        stderr=stderr,
        text=True,
        start_new_session=new_session,
    )


def load_script(name: str):
    """scripts/<name>.py as a module, so that a test runs its `main(argv)` in this process."""
    import importlib.util

    spec = importlib.util.spec_from_file_location(f"{name}_script", REPO / "scripts" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses of the script look their module up there
    spec.loader.exec_module(module)
    return module


class WritesMarker:
    """Unpickling an instance runs `Path(marker).write_text("code ran")`: what a malicious checkpoint does."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return Path.write_text, (Path(self.marker), "code ran")


def save_malicious_checkpoint(path: Path, marker: Path, **entries) -> None:
    """A checkpoint (with `entries`) whose unpickling would create `marker`."""
    import torch

    torch.save({**entries, "payload": WritesMarker(marker)}, path)


@pytest.fixture(scope="session")
def synthetic_cache(tmp_path_factory) -> Path:
    """One cache folder for the tiny synthetic set, shared by the tests of a session."""
    return tmp_path_factory.mktemp("cache")


# An untrained checkpoint's model: TSM ResNet-18 at width 8 with RCCA-3D (the quick-start's), 64-pixel crops, 8 frames.
TINY_MODEL = ["backbone.width=8", "data.crop_size=64", "test.resize_short=64", "trainer.device=cpu"]
TINY_CLASSES = [f"action {index}" for index in range(8)]


def save_tiny_checkpoint(path: Path, *overrides: str) -> Path:
    """An untrained run checkpoint of the tiny model (with `overrides`), as the trainer writes one, with
    `TINY_CLASSES` as its class names."""
    import torch
    from omegaconf import OmegaConf

    from rcca.config import compose_config
    from rcca.engine.checkpoints import RunCheckpoint
    from rcca.models.build import build_model

    cfg = compose_config([*TINY_MODEL, *overrides])
    torch.manual_seed(0)
    model = build_model(cfg.backbone, cfg.module, cfg.dataset.num_classes)
    path.parent.mkdir(parents=True, exist_ok=True)
    RunCheckpoint(model.state_dict(), OmegaConf.to_container(cfg, resolve=True), TINY_CLASSES).save(path)
    return path


def write_square_video(path: Path, frames: int = 16) -> Path:
    """`frames` frames of 80 x 96 (MPEG-4): a red square moving right, a green square still."""
    import av
    import numpy as np

    pixels = np.zeros((frames, 80, 96, 3), np.uint8)
    for t in range(frames):
        pixels[t, 10:40, 5 + 4 * t : 35 + 4 * t] = (220, 60, 30)
        pixels[t, 50:70, 60:80] = (30, 200, 60)
    path.parent.mkdir(parents=True, exist_ok=True)
    with av.open(str(path), mode="w") as container:
        stream = container.add_stream("mpeg4", rate=12)
        stream.width, stream.height, stream.pix_fmt = 96, 80, "yuv420p"
        for frame in pixels:
            container.mux(stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")))
        container.mux(stream.encode())
    return path


def dense_line_weights(weights: Tensor) -> Tensor:
    """Line weights N x T x H x W x (T + H + W) (columns as in `line_attention`) spread over all positions:
    N x THW x THW, row = query, column = the position it weighs (a weight of the query's own position on
    several lines is summed)."""
    n, t, h, w, _ = weights.shape
    dense = weights.new_zeros(n, t, h, w, t, h, w)
    for i, j, k in itertools.product(range(t), range(h), range(w)):
        row = weights[:, i, j, k]
        dense[:, i, j, k, :, j, k] += row[:, :t]
        dense[:, i, j, k, i, :, k] += row[:, t : t + h]
        dense[:, i, j, k, i, j, :] += row[:, t + h :]
    return dense.reshape(n, t * h * w, t * h * w)


@pytest.fixture(params=["compiled", "aten"])
def line_kernels(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """Runs a test with each implementation of CCA-3D's line sums on the CPU: the compiled kernel and the ATen path."""
    from rcca.models.compiled import KERNELS_VARIABLE, cpu_kernels

    monkeypatch.setenv(KERNELS_VARIABLE, request.param)
    cpu_kernels.cache_clear()
    if request.param == "compiled" and cpu_kernels() is None:
        pytest.skip("the CPU kernels cannot be built here (test_compiled_kernels tells why)")
    yield request.param
    cpu_kernels.cache_clear()
