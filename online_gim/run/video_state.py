"""Durable state of a video run (``online-gim listen --source video --state DIR``).

A video checkpoint is the tree ``{"video_learner": learner.state_dict(), "video_stream":
VideoStreamPoint, "video_listen": VideoListenTotals}`` (:data:`VIDEO_LAYOUT`; the run state, its
store, atomic writes, checksums and fallback to the previous intact checkpoint are the audio run's,
:mod:`online_gim.run.state`):

- ``video_stream``: the stream position (frame number) after the last learned frame;
- ``video_listen``: totals over every run that continued this state (windows, frames, runs).

Resuming (:class:`VideoListenState`): the learner loads the saved state (weights, statistics,
optimisers, memories, RNGs); the video starts again from its beginning (a file is not sought to
where the last run stopped, as an audio file is not) while frame numbers go on from the saved
position (the windower's ``origin``), so memory positions and exclusion zones never mix the two
runs' frames.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from online_gim.run.contract import StreamLearner
from online_gim.run.state import Checkpointer, RunState, StateLayout
from online_gim.streams.video_window import VideoWindow


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

    def count(self, window: VideoWindow) -> None:
        """Adds one learned window."""
        self.windows += 1
        self.frames += window.new_frames

    def info(self) -> dict[str, Any]:
        return {"windows": self.windows, "frames": self.frames}

    def describe(self) -> str:
        return f"{self.windows} windows, {self.frames} frames"

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

    @classmethod
    def after(cls, window: VideoWindow) -> VideoStreamPoint:
        """The point after ``window``'s last frame."""
        return cls(window.start_frame + window.num_frames, window.source_id, window.frame_rate)

    @property
    def position(self) -> int:
        return self.next_frame

    @property
    def stream_seconds(self) -> float:
        return self.next_frame / self.frame_rate

    def where(self) -> str:
        return f"frame {self.next_frame}"

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> VideoStreamPoint:
        return cls(int(data["next_frame"]), str(data["source_id"]), float(data["frame_rate"]))


VIDEO_LAYOUT = StateLayout(
    learner="video_learner", stream="video_stream", totals="video_listen", point_from=VideoStreamPoint.from_dict,
    totals_type=VideoListenTotals, summary_prefix="video_",
    other_learners={
        "learner": "an audio --source (mic, file, librispeech, synth; --source av keeps the video learner's in video/ inside it)"
    },
)


class VideoListenState(RunState):
    """A state directory opened for a video listen run: what to resume from, and the checkpointer.
    Parameters and errors: :class:`~online_gim.run.state.RunState` (it refuses the audio learner's
    state directories)."""

    def __init__(self, directory: str | Path, *, keep: int = 3) -> None:
        super().__init__(directory, VIDEO_LAYOUT, keep=keep)

    def checkpointer(self, learner: StreamLearner, **schedule: Any) -> Checkpointer:
        """The run's checkpointer (:meth:`RunState.checkpointer`; ``schedule``: its periods and ``stop``)."""
        return super().checkpointer(learner, locate=VideoStreamPoint.after, **schedule)
