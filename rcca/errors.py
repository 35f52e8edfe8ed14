"""Errors caused by the user's input (config, files), reported as one line without a traceback."""

from __future__ import annotations


class UserError(Exception):
    """A problem the user can fix: the message names the file or config key and what to do."""


class DataLoadingFailed(UserError, RuntimeError):
    """A DataLoader worker died or took longer than `trainer.data_timeout` (a video that crashes or hangs
    the decoder); raised by the project's loader, which tells these apart from errors raised in a worker.
    A RuntimeError too, as PyTorch's own report of the same failure is (see `rcca.data.build.loading_failure`)."""
