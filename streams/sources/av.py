"""One decoder for a file with audio and video: audio chunks for the audio learner, frames for the video learner.

:class:`AVSource` is a :class:`~online_gim.streams.sources.file.FileSource` (the audio track as a 16 kHz mono
stream, driven by a :class:`~online_gim.streams.feeder.Feeder` like any audio source) whose demuxer also
decodes the video track, packet by packet in file order, and hands every frame to
:attr:`AVSource.frames`, a bounded :class:`FrameChannel` that the video learner's thread
iterates. The file is opened and decoded once per pass for both tracks.

Pacing: the feeder paces the audio (``speed`` x real time); the frames are decoded alongside it, so
they arrive at the same pace. The channel never drops a frame: when the video side falls behind,
the decoder waits for it (and the audio waits with it), so both learners see every frame and every
sample of the file.

Usage::

    source = AVSource("clip.mp4", speed=None, size=(48, 64), gray=True)
    video_thread = threading.Thread(target=lambda: [video_step(f) for f in source.frames])
    video_thread.start()
    for chunk in source:                    # usually through a Feeder into a RingBuffer
        ...
    video_thread.join()                     # the channel ends when decoding ends
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Iterator
from pathlib import Path

from online_gim.streams.chunk import AudioChunk
from online_gim.streams.sources.base import DEFAULT_CHUNK_SAMPLES
from online_gim.streams.sources.file import FileSource
from online_gim.streams.sources.video import VideoFileError, VideoFrame, to_video_frame

_END = object()


class FrameChannel:
    """A bounded hand-over of video frames from the decoding thread to one consumer thread.

    :meth:`put` waits while the channel is full (the decoder waits for the consumer); :meth:`close`
    ends the stream (the consumer sees the frames already in the channel, then the end, or the
    error it was closed with); :meth:`cancel` is the consumer giving up: the producer never waits
    again and its frames are discarded.

    Parameters:
        capacity: frames held at most.
    """

    def __init__(self, capacity: int = 64) -> None:
        if capacity < 1:
            raise ValueError("capacity must be at least 1")
        self._queue: queue.Queue[object] = queue.Queue(maxsize=capacity)
        self._closed = threading.Event()
        self._cancelled = threading.Event()
        self.error: BaseException | None = None
        self.frames_put = 0

    def put(self, frame: VideoFrame) -> bool:
        """Hands a frame over, waiting for room; ``False`` when the channel is closed or cancelled."""
        while not (self._closed.is_set() or self._cancelled.is_set()):
            try:
                self._queue.put(frame, timeout=0.1)
            except queue.Full:
                continue
            self.frames_put += 1
            return True
        return False

    def close(self, error: BaseException | None = None) -> None:
        """Ends the stream after the frames already handed over. Idempotent."""
        if self._closed.is_set():
            return
        self.error = error
        self._closed.set()
        while not self._cancelled.is_set():
            try:
                self._queue.put(_END, timeout=0.1)
                return
            except queue.Full:
                continue

    def cancel(self) -> None:
        """The consumer stops reading: the producer's puts return at once from now on."""
        self._cancelled.set()

    def __iter__(self) -> Iterator[VideoFrame]:
        """The frames in decoding order until the stream ends.

        Raises:
            the error the channel was closed with (a decoding error), after the frames before it.
        """
        while True:
            item = self._queue.get()
            if item is _END:
                if self.error is not None:
                    raise self.error
                return
            yield item  # type: ignore[misc]


class _SplittingContainer:
    """A PyAV input container whose ``demux(audio_stream)`` also decodes the video track and hands
    its frames to ``on_frame``, yielding the audio packets only (what ``FileSource`` reads)."""

    def __init__(self, container, video_stream, on_frame) -> None:
        self._container = container
        self._video = video_stream
        self._on_frame = on_frame

    def __getattr__(self, name: str):
        return getattr(self._container, name)

    def demux(self, audio_stream) -> Iterator[object]:
        video = self._video
        for packet in self._container.demux(audio_stream, video):
            if packet.stream.index == video.index:
                for frame in packet.decode():
                    self._on_frame(frame)
            else:
                yield packet

    def close(self) -> None:
        self._container.close()


class AVSource(FileSource):
    """A file with audio and video as one audio source plus a channel of its video frames.

    Parameters:
        location: a path or URL FFmpeg opens, with an audio and a video track.
        speed: pace for the feeder in multiples of real time (default 1.0); ``None`` = max speed.
        loop: play the file again and again (frames keep coming, numbered from 0 in every pass).
        size: ``(height, width)`` of the frames; ``None`` keeps the native size.
        gray: one luminance channel instead of RGB.
        frame_buffer: frames the channel holds before the decoder waits for the video side.
        chunk_samples: audio samples per chunk.
        source_id: the audio stream's name (default ``av:<name>``); the video stream's is
            :attr:`video_source_id`.

    Attributes:
        frames: the :class:`FrameChannel` of the video frames (one consumer).
        frame_rate: the video track's frame rate (``None`` when the container does not say).

    Raises:
        FileNotFoundError: a local path that does not exist.
        AudioFileError: it cannot be opened or has no audio track.
        VideoFileError: it has no video track.
    """

    def __init__(
        self,
        location: str | Path,
        *,
        speed: float | None = 1.0,
        loop: bool = False,
        size: tuple[int, int] | None = None,
        gray: bool = False,
        frame_buffer: int = 64,
        chunk_samples: int = DEFAULT_CHUNK_SAMPLES,
        source_id: str | None = None,
    ) -> None:
        if size is not None and (len(size) != 2 or min(size) <= 0):
            raise ValueError(f"size must be (height, width) with positive entries, got {size!r}")
        self.size = None if size is None else (int(size[0]), int(size[1]))
        self.gray = gray
        self.frames = FrameChannel(frame_buffer)
        self.frame_rate: float | None = None
        self._frame_index = 0
        super().__init__(location, speed=speed, loop=loop, chunk_samples=chunk_samples, source_id=source_id)
        if source_id is None:
            self.source_id = f"av:{self.name}"

    @property
    def video_source_id(self) -> str:
        """The video stream's name."""
        return f"video:{self.name}"

    def _open(self):
        container = super()._open()
        if not container.streams.video:
            container.close()
            raise VideoFileError(f"{self.location!r} has no video track")
        video = container.streams.video[0]
        video.thread_type = "AUTO"
        self.frame_rate = float(video.average_rate) if video.average_rate else None
        self._frame_index = 0
        return _SplittingContainer(container, video, self._hand_over)

    def _hand_over(self, frame) -> None:
        self.frames.put(
            to_video_frame(frame, index=self._frame_index, frame_rate=self.frame_rate, size=self.size, gray=self.gray)
        )
        self._frame_index += 1

    def __iter__(self) -> Iterator[AudioChunk]:
        """The audio chunks; the frames go to :attr:`frames` meanwhile. When the iteration ends
        (end of file, error, or the consumer stops iterating) the frame channel is closed."""
        error: BaseException | None = None
        try:
            yield from super().__iter__()
        except BaseException as exc:
            error = exc
            raise
        finally:
            self.frames.close(error=error if isinstance(error, Exception) else None)
