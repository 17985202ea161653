"""The video learner: CLAPP on a stream of frames, reusing the audio learner's heads, losses,
memories, objectives and update schedules (:mod:`online_gim.local_update`).

Public names: :class:`VideoLearnerConfig` (typed configuration), :class:`VideoLearner` (one
update per window of consecutive frames), :class:`VideoStepReport`, the label-free frame-retrieval
check (:mod:`online_gim.video.retrieval`), synthetic multi-scene videos
(:mod:`online_gim.video.scenes`) and :func:`measure_video_fps_learn` (the benchmark).
"""

from online_gim.video.config import Conv2dLayerConfig, VideoEncoderConfig, VideoLearnerConfig, load_video_config
from online_gim.video.learner import VideoLearner, VideoStepReport

__all__ = [
    "Conv2dLayerConfig",
    "VideoEncoderConfig",
    "VideoLearner",
    "VideoLearnerConfig",
    "VideoStepReport",
    "load_video_config",
]
