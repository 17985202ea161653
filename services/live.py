"""The bridge between the learner's loop and the side service: :class:`LiveBoard`, a step observer.

The session calls :meth:`LiveBoard.on_step` after every learner step, on the learner's thread. The
board hands the step to its parts, each with one job, and is cheap: it never waits on a reader or
on the drift monitor.

- the metrics (:class:`~online_gim.services.metrics.ServiceMetrics`, the Prometheus export);
- the snapshot and its history (:class:`~online_gim.services.snapshot_builder.SnapshotBuilder`): one
  immutable :class:`~online_gim.services.snapshot.BoardSnapshot` per step, swapped in (readers need no lock);
- the drift (:class:`~online_gim.services.drift_feed.DriftFeed`): sampled frames and weight copies to the drift
  monitor's own thread, the newest reading back;
- readiness (:class:`~online_gim.services.readiness.Readiness`, ``/readyz``);
- the stream listeners (``/v1/stream``), called with every new snapshot.

What the board reads besides the step report it reads through typed views: the learner's
:class:`~online_gim.run.contract.LearnerView` (probes, memories, weights), the stream's
:class:`StreamStatus` (counters, buffer fill) and the checkpointer's :class:`CheckpointStatus`.
Everything HTTP runs on the server's thread and reads snapshots only.

Usage (what ``online-gim listen`` does)::

    board = LiveBoard(source="synth", config=config.model_dump(), phone_names=PHONES)
    board.attach_learner(learner)          # optional: probes, FAISS neighbours, weight drift
    board.attach_stream(session.stream)    # optional: stream counters and ring-buffer fill ratio
    board.attach_checkpointer(checkpointer)  # optional (--state): checkpoint metrics
    service = serve_in_thread(board, "127.0.0.1", 8000, token=None)   # online_gim.services.http
    session.add_observer(board)
    board.set_source_state(open=True)
    session.run()                          # closes the board at the end
    service.stop()

A video learner beside the audio one (``--source av``) publishes through the
:class:`~online_gim.services.video_board.VideoBoard` that :meth:`LiveBoard.attach_video` returns (an observer
of the video session).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Protocol

from online_gim.report import ProbeReadout, StepReport
from online_gim.run.contract import LearnerView
from online_gim.services.drift_feed import DriftFeed
from online_gim.services.drift_monitor import DriftConfig, DriftReading
from online_gim.services.metrics import ServiceMetrics
from online_gim.services.readiness import Readiness
from online_gim.services.snapshot import BoardSnapshot, VideoSnapshot
from online_gim.services.snapshot_builder import SnapshotBuilder
from online_gim.services.video_board import VideoBoard
from online_gim.streams.counters import StreamCounters
from online_gim.streams.window import SAMPLE_RATE, AudioWindow

log = logging.getLogger(__name__)

Listener = Callable[[BoardSnapshot | None], None]
"""Called on the learner's thread with every new snapshot, and with ``None`` when the board closes."""


class StreamStatus(Protocol):
    """What the board reads of the stream after every step (a
    :class:`~online_gim.run.audio.AudioWindows`)."""

    @property
    def counters(self) -> StreamCounters:
        """The stream's running totals."""

    @property
    def fill_ratio(self) -> float | None:
        """The ring buffer's unread backlog over its capacity (``None``: no buffer)."""


class CheckpointStatus(Protocol):
    """What the board reads of a run's checkpointer (:class:`~online_gim.run.state.Checkpointer`)."""

    written: int
    failed: int
    last_saved_at: float | None


def step_probes(report: StepReport, learner: LearnerView | None) -> ProbeReadout | None:
    """The probes' readout the board shows for a step: the report's, else the learner's newest (a
    skipped or replayed window reads nothing new); ``None`` without probes."""
    if report.probes is not None or learner is None:
        return report.probes
    return learner.probe_readout()


def memory_sizes(learner: LearnerView | None) -> dict[int, int]:
    """``{module: stored vectors}`` of the learner's memories (empty without a learner)."""
    return {module: len(memory) for module, memory in enumerate(learner.memories)} if learner is not None else {}


class LiveBoard:
    """Publishes what the learner does, window by window, for the HTTP service and the metrics.

    Parameters:
        source: a short description of the stream (``"synth"``, ``"mic:default"``, ...).
        config: a JSON-able summary of the configuration, shown by ``/v1/status``.
        phone_names: names of the phone classes (index = class), when the source has them.
        drift: the drift monitor's schedule.
        history: windows kept for the dashboard's plots (``/v1/history``).
        projection_points: frames kept per module for the PCA scatter (``/v1/projection``).
        stall_seconds: ``/readyz`` fails when no window was processed for this long.
        metrics: the metrics to update (a fresh :class:`ServiceMetrics` by default).
        clock: monotonic seconds for readiness (tests pass a fake one).
    """

    def __init__(
        self,
        *,
        source: str = "stream",
        config: Mapping[str, Any] | None = None,
        phone_names: Sequence[str] | None = None,
        drift: DriftConfig | None = None,
        history: int = 600,
        projection_points: int = 480,
        stall_seconds: float = 15.0,
        metrics: ServiceMetrics | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.source = source
        self.config = dict(config or {})
        self.phone_names = tuple(phone_names) if phone_names is not None else None
        self.metrics = metrics or ServiceMetrics()
        self.started_at = time.time()
        self.learner: LearnerView | None = None
        self.video: VideoBoard | None = None
        self._stream: StreamStatus | None = None
        self._checkpointer: CheckpointStatus | None = None
        self._readiness = Readiness(stall_seconds, clock=clock)
        self._drift = DriftFeed(drift or DriftConfig(), self.metrics)
        self._builder = SnapshotBuilder(
            history=history, projection_points=projection_points,
            frames_per_window=self._drift.config.frames_per_window, phone_name=self.phone_name,
        )
        self._listeners: tuple[Listener, ...] = ()
        self._listeners_lock = threading.Lock()
        self._snapshot: BoardSnapshot | None = None
        self._errors = 0

    # -- set-up -----------------------------------------------------------------------------

    def attach_learner(self, learner: LearnerView) -> None:
        """Read the learner's probes, memories and weights (never changing them)."""
        self.learner = learner

    def attach_stream(self, stream: StreamStatus) -> None:
        """Read the stream's counters and buffer fill ratio after every step."""
        self._stream = stream

    def attach_checkpointer(self, checkpointer: CheckpointStatus) -> None:
        """Export the checkpoint metrics of a run with a state directory: read the checkpointer's
        ``written``, ``failed`` and ``last_saved_at`` after every step."""
        self._checkpointer = checkpointer
        self.metrics.enable_checkpoints()

    def attach_video(self, source_id: str) -> VideoBoard:
        """A video learner publishes here too: returns the observer to add to its session."""
        self.video = VideoBoard(source_id, self.metrics)
        return self.video

    def phone_name(self, index: int) -> str:
        """The name of phone class ``index`` (``"#index"`` when the board has no names for it)."""
        names = self.phone_names
        return names[index] if names is not None and 0 <= index < len(names) else f"#{index}"

    def set_source_state(self, *, open: bool) -> None:
        """Tell the board whether the source is open (``/readyz``); after the first step it is
        taken as open until told otherwise or closed."""
        self._readiness.source_state(open=open)

    def add_listener(self, listener: Listener) -> None:
        """Call ``listener(snapshot)`` on the learner's thread after every step; it must be cheap
        and must not block (hand the snapshot to another thread)."""
        with self._listeners_lock:
            self._listeners = self._listeners + (listener,)

    def remove_listener(self, listener: Listener) -> None:
        with self._listeners_lock:
            self._listeners = tuple(fn for fn in self._listeners if fn is not listener)

    # -- the learner's thread ---------------------------------------------------------------

    def on_step(self, window: AudioWindow, report: StepReport) -> None:
        """Publish one learner step. Never raises: a failure here is logged, not passed on to
        the learner's loop."""
        try:
            snapshot = self._publish(window, report)
        except Exception:
            self._errors += 1
            if self._errors <= 3:
                log.exception("live board: could not publish step %s", report.step)
            return
        for listener in self._listeners:
            try:
                listener(snapshot)
            except Exception:
                log.exception("live board: a listener failed")

    def _publish(self, window: AudioWindow, report: StepReport) -> BoardSnapshot:
        stream, learner = self._stream, self.learner
        counters = stream.counters if stream is not None else StreamCounters()
        fill = stream.fill_ratio if stream is not None else None
        lag = max(0.0, counters.source_seconds - (window.start_sample + window.length) / SAMPLE_RATE)
        self.metrics.observe_step(report, counters, fill_ratio=fill, lag_seconds=lag)
        checkpointer = self._checkpointer
        if checkpointer is not None:
            self.metrics.observe_checkpoints(
                written=checkpointer.written, failed=checkpointer.failed, last_saved_at=checkpointer.last_saved_at
            )
        probes = step_probes(report, learner)
        if probes is not None:
            self.metrics.observe_probes(probes)
        sizes = memory_sizes(learner)
        if sizes:
            self.metrics.observe_memory_sizes(sizes)
        snapshot, sampled = self._builder.build(
            window, report, counters, fill_ratio=fill, lag_seconds=lag, probes=probes, memory_sizes=sizes,
            drift=self._drift.reading,
        )
        self._drift.observe(window, snapshot.stream_seconds, sampled, learner)
        self._readiness.stepped()
        self._snapshot = snapshot
        return snapshot

    def close(self) -> None:
        """Stop the drift monitor and end the event streams (``/readyz`` then fails)."""
        if self._readiness.closed:
            return
        self._readiness.close()
        self._drift.close()
        for listener in self._listeners:
            try:
                listener(None)
            except Exception:
                log.exception("live board: a listener failed on close")

    # -- any thread (read-only) ---------------------------------------------------------------

    @property
    def snapshot(self) -> BoardSnapshot | None:
        """The newest snapshot, or ``None`` before the first step."""
        return self._snapshot

    @property
    def video_snapshot(self) -> VideoSnapshot | None:
        """The video learner's newest window, or ``None`` (no video learner, or no window yet)."""
        return self.video.snapshot if self.video is not None else None

    @property
    def closed(self) -> bool:
        return self._readiness.closed

    @property
    def drift_reading(self) -> DriftReading | None:
        """The newest drift reading (published by the drift monitor's thread), or ``None``."""
        return self._drift.reading

    @property
    def drift_config(self) -> DriftConfig:
        return self._drift.config

    def readiness(self) -> tuple[bool, str]:
        """``(ready, reason)``: ready when the source is open and the learner stepped recently."""
        return self._readiness.check()

    def flush_drift(self) -> None:
        """Wait for the drift monitor to process what it was given and publish a reading (tests)."""
        self._drift.flush()
