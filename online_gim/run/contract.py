"""The contract between a stream, a learner and whatever watches them: the run layer's protocols.

A **window** (:class:`StreamWindow`) is a stretch of one stream: audio samples
(:class:`~online_gim.streams.window.AudioWindow`), video frames (:class:`~online_gim.streams.video_window.VideoWindow`),
or, for a stage of a module pipeline, the activations of the modules below. Its position and
length count the stream's **units** (samples, frames), ``rate`` of them per second.

A **learner** (:class:`StreamLearner`) learns from one window per :meth:`~StreamLearner.step` and
says what it did in a :class:`~online_gim.report.StepReport` whose fields mean the same for every
learner. :class:`~online_gim.learner.OnlineLearner` (audio) and
:class:`~online_gim.video.learner.VideoLearner` implement it; ``tests/test_learner_contract.py``
is the suite every implementation passes.

An **observer** (:class:`StepObserver`) is called after every step of a
:class:`~online_gim.run.session.Session`: the checkpointer, the side service's board, the status
line. What an observer may read from a running learner besides the report is
:class:`LearnerView` (the memories, the probes' newest readout, the modules' parameters).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Protocol, TypeVar, runtime_checkable

import torch

from online_gim.report import ProbeReadout, StepReport

if TYPE_CHECKING:
    from online_gim.memory import MemoryHit


class StreamWindow(Protocol):
    """A window of a stream, as the run layer sees it."""

    @property
    def source_id(self) -> str:
        """The stream's name (memories never mix exclusion zones across streams)."""

    @property
    def start(self) -> int:
        """Stream position (in units) of the window's first unit."""

    @property
    def length(self) -> int:
        """Units in the window."""

    @property
    def rate(self) -> float:
        """Units per second of stream."""


W = TypeVar("W", bound=StreamWindow, contravariant=True)


class SearchableMemory(Protocol):
    """A module's memory of past encodings, searched by the side service (any thread)."""

    dim: int
    """Length of the stored vectors."""

    def __len__(self) -> int:
        """Vectors stored."""

    def nearest(self, query: torch.Tensor, k: int) -> list[MemoryHit]:
        """The ``k`` stored moments nearest to ``query`` ``(dim,)``; ``ValueError`` for a bad query."""


@runtime_checkable
class LearnerView(Protocol):
    """What an observer may read from a running learner, besides its step reports. Reads are safe
    from the learner's thread between two steps; :meth:`SearchableMemory.nearest` from any thread."""

    @property
    def memories(self) -> Sequence[SearchableMemory]:
        """Per module, its memory (modules may share one: the audio GRU predicts from the top conv
        module's); empty for a learner without memories."""

    def probe_readout(self) -> ProbeReadout | None:
        """The online probes' readout of the newest window; ``None`` without probes or before one."""

    def module_parameters(self) -> list[list[torch.Tensor]]:
        """Per module, its parameters (live tensors: copy them between two steps)."""


@runtime_checkable
class StreamLearner(LearnerView, Protocol[W]):
    """A learner that learns from a stream, one window per step.

    Every implementation promises (``tests/test_learner_contract.py`` checks it):

    - a window that holds NaN or Inf, or one the learner's float32 arithmetic cannot represent,
      changes nothing; it is counted in ``windows_skipped_nonfinite`` and its report says why;
    - ``load_state_dict(state_dict())`` into a learner of the same configuration makes it continue
      exactly as the original would;
    - :meth:`embed` changes nothing;
    - no gradient crosses a module boundary unless the configuration asks for end-to-end training.
    """

    @property
    def num_modules(self) -> int:
        """Modules in the stack (the reports' ``modules`` and ``embeddings`` have one entry each)."""

    @property
    def updates(self) -> int:
        """Windows that updated weights so far (the model step)."""

    @property
    def windows_skipped_nonfinite(self) -> int:
        """Windows skipped because they (or what they did to the state) were not finite."""

    def step(self, window: W, modules: Sequence[int] | None = None, *, replay: bool = False) -> StepReport:
        """Learns from one window. ``modules``: update only these (all still run forward);
        ``replay``: the window comes again from the past (nothing that describes the live stream
        changes). ``ValueError`` for a window of the wrong shape."""

    def embed(self, values: torch.Tensor) -> list[torch.Tensor]:
        """Per module, the ``(frames, channels)`` encoding of ``values`` (a window's data, any
        length the stack accepts), without learning and without changing the learner."""

    def state_dict(self) -> dict[str, object]:
        """The whole learner state (weights, statistics, optimisers, memories, RNGs, counters)."""

    def load_state_dict(self, state: dict[str, object]) -> list[str]:
        """Restores :meth:`state_dict`'s output; returns the non-finite parts it reset."""


@runtime_checkable
class StepObserver(Protocol[W]):
    """Watches a session: called on the learner's thread after every live step.

    ``on_step`` must be cheap and must not block for long (the learner waits for it); hand heavy
    work to another thread. ``close`` is called once when the session ends.
    """

    def on_step(self, window: W, report: StepReport) -> None: ...

    def close(self) -> None: ...
