"""Shared test helpers: running the entry points on a tiny synthetic set."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

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
