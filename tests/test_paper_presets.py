"""The table presets (experiment=table*) against the paper's numbers in rcca/results/paper.yaml: every
preset composes, its sweep has exactly the rows of its table, its models have the paper's parameter
counts, and every sweep runs end to end in smoke mode through scripts/collect.py."""

from __future__ import annotations

import itertools
import json
import os
import subprocess
import sys
from functools import cache
from pathlib import Path

import pytest
from conftest import REPO, run_entry
from hydra import compose, initialize_config_dir
from hydra.core.override_parser.overrides_parser import OverridesParser
from omegaconf import OmegaConf
from test_readme import readme_commands

from rcca.config import CONFIG_DIR, compose_config, register_configs, validate_config
from rcca.engine.resuming import flatten
from rcca.errors import UserError
from rcca.models.build import build_model
from rcca.models.complexity import count_parameters
from rcca.results.costs import CostCounter
from rcca.results.paper import matches, paper_tables

TABLES = paper_tables()
PRESETS = sorted({table.experiment for table in TABLES})
# What a real command line gives (paths are not read when composing).
PATHS = [
    "dataset.root=/data",
    "dataset.annotations=/data/splits",
    "imagenet.resnet50=/w/r50.pth",
    "imagenet.mfnet=/w/mf.pth",
]


def sweep_overrides(preset: str, extra: tuple[str, ...]) -> list[tuple[str, ...]]:
    """The override lists of the jobs `python train.py -m experiment=<preset> *extra` launches."""
    register_configs()
    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base=None):
        cfg = compose(config_name="config", overrides=[f"experiment={preset}", *extra], return_hydra_config=True)
    params = OmegaConf.to_container(cfg.hydra.sweeper.params) or {}
    given = {override.split("=")[0] for override in extra}
    axes = []
    for override in OverridesParser.create().parse_overrides([f"{k}={v}" for k, v in params.items() if k not in given]):
        values = (
            list(override.sweep_string_iterator())
            if override.is_sweep_override()
            else [override.get_value_element_as_str()]
        )
        axes.append([f"{override.key_or_group}={value}" for value in values])
    return [tuple(combination) for combination in itertools.product(*axes)]


@cache
def sweep_configs(preset: str, extra: tuple[str, ...] = (), paths: bool = True) -> list[dict]:
    """The flattened, resolved, validated configs of the preset's sweep jobs (`paths`: with PATHS)."""
    configs = []
    for job in sweep_overrides(preset, extra):
        cfg = compose_config([f"experiment={preset}", *(PATHS if paths else []), *extra, *job])
        validate_config(cfg)
        configs.append(flatten(OmegaConf.to_container(cfg, resolve=True)))
    return configs


def datasets_of(table) -> list[str]:
    """The dataset options a table's columns need (one command per dataset)."""
    names = [column.match.get("dataset.name") for column in table.columns if column.match]
    return sorted({name for name in names if name})


def jobs_of(table, experiment: str) -> list[dict]:
    """Every job config of `experiment`'s sweeps for the datasets of `table`'s columns."""
    extra_splits = ("dataset.split=1,2,3",) if table.id == "IX" and experiment != table.experiment else ()
    jobs = []
    for dataset in datasets_of(table):
        extra = (f"dataset={dataset}",)
        if extra_splits:  # Table IX's ImageNet row: Table VI's sweep on the three splits
            jobs += [
                job for split in (1, 2, 3) for job in sweep_configs(experiment, (*extra, f"dataset.split={split}"))
            ]
        else:
            jobs += sweep_configs(experiment, extra)
    return jobs


@pytest.mark.parametrize("table", TABLES, ids=[table.id for table in TABLES])
def test_preset_sweep_has_the_rows_of_its_table(table) -> None:
    own = jobs_of(table, table.experiment)
    assert own, f"Table {table.id}: experiment={table.experiment} launches no job"
    own_rows = [row for row in table.rows if (row.experiment or table.experiment) == table.experiment]
    for job in own:
        matched = [row.model for row in own_rows if matches(row.match, job)]
        assert len(matched) == 1, f"Table {table.id}: a job of the sweep fills {matched or 'no row'}"
    for row in table.rows:
        experiment = row.experiment or table.experiment
        assert any(matches(row.match, job) for job in jobs_of(table, experiment)), (
            f"Table {table.id}: row {row.model} {row.match} is in no job of experiment={experiment}"
        )
    for column in table.columns:
        view_keys = {key for key in column.match if key.startswith("test.")} if column.match else set()
        if column.match and not any(matches(column.match, job) for job in own):
            # Table X's 10-crop column comes from test.py on the trained checkpoints (the preset says so)
            assert view_keys, f"Table {table.id}: no job of the sweep fills column {column.label}"


@pytest.mark.parametrize("table", [t for t in TABLES if any(r.params for r in t.rows)], ids=lambda t: t.id)
def test_preset_models_have_the_papers_parameter_counts(table) -> None:
    """Param column: the model each row's jobs build, with the paper's 400-class classifier, within 0.5%."""
    for row in table.rows:
        if row.params is None:
            continue
        job = next(job for job in jobs_of(table, row.experiment or table.experiment) if matches(row.match, job))
        backbone = OmegaConf.create({k.split(".", 1)[1]: v for k, v in job.items() if k.startswith("backbone.")})
        module = OmegaConf.create({k.split(".", 1)[1]: v for k, v in job.items() if k.startswith("module.")})
        params = count_parameters(build_model(backbone, module, 400)) / 1e6
        assert params == pytest.approx(row.params, rel=0.005), f"Table {table.id} {row.model} {row.match}"


def test_smoke_mode_keeps_the_model_and_the_sweep() -> None:
    full = sweep_configs("table6_nl_vs_rcca", ("dataset=ucf101",))
    smoke = sweep_configs("table6_nl_vs_rcca", ("+debug=smoke",), paths=False)
    assert len(smoke) == len(full) == 8
    for real, tiny in zip(full, smoke):
        kept = [k for k in real if k.startswith(("backbone.", "module.", "optimizer.", "schedule.", "test.num_"))]
        kept = [k for k in kept if k not in ("backbone.pretrained", "backbone.width")]
        assert {k: tiny[k] for k in kept} == {k: real[k] for k in kept}
        assert tiny["dataset.name"] == "synthetic" and tiny["data.crop_size"] == 32 and tiny["trainer.epochs"] == 1
        assert tiny["backbone.pretrained"] is None and tiny["results_dir"] == "outputs/smoke"
        assert tiny["backbone.width"] == 8  # TSM's width (MF-Net ignores the key)


def test_collector_counts_the_papers_parameters_and_flops() -> None:
    """Table VI's eight models (every backbone and module kind of the presets) at full size, counted as
    scripts/collect.py counts them: parameters within 0.5% of the paper's, FLOPs within 1%."""
    (table,) = [table for table in TABLES if table.id == "VI"]
    jobs = jobs_of(table, table.experiment)
    count = CostCounter()
    for row in table.rows:
        cost = count(next(job for job in jobs if matches(row.match, job)))
        assert cost.params == pytest.approx(row.params, rel=0.005), row.model
        assert cost.flops == pytest.approx(row.flops, rel=0.01), row.model


# Overrides of the README's commands that point at real data: left out in smoke mode (the synthetic set).
REAL_DATA_KEYS = {"dataset", "dataset.root", "dataset.annotations", "imagenet.resnet50", "imagenet.mfnet"}
# Arguments added to the README's training benchmark in smoke mode: one step of each row at a toy size.
BENCHMARK_SMOKE = ("--batch", "1", "--size", "32", "--steps", "1", "--warmup", "0", "--threads", "1")


def readme_smoke_commands() -> list[list[str]]:
    """The commands of the README's "Reproducing the paper" section, in order, as smoke runs: train.py
    sweeps without their data overrides and with +debug=smoke (the UCF101 and HMDB51 commands of a table
    then coincide: kept once), test.py on outputs/smoke instead of outputs/paper, the training benchmark
    at a toy size (one step of each row at 32 x 32; its figures are tests/test_benchmark.py's)."""
    text = (REPO / "README.md").read_text()
    section = text.index("## Reproducing the paper")
    first = text[:section].count("\n") + 1
    last = text[: text.index("\n## ", section)].count("\n") + 1
    commands: list[list[str]] = []
    for command in readme_commands(text, []):
        if not first <= command.line <= last or "--cfg" in command.args:
            continue  # another section, or a command that only prints the config
        args = [arg.replace("outputs/paper", "outputs/smoke") for arg in command.args]
        if command.script == "train.py":
            args = [arg for arg in args if arg.split("=")[0] not in REAL_DATA_KEYS]
            args += [] if "+debug=smoke" in args else ["+debug=smoke"]
        elif command.script == "scripts/benchmark.py":
            args += [*BENCHMARK_SMOKE]
        run = [command.script, *args]
        if run not in commands:
            commands.append(run)
    return commands


def test_the_readme_runs_every_table_preset() -> None:
    commands = readme_smoke_commands()
    presets = {arg.split("=")[1] for command in commands for arg in command if arg.startswith("experiment=")}
    assert presets == set(PRESETS)


@pytest.fixture(scope="module")
def smoke_results(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The README's commands for every table, run in smoke mode in a fresh folder, in README order (a
    preset that starts from another's checkpoints runs after it); returns outputs/smoke. (Two lanes at
    once, one thread each, took longer on 2 cores than one lane with two threads.)"""
    folder = tmp_path_factory.mktemp("paper")
    for script, *args in readme_smoke_commands():
        result = subprocess.run(
            [sys.executable, str(REPO / script), *args],
            cwd=folder,
            capture_output=True,
            text=True,
            timeout=900,
            env={**os.environ, "OMP_NUM_THREADS": "2"},
        )
        assert result.returncode == 0, f"{script} {' '.join(args)}:\n{result.stderr[-3000:]}"
    return folder / "outputs" / "smoke"


def test_every_table_runs_in_smoke_mode_and_is_collected(smoke_results: Path) -> None:
    result = run_entry("scripts/collect.py", str(smoke_results), "--format", "json", "--no-complexity", timeout=300)
    collected = json.loads(result.stdout)
    assert [table["id"] for table in collected["tables"]] == [table.id for table in TABLES]
    jobs = collected["jobs"]
    assert jobs and all(job["state"] == "finished" for job in jobs), [j for j in jobs if j["state"] != "finished"]
    for table, paper in zip(collected["tables"], TABLES):
        rows = [row for row in table["rows"] if row["in_paper"]]
        # the paper's rows in its order, each once, or more where its jobs were also tested with other views
        # (Table X's test.py runs), each with the paper's values and a smoke result
        position = 0
        for paper_row in paper.rows:
            start = position
            while position < len(rows) and rows[position]["model"] == paper_row.model:
                cells = {cell["column"]: cell for cell in rows[position]["cells"]}
                if [cells[column.label]["paper_top1"] for column in paper.columns] != list(paper_row.top1):
                    break
                position += 1
            group = [{cell["column"]: cell for cell in row["cells"]} for row in rows[start:position]]
            assert group, f"Table {table['id']}: row {paper_row.model} {paper_row.match} is missing or misplaced"
            assert any(cells["synthetic"]["n"] >= 1 for cells in group), f"Table {table['id']} {paper_row.model}"
        assert position == len(rows), f"Table {table['id']}: rows after the paper's: {rows[position:]}"
    markdown = run_entry("scripts/collect.py", str(smoke_results / "table4_recurrence"), "--no-complexity").stdout
    assert "## Table IV" in markdown and "| UCF101 paper |" in markdown and "84.91" in markdown


@pytest.mark.parametrize(
    "overrides, key",
    [
        (["experiment=table1_structures"], "imagenet.resnet50"),
        (["experiment=table9_10_kinetics"], "imagenet.resnet50"),
        (["experiment=table6_nl_vs_rcca", "model=tsm_nl_x5"], "imagenet.resnet50"),
        (["experiment=table6_nl_vs_rcca", "model=mfnet_rcca_x5"], "imagenet.mfnet"),
    ],
)
def test_presets_refuse_to_start_without_their_imagenet_file(overrides: list[str], key: str) -> None:
    """Without the file the preset starts from, the run stops at start with the key to set (it would
    otherwise train from random weights); fine-tuning and smoke runs need none."""
    data = ["dataset.root=/data", "dataset.annotations=/data/splits"]
    with pytest.raises(UserError, match=f"^{key} is not set: .* set {key}=<"):
        validate_config(compose_config([*overrides, *data]))
    validate_config(compose_config([*overrides, *data, f"{key}=/w/file.pth"]))
    validate_config(compose_config([*overrides, "+debug=smoke"]))
    validate_config(compose_config(["experiment=table9_10_finetune", *data]))
