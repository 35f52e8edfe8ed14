"""What a run does to its folder: atomic writes that survive kills and full disks, and one run per folder.

Every file a run writes for later use (checkpoints, metrics) goes through `write_atomically`:
a temporary file in the same folder, flushed to disk, then renamed over the target. A kill, a
full disk or a quota therefore never leaves a partial file, and never touches the previous one.

`RunFolderLock` keeps two processes from training into one folder at once. It is a POSIX record
lock (`fcntl.lockf`) on `<run folder>/.rcca.lock`. Such a lock belongs to its process alone (the
DataLoader workers forked from it do not hold it) and the kernel drops it when that process dies,
so a lock left by a killed run is never in the way, even while its orphaned workers wind down.

A run that fails before writing anything leaves no folder behind: `discard_unused_run_folder` removes
one that holds only Hydra's own records (`HYDRA_RECORDS`) and no other run's lock. Nothing here imports
torch: the entry points clean up after a config error before the model libraries load.
"""

from __future__ import annotations

import errno
import fcntl
import logging
import os
import shutil
import socket
import sys
from pathlib import Path

from rcca.errors import UserError

LOCK_NAME = ".rcca.lock"
LAST_CHECKPOINT = "last.pt"  # the state of the last complete update: what a resume reads
CHECKPOINT_NAMES = (LAST_CHECKPOINT, "best.pt")
METRICS_NAME = "metrics.json"  # written when a run has finished
RESULT_NAMES = (*CHECKPOINT_NAMES, METRICS_NAME)  # what `overwrite` replaces
HYDRA_RECORDS = frozenset({".hydra", "train.log", "test.log"})  # what Hydra writes into a run folder by itself
TEST_FOLDER = "test"  # test.py's results: <checkpoint's folder>/test/<checkpoint>-<time>-<pid>/
# Errors that full disks and quotas raise while writing.
_NO_SPACE = (errno.ENOSPC, errno.EDQUOT, errno.EFBIG)


def write_atomically(path: Path, data: bytes | memoryview) -> None:
    """Replace `path` with `data`, all or nothing.

    Raises UserError naming the folder and the bytes needed when the disk (or quota) cannot hold
    the file; the temporary file is removed and the previous `path`, if any, is intact.
    """
    path = Path(path)
    free = shutil.disk_usage(path.parent).free
    if free < len(data):
        raise _no_space(path, len(data), free)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with open(tmp, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
    except OSError as error:
        tmp.unlink(missing_ok=True)
        if error.errno in _NO_SPACE:
            raise _no_space(path, len(data), shutil.disk_usage(path.parent).free) from error
        raise
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    os.replace(tmp, path)


def _no_space(path: Path, needed: int, free: int) -> UserError:
    """The one-line error for a file that does not fit on its disk."""
    return UserError(
        f"no space to write {path.name} in {path.parent}: it needs {needed:,} bytes and {free:,} are free; "
        f"free some space there, then resume (the previous {path.name}, if any, is intact)"
    )


def checkpoint_file(path: str | Path | None, key: str) -> Path:
    """The checkpoint file that the config key `key` names. Raises UserError with one line naming the key
    when it names nothing, a folder (with the file to name instead) or nothing that exists."""
    if not path:
        raise UserError(f"{key} is not set: name a checkpoint file, e.g. {key}=outputs/<date>/<time>/best.pt")
    path = Path(path)
    if path.is_dir():
        raise UserError(f"{key}={path} is a folder; name a checkpoint file, e.g. {key}={path / 'best.pt'}")
    if not path.is_file():
        raise UserError(f"{key}={path}: file not found")
    return path


def lock_holder_line() -> str:
    """What a run-folder lock file says of its holder: this process, on this host."""
    return f"process {os.getpid()} on {socket.gethostname()}"


def held_by_this_process(folder: Path) -> bool:
    """Whether the run-folder lock file of `folder` names this process as its (last) holder."""
    try:
        return (folder / LOCK_NAME).read_text().strip() == lock_holder_line()
    except OSError:
        return False


class RunFolderLock:
    """Exclusive use of a run folder by one process, for as long as the process holds it.

    Args:
        folder: the run folder (created if needed).
        fresh: the run starts from scratch (no `resume`): it refuses a folder that already holds
            another run's checkpoints, unless `overwrite`.
        overwrite: let a fresh run replace the checkpoints in the folder: they and metrics.json are
            removed once the folder is locked, so the old run's files never mix with the new one's.

    `acquire()` raises UserError, naming the folder and the way out, when another live process
    holds the folder or when a fresh run would replace checkpoints; `release()` (or process exit)
    frees it. The lock file records the holder's host and pid for that message.
    """

    def __init__(self, folder: Path, fresh: bool, overwrite: bool) -> None:
        self.folder = Path(folder)
        self.fresh = fresh
        self.overwrite = overwrite
        self._handle = None

    def acquire(self) -> None:
        """Lock the folder, or raise UserError (see the class docstring)."""
        self.folder.mkdir(parents=True, exist_ok=True)
        handle = open(self.folder / LOCK_NAME, "a+")
        try:
            fcntl.lockf(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as error:
            if error.errno not in (errno.EACCES, errno.EAGAIN):
                handle.close()
                raise
            handle.seek(0)
            holder = handle.read().strip() or "another process"
            handle.close()
            raise UserError(
                f"run folder {self.folder} is in use by {holder}; wait for that run to end or choose another "
                "hydra.run.dir"
            ) from None
        existing = [name for name in CHECKPOINT_NAMES if (self.folder / name).exists()]
        if self.fresh and existing and not self.overwrite:
            handle.close()
            raise UserError(
                f"run folder {self.folder} already holds {' and '.join(existing)} of another run: continue it with "
                "resume=auto, choose another hydra.run.dir, or set overwrite=true to replace them"
            )
        if self.fresh and self.overwrite:
            for name in RESULT_NAMES:
                (self.folder / name).unlink(missing_ok=True)
        handle.seek(0)
        handle.truncate()
        handle.write(lock_holder_line() + "\n")
        handle.flush()
        self._handle = handle

    def release(self) -> None:
        """Free the folder (also done by the process's exit)."""
        if self._handle is not None:
            self._handle.close()  # closing drops the lock
            self._handle = None

    def __enter__(self) -> RunFolderLock:
        self.acquire()
        return self

    def __exit__(self, *exc_info) -> None:
        self.release()


def process_group_possible() -> bool:
    """Whether this process may be in a torch.distributed process group: only once torch.distributed has
    been imported, which the run's work does and a config error comes before. Asked without importing torch."""
    return "torch.distributed" in sys.modules


def holds_only_hydra_records(folder: Path, also: frozenset[str] = frozenset()) -> bool:
    """Whether `folder` holds nothing but what Hydra wrote into it (and the names in `also`)."""
    return folder.is_dir() and {entry.name for entry in folder.iterdir()} <= HYDRA_RECORDS | also


def stop_log_files() -> None:
    """Close and detach the root logger's file handlers (Hydra's `train.log`); the terminal keeps its messages."""
    root = logging.getLogger()
    for handler in [h for h in root.handlers if isinstance(h, logging.FileHandler)]:
        root.removeHandler(handler)
        handler.close()


def discard_unused_run_folder(run_dir: Path) -> bool:
    """After a failure before any result was written: remove a run folder that holds only Hydra's records.

    Only for folders Hydra or test.py named themselves (`outputs/<date>/<time>`, sweep job folders): the
    caller does not call this for a folder the user named. Only rank 0 removes (decided from the launcher's
    RANK when the failure came before the process group existed), and only a folder whose lock, if any, is
    this process's and free: a folder another run uses or has used is never touched. Returns whether the
    folder was removed.
    """
    if os.environ.get("RANK", "0") != "0":
        return False
    if process_group_possible():
        from rcca.engine.distributed import is_main_process

        if not is_main_process():
            return False
    if not holds_only_hydra_records(run_dir, also=frozenset({LOCK_NAME})):
        return False
    if (run_dir / LOCK_NAME).exists() and not held_by_this_process(run_dir):
        return False
    lock = RunFolderLock(run_dir, fresh=False, overwrite=False)
    try:
        lock.acquire()  # no other live process can be using the folder while it goes
    except (UserError, OSError):  # in use, or not writable: left as it is
        return False
    stop_log_files()  # the log file is closed before its folder goes
    shutil.rmtree(run_dir, ignore_errors=True)
    lock.release()
    return True
