"""The interface every audio source implements.

An :class:`AudioSource` is an iterable of :class:`~online_gim.streams.chunk.AudioChunk` s (16 kHz mono float32
numpy, with labels where known) with a ``source_id`` and ``close()``. Pull sources (replay, files,
synthetic) are driven by a :class:`~online_gim.streams.feeder.Feeder` thread that pushes their chunks into the
ring buffer, paced to ``speed`` x real time; push sources (the microphone) push from their device
callback themselves.

Usage::

    with LibriSpeechReplay(root, speed=None) as source:     # any AudioSource
        for chunk in source:
            ...
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Iterator

from online_gim.streams.chunk import AudioChunk

DEFAULT_CHUNK_SAMPLES = 4096
"""Samples per chunk that pull sources deliver (256 ms at 16 kHz)."""


class AudioSource(ABC):
    """A stream of 16 kHz mono audio chunks.

    Attributes:
        source_id: names the stream (``"librispeech"``, ``"file:talk.mp3"``, ``"synth"``).
        speed: the pace a feeder should keep, in multiples of real time; ``None`` = as fast as
            possible. Live sources pace themselves and have ``None``.
    """

    source_id: str = "stream"
    speed: float | None = None

    @abstractmethod
    def __iter__(self) -> Iterator[AudioChunk]:
        """Chunks in stream order; a finite source stops, a looping or live one does not."""

    @property
    def files_skipped(self) -> int:
        """Files or utterances that could not be decoded and were skipped."""
        return 0

    def remaining_seconds(self) -> float | None:
        """Seconds of audio an iteration from the start position delivers before the source ends by
        itself; ``None`` when it never ends (live, looping) or cannot tell."""
        return None

    def close(self) -> None:
        """Releases files and devices; iteration stops. Idempotent."""

    def __enter__(self) -> AudioSource:
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()


def parse_speed(value: str | float | None) -> float | None:
    """``"max"`` / ``None`` -> ``None`` (unpaced); ``"1.0"``, ``2`` -> a positive float.

    Examples:
        >>> parse_speed("max"), parse_speed("2"), parse_speed(1.0)
        (None, 2.0, 1.0)
    """
    if value is None or (isinstance(value, str) and value.strip().lower() in {"max", "inf", "none"}):
        return None
    speed = float(value)
    if not speed > 0:
        raise ValueError(f"speed must be a positive number or 'max', got {value!r}")
    return None if speed == float("inf") else speed
