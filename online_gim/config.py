"""Typed configuration of the online learner, loadable from the YAML presets in ``configs/``.

Every field has the default of the shipped configuration (``configs/clapp_eprop.yaml``). Units:
samples are at 16 kHz; frames are the output steps of a module. The presets are installed with the
package (``configs/`` is the package ``online_gim.presets``): :func:`preset_names`,
:func:`load_preset`.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from importlib import resources
from pathlib import Path
from typing import ClassVar, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, PositiveFloat, model_validator
from typing_extensions import Self


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class SavedConfig(BaseModel):
    """A configuration that learner states save, and read back with :meth:`from_saved`.

    ``FIELDS_ADDED_LATER``: fields (dotted paths) added after states were first written whose
    default is not what the learner did before the field existed, with that earlier behaviour's
    value: a saved configuration without the field gets it, never today's default, so an old
    state is neither resumed silently as another learner nor refused for a field it never had.
    """

    FIELDS_ADDED_LATER: ClassVar[dict[str, object]] = {}

    @classmethod
    def from_saved(cls, data: Mapping[str, object]) -> Self:
        """The configuration a state saved as ``data`` (a ``model_dump``) was written with."""
        data = copy.deepcopy(dict(data))
        for path, value in cls.FIELDS_ADDED_LATER.items():
            *parents, name = path.split(".")
            section = data
            for parent in parents:
                section = section.get(parent) if isinstance(section, dict) else None
            if isinstance(section, dict) and name not in section:
                section[name] = value
        return cls.model_validate(data)


class ConvLayerConfig(_Strict):
    """One Conv1d layer of the audio encoder: ``channels`` outputs, ``kernel``/``stride``/``padding`` in frames of its input."""

    channels: int = Field(gt=0)
    kernel: int = Field(gt=0)
    stride: int = Field(gt=0)
    padding: int = Field(ge=0)


GIM_AUDIO_CONVS: tuple[ConvLayerConfig, ...] = tuple(
    ConvLayerConfig(channels=512, kernel=k, stride=s, padding=p)
    for k, s, p in ((10, 5, 2), (8, 4, 2), (4, 2, 2), (4, 2, 2), (4, 2, 1))
)
"""The GIM/CLAPP audio stack (GIM thesis Table A1): total stride 160 samples = 10 ms frames."""


Norm = Literal["window", "time", "frame", "none"]
"""A conv module's normalisation (:class:`~online_gim.conv.ConvModule`)."""


class EncoderConfig(_Strict):
    """The stack of gradient-isolated modules.

    Attributes:
        convs: the conv modules, bottom to top (one module per layer).
        gru: ``eprop`` (stop-gradient GRU trained by forward eligibility traces, the default),
            ``bptt`` (``nn.GRU`` trained by autograd through time, truncated at the window), or
            ``none`` (no autoregressive module).
        gru_hidden: units of the GRU.
        norm: normalisation between each conv and its ReLU. ``window`` (default): every channel
            is standardised by its mean and variance over the window itself (over the whole input
            at inference; ``e2e`` training back-propagates through these statistics): each window's
            constant per-channel offsets (level, the speaker's long-term spectrum) are removed at
            every module, and every unit fires on about half of every window's frames, so units
            cannot die and the representation cannot collapse to a constant. ``time``: the same
            with running statistics (an exponential moving average over windows, see
            ``norm_momentum``; no gradient through them). ``frame``: per-frame normalisation
            across channels (CPC_audio's ChannelNorm, no affine). ``none``: the published recipe
            (collapses online, METHOD.md section 8). Measured on the synthetic corpus
            (docs/stability.md): after 8 minutes of stream, ``window`` lifts the top module's phone
            probe 10 points above the untrained encoder, where ``time`` ends below it. ``window`` needs windows of a second or more:
            with 0.32 s windows (32 frames at the top) a small learner's online phone probe stayed
            near the majority class where ``time`` norm learned (likely because the means of so
            few frames carry the phones being spoken); use ``time`` for short windows.
        norm_per_module: one norm per conv module, bottom to top, instead of ``norm`` for all
            (e.g. ``[window, window, window, time, time]``: the lower modules see each window's
            variation only, the upper ones keep the level and long-term spectrum); ``None``
            (default): ``norm`` everywhere.
        norm_momentum: weight of the newest window in the running statistics of ``time`` norm.
        residual: every conv module above the first adds to its output the mean of the input
            frames at the centre of each output frame's receptive field (a skip path with no
            weights: what a module below encoded reaches the top even where the modules between
            do not re-encode it), weighed as ``residual_mix`` says; needs equal channel counts from
            the second module up. Default ``True`` with ``centred`` (docs/eval/real-speech.md,
            questions 11 and 13); ``False``: the published GIM/CLAPP stack.
        residual_mix: how a conv module with ``residual`` weighs its own output ``y`` and the skip
            path ``s``. ``centred`` (default): ``y + s - mean(s)``, the skip path less its running
            per-channel mean (the sum up the stack keeps no growing constant offset), and each
            module scores, remembers and draws window negatives from its own output ``y`` only (it
            learns what it adds to the modules below; the top module, the GRU, reads and predicts
            the sum). ``sum``: ``y + s``, scored whole; its constant offset grows up the stack, the
            upper modules' losses stay above chance longer at the start of a stream and GRU units
            stay negative over whole windows. ``mean``: ``(y + s) / 2`` (each module's output keeps
            about the size of one without the path, the lower modules' share halves at every
            module); ``equal``: ``(y + i s) / (i + 1)`` at conv module ``i`` (0 = the lowest), every
            module below weighing the same, at the size of one module's output.
        eprop_chunk: steps per chunk of the e-prop trace update (memory ``O(chunk * width)``).
    """

    convs: tuple[ConvLayerConfig, ...] = GIM_AUDIO_CONVS
    gru: Literal["eprop", "bptt", "none"] = "eprop"
    gru_hidden: int = Field(default=256, gt=0)
    norm: Norm = "window"
    norm_per_module: tuple[Norm, ...] | None = None
    norm_momentum: float = Field(default=0.05, gt=0, le=1)
    residual: bool = True
    residual_mix: Literal["sum", "mean", "equal", "centred"] = "centred"
    eprop_chunk: int = Field(default=32, gt=0)

    @model_validator(mode="after")
    def _check_norms(self) -> EncoderConfig:
        if self.norm_per_module is not None and len(self.norm_per_module) != len(self.convs):
            raise ValueError(
                f"norm_per_module names {len(self.norm_per_module)} norms for {len(self.convs)} conv modules"
            )
        if self.residual:
            for index in range(1, len(self.convs)):
                below, layer = self.convs[index - 1], self.convs[index]
                if below.channels != layer.channels:
                    raise ValueError(
                        f"residual needs equal channels: conv module {index} has {layer.channels}, "
                        f"the module below it {below.channels} (encoder.residual: false builds the stack "
                        "without the skip path)"
                    )
        return self

    def residual_weights(self, index: int) -> tuple[float, float] | None:
        """Conv module ``index``'s weights of its own output and of the skip path (``residual_mix``),
        ``None`` where it has no skip path (``residual`` off, or the lowest module)."""
        if not self.residual or index == 0:
            return None
        if self.residual_mix in ("sum", "centred"):
            return 1.0, 1.0
        if self.residual_mix == "mean":
            return 0.5, 0.5
        return 1.0 / (index + 1), index / (index + 1)

    def module_norm(self, index: int) -> Norm:
        """The norm of conv module ``index`` (0 = the lowest)."""
        return self.norm if self.norm_per_module is None else self.norm_per_module[index]

    @property
    def total_stride(self) -> int:
        """Input samples per output frame of the top conv module."""
        stride = 1
        for conv in self.convs:
            stride *= conv.stride
        return stride


class LossConfig(_Strict):
    """The local loss that trains every module.

    Attributes:
        kind: ``clapp`` (hinge, each scored term is a positive OR a negative with probability 1/2,
            CLAPP eq. 2), ``clapp_s`` (both every step), ``infonce`` (GIM: softmax over the positive
            and ``negatives`` negatives), ``distance_hinge`` (squared-distance hinge with margins
            ``margin_pos``/``margin_neg`` between the prediction and the target).
        prediction_steps: K, frames ahead that each context predicts (k = 1..K).
        negatives: negatives per scored (anchor, k) term for ``infonce``; 1 for the hinge losses.
        split_prediction: CLAPP Appendix C: two independent prediction matrices, one updates the
            target side (W_pred_z), the other the context side (W_pred_c), no weight transport.
        subwindow: anchors scored per window and module (a random contiguous run), as GIM does to
            bound the cost of the long lower layers; the backward pass only touches those frames.
        margin_pos, margin_neg: distances (in units of the normalised embedding) of ``distance_hinge``.
    """

    kind: Literal["clapp", "clapp_s", "infonce", "distance_hinge"] = "clapp"
    prediction_steps: int = Field(default=12, gt=0)
    negatives: int = Field(default=10, gt=0)
    split_prediction: bool = False
    subwindow: int = Field(default=128, gt=0)
    margin_pos: float = Field(default=1.0, ge=0)
    margin_neg: float = Field(default=3.0, ge=0)


class MemoryConfig(_Strict):
    """The per-module negative memory (a FAISS index of past encodings).

    Attributes:
        capacity: entries kept (FIFO); never exceeded.
        writes_per_window: encodings of each window written into the memory (random frames).
        policy: ``uniform`` negatives, or ``hard`` (nearest neighbours of the prediction by inner
            product, i.e. the negatives that score highest).
        hard_pool: ``hard``: candidates searched per prediction (the hardest allowed one is used).
        max_age_updates: entries written more than this many updates ago are evicted (stale).
        exclusion_frames: entries of the same stream within this many frames of the anchor are
            never negatives (they are its true neighbours); default: ``prediction_steps``.
        window_negatives: share of the negatives drawn from the current window's own frames
            (outside the anchor's exclusion zone) instead of the memory: 0 = memory only, 1 = the
            window only (``LocalObjective``); ignored with ``policy: hard``. Default 0.5: on real
            speech, with ``input_gain: local``, it lifted the top module's probes in two seeds
            (docs/eval/real-speech.md, question 8).
    """

    capacity: int = Field(default=2048, gt=0)
    writes_per_window: int = Field(default=128, gt=0)
    policy: Literal["uniform", "hard"] = "uniform"
    hard_pool: int = Field(default=16, gt=0)
    max_age_updates: int = Field(default=200, gt=0)
    exclusion_frames: int | None = Field(default=None, ge=0)
    window_negatives: float = Field(default=0.5, ge=0, le=1)


class OptimConfig(_Strict):
    """Per-module Adam optimisers.

    Attributes:
        lr: Adam learning rate of every module (GIM: 2e-4).
        lr_per_module: one learning rate per module, bottom to top (the conv modules, then the
            GRU if any), instead of ``lr`` for all; ``None`` (default): ``lr`` everywhere.
        grad_clip: maximum gradient norm per module per update (a guard, not a tuning knob).
        moments: how Adam keeps its moments (``online_gim.adam``): ``compact`` (default: the first
            moment in bfloat16, the second factored into row and column means for matrices, as
            Adafactor; a quarter of the memory) or ``float32`` (exactly ``torch.optim.Adam``).
    """

    lr: float = Field(default=2e-4, gt=0)
    lr_per_module: tuple[PositiveFloat, ...] | None = None
    grad_clip: float = Field(default=10.0, gt=0)
    moments: Literal["compact", "float32"] = "compact"

    def module_lr(self, index: int) -> float:
        """The learning rate of module ``index`` (0 = the lowest)."""
        return self.lr if self.lr_per_module is None else self.lr_per_module[index]


class ProbeConfig(_Strict):
    """The online linear probes (``online_gim.probes``) that read the learner's features.

    Attributes:
        module: which module's output they read; negative counts from the top (-1 = the top
            module, the GRU's context c_t when there is one).
        phone_classes: phone classes 0..phone_classes-1 (CPC/GIM labels: 41).
        lr: Adam learning rate of the probes (one step per labelled window).
        feature_momentum: weight of the newest window in the running per-channel mean and
            variance that standardise the features before the probes.
        accuracy_windows: the running accuracy counts the last this many labelled windows.
        speaker_top: speakers listed (best first) in each window's readout.
    """

    module: int = -1
    phone_classes: int = Field(default=41, gt=0)
    lr: float = Field(default=1e-2, gt=0)
    feature_momentum: float = Field(default=0.05, gt=0, le=1)
    accuracy_windows: int = Field(default=100, gt=0)
    speaker_top: int = Field(default=3, gt=0)


class LearnerConfig(_Strict, SavedConfig):
    """Everything the online learner needs.

    Attributes:
        window: samples per window (20480 = 1.28 s at 16 kHz).
        mode: ``greedy`` (each module trained by its own loss, inputs detached) or ``e2e``
            (one loss at the top, gradients through the whole stack: the CPC / Hinge-Loss-CPC
            baseline).
        schedule: which modules update on a window: ``all``, ``random`` (one random module, as
            RLL), ``round_robin``.
        input_momentum: weight of the newest window in the running input level statistics.
        input_gain: ``stream``: samples standardised by the running input statistics only;
            ``local``: then divided by their local RMS over ``input_gain_ms`` (floored at
            ``input_gain_floor`` of the stream's RMS), an automatic gain control
            (:class:`~online_gim.input_norm.InputNormalizer`). Default ``local`` (with
            ``memory.window_negatives`` 0.5; docs/eval/real-speech.md, question 8).
        pre_emphasis: coefficient ``a`` of a first-order high-pass applied to the standardised
            samples of each window, ``y[n] = x[n] - a * x[n-1]`` (MFCC front-ends use 0.97: it
            flattens speech's falling spectrum, so that formants and fricatives weigh as much as
            the strong low frequencies); 0 (default): none.
        seed: seeds initialisation, negative sampling and schedules.
        probes: the online phone and speaker probes; ``None``: no probes.
        precision: the number type of the convolutions and of the prediction heads' products
            (forward and backward; weights, their updates, normalisation, scores and the GRU stay
            float32, as do the outputs). ``auto`` (default): ``bfloat16`` where the CPU multiplies
            it natively (oneDNN's check: AVX-512 BF16 or AMX; about twice float32's speed), else
            ``float32``.
    """

    window: int = Field(default=20480, gt=0)
    mode: Literal["greedy", "e2e"] = "greedy"
    schedule: Literal["all", "random", "round_robin"] = "all"
    input_momentum: float = Field(default=0.01, gt=0, le=1)
    input_gain: Literal["stream", "local"] = "local"
    input_gain_ms: float = Field(default=20.0, gt=0)
    input_gain_floor: float = Field(default=0.1, gt=0)
    pre_emphasis: float = Field(default=0.0, ge=0, lt=1)
    seed: int = 0
    encoder: EncoderConfig = EncoderConfig()
    loss: LossConfig = LossConfig()
    memory: MemoryConfig = MemoryConfig()
    optim: OptimConfig = OptimConfig()
    probes: ProbeConfig | None = ProbeConfig()
    precision: Literal["auto", "float32", "bfloat16"] = "auto"

    FIELDS_ADDED_LATER: ClassVar[dict[str, object]] = {
        "input_gain": "stream",
        "memory.window_negatives": 0.0,
        "encoder.residual": False,
        "encoder.residual_mix": "sum",
    }

    @model_validator(mode="after")
    def _check_sizes(self) -> LearnerConfig:
        frames = self.window
        for index, conv in enumerate(self.encoder.convs):
            frames = (frames + 2 * conv.padding - conv.kernel) // conv.stride + 1
            if frames <= self.loss.prediction_steps:
                raise ValueError(
                    f"a window of {self.window} samples leaves {frames} frames at conv module {index}, "
                    f"not more than prediction_steps={self.loss.prediction_steps}"
                )
        modules = len(self.encoder.convs) + (self.encoder.gru != "none")
        if self.probes is not None and not -modules <= self.probes.module < modules:
            raise ValueError(
                f"probes.module must be in {-modules}..{modules - 1} (the stack has {modules} modules), "
                f"got {self.probes.module}"
            )
        if self.optim.lr_per_module is not None and len(self.optim.lr_per_module) != modules:
            raise ValueError(
                f"optim.lr_per_module names {len(self.optim.lr_per_module)} learning rates for {modules} modules"
            )
        if self.optim.lr_per_module is not None and self.mode == "e2e":
            raise ValueError("optim.lr_per_module is for greedy mode; e2e has one optimiser (optim.lr)")
        if self.mode == "e2e" and self.encoder.gru == "eprop":
            raise ValueError("mode 'e2e' back-propagates through the whole stack: use gru 'bptt' or 'none'")
        return self

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.model_dump(mode="json"), sort_keys=False)


def load_config(path: str | Path) -> LearnerConfig:
    """Reads a YAML preset (any subset of the fields; the rest keep their defaults).

    Raises:
        ValueError: unreadable file, YAML error, or a field that is unknown or out of range
            (pydantic's message names it).
    """
    path = Path(path)
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except (OSError, yaml.YAMLError) as error:
        raise ValueError(f"cannot read config {path}: {error}") from error
    if not isinstance(data, dict):
        raise ValueError(f"config {path} must be a mapping of fields, not {type(data).__name__}")
    return LearnerConfig.model_validate(data)


PRESETS_PACKAGE = "online_gim.presets"
"""The package whose data files are the presets (the repository's ``configs/``, see ``pyproject.toml``)."""


def presets_dir() -> Path:
    """The folder of the shipped presets (``configs/`` of a checkout, ``online_gim/presets`` of an install).

    Raises:
        RuntimeError: the package is not on the file system (e.g. imported from a zip file).
    """
    root = resources.files(PRESETS_PACKAGE)
    if not isinstance(root, Path):
        raise RuntimeError(f"the presets of {PRESETS_PACKAGE} are not files on disk ({root!r})")
    return root


def preset_names() -> list[str]:
    """Names of the shipped presets (file names without ``.yaml``), sorted."""
    return sorted(path.stem for path in presets_dir().glob("*.yaml"))


def load_preset(name: str) -> LearnerConfig:
    """The shipped preset ``name`` (e.g. ``"clapp_eprop"``, see :func:`preset_names`).

    Raises:
        ValueError: no preset of that name.
    """
    path = presets_dir() / f"{name}.yaml"
    if not path.is_file():
        raise ValueError(f"no preset named {name!r} (shipped: {', '.join(preset_names())})")
    return load_config(path)
