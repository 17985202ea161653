"""Offline linear evaluation: split, probe fitting, MFCC alignment, and `online-gim eval` end to end."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from online_gim.evaluation.cache import ResultCache
from online_gim.evaluation.features import SplitLabels, mfcc_encoder
from online_gim.evaluation.linear_probe import ProbeResult, ProbeTask, fit_probe, fit_probes
from online_gim.evaluation.methods import resolve_methods
from online_gim.evaluation.results import Accuracies, ClassAccuracy, EvaluationReport
from online_gim.evaluation.run import Evaluation, EvaluationSettings
from online_gim.evaluation.scoring import class_accuracies, majority_accuracies
from online_gim.evaluation.split import PER_SPEAKER, SPLIT_FILES, Segment, split_corpus
from online_gim.services.cli import main
from online_gim.streams.corpora.librispeech import LibriSpeechCorpus

MINI = Path(__file__).resolve().parents[2] / "shared" / "data" / "librispeech-mini"
MINI_LABELS = MINI / "LibriSpeech100_labels_split"
requires_mini = pytest.mark.skipif(not MINI.is_dir(), reason=f"{MINI} is not there")

TINY_PRESET = """\
window: 5120
encoder:
  convs:
    - {channels: 16, kernel: 10, stride: 5, padding: 2}
    - {channels: 16, kernel: 8, stride: 4, padding: 2}
    - {channels: 16, kernel: 4, stride: 2, padding: 2}
    - {channels: 16, kernel: 4, stride: 2, padding: 1}
  gru_hidden: 8
loss: {prediction_steps: 4, subwindow: 32}
"""


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture
def tiny_presets(tmp_path) -> Path:
    """A presets folder whose `random` and `clapp_eprop` are a tiny stack (4 x 16 channels + GRU 8)."""
    folder = tmp_path / "presets"
    folder.mkdir()
    for name in ("random", "clapp_eprop"):
        (folder / f"{name}.yaml").write_text(TINY_PRESET)
    return folder


# ------------------------------------------------------------------------------------ pieces


@requires_mini
def test_without_split_files_each_speaker_is_split_80_20_and_lone_utterances_by_time():
    corpus = LibriSpeechCorpus(MINI, MINI_LABELS)
    split = split_corpus(corpus, seed=0)
    assert split.kind == PER_SPEAKER
    per_speaker = {s: [u.speaker for u in corpus].count(s) for s in corpus.speakers}
    whole_train = {s.id for s in split.train if s.stop is None}
    whole_test = {s.id for s in split.test if s.start == 0}
    assert not whole_train & whole_test
    tested = {s: [seg.speaker for seg in split.test if seg.start == 0].count(s) for s in corpus.speakers}
    assert tested == {s: (1 if n >= 2 else 0) for s, n in per_speaker.items()}  # round(0.2 n) >= 1 for n in 2..3
    lone = [u for u in corpus if per_speaker[u.speaker] == 1]
    assert lone, "the mini corpus has speakers with one utterance"
    for utterance in lone:  # the first 80 % trains, the rest tests, nothing in common
        (head,) = [s for s in split.train if s.utterance == utterance]
        (tail,) = [s for s in split.test if s.utterance == utterance]
        length = head.utterance_samples()
        assert (head.start, head.stop, tail.start, tail.stop) == (0, round(0.8 * length), round(0.8 * length), None)
        assert head.num_samples() + tail.num_samples() == length == utterance.load().shape[0]
        assert np.array_equal(np.concatenate([head.load(), tail.load()]), utterance.load())
    assert {s.utterance.id for s in split.train} | {s.utterance.id for s in split.test} == {u.id for u in corpus}
    assert split.speakers == corpus.speakers
    assert {s.speaker for s in split.test} == set(corpus.speakers)
    assert split_corpus(corpus, seed=0) == split
    others = [split_corpus(corpus, seed=s) for s in range(1, 6)]
    assert any(other.test != split.test for other in others)


@requires_mini
def test_split_files_decide_when_present(tmp_path):
    labels = tmp_path / "labels"
    shutil.copytree(MINI_LABELS, labels)
    (labels / "train_split.txt").write_text("4051-11218-0044\n2412-153948-0000\n")
    (labels / "test_split.txt").write_text("2412-153948-0001\n")
    split = split_corpus(LibriSpeechCorpus(MINI, labels), seed=0)
    assert split.kind == SPLIT_FILES
    assert [s.id for s in split.train] == ["2412-153948-0000", "4051-11218-0044"]
    assert [s.id for s in split.test] == ["2412-153948-0001"]
    (labels / "test_split.txt").write_text("\n")
    with pytest.raises(ValueError, match="leaves 2 for train and 0 for test"):
        split_corpus(LibriSpeechCorpus(MINI, labels), seed=0)


def test_linear_probe_separates_separable_classes_and_counts_unseen_classes_wrong():
    rng = np.random.default_rng(0)
    centres = rng.standard_normal((3, 8)) * 4
    y = np.repeat(np.arange(3), 50)
    x = torch.from_numpy((centres[y] + rng.standard_normal((150, 8))).astype(np.float32))
    y_test = torch.tensor([0, 1, 2, 7, -1])
    x_test = torch.from_numpy(np.concatenate([centres, centres[:2]]).astype(np.float32))
    labels = torch.from_numpy(y)
    labels[:5] = -1  # unknown labels are left out of the fit
    result = fit_probe(ProbeTask(x, labels, x_test, y_test))
    assert (result.accuracy, len(result.train_labels), len(result.truth), result.classes) == (0.75, 145, 4, 3)
    assert result.predicted.tolist() == [0, 1, 2, 0]  # the unseen class 7 sits on class 0's centre
    again = fit_probe(ProbeTask(x, labels, x_test, y_test))
    assert torch.equal(again.predicted, result.predicted)  # deterministic
    assert fit_probe(ProbeTask(x, torch.full((150,), -1), x_test, y_test)) is None
    side_by_side = fit_probes([ProbeTask(x, labels, x_test, y_test)] * 3, workers=2)
    assert all(torch.equal(r.predicted, result.predicted) for r in side_by_side)  # the same fit on any thread


def test_accuracy_without_silence_per_class_summary_and_majority_on_a_hand_made_example():
    """8 test frames of 3 classes (0 = silence); every number below is counted by hand."""
    truth = torch.tensor([0, 0, 0, 0, 5, 5, 7, 7])
    predicted = torch.tensor([0, 0, 5, 0, 5, 0, 7, 5])
    phone = ProbeResult(predicted=predicted, truth=truth, train_labels=torch.tensor([0, 0, 0, 5, 5, 7]))
    assert phone.accuracy == 5 / 8
    assert phone.accuracy_without(0) == 2 / 4  # frames 4..7: 5 right, 5 wrong, 7 right, 7 wrong
    assert phone.accuracy_without(9) == 5 / 8
    rows = class_accuracies(phone, ("SIL", "AA", "AE", "AH", "AO", "AW", "AY", "B"))
    assert rows == (
        ClassAccuracy(label=0, name="SIL", support=4, recall=3 / 4, predicted=4),
        ClassAccuracy(label=5, name="AW", support=2, recall=1 / 2, predicted=3),
        ClassAccuracy(label=7, name="B", support=2, recall=1 / 2, predicted=1),
    )
    assert class_accuracies(None) == ()

    def labels(phones: list[int], speakers: list[int], utterance_speakers: list[int]) -> SplitLabels:
        return SplitLabels((), (), torch.tensor(phones), torch.tensor(speakers), torch.tensor(utterance_speakers), 0.0)

    # train: silence is the most frequent phone, 5 the most frequent other one; speaker 1 by frames,
    # speaker 2 by utterances; unknown labels (-1) count nowhere
    train = labels([0, 0, 0, 5, 5, 7, -1], [1, 1, 1, 2, 2, -1, -1], [2, 2, 1])
    test = labels([0, 5, 7, 5, -1, 0, 0, 0], [1, 2, 2, 2, 1, -1, -1, -1], [1, 2])
    majority = majority_accuracies(train, test)
    assert majority == Accuracies(phone_acc=4 / 7, phone_acc_no_silence=2 / 3, speaker_acc_frame=2 / 5, speaker_acc_utt=1 / 2)


def test_mfcc_frames_sit_on_the_label_frames():
    """A click at the centre of label frame 40 peaks the energy coefficient of frame 40, not its neighbours."""
    audio = np.zeros(160 * 100 + 37, dtype=np.float32)
    audio[160 * 40 + 80] = 1.0
    (features,) = mfcc_encoder()(audio)
    assert features.shape == (100, 39)
    assert int(features[:, 0].argmax()) == 40
    assert features[40, 0] > features[39, 0] + 1e-3 and features[40, 0] > features[41, 0] + 1e-3


# ------------------------------------------------------------------------------------ end to end


@requires_mini
@pytest.mark.slow
def test_eval_on_librispeech_mini_end_to_end(tmp_path, tiny_presets, capsys):
    """The CLI on real speech, with a label folder whose split files put one labelled utterance in test."""
    labels = tmp_path / "labels"
    shutil.copytree(MINI_LABELS, labels)
    test_ids = ["2412-153948-0001", "2911-12359-0007", "4397-15668-0007", "5678-43303-0032"]
    train_ids = [u.id for u in LibriSpeechCorpus(MINI) if u.id not in test_ids]
    (labels / "train_split.txt").write_text("\n".join(train_ids) + "\n")
    (labels / "test_split.txt").write_text("\n".join(test_ids) + "\n")
    out = tmp_path / "out"
    out.mkdir()
    code = main([
        "eval", "--corpus", str(MINI), "--labels", str(labels), "--methods", "random,mfcc,clapp_eprop",
        "--train-minutes", "0.1", "--presets", str(tiny_presets), "--max-frames", "4000", "--curve-points", "2",
        "--json", str(out / "eval.json"), "--markdown", str(out / "eval.md"), "--plot", str(out / "eval.png"),
    ])
    assert code == 0
    report = json.loads((out / "eval.json").read_text())
    assert list(report["methods"]) == ["random", "mfcc", "clapp_eprop"]
    corpus = report["corpus"]
    assert (corpus["split"], corpus["train_utterances"], corpus["test_utterances"]) == ("split files", 8, 4)
    assert (corpus["labelled_train_utterances"], corpus["labelled_test_utterances"]) == (1, 1)
    assert corpus["test_utterances_of_unseen_speakers"] == 1 and corpus["phone_probe"] == "measured"
    for name, method in report["methods"].items():
        for key in ("phone_acc", "phone_acc_no_silence", "speaker_acc_frame", "speaker_acc_utt", "phone_balanced_acc"):
            assert 0.0 <= method[key] <= 1.0, (name, key)
        classes = method["phone_classes"]
        assert sum(c["support"] for c in classes) >= sum(c["predicted"] for c in classes) > 0  # also predicted: classes not in test
        assert method["phone_acc"] == pytest.approx(sum(c["recall"] * c["support"] for c in classes) / sum(c["support"] for c in classes))
        assert method["phone_acc"] > 0.05  # 35 classes in the labels
        assert method["speaker_acc_frame"] > 1 / 7  # 7 speakers in train; 2911 is unseen and left out
    learned = report["methods"]["clapp_eprop"]
    assert [m["module"] for m in learned["per_module"]] == [0, 1, 2, 3, 4]
    assert learned["phone_acc"] == learned["per_module"][-1]["phone_acc"]
    assert learned["train_seconds_audio"] == pytest.approx(6.08)  # 19 windows of 5120 samples >= 6 s
    assert [round(p["minutes"], 3) for p in learned["learning_curve"]] == [0.053, 0.101]  # 10 and 19 windows
    assert report["methods"]["mfcc"]["per_module"] == [] and "learning_curve" not in report["methods"]["random"]
    majority = report["majority"]
    assert set(majority) == {"phone_acc", "phone_acc_no_silence", "speaker_acc_frame", "speaker_acc_utt"}
    assert learned["compute_rtf"] > 0 and report["methods"]["random"]["compute_rtf"] is None
    markdown = (out / "eval.md").read_text()
    assert "| CLAPP with e-prop GRU (`clapp_eprop`) | yes |" in markdown and markdown in capsys.readouterr().out
    per_module = markdown.split("Per module")[1].split("\n\n")[1].splitlines()[2:]
    assert [row.split(" | ")[0] for row in per_module] == ["| 0", "| 1", "| 2", "| 3", "| 4"]
    assert (out / "eval.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@requires_mini
@pytest.mark.slow
def test_eval_is_deterministic_for_a_seed_and_reports_speakers_without_labels(tiny_presets):
    corpus = LibriSpeechCorpus(MINI)

    def run(seed: int) -> dict:
        settings = EvaluationSettings(train_minutes=0.05, seed=seed, max_frames=3000, curve_points=2)
        methods = resolve_methods(["mfcc", "clapp_eprop"], seed=seed, presets=tiny_presets)
        report = Evaluation(corpus, settings).run(methods).to_dict()
        for method in report["methods"].values():
            del method["wall_seconds"], method["compute_rtf"]
        return report

    first, second, other = run(0), run(0), run(1)
    assert first == second
    assert first != other
    assert first["corpus"]["split"] == "80/20 per speaker"
    assert first["corpus"]["phone_probe"] == "not measured: no utterance of the train split has phone labels"
    for method in first["methods"].values():
        assert method["phone_acc"] is None and method["speaker_acc_frame"] > 1 / 8


@requires_mini
@pytest.mark.slow
def test_learning_curve_points_probe_a_fixed_subset_of_utterances_and_end_after_the_budget(tiny_presets):
    corpus = LibriSpeechCorpus(MINI)
    methods = resolve_methods(["clapp_eprop"], seed=0, presets=tiny_presets)
    reports = {}
    for every in (1, 2):
        settings = EvaluationSettings(train_minutes=0.05, max_frames=3000, curve_points=2, curve_every=every)
        evaluation = Evaluation(corpus, settings)
        train, test = evaluation.curve_labels
        assert train.segments == evaluation.split.train[::every] and test.segments == evaluation.split.test[::every]
        reports[every] = evaluation.run(methods).methods["clapp_eprop"]
    whole, subset = reports[1], reports[2]
    assert whole.top == subset.top  # the final probe is the same whatever the curve probes
    assert [p.minutes for p in whole.learning_curve] == [p.minutes for p in subset.learning_curve]
    assert whole.learning_curve[-1].speaker_acc_frame == whole.top.speaker_acc_frame  # every = 1: the last point is the final probe
    assert subset.learning_curve[-1] != whole.learning_curve[-1]  # every = 2: its own utterances, after the same stream


@requires_mini
def test_baselines_come_from_the_cache_until_an_input_changes(tmp_path, tiny_presets):
    labels = tmp_path / "labels"
    shutil.copytree(MINI_LABELS, labels)
    cache = ResultCache(tmp_path / "cache")
    settings = EvaluationSettings(train_minutes=0.05, max_frames=2000)

    def run() -> EvaluationReport:
        methods = resolve_methods(["mfcc", "random", "clapp_eprop"], seed=0, presets=tiny_presets)
        return Evaluation(LibriSpeechCorpus(MINI, labels), settings, cache=cache).run(methods)

    first, second = run(), run()
    assert [r.cached for r in first.methods.values()] == [False, False, False]
    assert [r.cached for r in second.methods.values()] == [True, True, False]  # a learner is never cached
    for name in ("mfcc", "random"):
        assert second.methods[name].top == first.methods[name].top
        assert second.methods[name].per_module == first.methods[name].per_module
    assert len(list((tmp_path / "cache").glob("*.json"))) == 2
    (labels / "converted_aligned_phones.txt").write_text((labels / "converted_aligned_phones.txt").read_text())
    assert not any(r.cached for r in run().methods.values())  # a label file was written again: every key changed


def test_cli_refuses_bad_input_with_one_sentence(tmp_path, capsys):
    assert main(["eval", "--corpus", str(tmp_path / "none"), "--json", str(tmp_path / "x.json")]) == 2
    assert "--corpus" in capsys.readouterr().err
    assert main(["eval", "--corpus", str(tmp_path), "--methods", "nope", "--json", str(tmp_path / "x.json")]) == 2
    assert "unknown method 'nope'" in capsys.readouterr().err
    assert main(["eval", "--corpus", str(tmp_path), "--methods", "mfcc", "--json", str(tmp_path / "x.json")]) == 2
    assert "no utterances" in capsys.readouterr().err
    assert main(["eval", "--corpus", str(tmp_path), "--train-minutes", "0", "--json", str(tmp_path / "x.json")]) == 2
    assert main(["eval", "--corpus", str(tmp_path), "--json", str(tmp_path / "missing" / "x.json")]) == 2
    assert "does not exist" in capsys.readouterr().err
    assert not (tmp_path / "x.json").exists()


@requires_mini
def test_eval_probes_the_learner_a_listen_state_holds(tmp_path, tiny_presets, capsys):
    state = tmp_path / "state"
    assert main(["eval", "--corpus", str(MINI), "--learner-state", str(state), "--json", str(tmp_path / "x.json")]) == 2
    assert "does not exist" in capsys.readouterr().err
    assert main([
        "listen", "--source", "librispeech", "--root", str(MINI / "LibriSpeech"), "--speed", "max", "--max-windows", "3",
        "--config", str(tiny_presets / "clapp_eprop.yaml"), "--no-http", "--quiet", "--state", str(state),
    ]) == 0
    out = tmp_path / "eval.json"
    assert main([
        "eval", "--corpus", str(MINI), "--learner-state", str(state), "--max-frames", "2000", "--probe-modules", "top",
        "--train-minutes", "0.01", "--json", str(out), "--markdown", str(tmp_path / "eval.md"), "--quiet",
    ]) == 0
    report = json.loads(out.read_text())
    assert list(report["methods"]) == [f"state:{state}"]  # no other method unless --methods names them
    loaded = report["methods"][f"state:{state}"]
    assert loaded["train_seconds_audio"] == pytest.approx(3 * 5120 / 16000)  # what the listen run learned, not --train-minutes
    assert [m["module"] for m in loaded["per_module"]] == [4] and loaded["compute_rtf"] is None
    assert "a `state:` learner as its `listen --state` run left it" in (tmp_path / "eval.md").read_text()
    assert 0 < loaded["speaker_acc_frame"] <= 1
