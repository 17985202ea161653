"""The whole evaluation: split, train each method, extract features, fit probes, collect results."""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager, nullcontext
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Literal

import torch

from online_gim.evaluation.cache import ResultCache, label_fingerprint, segments_fingerprint
from online_gim.evaluation.features import (
    Encoder,
    SplitFeatures,
    SplitLabels,
    extract_features,
    learner_encoder,
    mfcc_encoder,
    split_labels,
)
from online_gim.evaluation.markdown import percent
from online_gim.evaluation.methods import Method, load_learner
from online_gim.evaluation.results import Accuracies, CurvePoint, EvaluationReport, MethodResult, ModuleAccuracy
from online_gim.evaluation.scoring import class_accuracies, majority_accuracies, score_modules
from online_gim.evaluation.split import CorpusSplit, Segment, split_corpus
from online_gim.evaluation.training import TrainingRun, train_online
from online_gim.learner import OnlineLearner
from online_gim.streams.corpora.librispeech import LibriSpeechCorpus
from online_gim.streams.progress import ProgressCallback
from online_gim.streams.replay_config import ReplayConfig
from online_gim.streams.window import SAMPLE_RATE

Log = Callable[[str], None]
"""Receives one line of results at a time."""

StageProgress = Callable[[str, float, str], AbstractContextManager[ProgressCallback]]
"""Opens the progress display of one stage, ``(description, total, unit)``; the context manager
gives the :class:`~online_gim.streams.progress.ProgressCallback` the stage reports to, and closes the display."""


def no_progress(description: str, total: float, unit: str) -> AbstractContextManager[ProgressCallback]:
    """A :data:`StageProgress` that shows nothing."""
    return nullcontext(lambda done, total: None)


PHONE_NAMES_FILE = "phones.txt"
"""Optional file of the label folder: one phone name per line, by class index."""


@dataclass(frozen=True)
class EvaluationSettings:
    """How much to train and measure.

    Attributes:
        train_minutes: minutes of audio each learner is trained on (streamed at maximum speed).
        seed: seeds the split, every learner, the replay order and the frame subsets.
        max_frames: frames per split kept for the frame-level probes (about; a seeded subset).
        curve_methods: methods whose learning curve (top-module probes vs minutes) is measured.
        curve_points: points on each learning curve, evenly spaced up to ``train_minutes`` (the
            last after the whole budget).
        curve_every: the curve's points probe every ``curve_every``-th utterance of each split (the
            same utterances at every point, with up to ``max_frames`` frames per split, so each
            point costs about ``1 / curve_every`` of the final probe's encoding); 1: all of them.
        probe_modules: ``all`` modules of a learner, or only the ``top`` one (4-6 times fewer
            probes; for a quick research loop).
        replay: replayed updates per stream window of every trained learner, and their store.
    """

    train_minutes: float
    seed: int = 0
    max_frames: int = 50_000
    curve_methods: tuple[str, ...] = ("clapp_eprop",)
    curve_points: int = 4
    curve_every: int = 4
    probe_modules: Literal["all", "top"] = "all"
    replay: ReplayConfig = field(default_factory=ReplayConfig)

    def __post_init__(self) -> None:
        if not self.train_minutes > 0:
            raise ValueError(f"train_minutes must be positive, got {self.train_minutes}")
        if self.max_frames < 1 or self.curve_points < 1 or self.curve_every < 1:
            raise ValueError("max_frames, curve_points and curve_every must be at least 1")
        if self.probe_modules not in ("all", "top"):
            raise ValueError(f"probe_modules must be 'all' or 'top', got {self.probe_modules!r}")


class Evaluation:
    """Runs the methods on one corpus split; :meth:`run` returns the :class:`EvaluationReport`.

    Parameters:
        corpus: the corpus whose split the probes are fitted and scored on (with its label folder,
            if any).
        settings: budget, seed and measurement settings.
        log: receives a line with each method's results (default: discarded).
        progress: shows each stage's progress (training, encoding a split) with the time left.
        train_corpus: the learners learn from this corpus' audio (all of it) instead of the
            probe corpus' train split: a transfer evaluation.
        cache: where baseline results are kept (``None``: no cache).
    """

    def __init__(
        self,
        corpus: LibriSpeechCorpus,
        settings: EvaluationSettings,
        *,
        log: Log | None = None,
        progress: StageProgress = no_progress,
        train_corpus: LibriSpeechCorpus | None = None,
        cache: ResultCache | None = None,
    ) -> None:
        self.corpus = corpus
        self.settings = settings
        self.log = log or (lambda line: None)
        self.progress = progress
        self.train_corpus = train_corpus
        self.cache = cache
        self.split: CorpusSplit = split_corpus(corpus, seed=settings.seed)
        self.stream: tuple[Segment, ...] = (
            self.split.train if train_corpus is None else tuple(Segment(u) for u in train_corpus)
        )
        if not self.stream:
            raise ValueError("the training stream has no utterance")
        common = {"speakers": self.split.speakers, "max_frames": settings.max_frames}
        self.train_labels = split_labels(self.split.train, seed=settings.seed, **common)
        self.test_labels = split_labels(self.split.test, seed=settings.seed + 1, **common)
        every = settings.curve_every
        self.curve_labels = (  # what each point of a learning curve probes
            split_labels(self.split.train[::every], seed=settings.seed, **common),
            split_labels(self.split.test[::every], seed=settings.seed + 1, **common),
        ) if every > 1 else (self.train_labels, self.test_labels)
        self.phone_names = _phone_names(corpus.labels_dir)

    def features(
        self, encode: Encoder, name: str, labels: tuple[SplitLabels, SplitLabels] | None = None
    ) -> tuple[SplitFeatures, SplitFeatures]:
        """Train and test features of an encoder (:mod:`online_gim.evaluation.features`), of the
        splits' frames (``labels``: of other frames, such as :attr:`curve_labels`)."""
        features = []
        train_labels, test_labels = labels or (self.train_labels, self.test_labels)
        for split, labels in (("train", train_labels), ("test", test_labels)):
            with self.progress(f"{name}: encoding the {split} split", labels.seconds, "s of audio") as progress:
                features.append(extract_features(labels, encode, progress=progress))
        return features[0], features[1]

    def run(self, methods: Sequence[Method]) -> EvaluationReport:
        torch.manual_seed(self.settings.seed)
        results = {method.name: self.run_method(method) for method in methods}
        return EvaluationReport(results, majority_accuracies(self.train_labels, self.test_labels), self.describe_corpus())

    def run_method(self, method: Method) -> MethodResult:
        """Trains (if it learns), probes and times one method; a baseline comes from the cache when
        it holds it."""
        key = self._cache_key(method) if self.cache is not None and method.kind in ("features", "untrained") else None
        if key is not None and (cached := self.cache.get(key)) is not None:
            self.log(f"{method.name}: {_describe(cached.top)} (from the cache)")
            return MethodResult(**{**cached.__dict__, "cached": True})
        started = time.perf_counter()
        if method.kind == "features":
            (module,), phone = score_modules(*self.features(mfcc_encoder(), method.name), [0])
            result = MethodResult(
                top=module, phone_classes=class_accuracies(phone, self.phone_names), per_module=(),
                train_seconds_audio=0.0, replayed_windows=0, compute_rtf=None,
                wall_seconds=time.perf_counter() - started, bp_free=method.bp_free,
            )
        else:
            result = self._run_learner(method, started)
        self.log(f"{method.name}: {_describe(result.top)}; done in {result.wall_seconds:.0f} s")
        if key is not None:
            self.cache.put(key, result)
        return result

    def _run_learner(self, method: Method, started: float) -> MethodResult:
        trains = method.kind == "trained"
        curve = None
        if method.kind == "loaded":
            learner = load_learner(method)
            run = TrainingRun(learner.steps * learner.config.window / SAMPLE_RATE, learner.replayed, 0.0, 0.0)
            self.log(f"{method.name}: loaded at model step {learner.updates} ({run.streamed_seconds / 60:.2f} min of stream)")
        else:
            learner = OnlineLearner(method.config)
            curve, run = self._train(method, learner)
        modules = list(range(learner.num_modules)) if self.settings.probe_modules == "all" else [learner.num_modules - 1]
        train, test = self.features(learner_encoder(learner, modules), method.name)
        self.log(f"{method.name}: fitting {3 * len(modules)} probes")
        scores, phone = score_modules(train, test, range(len(modules)))
        per_module = tuple(ModuleAccuracy(**asdict(s), module=m) for m, s in zip(modules, scores))
        top = scores[-1]
        learning_curve = ()
        if curve is not None:
            if self.settings.curve_every == 1:  # the final probe is the curve's last point
                curve.points.append(CurvePoint(**asdict(top), minutes=run.streamed_seconds / 60))
            else:
                curve.measure(run.streamed_seconds)
            learning_curve = tuple(curve.points)
        return MethodResult(
            top=top, phone_classes=class_accuracies(phone, self.phone_names), per_module=per_module,
            train_seconds_audio=run.streamed_seconds, replayed_windows=run.replayed_windows,
            compute_rtf=run.compute_rtf if trains else None, wall_seconds=time.perf_counter() - started,
            bp_free=method.bp_free, learning_curve=learning_curve,
        )

    def _train(self, method: Method, learner: OnlineLearner) -> tuple[_LearningCurve | None, TrainingRun]:
        """Streams the train stream through a fresh learner for the budget (updating it when the
        method trains, else only its statistics); the learning curve when the method has one."""
        budget = self.settings.train_minutes * 60
        trains = method.kind == "trained"
        curve, checkpoints = None, []
        if trains and method.name in self.settings.curve_methods:
            curve = _LearningCurve(self, method.name, learner)
            checkpoints = [budget * k / self.settings.curve_points for k in range(1, self.settings.curve_points)]
        doing = "training on" if trains else "adapting statistics to"
        with self.progress(f"{method.name}: {doing} {budget / 60:g} min of stream", budget, "s of audio") as progress:
            run: TrainingRun = train_online(
                learner, self.stream, seconds=budget, seed=self.settings.seed, update=trains,
                replay=self.settings.replay if trains else None,
                checkpoints=checkpoints, on_checkpoint=curve.measure if curve is not None else None, progress=progress,
            )
        self.log(f"{method.name}: streamed {run.streamed_seconds / 60:.2f} min ({run.replayed_windows} replayed windows), "
                 f"compute real-time factor {run.compute_rtf:.2f}")
        return curve, run

    def _cache_key(self, method: Method) -> str:
        settings = self.settings
        return ResultCache.key({
            "method": [method.name, method.kind, method.config.model_dump(mode="json") if method.config else None],
            "settings": [settings.train_minutes, settings.seed, settings.max_frames, settings.probe_modules],
            "train": segments_fingerprint(self.split.train),
            "test": segments_fingerprint(self.split.test),
            "stream": segments_fingerprint(self.stream),
            "labels": label_fingerprint(self.corpus.labels_dir),
        })

    def describe_corpus(self) -> dict[str, object]:
        """The JSON ``corpus`` entry: where the data came from and how it was split."""
        split = self.split
        train_speakers = set(split.speakers)
        phones = self.test_labels.phones[self.test_labels.phones >= 0]
        return {
            "roots": [str(root) for root in self.corpus.roots],
            "labels": str(self.corpus.labels_dir) if self.corpus.labels_dir is not None else None,
            "train_stream": "the train split" if self.train_corpus is None else [str(r) for r in self.train_corpus.roots],
            "train_stream_seconds": round(sum(s.num_samples() for s in self.stream) / 16000, 2),
            "split": split.kind,
            "seed": self.settings.seed,
            "train_minutes": self.settings.train_minutes,
            "replay": asdict(self.settings.replay),
            "speakers": len(train_speakers),
            "train_utterances": len(split.train),
            "test_utterances": len(split.test),
            "utterances_split_by_time": sum(s.stop is not None for s in split.train),
            "train_seconds": round(self.train_labels.seconds, 2),
            "test_seconds": round(self.test_labels.seconds, 2),
            "test_utterances_of_unseen_speakers": sum(s.speaker not in train_speakers for s in split.test),
            "labelled_train_utterances": sum(s.labelled for s in split.train),
            "labelled_test_utterances": sum(s.labelled for s in split.test),
            "phone_classes": sorted({int(p) for s in split.train + split.test if s.labelled for p in set(s.utterance.phones.tolist())}),
            "test_silence_share": round(float((phones == 0).float().mean()), 4) if len(phones) else None,
            "phone_probe": _phone_probe(split),
            "max_frames_per_split": self.settings.max_frames,
            "probe_modules": self.settings.probe_modules,
            "curve_every": self.settings.curve_every,
        }


def _phone_names(folder: Path | None) -> tuple[str | None, ...] | None:
    """Class names by index from the label folder's ``phones.txt`` (``<index> <name>`` per line, or
    ``<name>`` per line in index order); ``None`` without one."""
    path = folder / PHONE_NAMES_FILE if folder is not None else None
    if path is None or not path.is_file():
        return None
    rows = [line.split() for line in path.read_text().splitlines() if line.strip()]
    named = {int(words[0]): words[1] for words in rows if len(words) == 2 and words[0].isdigit()}
    if len(named) != len(rows):
        named = {index: words[-1] for index, words in enumerate(rows)}
    return tuple(named.get(index) for index in range(max(named) + 1))


def _describe(accuracies: Accuracies) -> str:
    return (f"phones {percent(accuracies.phone_acc)} % ({percent(accuracies.phone_acc_no_silence)} % without silence), "
            f"speakers per frame {percent(accuracies.speaker_acc_frame)} %, "
            f"per utterance {percent(accuracies.speaker_acc_utt)} %")


def _phone_probe(split: CorpusSplit) -> str:
    """Whether phone accuracy could be measured, and if not why (the JSON's ``corpus.phone_probe``)."""
    for name, segments in (("train", split.train), ("test", split.test)):
        if not any(s.labelled for s in segments):
            return f"not measured: no utterance of the {name} split has phone labels"
    return "measured"


class _LearningCurve:
    """Top-module probe accuracies of a learner at checkpoints of its training stream."""

    def __init__(self, evaluation: Evaluation, name: str, learner: OnlineLearner) -> None:
        self.evaluation, self.name, self.learner = evaluation, name, learner
        self.points: list[CurvePoint] = []

    def measure(self, streamed: float) -> None:
        """Probes the top module after ``streamed`` seconds of audio."""
        top = self.learner.num_modules - 1
        features = self.evaluation.features(
            learner_encoder(self.learner, [top]), f"{self.name} at {streamed / 60:.2f} min", self.evaluation.curve_labels
        )
        (accuracies,), _ = score_modules(*features, [0])
        self.points.append(CurvePoint(**asdict(accuracies), minutes=streamed / 60))
        self.evaluation.log(f"{self.name}: learning curve at {streamed / 60:.2f} min of stream: {_describe(accuracies)}")
