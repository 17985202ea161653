"""The window a stage of a module pipeline learns from: the activations of the modules below it,
with the audio window's place in the stream and its labels (:mod:`online_gim.scale`)."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch

from online_gim.streams.window import FRAME_SAMPLES, SAMPLE_RATE, AudioWindow, UtteranceSpan, frame_speakers


@dataclass(frozen=True)
class ActivationWindow:
    """One audio window as a later pipeline stage sees it (a
    :class:`~online_gim.run.contract.StreamWindow`, in samples like the audio window it stands for).

    Attributes:
        activations: ``(C, T)`` float32 output of the module below the stage (detached).
        start_sample: stream position of the audio window's first sample.
        length: samples in the audio window.
        source_id, phones, spans: the audio window's (:class:`~online_gim.streams.window.AudioWindow`).
    """

    activations: torch.Tensor
    start_sample: int = 0
    length: int = 0
    source_id: str = "stream"
    phones: np.ndarray | None = None
    spans: tuple[UtteranceSpan, ...] = field(default_factory=tuple)

    @classmethod
    def above(cls, window: AudioWindow | ActivationWindow, activations: torch.Tensor) -> ActivationWindow:
        """The window the next stage learns from: ``window``'s place and labels with the ``(C, T)``
        ``activations`` of the modules that learned from it."""
        return cls(
            activations=activations, start_sample=window.start_sample, length=window.length,
            source_id=window.source_id, phones=window.phones, spans=window.spans,
        )

    @property
    def start(self) -> int:
        return self.start_sample

    @property
    def rate(self) -> float:
        return float(SAMPLE_RATE)

    @property
    def num_frames(self) -> int:
        """10 ms label frames of the audio window."""
        return self.length // FRAME_SAMPLES

    def frame_speakers(self) -> list[str | None]:
        """Speaker id of every 10 ms frame of the audio window (``None`` where unknown)."""
        return frame_speakers(self.spans, self.num_frames)
