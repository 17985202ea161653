"""The video listen loop: frames -> windows of consecutive frames -> video learner, one step per window.

:class:`VideoListenSession` reads :class:`~streams.sources.video.VideoFrame` s from any iterable (a
:class:`~streams.sources.video.VideoFrameSource`, its passes repeated by :func:`repeat_passes`
for ``--loop``, or the frame channel of an :class:`~streams.sources.av.AVSource` beside the audio
learner), cuts them into windows with a :class:`~streams.video_window.VideoWindower`, calls
``learner.step(window)`` and then every observer (``observer(window, report)``). It stops on the
first of: the end of the frames (the last, partial window is learned too, so every frame is),
``max_seconds`` of video, ``max_windows`` windows, :meth:`VideoListenSession.stop`, or a source
error; and returns a :class:`VideoListenSummary`.

``speed`` paces a file like a camera (frame ``n`` of the stream is not learned before ``n /
(frame_rate * speed)`` seconds after the start); ``None`` learns as fast as the learner goes. A learner slower than the pace falls behind
(frames are never dropped): ``video_fps_learn`` below the frame rate says so.

Usage::

    learner = VideoLearner(VideoLearnerConfig())
    source = VideoFrameSource("clip.mp4", size=(48, 64), gray=True)
    session = VideoListenSession(repeat_passes(source), learner, frame_rate=source.frame_rate or 25.0,
                                 source_id=source.source_id, speed=None, max_windows=100)
    print(session.run().to_dict())
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any, Protocol

from online_gim.report import StepReport, tally_skip
from services.api_models import finite_or_none
from streams.sources.video import VideoFrame, VideoFrameSource
from streams.video_window import VideoWindow, VideoWindower

log = logging.getLogger(__name__)

FINAL_LOSS_UPDATES = 10
"""``video_final_loss`` of a module is the mean of its losses over its last this-many updates."""

VideoObserver = Callable[[VideoWindow, StepReport], None]
"""Called on the video learner's thread after every step; must be cheap."""


class VideoLearnerLike(Protocol):
    """What the loop needs from :class:`~online_gim.video.learner.VideoLearner`."""

    num_modules: int

    def step(self, window: VideoWindow, modules: Sequence[int] | None = None) -> StepReport: ...


def repeat_passes(source: VideoFrameSource) -> Iterator[VideoFrame]:
    """The source's frames, pass after pass (``--loop``); ends if a pass yields no frame."""
    while True:
        played = 0
        for frame in source:
            played += 1
            yield frame
        if played == 0:
            return


@dataclass
class VideoListenSummary:
    """What a video listen session did; :meth:`to_dict` is its part of the ``--summary-json`` document.

    ``frames_processed`` counts every frame learned from once (windows overlap by
    ``video_window_frames - video_hop_frames`` frames); ``video_fps_learn`` is
    ``frames_processed`` per wall-clock second spent in the learner's steps (decoding and pacing
    waits excluded): above the frame rate the learner keeps up with the video.
    ``video_final_loss`` maps each module to the mean of its loss over its last 10 updates.
    """

    video_source: str
    video_window_frames: int
    video_hop_frames: int
    video_frame_rate: float
    video_stop_reason: str = "running"
    video_error: str | None = None
    frames_processed: int = 0
    video_windows_processed: int = 0
    video_windows_skipped_nonfinite: int = 0
    video_windows_skipped_by_reason: dict[str, int] = field(default_factory=dict)
    video_seconds: float = 0.0
    video_wall_seconds: float = 0.0
    video_compute_seconds: float = 0.0
    video_fps_learn: float | None = None
    video_model_step: int = 0
    video_final_loss: dict[str, float | None] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """JSON-able (non-finite numbers become ``None``)."""
        document = asdict(self)
        document["video_final_loss"] = {key: finite_or_none(value) for key, value in self.video_final_loss.items()}
        return {key: finite_or_none(value) if isinstance(value, float) else value for key, value in document.items()}


class VideoListenSession:
    """Runs frames -> windows -> video learner until the frames end or it is told to stop.

    Parameters:
        frames: the frames, in stream order (iterated on the calling thread of :meth:`run`).
        learner: anything with ``step(window) -> StepReport`` and ``num_modules``.
        frame_rate: nominal frames per second of the stream.
        source_id: the stream's name.
        window, hop: frames per window and between window starts (default: the learner's
            ``config.window_frames`` and ``config.hop``).
        speed: pace in multiples of real time; ``None`` = as fast as the learner goes.
        max_seconds: end the stream after this many seconds of video.
        max_windows: stop after this many windows.
        origin: frame number of the first frame (a run resuming a saved learner goes on from the
            saved stream position).
        observers: called as ``observer(window, report)`` after every step.
    """

    def __init__(
        self,
        frames: Iterable[VideoFrame],
        learner: VideoLearnerLike,
        *,
        frame_rate: float,
        source_id: str,
        window: int | None = None,
        hop: int | None = None,
        speed: float | None = None,
        max_seconds: float | None = None,
        max_windows: int | None = None,
        origin: int = 0,
        observers: Sequence[VideoObserver] = (),
    ) -> None:
        config = getattr(learner, "config", None)
        window = window or getattr(config, "window_frames", None)
        hop = hop or getattr(config, "hop", None) or window
        if not window:
            raise ValueError("window is required when the learner has no config.window_frames")
        if speed is not None and not speed > 0:
            raise ValueError(f"speed must be positive or None (max), got {speed}")
        if max_seconds is not None and not max_seconds > 0:
            raise ValueError(f"max_seconds must be positive, got {max_seconds}")
        if max_windows is not None and max_windows < 1:
            raise ValueError(f"max_windows must be at least 1, got {max_windows}")
        self.frames = frames
        self.learner = learner
        self.windower = VideoWindower(window=window, hop=hop, frame_rate=frame_rate, source_id=source_id, origin=origin)
        self.speed = speed
        self.max_seconds = max_seconds
        self.max_windows = max_windows
        self.observers: list[VideoObserver] = list(observers)
        self.summary = VideoListenSummary(
            video_source=source_id, video_window_frames=window, video_hop_frames=hop, video_frame_rate=frame_rate
        )
        self._stop = threading.Event()
        self._stop_reason: str | None = None
        self._losses = [deque(maxlen=FINAL_LOSS_UPDATES) for _ in range(learner.num_modules)]

    def add_observer(self, observer: VideoObserver) -> None:
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

    def run(self) -> VideoListenSummary:
        """Runs until the frames end or :meth:`stop`; returns the final summary.

        A source error (a corrupt file) ends the session with ``video_stop_reason`` =
        ``source_error``; errors of the learner or an observer (bugs) are raised.
        """
        started = time.monotonic()
        try:
            reason = self._loop(started)
        except (OSError, ValueError) as error:  # VideoFileError is a ValueError
            self.summary.video_error = str(error)
            log.error("%s", error)
            reason = "source_error"
        self._finish(reason, started)
        return self.summary

    def _loop(self, started: float) -> str:
        windower = self.windower
        for frame in self.frames:
            if self._stop.is_set():
                return self._stop_reason or "stopped"
            if self.max_seconds is not None and windower.frames_in >= round(self.max_seconds * windower.frame_rate):
                self._flush()
                return "duration"
            due = started + windower.frames_in / (windower.frame_rate * self.speed) if self.speed is not None else 0.0
            if self.speed is not None and self._stop.wait(max(0.0, due - time.monotonic())):
                return self._stop_reason or "stopped"
            window = windower.push(frame)
            if window is not None:
                self._step(window)
                if self.max_windows is not None and self.summary.video_windows_processed >= self.max_windows:
                    return "max_windows"
        if self._stop.is_set():
            return self._stop_reason or "stopped"
        self._flush()
        return "end_of_stream"

    def _flush(self) -> None:
        window = self.windower.flush()
        if window is not None:
            self._step(window)

    def _step(self, window: VideoWindow) -> None:
        report = self.learner.step(window)
        summary = self.summary
        summary.video_windows_processed += 1
        summary.frames_processed += window.new_frames
        summary.video_compute_seconds += report.seconds
        summary.video_model_step = report.updates
        if report.skipped_nonfinite:
            summary.video_windows_skipped_nonfinite += 1
            tally_skip(summary.video_windows_skipped_by_reason, report, f"frame {window.start_frame}")
        for module in report.modules:
            if module.updated and math.isfinite(module.loss):
                self._losses[module.module].append(module.loss)
        for observer in self.observers:
            observer(window, report)

    def _finish(self, reason: str, started: float) -> None:
        summary = self.summary
        summary.video_stop_reason = reason
        summary.video_wall_seconds = time.monotonic() - started
        summary.video_seconds = self.windower.frames_windowed / self.windower.frame_rate
        compute = summary.video_compute_seconds
        summary.video_fps_learn = summary.frames_processed / compute if compute > 0 else None
        summary.video_final_loss = {
            str(index): (sum(losses) / len(losses) if losses else None) for index, losses in enumerate(self._losses)
        }
