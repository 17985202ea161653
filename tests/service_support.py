"""Helpers for the side-service tests: step reports built by hand, fed to a real LiveBoard from a
thread (as the listen loop would), served by a real uvicorn server on a free loopback port."""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator

import numpy as np
import torch
from prometheus_client.parser import text_string_to_metric_families

from online_gim.memory import MemoryHit
from online_gim.report import ModuleReport, ProbeReadout, StepReport
from online_gim.services.drift_monitor import DriftConfig
from online_gim.services.http import ServiceHandle, serve_in_thread
from online_gim.services.live import LiveBoard
from online_gim.streams.counters import StreamCounters
from online_gim.streams.window import AudioWindow, UtteranceSpan

SHAPES = ((4095, 512), (1023, 512), (512, 512), (257, 512), (128, 512), (128, 256))
"""(frames, channels) of each module's output on a 20480-sample window (GIM audio stack + GRU)."""
WINDOW = 20480
PHONES = tuple(["sil"] + [f"p{i}" for i in range(1, 41)])


class FakeMemory:
    """A memory with the learner's ``nearest`` contract (inner-product search over stored rows)."""

    def __init__(self, dim: int) -> None:
        self.dim = dim
        self.rows: list[tuple[torch.Tensor, float, int, str | None, int]] = []
        self.lock = threading.Lock()

    def __len__(self) -> int:
        return len(self.rows)

    def add(self, vectors: torch.Tensor, seconds: float, step: int, speaker: str | None) -> None:
        with self.lock:
            for i, v in enumerate(vectors):
                self.rows.append((v.clone(), seconds + 0.01 * i, step, speaker, i % 41))
            del self.rows[:-2000]

    def nearest(self, query: torch.Tensor, k: int) -> list[MemoryHit]:
        if query.shape != (self.dim,):
            raise ValueError(f"query must have shape ({self.dim},), got {tuple(query.shape)}")
        with self.lock:
            rows = list(self.rows)
        if not rows:
            return []
        scores = torch.stack([r[0] for r in rows]) @ query
        best = scores.topk(min(k, len(rows))).indices.tolist()
        return [
            MemoryHit(
                stream_seconds=rows[i][1], source_id="fake", step=rows[i][2], score=float(scores[i]),
                speaker_id=rows[i][3], phone=rows[i][4],
            )
            for i in best
        ]


class FakeLearner:
    """What the board may read from a learner (its :class:`~online_gim.run.contract.LearnerView`):
    probes, memories and module parameters."""

    def __init__(self, probes: bool = True) -> None:
        self.memories = [FakeMemory(c) for _, c in SHAPES]
        self.weights = [torch.nn.Linear(4, 4) for _ in SHAPES]
        self.readout: ProbeReadout | None = None
        self.has_probes = probes

    def probe_readout(self) -> ProbeReadout | None:
        return self.readout if self.has_probes else None

    def module_parameters(self) -> list[list[torch.Tensor]]:
        return [list(layer.parameters()) for layer in self.weights]


class FakeStream:
    """Makes windows, step reports and counters whose values drift over time, and feeds a board
    (whose stream it is: the board reads its counters and buffer fill ratio)."""

    def __init__(self, board: LiveBoard, learner: FakeLearner | None = None, seed: int = 0) -> None:
        self.board = board
        self.learner = learner
        self.counters = StreamCounters()
        self.fill_ratio: float | None = None
        self.step = 0
        self.gen = torch.Generator().manual_seed(seed)
        board.attach_stream(self)

    def window(self) -> AudioWindow:
        i = self.step
        speaker = f"spk{(i // 2) % 3}"
        samples = torch.randn(WINDOW, generator=self.gen) * (0.05 + 0.02 * (i % 5))
        phones = np.arange(WINDOW // 160, dtype=np.int16) % 41
        return AudioWindow(
            samples=samples, start_sample=i * WINDOW, source_id="fake", phones=phones,
            spans=(UtteranceSpan(0, WINDOW, f"utt{i}", speaker),),
        )

    def report(self, skipped: bool = False) -> StepReport:
        i = self.step
        modules = tuple(
            ModuleReport(
                module=m, updated=not skipped, loss=1.0 / (1 + 0.05 * i) + 0.01 * m, loss_pos=0.4, loss_neg=0.6,
                chance_loss=1.0, active_fraction=0.5, dead_fraction=0.01 * m, seconds=0.002 * (m + 1),
            )
            for m in range(len(SHAPES))
        )
        shift = 0.1 * i
        embeddings = () if skipped else tuple(torch.randn(f, c, generator=self.gen) + shift for f, c in SHAPES)
        return StepReport(
            step=i + 1, updates=i + 1 - self.skipped, window_start=i * WINDOW, window_length=WINDOW,
            skipped_nonfinite=skipped, modules=modules, embeddings=embeddings, seconds=0.05 + 0.001 * (i % 7), rate=16_000,
        )

    skipped = 0

    def feed(self, n: int = 1, skipped: bool = False) -> None:
        for _ in range(n):
            window, report = self.window(), self.report(skipped)
            self.skipped += int(skipped)
            if self.learner is not None:
                frames = 128
                self.learner.readout = ProbeReadout(
                    phone_top=torch.arange(frames) % 41 // 3,
                    phone_prob=torch.full((frames,), 0.5),
                    phone_label=torch.arange(frames) % 41,
                    speaker_top=(("spk0", 0.6), ("spk1", 0.3), ("spk2", 0.1)),
                    phone_accuracy=min(1.0, 0.1 + 0.01 * self.step),
                    speaker_accuracy=min(1.0, 0.3 + 0.02 * self.step),
                )
                for m, emb in enumerate(report.embeddings):
                    self.learner.memories[m].add(emb[::64], window.start_seconds, report.updates, "spk0")
                with torch.no_grad():
                    for layer in self.learner.weights:
                        layer.weight.add_(0.01)
            self.counters.samples_in += WINDOW
            self.counters.windows_emitted += 1
            self.counters.source_seconds = (self.step + 1) * WINDOW / 16000
            self.board.on_step(window, report)
            self.step += 1


class Feeder(threading.Thread):
    """Feeds a board one window every ``period`` seconds until stopped (the listen loop's role)."""

    def __init__(self, stream: FakeStream, period: float = 0.1) -> None:
        super().__init__(daemon=True, name="fake-learner")
        self.stream, self.period = stream, period
        self.halt = threading.Event()

    def run(self) -> None:
        while not self.halt.wait(self.period):
            self.stream.feed()

    def stop(self) -> None:
        self.halt.set()
        self.join(5)


def metric_values(text: str) -> dict[tuple[str, tuple], float]:
    """``{(sample name, sorted label pairs): value}`` of a Prometheus text exposition."""
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


class StoppedClock:
    """A monotonic clock that moves only when told: a board's readiness never sees a stall that a
    slow machine makes between two steps of a test (a test of the stall moves it itself)."""

    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def make_board(**kwargs) -> LiveBoard:
    kwargs.setdefault("drift", DriftConfig(reference_seconds=2.56, refresh_seconds=0, interval_seconds=0.0,
                                           weight_interval_seconds=0.0))
    kwargs.setdefault("clock", StoppedClock())
    kwargs.setdefault("phone_names", PHONES)
    kwargs.setdefault("config", {"loss": "clapp", "modules": len(SHAPES)})
    return LiveBoard(source="fake", **kwargs)


@contextlib.contextmanager
def running_service(
    *, windows: int = 4, feed_period: float | None = None, token: str | None = None, learner: bool = True
) -> Iterator[tuple[ServiceHandle, FakeStream]]:
    """A board fed ``windows`` windows, served on a free loopback port; with ``feed_period`` a
    thread keeps feeding while the test runs."""
    board = make_board()
    fake_learner = FakeLearner() if learner else None
    if fake_learner is not None:
        board.attach_learner(fake_learner)
    stream = FakeStream(board, fake_learner)
    stream.feed(windows)
    board.flush_drift()
    handle = serve_in_thread(board, "127.0.0.1", 0, token)
    feeder = Feeder(stream, feed_period) if feed_period else None
    if feeder:
        feeder.start()
    try:
        yield handle, stream
    finally:
        if feeder:
            feeder.stop()
        handle.stop()
        board.close()
