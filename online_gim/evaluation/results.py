"""Typed results of an evaluation and their JSON form.

JSON layout (accuracies are fractions in [0, 1], ``null`` where they cannot be measured, e.g. no
labelled test utterance)::

    {"methods": {NAME: {"phone_acc": float, "speaker_acc_frame": float, "speaker_acc_utt": float,
                        "per_module": [{"module": int, "phone_acc": float, "speaker_acc_frame": float,
                                        "speaker_acc_utt": float}, ...],
                        "train_seconds_audio": float, "wall_seconds": float, "bp_free": str,
                        "learning_curve": [{"minutes": float, "phone_acc": float,
                                            "speaker_acc_frame": float, "speaker_acc_utt": float}, ...]}},
     "corpus": {...}}

The top-level accuracies of a method are those of its top module (the GRU's context when it has
one), or of the MFCC features. ``per_module`` is empty for ``mfcc``; ``learning_curve`` is present
only for the methods it was measured for.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any


@dataclass(frozen=True)
class Accuracies:
    """Test accuracies of linear probes on one set of features (``None``: not measurable)."""

    phone_acc: float | None
    speaker_acc_frame: float | None
    speaker_acc_utt: float | None


@dataclass(frozen=True)
class ModuleAccuracy:
    """Probe accuracies on one module's output (module 0 = the lowest conv module)."""

    module: int
    phone_acc: float | None
    speaker_acc_frame: float | None
    speaker_acc_utt: float | None


@dataclass(frozen=True)
class CurvePoint:
    """Probe accuracies on the top module after ``minutes`` of stream."""

    minutes: float
    phone_acc: float | None
    speaker_acc_frame: float | None
    speaker_acc_utt: float | None


@dataclass(frozen=True)
class MethodResult:
    """One method's row: top-module accuracies, per-module accuracies, budget and cost.

    Attributes:
        train_seconds_audio: seconds of audio streamed through the learner (0 for ``mfcc``).
        wall_seconds: wall-clock seconds of the whole method (training, features, probes).
        bp_free: METHOD.md's "BP-free" column (``yes``, ``no``, ``modules yes, GRU BPTT``).
    """

    phone_acc: float | None
    speaker_acc_frame: float | None
    speaker_acc_utt: float | None
    per_module: tuple[ModuleAccuracy, ...]
    train_seconds_audio: float
    wall_seconds: float
    bp_free: str
    learning_curve: tuple[CurvePoint, ...] = field(default_factory=tuple)

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["per_module"] = [asdict(m) for m in self.per_module]
        if self.learning_curve:
            data["learning_curve"] = [asdict(p) for p in self.learning_curve]
        else:
            del data["learning_curve"]
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> MethodResult:
        return cls(
            phone_acc=data["phone_acc"],
            speaker_acc_frame=data["speaker_acc_frame"],
            speaker_acc_utt=data["speaker_acc_utt"],
            per_module=tuple(ModuleAccuracy(**m) for m in data["per_module"]),
            train_seconds_audio=float(data["train_seconds_audio"]),
            wall_seconds=float(data["wall_seconds"]),
            bp_free=str(data["bp_free"]),
            learning_curve=tuple(CurvePoint(**p) for p in data.get("learning_curve", ())),
        )


@dataclass(frozen=True)
class EvaluationReport:
    """All methods' results (in the order they ran) and a description of the corpus and split."""

    methods: dict[str, MethodResult]
    corpus: dict[str, Any]

    def to_dict(self) -> dict[str, Any]:
        return {"methods": {name: result.to_dict() for name, result in self.methods.items()}, "corpus": dict(self.corpus)}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> EvaluationReport:
        return cls({name: MethodResult.from_dict(m) for name, m in data["methods"].items()}, dict(data["corpus"]))

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=1, allow_nan=False)

    def write_json(self, path: str | Path) -> None:
        Path(path).write_text(self.to_json() + "\n")

