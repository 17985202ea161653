"""Prometheus metrics of the running learner, in their own ``CollectorRegistry``.

Names follow the Prometheus conventions: one ``online_gim_`` prefix, base units (seconds, ratios
0..1, decibels, hertz), ``_total`` for counters, a bounded ``module`` label (the module index) and
a bounded ``task`` label (``phone``/``speaker``). Values are set on the learner's thread by
:class:`online_gim.services.live.LiveBoard` (each ``set``/``inc`` takes only the value's own short lock) and
rendered on the HTTP thread by :meth:`ServiceMetrics.render`.

The full list, with help texts, is :data:`METRIC_HELP` (also in ``docs/service.md``).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    disable_created_metrics,
    generate_latest,
)

from online_gim.report import ProbeReadout, StepReport
from online_gim.streams.counters import StreamCounters

PREFIX = "online_gim_"

disable_created_metrics()  # no ``*_created`` series beside every counter and histogram

STEP_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
"""Upper bounds (seconds) of the update-duration histograms: a 1.28 s window must take less."""


class ServiceMetrics:
    """Every metric of the side service, registered in one private registry.

    Parameters:
        registry: where to register; a new ``CollectorRegistry`` by default (so that several
            boards, e.g. in tests, never collide in the global registry).
    """

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry if registry is not None else CollectorRegistry(auto_describe=True)
        r = self.registry
        m = ("module",)
        ms = ("module", "stage")  # the learning families: a pipeline's modules live in several stages

        def gauge(name: str, doc: str, labels: tuple[str, ...] = ()) -> Gauge:
            return Gauge(PREFIX + name, doc, labels, registry=r)

        def counter(name: str, doc: str) -> Counter:
            return Counter(PREFIX + name, doc, registry=r)

        # learning, per module
        self.loss = gauge("module_loss", "Local loss of the module on the newest window it scored.", ms)
        self.loss_pos = gauge("module_loss_positive", "Positive part of the module's hinge loss.", ms)
        self.loss_neg = gauge("module_loss_negative", "Negative part of the module's hinge loss.", ms)
        self.loss_chance = gauge(
            "module_loss_chance_ratio", "Loss divided by its chance value; near or above 1 = learned nothing or collapsed.", ms
        )
        self.active = gauge("module_active_hinge_ratio", "Fraction of hinge terms that were active (non-zero gradient).", ms)
        self.dead = gauge("module_dead_unit_ratio", "Fraction of the module's output units never positive in the window.", ms)
        self.module_updates = Counter(
            PREFIX + "module_updates", "Windows on which the module's weights were updated.", ms, registry=r
        )
        self.module_seconds = Histogram(
            PREFIX + "module_update_duration_seconds", "Wall time of one module's forward and update.", ms,
            buckets=STEP_BUCKETS, registry=r,
        )
        self.step_seconds = Histogram(
            PREFIX + "update_duration_seconds", "Wall time of the learner's whole step on one window.",
            buckets=STEP_BUCKETS, registry=r,
        )
        self.rtf = gauge("real_time_factor", "Learner seconds of compute per second of audio, newest window (<1 keeps up).")
        self.model_step = gauge("model_step", "Windows that updated weights so far (the model step).")
        self.stream_seconds = gauge("stream_seconds", "Stream time of the newest sample delivered by the source.")
        # the stream
        self.windows_processed = counter("windows_processed", "Windows the learner processed.")
        self.windows_skipped = counter("windows_skipped", "Windows skipped without learning: non-finite samples, a level beyond float32's range, or a non-finite result (rolled back).")
        self.windows_dropped = counter("windows_dropped", "Whole windows lost in the ring buffer because the learner fell behind.")
        self.samples_in = counter("samples_in", "Samples (16 kHz) delivered by the source into the ring buffer.")
        self.samples_dropped = counter("samples_dropped", "Samples overwritten in the ring buffer before the learner read them.")
        self.files_skipped = counter("files_skipped", "Files or utterances that could not be decoded and were skipped.")
        self.overflows = counter("input_overflows", "Input overflows reported by the audio device.")
        self.fill = gauge("buffer_fill_ratio", "Unread backlog of the ring buffer divided by its capacity.")
        self.lag = gauge("source_lag_seconds", "Stream time between the newest delivered sample and the end of the newest processed window.")
        # memories and probes
        self.memory_size = gauge("memory_vectors", "Vectors stored in the module's FAISS memory.", m)
        self.probe_accuracy = gauge(
            "probe_accuracy_ratio", "Running prequential accuracy of the online linear probe.", ("task",)
        )
        # drift
        self.drift_cosine = gauge(
            "embedding_drift_cosine_distance", "1 - cosine of the mean embeddings, current vs reference window.", m
        )
        self.drift_mmd = gauge(
            "embedding_drift_mmd", "Unbiased squared-MMD estimate (Gaussian kernel, median bandwidth), current vs reference.", m
        )
        self.weight_drift = gauge("weight_drift_ratio", "Relative change of the module's weights over the last interval.", m)
        self.weight_interval = gauge("weight_drift_interval_seconds", "Wall seconds between the two weight copies compared.")
        self.input_level = gauge("input_level_dbfs", "Mean RMS level of the recent audio, dB full scale.")
        self.input_level_drift = gauge("input_level_drift_decibels", "Recent audio level minus the reference's, dB.")
        self.input_spectrum_drift = gauge(
            "input_spectrum_drift_decibels", "RMS difference of the band-energy profiles, recent vs reference audio, dB."
        )
        self.input_centroid = gauge("input_spectral_centroid_hertz", "Mean spectral centroid of the recent audio.")
        self.input_flatness = gauge("input_spectral_flatness_ratio", "Mean spectral flatness of the recent audio (1 = white noise).")
        self.drift_reference_age = gauge(
            "drift_reference_age_seconds", "Stream seconds since the end of the drift reference window."
        )
        # the video learner beside the audio one (--source av)
        self.video_loss = gauge("video_module_loss", "Local loss of the video module on the newest video window.", m)
        self.video_loss_chance = gauge(
            "video_module_loss_chance_ratio", "Video module's loss divided by its chance value (near 1 = learned nothing).", m
        )
        self.video_dead = gauge("video_module_dead_unit_ratio", "Fraction of the video module's units never positive in the window.", m)
        self.video_windows = counter("video_windows_processed", "Video windows the video learner processed.")
        self.video_windows_skipped = counter("video_windows_skipped", "Video windows skipped because of non-finite pixels.")
        self.video_frames = counter("video_frames", "New video frames learned from (each frame counted once).")
        self.video_rtf = gauge("video_real_time_factor", "Video learner seconds of compute per second of video, newest window.")
        self.video_model_step = gauge("video_model_step", "Video windows that updated weights so far.")
        # the service itself
        self.stream_clients = gauge("service_stream_clients", "Clients connected to the /v1/stream event stream.")
        self._last_counters = StreamCounters()
        self._checkpoints: _CheckpointMetrics | None = None

    # -- learner's thread -------------------------------------------------------------------

    def observe_step(
        self,
        report: StepReport,
        counters: StreamCounters,
        *,
        fill_ratio: float | None = None,
        lag_seconds: float | None = None,
    ) -> None:
        """Record one learner step and the stream's running totals."""
        self.windows_processed.inc()
        if report.skipped_nonfinite:
            self.windows_skipped.inc()
        _set(self.rtf, report.real_time_factor)
        self.model_step.set(report.updates)
        _observe(self.step_seconds, report.seconds)
        for mod in report.modules:
            label = (str(mod.module), str(mod.stage))
            _set(self.loss.labels(*label), mod.loss)
            _set(self.loss_pos.labels(*label), mod.loss_pos)
            _set(self.loss_neg.labels(*label), mod.loss_neg)
            _set(self.loss_chance.labels(*label), mod.loss_ratio)
            _set(self.active.labels(*label), mod.active_fraction)
            _set(self.dead.labels(*label), mod.dead_fraction)
            if mod.updated:
                self.module_updates.labels(*label).inc()
                _observe(self.module_seconds.labels(*label), mod.seconds)
        last = self._last_counters
        for metric, name in (
            (self.windows_dropped, "windows_dropped"),
            (self.samples_in, "samples_in"),
            (self.samples_dropped, "samples_dropped"),
            (self.files_skipped, "files_skipped"),
            (self.overflows, "overflows"),
        ):
            delta = getattr(counters, name) - getattr(last, name)
            if delta > 0:
                metric.inc(delta)
        self._last_counters = StreamCounters(**counters.to_dict())
        _set(self.stream_seconds, counters.source_seconds)
        if fill_ratio is not None:
            _set(self.fill, fill_ratio)
        if lag_seconds is not None:
            _set(self.lag, lag_seconds)

    def observe_video_step(self, report: StepReport, new_frames: int) -> None:
        """Record one step of the video learner, whose window advanced the stream by ``new_frames``."""
        self.video_windows.inc()
        if report.skipped_nonfinite:
            self.video_windows_skipped.inc()
        self.video_frames.inc(new_frames)
        _set(self.video_rtf, report.real_time_factor)
        self.video_model_step.set(report.updates)
        for mod in report.modules:
            label = str(mod.module)
            _set(self.video_loss.labels(label), mod.loss)
            _set(self.video_loss_chance.labels(label), mod.loss_ratio)
            _set(self.video_dead.labels(label), mod.dead_fraction)

    def observe_probes(self, readout: ProbeReadout) -> None:
        _set(self.probe_accuracy.labels("phone"), readout.phone_accuracy)
        _set(self.probe_accuracy.labels("speaker"), readout.speaker_accuracy)

    def observe_memory_sizes(self, sizes: Mapping[int, int]) -> None:
        for module, size in sizes.items():
            self.memory_size.labels(str(module)).set(size)

    def enable_checkpoints(self) -> None:
        """Registers the checkpoint metrics: only a run that keeps a state directory has them (so
        that an alert on the age of the newest checkpoint never fires for a run without one)."""
        if self._checkpoints is None:
            self._checkpoints = _CheckpointMetrics(self.registry)

    def observe_checkpoints(self, *, written: int, failed: int, last_saved_at: float | None) -> None:
        """Record the checkpointer's running totals (registers the checkpoint metrics if needed)."""
        self.enable_checkpoints()
        self._checkpoints.observe(written, failed, last_saved_at)

    # -- drift monitor's thread -------------------------------------------------------------

    def observe_drift(self, reading) -> None:  # online_gim.services.drift_monitor.DriftReading
        for module, value in reading.embedding_cosine.items():
            _set(self.drift_cosine.labels(str(module)), value)
        for module, value in reading.embedding_mmd.items():
            _set(self.drift_mmd.labels(str(module)), value)
        for module, value in reading.weight_change.items():
            _set(self.weight_drift.labels(str(module)), value)
        _set(self.weight_interval, reading.weight_interval_seconds)
        _set(self.input_level, reading.input_level_db)
        _set(self.input_level_drift, reading.input_level_drift_db)
        _set(self.input_spectrum_drift, reading.input_spectrum_drift_db)
        _set(self.input_centroid, reading.input_centroid_hz)
        _set(self.input_flatness, reading.input_flatness)
        _set(self.drift_reference_age, reading.stream_seconds - reading.reference_stop)

    # -- HTTP thread ------------------------------------------------------------------------

    def render(self) -> tuple[bytes, str]:
        """The Prometheus text exposition of every metric, and its content type."""
        return generate_latest(self.registry), CONTENT_TYPE_LATEST


class _CheckpointMetrics:
    """The checkpoint metrics of a run with a state directory (``listen --state``)."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.written = Counter(PREFIX + "checkpoints_written", "Checkpoints this run wrote to its state directory.", registry=registry)
        self.failed = Counter(
            PREFIX + "checkpoint_failures", "Checkpoints that could not be written (disk full, ...); the previous ones are kept.",
            registry=registry,
        )
        self.last_success = Gauge(
            PREFIX + "checkpoint_last_success_timestamp_seconds",
            "Unix time of the newest checkpoint in the state directory (the one resumed from until this run writes one); "
            "NaN before any.",
            registry=registry,
        )
        self.last_success.set(math.nan)
        self._written = 0
        self._failed = 0

    def observe(self, written: int, failed: int, last_saved_at: float | None) -> None:
        if written > self._written:
            self.written.inc(written - self._written)
            self._written = written
        if failed > self._failed:
            self.failed.inc(failed - self._failed)
            self._failed = failed
        _set(self.last_success, last_saved_at)


def _set(gauge: Gauge, value: float | None) -> None:
    """Set a gauge to a finite value; leave it unchanged for ``None``/NaN/inf (not measured)."""
    if value is not None and math.isfinite(value):
        gauge.set(value)


def _observe(histogram: Histogram, seconds: float) -> None:
    if math.isfinite(seconds) and seconds >= 0:
        histogram.observe(seconds)


METRIC_HELP: dict[str, str] = {}
"""``{metric name: help text}`` of every metric (filled below from a throw-away instance)."""


def _collect_help() -> None:
    metrics = ServiceMetrics()
    metrics.enable_checkpoints()
    for family in metrics.registry.collect():
        name = family.name + ("_total" if family.type == "counter" else "")
        METRIC_HELP[name] = f"{family.type}: {family.documentation}"


_collect_help()
