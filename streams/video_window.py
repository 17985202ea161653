"""Windows of consecutive video frames: the unit the video learner learns from.

A :class:`VideoWindower` turns a stream of :class:`~online_gim.streams.sources.video.VideoFrame` s into
:class:`VideoWindow` s of ``window`` consecutive frames, a new one every ``hop`` frames, and at the
end of the stream (:meth:`VideoWindower.flush`) one last window that covers the frames no window
has covered yet, so that every frame is learned from. Frames are numbered by their **stream
position** (``origin``, ``origin + 1``, ...: 0 at the stream's start unless a resumed run goes on
from a saved position; on across the passes of a looping file), and timed by their stream time
(the frame's own timestamp plus the length of the earlier passes).

Usage::

    windower = VideoWindower(window=16, hop=12, frame_rate=25.0, source_id="video:clip.mp4")
    for frame in VideoFrameSource("clip.mp4", size=(48, 64), gray=True):
        window = windower.push(frame)
        if window is not None:
            learner.step(window)
    last = windower.flush()          # the tail: frames not yet in a window, or None
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass

import numpy as np
import torch

from online_gim.streams.sources.video import VideoFrame


@dataclass(frozen=True)
class VideoWindow:
    """Consecutive frames of a video stream.

    Attributes:
        frames: ``(T, C, H, W)`` float32 in [0, 1] (``C`` = 1 gray or 3 RGB).
        start_frame: stream position of ``frames[0]``, in frames from the stream start.
        times: ``(T,)`` float64 stream time of every frame, in seconds.
        frame_rate: nominal frames per second of the stream.
        source_id: names the stream; memories never mix exclusion zones across streams.
        new_frames: how many of the last frames are in no earlier window (the others overlap the
            previous window); ``T`` for a window that overlaps nothing.
    """

    frames: torch.Tensor
    start_frame: int = 0
    times: np.ndarray | None = None
    frame_rate: float = 25.0
    source_id: str = "video"
    new_frames: int | None = None

    def __post_init__(self) -> None:
        if self.frames.dim() != 4:
            raise ValueError(f"VideoWindow.frames must be (T, C, H, W), got shape {tuple(self.frames.shape)}")
        count = self.num_frames
        if self.times is None:
            object.__setattr__(self, "times", (self.start_frame + np.arange(count)) / self.frame_rate)
        elif np.shape(self.times) != (count,):
            raise ValueError(f"VideoWindow.times must have one entry per frame ({count}), got shape {np.shape(self.times)}")
        if self.new_frames is None:
            object.__setattr__(self, "new_frames", count)
        elif not 0 <= self.new_frames <= count:
            raise ValueError(f"VideoWindow.new_frames must be in 0..{count}, got {self.new_frames}")

    @property
    def num_frames(self) -> int:
        """``T``, the frames in the window."""
        return int(self.frames.shape[0])

    @property
    def start(self) -> int:
        """Stream position of the first frame (the unit of a video stream is the frame)."""
        return self.start_frame

    @property
    def length(self) -> int:
        """Frames in the window (``T``)."""
        return self.num_frames

    @property
    def rate(self) -> float:
        """Frames per second (``frame_rate``)."""
        return self.frame_rate

    @property
    def positions(self) -> np.ndarray:
        """``(T,)`` int64 stream positions (frame numbers) of the frames."""
        return self.start_frame + np.arange(self.num_frames, dtype=np.int64)

    @property
    def start_seconds(self) -> float:
        """Stream time of the first frame, in seconds."""
        return float(self.times[0]) if self.num_frames else 0.0


class VideoWindower:
    """Cuts a frame stream into windows of ``window`` consecutive frames, ``hop`` frames apart.

    A window is emitted as soon as its last frame arrives. Frames must arrive in stream order; a
    frame whose timestamp is not after the previous one starts a new pass of a looping file (its
    stream time goes on from the end of the previous pass).

    Parameters:
        window: frames per window (``T``).
        hop: frames between window starts, ``1 <= hop <= window`` (``hop < window``: windows overlap).
        frame_rate: nominal frames per second (the length of a frame, in stream time).
        source_id: the stream's name, given to every window.
        origin: stream position (frame number) of the first frame pushed: a run that resumes a
            learner's state goes on from where the last one stopped (its stream time from
            ``origin / frame_rate``).

    Attributes:
        frames_in: frames pushed so far.
        frames_windowed: frames that have been in a window so far (each counted once).
    """

    def __init__(self, *, window: int, hop: int, frame_rate: float, source_id: str = "video", origin: int = 0) -> None:
        if window < 1:
            raise ValueError(f"window must be at least 1 frame, got {window}")
        if not 1 <= hop <= window:
            raise ValueError(f"hop must be between 1 and the window ({window}), got {hop}")
        if not frame_rate > 0:
            raise ValueError(f"frame_rate must be positive, got {frame_rate}")
        if origin < 0:
            raise ValueError(f"origin must be >= 0, got {origin}")
        self.window = window
        self.hop = hop
        self.frame_rate = float(frame_rate)
        self.source_id = source_id
        self.origin = origin
        self._reset()

    def _reset(self) -> None:
        self._images: deque[torch.Tensor] = deque(maxlen=self.window)
        self._times: deque[float] = deque(maxlen=self.window)
        self._pass_offset = self.origin / self.frame_rate
        self._last_pts: float | None = None
        self._next_start = 0  # frames pushed before the next window's first frame
        self.frames_in = 0
        self.frames_windowed = 0

    def _stream_seconds(self, pts: float) -> float:
        if self._last_pts is not None and pts <= self._last_pts:
            self._pass_offset += self._last_pts + 1.0 / self.frame_rate
        self._last_pts = pts
        return self._pass_offset + pts

    def push(self, frame: VideoFrame) -> VideoWindow | None:
        """Adds the next frame; returns the window it completes, if any."""
        if self._images and frame.image.shape != self._images[-1].shape:
            raise ValueError(f"frame shape changed from {tuple(self._images[-1].shape)} to {tuple(frame.image.shape)}")
        self._images.append(frame.image)
        self._times.append(self._stream_seconds(frame.pts))
        self.frames_in += 1
        if self.frames_in - self._next_start < self.window:
            return None
        window = self._emit(self.window)
        self._next_start += self.hop
        return window

    def flush(self) -> VideoWindow | None:
        """The last window at the end of the stream: the newest ``min(window, frames held)`` frames,
        when some of them are in no window yet; ``None`` otherwise."""
        if self.frames_windowed >= self.frames_in:
            return None
        return self._emit(len(self._images))

    def _emit(self, count: int) -> VideoWindow:
        first = self.frames_in - count
        new = self.frames_in - max(first, self.frames_windowed)
        self.frames_windowed = self.frames_in
        images = list(self._images)[-count:]
        times = np.array(list(self._times)[-count:], dtype=np.float64)
        return VideoWindow(
            frames=torch.stack(images),
            start_frame=self.origin + first,
            times=times,
            frame_rate=self.frame_rate,
            source_id=self.source_id,
            new_frames=new,
        )
