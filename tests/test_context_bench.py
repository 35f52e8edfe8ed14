"""scripts/context_bench.py end to end at a tiny size: one run per module and seed through train.py, then the
table of the modules' top-1 over seeds, checked against each run's own metrics.json and a direct parameter
count. The benchmark's figures themselves come from the full script, recorded in the README."""

from __future__ import annotations

import json
import re
import statistics
from pathlib import Path

import pytest
from conftest import run_entry

from rcca.config import BackboneConfig, ModuleConfig
from rcca.models.build import build_model
from rcca.models.complexity import count_parameters

TINY = [
    "dataset.synthetic.num_train=4", "dataset.synthetic.num_test=2", "dataset.synthetic.size=32",
    "backbone.width=8", "trainer.epochs=1", "trainer.batch_size=2", "trainer.effective_batch_size=2",
    "trainer.num_workers=0", "data.crop_size=32", "test.resize_short=32",
]  # fmt: skip


@pytest.fixture(scope="module")
def bench(tmp_path_factory) -> tuple[Path, str]:
    """The script's output for modules rcca and none (the baseline named first, against folder order), seeds 0
    and 1, and its results folder."""
    out = tmp_path_factory.mktemp("bench")
    overrides = [f"results_dir={out / 'results'}", f"data.cache_dir={out / 'data'}", *TINY]
    result = run_entry("scripts/context_bench.py", "modules=rcca,none", "seeds=0,1", *overrides, timeout=600)
    return out / "results" / "context_bench", result.stdout


def test_every_module_and_seed_runs_once_into_the_presets_folder(bench) -> None:
    sweep, stdout = bench
    folders = [p.name for p in sweep.iterdir() if p.is_dir()]  # named by the overrides, sorted by key
    runs = sorted(re.search(r"(?:^|,)module=(\w+),seed=(\d)(?:,|$)", name).groups() for name in folders)
    assert runs == [("none", "0"), ("none", "1"), ("rcca", "0"), ("rcca", "1")]
    assert len(re.findall(r"^run \d/4 module=\w+ seed=\d: top-1 [\d.]+ in [\d.]+ min", stdout, re.MULTILINE)) == 4


def test_the_table_holds_each_modules_mean_over_its_runs(bench) -> None:
    sweep, stdout = bench
    results = json.loads(stdout.strip().splitlines()[-1])
    assert [row["module"] for row in results["rows"]] == ["rcca", "none"]
    for row in results["rows"]:
        top1 = [json.loads(next(sweep.glob(f"*module={row['module']},seed={s},*/metrics.json")).read_text())["top1"]
                for s in (0, 1)]  # fmt: skip
        assert row["seeds"] == [0, 1] and row["top1"] == pytest.approx(top1)
        assert row["mean"] == pytest.approx(statistics.fmean(top1), abs=0.01)
        assert row["std"] == pytest.approx(statistics.stdev(top1), abs=0.01) and len(row["seconds"]) == 2
        positions = ["conv3_1"] if row["module"] != "none" else []
        model = build_model(BackboneConfig(depth=18, width=8, num_frames=20),
                            ModuleConfig(name=row["module"], positions=positions), 2)  # fmt: skip
        assert row["params_m"] == pytest.approx(count_parameters(model) / 1e6, abs=1e-3)
        assert re.search(rf"^\| {row['module']} \| {row['mean']:.1f} ± {row['std']:.1f} \| ", stdout, re.MULTILINE)
    assert re.search(r"^none - rcca: [+-][\d.]+ points of mean top-1$", stdout, re.MULTILINE)


@pytest.mark.parametrize(
    ("arguments", "error"),
    [
        (["preset=context_gamma"], "preset=context_gamma sweeps module.gamma_init=0.0,0.5,1.0; the benchmark makes "
         "one row per module: pin it to one value, e.g. module.gamma_init=0.0"),
        (["trainer.epochs=1,2"], "trainer.epochs=1,2: a sweep; the benchmark runs one job per module and seed, give "
         "one value"),
    ],
)  # fmt: skip
def test_several_jobs_per_run_are_refused_before_any_run(arguments: list[str], error: str, tmp_path: Path) -> None:
    result = run_entry("scripts/context_bench.py", f"results_dir={tmp_path}", *arguments, check=False)
    assert result.returncode == 2 and result.stderr.strip() == f"error: {error}"
    assert list(tmp_path.iterdir()) == []


def test_an_existing_results_folder_is_refused_before_any_run(bench) -> None:
    sweep, _ = bench
    before = sorted(sweep.rglob("*"))
    result = run_entry("scripts/context_bench.py", f"results_dir={sweep.parent}", "modules=nl", check=False)
    assert result.returncode == 2 and result.stdout == ""
    assert result.stderr.strip().splitlines()[-1] == (
        f"error: {sweep} exists: its finished runs would only be validated again; set results_dir=<a new folder>"
    )
    assert sorted(sweep.rglob("*")) == before
