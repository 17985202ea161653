"""Counters that a running stream keeps, for the status line, the summary and the metrics."""

from __future__ import annotations

from dataclasses import asdict, dataclass


@dataclass
class StreamCounters:
    """Running totals of a stream; every sample that enters is either windowed or counted as dropped.

    Attributes:
        samples_in: samples (at 16 kHz) that the source delivered into the ring buffer.
        samples_dropped: samples overwritten in the ring buffer before the learner read them.
        windows_emitted: windows handed to the learner.
        windows_dropped: whole windows lost to overwriting (``samples_dropped`` counts the samples).
        files_skipped: files or utterances that could not be decoded and were skipped.
        overflows: device input overflows reported by the audio driver (microphone).
        source_seconds: stream time of the newest sample delivered, in seconds.
    """

    samples_in: int = 0
    samples_dropped: int = 0
    windows_emitted: int = 0
    windows_dropped: int = 0
    files_skipped: int = 0
    overflows: int = 0
    source_seconds: float = 0.0

    def to_dict(self) -> dict[str, float]:
        return asdict(self)
