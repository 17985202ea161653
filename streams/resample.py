"""Band-limited resampling in plain torch: the numbers of ``torchaudio.functional.resample``.

Windowed-sinc polyphase interpolation: with ``g = gcd(orig, new)``, each group of ``o = orig / g``
input samples becomes ``n = new / g`` output samples, every output sample a dot product of the
input around it with a sinc low-pass (cut-off ``rolloff`` times the lower Nyquist frequency,
``lowpass_filter_width`` zero crossings to either side) under a Hann or Kaiser window. The input is
zero-padded at both ends. A test checks the output against torchaudio's to float rounding where
torchaudio loads; its extension does not load with every torch build (the CPU-only wheels among
them), so the streams do not depend on it.

Example::

    audio_16k = Resampler(44100, 16000)(audio_44k)   # (..., samples) -> (..., ceil(samples * 16000 / 44100))
"""

from __future__ import annotations

import math
from typing import Literal

import torch
import torch.nn.functional as F

KAISER_BETA = 14.769656459379492
"""torchaudio's default Kaiser window parameter."""


class Resampler:
    """Resamples from ``orig_rate`` to ``new_rate`` Hz; the kernel is built once.

    Parameters:
        orig_rate, new_rate: sample rates in Hz (positive integers).
        lowpass_filter_width: zero crossings of the sinc on each side (sharper and longer when larger).
        rolloff: cut-off as a fraction of the lower rate's Nyquist frequency.
        window: ``hann`` or ``kaiser`` (with ``beta``).
        beta: the Kaiser window's shape (default torchaudio's).

    Attributes:
        width: input samples the kernel reaches beyond its group on either side (in units of the
            reduced input rate ``orig / gcd``).
    """

    def __init__(
        self,
        orig_rate: int,
        new_rate: int,
        *,
        lowpass_filter_width: int = 6,
        rolloff: float = 0.99,
        window: Literal["hann", "kaiser"] = "hann",
        beta: float = KAISER_BETA,
    ) -> None:
        if orig_rate <= 0 or new_rate <= 0:
            raise ValueError(f"sample rates must be positive, got {orig_rate} -> {new_rate}")
        gcd = math.gcd(int(orig_rate), int(new_rate))
        self.orig, self.new = int(orig_rate) // gcd, int(new_rate) // gcd
        cutoff = min(self.orig, self.new) * rolloff
        self.width = math.ceil(lowpass_filter_width * self.orig / cutoff)
        offsets = torch.arange(-self.width, self.width + self.orig, dtype=torch.float32)[None, None] / self.orig
        t = (torch.arange(0, -self.new, -1, dtype=torch.float32)[:, None, None] / self.new + offsets) * cutoff
        t = t.clamp_(-lowpass_filter_width, lowpass_filter_width)
        if window == "hann":
            taper = torch.cos(t * math.pi / lowpass_filter_width / 2) ** 2
        else:
            beta_ = torch.tensor(float(beta))
            taper = torch.i0(beta_ * torch.sqrt(1 - (t / lowpass_filter_width) ** 2)) / torch.i0(beta_)
        t *= math.pi
        sinc = torch.where(t == 0, torch.tensor(1.0), t.sin() / t)
        self.kernel = sinc * taper * (cutoff / self.orig)  # (new, 1, 2 width + orig)

    def __call__(self, waveform: torch.Tensor) -> torch.Tensor:
        """``(..., samples)`` float32 -> ``(..., ceil(samples * new / orig))``."""
        if self.orig == self.new:
            return waveform
        shape = waveform.shape
        flat = F.pad(waveform.reshape(-1, shape[-1]), (self.width, self.width + self.orig))
        out = F.conv1d(flat[:, None], self.kernel, stride=self.orig).transpose(1, 2).reshape(flat.shape[0], -1)
        length = math.ceil(self.new * shape[-1] / self.orig)
        return out[:, :length].reshape(*shape[:-1], -1)


def resample(waveform: torch.Tensor, orig_rate: int, new_rate: int, **kwargs: object) -> torch.Tensor:
    """``Resampler(orig_rate, new_rate, **kwargs)(waveform)``."""
    return Resampler(orig_rate, new_rate, **kwargs)(waveform)
