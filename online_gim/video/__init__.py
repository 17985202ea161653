"""The video learner: CLAPP on a stream of frames, reusing the audio learner's heads, losses,
memories, objectives and update schedules (:mod:`online_gim.local_update`).

Public names: :class:`VideoLearnerConfig` (typed configuration), :class:`VideoLearner` (one
update per window of consecutive frames, a :class:`~online_gim.report.StepReport` per window whose
positions count frames), the label-free frame-retrieval
check (:mod:`online_gim.video.retrieval`), synthetic multi-scene videos
(:mod:`online_gim.video.scenes`) and :func:`measure_video_fps_learn` (the benchmark).
"""

from online_gim.video.config import Conv2dLayerConfig, VideoEncoderConfig, VideoLearnerConfig, load_video_config
from online_gim.video.learner import VideoLearner

__all__ = [
    "Conv2dLayerConfig",
    "VideoEncoderConfig",
    "VideoLearner",
    "VideoLearnerConfig",
    "load_video_config",
]
