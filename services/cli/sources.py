"""The sources ``online-gim listen`` learns from, built from its typed :class:`SourceOptions`.

Each function opens what the options name and turns what can go wrong there (a missing file, an
unreadable corpus, no microphone) into a one-sentence :class:`~online_gim.services.cli.CliError`.
"""

from __future__ import annotations

import sys
from typing import TYPE_CHECKING

from online_gim.services.cli import CliError
from online_gim.services.cli.listen_options import SourceOptions

if TYPE_CHECKING:
    from online_gim.video.config import VideoLearnerConfig
    from online_gim.streams.sources.av import AVSource
    from online_gim.streams.sources.base import AudioSource
    from online_gim.streams.sources.librispeech import ReplayPosition
    from online_gim.streams.sources.mic import MicrophoneSource
    from online_gim.streams.sources.video import VideoFrameSource


def audio_source(
    options: SourceOptions, video: VideoLearnerConfig | None = None, start: ReplayPosition | None = None
) -> AudioSource | MicrophoneSource:
    """The audio source the options ask for (not yet started); a replay starts at ``start`` (when
    resuming); ``--source av`` decodes its frames at ``video``'s size."""
    if options.kind == "mic":
        from online_gim.streams.sources.mic import MicrophoneSource, MicrophoneUnavailable

        mic = MicrophoneSource(options.device)
        try:
            mic.resolve()  # fail early, with one sentence, before the learner is built
        except MicrophoneUnavailable as error:
            raise CliError(str(error)) from None
        return mic
    if options.kind == "file":
        from online_gim.streams.sources.file import AudioFileError, FileSource

        if not options.path:
            raise CliError("--source file needs --path FILE|URL")
        try:
            return FileSource(options.path, speed=options.speed, loop=options.loop)
        except (FileNotFoundError, AudioFileError) as error:
            raise CliError(str(error)) from None
    if options.kind == "av":
        return av_source(options, video)
    if options.kind == "librispeech":
        from online_gim.streams.sources.librispeech import LibriSpeechReplay

        if not options.roots:
            raise CliError("--source librispeech needs --root DIR (a LibriSpeech tree)")
        try:
            return LibriSpeechReplay(
                list(options.roots), options.labels, split=options.split, order=options.order or "sorted",
                seed=options.seed, speed=options.speed, loop=options.loop, start=start,
                source_id=stream_name("librispeech", options.shard), shard=options.shard,
            )
        except (OSError, ValueError) as error:
            raise CliError(str(error)) from None
    from online_gim.streams.corpora.espeak import EspeakError
    from online_gim.streams.sources.synth import SynthSource

    if len(options.roots) > 1:
        raise CliError("--source synth takes one --root (a synthetic corpus folder)")
    try:
        return SynthSource(
            corpus_dir=options.roots[0] if options.roots else None, split=options.split,
            order=options.order or "shuffle", seed=options.seed, speed=options.speed, start=start,
            source_id=stream_name("synth", options.shard), shard=options.shard,
        )
    except (EspeakError, OSError, ValueError) as error:
        raise CliError(f"cannot open the synthetic speech stream: {error}") from None


def stream_name(kind: str, shard: tuple[int, int] | None) -> str:
    """A corpus stream's ``source_id``: ``kind``, and for a shard ``kind:shard<index>of<count>``."""
    return kind if shard is None else f"{kind}:shard{shard[0]}of{shard[1]}"


def av_source(options: SourceOptions, video: VideoLearnerConfig) -> AVSource:
    """The one decoder of ``--source av``, its frames scaled to the video learner's size."""
    from online_gim.streams.sources.av import AVSource
    from online_gim.streams.sources.file import AudioFileError

    try:
        return AVSource(options.path, speed=options.speed, loop=options.loop, size=(video.height, video.width), gray=video.gray)
    except (FileNotFoundError, AudioFileError) as error:  # VideoFileError is an AudioFileError
        raise CliError(str(error)) from None


def video_source(options: SourceOptions, video: VideoLearnerConfig) -> VideoFrameSource:
    """The frames of ``--source video``: a file or URL, or a camera, at the video learner's size."""
    from online_gim.streams.sources.video import VideoFileError, VideoFrameSource

    size = (video.height, video.width)
    try:
        if options.camera is not None:
            return VideoFrameSource(
                options.camera, size=size, gray=video.gray, device_format=options.camera_format,
                options=options.camera_options,
            )
        return VideoFrameSource(options.path, size=size, gray=video.gray)
    except (FileNotFoundError, VideoFileError) as error:
        raise CliError(str(error)) from None


def frame_rate(rate: float | None) -> float:
    """A video's frame rate, 25 fps when it does not state one (said on stderr)."""
    if rate:
        return rate
    print("online-gim listen: the video does not state its frame rate; taking 25 fps", file=sys.stderr)
    return 25.0


def phone_names(options: SourceOptions) -> tuple[str, ...] | None:
    """Names of the phone classes when the source's labels come from the synthetic corpus."""
    if options.kind != "synth":
        return None
    from online_gim.streams.corpora.phones import PHONES

    return tuple(PHONES)
