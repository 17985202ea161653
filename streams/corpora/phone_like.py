"""A structured, speech-like test signal that needs no corpus: Markov "phones" of formant-like tones.

Used where the synthetic espeak-ng corpus (:mod:`online_gim.streams.corpora.synth`) is not at hand: in the
learner's tests and as the fall-back audio of ``online-gim bench``. Unlike white noise it has a
predictable future at the time scales the learner's modules see (10-80 ms), so a learner's loss
can fall on it.
"""

from __future__ import annotations

import math

import numpy as np
import torch

PHONE_TYPES = 6
"""Distinct "phones" (pairs of formant frequencies) the Markov chain moves between."""


def phone_like_stream(windows: int, window: int, seed: int = 0) -> list[torch.Tensor]:
    """Consecutive windows of one speech-like stream at 16 kHz.

    'Phones' of 30-80 ms, each a chord of two formant-like tones (300-3500 Hz) modulated at a
    pitch of about 120 Hz, follow a Markov chain over :data:`PHONE_TYPES` phone types; a small
    Gaussian noise floor is added. Deterministic for a seed.

    Args:
        windows: number of windows.
        window: samples per window.
        seed: seeds the formants, phone lengths, pitches, chain and noise.
    Returns:
        ``windows`` float32 tensors of shape ``(window,)``, amplitude below about 0.45.
    """
    rng = np.random.default_rng(seed)
    formants = rng.uniform(300, 3500, size=(PHONE_TYPES, 2))
    total = windows * window
    signal = np.zeros(total, dtype=np.float32)
    position, phone = 0, 0
    while position < total:
        length = int(rng.integers(480, 1280))
        t = np.arange(length) / 16000
        pitch = 120 * (1 + 0.1 * rng.standard_normal())
        tone = sum(np.sin(2 * math.pi * f * t) for f in formants[phone]) * (0.5 + 0.5 * np.sin(2 * math.pi * pitch * t))
        piece = tone[: total - position] * 0.2
        signal[position : position + len(piece)] = piece
        position += length
        phone = int((phone + rng.integers(1, 3)) % PHONE_TYPES)
    signal += 0.01 * rng.standard_normal(total).astype(np.float32)
    return [torch.from_numpy(signal[i * window : (i + 1) * window]) for i in range(windows)]
