"""Where windows start, what is lost when the consumer falls behind, and how a window is cut.

Windows of ``window`` samples start every ``hop`` samples of the stream (window ``k`` covers stream
samples ``[k * hop, k * hop + window)``; ``hop <= window``, so overlap is allowed and no sample
falls between windows by design). :class:`WindowSchedule` is the pure bookkeeping behind the
thread-safe :class:`~online_gim.streams.ring_buffer.RingBuffer`: it knows the next window to emit and keeps an
exact account of every sample of the stream, which is always in exactly one of three states::

    samples_in == samples_windowed + samples_dropped + pending(write_position)

``samples_windowed`` are samples in at least one emitted window, ``samples_dropped`` samples that
no window will ever contain because the buffer overwrote them (or the windows that needed them)
before the consumer read them, ``pending`` the samples not yet decided (at the end of the stream:
the remainder shorter than a window). With overlapping windows a window can be dropped while all
its samples are in neighbouring windows: ``windows_dropped`` rises, ``samples_dropped`` does not.

:func:`~online_gim.streams.ring_buffer.iter_windows` cuts windows from an iterable of chunks without threads
(offline use, e.g. evaluation) through the same ring buffer, so that it gives the same windows as a
live stream.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np
import torch

from online_gim.streams.chunk import frame_labels_of
from online_gim.streams.window import UNKNOWN_LABEL, AudioWindow, UtteranceSpan

DEFAULT_WINDOW = 20480
"""Samples per window (1.28 s at 16 kHz, GIM's audio window)."""

DEFAULT_HOP = 20480
"""Samples between the starts of consecutive windows (= window: no overlap)."""

NO_PHONE_TRACK = -2
"""Internal per-sample phone value for samples whose chunk had no phone labels at all."""


@dataclass(frozen=True)
class WindowSpec:
    """Window length and hop, in samples at 16 kHz (``0 < hop <= window``)."""

    window: int = DEFAULT_WINDOW
    hop: int = DEFAULT_HOP

    def __post_init__(self) -> None:
        if self.window <= 0 or self.hop <= 0:
            raise ValueError(f"window and hop must be positive, got window={self.window}, hop={self.hop}")
        if self.hop > self.window:
            raise ValueError(f"hop ({self.hop}) must not exceed window ({self.window})")

    def start(self, index: int) -> int:
        """Stream position of the first sample of window ``index``."""
        return index * self.hop

    def count(self, total_samples: int) -> int:
        """Number of complete windows in a stream of ``total_samples`` samples."""
        if total_samples < self.window:
            return 0
        return (total_samples - self.window) // self.hop + 1


class WindowSchedule:
    """Which window comes next, and the exact account of emitted, dropped and pending samples.

    Not thread-safe by itself: the ring buffer calls it under its lock.

    Examples:
        >>> s = WindowSchedule(WindowSpec(window=4, hop=2))
        >>> s.ready(5), s.emit(), s.ready(5)
        (True, 0, False)
        >>> s.skip_to(oldest=7)   # the buffer overwrote samples up to 7: windows 1, 2, 3 are lost
        (3, 4)
        >>> s.next_start, s.samples_windowed, s.samples_dropped, s.pending(12)
        (8, 4, 4, 4)
    """

    def __init__(self, spec: WindowSpec) -> None:
        self.spec = spec
        self._reset()

    def _reset(self) -> None:
        self.next_index = 0
        self.accounted_until = 0
        self.samples_windowed = 0
        self.samples_dropped = 0
        self.windows_emitted = 0
        self.windows_dropped = 0

    @property
    def next_start(self) -> int:
        """Stream position where the next window to emit starts."""
        return self.spec.start(self.next_index)

    def ready(self, write_position: int) -> bool:
        """Whether the next window is complete when ``write_position`` samples have been written."""
        return self.next_start + self.spec.window <= write_position

    def emit(self) -> int:
        """Marks the next window emitted; returns its start position."""
        start = self.next_start
        stop = start + self.spec.window
        self.samples_windowed += stop - max(self.accounted_until, start)
        self.accounted_until = stop
        self.next_index += 1
        self.windows_emitted += 1
        return start

    def skip_to(self, oldest: int) -> tuple[int, int]:
        """The buffer no longer holds samples before ``oldest``: skips the windows that needed them.

        Returns:
            ``(windows, samples)`` newly dropped: the windows that can no longer be cut, and the
            samples that no emitted or future window contains.
        """
        if self.next_start >= oldest:
            return 0, 0
        hop = self.spec.hop
        new_index = -(-oldest // hop)
        windows = new_index - self.next_index
        new_start = new_index * hop
        samples = max(0, new_start - self.accounted_until)
        self.accounted_until = max(self.accounted_until, new_start)
        self.next_index = new_index
        self.windows_dropped += windows
        self.samples_dropped += samples
        return windows, samples

    def pending(self, write_position: int) -> int:
        """Samples written but neither windowed nor dropped yet (the remainder, at the end)."""
        return max(0, write_position - self.accounted_until)


def cut_window(
    samples: np.ndarray,
    phones: np.ndarray,
    spans: Iterable[tuple[int, int, str, str | None]],
    *,
    start_sample: int,
    source_id: str,
) -> AudioWindow:
    """Builds an :class:`AudioWindow` from the samples and per-sample labels of one window.

    Args:
        samples: ``(window,)`` float32, copied into the window's tensor.
        phones: ``(window,)`` int16 per-sample phones; ``NO_PHONE_TRACK`` where the chunk had none.
            The window's ``phones`` are the labels at each 10 ms frame's centre sample
            (:func:`online_gim.streams.chunk.frame_labels_of`), ``None`` if no sample had a phone track.
        spans: ``(start, stop, utterance_id, speaker_id)`` in stream positions, in order; clipped
            to the window.
        start_sample: stream position of ``samples[0]``.
        source_id: the stream's name.
    """
    n = samples.shape[0]
    if np.all(phones == NO_PHONE_TRACK):
        window_phones = None
    else:
        window_phones = frame_labels_of(phones)
        window_phones[window_phones == NO_PHONE_TRACK] = UNKNOWN_LABEL
    window_spans = tuple(
        UtteranceSpan(max(0, start - start_sample), min(n, stop - start_sample), utterance_id, speaker_id)
        for start, stop, utterance_id, speaker_id in spans
        if stop > start_sample and start < start_sample + n
    )
    return AudioWindow(
        samples=torch.from_numpy(np.array(samples, dtype=np.float32, copy=True)),
        start_sample=start_sample,
        source_id=source_id,
        phones=window_phones,
        spans=window_spans,
    )
