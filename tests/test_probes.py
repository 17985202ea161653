"""Online linear probes: frame-rate mapping, prequential scoring, isolation from the encoder, state."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

from online_gim.config import ConvLayerConfig, EncoderConfig, LearnerConfig, LossConfig, ProbeConfig
from online_gim.learner import OnlineLearner
from online_gim.probes import FrameGrid, OnlineProbes, frame_grids, to_label_frames
from online_gim.state import codec
from online_gim.services.live import step_probes
from online_gim.streams.ring_buffer import iter_windows
from online_gim.streams.sources.librispeech import LibriSpeechReplay
from online_gim.streams.window import FRAME_SAMPLES, UNKNOWN_LABEL, AudioWindow, UtteranceSpan

WINDOW = 5120


def small_config(**changes) -> LearnerConfig:
    """4 conv modules of 32 channels (total stride 160: 10 ms at the top) + an e-prop GRU of 16.

    Running-statistics (``time``) normalisation: the default ``window`` norm standardises over the
    window itself, and 0.32 s windows (32 frames at the top) are too short for that (see
    ``EncoderConfig.norm``).
    """
    convs = tuple(
        ConvLayerConfig(channels=32, kernel=k, stride=s, padding=p) for k, s, p in ((10, 5, 2), (8, 4, 2), (4, 2, 2), (4, 2, 1))
    )
    encoder = EncoderConfig(convs=convs, gru_hidden=16, norm="time")
    return LearnerConfig(window=WINDOW, encoder=encoder, loss=LossConfig(prediction_steps=4, subwindow=32), **changes)


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def labelled_window(start: int, speaker: str, phones: np.ndarray, seed: int = 0) -> AudioWindow:
    samples = torch.randn(WINDOW, generator=torch.Generator().manual_seed(seed)) * 0.1
    return AudioWindow(
        samples, start_sample=start, phones=phones.astype(np.int16), spans=(UtteranceSpan(0, WINDOW, f"u{start}", speaker),)
    )


def encoder_state(learner: OnlineLearner) -> list[dict[str, torch.Tensor]]:
    """Every module's weights and statistics, and its prediction head's, as ``{name: tensor}`` per module."""
    return [
        {**stage.module.state_dict(), **{f"head.{k}": v for k, v in stage.head.state_dict().items()}}
        for stage in learner.stages
    ]


# ------------------------------------------------------------------------------------ frame rates


def test_default_top_module_is_one_frame_per_label_frame_and_lower_modules_are_pooled():
    grids = frame_grids(EncoderConfig())
    assert [g.stride for g in grids] == [5, 20, 40, 80, 160, 160]
    # the top module: frame t is centred inside label frame t, for every t of a 1.28 s window
    assert grids[-1].label_frames_of(128, 128).tolist() == list(range(128))
    # module 0 (4095 frames per window): every module frame's centre lands in its own label frame
    # and the pooled value of a label frame is the mean of the frames centred in it
    centres = 5 * torch.arange(4095, dtype=torch.float32) + grids[0].offset
    pooled = to_label_frames(centres[:, None], grids[0], 128)[:, 0]
    assert torch.all((pooled >= torch.arange(128) * FRAME_SAMPLES) & (pooled < (torch.arange(128) + 1) * FRAME_SAMPLES))


def test_a_module_coarser_than_10_ms_is_sampled_at_the_nearest_frame():
    grid = FrameGrid(stride=320, offset=160.0)  # frames centred at 160, 480, 800, ...
    features = torch.arange(4, dtype=torch.float32)[:, None]
    assert to_label_frames(features, grid, 8)[:, 0].tolist() == [0, 0, 1, 1, 2, 2, 3, 3]


def test_pooled_label_frames_equal_the_frame_by_frame_mean_for_every_grid_and_length():
    from online_gim.probes import _scatter_to_label_frames

    generator = torch.Generator().manual_seed(0)
    grids = frame_grids(EncoderConfig()) + [FrameGrid(stride=32, offset=-40.5), FrameGrid(stride=320, offset=160.0)]
    for grid in grids:
        for samples in (20480, 64000 + 77, 321, 160):
            frames = max(1, (samples - 10) // grid.stride)
            features = torch.randn(frames, 7, generator=generator)
            num_frames = samples // FRAME_SAMPLES
            fast = to_label_frames(features, grid, num_frames)
            assert fast.shape == (num_frames, 7)
            torch.testing.assert_close(fast, _scatter_to_label_frames(features, grid, num_frames), rtol=1e-6, atol=1e-6)


# ------------------------------------------------------------------------------------ probes


def test_prequential_scoring_predicts_before_it_learns_and_speakers_grow():
    probes = OnlineProbes(ProbeConfig(lr=0.1, accuracy_windows=20), small_config().encoder)
    frames = WINDOW // FRAME_SAMPLES
    rng = np.random.default_rng(0)
    # two separable "speakers" and two phones in a 16-dim feature space
    directions = torch.from_numpy(rng.standard_normal((4, 16)).astype(np.float32)) * 3

    def window(step: int, speaker: int, phone: int) -> tuple[AudioWindow, list[torch.Tensor]]:
        noise = torch.from_numpy(rng.standard_normal((frames, 16)).astype(np.float32))
        features = noise + directions[speaker] + directions[2 + phone]
        w = labelled_window(step * WINDOW, f"spk{speaker}", np.full(frames, phone))
        return w, [torch.zeros(1, 32)] * 4 + [features]

    w, embeddings = window(0, 0, 1)
    readout = probes.update(w, embeddings).readout
    assert readout.speaker_top == () and readout.speaker_accuracy == 0.0  # a new speaker cannot be predicted
    assert probes.speakers == ["spk0"]
    assert readout.phone_label.tolist() == [1] * frames and readout.phone_accuracy == 0.0  # zero weights: class 0
    w, embeddings = window(1, 1, 0)
    assert probes.update(w, embeddings).readout.speaker_top[0][0] == "spk0"  # spk1 still unknown: scored as a miss
    assert probes.speakers == ["spk0", "spk1"] and probes.speaker.classes == 2
    for step in range(2, 60):
        probes.update(*window(step, step % 2, (step // 2) % 2))
    assert probes.phone_accuracy.total == 60 * frames and probes.speaker_accuracy.total == 60
    assert probes.phone_accuracy.recent > 0.9 and probes.speaker_accuracy.recent > 0.9
    assert math.isclose(probes.readout.speaker_frame_accuracy, probes.speaker_frame_accuracy.recent)
    assert sum(p for _, p in probes.readout.speaker_top) == pytest.approx(1.0)


def test_unlabelled_windows_get_predictions_and_train_nothing():
    config = small_config()
    learner = OnlineLearner(config)
    learner.step(labelled_window(0, "a", np.full(WINDOW // FRAME_SAMPLES, 3)))
    weights = learner.probes.phone.weight.detach().clone()
    unlabelled = AudioWindow(torch.randn(WINDOW, generator=torch.Generator().manual_seed(1)) * 0.1, start_sample=WINDOW)
    report = learner.step(unlabelled)
    assert report.probes is learner.probe_readout() and report.probes is not None
    assert report.probes.phone_top.shape == (WINDOW // FRAME_SAMPLES,)
    assert torch.all(report.probes.phone_label == UNKNOWN_LABEL)
    assert report.probes.speaker_top[0][0] == "a"
    assert torch.equal(learner.probes.phone.weight, weights)
    assert learner.probes.phone_accuracy.total == WINDOW // FRAME_SAMPLES  # only the labelled window was scored
    assert step_probes(report, learner) is report.probes  # what the side service reads


def test_probes_never_change_what_the_encoder_learns():
    """Two learners with the same seed, one with probes and one without, learn the same weights."""
    with_probes, without = OnlineLearner(small_config()), OnlineLearner(small_config(probes=None))
    frames = WINDOW // FRAME_SAMPLES
    for step in range(4):
        window = labelled_window(step * WINDOW, f"s{step % 2}", np.arange(frames) % 41, seed=step)
        report = with_probes.step(window)
        assert all(not e.requires_grad for e in report.embeddings)
        without.step(window)
    assert with_probes.probes.phone_accuracy.total == 4 * frames
    for a, b in zip(encoder_state(with_probes), encoder_state(without)):
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert without.probe_readout() is None and "probes" not in without.state_dict()


def test_bad_phone_labels_are_refused_before_anything_changes():
    learner = OnlineLearner(small_config())
    before = encoder_state(learner)
    frames = WINDOW // FRAME_SAMPLES
    with pytest.raises(ValueError, match="phone label 41 is outside 0..40"):
        learner.step(labelled_window(0, "a", np.full(frames, 41)))
    with pytest.raises(ValueError, match=r"window.phones must be \(32,\)"):
        learner.step(labelled_window(0, "a", np.zeros(frames - 1)))
    assert learner.steps == 0 and learner.probes.standardizer.windows == 0
    assert all(torch.equal(a[k], b[k]) for a, b in zip(before, encoder_state(learner)) for k in a)


def test_module_choice_is_checked():
    with pytest.raises(ValueError, match=r"probes.module must be in -5..4"):
        small_config(probes=ProbeConfig(module=5))
    assert OnlineLearner(small_config(probes=ProbeConfig(module=0))).probes.channels == 32


def test_probe_state_round_trips_through_the_learner_state():
    config = small_config(probes=ProbeConfig(module=1))
    learner = OnlineLearner(config)
    frames = WINDOW // FRAME_SAMPLES
    for step in range(3):
        learner.step(labelled_window(step * WINDOW, f"s{step}", np.arange(frames) % 7, seed=step))
    restored = OnlineLearner(config)
    tensors, skeleton = codec.encode(learner.state_dict())  # as a checkpoint stores it: no pickle
    restored.load_state_dict(codec.decode(json.loads(json.dumps(skeleton)), tensors))
    assert restored.probes.speakers == ["s0", "s1", "s2"]
    assert restored.probes.phone_accuracy.state_dict() == learner.probes.phone_accuracy.state_dict()
    following = labelled_window(3 * WINDOW, "s1", np.arange(frames) % 5, seed=9)
    a, b = learner.step(following).probes, restored.step(following).probes
    assert torch.equal(a.phone_top, b.phone_top) and torch.equal(a.phone_prob, b.phone_prob)
    assert a.speaker_top == b.speaker_top and a.phone_accuracy == b.phone_accuracy
    broken = learner.state_dict()
    broken["probes"]["speakers"] = broken["probes"]["speakers"][:1]
    kept = restored.probes.state_dict()
    with pytest.raises(ValueError, match="saved speaker probe has shape"):
        restored.probes.load_state_dict(broken["probes"])
    assert restored.probes.speakers == kept["speakers"]


@pytest.mark.slow
def test_prequential_accuracy_rises_well_above_chance_on_the_synthetic_stream(synth_corpus_dir):
    """Three minutes of the synthetic corpus streamed through a small learner (probes on the GRU).

    Chance: the majority phone of the stream (silence) and 1 of 6 speakers.
    """
    learner = OnlineLearner(small_config())
    replay = LibriSpeechReplay(synth_corpus_dir, labels=synth_corpus_dir / "labels", speed=None, loop=True, order="shuffle")
    windows = 3 * 60 * 16_000 // WINDOW
    phone_counts = np.zeros(41)
    early = None
    for index, window in enumerate(iter_windows(replay, window=WINDOW, hop=WINDOW)):
        if index == windows:
            break
        learner.step(window)
        phone_counts += np.bincount(window.phones[window.phones >= 0], minlength=41)
        if index == 100:
            early = learner.probes.phone_accuracy.overall
    majority = phone_counts.max() / phone_counts.sum()
    probes = learner.probes
    print(
        f"after {windows} windows: phones {probes.phone_accuracy.recent:.3f} (first 100 windows {early:.3f}, "
        f"majority {majority:.3f}), speakers per window {probes.speaker_accuracy.recent:.3f}, "
        f"per frame {probes.speaker_frame_accuracy.recent:.3f} (chance {1 / 6:.3f})"
    )
    assert probes.phone_accuracy.recent > majority + 0.07
    assert probes.phone_accuracy.recent > early + 0.03
    assert probes.speaker_accuracy.recent > 1 / 6 + 0.08
    assert probes.speaker_frame_accuracy.recent > 1 / 6 + 0.04
    assert len(probes.speakers) == 6
