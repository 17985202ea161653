"""Train/test split of a LibriSpeech-layout corpus for linear evaluation.

With a GIM/CPC label folder that holds ``train_split.txt`` and ``test_split.txt``, those files
decide (utterances listed in neither are left out). Without them, the utterances of every speaker
are split 80/20 at random (seeded): a speaker with ``n >= 2`` utterances gives
``max(1, round(0.2 n))`` of them to test; a speaker with one utterance is split by time, the first
80 % of the utterance to train and the rest to test (LibriSpeech train-clean-100's speaker probe,
one utterance per speaker, is split this way), so that every speaker is tested.

A split is a list of :class:`Segment` s: an utterance, or a stretch of one.
"""

from __future__ import annotations

import math
from collections import defaultdict
from dataclasses import dataclass

import numpy as np

from online_gim.streams.corpora.librispeech import LibriSpeechCorpus, Utterance
from online_gim.streams.window import SAMPLE_RATE

SPLIT_FILES = "split files"
"""``CorpusSplit.kind`` when the label folder's split files decided."""

PER_SPEAKER = "80/20 per speaker"
"""``CorpusSplit.kind`` when the utterances were split within each speaker."""

TEST_FRACTION = 0.2
"""Share of each speaker's utterances (of a lone utterance's duration) that goes to test without split files."""


@dataclass(frozen=True)
class Segment:
    """An utterance, or the stretch ``[start, stop)`` of it (samples at 16 kHz).

    Attributes:
        utterance: the utterance.
        start: first sample of the stretch.
        stop: one past its last sample; ``None``: the end of the utterance.
    """

    utterance: Utterance
    start: int = 0
    stop: int | None = None

    @property
    def id(self) -> str:
        """The utterance id, with ``[start:stop]`` for a stretch."""
        if self.start == 0 and self.stop is None:
            return self.utterance.id
        return f"{self.utterance.id}[{self.start}:{'' if self.stop is None else self.stop}]"

    @property
    def speaker(self) -> str:
        return self.utterance.speaker

    @property
    def labelled(self) -> bool:
        return self.utterance.labelled

    def utterance_samples(self) -> int:
        """Samples of the whole utterance at 16 kHz, from the file header (no decoding)."""
        return decoded_length(self.utterance)

    def num_samples(self) -> int:
        """Samples of the stretch at 16 kHz, from the file header (no decoding)."""
        end = self.utterance_samples()
        return max(0, min(end, self.stop if self.stop is not None else end) - self.start)

    def load(self) -> np.ndarray:
        """``(num_samples(),)`` float32 audio of the stretch, 16 kHz mono."""
        return self.utterance.load()[self.start : self.stop]

    def sample_phones(self) -> np.ndarray:
        """``(num_samples(),)`` int16 phone per sample (aligned to the end of the whole utterance)."""
        return self.utterance.sample_phones(self.utterance_samples())[self.start : self.stop]


def decoded_length(utterance: Utterance) -> int:
    """Samples that :meth:`Utterance.load` returns, from the file header: resampling to 16 kHz
    gives ``ceil(frames * 16000 / rate)`` samples."""
    import soundfile

    info = soundfile.info(str(utterance.path))
    return info.frames if info.samplerate == SAMPLE_RATE else math.ceil(info.frames * SAMPLE_RATE / info.samplerate)


@dataclass(frozen=True)
class CorpusSplit:
    """The train and test segments (each sorted by id), and how they were chosen (``kind``)."""

    train: tuple[Segment, ...]
    test: tuple[Segment, ...]
    kind: str

    @property
    def speakers(self) -> tuple[str, ...]:
        """The speakers of the train split, sorted: the classes of the speaker probes."""
        return tuple(sorted({u.speaker for u in self.train}))


def has_split_files(corpus: LibriSpeechCorpus) -> bool:
    """Whether the corpus' label folder holds both ``train_split.txt`` and ``test_split.txt``."""
    folder = corpus.labels_dir
    return folder is not None and all((folder / f"{name}_split.txt").is_file() for name in ("train", "test"))


def split_corpus(corpus: LibriSpeechCorpus, *, seed: int) -> CorpusSplit:
    """Splits ``corpus`` by its split files, else 80/20 within each speaker (the module docstring).

    Raises:
        ValueError: the split leaves the train or the test split empty.
    """
    if has_split_files(corpus):
        train_ids, test_ids = set(corpus.split_ids("train")), set(corpus.split_ids("test"))
        train = tuple(Segment(u) for u in corpus if u.id in train_ids and u.id not in test_ids)
        test = tuple(Segment(u) for u in corpus if u.id in test_ids)
        kind = SPLIT_FILES
    else:
        by_speaker: dict[str, list[Utterance]] = defaultdict(list)
        for utterance in corpus:
            by_speaker[utterance.speaker].append(utterance)
        rng = np.random.default_rng(seed)
        test_set: set[str] = set()
        lone: dict[str, int] = {}  # utterance id -> first test sample of a lone utterance split by time
        for speaker in sorted(by_speaker):
            utterances = by_speaker[speaker]
            if len(utterances) < 2:
                cut = round((1 - TEST_FRACTION) * decoded_length(utterances[0]))
                lone[utterances[0].id] = cut
                continue
            count = min(len(utterances) - 1, max(1, math.floor(TEST_FRACTION * len(utterances) + 0.5)))
            test_set.update(utterances[i].id for i in rng.permutation(len(utterances))[:count])
        tested = test_set | set(lone)
        train = tuple(Segment(u, 0, lone.get(u.id)) for u in corpus if u.id not in test_set)
        test = tuple(Segment(u, lone[u.id]) if u.id in lone else Segment(u) for u in corpus if u.id in tested)
        kind = PER_SPEAKER
    if not train or not test:
        raise ValueError(
            f"the {kind} split of {len(corpus)} utterances leaves {len(train)} for train and {len(test)} for test; "
            "both need at least one"
        )
    return CorpusSplit(train, test, kind)
