"""``/readyz``: the source is open and the learner steps.

:class:`Readiness` is told when the source opens and closes and when the learner steps (by
:class:`~online_gim.services.live.LiveBoard`, on the learner's thread), and answers on any thread. Its clock
is injectable: a test drives a stall with a clock of its own instead of waiting for one.
"""

from __future__ import annotations

import time
from collections.abc import Callable


class Readiness:
    """Whether the process is ready: the source is open and a window was processed recently.

    Parameters:
        stall_seconds: not ready when no window was processed for this long.
        clock: monotonic seconds.
    """

    def __init__(self, stall_seconds: float = 15.0, *, clock: Callable[[], float] = time.monotonic) -> None:
        self.stall_seconds = stall_seconds
        self._clock = clock
        self._source_open: bool | None = None
        self._last_step: float | None = None
        self._closed = False

    def source_state(self, *, open: bool) -> None:
        """The source opened or closed; after the first step it is taken as open until told otherwise."""
        self._source_open = open

    def stepped(self) -> None:
        """The learner processed a window just now."""
        self._last_step = self._clock()

    def close(self) -> None:
        """The stream has ended: never ready again."""
        self._closed = True
        self._source_open = False

    @property
    def closed(self) -> bool:
        return self._closed

    def check(self) -> tuple[bool, str]:
        """``(ready, reason)``: ready when the source is open and the learner stepped recently."""
        if self._closed:
            return False, "the board is closed (the stream has ended)"
        if self._source_open is False:
            return False, "the source is not open"
        if self._last_step is None:
            return False, "no window has been processed yet"
        idle = self._clock() - self._last_step
        if idle > self.stall_seconds:
            return False, f"no window processed for {idle:.1f} s"
        return True, "source open and learner stepping"
