"""Typed results of an evaluation and their JSON form.

JSON layout (accuracies are fractions in [0, 1], ``null`` where they cannot be measured, e.g. no
labelled test utterance)::

    {"methods": {NAME: {"phone_acc": float, "phone_acc_no_silence": float,
                        "speaker_acc_frame": float, "speaker_acc_utt": float,
                        "phone_balanced_acc": float,
                        "phone_classes": [{"label": int, "name": str | null, "support": int,
                                           "recall": float, "predicted": int}, ...],
                        "per_module": [{"module": int, "phone_acc": ..., "phone_acc_no_silence": ...,
                                        "speaker_acc_frame": ..., "speaker_acc_utt": ...}, ...],
                        "train_seconds_audio": float, "replayed_windows": int, "compute_rtf": float | null,
                        "wall_seconds": float, "bp_free": str, "cached": bool,
                        "learning_curve": [{"minutes": float, "phone_acc": ..., ...}, ...]}},
     "majority": {"phone_acc": ..., "phone_acc_no_silence": ..., "speaker_acc_frame": ..., "speaker_acc_utt": ...},
     "corpus": {...}}

The top-level accuracies of a method are those of its top module (the GRU's context when it has
one), or of the MFCC features. ``phone_acc_no_silence`` scores the same probe on the test frames
whose label is not silence (class 0). ``phone_classes`` and ``phone_balanced_acc`` (the mean recall
over the phone classes of the test split) describe the top module's phone probe per class.
``majority`` is the accuracy of always answering the train split's most frequent class (for
``phone_acc_no_silence``: its most frequent class other than silence). ``per_module`` is empty for
``mfcc``; ``learning_curve`` is present only for the methods it was measured for.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any


@dataclass(frozen=True)
class Accuracies:
    """Test accuracies of linear probes on one set of features (``None``: not measurable)."""

    phone_acc: float | None
    phone_acc_no_silence: float | None
    speaker_acc_frame: float | None
    speaker_acc_utt: float | None


@dataclass(frozen=True)
class ModuleAccuracy(Accuracies):
    """Probe accuracies on one module's output (module 0 = the lowest conv module)."""

    module: int = 0


@dataclass(frozen=True)
class CurvePoint(Accuracies):
    """Probe accuracies on the top module after ``minutes`` of stream."""

    minutes: float = 0.0


@dataclass(frozen=True)
class ClassAccuracy:
    """How the phone probe did on one class of the test split.

    Attributes:
        label: the class.
        name: its name (the label folder's ``phones.txt``), ``None`` when unknown.
        support: test frames of the class.
        recall: the share of them classified as the class.
        predicted: test frames classified as the class.
    """

    label: int
    name: str | None
    support: int
    recall: float
    predicted: int


@dataclass(frozen=True)
class MethodResult:
    """One method's row: top-module accuracies, per-class phones, per-module accuracies, budget and cost.

    Attributes:
        top: the top module's accuracies (the row's numbers).
        phone_classes: the top module's phone probe per class of the test split.
        per_module: every module's accuracies (empty for ``mfcc``).
        train_seconds_audio: seconds of stream audio the learner learned from (0 for ``mfcc``).
        replayed_windows: replayed updates on top of the stream (``eval --replay``).
        compute_rtf: seconds of learning (replays included) per second of stream, ``None`` when
            nothing was learned.
        wall_seconds: wall-clock seconds of the whole method (training, features, probes).
        bp_free: METHOD.md's "BP-free" column (``yes``, ``no``, ``modules yes, GRU BPTT``).
        cached: the result was read from the evaluation cache (baselines only).
        learning_curve: top-module accuracies during training (``--curve-methods``).
    """

    top: Accuracies
    phone_classes: tuple[ClassAccuracy, ...]
    per_module: tuple[ModuleAccuracy, ...]
    train_seconds_audio: float
    replayed_windows: int
    compute_rtf: float | None
    wall_seconds: float
    bp_free: str
    cached: bool = False
    learning_curve: tuple[CurvePoint, ...] = field(default_factory=tuple)

    @property
    def phone_balanced_acc(self) -> float | None:
        """Mean recall over the phone classes of the test split (``None`` without phone labels)."""
        return sum(c.recall for c in self.phone_classes) / len(self.phone_classes) if self.phone_classes else None

    def to_dict(self) -> dict[str, Any]:
        data: dict[str, Any] = {**asdict(self.top), "phone_balanced_acc": self.phone_balanced_acc}
        data["phone_classes"] = [asdict(c) for c in self.phone_classes]
        data["per_module"] = [asdict(m) for m in self.per_module]
        for name in ("train_seconds_audio", "replayed_windows", "compute_rtf", "wall_seconds", "bp_free", "cached"):
            data[name] = getattr(self, name)
        if self.learning_curve:
            data["learning_curve"] = [asdict(p) for p in self.learning_curve]
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> MethodResult:
        return cls(
            top=accuracies_from_dict(data),
            phone_classes=tuple(ClassAccuracy(**c) for c in data["phone_classes"]),
            per_module=tuple(ModuleAccuracy(**m) for m in data["per_module"]),
            train_seconds_audio=float(data["train_seconds_audio"]),
            replayed_windows=int(data["replayed_windows"]),
            compute_rtf=data["compute_rtf"],
            wall_seconds=float(data["wall_seconds"]),
            bp_free=str(data["bp_free"]),
            cached=bool(data["cached"]),
            learning_curve=tuple(CurvePoint(**p) for p in data.get("learning_curve", ())),
        )


def accuracies_from_dict(data: dict[str, Any]) -> Accuracies:
    """The :class:`Accuracies` fields of a JSON object (other keys are ignored)."""
    return Accuracies(**{f.name: data[f.name] for f in fields(Accuracies)})


@dataclass(frozen=True)
class EvaluationReport:
    """All methods' results (in the order they ran), the majority-class baseline, and a description
    of the corpus and split."""

    methods: dict[str, MethodResult]
    majority: Accuracies
    corpus: dict[str, Any]

    def to_dict(self) -> dict[str, Any]:
        return {
            "methods": {name: result.to_dict() for name, result in self.methods.items()},
            "majority": asdict(self.majority),
            "corpus": dict(self.corpus),
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> EvaluationReport:
        methods = {name: MethodResult.from_dict(m) for name, m in data["methods"].items()}
        return cls(methods, accuracies_from_dict(data["majority"]), dict(data["corpus"]))

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=1, allow_nan=False)

    def write_json(self, path: str | Path) -> None:
        Path(path).write_text(self.to_json() + "\n")
