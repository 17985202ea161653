"""The torch-native MFCC baseline: torchaudio's numbers where torchaudio loads, sound behaviour anywhere."""

import math

import pytest
import torch

from online_gim.evaluation.mfcc import Mfcc, deltas, mel_filterbank

SETTINGS = dict(sample_rate=16000, coefficients=13, n_fft=400, hop=160, mels=40)


def _torchaudio():
    try:
        import torchaudio
    except (ImportError, OSError) as error:  # its extension fails to load on a torch it was not built for
        pytest.skip(f"torchaudio does not load here: {error}")
    return torchaudio


def _speech_like(seconds: float = 2.0) -> torch.Tensor:
    generator = torch.Generator().manual_seed(0)
    audio = torch.randn(int(16000 * seconds), generator=generator) * 0.1
    audio[:4000] *= 1e-3  # a quiet stretch: the 80 dB floor matters
    return audio


def test_mfcc_and_deltas_equal_torchaudios() -> None:
    torchaudio = _torchaudio()
    audio = _speech_like()
    expected = torchaudio.transforms.MFCC(
        16000, n_mfcc=13, melkwargs=dict(n_fft=400, win_length=400, hop_length=160, n_mels=40, center=True)
    )(audio)
    got = Mfcc(**SETTINGS)(audio)
    assert got.shape == expected.shape == (13, 201)
    assert torch.allclose(got, expected, rtol=1e-4, atol=1e-4)
    assert torch.allclose(deltas(got), torchaudio.functional.compute_deltas(expected), rtol=1e-4, atol=1e-4)


def test_a_tone_fills_the_mel_band_of_its_frequency_and_deltas_are_slopes() -> None:
    filters = mel_filterbank(201, 40, 16000)
    tone = torch.sin(2 * math.pi * 1000.0 * torch.arange(16000) / 16000)
    spectrum = torch.stft(tone, 400, hop_length=160, window=torch.hann_window(400), return_complex=True).abs().pow(2)
    band = int((spectrum.mean(1) @ filters).argmax())
    assert filters[25, band] > 0.5  # bin 25 = 1000 Hz at 40 Hz per bin
    features = Mfcc(**SETTINGS)(tone)
    assert features.shape == (13, 101) and torch.isfinite(features).all()
    ramp = torch.arange(20.0).repeat(3, 1) * torch.tensor([[1.0], [2.0], [-0.5]])
    slopes = deltas(ramp)[:, 2:-2]  # away from the replicated edges
    assert torch.allclose(slopes, torch.tensor([[1.0], [2.0], [-0.5]]).expand_as(slopes))
