"""MFCCs with deltas in plain torch: the MFCC baseline without torchaudio.

The numbers of ``torchaudio.transforms.MFCC`` (HTK mel scale, unnormalised triangular filters,
power spectrogram of a periodic Hann window with reflect-padded centred frames, ``10 log10`` with
an 80 dB floor below the spectrogram's maximum, orthonormal DCT-II) and of
``torchaudio.functional.compute_deltas`` (5-frame regression, edges replicated); a test checks both
to 1e-4 where torchaudio loads. torchaudio's extension does not load with every torch build (the
CPU-only wheels among them), so the evaluation does not depend on it.

Example::

    features = Mfcc(sample_rate=16000, coefficients=13, n_fft=400, hop=160, mels=40)(audio)  # (13, frames)
    features = torch.cat([features, deltas(features), deltas(deltas(features))])            # (39, frames)
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

_AMIN = 1e-10
"""Smallest power before the logarithm (torchaudio's ``amin``)."""

_TOP_DB = 80.0
"""Decibels kept below the spectrogram's maximum (torchaudio's ``top_db``)."""


def _hz_to_mel(hz: float) -> float:
    return 2595.0 * math.log10(1.0 + hz / 700.0)


def mel_filterbank(frequencies: int, mels: int, sample_rate: int) -> torch.Tensor:
    """``(frequencies, mels)`` triangular filters on the HTK mel scale from 0 Hz to Nyquist."""
    bins = torch.linspace(0, sample_rate // 2, frequencies)
    mel_points = torch.linspace(_hz_to_mel(0.0), _hz_to_mel(sample_rate / 2), mels + 2)
    edges = 700.0 * (10 ** (mel_points / 2595.0) - 1.0)
    widths = edges[1:] - edges[:-1]
    slopes = edges[None, :] - bins[:, None]
    rising = -slopes[:, :-2] / widths[:-1]
    falling = slopes[:, 2:] / widths[1:]
    return torch.clamp(torch.minimum(rising, falling), min=0.0)


def dct_matrix(coefficients: int, mels: int) -> torch.Tensor:
    """``(mels, coefficients)`` orthonormal DCT-II."""
    n = torch.arange(float(mels))
    k = torch.arange(float(coefficients))[:, None]
    dct = torch.cos(math.pi / mels * (n + 0.5) * k)
    dct[0] *= 1.0 / math.sqrt(2.0)
    return (dct * math.sqrt(2.0 / mels)).T


class Mfcc:
    """Mel-frequency cepstral coefficients of a mono signal.

    Parameters:
        sample_rate: Hz.
        coefficients: cepstral coefficients kept.
        n_fft: samples per frame (also the window length).
        hop: samples between frame centres; frame ``f`` is centred on sample ``f * hop``.
        mels: mel bands.
    """

    def __init__(self, *, sample_rate: int, coefficients: int, n_fft: int, hop: int, mels: int) -> None:
        self.n_fft = n_fft
        self.hop = hop
        self.window = torch.hann_window(n_fft)
        self.filters = mel_filterbank(n_fft // 2 + 1, mels, sample_rate)
        self.dct = dct_matrix(coefficients, mels)

    def __call__(self, audio: torch.Tensor) -> torch.Tensor:
        """``(samples,)`` float -> ``(coefficients, 1 + samples // hop)``."""
        spectrum = torch.stft(
            audio, self.n_fft, hop_length=self.hop, window=self.window, center=True, pad_mode="reflect", return_complex=True
        ).abs().pow(2.0)
        mel = (spectrum.T @ self.filters).T
        decibels = 10.0 * torch.log10(torch.clamp(mel, min=_AMIN))
        decibels = torch.maximum(decibels, decibels.max() - _TOP_DB)
        return (decibels.T @ self.dct).T


def deltas(features: torch.Tensor, *, width: int = 5) -> torch.Tensor:
    """``(channels, frames)`` -> their ``width``-frame regression slopes, edges replicated."""
    half = (width - 1) // 2
    denominator = half * (half + 1) * (2 * half + 1) / 3
    padded = F.pad(features[None], (half, half), mode="replicate")
    kernel = torch.arange(-half, half + 1, dtype=features.dtype).repeat(features.shape[0], 1, 1)
    return F.conv1d(padded, kernel, groups=features.shape[0])[0] / denominator
