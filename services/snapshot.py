"""Immutable snapshots that the learner's thread publishes and the HTTP thread reads.

A :class:`BoardSnapshot` is built once per processed window and never changed afterwards; the board
swaps its reference (an atomic assignment), so readers need no lock and the learner never waits
for a reader.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from online_gim.report import ModuleReport, ProbeReadout
from online_gim.services.drift_monitor import DriftReading
from online_gim.streams.window import FRAME_SAMPLES, SAMPLE_RATE


@dataclass(frozen=True)
class ProjectionSample:
    """One frame kept for the PCA scatter: its embedding ``(channels,)`` and what is known of it."""

    vector: torch.Tensor
    stream_seconds: float
    speaker: str | None
    phone: int | None


@dataclass(frozen=True)
class BoardSnapshot:
    """Everything the service shows about the newest processed window.

    Attributes:
        seq: number of windows the board has seen (1 for the first).
        wall_time: ``time.time()`` at publication.
        monotonic: ``time.monotonic()`` at publication (for readiness).
        source_id: the stream's name.
        step / updates: the learner's window counter and model step.
        window_start / window_samples: the newest window's position and length (samples, 16 kHz).
        skipped: whether the newest window was skipped (non-finite).
        real_time_factor: compute seconds per audio second of the newest window.
        real_time_factor_mean: exponential moving average of it (about the last 20 windows).
        modules: per module, the report of the newest window on which it computed a loss (schedules
            may skip modules), with ``updated`` telling whether it was updated on the newest window.
        embeddings: per module, ``(frames, channels)`` output of the newest window that was not
            skipped; ``embedding_start`` / ``embedding_samples`` / ``embedding_updates`` describe
            that window.
        phones: ``(label frames,)`` true phone per 10 ms of that window, or ``None``.
        frame_speakers: speaker id per 10 ms of that window (``None`` where unknown).
        probes: the probes' readout of the newest window, when the learner has probes.
        counters: the stream's running totals (``StreamCounters.to_dict()``).
        fill_ratio / lag_seconds: ring-buffer backlog over capacity; stream seconds behind the source.
        drift: the newest drift reading, or ``None`` before the first.
        memory_sizes: ``{module: stored vectors}`` of the FAISS memories.
        windows_skipped: windows skipped so far (non-finite audio or loss).
        history: compact points of the last windows, oldest first (for plots).
        projection: per module, recent sampled frames (oldest first) for the PCA scatter.
        event: the compact per-window event sent on ``/v1/stream``.
    """

    seq: int
    wall_time: float
    monotonic: float
    source_id: str
    step: int
    updates: int
    window_start: int
    window_samples: int
    skipped: bool
    real_time_factor: float
    real_time_factor_mean: float
    modules: tuple[ModuleReport, ...]
    embeddings: tuple[torch.Tensor, ...]
    embedding_start: int
    embedding_samples: int
    embedding_updates: int
    phones: np.ndarray | None
    frame_speakers: tuple[str | None, ...]
    probes: ProbeReadout | None
    counters: dict[str, float]
    fill_ratio: float | None
    lag_seconds: float | None
    drift: DriftReading | None
    memory_sizes: dict[int, int]
    windows_skipped: int = 0
    history: tuple[dict[str, Any], ...] = ()
    projection: tuple[tuple[ProjectionSample, ...], ...] = ()
    event: dict[str, Any] = field(default_factory=dict)

    @property
    def stream_seconds(self) -> float:
        """Stream time of the newest window's end."""
        return (self.window_start + self.window_samples) / SAMPLE_RATE

    def hop_samples(self, module: int) -> int:
        """Input samples per output frame of ``module`` in the embedding window (e.g. 5 ... 160)."""
        frames = int(self.embeddings[module].shape[0])
        return max(1, round(self.embedding_samples / frames)) if frames else self.embedding_samples

    def frame_seconds(self, module: int, frames: range) -> list[float]:
        """Stream time, in seconds, of the start of each of ``module``'s frames in ``frames``."""
        hop = self.hop_samples(module)
        return [(self.embedding_start + t * hop) / SAMPLE_RATE for t in frames]

    def label_frame(self, module: int, frame: int) -> int:
        """The 10 ms label frame that contains the centre of ``module``'s output frame ``frame``."""
        hop = self.hop_samples(module)
        return (frame * hop + hop // 2) // FRAME_SAMPLES


@dataclass(frozen=True)
class VideoSnapshot:
    """The newest window of the video learner that runs beside the audio one (``--source av``).

    Attributes:
        seq: video windows the board has seen (1 for the first).
        updates: the video learner's model step after the window.
        start_frame / frames: the window's first frame (stream position) and its number of frames.
        frame_rate: frames per second of the stream.
        skipped: whether the window was skipped (non-finite pixels).
        real_time_factor: compute seconds per second of video of the window.
        modules: per module, its report on the window.
        embeddings: per module, ``(frames, channels)`` pooled encoding of every frame of the newest
            window that was not skipped (``()`` before the first).
        embedding_start / embedding_updates: that window's first frame and model step.
    """

    seq: int
    updates: int
    start_frame: int
    frames: int
    frame_rate: float
    skipped: bool
    real_time_factor: float
    modules: tuple[ModuleReport, ...]
    embeddings: tuple[torch.Tensor, ...]
    embedding_start: int
    embedding_updates: int

    def frame_seconds(self, frames: range) -> list[float]:
        """Stream time, in seconds, of each frame in ``frames`` of the embedding window."""
        return [(self.embedding_start + t) / self.frame_rate for t in frames]
