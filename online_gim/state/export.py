"""The trained encoder alone, for downstream use: export from a checkpoint, load, embed audio.

An exported model is a ``torch.save`` file of plain tensors, numbers, strings, lists and dicts,
so that ``torch.load(path, weights_only=True)`` reads it without unpickling arbitrary objects::

    {"format": "online-gim-encoder", "version": 1,
     "config": {...},                      # LearnerConfig as JSON (window, encoder, ...)
     "modules": [state_dict, ...],         # per module, bottom to top: weights and the conv
                                           # modules' running normalisation statistics
     "input_norm": {"mean": tensor, "var": tensor, "windows": int},   # running input statistics
     "model_step": int}                    # learner updates behind these weights

Heads, optimisers, memories, traces and RNG states are left out: they only matter for learning on.

Usage::

    export_encoder(checkpoint.state["learner"], Path("model.pt"))
    encoder = Encoder.load("model.pt")
    features = encoder.embed(samples)      # per module, (frames, C) float32
"""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import torch

from online_gim.config import LearnerConfig
from online_gim.finite import NonFiniteState, describe_paths, nonfinite_paths
from online_gim.learner import OnlineLearner
from online_gim.state.atomic import write_atomic

ENCODER_FORMAT = "online-gim-encoder"
ENCODER_VERSION = 1


class EncoderFileError(ValueError):
    """A file that is not an exported online-gim encoder (or of another version)."""


def encoder_payload(learner_state: dict[str, Any]) -> dict[str, Any]:
    """The exported model's content, from a learner state (``learner.state_dict()``)."""
    return {
        "format": ENCODER_FORMAT,
        "version": ENCODER_VERSION,
        "config": learner_state["config"],
        "modules": [stage["module"] for stage in learner_state["stages"]],
        "input_norm": learner_state["input_norm"],
        "model_step": int(learner_state["counters"]["updates"]),
    }


def export_encoder(learner_state: dict[str, Any], path: Path) -> None:
    """Writes the encoder of a learner state to ``path`` (atomically).

    Raises:
        NonFiniteState: the encoder holds NaN or Inf (a state written before online-gim guarded
            its state); nothing is written.
        OSError: the file cannot be written.
    """
    payload = encoder_payload(learner_state)
    paths = nonfinite_paths(payload)
    if paths:
        raise NonFiniteState(f"the encoder holds NaN or Inf in {describe_paths(paths)}", paths)
    buffer = io.BytesIO()
    torch.save(payload, buffer)
    write_atomic(path, buffer.getvalue())


class Encoder:
    """An exported encoder, ready to embed audio (no learning).

    Attributes:
        config: the learner configuration it was trained with.
        model_step: learner updates behind its weights.
        num_modules: modules in the stack (conv modules, then the GRU if any).
    """

    def __init__(self, payload: dict[str, Any]) -> None:
        self.config = LearnerConfig.from_saved(payload["config"])
        self.model_step = int(payload["model_step"])
        self._learner = OnlineLearner(self.config)
        stages = self._learner.stages
        if len(payload["modules"]) != len(stages):
            raise EncoderFileError(f"the file has {len(payload['modules'])} modules, its config {len(stages)}")
        for stage, weights in zip(stages, payload["modules"]):
            stage.module.load_state_dict(weights)
        self._learner.input_norm.load_state_dict(payload["input_norm"])

    @property
    def num_modules(self) -> int:
        return self._learner.num_modules

    @property
    def min_samples(self) -> int:
        """Fewest samples that leave one frame at the top of the stack."""
        samples = 1
        for layer in reversed(self.config.encoder.convs):
            samples = max(1, (samples - 1) * layer.stride + layer.kernel - 2 * layer.padding)
        return samples

    @classmethod
    def load(cls, path: str | Path) -> Encoder:
        """Reads an exported encoder.

        Raises:
            FileNotFoundError: no such file.
            EncoderFileError: not an exported encoder, another format version, or damaged.
        """
        try:
            payload = torch.load(Path(path), map_location="cpu", weights_only=True)
        except FileNotFoundError:
            raise
        except Exception as error:  # noqa: BLE001 - torch.load raises many kinds on a foreign file
            raise EncoderFileError(f"{path} is not an exported online-gim encoder ({error})") from None
        if not isinstance(payload, dict) or payload.get("format") != ENCODER_FORMAT:
            raise EncoderFileError(f"{path} is not an exported online-gim encoder")
        if payload.get("version") != ENCODER_VERSION:
            raise EncoderFileError(
                f"{path} has encoder format version {payload.get('version')}; this online-gim reads {ENCODER_VERSION}"
            )
        paths = nonfinite_paths(payload)
        if paths:
            raise EncoderFileError(f"{path} holds NaN or Inf in {describe_paths(paths)}: its features would be too")
        try:
            return cls(payload)
        except (KeyError, RuntimeError, ValueError) as error:
            raise EncoderFileError(f"{path} is damaged or inconsistent ({error})") from None

    def embed(self, samples: torch.Tensor) -> list[torch.Tensor]:
        """Per module, the ``(frames, C)`` features of ``(n,)`` samples at 16 kHz (see ``OnlineLearner.embed``).

        Raises:
            ValueError: not 1-D, NaN/Inf, or shorter than :attr:`min_samples`.
            NonFiniteState: a feature came out NaN or Inf (a ``ValueError``).
        """
        if samples.dim() == 1 and samples.shape[0] < self.min_samples:
            raise ValueError(f"{samples.shape[0]} samples are too few: the encoder needs at least {self.min_samples}")
        refusal = self._learner.input_norm.refusal(samples)
        if refusal is not None:
            raise ValueError(f"the audio cannot be encoded: {refusal.detail}")
        features = self._learner.embed(samples)
        paths = nonfinite_paths(features, "module")
        if paths:
            raise NonFiniteState(f"the features of {describe_paths(paths)} are not finite", paths)
        return features
