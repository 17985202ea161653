"""The :class:`~online_gim.run.contract.StreamLearner` contract, checked the same way for every learner
(in the spirit of river's ``check_estimator``): the audio learner with every shipped preset, and the
video learner.

Each :class:`Case` makes a learner and the windows of a deterministic stream. The presets keep what
makes them distinct (``e2e`` or greedy, the e-prop or BPTT GRU or none, the CLAPP hinge, its split
form or InfoNCE) and run at small widths (16 channels, short prediction) so that the suite stays
fast. A new learner (or a pipeline stage of modules) gets a case here and must pass every test.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import pytest
import torch

from online_gim.config import LearnerConfig, load_preset, preset_names
from online_gim.learner import OnlineLearner
from online_gim.run.contract import StreamLearner, StreamWindow
from online_gim.video import VideoLearner, VideoLearnerConfig
from online_gim.streams.video_window import VideoWindow
from online_gim.streams.window import AudioWindow, UtteranceSpan
from test_checkpoint import assert_same_tree

AUDIO_WINDOW = 10240
VIDEO_FRAMES, VIDEO_HOP = 16, 12


@dataclass(frozen=True)
class Case:
    """A learner under test and its stream.

    Attributes:
        name: shown in the test ids.
        make: a fresh learner (the same one every call).
        window: the ``i``-th live window of the stream (deterministic).
        poisoned: a window like ``window(i)`` with one NaN value.
        values: what :meth:`~online_gim.run.contract.StreamLearner.embed` takes of a window.
        greedy: the modules learn in isolation (no gradient crosses a module boundary).
    """

    name: str
    make: Callable[[], StreamLearner]
    window: Callable[[int], StreamWindow]
    poisoned: Callable[[int], StreamWindow]
    values: Callable[[StreamWindow], torch.Tensor]
    greedy: bool


def small_audio(preset: str) -> LearnerConfig:
    """The preset at small widths: what makes it distinct (mode, GRU, loss kind) kept."""
    config = load_preset(preset).model_dump()
    config["window"] = AUDIO_WINDOW
    config["encoder"]["convs"] = [{**conv, "channels": 16} for conv in config["encoder"]["convs"]]
    config["encoder"]["gru_hidden"] = 16
    config["loss"].update(prediction_steps=4, subwindow=16, negatives=4)
    config["memory"].update(capacity=256, writes_per_window=32)
    return LearnerConfig.model_validate(config)


def audio_window(index: int, *, poisoned: bool = False) -> AudioWindow:
    samples = torch.randn(AUDIO_WINDOW, generator=torch.Generator().manual_seed(index)) * 0.1
    if poisoned:
        samples[AUDIO_WINDOW // 3] = float("nan")
    frames = AUDIO_WINDOW // 160
    return AudioWindow(
        samples, start_sample=index * AUDIO_WINDOW, source_id="contract", phones=np.arange(frames, dtype=np.int16) % 41,
        spans=(UtteranceSpan(0, AUDIO_WINDOW, f"utt{index // 2}", f"spk{index % 3}"),),
    )


def audio_case(preset: str) -> Case:
    config = small_audio(preset)
    return Case(
        name=preset, make=lambda: OnlineLearner(config), window=audio_window,
        poisoned=lambda i: audio_window(i, poisoned=True), values=lambda w: w.samples, greedy=config.mode == "greedy",
    )


VIDEO_CONFIG = VideoLearnerConfig.model_validate({
    "height": 24, "width": 32,
    "encoder": {"convs": [{"channels": 8}, {"channels": 16, "pool": 2}, {"channels": 16, "pool": 2}]},
    "memory": {"capacity": 256, "exclusion_frames": 4},
})


def video_window(index: int, *, poisoned: bool = False) -> VideoWindow:
    frames = torch.rand(VIDEO_FRAMES, 1, 24, 32, generator=torch.Generator().manual_seed(index))
    if poisoned:
        frames[3, 0, 5, 5] = float("nan")
    return VideoWindow(
        frames, start_frame=index * VIDEO_HOP, frame_rate=25.0, source_id="contract",
        new_frames=VIDEO_FRAMES if index == 0 else VIDEO_HOP,
    )


CASES = [audio_case(preset) for preset in preset_names()] + [
    Case(
        name="video", make=lambda: VideoLearner(VIDEO_CONFIG), window=video_window,
        poisoned=lambda i: video_window(i, poisoned=True), values=lambda w: w.frames, greedy=True,
    )
]
GREEDY = [case for case in CASES if case.greedy]
END_TO_END = [case for case in CASES if not case.greedy]


def warmed(case: Case, windows: int = 3) -> StreamLearner:
    """A learner that has learned from the stream's first ``windows`` windows."""
    learner = case.make()
    for index in range(windows):
        learner.step(case.window(index))
    return learner


def without_counters(state: dict) -> dict:
    return {key: value for key, value in state.items() if key != "counters"}


def test_the_cases_cover_every_preset_both_modes_and_every_gru():
    assert {case.name for case in CASES} == {*preset_names(), "video"}
    configs = [small_audio(name) for name in preset_names()]
    assert {c.mode for c in configs} == {"greedy", "e2e"}
    assert {c.encoder.gru for c in configs} == {"eprop", "bptt", "none"}
    assert {"clapp", "clapp_s", "infonce"} <= {c.loss.kind for c in configs}


@pytest.mark.parametrize("case", CASES, ids=lambda case: case.name)
def test_it_is_a_stream_learner(case):
    learner = case.make()
    assert isinstance(learner, StreamLearner)
    assert learner.num_modules == len(learner.memories) == len(learner.module_parameters()) > 0
    assert learner.updates == learner.windows_skipped_nonfinite == 0


@pytest.mark.parametrize("case", CASES, ids=lambda case: case.name)
def test_reports_describe_the_window_the_same_way_for_every_learner(case):
    learner = case.make()
    reports = [learner.step(case.window(index)) for index in range(4)]
    for index, report in enumerate(reports):
        window = case.window(index)
        assert (report.step, report.window_start, report.window_length, report.rate) == (
            index + 1, window.start, window.length, window.rate
        )
        assert not report.skipped_nonfinite and report.skip is None and not report.replay
        assert [m.module for m in report.modules] == list(range(learner.num_modules))
        assert len(report.embeddings) == learner.num_modules
        for embedding in report.embeddings:
            assert embedding.dim() == 2 and embedding.dtype == torch.float32 and bool(torch.isfinite(embedding).all())
            assert not embedding.requires_grad
        assert report.seconds > 0 and report.real_time_factor == pytest.approx(report.seconds / (window.length / window.rate))
        assert all(m.updated == np.isfinite(m.loss) for m in report.modules)
    assert [r.updates for r in reports] == sorted(r.updates for r in reports) and reports[-1].updates == learner.updates > 0


@pytest.mark.parametrize("case", CASES, ids=lambda case: case.name)
def test_a_non_finite_window_is_skipped_counted_and_changes_nothing(case):
    learner = warmed(case)
    before = copy.deepcopy(learner.state_dict())
    report = learner.step(case.poisoned(3))
    assert report.skipped_nonfinite and report.skip.kind == "nonfinite_samples"
    assert report.modules == () and report.embeddings == () and report.probes is None
    assert learner.windows_skipped_nonfinite == 1 and report.step == 4
    after = learner.state_dict()
    assert after["counters"] == {**before["counters"], "steps": 4, "windows_skipped_nonfinite": 1}
    assert_same_tree(without_counters(after), without_counters(before))
    assert not learner.step(case.window(4)).skipped_nonfinite  # and the stream goes on


@pytest.mark.parametrize("case", CASES, ids=lambda case: case.name)
def test_a_state_round_trip_continues_exactly_as_the_original(case):
    original = warmed(case)
    copy_of = case.make()
    # a copy of the tree, as a checkpoint on disk is (Adam keeps the tensors it is given)
    assert copy_of.load_state_dict(copy.deepcopy(original.state_dict())) == []
    assert_same_tree(copy_of.state_dict(), original.state_dict())
    for index in range(3, 6):
        a, b = original.step(case.window(index)), copy_of.step(case.window(index))
        assert [m.loss for m in a.modules] == pytest.approx([m.loss for m in b.modules], nan_ok=True, rel=0, abs=0)
        assert all(torch.equal(x, y) for x, y in zip(a.embeddings, b.embeddings))
    assert_same_tree(copy_of.state_dict(), original.state_dict())
    assert original.updates > 0


@pytest.mark.parametrize("case", CASES, ids=lambda case: case.name)
def test_embed_changes_nothing_and_agrees_with_itself(case):
    learner = warmed(case)
    before = copy.deepcopy(learner.state_dict())
    values = case.values(case.window(7))
    first, second = learner.embed(values), learner.embed(values)
    assert len(first) == learner.num_modules
    assert all(a.dim() == 2 and bool(torch.isfinite(a).all()) and torch.equal(a, b) for a, b in zip(first, second))
    assert_same_tree(learner.state_dict(), before)
    poisoned = case.values(case.poisoned(7))
    with pytest.raises(ValueError, match="NaN"):
        learner.embed(poisoned)
    assert_same_tree(learner.state_dict(), before)


@pytest.mark.parametrize("case", CASES, ids=lambda case: case.name)
def test_a_replayed_window_learns_but_leaves_the_live_stream_as_it_was(case):
    learner = warmed(case)
    before = copy.deepcopy(learner.state_dict())
    parameters = [[p.detach().clone() for p in params] for params in learner.module_parameters()]
    stored = [len(memory) for memory in learner.memories]
    report = learner.step(case.window(1), replay=True)
    assert report.replay and report.probes is None and report.step == before["counters"]["steps"]
    after = learner.state_dict()
    assert after["counters"] == {**before["counters"], "replayed": 1, "updates": after["counters"]["updates"]}
    assert_same_tree(after["input_norm"], before["input_norm"])  # the live stream's statistics
    for stage_after, stage_before in zip(after["stages"], before["stages"]):  # running normalisation statistics
        buffers = [name for name, value in stage_before["module"].items() if name.startswith("running")]
        assert_same_tree({n: stage_after["module"][n] for n in buffers}, {n: stage_before["module"][n] for n in buffers})
    assert [len(memory) for memory in learner.memories] == stored  # nothing of the past is written again
    assert any(
        not torch.equal(p, q) for params, old in zip(learner.module_parameters(), parameters) for p, q in zip(params, old)
    )  # and yet it learned


@pytest.mark.parametrize("case", GREEDY, ids=lambda case: case.name)
def test_greedy_modules_learn_in_isolation(case):
    """Updating one module changes that module alone and leaves no gradient in any other: no
    gradient crosses a module boundary, whichever module learns."""
    for module in range(case.make().num_modules):
        learner = warmed(case)
        before = [[p.detach().clone() for p in params] for params in learner.module_parameters()]
        report = learner.step(case.window(3), modules=[module])
        assert [m.updated for m in report.modules] == [m == module for m in range(learner.num_modules)], module
        for index, (params, old) in enumerate(zip(learner.module_parameters(), before)):
            changed = any(not torch.equal(p, q) for p, q in zip(params, old))
            assert changed == (index == module), (module, index)
            assert all(p.grad is None or not bool(p.grad.any()) for p in params), (module, index)


@pytest.mark.parametrize("case", END_TO_END, ids=lambda case: case.name)
def test_an_end_to_end_learner_trains_every_module_from_one_loss(case):
    learner = warmed(case)
    before = [[p.detach().clone() for p in params] for params in learner.module_parameters()]
    report = learner.step(case.window(3), modules=[0])  # the override does not apply: one loss trains all
    assert report.modules[-1].updated and not any(m.updated for m in report.modules[:-1])
    assert all(any(not torch.equal(p, q) for p, q in zip(params, old)) for params, old in zip(learner.module_parameters(), before))
