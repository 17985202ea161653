"""The whole evaluation: split, train each method, extract features, fit probes, collect results."""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import astuple, dataclass

import soundfile
import torch

from online_gim.evaluation.features import Encoder, SplitFeatures, extract_features, learner_encoder, mfcc_encoder
from online_gim.evaluation.linear_probe import fit_and_score
from online_gim.evaluation.markdown import percent
from online_gim.evaluation.methods import Method
from online_gim.evaluation.results import Accuracies, CurvePoint, EvaluationReport, MethodResult, ModuleAccuracy
from online_gim.evaluation.split import CorpusSplit, split_corpus
from online_gim.evaluation.training import train_online
from online_gim.learner import OnlineLearner
from streams.corpora.librispeech import LibriSpeechCorpus

Log = Callable[[str], None]
"""Receives one progress line at a time."""


@dataclass(frozen=True)
class EvaluationSettings:
    """How much to train and measure.

    Attributes:
        train_minutes: minutes of audio each learner is trained on (streamed at maximum speed).
        seed: seeds the split, every learner, the replay order and the frame subsets.
        max_frames: frames per split kept for the frame-level probes (about; a seeded subset).
        curve_methods: methods whose learning curve (top-module probes vs minutes) is measured.
        curve_points: points on each learning curve, evenly spaced up to ``train_minutes`` (the
            last is the final result).
    """

    train_minutes: float
    seed: int = 0
    max_frames: int = 50_000
    curve_methods: tuple[str, ...] = ("clapp_eprop",)
    curve_points: int = 4

    def __post_init__(self) -> None:
        if not self.train_minutes > 0:
            raise ValueError(f"train_minutes must be positive, got {self.train_minutes}")
        if self.max_frames < 1 or self.curve_points < 1:
            raise ValueError("max_frames and curve_points must be at least 1")


def score(train: SplitFeatures, test: SplitFeatures, module: int) -> Accuracies:
    """Probe test accuracies on module ``module`` (an index into the features' modules)."""
    phone = fit_and_score(train.frames[module], train.phones, test.frames[module], test.phones)
    speaker = fit_and_score(train.frames[module], train.speakers, test.frames[module], test.speakers)
    utterance = fit_and_score(
        train.utterance_means[module], train.utterance_speakers, test.utterance_means[module], test.utterance_speakers
    )
    return Accuracies(*(s.accuracy if s is not None else None for s in (phone, speaker, utterance)))


class Evaluation:
    """Runs the methods on one corpus split; :meth:`run` returns the :class:`EvaluationReport`.

    Parameters:
        corpus: the corpus (with its label folder, if any).
        settings: budget, seed and measurement settings.
        log: receives progress lines (default: discarded).
    """

    def __init__(self, corpus: LibriSpeechCorpus, settings: EvaluationSettings, *, log: Log | None = None) -> None:
        self.corpus = corpus
        self.settings = settings
        self.log = log or (lambda line: None)
        self.split: CorpusSplit = split_corpus(corpus, seed=settings.seed)

    def features(self, encode: Encoder) -> tuple[SplitFeatures, SplitFeatures]:
        """Train and test features of an encoder (:mod:`online_gim.evaluation.features`)."""
        common = {"speakers": self.split.speakers, "max_frames": self.settings.max_frames}
        return (
            extract_features(self.split.train, encode, seed=self.settings.seed, **common),
            extract_features(self.split.test, encode, seed=self.settings.seed + 1, **common),
        )

    def run(self, methods: Sequence[Method]) -> EvaluationReport:
        torch.manual_seed(self.settings.seed)
        results = {method.name: self.run_method(method) for method in methods}
        return EvaluationReport(results, self.describe_corpus())

    def run_method(self, method: Method) -> MethodResult:
        """Trains (if it learns), probes and times one method."""
        started = time.perf_counter()
        if method.kind == "features":
            self.log(f"{method.name}: features of {len(self.split.train)} + {len(self.split.test)} utterances")
            top = score(*self.features(mfcc_encoder()), 0)
            self.log(f"{method.name}: {_describe(top)}")
            return MethodResult(*astuple(top), per_module=(), train_seconds_audio=0.0,
                                wall_seconds=time.perf_counter() - started, bp_free=method.bp_free)
        learner = OnlineLearner(method.config)
        budget = self.settings.train_minutes * 60
        curve, checkpoints = None, []
        if self._measures_curve(method):
            curve = _LearningCurve(self, method.name, learner)
            checkpoints = [budget * k / self.settings.curve_points for k in range(1, self.settings.curve_points)]
        doing = "training" if method.kind == "trained" else "adapting statistics"
        self.log(f"{method.name}: {doing} on {budget / 60:g} min of stream")
        train_started = time.perf_counter()
        streamed = train_online(
            learner, self.split.train, seconds=budget, seed=self.settings.seed, update=method.kind == "trained",
            checkpoints=checkpoints, on_checkpoint=curve.measure if curve is not None else None,
        )
        train_seconds = time.perf_counter() - train_started - (curve.seconds if curve is not None else 0.0)
        self.log(f"{method.name}: streamed {streamed / 60:.2f} min of audio in {train_seconds:.0f} s "
                 f"(real-time factor {train_seconds / streamed:.2f}); probing every module")
        train, test = self.features(learner_encoder(learner))
        per_module = tuple(ModuleAccuracy(m, *astuple(score(train, test, m))) for m in range(learner.num_modules))
        top = per_module[-1]
        if curve is not None:
            curve.points.append(CurvePoint(streamed / 60, top.phone_acc, top.speaker_acc_frame, top.speaker_acc_utt))
        result = MethodResult(
            top.phone_acc, top.speaker_acc_frame, top.speaker_acc_utt, per_module=per_module,
            train_seconds_audio=streamed, wall_seconds=time.perf_counter() - started, bp_free=method.bp_free,
            learning_curve=tuple(curve.points) if curve is not None else (),
        )
        self.log(f"{method.name}: {_describe(top)}; done in {result.wall_seconds:.0f} s")
        return result

    def _measures_curve(self, method: Method) -> bool:
        return method.kind == "trained" and method.name in self.settings.curve_methods

    def describe_corpus(self) -> dict[str, object]:
        """The JSON ``corpus`` entry: where the data came from and how it was split."""
        split = self.split
        train_speakers = set(split.speakers)
        labelled_phones = sorted({int(p) for u in self.corpus.labelled for p in set(u.phones.tolist())})
        return {
            "roots": [str(root) for root in self.corpus.roots],
            "labels": str(self.corpus.labels_dir) if self.corpus.labels_dir is not None else None,
            "split": split.kind,
            "seed": self.settings.seed,
            "train_minutes": self.settings.train_minutes,
            "speakers": len(train_speakers),
            "train_utterances": len(split.train),
            "test_utterances": len(split.test),
            "train_seconds": round(sum(soundfile.info(str(u.path)).duration for u in split.train), 2),
            "test_seconds": round(sum(soundfile.info(str(u.path)).duration for u in split.test), 2),
            "test_utterances_of_unseen_speakers": sum(u.speaker not in train_speakers for u in split.test),
            "labelled_train_utterances": sum(u.labelled for u in split.train),
            "labelled_test_utterances": sum(u.labelled for u in split.test),
            "phone_classes": labelled_phones,
            "phone_probe": _phone_probe(split),
            "max_frames_per_split": self.settings.max_frames,
        }


def _describe(accuracies: Accuracies | ModuleAccuracy) -> str:
    return (f"phones {percent(accuracies.phone_acc)} %, speakers per frame {percent(accuracies.speaker_acc_frame)} %, "
            f"per utterance {percent(accuracies.speaker_acc_utt)} %")


def _phone_probe(split: CorpusSplit) -> str:
    """Whether phone accuracy could be measured, and if not why (the JSON's ``corpus.phone_probe``)."""
    for name, utterances in (("train", split.train), ("test", split.test)):
        if not any(u.labelled for u in utterances):
            return f"not measured: no utterance of the {name} split has phone labels"
    return "measured"


class _LearningCurve:
    """Top-module probe accuracies of a learner at checkpoints of its training stream."""

    def __init__(self, evaluation: Evaluation, name: str, learner: OnlineLearner) -> None:
        self.evaluation, self.name, self.learner = evaluation, name, learner
        self.points: list[CurvePoint] = []
        self.seconds = 0.0  # wall-clock seconds spent measuring

    def measure(self, streamed: float) -> None:
        """Probes the top module after ``streamed`` seconds of audio."""
        started = time.perf_counter()
        top = self.learner.num_modules - 1
        accuracies = score(*self.evaluation.features(learner_encoder(self.learner, [top])), 0)
        self.points.append(CurvePoint(streamed / 60, *astuple(accuracies)))
        self.seconds += time.perf_counter() - started
        self.evaluation.log(f"{self.name}: learning curve at {streamed / 60:.2f} min of stream: {_describe(accuracies)}")
