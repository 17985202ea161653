"""The video learner's throughput benchmark (``video_fps_learn`` of ``online-gim bench --json``)."""

from __future__ import annotations

from online_gim.video.config import VideoLearnerConfig
from online_gim.video.learner import VideoLearner
from online_gim.video.scenes import render_scenes
from online_gim.streams.sources.video import VideoFrame
from online_gim.streams.video_window import VideoWindower


def measure_video_fps_learn(config: VideoLearnerConfig | None = None, *, windows: int = 10, warmup: int = 6) -> float:
    """Frames learned per wall-clock second of the learner's steps, at the configured frame size.

    A synthetic multi-scene video (:func:`~online_gim.video.scenes.render_scenes`, in the
    configured size and colour) streams through a :class:`VideoWindower` into a fresh
    :class:`VideoLearner`. The first ``warmup`` windows are not timed: they fill the negative
    memories, before which no module updates. Then ``windows`` windows are timed, every module
    updating on each: the result is the frames they advanced the stream by (``new_frames``)
    divided by the seconds their ``step`` calls took. At or above the stream's frame rate the
    learner keeps up with a live video. Uses the process' torch thread settings.

    Args:
        config: the learner (default: ``VideoLearnerConfig()``, 48x64 gray, VGG-6 at 1/8 width).
        windows: windows timed.
        warmup: windows learned before timing.
    """
    config = config or VideoLearnerConfig()
    learner = VideoLearner(config)
    frames_needed = config.window_frames + (warmup + windows) * config.hop
    seconds_per_scene = 2.0
    scenes = -(-frames_needed // round(seconds_per_scene * 25))
    images = render_scenes(
        scenes=scenes, seconds_per_scene=seconds_per_scene, size=(config.height, config.width), gray=config.gray
    )
    windower = VideoWindower(window=config.window_frames, hop=config.hop, frame_rate=25.0, source_id="bench")
    learned = seconds = 0.0
    done = 0
    for index, image in enumerate(images):
        window = windower.push(VideoFrame(image=image, pts=index / 25.0, index=index))
        if window is None:
            continue
        report = learner.step(window)
        done += 1
        if done > warmup:
            learned += window.new_frames
            seconds += report.seconds
        if done == warmup + windows:
            break
    return learned / seconds
