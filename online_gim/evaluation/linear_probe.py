"""Linear probe: multinomial logistic regression fitted on frozen features, scored on held-out ones.

The fit is deterministic (zero initialisation, full-batch L-BFGS with a strong-Wolfe line search,
no sampling), so the same features give the same accuracy. Features are standardised with the
train split's per-channel mean and standard deviation; a small L2 penalty on the weights keeps
the problem well posed when the classes are separable (few utterances per speaker).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

L2 = 1e-4
"""Weight of the L2 penalty ``sum(W ** 2)`` added to the mean cross-entropy."""

MAX_ITERATIONS = 100
"""L-BFGS iterations at most (each evaluates the loss once or a few times)."""


@dataclass(frozen=True)
class ProbeScore:
    """Test accuracy of a fitted probe.

    Attributes:
        accuracy: fraction of test samples classified right; a test sample whose class never
            occurs in train counts as wrong.
        train_samples, test_samples: how many samples the fit and the score used.
        classes: classes seen in train.
    """

    accuracy: float
    train_samples: int
    test_samples: int
    classes: int


def fit_and_score(
    x_train: torch.Tensor,
    y_train: torch.Tensor,
    x_test: torch.Tensor,
    y_test: torch.Tensor,
) -> ProbeScore | None:
    """Fits a linear softmax classifier on train and scores it on test.

    Args:
        x_train: ``(N, C)`` features; ``y_train``: ``(N,)`` int64 labels, any values; samples
            labelled below 0 (unknown) are ignored, as in ``x_test``/``y_test``.
    Returns:
        The :class:`ProbeScore`, or ``None`` when either split has no labelled sample.
    """
    known, known_test = y_train >= 0, y_test >= 0
    x_train, y_train, x_test, y_test = x_train[known], y_train[known], x_test[known_test], y_test[known_test]
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
    return ProbeScore(
        accuracy=float((predicted == y_test).float().mean()),
        train_samples=len(y_train),
        test_samples=len(y_test),
        classes=len(classes),
    )
