"""The video branches of ``online-gim listen``: ``--source video`` and ``--source av``.

``--source video --path FILE|URL`` learns from the frames alone (:class:`VideoListenSession` on the
calling thread, ``--loop`` repeats the file, ``--speed`` paces it, ``--duration`` counts seconds of
video and ``--max-windows`` video windows). ``--source av --path clip.mp4`` decodes the file once
(:class:`~streams.sources.av.AVSource`): the audio learner runs the usual listen loop on its audio
track while the video learner learns its frames on a thread of its own, each at its own window rate;
the summary holds both (the video keys are those of :class:`VideoListenSummary`).

The video learner's settings come from ``--video-config FILE.yaml`` (a
:class:`~online_gim.video.config.VideoLearnerConfig` preset; frame size, window, modules ...).
``--state DIR`` keeps the video learner's checkpoints and resumes from them
(:mod:`online_gim.state.video_state`): in ``DIR`` with ``--source video``, in ``DIR/video`` with
``--source av`` (the audio learner's are in ``DIR``, as for the audio sources).
"""

from __future__ import annotations

import argparse
import sys
import threading
from pathlib import Path
from typing import Any

from services.cli import CliError
from services.cli import state as state_options


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


def check(args: argparse.Namespace) -> None:
    """Options that do not apply to the video sources.

    Raises:
        CliError: ``--path`` missing, or an option the video sources do not support.
    """
    if args.camera is not None:
        if args.source != "video":
            raise CliError("--camera is a video source: use it with --source video")
        if args.path:
            raise CliError("--camera and --path both name the video: give one")
        if args.loop:
            raise CliError("--loop replays a file: a camera has no end to start over from")
    elif not args.path:
        raise CliError(f"--source {args.source} needs --path FILE|URL (or --camera DEVICE for --source video)")
    if args.source == "video" and args.record is not None:
        raise CliError("--record writes audio: use it with --source av, not --source video")


def video_config(args: argparse.Namespace):
    """The :class:`VideoLearnerConfig` the options ask for (``--video-config``, ``--seed``)."""
    from online_gim.video.config import VideoLearnerConfig, load_video_config

    try:
        config = load_video_config(args.video_config) if args.video_config is not None else VideoLearnerConfig()
        if args.seed is not None:
            config = VideoLearnerConfig.model_validate({**config.model_dump(), "seed": args.seed})
    except ValueError as error:
        raise CliError(str(error)) from None
    return config


def av_source(args: argparse.Namespace, speed: float | None):
    """The one decoder of ``--source av``, its frames scaled to the video learner's size."""
    from streams.sources.av import AVSource
    from streams.sources.file import AudioFileError

    check(args)
    config = video_config(args)
    try:
        return AVSource(args.path, speed=speed, loop=args.loop, size=(config.height, config.width), gray=config.gray)
    except (FileNotFoundError, AudioFileError) as error:  # VideoFileError is an AudioFileError
        raise CliError(str(error)) from None


def _camera_options(pairs: list[str]) -> dict[str, str]:
    """``--camera-option KEY=VALUE`` pairs as FFmpeg's options mapping."""
    options = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise CliError(f"--camera-option takes KEY=VALUE, got {pair!r}")
        options[key] = value
    return options


def _frame_rate(rate: float | None) -> float:
    if rate:
        return rate
    print("online-gim listen: the video does not state its frame rate; taking 25 fps", file=sys.stderr)
    return 25.0


def listen_video(args: argparse.Namespace, signals, speed: float | None) -> tuple[dict[str, Any], bool]:
    """``--source video``: learns from the file's frames until the end, a limit or a signal.

    Returns:
        The summary document and whether the source failed.
    """
    from online_gim.video.learner import VideoLearner
    from services.video_session import repeat_passes
    from streams.sources.video import VideoFileError, VideoFrameSource

    check(args)
    config = video_config(args)
    size = (config.height, config.width)
    try:
        if args.camera is not None:
            source = VideoFrameSource(
                args.camera, size=size, gray=config.gray, device_format=args.camera_format,
                options=_camera_options(args.camera_option),
            )
            speed = None  # a camera delivers its frames at its own pace
        else:
            source = VideoFrameSource(args.path, size=size, gray=config.gray)
    except (FileNotFoundError, VideoFileError) as error:
        raise CliError(str(error)) from None
    if not args.no_http:
        print("online-gim listen: the side service shows the audio learner; --source video runs without it",
              file=sys.stderr)
    try:
        session, state = _video_session(
            args, VideoLearner(config), repeat_passes(source) if args.loop else source, state_directory=args.state,
            frame_rate=_frame_rate(source.frame_rate), source_id=source.source_id, speed=speed,
            max_seconds=args.duration, max_windows=args.max_windows,
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


def _video_session(args: argparse.Namespace, learner, frames, *, state_directory: Path | None, **options):
    """The video listen session of ``learner`` on ``frames`` (``options``: the session's), and with
    ``--state`` the learner's state in ``state_directory``: restored into ``learner``, frame numbers
    going on from its position, checkpointed after every step.

    Returns:
        ``(session, state)``; ``state`` is ``None`` without ``--state``, else the caller closes it
        when the session ends (the last checkpoint, then the directory is released).
    Raises:
        CliError: the state directory cannot be used or holds another configuration (it is released).
    """
    from services.video_session import VideoListenSession

    state = state_options.open_listen_state(args, video=True, directory=state_directory)
    if state is None:
        return VideoListenSession(frames, learner, **options), None
    try:
        state_options.restore(state, learner)
        session = VideoListenSession(frames, learner, origin=state.origin, **options)
        session.add_observer(state_options.checkpointer(args, state, learner, stop=session.stop).on_step)
    except BaseException:
        state.close()
        raise
    return session, state


class BesideAudio:
    """The video learner of ``--source av``, on its own thread, fed by the AV source's frame channel.

    ``stop``/``stopping`` stop both sessions (what the signal handler calls). With ``--state DIR``
    the video learner resumes from and checkpoints into ``DIR/video`` (:data:`VIDEO_STATE`), on its
    own thread, and releases that directory when its session ends.

    Parameters:
        args: the listen options.
        source: the :class:`~streams.sources.av.AVSource`.
        audio_session: the audio :class:`~services.session.ListenSession`.
        board: the side service's :class:`~services.live.LiveBoard` (``None`` without it): the
            video learner publishes every step there too.
    Raises:
        CliError: the video state directory cannot be used or holds another configuration.
    """

    def __init__(self, args: argparse.Namespace, source, audio_session, *, board=None) -> None:
        from online_gim.video.learner import VideoLearner

        self.source = source
        self.audio_session = audio_session
        self.learner = VideoLearner(video_config(args))
        self.session, self.state = _video_session(
            args, self.learner, source.frames, state_directory=None if args.state is None else args.state / VIDEO_STATE,
            frame_rate=_frame_rate(source.frame_rate), source_id=source.video_source_id,
        )
        if board is not None:
            board.attach_video(source.video_source_id)
            self.session.add_observer(board.on_video_step)
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
