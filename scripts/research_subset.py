"""Builds the corpora of the research protocol of docs/eval/real-speech.md (question 13 on).

From a LibriSpeech-layout corpus with split files (``speechocean762-dev``), writes two folders of
symbolic links to its audio, each with a label folder:

- ``OUT/probe``: the first ``--train-per-speaker`` train-split utterances and the first
  ``--test-per-speaker`` test-split utterance(s) of every speaker, in the split files' order (the
  probes' subset: 375 + 125 utterances for speechocean762-dev);
- ``OUT/stream``: every train-split utterance (the learners' stream, ``--train-corpus``).

Usage::

    python scripts/research_subset.py ../shared/data/speechocean762-dev /tmp/research
    online-gim eval --corpus /tmp/research/probe --train-corpus /tmp/research/stream ...
"""

from __future__ import annotations

import argparse
from collections import Counter
from pathlib import Path

LABELS = "LibriSpeech100_labels_split"
SHARED_LABEL_FILES = ("converted_aligned_phones.txt", "phones.txt", "original_ids.txt")


def first_per_speaker(utterances: list[str], count: int) -> list[str]:
    """The first ``count`` utterance ids (``<speaker>-<chapter>-<n>``) of every speaker, in order."""
    taken: Counter[str] = Counter()
    chosen = []
    for utterance in utterances:
        speaker = utterance.split("-")[0]
        if taken[speaker] < count:
            chosen.append(utterance)
            taken[speaker] += 1
    return chosen


def link_corpus(source: Path, out: Path, train: list[str], test: list[str]) -> None:
    """``out``: links to the audio of ``train + test`` and a label folder whose split files name them."""
    for utterance in train + test:
        speaker, chapter, _ = utterance.split("-")
        relative = Path("LibriSpeech", "train-clean-100", speaker, chapter, f"{utterance}.flac")
        target = source / relative
        if not target.is_file():
            raise FileNotFoundError(f"no audio for {utterance}: {target}")
        link = out / relative
        link.parent.mkdir(parents=True, exist_ok=True)
        if not link.is_symlink():
            link.symlink_to(target.resolve())
    labels = out / "labels"
    labels.mkdir(parents=True, exist_ok=True)
    for name in SHARED_LABEL_FILES:
        if not (labels / name).is_symlink():
            (labels / name).symlink_to((source / LABELS / name).resolve())
    (labels / "train_split.txt").write_text("".join(f"{u}\n" for u in train))
    (labels / "test_split.txt").write_text("".join(f"{u}\n" for u in test))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("corpus", type=Path, help="a corpus with LibriSpeech100_labels_split/{train,test}_split.txt")
    parser.add_argument("out", type=Path, help="folder for the probe and stream corpora")
    parser.add_argument("--train-per-speaker", type=int, default=3)
    parser.add_argument("--test-per-speaker", type=int, default=1)
    args = parser.parse_args()
    train = (args.corpus / LABELS / "train_split.txt").read_text().split()
    test = (args.corpus / LABELS / "test_split.txt").read_text().split()
    probe_train = first_per_speaker(train, args.train_per_speaker)
    probe_test = first_per_speaker(test, args.test_per_speaker)
    link_corpus(args.corpus, args.out / "probe", probe_train, probe_test)
    link_corpus(args.corpus, args.out / "stream", train, [])
    print(f"{args.out / 'probe'}: {len(probe_train)} train + {len(probe_test)} test utterances; "
          f"{args.out / 'stream'}: {len(train)} utterances")


if __name__ == "__main__":
    main()
