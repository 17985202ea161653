"""A bounded store of recent windows of the stream, replayed to the learner when it has time to spare.

A live stream gives the learner one window per hop (1.28 s by default) and the learner needs a
fraction of it. :class:`ReplayStore` keeps the windows the learner has learned from (as int16, 2
bytes per sample: 1.9 MB per minute of audio at 16 kHz with hop = window) and draws windows to learn
from again. Policies (``policy``):

- ``recent``: the store holds the newest ``minutes`` of windows (first in, first out) and draws from
  it with a recency bias: the age ``a`` (0 = newest) of the drawn window is exponential with mean
  ``capacity / 4`` (truncated to the store). Recent audio is what the learner's negative memory and
  statistics describe best; older windows still come back now and then.
- ``uniform``: the same store, drawn uniformly.
- ``reservoir``: a uniform sample of every window of the stream so far (Vitter's algorithm R,
  ``capacity`` windows), drawn uniformly: old audio is never forgotten, in proportion to its share
  of the stream.

Windows are stored with their stream position, stream id and utterance spans, so a replayed window
is exactly the window that was learned (up to the int16 rounding, and samples beyond [-1, 1] are
clipped); a non-finite window is never stored.

Example:
    >>> import torch
    >>> store = ReplayStore(ReplayConfig(minutes=0.1, policy="uniform"), window=16000, seed=0)
    >>> for i in range(10):
    ...     store.add(AudioWindow(torch.full((16000,), 0.01 * i), start_sample=16000 * i))
    >>> len(store), store.capacity          # 0.1 min = 6 s = 6 windows of 1 s
    (6, 6)
    >>> store.sample().start_sample in range(4 * 16000, 10 * 16000)
    True
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass

import numpy as np
import torch

from online_gim.streams.replay_config import ReplayConfig
from online_gim.streams.window import SAMPLE_RATE, AudioWindow, UtteranceSpan

_INT16_SCALE = 32767.0


@dataclass(frozen=True)
class _Stored:
    samples: np.ndarray  # (n,) int16
    start_sample: int
    source_id: str
    spans: tuple[UtteranceSpan, ...]


class ReplayStore:
    """The store (module docstring).

    Parameters:
        config: size and policy.
        window: samples per window.
        seed: seeds the draws (and the reservoir's choices).
    """

    def __init__(self, config: ReplayConfig, *, window: int, seed: int) -> None:
        self.config = config
        self.capacity = max(1, int(config.minutes * 60 * SAMPLE_RATE) // window)
        self._rng = np.random.default_rng(seed)
        self._windows: deque[_Stored] = deque(maxlen=self.capacity)
        self.seen = 0  # windows offered to the store so far

    def __len__(self) -> int:
        return len(self._windows)

    @property
    def nbytes(self) -> int:
        """Bytes of audio held."""
        return sum(stored.samples.nbytes for stored in self._windows)

    def add(self, window: AudioWindow) -> None:
        """Offers a learned window to the store (a non-finite one is ignored)."""
        samples = window.samples
        if not bool(torch.isfinite(samples).all()):
            return
        self.seen += 1
        if self.config.policy == "reservoir" and len(self._windows) == self.capacity:
            slot = int(self._rng.integers(self.seen))
            if slot >= self.capacity:
                return
            self._windows[slot] = self._stored(window)
            return
        self._windows.append(self._stored(window))

    @staticmethod
    def _stored(window: AudioWindow) -> _Stored:
        clipped = torch.clamp(window.samples.to(torch.float32), -1.0, 1.0)
        samples = torch.round(clipped * _INT16_SCALE).to(torch.int16).numpy()
        return _Stored(samples, window.start_sample, window.source_id, window.spans)

    def sample(self) -> AudioWindow:
        """A stored window, drawn by the policy.

        Raises:
            LookupError: the store is empty.
        """
        if not self._windows:
            raise LookupError("the replay store is empty")
        count = len(self._windows)
        if self.config.policy == "recent":
            age = min(count - 1, int(self._rng.exponential(self.capacity / 4)))
            stored = self._windows[count - 1 - age]
        else:
            stored = self._windows[int(self._rng.integers(count))]
        samples = torch.from_numpy(stored.samples.astype(np.float32) / _INT16_SCALE)
        return AudioWindow(samples, start_sample=stored.start_sample, source_id=stored.source_id, spans=stored.spans)
