"""The one session loop: windows -> learner -> observers, for any stream and any learner.

A :class:`Session` reads windows from a :class:`WindowStream` in the calling thread, calls
``learner.step(window, modules=...)`` (a :class:`~online_gim.run.contract.StreamLearner`) and then
every :class:`~online_gim.run.contract.StepObserver` (``on_step(window, report)``: the status line,
the side service, checkpointing), and keeps the :class:`RunTally` of what it did. It stops on the
first of: the end of the stream (``end_of_stream``; ``duration`` when the stream's own limit ended
it), ``max_windows`` windows, :meth:`Session.stop` (a signal, another thread), or a source error
(``source_error``). Every stop is clean: the stream is closed, the observers are closed, the tally
is complete.

Two schedules are the loop's:

- ``budget`` (``--schedule auto``, :class:`~online_gim.run.schedule.ModuleBudget`): keeps a paced
  stream in real time by updating fewer modules per window while the stream's backlog grows;
- ``replay`` (``--replay R``, :class:`Replay`): after each live window the learner may learn again
  from windows of the past, up to ``R`` per live window and only in time the stream leaves idle
  (:class:`~online_gim.run.replay_schedule.ReplaySchedule`); replayed steps are counted in the tally
  (``replayed_windows``), not shown to the observers.

The kinds of stream are :mod:`online_gim.run.audio` (a source through a ring buffer:
:class:`~online_gim.run.audio.ListenSession`) and :mod:`online_gim.run.video` (frames through a
windower: :class:`~online_gim.run.video.VideoListenSession`); ``--source av`` runs one session of
each, on two threads.
"""

from __future__ import annotations

import logging
import math
import statistics
import threading
import time
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Generic, Protocol, TypeVar

from online_gim.report import ProbeReadout, StepReport, tally_skip
from online_gim.run.contract import StepObserver, StreamLearner, StreamWindow
from online_gim.run.replay_schedule import ReplaySchedule
from online_gim.run.schedule import ModuleBudget

log = logging.getLogger(__name__)

W = TypeVar("W", bound=StreamWindow)

FINAL_LOSS_UPDATES = 10
"""``final_loss`` of a module is the mean of its losses over its last this-many updates."""

RECENT_STEPS = 4096
"""Live windows whose learning seconds ``RunTally.step_seconds_median`` is taken over (the last ones)."""

READ_TIMEOUT_SECONDS = 0.2
"""How long one read waits for a window before the loop looks at :meth:`Session.stop` again."""


@dataclass(frozen=True)
class Backlog:
    """What waits in a stream behind the window just read (what the schedules go by).

    Attributes:
        fill_ratio: unread backlog over the buffer's capacity, 0..1.
        windows_ready: complete windows waiting to be read.
        windows_dropped: windows the stream has lost so far because the learner fell behind.
        next_window_seconds: wall seconds until the next window is complete (0 when one is waiting;
            ``None`` when the stream has ended or is not paced).
    """

    fill_ratio: float = 0.0
    windows_ready: int = 0
    windows_dropped: int = 0
    next_window_seconds: float | None = None


class WindowStream(Protocol[W]):
    """Where a session's windows come from: a source, cut into windows.

    Attributes:
        paced: the stream runs at its own pace (a device, a replay at ``--speed`` N): time the
            learner spends is time the stream moves on (the schedules only act on a paced stream).
        ended: why no more windows come (``end_of_stream``, ``duration``, ``source_error``);
            ``None`` while they may.
        error: the source's error, for ``source_error``.
    """

    paced: bool
    ended: str | None
    error: str | None

    def open(self) -> None:
        """Starts the source (a feeder thread, a device). Raises what the source raises."""

    def read(self, timeout: float) -> W | None:
        """The next window, waiting at most ``timeout`` seconds; ``None`` when none is complete yet
        or the stream has ended (then :attr:`ended` is set)."""

    def backlog(self) -> Backlog:
        """What waits behind the window just read."""

    def where(self, window: W) -> str:
        """The window's place in the stream, for people (``"12.80 s"``, ``"frame 400"``)."""

    def close(self) -> None:
        """Stops the source and releases it. Idempotent."""


class ReplayStore(Protocol[W]):
    """Windows of the past to learn from again (:class:`online_gim.streams.replay.ReplayStore` for audio)."""

    def add(self, window: W) -> None: ...

    def sample(self) -> W: ...


@dataclass
class Replay(Generic[W]):
    """What a session replays (``store``) and when (``schedule``)."""

    store: ReplayStore[W]
    schedule: ReplaySchedule


@dataclass
class RunTally:
    """What a session did, whatever its stream (the kinds' summaries are made of it).

    Counts are in windows, times in seconds. ``final_loss`` maps each module to the mean of its loss
    over its last :data:`FINAL_LOSS_UPDATES` updates (``None`` if it never updated);
    ``module_updates_skipped_fraction`` is the share of module updates the schedules left out;
    ``probes`` is the newest readout of the learner's online probes (``None`` without probes);
    ``recent_step_seconds`` holds the learning seconds of the last :data:`RECENT_STEPS` live
    windows (for a median that one stalled window does not move).
    """

    stop_reason: str = "running"
    error: str | None = None
    windows_processed: int = 0
    windows_skipped_nonfinite: int = 0
    windows_skipped_by_reason: dict[str, int] = field(default_factory=dict)
    wall_seconds: float = 0.0
    compute_seconds: float = 0.0
    model_step: int = 0
    replayed_windows: int = 0
    replay_compute_seconds: float = 0.0
    module_updates_skipped_fraction: float = 0.0
    final_loss: dict[str, float | None] = field(default_factory=dict)
    probes: ProbeReadout | None = None
    recent_step_seconds: deque[float] = field(default_factory=lambda: deque(maxlen=RECENT_STEPS))

    @property
    def step_seconds_median(self) -> float | None:
        """Median learning seconds of a live window over the last :data:`RECENT_STEPS` (``None``
        before the first)."""
        return statistics.median(self.recent_step_seconds) if self.recent_step_seconds else None


class Session(Generic[W]):
    """Runs a window stream through a learner until the stream ends or it is told to stop.

    Parameters:
        stream: where the windows come from.
        learner: the learner.
        max_windows: stop after this many windows.
        observers: called after every live step, in order; closed at the end.
        budget: chooses the modules each window updates (only on a paced stream); ``None``: the
            learner's own schedule.
        replay: replayed updates after each live window; ``None``: none.

    Attributes:
        tally: the running :class:`RunTally` (complete after :meth:`run`).
    """

    def __init__(
        self,
        stream: WindowStream[W],
        learner: StreamLearner[W],
        *,
        max_windows: int | None = None,
        observers: Sequence[StepObserver[W]] = (),
        budget: ModuleBudget | None = None,
        replay: Replay[W] | None = None,
    ) -> None:
        if max_windows is not None and max_windows < 1:
            raise ValueError(f"max_windows must be at least 1, got {max_windows}")
        self.stream = stream
        self.learner = learner
        self.max_windows = max_windows
        self.observers: list[StepObserver[W]] = list(observers)
        self.budget = budget
        self.replay = replay
        self.tally = RunTally()
        self._stop = threading.Event()
        self._stop_reason: str | None = None
        self._losses = [deque(maxlen=FINAL_LOSS_UPDATES) for _ in range(learner.num_modules)]
        self._updates_done = 0
        self._update_slots = 0

    def add_observer(self, observer: StepObserver[W]) -> None:
        """Adds an observer (before :meth:`run`)."""
        self.observers.append(observer)

    def stop(self, reason: str = "stopped") -> None:
        """Asks the loop to stop after the current step. Safe from signal handlers and other threads."""
        if self._stop_reason is None:
            self._stop_reason = reason
        self._stop.set()

    @property
    def stopping(self) -> bool:
        return self._stop.is_set()

    def run(self) -> RunTally:
        """Runs until the stream ends or :meth:`stop`; returns the complete tally.

        Raises:
            whatever the stream's ``open`` raises (the microphone's ``MicrophoneUnavailable``)
            before anything ran; errors of the learner or an observer (bugs) after the clean-up.
        """
        started = time.monotonic()
        reason = "stopped"
        try:
            self.stream.open()
            reason = self._loop()
        finally:
            self._finish(reason, started)
        return self.tally

    def _loop(self) -> str:
        stream = self.stream
        while not self._stop.is_set():
            window = stream.read(READ_TIMEOUT_SECONDS)
            if window is None:
                if stream.ended is not None:
                    return self._ended()
                continue
            self._step(window)
            if stream.ended is not None:  # that was the stream's last window
                return self._ended()
            if self.max_windows is not None and self.tally.windows_processed >= self.max_windows:
                return "max_windows"
        return self._stop_reason or "stopped"

    def _ended(self) -> str:
        """The stop reason once the stream has ended: a stop asked for meanwhile wins over the end
        (the stream of ``--source av``'s video learner ends because the audio one was stopped), a
        source error over both."""
        self.tally.error = self.stream.error
        if self._stop.is_set() and self.stream.ended != "source_error":
            return self._stop_reason or "stopped"
        return self.stream.ended

    def _step(self, window: W) -> None:
        modules = None
        if self.budget is not None:
            backlog = self.stream.backlog()
            modules = self.budget.choose(
                fill_ratio=backlog.fill_ratio, windows_ready=backlog.windows_ready, windows_dropped=backlog.windows_dropped
            )
        report = self.learner.step(window, modules=modules)
        self._account(window, report)
        for observer in self.observers:
            observer.on_step(window, report)
        if self.replay is not None and not report.skipped_nonfinite:
            self._replay(window, report, keeping_up=modules is None or len(modules) == self.learner.num_modules)

    def _replay(self, window: W, report: StepReport, *, keeping_up: bool) -> None:
        """Learns again from stored windows while the :class:`ReplaySchedule` allows (module docstring)."""
        store, schedule = self.replay.store, self.replay.schedule
        store.add(window)
        schedule.record(report.seconds)
        schedule.earn()
        while not self._stop.is_set() and schedule.allows(next_window_seconds=self._next_window_seconds(), keeping_up=keeping_up):
            replayed = self.learner.step(store.sample(), replay=True)
            schedule.spend()
            schedule.record(replayed.seconds)
            self.tally.replayed_windows += 1
            self.tally.replay_compute_seconds += replayed.seconds

    def _next_window_seconds(self) -> float | None:
        """Wall seconds until the next live window is complete (0 if one is waiting; ``None`` after
        the end of the stream or without pacing)."""
        return self.stream.backlog().next_window_seconds

    def _account(self, window: W, report: StepReport) -> None:
        tally = self.tally
        tally.windows_processed += 1
        tally.compute_seconds += report.seconds
        tally.recent_step_seconds.append(report.seconds)
        tally.model_step = report.updates
        if report.skipped_nonfinite:
            tally.windows_skipped_nonfinite += 1
            tally_skip(tally.windows_skipped_by_reason, report, self.stream.where(window))
            return
        if report.probes is not None:
            tally.probes = report.probes
        self._update_slots += len(report.modules)
        for module in report.modules:
            if module.updated:
                self._updates_done += 1
                if math.isfinite(module.loss):
                    self._losses[module.module].append(module.loss)

    def _finish(self, reason: str, started: float) -> None:
        self.stream.close()
        tally = self.tally
        tally.stop_reason = reason
        tally.wall_seconds = time.monotonic() - started
        tally.module_updates_skipped_fraction = 1.0 - self._updates_done / self._update_slots if self._update_slots else 0.0
        tally.final_loss = {
            str(index): (sum(losses) / len(losses) if losses else None) for index, losses in enumerate(self._losses)
        }
        self._finished()
        for observer in self.observers:
            observer.close()

    def _finished(self) -> None:
        """After the stream closed and the tally is complete, before the observers close: a kind of
        session writes its summary here."""
