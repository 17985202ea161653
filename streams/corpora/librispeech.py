"""Index of a LibriSpeech-layout tree with GIM/CPC frame-level phone labels.

Layout: ``<root>/.../<speaker>/<chapter>/<speaker>-<chapter>-<utt>.flac`` (any subset, any depth
below the root; ``.wav`` is accepted too), one or several roots. Speaker and chapter come from the
file name. The optional label folder is GIM's ``LibriSpeech100_labels_split/``:

- ``converted_aligned_phones.txt``: ``<utt-id> <label> <label> ...``, one phone class (0..40,
  0 = silence) per 10 ms frame, slightly shorter than the audio and aligned to its END (METHOD.md
  section 7; :func:`online_gim.streams.chunk.expand_frame_labels` does the alignment).
- ``train_split.txt`` / ``test_split.txt`` (optional): one utterance id per line;
  :meth:`LibriSpeechCorpus.split` restricts the corpus to one of them.

Label lines whose utterance has no audio are skipped with one warning that says how many;
utterances without a label line keep ``phones = None`` (unknown) and still play. Malformed label
lines are reported with their line number and skipped, and a file that is mostly malformed is
refused (:mod:`online_gim.streams.corpora.phone_labels`); labels whose length is far from their audio's are
reported and ignored when the audio is decoded (:meth:`Utterance.phones_for`).

Usage::

    corpus = LibriSpeechCorpus("../shared/data/librispeech-mini/LibriSpeech",
                               labels="../shared/data/librispeech-mini/LibriSpeech100_labels_split")
    len(corpus), corpus.speakers                      # 12, ('1088', '2412', ...)
    [u.id for u in corpus.utterances if u.phones is not None]
    train = corpus.split("train")                      # needs train_split.txt
"""

from __future__ import annotations

import logging
import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from online_gim.streams.chunk import expand_frame_labels
from online_gim.streams.corpora.phone_labels import PhoneLabels, length_problem, read_phone_labels
from online_gim.streams.window import SAMPLE_RATE

log = logging.getLogger(__name__)

AUDIO_EXTENSIONS = (".flac", ".wav")
"""File extensions indexed as utterances."""

PHONES_FILE = "converted_aligned_phones.txt"
"""Name of the frame-level phone label file in a GIM/CPC label folder."""

_UTTERANCE_NAME = re.compile(r"^(?P<speaker>[^-/]+)-(?P<chapter>[^-/]+)-(?P<utt>[^-/.]+)$")


@dataclass(frozen=True)
class Utterance:
    """One utterance of the corpus.

    Attributes:
        id: ``<speaker>-<chapter>-<utt>``.
        speaker: speaker id (from the file name).
        chapter: chapter id (from the file name).
        path: the audio file.
        phones: ``(frames,)`` int16 phone class per 10 ms frame, aligned to the END of the audio;
            ``None`` when the label file has no line for it (or no label folder was given).
        labels_at: where the labels come from, ``FILE:LINE`` (``None`` without labels).
    """

    id: str
    speaker: str
    chapter: str
    path: Path
    phones: np.ndarray | None = None
    labels_at: str | None = None

    @property
    def labelled(self) -> bool:
        """Whether phone labels are known."""
        return self.phones is not None

    def load(self) -> np.ndarray:
        """The audio as ``(n,)`` float32 at 16 kHz mono (see :func:`load_audio`)."""
        return load_audio(self.path)

    def sample_phones(self, num_samples: int) -> np.ndarray:
        """``(num_samples,)`` int16 phone per sample, aligned to the end; all unknown without labels."""
        return expand_frame_labels(self.phones, num_samples)

    def phones_for(self, num_samples: int) -> tuple[np.ndarray, str | None]:
        """:meth:`sample_phones` of the decoded audio's ``num_samples``, all unknown when the labels'
        length is far from the audio's; then also what is wrong (``FILE:LINE: ...``), else ``None``."""
        problem = length_problem(len(self.phones), num_samples) if self.phones is not None else None
        if problem is None:
            return self.sample_phones(num_samples), None
        return expand_frame_labels(None, num_samples), f"{self.labels_at}: {problem} in {self.path}"


def load_audio(path: str | Path) -> np.ndarray:
    """Decodes a whole (utterance-sized) file with soundfile to ``(n,)`` float32, 16 kHz mono.

    Several channels are averaged; another sample rate is resampled (:mod:`online_gim.streams.resample`,
    band-limited sinc interpolation). Non-finite samples are passed through unchanged.

    Raises:
        soundfile.LibsndfileError (a RuntimeError): the file cannot be decoded.
    """
    import soundfile

    data, rate = soundfile.read(str(path), dtype="float32", always_2d=True)
    audio = data.mean(axis=1, dtype=np.float32) if data.shape[1] > 1 else data[:, 0]
    if rate != SAMPLE_RATE and audio.shape[0] > 0:
        import torch

        from online_gim.streams.resample import resample

        audio = resample(torch.from_numpy(np.ascontiguousarray(audio)), rate, SAMPLE_RATE).numpy()
    return np.ascontiguousarray(audio, dtype=np.float32)


class LibriSpeechCorpus:
    """The utterances of one or several LibriSpeech-layout roots, with phone labels where known.

    Parameters:
        roots: one root or several; every audio file named ``<spk>-<chapter>-<utt>`` below them.
        labels: a GIM/CPC label folder (or ``None``).
        split: ``"train"`` / ``"test"`` (or any ``<name>_split.txt`` in ``labels``): keep only
            its utterances; ``None`` keeps all.

    Collection behaviour: ``len(corpus)``, ``iter(corpus)`` (utterances sorted by id),
    ``corpus["4051-11218-0044"]``, ``"4051-11218-0044" in corpus``.

    Raises:
        FileNotFoundError: a root or the label folder / file does not exist.
    """

    def __init__(
        self,
        roots: str | Path | Sequence[str | Path],
        labels: str | Path | None = None,
        *,
        split: str | None = None,
    ) -> None:
        root_list = [Path(roots)] if isinstance(roots, (str, Path)) else [Path(r) for r in roots]
        if not root_list:
            raise ValueError("LibriSpeechCorpus needs at least one root")
        self.roots: tuple[Path, ...] = tuple(root_list)
        self.labels_dir: Path | None = Path(labels) if labels is not None else None
        self.labels_without_audio = 0
        found = self._index(self.roots)
        labels = self._read_labels(self.labels_dir, set(found)) if self.labels_dir is not None else {}
        label_file = self.labels_dir / PHONES_FILE if self.labels_dir is not None else None
        utterances = [
            Utterance(uid, speaker, chapter, path, labels[uid].classes, f"{label_file}:{labels[uid].line}")
            if uid in labels
            else Utterance(uid, speaker, chapter, path)
            for uid, (speaker, chapter, path) in sorted(found.items())
        ]
        self._utterances: tuple[Utterance, ...] = tuple(utterances)
        self._by_id = {u.id: u for u in self._utterances}
        self.split_name: str | None = None
        if split is not None:
            restricted = self.split(split)
            self._utterances, self._by_id, self.split_name = restricted._utterances, restricted._by_id, split

    # ----------------------------------------------------------------- building
    @staticmethod
    def _index(roots: Sequence[Path]) -> dict[str, tuple[str, str, Path]]:
        found: dict[str, tuple[str, str, Path]] = {}
        duplicates = 0
        for root in roots:
            if not root.exists():
                raise FileNotFoundError(f"LibriSpeech root {str(root)!r} does not exist")
            paths = [root] if root.is_file() else sorted(p for p in root.rglob("*") if p.is_file())
            for path in paths:
                if path.suffix.lower() not in AUDIO_EXTENSIONS:
                    continue
                match = _UTTERANCE_NAME.match(path.stem)
                if match is None:
                    continue
                if path.stem in found:
                    duplicates += 1
                    continue
                found[path.stem] = (match["speaker"], match["chapter"], path)
        if duplicates:
            log.warning("%d utterance files appear under more than one root; the first one is used", duplicates)
        return found

    def _read_labels(self, folder: Path, audio_ids: set[str]) -> dict[str, PhoneLabels]:
        label_file = folder / PHONES_FILE
        if not label_file.is_file():
            raise FileNotFoundError(f"label folder {str(folder)!r} has no {PHONES_FILE}")
        labels = read_phone_labels(label_file)
        without_audio = len(set(labels) - audio_ids)
        self.labels_without_audio = without_audio
        if without_audio:
            log.warning(
                "%d label lines in %s have no audio under %s; skipped",
                without_audio,
                label_file,
                ", ".join(str(r) for r in self.roots),
            )
        return {uid: entry for uid, entry in labels.items() if uid in audio_ids}

    # ----------------------------------------------------------------- access
    @property
    def utterances(self) -> tuple[Utterance, ...]:
        """All utterances, sorted by id."""
        return self._utterances

    @property
    def speakers(self) -> tuple[str, ...]:
        """Distinct speaker ids, sorted."""
        return tuple(sorted({u.speaker for u in self._utterances}))

    @property
    def labelled(self) -> tuple[Utterance, ...]:
        """The utterances with phone labels."""
        return tuple(u for u in self._utterances if u.phones is not None)

    @property
    def has_labels(self) -> bool:
        """Whether a label folder was given (then unlabelled utterances have unknown phones)."""
        return self.labels_dir is not None

    def split_ids(self, name: str) -> list[str]:
        """The utterance ids listed in ``<labels>/<name>_split.txt``."""
        if self.labels_dir is None:
            raise ValueError(f"split({name!r}) needs a label folder")
        path = self.labels_dir / f"{name}_split.txt"
        if not path.is_file():
            raise FileNotFoundError(f"label folder {str(self.labels_dir)!r} has no {path.name}")
        return [line.strip() for line in path.read_text().splitlines() if line.strip()]

    def split(self, name: str) -> LibriSpeechCorpus:
        """A copy restricted to the utterances of ``<labels>/<name>_split.txt`` (``"train"``, ``"test"``)."""
        keep = set(self.split_ids(name))
        copy = object.__new__(LibriSpeechCorpus)
        copy.__dict__.update(self.__dict__)
        copy._utterances = tuple(u for u in self._utterances if u.id in keep)
        copy._by_id = {u.id: u for u in copy._utterances}
        copy.split_name = name
        return copy

    def __len__(self) -> int:
        return len(self._utterances)

    def __iter__(self) -> Iterator[Utterance]:
        return iter(self._utterances)

    def __getitem__(self, utterance_id: str) -> Utterance:
        return self._by_id[utterance_id]

    def __contains__(self, utterance_id: object) -> bool:
        return utterance_id in self._by_id

    def __repr__(self) -> str:
        return (
            f"LibriSpeechCorpus({len(self)} utterances, {len(self.speakers)} speakers, "
            f"{len(self.labelled)} labelled, split={self.split_name!r})"
        )
