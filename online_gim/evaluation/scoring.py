"""From features to accuracies: the three probes of every module, the per-class phone summary, and
the majority-class baseline.

Every module gets three probes (:mod:`~online_gim.evaluation.linear_probe`): phones per 10 ms frame,
speakers per frame, speakers per utterance (on the utterance's mean feature). The phone probe is
scored on every labelled test frame (``phone_acc``) and on those whose label is not silence
(``phone_acc_no_silence``: the same probe, fitted on all frames).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from online_gim.evaluation.features import SplitFeatures, SplitLabels
from online_gim.evaluation.linear_probe import ProbeResult, ProbeTask, fit_probes
from online_gim.evaluation.results import Accuracies, ClassAccuracy

SILENCE = 0
"""Phone class of silence in GIM/CPC's labels and in speechocean762-dev's."""

PROBES_PER_MODULE = 3
"""Phones per frame, speakers per frame, speakers per utterance."""


def _tasks(train: SplitFeatures, test: SplitFeatures, module: int) -> list[ProbeTask]:
    return [
        ProbeTask(train.frames[module], train.labels.phones, test.frames[module], test.labels.phones),
        ProbeTask(train.frames[module], train.labels.speakers, test.frames[module], test.labels.speakers),
        ProbeTask(
            train.utterance_means[module], train.labels.utterance_speakers,
            test.utterance_means[module], test.labels.utterance_speakers,
        ),
    ]


def _accuracies(phone: ProbeResult | None, speaker: ProbeResult | None, utterance: ProbeResult | None) -> Accuracies:
    return Accuracies(
        phone_acc=phone.accuracy if phone is not None else None,
        phone_acc_no_silence=phone.accuracy_without(SILENCE) if phone is not None else None,
        speaker_acc_frame=speaker.accuracy if speaker is not None else None,
        speaker_acc_utt=utterance.accuracy if utterance is not None else None,
    )


def score_modules(
    train: SplitFeatures, test: SplitFeatures, modules: Sequence[int]
) -> tuple[list[Accuracies], ProbeResult | None]:
    """The accuracies of the given modules (indices into the features' modules), with every probe
    fitted side by side (:func:`~online_gim.evaluation.linear_probe.fit_probes`).

    Returns:
        The accuracies, one per module in order, and the phone probe's result on the last of them
        (for :func:`class_accuracies`).
    """
    tasks = [task for module in modules for task in _tasks(train, test, module)]
    results = fit_probes(tasks)
    grouped = [results[i : i + PROBES_PER_MODULE] for i in range(0, len(results), PROBES_PER_MODULE)]
    return [_accuracies(*group) for group in grouped], grouped[-1][0]


def class_accuracies(phone: ProbeResult | None, names: Sequence[str] | None = None) -> tuple[ClassAccuracy, ...]:
    """Per class of the test split (ascending): support, recall and how often it was predicted.

    Args:
        phone: the phone probe's result (``None``: no phone labels, no classes).
        names: class names by index, when known.
    """
    if phone is None:
        return ()
    classes, support = torch.unique(phone.truth, return_counts=True)
    rows = []
    for label, count in zip(classes.tolist(), support.tolist()):
        right = int(((phone.truth == label) & (phone.predicted == label)).sum())
        rows.append(ClassAccuracy(
            label=label,
            name=names[label] if names is not None and 0 <= label < len(names) else None,
            support=count,
            recall=right / count,
            predicted=int((phone.predicted == label).sum()),
        ))
    return tuple(rows)


def majority_accuracies(train: SplitLabels, test: SplitLabels) -> Accuracies:
    """Accuracies of always answering the train split's most frequent class (unknown labels < 0
    are left out on both sides; for ``phone_acc_no_silence`` the most frequent class other than
    silence, scored on the test frames that are not silence)."""

    def majority(train_labels: torch.Tensor, test_labels: torch.Tensor) -> float | None:
        train_labels, test_labels = train_labels[train_labels >= 0], test_labels[test_labels >= 0]
        if not len(train_labels) or not len(test_labels):
            return None
        return float((test_labels == torch.mode(train_labels).values).double().mean())

    def speech(labels: torch.Tensor) -> torch.Tensor:
        return labels[labels != SILENCE]

    return Accuracies(
        phone_acc=majority(train.phones, test.phones),
        phone_acc_no_silence=majority(speech(train.phones), speech(test.phones)),
        speaker_acc_frame=majority(train.speakers, test.speakers),
        speaker_acc_utt=majority(train.utterance_speakers, test.utterance_speakers),
    )
