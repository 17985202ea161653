"""Drift measures (services/drift.py) and the drift monitor's reference schedule."""

from __future__ import annotations

import math

import pytest
import torch

from online_gim.services import drift as dm
from online_gim.services.drift_monitor import DriftConfig, DriftMonitor


def gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def test_mean_cosine_distance_is_zero_for_same_direction_and_grows_with_angle():
    a = torch.randn(100, 16, generator=gen()) + 2.0
    assert dm.mean_cosine_distance(a, a * 3.0) == pytest.approx(0.0, abs=1e-9)  # scale-free
    assert dm.mean_cosine_distance(a, -a) == pytest.approx(2.0)
    x = torch.tensor([[1.0, 0.0]])
    assert dm.mean_cosine_distance(x, torch.tensor([[0.0, 1.0]])) == pytest.approx(1.0)
    assert math.isnan(dm.mean_cosine_distance(torch.zeros(0, 2), x))
    assert math.isnan(dm.mean_cosine_distance(torch.zeros(3, 2), x))


def test_mmd_is_near_zero_for_one_distribution_and_grows_with_the_shift():
    g = gen(1)
    x, y = torch.randn(256, 32, generator=g), torch.randn(256, 32, generator=g)
    same = dm.mmd_rbf(x, y)
    assert abs(same) < 0.01
    shifts = [dm.mmd_rbf(x, y + s) for s in (0.25, 0.5, 1.0)]
    assert shifts == sorted(shifts) and shifts[0] > 3 * abs(same) and shifts[-1] > 0.1
    # a change of spread with the same mean: invisible to the mean, visible to the MMD
    wide = torch.randn(256, 32, generator=g) * 2.0
    assert dm.mean_cosine_distance(x + 5, wide + 5) < 0.01
    assert dm.mmd_rbf(x, wide) > 10 * abs(same)


def test_mmd_matches_a_direct_computation():
    g = gen(2)
    x, y = torch.randn(5, 3, generator=g), torch.randn(4, 3, generator=g) + 0.5
    sigma = 1.3
    k = lambda a, b: math.exp(-float((a - b).square().sum()) / (2 * sigma**2))  # noqa: E731
    xx = sum(k(x[i], x[j]) for i in range(5) for j in range(5) if i != j) / 20
    yy = sum(k(y[i], y[j]) for i in range(4) for j in range(4) if i != j) / 12
    xy = sum(k(x[i], y[j]) for i in range(5) for j in range(4)) / 20
    assert dm.mmd_rbf(x, y, bandwidth=sigma) == pytest.approx(xx + yy - 2 * xy, rel=1e-6)  # float32 inputs
    assert math.isnan(dm.mmd_rbf(x[:1], y))
    with pytest.raises(ValueError, match="channel"):
        dm.mmd_rbf(x, torch.randn(4, 2))


def test_median_bandwidth_scales_with_the_data():
    x = torch.randn(50, 4, generator=gen(3))
    assert dm.median_bandwidth(x * 10, x * 10) == pytest.approx(10 * dm.median_bandwidth(x, x))
    assert dm.median_bandwidth(torch.zeros(3, 2), torch.zeros(3, 2)) == 1.0


def test_audio_level_and_spectrum_statistics():
    t = torch.arange(16000) / 16000
    tone = 0.5 * torch.sin(2 * math.pi * 1000 * t)
    assert dm.audio_level_db(tone) == pytest.approx(20 * math.log10(0.5 / math.sqrt(2)), abs=0.01)
    assert dm.spectral_centroid_hz(tone) == pytest.approx(1000, abs=5)
    noise = torch.randn(16000, generator=gen(4)) * 0.1
    assert dm.spectral_centroid_hz(noise) == pytest.approx(4000, rel=0.05)  # white noise: Nyquist / 2
    assert dm.spectral_flatness(noise) > 0.4 > 0.01 > dm.spectral_flatness(tone)
    assert math.isnan(dm.spectral_centroid_hz(torch.zeros(100)))
    assert dm.audio_level_db(torch.zeros(100)) == pytest.approx(-120)


def test_band_energies_follow_level_and_colour():
    noise = torch.randn(20480, generator=gen(5)) * 0.1
    bands = dm.band_energies_db(noise)
    assert bands.shape == (24,)
    louder = dm.band_energies_db(noise * 10)
    assert dm.spectrum_distance_db(louder, bands) == pytest.approx(20.0, abs=0.01)
    lowpassed = torch.nn.functional.avg_pool1d(noise[None, None], 8, stride=1, padding=4)[0, 0, :20480]
    assert dm.spectrum_distance_db(dm.band_energies_db(lowpassed), bands) > 3.0
    with pytest.raises(ValueError):
        dm.spectrum_distance_db(bands, bands[:3])


def test_relative_change():
    w = [torch.ones(2, 2), torch.full((3,), 2.0)]
    assert dm.relative_change(w, w) == 0.0
    moved = [w[0] + 0.1, w[1]]
    assert dm.relative_change(w, moved) == pytest.approx(math.sqrt(4 * 0.01 / (4 + 12)))
    assert math.isnan(dm.relative_change([torch.zeros(2)], [torch.ones(2)]))
    with pytest.raises(ValueError, match="shape"):
        dm.relative_change([torch.ones(2)], [torch.ones(3)])


def feed(monitor: DriftMonitor, start: int, count: int, shift: float = 0.0, level: float = 0.1, seed: int = 0):
    """Windows of noise at ``level``; module 0's frames are centred on ``(1, ..., 1)`` and move by
    ``shift`` along the first channel (a change of direction); module 1's never change."""
    g = gen(seed)
    centre = torch.ones(8)
    centre[0] += shift
    for i in range(start, start + count):
        monitor.submit_window((i + 1) * 1.28, torch.randn(20480, generator=g) * level,
                              {0: torch.randn(16, 8, generator=g) * 0.5 + centre, 1: torch.randn(16, 4, generator=g) + 1})


def test_monitor_detects_embedding_and_input_drift_against_its_reference():
    readings = []
    config = DriftConfig(reference_seconds=5.0, refresh_seconds=0, interval_seconds=0.0, max_samples=128)
    monitor = DriftMonitor(config, readings.append)
    try:
        feed(monitor, 0, 12)
        monitor.flush()
        calm = readings[-1]
        assert calm.reference_start == 0.0 and calm.reference_stop == pytest.approx(5.12)
        assert abs(calm.embedding_mmd[0]) < 0.05 and abs(calm.input_level_drift_db) < 0.5
        feed(monitor, 12, 12, shift=2.0, level=0.4, seed=1)
        monitor.flush()
        moved = readings[-1]
        assert moved.embedding_mmd[0] > 0.3 and moved.embedding_cosine[0] > 10 * calm.embedding_cosine[0]
        assert abs(moved.embedding_mmd[1]) < 0.05 and moved.embedding_cosine[1] < 0.01  # module 1 did not change
        assert moved.input_level_drift_db == pytest.approx(20 * math.log10(4), abs=0.5)
        assert moved.input_spectrum_drift_db == pytest.approx(20 * math.log10(4), abs=1.0)
        assert moved.reference_stop == calm.reference_stop  # refresh_seconds=0: one reference forever
    finally:
        monitor.close()


def test_monitor_refreshes_its_reference_on_schedule():
    readings = []
    config = DriftConfig(reference_seconds=2.5, refresh_seconds=10.0, interval_seconds=0.0)
    monitor = DriftMonitor(config, readings.append)
    try:
        feed(monitor, 0, 20)  # 25.6 s of stream
        monitor.flush()
        starts = sorted({r.reference_start for r in readings if not math.isnan(r.reference_start)})
        assert starts == pytest.approx([0.0, 10.24, 20.48])
        assert all(r.reference_stop - r.reference_start >= 2.5 for r in readings if not math.isnan(r.reference_start))
    finally:
        monitor.close()


def test_monitor_weight_drift_and_rate_limit():
    now = [0.0]
    readings = []
    monitor = DriftMonitor(DriftConfig(weight_interval_seconds=30.0), readings.append, clock=lambda: now[0])
    try:
        assert monitor.weights_due()
        monitor.submit_weights({0: [torch.ones(4)], 1: [torch.ones(2)]})
        assert not monitor.weights_due()
        now[0] = 30.0
        assert monitor.weights_due()
        monitor.submit_weights({0: [torch.full((4,), 1.5)], 1: [torch.ones(2)]})
        monitor.flush()
        assert readings[-1].weight_change == {0: pytest.approx(0.5), 1: 0.0}
        assert readings[-1].weight_interval_seconds == 30.0
    finally:
        monitor.close()


def test_monitor_never_blocks_the_caller_when_its_queue_is_full():
    import threading

    gate = threading.Event()
    monitor = DriftMonitor(DriftConfig(interval_seconds=0.0), lambda r: gate.wait(5), queue_size=4)
    try:
        feed(monitor, 0, 1)
        import time

        started = time.monotonic()
        feed(monitor, 1, 50)
        assert time.monotonic() - started < 2.0 and monitor.dropped > 0
    finally:
        gate.set()
        monitor.close()


def test_config_validation():
    with pytest.raises(ValueError):
        DriftConfig(reference_seconds=0)
    with pytest.raises(ValueError):
        DriftConfig(reference_seconds=10, refresh_seconds=5)
    with pytest.raises(ValueError):
        DriftConfig(max_samples=1)


@pytest.mark.parametrize("module", ["online_gim.services.drift", "online_gim.services.drift_monitor", "online_gim.services.projection"])
def test_docstring_examples(module):
    import doctest
    import importlib

    result = doctest.testmod(importlib.import_module(module))
    assert result.attempted > 0 and result.failed == 0
