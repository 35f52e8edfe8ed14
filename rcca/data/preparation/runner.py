"""Running one preparation job per video in worker processes, resumably: what `scripts/prepare.py` verbs share.

A verb (resize, trim-kinetics, extract-frames) makes a list of `Job`s, each naming its final output (a file, or a
folder of frames) under the destination folder, and `run_jobs` does them:

  * resume: an output that exists under its final name is complete and is skipped, so a run that stopped
    (killed, interrupted, a full disk) goes on where it stopped when started again;
  * all or nothing: a job writes to a temporary name beside its output, `.<name>.tmp-<pid>` (pid: the process
    running `run_jobs`), renamed to the final name (`os.replace`) only once the job has finished; a job that
    fails has its temporary removed, and temporaries left by a run that died (its pid no longer running) are
    removed by the next run; nothing else is ever deleted;
  * failures: a job that raises `JobFailed` (an unreadable video) is reported and the run goes on; so is a worker
    process that dies (a decoder crash), blaming the jobs it and the other workers were doing; any other
    exception is a bug: the run stops with it, after removing the temporaries of the jobs in progress;
  * parallel: `workers` processes, forked (they start at once and inherit nothing to import), one job each at a
    time; a progress bar on a terminal, plain log lines otherwise (`rcca.progress.track`);
  * a summary (`RunSummary.lines`): done, skipped because already done, failed with the first reasons, and the
    file listing every failure, `<destination>/failed_<verb>.txt`.
"""

from __future__ import annotations

import logging
import multiprocessing
import os
import re
import resource
import shutil
from collections import defaultdict
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass, field
from pathlib import Path

from rcca.engine.files import write_atomically
from rcca.data.annotations import VIDEO_SUFFIXES
from rcca.errors import UserError
from rcca.progress import count_of, track

log = logging.getLogger(__name__)

TEMPORARY = re.compile(r"\.(?P<name>.+)\.tmp-(?P<pid>\d+)")  # a job's output being written by process <pid>
SHOWN = 5  # failures listed in the summary
WORKER_DIED = "the worker process died (a decoder crash?) while on this job or on another one in progress"


class JobFailed(Exception):
    """A job that cannot be done because of its input (an unreadable video): reported, and the run goes on."""


@dataclass(frozen=True)
class Job:
    """One output to make.

    Attributes:
        name: what reports call the job: the source's path relative to the source folder, or a clip's name.
        output: the final path of what the job writes: a file, or a folder.
        work: writes the output at the path it is given (a temporary name beside `output`, which does not
            exist yet); raises `JobFailed` for a bad input. Run in a worker process: picklable (a module-level
            function, or a `functools.partial` of one).
    """

    name: str
    output: Path
    work: Callable[[Path], None]


@dataclass
class RunSummary:
    """What `run_jobs` did.

    Attributes:
        verb: the verb that ran ("resize").
        unit: what one job makes, singular ("video", "clip").
        done: jobs done by this run.
        skipped: jobs whose output existed already.
        failed: the reason of each failed job, by job name, in the order they failed.
        failure_list: the file listing every failure, or None when none failed.
    """

    verb: str
    unit: str
    done: int = 0
    skipped: int = 0
    failed: dict[str, str] = field(default_factory=dict)
    failure_list: Path | None = None

    def lines(self) -> list[str]:
        """The summary for people: a count line, then the first failures and where all of them are listed.

        Returns:
            E.g. ["resize: 7 videos done, 2 skipped (already done), 1 failed", "  a/b.mp4: PyAV: ...",
            "  all failures: dst/failed_resize.txt"].
        """
        counts = f"{self.verb}: {count_of(self.done, self.unit)} done, {self.skipped} skipped (already done)"
        lines = [f"{counts}, {len(self.failed)} failed"]
        lines += [f"  {name}: {reason}" for name, reason in list(self.failed.items())[:SHOWN]]
        if len(self.failed) > SHOWN:
            lines.append(f"  ... and {len(self.failed) - SHOWN} more")
        if self.failure_list is not None:
            lines.append(f"  all failures: {self.failure_list}")
        return lines


def find_videos(folder: Path) -> list[Path]:
    """The videos under `folder`, in sub-folders too, by file suffix (`VIDEO_SUFFIXES`, any case); names
    starting with "." are skipped at every level (temporaries, macOS `._clip.avi` files, `.git`).

    Args:
        folder: the folder to search.

    Returns:
        Their paths, sorted.
    """
    return sorted(
        path
        for path in folder.rglob("*")
        if path.suffix.lower() in VIDEO_SUFFIXES
        and not any(part.startswith(".") for part in path.relative_to(folder).parts)
        and path.is_file()
    )


def check_folders(source: Path, destination: Path) -> None:
    """Refuse a source that is not a folder, a destination that is a file, and one that is the source, inside it,
    or holds it.

    Args:
        source: the folder read (SRC).
        destination: the folder written (DST), which may not exist yet.

    Raises:
        UserError: one line naming both folders.
    """
    if not source.is_dir():
        raise UserError(f"{source}: no such folder; give the folder holding the videos")
    if destination.exists() and not destination.is_dir():
        raise UserError(f"destination {destination} is a file; give a folder")
    src, dst = source.resolve(), destination.resolve()
    if dst == src or src in dst.parents or dst in src.parents:
        where = "is" if dst == src else "is inside" if src in dst.parents else "holds"
        raise UserError(f"destination {destination} {where} the source {source}; write to a folder outside it")


def check_outputs(jobs: list[Job]) -> None:
    """Refuse jobs whose outputs coincide, or lie inside one another (a folder of frames of a.mp4 and of a/b.mp4).

    Args:
        jobs: the jobs of a run.

    Raises:
        UserError: one line naming two such jobs.
    """
    owners = {job.output: job for job in jobs}
    for job in jobs:
        for path in (job.output, *job.output.parents):
            other = owners.get(path)
            if other is not None and other is not job:
                raise UserError(
                    f"{other.name} and {job.name} would both write {path}; rename one of them or prepare them apart"
                )


def temporary_path(output: Path) -> Path:
    """Where this process writes `output` until it is complete: `.<name>.tmp-<pid>` in the same folder.

    Args:
        output: the final path.

    Returns:
        The temporary path.
    """
    return output.with_name(f".{output.name}.tmp-{os.getpid()}")


def remove_path(path: Path) -> None:
    """Remove a file or a folder tree, if there.

    Args:
        path: what to remove.
    """
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    else:
        path.unlink(missing_ok=True)


def process_running(pid: int) -> bool:
    """Whether a process with this id exists (another user's too).

    Args:
        pid: the process id.

    Returns:
        True when it exists.
    """
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def remove_stale_temporaries(outputs: Iterable[Path]) -> int:
    """Remove the temporaries of `outputs` that dead runs left: `.<name>.tmp-<pid>` beside an output `<name>`,
    with a pid that no longer runs (or this process's own: it has started no job yet).

    A temporary of a run still going on (another `prepare.py` writing the same folder) stays, and so does
    anything else in the folders.

    Args:
        outputs: the final paths of the run's jobs.

    Returns:
        How many temporaries were removed.
    """
    names_by_folder: dict[Path, set[str]] = defaultdict(set)
    for output in outputs:
        names_by_folder[output.parent].add(output.name)
    removed = 0
    for folder, names in names_by_folder.items():
        if not folder.is_dir():
            continue
        for entry in folder.iterdir():
            match = TEMPORARY.fullmatch(entry.name)
            if match is None or match["name"] not in names:
                continue
            pid = int(match["pid"])
            if pid == os.getpid() or not process_running(pid):
                remove_path(entry)
                removed += 1
    return removed


def _worker_setup() -> None:
    """In each worker process: a decoder that crashes leaves no core file behind."""
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))


def _new_pool(workers: int) -> ProcessPoolExecutor:
    """Worker processes, forked: they start at once, with the jobs' functions already imported.

    Args:
        workers: how many processes.

    Returns:
        The pool.
    """
    return ProcessPoolExecutor(workers, multiprocessing.get_context("fork"), initializer=_worker_setup)


def _outcomes(jobs: list[Job], workers: int) -> Iterator[tuple[Job, str | None]]:
    """Do the jobs in `workers` processes, each output written under its temporary name and renamed when done.

    Args:
        jobs: the jobs to do (their outputs absent).
        workers: how many processes.

    Returns:
        An iterator of (job, None when done, else the reason it failed), in the order they end. Leaving it early
        (an exception, a generator closed) cancels the jobs not started, waits for those in progress (Ctrl-C
        stops them too: the workers are in the terminal's process group) and removes their temporaries.
    """
    queue = list(reversed(jobs))
    running: dict[Future, tuple[Job, Path]] = {}
    pool = _new_pool(workers)
    broken = False  # a worker died: the pool takes no more jobs, and is replaced once its jobs have all ended
    try:
        while queue or running:
            if broken and not running:
                pool.shutdown()
                pool, broken = _new_pool(workers), False
            while queue and not broken and len(running) < workers:
                job = queue.pop()
                temporary = temporary_path(job.output)
                job.output.parent.mkdir(parents=True, exist_ok=True)
                running[pool.submit(job.work, temporary)] = (job, temporary)
            finished, _ = wait(running, return_when=FIRST_COMPLETED)
            for future in finished:
                job, temporary = running.pop(future)
                error = future.exception()
                if error is None:
                    os.replace(temporary, job.output)
                    yield job, None
                    continue
                remove_path(temporary)
                if isinstance(error, JobFailed):
                    yield job, str(error)
                elif isinstance(error, BrokenProcessPool):
                    broken = True
                    yield job, WORKER_DIED
                else:
                    raise error
    finally:
        pool.shutdown(cancel_futures=True)
        for _, temporary in running.values():
            remove_path(temporary)


def run_jobs(jobs: list[Job], *, verb: str, destination: Path, workers: int, bars: bool, unit: str) -> RunSummary:
    """Do the jobs whose output is missing, in parallel, and write the list of failures.

    Args:
        jobs: every job of the verb (done ones included: they count as skipped).
        verb: the verb, for the progress, the summary and `<destination>/failed_<verb>.txt`.
        destination: the folder the outputs go to (DST); it holds the failure list.
        workers: worker processes (>= 1).
        bars: draw a progress bar; otherwise log plain progress lines.
        unit: what one job makes, singular ("video", "clip").

    Returns:
        The summary. `<destination>/failed_<verb>.txt` lists each failed job as `name<TAB>reason`; it is
        removed when no job failed, so that it never describes an earlier run.

    Raises:
        UserError: two jobs would write the same path.
        Exception: any error of a job other than `JobFailed` (a bug), once the workers are stopped.
    """
    check_outputs(jobs)
    removed = remove_stale_temporaries(job.output for job in jobs)
    if removed:
        log.info("%s: removed %s left by a run that stopped", verb, count_of(removed, "temporary output"))
    pending = [job for job in jobs if not job.output.exists()]
    summary = RunSummary(verb, unit, skipped=len(jobs) - len(pending))
    if pending:
        outcomes = _outcomes(pending, min(workers, len(pending)))
        for job, reason in track(outcomes, total=len(pending), desc=verb, bars=bars, unit=unit):
            if reason is None:
                summary.done += 1
            else:
                summary.failed[job.name] = reason
    failure_list = destination / f"failed_{verb}.txt"
    if summary.failed:
        text = "".join(f"{name}\t{reason}\n" for name, reason in summary.failed.items())
        write_atomically(failure_list, text.encode())
        summary.failure_list = failure_list
    else:
        failure_list.unlink(missing_ok=True)
    return summary
