"""The shipped learner stays stable online (issue 2 item 9): streamed speech, one update per window.

A plain port of the published recipe collapses at batch 1 (METHOD.md section 8): ReLU units die,
the loss sits at its chance value and a linear phone probe on the learned features ends BELOW the
untrained encoder. This test streams a few minutes of synthetic speech through the default
``LearnerConfig()`` and judges it the way that collapse was found: no module's units die, every
module's loss is below its chance value, and a linear phone probe on the top module (the GRU's
context c_t) is better on held-out speech than on the same encoder left untrained.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pytest
import torch

from online_gim.config import LearnerConfig
from online_gim.evaluation.features import extract_features, learner_encoder, split_labels
from online_gim.evaluation.linear_probe import ProbeTask, fit_probe
from online_gim.evaluation.split import split_corpus
from online_gim.evaluation.training import train_online
from online_gim.learner import OnlineLearner
from online_gim.report import StepReport
from online_gim.streams.corpora.librispeech import LibriSpeechCorpus
from online_gim.streams.window import AudioWindow

STREAM_SECONDS = 180.0
"""Audio streamed through the learner: 141 windows of 1.28 s."""

LAST_WINDOWS = 20
"""Windows at the end of the stream whose reports are judged."""


class RecordingLearner(OnlineLearner):
    """An :class:`OnlineLearner` that keeps every :class:`StepReport` it returns."""

    def __init__(self, config: LearnerConfig) -> None:
        super().__init__(config)
        self.reports: list[StepReport] = []

    def step(self, window: AudioWindow, modules: Sequence[int] | None = None) -> StepReport:
        report = super().step(window, modules)
        self.reports.append(report)
        return report


def top_phone_accuracy(learner: OnlineLearner, corpus: LibriSpeechCorpus) -> float:
    """Test accuracy of a linear phone probe on the learner's top module (train split -> test split)."""
    split = split_corpus(corpus, seed=0)
    encode = learner_encoder(learner, [learner.num_modules - 1])
    train = extract_features(split_labels(split.train, speakers=split.speakers, max_frames=8000, seed=0), encode)
    test = extract_features(split_labels(split.test, speakers=split.speakers, max_frames=8000, seed=1), encode)
    return fit_probe(ProbeTask(train.frames[0], train.labels.phones, test.frames[0], test.labels.phones)).accuracy


@pytest.mark.slow
def test_default_learner_does_not_collapse_on_streamed_speech(synth_corpus_dir) -> None:
    torch.manual_seed(0)
    corpus = LibriSpeechCorpus(synth_corpus_dir, synth_corpus_dir / "labels")
    config = LearnerConfig()
    learned, untrained = RecordingLearner(config), OnlineLearner(config)
    train = split_corpus(corpus, seed=0).train
    train_online(learned, train, seconds=STREAM_SECONDS, seed=0)
    train_online(untrained, train, seconds=STREAM_SECONDS, seed=0, update=False)

    last = learned.reports[-LAST_WINDOWS:]
    assert all(all(m.updated for m in r.modules) for r in last)
    dead = np.array([[m.dead_fraction for m in r.modules] for r in last]).mean(axis=0)
    ratio = np.array([[m.loss_ratio for m in r.modules] for r in last]).mean(axis=0)
    assert np.all(dead < 0.1), f"dead-unit fraction per module over the last windows: {dead}"
    assert np.all(ratio < 1.0), f"loss / chance per module over the last windows: {ratio}"
    assert all(torch.isfinite(p).all() for stage in learned.stages for p in stage.module.parameters())

    learned_accuracy = top_phone_accuracy(learned, corpus)
    untrained_accuracy = top_phone_accuracy(untrained, corpus)
    assert learned_accuracy > untrained_accuracy + 0.01, (learned_accuracy, untrained_accuracy)
