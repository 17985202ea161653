"""Typed reports that the online learner returns after every window."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Literal

import torch

log = logging.getLogger(__name__)

SkipKind = Literal["nonfinite_samples", "level", "nonfinite_state"]


@dataclass(frozen=True)
class SkipReason:
    """Why the learner skipped a window (learned nothing from it and kept its state as it was).

    Attributes:
        kind: ``nonfinite_samples`` (NaN or Inf samples or pixels), ``level`` (finite, but so
            large that the learner's float32 arithmetic cannot represent the window's level), or
            ``nonfinite_state`` (the window made some of the learner's state non-finite: the
            step guard put it back, see :mod:`online_gim.finite`).
        detail: one sentence for people.
    """

    kind: SkipKind
    detail: str


@dataclass(frozen=True)
class ModuleReport:
    """What one module did on one window.

    Attributes:
        module: index in the stack, 0 = lowest conv module; the GRU (if any) is last.
        updated: whether the module's weights were updated on this window (schedules may skip).
        loss: the module's local loss on this window (mean over scored terms); NaN if not computed.
        loss_pos: positive part of the loss (hinge/clapp: mean positive hinge; infonce: NaN).
        loss_neg: negative part of the loss (hinge/clapp: mean negative hinge; infonce: NaN).
        chance_loss: the value the loss takes for an encoder that predicts nothing (all scores 0):
            1.0 for the CLAPP hinge, ``log(N + 1)`` for InfoNCE with N negatives, ``m1 + m2`` ...
            ``loss / chance_loss`` near or above 1 is the collapse alarm.
        active_fraction: fraction of hinge terms that were active (non-zero gradient); NaN for InfoNCE.
        dead_fraction: fraction of the module's output units that were never positive in the window.
        seconds: wall-clock seconds spent on this module (forward + update).
        stage: the pipeline stage (process) that holds the module; 0 in a single process.
    """

    module: int
    updated: bool
    loss: float
    loss_pos: float
    loss_neg: float
    chance_loss: float
    active_fraction: float
    dead_fraction: float
    seconds: float
    stage: int = 0

    @property
    def loss_ratio(self) -> float:
        """``loss / chance_loss``: about 1 when the module has learned nothing or collapsed."""
        return self.loss / self.chance_loss if self.chance_loss > 0 else float("nan")


@dataclass(frozen=True)
class StepReport:
    """What a learner did with one window, the same for every learner (audio, video, a stage of
    modules): stream positions count the stream's **units** (samples of a 16 kHz audio stream,
    frames of a video stream), and ``rate`` is units per second of stream.

    Attributes:
        step: the learner's window counter after this window (counts skipped windows too; replayed
            windows are counted apart, see ``replay``).
        updates: number of windows that updated weights so far (the model step).
        window_start: stream position (in units) of the window's first unit.
        window_length: units in the window.
        skipped_nonfinite: the window was skipped (see ``skip``).
        modules: one report per module, bottom to top.
        embeddings: per module, its ``(frames, channels)`` output on this window (detached,
            float32); empty when the window was skipped.
        seconds: wall-clock seconds of the whole step.
        rate: units per second of the stream (16000 for audio, the frame rate for video).
        probes: what the learner's online probes read from this window (``None`` without probes,
            when the window was skipped, or when it was replayed).
        skip: why the window was skipped; ``None`` when it was learned from.
        replay: the window was replayed from the past (``step(..., replay=True)``), not a new
            window of the stream.
    """

    step: int
    updates: int
    window_start: int
    window_length: int
    skipped_nonfinite: bool
    modules: tuple[ModuleReport, ...]
    embeddings: tuple[torch.Tensor, ...]
    seconds: float
    rate: float
    probes: ProbeReadout | None = None
    skip: SkipReason | None = None
    replay: bool = False

    @property
    def window_seconds(self) -> float:
        """Seconds of stream the window spans."""
        return self.window_length / self.rate

    @property
    def real_time_factor(self) -> float:
        """Seconds of compute per second of stream in the window (below 1 keeps up with a live stream)."""
        return self.seconds / self.window_seconds if self.window_length else float("nan")


@dataclass(frozen=True)
class ProbeReadout:
    """What the online linear probes read from one window (see ``online_gim.probes``).

    Attributes:
        phone_top: ``(frames,)`` most probable phone class per 10 ms frame of the window.
        phone_prob: ``(frames,)`` its probability.
        phone_label: ``(frames,)`` the true phone class, -1 where unknown.
        speaker_top: the most probable speakers for the whole window, best first, as
            ``(speaker_id, probability)`` pairs (empty until a speaker has been seen).
        phone_accuracy: running prequential (predict, then learn) phone accuracy, NaN before any label.
        speaker_accuracy: running prequential per-window speaker accuracy, NaN before any label.
        speaker_frame_accuracy: the same per 10 ms frame, NaN before any label.
    """

    phone_top: torch.Tensor
    phone_prob: torch.Tensor
    phone_label: torch.Tensor
    speaker_top: tuple[tuple[str, float], ...]
    phone_accuracy: float
    speaker_accuracy: float
    speaker_frame_accuracy: float = float("nan")


def tally_skip(counts: dict[str, int], report: StepReport, where: str) -> None:
    """Counts a skipped window under its reason's kind (``report.skip``) in ``counts``, and logs a
    warning for the first window skipped for each reason (the rest are only counted).

    Args:
        counts: skipped windows per kind (a listen summary's ``windows_skipped_by_reason``).
        report: the skipped window's report.
        where: the window's place in the stream, for people (``"12.80 s"``, ``"frame 400"``).
    """
    skip = report.skip or SkipReason("nonfinite_samples", "it holds NaN or Inf samples")
    counts[skip.kind] = counts.get(skip.kind, 0) + 1
    if counts[skip.kind] == 1:
        log.warning(
            "window at %s skipped, nothing learned from it: %s (further windows skipped for this reason are "
            "only counted: windows_skipped_by_reason in the summary)",
            where, skip.detail,
        )
