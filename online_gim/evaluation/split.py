"""Train/test split of a LibriSpeech-layout corpus for linear evaluation.

With a GIM/CPC label folder that holds ``train_split.txt`` and ``test_split.txt``, those files
decide (utterances listed in neither are left out). Without them, the utterances of every speaker
are split 80/20 at random (seeded): a speaker with ``n >= 2`` utterances gives
``max(1, round(0.2 n))`` of them to test, a speaker with one utterance gives it to train (a test
utterance of an unseen speaker could not be classified).
"""

from __future__ import annotations

import math
from collections import defaultdict
from dataclasses import dataclass

import numpy as np

from streams.corpora.librispeech import LibriSpeechCorpus, Utterance

SPLIT_FILES = "split files"
"""``CorpusSplit.kind`` when the label folder's split files decided."""

PER_SPEAKER = "80/20 per speaker"
"""``CorpusSplit.kind`` when the utterances were split within each speaker."""

TEST_FRACTION = 0.2
"""Share of each speaker's utterances that goes to test without split files."""


@dataclass(frozen=True)
class CorpusSplit:
    """The train and test utterances (each sorted by id), and how they were chosen (``kind``)."""

    train: tuple[Utterance, ...]
    test: tuple[Utterance, ...]
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
        train = tuple(u for u in corpus if u.id in train_ids and u.id not in test_ids)
        test = tuple(u for u in corpus if u.id in test_ids)
        kind = SPLIT_FILES
    else:
        by_speaker: dict[str, list[Utterance]] = defaultdict(list)
        for utterance in corpus:
            by_speaker[utterance.speaker].append(utterance)
        rng = np.random.default_rng(seed)
        test_set: set[str] = set()
        for speaker in sorted(by_speaker):
            utterances = by_speaker[speaker]
            if len(utterances) < 2:
                continue
            count = min(len(utterances) - 1, max(1, math.floor(TEST_FRACTION * len(utterances) + 0.5)))
            test_set.update(utterances[i].id for i in rng.permutation(len(utterances))[:count])
        train = tuple(u for u in corpus if u.id not in test_set)
        test = tuple(u for u in corpus if u.id in test_set)
        kind = PER_SPEAKER
    if not train or not test:
        raise ValueError(
            f"the {kind} split of {len(corpus)} utterances leaves {len(train)} for train and {len(test)} for test; "
            "both need at least one (without split files, some speaker needs two utterances)"
        )
    return CorpusSplit(train, test, kind)
