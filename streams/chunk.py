"""The unit a source delivers: a contiguous piece of a 16 kHz mono stream with its labels.

A source yields :class:`AudioChunk` s of any length; the ring buffer
(:mod:`online_gim.streams.ring_buffer`) joins them into one continuous stream and cuts
:class:`~online_gim.streams.window.AudioWindow` s at any sample position. Labels are carried **per
sample**, so a window boundary can fall anywhere and its labels stay exact:

- ``phones``: ``(n,)`` int16, the phone class of every sample (``UNKNOWN_LABEL`` = -1 where
  unknown), or ``None`` when the source has no phone labels at all (microphone, plain files).
  CPC/GIM labels come per 10 ms frame and are aligned to the END of the utterance audio
  (METHOD.md section 7); :func:`expand_frame_labels` turns them into this per-sample form once
  per utterance, and chunks are then views (slices) of it.
- ``utterance_id`` / ``speaker_id``: what the chunk belongs to (``None`` when unknown), and
  ``offset``: the position of ``samples[0]`` inside that utterance or recording. A chunk that
  continues the previous one (same ``utterance_id`` and ``offset`` = previous ``offset`` +
  previous length) extends the same :class:`~online_gim.streams.window.UtteranceSpan`; anything else starts
  a new span (so replaying the same utterance twice in a row gives two spans).

``samples`` are **numpy** float32 (sources decode to numpy; the window converts to torch once).

Usage (a microphone callback)::

    chunk = AudioChunk(samples=block_16k, utterance_id="mic:default", offset=samples_so_far)
    ring_buffer.push(chunk)

Usage (a labelled utterance, as the LibriSpeech replay does)::

    phones = expand_frame_labels(frame_labels, num_samples=len(audio))  # (len(audio),) int16
    for start in range(0, len(audio), 4096):
        stop = start + 4096
        yield AudioChunk(audio[start:stop], phones=phones[start:stop],
                         utterance_id="4051-11218-0044", speaker_id="4051", offset=start)
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from online_gim.streams.window import FRAME_SAMPLES, UNKNOWN_LABEL

PHONE_DTYPE = np.int16
"""dtype of per-sample and per-frame phone labels."""


@dataclass(frozen=True)
class AudioChunk:
    """A contiguous piece of a 16 kHz mono stream, as a source delivers it.

    Attributes:
        samples: ``(n,)`` float32 numpy array, 16 kHz mono, nominally in [-1, 1]. Non-finite
            values are passed through (the learner's non-finite guard skips such windows).
        phones: ``(n,)`` int16 phone class per sample, ``UNKNOWN_LABEL`` where unknown;
            ``None`` when the source has no phone labels.
        utterance_id: the utterance or recording the chunk belongs to; ``None`` = unknown
            (no span is reported for it).
        speaker_id: the speaker of that utterance; ``None`` = unknown.
        offset: sample position of ``samples[0]`` within the utterance (0 for its first chunk).

    Inputs are coerced: ``samples`` to contiguous float32, ``phones`` to int16. Lengths must agree.
    """

    samples: np.ndarray
    phones: np.ndarray | None = None
    utterance_id: str | None = None
    speaker_id: str | None = None
    offset: int = 0

    def __post_init__(self) -> None:
        samples = np.ascontiguousarray(self.samples, dtype=np.float32)
        if samples.ndim != 1:
            raise ValueError(f"AudioChunk.samples must be 1-D (n,), got shape {samples.shape}")
        object.__setattr__(self, "samples", samples)
        if self.phones is not None:
            phones = np.asarray(self.phones, dtype=PHONE_DTYPE)
            if phones.shape != samples.shape:
                raise ValueError(
                    f"AudioChunk.phones must have one label per sample: {phones.shape} != {samples.shape}"
                )
            object.__setattr__(self, "phones", phones)
        if self.offset < 0:
            raise ValueError(f"AudioChunk.offset must be >= 0, got {self.offset}")
        object.__setattr__(self, "offset", int(self.offset))

    def __len__(self) -> int:
        return int(self.samples.shape[0])

    @property
    def end_offset(self) -> int:
        """Position just after the last sample, within the utterance (``offset + len(self)``)."""
        return self.offset + len(self)

    def continues(self, previous: AudioChunk | None) -> bool:
        """Whether this chunk directly continues ``previous`` (same utterance, no gap)."""
        return (
            previous is not None
            and self.utterance_id is not None
            and self.utterance_id == previous.utterance_id
            and self.offset == previous.end_offset
        )

    def slice(self, start: int, stop: int) -> AudioChunk:
        """The samples ``[start, stop)`` of this chunk (views, no copy), with ``offset`` adjusted."""
        start, stop, _ = slice(start, stop).indices(len(self))
        stop = max(start, stop)
        return AudioChunk(
            samples=self.samples[start:stop],
            phones=None if self.phones is None else self.phones[start:stop],
            utterance_id=self.utterance_id,
            speaker_id=self.speaker_id,
            offset=self.offset + start,
        )


def expand_frame_labels(frame_labels: np.ndarray | list[int] | None, num_samples: int) -> np.ndarray:
    """Per-sample phone labels of an utterance from its per-10-ms-frame labels, aligned to the END.

    Label frame ``j`` of ``L`` covers samples ``[N - (L - j) * 160, N - (L - 1 - j) * 160)`` of an
    utterance of ``N`` samples; samples before the first label frame are ``UNKNOWN_LABEL``. Labels
    longer than the audio lose their first frames (still aligned to the end).

    Args:
        frame_labels: ``(L,)`` phone class per 10 ms frame (CPC ``converted_aligned_phones.txt``),
            or ``None`` (unknown: all samples ``UNKNOWN_LABEL``).
        num_samples: ``N``, the utterance length in samples at 16 kHz.

    Returns:
        ``(N,)`` int16.

    Examples:
        >>> expand_frame_labels([3, 4], num_samples=330)[[0, 9, 10, 169, 170, 329]].tolist()
        [-1, -1, 3, 3, 4, 4]
    """
    out = np.full(num_samples, UNKNOWN_LABEL, dtype=PHONE_DTYPE)
    if frame_labels is None or num_samples <= 0:
        return out
    labels = np.asarray(frame_labels, dtype=PHONE_DTYPE)
    per_sample = np.repeat(labels, FRAME_SAMPLES)
    n = min(num_samples, per_sample.shape[0])
    if n:
        out[num_samples - n :] = per_sample[per_sample.shape[0] - n :]
    return out


def frame_labels_of(phones: np.ndarray) -> np.ndarray:
    """Per-10-ms-frame labels of a per-sample label array: the label at each frame's centre sample.

    Args:
        phones: ``(n,)`` per-sample labels, frame ``f`` covers samples ``[160 f, 160 f + 160)``.

    Returns:
        ``(n // 160,)`` int16: ``phones[160 f + 80]`` for every complete frame ``f``. When the
        frames line up with the label frames (as in a window starting on the label grid), this is
        exactly the original frame labels; otherwise it is the label covering most of the frame.
    """
    num_frames = phones.shape[0] // FRAME_SAMPLES
    centres = np.arange(num_frames) * FRAME_SAMPLES + FRAME_SAMPLES // 2
    return np.asarray(phones[centres], dtype=PHONE_DTYPE)
