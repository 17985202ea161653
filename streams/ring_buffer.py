"""A bounded, thread-safe ring buffer of audio and its labels, between a source and the learner.

The producer (a device callback or a :class:`~online_gim.streams.feeder.Feeder` thread) calls
:meth:`RingBuffer.push` with :class:`~online_gim.streams.chunk.AudioChunk` s and **never blocks** (beyond a
short lock): when the consumer falls behind, the oldest unread audio is overwritten and counted in
the :class:`~online_gim.streams.counters.StreamCounters` (``samples_dropped``, ``windows_dropped``), never
silently. The consumer takes :class:`~online_gim.streams.window.AudioWindow` s of ``window`` samples every
``hop`` samples (:mod:`online_gim.streams.windowing`) with :meth:`RingBuffer.read_window`, which blocks until a
window is complete, the stream ends, or the timeout passes.

Every sample is accounted for exactly::

    counters.samples_in == buffer.samples_windowed + counters.samples_dropped + buffer.pending_samples

Usage::

    buffer = RingBuffer(capacity=8 * 20480, window=20480, hop=20480, source_id="mic:default")

    # producer thread / device callback
    buffer.push(AudioChunk(block, utterance_id="mic:default", offset=position))
    ...
    buffer.wait_for_space(len(chunk))   # only a source that may be slowed down (replay at max speed)
    buffer.close()                      # end of stream (or close(error=exc) when the source failed)

    # consumer
    while (window := buffer.read_window(timeout=1.0)) is not None or not buffer.exhausted:
        if window is not None:
            learner.step(window)
    # or simply: for window in buffer: ...   (blocks; stops when the stream has ended)

    buffer.fill_ratio        # unread backlog / capacity, 0..1 (for --schedule auto)
    buffer.counters          # StreamCounters: samples_in, samples_dropped, windows_dropped, ...
    buffer.remainder_samples # after the end: samples too few for another window

:func:`iter_windows` cuts the windows of an iterable of chunks in the calling thread, through a ring
buffer (offline use, e.g. evaluation: the same windows as a live stream)::

    for window in iter_windows(LibriSpeechReplay(root, speed=None), window=20480, hop=20480,
                               source_id="librispeech"):
        ...
"""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Iterable, Iterator

import numpy as np

from online_gim.streams.chunk import PHONE_DTYPE, AudioChunk
from online_gim.streams.counters import StreamCounters
from online_gim.streams.window import SAMPLE_RATE, AudioWindow
from online_gim.streams.windowing import DEFAULT_HOP, DEFAULT_WINDOW, NO_PHONE_TRACK, WindowSchedule, WindowSpec, cut_window

DEFAULT_CAPACITY_WINDOWS = 8
"""Default capacity, in windows (8 x 1.28 s = 10.24 s of audio)."""


class StreamError(RuntimeError):
    """The source failed; raised by :meth:`RingBuffer.read_window` once the buffered windows are read."""


class RingBuffer:
    """Bounded ring buffer of a 16 kHz mono stream and its per-sample labels, cut into windows.

    Parameters:
        capacity: samples held (at least ``window``; ``window + hop`` or more recommended). Default
            ``8 * window``.
        window: samples per window (default 20480 = 1.28 s).
        hop: samples between window starts (default 20480; ``hop < window`` overlaps windows).
        source_id: the ``source_id`` of every window.
        counters: the :class:`StreamCounters` to update (a new one by default).
        origin: stream position of the first sample pushed (default 0); a resumed stream passes
            where it stopped (e.g. ``ReplayPosition.stream_sample``) so that window positions and
            stream time go on. Window ``k`` starts at ``origin + k * hop``.

    The buffer keeps ``capacity`` float32 samples and ``capacity`` int16 phone labels, plus the
    utterance spans that reach into the retained audio.
    """

    def __init__(
        self,
        capacity: int | None = None,
        *,
        window: int = DEFAULT_WINDOW,
        hop: int = DEFAULT_HOP,
        source_id: str = "stream",
        counters: StreamCounters | None = None,
        origin: int = 0,
    ) -> None:
        self.spec = WindowSpec(window, hop)
        if origin < 0:
            raise ValueError(f"origin must be >= 0, got {origin}")
        self.origin = int(origin)
        self.capacity = int(capacity if capacity is not None else DEFAULT_CAPACITY_WINDOWS * window)
        if self.capacity < window:
            raise ValueError(f"capacity ({self.capacity}) must hold at least one window ({window})")
        self.source_id = source_id
        self.counters = counters if counters is not None else StreamCounters()
        self._samples = np.zeros(self.capacity, dtype=np.float32)
        self._phones = np.full(self.capacity, NO_PHONE_TRACK, dtype=PHONE_DTYPE)
        self._spans: deque[list] = deque()  # [start, stop, utterance_id, speaker_id] in stream positions
        self._last_chunk: tuple[str | None, int] | None = None  # (utterance_id, end_offset)
        self._schedule = WindowSchedule(self.spec)
        self._write = 0
        self._closed = False
        self._error: BaseException | None = None
        self._cond = threading.Condition()

    # ----------------------------------------------------------------- producer side
    def push(self, chunk: AudioChunk) -> bool:
        """Appends a chunk to the stream. Never waits for the consumer; overwrites and counts instead.

        Returns:
            ``False`` (and ignores the chunk) when the stream was closed, else ``True``.
        """
        n = len(chunk)
        with self._cond:
            if self._closed:
                return False
            if n == 0:
                return True
            start = self._write
            self._record_span(chunk, start)
            keep = min(n, self.capacity)  # a chunk longer than the buffer keeps only its tail
            self._store(chunk.samples[n - keep :], chunk.phones, n - keep, start + n - keep)
            self._write = start + n
            oldest = max(0, self._write - self.capacity)
            windows, samples = self._schedule.skip_to(oldest)
            counters = self.counters
            counters.samples_in += n
            counters.samples_dropped += samples
            counters.windows_dropped += windows
            counters.source_seconds = (self.origin + self._write) / SAMPLE_RATE
            self._prune_spans()
            if self._schedule.ready(self._write):
                self._cond.notify_all()
            return True

    def wait_for_space(self, num_samples: int, timeout: float | None = None) -> bool:
        """Waits until ``num_samples`` more fit without overwriting unread audio (backpressure).

        Only for sources that may be slowed down (a replay at ``speed=max``); a live source never
        calls it. Returns at once when the consumer is waiting for audio (no complete window is
        buffered), so a too-small buffer cannot deadlock; then the push may overwrite (counted).

        Returns:
            ``True`` when there is room (or the stream is closed), ``False`` on timeout.
        """

        def room() -> bool:
            backlog = self._write - self._schedule.next_start
            return (
                self._closed
                or backlog + num_samples <= self.capacity
                or not self._schedule.ready(self._write)
            )

        with self._cond:
            return self._cond.wait_for(room, timeout)

    def close(self, error: BaseException | None = None) -> None:
        """Marks the end of the stream (idempotent: the first call counts).

        ``error`` (if any) is raised to the consumer as :class:`StreamError` after the buffered
        windows. The consumer may also close the buffer to stop a producer: later pushes are ignored.
        """
        with self._cond:
            if self._closed:
                return
            self._closed = True
            if error is not None:
                self._error = error
            self._cond.notify_all()

    def _record_span(self, chunk: AudioChunk, start: int) -> None:
        last = self._last_chunk
        self._last_chunk = (chunk.utterance_id, chunk.end_offset)
        if chunk.utterance_id is None:
            return
        continues = (
            last is not None
            and last[0] == chunk.utterance_id
            and last[1] == chunk.offset
            and self._spans
            and self._spans[-1][1] == start
        )
        if continues:
            self._spans[-1][1] = start + len(chunk)
        else:
            self._spans.append([start, start + len(chunk), chunk.utterance_id, chunk.speaker_id])

    def _store(self, samples: np.ndarray, phones: np.ndarray | None, skip: int, position: int) -> None:
        n = samples.shape[0]
        at = position % self.capacity
        first = min(n, self.capacity - at)
        self._samples[at : at + first] = samples[:first]
        self._samples[: n - first] = samples[first:]
        if phones is None:
            self._phones[at : at + first] = NO_PHONE_TRACK
            self._phones[: n - first] = NO_PHONE_TRACK
        else:
            phones = phones[skip:]
            self._phones[at : at + first] = phones[:first]
            self._phones[: n - first] = phones[first:]

    def _prune_spans(self) -> None:
        horizon = max(self._write - self.capacity, self._schedule.next_start)
        while self._spans and self._spans[0][1] <= horizon:
            self._spans.popleft()

    # ----------------------------------------------------------------- consumer side
    def read_window(self, timeout: float | None = None) -> AudioWindow | None:
        """The next window; waits up to ``timeout`` seconds (``None``: until one is ready or the end).

        Returns:
            the window, or ``None`` on timeout or when the stream has ended (see :attr:`exhausted`).

        Raises:
            StreamError: the source failed (``close(error=...)``) and all complete windows were read.
        """
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._cond:
            while not self._schedule.ready(self._write):
                if self._closed:
                    if self._error is not None:
                        raise StreamError(f"source {self.source_id!r} failed: {self._error}") from self._error
                    return None
                remaining = None if deadline is None else deadline - time.monotonic()
                if remaining is not None and remaining <= 0:
                    return None
                self._cond.wait(remaining)
            start = self._schedule.emit()
            window = self._cut(start)
            self.counters.windows_emitted += 1
            self._prune_spans()
            self._cond.notify_all()  # a producer may wait for space
            return window

    def __iter__(self) -> Iterator[AudioWindow]:
        """Windows until the stream has ended (blocks while waiting for audio)."""
        while (window := self.read_window()) is not None:
            yield window

    def _cut(self, start: int) -> AudioWindow:
        n = self.spec.window
        at = start % self.capacity
        idx = (np.arange(n) + at) % self.capacity if at + n > self.capacity else slice(at, at + n)
        origin = self.origin
        spans = [
            (begin + origin, end + origin, utterance_id, speaker_id)
            for begin, end, utterance_id, speaker_id in self._spans
            if end > start and begin < start + n
        ]
        return cut_window(
            self._samples[idx], self._phones[idx], spans, start_sample=origin + start, source_id=self.source_id
        )

    # ----------------------------------------------------------------- state
    @property
    def closed(self) -> bool:
        """Whether the producer has ended the stream."""
        return self._closed

    @property
    def exhausted(self) -> bool:
        """Whether the stream has ended and every complete window has been read."""
        with self._cond:
            return self._closed and not self._schedule.ready(self._write)

    @property
    def error(self) -> BaseException | None:
        """The error the producer closed the stream with, if any."""
        return self._error

    @property
    def write_position(self) -> int:
        """Stream position of the next sample to arrive (``origin`` + samples pushed)."""
        return self.origin + self._write

    @property
    def next_window_start(self) -> int:
        """Stream position of the next window the consumer will get."""
        return self.origin + self._schedule.next_start

    @property
    def backlog_samples(self) -> int:
        """Samples written but not yet read (from the next window's start to the newest sample)."""
        with self._cond:
            return max(0, self._write - self._schedule.next_start)

    @property
    def fill_ratio(self) -> float:
        """Unread backlog / capacity, 0..1: 1 means the next push overwrites unread audio."""
        return min(1.0, self.backlog_samples / self.capacity)

    @property
    def windows_ready(self) -> int:
        """Complete windows waiting to be read."""
        with self._cond:
            return self.spec.count(self._write - self._schedule.next_start)

    @property
    def samples_windowed(self) -> int:
        """Distinct stream samples contained in at least one emitted window."""
        return self._schedule.samples_windowed

    @property
    def pending_samples(self) -> int:
        """Samples neither windowed nor dropped yet (after the end: the remainder)."""
        with self._cond:
            return self._schedule.pending(self._write)

    @property
    def remainder_samples(self) -> int:
        """At the end of the stream: samples after the last window, too few for another one."""
        return self.pending_samples


def iter_windows(
    chunks: Iterable[AudioChunk],
    *,
    window: int = DEFAULT_WINDOW,
    hop: int = DEFAULT_HOP,
    source_id: str = "stream",
    counters=None,
) -> Iterator[AudioWindow]:
    """Cuts the windows of a chunk stream in the calling thread (no pacing, nothing dropped).

    The remainder shorter than a window is left out (it is ``counters``' ``samples_in`` minus what
    the windows hold; see :class:`~online_gim.streams.ring_buffer.RingBuffer.remainder_samples`).
    """
    buffer = RingBuffer(window + hop, window=window, hop=hop, source_id=source_id, counters=counters)
    for chunk in chunks:
        for start in range(0, len(chunk), hop):
            buffer.push(chunk.slice(start, start + hop) if len(chunk) > hop else chunk)
            while (item := buffer.read_window(timeout=0)) is not None:
                yield item
    buffer.close()
    while (item := buffer.read_window(timeout=0)) is not None:
        yield item
