"""The listen loop: source -> ring buffer -> learner, one step per window, observers after each.

:class:`ListenSession` opens a source, feeds a :class:`~streams.ring_buffer.RingBuffer` from it
(a :class:`~streams.feeder.Feeder` thread for a pull source, the device callback for the
microphone), reads windows in the calling thread, calls ``learner.step(window, modules=...)`` and
then every :class:`StepObserver` (``on_step(window, report, counters)``): the live status line, the
HTTP service's :class:`~services.live.LiveBoard`, checkpointing. It keeps the counters of the
:class:`ListenSummary` and stops on the first of: the end of a non-looping source, ``max_seconds``
of source audio, ``max_windows`` windows, :meth:`ListenSession.stop` (Ctrl-C, SIGTERM, another
thread), or a source error. Every stop is clean: the producer is stopped, the source closed, the
observers closed, and the summary returned.

``auto_schedule`` (``--schedule auto``) keeps a live stream in real time: :class:`ModuleBudget`
watches the ring buffer's backlog and, when the learner falls behind, updates fewer modules per
window (round-robin over the modules, all of them still run forward), and goes back to all modules
when it has caught up; the share of module updates skipped is reported. A replay at maximum speed
waits for the learner instead of dropping audio, so there the budget stays at all modules.

``replay`` (``--replay R``): after each live window the learner may learn again from windows of the
past kept in a :class:`~streams.replay.ReplayStore`, up to ``R`` per live window and only in time
the live stream leaves idle (:class:`~services.replay_schedule.ReplaySchedule`); replayed steps are
counted in the summary (``replayed_windows``, ``compute_rtf``), not shown to the observers.

Usage::

    learner = OnlineLearner(LearnerConfig())
    session = ListenSession(LibriSpeechReplay(root, speed=None), learner, max_windows=100)
    session.add_observer(board)             # anything with on_step(window, report, counters) and close()
    summary = session.run()                 # blocks; session.stop() from a signal handler ends it
    print(summary.to_dict())
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections import deque
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

from online_gim.report import StepReport, tally_skip
from streams.chunk import AudioChunk
from streams.counters import StreamCounters
from streams.feeder import Feeder
from services.replay_schedule import ReplaySchedule
from streams.replay import ReplayStore
from streams.replay_config import ReplayConfig
from streams.ring_buffer import RingBuffer, StreamError
from streams.sources.base import AudioSource
from streams.window import SAMPLE_RATE, AudioWindow

log = logging.getLogger(__name__)

FINAL_LOSS_UPDATES = 10
"""``final_loss`` of a module is the mean of its losses over its last this-many updates."""


@runtime_checkable
class StepObserver(Protocol):
    """Something that watches the loop: called on the learner's thread after every step.

    ``on_step`` must be cheap and must not block for long (the learner waits for it); hand heavy
    work to another thread. ``close`` is called once when the session ends.
    """

    def on_step(self, window: AudioWindow, report: StepReport, counters: StreamCounters) -> None: ...

    def close(self) -> None: ...


class PushSource(Protocol):
    """A source that pushes into the buffer from its own thread (the microphone's device callback)."""

    source_id: str

    def start(self, target: Any) -> Any: ...

    def close(self) -> None: ...


class Learner(Protocol):
    """What the loop needs from :class:`~online_gim.learner.OnlineLearner`."""

    num_modules: int

    def step(self, window: AudioWindow, modules: Sequence[int] | None = None, *, replay: bool = False) -> StepReport: ...


class AudioRecorder:
    """A :class:`StepObserver` that writes the audio the learner processed to a sound file.

    Each stream sample is written once (overlapping windows add only their new samples); audio the
    ring buffer dropped is missing from the file, not replaced by silence. The file is 16 kHz mono
    float (WAV, FLAC, ... by the name's extension, as ``soundfile`` writes it), flushed after every
    window so that it can be read while the session runs.

    Parameters:
        path: the file to write (replaced if it exists).
    """

    def __init__(self, path: str | Path) -> None:
        import soundfile

        self.path = Path(path)
        subtype = "FLOAT" if self.path.suffix.lower() in {".wav", ".w64", ".caf"} else None
        self._file = soundfile.SoundFile(self.path, "w", samplerate=SAMPLE_RATE, channels=1, subtype=subtype)
        self._written_until: int | None = None  # stream position after the last written sample
        self.samples_written = 0

    def on_step(self, window: AudioWindow, report: StepReport, counters: StreamCounters) -> None:
        start = window.start_sample
        skip = 0 if self._written_until is None else max(0, self._written_until - start)
        samples = window.samples[skip:].numpy()
        if samples.shape[0]:
            self._file.write(samples)
            self._file.flush()
            self.samples_written += samples.shape[0]
        self._written_until = start + window.samples.shape[0]

    def close(self) -> None:
        self._file.close()


class ModuleBudget:
    """``--schedule auto``: how many modules the next window updates, from the ring buffer's backlog.

    Additive increase, multiplicative decrease on the backlog, with a slow start: the budget starts
    at one module (the learner's first windows are its slowest: lazy initialisation) and grows by
    one per window while the learner keeps up. When audio was dropped since the
    previous window the budget falls to one module (the learner must catch up at once); when the
    buffer is at least ``high`` full it halves (drops are near); when complete windows pile up
    (more waiting than after the previous window, and at least two) it shrinks by one; when the
    learner has caught up (no complete window waiting) it grows by one, up to all modules. The
    modules to update are taken round-robin, so every module gets its share of updates.

    Parameters:
        num_modules: modules in the stack.
        high: buffer fill ratio (0..1) at which the budget halves.

    Examples:
        >>> budget = ModuleBudget(4)
        >>> [budget.choose(fill_ratio=0.1, windows_ready=0, windows_dropped=0) for _ in range(3)]  # keeping up
        [[0, 1], [0, 2, 3], [0, 1, 2, 3]]
        >>> budget.choose(fill_ratio=0.6, windows_ready=5, windows_dropped=0)   # falling behind: half
        [1, 2]
        >>> budget.choose(fill_ratio=0.2, windows_ready=0, windows_dropped=0)   # caught up: one more
        [0, 1, 3]
        >>> budget.choose(fill_ratio=0.1, windows_ready=0, windows_dropped=2)   # audio lost: one module
        [2]
    """

    def __init__(self, num_modules: int, *, high: float = 0.5) -> None:
        if num_modules < 1:
            raise ValueError("num_modules must be positive")
        if not 0 < high <= 1:
            raise ValueError(f"high must be in (0, 1], got {high}")
        self.num_modules = num_modules
        self.high = high
        self._reset()

    def _reset(self) -> None:
        self.budget = 1
        self._next = 0
        self._last_ready = 0
        self._last_dropped = 0

    def choose(self, *, fill_ratio: float, windows_ready: int, windows_dropped: int) -> list[int]:
        """The modules to update on the window just read, given the backlog left behind it and the
        stream's running count of dropped windows."""
        if windows_dropped > self._last_dropped:
            self.budget = 1
        elif fill_ratio >= self.high:
            self.budget = max(1, self.budget // 2)
        elif windows_ready >= 2 and windows_ready > self._last_ready:
            self.budget = max(1, self.budget - 1)
        elif windows_ready == 0:
            self.budget = min(self.num_modules, self.budget + 1)
        self._last_ready = windows_ready
        self._last_dropped = windows_dropped
        chosen = sorted((self._next + i) % self.num_modules for i in range(self.budget))
        self._next = (self._next + self.budget) % self.num_modules
        return chosen


class _StreamCap:
    """Ends the stream after ``max_samples`` samples: what a producer pushes beyond is cut off, and
    the buffer is closed (the consumer then reads the windows left and sees the end)."""

    def __init__(self, buffer: RingBuffer, max_samples: int) -> None:
        self.buffer = buffer
        self.counters = buffer.counters
        self.spec = buffer.spec
        self.remaining = max_samples

    @property
    def reached(self) -> bool:
        return self.remaining <= 0

    @property
    def closed(self) -> bool:
        return self.buffer.closed

    def push(self, chunk: AudioChunk) -> bool:
        if self.reached:
            return False
        if len(chunk) > self.remaining:
            chunk = chunk.slice(0, self.remaining)
        self.remaining -= len(chunk)
        pushed = self.buffer.push(chunk)
        if self.reached:
            self.buffer.close()
        return pushed

    def wait_for_space(self, num_samples: int, timeout: float | None = None) -> bool:
        return self.buffer.wait_for_space(num_samples, timeout)

    def close(self, error: BaseException | None = None) -> None:
        self.buffer.close(error=error)


@dataclass
class ListenSummary:
    """What a listen session did; :meth:`to_dict` is the ``--summary-json`` document.

    Counts are in windows and in samples at 16 kHz; times in seconds. ``real_time_factor`` is the
    learner's compute time per second of stream it advanced over (``windows_processed * hop``):
    below 1 it keeps up with a live source. ``replayed_windows``: replayed updates (``--replay``);
    ``replayed_per_window`` their number per live window; ``compute_rtf``: all compute, replays
    included, per second of stream. ``final_loss`` maps each module to the mean of its loss
    over its last 10 updates (``None`` if it never updated). ``probe_*_accuracy``: the online
    probes' running prequential accuracies after the last window (``None`` without probes or
    before any labelled window).
    """

    source: str
    schedule: str
    window: int
    hop: int
    stop_reason: str = "running"
    error: str | None = None
    windows_processed: int = 0
    windows_dropped: int = 0
    windows_skipped_nonfinite: int = 0
    windows_skipped_by_reason: dict[str, int] = field(default_factory=dict)
    samples_in: int = 0
    samples_windowed: int = 0
    samples_dropped: int = 0
    samples_remainder: int = 0
    overflows: int = 0
    files_skipped: int = 0
    seconds_of_audio: float = 0.0
    wall_seconds: float = 0.0
    compute_seconds: float = 0.0
    real_time_factor: float | None = None
    replayed_windows: int = 0
    replayed_per_window: float = 0.0
    replay_compute_seconds: float = 0.0
    compute_rtf: float | None = None
    model_step: int = 0
    module_updates_skipped_fraction: float = 0.0
    final_loss: dict[str, float | None] = field(default_factory=dict)
    probe_phone_accuracy: float | None = None
    probe_speaker_accuracy: float | None = None
    probe_speaker_frame_accuracy: float | None = None
    device: dict[str, Any] | None = None

    def to_dict(self) -> dict[str, Any]:
        """JSON-able (non-finite numbers become ``None``)."""
        return {key: _json_number(value) for key, value in asdict(self).items()}


def _json_number(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {key: _json_number(item) for key, item in value.items()}
    return value


class ListenSession:
    """Runs source -> ring buffer -> learner until the stream ends or it is told to stop.

    Parameters:
        source: a pull :class:`~streams.sources.base.AudioSource` (driven by a
            :class:`~streams.feeder.Feeder` at ``source.speed``; at ``None`` = max speed the feeder
            waits for the learner, losing nothing) or a push source with ``start(buffer)``
            (the microphone).
        learner: anything with ``step(window, modules=None) -> StepReport`` and ``num_modules``.
        window, hop: samples per window and between window starts (default: the learner's
            ``config.window``, and ``hop = window``).
        capacity: ring buffer size in samples (default 8 windows).
        auto_schedule: choose the modules per window with :class:`ModuleBudget` (live sources);
            otherwise every window goes to ``learner.step(window)`` and the learner's own schedule
            applies.
        max_seconds: end the stream after this many seconds of source audio.
        max_windows: stop after this many windows.
        observers: :class:`StepObserver` s, called after every step in order; closed at the end.
        schedule_name: how the schedule is shown in the summary (default ``auto`` or ``learner``).
        origin: stream position of the source's first sample (a resumed stream goes on where its
            checkpoint stopped, see :mod:`online_gim.state`); default 0.
        replay: replayed updates per live window and their store (module docstring); ``None`` or
            ratio 0: none. The learner's ``step`` must take ``replay=True``.
    """

    def __init__(
        self,
        source: AudioSource | PushSource,
        learner: Learner,
        *,
        window: int | None = None,
        hop: int | None = None,
        capacity: int | None = None,
        auto_schedule: bool = False,
        max_seconds: float | None = None,
        max_windows: int | None = None,
        observers: Sequence[StepObserver] = (),
        schedule_name: str | None = None,
        origin: int = 0,
        replay: ReplayConfig | None = None,
    ) -> None:
        config = getattr(learner, "config", None)
        window = window or getattr(config, "window", None)
        if not window:
            raise ValueError("window is required when the learner has no config.window")
        hop = hop or window
        if max_seconds is not None and not max_seconds > 0:
            raise ValueError(f"max_seconds must be positive, got {max_seconds}")
        if max_windows is not None and max_windows < 1:
            raise ValueError(f"max_windows must be at least 1, got {max_windows}")
        self.source = source
        self.learner = learner
        self.buffer = RingBuffer(capacity, window=window, hop=hop, source_id=source.source_id, origin=origin)
        self.max_windows = max_windows
        self.observers: list[StepObserver] = list(observers)
        self._pull = isinstance(source, AudioSource)
        self._cap = _StreamCap(self.buffer, round(max_seconds * SAMPLE_RATE)) if max_seconds is not None else None
        self._feeder: Feeder | None = None
        # A replay at max speed waits for the learner (backpressure): nothing to save time for.
        paced = not self._pull or source.speed is not None
        self.budget = ModuleBudget(learner.num_modules) if auto_schedule and paced else None
        self._speed = (source.speed if self._pull else 1.0) or None  # stream seconds per wall second
        self.replay_store: ReplayStore | None = None
        self.replay_schedule: ReplaySchedule | None = None
        if replay is not None and replay.ratio > 0:
            self.replay_store = ReplayStore(replay, window=window, seed=getattr(config, "seed", 0))
            self.replay_schedule = ReplaySchedule(replay.ratio, paced=paced)
        if auto_schedule and not paced:
            log.info("--schedule auto: the replay runs at max speed and waits for the learner; all modules update")
        self.summary = ListenSummary(
            source=source.source_id,
            schedule=schedule_name or ("auto" if auto_schedule else "learner"),
            window=window,
            hop=hop,
        )
        self._stop = threading.Event()
        self._stop_reason: str | None = None
        self._losses = [deque(maxlen=FINAL_LOSS_UPDATES) for _ in range(learner.num_modules)]
        self._updates_done = 0
        self._update_slots = 0
        self._started = 0.0

    @property
    def counters(self) -> StreamCounters:
        """The ring buffer's live counters."""
        return self.buffer.counters

    def add_observer(self, observer: StepObserver) -> None:
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

    # ------------------------------------------------------------------ the loop
    def run(self) -> ListenSummary:
        """Runs until the stream ends or :meth:`stop`; returns the final summary.

        Raises:
            whatever the push source's ``start`` raises (the microphone's ``MicrophoneUnavailable``)
            before anything ran; errors of the learner or an observer (bugs) after the clean-up.
        """
        self._started = time.monotonic()
        target = self._cap or self.buffer
        reason = "stopped"
        try:
            if self._pull:
                self._feeder = Feeder(self.source, target).start()
            else:
                self.source.start(target)
            reason = self._loop()
        finally:
            self._finish(reason)
        return self.summary

    def _loop(self) -> str:
        buffer = self.buffer
        while not self._stop.is_set():
            try:
                window = buffer.read_window(timeout=0.2)
            except StreamError as error:
                self.summary.error = str(error)
                log.error("%s", error)
                return "source_error"
            if window is None:
                if buffer.exhausted:
                    return "duration" if self._cap is not None and self._cap.reached else "end_of_stream"
                continue
            self._step(window)
            if self.max_windows is not None and self.summary.windows_processed >= self.max_windows:
                return "max_windows"
        return self._stop_reason or "stopped"

    def _step(self, window: AudioWindow) -> None:
        modules = None
        if self.budget is not None:
            buffer = self.buffer
            modules = self.budget.choose(
                fill_ratio=buffer.fill_ratio,
                windows_ready=buffer.windows_ready,
                windows_dropped=buffer.counters.windows_dropped,
            )
        report = self.learner.step(window, modules=modules)
        self._account(report)
        counters = self.buffer.counters
        for observer in self.observers:
            observer.on_step(window, report, counters)
        if self.replay_schedule is not None and not report.skipped_nonfinite:
            self._replay(window, report, keeping_up=modules is None or len(modules) == self.learner.num_modules)

    def _replay(self, window: AudioWindow, report: StepReport, *, keeping_up: bool) -> None:
        """Learns again from stored windows while :class:`ReplaySchedule` allows (module docstring)."""
        store, schedule = self.replay_store, self.replay_schedule
        store.add(window)
        schedule.record(report.seconds)
        schedule.earn()
        while not self._stop.is_set() and schedule.allows(next_window_seconds=self._next_window_seconds(), keeping_up=keeping_up):
            replayed = self.learner.step(store.sample(), replay=True)
            schedule.spend()
            schedule.record(replayed.seconds)
            self.summary.replayed_windows += 1
            self.summary.replay_compute_seconds += replayed.seconds

    def _next_window_seconds(self) -> float | None:
        """Wall seconds until the next live window is complete (0 if one is waiting; ``None`` after
        the end of the stream or without pacing)."""
        buffer = self.buffer
        if buffer.closed or self._speed is None:
            return None
        missing = max(0, buffer.spec.window - buffer.backlog_samples)
        return missing / SAMPLE_RATE / self._speed

    def _account(self, report: StepReport) -> None:
        summary = self.summary
        summary.windows_processed += 1
        summary.compute_seconds += report.seconds
        summary.model_step = report.updates
        if report.skipped_nonfinite:
            summary.windows_skipped_nonfinite += 1
            tally_skip(summary.windows_skipped_by_reason, report, f"{report.window_start / SAMPLE_RATE:.2f} s")
            return
        if report.probes is not None:
            summary.probe_phone_accuracy = report.probes.phone_accuracy
            summary.probe_speaker_accuracy = report.probes.speaker_accuracy
            summary.probe_speaker_frame_accuracy = report.probes.speaker_frame_accuracy
        self._update_slots += len(report.modules)
        for module in report.modules:
            if module.updated:
                self._updates_done += 1
                if math.isfinite(module.loss):
                    self._losses[module.module].append(module.loss)

    def _finish(self, reason: str) -> None:
        if self._feeder is not None:
            self._feeder.stop()  # stops the thread, closes the source and the buffer
        else:
            self.source.close()
            self.buffer.close()
        summary = self.summary
        summary.stop_reason = reason
        summary.wall_seconds = time.monotonic() - self._started
        counters = self.buffer.counters
        summary.samples_in = counters.samples_in
        summary.samples_dropped = counters.samples_dropped
        summary.windows_dropped = counters.windows_dropped
        summary.overflows = counters.overflows
        summary.files_skipped = getattr(self.source, "files_skipped", 0)
        summary.samples_windowed = self.buffer.samples_windowed
        summary.samples_remainder = self.buffer.pending_samples
        summary.seconds_of_audio = counters.samples_in / SAMPLE_RATE
        advanced = summary.windows_processed * summary.hop / SAMPLE_RATE
        summary.real_time_factor = summary.compute_seconds / advanced if advanced else None
        summary.compute_rtf = (summary.compute_seconds + summary.replay_compute_seconds) / advanced if advanced else None
        summary.replayed_per_window = summary.replayed_windows / summary.windows_processed if summary.windows_processed else 0.0
        summary.module_updates_skipped_fraction = (
            1.0 - self._updates_done / self._update_slots if self._update_slots else 0.0
        )
        summary.final_loss = {
            str(index): (sum(losses) / len(losses) if losses else None) for index, losses in enumerate(self._losses)
        }
        describe = getattr(self.source, "describe", None)
        summary.device = describe() if callable(describe) else None
        for observer in self.observers:
            observer.close()
