"""A decorrelation term for the video modules' local losses: keeps a module's frame encodings from
collapsing onto a few directions (docs/video.md)."""

from __future__ import annotations

import torch
from torch import nn

_EPS = 1e-6


class EncodingDecorrelation(nn.Module):
    """Penalises correlations between the channels of a module's frame encodings.

    The covariance is a running one: an exponential moving average over windows (buffer
    ``covariance`` ``(C, C)``, the first window sets it), to which the current window contributes
    with weight ``momentum`` **and** its gradient, so that a 16-frame window, which alone cannot
    estimate a ``C x C`` covariance, still pushes the stream's channels apart. The penalty is the
    mean over channels of the squared off-diagonal correlations, ``sum_{i != j} r_ij^2 / C``: 0 for
    uncorrelated channels, ``C - 1`` when every channel carries the same signal.

    Parameters:
        channels: ``C``, channels of the encodings.
        momentum: weight of the newest window in the running covariance.
    """

    def __init__(self, channels: int, *, momentum: float) -> None:
        super().__init__()
        self.momentum = momentum
        self.register_buffer("covariance", torch.zeros(channels, channels))
        self.register_buffer("initialised", torch.zeros((), dtype=torch.bool))

    def penalty(self, encodings: torch.Tensor) -> torch.Tensor:
        """The penalty of a window's ``(T, C)`` encodings (with the graph), after folding them into
        the running covariance.

        Returns:
            A scalar tensor, differentiable with respect to ``encodings``.
        """
        centred = encodings - encodings.mean(dim=0, keepdim=True).detach()
        window = centred.T @ centred / encodings.shape[0]
        weight = self.momentum if bool(self.initialised) else 1.0
        covariance = (1.0 - weight) * self.covariance + weight * window
        if bool(torch.isfinite(covariance).all()):  # a non-finite window leaves the statistics as they were
            with torch.no_grad():
                self.covariance.copy_(covariance)
                self.initialised.fill_(True)
        scale = covariance.diagonal().clamp_min(_EPS).rsqrt()
        correlation = covariance * scale[:, None] * scale[None, :]
        off_diagonal = correlation - torch.diag_embed(correlation.diagonal())
        return off_diagonal.square().sum() / encodings.shape[1]
