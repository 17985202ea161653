"""Progress of a long evaluation stage, with an estimate of the time left.

A :class:`Progress` measures one stage (training on a stream, encoding a split) in the stage's own
unit (seconds of audio) and sends a line to its log at most every ``interval`` seconds and when the
stage ends: what is done, the rate, and the time left at that rate.

Example:
    >>> lines = []
    >>> progress = Progress("random: encoding train", total=600.0, unit="s of audio", log=lines.append, interval=0)
    >>> progress.advance(150.0)
    >>> progress.finish()
    >>> lines[-1].startswith("random: encoding train: 150/600 s of audio")
    True
"""

from __future__ import annotations

import time
from collections.abc import Callable

Log = Callable[[str], None]
"""Receives one progress line at a time."""


class Progress:
    """One stage's progress (module docstring).

    Parameters:
        name: the stage, as the lines name it.
        total: the amount the stage will do, in ``unit``.
        unit: the unit of ``total`` and :meth:`advance`.
        log: receives the lines.
        interval: seconds between two lines at least.
    """

    def __init__(self, name: str, *, total: float, unit: str, log: Log, interval: float = 10.0) -> None:
        self.name, self.total, self.unit, self.log, self.interval = name, total, unit, log, interval
        self.done = 0.0
        self.started = self._last = time.perf_counter()

    def advance(self, amount: float) -> None:
        """Counts ``amount`` more done; logs a line when ``interval`` has passed since the last."""
        self.done += amount
        now = time.perf_counter()
        if now - self._last >= self.interval:
            self._last = now
            self.log(self.line(now))

    def line(self, now: float | None = None) -> str:
        """``name: done/total unit (percent), rate per second, time left``."""
        elapsed = (now if now is not None else time.perf_counter()) - self.started
        rate = self.done / elapsed if elapsed > 0 else 0.0
        left = (self.total - self.done) / rate if rate > 0 else float("inf")
        share = 100 * self.done / self.total if self.total > 0 else 100.0
        eta = f"{left:.0f} s left" if left != float("inf") else "time left unknown"
        return f"{self.name}: {self.done:.0f}/{self.total:.0f} {self.unit} ({share:.0f} %), {elapsed:.0f} s so far, {eta}"

    def finish(self) -> float:
        """Logs the final line; returns the stage's wall-clock seconds."""
        elapsed = time.perf_counter() - self.started
        self.log(self.line())
        return elapsed
