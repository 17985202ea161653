"""The bridge between the learner's loop and the side service: :class:`LiveBoard`.

The listen loop calls :meth:`LiveBoard.on_step` after every learner step, on the learner's
thread. It is cheap: it updates metric values, builds one immutable :class:`BoardSnapshot` and
swaps it in, hands a few sampled frames to the drift monitor's queue (never waits on it), and
notifies stream listeners. Everything heavy (MMD, spectra, weight drift) runs on the drift
monitor's own thread, rate-limited and bounded; everything HTTP runs on the server's thread and
reads snapshots only.

Usage (what ``online-gim listen`` does)::

    board = LiveBoard(source="synth", config=config.model_dump(), phone_names=PHONES)
    board.attach_learner(learner)          # optional: probes, FAISS neighbours, weight drift
    board.attach_buffer(buffer)            # optional: ring-buffer fill ratio
    board.attach_checkpointer(checkpointer)  # optional (--state): checkpoint metrics
    service = serve_in_thread(board, "127.0.0.1", 8000, token=None)   # services.http
    board.set_source_state(open=True)
    for window in buffer:
        report = learner.step(window)
        board.on_step(window, report, buffer.counters)
    board.set_source_state(open=False)
    service.stop(); board.close()

A video learner beside the audio one (``--source av``) publishes through :meth:`LiveBoard.on_video_step`
(a :data:`~services.video_session.VideoObserver`) after :meth:`LiveBoard.attach_video`: its newest
window becomes a :class:`VideoSnapshot` (``/v1/embeddings/latest?stream=video``) and its modules get
the ``online_gim_video_*`` metrics.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import random
import threading
import time
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

import torch

from online_gim.report import ModuleReport, StepReport
from services import learner_view
from services.api_models import finite_or_none
from services.drift_monitor import DriftConfig, DriftMonitor, DriftReading
from services.metrics import ServiceMetrics
from services.snapshot import BoardSnapshot, ProjectionSample, VideoSnapshot
from streams.counters import StreamCounters
from streams.window import SAMPLE_RATE, UNKNOWN_LABEL, AudioWindow

if TYPE_CHECKING:
    from streams.video_window import VideoWindow

log = logging.getLogger(__name__)

Listener = Callable[[BoardSnapshot | None], None]
"""Called on the learner's thread with every new snapshot, and with ``None`` when the board closes."""


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
    ) -> None:
        self.source = source
        self.config = dict(config or {})
        self.phone_names = tuple(phone_names) if phone_names is not None else None
        self.stall_seconds = stall_seconds
        self.metrics = metrics or ServiceMetrics()
        self.started_at = time.time()
        self._learner: Any = None
        self._buffer: Any = None
        self._checkpointer: Any = None
        self._drift_config = drift or DriftConfig()
        self._drift_reading: DriftReading | None = None
        self._drift = DriftMonitor(self._drift_config, self._on_drift)
        self._history: deque[dict[str, Any]] = deque(maxlen=history)
        self._projection: dict[int, deque[ProjectionSample]] = {}
        self._projection_points = projection_points
        self._listeners: tuple[Listener, ...] = ()
        self._listeners_lock = threading.Lock()
        self._snapshot: BoardSnapshot | None = None
        self._seq = 0
        self._skipped = 0
        self._scored: dict[int, ModuleReport] = {}
        self._rtf_mean = math.nan
        self._rng = random.Random(0)
        self._source_open: bool | None = None
        self._closed = False
        self._errors = 0
        self.video_source: str | None = None
        self._video: VideoSnapshot | None = None
        self._video_seq = 0

    # -- set-up -----------------------------------------------------------------------------

    def attach_learner(self, learner: Any) -> None:
        """Give read access to the learner (probes, memories, weights; see :mod:`services.learner_view`)."""
        self._learner = learner

    def attach_video(self, source_id: str) -> None:
        """Tell the board that a video learner publishes here too (:meth:`on_video_step`)."""
        self.video_source = source_id

    def phone_name(self, index: int) -> str:
        """The name of phone class ``index`` (``"#index"`` when the board has no names for it)."""
        names = self.phone_names
        return names[index] if names is not None and 0 <= index < len(names) else f"#{index}"

    @property
    def learner(self) -> Any:
        return self._learner

    def attach_buffer(self, buffer: Any) -> None:
        """Read the ring buffer's ``fill_ratio`` (0..1) after every step."""
        self._buffer = buffer

    def attach_checkpointer(self, checkpointer: Any) -> None:
        """Export the checkpoint metrics of a run with a state directory: read the
        :class:`~online_gim.state.checkpointer.PeriodicCheckpointer`'s ``written``, ``failed`` and
        ``last_saved_at`` after every step."""
        self._checkpointer = checkpointer
        self.metrics.enable_checkpoints()

    def set_source_state(self, *, open: bool) -> None:
        """Tell the board whether the source is open (``/readyz``); after the first step it is
        taken as open until told otherwise or closed."""
        self._source_open = open

    def add_listener(self, listener: Listener) -> None:
        """Call ``listener(snapshot)`` on the learner's thread after every step; it must be cheap
        and must not block (hand the snapshot to another thread)."""
        with self._listeners_lock:
            self._listeners = self._listeners + (listener,)

    def remove_listener(self, listener: Listener) -> None:
        with self._listeners_lock:
            self._listeners = tuple(fn for fn in self._listeners if fn is not listener)

    # -- the learner's thread ---------------------------------------------------------------

    def on_step(self, window: AudioWindow, report: StepReport, counters: StreamCounters) -> None:
        """Publish one learner step. Never raises: a failure here is logged, not passed on to
        the learner's loop."""
        try:
            snapshot = self._publish(window, report, counters)
        except Exception:
            self._errors += 1
            if self._errors <= 3:
                log.exception("live board: could not publish step %s", getattr(report, "step", "?"))
            return
        for listener in self._listeners:
            try:
                listener(snapshot)
            except Exception:
                log.exception("live board: a listener failed")

    def _publish(self, window: AudioWindow, report: StepReport, counters: StreamCounters) -> BoardSnapshot:
        now = time.time()
        rtf = report.real_time_factor
        if math.isfinite(rtf):
            self._rtf_mean = rtf if not math.isfinite(self._rtf_mean) else 0.9 * self._rtf_mean + 0.1 * rtf
        window_end = window.start_sample + int(window.samples.shape[-1])
        lag = max(0.0, counters.source_seconds - window_end / SAMPLE_RATE)
        fill = _fill_ratio(self._buffer)
        self.metrics.observe_step(report, counters, fill_ratio=fill, lag_seconds=lag)
        checkpointer = self._checkpointer
        if checkpointer is not None:
            self.metrics.observe_checkpoints(
                written=checkpointer.written, failed=checkpointer.failed, last_saved_at=checkpointer.last_saved_at
            )

        learner = self._learner
        probes = learner_view.probe_readout(learner, report)
        if probes is not None:
            self.metrics.observe_probes(probes)
        sizes = learner_view.memory_sizes(learner)
        if sizes:
            self.metrics.observe_memory_sizes(sizes)

        previous = self._snapshot
        have_embeddings = bool(report.embeddings) and not report.skipped_nonfinite
        if have_embeddings:
            embeddings = tuple(report.embeddings)
            emb_start, emb_samples, emb_updates = window.start_sample, int(window.samples.shape[-1]), report.updates
            phones = window.phones
            speakers = tuple(window.frame_speakers())
        elif previous is not None:
            embeddings, phones, speakers = previous.embeddings, previous.phones, previous.frame_speakers
            emb_start, emb_samples, emb_updates = (
                previous.embedding_start, previous.embedding_samples, previous.embedding_updates,
            )
        else:
            embeddings, phones, speakers = (), None, ()
            emb_start, emb_samples, emb_updates = window.start_sample, int(window.samples.shape[-1]), report.updates

        # Schedules update some modules only: show each module's newest scored loss, not a gap.
        for mod in report.modules:
            if math.isfinite(mod.loss):
                self._scored[mod.module] = mod
        modules = tuple(
            dataclasses.replace(self._scored[m.module], updated=m.updated) if m.module in self._scored else m
            for m in report.modules
        )
        self._seq += 1
        self._skipped += int(report.skipped_nonfinite)
        snapshot = BoardSnapshot(
            seq=self._seq,
            wall_time=now,
            monotonic=time.monotonic(),
            source_id=window.source_id,
            step=report.step,
            updates=report.updates,
            window_start=window.start_sample,
            window_samples=int(window.samples.shape[-1]),
            skipped=report.skipped_nonfinite,
            real_time_factor=rtf,
            real_time_factor_mean=self._rtf_mean,
            modules=modules,
            embeddings=embeddings,
            embedding_start=emb_start,
            embedding_samples=emb_samples,
            embedding_updates=emb_updates,
            phones=phones,
            frame_speakers=speakers,
            probes=probes,
            counters=counters.to_dict(),
            fill_ratio=fill,
            lag_seconds=lag,
            drift=self._drift_reading,
            memory_sizes=sizes,
            windows_skipped=self._skipped,
        )
        if have_embeddings:
            self._sample_frames(snapshot, window)
        if learner is not None and self._drift.weights_due():
            weights = learner_view.module_weights(learner)
            if weights:
                self._drift.submit_weights(weights)
        point = _history_point(snapshot)
        self._history.append(point)
        snapshot = _with(
            snapshot,
            history=tuple(self._history),
            projection=tuple(tuple(self._projection.get(m, ())) for m in range(len(embeddings))),
            event=_event(snapshot, point, self.phone_name),
        )
        self._snapshot = snapshot
        return snapshot

    def on_video_step(self, window: VideoWindow, report: StepReport) -> None:
        """Publish one step of the video learner (called on its thread). Never raises."""
        try:
            self.metrics.observe_video_step(report, window.new_frames)
            previous = self._video
            if report.embeddings and not report.skipped_nonfinite:
                embedded = (tuple(report.embeddings), window.start_frame, report.updates)
            elif previous is not None:  # keep showing the newest window that was encoded
                embedded = (previous.embeddings, previous.embedding_start, previous.embedding_updates)
            else:
                embedded = ((), window.start_frame, report.updates)
            self._video_seq += 1
            self._video = VideoSnapshot(
                seq=self._video_seq,
                updates=report.updates,
                start_frame=window.start_frame,
                frames=window.num_frames,
                frame_rate=window.frame_rate,
                skipped=report.skipped_nonfinite,
                real_time_factor=report.real_time_factor,
                modules=tuple(report.modules),
                embeddings=embedded[0],
                embedding_start=embedded[1],
                embedding_updates=embedded[2],
            )
        except Exception:
            self._errors += 1
            if self._errors <= 3:
                log.exception("live board: could not publish video step %s", getattr(report, "step", "?"))

    def _sample_frames(self, snapshot: BoardSnapshot, window: AudioWindow) -> None:
        """A few evenly spaced frames of every module go to the drift monitor and the PCA rings."""
        k = self._drift_config.frames_per_window
        sampled: dict[int, torch.Tensor] = {}
        for module, emb in enumerate(snapshot.embeddings):
            frames = int(emb.shape[0])
            if frames == 0 or emb.dim() != 2:
                continue
            count = min(k, frames)
            offset = self._rng.randrange(max(1, frames // count))
            index = torch.arange(count) * (frames // count) + offset
            rows = emb.index_select(0, index.to(emb.device)).detach().to("cpu", torch.float32, copy=True)
            sampled[module] = rows
            ring = self._projection.setdefault(module, deque(maxlen=self._projection_points))
            for row, t in zip(rows, index.tolist()):
                label = snapshot.label_frame(module, t)
                speaker = snapshot.frame_speakers[label] if label < len(snapshot.frame_speakers) else None
                phone = None
                if snapshot.phones is not None and label < len(snapshot.phones):
                    phone = int(snapshot.phones[label])
                    phone = None if phone == UNKNOWN_LABEL else phone
                ring.append(ProjectionSample(
                    vector=row,
                    stream_seconds=snapshot.frame_seconds(module, range(t, t + 1))[0],
                    speaker=speaker,
                    phone=phone,
                ))
        self._drift.submit_window(snapshot.stream_seconds, window.samples.detach().to("cpu", torch.float32, copy=True), sampled)

    def _on_drift(self, reading: DriftReading) -> None:  # the drift monitor's thread
        self._drift_reading = reading
        self.metrics.observe_drift(reading)

    def close(self) -> None:
        """Stop the drift monitor and end the event streams (``/readyz`` then fails)."""
        if self._closed:
            return
        self._closed = True
        self._source_open = False
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
        return self._video

    @property
    def closed(self) -> bool:
        return self._closed

    @property
    def drift_reading(self) -> DriftReading | None:
        """The newest drift reading (published by the drift monitor's thread), or ``None``."""
        return self._drift_reading

    @property
    def drift_config(self) -> DriftConfig:
        return self._drift_config

    def readiness(self) -> tuple[bool, str]:
        """``(ready, reason)``: ready when the source is open and the learner stepped recently."""
        if self._closed:
            return False, "the board is closed (the stream has ended)"
        if self._source_open is False:
            return False, "the source is not open"
        snap = self._snapshot
        if snap is None:
            return False, "no window has been processed yet"
        idle = time.monotonic() - snap.monotonic
        if idle > self.stall_seconds:
            return False, f"no window processed for {idle:.1f} s"
        return True, "source open and learner stepping"

    def flush_drift(self) -> None:
        """Wait for the drift monitor to process what it was given and publish a reading (tests)."""
        self._drift.flush()


def _fill_ratio(buffer: Any) -> float | None:
    if buffer is None:
        return None
    value = getattr(buffer, "fill_ratio", None)
    try:
        return float(value) if value is not None else None
    except (TypeError, ValueError):
        return None


def _history_point(s: BoardSnapshot) -> dict[str, Any]:
    drift = s.drift
    return {
        "seq": s.seq,
        "step": s.step,
        "updates": s.updates,
        "t": round(s.stream_seconds, 3),
        "wall": round(s.wall_time, 3),
        "rtf": finite_or_none(s.real_time_factor),
        "loss": [finite_or_none(m.loss) for m in s.modules],
        "loss_ratio": [finite_or_none(m.loss_ratio) for m in s.modules],
        "phone_acc": finite_or_none(s.probes.phone_accuracy) if s.probes else None,
        "speaker_acc": finite_or_none(s.probes.speaker_accuracy) if s.probes else None,
        "drift_cos": _per_module(drift.embedding_cosine, len(s.modules)) if drift else None,
        "drift_mmd": _per_module(drift.embedding_mmd, len(s.modules)) if drift else None,
        "input_level_db": finite_or_none(drift.input_level_db) if drift else None,
    }


def _per_module(values: dict[int, float], modules: int) -> list[float | None]:
    return [finite_or_none(values.get(m)) for m in range(max(modules, max(values, default=-1) + 1))]


def _event(s: BoardSnapshot, point: dict[str, Any], phone_name: Callable[[int], str]) -> dict[str, Any]:
    """The compact per-window event of ``/v1/stream``."""
    event = dict(point)
    event["skipped"] = s.skipped
    event["windows_dropped"] = s.counters.get("windows_dropped", 0)
    event["samples_dropped"] = s.counters.get("samples_dropped", 0)
    if s.probes is not None:
        top = s.probes.phone_top.tolist()
        collapsed = [p for i, p in enumerate(top) if i == 0 or p != top[i - 1]]
        event["phones"] = [phone_name(p) for p in collapsed]
        event["speakers"] = [[str(spk), round(float(p), 4) if math.isfinite(p) else None] for spk, p in s.probes.speaker_top[:3]]
    return event


def _with(snapshot: BoardSnapshot, **changes: Any) -> BoardSnapshot:
    return dataclasses.replace(snapshot, **changes)
