"""The online learner: isolation of modules, learning on a structured signal, robustness to bad input."""

import copy
import math

import numpy as np
import pytest
import torch

from online_gim.config import ConvLayerConfig, EncoderConfig, LearnerConfig, LossConfig, MemoryConfig, OptimConfig
from online_gim.learner import OnlineLearner
from online_gim.streams.corpora.phone_like import phone_like_stream
from online_gim.streams.window import AudioWindow

SMALL_CONVS = tuple(
    ConvLayerConfig(channels=32, kernel=k, stride=s, padding=p) for k, s, p in ((10, 5, 2), (8, 4, 2), (4, 2, 2))
)


def small_config(**changes) -> LearnerConfig:
    base = dict(
        window=2560,
        encoder=EncoderConfig(convs=SMALL_CONVS, gru_hidden=16),
        loss=LossConfig(prediction_steps=4, subwindow=32),
        memory=MemoryConfig(capacity=256, writes_per_window=32),
        optim={"lr": 1e-3},
    )
    base.update(changes)
    return LearnerConfig.model_validate(base)


def _windows(config: LearnerConfig, count: int, seed: int = 0) -> list[AudioWindow]:
    return [
        AudioWindow(samples, start_sample=i * config.window, source_id="test")
        for i, samples in enumerate(phone_like_stream(count, config.window, seed))
    ]


@pytest.mark.parametrize("gru", ["eprop", "bptt"])
def test_greedy_mode_sends_no_gradient_across_modules(gru: str) -> None:
    config = small_config(encoder=EncoderConfig(convs=SMALL_CONVS, gru_hidden=16, gru=gru))
    learner = OnlineLearner(config)
    windows = _windows(config, 12)
    for window in windows[:8]:  # fill the memories so that every module has negatives
        learner.step(window)
    for module, window in zip(range(learner.num_modules), windows[8:]):
        before = [[p.detach().clone() for p in stage.module.parameters()] for stage in learner.stages]
        report = learner.step(window, modules=[module])
        assert [m.updated for m in report.modules] == [i == module for i in range(learner.num_modules)]
        for index, stage in enumerate(learner.stages):
            for parameter, old in zip(stage.module.parameters(), before[index]):
                assert parameter.grad is None, f"module {index} received a gradient from module {module}'s loss"
                assert torch.equal(parameter, old) == (index != module)


def test_loss_falls_on_a_structured_signal() -> None:
    config = small_config()
    learner = OnlineLearner(config)
    ratios = []
    for window in _windows(config, 300):
        report = learner.step(window)
        ratios.append([m.loss_ratio for m in report.modules])
    ratios = np.array(ratios)
    early, late = np.nanmean(ratios[10:40], axis=0), np.nanmean(ratios[-30:], axis=0)
    assert np.all(late < early - 0.05), (early, late)
    assert np.all(late < 0.9)
    dead = report.modules[-2].dead_fraction
    assert dead < 0.5


def test_nan_and_inf_windows_are_skipped_and_leave_state_unchanged() -> None:
    config = small_config()
    learner = OnlineLearner(config)
    windows = _windows(config, 6)
    for window in windows[:5]:
        learner.step(window)
    before = {k: v.clone() for k, v in learner.stages[0].module.state_dict().items()}
    for bad in (float("nan"), float("inf")):
        samples = windows[5].samples.clone()
        samples[100] = bad
        report = learner.step(AudioWindow(samples, start_sample=windows[5].start_sample, source_id="test"))
        assert report.skipped_nonfinite and report.modules == ()
    assert learner.windows_skipped_nonfinite == 2
    for key, value in learner.stages[0].module.state_dict().items():
        assert torch.equal(value, before[key])
    report = learner.step(windows[5])
    assert not report.skipped_nonfinite
    assert all(torch.isfinite(p).all() for stage in learner.stages for p in stage.module.parameters())


def test_silence_and_extreme_levels_keep_weights_finite() -> None:
    config = small_config()
    learner = OnlineLearner(config)
    for i, samples in enumerate([torch.zeros(2560), torch.zeros(2560), torch.ones(2560), torch.randn(2560) * 1e4]):
        learner.step(AudioWindow(samples, start_sample=i * 2560, source_id="test"))
    for window in _windows(config, 5):
        learner.step(window)
    assert all(torch.isfinite(p).all() for stage in learner.stages for p in stage.module.parameters())
    assert all(torch.isfinite(p).all() for stage in learner.stages for p in stage.head.parameters())


def test_wrong_window_length_is_a_clear_error() -> None:
    learner = OnlineLearner(small_config())
    with pytest.raises(ValueError, match=r"\(2560,\)"):
        learner.step(AudioWindow(torch.zeros(1000)))


def test_each_conv_module_gets_its_configured_norm() -> None:
    learner = OnlineLearner(small_config(encoder=EncoderConfig(convs=SMALL_CONVS, norm_per_module=("time", "window", "none"))))
    assert [stage.module.norm for stage in learner.stages[:3]] == ["time", "window", "none"]
    assert [stage.module.norm for stage in OnlineLearner(small_config()).stages[:3]] == ["window"] * 3
    with pytest.raises(ValueError, match="names 2 norms for 3 conv modules"):
        EncoderConfig(convs=SMALL_CONVS, norm_per_module=("time", "window"))


def test_each_module_gets_its_configured_learning_rate() -> None:
    rates = (1e-4, 2e-4, 3e-4, 4e-4)
    learner = OnlineLearner(small_config(encoder=EncoderConfig(convs=SMALL_CONVS, gru_hidden=16), optim=OptimConfig(lr_per_module=rates)))
    assert [stage.optimizer.lr for stage in learner.stages] == list(rates)
    with pytest.raises(ValueError, match="names 3 learning rates for 4 modules"):
        small_config(encoder=EncoderConfig(convs=SMALL_CONVS, gru_hidden=16), optim=OptimConfig(lr_per_module=rates[:3]))


@pytest.mark.parametrize(
    ("mix", "weights"), [("sum", [None, (1.0, 1.0), (1.0, 1.0)]), ("mean", [None, (0.5, 0.5), (0.5, 0.5)]),
                         ("equal", [None, (1 / 2, 1 / 2), (1 / 3, 2 / 3)]), ("centred", [None, (1.0, 1.0), (1.0, 1.0)])],
)
def test_residual_skips_every_conv_module_but_the_first(mix: str, weights: list) -> None:
    """``equal``: conv module i's output is the mean of i + 1 equally weighted module outputs."""
    learner = OnlineLearner(small_config(encoder=EncoderConfig(convs=SMALL_CONVS, residual=True, residual_mix=mix)))
    assert [stage.module.residual_weights for stage in learner.stages[:3]] == weights
    assert [stage.module.centre_skip for stage in learner.stages[:3]] == [False, mix == "centred", mix == "centred"]
    narrower = (*SMALL_CONVS[:2], SMALL_CONVS[2].model_copy(update={"channels": SMALL_CONVS[1].channels // 2}))
    with pytest.raises(ValueError, match="conv module 2 has"):
        EncoderConfig(convs=narrower, residual=True)


@pytest.mark.parametrize(
    "changes",
    [
        {"loss": LossConfig(kind="infonce", prediction_steps=4, subwindow=32, negatives=5)},
        {"loss": LossConfig(kind="clapp_s", prediction_steps=4, subwindow=32, split_prediction=True)},
        {"loss": LossConfig(kind="distance_hinge", prediction_steps=4, subwindow=32)},
        {"memory": MemoryConfig(capacity=256, writes_per_window=32, policy="hard")},
        {"mode": "e2e", "encoder": EncoderConfig(convs=SMALL_CONVS, gru_hidden=16, gru="bptt")},
        {"encoder": EncoderConfig(convs=SMALL_CONVS, gru="none", norm="frame")},
        {"encoder": EncoderConfig(convs=SMALL_CONVS, gru_hidden=16, norm="time")},
        {"encoder": EncoderConfig(convs=SMALL_CONVS, gru_hidden=16, norm_per_module=("window", "time", "frame"))},
        {"pre_emphasis": 0.97},
        {"encoder": EncoderConfig(convs=SMALL_CONVS, gru_hidden=16, residual=True)},
        {"encoder": EncoderConfig(convs=SMALL_CONVS, gru_hidden=16, residual=True, residual_mix="equal")},
        {"encoder": EncoderConfig(convs=SMALL_CONVS, gru_hidden=16, residual=True, residual_mix="centred")},
        {"mode": "e2e", "encoder": EncoderConfig(convs=SMALL_CONVS, gru_hidden=16, gru="bptt", residual=True)},
        {"schedule": "round_robin"},
        {"schedule": "random"},
    ],
)
def test_every_variant_learns_with_finite_weights(changes: dict) -> None:
    config = small_config(**changes)
    learner = OnlineLearner(config)
    updated = np.zeros(learner.num_modules)
    for window in _windows(config, 30):
        report = learner.step(window)
        updated += [m.updated for m in report.modules]
        assert all(math.isfinite(m.loss) for m in report.modules if m.updated)
    if config.mode == "e2e":
        assert updated[-1] > 20 and updated[:-1].sum() == 0  # one loss, at the top
    elif config.schedule == "all":
        assert np.all(updated > 20)
    else:
        assert updated.sum() <= 30 and np.all(updated > 0)
    assert all(torch.isfinite(p).all() for stage in learner.stages for p in stage.module.parameters())


def test_state_dict_round_trip_continues_identically() -> None:
    config = small_config()
    windows = _windows(config, 14)
    first = OnlineLearner(config)
    for window in windows[:8]:
        first.step(window)
    second = OnlineLearner(config)
    second.load_state_dict(copy.deepcopy(first.state_dict()))  # no tensor shared between the two
    for window in windows[8:]:
        a, b = first.step(window), second.step(window)
        assert [m.loss for m in a.modules] == [m.loss for m in b.modules]
    for s1, s2 in zip(first.stages, second.stages):
        for p1, p2 in zip(s1.module.parameters(), s2.module.parameters()):
            assert torch.equal(p1, p2)


def test_state_from_another_config_is_refused_naming_the_field() -> None:
    learner = OnlineLearner(small_config())
    other = OnlineLearner(small_config(optim={"lr": 5e-4}))
    with pytest.raises(ValueError, match="optim.lr"):
        other.load_state_dict(learner.state_dict())


def test_embed_matches_the_stack_and_changes_no_state() -> None:
    config = small_config()
    learner = OnlineLearner(config)
    for window in _windows(config, 4):
        learner.step(window)
    state = {k: v.clone() for k, v in learner.stages[0].module.state_dict().items()}
    outputs = learner.embed(torch.randn(16000) * 0.1)
    assert [o.shape[1] for o in outputs] == [32, 32, 32, 16]
    assert outputs[2].shape[0] == outputs[3].shape[0] == 16000 // 40
    for key, value in learner.stages[0].module.state_dict().items():
        assert torch.equal(value, state[key])


def test_parts_of_the_stack_learn_what_the_whole_stack_learns() -> None:
    """Two learners each holding a part of the stack (a pipeline's stages, in one process), the
    upper one fed the lower one's top output, end with the whole stack's weights: every module has
    its own generators, and nothing flows back."""
    from online_gim.stage_window import ActivationWindow

    config = small_config(probes={})
    whole, lower, upper = OnlineLearner(config), OnlineLearner(config, range(0, 2)), OnlineLearner(config, range(2, 4))
    assert (lower.num_modules, upper.num_modules, list(upper.module_indices)) == (2, 2, [2, 3])
    for window in _windows(config, 4):
        expected = whole.step(window)
        below = lower.step(window)
        above = upper.step(ActivationWindow.above(window, below.embeddings[-1].T.contiguous()))
        assert [m.module for m in below.modules + above.modules] == [0, 1, 2, 3]
        assert [m.loss for m in below.modules + above.modules] == [m.loss for m in expected.modules]
    parts = [p for learner in (lower, upper) for module in learner.module_parameters() for p in module]
    for mine, theirs in zip(parts, [p for module in whole.module_parameters() for p in module], strict=True):
        assert torch.equal(mine, theirs)
    assert upper.probe_readout() is not None and lower.probe_readout() is None  # the probes read the top module
    with pytest.raises(ValueError, match="holds modules 0-1 of the stack, this learner modules 2-3"):
        upper.load_state_dict(lower.state_dict())


def test_a_part_of_the_stack_refuses_what_it_cannot_hold_or_learn() -> None:
    config = small_config()
    with pytest.raises(ValueError, match="both or neither"):
        OnlineLearner(config, range(0, 3))  # the GRU (3) left without the top conv module (2)
    with pytest.raises(ValueError, match="contiguous range"):
        OnlineLearner(config, range(2, 6))
    with pytest.raises(ValueError, match="cannot be split"):
        OnlineLearner(small_config(mode="e2e", encoder=EncoderConfig(convs=SMALL_CONVS, gru="bptt", gru_hidden=16)), range(0, 2))
    upper = OnlineLearner(config, range(2, 4))
    with pytest.raises(ValueError, match="activations of module 1"):
        upper.step(_windows(config, 1)[0])  # audio, where the part above module 0 needs activations


def test_a_state_older_than_a_changed_default_is_read_as_the_learner_that_wrote_it() -> None:
    """A state saved before ``input_gain``, ``memory.window_negatives`` and ``encoder.residual``
    existed was written by a learner with a stream gain, memory negatives only and no skip path:
    today's defaults refuse it, naming the field, and a configuration with those values resumes it.
    One saved before ``encoder.residual_mix`` with a skip path had the plain sum."""
    old = small_config(input_gain="stream", memory=MemoryConfig(capacity=256, writes_per_window=32, window_negatives=0.0),
                       encoder=EncoderConfig(convs=SMALL_CONVS, gru_hidden=16, residual=False, residual_mix="sum"))
    learner = OnlineLearner(old)
    for window in _windows(old, 3):
        learner.step(window)
    state = learner.state_dict()
    saved = copy.deepcopy(state["config"])
    del saved["input_gain"], saved["memory"]["window_negatives"], saved["encoder"]["residual"]
    del saved["encoder"]["residual_mix"]
    assert LearnerConfig.from_saved(saved) == old
    with_sum = {**saved, "encoder": {**saved["encoder"], "residual": True}}
    assert LearnerConfig.from_saved(with_sum).encoder.residual_mix == "sum"
    with pytest.raises(ValueError, match="different config: input_gain: saved 'stream', now 'local'"):
        OnlineLearner(small_config()).load_state_dict({**state, "config": saved})
    resumed = OnlineLearner(old)
    resumed.load_state_dict({**state, "config": saved})
    assert all(torch.equal(a, b) for a, b in zip(resumed.stages[1].module.parameters(), learner.stages[1].module.parameters()))
