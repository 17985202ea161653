"""Video streams in the session loop: frames -> windows of consecutive frames, and the video summary.

:class:`FrameWindows` is the :class:`~online_gim.run.session.WindowStream` of frames from any
iterable (a :class:`~online_gim.streams.sources.video.VideoFrameSource`, its passes repeated by
:func:`repeat_passes` for ``--loop``, or the frame channel of an
:class:`~online_gim.streams.sources.av.AVSource` beside the audio learner), cut into windows by a
:class:`~online_gim.streams.video_window.VideoWindower`. At the end of the frames the last, partial window is
learned too, so every frame is. ``speed`` paces a file like a camera (frame ``n`` of the stream is
not learned before ``n / (frame_rate * speed)`` seconds after the start); ``None`` learns as fast as
the learner goes. A learner slower than the pace falls behind (frames are never dropped):
``video_fps_learn`` below the frame rate says so.

:class:`VideoListenSession` is the :class:`~online_gim.run.session.Session` of one frame stream;
its :class:`VideoListenSummary` is the video part of the ``--summary-json`` document.

Usage::

    learner = VideoLearner(VideoLearnerConfig())
    source = VideoFrameSource("clip.mp4", size=(48, 64), gray=True)
    session = VideoListenSession(repeat_passes(source), learner, frame_rate=source.frame_rate or 25.0,
                                 source_id=source.source_id, speed=None, max_windows=100)
    print(session.run().to_dict())
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

from online_gim.jsonable import json_numbers
from online_gim.run.contract import StepObserver, StreamLearner
from online_gim.run.session import Backlog, Session
from online_gim.streams.sources.video import VideoFrame, VideoFrameSource
from online_gim.streams.video_window import VideoWindow, VideoWindower

log = logging.getLogger(__name__)


def repeat_passes(source: VideoFrameSource) -> Iterator[VideoFrame]:
    """The source's frames, pass after pass (``--loop``); ends if a pass yields no frame."""
    while True:
        played = 0
        for frame in source:
            played += 1
            yield frame
        if played == 0:
            return


class FrameWindows:
    """The windows of a frame stream (a :class:`~online_gim.run.session.WindowStream`).

    Parameters:
        frames: the frames, in stream order (iterated on the session's thread).
        windower: cuts them into windows.
        speed: pace in multiples of real time; ``None`` = as fast as the learner goes.
        max_seconds: end the stream after this many seconds of video (``duration``).

    Attributes:
        frames_processed: frames of the windows read so far, each counted once (windows overlap).
    """

    def __init__(
        self, frames: Iterable[VideoFrame], windower: VideoWindower, *, speed: float | None = None,
        max_seconds: float | None = None,
    ) -> None:
        if speed is not None and not speed > 0:
            raise ValueError(f"speed must be positive or None (max), got {speed}")
        if max_seconds is not None and not max_seconds > 0:
            raise ValueError(f"max_seconds must be positive, got {max_seconds}")
        self.frames = frames
        self.windower = windower
        self.speed = speed
        self.max_frames = round(max_seconds * windower.frame_rate) if max_seconds is not None else None
        self.paced = False  # a video learner that falls behind learns later; frames are never dropped
        self.ended: str | None = None
        self.error: str | None = None
        self.frames_processed = 0
        self._iterator: Iterator[VideoFrame] | None = None
        self._next: VideoFrame | None = None  # a frame read whose time has not come yet
        self._started = 0.0

    def open(self) -> None:
        self._iterator = iter(self.frames)
        self._started = time.monotonic()

    def read(self, timeout: float) -> VideoWindow | None:
        windower = self.windower
        while self.ended is None:
            frame = self._next_frame()
            if frame is None:
                return self._end(self.ended or "end_of_stream")
            if self.max_frames is not None and windower.frames_in >= self.max_frames:
                return self._end("duration")
            if self.speed is not None:
                wait = self._started + windower.frames_in / (windower.frame_rate * self.speed) - time.monotonic()
                if wait > 0:
                    self._next = frame
                    time.sleep(min(wait, timeout))
                    if wait > timeout:
                        return None
            self._next = None
            try:
                window = windower.push(frame)
            except ValueError as error:  # the frame size changed
                self._fail(error)
                return None
            if window is not None:
                return self._counted(window)
        return None

    def _next_frame(self) -> VideoFrame | None:
        """The frame waiting for its time, else the next one; ``None`` at the end or on a source
        error (then :attr:`ended` is ``source_error``)."""
        if self._next is not None:
            return self._next
        try:
            return next(self._iterator)
        except StopIteration:
            return None
        except (OSError, ValueError) as error:  # VideoFileError is a ValueError
            self._fail(error)
            return None

    def _fail(self, error: Exception) -> None:
        self.error = str(error)
        log.error("%s", error)
        self.ended = "source_error"

    def _end(self, reason: str) -> VideoWindow | None:
        """Ends the stream for ``reason``: the tail window (frames in no window yet), except after
        a source error."""
        self.ended = reason
        window = self.windower.flush() if reason != "source_error" else None
        return self._counted(window) if window is not None else None

    def _counted(self, window: VideoWindow) -> VideoWindow:
        self.frames_processed += window.new_frames
        return window

    def backlog(self) -> Backlog:
        return Backlog()

    def where(self, window: VideoWindow) -> str:
        return f"frame {window.start_frame}"

    def close(self) -> None:
        """Nothing to release: the frames' owner closes them."""


@dataclass
class VideoListenSummary:
    """What a video listen session did; :meth:`to_dict` is its part of the ``--summary-json`` document.

    ``frames_processed`` counts every frame learned from once (windows overlap by
    ``video_window_frames - video_hop_frames`` frames); ``video_fps_learn`` is
    ``frames_processed`` per wall-clock second spent in the learner's steps (decoding and pacing
    waits excluded): above the frame rate the learner keeps up with the video.
    ``video_final_loss`` maps each module to the mean of its loss over its last 10 updates. The
    other ``video_*`` keys are those of the audio :class:`~online_gim.run.audio.ListenSummary`,
    for the video learner (:class:`~online_gim.run.session.RunTally`).
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
        return json_numbers(asdict(self))


class VideoListenSession(Session[VideoWindow]):
    """A :class:`~online_gim.run.session.Session` of one frame stream (:class:`FrameWindows`).

    Parameters:
        frames: the frames, in stream order (iterated on the calling thread of :meth:`run`).
        learner: a :class:`~online_gim.run.contract.StreamLearner` of video windows.
        frame_rate: nominal frames per second of the stream.
        source_id: the stream's name.
        window, hop: frames per window and between window starts (default: the learner's
            ``config.window_frames`` and ``config.hop``).
        speed, max_seconds: see :class:`FrameWindows`.
        max_windows: stop after this many windows.
        origin: frame number of the first frame (a run resuming a saved learner goes on from the
            saved stream position).
        observers: :class:`~online_gim.run.contract.StepObserver` s, called after every step.

    Attributes:
        summary: the :class:`VideoListenSummary` (complete after :meth:`run`).
    """

    stream: FrameWindows

    def __init__(
        self,
        frames: Iterable[VideoFrame],
        learner: StreamLearner[VideoWindow],
        *,
        frame_rate: float,
        source_id: str,
        window: int | None = None,
        hop: int | None = None,
        speed: float | None = None,
        max_seconds: float | None = None,
        max_windows: int | None = None,
        origin: int = 0,
        observers: Sequence[StepObserver[VideoWindow]] = (),
    ) -> None:
        config = getattr(learner, "config", None)  # a learner with a configuration names its window
        window = window or getattr(config, "window_frames", None)
        hop = hop or getattr(config, "hop", None) or window
        if not window:
            raise ValueError("window is required when the learner has no config.window_frames")
        windower = VideoWindower(window=window, hop=hop, frame_rate=frame_rate, source_id=source_id, origin=origin)
        stream = FrameWindows(frames, windower, speed=speed, max_seconds=max_seconds)
        super().__init__(stream, learner, max_windows=max_windows, observers=observers)
        self.summary = VideoListenSummary(
            video_source=source_id, video_window_frames=window, video_hop_frames=hop, video_frame_rate=frame_rate
        )

    def run(self) -> VideoListenSummary:
        """Runs until the frames end or :meth:`stop`; returns the final summary (see :meth:`Session.run`).
        A source error (a corrupt file) ends it with ``video_stop_reason`` = ``source_error``."""
        super().run()
        return self.summary

    def _finished(self) -> None:
        tally, summary, stream = self.tally, self.summary, self.stream
        for name in ("stop_reason", "error", "windows_processed", "windows_skipped_nonfinite", "windows_skipped_by_reason",
                     "wall_seconds", "compute_seconds", "model_step", "final_loss"):
            setattr(summary, f"video_{name}", getattr(tally, name))
        summary.frames_processed = stream.frames_processed
        summary.video_seconds = stream.windower.frames_windowed / stream.windower.frame_rate
        compute = summary.video_compute_seconds
        summary.video_fps_learn = summary.frames_processed / compute if compute > 0 else None
