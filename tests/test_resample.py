"""online_gim.streams.resample: torchaudio's sinc resampler in plain torch."""

import math

import pytest
import torch

from online_gim.streams.resample import Resampler, resample

CASES = [
    (44100, 16000, {}, {}),
    (48000, 16000, {}, {}),
    (8000, 16000, {}, {}),
    (22050, 16000, dict(lowpass_filter_width=16, rolloff=0.945, window="kaiser"),
     dict(lowpass_filter_width=16, rolloff=0.945, resampling_method="sinc_interp_kaiser", beta=14.769656459379492)),
]


@pytest.mark.parametrize(("orig", "new", "ours", "theirs"), CASES)
def test_equals_torchaudio_to_float_rounding(orig: int, new: int, ours: dict, theirs: dict) -> None:
    try:
        import torchaudio
    except (ImportError, OSError) as error:  # its extension fails to load on a torch it was not built for
        pytest.skip(f"torchaudio does not load here: {error}")
    x = torch.randn(2, 3 * orig // 2, generator=torch.Generator().manual_seed(0))
    expected = torchaudio.functional.resample(x, orig, new, **theirs)
    got = resample(x, orig, new, **ours)
    assert got.shape == expected.shape
    assert torch.allclose(got, expected, atol=1e-5)


def test_a_tone_below_both_nyquists_comes_out_at_the_new_rate() -> None:
    resampler = Resampler(44100, 16000)
    tone = torch.sin(2 * math.pi * 440.0 * torch.arange(44100) / 44100)
    out = resampler(tone)
    assert out.shape == (16000,)
    expected = torch.sin(2 * math.pi * 440.0 * torch.arange(16000) / 16000)
    inner = slice(200, -200)  # away from the zero-padded ends
    assert torch.allclose(out[inner], expected[inner], atol=2e-3)
    assert torch.equal(Resampler(16000, 16000)(tone), tone)
    with pytest.raises(ValueError, match="positive"):
        Resampler(0, 16000)
