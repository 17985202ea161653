"""Typed configuration of the video learner (same style as :mod:`online_gim.config`).

The loss, memory and optimiser settings are the audio learner's own types; only the encoder and
the frames differ. Units: frames of the video stream (positions and prediction steps), pixels.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, model_validator

from online_gim.config import LossConfig, MemoryConfig, OptimConfig, SavedConfig


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Conv2dLayerConfig(_Strict):
    """One module of the video encoder: Conv2d (``kernel`` x ``kernel``, ``stride``, ``padding``
    pixels) -> normalisation -> ReLU -> max-pool by ``pool`` (1 = no pooling)."""

    channels: int = Field(gt=0)
    kernel: int = Field(default=3, gt=0)
    stride: int = Field(default=1, gt=0)
    padding: int = Field(default=1, ge=0)
    pool: int = Field(default=1, gt=0)

    def output_size(self, size: tuple[int, int]) -> tuple[int, int]:
        """``(height, width)`` of this module's output for an input of ``size``."""
        return tuple((s + 2 * self.padding - self.kernel) // self.stride + 1 for s in size)  # type: ignore[return-value]


def _vgg6(widths: tuple[int, ...]) -> tuple[Conv2dLayerConfig, ...]:
    pools = (1, 2, 1, 2, 2, 2)  # VGG-6: conv, conv, pool, conv, conv, pool, conv, pool, conv, pool
    return tuple(Conv2dLayerConfig(channels=c, pool=p) for c, p in zip(widths, pools))


VIDEO_VGG6_CONVS: tuple[Conv2dLayerConfig, ...] = _vgg6((16, 32, 32, 64, 64, 128))
"""CLAPP's VGG-6 (3x3 convs 128, 256, pool, 256, 512, pool, 1024, pool, 1024, pool; METHOD.md
section 5) at 1/8 of its widths, so that the six modules learn 48x64 gray frames at the frame rate
of a 25 fps video on two CPU cores (see ``measure_video_fps_learn``)."""


class VideoEncoderConfig(_Strict):
    """The stack of gradient-isolated conv modules, one module per layer.

    Attributes:
        convs: the modules, bottom to top.
        norm: ``time`` (default): each channel standardised by running statistics of its
            pre-activation over the frames and pixels of past windows (an exponential moving
            average updated once per window, no gradient through the statistics), as the audio
            encoder's ``time`` norm; ``none``: plain Conv2d + ReLU.
        norm_momentum: weight of the newest window in the running statistics.
        encoding: how a module's output becomes a frame's encoding ``(C,)``, from its average
            over the pixels ``m``: ``mean`` (``m`` itself), ``standardised`` (``m`` standardised
            per channel by running statistics), ``direction`` (``m`` minus its running mean,
            scaled to norm ``sqrt(C)``: how the frame differs from the stream's usual frame).
    """

    convs: tuple[Conv2dLayerConfig, ...] = VIDEO_VGG6_CONVS
    norm: Literal["time", "none"] = "time"
    norm_momentum: float = Field(default=0.05, gt=0, le=1)
    encoding: Literal["mean", "standardised", "direction"] = "direction"


class DecorrelationConfig(_Strict):
    """The decorrelation term added to every video module's local loss
    (:class:`online_gim.video.decorrelation.EncodingDecorrelation`).

    Attributes:
        weight: its weight next to the CLAPP loss (0 turns it off). Without it the modules'
            encodings collapse onto a few directions and frame retrieval ends below random init
            (docs/video.md).
        momentum: weight of the newest window in the running covariance of the encodings.
    """

    weight: float = Field(default=20.0, ge=0)
    momentum: float = Field(default=0.1, gt=0, le=1)


class VideoLearnerConfig(_Strict, SavedConfig):
    """Everything the video learner needs.

    Attributes:
        height, width: frame size in pixels (frames are scaled to it by the source).
        gray: one luminance channel (as CLAPP's vision experiments) instead of RGB.
        window_frames: consecutive frames per window (``T``); each window updates every module once.
        hop_frames: frames between window starts; default ``window_frames - prediction_steps``,
            so that every frame is an anchor exactly once (the last ``K`` frames of a window have
            no future inside it and are anchors of the next window).
        schedule: which modules update on a window (as the audio learner's).
        input_momentum: weight of the newest window in the running input level statistics.
        seed: seeds initialisation, negative sampling and schedules.
        loss: the temporal local loss: the pooled encoding of frame ``t`` predicts frames ``t+1 ..
            t+K`` (``K`` = ``prediction_steps``).
        memory: the per-module FAISS memory of pooled frame encodings (negatives); positions are
            stream frame numbers, so ``exclusion_frames`` (default ``2 * window_frames``) keeps the
            anchor's neighbouring frames out of its negatives. Negatives come from the memory
            only (``window_negatives`` 0: the video learner has no window pool).
        optim: per-module Adam.
        decorrelation: the term against collapsed encodings added to every module's loss.
    """

    height: int = Field(default=48, gt=0)
    width: int = Field(default=64, gt=0)
    gray: bool = True
    window_frames: int = Field(default=16, gt=1)
    hop_frames: int | None = Field(default=None, gt=0)
    schedule: Literal["all", "random", "round_robin"] = "all"
    input_momentum: float = Field(default=0.01, gt=0, le=1)
    seed: int = 0
    encoder: VideoEncoderConfig = VideoEncoderConfig()
    loss: LossConfig = LossConfig(prediction_steps=4)
    memory: MemoryConfig = MemoryConfig(capacity=1024, writes_per_window=16, window_negatives=0.0)
    optim: OptimConfig = OptimConfig(lr=5e-4, moments="float32")
    decorrelation: DecorrelationConfig = DecorrelationConfig()

    @model_validator(mode="before")
    @classmethod
    def _merge_nested_defaults(cls, data: object) -> object:
        """A partial ``loss``/``memory``/``optim`` mapping overrides the video defaults above, field
        by field (not the audio defaults of those types)."""
        if not isinstance(data, dict):
            return data
        merged = dict(data)
        for name in ("loss", "memory", "optim"):
            given = merged.get(name)
            if isinstance(given, dict):
                merged[name] = {**cls.model_fields[name].default.model_dump(), **given}
        return merged

    @model_validator(mode="after")
    def _check_sizes(self) -> VideoLearnerConfig:
        if self.window_frames <= self.loss.prediction_steps:
            raise ValueError(
                f"window_frames={self.window_frames} must exceed prediction_steps={self.loss.prediction_steps}"
            )
        if self.hop_frames is not None and self.hop_frames > self.window_frames:
            raise ValueError(f"hop_frames={self.hop_frames} must not exceed window_frames={self.window_frames}")
        if self.loss.kind == "infonce" and self.memory.policy == "hard":
            raise ValueError("memory policy 'hard' draws one negative per prediction: use it with the hinge losses")
        size = (self.height, self.width)
        for index, conv in enumerate(self.encoder.convs):
            size = conv.output_size(size)
            size = (size[0] // conv.pool, size[1] // conv.pool)
            if min(size) < 1:
                raise ValueError(f"a {self.height}x{self.width} frame leaves no pixels after video module {index}")
        return self

    @property
    def channels(self) -> int:
        """Channels of an input frame: 1 (gray) or 3 (RGB)."""
        return 1 if self.gray else 3

    @property
    def hop(self) -> int:
        """Frames between window starts."""
        return self.hop_frames if self.hop_frames is not None else self.window_frames - self.loss.prediction_steps

    @property
    def exclusion_frames(self) -> int:
        """Half-width, in frames, of the zone around an anchor whose frames are never its negatives."""
        excluded = self.memory.exclusion_frames
        return excluded if excluded is not None else 2 * self.window_frames

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.model_dump(mode="json"), sort_keys=False)


def load_video_config(path: str | Path) -> VideoLearnerConfig:
    """Reads a YAML preset of the video learner (any subset of the fields).

    Raises:
        ValueError: unreadable file, YAML error, or an unknown or out-of-range field.
    """
    path = Path(path)
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except (OSError, yaml.YAMLError) as error:
        raise ValueError(f"cannot read video config {path}: {error}") from error
    if not isinstance(data, dict):
        raise ValueError(f"video config {path} must be a mapping of fields, not {type(data).__name__}")
    return VideoLearnerConfig.model_validate(data)
