"""LearnerConfig.precision: bfloat16 products give float32 outputs close to float32's, and learn."""

import torch

from online_gim.bench import speech_windows
from online_gim.config import ConvLayerConfig, EncoderConfig, LearnerConfig
from online_gim.learner import OnlineLearner
from online_gim.losses import bfloat16_is_native, product_dtype

SMALL = dict(
    window=2560,
    encoder=EncoderConfig(
        convs=tuple(ConvLayerConfig(channels=32, kernel=k, stride=s, padding=p) for k, s, p in ((10, 5, 2), (8, 4, 2), (4, 2, 2))),
        gru_hidden=16,
    ),
    loss=dict(prediction_steps=4, subwindow=32),
    memory=dict(capacity=256, writes_per_window=32),
    probes=None,
)


def test_auto_is_bfloat16_exactly_where_the_cpu_multiplies_it_natively() -> None:
    assert product_dtype("auto") == (torch.bfloat16 if bfloat16_is_native() else torch.float32)
    assert product_dtype("float32") == torch.float32 and product_dtype("bfloat16") == torch.bfloat16


def test_bfloat16_embeddings_are_float32_and_close_to_float32s_and_the_learner_learns() -> None:
    learners = {p: OnlineLearner(LearnerConfig.model_validate({**SMALL, "precision": p})) for p in ("float32", "bfloat16")}
    windows = speech_windows(8, SMALL["window"], corpus_dir=None)
    audio = torch.cat([w.samples for w in windows[:2]])
    same = [learners["float32"].embed(audio), learners["bfloat16"].embed(audio)]  # same seed: same weights
    for exact, rounded in zip(*same):
        assert rounded.dtype == torch.float32 and rounded.shape == exact.shape
        assert (rounded - exact).norm() < 0.02 * exact.norm()
    learner = learners["bfloat16"]
    before = [p.detach().clone() for stage in learner.stages for p in stage.module.parameters()]
    reports = [learner.step(window) for window in windows]
    assert any(m.updated for m in reports[-1].modules)
    after = [p.detach() for stage in learner.stages for p in stage.module.parameters()]
    assert all(torch.isfinite(p).all() for p in after) and any(not torch.equal(a, b) for a, b in zip(before, after))
