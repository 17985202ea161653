"""The unit of audio that flows from a source through the ring buffer into the learner."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch

SAMPLE_RATE = 16_000
"""Samples per second of every audio window (16 kHz mono, as in LibriSpeech and GIM)."""

FRAME_SAMPLES = 160
"""Samples per label frame: 10 ms at 16 kHz, the frame rate of CPC's phone labels."""

UNKNOWN_LABEL = -1
"""Phone label of a frame whose phone is not known (microphone, unlabelled utterance)."""


@dataclass(frozen=True)
class UtteranceSpan:
    """The part of a window that one utterance (or recording) covers.

    ``start`` and ``stop`` are sample offsets relative to the window's first sample
    (``0 <= start < stop <= len(window)``).
    """

    start: int
    stop: int
    utterance_id: str
    speaker_id: str | None = None


@dataclass(frozen=True)
class AudioWindow:
    """A window of a continuous 16 kHz mono stream, with the labels that are known for it.

    Attributes:
        samples: ``(n,)`` float32 waveform in [-1, 1] at ``SAMPLE_RATE``.
        start_sample: stream position of ``samples[0]``, counted in samples from the stream start.
        source_id: names the stream (``"synth"``, ``"mic:default"``, ...); memories never mix
            exclusion windows across different streams.
        phones: ``(n // FRAME_SAMPLES,)`` int16 phone class per 10 ms frame, ``UNKNOWN_LABEL``
            where unknown; ``None`` when the source never has phone labels.
        spans: the utterances the window covers, in order.
    """

    samples: torch.Tensor
    start_sample: int = 0
    source_id: str = "stream"
    phones: np.ndarray | None = None
    spans: tuple[UtteranceSpan, ...] = field(default_factory=tuple)

    @property
    def start(self) -> int:
        """Stream position of the first sample (the unit of an audio stream is the sample)."""
        return self.start_sample

    @property
    def length(self) -> int:
        """Samples in the window."""
        return int(self.samples.shape[-1])

    @property
    def rate(self) -> float:
        """Samples per second (:data:`SAMPLE_RATE`)."""
        return float(SAMPLE_RATE)

    @property
    def num_frames(self) -> int:
        """Number of 10 ms label frames in the window."""
        return int(self.samples.shape[-1]) // FRAME_SAMPLES

    @property
    def start_seconds(self) -> float:
        """Stream time of the first sample, in seconds."""
        return self.start_sample / SAMPLE_RATE

    def frame_speakers(self) -> list[str | None]:
        """Speaker id of every 10 ms frame (``None`` where unknown), from ``spans``."""
        return frame_speakers(self.spans, self.num_frames)


def frame_speakers(spans: tuple[UtteranceSpan, ...], num_frames: int) -> list[str | None]:
    """Speaker id of each of a window's ``num_frames`` 10 ms frames (``None`` where unknown): a
    frame belongs to the span that contains its centre sample."""
    speakers: list[str | None] = [None] * num_frames
    for span in spans:
        first = max(0, (span.start - FRAME_SAMPLES // 2 + FRAME_SAMPLES - 1) // FRAME_SAMPLES)
        last = min(num_frames, (span.stop - FRAME_SAMPLES // 2 + FRAME_SAMPLES - 1) // FRAME_SAMPLES)
        for frame in range(first, last):
            speakers[frame] = span.speaker_id
    return speakers
