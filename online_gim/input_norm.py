"""Streaming normalisation of the input waveform by running statistics."""

from __future__ import annotations

import math

import torch

from online_gim.report import SkipReason

_VARIANCE_FLOOR = 1e-6
"""Smallest variance used to scale (a -60 dB RMS floor for [-1, 1] audio): silence stays small."""

FLOAT32_MAX = torch.finfo(torch.float32).max
"""The largest float32 (about 3.4e38): the learner's arithmetic is float32."""


def centred_mean_square(samples: torch.Tensor, half: int) -> torch.Tensor:
    """``(n,)`` samples -> ``(n,)`` mean of their squares over ``[i - half, i + half]`` (cut at the
    ends: fewer samples there), from one running sum in float64: ``O(n)`` whatever ``half`` (a
    sliding pool costs ``O(n * half)``)."""
    n = samples.shape[0]
    running = torch.zeros(n + 1, dtype=torch.float64)
    torch.cumsum(samples.to(torch.float64).square(), dim=0, out=running[1:])
    index = torch.arange(n)
    first, stop = (index - half).clamp_(min=0), (index + half + 1).clamp_(max=n)
    return ((running[stop] - running[first]) / (stop - first)).to(samples.dtype)


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

    With ``pre_emphasis`` ``a > 0``, the standardised samples of each call are first high-passed,
    ``y[n] = x[n] - a * x[n-1]`` (``y[0] = x[0]``: no state is carried between windows).

    Parameters:
        momentum: weight of the newest window, in (0, 1].
        local_samples: length of the local RMS stretch, in samples; ``None``: no local gain.
        local_floor: smallest local RMS divided by, relative to the stream's RMS.
        pre_emphasis: the high-pass coefficient ``a`` in [0, 1); 0: none.
    """

    def __init__(
        self, *, momentum: float, local_samples: int | None = None, local_floor: float = 0.1, pre_emphasis: float = 0.0
    ) -> None:
        self.momentum = momentum
        self.local_samples = local_samples
        self.local_floor = local_floor
        self.pre_emphasis = pre_emphasis
        self._reset()

    def _reset(self) -> None:
        self.mean = torch.zeros(())
        self.var = torch.ones(())
        self.windows = 0

    @staticmethod
    def refusal(samples: torch.Tensor) -> SkipReason | None:
        """Why a window's samples (any shape) cannot be learned from, or ``None`` when they can.

        A window is refused when it holds NaN or Inf, or when its level cannot be represented in
        the learner's float32 arithmetic: its sum of squares, computed in float64, exceeds the
        largest float32 (a 20480-sample window with an RMS above about 1.3e17). The statistics
        of such a window would overflow to Inf and then NaN, here and in every module above. The
        check changes nothing and costs one float64 pass over the samples.
        """
        wide = samples.detach().to(torch.float64)
        energy = float(wide.square().sum())  # float64 cannot overflow on float32 squares: only NaN/Inf samples make it non-finite
        if not math.isfinite(energy):
            return SkipReason("nonfinite_samples", "it holds NaN or Inf samples")
        if energy > FLOAT32_MAX:
            rms = math.sqrt(energy / max(wide.numel(), 1))
            return SkipReason(
                "level",
                f"its level (RMS {rms:.3g}) is beyond what the learner's float32 arithmetic can represent "
                f"(its sum of squares {energy:.3g} exceeds {FLOAT32_MAX:.3g})",
            )
        return None

    def update_and_apply(self, samples: torch.Tensor) -> torch.Tensor:
        """Folds ``(n,)`` samples into the statistics, then returns them normalised ``(n,)``.
        Check them with :meth:`refusal` first: a refused window would make the statistics non-finite."""
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
        if self.pre_emphasis > 0 and standard.numel() > 1:
            standard = torch.cat([standard[:1], standard[1:] - self.pre_emphasis * standard[:-1]])
        if self.local_samples is None:
            return standard
        power = centred_mean_square(standard, self.local_samples // 2)
        return standard * torch.rsqrt(power + self.local_floor**2)

    def state_dict(self) -> dict[str, object]:
        return {"mean": self.mean.clone(), "var": self.var.clone(), "windows": self.windows}

    def load_state_dict(self, state: dict[str, object]) -> None:
        self.mean = state["mean"].clone()
        self.var = state["var"].clone()
        self.windows = int(state["windows"])
