"""scripts/collect.py and rcca.results: job folders made from real configs, laid out as the paper's tables."""

from __future__ import annotations

import csv
import functools
import importlib.util
import io
import json
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import REPO
from omegaconf import OmegaConf

from rcca.config import compose_config
from rcca.engine.checkpoints import RunCheckpoint, TrainingPosition, TrainingState
from rcca.engine.metrics import read_metrics, write_metrics
from rcca.errors import UserError
from rcca.results.collect import FAILED, FINISHED, RUNNING, STOPPED, collect
from rcca.results.costs import CostCounter
from rcca.results.paper import matches, paper_tables
from rcca.results.report import markdown
from rcca.results.tables import Table, build_tables

UCF = ["experiment=paper_tsm", "dataset=ucf101", "module=rcca"]  # TSM-R50 + RCCA-3D at conv3_3 on UCF101
# The paper's numbers, typed from its tables (not read from paper.yaml): Table IV, R = 1..4, and the TSM row.
TABLE4_TOP1 = {1: 84.91, 2: 85.73, 3: 86.81, 4: 85.78}
TSM_UCF101 = 85.01


@functools.cache
def composed(overrides: tuple[str, ...]) -> str:
    """The config train.py would save for these overrides, as .hydra/config.yaml text (interpolations kept)."""
    return OmegaConf.to_yaml(compose_config(list(overrides)))


def make_job(folder: Path, experiment: str, overrides: list[str], top1: float | None = None, model: str = "") -> Path:
    """A train.py job folder: its saved config and Hydra record (preset `experiment`, `model` option), and a
    metrics.json when `top1` is given (top-5 99%, mean class accuracy top-1 - 1)."""
    (folder / ".hydra").mkdir(parents=True)
    (folder / ".hydra" / "config.yaml").write_text(composed(tuple(overrides)))
    choices = {"experiment": experiment, **({"model": model} if model else {})}
    OmegaConf.save({"hydra": {"job": {"name": "train"}, "runtime": {"choices": choices}}}, folder / ".hydra/hydra.yaml")
    if top1 is not None:
        write_metrics(folder / "metrics.json", {"top1": top1, "top5": 99.0, "mean_class_accuracy": top1 - 1})
    return folder


def add_test_run(job: Path, name: str, top1: float, num_clips: int, num_crops: int) -> Path:
    """A test.py result of the job's best.pt in `<job>/test/<name>/`, with its own Hydra record (job name test)."""
    run = job / "test" / name
    (run / ".hydra").mkdir(parents=True)
    OmegaConf.save({"hydra": {"job": {"name": "test"}}}, run / ".hydra" / "hydra.yaml")
    (run / ".hydra" / "config.yaml").write_text(composed(("experiment=paper_tsm",)))  # test.py's own composition
    metrics = {"top1": top1, "top5": 99.0, "mean_class_accuracy": top1, "checkpoint": str(job / "best.pt")}
    write_metrics(run / "metrics.json", {**metrics, "num_clips": num_clips, "num_crops": num_crops})
    return run


def tables_of(*folders: Path, cost_of=None) -> dict[str, Table]:
    """The tables collected from `folders`, by paper id (or preset, for the others)."""
    tables = build_tables(collect(list(folders)).jobs, paper_tables(), cost_of)
    return {table.id or table.experiment: table for table in tables}


def column(table: Table, label: str) -> int:
    """The index of a column of `table`."""
    return table.columns.index(label)


def load_script():
    """scripts/collect.py as a module (its `main` runs in this process)."""
    spec = importlib.util.spec_from_file_location("collect_script", REPO / "scripts" / "collect.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_paper_tables_and_the_match_rule():
    tables = {table.id: table for table in paper_tables()}
    assert list(tables) == ["I", "II", "III", "IV", "V", "VI", "VII", "VIII", "IX", "X"]
    assert tables["IX"].columns[3].mean_of == ("UCF101 S1", "UCF101 S2", "UCF101 S3")
    assert tables["IX"].row_experiment(tables["IX"].rows[2]) == "table6_nl_vs_rcca"
    assert all(len(row.top1) == len(table.columns) for table in tables.values() for row in table.rows)
    assert matches({"module.gamma_init": 0.0}, {"module.gamma_init": 0, "module.name": "rcca"})
    assert matches({"module.positions": ["conv3_3"]}, {"module.positions": ["conv3_3"]})
    assert not matches({"module.positions": ["conv3_3"]}, {"module.positions": ["conv3_3", "conv4_5"]})
    assert not matches({"dataset.split": 1}, {"dataset.name": "ucf101"})  # a key the config lacks
    assert not matches({"module.subsample": True}, {"module.subsample": 1})  # booleans only equal booleans


PAPER_FILE = """\
tables:
  - id: T
    title: a table
    experiment: e
    fields: [module.name]
    columns:
      - {label: S1, match: {dataset.split: 1}}
      - {label: S2, match: {dataset.split: 2}}
      - {label: Avg, mean_of: [S1, S2]}
    rows:
      - {model: TSM, match: {module.name: none}, top1: [85.0, 84.0, 84.5]}
"""


@pytest.mark.parametrize(
    ("old", "new", "message"),
    [
        ("top1: [85.0, 84.0, 84.5]", "top1: [85.0]", "table 1 (T), row 1 (TSM): `top1` has 1 values for 3 columns"),
        ("mean_of: [S1, S2]", "mean_of: [S1, S9]", "column Avg: mean_of names ['S9'], not one of ['S1', 'S2']"),
        ("{model: TSM,", "{modle: TSM,", "table 1 (T), row 1: unknown keys ['modle']"),
        ("{label: S2, match", "{label: S2, mean_of: [S1], match", "column 2 (S2): give either `match` or `mean_of`"),
    ],
)
def test_a_paper_file_of_the_wrong_shape_is_refused_with_the_place(tmp_path, old, new, message):
    path = tmp_path / "paper.yaml"
    path.write_text(PAPER_FILE)
    assert paper_tables(path)[0].columns[2].mean_of == ("S1", "S2")
    path = tmp_path / "bad.yaml"
    path.write_text(PAPER_FILE.replace(old, new))
    with pytest.raises(ValueError) as error:
        paper_tables(path)
    assert str(error.value).startswith(f"{path}: ") and message in str(error.value)


def test_read_metrics_names_an_unreadable_file(tmp_path):
    path = tmp_path / "metrics.json"
    path.write_text('{"top1": 8')  # cut short
    with pytest.raises(UserError, match=r"metrics.json: not a readable metrics.json"):
        read_metrics(path)
    write_metrics(path, {"top1": float("nan")})
    assert read_metrics(path) == {"top1": None}


def test_a_recurrence_sweep_fills_table_iv_in_the_papers_order(tmp_path):
    sweep = tmp_path / "table4_recurrence"
    ours = {4: 85.0, 2: 86.1, 1: 84.0, 3: 87.3, 5: 83.2}  # folder order differs from the paper's row order
    for number, (recurrence, top1) in enumerate(ours.items()):
        make_job(
            sweep / f"{number}_R={recurrence}", "table4_recurrence", [*UCF, f"module.recurrence={recurrence}"], top1
        )
    make_job(sweep / "5_smoke", "table4_recurrence", ["experiment=paper_tsm", "module=rcca"], 40.0)  # synthetic set
    baseline = ["experiment=paper_tsm", "dataset=ucf101", "module=none"]
    make_job(tmp_path / "table6" / "0_model=tsm", "table6_nl_vs_rcca", baseline, 84.5, model="tsm")
    table = tables_of(sweep, tmp_path / "table6")["IV"]
    assert table.columns == ("UCF101", "synthetic")  # the smoke run's set: an extra column, no paper value
    ucf, synthetic = column(table, "UCF101"), column(table, "synthetic")
    models = [(row.model, row.fields["module.recurrence"]) for row in table.rows]
    assert models == [
        ("TSM", ""),
        ("TSM + RCCA", "1"),
        ("TSM + RCCA", "2"),
        ("TSM + RCCA", "3"),
        ("TSM + RCCA", "4"),
        ("module.recurrence=5", "5"),
    ]
    assert table.rows[0].cells[ucf].top1 == 84.5 and table.rows[0].experiment == "table6_nl_vs_rcca"
    assert table.rows[0].cells[ucf].difference == pytest.approx(84.5 - TSM_UCF101)
    for row in table.rows[1:5]:
        recurrence = int(row.fields["module.recurrence"])
        cell = row.cells[ucf]
        assert (cell.top1, cell.paper, cell.n) == (ours[recurrence], TABLE4_TOP1[recurrence], 1)
        assert cell.difference == pytest.approx(ours[recurrence] - TABLE4_TOP1[recurrence])
        assert cell.top5 == 99.0 and cell.mean_class_accuracy == ours[recurrence] - 1
    assert table.rows[3].cells[synthetic].top1 == 40.0 and table.rows[3].cells[synthetic].paper is None
    assert not table.rows[5].in_paper and table.rows[5].cells[ucf].paper is None
    assert table.rows[2].paper_flops == 43.9 and table.rows[2].paper_params == 24.69
    assert len(table.jobs) == 7 and table.parent == tmp_path
    assert "I" not in tables_of(tmp_path / "table6")  # Table VI's jobs alone do not make Tables I-V


def test_a_structure_sweep_keeps_one_row_per_structure(tmp_path):
    ours = {"a": 86.0, "b": 85.0, "c": 84.0, "d": 83.0}
    for number, (structure, top1) in enumerate(ours.items()):
        make_job(tmp_path / f"{number}", "table1_structures", [*UCF, f"module.structure={structure}"], top1)
    table = tables_of(tmp_path)["I"]
    rows = [(row.fields["module.structure"], row.cells[0].top1, row.cells[0].paper) for row in table.rows[1:]]
    assert rows == [("a", 86.0, 86.81), ("b", 85.0, 85.46), ("c", 84.0, 85.30), ("d", 83.0, 84.99)]
    assert table.rows[0].folders == ()  # the TSM row of Table VI's jobs: not passed, listed empty


def test_splits_and_seeds_are_averaged_with_their_count(tmp_path):
    table6 = tmp_path / "table6_nl_vs_rcca"
    ours = {("ucf101", 1): 86.0, ("ucf101", 2): 85.0, ("ucf101", 3): 87.0, ("hmdb51", 1): 52.0}
    for number, ((dataset, split), top1) in enumerate(ours.items()):
        overrides = ["experiment=paper_tsm", f"dataset={dataset}", "module=rcca", f"dataset.split={split}"]
        make_job(table6 / f"{number}", "table6_nl_vs_rcca", overrides, top1, model="tsm_rcca")
    table4 = tmp_path / "table4"
    for seed, top1 in [(0, 86.0), (1, 87.0)]:
        make_job(table4 / f"seed{seed}", "table4_recurrence", [*UCF, f"seed={seed}"], top1)
    tables = tables_of(table6, table4)
    assert {job.choice for job in collect([table6]).jobs} == {"tsm_rcca"}  # the preset's `model=` option

    cell = tables["VI"].rows[2].cells[column(tables["VI"], "UCF101")]  # TSM+RCCA*1: split 1, as the paper
    assert (cell.n, cell.top1, cell.paper) == (1, 86.0, 86.81)
    other = tables["VI"].rows[2].cells[column(tables["VI"], "ucf101")]  # the other splits: beside, averaged
    assert (other.n, other.top1, other.low, other.high) == (2, pytest.approx(86.0), 85.0, 87.0)
    assert other.varied == ("dataset.split=2,3",) and other.paper is None
    hmdb = tables["VI"].rows[2].cells[column(tables["VI"], "HMDB51")]
    assert (hmdb.n, hmdb.top1, hmdb.paper) == (1, 52.0, 52.55)

    imagenet = tables["IX"].rows[2]  # Table IX's ImageNet row: Table VI's jobs, split by split, then averaged
    values = {label: imagenet.cells[index].top1 for index, label in enumerate(tables["IX"].columns)}
    assert values == {
        **{"UCF101 S1": 86.0, "UCF101 S2": 85.0, "UCF101 S3": 87.0, "UCF101 Avg": pytest.approx(86.0)},
        **{"HMDB51 S1": 52.0, "HMDB51 S2": None, "HMDB51 S3": None, "HMDB51 Avg": None},  # mean of all three only
    }
    average = imagenet.cells[column(tables["IX"], "UCF101 Avg")]
    assert average.n == 3 and average.difference == pytest.approx(86.0 - 86.3)
    assert tables["IX"].rows[0].folders == ()  # Table IX's own rows: no jobs of table9_10_finetune passed

    seeds = tables["IV"].rows[3].cells[0]  # R = 3, seeds 0 and 1
    assert (seeds.n, seeds.top1, seeds.varied) == (2, pytest.approx(86.5), ("seed=0,1",))
    assert seeds.difference == pytest.approx(86.5 - TABLE4_TOP1[3])
    assert "UCF101: mean of 2 (seed=0,1), top-1 range 86.00-87.00" in "\n".join(tables["IV"].notes)


def test_test_runs_fill_the_columns_of_their_views(tmp_path):
    job = make_job(
        tmp_path / "0", "table9_10_kinetics", ["experiment=paper_tsm", "dataset=kinetics400", "module=rcca"], 71.0
    )
    add_test_run(job, "best-2026-01-01_10-00-00-1", 73.2, num_clips=10, num_crops=10)
    table = tables_of(tmp_path)["X"]
    row = table.rows[1]
    assert [(cell.column, cell.top1, cell.paper) for cell in row.cells] == [
        ("1-crop", 71.0, 71.6),
        ("10-crop", 73.2, 73.6),
    ]
    assert [row.folders for row in table.rows] == [(), (job, job / "test" / "best-2026-01-01_10-00-00-1")]


def test_same_settings_are_flagged_not_merged(tmp_path):
    make_job(tmp_path / "first", "table4_recurrence", [*UCF, "module.recurrence=2"], 85.0)
    make_job(tmp_path / "again", "table4_recurrence", [*UCF, "module.recurrence=2", "trainer.num_workers=3"], 86.0)
    table = tables_of(tmp_path)["IV"]
    rows = [row for row in table.rows if row.fields["module.recurrence"] == "2"]
    assert [(row.cells[0].top1, row.cells[0].n, row.duplicate) for row in rows] == [(86.0, 1, True), (85.0, 1, True)]
    (note,) = [note for note in table.notes if "same settings" in note]
    assert note == (
        "TSM + RCCA, UCF101: 2 evaluations with the same settings, each in its own row (not averaged): again, first"
    )
    assert "duplicate settings" in markdown(collect([tmp_path]), [table])


def test_unfinished_jobs_are_listed_with_their_state(tmp_path):
    overrides = [*UCF, "module.recurrence=1"]
    make_job(tmp_path / "0_done", "table4_recurrence", overrides, 84.0)
    running = make_job(tmp_path / "1_running", "table4_recurrence", overrides)
    stopped = make_job(tmp_path / "2_stopped", "table4_recurrence", [*UCF, "module.recurrence=2"])
    (stopped / "train.log").write_text("epoch 3\n")
    position = TrainingPosition(epoch=3, batches_in_epoch=5, step=40)
    RunCheckpoint({}, {}, None, TrainingState({}, {}, {}, position, {})).save(stopped / "last.pt")
    failed = make_job(tmp_path / "3_failed", "table4_recurrence", [*UCF, "module.recurrence=4"])
    code = (  # another process holds the lock (closing any descriptor of the file would drop this one's own)
        "import sys; from pathlib import Path; from rcca.engine.files import RunFolderLock; "
        "lock = RunFolderLock(Path(sys.argv[1]), fresh=True, overwrite=False); lock.acquire(); "
        "print('held', flush=True); sys.stdin.read()"
    )
    holder = subprocess.Popen(
        [sys.executable, "-c", code, str(running)], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    )
    try:
        assert holder.stdout.readline().strip() == "held"
        collection = collect([tmp_path])
    finally:
        holder.stdin.close()
        holder.wait(timeout=30)
    states = {job.folder.name: (job.state, job.detail) for job in collection.jobs}
    assert states["0_done"] == (FINISHED, "")
    assert states["1_running"][0] == RUNNING
    assert states["2_stopped"] == (
        STOPPED,
        "stopped or failed, at epoch 3 of 100 and 5 batches of the next, update 40 (last.pt); see its train.log",
    )
    assert states["3_failed"] == (FAILED, "failed before its first checkpoint; it has no train.log")
    after = {job.folder.name: job.state for job in collect([tmp_path]).jobs}
    assert after["1_running"] == FAILED  # its holder is gone: the lock file left behind does not count
    (table,) = [table for table in build_tables(collection.jobs, paper_tables(), None) if table.id == "IV"]
    unfinished = {row.fields["module.recurrence"]: [job.folder for job in row.unfinished] for row in table.rows[1:]}
    assert unfinished == {"1": [running], "2": [stopped], "3": [], "4": [failed]}
    assert table.rows[1].cells[0].top1 == 84.0 and table.rows[2].cells[0].top1 is None
    text = markdown(collection, [table])
    assert "| 1 running |" in text and "- stopped: TSM + RCCA: 2_stopped: stopped or failed, at epoch 3" in text
    assert text.splitlines()[-1] == "collected 4 jobs in 1 table: 1 finished, 1 running, 1 stopped, 1 failed"


def test_another_preset_gets_a_table_of_what_differs(tmp_path):
    for number, recurrence in enumerate([1, 2]):
        for seed in (0, 1):
            overrides = ["experiment=quickstart", f"module.recurrence={recurrence}", f"seed={seed}"]
            make_job(tmp_path / f"{number}_{seed}", "quickstart", overrides, 50.0 + 10 * recurrence + seed)
    table = tables_of(tmp_path)["quickstart"]
    assert table.id is None and table.fields == ("module.recurrence",) and table.columns == ("synthetic",)
    assert [(row.model, row.fields, row.cells[0].top1, row.cells[0].n) for row in table.rows] == [
        ("TSM-R18 + RCCA (conv3_1)", {"module.recurrence": "1"}, 60.5, 2),
        ("TSM-R18 + RCCA (conv3_1)", {"module.recurrence": "2"}, 70.5, 2),
    ]


def test_half_written_folders_are_reported_not_raised(tmp_path):
    make_job(tmp_path / "good", "table4_recurrence", UCF, 86.0)
    broken = make_job(tmp_path / "broken", "table4_recurrence", UCF)
    (broken / "metrics.json").write_text('{"top1": ')
    started = tmp_path / "started" / ".hydra"
    started.mkdir(parents=True)
    (started / "config.yaml").write_text(composed(tuple(UCF)))  # hydra.yaml not written yet
    unresolved = make_job(tmp_path / "unresolved", "table4_recurrence", UCF)  # stopped at its start
    config = unresolved / ".hydra" / "config.yaml"
    config.write_text(config.read_text().replace("init_from: null", "init_from: ${imagenet.nowhere}"))
    collection = collect([tmp_path])
    assert [(job.folder.name, job.state) for job in collection.jobs] == [("good", FINISHED), ("unresolved", FAILED)]
    assert collection.jobs[1].config["init_from"] == "${imagenet.nowhere}"  # kept as text, the rest resolved
    assert collection.jobs[1].config["dataset.name"] == "ucf101"
    reasons = {item.folder.name: item.reason for item in collection.skipped}
    assert "not a readable metrics.json" in reasons["broken"] and "hydra.yaml: missing" in reasons["started"]
    tables = build_tables(collection.jobs, paper_tables(), None)
    lines = markdown(collection, tables).splitlines()
    assert "## Not collected" in lines
    assert lines[-1] == "collected 2 jobs in 1 table: 1 finished, 1 failed; 2 folders not readable"


def test_cli_prints_csv_and_json_and_refuses_bad_folders(tmp_path, capsys):
    sweep = tmp_path / "sweep"
    for number, recurrence in enumerate([1, 3]):
        make_job(sweep / str(number), "table4_recurrence", [*UCF, f"module.recurrence={recurrence}"], 85.0 + number)
    script = load_script()
    script.main([str(sweep), "--no-complexity", "--format", "csv"])
    lines = list(csv.DictReader(io.StringIO(capsys.readouterr().out)))
    assert len(lines) == 5  # Table IV's 5 rows x 1 column
    r3 = [line for line in lines if line["fields"] == "module.recurrence=3"]
    assert r3[0]["table"] == "IV" and float(r3[0]["top1"]) == 86.0 and float(r3[0]["paper_top1"]) == 86.81
    assert r3[0]["folders"] == str(sweep / "1")
    script.main([str(sweep), "--no-complexity", "--format", "json"])
    data = json.loads(capsys.readouterr().out)
    assert [table["id"] for table in data["tables"]] == ["IV"] and len(data["jobs"]) == 2
    assert data["tables"][0]["rows"][3]["cells"][0]["top1"] == 86.0 and data["jobs"][1]["state"] == "finished"
    assert data["summary"] == "collected 2 jobs in 1 table: 2 finished"
    for folder, message in [
        (tmp_path / "nowhere", "no such folder"),
        (tmp_path / "sweep" / "0" / ".hydra", "no training jobs under it"),
    ]:
        with pytest.raises(SystemExit) as exit_info:
            script.main([str(folder), "--no-complexity"])
        error = capsys.readouterr().err
        assert exit_info.value.code == 2 and error.count("\n") == 1
        assert error.startswith(f"error: {folder}: {message}")


def test_table4_cost_of_tsm_with_rcca_at_conv3_3_is_the_papers(tmp_path):
    make_job(tmp_path / "0", "table4_recurrence", UCF, 86.0)
    table = tables_of(tmp_path, cost_of=CostCounter())["IV"]
    row = table.rows[3]  # R = 3, C_d = 1/4 at conv3_3: the paper's 24.69M and 49.3G
    assert row.cost.params == pytest.approx(24.69, rel=0.005) and row.paper_params == 24.69
    assert row.cost.flops == pytest.approx(49.3, rel=0.01) and row.paper_flops == 49.3
    assert row.cost.gmacs == pytest.approx(49.3 - 8.15, rel=0.01)  # the module's 8.15 GMACs counted once
    assert table.rows[0].cost is None  # no jobs, nothing counted
