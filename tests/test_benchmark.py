"""scripts/benchmark.py: the training subcommand, on the CPU at a toy size."""

from __future__ import annotations

import contextlib
import json
import os
import time
from pathlib import Path

import pytest
from conftest import load_script, run_entry


def test_training_reports_clips_per_second_and_epoch_hours() -> None:
    # One thread: on a shared 2-core machine a 2-thread step of the tiny model takes seconds, not ~0.5 s.
    result = run_entry(
        "scripts/benchmark.py",
        *("training", "--rows", "tsm_rcca", "--batch", "1", "--size", "32", "--steps", "1", "--warmup", "0"),
        *("--device", "cpu", "--threads", "1"),
        timeout=120,
    )
    summary = json.loads(result.stdout.strip().splitlines()[-1])
    assert summary["device"] == "cpu, 1 thread(s)"
    assert summary["torch"]
    assert (summary["amp"], summary["batch"], summary["size"], summary["steps"], summary["warmup"]) == (
        "off",
        1,
        32,
        1,
        0,
    )
    (row,) = summary["results"]
    assert (row["row"], row["backbone"], row["frames"]) == ("tsm_rcca", "tsm", 8)
    assert 24 < row["params_m"] < 26  # TSM ResNet-50 (24.3M with 400 classes) + one RCCA-3D at conv3_3
    assert row["clips_per_s"] > 0
    assert row["ms_per_step"] > 0
    assert row["peak_gib"] is None  # GPU only
    assert row["vs_plain"] is None  # the plain tsm row was not measured
    assert set(summary["train_videos"]) == {"UCF101 split 1", "HMDB51 split 1", "Mini-Kinetics-200", "Kinetics-400"}
    hours = summary["epoch_hours"]["rows"]["tsm_rcca"]
    assert hours["Kinetics-400"] == pytest.approx(summary["train_videos"]["Kinetics-400"] / row["clips_per_s"] / 3600)
    assert "lower bound" in result.stdout


def test_modules_reports_every_efficiency_figure() -> None:
    """The modules subcommand at a smoke size: every row, the scaling table and ratios computed from the rows."""
    result = run_entry(
        "scripts/benchmark.py",
        *("modules", "--shrink", "8", "--threads", "1", "--repeats", "1", "--warmup", "0", "--busy", "1", "--no-runs"),
        *("--device", "cpu"),
        timeout=300,
    )
    summary = json.loads(result.stdout.strip().splitlines()[-1])
    rows = {(r["site"], r["module"]): r for r in summary["results"]}
    modules = {"RCCA3D(R=3)", "RCCA3D(memory_efficient)", "q,k,v convs x3", "NonLocal3D", "NonLocal3D(subsample)"}
    assert set(rows) == {(site, module) for site in ("conv3_3", "conv4_5") for module in modules}
    assert rows["conv3_3", "RCCA3D(R=3)"]["input_shape"] == [1, 64, 8, 3, 3]  # 512 channels and 28 px, shrunk by 8
    for site in ("conv3_3", "conv4_5"):
        rcca, nl = rows[site, "RCCA3D(R=3)"], rows[site, "NonLocal3D"]
        assert rows[site, "RCCA3D(memory_efficient)"]["saved_mib"] < rcca["saved_mib"]
        ratios = summary["ratios"]
        assert ratios[f"{site}: time, RCCA-3D / its q, k, v convolutions"] == pytest.approx(
            rcca["time_ms"] / rows[site, "q,k,v convs x3"]["time_ms"]
        )
        assert ratios[f"{site}: saved for backward, RCCA-3D / non-local"] == pytest.approx(
            rcca["saved_mib"] / nl["saved_mib"]
        )
        assert ratios[f"{site}: peak memory, RCCA-3D / non-local"] == pytest.approx(rcca["peak_mib"] / nl["peak_mib"])
        slowdown = summary["busy_slowdown"][site]
        assert ratios[f"{site}: slowdown when busy, RCCA-3D / non-local"] == pytest.approx(
            slowdown["RCCA3D(R=3)"] / slowdown["NonLocal3D"]
        )
    scaling = [(r["site"], r["module"]) for r in summary["scaling"]]
    assert [site for site, _ in scaling[::2]] == ["8x2x2", "8x3x3", "16x3x3", "8x7x7"]
    assert all(r["time_ms"] > 0 and r["saved_mib"] > 0 for r in summary["scaling"])
    assert "target <= 1.5" in result.stdout and len(summary["load_average"]) == 2
    assert "profiler_start" not in result.stderr  # the CPU profiler's own log lines are silenced


def cpu_ticks(pid: int) -> int:
    """User + system clock ticks the process `pid` has used (/proc/<pid>/stat)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return int(fields[11]) + int(fields[12])  # utime, stime (fields 14 and 15 of stat)


def test_busy_processes_spin_only_while_running_and_are_gone_after() -> None:
    """The busy figure alternates paused and running spinners: paused ones must take no CPU time."""
    benchmark = load_script("benchmark")
    children = Path(f"/proc/{os.getpid()}/task/{os.getpid()}/children")
    others = set(children.read_text().split())  # e.g. children of earlier tests still alive
    with benchmark.busy_processes(2) as set_running:
        pids = [int(pid) for pid in set(children.read_text().split()) - others]
        assert len(pids) == 2
        set_running(False)
        time.sleep(0.1)
        before = [cpu_ticks(pid) for pid in pids]
        time.sleep(0.5)
        assert [cpu_ticks(pid) for pid in pids] == before  # stopped: not one tick
        set_running(True)
        time.sleep(0.5)
        assert all(cpu_ticks(pid) > ticks for pid, ticks in zip(pids, before, strict=True))
    assert not any(Path(f"/proc/{pid}").exists() for pid in pids)


class RecordingStep:
    """A step that records its calls (with the busy processes' state when `state` is given) and sleeps
    `busy_seconds` when that state is running."""

    def __init__(self, name: str, calls: list, state: dict | None = None, busy_seconds: float = 0.0) -> None:
        self.name, self.calls, self.state, self.busy_seconds = name, calls, state, busy_seconds

    def clear(self) -> None:
        pass

    def __call__(self) -> None:
        running = None if self.state is None else self.state["running"]
        self.calls.append(self.name if running is None else (self.name, running))
        if running:
            time.sleep(self.busy_seconds)


def test_median_times_runs_each_step_once_a_round_in_reverse_every_other_round() -> None:
    benchmark = load_script("benchmark")
    calls: list = []
    steps = {name: RecordingStep(name, calls) for name in "abc"}
    seconds = benchmark.median_times(steps, benchmark.torch.device("cpu"), 1, 2)
    assert calls == [*"abc", *"cba", *"abc"]  # one warm-up round, then two timed ones
    assert list(seconds) == list("abc") and all(value >= 0 for value in seconds.values())


def test_busy_times_times_each_pass_with_the_processes_paused_and_running(monkeypatch) -> None:
    """Each pass runs with the busy processes in the state its figure says, and the figures come back
    as (paused, running): here a pass is 20 ms slower while they run."""
    benchmark = load_script("benchmark")
    calls: list = []
    state = {"running": None}

    @contextlib.contextmanager
    def fake_busy_processes(count: int):
        assert count == 2
        yield lambda running: state.update(running=running)

    monkeypatch.setattr(benchmark, "busy_processes", fake_busy_processes)
    monkeypatch.setattr(benchmark, "module_pass", lambda name, *_: RecordingStep(name, calls, state, busy_seconds=0.02))
    compared = [benchmark.ModuleResult("conv3_3", name, [1, 8, 2, 4, 4], None, None, None) for name in ("m1", "m2")]
    times = benchmark.busy_times(compared, benchmark.torch.device("cpu"), 2, (0, 3))
    assert set(times) == {("conv3_3", "m1"), ("conv3_3", "m2")}
    for paused, running in times.values():
        assert running > paused + 0.015
    # every pass ran once per round in each state, paused ones first in the first round
    assert sorted(calls) == sorted(3 * [("m1", False), ("m2", False), ("m1", True), ("m2", True)])
    assert calls[:4] == [("m1", False), ("m2", False), ("m1", True), ("m2", True)]
