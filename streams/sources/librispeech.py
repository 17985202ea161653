"""Replays a LibriSpeech-layout corpus as ONE continuous 16 kHz stream.

Utterances follow each other without gaps (windows cross utterance boundaries; the
:class:`~online_gim.streams.window.UtteranceSpan` s of a window say who speaks where), in sorted order or
shuffled by a seed (a new, reproducible order on every pass when looping). Each utterance is decoded
with soundfile when its turn comes (one utterance in memory at a time), downmixed to mono and
resampled to 16 kHz (:mod:`online_gim.streams.resample`) when needed. With a label folder every chunk carries per-sample
phones (``UNKNOWN_LABEL`` for utterances without labels); without one, ``phones`` is ``None``.

Decisions:

- a file that cannot be decoded is skipped with a warning naming it; ``files_skipped`` += 1; the
  stream goes on. If a whole pass yields no audio at all the replay raises ``RuntimeError``
  (instead of spinning on a corpus of broken files).
- non-finite samples (NaN/Inf) are **passed through** unchanged and counted in
  ``samples_nonfinite`` (one warning per file): the learner's non-finite guard skips and counts the
  windows that contain them, so nothing is silently altered.

The replay position (:class:`ReplayPosition`: pass, utterance index in that pass's order, sample
offset) of the next chunk is :attr:`LibriSpeechReplay.position`; :meth:`LibriSpeechReplay.locate`
maps a recent stream sample (a window's ``start_sample``) back to a position, and ``start=``
resumes from one; give the ring buffer ``origin=position.stream_sample`` so that stream positions
and time go on where they stopped.

Usage::

    replay = LibriSpeechReplay("../shared/data/librispeech-mini/LibriSpeech",
                               labels="../shared/data/librispeech-mini/LibriSpeech100_labels_split",
                               speed=None)                     # None = max speed; 1.0 = real time
    buffer = RingBuffer(source_id=replay.source_id)
    with Feeder(replay, buffer):
        for window in buffer:
            position = replay.locate(window.start_sample)   # save it; to resume:
    # LibriSpeechReplay(..., start=position) into RingBuffer(..., origin=position.stream_sample)
"""

from __future__ import annotations

import logging
import threading
from collections import deque
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from online_gim.streams.chunk import AudioChunk
from online_gim.streams.corpora.librispeech import LibriSpeechCorpus, Utterance, load_audio
from online_gim.streams.sources.base import DEFAULT_CHUNK_SAMPLES, AudioSource
from online_gim.streams.window import SAMPLE_RATE

log = logging.getLogger(__name__)

ORDERS = ("sorted", "shuffle")
"""Utterance orders: by id, or a permutation drawn from ``(seed, pass)``."""

_HISTORY = 4096
"""Utterance starts remembered for :meth:`LibriSpeechReplay.locate`."""


@dataclass(frozen=True)
class ReplayPosition:
    """Where a replay stands: the next sample it delivers.

    Attributes:
        loop: pass over the corpus, from 0.
        index: utterance index in that pass's order.
        offset: sample offset (16 kHz) inside that utterance.
        stream_sample: stream position of that sample (samples delivered before it).
    """

    loop: int = 0
    index: int = 0
    offset: int = 0
    stream_sample: int = 0

    def to_dict(self) -> dict[str, int]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, int]) -> ReplayPosition:
        return cls(**{key: int(data[key]) for key in ("loop", "index", "offset", "stream_sample") if key in data})


class LibriSpeechReplay(AudioSource):
    """A LibriSpeech tree (or a :class:`LibriSpeechCorpus`) replayed as one continuous stream.

    Parameters:
        corpus: a :class:`LibriSpeechCorpus`, or one root / several roots to index.
        labels: GIM/CPC label folder (only when ``corpus`` is given as roots).
        split: ``"train"`` / ``"test"`` restriction (only when ``corpus`` is given as roots).
        order: ``"sorted"`` (by utterance id) or ``"shuffle"`` (by ``seed``, new order every pass).
        seed: seed of the shuffled order.
        speed: pace for the feeder in multiples of real time (default 1.0); ``None`` = max speed.
        loop: start over at the end (forever), else stop after one pass.
        chunk_samples: samples per chunk.
        start: resume at this position (the pass's order is recomputed from ``seed`` and ``loop``).
            Every iteration over the replay starts here.
        source_id: the stream's name.
        shard: ``(index, count)``: replay only every ``count``-th utterance of each pass's order,
            from the ``index``-th (one replica's share of the corpus, ``listen --shard-by-rank``;
            the shards of one seed partition every pass). ``None``: every utterance.
    """

    def __init__(
        self,
        corpus: LibriSpeechCorpus | str | Path | Sequence[str | Path],
        labels: str | Path | None = None,
        *,
        split: str | None = None,
        order: str = "sorted",
        seed: int = 0,
        speed: float | None = 1.0,
        loop: bool = False,
        chunk_samples: int = DEFAULT_CHUNK_SAMPLES,
        start: ReplayPosition | None = None,
        source_id: str = "librispeech",
        shard: tuple[int, int] | None = None,
    ) -> None:
        if not isinstance(corpus, LibriSpeechCorpus):
            corpus = LibriSpeechCorpus(corpus, labels, split=split)
        elif labels is not None or split is not None:
            raise ValueError("labels/split apply only when the corpus is given as roots")
        if len(corpus) == 0:
            raise ValueError(f"no utterances found under {', '.join(str(r) for r in corpus.roots)}")
        if order not in ORDERS:
            raise ValueError(f"order must be one of {ORDERS}, got {order!r}")
        if speed is not None and not speed > 0:
            raise ValueError(f"speed must be positive or None (max), got {speed!r}")
        if chunk_samples <= 0:
            raise ValueError("chunk_samples must be positive")
        if shard is not None and not 0 <= shard[0] < shard[1]:
            raise ValueError(f"shard must be (index, count) with 0 <= index < count, got {shard}")
        if shard is not None and len(corpus) < shard[1]:
            raise ValueError(f"{len(corpus)} utterances cannot be shared by {shard[1]} replicas: each needs one at least")
        self.corpus = corpus
        self.order = order
        self.seed = seed
        self.speed = speed
        self.loop = loop
        self.chunk_samples = chunk_samples
        self.source_id = source_id
        self.shard = shard
        self._start = start or ReplayPosition()
        self._position = self._start
        self._files_skipped = 0
        self._labels_ignored: set[str] = set()  # utterances whose labels' length is far from the audio's
        self.samples_nonfinite = 0
        self.utterances_played = 0
        self._history: deque[tuple[int, int, int, int]] = deque(maxlen=_HISTORY)  # stream, loop, index, length
        self._history_lock = threading.Lock()
        self._closed = False

    # ----------------------------------------------------------------- order and position
    def order_of(self, loop: int) -> list[Utterance]:
        """The utterances in the order of pass ``loop`` (this shard's share of them)."""
        utterances = list(self.corpus.utterances)
        if self.order == "shuffle":
            permutation = np.random.default_rng([self.seed, loop]).permutation(len(utterances))
            utterances = [utterances[i] for i in permutation]
        if self.shard is not None:
            index, count = self.shard
            utterances = utterances[index::count]
        return utterances

    @property
    def position(self) -> ReplayPosition:
        """Position of the next sample the replay will deliver."""
        return self._position

    def locate(self, stream_sample: int) -> ReplayPosition:
        """The replay position of stream sample ``stream_sample`` (one of the last ~4096 utterances).

        Raises:
            ValueError: the sample is older than the remembered history or not yet delivered.
        """
        position = self._position  # read once: the reader thread replaces it as it goes
        if stream_sample == position.stream_sample:
            return position
        with self._history_lock:  # the reader thread appends to the history while we search it
            history = list(self._history)
        for start, loop, index, length in reversed(history):
            if start <= stream_sample < start + length:
                return ReplayPosition(loop, index, stream_sample - start, stream_sample)
        raise ValueError(f"stream sample {stream_sample} is not in the replay's recent history")

    @property
    def files_skipped(self) -> int:
        return self._files_skipped

    def remaining_seconds(self) -> float | None:
        """Seconds of audio from the start position to the end of its pass (``None`` when
        looping), from the files' headers; an unreadable file counts 0 (the replay skips it)."""
        if self.loop:
            return None
        start = self._start
        utterances = self.order_of(start.loop)[start.index:]
        return max(0.0, sum(_audio_seconds(u.path) for u in utterances) - start.offset / SAMPLE_RATE)

    # ----------------------------------------------------------------- stream
    def __iter__(self) -> Iterator[AudioChunk]:
        position = self._start
        loop, index, offset, stream = position.loop, position.index, position.offset, position.stream_sample
        while not self._closed:
            order = self.order_of(loop)
            delivered_this_pass = 0
            while index < len(order) and not self._closed:
                utterance = order[index]
                audio = self._decode(utterance)
                if audio is not None and offset < audio.shape[0]:
                    phones = self._phones(utterance, audio.shape[0]) if self.corpus.has_labels else None
                    with self._history_lock:
                        self._history.append((stream - offset, loop, index, audio.shape[0]))
                    self.utterances_played += 1
                    for begin in range(offset, audio.shape[0], self.chunk_samples):
                        if self._closed:
                            return
                        end = min(begin + self.chunk_samples, audio.shape[0])
                        stream += end - begin
                        delivered_this_pass += end - begin
                        self._position = (
                            ReplayPosition(loop, index, end, stream)
                            if end < audio.shape[0]
                            else ReplayPosition(loop, index + 1, 0, stream)
                        )
                        yield AudioChunk(
                            audio[begin:end],
                            phones=None if phones is None else phones[begin:end],
                            utterance_id=utterance.id,
                            speaker_id=utterance.speaker,
                            offset=begin,
                        )
                index, offset = index + 1, 0
                self._position = ReplayPosition(loop, index, 0, stream)
            if not self.loop:
                return
            if delivered_this_pass == 0 and position.index == 0 and position.offset == 0:
                raise RuntimeError(f"no decodable audio in a whole pass over {self.corpus!r}")
            position = ReplayPosition()  # later passes start at their beginning
            loop, index = loop + 1, 0
            self._position = ReplayPosition(loop, 0, 0, stream)

    def _decode(self, utterance: Utterance) -> np.ndarray | None:
        try:
            audio = load_audio(utterance.path)
        except Exception as error:  # noqa: BLE001 - any decoder failure skips the file
            self._files_skipped += 1
            log.warning("skipping undecodable file %s: %s", utterance.path, error)
            return None
        bad = int(audio.shape[0] - np.count_nonzero(np.isfinite(audio)))
        if bad:
            self.samples_nonfinite += bad
            log.warning("%s has %d non-finite samples (passed through)", utterance.path, bad)
        return audio

    def _phones(self, utterance: Utterance, num_samples: int) -> np.ndarray:
        """Per-sample phones of the decoded utterance; all unknown (reported once per utterance)
        when its labels' length is far from the audio's."""
        phones, problem = utterance.phones_for(num_samples)
        if problem is not None and utterance.id not in self._labels_ignored:
            self._labels_ignored.add(utterance.id)
            log.warning("%s; its labels are ignored", problem)
        return phones

    def close(self) -> None:
        self._closed = True


def _audio_seconds(path: Path) -> float:
    """The duration a file's header states (soundfile); 0 when it cannot be read."""
    import soundfile

    try:
        return float(soundfile.info(str(path)).duration)
    except (RuntimeError, OSError):  # soundfile's LibsndfileError is a RuntimeError
        return 0.0
