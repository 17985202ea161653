"""The embedded default source: the synthetic espeak-ng speech corpus, replayed in an endless loop.

The corpus comes from :func:`online_gim.streams.corpora.synth.default_corpus` (generated once and cached; a
LibriSpeech-layout tree with its GIM-format label folder in ``<corpus>/labels/``) and is played by
:class:`~online_gim.streams.sources.librispeech.LibriSpeechReplay`: one continuous stream with per-sample phone
labels and speaker spans, shuffled by ``seed`` (a new order on every pass), real time by default.

Usage::

    source = SynthSource()                   # what `online-gim listen` plays with no arguments
    source = SynthSource(speed=None, loop=False, corpus_dir=path)   # one pass, max speed
"""

from __future__ import annotations

from pathlib import Path

from online_gim.streams.sources.base import DEFAULT_CHUNK_SAMPLES
from online_gim.streams.sources.librispeech import LibriSpeechReplay, ReplayPosition

LABELS_SUBDIR = "labels"
"""Label folder of a synthetic corpus, relative to its root."""


class SynthSource(LibriSpeechReplay):
    """Loops the synthetic speech corpus as one continuous, labelled stream.

    Parameters:
        corpus_dir: an existing synthetic corpus (default: ``default_corpus()``, generated if needed).
        split: ``"train"`` / ``"test"`` restriction (``None``: all utterances).
        order, seed, speed, loop, chunk_samples, start: as :class:`LibriSpeechReplay`
            (defaults: shuffled, seed 0, real time, looping).
        source_id: the stream's name (default ``"synth"``).
        shard: one replica's share of the corpus, as :class:`LibriSpeechReplay`'s.
    """

    def __init__(
        self,
        *,
        corpus_dir: str | Path | None = None,
        split: str | None = None,
        order: str = "shuffle",
        seed: int = 0,
        speed: float | None = 1.0,
        loop: bool = True,
        chunk_samples: int = DEFAULT_CHUNK_SAMPLES,
        start: ReplayPosition | None = None,
        source_id: str = "synth",
        shard: tuple[int, int] | None = None,
    ) -> None:
        if corpus_dir is None:
            from online_gim.streams.corpora.synth import default_corpus

            corpus_dir = default_corpus()
        corpus_dir = Path(corpus_dir)
        labels = corpus_dir / LABELS_SUBDIR
        super().__init__(
            corpus_dir,
            labels if labels.is_dir() else None,
            split=split,
            order=order,
            seed=seed,
            speed=speed,
            loop=loop,
            chunk_samples=chunk_samples,
            start=start,
            source_id=source_id,
            shard=shard,
        )
        self.corpus_dir = corpus_dir
