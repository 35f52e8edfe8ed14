"""scripts/plot.py and rcca.results.curves: real TensorBoard event files read back, drawn, and refused when bad."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest
from conftest import REPO
from PIL import Image
from torch.utils.tensorboard import SummaryWriter

from rcca.errors import UserError
from rcca.results.curves import (
    RunCurves,
    Series,
    draw_curves,
    event_files,
    panel_tags,
    read_runs,
    run_label,
)

NL, RCCA, WAITING = "0_module=nl,dataset.split=2", "1_module=rcca,dataset.split=2", "10_module=none,dataset.split=2"
GAMMA = "gamma/backbone.layer2.3.context.gamma"
# tab10's first three colours: the runs of a sweep, in folder order.
BLUE, ORANGE, GREEN = (31, 119, 180), (255, 127, 14), (44, 160, 44)


def load_script():
    spec = importlib.util.spec_from_file_location("plot_script", REPO / "scripts" / "plot.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def write_events(run: Path, scalars: dict[str, list[tuple[int, float]]], wall_time: float) -> None:
    """One event file in `<run>/tensorboard/`, as the trainer writes it: (step, value) points per tag, the i-th
    point of a tag written at `wall_time + i` seconds (no points: the file a run opens at its start)."""
    writer = SummaryWriter(str(run / "tensorboard"))
    for tag, points in scalars.items():
        for index, (step, value) in enumerate(points):
            writer.add_scalar(tag, value, step, walltime=wall_time + index)
    writer.close()


def write_sweep(sweep: Path) -> None:
    """A multirun folder: a non-local job, an RCCA-3D job, a job without scalars yet, Hydra's record."""
    (sweep / "multirun.yaml").parent.mkdir(parents=True)
    (sweep / "multirun.yaml").write_text("hydra: {}\n")
    (sweep / NL / ".hydra").mkdir(parents=True)
    losses = [(10, 2.5), (20, 2.0), (30, 1.5)]
    write_events(
        sweep / NL, {"train/loss": losses, "train/top1": [(10, 10.0), (30, 25.0)], "val/top1": [(30, 20.0)]}, 1e9
    )
    write_events(
        sweep / RCCA,
        {"train/loss": losses, "train/lr": [(10, 0.5), (30, 0.25)], GAMMA: [(10, 0.125)], "val/top1": [(30, 22.5)]},
        1e9,
    )
    write_events(sweep / WAITING, {}, 1e9)


def test_a_resumed_runs_files_merge_with_the_later_write_of_each_step(tmp_path):
    run = tmp_path / "run"
    write_events(run, {"train/loss": [(10, 2.5), (20, 2.25), (30, 2.0)], "val/top1": [(20, 10.0), (30, 12.5)]}, 1e9)
    # Resumed from the checkpoint of update 20: updates 30 and on are logged again, later, in a second file.
    write_events(run, {"train/loss": [(30, 1.75), (40, 1.5)], "val/top1": [(30, 15.0), (40, 7.5)]}, 2e9)
    writer = SummaryWriter(str(run / "tensorboard"))  # two writes of one step at one wall time: the later one wins
    writer.add_scalar(GAMMA, 0.25, 40, walltime=3e9)
    writer.add_scalar(GAMMA, 0.5, 40, walltime=3e9)
    writer.add_hparams({"module": "rcca"}, {"hparam/top1": 15.0}, run_name=".")  # a fourth file, as train.py's
    writer.close()
    assert len(event_files(run)) == 4
    (curves,) = read_runs(run)
    assert curves.folder == run and curves.label == "run" and curves.logged and curves.last_step == 40
    assert curves.scalars["train/loss"] == Series((10, 20, 30, 40), (2.5, 2.25, 1.75, 1.5))
    assert curves.scalars["val/top1"] == Series((20, 30, 40), (10.0, 15.0, 7.5))
    assert curves.scalars[GAMMA] == Series((40,), (0.5,))
    assert panel_tags("top1", curves.scalars) == ["val/top1"] and panel_tags("gamma", curves.scalars) == [GAMMA]


def test_a_sweep_is_one_line_per_job_named_by_its_folder(tmp_path, capsys):
    sweep = tmp_path / "multirun" / "2024-05-01" / "12-00-00"
    write_sweep(sweep)
    runs = read_runs(sweep)
    assert [run.label for run in runs] == [
        "module=nl,dataset.split=2",
        "module=rcca,dataset.split=2",
        "module=none,dataset.split=2",
    ]
    assert [run.logged for run in runs] == [True, True, False] and runs[2].scalars == {}
    assert runs[1].scalars["train/lr"] == Series((10, 30), (0.5, 0.25))
    load_script().main([str(sweep)])
    lines = capsys.readouterr().out.splitlines()
    assert lines == [
        "module=nl,dataset.split=2: logged up to update 30; val top-1 last 20.00% (update 30), best 20.00% (update 30)",
        "module=rcca,dataset.split=2: logged up to update 30; "
        "val top-1 last 22.50% (update 30), best 22.50% (update 30)",
        f"module=none,dataset.split=2: no scalars yet (see {sweep / WAITING / 'train.log'})",
        f"plotted 2 runs (1 without scalars yet) up to update 30, loss, top1, lr, gamma: {sweep / 'curves.png'}",
    ]
    with Image.open(sweep / "curves.png") as image:
        assert image.format == "PNG"
        # 2 x 2 panels of 480 x 300, the title's 30 pixels above, the legend below: 12 + 18 a drawn run.
        assert image.size == (960, 30 + 600 + 12 + 2 * 18)
        colours = {colour for _, colour in image.convert("RGB").getcolors(maxcolors=1 << 20)}
    assert BLUE in colours and ORANGE in colours and GREEN not in colours  # the job without scalars is not drawn


def test_labels_keep_the_sweep_folder_and_names_without_a_job_number(tmp_path):
    assert run_label(tmp_path / "table4" / "3_module.recurrence=3", tmp_path) == "table4/module.recurrence=3"
    assert run_label(tmp_path / "module=nl", tmp_path) == "module=nl"  # a preset's subdir: the overrides alone
    assert run_label(tmp_path / "12-30-05", tmp_path / "12-30-05") == "12-30-05"


def test_an_existing_output_is_kept_unless_overwrite(tmp_path, capsys):
    sweep = tmp_path / "sweep"
    write_sweep(sweep)
    script = load_script()
    output = tmp_path / "figures" / "gamma.png"
    script.main([str(sweep), "--panels", "top1", "gamma", "--output", str(output)])
    assert capsys.readouterr().out.splitlines()[-1].endswith(f"top1, gamma: {output}")
    with Image.open(output) as image:
        assert image.size == (960, 30 + 300 + 12 + 2 * 18)
    output.write_bytes(b"the user's file")
    with pytest.raises(SystemExit) as exit_info:
        script.main([str(sweep), "--output", str(output)])
    error = capsys.readouterr().err
    assert exit_info.value.code == 2 and error.count("\n") == 1
    assert error.startswith(f"error: {output}: exists; replace it with --overwrite")
    assert output.read_bytes() == b"the user's file"
    script.main([str(sweep), "--output", str(output), "--overwrite", "--panels", "lr"])
    with Image.open(output) as image:
        assert image.size == (480, 30 + 300 + 12 + 2 * 18)
    assert sorted(path.name for path in output.parent.iterdir()) == ["gamma.png"]  # no temporary file left


@pytest.mark.parametrize(
    ("folder", "message"),
    [
        ("nowhere", "{tmp}/nowhere: no such folder"),
        ("empty", "{tmp}/empty: no run under it (no tensorboard/events.out.tfevents.* file)"),
        ("started", "{tmp}/started/0_lr=0.1: no scalars logged yet"),
        ("started/0_lr=0.1", "{tmp}/started/0_lr=0.1: no scalars logged yet"),
        ("waiting", "{tmp}/waiting: none of its 2 runs has scalars logged yet"),
    ],
)
def test_bad_folders_are_one_line_errors_naming_them(tmp_path, capsys, folder, message):
    (tmp_path / "empty" / "0_lr=0.1" / ".hydra").mkdir(parents=True)  # a job that failed before its writer
    write_events(tmp_path / "started" / "0_lr=0.1", {}, 1e9)
    for job in ("0_lr=0.1", "1_lr=0.2"):
        write_events(tmp_path / "waiting" / job, {"train/clips_per_s": [(10, 3.0)]}, 1e9)  # no panel draws it
    with pytest.raises(SystemExit) as exit_info:
        load_script().main([str(tmp_path / folder)])
    error = capsys.readouterr().err
    assert exit_info.value.code == 2 and error.count("\n") == 1
    assert error.startswith(f"error: {message.format(tmp=tmp_path)}")


def test_drawing_needs_known_panels_and_names_the_missing_extra(monkeypatch):
    run = RunCurves(Path("run"), "run", {"train/loss": Series((1,), (2.0,))})
    with pytest.raises(ValueError, match="unknown panel 'accuracy'"):
        draw_curves([run], ["loss", "accuracy"], "run")
    with pytest.raises(ValueError, match="no panel"):
        draw_curves([run], [], "run")
    monkeypatch.setitem(sys.modules, "matplotlib.backends.backend_agg", None)
    with pytest.raises(UserError, match=r'pip install "rcca\[plot\]"'):
        draw_curves([run], ["loss"], "run")
