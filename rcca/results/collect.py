"""Finding training jobs under run folders: their settings, their state and their evaluations.

A training job is a folder with `.hydra/config.yaml` whose `.hydra/hydra.yaml` names the Hydra job `train`
(train.py's runs, single or one of a multirun). Its state:
  * finished: it wrote metrics.json (its final validation);
  * running: a live process holds its run-folder lock (`.rcca.lock`);
  * stopped: last.pt without metrics.json and no live holder: stopped or failed after that checkpoint;
  * failed: neither last.pt nor metrics.json, and no live holder: failed before its first checkpoint.
Its evaluations are its final validation (when finished) and every test.py result of its checkpoints in
`<job>/test/<name>/`, each with the job's settings and the views (`test.num_clips`, `test.num_crops`) that
evaluation used. A folder that cannot be read (a half-written config, an unreadable metrics.json) is reported
as `Skipped`, never raised.
"""

from __future__ import annotations

import errno
import os
import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from rcca.engine.checkpoints import RunCheckpoint, read_checkpoint
from rcca.engine.files import LAST_CHECKPOINT, LOCK_NAME, METRICS_NAME, TEST_FOLDER
from rcca.engine.metrics import read_metrics
from rcca.engine.resuming import flatten
from rcca.errors import UserError
from rcca.progress import count_of

FINISHED, RUNNING, STOPPED, FAILED = "finished", "running", "stopped", "failed"
STATES = (FINISHED, RUNNING, STOPPED, FAILED)
HYDRA_FOLDER = ".hydra"
NOT_SEARCHED = frozenset({HYDRA_FOLDER, ".submitit"})  # Hydra's and submitit's records: never jobs
TRAIN_LOG = "train.log"
VIEW_KEYS = ("test.num_clips", "test.num_crops")  # what a test.py evaluation changes in its job's settings
NO_EXPERIMENT = "(no preset)"  # the experiment of a job whose hydra.yaml records none


@dataclass(frozen=True)
class Evaluation:
    """One result of a job: its final validation or a test.py run of one of its checkpoints.

    Attributes:
        folder: the folder of its metrics.json.
        source: what produced it, e.g. "final validation" or "test.py of best.pt".
        config: the job's flat settings with this evaluation's views.
        top1: video top-1 (%), None if not finite.
        top5: video top-5 (%).
        mean_class_accuracy: mean per-class accuracy (%).
    """

    folder: Path
    source: str
    config: dict[str, Any]
    top1: float | None
    top5: float | None
    mean_class_accuracy: float | None


@dataclass(frozen=True)
class Job:
    """A training job.

    Attributes:
        folder: its run folder.
        experiment: its preset (`hydra.runtime.choices.experiment`).
        choice: its `model=` option, when its preset sweeps one (None otherwise).
        config: its resolved config, flat.
        state: one of `STATES`.
        detail: for an unfinished job, where it stands and where to look (empty when finished).
        evaluations: its results (none for an unfinished job without test.py runs).
    """

    folder: Path
    experiment: str
    choice: str | None
    config: dict[str, Any]
    state: str
    detail: str
    evaluations: tuple[Evaluation, ...]


@dataclass(frozen=True)
class Skipped:
    """A folder that looks like a run but could not be read.

    Attributes:
        folder: the folder.
        reason: one line: what is wrong.
    """

    folder: Path
    reason: str


@dataclass(frozen=True)
class Collection:
    """What `collect` found.

    Attributes:
        jobs: the training jobs, in folder order.
        skipped: the folders that could not be read.
    """

    jobs: tuple[Job, ...]
    skipped: tuple[Skipped, ...]


def collect(folders: Sequence[Path]) -> Collection:
    """Every training job under `folders` (each a multirun folder, a folder of them, or one run folder).

    Args:
        folders: the folders to search.

    Returns:
        The jobs (each once, also when folders overlap) and the folders that could not be read.

    Raises:
        UserError: a folder does not exist, is a file, or holds no job folder at all.
    """
    jobs: dict[Path, Job] = {}
    skipped: dict[Path, Skipped] = {}
    for folder in map(Path, folders):
        if not folder.is_dir():
            raise UserError(f"{folder}: {'not a folder' if folder.exists() else 'no such folder'}")
        found = 0
        for candidate in job_folders(folder):
            try:
                job = read_job(candidate)
            except UserError as error:
                skipped[candidate.resolve()] = Skipped(candidate, str(error))
                found += 1
                continue
            if job is not None:
                jobs.setdefault(candidate.resolve(), job)
                found += 1
        if not found:
            raise UserError(
                f"{folder}: no training jobs under it (folders with .hydra/config.yaml whose Hydra job is train); "
                "pass a run folder of train.py, a multirun folder or a folder of them"
            )
    return Collection(tuple(jobs.values()), tuple(skipped.values()))


def job_folders(root: Path) -> Iterator[Path]:
    """The folders under `root` (itself included) that hold `.hydra/config.yaml`, in natural order.

    Hydra's and submitit's record folders are not searched, nor the `test/` folder of a job (test.py's results,
    read as the job's evaluations).

    Args:
        root: the folder to search.

    Yields:
        The folders, parents before their sub-folders.
    """
    for current, subfolders, _ in os.walk(root):
        here = Path(current)
        is_run = (here / HYDRA_FOLDER / "config.yaml").is_file()
        if is_run:
            yield here
        subfolders[:] = sorted(
            (name for name in subfolders if name not in NOT_SEARCHED and not (is_run and name == TEST_FOLDER)),
            key=natural_key,
        )


def natural_key(name: str) -> list:
    """Sort key that puts numbered names in number order (`2_...` before `10_...`)."""
    return [(0, int(part), "") if part.isdigit() else (1, 0, part) for part in re.split(r"(\d+)", name)]


def read_job(folder: Path) -> Job | None:
    """The training job in a run folder.

    Args:
        folder: a folder holding `.hydra/config.yaml`.

    Returns:
        The job, or None when the folder is another Hydra job's (test.py's results outside a job, say).

    Raises:
        UserError: one line, when its Hydra records, config or metrics cannot be read.
    """
    hydra = _load_yaml(folder / HYDRA_FOLDER / "hydra.yaml")
    if not isinstance(hydra, DictConfig) or OmegaConf.select(hydra, "hydra.job.name") != "train":
        return None
    config = resolved_settings(_load_yaml(folder / HYDRA_FOLDER / "config.yaml"))
    if not config:
        raise UserError(f"{folder / HYDRA_FOLDER / 'config.yaml'}: empty (a job that was just starting?)")
    choices = OmegaConf.select(hydra, "hydra.runtime.choices", default=None) or {}
    state, detail = job_state(folder, config.get("trainer.epochs"))
    evaluations = [_evaluation(folder, config, test_run=False)] if state == FINISHED else []
    evaluations += [_evaluation(run, config, test_run=True) for run in evaluation_runs(folder)]
    return Job(
        folder,
        str(choices.get("experiment") or NO_EXPERIMENT),
        choices.get("model"),
        config,
        state,
        detail,
        tuple(evaluations),
    )


def resolved_settings(cfg: Any) -> dict[str, Any]:
    """A saved job config, resolved and flat.

    Args:
        cfg: the config as loaded (interpolations unresolved).

    Returns:
        {dotted key: value}. A value whose interpolation cannot be resolved (one pointing to a `???` value, in the
        config of a job that stopped at its start) keeps its text; the others are resolved.
    """
    if not isinstance(cfg, DictConfig):
        return {}
    try:
        return flatten(OmegaConf.to_container(cfg, resolve=True))
    except OmegaConfBaseException:
        settings = {}
        for key, text in flatten(OmegaConf.to_container(cfg, resolve=False)).items():
            try:
                value = OmegaConf.select(cfg, key, default=text)
                settings[key] = OmegaConf.to_container(value, resolve=True) if OmegaConf.is_config(value) else value
            except OmegaConfBaseException:
                settings[key] = text
        return settings


def evaluation_runs(folder: Path) -> list[Path]:
    """The folders of a job's finished test.py runs (`<job>/test/<name>/metrics.json`), in natural order."""
    tests = folder / TEST_FOLDER
    runs = sorted(tests.iterdir(), key=lambda path: natural_key(path.name)) if tests.is_dir() else []
    return [run for run in runs if (run / METRICS_NAME).is_file()]


def job_state(folder: Path, epochs: Any) -> tuple[str, str]:
    """A job's state and, unless finished, where it stands (see the module docstring).

    Args:
        folder: the job's run folder.
        epochs: its `trainer.epochs` (for "epoch 3 of 100").

    Returns:
        (one of `STATES`, a line on where it stands and where to look; empty when finished).
    """
    if lock_held(folder):
        return RUNNING, f"running{_position(folder, epochs)}"
    if (folder / METRICS_NAME).is_file():
        return FINISHED, ""
    see = f"see its {TRAIN_LOG}" if (folder / TRAIN_LOG).is_file() else f"it has no {TRAIN_LOG}"
    if (folder / LAST_CHECKPOINT).is_file():
        return STOPPED, f"stopped or failed{_position(folder, epochs)}; {see}"
    return FAILED, f"failed before its first checkpoint; {see}"


def lock_held(folder: Path) -> bool:
    """Whether a live process (another than this one) holds the run-folder lock of `folder`.

    Tests the lock without taking it (`os.lockf(F_TEST)`), so a run starting at that moment is never turned
    away. The lock is a POSIX record lock, which its holder's death drops (see `rcca.engine.files`). Closing
    any descriptor of the file drops this process's own locks on it: never call this in a training process.

    Args:
        folder: a run folder.

    Returns:
        False too when the folder has no lock file.

    Raises:
        UserError: the lock file cannot be opened (its permissions) or its lock tested (a file system
            without POSIX locks, e.g. NFS without its lock daemon).
    """
    try:
        descriptor = os.open(folder / LOCK_NAME, os.O_RDONLY)
    except FileNotFoundError:
        return False
    except OSError as error:
        raise UserError(f"{folder / LOCK_NAME}: cannot tell whether a run holds it ({error.strerror})") from None
    try:
        os.lockf(descriptor, os.F_TEST, 0)
    except OSError as error:
        if error.errno in (errno.EACCES, errno.EAGAIN):
            return True
        raise UserError(f"{folder / LOCK_NAME}: cannot tell whether a run holds it ({error.strerror})") from None
    finally:
        os.close(descriptor)
    return False


def _position(folder: Path, epochs: Any) -> str:
    """ ", at epoch 3 of 100, update 1200 (last.pt)": where last.pt stands, or why it cannot say."""
    path = folder / LAST_CHECKPOINT
    if not path.is_file():
        return ""
    try:
        checkpoint = RunCheckpoint.from_dict(read_checkpoint(path, LAST_CHECKPOINT), str(path))
    except UserError as error:
        return f" ({LAST_CHECKPOINT} unreadable: {error})"
    if checkpoint.training is None:
        return f" ({LAST_CHECKPOINT} holds no training position)"
    position = checkpoint.training.position
    within = f" and {count_of(position.batches_in_epoch, 'batch')} of the next" if position.batches_in_epoch else ""
    of = f" of {epochs}" if epochs is not None else ""
    return f", at epoch {position.epoch}{of}{within}, update {position.step} ({LAST_CHECKPOINT})"


def _evaluation(folder: Path, job_config: dict[str, Any], test_run: bool) -> Evaluation:
    """The evaluation whose metrics.json is in `folder`: the job's final validation, or a `test_run` of test.py,
    whose views (recorded in its metrics) replace the job's."""
    metrics = read_metrics(folder / METRICS_NAME)
    config = dict(job_config)
    source = "final validation"
    if test_run:
        for key in VIEW_KEYS:
            config[key] = metrics.get(key.rpartition(".")[2], config.get(key))
        clips, crops = (config.get(key) for key in VIEW_KEYS)
        source = f"test.py of {Path(str(metrics.get('checkpoint', '?'))).name}, {clips} clips x {crops} crops"
    return Evaluation(
        folder, source, config, metrics.get("top1"), metrics.get("top5"), metrics.get("mean_class_accuracy")
    )


def _load_yaml(path: Path) -> Any:
    """A YAML record of Hydra's, unresolved; UserError naming it when missing or unreadable."""
    if not path.is_file():
        raise UserError(f"{path}: missing (a half-written or copied run folder?)")
    try:
        return OmegaConf.load(path)
    except Exception as error:  # YAML syntax errors, unreadable files: OmegaConf raises many kinds
        raise UserError(f"{path}: unreadable ({_first_line(error)})") from None


def _first_line(error: BaseException) -> str:
    """The first line of an error's message."""
    return (str(error).strip().splitlines() or [type(error).__name__])[0]
