"""Durable state of a video listen run (``online-gim listen --source video --state DIR``).

A video checkpoint is the tree ``{"video_learner": learner.state_dict(), "video_stream":
VideoStreamPoint, "video_listen": VideoListenTotals}`` in a
:class:`~online_gim.state.store.CheckpointStore` (the store, its atomic writes, checksums and
fallback to the previous intact checkpoint are the audio listen state's):

- ``video_stream``: the stream position (frame number) after the last learned frame;
- ``video_listen``: totals over every run that continued this state (windows, frames, runs).

Resuming (:class:`VideoListenState`): the learner loads the saved state (weights, statistics,
optimisers, memories, RNGs); the video starts again from its beginning (a file is not sought to
where the last run stopped, as an audio file is not) while frame numbers go on from the saved
position (the windower's ``origin``), so memory positions and exclusion zones never mix the two
runs' frames.

Usage::

    state = VideoListenState("state/", keep=3)             # loads the newest intact checkpoint
    learner = VideoLearner(config)
    state.restore(learner)                                  # ValueError: another config
    checkpointer = state.checkpointer(learner, every_windows=100)
    session = VideoListenSession(frames, learner, frame_rate=25.0, source_id="video", origin=state.origin)
    session.add_observer(checkpointer.on_step)
    try:
        session.run()
    finally:
        checkpointer.close()                                # the last checkpoint, then releases DIR
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

from online_gim.state.checkpointer import PeriodicCheckpointer, RunState
from streams.video_window import VideoWindow


@dataclass
class VideoListenTotals:
    """Totals over all the runs that continued one video state.

    Attributes:
        windows: video windows learned from.
        frames: frames learned from (each once; windows overlap).
        runs: listen runs whose work is in this state (runs killed before their first checkpoint
            are not), this one included.
    """

    windows: int = 0
    frames: int = 0
    runs: int = 0

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> VideoListenTotals:
        return cls(**data)


@dataclass(frozen=True)
class VideoStreamPoint:
    """Where the video stream stood at a checkpoint.

    Attributes:
        next_frame: stream position (frame number) after the last learned frame.
        source_id: the stream's name.
        frame_rate: its frames per second.
    """

    next_frame: int
    source_id: str
    frame_rate: float

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> VideoStreamPoint:
        return cls(int(data["next_frame"]), str(data["source_id"]), float(data["frame_rate"]))


class VideoCheckpointer(PeriodicCheckpointer):
    """Checkpoints a video listen run; :meth:`on_step` is its
    :class:`~services.video_session.VideoListenSession` observer. Parameters and schedule:
    :class:`PeriodicCheckpointer` (``learner`` a video learner, ``totals`` :class:`VideoListenTotals`).
    """

    _point: VideoStreamPoint | None = None

    def on_step(self, window: VideoWindow, report: object) -> None:
        self.totals.windows += 1
        self.totals.frames += window.new_frames
        self._point = VideoStreamPoint(window.start_frame + window.num_frames, window.source_id, window.frame_rate)
        self.window_learned()

    def snapshot(self) -> tuple[dict[str, Any], dict[str, Any]] | None:
        point = self._point
        if point is None:
            return None
        state = {
            "video_learner": self.learner.state_dict(),
            "video_stream": point.to_dict(),
            "video_listen": self.totals.to_dict(),
        }
        info = {
            "model_step": self.learner.updates,
            "windows": self.totals.windows,
            "frames": self.totals.frames,
            "stream_seconds": point.next_frame / point.frame_rate,
        }
        return state, info


class VideoListenState(RunState):
    """A state directory opened for a video listen run: what to resume from, and the checkpointer.
    Parameters and errors: :class:`RunState` (it refuses the audio learner's state directories)."""

    learner_key = "video_learner"
    stream_key, stream_type = "video_stream", VideoStreamPoint
    totals_key, totals_type = "video_listen", VideoListenTotals
    checkpointer_type = VideoCheckpointer
    summary_prefix = "video_"
    other_learners = {
        "learner": "an audio --source (mic, file, librispeech, synth; --source av keeps the video learner's in video/ inside it)"
    }

    @property
    def origin(self) -> int:
        """Frame number of this run's first frame."""
        return self.point.next_frame if self.point is not None else 0

    def describe(self) -> str:
        """What the checkpoint resumed from holds, for people."""
        return f"{self.totals.windows} windows, {self.totals.frames} frames, stream at frame {self.origin}"
