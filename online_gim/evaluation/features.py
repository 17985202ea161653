"""Frozen features of a split's utterances at the 10 ms label rate, with their phone and speaker labels.

An *encoder* here is any function from an utterance's ``(n,)`` float32 audio (16 kHz) to a list of
``(n // 160, C_m)`` tensors, one per module, frame ``f`` describing samples ``[160 f, 160 f + 160)``:
:func:`learner_encoder` (a frozen :class:`~online_gim.learner.OnlineLearner`, each module brought to
the label rate by :func:`online_gim.probes.to_label_frames`) or :func:`mfcc_encoder`. Phone labels
come from the corpus (aligned to the end of the audio, :func:`online_gim.streams.chunk.expand_frame_labels`)
and are read at each frame's centre sample (:func:`online_gim.streams.chunk.frame_labels_of`).

To bound memory and probe-fitting time, at most about ``max_frames`` frames per split are kept
(a seeded random subset of frames, the same for every encoder: :func:`split_labels` chooses them
once per split, :func:`extract_features` encodes with any encoder). The per-utterance mean feature
of every module is taken over all of the utterance's frames.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import torch

from online_gim.evaluation.split import Segment
from online_gim.learner import OnlineLearner
from online_gim.probes import frame_grids, to_label_frames
from online_gim.streams.chunk import frame_labels_of
from online_gim.streams.progress import ProgressCallback
from online_gim.streams.window import FRAME_SAMPLES, SAMPLE_RATE

Encoder = Callable[[np.ndarray], list[torch.Tensor]]
"""``(n,)`` float32 audio at 16 kHz -> per module ``(n // 160, C_m)`` float32 features."""

MFCC_COEFFICIENTS = 13
"""MFCCs per frame; :func:`mfcc_encoder` appends their deltas and delta-deltas (39 features)."""


@dataclass(frozen=True)
class SplitLabels:
    """The frames of a split that the frame-level probes use, and every label the probes need.

    Attributes:
        segments: the split's segments that hold at least one whole 10 ms frame, in order.
        keep: per segment, ``(frames,)`` bool: which of its label frames are kept.
        phones: ``(N,)`` int64 phone class of each kept frame, -1 where unknown.
        speakers: ``(N,)`` int64 index of each kept frame's speaker in the speaker list given to
            :func:`split_labels`, -1 for a speaker not in it.
        utterance_speakers: ``(U,)`` int64 speaker index of each segment, -1 if not in the list.
        seconds: seconds of audio in ``segments``.
    """

    segments: tuple[Segment, ...]
    keep: tuple[np.ndarray, ...]
    phones: torch.Tensor
    speakers: torch.Tensor
    utterance_speakers: torch.Tensor
    seconds: float


@dataclass(frozen=True)
class SplitFeatures:
    """Features of one split, with its labels.

    Attributes:
        frames: per module, ``(N, C_m)`` float32 features of the kept frames (``labels.keep``; the
            same frames for every module).
        utterance_means: per module, ``(U, C_m)`` mean feature of each segment (all its frames).
        labels: the split's :class:`SplitLabels`.
    """

    frames: tuple[torch.Tensor, ...]
    utterance_means: tuple[torch.Tensor, ...]
    labels: SplitLabels


def learner_encoder(learner: OnlineLearner, modules: Sequence[int] | None = None) -> Encoder:
    """Encodes with the learner's :meth:`~online_gim.learner.OnlineLearner.embed` (no state change).

    Args:
        learner: the (frozen) learner.
        modules: which modules to return, bottom = 0; default all.
    """
    grids = frame_grids(learner.config.encoder)
    chosen = list(range(learner.num_modules)) if modules is None else list(modules)

    def encode(audio: np.ndarray) -> list[torch.Tensor]:
        outputs = learner.embed(torch.from_numpy(audio))
        return [to_label_frames(outputs[m], grids[m], audio.shape[0] // FRAME_SAMPLES) for m in chosen]

    return encode


def mfcc_encoder() -> Encoder:
    """13 MFCCs + deltas + delta-deltas (39 features) per 10 ms frame, as one "module".

    torchaudio's MFCC (:mod:`.mfcc`, the same numbers in plain torch) with a 25 ms window (400
    samples), 10 ms hop and 40 mel bands; the first 80 samples are skipped so that the centred frame
    ``f`` sits exactly on label frame ``f``'s centre.
    """
    from online_gim.evaluation.mfcc import Mfcc, deltas

    transform = Mfcc(sample_rate=SAMPLE_RATE, coefficients=MFCC_COEFFICIENTS, n_fft=400, hop=FRAME_SAMPLES, mels=40)

    def encode(audio: np.ndarray) -> list[torch.Tensor]:
        mfcc = transform(torch.from_numpy(audio[FRAME_SAMPLES // 2 :]))
        delta = deltas(mfcc)
        features = torch.cat([mfcc, delta, deltas(delta)]).T
        return [features[: audio.shape[0] // FRAME_SAMPLES].contiguous()]

    return encode


def split_labels(segments: Sequence[Segment], *, speakers: Sequence[str], max_frames: int, seed: int) -> SplitLabels:
    """Chooses the kept frames of a split (module docstring) and gathers their labels.

    Args:
        segments: the split.
        speakers: the speaker classes (a segment of another speaker gets index -1).
        max_frames: frames to keep at most (about: each frame is kept with probability
            ``max_frames / total``).
        seed: seeds the choice of frames.
    Raises:
        ValueError: no segment is long enough for one 10 ms frame.
    """
    index = {speaker: i for i, speaker in enumerate(speakers)}
    lengths = [segment.num_samples() for segment in segments]
    total = sum(n // FRAME_SAMPLES for n in lengths)
    keep_probability = min(1.0, max_frames / total) if total else 1.0
    rng = np.random.default_rng(seed)
    kept_segments, keeps, phones, frame_speakers, utterance_speakers = [], [], [], [], []
    kept_samples = 0
    for segment, samples in zip(segments, lengths):
        frames = samples // FRAME_SAMPLES
        if frames == 0:
            continue
        kept_samples += samples
        keep = rng.random(frames) < keep_probability
        labels = frame_labels_of(segment.sample_phones()).astype(np.int64)
        speaker = index.get(segment.speaker, -1)
        kept_segments.append(segment)
        keeps.append(keep)
        phones.append(torch.from_numpy(labels[keep]))
        frame_speakers.append(torch.full((int(keep.sum()),), speaker, dtype=torch.long))
        utterance_speakers.append(speaker)
    if not kept_segments:
        raise ValueError("no utterance holds a whole 10 ms frame")
    return SplitLabels(
        segments=tuple(kept_segments),
        keep=tuple(keeps),
        phones=torch.cat(phones),
        speakers=torch.cat(frame_speakers),
        utterance_speakers=torch.tensor(utterance_speakers, dtype=torch.long),
        seconds=kept_samples / SAMPLE_RATE,
    )


def extract_features(labels: SplitLabels, encode: Encoder, *, progress: ProgressCallback | None = None) -> SplitFeatures:
    """Encodes every segment of a split and keeps the frames ``labels`` chose.

    Args:
        labels: the split's frames and labels (:func:`split_labels`).
        encode: the encoder.
        progress: told the seconds of audio encoded so far (of ``labels.seconds``).
    """
    kept: list[list[torch.Tensor]] = []
    means: list[list[torch.Tensor]] = []
    encoded = 0  # samples
    for segment, keep in zip(labels.segments, labels.keep):
        audio = segment.load()
        features = encode(audio)
        mask = torch.from_numpy(keep)
        kept.append([f[mask] for f in features])
        means.append([f.mean(dim=0) for f in features])
        encoded += audio.shape[0]
        if progress is not None:
            progress(encoded / SAMPLE_RATE, labels.seconds)
    return SplitFeatures(
        frames=tuple(torch.cat(module) for module in zip(*kept)),
        utterance_means=tuple(torch.stack(module) for module in zip(*means)),
        labels=labels,
    )
