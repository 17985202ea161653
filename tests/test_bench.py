"""`online-gim bench`: every key measured, finite and of its type; relations that must hold; the CLI's output.

No timed assertions: the machine may be busy. The learner is small (3 conv modules of 32 channels,
2560-sample windows) and so is the video learner; the GRU checks use the default GRU (512 -> 256),
whose memory RSS resolves. One bench run is shared by the tests.
"""

from __future__ import annotations

import json
import math

import pytest
import torch

from online_gim import bench
from online_gim.config import ConvLayerConfig, EncoderConfig, LearnerConfig
from online_gim.learner import OnlineLearner
from online_gim.video.config import VideoLearnerConfig
from services.cli import main

SMALL = LearnerConfig.model_validate(
    dict(
        window=2560,
        encoder=EncoderConfig(
            convs=tuple(
                ConvLayerConfig(channels=32, kernel=k, stride=s, padding=p) for k, s, p in ((10, 5, 2), (8, 4, 2), (4, 2, 2))
            ),
            gru_hidden=16,
        ),
        loss=dict(prediction_steps=4, subwindow=32),
        memory=dict(capacity=256, writes_per_window=32),
    )
)
SMALL_VIDEO = VideoLearnerConfig(height=24, width=32)

PER_MODULE = {"loss_ratio_final", "dead_fraction_max"}
COUNTS = {"warmup_windows", "timed_windows", "threads", "cpu_count"}
TEXT = {"audio", "torch_version", "omp_wait_policy"}
KEYS = {
    "rtf_learn", "rtf_infer", "rtf_learn_e2e_bptt", "rtf_ratio_e2e_over_greedy", "eprop_max_rel_err",
    "eprop_mem_mib_t128", "eprop_mem_mib_t1024", "bptt_mem_mib_t128", "bptt_mem_mib_t1024",
    "eprop_mem_ratio_t1024_t128", "bptt_mem_ratio_t1024_t128", "peak_rss_mib_learn", "rss_mib_before_learner",
    "learner_state_mib",
    "learned_fraction", "learned_fraction_e2e", "video_fps_learn", "bench_seconds",
} | PER_MODULE | COUNTS | TEXT


@pytest.fixture(scope="module")
def result() -> bench.BenchResult:
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # two threads on a busy machine can be ten times slower
    try:
        return bench.run_bench(
            SMALL, timed_windows=3, min_warmup=2, rss_windows=2,
            gru=EncoderConfig(), video_config=SMALL_VIDEO, video_windows=2,
        )
    finally:
        torch.set_num_threads(threads)


def test_every_key_is_there_with_its_type_and_finite(result: bench.BenchResult) -> None:
    data = json.loads(json.dumps(result.to_dict(), allow_nan=False))
    assert set(data) == KEYS
    modules = OnlineLearner(SMALL).num_modules
    for key, value in data.items():
        if key in PER_MODULE:
            assert len(value) == modules and all(isinstance(v, float) and math.isfinite(v) for v in value), key
        elif key in COUNTS:
            assert isinstance(value, int) and value >= 1, key
        elif key in TEXT:
            assert value is None or isinstance(value, str), key
        else:
            assert isinstance(value, float) and math.isfinite(value) and value > 0, key
    assert data["threads"] == 1 and data["timed_windows"] == 3 and data["warmup_windows"] >= 2
    assert data["audio"] == "phone_like" or data["audio"].startswith("synth:")


def test_relations_that_must_hold(result: bench.BenchResult) -> None:
    assert result.rtf_ratio_e2e_over_greedy == pytest.approx(result.rtf_learn_e2e_bptt / result.rtf_learn)
    assert result.learned_fraction == result.learned_fraction_e2e == 1.0
    assert result.eprop_max_rel_err < 1e-4
    # e-prop's memory does not grow with the sequence; BPTT's graph does
    assert result.eprop_mem_ratio_t1024_t128 < 1.5
    assert result.bptt_mem_ratio_t1024_t128 > 2 * result.eprop_mem_ratio_t1024_t128
    assert result.eprop_mem_ratio_t1024_t128 == pytest.approx(result.eprop_mem_mib_t1024 / result.eprop_mem_mib_t128)
    assert result.bptt_mem_mib_t1024 > result.bptt_mem_mib_t128
    assert result.peak_rss_mib_learn - result.rss_mib_before_learner > result.learner_state_mib > 0
    assert all(0 <= d <= 1 for d in result.dead_fraction_max)
    assert all(r > 0 for r in result.loss_ratio_final)


@pytest.mark.parametrize("mode", ["greedy", "e2e"])
def test_learner_state_counts_parameters_and_both_adam_moments(mode: str) -> None:
    config = SMALL.model_copy(update=dict(mode=mode, encoder=SMALL.encoder.model_copy(update=dict(gru="bptt"))))
    learner = OnlineLearner(config)
    for window in bench.speech_windows(3, config.window, corpus_dir=None):
        learner.step(window)
    parameters = {p for stage in learner.stages for p in (*stage.module.parameters(), *stage.head.parameters())}
    stepped = {p for optimizer in learner.optimizers for p in optimizer.state}
    assert stepped  # some optimiser has stepped, so its moments exist
    expected = sum(p.numel() * 4 for p in parameters) + sum(2 * p.numel() * 4 for p in stepped)
    assert bench.learner_state_mib(learner) == pytest.approx(expected / bench.MIB)


def test_learning_is_timed_only_after_the_memories_let_every_module_update() -> None:
    windows = bench.speech_windows(6, SMALL.window, corpus_dir=None)
    assert [w.start_sample for w in windows] == [i * SMALL.window for i in range(6)]
    greedy, e2e = bench.measure_learning(
        [OnlineLearner(SMALL), OnlineLearner(bench.e2e_bptt_config(SMALL))], windows, min_warmup=1, timed=2
    )
    assert greedy.learned_fraction == e2e.learned_fraction == 1.0
    assert greedy.timed_windows == e2e.timed_windows == 2 and greedy.warmup_windows == e2e.warmup_windows
    # e2e scores only the top module
    assert math.isnan(e2e.loss_ratio[0]) and all(math.isfinite(r) for r in greedy.loss_ratio + e2e.loss_ratio[-1:])
    with pytest.raises(ValueError, match="fewer than 6"):
        bench.measure_learning([OnlineLearner(SMALL)], windows, min_warmup=1, timed=6)
    with pytest.raises(ValueError, match="schedule 'all'"):
        bench.measure_learning([OnlineLearner(SMALL.model_copy(update={"schedule": "random"}))], windows, min_warmup=1, timed=2)


def test_cli_json_is_one_object_and_the_table_names_every_key(result, monkeypatch, capsys) -> None:
    calls = []

    def fake_run_bench(config, *, timed_windows):
        calls.append((config, timed_windows, torch.get_num_threads()))
        return result

    threads = torch.get_num_threads()
    monkeypatch.setattr(bench, "run_bench", fake_run_bench)
    try:
        assert main(["bench", "--json", "--windows", "4", "--threads", "1"]) == 0
        out = capsys.readouterr().out
        assert out.count("\n") == 1 and json.loads(out) == json.loads(json.dumps(result.to_dict()))
        assert main(["bench"]) == 0
        table = capsys.readouterr().out
    finally:
        torch.set_num_threads(threads)
    assert calls[0] == (None, 4, 1)
    assert all(key in table for key in KEYS)
    assert main(["bench", "--windows", "0"]) == 2
