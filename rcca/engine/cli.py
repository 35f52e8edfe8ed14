"""Command-line handling of `train.py` and `test.py`: exit codes, one-line user errors, output folders.

Exit codes: 0 done; 2 a user error (bad config, file or data), printed as one line `error: ...`;
130 stopped by Ctrl-C and 143 by SIGTERM / SLURM's warning signals (after saving last.pt); 1 any
other failure, which keeps its traceback. `RCCA_TRACEBACK=1` prints the traceback of user errors too.
"""

from __future__ import annotations

import logging
import os
import sys
import time
import traceback
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from hydra._internal.utils import get_args_parser
from hydra.core.hydra_config import HydraConfig
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.errors import OverrideParseException
from hydra.types import RunMode

from rcca.engine.distributed import is_distributed
from rcca.engine.runtime import discard_unused_run_folder
from rcca.engine.trainer import TrainingStopped
from rcca.errors import UserError

log = logging.getLogger("rcca")

TRACEBACK_VARIABLE = "RCCA_TRACEBACK"  # set to 1: user errors print their traceback too
USER_ERROR_EXIT = 2
INTERRUPTED_EXIT = 130  # 128 + SIGINT, as shells report Ctrl-C
TEST_FOLDER = "test"  # test.py's results: <checkpoint's folder>/test/<checkpoint>-<time>/
_made_here: set[Path] = set()  # run folders this process made itself (test.py's), not the user's


@contextmanager
def exit_codes() -> Iterator[None]:
    """Around an entry point's work: turn the project's own stops and user errors into exit codes.

    Only `UserError` (and its subclasses) becomes one line; any other exception keeps its traceback.
    On one process of several, a failure exits 1 after logging it, so a Hydra sweep does not go on to
    its next job out of step with the other processes.
    """
    try:
        yield
    except TrainingStopped as stop:
        log.warning("%s", stop)
        sys.exit(stop.exit_code)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        sys.exit(INTERRUPTED_EXIT)
    except UserError as error:
        if os.environ.get(TRACEBACK_VARIABLE, "") not in ("", "0"):
            traceback.print_exc()
        print(f"error: {one_line(error)}", file=sys.stderr)
        sys.exit(USER_ERROR_EXIT)
    except Exception:
        if not is_distributed():
            raise
        log.exception("this process failed; stopping it")
        sys.exit(1)


def one_line(error: UserError) -> str:
    """The message of a user error; one raised in a DataLoader worker arrives wrapped, its own line last."""
    lines = [line for line in str(error).splitlines() if line.strip()] or [type(error).__name__]
    if lines[0].startswith("Caught ") and "DataLoader worker" in lines[0]:
        return lines[-1].split(": ", 1)[-1]
    return lines[0]


@contextmanager
def discard_run_folder_on_failure(run_dir: Path) -> Iterator[None]:
    """If the work fails before writing anything, remove the run folder Hydra or test.py made for it (see
    `runtime.discard_unused_run_folder`); a folder the user named (`hydra.run.dir`) stays."""
    try:
        yield
    except BaseException:
        named_by_user = run_dir_named_on_command_line() and run_dir.resolve() not in _made_here
        if not named_by_user and discard_unused_run_folder(run_dir):
            log.debug("removed the unused run folder %s", run_dir)
        raise


def run_dir_named_on_command_line() -> bool:
    """Whether this Hydra job's folder was named on the command line (`hydra.run.dir=...` of a single run)."""
    hydra_cfg = HydraConfig.get()
    if hydra_cfg.mode == RunMode.MULTIRUN:
        return False  # the job's own sub-folder, made by Hydra
    return any(override.split("=", 1)[0].lstrip("+") == "hydra.run.dir" for override in hydra_cfg.overrides.hydra)


def evaluation_dir_override(argv: list[str]) -> list[str]:
    """test.py: the `hydra.run.dir=...` override that puts its results beside the checkpoint's run.

    Results go to `<checkpoint's folder>/test/<checkpoint name>-<date>_<time>[-N]/` (a new folder, made
    here so that two evaluations never share one). Nothing is added when the command line names
    `hydra.run.dir`, names no existing checkpoint file, or when the checkpoint's folder is not writable
    (Hydra's default `outputs/<date>/<time>` is used then).
    """
    known, _ = get_args_parser().parse_known_args(argv)
    try:
        overrides = OverridesParser.create().parse_overrides(known.overrides)
    except OverrideParseException:
        return []  # Hydra reports it
    values = {override.key_or_group: override.value() for override in overrides if not override.is_delete()}
    checkpoint = values.get("ckpt")
    if "hydra.run.dir" in values or not isinstance(checkpoint, str) or not Path(checkpoint).is_file():
        return []
    parent = Path(checkpoint).resolve().parent
    if not os.access(parent, os.W_OK | os.X_OK):
        return []
    stamp = time.strftime("%Y-%m-%d_%H-%M-%S")
    for attempt in range(1, 1000):
        folder = parent / TEST_FOLDER / f"{Path(checkpoint).stem}-{stamp}{f'-{attempt}' if attempt > 1 else ''}"
        try:
            folder.mkdir(parents=True)
        except FileExistsError:
            continue
        _made_here.add(folder)
        return [f"hydra.run.dir={_quoted(str(folder))}"]
    return []


def _quoted(value: str) -> str:
    """A value in Hydra's override grammar: single-quoted, quotes and backslashes escaped."""
    return "'" + value.replace("\\", "\\\\").replace("'", "\\'") + "'"
