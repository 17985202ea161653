"""Durable state of an audio run (``online-gim listen --state DIR``): what resumes where.

An audio checkpoint is the tree ``{"learner": learner.state_dict(), "stream": StreamPoint,
"listen": ListenTotals}`` (:data:`AUDIO_LAYOUT`, the run state is :mod:`online_gim.run.state`'s):

- ``stream``: the stream position of the next window's first sample (``next_sample``), and for a
  replayed corpus (:class:`~online_gim.streams.sources.librispeech.LibriSpeechReplay`, the synthetic stream)
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
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from online_gim.run.contract import StreamLearner
from online_gim.run.state import Checkpointer, RunState, StateLayout
from online_gim.state.store import Checkpoint
from online_gim.streams.sources.librispeech import LibriSpeechReplay, ReplayPosition
from online_gim.streams.window import SAMPLE_RATE, AudioWindow

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

    def info(self) -> dict[str, Any]:
        return {"windows": self.windows}

    def describe(self) -> str:
        return f"{self.windows} windows, {self.utterances} utterances"

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

    @property
    def position(self) -> int:
        return self.next_sample

    @property
    def stream_seconds(self) -> float:
        return self.next_sample / SAMPLE_RATE

    def where(self) -> str:
        return f"{self.stream_seconds:.2f} s"

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
    """sha256 of what a replay position refers to: the utterance ids, the order, (shuffled) the seed
    and (sharded) the shard."""
    identity = [replay.order, replay.seed if replay.order == "shuffle" else None, [u.id for u in replay.corpus.utterances]]
    if replay.shard is not None:
        identity.append(list(replay.shard))
    return hashlib.sha256(json.dumps(identity).encode()).hexdigest()


def stream_point(source: object, next_sample: int) -> StreamPoint:
    """The :class:`StreamPoint` of ``source`` whose next window starts at ``next_sample``."""
    source_id = str(getattr(source, "source_id", "stream"))
    if not isinstance(source, LibriSpeechReplay):
        return StreamPoint(next_sample, source_id)
    return StreamPoint(next_sample, source_id, source.locate(next_sample), replay_fingerprint(source))


def audio_locator(source: object, hop: int) -> Callable[[AudioWindow], StreamPoint]:
    """Where a run of ``source`` with windows ``hop`` samples apart resumes after a learned window:
    at the next window's first sample."""
    return lambda window: stream_point(source, window.start_sample + hop)


AUDIO_LAYOUT = StateLayout(
    learner="learner", stream="stream", totals="listen", point_from=StreamPoint.from_dict, totals_type=ListenTotals,
    other_learners={"video_learner": "--source video"},
)


def newest_learner_checkpoint(directory: Path) -> Checkpoint:
    """The newest intact checkpoint of the audio learner in a state directory, read-only (``export``,
    ``eval --learner-state``). Raises ``ValueError``: no checkpoint yet, an unusable directory, or the
    video learner's checkpoints."""
    from online_gim.state.store import CheckpointError, CheckpointStore

    try:
        checkpoint = CheckpointStore(directory, readonly=True).load_newest()
    except CheckpointError as error:
        raise ValueError(str(error)) from None
    if checkpoint is None:
        raise ValueError(f"{directory} has no checkpoint yet")
    if AUDIO_LAYOUT.learner not in checkpoint.state:
        raise ValueError(f"{directory} holds the video learner's checkpoints, not the audio learner's")
    return checkpoint


class ListenState(RunState):
    """A state directory opened for an audio listen run: what to resume from, and the checkpointer.
    Parameters and errors: :class:`~online_gim.run.state.RunState` (it refuses the video learner's
    state directories)."""

    point: StreamPoint | None

    def __init__(self, directory: str | Path, *, keep: int = 3) -> None:
        super().__init__(directory, AUDIO_LAYOUT, keep=keep)

    def checkpointer(self, learner: StreamLearner, *, source: object, hop: int, **schedule: Any) -> Checkpointer:
        """The run's checkpointer (:meth:`RunState.checkpointer`; ``schedule``: its periods and
        ``stop``), saving the replay position of ``source`` whose windows are ``hop`` samples apart."""
        return super().checkpointer(learner, locate=audio_locator(source, hop), **schedule)

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
