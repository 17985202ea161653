"""The options of ``online-gim listen``, typed: what the command line turns ``argparse`` into at its edge.

:meth:`ListenOptions.from_args` checks every option that can be checked before anything slow is
built (one-sentence :class:`~online_gim.services.cli.CliError` s, in the order the options are given on the
help page) and returns the typed options the rest of the command works from: which source
(:class:`SourceOptions`), the learner's configuration (a
:class:`~online_gim.config.LearnerConfig`, with ``--window``, ``--seed`` and ``--schedule``
applied), the video learner's (``--source video`` / ``av``), the run's limits and outputs
(:class:`RunOptions`), the side service's (:class:`~online_gim.services.cli.service_options.ServiceOptions`)
and the durable state's (:class:`~online_gim.services.cli.state.StateOptions`).
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from online_gim.services.cli import CliError, scale_options, service_options
from online_gim.services.cli import state as state_options
from online_gim.services.cli.replay_options import replay_config
from online_gim.streams.replay_config import ReplayConfig

if TYPE_CHECKING:
    from online_gim.config import LearnerConfig
    from online_gim.video.config import VideoLearnerConfig

VIDEO_SOURCES = ("video", "av")


@dataclass(frozen=True)
class SourceOptions:
    """Where the stream comes from.

    Attributes:
        kind: ``synth``, ``librispeech``, ``file``, ``mic``, ``video`` or ``av``.
        roots: librispeech: LibriSpeech trees; synth: at most one synthetic corpus folder.
        labels: librispeech: the GIM/CPC label folder.
        split: only the utterances of this split (``train``, ``test``).
        order: utterance order (``sorted``, ``shuffle``); ``None``: the source's default.
        path: file, video, av: the file or URL.
        speed: pace in multiples of real time; ``None`` = as fast as the learner goes.
        loop: start over at the end.
        device: mic: the input device.
        seed: seeds the utterance order.
        camera: video: a camera device instead of ``path``.
        camera_format: its FFmpeg input format.
        camera_options: FFmpeg options for opening it.
        shard: librispeech, synth: ``(index, count)``, this replica's share of the corpus
            (``--shard-by-rank``: set per rank by :mod:`~online_gim.services.cli.listen_replicas`).
    """

    kind: str
    roots: tuple[Path, ...] = ()
    labels: Path | None = None
    split: str | None = None
    order: str | None = None
    path: str | None = None
    speed: float | None = 1.0
    loop: bool = False
    device: str | None = None
    seed: int = 0
    camera: str | None = None
    camera_format: str = "v4l2"
    camera_options: dict[str, str] = field(default_factory=dict)
    shard: tuple[int, int] | None = None


@dataclass(frozen=True)
class RunOptions:
    """When the run stops and what it writes.

    Attributes:
        duration: stop after this many seconds of source audio (video: of video).
        max_windows: stop after this many windows.
        summary_json: write the final summary here.
        record: also write the audio the learner processed to this file.
        quiet: no live status line and no printed summary.
    """

    duration: float | None = None
    max_windows: int | None = None
    summary_json: Path | None = None
    record: Path | None = None
    quiet: bool = False


@dataclass(frozen=True)
class ListenOptions:
    """Everything ``online-gim listen`` was asked to do.

    Attributes:
        source: the stream.
        learner: the audio learner's configuration (``None`` for ``--source video``).
        schedule: ``auto``, ``all``, ``random`` or ``round_robin`` (the summary's ``schedule``).
        hop: samples between window starts (``None``: the window).
        capacity: ring buffer size in samples (``None``: 8 windows).
        replay: ``--replay``, ``--replay-minutes``, ``--replay-policy``.
        video: the video learner's configuration (``--source video`` and ``av``), else ``None``.
        run: the run's limits and outputs.
        service: the side service (``None`` with ``--no-http``).
        state: the durable state (``None`` without ``--state``).
        scale: how the run spreads over processes (``--pipeline``, ``--replicas``).
    """

    source: SourceOptions
    learner: LearnerConfig | None
    schedule: str
    hop: int | None
    capacity: int | None
    replay: ReplayConfig
    video: VideoLearnerConfig | None
    run: RunOptions
    service: service_options.ServiceOptions | None
    state: state_options.StateOptions | None
    scale: scale_options.ScaleOptions = scale_options.ScaleOptions()

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> ListenOptions:
        """The typed options of a parsed ``listen`` command line.

        Raises:
            CliError: an option that cannot work (one sentence saying what to change).
        """
        if args.duration is not None and not args.duration > 0:
            raise CliError("--duration must be a positive number of seconds")
        if args.max_windows is not None and args.max_windows < 1:
            raise CliError("--max-windows must be at least 1")
        service = service_options.from_args(args)
        source = _source_options(args)
        learner = hop = capacity = video = None
        schedule, replay = "learner", ReplayConfig()
        if source.kind != "video":
            learner, schedule = _learner_config(args)
            replay = replay_config(args)
            if args.hop is not None and not 0 < args.hop <= learner.window:
                raise CliError(f"--hop must be between 1 and the window ({learner.window})")
            hop = args.hop
            if args.buffer_seconds is not None:
                capacity = round(args.buffer_seconds * 16_000)
                if capacity < learner.window:
                    raise CliError(f"--buffer-seconds must hold at least one window ({learner.window / 16_000:.2f} s)")
        if source.kind in VIDEO_SOURCES:
            _check_video(args)
            video = _video_config(args)
        run = RunOptions(
            duration=args.duration, max_windows=args.max_windows, summary_json=args.summary_json, record=args.record,
            quiet=args.quiet,
        )
        return cls(
            source=source, learner=learner, schedule=schedule, hop=hop, capacity=capacity, replay=replay, video=video,
            run=run, service=service, state=state_options.from_args(args),
            scale=scale_options.from_args(args, source=source.kind),
        )


def _source_options(args: argparse.Namespace) -> SourceOptions:
    from online_gim.streams.sources.base import parse_speed

    try:
        speed = parse_speed(args.speed)
    except ValueError as error:
        raise CliError(str(error)) from None
    if args.camera is not None:
        speed = None  # a camera delivers its frames at its own pace
    return SourceOptions(
        kind=args.source, roots=tuple(args.root or ()), labels=args.labels, split=args.split, order=args.order,
        path=args.path, speed=speed, loop=args.loop, device=args.device, seed=args.seed if args.seed is not None else 0,
        camera=args.camera, camera_format=args.camera_format,
        camera_options=_camera_options(args.camera_option) if args.camera is not None else {},
    )


def _camera_options(pairs: list[str]) -> dict[str, str]:
    """``--camera-option KEY=VALUE`` pairs as FFmpeg's options mapping."""
    options = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise CliError(f"--camera-option takes KEY=VALUE, got {pair!r}")
        options[key] = value
    return options


def _learner_config(args: argparse.Namespace) -> tuple[LearnerConfig, str]:
    """The audio learner's configuration (``--config``, ``--window``, ``--seed``, ``--schedule``)
    and the schedule's name."""
    from online_gim.config import LearnerConfig, load_config

    try:
        config = load_config(args.config) if args.config is not None else LearnerConfig()
    except ValueError as error:
        raise CliError(str(error)) from None
    changes: dict[str, object] = {}
    if args.window is not None:
        changes["window"] = args.window
    if args.seed is not None:
        changes["seed"] = args.seed
    schedule = args.schedule or ("auto" if config.schedule == "all" else config.schedule)
    changes["schedule"] = "all" if schedule == "auto" else schedule
    try:
        config = LearnerConfig.model_validate({**config.model_dump(), **changes})
    except ValueError as error:
        raise CliError(f"invalid learner settings: {error}") from None
    return config, schedule


def _check_video(args: argparse.Namespace) -> None:
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


def _video_config(args: argparse.Namespace) -> VideoLearnerConfig:
    """The video learner's configuration (``--video-config``, ``--seed``)."""
    from online_gim.video.config import VideoLearnerConfig, load_video_config

    try:
        config = load_video_config(args.video_config) if args.video_config is not None else VideoLearnerConfig()
        if args.seed is not None:
            config = VideoLearnerConfig.model_validate({**config.model_dump(), "seed": args.seed})
    except ValueError as error:
        raise CliError(str(error)) from None
    return config
