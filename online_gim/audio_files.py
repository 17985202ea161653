"""Whole audio files for use from Python (a notebook, a script): decode, cut into windows, embed.

Any file or URL FFmpeg opens is decoded by the stream's own file decoder
(:class:`~online_gim.streams.sources.file.FileSource`: resampled to 16 kHz mono float32), so a file gives
the learner the same samples as ``online-gim listen --source file``.

Usage::

    learner = OnlineLearner(load_preset("clapp_eprop"))
    for window in file_windows("talk.wav", learner.config.window):
        learner.step(window)                       # learn from the file, window by window
    features = embed_file(learner, "talk.wav")     # (frames, C) of the top module, 10 ms frames
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Protocol

import numpy as np
import torch

from online_gim.streams.ring_buffer import iter_windows
from online_gim.streams.sources.file import FileSource
from online_gim.streams.window import AudioWindow
from online_gim.streams.windowing import DEFAULT_WINDOW


class Embedder(Protocol):
    """What :func:`embed_file` needs: an :class:`~online_gim.learner.OnlineLearner` or an
    exported :class:`~online_gim.state.export.Encoder`."""

    def embed(self, samples: torch.Tensor) -> list[torch.Tensor]: ...


def decode_file(path: str | Path) -> torch.Tensor:
    """The whole file as ``(n,)`` float32 samples at 16 kHz mono.

    Raises:
        FileNotFoundError: no such local file.
        AudioFileError: FFmpeg cannot open it, or it has no audio track (a ``ValueError``).
    """
    chunks = [chunk.samples for chunk in FileSource(path, speed=None)]
    return torch.from_numpy(np.concatenate(chunks) if chunks else np.zeros(0, dtype=np.float32))


def file_windows(path: str | Path, window: int = DEFAULT_WINDOW, hop: int | None = None) -> Iterator[AudioWindow]:
    """The file's windows of ``window`` samples every ``hop`` samples (default: ``window``, no
    overlap), as a listen run cuts them; the remainder shorter than a window is left out.

    Raises:
        FileNotFoundError, AudioFileError: as :func:`decode_file`.
    """
    source = FileSource(path, speed=None)
    yield from iter_windows(source, window=window, hop=hop or window, source_id=source.source_id)


def embed_file(model: Embedder, path: str | Path, module: int = -1) -> np.ndarray:
    """The ``(frames, C)`` float32 features of module ``module`` (default: the top one) for a whole
    file, without learning (one frame per 10 ms at the top of the default stack).

    Raises:
        FileNotFoundError, AudioFileError: as :func:`decode_file`.
        ValueError: NaN/Inf samples, or a file too short for one frame at the top.
        IndexError: no such module.
    """
    features = model.embed(decode_file(path))
    return features[module].numpy().astype(np.float32, copy=False)
