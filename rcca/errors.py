"""Errors caused by the user's input (config, files), reported as one line without a traceback."""

from __future__ import annotations


class UserError(Exception):
    """A problem the user can fix: the message names the file or config key and what to do."""


def data_loading_failure(error: RuntimeError, where: str, then: str) -> UserError | None:
    """The one-line error for a DataLoader worker that died or hung (None for other errors).

    A video that crashes or hangs the decoder does so again on every run, hence the way out.
    """
    if "DataLoader" not in str(error):
        return None
    return UserError(
        f"data loading failed {where} ({str(error).splitlines()[0]}). A video that crashes or hangs the decoder "
        "does it on every run: find such videos with scripts/inspect_dataset.py --decode --write-exclude <file> "
        f"<overrides>, then {then}"
    )
