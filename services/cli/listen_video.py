"""The video branches of ``online-gim listen``: ``--source video`` and ``--source av``.

``--source video --path FILE|URL`` learns from the frames alone (a
:class:`~online_gim.run.video.VideoListenSession` on the calling thread, ``--loop`` repeats the
file, ``--speed`` paces it, ``--duration`` counts seconds of video and ``--max-windows`` video
windows). ``--source av --path clip.mp4`` decodes the file once
(:class:`~online_gim.streams.sources.av.AVSource`): the audio learner runs the usual listen session on its
audio track while the video learner learns its frames in a session on a thread of its own, each at
its own window rate; the summary holds both (the video keys are those of
:class:`~online_gim.run.video.VideoListenSummary`).

The video learner's settings come from ``--video-config FILE.yaml`` (a
:class:`~online_gim.video.config.VideoLearnerConfig` preset; frame size, window, modules ...).
``--state DIR`` keeps the video learner's checkpoints and resumes from them
(:mod:`online_gim.run.video_state`): in ``DIR`` with ``--source video``, in ``DIR/video`` with
``--source av`` (the audio learner's are in ``DIR``, as for the audio sources).
"""

from __future__ import annotations

import argparse
import sys
import threading
from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from online_gim.services.cli import sources
from online_gim.services.cli import state as state_options
from online_gim.services.cli.listen_options import ListenOptions

if TYPE_CHECKING:
    from online_gim.run.audio import ListenSession
    from online_gim.run.state import RunState
    from online_gim.run.video import VideoListenSession
    from online_gim.services.live import LiveBoard
    from online_gim.streams.sources.av import AVSource
    from online_gim.streams.sources.video import VideoFrame

VIDEO_STATE = "video"
"""With ``--source av --state DIR``, the video learner's state directory is ``DIR/video``."""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("video learner (--source video, --source av)")
    group.add_argument("--video-config", type=Path, default=None, metavar="FILE.yaml",
                       help="video learner configuration preset (frame size, window, modules; default: the built-in one)")
    group.add_argument("--camera", default=None, metavar="DEVICE",
                       help="video: learn from a camera instead of --path (e.g. /dev/video0); live: "
                       "the device sets the pace, --speed and --loop do not apply")
    group.add_argument("--camera-format", default="v4l2", metavar="FORMAT",
                       help="FFmpeg input format of --camera (default: v4l2; avfoundation on macOS, "
                       "lavfi for a generated test source)")
    group.add_argument("--camera-option", action="append", default=[], metavar="KEY=VALUE",
                       help="FFmpeg option for opening --camera, e.g. framerate=30 or video_size=640x480 (repeatable)")


def listen_video(options: ListenOptions, signals) -> tuple[dict[str, Any], bool]:
    """``--source video``: learns from the file's frames until the end, a limit or a signal.

    Returns:
        The summary document and whether the source failed.
    """
    from online_gim.run.video import repeat_passes

    source = sources.video_source(options.source, options.video)
    if options.service is not None:
        print("online-gim listen: the side service shows the audio learner; --source video runs without it",
              file=sys.stderr)
    try:
        session, state = _video_session(
            options, repeat_passes(source) if options.source.loop else source,
            state_directory=options.state.directory if options.state is not None else None,
            frame_rate=sources.frame_rate(source.frame_rate), source_id=source.source_id, speed=options.source.speed,
            max_seconds=options.run.duration, max_windows=options.run.max_windows,
        )
    except BaseException:
        source.close()
        raise
    signals.session = session
    try:
        summary = session.run()
    finally:
        if state is not None:
            state.close()  # the last checkpoint, then the directory is released
    document = {"source": summary.video_source, "stop_reason": summary.video_stop_reason, **summary.to_dict()}
    if state is not None:
        document.update(state.summary_fields())
    return document, summary.video_stop_reason == "source_error"


def _video_session(
    options: ListenOptions, frames: Iterable[VideoFrame], *, state_directory: Path | None, **session: Any
) -> tuple[VideoListenSession, RunState | None]:
    """The video learner's session on ``frames`` (``session``: the session's options), and with
    ``--state`` the learner's state in ``state_directory``: restored into the learner, frame
    numbers going on from its position, checkpointed after every step.

    Returns:
        ``(session, state)``; ``state`` is ``None`` without ``--state``, else the caller closes it
        when the session ends (the last checkpoint, then the directory is released).
    Raises:
        CliError: the state directory cannot be used or holds another configuration (it is released).
    """
    from online_gim.run.video import VideoListenSession
    from online_gim.video.learner import VideoLearner

    learner = VideoLearner(options.video)
    if options.state is None:
        return VideoListenSession(frames, learner, **session), None
    state = state_options.open_listen_state(options.state, video=True, directory=state_directory)
    try:
        state_options.restore(state, learner)
        video_session = VideoListenSession(frames, learner, origin=state.origin, **session)
        video_session.add_observer(state.checkpointer(
            learner, every_windows=options.state.every_windows, every_seconds=options.state.every_seconds,
            stop=video_session.stop,
        ))
    except BaseException:
        state.close()
        raise
    return video_session, state


class BesideAudio:
    """The video learner of ``--source av``, its session on its own thread, fed by the AV source's
    frame channel.

    ``stop``/``stopping`` stop both sessions (what the signal handler calls). With ``--state DIR``
    the video learner resumes from and checkpoints into ``DIR/video`` (:data:`VIDEO_STATE`), on its
    own thread, and releases that directory when its session ends.

    Parameters:
        options: the listen options.
        source: the :class:`~online_gim.streams.sources.av.AVSource`.
        audio_session: the audio :class:`~online_gim.run.audio.ListenSession`.
        board: the side service's :class:`~online_gim.services.live.LiveBoard` (``None`` without it): the
            video learner publishes every step there too.
    Raises:
        CliError: the video state directory cannot be used or holds another configuration.
    """

    def __init__(
        self, options: ListenOptions, source: AVSource, audio_session: ListenSession, *, board: LiveBoard | None = None
    ) -> None:
        self.source = source
        self.audio_session = audio_session
        directory = options.state.directory / VIDEO_STATE if options.state is not None else None
        self.session, self.state = _video_session(
            options, source.frames, state_directory=directory, frame_rate=sources.frame_rate(source.frame_rate),
            source_id=source.video_source_id,
        )
        if board is not None:
            self.session.add_observer(board.attach_video(source.video_source_id))
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name="video-learner", daemon=True)

    def start(self) -> BesideAudio:
        self._thread.start()
        return self

    def _run(self) -> None:
        try:
            self.session.run()
        except BaseException as error:  # noqa: BLE001 - re-raised on the main thread by finish()
            self._error = error
        finally:
            self.source.frames.cancel()  # the decoder never waits for a finished video learner
            if self.state is not None:
                self.state.close()  # the last checkpoint, then the directory is released

    @property
    def stopping(self) -> bool:
        return self.audio_session.stopping

    def stop(self, reason: str = "stopped") -> None:
        self.audio_session.stop(reason)
        self.session.stop(reason)

    def finish(self) -> dict[str, Any]:
        """Waits for the video learner (it learns the frames decoded before the audio stopped) and
        returns its summary fields."""
        self.source.frames.close()  # no-op when decoding already ended
        self._thread.join()
        if self._error is not None:
            raise self._error
        document = self.session.summary.to_dict()
        if self.state is not None:
            document.update(self.state.summary_fields())
        return document


def print_summary(document: dict[str, Any]) -> None:
    """The video part of the printed summary."""
    fps = document.get("video_fps_learn")
    losses = " ".join("-" if v is None else f"{v:.3f}" for v in document["video_final_loss"].values())
    print(
        f"video: stopped: {document['video_stop_reason']}   frames {document['frames_processed']} in "
        f"{document['video_windows_processed']} windows (non-finite {document['video_windows_skipped_nonfinite']})"
        f"   {'-' if fps is None else f'{fps:.1f}'} frames learned per second   final loss per module: {losses}"
    )
