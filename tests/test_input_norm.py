"""The input normaliser's optional front-end stages: local gain control and pre-emphasis."""

from __future__ import annotations

import math

import pytest
import torch

from online_gim.config import LearnerConfig
from online_gim.input_norm import InputNormalizer, centred_mean_square
from online_gim.learner import OnlineLearner


def _standardised(samples: torch.Tensor) -> torch.Tensor:
    return (samples - samples.mean()) / samples.std(unbiased=False)


def test_pre_emphasis_is_the_first_order_high_pass_of_the_standardised_samples():
    samples = torch.tensor([0.5, -1.0, 2.0, 0.25, -0.75, 1.5])
    normaliser = InputNormalizer(momentum=1.0, pre_emphasis=0.9)
    output = normaliser.update_and_apply(samples)
    x = _standardised(samples)
    expected = torch.tensor([x[0]] + [x[n] - 0.9 * x[n - 1] for n in range(1, len(x))])
    torch.testing.assert_close(output, expected)


def test_pre_emphasis_lifts_high_frequencies_against_low_ones():
    t = torch.arange(16000) / 16000
    low, high = torch.sin(2 * math.pi * 100 * t), torch.sin(2 * math.pi * 4000 * t)

    def rms(normaliser: InputNormalizer, tone: torch.Tensor) -> float:
        return float(normaliser.update_and_apply(tone).square().mean().sqrt())

    plain, emphasised = InputNormalizer(momentum=1.0), InputNormalizer(momentum=1.0, pre_emphasis=0.97)
    assert rms(plain, high) / rms(plain, low) == pytest.approx(1.0, rel=1e-3)
    assert rms(emphasised, high) / rms(emphasised, low) > 20  # |1 - a e^{-iw}| at 4 kHz vs 100 Hz: about 36


def test_the_local_mean_square_is_taken_over_the_centred_stretch_cut_at_the_ends():
    samples = torch.tensor([1.0, -2.0, 3.0, 0.5, -1.5, 2.5, 4.0])
    expected = torch.tensor([
        sum(float(samples[j]) ** 2 for j in range(max(i - 2, 0), min(i + 3, 7))) / (min(i + 3, 7) - max(i - 2, 0))
        for i in range(7)
    ])
    torch.testing.assert_close(centred_mean_square(samples, 2), expected)


def test_local_gain_brings_a_quiet_stretch_up_and_leaves_silence_small():
    generator = torch.Generator().manual_seed(0)
    loud = torch.randn(8000, generator=generator)
    quiet = 0.2 * torch.randn(8000, generator=generator)
    silence = torch.zeros(8000)
    normaliser = InputNormalizer(momentum=1.0, local_samples=320, local_floor=0.1)
    output = normaliser.update_and_apply(torch.cat([loud, quiet, silence]))
    middle = slice(1000, 7000)  # away from the stretches' edges
    loud_rms, quiet_rms, silence_rms = (float(part[middle].square().mean().sqrt()) for part in output.split(8000))
    assert 0.8 < loud_rms < 1.2 and 0.8 < quiet_rms < 1.2
    assert silence_rms < 0.1 * loud_rms  # only the stream mean's residue, divided by the floor


def test_the_learner_applies_the_configured_front_end():
    samples = torch.randn(20480, generator=torch.Generator().manual_seed(1))
    plain = OnlineLearner(LearnerConfig(probes=None)).input_norm
    emphasised = OnlineLearner(LearnerConfig(probes=None, pre_emphasis=0.97)).input_norm
    assert emphasised.pre_emphasis == 0.97 and plain.pre_emphasis == 0.0
    assert not torch.allclose(plain.update_and_apply(samples), emphasised.update_and_apply(samples))
