"""`online-gim bench`: every key measured, finite and of its type; relations that must hold; the CLI's output.

No timed assertions: the machine may be busy. The learner is small (3 conv modules of 32 channels,
2560-sample windows) and so is the video learner; the GRU checks use the default GRU (512 -> 256),
whose memory RSS resolves. One bench run is shared by the tests.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch

from online_gim import bench
from online_gim.config import ConvLayerConfig, EncoderConfig, LearnerConfig
from online_gim.learner import OnlineLearner
from online_gim.video.config import VideoLearnerConfig
from online_gim.services.cli import main

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
REFERENCE = {"reference_rtf_train", "reference_rtf_forward", "speedup_learn_over_reference", "speedup_infer_over_reference"}
KEYS = {
    "rtf_learn", "rtf_infer", "rtf_learn_e2e_bptt", "rtf_ratio_e2e_over_greedy", "eprop_max_rel_err",
    "eprop_mem_mib_t128", "eprop_mem_mib_t1024", "bptt_mem_mib_t128", "bptt_mem_mib_t1024",
    "eprop_mem_ratio_t1024_t128", "bptt_mem_ratio_t1024_t128", "peak_rss_mib_learn", "rss_mib_before_learner",
    "learner_state_mib",
    "learned_fraction", "learned_fraction_e2e", "video_fps_learn", "bench_seconds",
} | PER_MODULE | COUNTS | TEXT | REFERENCE


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
        elif key in REFERENCE:
            assert value is None, key  # measured only with --reference
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


@pytest.mark.parametrize("moments", ["float32", "compact"])
@pytest.mark.parametrize("mode", ["greedy", "e2e"])
def test_learner_state_counts_parameters_and_both_adam_moments(mode: str, moments: str) -> None:
    config = SMALL.model_copy(update=dict(
        mode=mode, encoder=SMALL.encoder.model_copy(update=dict(gru="bptt")), optim=SMALL.optim.model_copy(update=dict(moments=moments)),
    ))
    learner = OnlineLearner(config)
    for window in bench.speech_windows(3, config.window, corpus_dir=None):
        learner.step(window)
    parameters = {p for stage in learner.stages for p in (*stage.module.parameters(), *stage.head.parameters())}
    stepped = [optimizer.params[i] for optimizer in learner.optimizers for i in optimizer.state]
    assert stepped  # some optimiser has stepped, so its moments exist

    def moment_bytes(p: torch.Tensor) -> int:
        if moments == "float32":
            return 2 * p.numel() * 4
        second = (p.shape[0] + p.numel() // p.shape[0]) * 4 if p.dim() >= 2 else p.numel() * 4  # factored for matrices
        return p.numel() * 2 + second  # the first moment in bfloat16

    expected = sum(p.numel() * 4 for p in parameters) + sum(moment_bytes(p) for p in stepped)
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

    def fake_run_bench(config, *, timed_windows, reference):
        calls.append((config, timed_windows, torch.get_num_threads(), reference))
        return result

    threads = torch.get_num_threads()
    monkeypatch.setattr(bench, "run_bench", fake_run_bench)
    try:
        assert main(["bench", "--json", "--windows", "4", "--threads", "1", "--pipeline-windows", "0"]) == 0
        out = capsys.readouterr().out
        assert out.count("\n") == 1 and json.loads(out) == json.loads(json.dumps(result.to_dict()))
        assert main(["bench", "--pipeline-windows", "0"]) == 0
        table = capsys.readouterr().out
    finally:
        torch.set_num_threads(threads)
    assert calls[0] == (None, 4, 1, None)
    assert all(key in table for key in KEYS)
    assert main(["bench", "--windows", "0"]) == 2


def test_the_reference_is_timed_through_its_own_parser_loader_and_training_step(tmp_path) -> None:
    """A stand-in for the published code's package (its real snapshot is never part of this project):
    reference_rtf calls its arg parser with the reference's flags, its loader, and times steps."""
    package = tmp_path / "GreedyInfoMax" / "audio" / "models"
    package.mkdir(parents=True)
    for folder in (tmp_path / "GreedyInfoMax", tmp_path / "GreedyInfoMax" / "audio", package):
        (folder / "__init__.py").write_text("")
    (tmp_path / "GreedyInfoMax" / "audio" / "arg_parser.py").write_text(
        "import argparse, types\n"
        "class _Parser:\n"
        "    def parse_args(self):\n"
        "        import sys\n"
        "        assert '--model_splits' in sys.argv and sys.argv[sys.argv.index('--batch_size') + 1] == '1'\n"
        "        return types.SimpleNamespace(train_layer=6)\n"
        "arg_parser = _Parser()\n"
    )
    (package / "load_audio_model.py").write_text(
        "import torch\n"
        "class _Model(torch.nn.Module):\n"
        "    def __init__(self):\n"
        "        super().__init__(); self.conv = torch.nn.Conv1d(1, 4, 10, 5); self.module = self\n"
        "    def forward(self, x, filename, start_idx, n):\n"
        "        return self.conv(x).pow(2).mean().reshape(1, 1)\n"
        "    def forward_through_n_layers(self, x, n):\n"
        "        return self.conv(x)\n"
        "def load_model_and_optimizer(opt):\n"
        "    model = _Model(); print('loading'); return model, torch.optim.Adam(model.parameters())\n"
    )
    for mode in ("train", "forward"):
        rtf = bench.run_in_fresh_process("reference_rtf", dict(reference=str(tmp_path), mode=mode, windows=2))
        assert isinstance(rtf, float) and 0 < rtf < 100


@pytest.mark.slow
def test_cli_reports_the_learners_real_time_factor_in_a_real_listen_run(result, monkeypatch, capsys) -> None:
    root = Path(__file__).resolve().parents[1] / ".." / "shared" / "data" / "librispeech-mini" / "LibriSpeech"
    if not root.is_dir():
        pytest.skip("no shared librispeech-mini here")
    monkeypatch.setattr(bench, "run_bench", lambda config, *, timed_windows, reference: result)
    threads = torch.get_num_threads()
    try:
        assert main(["bench", "--json", "--threads", "1", "--listen-root", str(root), "--listen-windows", "3"]) == 0
    finally:
        torch.set_num_threads(threads)
    data = json.loads(capsys.readouterr().out)
    assert data["rtf_learn_listen"] > 0 and data["rtf_learn_listen_mean"] > 0
    assert data["rtf_ratio_listen_over_bench"] == pytest.approx(data["rtf_learn_listen"] / data["rtf_learn"])
    assert main(["bench", "--reference", str(root)]) == 2  # no GreedyInfoMax package there
    assert "holds no GreedyInfoMax package" in capsys.readouterr().err
