"""The one session loop (:mod:`online_gim.run.session`) on its own: any window stream, any learner.

A scripted stream and a scripted learner stand in for the real ones (whose sessions the listen
tests run end to end), so that every way a session ends, its tally and its two schedules are
checked exactly.
"""

from __future__ import annotations

import doctest
import math
from collections.abc import Sequence
from dataclasses import dataclass, replace

import pytest

import online_gim.run.schedule
from online_gim.report import ModuleReport, SkipReason, StepReport
from online_gim.run.replay_schedule import ReplaySchedule
from online_gim.run.schedule import ModuleBudget
from online_gim.run.session import RECENT_STEPS, Backlog, Replay, Session

MODULES = 3


@dataclass(frozen=True)
class Window:
    """A :class:`~online_gim.run.contract.StreamWindow` of 10 units; ``bad`` ones are skipped."""

    start: int
    bad: bool = False
    source_id: str = "scripted"
    length: int = 10
    rate: float = 10.0


class Stream:
    """Hands out its windows, then ends (``ending``: the reason, ``error`` for ``source_error``)."""

    def __init__(self, windows: Sequence[Window], *, ending: str = "end_of_stream", error: str | None = None,
                 backlog: Backlog = Backlog(), paced: bool = False) -> None:
        self.windows = list(windows)
        self.ending, self.error_text = ending, error
        self.paced = paced
        self._backlog = backlog
        self.ended: str | None = None
        self.error: str | None = None
        self.opened = self.closed = 0

    def open(self) -> None:
        self.opened += 1

    def read(self, timeout: float) -> Window | None:
        if self.windows:
            return self.windows.pop(0)
        self.ended, self.error = self.ending, self.error_text
        return None

    def backlog(self) -> Backlog:
        return self._backlog

    def where(self, window: Window) -> str:
        return f"unit {window.start}"

    def close(self) -> None:
        self.closed += 1


class Learner:
    """Learns nothing; its module ``m`` reports loss ``step + m`` (NaN when not scheduled)."""

    num_modules = MODULES
    memories: list = []

    def __init__(self) -> None:
        self.updates = self.windows_skipped_nonfinite = self.steps = 0
        self.calls: list[tuple[int, tuple[int, ...] | None, bool]] = []

    def step(self, window: Window, modules: Sequence[int] | None = None, *, replay: bool = False) -> StepReport:
        self.calls.append((window.start, None if modules is None else tuple(modules), replay))
        self.steps += not replay
        chosen = set(range(MODULES)) if modules is None else set(modules)
        reports = () if window.bad else tuple(
            ModuleReport(m, m in chosen, float(self.steps + m) if m in chosen else math.nan, 0.0, 0.0, 1.0, 0.5, 0.0, 0.01)
            for m in range(MODULES)
        )
        if window.bad:
            self.windows_skipped_nonfinite += 1
        else:
            self.updates += 1
        return StepReport(
            step=self.steps, updates=self.updates, window_start=window.start, window_length=window.length,
            skipped_nonfinite=window.bad, modules=reports, embeddings=(), seconds=0.25, rate=window.rate,
            skip=SkipReason("nonfinite_samples", "scripted") if window.bad else None, replay=replay,
        )


class Observer:
    def __init__(self, stop_at: int | None = None, session: Session | None = None) -> None:
        self.seen: list[int] = []
        self.closed = 0
        self.stop_at, self.session = stop_at, session

    def on_step(self, window: Window, report: StepReport) -> None:
        assert report.window_start == window.start
        self.seen.append(window.start)
        if self.stop_at is not None and len(self.seen) == self.stop_at:
            self.session.stop("told")

    def close(self) -> None:
        self.closed += 1


def windows(count: int, bad: Sequence[int] = ()) -> list[Window]:
    return [Window(start=10 * i, bad=i in bad) for i in range(count)]


def test_every_window_reaches_the_learner_and_every_observer_and_the_tally_adds_up():
    stream, learner, first, second = Stream(windows(14, bad=[3])), Learner(), Observer(), Observer()
    tally = Session(stream, learner, observers=[first, second]).run()
    assert first.seen == second.seen == [10 * i for i in range(14)] and first.closed == second.closed == 1
    assert stream.opened == stream.closed == 1
    assert tally.stop_reason == "end_of_stream" and tally.error is None
    assert (tally.windows_processed, tally.windows_skipped_nonfinite) == (14, 1)
    assert tally.windows_skipped_by_reason == {"nonfinite_samples": 1}
    assert tally.compute_seconds == pytest.approx(14 * 0.25) and tally.model_step == 13
    # module m's final loss: the mean over its last 10 updates (steps 5..14; step 4 was skipped)
    assert tally.final_loss == {str(m): pytest.approx(sum(range(5, 15)) / 10 + m) for m in range(MODULES)}
    assert tally.module_updates_skipped_fraction == 0.0 and tally.replayed_windows == 0


class StallingLearner(Learner):
    """:class:`Learner` whose third window takes 5 s instead of 0.25 s."""

    def step(self, window: Window, modules: Sequence[int] | None = None, *, replay: bool = False) -> StepReport:
        report = super().step(window, modules, replay=replay)
        return replace(report, seconds=5.0) if self.steps == 3 else report


def test_the_median_step_time_is_not_moved_by_one_stalled_window_and_keeps_the_newest():
    tally = Session(Stream(windows(9)), StallingLearner()).run()
    assert tally.compute_seconds == pytest.approx(8 * 0.25 + 5.0)
    assert tally.step_seconds_median == 0.25
    assert tally.recent_step_seconds.maxlen == RECENT_STEPS
    assert Session(Stream([]), Learner()).run().step_seconds_median is None


def test_a_session_stops_at_max_windows_on_request_and_on_a_source_error():
    tally = Session(Stream(windows(9)), Learner(), max_windows=4).run()
    assert (tally.stop_reason, tally.windows_processed) == ("max_windows", 4)

    session = Session(Stream(windows(9)), Learner())
    observer = Observer(stop_at=2, session=session)
    session.add_observer(observer)
    assert session.run().stop_reason == "told" and observer.seen == [0, 10] and observer.closed == 1

    stream = Stream(windows(2), ending="source_error", error="the file is corrupt")
    tally = Session(stream, Learner(), observers=[observer]).run()
    assert (tally.stop_reason, tally.error, tally.windows_processed) == ("source_error", "the file is corrupt", 2)
    assert stream.closed == 1 and observer.closed == 2

    with pytest.raises(ValueError, match="max_windows"):
        Session(Stream(()), Learner(), max_windows=0)


def test_a_stop_wins_over_the_end_of_stream_it_causes_but_not_over_a_source_error():
    """``--source av``: stopping the audio learner ends the video learner's frames, and the video
    session still says why it stopped; a source error still says so."""

    class EndsWhenStopped(Stream):
        session: Session

        def read(self, timeout: float) -> Window | None:
            if not self.windows:
                self.session.stop("signal:SIGINT")  # the stop that ends this stream, just before it ends
            return super().read(timeout)

    for ending, expected in (("end_of_stream", "signal:SIGINT"), ("duration", "signal:SIGINT"), ("source_error", "source_error")):
        stream = EndsWhenStopped(windows(2), ending=ending, error="broken" if ending == "source_error" else None)
        stream.session = session = Session(stream, Learner())
        tally = session.run()
        assert (tally.stop_reason, tally.windows_processed) == (expected, 2), ending


def test_the_module_budget_chooses_the_modules_from_the_streams_backlog():
    falling_behind = Backlog(fill_ratio=0.6, windows_ready=4, windows_dropped=0)
    learner = Learner()
    tally = Session(Stream(windows(4), backlog=falling_behind, paced=True), learner, budget=ModuleBudget(MODULES)).run()
    assert [modules for _, modules, _ in learner.calls] == [(0,), (1,), (2,), (0,)]  # half of 1 is still 1
    assert tally.module_updates_skipped_fraction == pytest.approx(2 / 3)


def test_replay_learns_from_the_store_as_the_schedule_allows_and_is_counted_apart():
    class Store:
        def __init__(self) -> None:
            self.added: list[int] = []

        def add(self, window: Window) -> None:
            self.added.append(window.start)

        def sample(self) -> Window:
            return Window(start=self.added[0])

    store, learner, observer = Store(), Learner(), Observer()
    replay = Replay(store, ReplaySchedule(1.5, paced=False))
    tally = Session(Stream(windows(4, bad=[1])), learner, observers=[observer], replay=replay).run()
    assert store.added == [0, 20, 30]  # skipped windows are not stored
    assert tally.replayed_windows == 4 and tally.replay_compute_seconds == pytest.approx(4 * 0.25)  # 1 + 2 + 1 (credit)
    assert observer.seen == [0, 10, 20, 30]  # observers see live windows only
    assert sum(replayed for _, _, replayed in learner.calls) == 4 and tally.windows_processed == 4


def test_the_schedules_docstring_examples():
    assert doctest.testmod(online_gim.run.schedule).failed == 0
