"""The video learner: temporal CLAPP on windows of consecutive frames, one update per window."""

from __future__ import annotations

import time
from dataclasses import replace
from typing import Any

import numpy as np
import torch
from torch import nn

from online_gim.input_norm import InputNormalizer
from online_gim.local_update import LocalStage, apply_local_loss, module_report
from online_gim.losses import LossParts
from online_gim.memory import NegativeMemory
from online_gim.report import ModuleReport, ProbeReadout
from online_gim.stack_learner import StackLearner
from online_gim.video.config import VideoLearnerConfig
from online_gim.video.conv import VideoConvModule
from online_gim.video.decorrelation import EncodingDecorrelation
from online_gim.streams.video_window import VideoWindow


class VideoLearner(StackLearner[VideoWindow]):
    """CLAPP on a video stream: a VGG-like stack of gradient-isolated conv modules that learns,
    window by window, to predict the future of each frame.

    Every module (Conv2d -> running-statistics norm -> ReLU -> max-pool, see
    :class:`VideoConvModule`) receives its input detached and is trained by its own local loss with
    its own Adam optimiser; no gradient crosses a module boundary. The module's encoding of frame
    ``t`` is its output averaged over the pixels, ``z_t`` ``(C,)``; the context is ``c_t = z_t``
    (as for the audio conv modules), and ``c_t`` predicts ``z_{t+1} .. z_{t+K}`` of the same window
    through the module's prediction head (``u = z^T W_k c / sqrt(C)``, CLAPP's hinge by default).
    Negatives are pooled encodings of earlier frames from the module's FAISS memory, never frames
    of the same stream within ``exclusion_frames`` of the anchor (their content is the anchor's own).
    The heads, losses, memories, objectives, schedules and the guarded optimiser step are the
    audio learner's (:mod:`online_gim.local_update`). Each module's loss also has a decorrelation
    term (:class:`EncodingDecorrelation`, ``config.decorrelation``) that keeps its encodings from
    collapsing onto a few directions; the report shows the CLAPP loss alone.

    ``step(window)`` is the one way to feed data in: it normalises the frames with running input
    statistics, runs the stack, writes the window's new frames into every memory, updates the
    scheduled modules and returns a :class:`~online_gim.report.StepReport` whose positions count
    frames (the :class:`~online_gim.run.contract.StreamLearner` contract; the step, its guard,
    replay and the state tree are :class:`StackLearner`'s). No window can make the learner's
    state non-finite, as in the audio learner (:mod:`online_gim.finite`): a window with NaN/Inf
    pixels or a level float32 cannot represent changes nothing, and the encodings of the whole stack
    (and the running statistics they changed) are checked before any memory write or weight update;
    such windows are counted (``windows_skipped_nonfinite``) with their reason
    (``StepReport.skip``). A module whose loss or gradient is not finite is not updated. The memory needs frames farther than ``exclusion_frames`` from an anchor
    before it can serve negatives, so the first windows of a stream do not update.

    Parameters:
        config: the learner's configuration (``VideoLearnerConfig()`` is the default).

    Example:
        >>> import torch
        >>> from online_gim.streams.video_window import VideoWindow
        >>> learner = VideoLearner(VideoLearnerConfig())
        >>> report = learner.step(VideoWindow(torch.rand(16, 1, 48, 64)))
        >>> [tuple(e.shape) for e in report.embeddings]
        [(16, 16), (16, 32), (16, 32), (16, 64), (16, 64), (16, 128)]
    """

    config: VideoLearnerConfig

    def __init__(self, config: VideoLearnerConfig) -> None:
        super().__init__(config)
        self.input_norm = InputNormalizer(momentum=config.input_momentum)
        in_channels = config.channels
        for index, layer in enumerate(config.encoder.convs):
            module = VideoConvModule(
                in_channels, layer, norm=config.encoder.norm, momentum=config.encoder.norm_momentum,
                encoding=config.encoder.encoding,
            )
            memory = NegativeMemory(
                layer.channels, config.memory, exclusion_samples=config.exclusion_frames, seed=config.seed + index
            )
            self.stages.append(
                LocalStage.build(
                    module, context_dim=layer.channels, target_dim=layer.channels, memory=memory, stride=1,
                    loss=config.loss, memory_config=config.memory, optim=config.optim, seed=config.seed, index=index,
                )
            )
            in_channels = layer.channels
        self.decorrelations = [
            EncodingDecorrelation(layer.channels, momentum=config.decorrelation.momentum) for layer in config.encoder.convs
        ]
        self._start(config.schedule)

    # ------------------------------------------------------------------ the step

    def _check_frames(self, frames: torch.Tensor) -> None:
        expected = (self.config.channels, self.config.height, self.config.width)
        if frames.dim() != 4 or tuple(frames.shape[1:]) != expected or frames.shape[0] < 1:
            raise ValueError(f"frames must be (T, {', '.join(map(str, expected))}), got {tuple(frames.shape)}")

    def _window_values(self, window: VideoWindow) -> torch.Tensor:
        """``window.frames``: ``(T, C, H, W)`` float in [0, 1] with the configured channels and
        size; any ``T >= 1`` (a window of at most ``K`` frames has no anchor with a future inside
        it: it is encoded and remembered, not learned from)."""
        self._check_frames(window.frames)
        return window.frames

    def _learn(
        self, window: VideoWindow, scheduled: set[int], replay: bool
    ) -> tuple[list[ModuleReport], list[torch.Tensor], ProbeReadout | None]:
        """Encodes the window with the whole stack (folding its statistics), has the guard check
        the encodings, then writes the memories (not on a replay) and updates the scheduled
        modules, bottom to top."""
        learnable = window.num_frames > self.config.loss.prediction_steps
        h = self.input_norm.update_and_apply(window.frames.to(torch.float32))
        encoded: list[tuple[torch.Tensor, torch.Tensor, float]] = []
        for index, stage in enumerate(self.stages):
            module_started = time.perf_counter()
            with torch.set_grad_enabled(learnable and index in scheduled):
                out, pooled = stage.module(h, update_statistics=True)  # (T, C, H', W'), (T, C)
            h = out.detach()
            encoded.append((out, pooled, time.perf_counter() - module_started))
        self._guard.verify(outputs=[pooled for _, pooled, _ in encoded])  # before any memory write or update
        reports: list[ModuleReport] = []
        embeddings: list[torch.Tensor] = []
        for index, (stage, (out, pooled, forward_seconds)) in enumerate(zip(self.stages, encoded)):
            module_started = time.perf_counter() - forward_seconds
            if not replay:
                self._remember(stage, pooled.detach(), window)
            parts = self._update(index, pooled, window) if learnable and index in scheduled else None
            embeddings.append(pooled.detach())
            reports.append(module_report(index, parts, out.detach().amax(dim=(2, 3)), module_started))
        return reports, embeddings, None

    def _remember(self, stage: LocalStage, pooled: torch.Tensor, window: VideoWindow) -> None:
        """Writes the pooled encodings of the window's new frames (at most ``writes_per_window``,
        a random subset) into the stage's memory."""
        new = np.arange(window.num_frames - window.new_frames, window.num_frames)
        count = min(self.config.memory.writes_per_window, new.shape[0])
        if count == 0:
            return
        chosen = np.sort(stage.rng.choice(new, size=count, replace=False))
        stage.memory.add(pooled[torch.from_numpy(chosen)], window.positions[chosen], source_id=window.source_id, step=self.updates)

    def _update(self, index: int, pooled: torch.Tensor, window: VideoWindow) -> LossParts | None:
        """Module ``index``'s temporal CLAPP loss of every anchor ``t`` with ``t + K`` inside the
        window, plus the decorrelation term of the window's ``(T, C)`` encodings ``pooled``, and
        the module's optimiser step. Returns the CLAPP loss's parts (what the report shows), or the
        sum's when the sum was not finite (nothing was updated)."""
        stage = self.stages[index]
        anchors = torch.arange(window.num_frames - self.config.loss.prediction_steps)
        positions = window.positions[anchors.numpy()]
        parts = stage.objective(pooled[anchors], pooled, anchors, positions, source_id=window.source_id)
        weight = self.config.decorrelation.weight
        if parts is None or weight == 0:
            return apply_local_loss(stage.optimizer, parts, self.config.optim.grad_clip)
        total = replace(parts, loss=parts.loss + weight * self.decorrelations[index].penalty(pooled))
        apply_local_loss(stage.optimizer, total, self.config.optim.grad_clip)
        return parts if bool(torch.isfinite(total.loss)) else total

    # ------------------------------------------------------------------ inference

    @torch.no_grad()
    def embed(self, frames: torch.Tensor, *, batch: int = 64) -> list[torch.Tensor]:
        """Encodes frames without learning and without touching the learner's state.

        Args:
            frames: ``(N, C, H, W)`` float in [0, 1], the configured channels and size.
            batch: frames encoded at once (bounds the memory used).
        Returns:
            Per module, its ``(N, C_m)`` pooled encoding of every frame.
        Raises:
            ValueError: wrong shape, or NaN/Inf pixels.
        """
        self._check_frames(frames)
        if not bool(torch.isfinite(frames).all()):
            raise ValueError("frames contain NaN or Inf")
        outputs: list[list[torch.Tensor]] = [[] for _ in self.stages]
        for first in range(0, frames.shape[0], batch):
            h = self.input_norm.apply(frames[first : first + batch].to(torch.float32))
            for index, stage in enumerate(self.stages):
                h, pooled = stage.module(h, update_statistics=False)
                outputs[index].append(pooled)
        return [torch.cat(parts) for parts in outputs]

    # ------------------------------------------------------------------ state

    def _stage_state(self, index: int) -> dict[str, object]:
        """Each stage's entry also holds its memory and its decorrelation statistics."""
        return {"memory": self.stages[index].memory.state_dict(), "decorrelation": self.decorrelations[index].state_dict()}

    def _load_stage_state(self, index: int, saved: dict[str, Any]) -> None:
        self.decorrelations[index].load_state_dict(saved["decorrelation"])
        self.stages[index].memory.load_state_dict(saved["memory"])

    def _named_memories(self) -> dict[str, NegativeMemory]:
        return {f"stages.{i}.memory": stage.memory for i, stage in enumerate(self.stages)}

    def _stage_buffers(self, index: int) -> dict[str, nn.Module]:
        """The module's running statistics and the decorrelation's."""
        return {**super()._stage_buffers(index), "decorrelation": self.decorrelations[index]}
