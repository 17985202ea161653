"""A reader thread that pushes a pull source's chunks into the ring buffer, paced like a device.

A :class:`Feeder` iterates an :class:`~online_gim.streams.sources.base.AudioSource` in a daemon thread and
pushes every chunk into a :class:`~online_gim.streams.ring_buffer.RingBuffer`. With ``speed = s`` it delivers a
chunk only once ``s`` x real time has covered its last sample (as a recording device would); with
``speed = None`` as fast as the consumer takes it: then it waits for room in the buffer
(backpressure), so a replay at maximum speed loses nothing. A paced feeder behaves like a live
device and never waits for the consumer: a slow consumer loses the oldest audio (counted by the
buffer). When the source ends the buffer is closed; when it raises,
the buffer is closed with the error (the consumer gets :class:`~online_gim.streams.ring_buffer.StreamError`).
The source's ``files_skipped`` is copied into the buffer's counters after every chunk.

Usage::

    buffer = RingBuffer(window=20480, hop=20480, source_id=source.source_id)
    with Feeder(source, buffer):          # starts the thread; stops it and closes the source at exit
        for window in buffer:
            learner.step(window)
"""

from __future__ import annotations

import threading
import time

from online_gim.streams.ring_buffer import RingBuffer
from online_gim.streams.sources.base import AudioSource
from online_gim.streams.window import SAMPLE_RATE

_UNSET = object()


class Feeder:
    """Drives a pull source into a ring buffer from a daemon thread.

    Parameters:
        source: the source to read.
        buffer: the ring buffer to push into.
        speed: multiples of real time; ``None`` = unpaced. Default: ``source.speed``.
        backpressure: wait for room in the buffer instead of overwriting unread audio. Default:
            ``speed is None`` (an unpaced replay must not lose audio; a paced one acts live).
    """

    def __init__(
        self,
        source: AudioSource,
        buffer: RingBuffer,
        *,
        speed: float | None = _UNSET,  # type: ignore[assignment]
        backpressure: bool | None = None,
    ) -> None:
        self.source = source
        self.buffer = buffer
        self.speed = source.speed if speed is _UNSET else speed
        self.backpressure = self.speed is None if backpressure is None else backpressure
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"feeder:{source.source_id}", daemon=True)
        self.samples_pushed = 0

    def start(self) -> Feeder:
        """Starts the reader thread; returns ``self``."""
        self._thread.start()
        return self

    def stop(self, timeout: float | None = 5.0) -> None:
        """Asks the thread to stop, waits for it, closes the source and ends the buffer's stream."""
        self._stop.set()
        if self._thread.is_alive() and self._thread is not threading.current_thread():
            self._thread.join(timeout)
        self.source.close()
        self.buffer.close()

    @property
    def running(self) -> bool:
        """Whether the reader thread is still delivering."""
        return self._thread.is_alive()

    def join(self, timeout: float | None = None) -> None:
        """Waits for the source to end (or the thread to be stopped)."""
        self._thread.join(timeout)

    def __enter__(self) -> Feeder:
        return self.start()

    def __exit__(self, *exc_info) -> None:
        self.stop()

    def _run(self) -> None:
        error: BaseException | None = None
        started = time.monotonic()
        try:
            for chunk in self.source:
                if self._stop.is_set():
                    break
                if self.speed is not None:
                    due = started + (self.samples_pushed + len(chunk)) / (SAMPLE_RATE * self.speed)
                    delay = due - time.monotonic()
                    if delay > 0 and self._stop.wait(delay):
                        break
                if self.backpressure:
                    step = self.buffer.spec.hop
                    for start in range(0, len(chunk), step):
                        piece = chunk.slice(start, start + step) if len(chunk) > step else chunk
                        while not self.buffer.wait_for_space(len(piece), timeout=0.1):
                            if self._stop.is_set():
                                return
                        if self.buffer.closed:
                            return
                        self.buffer.push(piece)
                else:
                    if self.buffer.closed:
                        break
                    self.buffer.push(chunk)
                self.samples_pushed += len(chunk)
                self.buffer.counters.files_skipped = self.source.files_skipped
        except BaseException as exc:  # noqa: BLE001 - handed to the consumer through the buffer
            error = exc
        finally:
            self.buffer.counters.files_skipped = self.source.files_skipped
            self.buffer.close(error=error)
