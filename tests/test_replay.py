"""Replay of past windows: the store's policies, what a replayed step may change, the schedule that
keeps it out of the live stream's way, and a paced listen session with and without replay."""

from __future__ import annotations

import doctest
import statistics
from pathlib import Path

import numpy as np
import pytest
import torch

import online_gim.run.replay_schedule
import online_gim.streams.replay
from online_gim.config import LearnerConfig, load_config
from online_gim.learner import OnlineLearner
from online_gim.run.audio import ListenSession
from online_gim.run.replay_schedule import ReplaySchedule
from online_gim.streams.replay import ReplayStore
from online_gim.streams.replay_config import ReplayConfig
from online_gim.streams.ring_buffer import iter_windows
from online_gim.streams.sources.librispeech import LibriSpeechReplay
from online_gim.streams.window import AudioWindow, UtteranceSpan

AUDIO = Path(__file__).resolve().parents[2] / "shared" / "data" / "librispeech-mini" / "LibriSpeech"
requires_mini = pytest.mark.skipif(not AUDIO.is_dir(), reason=f"{AUDIO} is not there")
WINDOW = 20480


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.mark.parametrize("module", [online_gim.streams.replay, online_gim.run.replay_schedule])
def test_docstring_examples(module):
    assert doctest.testmod(module).failed == 0


def numbered(i: int, n: int = 1600) -> AudioWindow:
    return AudioWindow(torch.full((n,), 0.001 * (i % 500)), start_sample=n * i, source_id="s",
                       spans=(UtteranceSpan(0, n, f"u{i}", "spk"),))


def test_the_store_keeps_the_newest_windows_exactly_and_ignores_non_finite_ones():
    store = ReplayStore(ReplayConfig(minutes=1 / 60, policy="uniform"), window=1600, seed=0)  # 1 s = 10 windows
    assert store.capacity == 10
    with pytest.raises(LookupError):
        store.sample()
    for i in range(25):
        store.add(numbered(i))
    store.add(AudioWindow(torch.full((1600,), float("nan"))))
    assert len(store) == 10 and store.seen == 25 and store.nbytes == 10 * 1600 * 2
    drawn = {store.sample().start_sample // 1600 for _ in range(300)}
    assert drawn == set(range(15, 25))
    window = store.sample()
    i = window.start_sample // 1600
    assert window.source_id == "s" and window.spans == (UtteranceSpan(0, 1600, f"u{i}", "spk"),)
    assert torch.allclose(window.samples, torch.full((1600,), 0.001 * i), atol=0.5 / 32767)
    loud = ReplayStore(ReplayConfig(minutes=1, policy="uniform"), window=4, seed=0)
    loud.add(AudioWindow(torch.tensor([3.0, -7.0, 0.5, 1e30])))
    assert loud.sample().samples.tolist() == pytest.approx([1.0, -1.0, 0.5, 1.0], abs=1e-4)  # clipped to [-1, 1]


def test_recent_draws_favour_new_windows_and_reservoir_keeps_the_whole_stream():
    def ages(policy: str) -> list[int]:
        store = ReplayStore(ReplayConfig(minutes=100 * 1600 / 16000 / 60, policy=policy), window=1600, seed=1)
        for i in range(1000):
            store.add(numbered(i))
        return [999 - store.sample().start_sample // 1600 for _ in range(4000)]

    recent, uniform, reservoir = ages("recent"), ages("uniform"), ages("reservoir")
    assert max(recent) < 100 and max(uniform) < 100  # both draw from the newest 100 windows
    assert statistics.mean(recent) < 0.6 * statistics.mean(uniform)  # exponential ages, mean 25
    assert statistics.mean(uniform) == pytest.approx(49.5, abs=3)
    assert max(reservoir) > 800 and statistics.mean(reservoir) == pytest.approx(500, abs=60)  # all of the stream


def tiny_learner(**changes) -> OnlineLearner:
    config = {
        "window": 5120,
        "encoder": {"convs": [{"channels": 16, "kernel": 10, "stride": 5, "padding": 2},
                              {"channels": 16, "kernel": 8, "stride": 4, "padding": 2}], "gru_hidden": 8},
        "memory": {"capacity": 64, "writes_per_window": 16},
        "loss": {"prediction_steps": 4, "subwindow": 16},
        **changes,
    }
    return OnlineLearner(LearnerConfig.model_validate(config))


def snapshot(learner: OnlineLearner) -> dict[str, object]:
    """What describes the live stream (must not move on a replay) and the weights (must)."""
    return {
        "input": (learner.input_norm.mean.clone(), learner.input_norm.var.clone(), learner.input_norm.windows),
        "running": [(s.module.running_mean.clone(), s.module.running_var.clone()) for s in learner.stages[:-1]],
        "memories": [(len(m), m.positions.copy()) for m in learner.memories],
        "hidden": learner.hidden.clone(),
        "traces": [t.clone() for t in learner.traces.traces],
        "probes": {k: v.clone() if isinstance(v, torch.Tensor) else v for k, v in learner.probes.state_dict().items()},
        "weights": [p.detach().clone() for s in learner.stages for p in s.module.parameters()],
    }


def same(a: object, b: object) -> bool:
    if isinstance(a, torch.Tensor):
        return torch.equal(a, b)
    if isinstance(a, np.ndarray):
        return np.array_equal(a, b)
    if isinstance(a, dict):
        return a.keys() == b.keys() and all(same(a[k], b[k]) for k in a)
    if isinstance(a, (list, tuple)):
        return len(a) == len(b) and all(same(x, y) for x, y in zip(a, b))
    return a == b


@pytest.mark.parametrize("norm", ["window", "time"])
def test_a_replayed_step_learns_but_leaves_what_describes_the_live_stream(norm):
    learner = tiny_learner(encoder={"convs": [{"channels": 16, "kernel": 10, "stride": 5, "padding": 2},
                                              {"channels": 16, "kernel": 8, "stride": 4, "padding": 2}],
                                    "gru_hidden": 8, "norm": norm})
    generator = torch.Generator().manual_seed(0)
    for i in range(6):
        learner.step(AudioWindow(torch.randn(5120, generator=generator) * 0.1, start_sample=5120 * i, source_id="s"))
    before = snapshot(learner)
    counters = (learner.steps, learner.updates, learner.replayed)
    report = learner.step(AudioWindow(torch.randn(5120, generator=generator) * 0.3, start_sample=0, source_id="s"), replay=True)
    after = snapshot(learner)
    assert report.replay and report.probes is None and all(m.updated for m in report.modules)
    for key in ("input", "running", "memories", "hidden", "traces", "probes"):
        assert same(before[key], after[key]), key
    assert not same(before["weights"], after["weights"])
    assert (learner.steps, learner.updates, learner.replayed) == (counters[0], counters[1] + 1, counters[2] + 1)
    restored = tiny_learner(encoder=learner.config.encoder.model_dump())
    restored.load_state_dict(learner.state_dict())
    assert restored.replayed == learner.replayed


def test_the_schedule_spends_fractions_over_windows_and_forgets_unspent_replays():
    schedule = ReplaySchedule(ratio=0.5, paced=False)
    made = []
    for _ in range(6):
        schedule.earn()
        count = 0
        while schedule.allows(next_window_seconds=None, keeping_up=True):
            schedule.spend()
            count += 1
        made.append(count)
    assert made == [0, 1, 0, 1, 0, 1]
    paced = ReplaySchedule(ratio=3, paced=True)
    for _ in range(4):
        paced.earn()  # never any time to replay: whole replays are not saved up
    assert paced.credit == 3
    paced.record(0.2)
    assert not paced.allows(next_window_seconds=0.5, keeping_up=False)  # the learner is behind
    assert not paced.allows(next_window_seconds=0.0, keeping_up=True)  # a live window is waiting
    assert not paced.allows(next_window_seconds=None, keeping_up=True)  # the stream has ended
    assert paced.allows(next_window_seconds=0.4, keeping_up=True)


@requires_mini
def test_at_max_speed_every_window_earns_its_replays(small_config):
    learner = OnlineLearner(load_config(small_config))
    session = ListenSession(LibriSpeechReplay(AUDIO, speed=None), learner, max_windows=6, replay=ReplayConfig(ratio=1.5))
    summary = session.run()
    assert (summary.windows_processed, summary.replayed_windows, learner.replayed) == (6, 9, 9)
    assert summary.replayed_per_window == 1.5 and summary.compute_rtf > summary.real_time_factor


def step_seconds(config: LearnerConfig, rounds: int = 6) -> float:
    learner = OnlineLearner(config)
    windows = iter_windows(LibriSpeechReplay(AUDIO, speed=None, loop=True), window=WINDOW, hop=WINDOW)
    for _ in range(2):
        learner.step(next(windows))  # warm-up
    return statistics.median(learner.step(next(windows)).seconds for _ in range(rounds))


@requires_mini
@pytest.mark.slow
def test_replay_on_a_paced_stream_uses_idle_time_and_drops_no_live_audio(small_config):
    """The stream is paced so that learning the live windows takes about a quarter of real time
    (measured first); 8 replays per window would take twice real time, so the schedule must fit
    replays into the idle time. Replay must drop no audio that the run without it keeps. Timing on a
    shared machine is noisy: another process can stall us for a while (then replay may drop a window
    the plain run kept), or slow every step after the measurement (then the schedule rightly finds
    no time to replay at all). So the pace is measured again before each of up to three attempts,
    and one attempt must replay and drop nothing more."""
    config = load_config(small_config)
    windows = 40
    attempts = []
    for _ in range(3):
        speed = WINDOW / 16_000 / (4 * step_seconds(config))
        summaries = {}
        for name, replay in (("plain", None), ("replay", ReplayConfig(ratio=8))):
            session = ListenSession(
                LibriSpeechReplay(AUDIO, speed=speed, loop=True), OnlineLearner(config), auto_schedule=True,
                max_seconds=windows * WINDOW / 16_000, replay=replay,
            )
            summaries[name] = session.run()
        plain, replayed = summaries["plain"], summaries["replay"]
        attempts.append((speed, plain.samples_dropped, replayed.samples_dropped, replayed.replayed_windows))
        if replayed.samples_dropped <= plain.samples_dropped and replayed.replayed_windows > 0:
            break
    else:
        pytest.fail(f"no attempt replayed without dropping audio the plain run kept (speed, dropped without "
                    f"replay, dropped with replay, replayed windows): {attempts}")
    assert replayed.windows_processed >= plain.windows_processed
    assert replayed.replayed_windows < 8 * windows  # the time limit held it back
    assert replayed.compute_rtf > plain.real_time_factor
