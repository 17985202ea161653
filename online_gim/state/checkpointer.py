"""What every listen run's durable state does, whatever its learner: open a state directory and
resume from its newest checkpoint (:class:`RunState`), and save on a schedule
(:class:`PeriodicCheckpointer`: every N learned windows, every T seconds of wall clock, at the end).

The audio and the video listen states (:mod:`.listen_state`, :mod:`.video_state`) subclass both:
they say what a checkpoint holds besides the learner (the stream position, the run totals) and
under which key the learner's state is. A state directory holds one learner's checkpoints; resuming
another learner from it is refused with a message that names the right ``--source``.
"""

from __future__ import annotations

import logging
import time
from datetime import datetime
from pathlib import Path
from typing import Any, Callable, ClassVar

from online_gim.finite import describe_paths, nonfinite_paths
from online_gim.state.store import Checkpoint, CheckpointError, CheckpointStore

log = logging.getLogger(__name__)

MAX_CONSECUTIVE_FAILURES = 3
"""Failed saves in a row after which a listen run stops: learning on would only grow what is lost."""


class PeriodicCheckpointer:
    """Saves a snapshot of a listen run into a :class:`CheckpointStore` on a schedule.

    Saves after every ``every_windows`` windows and once ``every_seconds`` (wall clock) have passed
    since the last save (0 disables either), and at :meth:`close` when windows were learned since.
    A failed save (disk full, ...) is logged, the previous checkpoints stay, and the save is tried
    again when the next period is due; after :data:`MAX_CONSECUTIVE_FAILURES` failures in a row
    ``stop("checkpoint_failed")`` ends the run. A state that holds NaN or Inf is never written (a
    failed save too). ``close`` releases the state directory.

    Parameters:
        store: where to save.
        learner: the learner (``state_dict()``, ``updates``).
        totals: the run totals to save (continued from the checkpoint resumed from).
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
        learner: Any,
        *,
        totals: Any,
        every_windows: int = 0,
        every_seconds: float = 0.0,
        clock: Callable[[], float] = time.monotonic,
        stop: Callable[[str], None] | None = None,
    ) -> None:
        if every_windows < 0 or every_seconds < 0:
            raise ValueError("checkpoint periods must be >= 0 (0 = off)")
        self.store = store
        self.learner = learner
        self.totals = totals
        self.every_windows = every_windows
        self.every_seconds = every_seconds
        self._clock = clock
        self._stop = stop
        self._last_attempt = clock()
        self._since_attempt = 0  # windows learned since the last save was tried
        self._failed_in_a_row = 0
        self.unsaved = 0
        self.written = 0
        self.failed = 0
        self.last_saved_at: float | None = None

    def snapshot(self) -> tuple[dict[str, Any], dict[str, Any]] | None:
        """The state tree to save and the manifest's ``info`` for it; ``None`` before the first window."""
        raise NotImplementedError

    def window_learned(self) -> None:
        """Counts one learned window and saves when a period is due."""
        self.unsaved += 1
        self._since_attempt += 1
        due_windows = self.every_windows and self._since_attempt >= self.every_windows
        due_time = self.every_seconds and self._clock() - self._last_attempt >= self.every_seconds
        if due_windows or due_time:
            self.save()

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
        try:
            if self.unsaved:
                self.save()
        finally:
            self.store.close()


def require_learner(state: dict[str, Any], key: str, store: CheckpointStore, *, other: dict[str, str]) -> None:
    """Checks that a loaded checkpoint holds the learner a listen run is about to resume.

    Args:
        state: the checkpoint's state tree.
        key: the key of the expected learner's state (``learner``, ``video_learner``).
        store: the state directory (for the message).
        other: the other learners' keys -> how to run them (``{"video_learner": "--source video"}``).
    Raises:
        CheckpointError: the checkpoint holds another learner (the message says which and how to use it).
    """
    if key in state:
        return
    for other_key, how in other.items():
        if other_key in state:
            raise CheckpointError(
                f"state directory {store.directory} holds the checkpoints of another learner (listen with {how}); "
                "use another --state DIR"
            )
    raise CheckpointError(f"state directory {store.directory} holds a checkpoint without a {key.replace('_', ' ')}")


class RunState:
    """A state directory opened for a listen run: the newest intact checkpoint, if any, to resume from.

    Subclasses set :attr:`learner_key` (where the learner's ``state_dict`` is in a checkpoint),
    :attr:`other_learners` (the other learners' keys and how to run them, for the refusal),
    :attr:`checkpointer_type`, and the key and type (``from_dict``) of the saved stream position
    (:attr:`point`) and of the run totals (:attr:`totals`, which the checkpointer goes on counting).

    Parameters:
        directory: the state directory (created when missing).
        keep: checkpoints kept.
    Raises:
        CheckpointError: the directory is unusable, locked by another process, has no intact
            checkpoint or one of another format version (see :class:`CheckpointStore`), or holds
            another learner's checkpoints (:attr:`other_learners`).
    """

    learner_key: ClassVar[str]
    other_learners: ClassVar[dict[str, str]]
    checkpointer_type: ClassVar[type[PeriodicCheckpointer]]
    stream_key: ClassVar[str]
    stream_type: ClassVar[Any]
    totals_key: ClassVar[str]
    totals_type: ClassVar[Any]
    summary_prefix: ClassVar[str] = ""

    def __init__(self, directory: str | Path, *, keep: int = 3) -> None:
        self.store = CheckpointStore(directory, keep=keep)
        try:
            self.checkpoint: Checkpoint | None = self.store.load_newest()
            saved = self.checkpoint.state if self.checkpoint is not None else None
            if saved is not None:
                require_learner(saved, self.learner_key, self.store, other=self.other_learners)
            self.point = self.stream_type.from_dict(saved[self.stream_key]) if saved else None
            self.totals = self.totals_type.from_dict(saved[self.totals_key]) if saved else self.totals_type()
        except BaseException:
            self.store.close()
            raise
        self.totals.runs += 1
        self._checkpointer: PeriodicCheckpointer | None = None
        self.repaired: list[str] = []

    def describe(self) -> str:
        """What the checkpoint resumed from holds (totals, stream position), for people."""
        raise NotImplementedError

    @property
    def resumed_from_step(self) -> int:
        """Model step (learner updates) of the checkpoint resumed from; 0 on a fresh start."""
        if self.checkpoint is None:
            return 0
        return int(self.checkpoint.state[self.learner_key]["counters"]["updates"])

    def restore(self, learner: Any) -> None:
        """Loads the saved learner state into ``learner`` (nothing on a fresh start). Parts of it that
        held NaN or Inf and that the stream estimates again were reset by the learner: they are
        logged and listed in :attr:`repaired` (and the summary's ``state_repaired``).

        Raises:
            ValueError: the checkpoint was written with another learner configuration.
            NonFiniteState: its learned weights are not finite (a ``ValueError``; nothing is changed).
        """
        if self.checkpoint is None:
            return
        self.repaired = learner.load_state_dict(self.checkpoint.state[self.learner_key])
        if self.repaired:
            log.warning(
                "checkpoint %s held NaN or Inf in %s (written before online-gim guarded its state against them); "
                "these parts were reset and are estimated again from the stream",
                self.checkpoint.entry.file, ", ".join(self.repaired),
            )

    def checkpointer(
        self,
        learner: Any,
        *,
        every_windows: int = 0,
        every_seconds: float = 0.0,
        stop: Callable[[str], None] | None = None,
        **stream: Any,
    ) -> PeriodicCheckpointer:
        """The checkpointer of this run, a :attr:`checkpointer_type` saving into this directory with
        this run's totals (it releases the directory when closed; ``stop`` ends the run when saving
        fails too often); ``stream``: what that type also takes (the audio one: ``source``, ``hop``)."""
        self._checkpointer = self.checkpointer_type(
            self.store, learner, totals=self.totals, every_windows=every_windows, every_seconds=every_seconds,
            stop=stop, **stream,
        )
        if self.checkpoint is not None:
            self._checkpointer.last_saved_at = _unix_seconds(self.checkpoint.entry.written_at)
        return self._checkpointer

    def summary_fields(self) -> dict[str, Any]:
        """For the listen summary (each name after :attr:`summary_prefix`): ``resumed_from_step``,
        ``checkpoints_written``, ``checkpoints_failed`` (saves of this run that failed),
        ``windows_not_saved`` (windows this run learned that no checkpoint holds: lost; read it
        after :meth:`close`) and ``state_repaired`` (the parts of the resumed state that were reset
        because they were not finite)."""
        checkpointer = self._checkpointer
        prefix = self.summary_prefix
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
