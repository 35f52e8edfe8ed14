"""The project's own exceptions: errors caused by the user's input (config, files), reported as one line
without a traceback, and the stop of a training run by a signal. Nothing here imports torch: the entry
points catch these before the model libraries are loaded."""

from __future__ import annotations


class UserError(Exception):
    """A problem the user can fix: the message names the file or config key and what to do."""


class DataLoadingFailed(UserError, RuntimeError):
    """A DataLoader worker died or took longer than `trainer.data_timeout` (a video that crashes or hangs
    the decoder); raised by the project's loader, which tells these apart from errors raised in a worker.
    A RuntimeError too, as PyTorch's own report of the same failure is (see `rcca.data.build.loading_failure`)."""


class TrainingStopped(Exception):
    """A stop signal ended training; last.pt holds the state of the last complete update.

    The message says where last.pt is and the command that continues the run. The entry point
    prints it and exits with `exit_code`: 130 after Ctrl-C (SIGINT), 143 after SIGTERM, SIGUSR1 or SIGUSR2.
    It also carries what a cluster job needs to be requeued (`rcca.engine.requeue`): the signal, the
    handler that the trainer had replaced for it (a job scheduler's, e.g. submitit's requeue handler),
    and the run's `resume` setting.
    """

    def __init__(
        self,
        message: str,
        exit_code: int,
        *,
        signum: int | None = None,
        previous_handler: object = None,
        resume: str | None = None,
    ) -> None:
        """Keep the exit status and the signal's particulars with the message.

        Args:
            message: what happened and how to continue.
            exit_code: the process's exit status (128 + the signal's number, as a shell reports a kill).
            signum: the stop signal this process received; None when the stop came from another process.
            previous_handler: what handled `signum` before training replaced it (`signal.getsignal`'s value).
            resume: the run's `resume` setting (None, `auto` or a checkpoint path).
        """
        super().__init__(message)
        self.exit_code = exit_code
        self.signum = signum
        self.previous_handler = previous_handler
        self.resume = resume
