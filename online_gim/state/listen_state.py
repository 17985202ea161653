"""Durable state of a listen run: resume where the newest checkpoint left off, checkpoint as it goes.

A listen checkpoint is the tree ``{"learner": learner.state_dict(), "stream": StreamPoint,
"listen": ListenTotals}`` in a :class:`~online_gim.state.store.CheckpointStore`:

- ``stream``: the stream position of the next window's first sample (``next_sample``), and for a
  replayed corpus (:class:`~streams.sources.librispeech.LibriSpeechReplay`, the synthetic stream)
  the replay position of that sample (pass, utterance index, offset) with a fingerprint of the
  replay (utterance ids, order, seed) that it belongs to;
- ``listen``: totals over every run that continued this state (windows learned from, utterances).

Resuming (:class:`ListenState`): the learner loads the saved state; the stream's positions go on
from ``next_sample`` (the ring buffer's ``origin``), so window positions, memory tags and stream
time continue; a replay that is the same as the saved one (same fingerprint) starts at the saved
position, so that the windows after the checkpoint are exactly those an uninterrupted run would
have seen. Only the windows learned after the last checkpoint are learned again.

Usage::

    state = ListenState("state/", keep=3)                  # loads the newest intact checkpoint
    replay = LibriSpeechReplay(root, speed=None, start=state.replay_start)
    if not state.continues(replay):                        # another corpus/order: warns
        replay = LibriSpeechReplay(root, speed=None, start=state.fresh_start)
    learner = OnlineLearner(config)
    state.restore(learner)                                 # ValueError: another config
    session = ListenSession(replay, learner, origin=state.origin)
    session.add_observer(state.checkpointer(learner, source=replay, hop=session.summary.hop, every_windows=100))
    session.run()                                          # checkpoints; the last one at the end
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from dataclasses import asdict, dataclass
from typing import Any, Callable

from online_gim.state.checkpointer import PeriodicCheckpointer, RunState
from online_gim.state.store import CheckpointStore
from streams.sources.librispeech import LibriSpeechReplay, ReplayPosition
from streams.window import SAMPLE_RATE, AudioWindow

log = logging.getLogger(__name__)


@dataclass
class ListenTotals:
    """Totals over all the runs that continued one state (the learner's history).

    Attributes:
        windows: windows learned from (each stream window once, however often the process restarted).
        utterances: utterances reached: one per change of utterance id along the learned windows
            (a corpus replayed in a loop counts each pass again; a single looping file counts once).
        last_utterance: id of the utterance the last learned window ended in.
        runs: listen runs whose work is in this state (runs killed before their first checkpoint
            are not), this one included.
    """

    windows: int = 0
    utterances: int = 0
    last_utterance: str | None = None
    runs: int = 0

    def count(self, window: AudioWindow) -> None:
        """Adds one learned window."""
        self.windows += 1
        for span in window.spans:
            if span.utterance_id != self.last_utterance:
                self.utterances += 1
                self.last_utterance = span.utterance_id

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ListenTotals:
        return cls(**data)


@dataclass(frozen=True)
class StreamPoint:
    """Where the stream stood at a checkpoint.

    Attributes:
        next_sample: stream position (samples at 16 kHz) of the first sample of the next window.
        source_id: the stream's name.
        replay: for a replayed corpus, the replay position of ``next_sample``; else ``None``.
        fingerprint: identity of the replay that ``replay`` belongs to (:func:`replay_fingerprint`).
    """

    next_sample: int
    source_id: str
    replay: ReplayPosition | None = None
    fingerprint: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "replay": None if self.replay is None else self.replay.to_dict()}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> StreamPoint:
        replay = data.get("replay")
        return cls(
            next_sample=int(data["next_sample"]),
            source_id=str(data["source_id"]),
            replay=None if replay is None else ReplayPosition.from_dict(replay),
            fingerprint=data.get("fingerprint"),
        )


def replay_fingerprint(replay: LibriSpeechReplay) -> str:
    """sha256 of what a replay position refers to: the utterance ids, the order and (shuffled) the seed."""
    identity = [replay.order, replay.seed if replay.order == "shuffle" else None, [u.id for u in replay.corpus.utterances]]
    return hashlib.sha256(json.dumps(identity).encode()).hexdigest()


def stream_point(source: object, next_sample: int) -> StreamPoint:
    """The :class:`StreamPoint` of ``source`` whose next window starts at ``next_sample``."""
    source_id = str(getattr(source, "source_id", "stream"))
    if not isinstance(source, LibriSpeechReplay):
        return StreamPoint(next_sample, source_id)
    return StreamPoint(next_sample, source_id, source.locate(next_sample), replay_fingerprint(source))


class Checkpointer(PeriodicCheckpointer):
    """A :class:`~services.session.StepObserver` that checkpoints an audio listen run. The schedule
    and the other parameters are :class:`PeriodicCheckpointer`'s (``totals``: :class:`ListenTotals`).

    Parameters:
        source: the stream's source (its replay position is saved when it is a replay).
        hop: samples between window starts.
    """

    def __init__(
        self,
        store: CheckpointStore,
        learner: Any,
        source: object,
        *,
        hop: int,
        totals: ListenTotals,
        every_windows: int = 0,
        every_seconds: float = 0.0,
        clock: Callable[[], float] = time.monotonic,
        stop: Callable[[str], None] | None = None,
    ) -> None:
        super().__init__(
            store, learner, totals=totals, every_windows=every_windows, every_seconds=every_seconds, clock=clock,
            stop=stop,
        )
        self.source = source
        self.hop = hop
        self._next_sample: int | None = None

    def on_step(self, window: AudioWindow, report: object, counters: object) -> None:
        self.totals.count(window)
        self._next_sample = window.start_sample + self.hop
        self.window_learned()

    def snapshot(self) -> tuple[dict[str, Any], dict[str, Any]] | None:
        if self._next_sample is None:
            return None
        point = stream_point(self.source, self._next_sample)
        state = {"learner": self.learner.state_dict(), "stream": point.to_dict(), "listen": self.totals.to_dict()}
        info = {
            "model_step": self.learner.updates,
            "windows": self.totals.windows,
            "stream_seconds": point.next_sample / SAMPLE_RATE,
        }
        return state, info


class ListenState(RunState):
    """A state directory opened for an audio listen run: what to resume from, and the checkpointer.
    Parameters and errors: :class:`RunState` (it refuses the video learner's state directories)."""

    learner_key = "learner"
    stream_key, stream_type = "stream", StreamPoint
    totals_key, totals_type = "listen", ListenTotals
    checkpointer_type = Checkpointer
    other_learners = {"video_learner": "--source video"}

    @property
    def origin(self) -> int:
        """Stream position of the first sample of this run (the ring buffer's ``origin``)."""
        return self.point.next_sample if self.point is not None else 0

    def describe(self) -> str:
        """What the checkpoint resumed from holds, for people."""
        totals = self.totals
        return f"{totals.windows} windows, {totals.utterances} utterances, stream at {self.origin / SAMPLE_RATE:.2f} s"

    @property
    def fresh_start(self) -> ReplayPosition:
        """A replay's start at its beginning, with stream positions going on from :attr:`origin`."""
        return ReplayPosition(stream_sample=self.origin)

    @property
    def replay_start(self) -> ReplayPosition:
        """Where a replay continues: the saved position, else :attr:`fresh_start`."""
        if self.point is not None and self.point.replay is not None:
            return self.point.replay
        return self.fresh_start

    def continues(self, source: object) -> bool:
        """Whether ``source`` is the stream the saved replay position belongs to (warns if not).

        ``True`` when no replay position was saved (nothing to continue). When ``False``, build the
        source again with ``start=fresh_start``.
        """
        point = self.point
        if point is None or point.replay is None:
            return True
        if isinstance(source, LibriSpeechReplay) and replay_fingerprint(source) == point.fingerprint:
            return True
        log.warning(
            "the saved stream position belongs to another stream (%s with other utterances, order or seed); "
            "this stream starts at its beginning and the learner continues",
            point.source_id,
        )
        return False
