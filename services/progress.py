"""Progress of long work with an estimate of the time left, for people: a rich progress bar on a
terminal, one plain line every few seconds otherwise (logs, CI, pipes).

A :class:`ProgressReporter` is a :class:`~online_gim.streams.progress.ProgressCallback`: hand it to the work
(``synthesize_corpus(..., progress=reporter)``) or call :meth:`ProgressReporter.update` yourself.
The time left comes from rich's own estimate (the rate of progress over the last 30 s), in both
modes. Output goes to the console's stream (stderr by default), so that stdout stays for results.

Usage::

    with ProgressReporter("online-gim corpus synth: synthesising", total=480, unit="utterances") as progress:
        synthesize_corpus(out, progress=progress)        # calls progress(done, total)

    reporter = ProgressReporter("online-gim eval: training clapp_eprop", total=1200.0, unit="s of audio")
    reporter.update(300.0, status="loss 0.93")            # 25 %, about ... left
    reporter.close()                                      # a last line with the time it took
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from datetime import timedelta

from rich.console import Console
from rich.progress import BarColumn, Progress, TaskProgressColumn, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from rich.table import Column

PLAIN_INTERVAL_SECONDS = 5.0
"""Seconds between two plain progress lines."""


class ProgressReporter:
    """Shows the progress of one piece of work.

    Parameters:
        description: what is being done, as the line's start (``"online-gim listen: learning"``).
        total: units of work in all; ``None`` when unknown (then no bar and no estimate).
        unit: the units' name (``"utterances"``, ``"s of audio"``), shown after the counts.
        console: where to draw (default: a rich console on stderr); a bar on a terminal, else lines.
        interval: seconds between plain lines.
        clock: monotonic seconds, for the estimate and the plain lines' interval (tests pass a fake one).
    """

    def __init__(
        self,
        description: str,
        total: float | None = None,
        *,
        unit: str = "",
        console: Console | None = None,
        interval: float = PLAIN_INTERVAL_SECONDS,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.console = console or Console(stderr=True)
        self.description = description
        self.unit = unit
        self.interval = interval
        self._clock = clock
        self._lock = threading.Lock()
        self._next_line = clock() + interval
        self._live = self.console.is_terminal
        self._status = ""
        self._closed = False
        columns = [TextColumn("{task.description}")]
        if total is not None:
            columns += [BarColumn(), TaskProgressColumn(), TextColumn("{task.fields[counts]}"), TimeElapsedColumn(),
                        TextColumn("elapsed"), TimeRemainingColumn(), TextColumn("left")]
        columns.append(TextColumn("{task.fields[status]}", table_column=Column(no_wrap=True, overflow="ellipsis")))
        # disabled (nothing drawn) off a terminal: it still keeps the counts and the estimate
        self._progress = Progress(*columns, console=self.console, disable=not self._live, get_time=clock)
        self._task = self._progress.add_task(description, total=total, counts="", status="")
        if self._live:
            self._progress.start()

    # -- the ProgressCallback protocol ------------------------------------------------------

    def __call__(self, done: float, total: float | None = None) -> None:
        self.update(done, total=total)

    def update(self, done: float, *, total: float | None = None, status: str | None = None) -> None:
        """``done`` units finished (out of ``total``, when it changes); ``status``: a short text
        shown after the estimate (e.g. the newest loss)."""
        with self._lock:
            if self._closed:
                return
            if status is not None:
                self._status = status
            changes = {"total": total} if total is not None else {}
            self._progress.update(self._task, completed=done, counts=self._counts(done, total), status=self._status, **changes)
            if not self._live and self._clock() >= self._next_line:
                self._next_line = self._clock() + self.interval
                self._print_line()

    def close(self, *, finished: bool = True) -> None:
        """Ends the display: the bar's last state stays on a terminal; off a terminal, a last line
        with the time it took when the work ``finished`` (none when it failed: its error says why;
        "stopped after" when it ended short of its total, e.g. interrupted)."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            if self._live:
                self._progress.stop()
            elif finished:
                self._print_line(final=True)

    def __enter__(self) -> ProgressReporter:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, *exc_info: object) -> None:
        self.close(finished=exc_type is None)

    # -- drawing ----------------------------------------------------------------------------

    @property
    def task(self):  # rich.progress.Task
        """The rich task behind the display: ``completed``, ``total``, ``percentage``, ``time_remaining``."""
        return self._progress.tasks[0]

    def line(self, *, final: bool = False) -> str:
        """The plain line of the progress now: counts, share, time taken and the estimate of the time left."""
        task = self.task
        parts = [f"{self.description}: {_number(task.completed)}"]
        if task.total is not None:
            parts[0] += f"/{_number(task.total)}"
        if self.unit:
            parts[0] += f" {self.unit}"
        if task.total:
            parts[0] += f" ({task.percentage:.0f}%)"
        elapsed = _duration(task.elapsed or 0.0)
        if final:
            stopped_early = task.total is not None and task.completed < task.total
            parts.append(f"stopped after {elapsed}" if stopped_early else f"done in {elapsed}")
        else:
            parts.append(f"{elapsed} elapsed")
            if task.total is not None and task.time_remaining is not None:
                parts.append(f"about {_duration(task.time_remaining)} left")
        if self._status:
            parts.append(self._status)
        return ", ".join(parts)

    def _print_line(self, final: bool = False) -> None:
        self.console.print(self.line(final=final), markup=False, highlight=False, soft_wrap=True)

    def _counts(self, done: float, total: float | None) -> str:
        total = total if total is not None else self._progress.tasks[0].total
        counts = _number(done) + (f"/{_number(total)}" if total is not None else "")
        return f"{counts} {self.unit}".strip()


def _number(value: float) -> str:
    return f"{value:.0f}" if float(value).is_integer() or abs(value) >= 100 else f"{value:.1f}"


def _duration(seconds: float) -> str:
    return str(timedelta(seconds=round(seconds)))
