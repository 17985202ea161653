"""Audio streams in the session loop: source -> ring buffer -> windows, and the listen summary.

:class:`AudioWindows` is the :class:`~online_gim.run.session.WindowStream` of an audio source: it
feeds a :class:`~online_gim.streams.ring_buffer.RingBuffer` from the source (a :class:`~online_gim.streams.feeder.Feeder`
thread for a pull source, the device callback for the microphone) and reads its windows.
:class:`ListenSession` is the :class:`~online_gim.run.session.Session` of one audio source (its
schedules: ``--schedule auto`` and ``--replay``) and makes the :class:`ListenSummary`, the
``--summary-json`` document. :class:`AudioRecorder` is an observer that writes what the learner
heard to a sound file.

Usage::

    learner = OnlineLearner(LearnerConfig())
    session = ListenSession(LibriSpeechReplay(root, speed=None), learner, max_windows=100)
    session.add_observer(board)             # anything with on_step(window, report) and close()
    summary = session.run()                 # blocks; session.stop() from a signal handler ends it
    print(summary.to_dict())
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Protocol

from online_gim.jsonable import json_numbers
from online_gim.report import StepReport
from online_gim.run.contract import StepObserver, StreamLearner
from online_gim.run.replay_schedule import ReplaySchedule
from online_gim.run.schedule import ModuleBudget
from online_gim.run.session import Backlog, Replay, Session
from online_gim.streams.chunk import AudioChunk
from online_gim.streams.counters import StreamCounters
from online_gim.streams.feeder import Feeder
from online_gim.streams.replay import ReplayStore
from online_gim.streams.replay_config import ReplayConfig
from online_gim.streams.ring_buffer import RingBuffer, StreamError
from online_gim.streams.sources.base import AudioSource
from online_gim.streams.window import SAMPLE_RATE, AudioWindow

log = logging.getLogger(__name__)


class PushSource(Protocol):
    """A source that pushes into the buffer from its own thread (the microphone's device callback)."""

    source_id: str

    @property
    def files_skipped(self) -> int: ...

    def start(self, target: Any) -> Any: ...

    def describe(self) -> dict[str, Any]:
        """What was opened and how it went (the device), for the summary."""

    def close(self) -> None: ...


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


class AudioWindows:
    """The windows of an audio source, through a ring buffer (a :class:`~online_gim.run.session.WindowStream`).

    Parameters:
        source: a pull :class:`~online_gim.streams.sources.base.AudioSource` (driven by a
            :class:`~online_gim.streams.feeder.Feeder` at ``source.speed``; at ``None`` = max speed the feeder
            waits for the learner, losing nothing) or a push source with ``start(buffer)`` (the
            microphone).
        window, hop: samples per window and between window starts.
        capacity: ring buffer size in samples (default 8 windows).
        max_seconds: end the stream after this many seconds of source audio (``duration``).
        origin: stream position of the source's first sample (a resumed stream goes on where its
            checkpoint stopped).

    Attributes:
        buffer: the ring buffer (its ``counters`` are the stream's running totals).
        paced: a device, or a replay at a finite speed (at max speed the feeder waits for the learner).
    """

    def __init__(
        self,
        source: AudioSource | PushSource,
        *,
        window: int,
        hop: int,
        capacity: int | None = None,
        max_seconds: float | None = None,
        origin: int = 0,
    ) -> None:
        if max_seconds is not None and not max_seconds > 0:
            raise ValueError(f"max_seconds must be positive, got {max_seconds}")
        self.source = source
        self.buffer = RingBuffer(capacity, window=window, hop=hop, source_id=source.source_id, origin=origin)
        self._pull = isinstance(source, AudioSource)
        self._cap = _StreamCap(self.buffer, round(max_seconds * SAMPLE_RATE)) if max_seconds is not None else None
        self._feeder: Feeder | None = None
        self.paced = not self._pull or source.speed is not None
        self._speed = (source.speed if self._pull else 1.0) or None  # stream seconds per wall second
        self.ended: str | None = None
        self.error: str | None = None

    @property
    def counters(self) -> StreamCounters:
        """The ring buffer's live counters."""
        return self.buffer.counters

    @property
    def fill_ratio(self) -> float:
        """Unread backlog over the buffer's capacity, 0..1."""
        return self.buffer.fill_ratio

    @property
    def files_skipped(self) -> int:
        """Files or utterances the source could not decode and skipped."""
        return self.source.files_skipped

    def device(self) -> dict[str, Any] | None:
        """The push source's device, as it describes itself; ``None`` for a pull source."""
        return None if self._pull else self.source.describe()

    def open(self) -> None:
        target = self._cap or self.buffer
        if self._pull:
            self._feeder = Feeder(self.source, target).start()
        else:
            self.source.start(target)

    def read(self, timeout: float) -> AudioWindow | None:
        buffer = self.buffer
        try:
            window = buffer.read_window(timeout=timeout)
        except StreamError as error:
            self.error = str(error)
            log.error("%s", error)
            self.ended = "source_error"
            return None
        if window is None and buffer.exhausted:
            self.ended = "duration" if self._cap is not None and self._cap.reached else "end_of_stream"
        return window

    def backlog(self) -> Backlog:
        buffer = self.buffer
        if buffer.closed or self._speed is None:
            next_window = None
        else:
            next_window = max(0, buffer.spec.window - buffer.backlog_samples) / SAMPLE_RATE / self._speed
        return Backlog(buffer.fill_ratio, buffer.windows_ready, buffer.counters.windows_dropped, next_window)

    def where(self, window: AudioWindow) -> str:
        return f"{window.start_sample / SAMPLE_RATE:.2f} s"

    def close(self) -> None:
        if self._feeder is not None:
            self._feeder.stop()  # stops the thread, closes the source and the buffer
        else:
            self.source.close()
            self.buffer.close()


@dataclass
class ListenSummary:
    """What an audio listen session did; :meth:`to_dict` is the ``--summary-json`` document.

    Counts are in windows and in samples at 16 kHz; times in seconds. ``real_time_factor`` is the
    learner's compute time per second of stream it advanced over (``windows_processed * hop``):
    below 1 it keeps up with a live source; ``step_seconds_median``: the median learning seconds
    of a live window (over the last 4096). ``replayed_windows``: replayed updates (``--replay``);
    ``replayed_per_window`` their number per live window; ``compute_rtf``: all compute, replays
    included, per second of stream. ``final_loss`` maps each module to the mean of its loss
    over its last 10 updates (``None`` if it never updated). ``probe_*_accuracy``: the online
    probes' running prequential accuracies after the last window (``None`` without probes or
    before any labelled window). The other counts are :class:`~online_gim.run.session.RunTally`'s
    and the stream's (:class:`~online_gim.streams.counters.StreamCounters`).
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
    step_seconds_median: float | None = None
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
        return json_numbers(asdict(self))


class ListenSession(Session[AudioWindow]):
    """A :class:`~online_gim.run.session.Session` of one audio source (:class:`AudioWindows`).

    Parameters:
        source: see :class:`AudioWindows`.
        learner: a :class:`~online_gim.run.contract.StreamLearner` of audio windows.
        window, hop: samples per window and between window starts (default: the learner's
            ``config.window``, and ``hop = window``).
        capacity, max_seconds, origin: see :class:`AudioWindows`.
        auto_schedule: choose the modules per window with
            :class:`~online_gim.run.schedule.ModuleBudget` (paced streams); otherwise the learner's
            own schedule applies.
        max_windows: stop after this many windows.
        observers: :class:`~online_gim.run.contract.StepObserver` s, called after every step in
            order; closed at the end.
        schedule_name: how the schedule is shown in the summary (default ``auto`` or ``learner``).
        replay: replayed updates per live window and their store (:mod:`online_gim.run.session`);
            ``None`` or ratio 0: none.

    Attributes:
        summary: the :class:`ListenSummary` (complete after :meth:`run`).
    """

    stream: AudioWindows

    def __init__(
        self,
        source: AudioSource | PushSource,
        learner: StreamLearner[AudioWindow],
        *,
        window: int | None = None,
        hop: int | None = None,
        capacity: int | None = None,
        auto_schedule: bool = False,
        max_seconds: float | None = None,
        max_windows: int | None = None,
        observers: Sequence[StepObserver[AudioWindow]] = (),
        schedule_name: str | None = None,
        origin: int = 0,
        replay: ReplayConfig | None = None,
    ) -> None:
        config = getattr(learner, "config", None)  # a learner with a configuration names its window
        window = window or getattr(config, "window", None)
        if not window:
            raise ValueError("window is required when the learner has no config.window")
        hop = hop or window
        stream = AudioWindows(source, window=window, hop=hop, capacity=capacity, max_seconds=max_seconds, origin=origin)
        if auto_schedule and not stream.paced:
            log.info("--schedule auto: the replay runs at max speed and waits for the learner; all modules update")
        plan = None
        if replay is not None and replay.ratio > 0:
            store = ReplayStore(replay, window=window, seed=getattr(config, "seed", 0))
            plan = Replay(store, ReplaySchedule(replay.ratio, paced=stream.paced))
        super().__init__(
            stream, learner, max_windows=max_windows, observers=observers, replay=plan,
            budget=ModuleBudget(learner.num_modules) if auto_schedule and stream.paced else None,
        )
        self.summary = ListenSummary(
            source=source.source_id, schedule=schedule_name or ("auto" if auto_schedule else "learner"), window=window, hop=hop
        )

    @property
    def buffer(self) -> RingBuffer:
        return self.stream.buffer

    @property
    def counters(self) -> StreamCounters:
        """The ring buffer's live counters."""
        return self.stream.counters

    def run(self) -> ListenSummary:
        """Runs until the stream ends or :meth:`stop`; returns the final summary (see :meth:`Session.run`)."""
        super().run()
        return self.summary

    def _finished(self) -> None:
        tally, summary, buffer = self.tally, self.summary, self.stream.buffer
        counters = buffer.counters
        for name in ("stop_reason", "error", "windows_processed", "windows_skipped_nonfinite", "windows_skipped_by_reason",
                     "wall_seconds", "compute_seconds", "model_step", "replayed_windows", "replay_compute_seconds",
                     "module_updates_skipped_fraction", "final_loss"):
            setattr(summary, name, getattr(tally, name))
        summary.samples_in = counters.samples_in
        summary.samples_dropped = counters.samples_dropped
        summary.windows_dropped = counters.windows_dropped
        summary.overflows = counters.overflows
        summary.files_skipped = self.stream.files_skipped
        summary.samples_windowed = buffer.samples_windowed
        summary.samples_remainder = buffer.pending_samples
        summary.seconds_of_audio = counters.samples_in / SAMPLE_RATE
        advanced = summary.windows_processed * summary.hop / SAMPLE_RATE
        summary.real_time_factor = summary.compute_seconds / advanced if advanced else None
        summary.step_seconds_median = tally.step_seconds_median
        summary.compute_rtf = (summary.compute_seconds + summary.replay_compute_seconds) / advanced if advanced else None
        summary.replayed_per_window = summary.replayed_windows / summary.windows_processed if summary.windows_processed else 0.0
        if tally.probes is not None:
            summary.probe_phone_accuracy = tally.probes.phone_accuracy
            summary.probe_speaker_accuracy = tally.probes.speaker_accuracy
            summary.probe_speaker_frame_accuracy = tally.probes.speaker_frame_accuracy
        summary.device = self.stream.device()


class AudioRecorder:
    """A :class:`~online_gim.run.contract.StepObserver` that writes the audio the learner processed to a sound file.

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

    def on_step(self, window: AudioWindow, report: StepReport) -> None:
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
