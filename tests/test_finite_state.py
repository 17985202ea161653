"""No input makes the learner's state non-finite (online_gim.finite, InputNormalizer.refusal).

A window is refused before anything changes when it holds NaN/Inf or a level float32 cannot
represent; the step guard rolls back a window that made the volatile state (statistics, GRU state,
traces, probes) non-finite, and checks the conv stack's encodings before any memory write or
update. The property test streams adversarial windows through a small learner; one slow test does
the same with the default (512-channel) learner.
"""

from __future__ import annotations

import functools
import math

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from online_gim.config import ConvLayerConfig, EncoderConfig, LearnerConfig, LossConfig, MemoryConfig
from online_gim.finite import nonfinite_paths
from online_gim.input_norm import FLOAT32_MAX
from online_gim.learner import OnlineLearner
from online_gim.report import StepReport
from online_gim.video.config import VideoLearnerConfig
from online_gim.video.learner import VideoLearner
from online_gim.streams.corpora.librispeech import load_audio
from online_gim.streams.video_window import VideoWindow
from online_gim.streams.window import AudioWindow
from test_checkpoint import AUDIO

WINDOW = 2560
KINDS = ("noise", "alternating", "spike", "dc", "denormal", "speech_mix")


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """Small tensors: one intra-op thread is several times faster than two on a loaded machine."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def small_config(**changes) -> LearnerConfig:
    """3 conv modules of 16 channels and an 8-unit e-prop GRU, with probes: every state part, cheaply."""
    convs = tuple(ConvLayerConfig(channels=16, kernel=k, stride=s, padding=p) for k, s, p in ((10, 5, 2), (8, 4, 2), (4, 2, 2)))
    config = LearnerConfig(
        window=WINDOW,
        encoder=EncoderConfig(convs=convs, gru_hidden=8),
        loss=LossConfig(prediction_steps=4, subwindow=32),
        memory=MemoryConfig(capacity=128, writes_per_window=16),
    )
    return LearnerConfig.model_validate({**config.model_dump(), **changes})


@functools.cache
def recorded_speech() -> np.ndarray | None:
    """The shared LibriSpeech mini's utterances, concatenated (``None`` when the data is not there)."""
    files = sorted(AUDIO.rglob("*.flac"))
    return np.concatenate([load_audio(path) for path in files]) if files else None


def speech(samples: int, rng: np.random.Generator) -> np.ndarray:
    """Speech: a random excerpt of real recordings when the shared data is there, else a vowel-like
    signal at about -20 dBFS (harmonics of a gliding pitch under a syllable envelope)."""
    recorded = recorded_speech()
    if recorded is not None:
        start = int(rng.integers(0, recorded.shape[0] - samples))
        return recorded[start : start + samples].copy()
    t = np.arange(samples) / 16_000
    pitch = rng.uniform(90, 220) * (1 + 0.1 * np.sin(2 * np.pi * rng.uniform(1, 3) * t))
    phase = 2 * np.pi * np.cumsum(pitch) / 16_000
    voiced = sum(np.sin(k * phase) / k for k in range(1, 12))
    envelope = 0.5 * (1 - np.cos(2 * np.pi * rng.uniform(3, 6) * t))
    signal = voiced * envelope + 0.05 * rng.standard_normal(samples)
    return (0.1 * signal / np.std(signal)).astype(np.float32)


def hostile_samples(kind: str, magnitude: float, position: int, seed: int, samples: int = WINDOW) -> np.ndarray:
    """One adversarial window: finite float32 samples of the given kind at up to ``magnitude``."""
    rng = np.random.default_rng(seed)
    if kind == "noise":
        values = rng.standard_normal(samples) * magnitude
    elif kind == "alternating":
        values = magnitude * np.where(np.arange(samples) % 2 == 0, 1.0, -1.0)
    elif kind == "spike":
        values = np.zeros(samples)
        values[position % samples] = magnitude
    elif kind == "dc":
        values = np.full(samples, magnitude) + speech(samples, rng)
    elif kind == "denormal":
        values = rng.standard_normal(samples) * 1e-42  # float32 subnormals (below 1.2e-38)
    else:  # speech with a burst of noise at the magnitude
        values = speech(samples, rng).astype(np.float64)
        burst = slice(position % samples, position % samples + samples // 8)
        values[burst] += rng.standard_normal(values[burst].shape[0]) * magnitude
    return np.clip(values, -FLOAT32_MAX, FLOAT32_MAX).astype(np.float32)


hostile_windows = st.lists(
    st.tuples(
        st.sampled_from(KINDS),
        st.floats(min_value=-45.0, max_value=math.log10(FLOAT32_MAX)).map(lambda e: min(10.0**e, FLOAT32_MAX)),
        st.sampled_from((1.0, -1.0)),
        st.integers(0, WINDOW - 1),
        st.integers(0, 2**16),
    ),
    min_size=1,
    max_size=4,
)


def audio_window(samples: np.ndarray, index: int) -> AudioWindow:
    return AudioWindow(torch.from_numpy(samples), start_sample=index * samples.shape[0], source_id="hostile")


def assert_state_finite(learner: OnlineLearner | VideoLearner) -> None:
    """Every tensor of the state is finite, the memories' stored vectors included."""
    assert nonfinite_paths(learner.state_dict()) == []
    for memory in learner.memories:
        vectors = memory.index.reconstruct_n(0, len(memory)) if len(memory) else np.zeros((0, memory.dim))
        assert np.isfinite(vectors).all()


def assert_learned(report: StepReport, learner: OnlineLearner) -> None:
    """A normal window is learned from: not skipped, every module updated with a finite loss."""
    assert report.skip is None and not report.skipped_nonfinite
    assert len(report.modules) == learner.num_modules
    assert all(module.updated and math.isfinite(module.loss) for module in report.modules)


def assert_unchanged(before: object, after: object, path: str = "") -> None:
    """Two learner state trees are equal, bit for bit (the counters aside)."""
    if isinstance(before, torch.Tensor):
        assert before.dtype == after.dtype and torch.equal(before, after), path
    elif isinstance(before, np.ndarray):
        assert before.dtype == after.dtype and np.array_equal(before, after), path
    elif isinstance(before, dict):
        assert list(before) == list(after), path
        for key in before:
            if key != "counters":
                assert_unchanged(before[key], after[key], f"{path}.{key}")
    elif isinstance(before, (list, tuple)):
        assert len(before) == len(after), path
        for i, (x, y) in enumerate(zip(before, after)):
            assert_unchanged(x, y, f"{path}.{i}")
    else:
        assert before == after, path


# ---------------------------------------------------------------------- the level check


def test_a_window_beyond_float32s_level_is_skipped_before_anything_changes():
    learner = OnlineLearner(small_config())
    rng = np.random.default_rng(0)
    learner.step(audio_window(speech(WINDOW, rng), 0))
    before = learner.state_dict()
    report = learner.step(audio_window((np.random.default_rng(1).standard_normal(WINDOW) * 1e30).astype(np.float32), 1))
    assert report.skipped_nonfinite and report.skip.kind == "level" and "RMS 1e+30" in report.skip.detail
    assert learner.windows_skipped_nonfinite == 1 and learner.steps == 2
    assert_unchanged(before, learner.state_dict())
    assert_learned(learner.step(audio_window(speech(WINDOW, rng), 2)), learner)


def test_the_level_limit_is_the_float32_sum_of_squares():
    n = WINDOW
    below = np.full(n, math.sqrt(FLOAT32_MAX / n) * 0.99, dtype=np.float32)
    above = np.full(n, math.sqrt(FLOAT32_MAX / n) * 1.01, dtype=np.float32)
    from online_gim.input_norm import InputNormalizer

    assert InputNormalizer.refusal(torch.from_numpy(below)) is None
    assert InputNormalizer.refusal(torch.from_numpy(above)).kind == "level"
    assert InputNormalizer.refusal(torch.tensor([0.0, float("nan")])).kind == "nonfinite_samples"


# ---------------------------------------------------------------------- the step guard


def overflowing_step(learner: OnlineLearner) -> tuple[dict, StepReport]:
    """A step after which module 1's pre-activations overflow float32's squares (a future bug, or a
    finite but huge weight); returns the state before it and its report."""
    rng = np.random.default_rng(0)
    learner.step(audio_window(speech(WINDOW, rng), 0))
    with torch.no_grad():
        learner.stages[1].module.conv.weight.mul_(1e20)
    before = learner.state_dict()
    return before, learner.step(audio_window(speech(WINDOW, rng), 1))


def test_a_window_that_makes_the_statistics_non_finite_is_rolled_back_before_any_commit():
    learner = OnlineLearner(small_config())
    before, report = overflowing_step(learner)
    assert report.skip.kind == "nonfinite_state" and "stages.1.module.running_var" in report.skip.detail
    assert learner.windows_skipped_nonfinite == 1
    # nothing was committed: statistics, memories, weights, optimiser moments, probes are as before
    after = learner.state_dict()
    for part in ("input_norm", "stages", "memories", "hidden", "traces", "probes"):
        assert_unchanged(before[part], after[part], part)
    assert_state_finite(learner)


def test_a_probe_or_gru_state_made_non_finite_after_the_update_is_restored(monkeypatch):
    learner = OnlineLearner(small_config())
    rng = np.random.default_rng(0)
    learner.step(audio_window(speech(WINDOW, rng), 0))
    saved_probes = learner.state_dict()["probes"]
    hidden = learner.hidden.clone()
    real_update = learner.probes.update

    def poisoned_update(window, embeddings, **options):
        result = real_update(window, embeddings, **options)
        learner.probes.standardizer.var = torch.full_like(learner.probes.standardizer.var, float("nan"))
        learner.hidden = torch.full_like(learner.hidden, float("inf"))
        return result

    monkeypatch.setattr(learner.probes, "update", poisoned_update)
    report = learner.step(audio_window(speech(WINDOW, rng), 1))
    assert report.skip.kind == "nonfinite_state"
    assert "probes.standardizer.var" in report.skip.detail and "hidden" in report.skip.detail
    assert torch.equal(learner.hidden, hidden)
    assert_unchanged(saved_probes, learner.state_dict()["probes"], "probes")
    assert_state_finite(learner)


def test_the_end_to_end_learner_is_guarded_too():
    learner = OnlineLearner(small_config(mode="e2e", encoder={**small_config().encoder.model_dump(), "gru": "bptt"}))
    before, report = overflowing_step(learner)
    assert report.skip.kind == "nonfinite_state"
    after = learner.state_dict()
    for part in ("input_norm", "stages", "memories", "hidden", "e2e_optimizer"):
        assert_unchanged(before[part], after[part], part)


# ---------------------------------------------------------------------- adversarial streams


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(attack=hostile_windows)
def test_no_stream_of_hostile_windows_makes_the_state_non_finite_and_learning_resumes(attack):
    learner = OnlineLearner(small_config())
    rng = np.random.default_rng(7)
    index = 0
    for _ in range(2):  # a learner that has heard speech
        assert_learned(learner.step(audio_window(speech(WINDOW, rng), index)), learner)
        index += 1
    skipped = 0
    for kind, magnitude, sign, position, seed in attack:
        before = learner.state_dict()
        report = learner.step(audio_window(hostile_samples(kind, sign * magnitude, position, seed), index))
        index += 1
        assert_state_finite(learner)
        if report.skipped_nonfinite:
            skipped += 1
            assert report.skip is not None and report.skip.detail
            if report.skip.kind in ("level", "nonfinite_samples"):
                assert_unchanged(before, learner.state_dict())
    assert learner.windows_skipped_nonfinite == skipped
    for _ in range(3):  # normal audio afterwards: learned from, every module updates
        assert_learned(learner.step(audio_window(speech(WINDOW, rng), index)), learner)
        index += 1
        assert_state_finite(learner)


@pytest.mark.slow
def test_the_default_learner_survives_every_kind_of_hostile_window():
    learner = OnlineLearner(LearnerConfig())
    window = learner.config.window
    rng = np.random.default_rng(3)
    attack = [
        ("noise", 1e30), ("alternating", FLOAT32_MAX), ("spike", FLOAT32_MAX), ("dc", 1e15),
        ("denormal", 0.0), ("speech_mix", 1e20), ("noise", 1e16), ("spike", 1e18),
    ]
    assert_learned(learner.step(audio_window(speech(window, rng), 0)), learner)
    for index, (kind, magnitude) in enumerate(attack, start=1):
        learner.step(audio_window(hostile_samples(kind, magnitude, 777 * index, index, samples=window), index))
        assert_state_finite(learner)
    for index in range(len(attack) + 1, len(attack) + 3):
        assert_learned(learner.step(audio_window(speech(window, rng), index)), learner)
    assert_state_finite(learner)


# ---------------------------------------------------------------------- the video learner


def test_the_video_learner_refuses_huge_frames_and_rolls_back_non_finite_statistics():
    learner = VideoLearner(VideoLearnerConfig())
    generator = torch.Generator().manual_seed(0)
    learner.step(VideoWindow(torch.rand(16, 1, 48, 64, generator=generator)))
    before = learner.state_dict()
    report = learner.step(VideoWindow(torch.rand(16, 1, 48, 64, generator=generator) * 1e30, start_frame=16))
    assert report.skip.kind == "level"
    assert_unchanged(before, learner.state_dict())
    with torch.no_grad():
        learner.stages[2].module.conv.weight.mul_(1e20)
    before = learner.state_dict()
    report = learner.step(VideoWindow(torch.rand(16, 1, 48, 64, generator=generator), start_frame=32))
    assert report.skip.kind == "nonfinite_state"
    assert_unchanged(before, learner.state_dict())
    assert_state_finite(learner)
