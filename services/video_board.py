"""The video learner's part of the side service (``listen --source av``): a step observer.

:class:`VideoBoard` watches the video learner's session (on its thread): its newest window becomes a
:class:`~online_gim.services.snapshot.VideoSnapshot` (``/v1/embeddings/latest?stream=video``, the ``video``
part of ``/v1/status``) and its steps update the ``online_gim_video_*`` metrics. A failure here is
logged, never passed on to the learner's loop.
"""

from __future__ import annotations

import logging

from online_gim.report import StepReport
from online_gim.services.metrics import ServiceMetrics
from online_gim.services.snapshot import VideoSnapshot
from online_gim.streams.video_window import VideoWindow

log = logging.getLogger(__name__)


class VideoBoard:
    """Publishes the video learner's steps.

    Parameters:
        source_id: the video stream's name.
        metrics: the process's metrics.

    Attributes:
        snapshot: the newest window, or ``None`` before the first.
    """

    def __init__(self, source_id: str, metrics: ServiceMetrics) -> None:
        self.source_id = source_id
        self.snapshot: VideoSnapshot | None = None
        self._metrics = metrics
        self._seq = 0
        self._errors = 0

    def on_step(self, window: VideoWindow, report: StepReport) -> None:
        """Publish one step of the video learner (called on its thread). Never raises."""
        try:
            self._metrics.observe_video_step(report, window.new_frames)
            previous = self.snapshot
            if report.embeddings and not report.skipped_nonfinite:
                embedded = (tuple(report.embeddings), window.start_frame, report.updates)
            elif previous is not None:  # keep showing the newest window that was encoded
                embedded = (previous.embeddings, previous.embedding_start, previous.embedding_updates)
            else:
                embedded = ((), window.start_frame, report.updates)
            self._seq += 1
            self.snapshot = VideoSnapshot(
                seq=self._seq,
                updates=report.updates,
                start_frame=window.start_frame,
                frames=window.num_frames,
                frame_rate=window.frame_rate,
                skipped=report.skipped_nonfinite,
                real_time_factor=report.real_time_factor,
                modules=tuple(report.modules),
                embeddings=embedded[0],
                embedding_start=embedded[1],
                embedding_updates=embedded[2],
            )
        except Exception:
            self._errors += 1
            if self._errors <= 3:
                log.exception("video board: could not publish video step %s", report.step)

    def close(self) -> None:
        """Nothing to release: the snapshot stays on show."""
