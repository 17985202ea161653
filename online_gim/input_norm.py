"""Streaming normalisation of the input waveform by running statistics."""

from __future__ import annotations

import torch
import torch.nn.functional as F

_VARIANCE_FLOOR = 1e-6
"""Smallest variance used to scale (a -60 dB RMS floor for [-1, 1] audio): silence stays small."""


class InputNormalizer:
    """Standardises samples by an exponential moving average of the per-window mean and variance.

    The statistics are streaming (no dataset constants): each window is folded in with weight
    ``momentum`` before it is normalised; the first window initialises them. Slow statistics keep
    relative loudness (a quiet speaker stays quieter) while removing the device's gain and offset.

    With ``local_samples`` (``input_gain: local``), the standardised samples are then divided by
    their local RMS, over a centred stretch of ``local_samples`` samples, floored at ``local_floor``
    (relative to the stream's running RMS, which standardising made 1): an automatic gain control
    that brings quiet consonants to the level of loud vowels, as the log of a filterbank does for
    MFCCs, while stretches quieter than the floor (silence) stay quiet.

    Parameters:
        momentum: weight of the newest window, in (0, 1].
        local_samples: length of the local RMS stretch, in samples; ``None``: no local gain.
        local_floor: smallest local RMS divided by, relative to the stream's RMS.
    """

    def __init__(self, *, momentum: float, local_samples: int | None = None, local_floor: float = 0.1) -> None:
        self.momentum = momentum
        self.local_samples = local_samples
        self.local_floor = local_floor
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
        standard = (samples - self.mean) * torch.rsqrt(torch.clamp(self.var, min=_VARIANCE_FLOOR))
        if self.local_samples is None:
            return standard
        half = self.local_samples // 2
        power = F.avg_pool1d(standard[None, None] ** 2, 2 * half + 1, stride=1, padding=half, count_include_pad=False)[0, 0]
        return standard * torch.rsqrt(power + self.local_floor**2)

    def state_dict(self) -> dict[str, object]:
        return {"mean": self.mean.clone(), "var": self.var.clone(), "windows": self.windows}

    def load_state_dict(self, state: dict[str, object]) -> None:
        self.mean = state["mean"].clone()
        self.var = state["var"].clone()
        self.windows = int(state["windows"])
