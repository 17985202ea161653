"""Video frames from a file, URL or camera device through PyAV, with timestamps, for the video learner.

Every decoded frame becomes a :class:`VideoFrame`: a ``(C, H, W)`` float32 tensor in [0, 1]
(``C`` = 1 for gray, 3 for RGB), converted by FFmpeg's scaler to the requested size, its
presentation time in seconds and its index. Frames are decoded one at a time. A file with both
tracks can feed audio and video at once: open it with :class:`~online_gim.streams.sources.file.FileSource`
too (each source opens the file on its own).

Usage::

    for frame in VideoFrameSource("clip.mp4", size=(64, 64), gray=True):
        frame.image.shape, frame.pts          # (1, 64, 64), 0.04 ...

    VideoFrameSource("/dev/video0", device_format="v4l2")   # a camera
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from online_gim.streams.sources.file import AudioFileError, _is_url, _name_of


class VideoFileError(AudioFileError):
    """A file, URL or device that is not a decodable video (no video track, corrupt, cannot open)."""


@dataclass(frozen=True)
class VideoFrame:
    """One video frame.

    Attributes:
        image: ``(C, H, W)`` float32 in [0, 1]; ``C`` = 1 (gray) or 3 (RGB).
        pts: presentation time in seconds from the stream start (the frame's own timestamp;
            ``index / frame rate`` when the container has none).
        index: frame number from 0, in decoding order.
    """

    image: torch.Tensor
    pts: float
    index: int


def to_video_frame(
    frame, *, index: int, frame_rate: float | None, size: tuple[int, int] | None, gray: bool
) -> VideoFrame:
    """One decoded PyAV ``av.VideoFrame`` as a :class:`VideoFrame`.

    Args:
        frame: the decoded frame.
        index: its number in decoding order.
        frame_rate: the track's frame rate, for the time of a frame without timestamp (``index /
            frame_rate``; the index itself when the rate is unknown too).
        size: ``(height, width)`` to scale to (FFmpeg's scaler), or ``None`` for the native size.
        gray: one luminance channel instead of RGB.
    """
    rate = frame_rate or 0.0
    pts = frame.time if frame.time is not None else (index / rate if rate else float(index))
    height, width = size or (None, None)
    array = frame.to_ndarray(width=width, height=height, format="gray" if gray else "rgb24")
    image = torch.from_numpy(np.ascontiguousarray(array)).to(torch.float32).div_(255.0)
    image = image.unsqueeze(0) if gray else image.permute(2, 0, 1).contiguous()
    return VideoFrame(image=image, pts=float(pts), index=index)


class VideoFrameSource:
    """The frames of a video file, URL or camera device.

    Parameters:
        location: path, URL, or device (``/dev/video0`` with ``device_format="v4l2"``).
        size: ``(height, width)`` of the output frames; ``None`` keeps the native size.
        gray: one luminance channel instead of RGB.
        device_format: FFmpeg input format for devices (``"v4l2"``, ``"avfoundation"``, ...).
        options: FFmpeg options for opening (``{"framerate": "30", "video_size": "640x480"}``).
        stream_index: which video track (default: the first).
        max_frames: stop after this many frames (``None``: until the end).
        source_id: the stream's name (default ``video:<name>``).

    Raises:
        FileNotFoundError: a local path that does not exist.
        VideoFileError: it cannot be opened or has no video track.
    """

    def __init__(
        self,
        location: str | Path,
        *,
        size: tuple[int, int] | None = None,
        gray: bool = False,
        device_format: str | None = None,
        options: dict[str, str] | None = None,
        stream_index: int = 0,
        max_frames: int | None = None,
        source_id: str | None = None,
    ) -> None:
        self.location = str(location)
        if size is not None and (len(size) != 2 or min(size) <= 0):
            raise ValueError(f"size must be (height, width) with positive entries, got {size!r}")
        self.size = None if size is None else (int(size[0]), int(size[1]))
        self.gray = gray
        self.device_format = device_format
        self.options = dict(options or {})
        self.stream_index = stream_index
        self.max_frames = max_frames
        self.name = _name_of(self.location)
        self.source_id = source_id or f"video:{self.name}"
        self._closed = False
        container = self._open()
        stream = container.streams.video[self.stream_index]
        self.frame_rate: float | None = float(stream.average_rate) if stream.average_rate else None
        self.native_size: tuple[int, int] = (stream.codec_context.height, stream.codec_context.width)
        self.frames_hint: int | None = stream.frames or None
        container.close()

    @property
    def channels(self) -> int:
        """Channels of every frame: 1 (gray) or 3 (RGB)."""
        return 1 if self.gray else 3

    def _open(self):
        import av

        is_local_file = self.device_format is None and not _is_url(self.location)
        if is_local_file and not Path(self.location).exists():
            raise FileNotFoundError(f"video file {self.location!r} does not exist")
        try:
            container = av.open(self.location, mode="r", format=self.device_format, options=self.options)
        except (av.FFmpegError, OSError, UnicodeDecodeError) as error:
            raise VideoFileError(f"cannot open {self.location!r} as video: {error}") from error
        if len(container.streams.video) <= self.stream_index:
            container.close()
            raise VideoFileError(f"{self.location!r} has no video track")
        return container

    def __iter__(self) -> Iterator[VideoFrame]:
        import av

        container = self._open()
        try:
            stream = container.streams.video[self.stream_index]
            stream.thread_type = "AUTO"
            index = 0
            try:
                for frame in container.decode(stream):
                    if self._closed or (self.max_frames is not None and index >= self.max_frames):
                        return
                    yield to_video_frame(frame, index=index, frame_rate=self.frame_rate, size=self.size, gray=self.gray)
                    index += 1
            except av.FFmpegError as error:
                raise VideoFileError(f"corrupt video data in {self.location!r} at frame {index}: {error}") from error
        finally:
            container.close()

    def close(self) -> None:
        """Stops the iteration at the next frame. Idempotent."""
        self._closed = True

    def __enter__(self) -> VideoFrameSource:
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()
