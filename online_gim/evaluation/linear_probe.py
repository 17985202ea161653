"""Linear probe: multinomial logistic regression fitted on frozen features, scored on held-out ones.

The fit is deterministic (zero initialisation, full-batch L-BFGS with a strong-Wolfe line search,
no sampling), so the same features give the same accuracy. Features are standardised with the
train split's per-channel mean and standard deviation; a small L2 penalty on the weights keeps
the problem well posed when the classes are separable (few utterances per speaker).

:func:`fit_probes` fits several probes at once on a pool of threads, one intra-op thread each: an
L-BFGS fit is a long chain of small matrix products whose threads mostly wait on each other, so
two fits side by side on two cores take about the time of one fit on both (and far less when the
cores are shared with other work). A fit's numbers do not depend on how many fits run beside it.
"""

from __future__ import annotations

from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import torch
import torch.nn.functional as F

L2 = 1e-4
"""Weight of the L2 penalty ``sum(W ** 2)`` added to the mean cross-entropy."""

MAX_ITERATIONS = 100
"""L-BFGS iterations at most (each evaluates the loss once or a few times)."""


@dataclass(frozen=True)
class ProbeTask:
    """One probe to fit: ``(N, C)`` train features with ``(N,)`` int64 labels, and the test features
    to predict. Samples labelled below 0 (unknown) are ignored in both splits."""

    x_train: torch.Tensor
    y_train: torch.Tensor
    x_test: torch.Tensor
    y_test: torch.Tensor


@dataclass(frozen=True)
class ProbeResult:
    """A fitted probe's predictions on the labelled test samples.

    Attributes:
        predicted: ``(M,)`` int64 predicted class of each labelled test sample.
        truth: ``(M,)`` int64 its label.
        train_labels: ``(N,)`` int64 the labels of the labelled train samples (for baselines).
    """

    predicted: torch.Tensor
    truth: torch.Tensor
    train_labels: torch.Tensor

    @property
    def accuracy(self) -> float:
        """Fraction of test samples classified right (a class never seen in train counts as wrong)."""
        return float((self.predicted == self.truth).double().mean())

    def accuracy_without(self, label: int) -> float | None:
        """Accuracy over the test samples whose label is not ``label`` (``None`` if there are none)."""
        kept = self.truth != label
        return float((self.predicted[kept] == self.truth[kept]).double().mean()) if bool(kept.any()) else None

    @property
    def classes(self) -> int:
        """Classes seen in train."""
        return int(torch.unique(self.train_labels).numel())


def fit_probe(task: ProbeTask) -> ProbeResult | None:
    """Fits a linear softmax classifier on the task's train split and predicts its test split.

    Returns:
        The :class:`ProbeResult`, or ``None`` when either split has no labelled sample.
    """
    known, known_test = task.y_train >= 0, task.y_test >= 0
    x_train, y_train = task.x_train[known], task.y_train[known]
    x_test, y_test = task.x_test[known_test], task.y_test[known_test]
    if len(y_train) == 0 or len(y_test) == 0:
        return None
    classes, targets = torch.unique(y_train, return_inverse=True)
    mean, std = x_train.mean(dim=0), x_train.std(dim=0, unbiased=False).clamp(min=1e-5)
    x_train = (x_train - mean) / std
    weight = torch.zeros(len(classes), x_train.shape[1], requires_grad=True)
    bias = torch.zeros(len(classes), requires_grad=True)
    optimizer = torch.optim.LBFGS([weight, bias], max_iter=MAX_ITERATIONS, line_search_fn="strong_wolfe")

    def closure() -> torch.Tensor:
        optimizer.zero_grad()
        loss = F.cross_entropy(x_train @ weight.T + bias, targets) + L2 * weight.pow(2).sum()
        loss.backward()
        return loss

    optimizer.step(closure)
    with torch.no_grad():
        predicted = classes[(((x_test - mean) / std) @ weight.T + bias).argmax(dim=1)]
    return ProbeResult(predicted=predicted, truth=y_test, train_labels=y_train)


def fit_probes(tasks: Sequence[ProbeTask], *, workers: int | None = None) -> list[ProbeResult | None]:
    """:func:`fit_probe` of every task, in order, on ``workers`` threads (default: torch's intra-op
    thread count) with one intra-op thread each, so that the results do not depend on the machine's
    core count either; torch's thread count is restored afterwards."""
    threads = torch.get_num_threads()
    workers = max(1, min(workers or threads, len(tasks)))
    torch.set_num_threads(1)
    try:
        if workers == 1:
            return [fit_probe(task) for task in tasks]
        with ThreadPoolExecutor(workers) as pool:
            return list(pool.map(fit_probe, tasks))
    finally:
        torch.set_num_threads(threads)
