"""What to replay and how much: :class:`ReplayConfig` (no torch; the store is :mod:`online_gim.streams.replay`)."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

ReplayPolicy = Literal["recent", "uniform", "reservoir"]
"""How replayed windows are drawn (:mod:`online_gim.streams.replay`)."""


@dataclass(frozen=True)
class ReplayConfig:
    """How many windows are replayed and from what.

    Attributes:
        ratio: replayed updates per stream window at most (may be fractional: 0.5 = one replay
            every other window); 0 turns replay off.
        minutes: minutes of audio the store holds (its capacity in windows is
            ``minutes * 60 * 16000 // window``, at least 1).
        policy: ``recent``, ``uniform`` or ``reservoir`` (:mod:`online_gim.streams.replay`).
    """

    ratio: float = 0.0
    minutes: float = 10.0
    policy: ReplayPolicy = "recent"

    def __post_init__(self) -> None:
        if not (self.ratio >= 0 and math.isfinite(self.ratio)):
            raise ValueError(f"replay ratio must be a finite number >= 0, got {self.ratio}")
        if not (self.minutes > 0 and math.isfinite(self.minutes)):
            raise ValueError(f"replay store minutes must be positive, got {self.minutes}")
        if self.policy not in ("recent", "uniform", "reservoir"):
            raise ValueError(f"replay policy must be recent, uniform or reservoir, got {self.policy!r}")
