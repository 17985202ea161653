"""The durable state of a run, for any :class:`~online_gim.run.contract.StreamLearner`: open a state
directory and resume from its newest checkpoint (:class:`RunState`), and save on a schedule
(:class:`Checkpointer`, a step observer: every N learned windows, every T seconds of wall clock, at
the end).

A checkpoint is the tree ``{<learner>: learner.state_dict(), <stream>: point, <totals>: totals}`` in
a :class:`~online_gim.state.store.CheckpointStore`; a :class:`StateLayout` names the three keys and
says what the point (where the stream stood: :class:`ResumePoint`) and the totals (over every run
that continued the state: :class:`RunTotals`) are for one kind of stream: audio
(:mod:`online_gim.run.audio_state`) or video (:mod:`online_gim.run.video_state`). A state directory
holds one learner's checkpoints; resuming another learner from it is refused with a message that
names the right ``--source``.

Usage::

    state = VideoListenState("state/", keep=3)             # loads the newest intact checkpoint
    learner = VideoLearner(config)
    state.restore(learner)                                  # ValueError: another config
    session = VideoListenSession(frames, learner, frame_rate=25.0, source_id="video", origin=state.origin)
    session.add_observer(state.checkpointer(learner, every_windows=100, stop=session.stop))
    session.run()                                           # checkpoints; the last one when it closes
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any, Generic, Protocol, TypeVar

from online_gim.finite import describe_paths, nonfinite_paths
from online_gim.report import StepReport
from online_gim.run.contract import StreamLearner, StreamWindow
from online_gim.state.store import Checkpoint, CheckpointError, CheckpointStore

log = logging.getLogger(__name__)

W = TypeVar("W", bound=StreamWindow)

MAX_CONSECUTIVE_FAILURES = 3
"""Failed saves in a row after which a run stops: learning on would only grow what is lost."""


class ResumePoint(Protocol):
    """Where the stream stood at a checkpoint."""

    @property
    def position(self) -> int:
        """Stream position (in the stream's units) where the next run goes on (its ``origin``)."""

    @property
    def stream_seconds(self) -> float:
        """That position in seconds of stream."""

    def where(self) -> str:
        """That position, for people (``"12.80 s"``, ``"frame 400"``)."""

    def to_dict(self) -> dict[str, Any]: ...


class RunTotals(Protocol[W]):
    """Totals over all the runs that continued one state (the learner's history)."""

    windows: int
    runs: int

    def count(self, window: W) -> None:
        """Adds one learned window."""

    def info(self) -> dict[str, Any]:
        """What a checkpoint's manifest entry shows of them (``windows``, ...)."""

    def describe(self) -> str:
        """For people: ``"120 windows, 14 utterances"``."""

    def to_dict(self) -> dict[str, Any]: ...


@dataclass(frozen=True)
class StateLayout:
    """Where one kind of run keeps its parts in a checkpoint, and what they are.

    Attributes:
        learner, stream, totals: the keys of the learner's state, the :class:`ResumePoint` and the
            :class:`RunTotals` in the checkpoint tree.
        point_from: reads a saved point (``from_dict``).
        totals_type: the totals' type (``from_dict`` reads saved ones; ``()`` makes fresh ones).
        summary_prefix: put before every key of :meth:`RunState.summary_fields`.
        other_learners: the other kinds' learner keys -> how to run them (for the refusal).
    """

    learner: str
    stream: str
    totals: str
    point_from: Callable[[dict[str, Any]], ResumePoint]
    totals_type: Any
    other_learners: dict[str, str]
    summary_prefix: str = ""


class Checkpointer(Generic[W]):
    """Saves a snapshot of a run into a :class:`CheckpointStore` on a schedule: a step observer.

    Saves after every ``every_windows`` windows and once ``every_seconds`` (wall clock) have passed
    since the last save (0 disables either), and at :meth:`close` when windows were learned since.
    A failed save (disk full, ...) is logged, the previous checkpoints stay, and the save is tried
    again when the next period is due; after :data:`MAX_CONSECUTIVE_FAILURES` failures in a row
    ``stop("checkpoint_failed")`` ends the run. A state that holds NaN or Inf is never written (a
    failed save too). ``close`` releases the state directory.

    Parameters:
        store: where to save.
        learner: the learner.
        layout: the keys of the checkpoint tree.
        totals: the run totals to save (continued from the checkpoint resumed from).
        locate: the stream position to resume from after a learned window (asked when saving).
        every_windows, every_seconds: the periods.
        clock: monotonic seconds (tests pass a fake one).
        stop: called with a stop reason when saving has failed too often (the session's ``stop``).

    Attributes:
        written: checkpoints written by this run.
        failed: saves of this run that failed (nothing written).
        unsaved: windows learned since the last checkpoint written (after :meth:`close`: the
            learning this run loses because its checkpoints could not be written).
        last_saved_at: wall time (Unix seconds) of the newest checkpoint in the directory, the one
            resumed from until this run writes one; ``None`` before any.
    """

    def __init__(
        self,
        store: CheckpointStore,
        learner: StreamLearner[W],
        *,
        layout: StateLayout,
        totals: RunTotals[W],
        locate: Callable[[W], ResumePoint],
        every_windows: int = 0,
        every_seconds: float = 0.0,
        clock: Callable[[], float] = time.monotonic,
        stop: Callable[[str], None] | None = None,
    ) -> None:
        if every_windows < 0 or every_seconds < 0:
            raise ValueError("checkpoint periods must be >= 0 (0 = off)")
        self.store = store
        self.learner = learner
        self.layout = layout
        self.totals = totals
        self.every_windows = every_windows
        self.every_seconds = every_seconds
        self._locate = locate
        self._clock = clock
        self._stop = stop
        self._last: W | None = None  # the newest learned window
        self._last_attempt = clock()
        self._since_attempt = 0  # windows learned since the last save was tried
        self._failed_in_a_row = 0
        self.unsaved = 0
        self.written = 0
        self.failed = 0
        self.last_saved_at: float | None = None

    def on_step(self, window: W, report: StepReport | None) -> None:
        """Counts the learned window and saves when a period is due."""
        self.totals.count(window)
        self._last = window
        self.unsaved += 1
        self._since_attempt += 1
        due_windows = self.every_windows and self._since_attempt >= self.every_windows
        due_time = self.every_seconds and self._clock() - self._last_attempt >= self.every_seconds
        if due_windows or due_time:
            self.save()

    def snapshot(self) -> tuple[dict[str, Any], dict[str, Any]] | None:
        """The state tree to save and the manifest's ``info`` for it; ``None`` before the first window."""
        if self._last is None:
            return None
        point = self._locate(self._last)
        layout = self.layout
        state = {layout.learner: self.learner.state_dict(), layout.stream: point.to_dict(), layout.totals: self.totals.to_dict()}
        info = {"model_step": self.learner.updates, **self.totals.info(), "stream_seconds": point.stream_seconds}
        return state, info

    def save(self) -> bool:
        """Writes a checkpoint of the run as it is after the last window. Returns whether it was
        written (``False`` also before the first window)."""
        snapshot = self.snapshot()
        if snapshot is None:
            return False
        problem = None
        nonfinite = nonfinite_paths(snapshot[0])
        if nonfinite:
            problem = f"the state holds NaN or Inf in {describe_paths(nonfinite)}"
        else:
            try:
                self.store.save(*snapshot)
            except OSError as error:
                problem = str(error)
        self._last_attempt = self._clock()
        self._since_attempt = 0
        if problem is None:
            self.written += 1
            self.last_saved_at = time.time()
            self.unsaved = 0
            self._failed_in_a_row = 0
            return True
        self.failed += 1
        self._failed_in_a_row += 1
        log.error(
            "checkpoint not written to %s (%s); the previous ones are kept, %d windows learned since are not saved",
            self.store.directory, problem, self.unsaved,
        )
        if self._failed_in_a_row == MAX_CONSECUTIVE_FAILURES and self._stop is not None:
            log.error("%d checkpoints in a row could not be written: stopping", self._failed_in_a_row)
            self._stop("checkpoint_failed")
        return False

    def close(self) -> None:
        """Saves what was learned since the last checkpoint, then releases the directory. Idempotent."""
        try:
            if self.unsaved:
                self.save()
        finally:
            self.store.close()


class RunState:
    """A state directory opened for a run: the newest intact checkpoint, if any, to resume from.

    Parameters:
        directory: the state directory (created when missing).
        layout: the kind of run (its keys and types).
        keep: checkpoints kept.
    Raises:
        CheckpointError: the directory is unusable, locked by another process, has no intact
            checkpoint or one of another format version (see :class:`CheckpointStore`), or holds
            another learner's checkpoints (``layout.other_learners``).
    """

    def __init__(self, directory: str | Path, layout: StateLayout, *, keep: int = 3) -> None:
        self.layout = layout
        self.store = CheckpointStore(directory, keep=keep)
        try:
            self.checkpoint: Checkpoint | None = self.store.load_newest()
            saved = self.checkpoint.state if self.checkpoint is not None else None
            if saved is not None:
                self._require_learner(saved)
            self.point: ResumePoint | None = layout.point_from(saved[layout.stream]) if saved else None
            self.totals: RunTotals = layout.totals_type.from_dict(saved[layout.totals]) if saved else layout.totals_type()
        except BaseException:
            self.store.close()
            raise
        self.totals.runs += 1
        self._checkpointer: Checkpointer | None = None
        self.repaired: list[str] = []

    def _require_learner(self, state: dict[str, Any]) -> None:
        """Raises :class:`CheckpointError` when the checkpoint holds another learner than this kind's
        (the message says which and how to use it)."""
        key = self.layout.learner
        if key in state:
            return
        for other_key, how in self.layout.other_learners.items():
            if other_key in state:
                raise CheckpointError(
                    f"state directory {self.store.directory} holds the checkpoints of another learner (listen with {how}); "
                    "use another --state DIR"
                )
        raise CheckpointError(f"state directory {self.store.directory} holds a checkpoint without a {key.replace('_', ' ')}")

    @property
    def origin(self) -> int:
        """Stream position of this run's first unit (the session's ``origin``): where the saved
        stream stopped, 0 on a fresh start."""
        return self.point.position if self.point is not None else 0

    def describe(self) -> str:
        """What the checkpoint resumed from holds (totals, stream position), for people."""
        where = self.point.where() if self.point is not None else "its start"
        return f"{self.totals.describe()}, stream at {where}"

    @property
    def resumed_from_step(self) -> int:
        """Model step (learner updates) of the checkpoint resumed from; 0 on a fresh start."""
        if self.checkpoint is None:
            return 0
        return int(self.checkpoint.state[self.layout.learner]["counters"]["updates"])

    def restore(self, learner: StreamLearner) -> None:
        """Loads the saved learner state into ``learner`` (nothing on a fresh start). Parts of it that
        held NaN or Inf and that the stream estimates again were reset by the learner: they are
        logged and listed in :attr:`repaired` (and the summary's ``state_repaired``).

        Raises:
            ValueError: the checkpoint was written with another learner configuration.
            NonFiniteState: its learned weights are not finite (a ``ValueError``; nothing is changed).
        """
        if self.checkpoint is None:
            return
        self.repaired = learner.load_state_dict(self.checkpoint.state[self.layout.learner])
        if self.repaired:
            log.warning(
                "checkpoint %s held NaN or Inf in %s (written before online-gim guarded its state against them); "
                "these parts were reset and are estimated again from the stream",
                self.checkpoint.entry.file, ", ".join(self.repaired),
            )

    def checkpointer(
        self,
        learner: StreamLearner,
        *,
        locate: Callable[[Any], ResumePoint],
        every_windows: int = 0,
        every_seconds: float = 0.0,
        stop: Callable[[str], None] | None = None,
    ) -> Checkpointer:
        """The checkpointer of this run, saving into this directory with this run's totals (it
        releases the directory when closed; ``stop`` ends the run when saving fails too often)."""
        self._checkpointer = Checkpointer(
            self.store, learner, layout=self.layout, totals=self.totals, locate=locate, every_windows=every_windows,
            every_seconds=every_seconds, stop=stop,
        )
        if self.checkpoint is not None:
            self._checkpointer.last_saved_at = _unix_seconds(self.checkpoint.entry.written_at)
        return self._checkpointer

    def summary_fields(self) -> dict[str, Any]:
        """For the listen summary (each name after ``layout.summary_prefix``): ``resumed_from_step``,
        ``checkpoints_written``, ``checkpoints_failed`` (saves of this run that failed),
        ``windows_not_saved`` (windows this run learned that no checkpoint holds: lost; read it
        after :meth:`close`) and ``state_repaired`` (the parts of the resumed state that were reset
        because they were not finite)."""
        checkpointer = self._checkpointer
        prefix = self.layout.summary_prefix
        return {
            f"{prefix}resumed_from_step": self.resumed_from_step,
            f"{prefix}checkpoints_written": checkpointer.written if checkpointer is not None else 0,
            f"{prefix}checkpoints_failed": checkpointer.failed if checkpointer is not None else 0,
            f"{prefix}windows_not_saved": checkpointer.unsaved if checkpointer is not None else 0,
            f"{prefix}state_repaired": list(self.repaired),
        }

    def close(self) -> None:
        """Ends the run's use of the state directory: through the checkpointer when there is one
        (it writes the last checkpoint if windows were learned since), and releases the directory.
        Idempotent (a closed checkpointer has nothing unsaved)."""
        if self._checkpointer is not None:
            self._checkpointer.close()
        else:
            self.store.close()


def _unix_seconds(iso_time: str) -> float | None:
    """Unix seconds of an ISO 8601 time with its zone (a manifest's ``written_at``); ``None`` if unreadable."""
    try:
        moment = datetime.fromisoformat(iso_time)
    except (TypeError, ValueError):
        return None
    return moment.timestamp() if moment.tzinfo is not None else None
