"""Requeueing a cluster job that its scheduler's pre-emption or time-limit signal stopped.

Under Hydra's submitit launcher (`hydra/launcher=slurm` or `submitit_local`), submitit installs a handler
for its pre-emption signal (SIGUSR2 unless `SUBMITIT_PREEMPT_SIGNAL` names another one) that pickles the
job again and requeues it. While training, the trainer replaces that handler with its own, which saves
last.pt after the current update; `TrainingStopped` then carries the handler it replaced. Once the stop
has been reported, `requeue_stopped_job` hands the job back to submitit's handler, which requeues it
(`scontrol requeue` on SLURM, exit code 144 for the local executor) on the process that submitit counts as
global rank 0; the requeued job runs the same command line and, with `resume=auto`, continues from
last.pt. submitit is imported only when that handler is submitit's.

The trainer stops on SIGTERM, SIGINT, SIGUSR1 and SIGUSR2 (`rcca.engine.trainer.STOP_SIGNALS`). A
`SUBMITIT_PREEMPT_SIGNAL` outside them is left to submitit's own handler, which requeues at once without
saving last.pt first: the requeued job then continues from the last last.pt written.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from types import FrameType

from rcca.engine.distributed import is_main_process
from rcca.errors import TrainingStopped

log = logging.getLogger("rcca")

REQUEUE_METHOD = "checkpoint_and_try_requeue"  # submitit's SignalHandler method for its pre-emption signal


def submitit_requeue_handler(handler: object) -> Callable[[int, FrameType | None], None] | None:
    """`handler` when it is submitit's requeue handler (`SignalHandler.checkpoint_and_try_requeue`), else None.

    Args:
        handler: a signal's handler, as `signal.getsignal` or `signal.signal` returns it.

    Returns:
        The handler, or None for any other handler (Python's default, a plain function, SIG_IGN, None).
    """
    owner = getattr(handler, "__self__", None)
    if owner is None or not type(owner).__module__.startswith("submitit."):
        return None  # not submitit's: nothing to import
    from submitit.core.job_environment import SignalHandler

    if isinstance(owner, SignalHandler) and getattr(handler, "__name__", "") == REQUEUE_METHOD:
        return handler
    return None


def requeue_stopped_job(stop: TrainingStopped) -> None:
    """After a stop has saved last.pt: requeue the job when the signal was submitit's pre-emption signal.

    Nothing happens when submitit did not handle that signal before training (a plain run, SIGTERM and
    Ctrl-C, another rank's stop). When the run's `resume` is not `auto`, the job is not requeued (its
    requeued command would not continue from last.pt: a fresh run would be refused by its own folder)
    and one line says so on rank 0. Otherwise submitit's handler requeues the job: on submitit's global
    rank 0 it exits with submitit's exit code, on other ranks it returns. When submitit refuses to
    requeue (e.g. the job timed out too many times) or the requeue fails, one line says why.

    Args:
        stop: the stop, with the signal and the handler the trainer had replaced for it.

    Raises:
        SystemExit: the job was requeued; its exit code is submitit's (144 for the local executor).
    """
    handler = submitit_requeue_handler(stop.previous_handler)
    if handler is None or stop.signum is None:
        return
    if stop.resume != "auto":
        if is_main_process():
            reason = f"resume={stop.resume}, not auto" if stop.resume else "resume is not set"
            log.warning(
                "job not requeued: %s, so a requeued job would not continue from this last.pt; run the sweep "
                "with resume=auto to have pre-empted and timed-out jobs requeued",
                reason,
            )
        return
    try:
        handler(stop.signum, None)
    except SystemExit:
        log.warning("job requeued by submitit: it will start again and continue from last.pt (resume=auto)")
        raise
    except Exception as error:  # submitit's refusal (UncompletedJobError) or a failed `scontrol requeue`
        message = " ".join(str(error).split()) or type(error).__name__
        log.warning("%s", message if message.lower().startswith("job not requeued") else f"job not requeued: {message}")
