"""Online training of a learner on a split, streamed at maximum speed for a budget of audio.

The split's segments are replayed as one continuous stream (shuffled by the seed, a new order on
every pass, looping until the budget is spent: the order of
:class:`~online_gim.streams.sources.librispeech.LibriSpeechReplay`) and cut into the learner's windows by
:func:`online_gim.streams.ring_buffer.iter_windows` (hop = window, nothing dropped), exactly the windows a live
``online-gim listen`` run at full speed would see. The stream carries audio and speakers only:
learning is self-supervised, so no phone label is ever shown to the learner.

With a :class:`~online_gim.streams.replay_config.ReplayConfig` of ratio ``R``, every stream window is followed by
``R`` updates on windows drawn from a :class:`~online_gim.streams.replay.ReplayStore` of the stream so far
(fractional ratios accumulate: 0.5 is one replay every other window), what ``listen --replay R``
does when the learner has the time; the compute real-time factor (seconds of learning per second
of stream, replays included) is measured, so that runs can be compared at equal real-time cost.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass

import numpy as np

from online_gim.evaluation.split import Segment
from online_gim.learner import OnlineLearner
from online_gim.streams.chunk import AudioChunk
from online_gim.streams.progress import ProgressCallback
from online_gim.streams.replay import ReplayStore
from online_gim.streams.replay_config import ReplayConfig
from online_gim.streams.ring_buffer import iter_windows
from online_gim.streams.window import SAMPLE_RATE

Checkpoint = Callable[[float], None]
"""Called with the seconds of audio streamed so far when a checkpoint is reached."""

STREAM_ID = "train"
"""Stream id of the training stream (the memories' exclusion zones are per stream)."""


@dataclass(frozen=True)
class TrainingRun:
    """What :func:`train_online` did.

    Attributes:
        streamed_seconds: seconds of stream audio stepped (whole windows).
        replayed_windows: replayed updates.
        live_seconds: wall-clock seconds of the stream windows' steps.
        replay_seconds: wall-clock seconds of the replayed steps.
    """

    streamed_seconds: float
    replayed_windows: int
    live_seconds: float
    replay_seconds: float

    @property
    def compute_rtf(self) -> float:
        """Seconds of learning (replays included) per second of stream."""
        return (self.live_seconds + self.replay_seconds) / self.streamed_seconds if self.streamed_seconds else float("nan")


def segment_chunks(segments: Sequence[Segment], *, seed: int) -> Iterator[AudioChunk]:
    """The segments as one endless stream: pass ``p`` plays them in the order
    ``default_rng([seed, p]).permutation`` of their (id-sorted) list; speakers, no phones."""
    ordered = sorted(segments, key=lambda segment: segment.id)
    for loop in itertools.count():
        for index in np.random.default_rng([seed, loop]).permutation(len(ordered)):
            segment = ordered[index]
            audio = segment.load()
            if audio.shape[0]:
                yield AudioChunk(audio, utterance_id=segment.id, speaker_id=segment.speaker, offset=segment.start)


def train_online(
    learner: OnlineLearner,
    segments: Sequence[Segment],
    *,
    seconds: float,
    seed: int,
    update: bool = True,
    replay: ReplayConfig | None = None,
    checkpoints: Sequence[float] = (),
    on_checkpoint: Checkpoint | None = None,
    progress: ProgressCallback | None = None,
) -> TrainingRun:
    """Streams ``seconds`` of the segments' audio through ``learner.step``.

    Args:
        learner: the learner to train (changed in place).
        segments: the train split.
        seconds: budget: windows are stepped until at least this much audio went through.
        seed: seeds the stream order and the replay draws.
        update: ``False`` steps with no module scheduled (only normalisation statistics adapt).
        replay: replayed updates per stream window and their store (``None`` or ratio 0: none).
        checkpoints: seconds of audio (ascending) after which ``on_checkpoint`` is called.
        on_checkpoint: called with the seconds streamed, once per checkpoint reached.
        progress: told the seconds of stream learned so far (of ``seconds``), after every window.
    Returns:
        The :class:`TrainingRun`.
    """
    window = learner.config.window
    windows = max(1, -(-round(seconds * SAMPLE_RATE) // window))
    store = ReplayStore(replay, window=window, seed=seed) if update and replay is not None and replay.ratio > 0 else None
    pending = sorted(checkpoints)
    modules = None if update else ()
    streamed = replayed = 0
    live_seconds = replay_seconds = credit = 0.0
    for count, item in enumerate(iter_windows(segment_chunks(segments, seed=seed), window=window, hop=window, source_id=STREAM_ID), start=1):
        live_seconds += learner.step(item, modules=modules).seconds
        streamed += window
        if store is not None:
            store.add(item)
            credit += replay.ratio
            while credit >= 1:
                credit -= 1
                replay_seconds += learner.step(store.sample(), replay=True).seconds
                replayed += 1
        if progress is not None:
            progress(streamed / SAMPLE_RATE, seconds)
        while pending and streamed >= pending[0] * SAMPLE_RATE:
            pending.pop(0)
            if on_checkpoint is not None:
                on_checkpoint(streamed / SAMPLE_RATE)
        if count == windows:
            break
    return TrainingRun(streamed / SAMPLE_RATE, replayed, live_seconds, replay_seconds)
