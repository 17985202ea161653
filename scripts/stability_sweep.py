#!/usr/bin/env python3
"""One point of the online-stability study (docs/stability.md): train a learner variant on the
synthetic corpus' train split for some minutes of stream, then probe chosen modules.

Usage::

    python scripts/stability_sweep.py --minutes 3 --tag window --override '{"encoder": {"norm": "window"}}'
    python scripts/stability_sweep.py --minutes 0 --tag random   # untrained: statistics adapt on 30 s

Prints one JSON line: per probed module the test accuracy (%) of a linear phone probe and of a
per-frame speaker probe (fitted on 96 train utterances, scored on 64 test utterances of the
default 24-speaker corpus, about 8000 / 5000 frames), and the learner's loss / chance and
dead-unit fraction per module, averaged over windows 5-25 (early) and the last 20 (late).
Deterministic for a seed, up to thread scheduling. Smaller and faster than ``online-gim eval``,
which is the reference measurement.
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Sequence

import numpy as np
import torch

from online_gim.config import LearnerConfig
from online_gim.evaluation.features import extract_features, learner_encoder, split_labels
from online_gim.evaluation.linear_probe import ProbeTask, fit_probe
from online_gim.evaluation.split import split_corpus
from online_gim.evaluation.training import train_online
from online_gim.learner import OnlineLearner
from online_gim.report import StepReport
from online_gim.streams.corpora.librispeech import LibriSpeechCorpus
from online_gim.streams.corpora.synth import default_corpus
from online_gim.streams.window import AudioWindow


class _RecordingLearner(OnlineLearner):
    """Keeps per window the loss / chance (NaN when not updated) and dead fraction of each module."""

    def __init__(self, config: LearnerConfig) -> None:
        super().__init__(config)
        self.ratios: list[list[float]] = []
        self.dead: list[list[float]] = []

    def step(self, window: AudioWindow, modules: Sequence[int] | None = None) -> StepReport:
        report = super().step(window, modules)
        self.ratios.append([m.loss_ratio if m.updated else float("nan") for m in report.modules])
        self.dead.append([m.dead_fraction for m in report.modules])
        return report


def _merge(base: dict, changes: dict) -> dict:
    for key, value in changes.items():
        if isinstance(value, dict) and isinstance(base.get(key), dict):
            _merge(base[key], value)
        else:
            base[key] = value
    return base


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--override", default="{}", help="JSON changes to LearnerConfig() (nested)")
    parser.add_argument("--minutes", type=float, required=True, help="minutes of stream; 0 = untrained")
    parser.add_argument("--tag", default="", help="name printed with the result")
    parser.add_argument("--modules", default="1,3,4,5", help="modules to probe (comma-separated)")
    parser.add_argument("--threads", type=int, default=2, help="torch threads")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    started = time.perf_counter()
    root = default_corpus()
    split = split_corpus(LibriSpeechCorpus(root, root / "labels"), seed=0)
    overrides = json.loads(args.override)
    learner = _RecordingLearner(LearnerConfig.model_validate(_merge(LearnerConfig().model_dump(mode="json"), overrides)))
    trained = args.minutes > 0
    train_online(learner, split.train, seconds=args.minutes * 60 if trained else 30, seed=0, update=trained)
    rng = np.random.default_rng(1)
    probe_train = [split.train[i] for i in rng.choice(len(split.train), 96, replace=False)]
    probe_test = [split.test[i] for i in rng.choice(len(split.test), min(64, len(split.test)), replace=False)]
    encode = learner_encoder(learner)
    train = extract_features(split_labels(probe_train, speakers=split.speakers, max_frames=8000, seed=0), encode)
    test = extract_features(split_labels(probe_test, speakers=split.speakers, max_frames=5000, seed=1), encode)
    modules = [int(m) for m in args.modules.split(",")]
    result: dict[str, object] = {"tag": args.tag, "minutes": args.minutes, "modules": modules, "override": overrides}
    for name, (y_train, y_test) in {"phone": (train.labels.phones, test.labels.phones), "speaker": (train.labels.speakers, test.labels.speakers)}.items():
        result[name] = [
            round(100 * fit_probe(ProbeTask(train.frames[m], y_train, test.frames[m], y_test)).accuracy, 1) for m in modules
        ]
    if trained:
        ratios, dead = np.array(learner.ratios), np.array(learner.dead)
        result["loss_ratio_early"] = np.round(np.nanmean(ratios[5:25], axis=0), 3).tolist()
        result["loss_ratio_late"] = np.round(np.nanmean(ratios[-20:], axis=0), 3).tolist()
        result["dead_late"] = np.round(dead[-20:].mean(axis=0), 3).tolist()
    result["wall_seconds"] = round(time.perf_counter() - started)
    print(json.dumps(result), flush=True)


if __name__ == "__main__":
    main()
