"""When the session loop may replay a window of the past: never at the cost of a live window.

After every live window the loop (:mod:`online_gim.run.session`) asks :class:`ReplaySchedule` how
many replayed updates (:mod:`online_gim.streams.replay`) the learner may make now. Two limits apply, the smaller wins:

- **Credit.** Every live window earns ``ratio`` replays; the fraction of a replay left over carries
  to the next window (a ratio of 0.5 replays after every other window), whole replays left unspent
  (no time for them) do not, so a learner that could not replay for a while does not binge later.
- **Time** (a paced stream: a device, or a replay at ``--speed`` N). A replay starts only when no
  complete live window is waiting, the ``--schedule auto`` budget updates every module (the learner
  keeps up), and the slowest of the recent steps, times ``safety``, fits in the time left before the
  next live window is complete. So a replayed step finishes before the live window it could delay
  exists, and the ring buffer, which holds several windows, never fills because of it: replay drops
  no audio that the run without replay would keep. A stream at ``--speed max`` waits for the
  learner, so there only the credit limits.

Example:
    >>> schedule = ReplaySchedule(ratio=2.0, paced=True)
    >>> schedule.earn()
    >>> schedule.record(0.3)                      # a step took 0.3 s
    >>> schedule.allows(next_window_seconds=1.0, keeping_up=True)   # 2 x 0.3 s fits in 1 s
    True
    >>> schedule.spend()
    >>> schedule.allows(next_window_seconds=0.5, keeping_up=True)   # 0.6 s does not fit in 0.5 s
    False
"""

from __future__ import annotations

from collections import deque

RECENT_STEPS = 8
"""Steps whose durations predict the next replayed step's."""


class ReplaySchedule:
    """The limits above.

    Parameters:
        ratio: replayed updates earned per live window.
        paced: the stream is paced (a device or ``--speed`` N): apply the time limit.
        safety: a replay must fit ``safety`` times over in the time before the next live window.
    """

    def __init__(self, ratio: float, *, paced: bool, safety: float = 2.0) -> None:
        if not ratio >= 0:
            raise ValueError(f"ratio must be >= 0, got {ratio}")
        self.ratio = ratio
        self.paced = paced
        self.safety = safety
        self.credit = 0.0
        self._durations: deque[float] = deque(maxlen=RECENT_STEPS)

    def earn(self) -> None:
        """A live window was learned: ``ratio`` more replays are allowed."""
        self.credit = self.credit % 1.0 + self.ratio

    def record(self, seconds: float) -> None:
        """A step (live or replayed) took ``seconds``."""
        self._durations.append(seconds)

    @property
    def expected_seconds(self) -> float:
        """The slowest recent step's duration (0 before any)."""
        return max(self._durations, default=0.0)

    def allows(self, *, next_window_seconds: float | None, keeping_up: bool) -> bool:
        """Whether one more replay may start now.

        Args:
            next_window_seconds: seconds until the next live window is complete (0 when one is
                waiting; ``None`` when unknown, e.g. at the end of the stream).
            keeping_up: the learner updates every module of the live windows.
        """
        if self.credit < 1:
            return False
        if not self.paced:
            return True
        if not keeping_up or next_window_seconds is None or not self._durations:
            return False
        return self.safety * self.expected_seconds <= next_window_seconds

    def spend(self) -> None:
        """One replay was made."""
        self.credit -= 1
