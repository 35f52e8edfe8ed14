"""Errors caused by the user's input (config, files), reported as one line without a traceback."""

from __future__ import annotations


class UserError(Exception):
    """A problem the user can fix: the message names the file or config key and what to do."""


def data_loading_failure(error: RuntimeError, where: str, then: str) -> UserError | None:
    """The one-line error for a DataLoader worker that died or hung (None for any other error).

    A video that crashes or hangs the decoder does so again on every run, hence the way out.
    """
    text = str(error)
    died = "DataLoader worker (pid" in text and ("exited unexpectedly" in text or "killed by signal" in text)
    if not (died or "DataLoader timed out" in text):
        return None  # an error raised inside a worker is reported as itself, with its traceback
    return UserError(
        f"data loading failed {where} ({text.splitlines()[0]}). A video that crashes or hangs the decoder "
        "does it on every run: find such videos with scripts/inspect_dataset.py --decode --write-exclude <file> "
        f"<overrides>, then {then}"
    )
