"""Drift measures: pure functions on tensors (no state, no threads).

The stateful side (reference windows, schedules, the background thread) is
``online_gim.services.drift_monitor``; this module only computes numbers.

Embedding drift
    :func:`mean_cosine_distance` compares the mean embeddings of two sets of frames and
    :func:`mmd_rbf` estimates the maximum mean discrepancy between the two sets with a Gaussian
    kernel (Gretton et al., "A Kernel Two-Sample Test", JMLR 2012, unbiased estimator eq. 3).
Input drift
    :func:`audio_level_db` and :func:`band_energies_db` summarise a waveform;
    :func:`spectral_centroid_hz` and :func:`spectral_flatness` describe its spectrum;
    :func:`spectrum_distance_db` compares two band-energy profiles.
Weight drift
    :func:`relative_change` of a module's parameters between two copies.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch

SAMPLE_RATE = 16_000
"""Samples per second of the waveforms these functions take (16 kHz mono)."""

_EPS = 1e-12


def mean_cosine_distance(current: torch.Tensor, reference: torch.Tensor) -> float:
    """``1 - cos(mean(current), mean(reference))``: 0 for the same mean direction, up to 2.

    Args:
        current: ``(n, channels)`` embeddings (frames of one module).
        reference: ``(m, channels)`` embeddings of the same module.

    Returns:
        The cosine distance of the two mean vectors; ``nan`` when either set is empty or a mean is
        the zero vector.

    Examples:
        >>> a = torch.tensor([[1.0, 0.0], [1.0, 0.2]])
        >>> round(mean_cosine_distance(a, a), 6)
        0.0
        >>> round(mean_cosine_distance(a, torch.tensor([[0.0, 1.0]])), 3)
        0.9
    """
    _check_pair(current, reference)
    if current.shape[0] == 0 or reference.shape[0] == 0:
        return float("nan")
    mu_a = current.double().mean(0)
    mu_b = reference.double().mean(0)
    norm = mu_a.norm() * mu_b.norm()
    if norm <= _EPS:
        return float("nan")
    return min(2.0, max(0.0, float(1.0 - (mu_a @ mu_b) / norm)))


def median_bandwidth(x: torch.Tensor, y: torch.Tensor) -> float:
    """Median heuristic for the Gaussian kernel width: the median pairwise distance of ``x`` ∪ ``y``.

    Args:
        x: ``(n, channels)``; y: ``(m, channels)``.

    Returns:
        The median Euclidean distance over distinct pairs of the pooled set (1.0 when it is 0).
    """
    pooled = torch.cat([x, y]).double()
    d = torch.cdist(pooled, pooled)
    upper = d[torch.triu(torch.ones_like(d, dtype=torch.bool), diagonal=1)]
    median = float(upper.median()) if upper.numel() else 0.0
    return median if median > _EPS else 1.0


def mmd_rbf(x: torch.Tensor, y: torch.Tensor, *, bandwidth: float | None = None) -> float:
    """Unbiased estimate of the squared MMD between the distributions of ``x`` and ``y``.

    With the Gaussian kernel ``k(a, b) = exp(-|a - b|^2 / (2 sigma^2))``:
    ``MMD^2 = mean_{i!=j} k(x_i, x_j) + mean_{i!=j} k(y_i, y_j) - 2 mean_{i,j} k(x_i, y_j)``.
    It is 0 in expectation for equal distributions (so a single estimate can be slightly
    negative) and at most 2.

    Args:
        x: ``(n, channels)`` samples, ``n >= 2``.
        y: ``(m, channels)`` samples, ``m >= 2``.
        bandwidth: ``sigma``; by default :func:`median_bandwidth` of the pooled samples, which makes
            the estimate invariant to the scale of the embeddings.

    Returns:
        The estimate; ``nan`` when either set has fewer than 2 samples.

    Examples:
        >>> g = torch.Generator().manual_seed(0)
        >>> a, b = torch.randn(200, 8, generator=g), torch.randn(200, 8, generator=g)
        >>> abs(mmd_rbf(a, b)) < 0.02
        True
        >>> mmd_rbf(a, b + 3.0) > 0.5
        True
    """
    _check_pair(x, y)
    n, m = x.shape[0], y.shape[0]
    if n < 2 or m < 2:
        return float("nan")
    sigma = median_bandwidth(x, y) if bandwidth is None else float(bandwidth)
    if not sigma > 0:
        raise ValueError(f"bandwidth must be positive, got {sigma}")
    gamma = 1.0 / (2.0 * sigma * sigma)
    xd, yd = x.double(), y.double()
    kxx = torch.exp(-gamma * torch.cdist(xd, xd).square())
    kyy = torch.exp(-gamma * torch.cdist(yd, yd).square())
    kxy = torch.exp(-gamma * torch.cdist(xd, yd).square())
    term_x = (kxx.sum() - kxx.diagonal().sum()) / (n * (n - 1))
    term_y = (kyy.sum() - kyy.diagonal().sum()) / (m * (m - 1))
    return float(term_x + term_y - 2.0 * kxy.mean())


def audio_level_db(samples: torch.Tensor) -> float:
    """RMS level of a waveform in dB relative to full scale (a full-scale sine is about -3 dBFS).

    Args:
        samples: ``(n,)`` waveform in [-1, 1].

    Returns:
        ``20 log10(rms)``, floored at -120 dB (silence).

    Examples:
        >>> round(audio_level_db(torch.full((100,), 0.1)), 3)
        -20.0
    """
    if samples.numel() == 0:
        return float("nan")
    rms = float(samples.double().square().mean().sqrt())
    return 20.0 * math.log10(max(rms, 1e-6))


def _power_spectrum(samples: torch.Tensor) -> torch.Tensor:
    """``(n // 2 + 1,)`` power spectrum of a Hann-windowed waveform ``(n,)``."""
    x = samples.double()
    x = (x - x.mean()) * torch.hann_window(x.shape[-1], periodic=False, dtype=torch.float64)
    return torch.fft.rfft(x).abs().square()


def spectral_centroid_hz(samples: torch.Tensor, *, sample_rate: int = SAMPLE_RATE) -> float:
    """Power-weighted mean frequency of a waveform ``(n,)``, in Hz; ``nan`` for silence."""
    if samples.numel() < 2:
        return float("nan")
    power = _power_spectrum(samples)
    total = float(power.sum())
    if total <= _EPS:
        return float("nan")
    freqs = torch.fft.rfftfreq(samples.shape[-1], d=1.0 / sample_rate, dtype=torch.float64)
    return float((freqs * power).sum() / total)


def spectral_flatness(samples: torch.Tensor) -> float:
    """Geometric over arithmetic mean of the power spectrum of ``(n,)``: near 1 for white noise,
    near 0 for a pure tone; ``nan`` for silence."""
    if samples.numel() < 2:
        return float("nan")
    power = _power_spectrum(samples)[1:] + _EPS
    arithmetic = float(power.mean())
    if arithmetic <= 2 * _EPS:
        return float("nan")
    return float(power.log().mean().exp()) / arithmetic


def band_energies_db(
    samples: torch.Tensor, *, bands: int = 24, sample_rate: int = SAMPLE_RATE, low_hz: float = 50.0
) -> torch.Tensor:
    """Mean power per log-spaced frequency band, in dB: a coarse, level-dependent spectral profile.

    Args:
        samples: ``(n,)`` waveform in [-1, 1], ``n >= 2``.
        bands: number of bands between ``low_hz`` and the Nyquist frequency.

    Returns:
        ``(bands,)`` float64 band energies in dB (floored at -120 dB).
    """
    power = _power_spectrum(samples) / max(samples.shape[-1], 1)
    freqs = torch.fft.rfftfreq(samples.shape[-1], d=1.0 / sample_rate, dtype=torch.float64)
    edges = torch.logspace(math.log10(low_hz), math.log10(sample_rate / 2), bands + 1, dtype=torch.float64)
    index = torch.bucketize(freqs, edges, right=True) - 1
    inside = (index >= 0) & (index < bands)
    sums = torch.zeros(bands, dtype=torch.float64).index_add_(0, index[inside], power[inside])
    counts = torch.zeros(bands, dtype=torch.float64).index_add_(
        0, index[inside], torch.ones_like(power[inside])
    )
    mean = sums / counts.clamp_min(1.0)
    return 10.0 * torch.log10(mean.clamp_min(1e-12))


def spectrum_distance_db(current: torch.Tensor, reference: torch.Tensor) -> float:
    """Root-mean-square difference, in dB, between two band-energy profiles ``(bands,)``.

    Examples:
        >>> spectrum_distance_db(torch.zeros(4), torch.full((4,), 3.0))
        3.0
    """
    if current.shape != reference.shape:
        raise ValueError(f"profiles differ in shape: {tuple(current.shape)} vs {tuple(reference.shape)}")
    return float((current.double() - reference.double()).square().mean().sqrt())


def relative_change(before: Sequence[torch.Tensor], after: Sequence[torch.Tensor]) -> float:
    """``|after - before| / |before|`` over all tensors of one module (Frobenius norms).

    Args:
        before: the module's parameters at the start of the interval (any shapes).
        after: the same parameters, same shapes and order, at its end.

    Returns:
        The relative change; ``nan`` when ``before`` is all zeros or empty.

    Examples:
        >>> relative_change([torch.ones(3)], [torch.full((3,), 1.5)])
        0.5
    """
    if len(before) != len(after):
        raise ValueError(f"{len(before)} tensors before but {len(after)} after")
    diff = 0.0
    norm = 0.0
    for a, b in zip(before, after):
        if a.shape != b.shape:
            raise ValueError(f"parameter shape changed: {tuple(a.shape)} -> {tuple(b.shape)}")
        a64, b64 = a.detach().double(), b.detach().double()
        diff += float((b64 - a64).square().sum())
        norm += float(a64.square().sum())
    if norm <= 0.0:
        return float("nan")
    return math.sqrt(diff / norm)


def _check_pair(a: torch.Tensor, b: torch.Tensor) -> None:
    if a.dim() != 2 or b.dim() != 2:
        raise ValueError(f"expected (n, channels) tensors, got shapes {tuple(a.shape)} and {tuple(b.shape)}")
    if a.shape[1] != b.shape[1]:
        raise ValueError(f"channel counts differ: {a.shape[1]} vs {b.shape[1]}")
