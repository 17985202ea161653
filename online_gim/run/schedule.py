"""``--schedule auto``: how many modules the next window updates, from the stream's backlog.

:class:`ModuleBudget` is one of the session loop's two schedules (:mod:`online_gim.run.session`; the
other is replay, :mod:`online_gim.run.replay_schedule`): it keeps a paced stream in real time when
updating every module on every window would fall behind.
"""

from __future__ import annotations


class ModuleBudget:
    """``--schedule auto``: how many modules the next window updates, from the ring buffer's backlog.

    Additive increase, multiplicative decrease on the backlog, with a slow start: the budget starts
    at one module (the learner's first windows are its slowest: lazy initialisation) and grows by
    one per window while the learner keeps up. When audio was dropped since the
    previous window the budget falls to one module (the learner must catch up at once); when the
    buffer is at least ``high`` full it halves (drops are near); when complete windows pile up
    (more waiting than after the previous window, and at least two) it shrinks by one; when the
    learner has caught up (no complete window waiting) it grows by one, up to all modules. The
    modules to update are taken round-robin, so every module gets its share of updates.

    Parameters:
        num_modules: modules in the stack.
        high: buffer fill ratio (0..1) at which the budget halves.

    Examples:
        >>> budget = ModuleBudget(4)
        >>> [budget.choose(fill_ratio=0.1, windows_ready=0, windows_dropped=0) for _ in range(3)]  # keeping up
        [[0, 1], [0, 2, 3], [0, 1, 2, 3]]
        >>> budget.choose(fill_ratio=0.6, windows_ready=5, windows_dropped=0)   # falling behind: half
        [1, 2]
        >>> budget.choose(fill_ratio=0.2, windows_ready=0, windows_dropped=0)   # caught up: one more
        [0, 1, 3]
        >>> budget.choose(fill_ratio=0.1, windows_ready=0, windows_dropped=2)   # audio lost: one module
        [2]
    """

    def __init__(self, num_modules: int, *, high: float = 0.5) -> None:
        if num_modules < 1:
            raise ValueError("num_modules must be positive")
        if not 0 < high <= 1:
            raise ValueError(f"high must be in (0, 1], got {high}")
        self.num_modules = num_modules
        self.high = high
        self._reset()

    def _reset(self) -> None:
        self.budget = 1
        self._next = 0
        self._last_ready = 0
        self._last_dropped = 0

    def choose(self, *, fill_ratio: float, windows_ready: int, windows_dropped: int) -> list[int]:
        """The modules to update on the window just read, given the backlog left behind it and the
        stream's running count of dropped windows."""
        if windows_dropped > self._last_dropped:
            self.budget = 1
        elif fill_ratio >= self.high:
            self.budget = max(1, self.budget // 2)
        elif windows_ready >= 2 and windows_ready > self._last_ready:
            self.budget = max(1, self.budget - 1)
        elif windows_ready == 0:
            self.budget = min(self.num_modules, self.budget + 1)
        self._last_ready = windows_ready
        self._last_dropped = windows_dropped
        chosen = sorted((self._next + i) % self.num_modules for i in range(self.budget))
        self._next = (self._next + self.budget) % self.num_modules
        return chosen
