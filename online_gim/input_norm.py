"""Streaming normalisation of the input waveform by running statistics."""

from __future__ import annotations

import torch

_VARIANCE_FLOOR = 1e-6
"""Smallest variance used to scale (a -60 dB RMS floor for [-1, 1] audio): silence stays small."""


class InputNormalizer:
    """Standardises samples by an exponential moving average of the per-window mean and variance.

    The statistics are streaming (no dataset constants): each window is folded in with weight
    ``momentum`` before it is normalised; the first window initialises them. Slow statistics keep
    relative loudness (a quiet speaker stays quieter) while removing the device's gain and offset.

    Parameters:
        momentum: weight of the newest window, in (0, 1].
    """

    def __init__(self, *, momentum: float) -> None:
        self.momentum = momentum
        self._reset()

    def _reset(self) -> None:
        self.mean = torch.zeros(())
        self.var = torch.ones(())
        self.windows = 0

    def update_and_apply(self, samples: torch.Tensor) -> torch.Tensor:
        """Folds ``(n,)`` samples into the statistics, then returns them normalised ``(n,)``."""
        mean, var = samples.mean(), samples.var(unbiased=False)
        if self.windows == 0:
            self.mean, self.var = mean, var
        else:
            self.mean = self.mean + self.momentum * (mean - self.mean)
            self.var = self.var + self.momentum * (var - self.var)
        self.windows += 1
        return self.apply(samples)

    def apply(self, samples: torch.Tensor) -> torch.Tensor:
        """Normalises ``(n,)`` samples with the current statistics (no update)."""
        return (samples - self.mean) * torch.rsqrt(torch.clamp(self.var, min=_VARIANCE_FLOOR))

    def state_dict(self) -> dict[str, object]:
        return {"mean": self.mean.clone(), "var": self.var.clone(), "windows": self.windows}

    def load_state_dict(self, state: dict[str, object]) -> None:
        self.mean = state["mean"].clone()
        self.var = state["var"].clone()
        self.windows = int(state["windows"])
