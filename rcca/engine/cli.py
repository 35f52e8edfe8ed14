"""Command-line handling of `train.py` and `test.py`: exit codes, one-line user errors, output folders.

Exit codes: 0 done; 2 a user error (bad config, file or data), printed as one line `error: ...`;
130 stopped by Ctrl-C and 143 by SIGTERM / SLURM's warning signals (after saving last.pt); 1 any
other failure, which keeps its traceback. `RCCA_TRACEBACK=1` prints the traceback of user errors too.
A job of Hydra's submitit launcher stopped by submitit's pre-emption signal is requeued instead, with
submitit's exit code, when it runs with `resume=auto` (`rcca.engine.requeue`).

The entry points import this module before anything is checked, and it loads neither torch nor the
training code: a bad command line or config is reported in well under a second. What handling a failure of
the run itself needs (its process group, requeueing) is imported where that failure is handled.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sys
import time
import traceback
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, fields
from pathlib import Path

from hydra._internal.utils import get_args_parser
from hydra.core.hydra_config import HydraConfig
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.errors import OverrideParseException
from hydra.types import RunMode

from rcca.config import CONFIG_DIR, Config
from rcca.engine.files import TEST_FOLDER, RunFolderLock, discard_unused_run_folder, process_group_possible
from rcca.errors import TrainingStopped, UserError

log = logging.getLogger("rcca")

TRACEBACK_VARIABLE = "RCCA_TRACEBACK"  # set to 1: user errors print their traceback too
USER_ERROR_EXIT = 2
INTERRUPTED_EXIT = 130  # 128 + SIGINT, as shells report Ctrl-C
_made_here: set[Path] = set()  # run folders this process named itself (test.py's), not the user's
SCHEMA_TOP_KEYS = frozenset(field.name for field in fields(Config))  # seed, ckpt, trainer, ...


@contextmanager
def exit_codes() -> Iterator[None]:
    """Around an entry point's work: turn the project's own stops and user errors into exit codes.

    Only `UserError` (and its subclasses) becomes one line; any other exception keeps its traceback.
    On one process of several, a failure exits 1 after logging it, so a Hydra sweep does not go on to
    its next job out of step with the other processes. A stop by submitit's pre-emption signal may
    requeue the job first (`requeue_stopped_job`), which exits with submitit's code.
    """
    try:
        yield
    except TrainingStopped as stop:
        from rcca.engine.requeue import requeue_stopped_job

        log.warning("%s", stop)
        requeue_stopped_job(stop)
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
        if not process_group_possible():  # no other process to stop in step
            raise
        from rcca.engine.distributed import is_distributed

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
    `files.discard_unused_run_folder`); a folder the user named (`hydra.run.dir`) stays."""
    try:
        yield
    except BaseException:
        named_by_user = run_dir_named_on_command_line() and run_dir.resolve() not in _made_here
        if not named_by_user and discard_unused_run_folder(run_dir) and run_dir.resolve() in _made_here:
            with contextlib.suppress(OSError):
                run_dir.parent.rmdir()  # test.py's `test/` folder, when this was its only evaluation
        raise


def check_named_run_folder(argv: list[str]) -> None:
    """Before Hydra writes its records (`.hydra/`, train.log) into a `hydra.run.dir` named on the command
    line: raise the UserError the run itself would raise there (folder in use, or another run's
    checkpoints without resume or overwrite), so that a refused run leaves that folder as it was."""
    if {"-m", "--multirun"} & set(argv):
        return
    values = {
        o.key_or_group: o.value()
        for o in OverridesParser.create().parse_overrides(
            [arg for arg in argv if "=" in arg and not arg.startswith("-")]
        )
    }
    run_dir = values.get("hydra.run.dir")
    if run_dir is None or not Path(run_dir).is_dir():
        return
    resume, overwrite = values.get("resume"), values.get("overwrite") is True
    fresh = not resume or (resume == "auto" and not (Path(run_dir) / "last.pt").exists())
    lock = RunFolderLock(Path(run_dir), fresh=fresh and not overwrite, overwrite=False)  # checks, removes nothing
    lock.acquire()
    lock.release()


def run_dir_named_on_command_line() -> bool:
    """Whether this Hydra job's folder was named on the command line (`hydra.run.dir=...` of a single run)."""
    hydra_cfg = HydraConfig.get()
    if hydra_cfg.mode == RunMode.MULTIRUN:
        return False  # the job's own sub-folder, made by Hydra
    return any(override.split("=", 1)[0].lstrip("+") == "hydra.run.dir" for override in hydra_cfg.overrides.hydra)


def evaluation_dir_override(argv: list[str]) -> list[str]:
    """test.py: the `hydra.run.dir=...` override that puts its results beside the checkpoint's run.

    Results go to `<checkpoint's folder>/test/<checkpoint name>-<date>_<time>-<pid>/` (the process id
    keeps evaluations started in the same second apart), which Hydra creates when the evaluation starts.
    Nothing is added for a multirun, when the command line names `hydra.run.dir`, names no existing
    checkpoint file, or when the checkpoint's folder is not writable (Hydra's default
    `outputs/<date>/<time>` is used then).
    """
    known, _ = get_args_parser().parse_known_args(argv)
    if known.multirun:
        return []
    try:
        overrides = OverridesParser.create().parse_overrides(known.overrides)
    except OverrideParseException:
        return []  # Hydra reports it
    values = {override.key_or_group: override.value() for override in overrides if not override.is_delete()}
    checkpoint = values.get("ckpt")
    if "hydra.run.dir" in values or not isinstance(checkpoint, str) or not Path(checkpoint).is_file():
        return []
    checkpoint_dir = Path(checkpoint).resolve().parent
    if not os.access(checkpoint_dir, os.W_OK | os.X_OK):
        return []
    name = f"{Path(checkpoint).stem}-{time.strftime('%Y-%m-%d_%H-%M-%S')}-{os.getpid()}"  # pid: one per evaluation
    folder = checkpoint_dir / TEST_FOLDER / name
    _made_here.add(folder)
    return [f"hydra.run.dir={_quoted(str(folder))}"]


def _quoted(value: str) -> str:
    """A value in Hydra's override grammar: single-quoted, quotes and backslashes escaped."""
    return "'" + value.replace("\\", "\\\\").replace("'", "\\'") + "'"


@dataclass(frozen=True)
class ScriptKey:
    """One `key=value` argument of a script (not a config key).

    Attributes:
        help: what it sets, for the usage text.
        default: its value when not given (None: not set).
        required: whether it must be given.
    """

    help: str
    default: str | None = None
    required: bool = False


def script_arguments(
    argv: list[str], keys: Mapping[str, ScriptKey], usage: str
) -> tuple[dict[str, str | None], list[str]]:
    """Split a script's command line into its own `key=value` arguments and config overrides.

    The script's keys come first (a script may own a name that is also a config group, e.g. `module=`);
    any other key with a dot, a `+` / `~` prefix, a config group's name or a top-level config key
    (`test.num_clips=10`, `dataset=ucf101`, `seed=1`) is a Hydra override for the run config, which
    `compose_config` checks (an unknown config key fails there with the closest ones). `-h` / `--help`
    prints `usage` and the keys, then exits 0.

    Args:
        argv: the command line, less the program (and less a subcommand).
        keys: the script's own keys.
        usage: the usage line(s) shown by --help.

    Returns:
        ({key: value} for every script key, defaults filled in; the config overrides, in order).

    Raises:
        UserError: one line, for an argument without `=`, an unknown key (naming the valid ones), a key
            given twice, or a required key left out.
    """
    if any(argument in ("-h", "--help") for argument in argv):
        print(
            "\n".join([usage, "", "keys:", *script_key_lines(keys), "  and config overrides, e.g. trainer.device=cpu"])
        )
        sys.exit(0)
    groups = {entry.name for entry in CONFIG_DIR.iterdir() if entry.is_dir()}
    given: dict[str, str] = {}
    overrides = []
    for argument in argv:
        key, equals, value = argument.partition("=")
        if key in given:
            raise UserError(f"{key}= is given twice")
        if equals and key in keys:
            given[key] = value
        elif equals and key and ("." in key or key[0] in "+~" or key in groups or key in SCHEMA_TOP_KEYS):
            overrides.append(argument)
        else:
            valid = ", ".join(f"{name}=" for name in keys)
            raise UserError(f"{argument}: not an argument of this script; its keys are {valid} and config overrides")
    missing = [name for name, key in keys.items() if key.required and not given.get(name)]
    if missing:
        raise UserError(f"{missing[0]}= is required: {keys[missing[0]].help}")
    return {name: given.get(name, key.default) for name, key in keys.items()}, overrides


def script_key_lines(keys: Mapping[str, ScriptKey]) -> list[str]:
    """One help line per script key, with its default."""
    return [
        f"  {name}=  {key.help}" + (f" (default {key.default})" if key.default else "") for name, key in keys.items()
    ]


def script_bool(key: str, value: str) -> bool:
    """A script's true/false argument.

    Raises:
        UserError: one line, for any other value.
    """
    if value.lower() not in ("true", "false"):
        raise UserError(f"{key}={value}: must be true or false")
    return value.lower() == "true"


def script_int(key: str, value: str, least: int) -> int:
    """A script's integer argument of at least `least`.

    Raises:
        UserError: one line, for anything else.
    """
    try:
        number = int(value)
    except ValueError:
        number = least - 1
    if number < least:
        raise UserError(f"{key}={value}: must be an integer >= {least}")
    return number


def log_to_terminal() -> None:
    """Show the rcca logger's progress lines on stderr (scripts that do not run under Hydra)."""
    logging.basicConfig(level=logging.WARNING, format="%(message)s")
    logging.getLogger("rcca").setLevel(logging.INFO)
