"""Online linear probes: what a linear read-out gets from the learner's features while it learns.

Two softmax-regression probes read one module's output (the top module by default, any module
selectable with :attr:`~online_gim.config.ProbeConfig.module`):

- a **phone probe**, one prediction per 10 ms label frame (CPC/GIM's 41 classes);
- a **speaker probe**, one prediction per 10 ms frame, and per window by pooling: the window's
  speaker scores are the probe applied to the mean feature of its frames (for a linear probe, the
  mean of the per-frame logits). The speaker set grows as new speakers appear.

They are **prequential** (predict first, then learn): on every window they first predict, the
prediction is scored against the window's labels (``window.phones``, ``window.frame_speakers()``),
and only then one Adam step trains them on that window. So every scored prediction was made on a
window the probes had never learned from, and the running accuracy is an honest test accuracy on
the stream. Unlabelled windows (a microphone) still get predictions and change only the feature
statistics. The probes read the learner's reported embeddings, which are detached copies: they
never send gradients into the encoder, and they draw no random numbers (zero initialisation), so a
learner with probes learns exactly what one without them learns.

**Frame rates.** Labels come one per 10 ms (160 samples). For the default stack the top conv
module and the GRU emit exactly one frame per 160 samples (1.28 s window: 128 frames, frame ``t``
centred 20 samples into label frame ``t``). A lower module emits more frames (module 0: one per 5
samples); :func:`to_label_frames` **average-pools** every module frame into the 10 ms label frame
that contains its receptive-field centre (computed exactly from the conv kernels, strides and
paddings by :func:`frame_grids`). A module coarser than 10 ms (a custom stack) is instead
**sampled**: each label frame takes the module frame whose centre is nearest to its own.

Example:
    >>> import torch
    >>> from online_gim.adam import Adam
from online_gim.config import EncoderConfig, ProbeConfig
    >>> from online_gim.streams.window import AudioWindow
    >>> probes = OnlineProbes(ProbeConfig(), EncoderConfig())
    >>> window = AudioWindow(torch.zeros(20480), phones=np.zeros(128, dtype=np.int16))
    >>> readout = probes.update(window, [torch.rand(128, 512)] * 5 + [torch.rand(128, 256)]).readout
    >>> tuple(readout.phone_top.shape), readout.phone_accuracy   # zero weights: class 0 wins ties
    ((128,), 1.0)
"""

from __future__ import annotations

import math
from collections import Counter, deque
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from online_gim.adam import Adam
from online_gim.config import EncoderConfig, ProbeConfig
from online_gim.report import ProbeReadout
from online_gim.streams.window import FRAME_SAMPLES, UNKNOWN_LABEL, AudioWindow

_VARIANCE_FLOOR = 1e-6
"""Smallest per-channel variance used to standardise (a constant channel stays near 0)."""


# ------------------------------------------------------------------------------------ frame rates


@dataclass(frozen=True)
class FrameGrid:
    """Where a module's output frames sit in its input window.

    Frame ``j`` is centred at ``stride * j + offset`` samples from the window start (continuous
    time: sample ``i`` covers ``[i, i + 1)``; 16 kHz).
    """

    stride: int
    offset: float

    def label_frames_of(self, frames: int, num_frames: int) -> torch.Tensor:
        """``(frames,)`` the 10 ms label frame holding each module frame's centre (may be out of range)."""
        centres = self.stride * torch.arange(frames, dtype=torch.float64) + self.offset
        return torch.floor(centres / FRAME_SAMPLES).long()


def frame_grids(encoder: EncoderConfig) -> list[FrameGrid]:
    """The :class:`FrameGrid` of every module of the stack, bottom to top (the GRU, if any, last).

    A conv layer with kernel ``k``, stride ``s`` and padding ``p`` centres its output frame ``j``
    on input frame ``s*j - p + (k - 1)/2``. The GRU runs at the rate of the top conv module.

    Example:
        >>> [(g.stride, g.offset) for g in frame_grids(EncoderConfig())]
        [(5, 3.0), (20, 10.5), (40, 0.5), (80, -19.5), (160, 20.5), (160, 20.5)]
    """
    grids: list[FrameGrid] = []
    stride, offset = 1, 0.5  # raw samples: sample i is centred at i + 0.5
    for conv in encoder.convs:
        offset += stride * ((conv.kernel - 1) / 2 - conv.padding)
        stride *= conv.stride
        grids.append(FrameGrid(stride, offset))
    if encoder.gru != "none":
        grids.append(grids[-1])
    return grids


def module_channels(encoder: EncoderConfig) -> list[int]:
    """Output channels of every module of the stack, bottom to top (the GRU, if any, last)."""
    return [conv.channels for conv in encoder.convs] + ([encoder.gru_hidden] if encoder.gru != "none" else [])


def to_label_frames(features: torch.Tensor, grid: FrameGrid, num_frames: int) -> torch.Tensor:
    """Brings a module's frames to the 10 ms label rate.

    Args:
        features: ``(T, C)`` the module's output on a window (or an utterance).
        grid: where those frames sit (:func:`frame_grids`).
        num_frames: label frames of the window, ``n_samples // 160``.
    Returns:
        ``(num_frames, C)`` float32: per label frame, the mean of the module frames centred in it;
        a label frame that holds no module frame centre takes the module frame nearest to it.

    A grid whose stride divides 160 puts exactly ``160 // stride`` consecutive module frames into
    every label frame it covers whole: those label frames are one ``avg_pool1d`` (many times faster
    than scattering frame by frame); the label frames at the end, covered in part or not at all,
    take the general path.
    """
    if features.dim() != 2:
        raise ValueError(f"features must be (frames, channels), got {tuple(features.shape)}")
    frames, channels = features.shape
    if frames == 0 or num_frames <= 0:
        raise ValueError(f"cannot map {frames} module frames to {num_frames} label frames")
    features = features.detach().to(torch.float32)
    if FRAME_SAMPLES % grid.stride:
        return _scatter_to_label_frames(features, grid, num_frames)
    per_label = FRAME_SAMPLES // grid.stride
    first = math.ceil(-grid.offset / grid.stride)  # the first module frame centred at or after sample 0
    if first < 0:  # frame 0 is centred past the start of label frame 1: some label frames have no frame of their own
        return _scatter_to_label_frames(features, grid, num_frames)
    whole = min(num_frames, max(0, (frames - first) // per_label))
    if whole == 0:
        return _scatter_to_label_frames(features, grid, num_frames)
    pooled = F.avg_pool1d(features[first : first + whole * per_label].T[None], per_label)[0].T
    if whole == num_frames:
        return pooled.contiguous()
    rest = _scatter_to_label_frames(features, grid, num_frames, start=whole)
    return torch.cat([pooled, rest])


def _scatter_to_label_frames(features: torch.Tensor, grid: FrameGrid, num_frames: int, *, start: int = 0) -> torch.Tensor:
    """:func:`to_label_frames` for any grid, label frames ``[start, num_frames)`` only: ``(num_frames - start, C)``."""
    frames, channels = features.shape
    targets = grid.label_frames_of(frames, num_frames) - start
    count = num_frames - start
    inside = (targets >= 0) & (targets < count)
    pooled, pooled_targets = (features, targets) if bool(inside.all()) else (features[inside], targets[inside])
    sums = torch.zeros(count, channels).index_add_(0, pooled_targets, pooled)
    counts = torch.bincount(pooled_targets, minlength=count)
    empty = counts == 0
    if bool(empty.any()):
        label_frames = torch.nonzero(empty)[:, 0].to(torch.float64) + start
        centres = label_frames * FRAME_SAMPLES + FRAME_SAMPLES / 2
        nearest = torch.round((centres - grid.offset) / grid.stride).long().clamp(0, frames - 1)
        sums[empty] = features[nearest]
        counts = counts.clamp(min=1)
    return sums / counts[:, None].to(torch.float32)


# ------------------------------------------------------------------------------------ pieces


class FeatureStandardizer:
    """Per-channel standardisation by an exponential moving average of each window's mean and
    variance (the first window initialises them), so that one probe learning rate suits every
    module and every stage of training.

    Parameters:
        channels: feature channels.
        momentum: weight of the newest window, in (0, 1].
    """

    def __init__(self, channels: int, *, momentum: float) -> None:
        self.channels = channels
        self.momentum = momentum
        self.mean = torch.zeros(channels)
        self.var = torch.ones(channels)
        self.windows = 0

    def update(self, features: torch.Tensor) -> FeatureStandardizer:
        """Folds a window's ``(frames, channels)`` features into the statistics."""
        mean, var = features.mean(dim=0), features.var(dim=0, unbiased=False)
        if self.windows == 0:
            self.mean, self.var = mean, var
        else:
            self.mean = torch.lerp(self.mean, mean, self.momentum)
            self.var = torch.lerp(self.var, var, self.momentum)
        self.windows += 1
        return self

    def apply(self, features: torch.Tensor) -> torch.Tensor:
        """``(frames, channels)`` standardised with the current statistics."""
        return (features - self.mean) * torch.rsqrt(self.var.clamp(min=_VARIANCE_FLOOR))

    def state_dict(self) -> dict[str, object]:
        return {"mean": self.mean.clone(), "var": self.var.clone(), "windows": self.windows}

    def load_state_dict(self, state: dict[str, object]) -> None:
        self.mean, self.var, self.windows = state["mean"].clone(), state["var"].clone(), int(state["windows"])


class LinearProbe:
    """Softmax regression ``logits = x W^T + b`` trained online by Adam, one step per call.

    Weights start at zero (no random numbers drawn). :meth:`grow` adds classes (zero rows); it
    restarts Adam's moment estimates, since their shapes change.

    Parameters:
        features: input channels.
        classes: initial number of classes (may be 0 for a set that grows).
        lr: Adam learning rate.
    """

    def __init__(self, features: int, classes: int, *, lr: float) -> None:
        self.lr = lr
        self.weight = torch.zeros(classes, features, requires_grad=True)
        self.bias = torch.zeros(classes, requires_grad=True)
        self._optimizer = Adam([self.weight, self.bias], lr=lr)

    @property
    def classes(self) -> int:
        return int(self.weight.shape[0])

    @torch.no_grad()
    def logits(self, x: torch.Tensor) -> torch.Tensor:
        """``(n, features)`` -> ``(n, classes)``."""
        return x @ self.weight.T + self.bias

    def learn(self, x: torch.Tensor, y: torch.Tensor) -> LinearProbe:
        """One Adam step on the mean cross-entropy of ``(n, features)`` inputs and ``(n,)`` classes."""
        if x.shape[0] == 0:
            return self
        loss = F.cross_entropy(x @ self.weight.T + self.bias, y)
        self._optimizer.zero_grad()
        loss.backward()
        self._optimizer.step()
        self._optimizer.zero_grad()
        return self

    def grow(self, classes: int) -> LinearProbe:
        """Extends the probe to ``classes`` classes (new classes score 0 until trained)."""
        extra = classes - self.classes
        if extra <= 0:
            return self
        with torch.no_grad():
            weight = torch.cat([self.weight, torch.zeros(extra, self.weight.shape[1])])
            bias = torch.cat([self.bias, torch.zeros(extra)])
        self.weight, self.bias = weight.requires_grad_(True), bias.requires_grad_(True)
        self._optimizer = Adam([self.weight, self.bias], lr=self.lr)
        return self

    def state_dict(self) -> dict[str, object]:
        return {
            "weight": self.weight.detach().clone(),
            "bias": self.bias.detach().clone(),
            "optimizer": self._optimizer.state_dict(),
        }

    def load_state_dict(self, state: dict[str, object]) -> None:
        self.weight = state["weight"].clone().requires_grad_(True)
        self.bias = state["bias"].clone().requires_grad_(True)
        self._optimizer = Adam([self.weight, self.bias], lr=self.lr)
        self._optimizer.load_state_dict(state["optimizer"])


class RunningAccuracy:
    """Prequential accuracy: over everything scored so far, and over the last ``windows`` scored windows.

    Parameters:
        windows: how many of the most recent scored windows :attr:`recent` counts.
    """

    def __init__(self, windows: int) -> None:
        self.correct = 0
        self.total = 0
        self._recent: deque[tuple[int, int]] = deque(maxlen=windows)

    def add(self, correct: int, total: int) -> RunningAccuracy:
        """Scores one window: ``correct`` of ``total`` predictions were right (``total > 0``)."""
        self.correct += correct
        self.total += total
        self._recent.append((correct, total))
        return self

    @property
    def overall(self) -> float:
        """Fraction right since the start; NaN before anything was scored."""
        return self.correct / self.total if self.total else math.nan

    @property
    def recent(self) -> float:
        """Fraction right over the last ``windows`` scored windows; NaN before anything was scored."""
        total = sum(t for _, t in self._recent)
        return sum(c for c, _ in self._recent) / total if total else math.nan

    def state_dict(self) -> dict[str, object]:
        return {"correct": self.correct, "total": self.total, "recent": list(self._recent)}

    def load_state_dict(self, state: dict[str, object]) -> None:
        self.correct, self.total = int(state["correct"]), int(state["total"])
        self._recent.clear()
        self._recent.extend((int(c), int(t)) for c, t in state["recent"])


# ------------------------------------------------------------------------------------ the probes


class OnlineProbes:
    """Prequential linear phone and speaker probes on one module of the learner's stack.

    ``update(window, embeddings)`` is the one way to feed data in: it brings the chosen module's
    frames to the 10 ms label rate, standardises them (running per-channel statistics), predicts
    phones per frame and speakers per frame and per window, scores the predictions against the
    window's labels, and then takes one Adam step on each probe with the labelled frames. Results:
    :attr:`readout` (the newest window's :class:`~online_gim.report.ProbeReadout`), and the running
    accuracies :attr:`phone_accuracy`, :attr:`speaker_accuracy` (per window) and
    :attr:`speaker_frame_accuracy` (per frame), each a :class:`RunningAccuracy`. A speaker seen for
    the first time is scored as a miss (it could not have been predicted), then added.

    Parameters:
        config: the probes' settings.
        encoder: the stack they read (for the module's channels and frame positions).
    """

    def __init__(self, config: ProbeConfig, encoder: EncoderConfig) -> None:
        grids = frame_grids(encoder)
        if not -len(grids) <= config.module < len(grids):
            raise ValueError(f"probes.module must be in {-len(grids)}..{len(grids) - 1}, got {config.module}")
        self.config = config
        self.module = config.module % len(grids)
        self.grid = grids[self.module]
        self.channels = module_channels(encoder)[self.module]
        self._reset()

    def _reset(self) -> None:
        config = self.config
        self.standardizer = FeatureStandardizer(self.channels, momentum=config.feature_momentum)
        self.phone = LinearProbe(self.channels, config.phone_classes, lr=config.lr)
        self.speaker = LinearProbe(self.channels, 0, lr=config.lr)
        self.speakers: list[str] = []
        self.phone_accuracy = RunningAccuracy(config.accuracy_windows)
        self.speaker_accuracy = RunningAccuracy(config.accuracy_windows)
        self.speaker_frame_accuracy = RunningAccuracy(config.accuracy_windows)
        self.readout: ProbeReadout | None = None

    def check(self, window: AudioWindow) -> None:
        """Raises ``ValueError`` if the window's phone labels cannot be used (changes nothing).

        The labels must be ``(window.num_frames,)`` with classes in ``0..phone_classes - 1`` or
        ``UNKNOWN_LABEL``.
        """
        if window.phones is None:
            return
        phones = np.asarray(window.phones)
        if phones.shape != (window.num_frames,):
            raise ValueError(f"window.phones must be ({window.num_frames},) labels, got shape {phones.shape}")
        bad = phones[(phones != UNKNOWN_LABEL) & ((phones < 0) | (phones >= self.config.phone_classes))]
        if bad.size:
            raise ValueError(
                f"phone label {int(bad[0])} is outside 0..{self.config.phone_classes - 1} "
                f"(probes.phone_classes = {self.config.phone_classes}); unknown frames must be {UNKNOWN_LABEL}"
            )

    def update(self, window: AudioWindow, embeddings: Sequence[torch.Tensor], *, first_module: int = 0) -> OnlineProbes:
        """Predicts, scores, then learns from one window.

        Args:
            window: the window the learner just processed (its labels, if any, train the probes).
            embeddings: per module, its ``(frames, C)`` output on the window (``StepReport.embeddings``).
            first_module: the stack index of ``embeddings[0]`` (a pipeline stage's learner holds
                modules ``first_module ..``).
        Raises:
            ValueError: unusable labels (see :meth:`check`) or embeddings that do not fit the
                stack; nothing is changed then.
        """
        self.check(window)
        output = embeddings[self.module - first_module] if 0 <= self.module - first_module < len(embeddings) else None
        if output is None or output.dim() != 2 or output.shape[1] != self.channels:
            raise ValueError(f"embeddings must hold module {self.module}'s (frames, {self.channels}) output")
        features = to_label_frames(output, self.grid, window.num_frames)
        x = self.standardizer.update(features).apply(features)
        phone_labels = self._phone_labels(window)
        phone_prob, phone_top = torch.softmax(self.phone.logits(x), dim=1).max(dim=1)
        known = phone_labels != UNKNOWN_LABEL
        if bool(known.any()):
            self.phone_accuracy.add(int((phone_top[known] == phone_labels[known]).sum()), int(known.sum()))
            self.phone.learn(x[known], phone_labels[known])
        speaker_top = self._score_and_learn_speakers(window, x)
        self.readout = ProbeReadout(
            phone_top=phone_top,
            phone_prob=phone_prob,
            phone_label=phone_labels,
            speaker_top=speaker_top,
            phone_accuracy=self.phone_accuracy.recent,
            speaker_accuracy=self.speaker_accuracy.recent,
            speaker_frame_accuracy=self.speaker_frame_accuracy.recent,
        )
        return self

    @staticmethod
    def _phone_labels(window: AudioWindow) -> torch.Tensor:
        if window.phones is None:
            return torch.full((window.num_frames,), UNKNOWN_LABEL, dtype=torch.long)
        return torch.from_numpy(np.asarray(window.phones, dtype=np.int64))

    def _score_and_learn_speakers(self, window: AudioWindow, x: torch.Tensor) -> tuple[tuple[str, float], ...]:
        """Speaker predictions with the speakers known before this window, scored, then learned."""
        frame_speakers = window.frame_speakers()
        known = [i for i, s in enumerate(frame_speakers) if s is not None]
        top: tuple[tuple[str, float], ...] = ()
        if self.speaker.classes:
            pooled = torch.softmax(self.speaker.logits(x.mean(dim=0, keepdim=True))[0], dim=0)
            probabilities, indices = pooled.topk(min(self.config.speaker_top, self.speaker.classes))
            top = tuple((self.speakers[int(i)], float(p)) for p, i in zip(probabilities, indices))
        if not known:
            return top
        majority = Counter(frame_speakers[i] for i in known).most_common(1)[0][0]
        self.speaker_accuracy.add(int(bool(top) and top[0][0] == majority), 1)
        index = {speaker: i for i, speaker in enumerate(self.speakers)}
        if self.speaker.classes:
            predicted = self.speaker.logits(x[known]).argmax(dim=1)
            truth = torch.tensor([index.get(frame_speakers[i], -1) for i in known])  # -1: new, never predicted
            self.speaker_frame_accuracy.add(int((predicted == truth).sum()), len(known))
        else:
            self.speaker_frame_accuracy.add(0, len(known))
        for i in known:
            if frame_speakers[i] not in index:
                index[frame_speakers[i]] = len(self.speakers)
                self.speakers.append(frame_speakers[i])
        self.speaker.grow(len(self.speakers))
        self.speaker.learn(x[known], torch.tensor([index[frame_speakers[i]] for i in known]))
        return top

    # ------------------------------------------------------------------------------ state

    def state_dict(self) -> dict[str, object]:
        """Everything the probes learned: statistics, weights, optimisers, speakers, accuracies."""
        return {
            "standardizer": self.standardizer.state_dict(),
            "phone": self.phone.state_dict(),
            "speaker": self.speaker.state_dict(),
            "speakers": list(self.speakers),
            "phone_accuracy": self.phone_accuracy.state_dict(),
            "speaker_accuracy": self.speaker_accuracy.state_dict(),
            "speaker_frame_accuracy": self.speaker_frame_accuracy.state_dict(),
        }

    def load_state_dict(self, state: dict[str, object]) -> None:
        """Restores :meth:`state_dict`'s output; the readout is empty until the next window.

        Raises:
            KeyError, ValueError: the state is incomplete or does not fit these probes; nothing
                is changed then.
        """
        restored = OnlineProbes.__new__(OnlineProbes)
        restored.__dict__.update(self.__dict__)
        restored._reset()
        restored.standardizer.load_state_dict(state["standardizer"])
        restored.phone.load_state_dict(state["phone"])
        restored.speaker.load_state_dict(state["speaker"])
        restored.speakers = [str(s) for s in state["speakers"]]
        for name in ("phone_accuracy", "speaker_accuracy", "speaker_frame_accuracy"):
            getattr(restored, name).load_state_dict(state[name])
        shapes = {
            "phone": (restored.phone.weight.shape, (self.config.phone_classes, self.channels)),
            "speaker": (restored.speaker.weight.shape, (len(restored.speakers), self.channels)),
        }
        for name, (found, expected) in shapes.items():
            if tuple(found) != expected:
                raise ValueError(f"saved {name} probe has shape {tuple(found)}, these probes need {expected}")
        self.__dict__.update(restored.__dict__)
