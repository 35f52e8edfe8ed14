"""Progress of long loops: a tqdm bar on a terminal, or a plain log line now and then in a log file.

Whether bars are drawn is decided once by the caller (e.g. `trainer.progress`, a terminal, rank 0);
these helpers only carry the decision out:

    for batch in track(loader, total=len(loader), desc="evaluating", bars=bars):
        ...

draws a bar when `bars` is true (log records go through tqdm meanwhile, so they do not break it), and
otherwise logs `evaluating: 120/400 batches (30%), 4.1 batch/s, ETA 1 min 8 s` at most every
`log_every_s` seconds, plus a final line. A loop that is one part of a longer job (an epoch of a run)
passes the work that follows it as `ahead`; its plain lines then also carry the job's ETA:
`epoch 2/6: 120/400 batches (30%), 4.1 batch/s, ETA 1 min 8 s, run ETA 9 min 40 s`.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from time import monotonic
from typing import TypeVar

from tqdm import tqdm
from tqdm.contrib.logging import logging_redirect_tqdm

log = logging.getLogger(__name__)

T = TypeVar("T")


@dataclass(frozen=True)
class Ahead:
    """The work of a longer job that follows a tracked loop, from which plain lines compute the job's ETA.

    The job's time left is the loop's own time left, plus `items` more items at the rate the loop
    measures, plus `seconds`; work named in `untimed` is not included, and the line says so
    (`run ETA 9 min 40 s + 2 validations`).

    Attributes:
        label: what the job is, the start of its ETA in the line ("run").
        items: items of the loop's kind, at the loop's rate, that come after it (the later epochs' batches).
        seconds: the time of the other work after the loop, as far as it has been measured (validations).
        untimed: the other work after the loop that has no measured time yet ("2 validations"), or "".
    """

    label: str = "run"
    items: int = 0
    seconds: float = 0.0
    untimed: str = ""


def track(
    iterable: Iterable[T],
    *,
    total: int | None,
    desc: str,
    bars: bool,
    unit: str = "batch",
    initial: int = 0,
    log_every_s: float = 30.0,
    ahead: Ahead | None = None,
) -> Iterator[T]:
    """Yield the items of `iterable`, showing how far the loop has come.

    Args:
        iterable: the items (batches of a loader, videos, ...).
        total: how many items the loop will take in all (counting `initial`); None when unknown. An item counts
            once the loop body is done with it (it asks for the next one, or leaves the loop).
        desc: what the loop does, the start of every line ("evaluating", "epoch 2/6").
        bars: draw a tqdm bar (log records are routed through tqdm while it is shown); otherwise log plain lines.
        unit: the name of one item, pluralised in the lines ("batch" -> "batches").
        initial: items already done before this call (a run resumed mid-epoch); counted, not timed.
        log_every_s: without bars, the least time between two log lines (a final line comes in any case).
        ahead: without bars, the work of the longer job that follows this loop: every line with an ETA, and
            the final line of a loop that reached `total`, also gives the job's ETA (see `Ahead`).

    Returns:
        An iterator over the items of `iterable`, in order.
    """
    if bars:
        with tqdm(total=total, initial=initial, desc=desc, unit=unit, leave=False) as bar, redirect_logging(True):
            for item in iterable:
                yield item
                bar.update(1)
        return
    lines = LogLines(total=total, desc=desc, unit=unit, initial=initial, log_every_s=log_every_s, ahead=ahead)
    try:
        for item in iterable:
            try:
                yield item
            finally:  # the loop body is done with it: it asks for the next item, or leaves the loop
                lines.advance()
    finally:
        lines.finish()


def redirect_logging(bars: bool) -> contextlib.AbstractContextManager:
    """While a bar is shown (`bars`): write the root logger's terminal records through tqdm, above the bar.

    Args:
        bars: whether progress bars are drawn; without them this context changes nothing.

    Returns:
        A context manager.
    """
    return logging_redirect_tqdm() if bars else contextlib.nullcontext()


class LogLines:
    """Plain progress lines through `logging`: at most one every `log_every_s` seconds, and a final one."""

    def __init__(
        self,
        *,
        total: int | None,
        desc: str,
        unit: str,
        initial: int,
        log_every_s: float,
        ahead: Ahead | None = None,
    ) -> None:
        """Start timing now.

        Args:
            total: how many items the loop takes in all; None when unknown.
            desc: the start of every line.
            unit: the name of one item.
            initial: items done before timing starts.
            log_every_s: the least time between two lines.
            ahead: the work of a longer job after the loop, for the job's ETA; None for a loop on its own.
        """
        self.total, self.desc, self.unit = total, desc, unit
        self.initial = self.done = initial
        self.log_every_s = log_every_s
        self.ahead = ahead
        self.start = self.last_line = monotonic()

    def advance(self) -> None:
        """Count one item; log a line when `log_every_s` has passed since the last one."""
        self.done += 1
        now = monotonic()
        if now - self.last_line >= self.log_every_s:
            self.last_line = now
            log.info("%s", self.line(now, final=False))

    def finish(self) -> None:
        """Log the final line: the count reached and the time taken."""
        log.info("%s", self.line(monotonic(), final=True))

    def line(self, now: float, final: bool) -> str:
        """`desc: done/total units (percent), rate unit/s` and the time left (or, when `final`, the time taken),
        then the longer job's ETA when there is an `ahead`.

        Args:
            now: the clock's reading.
            final: whether the loop has ended.

        Returns:
            The line, e.g. `evaluating: 120/400 batches (30%), 4.1 batch/s, ETA 1 min 8 s`.
        """
        elapsed = now - self.start
        rate = (self.done - self.initial) / elapsed if elapsed > 0 else 0.0
        if self.total is None:
            count = count_of(self.done, self.unit)
        else:
            count = f"{self.done}/{count_of(self.total, self.unit)} ({100 * self.done // max(self.total, 1)}%)"
        parts = [f"{self.desc}: {count}", f"{rate:.1f} {self.unit}/s"]
        if final:
            parts.append(f"in {duration(elapsed)}")
        elif self.total is not None and rate > 0:
            parts.append(f"ETA {duration((self.total - self.done) / rate)}")
        if self.ahead is not None and self.total is not None and rate > 0 and (not final or self.done >= self.total):
            parts.append(self.job_eta(rate))
        return ", ".join(parts)

    def job_eta(self, rate: float) -> str:
        """The longer job's ETA: this loop's items left and `ahead.items` at `rate`, plus `ahead.seconds`.

        Args:
            rate: the loop's measured items per second (> 0).

        Returns:
            E.g. `run ETA 9 min 40 s`, or `run ETA 9 min 40 s + 2 validations` when some work is not timed yet.
        """
        ahead = self.ahead
        left = max(self.total - self.done, 0) + ahead.items
        text = f"{ahead.label} ETA {duration(left / rate + ahead.seconds)}"
        return f"{text} + {ahead.untimed}" if ahead.untimed else text


def count_of(number: int, unit: str) -> str:
    """`number` with `unit` in the right number: "1 batch", "2 batches", "0 videos".

    Args:
        number: how many.
        unit: the singular noun.

    Returns:
        The count and the noun, e.g. "3 clips".
    """
    return f"{number} {unit if number == 1 else plural(unit)}"


def plural(noun: str) -> str:
    """The plural of an English noun of the regular kinds that progress lines count (batch, video, clip, update).

    Args:
        noun: the singular.

    Returns:
        The plural ("batches", "videos").
    """
    return f"{noun}es" if noun.endswith(("s", "x", "z", "ch", "sh")) else f"{noun}s"


def duration(seconds: float) -> str:
    """A duration as a person reads it: "8 s", "1 min 8 s", "2 h 5 min".

    Args:
        seconds: the duration (rounded to whole seconds).

    Returns:
        The text.
    """
    total = max(0, round(seconds))
    hours, rest = divmod(total, 3600)
    minutes, secs = divmod(rest, 60)
    if hours:
        return f"{hours} h {minutes} min"
    if minutes:
        return f"{minutes} min {secs} s"
    return f"{secs} s"
