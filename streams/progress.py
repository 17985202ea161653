"""How long work reports its progress: a callback, so that the work needs no display library.

``streams`` and ``online_gim`` take a :class:`ProgressCallback` where work runs long (synthesising a
corpus, training and probing an evaluation) and call it as parts finish; the command line passes a
:class:`online_gim.services.progress.ProgressReporter`, which draws it (a rich progress bar on a terminal, a
plain line every few seconds otherwise) with an estimate of the time left.
"""

from __future__ import annotations

from typing import Protocol


class ProgressCallback(Protocol):
    """``progress(done, total)``: ``done`` units of the work are finished out of ``total`` (``None``:
    unknown). Units are the work's own (utterances, seconds of audio, windows), counted from 0 for
    this run of the work, never decreasing. Called on the worker's thread; it must be cheap."""

    def __call__(self, done: float, total: float | None) -> None: ...
