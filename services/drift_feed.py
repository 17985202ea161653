"""What the drift monitor gets from the learner's thread, and the reading it gives back.

:class:`DriftFeed` is the side service's drift part (:class:`~online_gim.services.live.LiveBoard` calls it
after every step): it hands the drift monitor (:mod:`online_gim.services.drift_monitor`, its own thread) the
frames sampled from each module's output with the window's audio, and now and then a copy of the
modules' weights (read through the learner's :class:`~online_gim.run.contract.LearnerView`), never
waiting on it; it keeps the newest :class:`~online_gim.services.drift_monitor.DriftReading` and exports it as
metrics.
"""

from __future__ import annotations

import torch

from online_gim.run.contract import LearnerView
from online_gim.services.drift_monitor import DriftConfig, DriftMonitor, DriftReading
from online_gim.services.metrics import ServiceMetrics
from online_gim.streams.window import AudioWindow


class DriftFeed:
    """Feeds a :class:`DriftMonitor` and keeps its newest reading.

    Parameters:
        config: the drift monitor's schedule.
        metrics: where the readings are exported.

    Attributes:
        reading: the newest drift reading (published by the drift monitor's thread), or ``None``.
    """

    def __init__(self, config: DriftConfig, metrics: ServiceMetrics) -> None:
        self.config = config
        self.reading: DriftReading | None = None
        self._metrics = metrics
        self._monitor = DriftMonitor(config, self._on_reading)

    def observe(
        self, window: AudioWindow, stream_seconds: float, sampled: dict[int, torch.Tensor] | None, learner: LearnerView | None
    ) -> None:
        """One step (the learner's thread): its sampled frames (``None`` for a skipped window) with
        the window's audio, and the weights when a copy is due."""
        if sampled is not None:
            self._monitor.submit_window(stream_seconds, window.samples.detach().to("cpu", torch.float32, copy=True), sampled)
        if learner is not None and self._monitor.weights_due():
            weights = {
                module: [parameter.detach().to("cpu", copy=True) for parameter in parameters]
                for module, parameters in enumerate(learner.module_parameters())
            }
            if weights:
                self._monitor.submit_weights(weights)

    def _on_reading(self, reading: DriftReading) -> None:  # the drift monitor's thread
        self.reading = reading
        self._metrics.observe_drift(reading)

    def flush(self) -> None:
        """Waits for the drift monitor to process what it was given and publish a reading (tests)."""
        self._monitor.flush()

    def close(self) -> None:
        """Stops the drift monitor's thread."""
        self._monitor.close()
