"""The side service's view of the newest window: one :class:`~online_gim.services.snapshot.BoardSnapshot` per
step, with the history of the last windows, the frames kept for the PCA scatter and the compact
``/v1/stream`` event.

:class:`SnapshotBuilder` runs on the learner's thread (called by :class:`~online_gim.services.live.LiveBoard`
after every step). It keeps what a snapshot shows across windows: each module's newest scored loss
(schedules update some modules only), the embeddings of the newest window that was not skipped,
the history points and the projection rings. It samples a few evenly spaced frames of every module
per window (the PCA rings; the drift monitor gets the same rows).
"""

from __future__ import annotations

import dataclasses
import math
import random
import time
from collections import deque
from collections.abc import Callable
from typing import Any

import torch

from online_gim.jsonable import finite_or_none
from online_gim.report import ModuleReport, ProbeReadout, StepReport
from online_gim.services.drift_monitor import DriftReading
from online_gim.services.snapshot import BoardSnapshot, ProjectionSample
from online_gim.streams.counters import StreamCounters
from online_gim.streams.window import UNKNOWN_LABEL, AudioWindow


class SnapshotBuilder:
    """Builds the snapshot of every step of the audio learner.

    Parameters:
        history: windows kept for the dashboard's plots (``/v1/history``).
        projection_points: frames kept per module for the PCA scatter (``/v1/projection``).
        frames_per_window: frames sampled from each module's output per window.
        phone_name: the name of a phone class (for the events).
    """

    def __init__(
        self, *, history: int, projection_points: int, frames_per_window: int, phone_name: Callable[[int], str]
    ) -> None:
        self._history: deque[dict[str, Any]] = deque(maxlen=history)
        self._projection: dict[int, deque[ProjectionSample]] = {}
        self._projection_points = projection_points
        self._frames_per_window = frames_per_window
        self._phone_name = phone_name
        self._previous: BoardSnapshot | None = None
        self._seq = 0
        self._skipped = 0
        self._scored: dict[int, ModuleReport] = {}
        self._rtf_mean = math.nan
        self._rng = random.Random(0)

    def build(
        self,
        window: AudioWindow,
        report: StepReport,
        counters: StreamCounters,
        *,
        fill_ratio: float | None,
        lag_seconds: float,
        probes: ProbeReadout | None,
        memory_sizes: dict[int, int],
        drift: DriftReading | None,
    ) -> tuple[BoardSnapshot, dict[int, torch.Tensor] | None]:
        """The snapshot of this step, and the frames sampled from its embeddings (``{module:
        (rows, channels)}`` CPU copies; ``None`` when the window was skipped)."""
        rtf = report.real_time_factor
        if math.isfinite(rtf):
            self._rtf_mean = rtf if not math.isfinite(self._rtf_mean) else 0.9 * self._rtf_mean + 0.1 * rtf
        previous = self._previous
        have_embeddings = bool(report.embeddings) and not report.skipped_nonfinite
        if have_embeddings:
            embeddings = tuple(report.embeddings)
            emb_start, emb_samples, emb_updates = window.start_sample, window.length, report.updates
            phones = window.phones
            speakers = tuple(window.frame_speakers())
        elif previous is not None:
            embeddings, phones, speakers = previous.embeddings, previous.phones, previous.frame_speakers
            emb_start, emb_samples, emb_updates = (
                previous.embedding_start, previous.embedding_samples, previous.embedding_updates,
            )
        else:
            embeddings, phones, speakers = (), None, ()
            emb_start, emb_samples, emb_updates = window.start_sample, window.length, report.updates

        # Schedules update some modules only: show each module's newest scored loss, not a gap.
        for mod in report.modules:
            if math.isfinite(mod.loss):
                self._scored[mod.module] = mod
        modules = tuple(
            dataclasses.replace(self._scored[m.module], updated=m.updated) if m.module in self._scored else m
            for m in report.modules
        )
        self._seq += 1
        self._skipped += int(report.skipped_nonfinite)
        snapshot = BoardSnapshot(
            seq=self._seq,
            wall_time=time.time(),
            monotonic=time.monotonic(),
            source_id=window.source_id,
            step=report.step,
            updates=report.updates,
            window_start=window.start_sample,
            window_samples=window.length,
            skipped=report.skipped_nonfinite,
            real_time_factor=rtf,
            real_time_factor_mean=self._rtf_mean,
            modules=modules,
            embeddings=embeddings,
            embedding_start=emb_start,
            embedding_samples=emb_samples,
            embedding_updates=emb_updates,
            phones=phones,
            frame_speakers=speakers,
            probes=probes,
            counters=counters.to_dict(),
            fill_ratio=fill_ratio,
            lag_seconds=lag_seconds,
            drift=drift,
            memory_sizes=memory_sizes,
            windows_skipped=self._skipped,
        )
        sampled = self._sample_frames(snapshot) if have_embeddings else None
        point = _history_point(snapshot)
        self._history.append(point)
        snapshot = dataclasses.replace(
            snapshot,
            history=tuple(self._history),
            projection=tuple(tuple(self._projection.get(m, ())) for m in range(len(embeddings))),
            event=_event(snapshot, point, self._phone_name),
        )
        self._previous = snapshot
        return snapshot, sampled

    def _sample_frames(self, snapshot: BoardSnapshot) -> dict[int, torch.Tensor]:
        """A few evenly spaced frames of every module, into the PCA rings; returns them."""
        k = self._frames_per_window
        sampled: dict[int, torch.Tensor] = {}
        for module, emb in enumerate(snapshot.embeddings):
            frames = int(emb.shape[0])
            if frames == 0 or emb.dim() != 2:
                continue
            count = min(k, frames)
            offset = self._rng.randrange(max(1, frames // count))
            index = torch.arange(count) * (frames // count) + offset
            rows = emb.index_select(0, index.to(emb.device)).detach().to("cpu", torch.float32, copy=True)
            sampled[module] = rows
            ring = self._projection.setdefault(module, deque(maxlen=self._projection_points))
            for row, t in zip(rows, index.tolist()):
                label = snapshot.label_frame(module, t)
                speaker = snapshot.frame_speakers[label] if label < len(snapshot.frame_speakers) else None
                phone = None
                if snapshot.phones is not None and label < len(snapshot.phones):
                    phone = int(snapshot.phones[label])
                    phone = None if phone == UNKNOWN_LABEL else phone
                ring.append(ProjectionSample(
                    vector=row,
                    stream_seconds=snapshot.frame_seconds(module, range(t, t + 1))[0],
                    speaker=speaker,
                    phone=phone,
                ))
        return sampled


def _history_point(s: BoardSnapshot) -> dict[str, Any]:
    drift = s.drift
    return {
        "seq": s.seq,
        "step": s.step,
        "updates": s.updates,
        "t": round(s.stream_seconds, 3),
        "wall": round(s.wall_time, 3),
        "rtf": finite_or_none(s.real_time_factor),
        "loss": [finite_or_none(m.loss) for m in s.modules],
        "loss_ratio": [finite_or_none(m.loss_ratio) for m in s.modules],
        "phone_acc": finite_or_none(s.probes.phone_accuracy) if s.probes else None,
        "speaker_acc": finite_or_none(s.probes.speaker_accuracy) if s.probes else None,
        "drift_cos": _per_module(drift.embedding_cosine, len(s.modules)) if drift else None,
        "drift_mmd": _per_module(drift.embedding_mmd, len(s.modules)) if drift else None,
        "input_level_db": finite_or_none(drift.input_level_db) if drift else None,
    }


def _per_module(values: dict[int, float], modules: int) -> list[float | None]:
    return [finite_or_none(values.get(m)) for m in range(max(modules, max(values, default=-1) + 1))]


def _event(s: BoardSnapshot, point: dict[str, Any], phone_name: Callable[[int], str]) -> dict[str, Any]:
    """The compact per-window event of ``/v1/stream``."""
    event = dict(point)
    event["skipped"] = s.skipped
    event["windows_dropped"] = s.counters.get("windows_dropped", 0)
    event["samples_dropped"] = s.counters.get("samples_dropped", 0)
    if s.probes is not None:
        top = s.probes.phone_top.tolist()
        collapsed = [p for i, p in enumerate(top) if i == 0 or p != top[i - 1]]
        event["phones"] = [phone_name(p) for p in collapsed]
        event["speakers"] = [[str(spk), round(float(p), 4) if math.isfinite(p) else None] for spk, p in s.probes.speaker_top[:3]]
    return event
