"""Drift of embeddings, input audio and weights against a reference, measured off the learner's thread.

:class:`DriftMonitor` receives small samples from the learner's thread (a few frames of every
module's output and the window's audio per processed window, and now and then a copy of the
weights), queues them without blocking, and a background thread turns them into a
:class:`DriftReading` with the pure functions of :mod:`online_gim.services.drift`.

The reference
    A *reference window* is ``reference_seconds`` of stream time. While it is collected, a uniform
    reservoir sample of at most ``max_samples`` frames per module and the audio statistics of its
    windows are kept; then it is frozen and every reading compares the *current* distribution
    (the newest ``max_samples`` sampled frames; the audio of the last ``reference_seconds``) with
    it. Every ``refresh_seconds`` of stream time a new reference is collected, from the first window
    that starts at or after the scheduled time (the old one stays in use until the new one is
    complete); ``refresh_seconds = 0`` keeps the first reference forever.
    Embedding drift mixes what changed in the input with what the model learned: both move the
    distribution of a module's output.
Rates
    A reading is computed at most every ``interval_seconds`` of wall time; weights are copied at
    most every ``weight_interval_seconds`` (the caller rate-limits with :meth:`weights_due`). The
    queue is bounded: when the background thread falls behind, submissions are dropped and counted
    (``dropped``), never waited for.
"""

from __future__ import annotations

import math
import queue
import random
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field

import torch

from online_gim.services import drift as dm

_STOP = object()


@dataclass(frozen=True)
class DriftConfig:
    """When and how much the drift monitor samples and compares.

    Attributes:
        reference_seconds: stream seconds of data that make up a reference window.
        refresh_seconds: stream seconds between the starts of two reference windows (0 = never refresh).
        interval_seconds: wall seconds between two drift readings.
        frames_per_window: frames sampled from each module's output per processed window.
        max_samples: frames per module in the current set and in the reference (MMD cost grows with
            its square).
        weight_interval_seconds: wall seconds between two weight copies (weight drift interval).
    """

    reference_seconds: float = 30.0
    refresh_seconds: float = 600.0
    interval_seconds: float = 5.0
    frames_per_window: int = 16
    max_samples: int = 256
    weight_interval_seconds: float = 30.0

    def __post_init__(self) -> None:
        if not self.reference_seconds > 0:
            raise ValueError("reference_seconds must be positive")
        if self.refresh_seconds < 0 or (0 < self.refresh_seconds < self.reference_seconds):
            raise ValueError("refresh_seconds must be 0 (never) or at least reference_seconds")
        if self.interval_seconds < 0 or self.weight_interval_seconds < 0:
            raise ValueError("intervals must not be negative")
        if self.frames_per_window < 1 or self.max_samples < 2:
            raise ValueError("frames_per_window must be >= 1 and max_samples >= 2")


@dataclass(frozen=True)
class DriftReading:
    """One drift measurement (``nan`` where not measurable yet).

    Attributes:
        stream_seconds: stream time of the newest window included.
        reference_start / reference_stop: the stream-time span of the reference in use.
        embedding_cosine: ``{module: 1 - cos(mean current, mean reference)}``.
        embedding_mmd: ``{module: unbiased MMD^2 estimate, Gaussian kernel, median bandwidth}``.
        input_level_db: mean RMS level of the current audio, dBFS.
        input_level_drift_db: ``input_level_db`` minus the reference's, dB.
        input_spectrum_drift_db: RMS dB difference of the mean band-energy profiles.
        input_centroid_hz / input_flatness: mean spectral centroid and flatness of the current audio.
        weight_change: ``{module: |W_now - W_then| / |W_then|}`` over the last weight interval.
        weight_interval_seconds: wall seconds between the two weight copies compared.
    """

    stream_seconds: float
    reference_start: float
    reference_stop: float
    embedding_cosine: dict[int, float] = field(default_factory=dict)
    embedding_mmd: dict[int, float] = field(default_factory=dict)
    input_level_db: float = math.nan
    input_level_drift_db: float = math.nan
    input_spectrum_drift_db: float = math.nan
    input_centroid_hz: float = math.nan
    input_flatness: float = math.nan
    weight_change: dict[int, float] = field(default_factory=dict)
    weight_interval_seconds: float = math.nan


@dataclass
class _AudioStats:
    level_db: float
    bands_db: torch.Tensor
    centroid_hz: float
    flatness: float


@dataclass
class _Reference:
    start: float
    stop: float
    samples: dict[int, torch.Tensor]
    audio: list[_AudioStats]


class _Reservoir:
    """Uniform sample of at most ``capacity`` rows from everything offered (Vitter's algorithm R)."""

    def __init__(self, capacity: int, rng: random.Random) -> None:
        self.capacity = capacity
        self.rows: list[torch.Tensor] = []
        self.seen = 0
        self._rng = rng

    def offer(self, rows: torch.Tensor) -> None:
        for row in rows:
            self.seen += 1
            if len(self.rows) < self.capacity:
                self.rows.append(row)
            else:
                j = self._rng.randrange(self.seen)
                if j < self.capacity:
                    self.rows[j] = row


class DriftMonitor:
    """Collects samples from the learner's thread and publishes drift readings from its own thread.

    Parameters:
        config: the schedule (:class:`DriftConfig`).
        on_reading: called on the monitor's thread with every new :class:`DriftReading`.
        clock: wall clock in seconds (``time.monotonic``), for the rate limits.

    Examples:
        >>> readings = []
        >>> monitor = DriftMonitor(DriftConfig(reference_seconds=1.0, interval_seconds=0.0), readings.append)
        >>> g = torch.Generator().manual_seed(0)
        >>> for i in range(4):
        ...     monitor.submit_window(1.28 * (i + 1), torch.randn(20480, generator=g) * 0.1,
        ...                           {0: torch.randn(16, 8, generator=g) + (3.0 if i == 3 else 0.0)})
        >>> monitor.flush()
        >>> readings[-1].embedding_cosine[0] > 0.1, abs(readings[0].embedding_mmd[0]) < 0.1
        (True, True)
        >>> monitor.close()
    """

    def __init__(
        self,
        config: DriftConfig | None = None,
        on_reading: Callable[[DriftReading], None] | None = None,
        *,
        clock: Callable[[], float] = time.monotonic,
        queue_size: int = 64,
    ) -> None:
        self.config = config or DriftConfig()
        self._on_reading = on_reading
        self._clock = clock
        self._queue: queue.Queue = queue.Queue(maxsize=queue_size)
        self._rng = random.Random(0)
        self.dropped = 0
        self.latest: DriftReading | None = None
        self._last_weights_at = -math.inf
        self._reset()
        self._thread = threading.Thread(target=self._run, name="online-gim-drift", daemon=True)
        self._thread.start()

    def _reset(self) -> None:
        self._current: dict[int, deque[torch.Tensor]] = {}
        self._current_audio: deque[_AudioStats] = deque(maxlen=1)
        self._reference: _Reference | None = None
        self._pending: dict[int, _Reservoir] | None = None
        self._pending_audio: list[_AudioStats] = []
        self._pending_start = math.nan
        self._next_reference_at = -math.inf
        self._last_reading_at = -math.inf
        self._stream_seconds = 0.0
        self._weights: tuple[float, dict[int, list[torch.Tensor]]] | None = None
        self._weight_change: dict[int, float] = {}
        self._weight_interval = math.nan

    # -- learner's thread -------------------------------------------------------------------

    def submit_window(
        self, stream_seconds: float, samples: torch.Tensor, module_samples: dict[int, torch.Tensor]
    ) -> None:
        """Queue one processed window; never blocks.

        Args:
            stream_seconds: stream time of the window's end.
            samples: ``(n,)`` the window's audio (16 kHz, not modified afterwards).
            module_samples: ``{module: (k, channels)}`` a few of the window's frames, on the CPU.
        """
        self._put(("window", float(stream_seconds), samples, module_samples))

    def weights_due(self) -> bool:
        """Whether a weight copy is due (rate limit of ``weight_interval_seconds``)."""
        return self._clock() - self._last_weights_at >= self.config.weight_interval_seconds

    def submit_weights(self, weights: dict[int, list[torch.Tensor]]) -> None:
        """Queue a copy of every module's parameters (``{module: [tensor, ...]}``, CPU copies)."""
        now = self._clock()
        self._last_weights_at = now
        self._put(("weights", now, weights))

    def _put(self, item: tuple) -> None:
        try:
            self._queue.put_nowait(item)
        except queue.Full:
            self.dropped += 1

    # -- any thread -------------------------------------------------------------------------

    def flush(self, timeout: float = 10.0) -> None:
        """Wait until everything queued so far is processed and force a reading (for tests)."""
        done = threading.Event()
        self._put(("flush", done))
        done.wait(timeout)

    def close(self) -> None:
        """Stop the background thread (queued work is discarded)."""
        while True:
            try:
                self._queue.put_nowait(_STOP)
                break
            except queue.Full:
                try:
                    self._queue.get_nowait()
                except queue.Empty:
                    pass
        self._thread.join(timeout=5.0)

    # -- monitor's thread -------------------------------------------------------------------

    def _run(self) -> None:
        while True:
            item = self._queue.get()
            if item is _STOP:
                return
            try:
                kind = item[0]
                if kind == "window":
                    self._ingest_window(*item[1:])
                    if self._clock() - self._last_reading_at >= self.config.interval_seconds:
                        self._publish()
                elif kind == "weights":
                    self._ingest_weights(*item[1:])
                elif kind == "flush":
                    self._publish()
                    item[1].set()
            except Exception:  # a bad sample must not stop the monitor
                import logging

                logging.getLogger(__name__).exception("drift monitor: sample ignored")

    def _ingest_window(self, stream_seconds: float, samples: torch.Tensor, modules: dict[int, torch.Tensor]) -> None:
        cfg = self.config
        if stream_seconds < self._stream_seconds:  # a new stream: start over
            self._reset()
        self._stream_seconds = stream_seconds
        window_seconds = max(samples.shape[-1] / dm.SAMPLE_RATE, 1e-3)
        audio_windows = max(1, math.ceil(cfg.reference_seconds / window_seconds))
        if self._current_audio.maxlen != audio_windows:
            self._current_audio = deque(self._current_audio, maxlen=audio_windows)
        stats = None
        if samples.numel() >= 2 and bool(torch.isfinite(samples).all()):
            stats = _AudioStats(
                level_db=dm.audio_level_db(samples),
                bands_db=dm.band_energies_db(samples),
                centroid_hz=dm.spectral_centroid_hz(samples),
                flatness=dm.spectral_flatness(samples),
            )
            self._current_audio.append(stats)
        for module, rows in modules.items():
            rows = rows.detach().float()
            ring = self._current.setdefault(module, deque(maxlen=cfg.max_samples))
            ring.extend(rows)

        if self._pending is None and stream_seconds - window_seconds >= self._next_reference_at - 1e-9:
            self._pending = {}
            self._pending_audio = []
            self._pending_start = stream_seconds - window_seconds
        if self._pending is not None:
            for module, rows in modules.items():
                self._pending.setdefault(module, _Reservoir(cfg.max_samples, self._rng)).offer(rows.detach().float())
            if stats is not None:
                self._pending_audio.append(stats)
            if stream_seconds - self._pending_start >= cfg.reference_seconds - 1e-9:
                self._reference = _Reference(
                    start=self._pending_start,
                    stop=stream_seconds,
                    samples={m: torch.stack(r.rows) for m, r in self._pending.items() if r.rows},
                    audio=self._pending_audio,
                )
                self._next_reference_at = (
                    self._pending_start + cfg.refresh_seconds if cfg.refresh_seconds > 0 else math.inf
                )
                self._pending = None

    def _ingest_weights(self, now: float, weights: dict[int, list[torch.Tensor]]) -> None:
        if self._weights is not None:
            then, before = self._weights
            change = {}
            for module, tensors in weights.items():
                old = before.get(module)
                if old is not None and len(old) == len(tensors):
                    try:
                        change[module] = dm.relative_change(old, tensors)
                    except ValueError:
                        continue
            self._weight_change = change
            self._weight_interval = now - then
        self._weights = (now, weights)

    def _publish(self) -> None:
        self._last_reading_at = self._clock()
        ref = self._reference
        if ref is None:
            reading = DriftReading(
                stream_seconds=self._stream_seconds,
                reference_start=math.nan,
                reference_stop=math.nan,
                weight_change=dict(self._weight_change),
                weight_interval_seconds=self._weight_interval,
                **self._audio_now(None),
            )
        else:
            cosine: dict[int, float] = {}
            mmd: dict[int, float] = {}
            for module, reference in ref.samples.items():
                ring = self._current.get(module)
                if not ring:
                    continue
                current = torch.stack(list(ring))
                if current.shape[1] != reference.shape[1]:
                    continue
                cosine[module] = dm.mean_cosine_distance(current, reference)
                mmd[module] = dm.mmd_rbf(current, reference)
            reading = DriftReading(
                stream_seconds=self._stream_seconds,
                reference_start=ref.start,
                reference_stop=ref.stop,
                embedding_cosine=cosine,
                embedding_mmd=mmd,
                weight_change=dict(self._weight_change),
                weight_interval_seconds=self._weight_interval,
                **self._audio_now(ref.audio),
            )
        self.latest = reading
        if self._on_reading is not None:
            self._on_reading(reading)

    def _audio_now(self, reference: list[_AudioStats] | None) -> dict[str, float]:
        current = list(self._current_audio)
        if not current:
            return {}
        level = _mean([s.level_db for s in current])
        bands = torch.stack([s.bands_db for s in current]).mean(0)
        out = {
            "input_level_db": level,
            "input_centroid_hz": _mean([s.centroid_hz for s in current]),
            "input_flatness": _mean([s.flatness for s in current]),
        }
        if reference:
            out["input_level_drift_db"] = level - _mean([s.level_db for s in reference])
            out["input_spectrum_drift_db"] = dm.spectrum_distance_db(
                bands, torch.stack([s.bands_db for s in reference]).mean(0)
            )
        return out


def _mean(values: list[float]) -> float:
    finite = [v for v in values if math.isfinite(v)]
    return sum(finite) / len(finite) if finite else math.nan
