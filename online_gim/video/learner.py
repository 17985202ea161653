"""The video learner: temporal CLAPP on windows of consecutive frames, one update per window."""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, replace

import numpy as np
import torch

from online_gim.finite import StepGuard, repair_loaded_state, repairable_paths
from online_gim.input_norm import InputNormalizer
from online_gim.local_update import LocalStage, ModuleSchedule, apply_local_loss, module_report
from online_gim.losses import LossParts
from online_gim.memory import NegativeMemory
from online_gim.report import ModuleReport, SkipReason, StepReport
from online_gim.video.config import VideoLearnerConfig
from online_gim.video.conv import VideoConvModule
from online_gim.video.decorrelation import EncodingDecorrelation
from streams.video_window import VideoWindow


@dataclass(frozen=True)
class VideoStepReport(StepReport):
    """What the video learner did with one window: a :class:`StepReport` whose stream positions
    count **frames**: ``window_start`` is the stream position of the window's first frame and
    ``window_samples`` its number of frames (also :attr:`frames`); ``embeddings[m]`` is module
    ``m``'s ``(frames, channels)`` pooled encoding of every frame.

    Attributes:
        frame_rate: frames per second of the stream.
        new_frames: frames of the window that were in no earlier window (the stream advanced by them).
    """

    frame_rate: float = 25.0
    new_frames: int = 0

    @property
    def frames(self) -> int:
        """Frames in the window."""
        return self.window_samples

    @property
    def real_time_factor(self) -> float:
        """Seconds of compute per second of video in the window (below 1 keeps up with the stream)."""
        return self.seconds / (self.frames / self.frame_rate) if self.frames else float("nan")


class VideoLearner:
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
    scheduled modules and returns a :class:`VideoStepReport`. No window can make the learner's
    state non-finite, as in the audio learner (:mod:`online_gim.finite`): a window with NaN/Inf
    pixels or a level float32 cannot represent changes nothing, and the encodings of the whole stack
    (and the running statistics they changed) are checked before any memory write or weight update;
    such windows are counted (``windows_skipped_nonfinite``) with their reason
    (``VideoStepReport.skip``). A module whose loss or gradient is not finite is not updated. The memory needs frames farther than ``exclusion_frames`` from an anchor
    before it can serve negatives, so the first windows of a stream do not update.

    Parameters:
        config: the learner's configuration (``VideoLearnerConfig()`` is the default).

    Example:
        >>> import torch
        >>> from streams.video_window import VideoWindow
        >>> learner = VideoLearner(VideoLearnerConfig())
        >>> report = learner.step(VideoWindow(torch.rand(16, 1, 48, 64)))
        >>> [tuple(e.shape) for e in report.embeddings]
        [(16, 16), (16, 32), (16, 32), (16, 64), (16, 64), (16, 128)]
    """

    def __init__(self, config: VideoLearnerConfig) -> None:
        self.config = config
        torch.manual_seed(config.seed)
        self._generator = torch.Generator().manual_seed(config.seed)
        self._rng = np.random.default_rng(config.seed)
        self.input_norm = InputNormalizer(momentum=config.input_momentum)
        self.stages: list[LocalStage] = []
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
                    loss=config.loss, memory_config=config.memory, optim=config.optim, generator=self._generator,
                )
            )
            in_channels = layer.channels
        self.decorrelations = [
            EncodingDecorrelation(layer.channels, momentum=config.decorrelation.momentum) for layer in config.encoder.convs
        ]
        self._schedule = ModuleSchedule(config.schedule, len(self.stages), self._rng)
        self.steps = 0
        self.updates = 0
        self.windows_skipped_nonfinite = 0
        self._guard = StepGuard(self._volatile_state, self._load_volatile_state)

    @property
    def num_modules(self) -> int:
        return len(self.stages)

    @property
    def memories(self) -> list[NegativeMemory]:
        """Each module's negative memory (pooled frame encodings; positions are frame numbers)."""
        return [stage.memory for stage in self.stages]

    # ------------------------------------------------------------------ the step

    def _check_frames(self, frames: torch.Tensor) -> None:
        expected = (self.config.channels, self.config.height, self.config.width)
        if frames.dim() != 4 or tuple(frames.shape[1:]) != expected or frames.shape[0] < 1:
            raise ValueError(f"frames must be (T, {', '.join(map(str, expected))}), got {tuple(frames.shape)}")

    def step(self, window: VideoWindow, modules: Sequence[int] | None = None) -> VideoStepReport:
        """Learns from one window of consecutive frames.

        Args:
            window: ``window.frames`` is ``(T, C, H, W)`` float in [0, 1] with the configured
                channels and size; any ``T >= 1`` (a window of at most ``K`` frames has no anchor
                with a future inside it: it is encoded and remembered, not learned from).
            modules: update only these modules this window (overrides the schedule); all modules
                still run forward.
        Returns:
            The :class:`VideoStepReport` of this window.
        Raises:
            ValueError: the frames have the wrong shape, or ``modules`` names no module.
        """
        started = time.perf_counter()
        frames = window.frames
        self._check_frames(frames)
        self.steps += 1
        outcome = self._guard.run(frames, lambda: self._learn(window, self._schedule.choose(modules), started))
        if not isinstance(outcome, SkipReason):
            return outcome
        self.windows_skipped_nonfinite += 1
        return self._report(window, [], [], started, skip=outcome)

    def _learn(self, window: VideoWindow, scheduled: set[int], started: float) -> VideoStepReport:
        """The step of a window that passed the level check, inside the step guard: encodes the
        window with the whole stack (folding its statistics), has the guard check the encodings,
        then writes the memories and updates the scheduled modules, bottom to top."""
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
            self._remember(stage, pooled.detach(), window)
            parts = self._update(index, pooled, window) if learnable and index in scheduled else None
            embeddings.append(pooled.detach())
            reports.append(module_report(index, parts, out.detach().amax(dim=(2, 3)), module_started))
        self._guard.verify()
        if any(report.updated for report in reports):
            self.updates += 1
        return self._report(window, reports, embeddings, started)

    def _remember(self, stage: LocalStage, pooled: torch.Tensor, window: VideoWindow) -> None:
        """Writes the pooled encodings of the window's new frames (at most ``writes_per_window``,
        a random subset) into the stage's memory."""
        new = np.arange(window.num_frames - window.new_frames, window.num_frames)
        count = min(self.config.memory.writes_per_window, new.shape[0])
        if count == 0:
            return
        chosen = np.sort(self._rng.choice(new, size=count, replace=False))
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

    def _report(
        self,
        window: VideoWindow,
        modules: list[ModuleReport],
        embeddings: list[torch.Tensor],
        started: float,
        *,
        skip: SkipReason | None = None,
    ) -> VideoStepReport:
        return VideoStepReport(
            step=self.steps,
            updates=self.updates,
            window_start=window.start_frame,
            window_samples=window.num_frames,
            skipped_nonfinite=skip is not None,
            modules=tuple(modules),
            embeddings=tuple(embeddings),
            seconds=time.perf_counter() - started,
            skip=skip,
            frame_rate=window.frame_rate,
            new_frames=window.new_frames,
        )

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

    def state_dict(self) -> dict[str, object]:
        """The whole learner state: weights, statistics, optimisers, memories, RNGs, counters."""
        return {
            "config": self.config.model_dump(mode="json"),
            "input_norm": self.input_norm.state_dict(),
            "stages": [
                {
                    "module": stage.module.state_dict(),
                    "head": stage.head.state_dict(),
                    "optimizer": stage.optimizer.state_dict(),
                    "memory": stage.memory.state_dict(),
                    "decorrelation": decorrelation.state_dict(),
                }
                for stage, decorrelation in zip(self.stages, self.decorrelations)
            ],
            "counters": {
                "steps": self.steps,
                "updates": self.updates,
                "windows_skipped_nonfinite": self.windows_skipped_nonfinite,
                "round_robin": self._schedule.round_robin,
            },
            "torch_generator": self._generator.get_state(),
            "numpy_rng": self._rng.bit_generator.state,
        }

    def _volatile_state(self) -> dict[str, object]:
        """What a step changes besides the weights, the optimiser moments and the memories (whose
        commits guard themselves), as live tensors: the step guard's view (:mod:`online_gim.finite`)."""
        return {
            "input_norm": self.input_norm.state_dict(),
            "stages": [
                {"module": dict(stage.module.named_buffers()), "decorrelation": dict(decorrelation.named_buffers())}
                for stage, decorrelation in zip(self.stages, self.decorrelations)
            ],
        }

    def _load_volatile_state(self, state: dict[str, object]) -> None:
        """Restores a copy of :meth:`_volatile_state`."""
        self.input_norm.load_state_dict(state["input_norm"])
        for stage, decorrelation, saved in zip(self.stages, self.decorrelations, state["stages"]):
            for part, name in ((stage.module, "module"), (decorrelation, "decorrelation")):
                for key, buffer in part.named_buffers():
                    buffer.copy_(saved[name][key])

    def load_state_dict(self, state: dict[str, object]) -> list[str]:
        """Restores :meth:`state_dict`'s output; parts that hold NaN or Inf and that the stream
        estimates again are reset, as in :meth:`OnlineLearner.load_state_dict`.

        Returns:
            The parts reset (``input_norm``, ``stages.1.module``, ``stages.1.memory``, ...), empty
            for a sound state.
        Raises:
            ValueError: the state was written with a different configuration.
            NonFiniteState: learned weights are not finite; nothing is changed.
        """
        saved = VideoLearnerConfig.model_validate(state["config"])
        if saved != self.config:
            raise ValueError("video learner state was saved with a different config")
        paths = repairable_paths(state, self.stages)
        self.input_norm.load_state_dict(state["input_norm"])
        for stage, decorrelation, saved_stage in zip(self.stages, self.decorrelations, state["stages"]):
            stage.module.load_state_dict(saved_stage["module"])
            decorrelation.load_state_dict(saved_stage["decorrelation"])
            stage.head.load_state_dict(saved_stage["head"])
            stage.optimizer.load_state_dict(saved_stage["optimizer"])
            stage.memory.load_state_dict(saved_stage["memory"])
        counters = state["counters"]
        self.steps = int(counters["steps"])
        self.updates = int(counters["updates"])
        self.windows_skipped_nonfinite = int(counters["windows_skipped_nonfinite"])
        self._schedule.round_robin = int(counters["round_robin"])
        self._generator.set_state(state["torch_generator"])
        self._rng.bit_generator.state = state["numpy_rng"]
        return repair_loaded_state(
            paths,
            self._guard,
            optimizers={f"stages.{i}.optimizer": stage.optimizer for i, stage in enumerate(self.stages)},
            memories={f"stages.{i}.memory": stage.memory for i, stage in enumerate(self.stages)},
        )
